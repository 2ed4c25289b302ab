"""How well ``algorithm="auto"`` picks: every applicable algorithm timed on a grid of layers.

For 3x3 stride-1 "same" layers (batch 1 to 32, 16x16 to 112x112, 8 to 256 channels; those of
2 MFLOP to 8 GFLOP), each algorithm that applies is timed (median of interleaved rounds), and
the table gives the chooser's pick, the fastest algorithm, and the loss: the pick's time over
the fastest one's. The summary line gives the geometric mean loss and the layers lost by more
than 5%. The cost model's constants (``patchconv/algorithms/__init__.py``) were fitted to this
grid's times; rerun it after changing an algorithm or moving to another machine.

Usage (unset the OpenBLAS variables for benchmarks only; about 5 minutes):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m benchmarks.chooser
"""

from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
from benchmarks.layers import Layer
from benchmarks.winograd_floor import _median_ms

import patchconv
from patchconv import algorithms

SIZES = ((1, 32), (1, 56), (1, 112), (8, 16), (8, 32), (8, 56), (8, 112), (32, 32))
CHANNELS = ((8, 8), (16, 16), (16, 32), (32, 32), (32, 64), (64, 64), (96, 96), (128, 128))
CHANNELS += ((256, 256),)


def grid() -> list[Layer]:
    """The layers timed: the sizes by the channel pairs, within 2 MFLOP to 8 GFLOP."""
    layers = []
    for n, hw in SIZES:
        for c_in, c_out in CHANNELS:
            if 2e6 <= 2 * n * hw * hw * c_in * c_out * 9 <= 8e9:
                layers.append(Layer(n, hw, c_in, c_out, 3))
    return layers


def run(x: np.ndarray, kernel: np.ndarray, name: str) -> np.ndarray:
    return patchconv.conv2d(x, kernel, padding="same", algorithm=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("layer | pick | ms | fastest | ms | loss | every algorithm ms (estimate ms)")
    print("---|---|---|---|---|---|---")
    losses = []
    for layer in grid():
        x = rng.standard_normal(layer.x_shape).astype(np.float32)
        kernel = rng.standard_normal(layer.kernel_shape).astype(np.float32)
        plan = algorithms.choose(layer.spec())
        names = [name for name, _ in plan.estimates if name != "fft"]  # fft: 10-100x slower
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                times[name].append(_median_ms(lambda n=name, x=x, k=kernel: run(x, k, n), 0.1))
        med = {name: statistics.median(v) for name, v in times.items()}
        fastest = min(med, key=lambda n: med[n])
        loss = med[plan.algorithm] / med[fastest]
        losses.append(loss)
        every = ", ".join(f"{n} {med[n]:.3g} ({ms:.3g})" for n, ms in plan.estimates if n in med)
        print(
            f"{layer.name} | {plan.algorithm} | {med[plan.algorithm]:.3g} | {fastest} | "
            f"{med[fastest]:.3g} | {loss:.2f} | {every}",
            flush=True,
        )
    geomean = math.exp(sum(map(math.log, losses)) / len(losses))
    worse = [f"{loss:.2f}" for loss in losses if loss > 1.05]
    print(
        f"\n{len(losses)} layers: geometric mean loss {geomean:.3f}; lost by more than 5%: "
        f"{len(worse)} ({', '.join(worse) or 'none'})"
    )


if __name__ == "__main__":
    main()
