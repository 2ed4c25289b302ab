"""The seed's algorithm: patch matrix times kernel matrix, one tile at a time.

Each tile's patches are written into one reused buffer (no padded copy of the input, never the
whole patch matrix unless it fits the workspace), the copy split over the cores, then one matrix
product per tile does all groups at once: ``[P, K] @ [K, c_out]`` for ``groups == 1``, a batched
``[G, P, K/G] @ [G, K/G, c_out/G]`` otherwise (no Python loop over groups).

With numba and few input channels (a 7x7x3 stem), a compiled packing loop writes each patch
row as one run of ``kw * c_in`` values per kernel row (``c_in`` per offset under column
dilation), without NumPy's per-slice overhead on such short runs; otherwise (deep inputs,
groups, non-contiguous input, no numba) :func:`~patchconv._patches.fill_patches` does the
same with slices.

Tiny calls (the seed's ``(1, 4, 4, 3)`` image) skip tiling: one gather with a cached index
array builds the whole patch matrix, then one product.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from typing import Any

import numpy as np

from patchconv._patches import Tile, fill_patches, im2col, iter_tiles, scatter_patches
from patchconv._spec import ConvSpec
from patchconv.algorithms._runtime import (
    VECTOR_BYTES,
    add_product,
    aligned_empty,
    blas_pinned,
    get_numba,
    matmul,
    n_workers,
    parallel_for,
    product_temp_bytes,
    scratch,
)

__all__ = [
    "NARROW_MIN_PATCH",
    "SMALL_ELEMENTS",
    "TILE_BYTES",
    "backward",
    "forward",
    "forward_implicit",
    "implicit_applies",
    "kernel_matrices",
    "narrow_applies",
    "pack_patches",
    "small_forward",
]

# Patch bytes per tile (per core) when the workspace allows: about one core's L2 cache, so the
# product reads the patches its own core has just written.
TILE_BYTES = 2 * 2**20
# Patch-matrix elements below which a call takes the gather fast path.
SMALL_ELEMENTS = 4096
# Bytes of patches per piece below which one thread fills a tile: NumPy's slice copies hold
# the GIL between copies, so two threads filling small pieces mostly wait on each other
# (measured: a 1.8 MB tile fills in 0.11 ms serially, 0.9 ms split into 256 KiB pieces).
_PARALLEL_FILL_BYTES = 8 * 2**20
# Largest kernel matrix for the implicit GEMM (see implicit_applies).
_IMPLICIT_KERNEL_BYTES = 2**20


def kernel_matrices(kernel: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """HWIO kernel -> per-group matrices ``(groups, kh*kw*cg, c_out // groups)``.

    Column j of group g's matrix is output channel ``g * c_out_group + j``: "column j = filter j".
    """
    k_group = spec.kh * spec.kw * spec.c_in_group
    mats = kernel.reshape(k_group, spec.groups, spec.c_out_group)  # (K/G, G, c_out/G)
    return np.ascontiguousarray(mats.transpose(1, 0, 2))  # (G, K/G, c_out/G)


_pack_kernel: Callable[..., Any] | None = None
# Contiguous values per copied run below which the compiled packing beats NumPy's slice copies
# (measured: 7x7x3 stem runs of 21 values, 15-25% faster; 3x3x128 runs of 384, NumPy as fast).
_PACK_RUN = 64


def _compile_pack() -> Callable[..., Any] | None:
    """The numba packing loop, compiled on first use (cached on disk), or None without numba."""
    global _pack_kernel
    numba = get_numba()
    if numba is None:
        return None
    if _pack_kernel is not None:
        return _pack_kernel

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def pack(xf, h, w, c, out, n0, n1, r0, r1, c0, c1, kh, kw, sh, sw, dh, dw, pt, pl):  # type: ignore[no-untyped-def]
        # xf: the C-contiguous NHWC input, flat; out: the tile's patch matrix, flat,
        # (P, kh*kw*c) row-major for positions (images n0:n1, rows r0:r1, columns c0:c1).
        run = kw * c
        k = kh * run
        tc = c1 - c0
        p0 = 0  # first position of the current output row
        for b in range(n0, n1):
            for r in range(r0, r1):
                for i in range(kh):  # one input row feeds this kernel row of the whole row
                    y = r * sh - pt + i * dh
                    if y < 0 or y >= h:
                        for col in range(tc):
                            d = (p0 + col) * k + i * run
                            for t in range(run):
                                out[d + t] = 0.0
                        continue
                    s = ((b * h + y) * w) * c
                    for col in range(tc):
                        d = (p0 + col) * k + i * run
                        x0 = (c0 + col) * sw - pl
                        if dw == 1 and x0 >= 0 and x0 + kw <= w:
                            src = s + x0 * c
                            for t in range(run):
                                out[d + t] = xf[src + t]
                            continue
                        for j in range(kw):
                            xx = x0 + j * dw
                            dj = d + j * c
                            if 0 <= xx < w:
                                src = s + xx * c
                                for t in range(c):
                                    out[dj + t] = xf[src + t]
                            else:
                                for t in range(c):
                                    out[dj + t] = 0.0
                p0 += tc

    _pack_kernel = pack
    return pack


def pack_patches(buf: np.ndarray, x: np.ndarray, spec: ConvSpec, tile: Tile) -> None:
    """:func:`~patchconv._patches.fill_patches`, by the compiled loop where it applies
    (numba installed, groups == 1, C-contiguous ``x``); same result either way."""
    run = spec.c_in * (spec.kw if spec.dilation[1] == 1 else 1)
    fits = spec.groups == 1 and run < _PACK_RUN and x.flags.c_contiguous and buf.flags.c_contiguous
    kernel = _compile_pack() if fits else None
    if kernel is None:
        fill_patches(buf, x, spec, tile)
        return
    (pt, _), (pl, _) = spec.pads
    kernel(
        x.reshape(-1),
        spec.h,
        spec.w,
        spec.c_in,
        buf.reshape(-1),
        *tile,
        spec.kh,
        spec.kw,
        *spec.strides,
        *spec.dilation,
        pt,
        pl,
    )


def _tile_view(flat: np.ndarray, spec: ConvSpec, tile: Tile) -> np.ndarray:
    """The first ``tile.positions`` patches of the reused buffer, shaped for fill/scatter."""
    size = tile.positions * spec.patch_size
    return flat[:size].reshape(*tile.shape, spec.groups, spec.kh, spec.kw, spec.c_in_group)


def _block(arr: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's (P, c) block of an NHWC array, as a view (tiles are contiguous by design)."""
    view = arr[tile.n0 : tile.n1, tile.r0 : tile.r1, tile.c0 : tile.c1]
    assert view.flags.c_contiguous, "tiles must be contiguous blocks of a C-ordered array"
    return view.reshape(tile.positions, arr.shape[-1])


def _split_axis(tile: Tile) -> int:
    """The first of (images, rows, columns) with more than one entry (0 if none)."""
    tn, tr, _ = tile.shape
    return 0 if tn > 1 else (1 if tr > 1 else 2)


def _sub_tile(tile: Tile, axis: int, lo: int, hi: int) -> Tile:
    if axis == 0:
        return tile._replace(n0=tile.n0 + lo, n1=tile.n0 + hi)
    if axis == 1:
        return tile._replace(r0=tile.r0 + lo, r1=tile.r0 + hi)
    return tile._replace(c0=tile.c0 + lo, c1=tile.c0 + hi)


def fill_parallel(buf: np.ndarray, x: np.ndarray, spec: ConvSpec, tile: Tile) -> None:
    """:func:`fill_patches` with the tile cut along its outermost axis, one piece per core.

    Each piece writes a disjoint, contiguous slice of ``buf`` (tn, tr, tc, G, kh, kw, cg).
    """
    axis = _split_axis(tile)
    length = tile.shape[axis]
    min_items = max(1, _PARALLEL_FILL_BYTES // max(1, buf.nbytes // length))

    def piece(lo: int, hi: int) -> None:
        index = (slice(None),) * axis + (slice(lo, hi),)
        pack_patches(buf[index], x, spec, _sub_tile(tile, axis, lo, hi))

    parallel_for(piece, length, min_items=min_items)


def _scatter_parallel(grad_x: np.ndarray, buf: np.ndarray, spec: ConvSpec, tile: Tile) -> None:
    """:func:`scatter_patches` split over images (distinct images never share a pixel)."""
    tn = tile.shape[0]

    def piece(lo: int, hi: int) -> None:
        scatter_patches(grad_x, buf[lo:hi], spec, tile._replace(n0=tile.n0 + lo, n1=tile.n0 + hi))

    min_items = max(1, _PARALLEL_FILL_BYTES // max(1, buf.nbytes // tn))
    parallel_for(piece, tn, min_items=min_items)


@lru_cache(maxsize=64)
def _gather_index(spec: ConvSpec) -> np.ndarray:
    """Flat indices into ``x.ravel()`` (one past the end for padding) of every patch entry,
    ``(n*oh*ow, kh*kw*c_in)``; for groups == 1 only."""
    idx = np.arange(spec.n * spec.h * spec.w * spec.c_in).reshape(spec.n, spec.h, spec.w, -1)
    pad = spec.n * spec.h * spec.w * spec.c_in  # the appended zero
    (pt, pb), (pl, pr) = spec.pads
    padded = np.pad(idx, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad)
    unpadded = replace(spec, h=spec.h + pt + pb, w=spec.w + pl + pr, pads=((0, 0), (0, 0)))
    return np.ascontiguousarray(im2col(padded, unpadded))  # (n*oh*ow, K)


def small_forward(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, spec: ConvSpec
) -> np.ndarray:
    """A tiny call: one cached-index gather builds the patch matrix, one product."""
    idx = _gather_index(spec)
    flat = np.empty(x.size + 1, dtype=x.dtype)
    flat[:-1] = x.reshape(-1)
    flat[-1] = 0
    cols = flat[idx]  # (n*oh*ow, kh*kw*c_in)
    out = cols @ kernel.reshape(-1, spec.c_out)  # (n*oh*ow, c_out)
    if bias is not None:
        out += bias
    return out.reshape(spec.n, spec.oh, spec.ow, spec.c_out)


def _workers() -> int:
    return n_workers() if blas_pinned() else 1


def _kernel_heavy(spec: ConvSpec, itemsize: int) -> bool:
    """True if the kernel matrix outweighs a cache-sized tile of patches (deep layers with few
    positions: 7x7x512). Every tile re-reads the whole kernel matrix, so such layers take a few
    large tiles through multi-threaded BLAS instead of many small single-threaded ones."""
    return spec.patch_size * spec.c_out_group * itemsize > TILE_BYTES


def _heavy_tiles(spec: ConvSpec, itemsize: int, workspace_limit: int) -> list[Tile]:
    kernel_bytes = spec.patch_size * spec.c_out_group * itemsize
    budget = min(workspace_limit, max(TILE_BYTES, 4 * kernel_bytes))
    return list(iter_tiles(spec, spec.patch_size * itemsize, budget))


def _tiles(spec: ConvSpec, itemsize: int, workspace_limit: int, workers: int) -> list[Tile]:
    """Cache-sized tiles, at least one per worker where the output allows, all of them together
    in flight within the workspace limit."""
    per_position = spec.patch_size * itemsize
    budget = min(TILE_BYTES, max(1, workspace_limit // workers))
    if workers > 1:  # several tiles per core, so a core slowed by other work takes fewer
        positions = spec.n * spec.oh * spec.ow
        share = -(-positions // (workers * 4))
        budget = min(budget, max(min(positions, 256), share) * per_position)
    return list(iter_tiles(spec, per_position, budget))


def _forward_tiles(
    tiles: list[Tile],
    x: np.ndarray,
    mats: np.ndarray,
    bias: np.ndarray | None,
    out: np.ndarray,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    parallel_fill: bool,
) -> None:
    """Fill and multiply ``tiles`` one after the other in this thread's reused buffer.

    ``parallel_fill``: this thread alone walks the tiles, so the copy and the product of each
    tile are split over the cores (the product by :func:`_runtime.matmul`, by rows of the tile
    or columns of the kernel matrix, whichever makes each core re-read less)."""
    largest = max(t.positions for t in tiles)
    flat = scratch("gemm.patches", largest * spec.patch_size, x.dtype, limit=workspace_limit)
    g, k_group, cog = spec.groups, mats.shape[1], spec.c_out_group
    for tile in tiles:
        patches = _tile_view(flat, spec, tile)
        if parallel_fill:
            fill_parallel(patches, x, spec, tile)
        else:
            pack_patches(patches, x, spec, tile)
        p = tile.positions
        out_block = _block(out, tile)  # (P, c_out)
        if g == 1 and parallel_fill:
            matmul(patches.reshape(p, k_group), mats[0], out_block)
        elif g == 1:
            np.matmul(patches.reshape(p, k_group), mats[0], out=out_block)
        else:
            per_group = patches.reshape(p, g, k_group).transpose(1, 0, 2)  # (G, P, K/G)
            np.matmul(per_group, mats, out=out_block.reshape(p, g, cog).transpose(1, 0, 2))
        if bias is not None:
            out_block += bias


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """NHWC ``x`` (any strides), HWIO ``kernel`` -> NHWC output, all in ``x.dtype``.

    With BLAS pinned to one thread each core takes its own run of tiles from copy to product
    (the tile stays in that core's cache); otherwise the copy is split over the cores and the
    product runs multi-threaded.
    """
    if implicit_applies(spec, x.dtype.itemsize):
        return forward_implicit(x, kernel, bias, spec)
    heavy = _kernel_heavy(spec, x.dtype.itemsize)
    if heavy:
        workers = 1
        tiles = _heavy_tiles(spec, x.dtype.itemsize, workspace_limit)
    else:
        workers = _workers()
        tiles = _tiles(spec, x.dtype.itemsize, workspace_limit, workers)
    mats = kernel_matrices(kernel, spec)  # (G, K/G, c_out/G)
    out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype=x.dtype)
    if workers > 1 and len(tiles) > 1:
        parallel_for(
            lambda lo, hi: _forward_tiles(
                tiles[lo:hi], x, mats, bias, out, spec, workspace_limit, parallel_fill=False
            ),
            len(tiles),
            workers=workers,
        )
    else:
        _forward_tiles(
            tiles,
            x,
            mats,
            bias,
            out,
            spec,
            workspace_limit,
            parallel_fill=True,
        )
    return out


def implicit_applies(spec: ConvSpec, itemsize: int) -> bool:
    """True if the forward pass runs as an implicit GEMM (:func:`_simd.conv_rows`): numba,
    one group, at least 4 SIMD vectors of output channels, 6 output columns, and a kernel
    matrix within a core's L2 cache, which every block of 4 columns reads whole (measured:
    2-3x faster than the tiles at 0.04-0.6 MB, 2-3x slower at 2.4 and 9.4 MB)."""
    return (
        spec.groups == 1
        and (_wide(spec, itemsize) or narrow_applies(spec, itemsize))
        and spec.patch_size * spec.c_out * itemsize <= _IMPLICIT_KERNEL_BYTES
        and get_numba() is not None
    )


def _wide(spec: ConvSpec, itemsize: int) -> bool:
    """The implicit GEMM's 6x4 form (:func:`_simd.conv_rows`): 4 vectors of output channels
    and 6 output columns."""
    return spec.c_out * itemsize >= 4 * VECTOR_BYTES and spec.ow >= 6


def narrow_applies(spec: ConvSpec, itemsize: int) -> bool:
    """True if the implicit GEMM takes its narrow form (:func:`_simd.conv_rows_narrow`, or
    :func:`_simd.conv_rows_narrow_pairs` two output rows at a time, see :func:`_pairs`): one
    to three SIMD vectors of output channels, at least 12 output columns and a patch of
    :data:`NARROW_MIN_PATCH` values or more (measured, N8 64x64 16 -> 16 11x11: 5.6 ms in row
    pairs, 8.1 one row at a time, against 11.6 by FFT)."""
    return (
        VECTOR_BYTES <= spec.c_out * itemsize < 4 * VECTOR_BYTES
        and spec.ow >= 12
        and spec.patch_size >= NARROW_MIN_PATCH
    )


# The narrow form against direct (both with numba) on few-channel layers, float32, ms:
# 3x3x3 -> 32 at N64 32x32 0.72 against 0.86, 3x3x3 -> 16 over 1024x1024 11.2 against 12.2,
# 3x3x3 -> 48 over 512x512 8.5 against 9.6, 5x5x4 -> 16 at N8 56x56 0.36 against 0.48,
# 3x3x16 -> 16 at N8 112x112 1.84 against 2.28 (Winograd 2.08); 3x3x1 -> 32 at N64 28x28
# 0.43 against 0.54, at N32 0.31 against 0.28 (1 -> 16: 0.28 against 0.32). Against BLAS
# (pointwise), 1x1 9 -> 16 at N8 56x56 0.17 against 0.32, 1x1 64 -> 48 at N1 0.15 against 0.34.
NARROW_MIN_PATCH = 9


def forward_implicit(
    x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, spec: ConvSpec
) -> np.ndarray:
    """Patches times kernel without a patch matrix: each core takes runs of output rows."""
    from patchconv.algorithms import _simd  # imports numba

    dtype = x.dtype
    wide = _wide(spec, dtype.itemsize)
    kernel2 = kernel.reshape(spec.patch_size, spec.c_out)
    if wide:
        kmat = kernel_panels(kernel2, 4 * VECTOR_BYTES // dtype.itemsize, dtype)
    else:
        kmat = aligned_empty((spec.patch_size * spec.c_out,), dtype)
        kmat[:] = kernel2.reshape(-1)  # (kh*kw*c_in, c_out), flat
    if bias is not None and bias.dtype == dtype and bias.flags.c_contiguous:
        b = bias  # the kernels read it with unaligned loads
    else:
        b = np.zeros(spec.c_out, dtype) if bias is None else bias.astype(dtype)
    out = aligned_empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype)
    xc = np.ascontiguousarray(x)
    (pt, _), (pl, _) = spec.pads
    dims = (spec.kh, spec.kw, *spec.strides, *spec.dilation, pt, pl)
    xr, outr = xc, out
    # Rows cut from the pixels suit the 6-column blocks only (the narrow form's blocks of 12
    # need rows of 12 or more: a 6-pixel row wrote before the output).
    length = wide and _pixel_rows(spec.n * spec.h * spec.w, spec.w, spec.c_in * dtype.itemsize)
    if length and (spec.kh, spec.kw, *spec.strides, *spec.pads[0], *spec.pads[1]) == (
        (1, 1, 1, 1, 0, 0, 0, 0)
    ):  # 1x1, stride 1, no padding: any run of pixels is a row
        rows = spec.n * spec.h * spec.w // length
        xr = xc.reshape(rows, 1, length, spec.c_in)
        outr = out.reshape(rows, 1, length, spec.c_out)
    per_row = outr.shape[2] * spec.c_out * spec.patch_size  # multiply-adds
    if not wide and _pairs(spec):  # two output rows share each input value
        _simd.parallel(
            _simd.conv_rows_narrow_pairs,
            (xc, kmat, b, out, spec.kh, spec.kw, spec.strides[1], spec.dilation[1], pt, pl),
            spec.n * -(-spec.oh // 2),
            min_items=max(1, 2**20 // (2 * spec.ow * spec.c_out * spec.patch_size)),
        )
        return out
    _simd.parallel(
        _simd.conv_rows if wide else _simd.conv_rows_narrow,
        (xr, kmat, b, outr, *dims),
        outr.shape[0] * outr.shape[1],
        min_items=max(1, 2**20 // per_row),
    )
    return out


def _pairs(spec: ConvSpec) -> bool:
    """The narrow form's row pairs (:func:`_simd.conv_rows_narrow_pairs`): stride and
    dilation 1 down the image, at least two output rows, and a kernel two rows tall or more
    (with one row no input value serves both rows of a pair)."""
    return spec.strides[0] == 1 and spec.dilation[0] == 1 and spec.oh >= 2 and spec.kh >= 2


def kernel_panels(kernel2: np.ndarray, width: int, dtype: np.dtype) -> np.ndarray:
    """``kernel2`` (K, c_out) as column panels ``(panels, K, width)``, 64-byte aligned: panel
    ``p`` holds columns ``pc : pc + width``, ``pc = min(p * width, c_out - width)`` (the last
    overlaps the one before when ``width`` does not divide ``c_out``), as
    :func:`_simd.conv_rows` reads them. A panel is one contiguous stream: read straight from
    the (K, c_out) matrix, its rows sit ``c_out`` values apart and share a few cache sets
    (measured, N8 56x56 64 -> 256 1x1, one core: 140 against 150 GF/s with 64 columns)."""
    k, c_out = kernel2.shape
    panels = -(-c_out // width)
    kmat = aligned_empty((panels, k, width), dtype)
    if c_out % width == 0:  # one copy
        kmat[...] = kernel2.reshape(k, panels, width).transpose(1, 0, 2)
        return kmat
    for p in range(panels):
        pc = min(p * width, c_out - width)
        kmat[p] = kernel2[:, pc : pc + width]
    return kmat


@lru_cache(maxsize=256)
def _pixel_rows(pixels: int, width: int, pixel_bytes: int) -> int:
    """For a 1x1 stride-1 unpadded layer (any run of pixels is a row), the row length, a
    divisor of the pixel count, that wastes least on the last block of 6 columns (which
    overlaps the one before: a 56-pixel row computes 60), with at least 16 rows to share and
    a row's input within 64 KB; 0 if none beats the image's own rows."""

    def waste(length: int) -> float:
        return -(-length // 6) * 6 / length

    best, best_waste = 0, waste(width)
    for length in range(6, min(pixels // 16, 2**16 // pixel_bytes) + 1):
        if pixels % length == 0 and waste(length) < best_waste - 1e-9:
            best, best_waste = length, waste(length)
    return best


def _backward_tiles(
    tiles: list[Tile],
    grad_out: np.ndarray,
    x: np.ndarray,
    mats: np.ndarray,
    grad_mats: np.ndarray | None,
    grad_x: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    parallel_copy: bool,
    temp_bytes: int,
) -> None:
    largest = max(t.positions for t in tiles)
    flat = scratch("gemm.patches", largest * spec.patch_size, x.dtype, limit=workspace_limit)
    g, k_group, cog = spec.groups, mats.shape[1], spec.c_out_group
    for i, tile in enumerate(tiles):
        p = tile.positions
        go = _block(grad_out, tile)  # (P, c_out)
        patches = _tile_view(flat, spec, tile)
        if grad_mats is not None:  # uninitialised: the first tile's product is written
            if parallel_copy:
                fill_parallel(patches, x, spec, tile)
            else:
                pack_patches(patches, x, spec, tile)
            if g == 1 and parallel_copy:
                matmul(
                    patches.reshape(p, k_group).T, go, grad_mats[0], accumulate=i > 0,
                    temp_bytes=temp_bytes,
                )  # fmt: skip
            elif g == 1 and i > 0:
                add_product(patches.reshape(p, k_group).T, go, grad_mats[0], temp_bytes)
            elif g == 1:
                np.matmul(patches.reshape(p, k_group).T, go, out=grad_mats[0])
            else:
                pt = patches.reshape(p, g, k_group).transpose(1, 2, 0)  # (G, K/G, P)
                gt = go.reshape(p, g, cog).transpose(1, 0, 2)  # (G, P, c_out/G)
                if i == 0:
                    np.matmul(pt, gt, out=grad_mats)
                elif grad_mats.nbytes <= temp_bytes:
                    grad_mats += np.matmul(pt, gt)
                else:  # a group at a time, each through temporaries within temp_bytes
                    for j in range(g):
                        add_product(pt[j], gt[j], grad_mats[j], temp_bytes)
        if grad_x is not None:
            if g == 1 and parallel_copy:
                matmul(go, mats[0].T, patches.reshape(p, k_group))
            elif g == 1:
                np.matmul(go, mats[0].T, out=patches.reshape(p, k_group))
            else:
                np.matmul(
                    go.reshape(p, g, cog).transpose(1, 0, 2),
                    mats.transpose(0, 2, 1),
                    out=patches.reshape(p, g, k_group).transpose(1, 0, 2),
                )  # (G, P, K/G) written as (P, G, K/G)
            if parallel_copy:
                _scatter_parallel(grad_x, patches, spec, tile)
            else:
                scatter_patches(grad_x, patches, spec, tile)


def backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    kernel: np.ndarray,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    need_x: bool = True,
    need_kernel: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Gradients of the forward map: ``grad_kernel = patches^T @ grad_out`` and
    ``grad_x = col2im(grad_out @ kernel_matrix^T)``, tile by tile, in ``x.dtype``.

    With BLAS pinned to one thread and several images, each core takes its own images (their input
    pixels are disjoint, so the col2im sums never race) and its own partial ``grad_kernel``.

    Within the workspace limit, with ``grad_kernel``: half of it for the patch tiles, a quarter
    for the products' temporaries as they add to ``grad_kernel`` (at least 256 KiB), a quarter
    for the cores' partial sums (else one core takes all the images). Grouped layers read the
    kernel through per-group views and write the gradient in the kernel's own layout (BLAS takes
    both, rows a stride apart), so neither is copied beside the limit.
    """
    k_group = spec.kh * spec.kw * spec.c_in_group
    # (G, K/G, c_out/G); empty_like keeps a view's layout, so grad_mats is HWIO in memory too
    mats = np.ascontiguousarray(kernel).reshape(k_group, spec.groups, -1).transpose(1, 0, 2)
    grad_x = np.zeros((spec.n, spec.h, spec.w, spec.c_in), dtype=x.dtype) if need_x else None
    itemsize = x.dtype.itemsize
    heavy = _kernel_heavy(spec, itemsize)
    workers = 1 if heavy else min(_workers(), spec.n)
    temp = product_temp_bytes(workspace_limit)
    tile_limit = workspace_limit
    if need_kernel:
        tile_limit = max(1, workspace_limit // 2)
        if workers * mats.nbytes > workspace_limit // 4:
            workers = 1
    if workers > 1:
        partials: dict[int, np.ndarray] = {}

        def images(lo: int, hi: int) -> None:
            sub = replace(spec, n=hi - lo)
            tiles = [
                t._replace(n0=t.n0 + lo, n1=t.n1 + lo)
                for t in _tiles(sub, itemsize, tile_limit // workers, 1)
            ]
            mine = np.empty_like(mats) if need_kernel else None
            _backward_tiles(
                tiles, grad_out, x, mats, mine, grad_x, spec, workspace_limit,
                parallel_copy=False, temp_bytes=temp // workers,
            )  # fmt: skip
            if mine is not None:
                partials[lo] = mine

        parallel_for(images, spec.n, workers=workers, pieces_per_worker=1)
        grad_mats = None
        for lo in sorted(partials):  # in image order, into the first (no stacked copy)
            if grad_mats is None:
                grad_mats = partials[lo]
            else:
                grad_mats += partials[lo]
    else:
        if heavy:
            tiles = _heavy_tiles(spec, itemsize, tile_limit)
        else:
            tiles = _tiles(spec, itemsize, tile_limit, 1)
        grad_mats = np.empty_like(mats) if need_kernel else None
        _backward_tiles(
            tiles, grad_out, x, mats, grad_mats, grad_x, spec, workspace_limit,
            parallel_copy=True, temp_bytes=temp,
        )  # fmt: skip
    grad_kernel = None
    if grad_mats is not None:
        grad_kernel = grad_mats.transpose(1, 0, 2).reshape(
            spec.kh, spec.kw, spec.c_in_group, spec.c_out
        )  # (kh, kw, cg, c_out)
    return grad_x, grad_kernel
