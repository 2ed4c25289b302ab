"""Convolution algorithms, one module each, and the chooser that picks between them.

Every algorithm takes NHWC ``x`` and an HWIO ``kernel`` already in the compute dtype, plus a
checked :class:`~patchconv._spec.ConvSpec`, and returns NHWC output. They differ only in how
they spend time and memory; all agree with the reference within the tolerance table.

=============  ==========================================  ======================================
name           applies to                                  idea
=============  ==========================================  ======================================
gemm           everything                                  patch matrix in cache-sized tiles
pointwise      1x1 kernels                                 the input is the patch matrix
depthwise      groups == c_in                              shifted multiply-adds, no patch matrix
winograd       3x3, stride 1, dilation 1, groups 1         F(4x4, 3x3) or F(2x2, 3x3), cost-picked
winograd_f4    as winograd                                 F(4x4, 3x3): 4x fewer multiplications
winograd_f2    as winograd                                 F(2x2, 3x3): 2.25x fewer, more accurate
fft            stride 1, groups 1                          spectra product per frequency
direct         stride 1, groups 1, <= 64 channels (numba)  vectors along the image, not channels
=============  ==========================================  ======================================

The chooser (:func:`choose`) estimates each applicable algorithm's time from its arithmetic
(at the rate BLAS reaches for that product shape) and the bytes it copies or transforms, and
takes the cheapest. ``algorithm="measure"`` times every applicable algorithm once on the
caller's data and remembers the fastest for that shape and dtype.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from patchconv._config import get_workspace_limit
from patchconv._spec import ConvSpec, PatchconvError
from patchconv.algorithms import depthwise, direct, fft, gemm, pointwise, winograd
from patchconv.algorithms._runtime import (
    VECTOR_BYTES,
    get_numba,
    n_workers,
    release_this_call,
    release_workspace,
    scratch,
    single_threaded_blas,
    workspace_kept,
)

__all__ = [
    "ALGORITHMS",
    "Plan",
    "applicable",
    "backward",
    "choose",
    "estimates",
    "forward",
    "measured_plans",
    "release_workspace",
]

ALGORITHMS = (
    "gemm",
    "pointwise",
    "depthwise",
    "winograd",
    "winograd_f4",
    "winograd_f2",
    "fft",
    "direct",
)


@dataclass(frozen=True)
class Plan:
    """What the chooser picked for one call, and why.

    ``estimates`` holds the cost model's time in milliseconds for every algorithm that applies
    (cheapest first); ``skipped`` says why each other algorithm does not apply.
    """

    algorithm: str
    reason: str
    estimates: tuple[tuple[str, float], ...] = field(default=(), compare=False)
    skipped: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        lines = [f"{self.algorithm}: {self.reason}"]
        if self.estimates:
            lines.append(
                "  estimated: " + ", ".join(f"{name} {ms:.3g} ms" for name, ms in self.estimates)
            )
        for name, why in self.skipped:
            lines.append(f"  not {name}: {why}")
        return "\n".join(lines)


# --- applicability -------------------------------------------------------------------------


def _not_applicable(name: str, spec: ConvSpec) -> str | None:
    if name == "gemm":
        return None
    if name == "pointwise":
        return pointwise.applies(spec)
    if name == "depthwise":
        return depthwise.applies(spec)
    if name.startswith("winograd"):
        return winograd.applies(spec)
    if name == "fft":
        return fft.applies(spec)
    if name == "direct":
        return direct.applies(spec)
    raise AssertionError(name)  # pragma: no cover


def applicable(spec: ConvSpec) -> dict[str, str | None]:
    """Every algorithm name -> None if it applies to ``spec``, else the reason it does not."""
    return {name: _not_applicable(name, spec) for name in ALGORITHMS}


# --- the cost model ------------------------------------------------------------------------

# Rates on the project's reference machine class (2 cores, AVX-512, NumPy's OpenBLAS): BLAS
# float32 products of good shape, bytes per second of strided copies split over both cores,
# and compiled transform loops. Only the ratios matter for the choice.
_BLAS_FLOPS = 150e9
_COPY_BYTES = 8e9
_STREAM_BYTES = 20e9
# Bytes a second written to and read from the cores' L2 caches, both cores (fitted on the
# Winograd schedule by input channels, see _winograd_cost).
_L2_BYTES = 130e9
_COMPILED_FLOPS = 30e9
_FFT_FLOPS = 4e9
_CALL_SECONDS = 4e-6  # fixed cost per tile or per product call
# One matrix of a batched product (np.matmul over the a*a transform positions): measured 0.07
# us each (36 one-row products in 2.4 us); charged as 4 us each, F(4x4)'s 36 positions made
# F(2x2) look cheaper on small layers where F(4x4) ran 35-40% faster (32x8x8 16 -> 32).
_MATRIX_SECONDS = 0.1e-6
# The implicit GEMM's compiled kernel (gemm and pointwise where it applies) runs at 265-340
# GF/s on the bench layers, against _BLAS_FLOPS for BLAS. Fitted on 74 layers of 3x3 (see
# _WINOGRAD_OWN_FLOPS): 289 GF/s, plus about 40 us a call.
_IMPLICIT_FLOPS = 280e9
# And per output row (the same fit: 0.03 us; it was costed at 0.5, which made N64 32x32
# 3 -> 32, 2048 rows of 32 pixels, look 1 ms dearer than it ran).
_IMPLICIT_ROW_SECONDS = 0.05e-6
# Its narrow form (few output channels) spends much of its time writing the output: measured
# 6-10e9 values a second where the output stays in cache (N64 28x28 1 -> 32, N64 32x32 3 -> 32),
# 2e9 over 1024x1024 (memory), where direct's writes are as slow.
_NARROW_OUT_VALUES = 6e9
# Kernel values (c_in * c_out per tap) from which grad_x flips the kernel with a compiled loop
# (measured on 3x3: 256x256 0.39 against 0.64 ms, 512x512 1.2 against 2.8; 128x128 a tie).
_COMPILED_FLIP_VALUES = 256 * 256
# Python-level cost of one call of each algorithm, whatever its size.
_FIXED_SECONDS = {
    "gemm": 20e-6,
    "pointwise": 8e-6,
    "depthwise": 30e-6,
    "winograd_f4": 80e-6,
    "winograd_f2": 80e-6,
    "fft": 200e-6,
    "direct": 20e-6,
}


def _blas_rate(m: int, k: int, n: int, itemsize: int) -> float:
    """Flops per second of an (m, k) @ (k, n) product: thin products run below peak."""
    rate = _BLAS_FLOPS * (4 / itemsize if itemsize > 4 else 1.0) * (0.5 if itemsize > 4 else 1.0)
    for size, knee in ((m, 64), (k, 64), (n, 64)):
        rate *= min(1.0, 0.35 + 0.65 * size / knee)
    return rate


def _implicit_cost(spec: ConvSpec, itemsize: int, overhead: float) -> float:
    """The implicit GEMM (gemm's and pointwise's): its multiply-adds, ``overhead`` seconds,
    and in its narrow form (few output channels) the output's writes, which weigh there."""
    cost = spec.flops / _IMPLICIT_FLOPS + overhead
    if gemm.narrow_applies(spec, itemsize):
        cost += spec.n * spec.oh * spec.ow * spec.c_out / _NARROW_OUT_VALUES
    return cost


def _gemm_cost(spec: ConvSpec, itemsize: int) -> float:
    positions = spec.n * spec.oh * spec.ow
    if gemm.implicit_applies(spec, itemsize):  # no patch copy
        return _implicit_cost(spec, itemsize, spec.n * spec.oh * _IMPLICIT_ROW_SECONDS)
    k = spec.kh * spec.kw * spec.c_in_group
    patch_bytes = positions * spec.patch_size * itemsize
    rate = _blas_rate(min(positions, 2048), k, spec.c_out_group, itemsize)
    tiles = max(1, patch_bytes // gemm.TILE_BYTES)
    return spec.flops / rate + 2 * patch_bytes / _COPY_BYTES + tiles * _CALL_SECONDS * spec.groups


def _pointwise_cost(spec: ConvSpec, itemsize: int) -> float:
    if gemm.implicit_applies(spec, itemsize):  # pointwise runs the implicit GEMM then
        return _implicit_cost(spec, itemsize, _CALL_SECONDS)
    positions = spec.n * spec.oh * spec.ow
    rate = _blas_rate(positions, spec.c_in_group, spec.c_out_group, itemsize)
    copy = 0 if spec.strides == (1, 1) else positions * spec.c_in * itemsize / _COPY_BYTES
    return spec.flops / rate + copy + _CALL_SECONDS * spec.groups


def _depthwise_cost(spec: ConvSpec, itemsize: int) -> float:
    stream = (spec.n * spec.h * spec.w * spec.c_in + spec.n * spec.oh * spec.ow * spec.c_out) * 4
    compiled = get_numba() is not None
    flops_rate = _COMPILED_FLOPS if compiled else _COMPILED_FLOPS / 6
    return spec.flops / flops_rate + stream * (1 if compiled else spec.kh * spec.kw) / _STREAM_BYTES


# Winograd's rates, fitted (as _IMPLICIT_FLOPS and _DIRECT_FLOPS were) to every applicable
# algorithm's measured time on 62 layers of 3x3 stride 1: N 1-32, 16x16 to 112x112, 8-256
# channels, 2 cores. Where every step is compiled (winograd.blas_free: our products, SIMD
# transforms) the products ran at 300-340 GF/s and the transforms at about 60. Where the
# products are BLAS, they took 0.6 of the time _blas_rate gives their thin shapes, the
# transforms ran at about 75 GF/s (10 in the scalar loops for fewer channels than a SIMD
# vector holds), and each call paid 0.15 ms more on the Python pool. The earlier rates (30
# GF/s for every transform, _blas_rate for every product) put N8 112x112 32 -> 32 at 12 ms,
# which ran in 4.7: gemm (6.9 ms) was picked, and 8 of the 62 layers ran 12-51% slower than
# their fastest algorithm. benchmarks/chooser.py measures the picks again.
_WINOGRAD_OWN_FLOPS = 300e9
_WINOGRAD_OWN_TRANSFORM_FLOPS = 60e9
_WINOGRAD_BLAS_PRODUCTS = 0.6
_WINOGRAD_TRANSFORM_FLOPS = 75e9
_SCALAR_TRANSFORM_FLOPS = 10e9
_WINOGRAD_POOL_SECONDS = 0.15e-3


def _winograd_cost(spec: ConvSpec, itemsize: int, m: int, limit: int) -> float:
    a = m + 2
    tiles = spec.n * math.ceil(spec.oh / m) * math.ceil(spec.ow / m)
    block = max(1, min(tiles, winograd.BLOCK_BYTES // (a * a * (spec.c_in + spec.c_out) * 4)))
    compiled = get_numba() is not None
    dtype = np.dtype(f"f{itemsize}")
    if compiled and (
        winograd.split_products(spec, m, itemsize, limit)
        or winograd.u_streamed(spec, m, dtype, limit)
    ):
        block = tiles  # one block of all tiles, U built and read once (see winograd)
    products = 2 * a * a * tiles * spec.c_in * spec.c_out
    # Transforms: per tile and channel, about 2 * a * (nonzeros per row) * a multiply-adds.
    per_channel = 2 * tiles * a * a * (1.0 if m == 4 else 0.6)
    by_channels = compiled and block == tiles and winograd.channel_products(spec, m, dtype)
    if by_channels or (compiled and winograd.blas_free(spec, dtype, limit, m=m)):
        if by_channels:
            # Fewer than 6 tiles, by input channels: U made in L2 and read back from it by the
            # products costs more than their multiply-adds (measured, N1 512 -> 512, F(4x4):
            # 4x4 (1 tile) 1.02 ms, 7x7 (4 tiles) 1.05; F(2x2) on 4x4 (4 tiles) 0.83).
            u_round_trip = 2 * a * a * spec.c_in * spec.c_out * itemsize
            steps = products / _WINOGRAD_OWN_FLOPS + u_round_trip / _L2_BYTES
        else:
            # Few tiles make thin products, slower per multiply-add as in BLAS (measured, N8
            # 7x7x512: F(4x4)'s 32 tiles ran 5.9 ms, F(2x2)'s 128 4.5).
            thin = min(1.0, 0.35 + 0.65 * block / 64)
            steps = products / (_WINOGRAD_OWN_FLOPS * thin)
        steps += per_channel * (spec.c_in * 6 + spec.c_out * 4) / _WINOGRAD_OWN_TRANSFORM_FLOPS
    elif compiled:
        rate = _blas_rate(block, spec.c_in, spec.c_out, itemsize)
        steps = _WINOGRAD_BLAS_PRODUCTS * products / rate + _WINOGRAD_POOL_SECONDS
        for channels, ops in ((spec.c_in, 6), (spec.c_out, 4)):  # input, output transform
            simd = channels * itemsize >= VECTOR_BYTES
            transform_rate = _WINOGRAD_TRANSFORM_FLOPS if simd else _SCALAR_TRANSFORM_FLOPS
            steps += per_channel * channels * ops / transform_rate
    else:  # NumPy's transforms (not measured again)
        rate = _blas_rate(block, spec.c_in, spec.c_out, itemsize)
        transform = per_channel * (spec.c_in * 6 + spec.c_out * 4)
        steps = products / rate + transform / (_COMPILED_FLOPS / 8)
    blocks = max(1, tiles // block)
    # U (a*a values per kernel pair) written once and read by every block; or, by panels or by
    # input channels, made a chunk at a time in L2 from the kernel (9 values a pair), read once.
    if by_channels or (compiled and block == tiles and winograd.panel_products(spec, m, dtype)):
        u_traffic = 9.0 * spec.c_in * spec.c_out * itemsize
    else:
        u_traffic = a * a * spec.c_in * spec.c_out * itemsize * (1 + blocks / n_workers())
    return steps + u_traffic / _STREAM_BYTES + blocks * (_CALL_SECONDS + a * a * _MATRIX_SECONDS)


# The direct algorithm's multiply-adds, 4 output channels at a time: it runs them at 150-300
# GF/s (1024x1024 7x7 3 -> 4: 204; 56x56 64 -> 64: 300); fitted on 94 layers of 3x3 with 8-32
# channels (see _WINOGRAD_OWN_FLOPS, _DIRECT_VALUES as below), 248. Rated below that, as
# 16 -> 16 11x11 runs at 306 GF/s in the implicit GEMM and 244 here: the GEMM must keep it.
# A last channel or two on their own take twice as long a value (4 accumulators, not 16).
_DIRECT_FLOPS = 220e9
# Values a second its planes and its pixel-major stores move on both cores (measured: a 1x1
# 3 -> 1 layer over 1024x1024, all layout and no arithmetic, 1.25 ms for 4.2M values).
_DIRECT_VALUES = 3e9


def _direct_cost(spec: ConvSpec, itemsize: int) -> float:
    fours, rest = divmod(spec.c_out, 4)
    fours, rest = (fours + 1, 0) if rest == 3 else (fours, rest)
    channels = 4 * fours + 2 * rest  # multiply-adds a pixel and tap, as the kernel runs them
    pixels = spec.n * spec.oh * spec.ow
    wp = direct.row_length(spec)  # rows as the blocks run along them
    flops = 2 * spec.n * spec.oh * wp * spec.c_in * spec.kh * spec.kw * channels
    per = direct.bands_per_image(spec, itemsize)
    rows_read = spec.n * (spec.oh + per * (spec.kh - 1) * spec.dilation[0])
    planes: float = rows_read * spec.w * spec.c_in
    if itemsize == 4 and spec.c_in % 16 == 0:
        planes /= 4  # cut by 16x16 transposes in registers (measured: N1 112x112 16 -> 32
        # ran 0.53 ms, costed at 0.77 as a gather; Winograd, 0.66, was picked)
    return flops / _DIRECT_FLOPS + (planes + pixels * spec.c_out) / _DIRECT_VALUES


def _fft_cost(spec: ConvSpec, itemsize: int, workspace_limit: int) -> float:
    _, _, fh, fw = fft.sizes(spec)
    size = fh * fw
    workers, cb = fft.layout(spec, itemsize, workspace_limit)
    blocks = -(-spec.c_out // cb)  # each block of output channels transforms the images again
    transforms = (spec.n * (blocks * spec.c_in + spec.c_out) + spec.c_in * spec.c_out) * 2.5 * size
    transforms *= math.log2(max(2, size))
    freqs = fh * (fw // 2 + 1)
    products = 8 * freqs * spec.n * spec.c_in * spec.c_out
    rate = _blas_rate(spec.n, spec.c_in, spec.c_out, itemsize) / 2
    slower = min(n_workers(), spec.n) / workers  # fewer cores where their images do not fit
    return slower * (transforms / _FFT_FLOPS + products / rate) + freqs * _CALL_SECONDS / 4


# F(4x4)'s float32 rounding error grows with the input channels (the transformed products are
# summed over them; see winograd's docstring): largest error over largest output about 4e-6 at
# 256, 6e-6 at 512, 9e-6 at 1024 and 1.1e-5 to 1.6e-5 at 2048, past the tolerance table's
# 1e-5 (measured by a fuzzing review; F(2x2): 1.6e-6 at 2048). Every schedule's products now
# sum each 512 input channels from zero and add them up (ours in the registers or a row buffer,
# BLAS a chunk at a time): F(4x4) by name stays at 0.2-0.5 of the bound up to 8192 channels
# (it reached 1.5x on BLAS products and 1.3x on our blocks' products). auto still leaves it out
# beyond 512 in float32, where F(2x2) keeps to 0.1 of the bound and a margin of 2x is thin for
# inputs less tame than random ones; it runs when asked for by name. Float16 (float32
# arithmetic, a tolerance of 2e-3) and float64 keep it.
_F4_FLOAT32_MAX_C_IN = 512


def accuracy_limits(spec: ConvSpec, itemsize: int) -> dict[str, str]:
    """The algorithms auto leaves out of ``spec`` for accuracy, with the reason."""
    if itemsize == 4 and spec.c_in > _F4_FLOAT32_MAX_C_IN:
        return {
            "winograd_f4": (
                f"winograd_f4's float32 rounding error grows with the input channels (half "
                f"the tolerance at 2048, where winograd_f2's is a tenth): auto keeps it to "
                f"{_F4_FLOAT32_MAX_C_IN} or fewer; "
                f"got c_in {spec.c_in}"
            )
        }
    return {}


def memory_limits(spec: ConvSpec, itemsize: int, workspace_limit: int) -> dict[str, str]:
    """The algorithms auto leaves out of ``spec`` as they would pass the workspace limit, with
    the reason: a Winograd form whose transformed kernel is made whole (see
    :func:`winograd.whole_u_past_limit`), and FFT where even one output channel's kernel
    spectrum and one image's transforms pass it (:func:`fft.past_limit`)."""
    out: dict[str, str] = {}
    need = fft.past_limit(spec, itemsize, workspace_limit) if fft.applies(spec) is None else 0
    if need:
        out["fft"] = (
            f"fft's kernel spectrum for one output channel and one image's transforms take "
            f"{need / 2**20:.1f} MiB here, past the workspace limit "
            f"({workspace_limit / 2**20:.1f} MiB)"
        )
    if winograd.applies(spec) is not None:
        return out
    for m in (4, 2):
        need = winograd.whole_u_past_limit(spec, m, np.dtype(f"f{itemsize}"), workspace_limit)
        if need:
            out[f"winograd_f{m}"] = (
                f"winograd_f{m} makes its transformed kernel whole here ({need / 2**20:.1f} "
                f"MiB), which with a block of tiles a core passes the workspace limit "
                f"({workspace_limit / 2**20:.1f} MiB)"
            )
    return out


def estimates(
    spec: ConvSpec, itemsize: int = 4, workspace_limit: int | None = None
) -> dict[str, float]:
    """The cost model's seconds for every algorithm that applies to ``spec``, under
    ``workspace_limit`` (by default the one in force)."""
    limit = get_workspace_limit() if workspace_limit is None else workspace_limit
    out: dict[str, float] = {}
    for name, why in applicable(spec).items():
        if why is not None or name == "winograd":  # an alias, costed as its two variants
            continue
        if name == "gemm":
            out[name] = _gemm_cost(spec, itemsize)
        elif name == "pointwise":
            out[name] = _pointwise_cost(spec, itemsize)
        elif name == "depthwise":
            out[name] = _depthwise_cost(spec, itemsize)
        elif name == "winograd_f4":
            out[name] = _winograd_cost(spec, itemsize, 4, limit)
        elif name == "winograd_f2":
            out[name] = _winograd_cost(spec, itemsize, 2, limit)
        elif name == "fft":
            out[name] = _fft_cost(spec, itemsize, limit)
        elif name == "direct":
            out[name] = _direct_cost(spec, itemsize)
        out[name] += _FIXED_SECONDS[name]
    if "gemm" in out and spec.n * spec.oh * spec.ow * spec.patch_size <= gemm.SMALL_ELEMENTS:
        out["gemm"] -= _FIXED_SECONDS["gemm"] / 2  # the gather fast path
    return out


_REASONS = {
    "gemm": "patches x kernel matrix (implicit from the input rows, or cache-sized tiles)",
    "pointwise": "1x1 kernel: the input itself is the patch matrix",
    "depthwise": "groups == c_in: shifted multiply-adds, no patch matrix",
    "winograd_f4": "3x3 stride 1: Winograd F(4x4, 3x3), 4x fewer multiplications",
    "winograd_f2": "3x3 stride 1: Winograd F(2x2, 3x3), 2.25x fewer multiplications",
    "fft": "large kernel: per-frequency products of FFT spectra",
    "direct": "few channels: SIMD vectors along the image rows, all taps in registers",
}

_measured: dict[tuple[ConvSpec, str], str] = {}


def measured_plans() -> dict[tuple[ConvSpec, str], str]:
    """The winners that ``algorithm="measure"`` has timed so far, by (spec, dtype)."""
    return dict(_measured)


def choose(
    spec: ConvSpec,
    algorithm: str = "auto",
    *,
    func: str = "conv2d",
    itemsize: int = 4,
    workspace_limit: int | None = None,
) -> Plan:
    """Pick an algorithm for ``spec`` ("auto"), or check that a named one applies.

    auto, measure and the "winograd" alias leave out what would pass the tolerance table
    (:func:`accuracy_limits`) or ``workspace_limit`` (:func:`memory_limits`; by default the
    one in force); asked for by name, those still run.

    Raises PatchconvError for an unknown name or a named algorithm that does not apply.
    An empty batch is planned as one image (the cost model divides by the batch).
    """
    if spec.n == 0:
        spec = replace(spec, n=1)
    if not isinstance(algorithm, str):
        raise TypeError(f"{func}: algorithm must be a string; got {algorithm!r}")
    if algorithm not in ("auto", "measure", *ALGORITHMS):
        raise PatchconvError(
            f"{func}: algorithm must be 'auto' or one of {('measure', *ALGORITHMS)}; "
            f"got {algorithm!r}"
        )
    reasons = applicable(spec)
    skipped = tuple((n, why) for n, why in reasons.items() if why is not None and n != "winograd")
    limit = get_workspace_limit() if workspace_limit is None else workspace_limit
    costs = estimates(spec, itemsize, limit)
    ranked = tuple(sorted(((n, s * 1e3) for n, s in costs.items()), key=lambda p: p[1]))
    limits = {
        n: why
        for n, why in {
            **accuracy_limits(spec, itemsize),
            **memory_limits(spec, itemsize, limit),
        }.items()
        if n in costs
    }
    if algorithm in ("auto", "measure", "winograd") and limits:
        skipped += tuple(limits.items())
        ranked = tuple(p for p in ranked if p[0] not in limits)
        costs = {n: c for n, c in costs.items() if n not in limits}
    if algorithm in ("auto", "measure"):
        best = ranked[0][0]
        if len(ranked) > 1:
            why = f"{_REASONS[best]}; cheapest by the cost model ({ranked[0][1]:.3g} ms est.)"
        else:
            why = f"{_REASONS[best]}; the only algorithm that applies"
        return Plan(best, why, ranked, skipped)
    name = algorithm
    if name == "winograd":
        why_not = reasons["winograd_f4"]
        if why_not is None:  # the cheaper form auto would consider, else F(2x2): the
            # smaller transformed kernel and the smaller rounding error
            allowed = [n for n in ("winograd_f4", "winograd_f2") if n in costs]
            name = min(allowed, key=lambda n: costs[n]) if allowed else "winograd_f2"
    else:
        why_not = reasons[name]
    if why_not is not None:
        raise PatchconvError(f"{func}: algorithm {algorithm!r} does not apply: {why_not}")
    return Plan(name, f"{_REASONS[name]}; requested by name", ranked, skipped)


Runner = Callable[..., np.ndarray]


def _runner(name: str) -> Runner:
    if name == "gemm":
        return gemm.forward
    if name == "pointwise":
        return pointwise.forward
    if name == "depthwise":
        return depthwise.forward
    if name == "winograd_f4":
        return lambda *a: winograd.forward(*a, m=4)
    if name == "winograd_f2":
        return lambda *a: winograd.forward(*a, m=2)
    if name == "fft":
        return fft.forward
    if name == "direct":
        return direct.forward
    raise AssertionError(name)  # pragma: no cover


def _measure(
    plan: Plan,
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> Plan:
    """Time every applicable algorithm once (after a warm-up) and keep the fastest."""
    key = (spec, x.dtype.str)
    if key not in _measured:
        timings = []
        for name, _ in plan.estimates:
            run = _runner(name)
            run(x, kernel, bias, spec, workspace_limit)  # warm-up: compile, fault in buffers
            start = time.perf_counter()
            run(x, kernel, bias, spec, workspace_limit)
            timings.append((time.perf_counter() - start, name))
        _measured[key] = min(timings)[1]
    best = _measured[key]
    return Plan(best, f"{_REASONS[best]}; fastest when measured", plan.estimates, plan.skipped)


def forward(
    plan: Plan,
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    measure: bool = False,
) -> tuple[np.ndarray, Plan]:
    """Run the planned algorithm's forward pass (NHWC in, NHWC out); returns the plan run."""
    name = plan.algorithm
    if (
        not measure
        and name == "gemm"
        and spec.groups == 1
        and spec.n * spec.oh * spec.ow * spec.patch_size <= (gemm.SMALL_ELEMENTS)
    ):
        return gemm.small_forward(x, kernel, bias, spec), plan
    if not measure and _blas_free(name, spec, x.dtype, workspace_limit):
        return _runner(name)(x, kernel, bias, spec, workspace_limit), plan
    with single_threaded_blas():  # our threads split the work (see _runtime)
        if measure:
            plan = _measure(plan, x, kernel, bias, spec, workspace_limit)
        return _runner(plan.algorithm)(x, kernel, bias, spec, workspace_limit), plan


def _blas_free(name: str, spec: ConvSpec, dtype: np.dtype, workspace_limit: int) -> bool:
    """True if the forward pass of ``name`` calls no BLAS for ``spec`` (compiled kernels or
    elementwise NumPy only), so NumPy's BLAS threads can be left as they are."""
    if name in ("gemm", "pointwise"):
        return gemm.implicit_applies(spec, dtype.itemsize)
    if name in ("depthwise", "direct"):
        return True
    if name.startswith("winograd"):
        return winograd.blas_free(spec, dtype, workspace_limit, m=4 if name.endswith("4") else 2)
    return False


def _transposed(
    spec: ConvSpec, kernel: np.ndarray, workspace_limit: int
) -> tuple[ConvSpec, np.ndarray] | None:
    """grad_x of a stride-1 layer as a forward convolution of grad_out, or None.

    The flipped kernel goes in a kept work buffer: made fresh each call, its pages were faulted
    in each time (with the weight gradient written by its first tile, not added to zeros: N1
    7x7x512 backward 7.0-7.8 -> 3.9-4.0 ms).

    ``grad_x[y] = sum_i grad_out[y + top - i*d] * kernel[i]``: a correlation of grad_out with
    the flipped kernel (input and output channels swapped per group), padded by
    ``(kh - 1) * d - top`` above and ``(kh - 1) * d - bottom`` below.
    """
    if spec.strides != (1, 1):
        return None
    (pt, pb), (pl, pr) = spec.pads
    eh = (spec.kh - 1) * spec.dilation[0]
    ew = (spec.kw - 1) * spec.dilation[1]
    pads = ((eh - pt, eh - pb), (ew - pl, ew - pr))
    if min(pads[0] + pads[1]) < 0:
        return None  # padding wider than the kernel: some inputs see no output
    g, cg, cog = spec.groups, spec.c_in_group, spec.c_out_group
    flat = scratch("backward.flipped", kernel.size, kernel.dtype, limit=workspace_limit)
    kt = flat.reshape(spec.kh, spec.kw, cog, g * cg)
    if g == 1 and spec.c_in * spec.c_out >= _COMPILED_FLIP_VALUES and get_numba() is not None:
        # NumPy's strided transpose copy runs at ~3 GB/s (2.8 ms on 3x3x512x512).
        from patchconv.algorithms import _simd  # imports numba

        kc = np.ascontiguousarray(kernel)
        _simd.parallel(_simd.flip_swap, (kc, kt), spec.kh * spec.kw)
    else:
        flipped = kernel[::-1, ::-1].reshape(spec.kh, spec.kw, cg, g, cog)
        # (kh, kw, c_out/G, c_in): kt[i, j, q, g*cg + c] = kernel[-1-i, -1-j, c, g*cog + q]
        np.copyto(kt.reshape(spec.kh, spec.kw, cog, g, cg), flipped.transpose(0, 1, 4, 3, 2))
    tspec = ConvSpec(
        n=spec.n,
        h=spec.oh,
        w=spec.ow,
        c_in=spec.c_out,
        c_out=spec.c_in,
        kh=spec.kh,
        kw=spec.kw,
        strides=(1, 1),
        dilation=spec.dilation,
        pads=pads,
        groups=g,
        data_format="channels_last",
        oh=spec.h,
        ow=spec.w,
    )
    return tspec, kt


def backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    kernel: np.ndarray,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    algorithm: str = "auto",
    func: str = "conv2d_backward",
    need_grad_x: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any]]:
    """grad_x and grad_kernel (NHWC, HWIO) through the same family of algorithms; grad_x is
    None, and not computed, with ``need_grad_x=False``.

    grad_x: at stride 1, a forward convolution of ``grad_out`` with the flipped, transposed
    kernel, so it takes whichever algorithm the chooser picks for that (Winograd for 3x3
    layers); otherwise col2im of ``grad_out @ kernel^T`` per tile. grad_kernel: pointwise and
    depthwise layers have their own kernels; a layer whose forward plan is Winograd sums
    ``V^T @ (A dY A^T)`` per transform position (with numba); a layer with few input
    channels that ``direct`` applies to (planned direct, or any plan under "auto") sums
    input planes times gradient planes (a direct plan with deeper inputs takes the next
    cheapest family's gradients); everything else accumulates ``patches^T @ grad_out`` tile
    by tile.
    Returns the two gradients and what ran.
    """
    with single_threaded_blas():  # our threads split the work (see _runtime)
        return _backward(grad_out, x, kernel, spec, workspace_limit, algorithm, func, need_grad_x)


def _backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    kernel: np.ndarray,
    spec: ConvSpec,
    workspace_limit: int,
    algorithm: str,
    func: str,
    need_grad_x: bool,
) -> tuple[np.ndarray | None, np.ndarray, dict[str, Any]]:
    itemsize = x.dtype.itemsize
    plan = choose(spec, algorithm, func=func, itemsize=itemsize, workspace_limit=workspace_limit)
    name = plan.algorithm
    used: dict[str, Any] = {"forward_plan": plan}
    if name == "direct" and spec.c_in > direct.GRAD_KERNEL_C_IN:
        # Deeper inputs: the next family's gradients (Winograd's for 3x3 layers; gemm applies
        # everywhere), whose grad_x is a forward convolution again (often direct's).
        name = next(n for n, _ in plan.estimates if n != "direct")
    if name in ("pointwise", "depthwise"):
        module = pointwise if name == "pointwise" else depthwise
        grad_x, grad_kernel = module.backward(
            grad_out, x, kernel, spec, workspace_limit, need_x=need_grad_x
        )
        used["grad_x"] = name if need_grad_x else "not computed"
        used["grad_kernel"] = name
        assert grad_kernel is not None
        return grad_x, grad_kernel, used
    # The weight gradient by the forward's Winograd form; under auto F(2x2)'s where F(4x4)'s
    # does not apply but F(2x2)'s does (N8 7x7x512, F(4x4) forward by panels: 32 tiles, too
    # few for its split weight gradient; F(2x2)'s 128 took 5.0 ms, gemm's 8.0).
    forms = {"winograd_f4": (4, 2), "winograd_f2": (2,)}.get(name, ())
    if algorithm not in ("auto", "measure"):
        forms = forms[:1]
    m = next(
        (m for m in forms if winograd.grad_kernel_applies(spec, itemsize, workspace_limit, m=m)), 0
    )
    if m:
        grad_kernel = winograd.grad_kernel(grad_out, x, spec, workspace_limit, m=m)
        used["grad_kernel"] = f"winograd_f{m} (a*a products of transformed tiles)"
    elif (
        (name == "direct" or algorithm in ("auto", "measure"))
        and spec.c_in <= direct.GRAD_KERNEL_C_IN
        and direct.applies(spec) is None
        # Its sums (16 per tap and channel pair, a set per core) must fit the limit: 11x7x8x64
        # took 11.4 MiB under a 1 MiB limit, where gemm's tiles take 0.7.
        and direct.grad_kernel_bytes(spec, itemsize, workspace_limit) <= workspace_limit
    ):
        # Under "auto" whichever algorithm runs forward (often gemm's narrow implicit form):
        # N64 32x32 3 -> 32 took 1.8 ms, gemm's tiles 3.2; 1024x1024 3 -> 16 23 against 88.
        grad_kernel = direct.grad_kernel(grad_out, x, spec, workspace_limit)
        used["grad_kernel"] = "direct (input planes times gradient planes)"
    else:
        _, grad_kernel = gemm.backward(grad_out, x, kernel, spec, workspace_limit, need_x=False)
        used["grad_kernel"] = "gemm"
    if not need_grad_x:
        used["grad_x"] = "not computed"
        return None, grad_kernel, used
    # The work buffers kept from grad_kernel count against the limit: grad_x runs in the room
    # they leave, or, where that is under half the limit, they are dropped first (each
    # gradient kept to the limit on its own, N16 4x4 1024 -> 512 under 8 MiB peaked at 11.8).
    room = workspace_limit - workspace_kept()
    if room < workspace_limit // 2:
        release_this_call()
        room = workspace_limit
    # The flipped kernel is workspace: it takes at most half the limit, and the transposed
    # convolution runs in what it leaves (N1 14x14 1024 -> 1000 under 2 MiB made its 35 MiB
    # beside the limit); else col2im reads the kernel as it is.
    flip_fits = 2 * kernel.nbytes <= room
    transposed = _transposed(spec, kernel, room) if flip_fits else None
    if transposed is not None:
        tspec, kt = transposed
        rest = room - kt.nbytes
        tplan = choose(tspec, "auto", func=func, itemsize=itemsize, workspace_limit=rest)
        grad_x, _ = forward(tplan, grad_out, kt, None, tspec, rest)
        used["grad_x"] = f"{tplan.algorithm} (transposed convolution)"
    else:
        grad_x, _ = gemm.backward(grad_out, x, kernel, spec, room, need_kernel=False)
        too_big = not flip_fits and spec.strides == (1, 1)
        used["grad_x"] = "gemm (col2im)" + (
            ": the flipped kernel would take over half the workspace limit" if too_big else ""
        )
    assert grad_x is not None and grad_kernel is not None
    return grad_x, grad_kernel, used
