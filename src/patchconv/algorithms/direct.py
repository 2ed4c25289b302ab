"""Dense convolution with few channels (RGB filters, first layers), vectorised along the image.

Every other algorithm puts the channels in the SIMD lanes or in a matrix product's inner
dimension. With 3 input channels and a few output channels neither fills anything: Winograd
and the patch matrix ran a 1024x1024 RGB 3x3 filter 6-16x slower than PyTorch channels_last.
Here the lanes hold neighbouring pixels of one channel instead. Each band of output rows
copies the input rows it reads into zero-padded planes (one per input channel, in a work
buffer that stays in cache), then each block of 4 vectors of output pixels sums all
``c_in*kh*kw`` taps in registers, for 4 output channels at a time (or 1), and is written
once. A band's rows are laid end to end, each ``(kw-1)*dw`` longer than an output row (the
columns dropped when stored), so the blocks run across row ends and any width works.
Compiled with numba (:func:`patchconv.algorithms._simd.direct_rows`), bands split over the
cores; without numba it does not apply.
"""

from __future__ import annotations

import numpy as np

from patchconv._spec import ConvSpec
from patchconv.algorithms._runtime import VECTOR_BYTES, get_numba, n_workers

__all__ = [
    "GRAD_KERNEL_C_IN",
    "MAX_CHANNELS",
    "applies",
    "bands_per_image",
    "forward",
    "grad_kernel",
    "grad_kernel_bytes",
    "row_length",
]

# Channels in or out up to which the algorithm applies (past them the channels fill vectors
# and matrix products, and the other algorithms win).
MAX_CHANNELS = 64
# Pixels one block computes (4 vectors of float32; float64's are 32 and need no more).
_SPAN = 4 * VECTOR_BYTES // 4
# Input channels up to which a direct layer's weight gradient is direct's own
# (:func:`grad_kernel`). Measured against Winograd's, ms: 64x32x32 3 -> 32 1.8 / 3.7, 4 -> 8
# 0.6 / 4.8, 8x64x64 8 -> 8 0.5 / 2.5, 64x32x32 8 -> 16 3.3 / 3.1; 16 -> 16 0.9-1.7 / 0.6.
GRAD_KERNEL_C_IN = 8
# Bytes of one band's input planes: they stay in a core's L2 cache while its rows are read
# (measured: 1 MB bands ran 8 -> 8 channels 25% faster than 256 KB ones, as the kh - 1 rows
# each band reads again are fewer).
_BAND_BYTES = 1024 * 1024


def row_length(spec: ConvSpec) -> int:
    """wp: an output row as the blocks run along it, the ``(kw-1)*dw`` columns it drops
    included (also the length of the input planes' rows)."""
    return spec.ow + (spec.kw - 1) * spec.dilation[1]


def applies(spec: ConvSpec) -> str | None:
    """None if the direct algorithm handles ``spec``, else the reason it does not."""
    if spec.groups != 1:
        return f"direct needs groups 1; got {spec.groups}"
    if spec.strides != (1, 1):
        return f"direct needs strides 1; got {spec.strides}"
    if max(spec.c_in, spec.c_out) > MAX_CHANNELS:
        return (
            f"direct needs at most {MAX_CHANNELS} channels in and out; got c_in {spec.c_in}, "
            f"c_out {spec.c_out}"
        )
    wp = row_length(spec)
    if spec.oh * wp < _SPAN:
        return (
            f"direct needs {_SPAN} output pixels or more an image, counting the "
            f"{wp - spec.ow} of each row its flat rows add; got {spec.oh} x {wp}"
        )
    if get_numba() is None:
        return "direct needs numba (the fast extra)"
    return None


def band_rows(spec: ConvSpec, itemsize: int, workspace_limit: int | None = None) -> int:
    """Output rows per band: its input planes within _BAND_BYTES (and each core's within a
    share of ``workspace_limit``), and at least 4 bands a core where the layer has the rows
    for it; at least 4 rows where the limit allows, never under 1."""
    per_row = spec.c_in * row_length(spec) * itemsize
    halo = (spec.kh - 1) * spec.dilation[0]
    shared = -(-spec.n * spec.oh // (4 * n_workers()))
    band = max(4, min(spec.oh, _BAND_BYTES // per_row - halo, shared))
    if workspace_limit is not None:
        band = min(band, workspace_limit // (n_workers() * per_row) - halo)
    return max(1, min(band, spec.oh))


def bands_per_image(spec: ConvSpec, itemsize: int, workspace_limit: int | None = None) -> int:
    """Bands each image's rows are cut into: :func:`band_rows` high, fewer where a band would
    hold less than one block of pixels (its rows times wp)."""
    wp = row_length(spec)
    per = -(-spec.oh // band_rows(spec, itemsize, workspace_limit))
    while per > 1 and (spec.oh // per) * wp < 4 * VECTOR_BYTES // itemsize:
        per -= 1
    return per


def _layout(spec: ConvSpec, itemsize: int, workspace_limit: int) -> tuple[int, int, int, int]:
    """(bands per image, output rows of the tallest band, wp, values of one input plane) as
    the kernels lay the planes out: the band's input rows, then the ``(kw-1)*dw`` values its
    last block reads past them."""
    per = bands_per_image(spec, itemsize, workspace_limit)
    wp = row_length(spec)
    # Every band holds a block of pixels (a shorter one would start its block before it).
    assert (spec.oh // per) * wp >= 4 * VECTOR_BYTES // itemsize, (spec, per)
    rows = -(-spec.oh // per)
    plane = (rows + (spec.kh - 1) * spec.dilation[0]) * wp + (spec.kw - 1) * spec.dilation[1]
    return per, rows, wp, plane


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """NHWC ``x``, HWIO ``kernel`` -> NHWC output (see the module docstring)."""
    from patchconv.algorithms import _simd  # imports numba

    dtype = x.dtype
    lanes = VECTOR_BYTES // dtype.itemsize
    co4 = -(-spec.c_out // 4) * 4
    # Weights by tap (c, i, j), output channels padded to a multiple of 4 with zeros.
    wt = np.zeros((spec.c_in * spec.kh * spec.kw, co4), dtype)
    wt[:, : spec.c_out] = kernel.transpose(2, 0, 1, 3).reshape(-1, spec.c_out)
    biasv = np.zeros((co4, lanes), dtype)
    if bias is not None:
        biasv[: spec.c_out] = np.asarray(bias, dtype)[:, None]
    out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype)
    per, _, _, plane = _layout(spec, dtype.itemsize, workspace_limit)
    (pt, _), (pl, _) = spec.pads
    args = (
        np.ascontiguousarray(x),
        wt,
        biasv.reshape(-1),
        out,
        spec.kh,
        spec.kw,
        *spec.dilation,
        pt,
        pl,
        per,
    )
    size = spec.c_in * plane + 4 * lanes  # the planes, then one block's staging
    _simd.parallel(_simd.direct_rows, args, spec.n * per, work=(size, dtype, workspace_limit))
    return out


def _grad_kernel_sizes(spec: ConvSpec, itemsize: int, workspace_limit: int) -> tuple[int, int, int]:
    """(work items, values of each item's sums, values of each thread's work buffer) for
    :func:`grad_kernel`."""
    lanes = VECTOR_BYTES // itemsize
    per, rows, wp, plane = _layout(spec, itemsize, workspace_limit)
    taps = spec.c_in * spec.kh * spec.kw
    co4 = -(-spec.c_out // 4) * 4
    sums = -(-taps // 4) * 4 * co4 * lanes  # vector sums by (tap, channel)
    # As _simd.direct_grad_kernel lays them out: the input planes and the gradient's, each
    # with a vector more (its blocks are single vectors, the last one past the band's end).
    size = spec.c_in * (plane + lanes) + co4 * (rows * wp + lanes)
    # One row of sums per work item, each a fixed run of bands: the same result on every run
    # (sums kept per thread took bands in whatever order the threads reached them).
    items = max(1, min(n_workers(), spec.n * per))
    return items, sums, size


def grad_kernel_bytes(spec: ConvSpec, itemsize: int, workspace_limit: int) -> int:
    """Peak extra bytes of :func:`grad_kernel`: every item's sums and their total, and the
    threads' work buffers."""
    items, sums, size = _grad_kernel_sizes(spec, itemsize, workspace_limit)
    return ((items + 1) * sums + min(items, n_workers()) * size) * itemsize


def grad_kernel(
    grad_out: np.ndarray, x: np.ndarray, spec: ConvSpec, workspace_limit: int
) -> np.ndarray:
    """The weight gradient of :func:`forward`'s layer, HWIO: every tap's input plane times
    every output channel's gradient plane, summed over the pixels in SIMD vectors, each core
    over its bands (:func:`patchconv.algorithms._simd.direct_grad_kernel`)."""
    from patchconv.algorithms import _simd  # imports numba

    dtype = x.dtype
    lanes = VECTOR_BYTES // dtype.itemsize
    per, _, _, _ = _layout(spec, dtype.itemsize, workspace_limit)
    dh, dw = spec.dilation
    taps = spec.c_in * spec.kh * spec.kw
    co4 = -(-spec.c_out // 4) * 4
    items, sums, size = _grad_kernel_sizes(spec, dtype.itemsize, workspace_limit)
    parts = np.zeros((items, sums), dtype)
    (pt, _), (pl, _) = spec.pads
    args = (
        np.ascontiguousarray(x),
        np.ascontiguousarray(grad_out, dtype),
        spec.kh,
        spec.kw,
        dh,
        dw,
        pt,
        pl,
        per,
        parts,
    )
    _simd.parallel(
        _simd.direct_grad_kernel,
        args,
        items,
        pieces_per_worker=1,
        work=(size, dtype, workspace_limit),
    )
    dk = parts.sum(axis=0).reshape(-1, co4, lanes).sum(axis=2)[:taps]
    dk = dk.reshape(spec.c_in, spec.kh, spec.kw, co4)
    return np.ascontiguousarray(dk[..., : spec.c_out].transpose(1, 2, 0, 3))
