"""How close the deep batch-1 3x3 layers can come to issue 5's 1.3x target, measured.

For each layer: the best peer's forward time (PyTorch NCHW and channels_last, ONNX Runtime),
the time the target asks for (best peer / 1.3), patchconv's whole forward per call
(``conv2d``) and with the kernel prepared once (``patchconv.prepare``, as ONNX Runtime packs
its weights once per session), and two parts of a Winograd forward on both cores, for
F(2x2, 3x3) and F(4x4, 3x3):

- "U+prod": each core transforms the kernel for its half of the positions and runs their
  products (the split schedule without its input and output transforms and without Python);
- "prod": the products alone, on a U built beforehand, as a transformed kernel kept across
  calls would give.

Where even "prod" misses the target, no Winograd schedule built on these products meets it,
cached kernel or not.

Usage (unset the OpenBLAS variables for benchmarks only):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m benchmarks.winograd_floor
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from benchmarks import peers
from benchmarks.layers import Layer
from threadpoolctl import threadpool_info

import patchconv
from patchconv.algorithms import _simd, winograd

LAYERS = (Layer(1, 7, 512, 512, 3), Layer(1, 14, 256, 256, 3), Layer(8, 7, 512, 512, 3))


@numba.njit(nogil=True, parallel=True, cache=True)
def _products(v: Any, u: Any, m: Any, positions: int) -> None:  # pragma: no cover - numba
    # Half of the a*a positions per core: what the split schedule's products do.
    for t in numba.prange(2):
        _simd.batched_matmul(v, u, m, t * positions // 2, (t + 1) * positions // 2)


@numba.njit(nogil=True, parallel=True, cache=True)
def _transform_then_products(
    k9: Any, kron: Any, u: Any, v: Any, m: Any, positions: int
) -> None:  # pragma: no cover - numba
    for t in numba.prange(2):
        lo, hi = t * positions // 2, (t + 1) * positions // 2
        _simd.winograd_kernel_panels(k9, kron, u, lo, hi)
        _simd.batched_matmul(v, u, m, lo, hi)


def _median_ms(call: Callable[[], Any], seconds: float = 0.3) -> float:
    call()
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-5)
    times = []
    for _ in range(max(5, int(seconds / once))):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _tiles(layer: Layer, m: int) -> int:
    return layer.n * (-(-layer.hw // m)) ** 2


def floors(layer: Layer, m: int, rng: np.random.Generator) -> tuple[Callable[[], Any], ...]:
    """(products alone on a U built beforehand, U's transform + products) for F(m x m, 3x3)."""
    a = m + 2
    tiles = _tiles(layer, m)
    dtype = np.dtype(np.float32)
    kernel = rng.standard_normal(layer.kernel_shape).astype(np.float32)
    k9 = np.ascontiguousarray(kernel.reshape(9, -1))
    kron = winograd._kron(m, dtype)
    u = np.empty(winograd.u_panels(a, layer.c_in, layer.c_out, dtype), np.float32)
    _simd.winograd_kernel_panels(k9, kron, u, 0, a * a)
    v = rng.standard_normal((a * a, tiles, layer.c_in)).astype(np.float32)
    out = np.empty((a * a, tiles, layer.c_out), np.float32)
    return (
        lambda: _products(v, u, out, a * a),
        lambda: _transform_then_products(k9, kron, u, v, out, a * a),
    )


def start(doc: str) -> tuple[int, list[str]]:
    """A peer benchmark's command line (``--rounds``), its first line (the BLAS that runs and
    numba's threads) and the forward peers installed here."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median)")
    args = parser.parse_args()
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()]
    print(f"BLAS: {blas}; numba threads: {numba.get_num_threads()}")
    return args.rounds, peers.available(("torch_nchw", "torch_cl", "onnxruntime"))


def main() -> None:
    rounds, names = start(__doc__)
    rng = np.random.default_rng(0)
    header = (
        "layer | best peer ms | target ms | conv2d ms | ratio | prepared ms | ratio "
        "| F2 U+prod / prod | F4 U+prod / prod"
    )
    print(header)
    print("|".join("---" for _ in header.split("|")))
    for layer in LAYERS:
        x = rng.standard_normal(layer.x_shape).astype(np.float32)
        kernel = rng.standard_normal(layer.kernel_shape).astype(np.float32)
        calls: dict[str, Callable[[], Any]] = {
            p: peers.forward_fn(p, layer, x, kernel) for p in names
        }
        calls["patchconv"] = lambda x=x, kernel=kernel: patchconv.conv2d(x, kernel, padding="same")
        prepared = patchconv.prepare(kernel, x.shape, padding="same")
        calls["prepared"] = lambda x=x, prepared=prepared: prepared(x)
        for m in (2, 4):
            if _tiles(layer, m) >= 6:  # our products need 6 tiles
                calls[f"F{m} prod"], calls[f"F{m} U+prod"] = floors(layer, m, rng)
        times: dict[str, list[float]] = {key: [] for key in calls}
        for _ in range(rounds):
            for key, call in calls.items():
                times[key].append(_median_ms(call))
        med = {key: statistics.median(v) for key, v in times.items()}
        best = min(med[p] for p in names)
        target = best / 1.3

        def floor(m: int, med: dict[str, float] = med) -> str:
            key = f"F{m} prod"
            return f"{med[f'F{m} U+prod']:.2f} / {med[key]:.2f}" if key in med else "n/a"

        print(
            f"{layer.name} | {best:.2f} | {target:.2f} | {med['patchconv']:.2f} | "
            f"{best / med['patchconv']:.2f} | {med['prepared']:.2f} | "
            f"{best / med['prepared']:.2f} ({prepared.prepared}) | {floor(2)} | {floor(4)}"
        )


if __name__ == "__main__":
    main()
