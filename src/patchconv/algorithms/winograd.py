"""Winograd's minimal filtering, F(4x4, 3x3) and F(2x2, 3x3), for 3x3 stride-1 layers.

A 3x3 cross-correlation producing an ``m x m`` output block from an ``a x a`` input block
(``a = m + 2``) can be written (Lavin and Gray, 2016) as

    Y = A^T [ (G g G^T) * (B^T d B) ] A

where ``*`` is elementwise per channel pair, summed over input channels. With all channels, the
elementwise step is ``a*a`` independent matrix products ``V[xi] (tiles, c_in) @ U[xi]
(c_in, c_out)``: F(4x4, 3x3) does 36 multiplications per 16 outputs instead of 9*16 = 144, four
times fewer; F(2x2, 3x3) does 16 per 4 instead of 36, 2.25 times fewer.

The transforms are products with the small constant matrices ``B^T``, ``G``, ``A^T`` (their zero
entries skipped). The kernel transform is one product per call. The output is processed in
blocks of tiles sized for the cache: input transform (one block of tiles per core), ``a*a``
BLAS products, output transform straight into the NHWC result; each core takes its own blocks
through all three steps with single-threaded BLAS.
For deep layers whose tiles all fit one block (14x14x256, 7x7x512), the cores instead split
the input and output transforms by tiles and the ``a*a`` products by transform position, each
core transforming only its own share of the kernel, so ``U`` is built and read once in all.
Where ``U`` would be too large for the cores' caches (over 8 MB) and the tiles few, they split
the products by panels of output channels instead, and make ``U`` a chunk of input channels
at a time in L2 (:func:`panel_products`): it is then never written out. With fewer than 6
tiles (7x7x512 at batch 1 under F(4x4)) they split the input channels instead, each core
making ``U`` for all output channels a chunk at a time and summing its own part of ``M``
(:func:`channel_products`), so the kernel is read in whole rows.

Accuracy: the transformed products are sums over the input channels of values several times
larger than the outputs they make, so their rounding errors grow with the channels and are
then multiplied by ``A^T``. Measured against a float64 reference on random normal data (see
tests/test_algorithms.py and tests/test_algorithms_fast_paths.py), the largest error relative
to the largest output in float32 is about 3e-7 (32 input channels) to 1e-6 (512) for F(2x2),
and 2e-6 to 7e-6 for F(4x4) (direct: 5e-7 to 1.3e-6), within the float32 tolerance (1e-5).
F(4x4) uses the interpolation points 0, 1, -1, 2, -1/2: with the usual 0, +-1, +-2 it
reached 1.2e-5 to 1.9e-5 from 256 channels on. Even so it reaches about 9e-6 at 1024 input
channels and 1.1e-5 to 1.6e-5 at 2048, so auto leaves F(4x4) out of float32 layers with more
than 512 (``algorithms.accuracy_limits``). In float64 both stay near 1e-15.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from patchconv._spec import ConvSpec
from patchconv.algorithms._runtime import (
    APART_CHANNELS,
    VECTOR_BYTES,
    aligned_empty,
    blas_pinned,
    get_numba,
    matmul,
    n_workers,
    parallel_for,
    scratch,
)

__all__ = [
    "BLOCK_BYTES",
    "TRANSFORMS",
    "applies",
    "blas_free",
    "channel_products",
    "forward",
    "grad_kernel",
    "grad_kernel_applies",
    "kernel_transform",
    "panel_products",
    "split_products",
    "u_chunk_values",
    "u_panels",
    "u_streamed",
    "whole_u_past_limit",
]

# Largest U[xi] (c_in*c_out values; in column panels a few more where 4 vectors do not divide
# c_out) for the SIMD products of the split schedule, and of the fused blocks, which read U
# once per block of tiles and so want it in L2.
_SIMD_PRODUCT_BYTES = 2**21
_FUSED_U_BYTES = 2**19
# Each thread's chunk of U in the split schedule by panels (winograd_panel_products).
_PANEL_U_BYTES = 2**20
# Most tiles for it: each panel reads all of V again (measured, F(4x4): N8 7x7x512, 32 tiles,
# 4.7-5.2 -> 3.7-3.8 ms; N8 14x14x256, 128 tiles, 2.6-2.7 -> 3.3-3.4).
_PANEL_MAX_TILES = 64
# The largest M (a*a, tiles, c_out) of one part of the input channels in the schedule by
# input channels (winograd_channel_products).
_CHANNEL_MAX_M_BYTES = 2**20
# Fewest tiles for which the split weight gradient beats gemm's (see grad_kernel_applies).
_SPLIT_GRAD_MIN_TILES = 64
# Bytes of transformed input plus product per block of tiles (per core): about one core's L2,
# so a block's V and M stay in cache between the transforms and the products.
BLOCK_BYTES = 2 * 2**20


def _f23() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
    return bt, g, at


def _f43() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Interpolation points 0, 1, -1, 2, -1/2 and infinity. The points set the rounding error
    # (Barabasz et al., 2020, on the accuracy of Winograd convolution); of the sets tried here
    # (+-2, +-1/2, +-3/2, 2 and -1/2, 3/2 and -2/3, ...) this one was the most accurate, about
    # 3x better in float32 than the usual 0, +-1, +-2 (512 input channels, largest error over
    # largest output: 6e-6 against 1.7e-5), for 15 operations a column in the input transform
    # against 13. B^T, G and A^T were solved exactly (sympy) and checked on symbols.
    bt = np.array(
        [
            [1, 3 / 2, -2, -3 / 2, 1, 0],
            [0, -1, -5 / 2, -1 / 2, 1, 0],
            [0, 1, 1 / 2, -5 / 2, 1, 0],
            [0, -1 / 2, -1, 1 / 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 1, 3 / 2, -2, -3 / 2, 1],
        ],
        dtype=np.float64,
    )
    g = np.array(
        [
            [1, 0, 0],
            [-1 / 3, -1 / 3, -1 / 3],
            [1 / 3, -1 / 3, 1 / 3],
            [1 / 15, 2 / 15, 4 / 15],
            [-16 / 15, 8 / 15, -4 / 15],
            [0, 0, 1],
        ],
        dtype=np.float64,
    )
    at = np.array(
        [
            [1, 1, 1, 1, 1, 0],
            [0, 1, -1, 2, -1 / 2, 0],
            [0, 1, 1, 4, 1 / 4, 0],
            [0, 1, -1, 8, -1 / 8, 1],
        ],
        dtype=np.float64,
    )
    return bt, g, at


# Output block size m -> (B^T (a, a), G (a, 3), A^T (m, a)).
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {2: _f23(), 4: _f43()}


def applies(spec: ConvSpec) -> str | None:
    """None if Winograd handles ``spec``, else the reason it does not."""
    if (spec.kh, spec.kw) != (3, 3):
        return f"winograd needs a 3x3 kernel; got {spec.kh}x{spec.kw}"
    if spec.strides != (1, 1):
        return f"winograd needs strides 1; got {spec.strides}"
    if spec.dilation != (1, 1):
        return f"winograd needs dilation_rate 1; got {spec.dilation}"
    if spec.groups != 1:
        return f"winograd needs groups 1; got {spec.groups}"
    return None


def kernel_transform(
    kernel: np.ndarray,
    m: int,
    dtype: np.dtype,
    *,
    workspace_limit: int | None = None,
    native: bool = False,
    panels: bool = False,
) -> np.ndarray:
    """HWIO 3x3 kernel -> ``U = G g G^T`` as ``(a*a, c_in, c_out)``, in ``dtype``; with
    ``panels``, in the column panels our products read, ``(a*a, panels, c_in, 4 lanes)`` (see
    :func:`u_panels`; needs numba and ``c_out`` of 4 vectors or more).

    One product ``kron(G, G) (a*a, 9) @ kernel (9, c_in*c_out)``: a single pass over the kernel.
    With ``workspace_limit``, the result lives in a reused work buffer (valid until the next
    call on this thread). ``native``: split it over numba's threads (where what follows runs
    there too), not the Python pool.
    """
    a = m + 2
    c_in, c_out = kernel.shape[2:]
    compiled = _compile()
    if panels and (compiled is None or c_out * dtype.itemsize < 4 * VECTOR_BYTES):
        raise ValueError(
            f"kernel_transform: column panels need numba and c_out of 4 vectors "
            f"({4 * VECTOR_BYTES // dtype.itemsize} {dtype}) or more; got c_out {c_out}"
        )
    kron = _kron(m, dtype)
    shape = u_panels(a, c_in, c_out, dtype) if panels else (a * a, c_in, c_out)
    size = math.prod(shape)
    if workspace_limit is None:
        u = np.empty(shape, dtype=dtype)
    else:
        u = scratch("winograd.u", size, dtype, limit=workspace_limit).reshape(shape)
    k9 = np.ascontiguousarray(kernel.reshape(9, c_in * c_out), dtype=dtype)
    if compiled is not None and c_in * c_out * dtype.itemsize >= VECTOR_BYTES:
        from patchconv.algorithms import _simd  # imports numba

        # Positions per thread: only kernels of a MB or more are worth a hand-off.
        per_position = c_in * c_out * dtype.itemsize
        _simd.parallel(
            _simd.winograd_kernel_panels if panels else _simd.winograd_kernel,
            (k9, kron, u if panels else u.reshape(a * a, c_in * c_out)),
            a * a,
            min_items=max(1, 2**20 // per_position),
            pieces_per_worker=1,
            native=native,
        )
    else:  # not reached with panels: c_out alone fills 4 vectors
        np.matmul(kron, k9, out=u.reshape(a * a, c_in * c_out))
    return u


def u_panels(a: int, c_in: int, c_out: int, dtype: np.dtype) -> tuple[int, int, int, int]:
    """Shape of ``U`` in column panels, ``(a*a, panels, c_in, 4 lanes)``: panel ``p`` holds
    output channels ``pc : pc + 4 lanes``, ``pc = min(p * 4 lanes, c_out - 4 lanes)``."""
    width = 4 * VECTOR_BYTES // dtype.itemsize
    return (a * a, -(-c_out // width), c_in, width)


@lru_cache(maxsize=8)
def _kron(m: int, dtype: np.dtype) -> np.ndarray:
    """``kron(G, G)`` (a*a, 9): ``[(r, s), (i, j)] = G[r, i] G[s, j]``, so ``U = kron @ g``.
    Cached and read-only (np.kron took 60 us of a 0.6 ms call)."""
    g = TRANSFORMS[m][1]
    kron = np.kron(g, g).astype(dtype)
    kron.setflags(write=False)
    return kron


def _products(v: np.ndarray, u: np.ndarray, out: np.ndarray, m: int) -> np.ndarray:
    """``out[p] = v[p] @ u[p]`` by BLAS, ``v`` (P, T, c_in), ``u`` (P, c_in, c_out). Under
    F(4x4), past ``APART_CHANNELS`` input channels, each chunk of them is summed apart and
    added to ``out``, as our products do: OpenBLAS' sums ran as one total over every input
    channel, and F(4x4) passed the tolerance table (float32, error over the bound: N8 8x8
    4096 -> 32 1.28 -> 0.41, N32 8x8 2048 -> 32 1.01 -> 0.44). F(2x2) stays within it (0.2)."""
    c_in, step = v.shape[-1], APART_CHANNELS
    if m == 2 or c_in <= step:
        return np.matmul(v, u, out=out)
    # Positions a group at a time, so the chunk's sum takes at most 1 MiB (or one position).
    group = max(1, 2**20 // (out[0].nbytes or 1))
    part = np.empty((min(group, out.shape[0]), *out.shape[1:]), out.dtype)
    for p0 in range(0, out.shape[0], group):
        o = out[p0 : p0 + group]
        np.matmul(v[p0 : p0 + group, :, :step], u[p0 : p0 + group, :step], out=o)
        for c0 in range(step, c_in, step):
            vp, up = v[p0 : p0 + group, :, c0 : c0 + step], u[p0 : p0 + group, c0 : c0 + step]
            np.add(o, np.matmul(vp, up, out=part[: len(o)]), out=o)
    return out


_kernels: dict[str, Callable[..., Any]] | None = None


def _compile() -> dict[str, Callable[..., Any]] | None:
    global _kernels
    numba = get_numba()
    if numba is None:
        return None
    if _kernels is not None:
        return _kernels
    njit = numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)

    @njit
    def tile_at(tt, th, tw):  # type: ignore[no-untyped-def]
        # Flat tile index over (n, th, tw) -> (image, tile row, tile column).
        b = tt // (th * tw)
        rem = tt - b * th * tw
        return b, rem // tw, rem - (rem // tw) * tw

    @njit
    def input_transform(x, bt, pt, pl, m, th, tw, t0, lo, hi, v):  # type: ignore[no-untyped-def]
        # Tiles t0+lo : t0+hi (flattened over n, th, tw) -> v[:, lo:hi, :] (a*a, T, c_in).
        _, h, w, c = x.shape
        a = bt.shape[0]
        d = np.zeros((a, a, c), dtype=v.dtype)
        tmp = np.empty((a, a, c), dtype=v.dtype)
        for t in range(lo, hi):
            b, ty, tx = tile_at(t0 + t, th, tw)
            y0 = ty * m - pt
            x0 = tx * m - pl
            for i in range(a):
                y = y0 + i
                inside_y = 0 <= y < h
                for j in range(a):
                    xx = x0 + j
                    if inside_y and 0 <= xx < w:
                        for q in range(c):
                            d[i, j, q] = x[b, y, xx, q]
                    else:
                        for q in range(c):
                            d[i, j, q] = 0.0
            for r in range(a):  # tmp = B^T d
                for j in range(a):
                    for q in range(c):
                        tmp[r, j, q] = 0.0
                for i in range(a):
                    coef = bt[r, i]
                    if coef != 0.0:
                        for j in range(a):
                            for q in range(c):
                                tmp[r, j, q] += coef * d[i, j, q]
            for r in range(a):  # v = tmp B
                for s in range(a):
                    vv = v[r * a + s, t]
                    for q in range(c):
                        vv[q] = 0.0
                    for j in range(a):
                        coef = bt[s, j]
                        if coef != 0.0:
                            for q in range(c):
                                vv[q] += coef * tmp[r, j, q]

    @njit
    def output_transform(mm, at, bias, out, th, tw, t0, lo, hi):  # type: ignore[no-untyped-def]
        # mm (a*a, T, c_out) for tiles t0+lo : t0+hi -> out (n, oh, ow, c_out), bias added.
        _, oh, ow, c = out.shape
        m, a = at.shape
        tmp = np.empty((m, a, c), dtype=mm.dtype)
        y = np.empty(c, dtype=mm.dtype)
        for t in range(lo, hi):
            b, ty, tx = tile_at(t0 + t, th, tw)
            for r in range(m):  # tmp = A^T M
                for j in range(a):
                    for q in range(c):
                        tmp[r, j, q] = 0.0
                for i in range(a):
                    coef = at[r, i]
                    if coef != 0.0:
                        for j in range(a):
                            src = mm[i * a + j, t]
                            for q in range(c):
                                tmp[r, j, q] += coef * src[q]
            for r in range(m):  # y = tmp A
                oy = ty * m + r
                if oy >= oh:
                    break
                for s in range(m):
                    ox = tx * m + s
                    if ox >= ow:
                        break
                    for q in range(c):
                        y[q] = bias[q]
                    for j in range(a):
                        coef = at[s, j]
                        if coef != 0.0:
                            for q in range(c):
                                y[q] += coef * tmp[r, j, q]
                    dst = out[b, oy, ox]
                    for q in range(c):
                        dst[q] = y[q]

    @njit
    def grad_output_transform(go, at, th, tw, t0, lo, hi, gm):  # type: ignore[no-untyped-def]
        # The adjoint of output_transform: grad_out tiles t0+lo : t0+hi (m x m, zeros past the
        # edge) -> gm[:, lo:hi, :] (a*a, T, c_out) = A dY A^T.
        _, oh, ow, c = go.shape
        m, a = at.shape
        tmp = np.empty((a, m, c), dtype=gm.dtype)
        for t in range(lo, hi):
            b, ty, tx = tile_at(t0 + t, th, tw)
            for i in range(a):  # tmp = A dY, (a, m)
                for s in range(m):
                    for q in range(c):
                        tmp[i, s, q] = 0.0
                for r in range(m):
                    coef = at[r, i]
                    oy = ty * m + r
                    if coef == 0.0 or oy >= oh:
                        continue
                    for s in range(m):
                        ox = tx * m + s
                        if ox >= ow:
                            break
                        src = go[b, oy, ox]
                        for q in range(c):
                            tmp[i, s, q] += coef * src[q]
            for i in range(a):  # gm = tmp A^T
                for j in range(a):
                    dst = gm[i * a + j, t]
                    for q in range(c):
                        dst[q] = 0.0
                    for s in range(m):
                        coef = at[s, j]
                        if coef != 0.0:
                            for q in range(c):
                                dst[q] += coef * tmp[i, s, q]

    from patchconv.algorithms import _simd  # imports numba

    _kernels = {
        "in": input_transform,
        "out": output_transform,
        "grad_out": grad_output_transform,
        "in_simd": _simd.winograd_input,
        "out_simd": _simd.winograd_output,
        "kernel_simd": _simd.winograd_kernel,
        "grad_out_simd": _simd.winograd_grad_output,
        "products_simd": _simd.batched_matmul,
    }
    return _kernels


def kernels() -> dict[str, Callable[..., Any]] | None:
    """The compiled transforms (compiling them now if needed), or None without numba."""
    return _compile()


def _transform_kernels(
    compiled: dict[str, Callable[..., Any]], spec: ConvSpec, dtype: np.dtype, m: int
) -> tuple[Callable[..., None], Callable[..., None]]:
    """``in_t(x, pt, pl, th, tw, t0, lo, hi, v)`` and ``out_t(mm, bias, out, th, tw, t0, lo,
    hi)`` for F(m x m, 3x3): the SIMD forms (constant matrices written out, one vector of
    channels at a time in registers) where the channels fill a vector, else the loops above."""
    bt, _, at = TRANSFORMS[m]
    if spec.c_in * dtype.itemsize >= VECTOR_BYTES:
        in_simd = compiled["in_simd"]

        def in_t(*args: Any) -> None:
            x, pt, pl, *rest = args
            in_simd(x, pt, pl, m, *rest)

    else:
        in_loop, btc = compiled["in"], bt.astype(dtype)

        def in_t(*args: Any) -> None:
            x, pt, pl, *rest = args
            in_loop(x, btc, pt, pl, m, *rest)

    if spec.c_out * dtype.itemsize >= VECTOR_BYTES:
        out_simd = compiled["out_simd"]

        def out_t(*args: Any) -> None:
            out_simd(*args[:3], m, *args[3:])

    else:
        out_loop, atc = compiled["out"], at.astype(dtype)

        def out_t(*args: Any) -> None:
            out_loop(args[0], atc, *args[1:])

    return in_t, out_t


def _grad_output_kernel(
    compiled: dict[str, Callable[..., Any]], spec: ConvSpec, dtype: np.dtype, m: int
) -> Callable[..., None]:
    """``gout_t(go, th, tw, t0, lo, hi, gm)``: grad_out tiles -> ``A dY A^T``, in the SIMD
    form where ``c_out`` fills a vector, else the loop above."""
    if spec.c_out * dtype.itemsize >= VECTOR_BYTES:
        simd = compiled["grad_out_simd"]

        def gout_t(go: np.ndarray, *rest: Any) -> None:
            simd(go, m, *rest)

    else:
        loop, atc = compiled["grad_out"], TRANSFORMS[m][2].astype(dtype)

        def gout_t(go: np.ndarray, *rest: Any) -> None:
            loop(go, atc, *rest)

    return gout_t


def _numpy_block(
    x: np.ndarray,
    bt: np.ndarray,
    at: np.ndarray,
    u: np.ndarray,
    bias: np.ndarray,
    out: np.ndarray,
    spec: ConvSpec,
    m: int,
    b0: int,
    b1: int,
    ty0: int,
    ty1: int,
) -> None:
    """Without numba: tile rows ty0:ty1 of images b0:b1, the transforms as dense matrix
    products (einsum)."""
    a = m + 2
    tw = -(-spec.ow // m)
    (pt, _), (pl, _) = spec.pads
    th = ty1 - ty0
    hp, wp = th * m + 2, tw * m + 2
    xp = np.zeros((b1 - b0, hp, wp, spec.c_in), dtype=x.dtype)  # the band, zero-padded
    top = ty0 * m - pt  # x's row at the band's row 0
    ys, xs = max(0, -top), max(0, pl)  # where the first copied row/col of x lands
    rows = max(0, min(spec.h - max(0, top), hp - ys))
    cols = min(spec.w, wp - xs)
    xp[:, ys : ys + rows, xs : xs + cols] = x[b0:b1, max(0, top) : max(0, top) + rows, :cols]
    st = xp.strides
    tiles = np.lib.stride_tricks.as_strided(
        xp,
        (b1 - b0, th, tw, a, a, spec.c_in),
        (st[0], m * st[1], m * st[2], st[1], st[2], st[3]),
        writeable=False,
    )
    btc = bt.astype(x.dtype)
    v = np.einsum("ri,nyxijc,sj->rsnyxc", btc, tiles, btc, optimize=True)  # (a, a, n, th, tw, c)
    vv = v.reshape(a * a, -1, spec.c_in)
    mm = _products(vv, u, np.empty((a * a, vv.shape[1], spec.c_out), x.dtype), m)  # (a*a, T, c_out)
    mm = mm.reshape(a, a, b1 - b0, th, tw, spec.c_out)
    atc = at.astype(x.dtype)
    y = np.einsum("ri,ijnyxc,sj->nyrxsc", atc, mm, atc, optimize=True)  # (n, th, m, tw, m, c)
    y = y.reshape(b1 - b0, th * m, tw * m, spec.c_out)
    oy0, oy1 = ty0 * m, min(spec.oh, ty1 * m)
    out[b0:b1, oy0:oy1] = y[:, : oy1 - oy0, : spec.ow] + bias


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    m: int = 4,
    u_ready: np.ndarray | None = None,
) -> np.ndarray:
    """NHWC ``x``, 3x3 HWIO ``kernel`` -> NHWC output by F(m x m, 3x3), ``m`` in (2, 4).

    ``u_ready``: the kernel already transformed, from :func:`prepared_u` for this ``spec``,
    ``m`` and dtype; the products then read it and the kernel is not transformed again."""
    bt, _, at = TRANSFORMS[m]
    a = m + 2
    dtype = x.dtype
    b = np.zeros(spec.c_out, dtype) if bias is None else np.ascontiguousarray(bias, dtype=dtype)
    out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype=dtype)
    th, tw = -(-spec.oh // m), -(-spec.ow // m)
    total = spec.n * th * tw
    compiled = _compile()
    per_tile = a * a * (spec.c_in + spec.c_out) * dtype.itemsize
    if compiled is not None and (
        u_ready is not None or _forward_splits(spec, m, dtype, workspace_limit)
    ):
        _forward_split(compiled, x, kernel, b, out, spec, m, workspace_limit, u_ready)
        return out
    fused = compiled is not None and _fused_blocks(spec, dtype)
    u = kernel_transform(
        kernel, m, dtype, workspace_limit=workspace_limit, native=fused, panels=fused
    )
    if compiled is None:
        # Blocks of whole images, or of tile rows where one image would pass the budget.
        budget = min(max(0, workspace_limit - u.nbytes), BLOCK_BYTES * 4)
        per_tile_row = max(1, tw * per_tile * 4)  # padded copy, tiles, V, M and Y
        band = max(1, min(th, budget // per_tile_row))
        step = max(1, budget // (th * per_tile_row)) if band == th else 1
        for b0 in range(0, spec.n, step):
            for ty0 in range(0, th, band):
                b1, ty1 = min(spec.n, b0 + step), min(th, ty0 + band)
                _numpy_block(x, bt, at, u, b, out, spec, m, b0, b1, ty0, ty1)
        return out
    xc = np.ascontiguousarray(x)
    (pt, _), (pl, _) = spec.pads
    in_t, out_t = _transform_kernels(compiled, spec, dtype, m)
    per_thread = blas_pinned() or fused
    workers = n_workers() if per_thread else 1
    # Each block reads all of U once: with deep channels make blocks big enough to amortise it.
    target = max(BLOCK_BYTES, u.nbytes // 2)
    # The blocks share the limit with U (a block of one tile a core at the least).
    room = max(0, workspace_limit - u.nbytes)
    block = max(1, min(target, room // workers) // per_tile)
    if fused and workers > 1:
        # Equal blocks, as many per core (4 blocks of 64 tiles on N1 56x56x64 left one core
        # 128 tiles and the other 68: 0.46 against 0.32 ms for 4 of 49).
        cap = min(block, 64)
        count = workers * -(-total // (workers * cap))
        block = -(-total // count)
    elif workers > 1:  # several blocks per core, so a core slowed by other work takes fewer
        block = min(block, max(-(-total // (workers * 4)), min(64, -(-total // workers))))
    blocks = [(t0, min(block, total - t0)) for t0 in range(0, total, block)]
    if fused:
        from patchconv.algorithms import _simd  # imports numba

        _simd.parallel(
            _simd.winograd_blocks,
            (xc, pt, pl, m, th, tw, u, b, out, block, total),
            len(blocks),
            work=(a * a * block * (spec.c_in + spec.c_out), dtype, workspace_limit),
        )
        return out

    def run(lo: int, hi: int) -> None:
        vbuf = scratch("winograd.v", a * a * block * spec.c_in, dtype, limit=workspace_limit)
        mbuf = scratch("winograd.m", a * a * block * spec.c_out, dtype, limit=workspace_limit)
        for t0, nt in blocks[lo:hi]:
            v = vbuf[: a * a * nt * spec.c_in].reshape(a * a, nt, spec.c_in)
            mm = mbuf[: a * a * nt * spec.c_out].reshape(a * a, nt, spec.c_out)
            in_t(xc, pt, pl, th, tw, t0, 0, nt, v)
            _products(v, u, mm, m)  # (a*a, T, c_in) @ (a*a, c_in, c_out)
            out_t(mm, b, out, th, tw, t0, 0, nt)

    parallel_for(run, len(blocks), workers=workers)
    return out


def _fused_blocks(spec: ConvSpec, dtype: np.dtype) -> bool:
    """True if whole blocks run as one compiled call (:func:`_simd.winograd_blocks`): the SIMD
    transforms, our products (4 vectors of output channels, ``U[xi]`` within L2), and
    numba's threads to run them (measured on N1 28x28x128, the blocks alone: 0.68 ms as one
    block on one core, 0.38 as two blocks on numba's threads)."""
    c_in, c_out, size = spec.c_in, spec.c_out, dtype.itemsize
    return (
        c_in * size >= VECTOR_BYTES
        and c_out * size >= 4 * VECTOR_BYTES
        and c_in * c_out * size <= _FUSED_U_BYTES
    )


def _tiles(spec: ConvSpec, m: int) -> int:
    """Output tiles of F(m x m) over the whole batch."""
    return spec.n * -(-spec.oh // m) * -(-spec.ow // m)


def _m_bytes(spec: ConvSpec, m: int, itemsize: int) -> int:
    """Bytes of M, (a*a, tiles, c_out), when every tile is in one block."""
    return (m + 2) ** 2 * _tiles(spec, m) * spec.c_out * itemsize


def _vm_bytes(spec: ConvSpec, m: int, itemsize: int) -> int:
    """Bytes of V and M together when every tile is in one block."""
    return (m + 2) ** 2 * _tiles(spec, m) * (spec.c_in + spec.c_out) * itemsize


def _our_split_products(spec: ConvSpec, dtype: np.dtype, m: int) -> bool:
    """True if the split schedule's products are ours (:func:`_simd.batched_matmul`): 4 vectors
    of output channels, 6 tiles, ``U[xi]`` within a core's L2 cache; else BLAS."""
    size = dtype.itemsize
    return (
        spec.c_out * size >= 4 * VECTOR_BYTES
        and _tiles(spec, m) >= 6
        and spec.c_in * spec.c_out * size <= _SIMD_PRODUCT_BYTES
    )


def blas_free(spec: ConvSpec, dtype: np.dtype, workspace_limit: int, *, m: int = 4) -> bool:
    """True if :func:`forward` calls no BLAS for ``spec``, every step compiled: the caller then
    leaves NumPy's BLAS threads alone (holding them to one thread and giving them back costs
    30-45 us a call, as OpenBLAS' woken threads spin)."""
    if _compile() is None:
        return False
    if _forward_splits(spec, m, dtype, workspace_limit):
        # 4 vectors of c_out: U's transform is SIMD
        return _our_split_products(spec, dtype, m) or channel_products(spec, m, dtype)
    return _fused_blocks(spec, dtype)


def _forward_splits(spec: ConvSpec, m: int, dtype: np.dtype, workspace_limit: int) -> bool:
    """The forward pass's schedule: :func:`split_products`, and also shallower layers whose
    every step is compiled and runs on numba's threads. There U is built and read once, half
    by each core, and each position's ``U[xi]`` is still in cache from its transform when its
    products read it, where every block of tiles read all of U from L3 (measured: N1
    28x28x128 0.60 -> 0.50 ms, N1 56x56x64 0.50 -> 0.46, N8 28x28x128 2.56 -> 2.28; N8
    56x56x64, V and M of 29 MB, a tie)."""
    if split_products(spec, m, dtype.itemsize, workspace_limit) or u_streamed(
        spec, m, dtype, workspace_limit
    ):
        return True
    from patchconv.algorithms import _simd  # imports numba

    size = dtype.itemsize
    vm_bytes = _vm_bytes(spec, m, size)
    u_bytes = _u_bytes(spec, m, size)
    return (
        spec.c_in * size >= VECTOR_BYTES
        and _our_split_products(spec, dtype, m)
        and n_workers() > 1
        and vm_bytes <= 4 * BLOCK_BYTES * n_workers()
        and vm_bytes + u_bytes <= workspace_limit
        and _simd.native_ready()
    )


def panel_products(spec: ConvSpec, m: int, dtype: np.dtype) -> bool:
    """True if the split schedule runs by column panels of output channels
    (:func:`_simd.winograd_panel_products`): our products, ``c_out`` a multiple of 4 vectors,
    and ``U`` too large for the cores' L2 (over 8 MB), which the positions' split writes out
    and reads back."""
    width = 4 * VECTOR_BYTES // dtype.itemsize
    return (
        _our_split_products(spec, dtype, m)
        and spec.c_out % width == 0
        and _u_bytes(spec, m, dtype.itemsize) > 4 * BLOCK_BYTES
        and _tiles(spec, m) <= _PANEL_MAX_TILES
    )


def channel_products(spec: ConvSpec, m: int, dtype: np.dtype) -> bool:
    """True if the split schedule runs by input channels
    (:func:`_simd.winograd_channel_products`): fewer tiles than our column-panel products take
    (6), which left such layers to BLAS and a whole ``U`` written out (N1 7x7x512 F(4x4), 4
    tiles: 38 MB, 4.0 ms a call); ``c_out`` a multiple of 4 vectors, ``U`` over 8 MB, and each
    part's ``M`` small enough to stay in L2 while its chunks add to it. With more tiles the
    column panels measured faster (N1 14x14x256 F(4x4), 16 tiles: 0.63-0.69 ms against
    0.74-0.87 by input channels)."""
    size = dtype.itemsize
    width = 4 * VECTOR_BYTES // size
    return (
        _tiles(spec, m) < 6
        and spec.c_in * size >= VECTOR_BYTES
        and spec.c_out % width == 0
        and _u_bytes(spec, m, size) > 4 * BLOCK_BYTES
        and _m_bytes(spec, m, size) <= _CHANNEL_MAX_M_BYTES
    )


def u_streamed(spec: ConvSpec, m: int, dtype: np.dtype, workspace_limit: int) -> bool:
    """True if the split schedule runs by input channels or by column panels under a workspace
    limit too small for the whole ``U`` (:func:`split_products`): those make ``U`` a chunk at a
    time and need only V, M and a chunk a core. Else a limit of 8 MiB sent N1 7x7x512
    F(4x4) to the blocks, whose whole U took 36 MiB."""
    size = dtype.itemsize
    u_bytes = _u_bytes(spec, m, size)
    if u_bytes <= 4 * BLOCK_BYTES or n_workers() < 2:  # both schedules need U over 8 MB
        return False
    vm_bytes = _vm_bytes(spec, m, size)
    parts = 1
    by_channels = channel_products(spec, m, dtype)
    if by_channels:  # one M a part
        parts = _channel_parts()
        vm_bytes += (parts - 1) * _m_bytes(spec, m, size)
    elif not (panel_products(spec, m, dtype) and _tiles(spec, m) >= 6):
        return False
    chunk_values = _u_chunk(spec, m, dtype, by_channels=by_channels)[1]
    need = vm_bytes + n_workers() * (chunk_values + _apart_values(spec, m, dtype, parts)) * size
    return need <= workspace_limit and vm_bytes <= max(2 * BLOCK_BYTES * n_workers(), u_bytes)


def whole_u_past_limit(spec: ConvSpec, m: int, dtype: np.dtype, workspace_limit: int) -> int:
    """Bytes of ``U`` where the forward pass makes it whole (the blocks need all of it at
    once) and it passes the workspace limit with the smallest blocks (a tile a core; with
    NumPy alone, a row of tiles), else 0. The schedules of :func:`u_streamed` make it a chunk
    at a time; the split schedule runs only where V, M and ``U`` fit
    (:func:`split_products`)."""
    u_bytes = _u_bytes(spec, m, dtype.itemsize)
    tile = (m + 2) ** 2 * (spec.c_in + spec.c_out) * dtype.itemsize
    compiled = _compile() is not None
    # NumPy's blocks take a row of tiles at the least, in 4 arrays
    block = n_workers() * tile if compiled else 4 * -(-spec.ow // m) * tile
    if u_bytes + block <= workspace_limit or (
        compiled and u_streamed(spec, m, dtype, workspace_limit)
    ):
        return 0
    return u_bytes


def _u_chunk(spec: ConvSpec, m: int, dtype: np.dtype, *, by_channels: bool) -> tuple[int, int]:
    """(input channels in each chunk of ``U``, values of a thread's chunk) in the schedules by
    input channels (``U`` for all of ``c_out``) and by column panels (one panel of 4 vectors):
    about ``_PANEL_U_BYTES``, each position's rows a vector longer than the chunk (see
    :func:`_simd.winograd_panel_products`)."""
    a, size = m + 2, dtype.itemsize
    width = 4 * VECTOR_BYTES // size
    cols = spec.c_out if by_channels else width
    chunk = min(spec.c_in, max(1, _PANEL_U_BYTES // (a * a * cols * size)))
    return chunk, u_chunk_values(a, chunk, cols // width, dtype)


def u_chunk_values(a: int, chunk: int, panels: int, dtype: np.dtype) -> int:
    """Values of the chunk of ``U`` that :func:`_simd.winograd_panel_products` (``panels`` 1)
    and :func:`_simd.winograd_channel_products` (``c_out`` / 4 lanes panels) make in their
    work buffer: ``a*a`` positions of ``chunk`` rows of 4 vectors, each a vector longer."""
    lanes = VECTOR_BYTES // dtype.itemsize
    return panels * a * a * (chunk * 4 * lanes + lanes)


def _apart_values(spec: ConvSpec, m: int, dtype: np.dtype, parts: int) -> int:
    """Values a thread's work buffer needs past ``U``'s chunk where the schedules by panels and
    by input channels sum each chunk's products apart (a sum over more than
    ``APART_CHANNELS`` input channels): a row of 4 vectors a tile."""
    if -(-spec.c_in // parts) <= APART_CHANNELS:
        return 0
    return _tiles(spec, m) * 4 * VECTOR_BYTES // dtype.itemsize


def _channel_parts() -> int:
    """Parts of the input channels in :func:`channel_products`' schedule: one a core, and at
    least 2, so a machine's result does not depend on how many threads it runs."""
    return max(2, n_workers())


def prepared_u(
    kernel: np.ndarray, spec: ConvSpec, dtype: np.dtype, workspace_limit: int, m: int
) -> np.ndarray | None:
    """U for F(m x m, 3x3), to keep with a kernel that will run many times on inputs like
    ``spec``, or None where keeping U does not pay.

    It pays on deep layers at small batches, whose U (several MB) each call would otherwise
    transform again and write out (the split schedule). Whole calls measured (F(2x2),
    ``benchmarks/winograd_floor.py``): N1 7x7x512 1.50 -> 0.74 ms, N1 14x14x256 0.67 -> 0.55;
    N8 7x7x512 4.44 -> 4.48, as reading its 17 MB U from L3 costs what transforming it does."""
    if applies(spec) is not None or _compile() is None:
        return None
    from patchconv.algorithms import _simd  # imports numba

    if not _simd.native_ready():
        return None
    if not (
        spec.c_in * dtype.itemsize >= VECTOR_BYTES
        and _our_split_products(spec, dtype, m)
        and _u_bytes(spec, m, dtype.itemsize) >= 2 * BLOCK_BYTES
        and _vm_bytes(spec, m, dtype.itemsize) <= workspace_limit
    ):
        return None
    a = m + 2
    u = aligned_empty(u_panels(a, spec.c_in, spec.c_out, dtype), dtype)  # whole cache lines
    k9 = np.ascontiguousarray(kernel.reshape(9, -1), dtype=dtype)
    _simd.parallel(_simd.winograd_kernel_panels, (k9, _kron(m, dtype), u), a * a)
    return u


def _u_bytes(spec: ConvSpec, m: int, itemsize: int) -> int:
    """Bytes of ``U``: in column panels (:func:`u_panels`) where ``c_out`` fills 4 vectors, the
    last panel's overlap included, else ``(a*a, c_in, c_out)``."""
    width = 4 * VECTOR_BYTES // itemsize
    cols = -(-spec.c_out // width) * width if spec.c_out >= width else spec.c_out
    return (m + 2) ** 2 * spec.c_in * cols * itemsize


def split_products(spec: ConvSpec, m: int, itemsize: int, workspace_limit: int) -> bool:
    """True if the layer is deep (``U`` of several MB) and one block can hold every tile: then
    splitting the ``a*a`` products (and the kernel transform) over the cores beats splitting
    the tiles, as ``U`` is built and read once in all, not once per block of tiles."""
    if n_workers() < 2 or not blas_pinned():
        return False
    vm_bytes = _vm_bytes(spec, m, itemsize)
    u_bytes = _u_bytes(spec, m, itemsize)
    # Measured: 14x14x256 and 7x7x512 (U of 9.4 and 37.7 MB) gain 15-22%; 28x28x128 and
    # 56x56x64 (U of 2.4 and 0.6 MB) lose about 15%, so shallow layers keep the tile blocks.
    deep = u_bytes >= 2 * BLOCK_BYTES
    return (
        deep
        and vm_bytes + u_bytes <= workspace_limit
        and vm_bytes <= max(2 * BLOCK_BYTES * n_workers(), u_bytes)
    )


def _forward_split(
    compiled: dict[str, Callable[..., Any]],
    x: np.ndarray,
    kernel: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    spec: ConvSpec,
    m: int,
    workspace_limit: int,
    u_ready: np.ndarray | None = None,
) -> None:
    """All tiles in one block: input transform split by tiles, then each core transforms the
    kernel for its own share of the ``a*a`` positions and runs their products (ours, or
    single-threaded BLAS where ``U[xi]`` is too large), then the output transform split by
    tiles. With our products every step runs on numba's threads, else on the Python pool."""
    a = m + 2
    dtype = x.dtype
    c_in, c_out = spec.c_in, spec.c_out
    th, tw = -(-spec.oh // m), -(-spec.ow // m)
    total = spec.n * th * tw
    xc = np.ascontiguousarray(x)
    kron = _kron(m, dtype)  # (a*a, 9)
    k9 = np.ascontiguousarray(kernel.reshape(9, c_in * c_out), dtype=dtype)
    simd_u = compiled["kernel_simd"] if c_in * c_out * dtype.itemsize >= VECTOR_BYTES else None
    # Our products where U[xi] fits in L2 while every block of 6 tiles reads it (measured,
    # N8 14x14x256: 4.1 -> 3.2 ms; N8 7x7x512, 1 MB U[xi]: 6.5 ms with OpenBLAS on the Python
    # pool, 5.9 with ours on numba's threads).
    # All three steps compiled (our products need 4 vectors of c_out, so U's transform is SIMD
    # too): run them on numba's threads. With BLAS products, all on the Python pool: numba's
    # workers spin after a region and would slow our threads' BLAS.
    # Our products read U in column panels; BLAS reads (a*a, c_in, c_out).
    by_channels = u_ready is None and channel_products(spec, m, dtype)
    by_panels = u_ready is None and not by_channels and panel_products(spec, m, dtype)
    native = by_channels or _our_split_products(spec, dtype, m)
    parts = _channel_parts() if by_channels else 1
    u_shape = u_panels(a, c_in, c_out, dtype) if native else (a * a, c_in, c_out)
    if u_ready is not None:
        u = u_ready.reshape(-1)
    elif by_panels or by_channels:  # U is made a chunk at a time, in each thread's work buffer
        u = np.empty(0, dtype)
    else:
        u = scratch("winograd.u", math.prod(u_shape), dtype, limit=workspace_limit)
    v = scratch("winograd.v", a * a * total * c_in, dtype, limit=workspace_limit)
    mm = scratch("winograd.m", parts * a * a * total * c_out, dtype, limit=workspace_limit)
    u2, u3 = (u, u) if by_panels or by_channels else (u.reshape(a * a, -1), u.reshape(u_shape))
    v3, m3 = v.reshape(a * a, total, c_in), mm.reshape(parts * a * a, total, c_out)
    (pt, _), (pl, _) = spec.pads
    per_tile = a * a * max(c_in, c_out)
    min_tiles = max(1, 16384 // per_tile)  # tiles per thread hand-off

    from patchconv.algorithms import _simd  # imports numba

    if c_in * dtype.itemsize >= VECTOR_BYTES:
        in_args = (xc, pt, pl, m, th, tw, 0, v3)
        _simd.parallel(
            _simd.winograd_input_into, in_args, total, min_items=min_tiles, native=native
        )
    else:
        in_t, _ = _transform_kernels(compiled, spec, dtype, m)
        parallel_for(
            lambda lo, hi: in_t(xc, pt, pl, th, tw, 0, lo, hi, v3), total, min_items=min_tiles
        )

    def products(lo: int, hi: int) -> None:
        if simd_u is not None:  # U for positions lo:hi
            simd_u(k9, kron, u2, lo, hi)
        else:
            np.matmul(kron[lo:hi], k9, out=u2[lo:hi])
        _products(v3[lo:hi], u3[lo:hi], m3[lo:hi], m)

    if u_ready is not None:  # U made beforehand (prepared_u): the products alone
        _simd.parallel(_simd.batched_matmul, (v3, u3, m3), a * a, pieces_per_worker=1)
    elif by_channels:
        chunk, values = _u_chunk(spec, m, dtype, by_channels=True)
        _simd.parallel(
            _simd.winograd_channel_products,
            (k9, v3, m3, m, chunk, parts),
            parts,
            pieces_per_worker=1,
            work=(values + _apart_values(spec, m, dtype, parts), dtype, workspace_limit),
        )
        whole = mm.reshape(parts, -1)
        for i in range(1, parts):  # the parts' sum (0.3 MB on N1 7x7x512: about 20 us; summed
            # in the output transform's loads instead, the other layers' transforms ran
            # 10-25% slower)
            np.add(whole[0], whole[i], out=whole[0])
        m3 = whole[0].reshape(a * a, total, c_out)
    elif by_panels:
        width = 4 * VECTOR_BYTES // dtype.itemsize
        chunk, values = _u_chunk(spec, m, dtype, by_channels=False)
        _simd.parallel(
            _simd.winograd_panel_products,
            (k9, v3, m3, m, chunk),
            c_out // width,
            pieces_per_worker=1,
            work=(values + _apart_values(spec, m, dtype, 1), dtype, workspace_limit),
        )
    elif native:
        both = (k9, kron, u3, v3, m3)
        # One piece per core: smaller ones measured slower (N8 7x7x512: 4.6 against 5.2 ms).
        _simd.parallel(_simd.winograd_position_products, both, a * a, pieces_per_worker=1)
    else:
        parallel_for(products, a * a, pieces_per_worker=2)
    if c_out * dtype.itemsize >= VECTOR_BYTES:
        out_args = (m3, b, out, m, th, tw, 0)
        _simd.parallel(_simd.winograd_output, out_args, total, min_items=min_tiles, native=native)
    else:
        _, out_t = _transform_kernels(compiled, spec, dtype, m)
        parallel_for(
            lambda lo, hi: out_t(m3, b, out, th, tw, 0, lo, hi), total, min_items=min_tiles
        )


def grad_kernel_applies(spec: ConvSpec, itemsize: int, workspace_limit: int, *, m: int = 4) -> bool:
    """True if :func:`grad_kernel` runs for ``spec``: Winograd applies, numba is installed,
    and either the layer is not deep (a partial ``dU`` (``a*a*c_in*c_out``) per core under
    4 MB and a quarter of the workspace limit) or all its tiles fit one block
    (:func:`split_products`). Deep layers with many tiles would build and sum a large partial
    ``dU`` per block (14x14x256 in blocks: 15.5 ms against 8.0 ms by gemm)."""
    if applies(spec) is not None or get_numba() is None:
        return False
    if split_products(spec, m, itemsize, workspace_limit):
        # Measured: 128 tiles (N8 14x14x256 F(4x4), 7x7x512 F(2x2)) take 4.2 and 6.5 ms
        # against 7.9 and 7.4 by gemm; 49 (N1 14x14x256 F(2x2)) 1.5 against 1.4.
        return _tiles(spec, m) >= _SPLIT_GRAD_MIN_TILES
    du_bytes = 36 * spec.c_in * spec.c_out * itemsize
    return du_bytes < 2 * BLOCK_BYTES and du_bytes * n_workers() <= workspace_limit // 4


def _native_grad(spec: ConvSpec, dtype: np.dtype) -> bool:
    """True if every step of :func:`grad_kernel` has a compiled SIMD form (a vector of input
    channels, 4 of output channels), so that it all runs on numba's threads."""
    return spec.c_in * dtype.itemsize >= VECTOR_BYTES and spec.c_out * dtype.itemsize >= (
        4 * VECTOR_BYTES
    )


def _grad_kernel_native(
    xc: np.ndarray, goc: np.ndarray, spec: ConvSpec, m: int, workspace_limit: int
) -> np.ndarray:
    """:func:`grad_kernel` with compiled steps only (:func:`_simd.batched_matmul_tn` for the
    products, :func:`_simd.winograd_kernel_adjoint` for ``G^T dU G``), on numba's threads: the
    same two schedules as the BLAS version."""
    from patchconv.algorithms import _simd  # imports numba

    a = m + 2
    dtype = xc.dtype
    c_in, c_out = spec.c_in, spec.c_out
    q = c_in * c_out
    th, tw = -(-spec.oh // m), -(-spec.ow // m)
    total = spec.n * th * tw
    (pt, _), (pl, _) = spec.pads
    kron = _kron(m, dtype)  # (a*a, 9)
    dw = np.empty((9, q), dtype)
    lanes = VECTOR_BYTES // dtype.itemsize
    if split_products(spec, m, dtype.itemsize, workspace_limit):
        v3 = scratch("winograd.v", a * a * total * c_in, dtype, limit=workspace_limit)
        v3 = v3.reshape(a * a, total, c_in)
        m3 = scratch("winograd.m", a * a * total * c_out, dtype, limit=workspace_limit)
        m3 = m3.reshape(a * a, total, c_out)
        du = scratch("winograd.u", a * a * q, dtype, limit=workspace_limit)
        min_tiles = max(1, 16384 // (a * a * max(c_in, c_out)))  # tiles per thread hand-off
        in_args = (xc, pt, pl, m, th, tw, 0, v3)
        _simd.parallel(_simd.winograd_input_into, in_args, total, min_items=min_tiles)
        go_args = (goc, m, th, tw, 0, m3)
        _simd.parallel(_simd.winograd_grad_output_into, go_args, total, min_items=min_tiles)
        prod_args = (v3, m3, du.reshape(a * a, c_in, c_out))
        _simd.parallel(_simd.batched_matmul_tn, prod_args, a * a, pieces_per_worker=1)
        parts = du.reshape(1, a * a * q)
    else:
        per_tile = a * a * (c_in + c_out) * dtype.itemsize
        workers = n_workers()
        block = max(BLOCK_BYTES // per_tile, 4 * max(c_in, c_out))
        block = min(block, -(-total // workers), workspace_limit // (4 * workers) // per_tile)
        block = max(1, block)
        size = a * a * block * (c_in + c_out) + q  # V, dM, one product
        # One partial dU per work item, each a fixed run of blocks: the same sums in the same
        # order on every call (per-thread partials varied in the last bits). Up to 4 items a
        # core, so a core slowed by other work takes fewer (2 in all: N8 56x56x64 20% slower).
        items = _grad_items(-(-total // block), a * a * q * dtype.itemsize)
        parts = np.empty((items, a * a * q), dtype)
        _simd.parallel(
            _simd.winograd_grad_items,
            (xc, pt, pl, m, th, tw, goc, block, total, parts),
            items,
            pieces_per_worker=items,  # each item a piece of its own, taken in turn
            work=(size, dtype, workspace_limit),
        )
    vectors = -(-q // lanes)
    _simd.parallel(
        _simd.winograd_kernel_adjoint, (kron, parts, dw), vectors, min_items=max(1, 4096 // a)
    )
    return dw.reshape(3, 3, c_in, c_out)


# Bytes of partial dU sums (one per work item of the weight gradient) kept at most.
_PARTIALS_BYTES = 16 * 2**20


def _grad_items(blocks: int, partial_bytes: int) -> int:
    """Work items for the weight gradient's blocks of tiles: 4 a core where the partial dU
    sums stay under :data:`_PARTIALS_BYTES`, at least one a core."""
    workers = n_workers()
    fit = max(workers, _PARTIALS_BYTES // max(1, partial_bytes))
    return max(1, min(blocks, 4 * workers, fit))


def grad_kernel(
    grad_out: np.ndarray, x: np.ndarray, spec: ConvSpec, workspace_limit: int, *, m: int = 4
) -> np.ndarray:
    """``dL/dkernel`` (3, 3, c_in, c_out) of a Winograd-able layer in ``a*a`` small products.

    The forward map of one tile is ``Y = A^T [U * V] A`` with ``U = G W G^T`` and
    ``V = B^T D B``, so ``dU[xi] = sum over tiles of V[xi]^T (c_in, T) @ dM[xi] (T, c_out)``
    with ``dM = A dY A^T`` (the adjoint of the output transform), and ``dW = G^T dU G``: 4x
    (F(4x4)) fewer multiplications than ``patches^T @ grad_out``. Each core takes blocks of
    tiles into its own partial ``dU``; the partials are summed at the end. Deep layers whose
    tiles all fit one block (:func:`split_products`) split the products by position instead.
    """
    compiled = _compile()
    assert compiled is not None
    a = m + 2
    dtype = x.dtype
    c_in, c_out = spec.c_in, spec.c_out
    th, tw = -(-spec.oh // m), -(-spec.ow // m)
    total = spec.n * th * tw
    xc = np.ascontiguousarray(x)
    goc = np.ascontiguousarray(grad_out, dtype=dtype)
    (pt, _), (pl, _) = spec.pads
    in_t, _ = _transform_kernels(compiled, spec, dtype, m)
    gout_t = _grad_output_kernel(compiled, spec, dtype, m)
    if _native_grad(spec, dtype):
        return _grad_kernel_native(xc, goc, spec, m, workspace_limit)
    if split_products(spec, m, dtype.itemsize, workspace_limit):
        # Deep layers whose tiles all fit one block: both transforms split by tiles, then each
        # core takes its share of the a*a positions' products dU[xi] = V[xi]^T dM[xi]
        # (single-threaded BLAS); dU is written and read once in all, no partials to sum.
        v3 = scratch("winograd.v", a * a * total * c_in, dtype, limit=workspace_limit)
        v3 = v3.reshape(a * a, total, c_in)
        m3 = scratch("winograd.m", a * a * total * c_out, dtype, limit=workspace_limit)
        m3 = m3.reshape(a * a, total, c_out)
        du = scratch("winograd.u", a * a * c_in * c_out, dtype, limit=workspace_limit)
        du3 = du.reshape(a * a, c_in, c_out)
        min_tiles = max(1, 16384 // (a * a * max(c_in, c_out)))  # tiles per thread hand-off
        parallel_for(
            lambda lo, hi: in_t(xc, pt, pl, th, tw, 0, lo, hi, v3), total, min_items=min_tiles
        )
        parallel_for(lambda lo, hi: gout_t(goc, th, tw, 0, lo, hi, m3), total, min_items=min_tiles)

        def products(lo: int, hi: int) -> None:
            np.matmul(v3[lo:hi].transpose(0, 2, 1), m3[lo:hi], out=du3[lo:hi])

        parallel_for(products, a * a, pieces_per_worker=2)
        dw = np.empty((9, c_in * c_out), dtype)  # G^T dU G, split by columns
        matmul(np.ascontiguousarray(_kron(m, dtype).T), du.reshape(a * a, c_in * c_out), dw)
        return dw.reshape(3, 3, c_in, c_out)
    per_tile = a * a * (c_in + c_out) * dtype.itemsize
    workers = n_workers()
    # Every block adds an (a*a, c_in, c_out) product to the partial dU: blocks of at least
    # ~4 * max(c_in, c_out) tiles keep that addition small beside the product itself.
    block = max(BLOCK_BYTES // per_tile, 4 * max(c_in, c_out))
    block = min(block, -(-total // workers), workspace_limit // (4 * workers) // per_tile)
    block = max(1, block)
    blocks = [(t0, min(block, total - t0)) for t0 in range(0, total, block)]
    # One partial dU per piece, a fixed run of blocks, added up in piece order: the same
    # result on every call (per-thread partials took blocks in whatever order they came).
    partials: dict[int, np.ndarray] = {}

    def run(lo: int, hi: int) -> None:
        mine = np.zeros((a * a, c_in, c_out), dtype)
        vbuf = scratch("winograd.v", a * a * block * c_in, dtype, limit=workspace_limit)
        gbuf = scratch("winograd.m", a * a * block * c_out, dtype, limit=workspace_limit)
        for t0, nt in blocks[lo:hi]:
            v = vbuf[: a * a * nt * c_in].reshape(a * a, nt, c_in)
            gm = gbuf[: a * a * nt * c_out].reshape(a * a, nt, c_out)
            in_t(xc, pt, pl, th, tw, t0, 0, nt, v)
            gout_t(goc, th, tw, t0, 0, nt, gm)
            mine += np.matmul(v.transpose(0, 2, 1), gm)  # (a*a, c_in, T) @ (a*a, T, c_out)
        partials[lo] = mine

    items = _grad_items(len(blocks), a * a * c_in * c_out * dtype.itemsize)
    parallel_for(run, len(blocks), pieces_per_worker=-(-items // workers))
    du = partials[0]
    for lo in sorted(partials)[1:]:
        du += partials[lo]
    kron = _kron(m, dtype)  # (a*a, 9)
    dw = kron.T @ du.reshape(a * a, c_in * c_out)  # (9, c_in*c_out): G^T dU G
    return dw.reshape(3, 3, c_in, c_out)
