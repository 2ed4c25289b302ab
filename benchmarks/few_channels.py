"""Convolutions with few channels (``direct`` and gemm's narrow form) against the peers.

Filters over photos (3 channels in, 1-16 out, 1024x1024 or 512x512) and the first layers of
small training networks (digits 8x8, MNIST 28x28, CIFAR 32x32 batches). None of them is in
issue 5's layer suite, whose layers have 16 channels or more, or a stride. For each layer:
the peers' forward times (PyTorch NCHW and channels_last, ONNX Runtime; medians of
interleaved rounds), patchconv's ``conv2d`` with the algorithm it picks, and the best
algorithm other than ``direct`` (and fft). Where that is gemm with 16-48 output channels, it
is gemm's narrow form, which takes small patches since ``185dc94`` (before, such layers ran
gemm's tiles: N64 32x32 3 -> 32 in 2.2 ms).
Then forward + backward (input and kernel gradients) on the batched layers against PyTorch.

Usage (unset the OpenBLAS variables for benchmarks only):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m benchmarks.few_channels
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from benchmarks import peers
from benchmarks.layers import Layer
from benchmarks.winograd_floor import _median_ms, start

import patchconv
from patchconv import algorithms
from patchconv._spec import conv_spec

LAYERS = (
    Layer(1, 1024, 3, 1, 3),
    Layer(1, 1024, 3, 3, 3),
    Layer(1, 1024, 3, 3, 5),
    Layer(1, 512, 3, 3, 5),
    Layer(1, 1024, 3, 16, 3),
    Layer(1, 1024, 8, 8, 3),
    Layer(32, 8, 1, 16, 3),
    Layer(64, 28, 1, 32, 3),
    Layer(64, 32, 3, 32, 3),
)


def main() -> None:
    rounds, names = start(__doc__)
    rng = np.random.default_rng(0)
    header = "layer | " + " | ".join(names) + " | patchconv (algorithm) | ratio | no direct | ratio"
    print(header)
    print("|".join("---" for _ in header.split("|")))
    for layer in LAYERS:
        x = rng.standard_normal(layer.x_shape).astype(np.float32)
        kernel = rng.standard_normal(layer.kernel_shape).astype(np.float32)
        spec = conv_spec(x.shape, kernel.shape, None, padding="same")
        plan = algorithms.choose(spec)
        others = [n for n, _ in plan.estimates if n not in ("direct", "fft")]
        calls: dict[str, Callable[[], Any]] = {
            p: peers.forward_fn(p, layer, x, kernel) for p in names
        }
        calls["patchconv"] = lambda x=x, kernel=kernel: patchconv.conv2d(x, kernel, padding="same")
        for name in others:
            calls[name] = lambda x=x, kernel=kernel, name=name: patchconv.conv2d(
                x, kernel, padding="same", algorithm=name
            )
        times: dict[str, list[float]] = {key: [] for key in calls}
        for _ in range(rounds):
            for key, call in calls.items():
                times[key].append(_median_ms(call, 0.2))
        med = {key: statistics.median(v) for key, v in times.items()}
        best = min(med[p] for p in names)
        before = min(others, key=lambda n: med[n])
        cells = " | ".join(f"{med[p]:.2f}" for p in names)
        print(
            f"{layer.name} | {cells} | {med['patchconv']:.2f} ({plan.algorithm}) | "
            f"{best / med['patchconv']:.2f} | {med[before]:.2f} ({before}) | "
            f"{best / med[before]:.2f}",
            flush=True,
        )
    # Forward + backward (gradients of input and kernel) on the training-sized layers.
    train_peers = [p for p in names if p.startswith("torch")]
    print("\nforward + backward | " + " | ".join(train_peers) + " | patchconv | ratio")
    print("|".join("---" for _ in range(len(train_peers) + 3)))
    for layer in (layer for layer in LAYERS if layer.n > 1):
        x = rng.standard_normal(layer.x_shape).astype(np.float32)
        kernel = rng.standard_normal(layer.kernel_shape).astype(np.float32)
        steps = {p: peers.backward_fn(p, layer, x, kernel) for p in [*train_peers, "patchconv"]}
        times = {key: [] for key in steps}
        for _ in range(rounds):
            for key, call in steps.items():
                times[key].append(_median_ms(call, 0.2))
        med = {key: statistics.median(v) for key, v in times.items()}
        best = min(med[p] for p in train_peers)
        cells = " | ".join(f"{med[p]:.2f}" for p in train_peers)
        print(f"{layer.name} | {cells} | {med['patchconv']:.2f} | {best / med['patchconv']:.2f}")


if __name__ == "__main__":
    main()
