"""Depthwise convolution (groups == c_in) without a patch matrix.

Each output channel ``o`` reads one input channel ``o // m`` (``m = c_out // c_in``, the depth
multiplier), so a patch matrix would be ``kh*kw`` times the input for a product with ``K = kh*kw``
rows: all copy, no arithmetic. Instead every output row accumulates its ``kh*kw`` shifted input
rows times the tap's per-channel weights while the row stays in cache.

With numba (the ``fast`` extra) that loop is compiled once (cached on disk) and runs without the
GIL, one block of rows per core; without numba the same sums run as NumPy slices, one kernel tap
at a time over tiles of whole images (still no patch matrix, only slower).

The forward pass with one output per input channel and at least one SIMD vector of channels
(16 float32, 8 float64) runs :func:`patchconv.algorithms._simd.depthwise_rows`: 8 output
columns x 16 channels accumulate in registers over all taps and are written once, reading
aligned zero-padded copies of the input rows (3x3 at stride 1: ``depthwise_3x3_rows``, two
output rows at a time). The plain loop below streams the output row
through memory once per tap and ran at a third of its speed (N8 112x112x32 3x3: 2.0 ms against
0.9 ms; PyTorch 0.55 ms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from patchconv._patches import iter_tiles, offset_slices
from patchconv._spec import ConvSpec
from patchconv.algorithms._runtime import (
    VECTOR_BYTES,
    aligned_empty,
    get_numba,
    n_workers,
    parallel_for,
)

__all__ = ["applies", "backward", "forward", "kernels"]

_kernels: dict[str, Callable[..., Any]] | None = None
# Output values per column block of the compiled forward loop: block and weights stay in L1.
_BLOCK_FLOATS = 1024


def applies(spec: ConvSpec) -> str | None:
    """None if depthwise handles ``spec``, else the reason it does not."""
    if spec.groups != spec.c_in or spec.c_in_group != 1:
        return f"depthwise needs groups == c_in; got groups {spec.groups}, c_in {spec.c_in}"
    return None


def _compile() -> dict[str, Callable[..., Any]] | None:
    """The numba kernels, compiled on first use (and cached on disk), or None without numba."""
    global _kernels
    numba = get_numba()
    if numba is None:
        return None
    if _kernels is not None:
        return _kernels
    from patchconv.algorithms import _simd  # imports numba

    njit = numba.njit(nogil=True, cache=True, fastmath=False, boundscheck=False)

    @njit
    def fwd_rows(x, k, bias, out, sh, sw, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
        # x (n, h, w, c_in), k (kh, kw, c_out), bias (c_out,), out (n, oh, ow, c_out);
        # rows lo:hi of the flattened (n*oh) output.
        _, h, w, c_in = x.shape
        kh, kw, c_out = k.shape
        oh, ow = out.shape[1], out.shape[2]
        m = c_out // c_in
        for r in range(lo, hi):
            b = r // oh
            i = r - b * oh
            orow = out[b, i]  # (ow, c_out)
            for j in range(ow):
                for o in range(c_out):
                    orow[j, o] = bias[o]
            for di in range(kh):
                y = i * sh - pt + di * dh
                if y < 0 or y >= h:
                    continue
                xrow = x[b, y]  # (w, c_in)
                for dj in range(kw):
                    off = dj * dw - pl
                    j0 = max(0, (-off + sw - 1) // sw)
                    j1 = min(ow, (w - 1 - off) // sw + 1)
                    kv = k[di, dj]
                    if m == 1:
                        for j in range(j0, j1):
                            xx = j * sw + off
                            for c in range(c_in):
                                orow[j, c] += xrow[xx, c] * kv[c]
                    else:
                        for j in range(j0, j1):
                            xx = j * sw + off
                            for c in range(c_in):
                                xv = xrow[xx, c]
                                for q in range(m):
                                    orow[j, c * m + q] += xv * kv[c * m + q]

    @numba.njit(nogil=True, cache=True, fastmath={"contract"}, boundscheck=False)
    def fwd_rows_unit(x, kt, bias_row, out, sh, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
        # Column stride 1, multiplier 1: each output row is done in blocks of ``jb`` columns
        # (jb*c floats, a few KiB, in L1); for each tap a block gains a contiguous run of one
        # input row times the tap's weights tiled over the block (kt (kh, kw, jb*c)), a flat
        # loop LLVM vectorises, while block and weights stay in L1.
        _, h, w, c = x.shape
        kh, kw, span = kt.shape
        jb = span // c
        oh, ow = out.shape[1], out.shape[2]
        for r in range(lo, hi):
            b = r // oh
            i = r - b * oh
            orow = out[b, i].reshape(-1)  # (ow*c,)
            for b0 in range(0, ow, jb):
                b1 = min(ow, b0 + jb)
                blk = orow[b0 * c : b1 * c]
                blk[:] = bias_row[: (b1 - b0) * c]
                for di in range(kh):
                    y = i * sh - pt + di * dh
                    if y < 0 or y >= h:
                        continue
                    xrow = x[b, y].reshape(-1)  # (w*c,)
                    for dj in range(kw):
                        off = dj * dw - pl
                        j0 = max(b0, -off)
                        j1 = min(b1, w - off)
                        if j1 <= j0:
                            continue
                        length = (j1 - j0) * c
                        dst = orow[j0 * c : j0 * c + length]
                        src = xrow[(j0 + off) * c : (j0 + off) * c + length]
                        wts = kt[di, dj, (j0 - b0) * c : (j0 - b0) * c + length]
                        for t in range(length):
                            dst[t] += src[t] * wts[t]

    @njit
    def grad_x_rows(go, k, gx, sh, sw, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
        # Gather form: input row (b, y) sums every output row that read it; rows lo:hi of n*h.
        _, oh, ow, c_out = go.shape
        _, h, w, c_in = gx.shape
        kh, kw, _ = k.shape
        m = c_out // c_in
        for r in range(lo, hi):
            b = r // h
            y = r - b * h
            grow = gx[b, y]  # (w, c_in)
            for xx in range(w):
                for c in range(c_in):
                    grow[xx, c] = 0.0
            for di in range(kh):
                num = y + pt - di * dh
                if num < 0 or num % sh != 0:
                    continue
                i = num // sh
                if i >= oh:
                    continue
                gorow = go[b, i]  # (ow, c_out)
                for dj in range(kw):
                    off = dj * dw - pl
                    j0 = max(0, (-off + sw - 1) // sw)
                    j1 = min(ow, (w - 1 - off) // sw + 1)
                    kv = k[di, dj]
                    for j in range(j0, j1):
                        xx = j * sw + off
                        if m == 1:
                            for c in range(c_in):
                                grow[xx, c] += gorow[j, c] * kv[c]
                        else:
                            for c in range(c_in):
                                acc = grow[xx, c]
                                for q in range(m):
                                    acc += gorow[j, c * m + q] * kv[c * m + q]
                                grow[xx, c] = acc

    @njit
    def grad_k_rows(go, x, gk, sh, sw, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
        # gk (kh, kw, c_out) float64 partial sums over output rows lo:hi of n*oh.
        _, oh, ow, c_out = go.shape
        _, h, w, c_in = x.shape
        kh, kw, _ = gk.shape
        m = c_out // c_in
        row = np.empty(c_out, dtype=go.dtype)
        for r in range(lo, hi):
            b = r // oh
            i = r - b * oh
            gorow = go[b, i]
            for di in range(kh):
                y = i * sh - pt + di * dh
                if y < 0 or y >= h:
                    continue
                xrow = x[b, y]
                for dj in range(kw):
                    off = dj * dw - pl
                    j0 = max(0, (-off + sw - 1) // sw)
                    j1 = min(ow, (w - 1 - off) // sw + 1)
                    for o in range(c_out):
                        row[o] = 0.0
                    for j in range(j0, j1):
                        xx = j * sw + off
                        if m == 1:
                            for c in range(c_in):
                                row[c] += gorow[j, c] * xrow[xx, c]
                        else:
                            for c in range(c_in):
                                xv = xrow[xx, c]
                                for q in range(m):
                                    row[c * m + q] += gorow[j, c * m + q] * xv
                    for o in range(c_out):
                        gk[di, dj, o] += row[o]

    _kernels = {
        "fwd_simd": _simd.depthwise_rows,
        "fwd_simd_3x3": _simd.depthwise_3x3_rows,
        "fwd": fwd_rows,
        "fwd_unit": fwd_rows_unit,
        "grad_x": grad_x_rows,
        "grad_k": grad_k_rows,
    }
    return _kernels


def kernels() -> dict[str, Callable[..., Any]] | None:
    """The compiled kernels (compiling them now if needed), or None without numba."""
    return _compile()


def _geometry(spec: ConvSpec) -> tuple[int, ...]:
    (pt, _), (pl, _) = spec.pads
    return (*spec.strides, *spec.dilation, pt, pl)


def _rows_min(spec: ConvSpec) -> int:
    """Output rows per thread hand-off: about 64 K multiply-adds."""
    per_row = spec.ow * spec.c_out * spec.kh * spec.kw
    return max(1, 65536 // max(1, per_row))


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """NHWC ``x``, HWIO ``kernel (kh, kw, 1, c_out)`` -> NHWC output."""
    k = np.ascontiguousarray(kernel.reshape(spec.kh, spec.kw, spec.c_out))  # (kh, kw, c_out)
    shape = (spec.n, spec.oh, spec.ow, spec.c_out)
    compiled = _compile()
    if compiled is not None:
        from patchconv.algorithms import _simd  # imports numba

        xc = np.ascontiguousarray(x)
        b = np.zeros(spec.c_out, x.dtype) if bias is None else np.ascontiguousarray(bias)
        (pt, _), (pl, _) = spec.pads
        run: Callable[..., Any]
        args: tuple[Any, ...]
        dims: tuple[int, ...]
        if spec.c_out == spec.c_in and spec.c_in * x.dtype.itemsize >= VECTOR_BYTES:
            out = aligned_empty(shape, x.dtype)
            kf = aligned_empty((k.size,), x.dtype)
            kf[:] = k.reshape(-1)
            bf = aligned_empty((spec.c_out,), x.dtype)
            bf[:] = b
            plain_3x3 = (spec.kh, spec.kw, *spec.strides, *spec.dilation) == (3, 3, 1, 1, 1, 1)
            if plain_3x3 and spec.ow >= 6:
                run, args = compiled["fwd_simd_3x3"], (xc, kf, bf, out, pt, pl)
            else:
                dims = (spec.kh, spec.kw, *spec.strides, *spec.dilation, pt, pl)
                run, args = compiled["fwd_simd"], (xc, kf, bf, out, *dims)
        elif spec.strides[1] == 1 and spec.c_out == spec.c_in:
            out = np.empty(shape, dtype=x.dtype)
            jb = max(1, min(spec.ow, _BLOCK_FLOATS // spec.c_out))  # columns per block
            kt = np.ascontiguousarray(np.tile(k, (1, 1, jb)))  # (kh, kw, jb*c)
            bias_row = np.tile(b, jb)  # (jb*c,)
            dims = (spec.strides[0], *spec.dilation, pt, pl)
            run, args = compiled["fwd_unit"], (xc, kt, bias_row, out, *dims)
        else:
            out = np.empty(shape, dtype=x.dtype)
            run, args = compiled["fwd"], (xc, k, b, out, *_geometry(spec))
        _simd.parallel(run, args, spec.n * spec.oh, min_items=_rows_min(spec))
        return out
    out = np.empty(shape, dtype=x.dtype)
    m = spec.c_out_group
    # Without numba, tiles of output whose products (one value a position and output channel)
    # take at most 3/4 of the limit over all threads (whole images took 6 MiB under 2 MiB),
    # and one image at the most, so the threads share the batch.
    per_position = spec.c_out * x.dtype.itemsize
    # (less what NumPy's buffered in-place adds take a thread: two buffers of getbufsize())
    each = 3 * workspace_limit // 4 // n_workers() - 2 * np.getbufsize() * x.dtype.itemsize
    image = replace(spec, n=1)  # each thread's images, tile by tile

    def images(lo: int, hi: int) -> None:
        for b in range(lo, hi):
            for tile in iter_tiles(image, per_position, each):
                dst = out[b, tile.r0 : tile.r1, tile.c0 : tile.c1]
                dst[...] = 0 if bias is None else bias
                for i, j, rows, cols, in_rows, in_cols in offset_slices(spec, tile):
                    if rows is None:
                        continue
                    part = x[b, in_rows, in_cols, :, None] * k[i, j].reshape(spec.c_in, m)
                    dst[rows, cols] += part.reshape(*part.shape[:2], spec.c_out)
                    del part  # before the next offset's

    parallel_for(images, spec.n)
    return out


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
    """Gradients of the depthwise forward map, again without a patch matrix."""
    k = np.ascontiguousarray(kernel.reshape(spec.kh, spec.kw, spec.c_out))
    go = np.ascontiguousarray(grad_out)
    xc = np.ascontiguousarray(x)
    m = spec.c_out_group
    grad_x = np.empty((spec.n, spec.h, spec.w, spec.c_in), dtype=x.dtype) if need_x else None
    grad_k = None
    compiled = _compile()
    geo = _geometry(spec)
    if compiled is not None:
        if grad_x is not None:
            gx_kernel = compiled["grad_x"]
            gx = grad_x
            parallel_for(
                lambda lo, hi: gx_kernel(go, k, gx, *geo, lo, hi),
                spec.n * spec.h,
                min_items=_rows_min(spec),
            )
        if need_kernel:
            gk_kernel = compiled["grad_k"]
            partials: dict[int, np.ndarray] = {}  # by first row: added up in row order,
            # the same result on every call (in the order pieces finished, not)

            def rows(lo: int, hi: int) -> None:
                part = np.zeros((spec.kh, spec.kw, spec.c_out))
                gk_kernel(go, xc, part, *geo, lo, hi)
                partials[lo] = part

            parallel_for(rows, spec.n * spec.oh, min_items=_rows_min(spec))
            grad_k = np.sum([partials[lo] for lo in sorted(partials)], axis=0)
    else:
        if grad_x is not None:
            grad_x[...] = 0
        if need_kernel:
            grad_k = np.zeros((spec.kh, spec.kw, spec.c_out))
        # Tiles of grad_out within the limit: a position and output channel takes up to 4
        # float64 temporaries (grad_x's product and sum, the kernel gradient's operands in
        # float64); the whole batch at once took 24.5 MiB under a 2 MiB limit.
        for tile in iter_tiles(spec, 4 * 8 * spec.c_out, workspace_limit):
            got = go[tile.n0 : tile.n1, tile.r0 : tile.r1, tile.c0 : tile.c1]
            for i, j, rows_, cols_, in_rows, in_cols in offset_slices(spec, tile):
                if rows_ is None:
                    continue
                gt = got[:, rows_, cols_]
                g = gt.reshape(*gt.shape[:3], spec.c_in, m)
                if grad_x is not None:
                    sums = (g * k[i, j].reshape(spec.c_in, m)).sum(axis=-1)
                    grad_x[tile.n0 : tile.n1, in_rows, in_cols] += sums
                    del sums  # before the next product (held, it made this path 20% slower)
                if grad_k is not None:
                    xs = xc[tile.n0 : tile.n1, in_rows, in_cols]
                    part = np.einsum("nhwcm,nhwc->cm", g, xs, dtype=np.float64)
                    grad_k[i, j] += part.reshape(-1)
    grad_kernel = None
    if grad_k is not None:
        grad_kernel = grad_k.astype(x.dtype).reshape(spec.kh, spec.kw, 1, spec.c_out)
    return grad_x, grad_kernel
