"""im2col and col2im, an adjoint pair, whole and in tiles.

A *tile* is a block of output positions ``(n0, n1, r0, r1, c0, c1)``: images ``n0:n1``, output
rows ``r0:r1``, output columns ``c0:c1``. Its patches live in a buffer of shape
``(tn, tr, tc, groups, kh, kw, c_in_group)``: flattened per group, that is the seed's row-major
``(kh, kw, c_in)`` patch, and for ``groups == 1`` the whole buffer reshapes to the patch matrix
``(tn*tr*tc, kh*kw*c_in)`` with no copy.

Padding is never materialised: for each kernel offset ``(i, j)`` only the output positions whose
input pixel lies inside the image are copied, and the rest of that slice of the buffer is zeroed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from patchconv._spec import ConvSpec

__all__ = [
    "Tile",
    "col2im",
    "fill_patches",
    "im2col",
    "iter_tiles",
    "offset_slices",
    "scatter_patches",
    "valid_range",
]


class Tile(NamedTuple):
    n0: int
    n1: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n1 - self.n0, self.r1 - self.r0, self.c1 - self.c0)

    @property
    def positions(self) -> int:
        tn, tr, tc = self.shape
        return tn * tr * tc


def iter_tiles(spec: ConvSpec, bytes_per_position: int, limit_bytes: int) -> Iterator[Tile]:
    """Split the output into tiles of at most ``limit_bytes`` of patches each.

    A tile is whole images if one fits, else whole rows of one image, else a run of columns of
    one row; so a tile's output block is always contiguous in NHWC. At least one position per
    tile, whatever the limit.
    """
    budget = max(1, limit_bytes // max(1, bytes_per_position))  # positions per tile
    per_image = spec.oh * spec.ow
    if budget >= per_image:
        step = min(spec.n, budget // per_image)
        for n0 in range(0, spec.n, step):
            yield Tile(n0, min(n0 + step, spec.n), 0, spec.oh, 0, spec.ow)
    elif budget >= spec.ow:
        step = budget // spec.ow
        for n0 in range(spec.n):
            for r0 in range(0, spec.oh, step):
                yield Tile(n0, n0 + 1, r0, min(r0 + step, spec.oh), 0, spec.ow)
    else:
        for n0 in range(spec.n):
            for r0 in range(spec.oh):
                for c0 in range(0, spec.ow, budget):
                    yield Tile(n0, n0 + 1, r0, r0 + 1, c0, min(c0 + budget, spec.ow))


def valid_range(
    o0: int, o1: int, offset: int, stride: int, pad: int, size: int
) -> tuple[int, int, int]:
    """Output indices ``lo:hi`` within ``o0:o1`` whose input index ``o*stride - pad + offset``
    lies in ``[0, size)``, and the input index of ``lo``."""
    shift = offset - pad  # input index of output 0
    lo = max(o0, -(shift // stride))  # ceil(-shift / stride)
    hi = min(o1, (size - 1 - shift) // stride + 1)
    return lo, hi, lo * stride + shift


def offset_slices(
    spec: ConvSpec, tile: Tile
) -> Iterator[
    tuple[int, int, slice, slice, slice, slice] | tuple[int, int, None, None, None, None]
]:
    """For each kernel offset (i, j): the buffer (row, col) slices and the input slices that feed
    them, or Nones where the tile sees only padding."""
    sh, sw = spec.strides
    dh, dw = spec.dilation
    (pt, _), (pl, _) = spec.pads
    for i in range(spec.kh):
        rl, rh, ih = valid_range(tile.r0, tile.r1, i * dh, sh, pt, spec.h)
        for j in range(spec.kw):
            cl, ch, iw = valid_range(tile.c0, tile.c1, j * dw, sw, pl, spec.w)
            if rl >= rh or cl >= ch:
                yield i, j, None, None, None, None
                continue
            yield (
                i,
                j,
                slice(rl - tile.r0, rh - tile.r0),
                slice(cl - tile.c0, ch - tile.c0),
                slice(ih, ih + (rh - rl - 1) * sh + 1, sh),
                slice(iw, iw + (ch - cl - 1) * sw + 1, sw),
            )


def _fill_by_kernel_rows(buf: np.ndarray, x: np.ndarray, spec: ConvSpec, tile: Tile) -> None:
    """groups == 1, no column dilation: for each kernel row, the ``kw * c_in`` values of a patch
    row are one contiguous run of x, so interior columns copy whole runs (7x7x3: 84 bytes, not
    the 12 of one offset); only border columns that touch padding go offset by offset."""
    sh, sw = spec.strides
    dh = spec.dilation[0]
    (pt, _), (pl, _) = spec.pads
    tn, tr, _ = tile.shape
    kw, c = spec.kw, spec.c_in
    xs = x[tile.n0 : tile.n1]
    # Output columns whose whole kernel row lies inside the image.
    ca = max(tile.c0, -(-pl // sw))
    cb = min(tile.c1, (spec.w - kw + pl) // sw + 1)
    if cb > ca:
        borders = [(tile.c0, ca), (cb, tile.c1)]
    else:
        borders = [(tile.c0, tile.c1)]
    for i in range(spec.kh):
        rl, rh, ih = valid_range(tile.r0, tile.r1, i * dh, sh, pt, spec.h)
        dst = buf[:, :, :, 0, i]  # (tn, tr, tc, kw, c)
        if rl >= rh:
            dst[...] = 0
            continue
        lo, hi = rl - tile.r0, rh - tile.r0
        if lo > 0:
            dst[:, :lo] = 0
        if hi < tr:
            dst[:, hi:] = 0
        rows = dst[:, lo:hi]  # (tn, nr, tc, kw, c)
        if cb > ca:
            base = xs[:, ih:, ca * sw - pl :]
            st = base.strides
            src = np.lib.stride_tricks.as_strided(
                base,
                (tn, hi - lo, cb - ca, kw, c),
                (st[0], sh * st[1], sw * st[2], st[2], st[3]),
                writeable=False,
            )
            rows[:, :, ca - tile.c0 : cb - tile.c0] = src
        for c_lo, c_hi in borders:
            if c_hi <= c_lo:
                continue
            for j in range(kw):
                cl, ch, iw = valid_range(c_lo, c_hi, j, sw, pl, spec.w)
                d = rows[:, :, :, j]  # (tn, nr, tc, c)
                if cl >= ch:
                    d[:, :, c_lo - tile.c0 : c_hi - tile.c0] = 0
                    continue
                if cl > c_lo:
                    d[:, :, c_lo - tile.c0 : cl - tile.c0] = 0
                if ch < c_hi:
                    d[:, :, ch - tile.c0 : c_hi - tile.c0] = 0
                d[:, :, cl - tile.c0 : ch - tile.c0] = xs[
                    :, ih : ih + (hi - lo - 1) * sh + 1 : sh, iw : iw + (ch - cl - 1) * sw + 1 : sw
                ]


def fill_patches(buf: np.ndarray, x: np.ndarray, spec: ConvSpec, tile: Tile) -> None:
    """Write the tile's patches of NHWC ``x`` into ``buf`` (tn, tr, tc, groups, kh, kw, cg)."""
    if (
        spec.groups == 1
        and spec.dilation[1] == 1
        and spec.kw > 1
        and x.strides[-1] == x.itemsize
        and x.strides[-2] == spec.c_in * x.itemsize
    ):
        _fill_by_kernel_rows(buf, x, spec, tile)
        return
    x5 = x.reshape(spec.n, spec.h, spec.w, spec.groups, spec.c_in_group)  # splits one axis: a view
    xs = x5[tile.n0 : tile.n1]
    for i, j, rows, cols, in_rows, in_cols in offset_slices(spec, tile):
        dst = buf[:, :, :, :, i, j, :]  # (tn, tr, tc, groups, cg)
        if rows is None:
            dst[...] = 0
            continue
        assert cols is not None
        # Zero only what padding covers; the buffer is reused, so stale values must go.
        if rows.start > 0:
            dst[:, : rows.start] = 0
        if rows.stop < dst.shape[1]:
            dst[:, rows.stop :] = 0
        if cols.start > 0:
            dst[:, rows, : cols.start] = 0
        if cols.stop < dst.shape[2]:
            dst[:, rows, cols.stop :] = 0
        dst[:, rows, cols] = xs[:, in_rows, in_cols]


def scatter_patches(grad_x: np.ndarray, buf: np.ndarray, spec: ConvSpec, tile: Tile) -> None:
    """Add the tile's patch values in ``buf`` back onto NHWC ``grad_x``: the adjoint of
    :func:`fill_patches` (padding positions are dropped)."""
    g5 = grad_x.reshape(spec.n, spec.h, spec.w, spec.groups, spec.c_in_group)
    gs = g5[tile.n0 : tile.n1]
    for i, j, rows, cols, in_rows, in_cols in offset_slices(spec, tile):
        if rows is None:
            continue
        # Within one (i, j), distinct outputs hit distinct input pixels, so += is safe.
        target = gs[:, in_rows, in_cols]
        target += buf[:, rows, cols, :, i, j, :]


def _whole(spec: ConvSpec) -> Tile:
    return Tile(0, spec.n, 0, spec.oh, 0, spec.ow)


def im2col(x: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """All patches of NHWC ``x`` as one matrix ``(n*oh*ow, kh*kw*c_in)``.

    Columns are grouped: group g's flattened ``(kh, kw, c_in // groups)`` patch fills columns
    ``g*K : (g+1)*K``; for ``groups == 1`` this is the seed's ``(kh, kw, c_in)`` row-major order.
    """
    tile = _whole(spec)
    buf = np.empty((*tile.shape, spec.groups, spec.kh, spec.kw, spec.c_in_group), dtype=x.dtype)
    fill_patches(buf, x, spec, tile)
    return buf.reshape(tile.positions, spec.patch_size)  # (n*oh*ow, kh*kw*c_in)


def col2im(cols: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The adjoint of :func:`im2col`: sum each patch value back onto its input pixel (NHWC)."""
    tile = _whole(spec)
    buf = cols.reshape(*tile.shape, spec.groups, spec.kh, spec.kw, spec.c_in_group)
    grad_x = np.zeros((spec.n, spec.h, spec.w, spec.c_in), dtype=cols.dtype)
    scatter_patches(grad_x, buf, spec, tile)
    return grad_x
