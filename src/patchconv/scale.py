"""conv2d on Dask arrays: images and batches larger than memory (dask imported here only).

:func:`conv2d` takes a Dask array and returns a lazy Dask array equal to the in-memory
:func:`patchconv.conv2d` of the whole array. Batch chunks map block-wise. Spatially, every
output block ``[o0, o1)`` reads the exact input window it needs,

``[o0*stride - pad_lo, (o1 - 1)*stride + (k - 1)*dilation + 1 - pad_lo)``,

so a block's halo is exact for any kernel size, dilation, stride and padding, strided outputs
line up across block borders (each block starts on a stride step of the whole image), and the
part of the window outside the image is the true border padding: it exists only for blocks at
the image edges and is handed to conv2d as that block's explicit padding. Chunks of any size,
smaller than the kernel or uneven, are fine: a window spanning several input chunks is stitched
from them.

The graph holds only NumPy arrays and patchconv functions, so the same call runs on the
threaded scheduler, on :func:`local_client` or on any ``dask.distributed`` cluster unchanged.
:func:`open_image` and :func:`write_blocks` stream tiled TIFF or Zarr files in and out a block
at a time, which is what ``patchconv apply --chunks`` uses.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchconv import algorithms
from patchconv._spec import (
    PADDING_MODES,
    PatchconvError,
    as_float_array,
    check_workspace_limit,
    compute_dtype,
    conv_spec,
)
from patchconv.functional import conv2d as _conv2d

__all__ = [
    "AxisBlock",
    "block_range",
    "check_target",
    "conv2d",
    "is_zarr_path",
    "local_client",
    "open_image",
    "plan_axis",
    "write_blocks",
]

_FUNC = "scale.conv2d"


def _dask() -> Any:
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - the dask extra is installed in CI
        raise ImportError("patchconv.scale needs Dask: pip install 'patchconv[dask]'") from exc
    return da


@dataclass(frozen=True)
class AxisBlock:
    """One output block along one spatial axis and the input window that feeds it.

    Outputs ``o0:o1`` read input ``a:b`` (clipped to the image) with ``pad_lo`` and ``pad_hi``
    zeros of true border padding around it; ``a == b`` means the window lies wholly in the
    padding, so the block's outputs are the bias alone.
    """

    o0: int
    o1: int
    a: int
    b: int
    pad_lo: int
    pad_hi: int

    @property
    def empty(self) -> bool:
        return self.a >= self.b


def plan_axis(
    out_bounds: Sequence[int],
    *,
    size: int,
    k: int,
    stride: int,
    dilation: int,
    pads: tuple[int, int],
) -> list[AxisBlock]:
    """The input window and border padding of each output block ``out_bounds[j]:out_bounds[j+1]``.

    >>> [(b.a, b.b, b.pad_lo, b.pad_hi) for b in plan_axis(
    ...     [0, 3, 5], size=10, k=3, stride=2, dilation=1, pads=(1, 0))]
    [(0, 6, 1, 0), (5, 10, 0, 0)]
    """
    lo = pads[0]
    effective = (k - 1) * dilation + 1
    blocks = []
    for o0, o1 in itertools.pairwise(out_bounds):
        start = o0 * stride - lo  # input index of the block's first window (may be < 0)
        end = (o1 - 1) * stride + effective - lo  # one past its last window's last pixel
        a, b = min(max(start, 0), size), min(max(end, 0), size)
        if a >= b:
            blocks.append(AxisBlock(o0, o1, a, a, 0, 0))
        else:
            blocks.append(AxisBlock(o0, o1, a, b, a - start, end - b))
    return blocks


def _bounds(chunks: Sequence[int]) -> list[int]:
    return [0, *np.cumsum(chunks).tolist()]


def _out_bounds_from_input(
    in_chunks: Sequence[int], *, out_size: int, stride: int, pad_lo: int
) -> list[int]:
    """Output block borders that follow the input chunks: output o belongs to the chunk that
    holds its window's first pixel ``o*stride - pad_lo``."""
    inner = [
        min(max(math.ceil((edge + pad_lo) / stride), 0), out_size)
        for edge in _bounds(in_chunks)[1:-1]
    ]
    return sorted({0, *inner, out_size})


def _out_bounds_given(value: Any, *, out_size: int, axis: str) -> list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value < 1:
            raise PatchconvError(f"{_FUNC}: out_chunks must be >= 1; got {value} for {axis}")
        return sorted({*range(0, out_size, int(value)), out_size})
    if isinstance(value, (tuple, list)) and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        if sum(value) != out_size or min(value, default=0) < 1:
            raise PatchconvError(
                f"{_FUNC}: out_chunks for the output {axis} must be positive and sum to "
                f"{out_size}; got {tuple(value)}"
            )
        return _bounds(value)
    raise TypeError(
        f"{_FUNC}: out_chunks must be an int, a pair, or a pair of tuples of ints; got {value!r}"
    )


def _conv_block(
    block: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, **options: Any
) -> np.ndarray:
    """One output block: the in-memory conv2d of its input window with its own padding."""
    if block.shape[0] == 0:  # an empty batch chunk (a masked batch leaves them): no images out
        keys = ("strides", "padding", "dilation_rate", "groups", "data_format")
        spec = conv_spec(
            (1, *block.shape[1:]), kernel.shape, None, **{k: options[k] for k in keys}, func=_FUNC
        )
        dtypes = [block.dtype, kernel.dtype] + ([] if bias is None else [bias.dtype])
        _, out_dtype = compute_dtype(*dtypes)
        shape = (
            (0, spec.c_out, spec.oh, spec.ow)
            if spec.data_format == "channels_first"
            else (0, spec.oh, spec.ow, spec.c_out)
        )
        return np.empty(shape, dtype=out_dtype)
    return _conv2d(block, kernel, bias, **options)


def _check_blocks(
    spec: Any,
    kernel_shape: tuple[int, ...],
    rows: list[AxisBlock],
    cols: list[AxisBlock],
    options: dict[str, Any],
) -> None:
    """Refuse now, not inside ``.compute()``, a named algorithm that does not apply to some
    block (``direct`` needs 64 output pixels an image, which a small block may not have)."""
    spans = {(r.b - r.a, r.pad_lo, r.pad_hi) for r in rows if not r.empty}
    widths = {(c.b - c.a, c.pad_lo, c.pad_hi) for c in cols if not c.empty}
    for h, top, bottom in sorted(spans):
        for w, left, right in sorted(widths):
            shape = (1, spec.c_in, h, w) if spec.data_format == "channels_first" else (
                1, h, w, spec.c_in
            )  # fmt: skip
            block = conv_spec(
                shape,
                kernel_shape,
                None,
                strides=options["strides"],
                padding=((top, bottom), (left, right)),
                dilation_rate=options["dilation_rate"],
                groups=options["groups"],
                data_format=options["data_format"],
                func=_FUNC,
            )
            try:
                algorithms.choose(block, options["algorithm"], func=_FUNC)
            except PatchconvError as exc:
                raise PatchconvError(
                    f"{exc}, in an output block of {block.oh} x {block.ow} that these chunks "
                    "give: give larger chunks (or out_chunks), or algorithm='auto'"
                ) from exc


def conv2d(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
    algorithm: str = "auto",
    workspace_limit: int | None = None,
    out_chunks: Any = None,
) -> Any:
    """:func:`patchconv.conv2d` of a Dask array, as a lazy Dask array.

    Parameters
    ----------
    x : dask.array.Array, (n, h, w, c_in) or (n, c_in, h, w) for "channels_first"
        Any chunking; chunks along the channel axis are merged (a kernel reads every input
        channel). A NumPy array is wrapped with ``dask.array.asarray``.
    kernel, bias, strides, padding, dilation_rate, groups, data_format, padding_mode, algorithm,
    workspace_limit
        As for :func:`patchconv.conv2d`; ``kernel`` and ``bias`` are small NumPy arrays. A
        ``padding_mode`` other than "zeros" pads x lazily (``dask.array.pad``) first.
    out_chunks : int, (int, int) or (tuple, tuple), optional
        Output block sizes along (oh, ow). By default the output blocks follow x's chunks
        (about ``chunk / stride`` outputs per input chunk).

    Returns
    -------
    dask.array.Array, (n, oh, ow, c_out) or (n, c_out, oh, ow)
        Lazy; equal to the in-memory conv2d within the tolerance of its dtype. Batch chunks are
        x's; the channel axis is one chunk.

    Notes
    -----
    ``oh = (h + top + bottom - ((kh - 1) * dilation_h + 1)) // stride_h + 1``. Output block
    ``[o0, o1)`` reads input rows ``[o0*s - top, (o1 - 1)*s + (kh - 1)*d + 1 - top)``; the
    part of that window outside the image is the true border padding.

    Examples
    --------
    >>> import numpy as np, dask.array as da, patchconv, patchconv.scale
    >>> x = np.random.default_rng(0).random((2, 30, 20, 3))
    >>> kernel = np.ones((3, 3, 3, 4))
    >>> lazy = patchconv.scale.conv2d(da.from_array(x, chunks=(1, 7, 6, 3)), kernel,
    ...                               strides=2, padding="same")
    >>> lazy.shape, lazy.chunks[1]
    ((2, 15, 10, 4), (4, 3, 4, 3, 1))
    >>> bool(np.allclose(lazy.compute(), patchconv.conv2d(x, kernel, strides=2, padding="same")))
    True
    """
    da = _dask()
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    if any(math.isnan(v) for v in x.shape):
        raise PatchconvError(
            f"{_FUNC}: x must have known chunk sizes; got shape {x.shape} "
            "(call x.compute_chunk_sizes() first)"
        )
    x_dtype = as_float_array(np.empty(0, dtype=x.dtype), func=_FUNC, name="x").dtype
    kernel = as_float_array(kernel, func=_FUNC, name="kernel")
    bias_arr = None if bias is None else as_float_array(bias, func=_FUNC, name="bias")
    spec = conv_spec(
        x.shape,
        kernel.shape,
        None if bias_arr is None else bias_arr.shape,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=groups,
        data_format=data_format,
        padding_mode=padding_mode,
        func=_FUNC,
    )
    if spec.padding_mode != "zeros":  # reflect, replicate, circular: pad, then run unpadded
        (top, bottom), (left, right) = spec.pads
        spatial = [(top, bottom), (left, right)]
        width = [(0, 0), (0, 0), *spatial] if spec.data_format == "channels_first" else [
            (0, 0), *spatial, (0, 0)
        ]  # fmt: skip
        padded = da.pad(x, width, mode=PADDING_MODES[spec.padding_mode])
        # da.pad adds an edge chunk as wide as the padding: fold it into x's own edge chunks,
        # so the output blocks still follow x's chunks.
        h_ax, w_ax = (2, 3) if spec.data_format == "channels_first" else (1, 2)
        merged = {}
        for ax, (lo, hi) in ((h_ax, (top, bottom)), (w_ax, (left, right))):
            sizes = list(x.chunks[ax])
            sizes[0] += lo
            sizes[-1] += hi
            merged[ax] = tuple(sizes)
        padded = padded.rechunk(merged)
        return conv2d(
            padded,
            kernel,
            bias_arr,
            strides=strides,
            padding=0,
            dilation_rate=dilation_rate,
            groups=groups,
            data_format=data_format,
            algorithm=algorithm,
            workspace_limit=workspace_limit,
            out_chunks=out_chunks,
        )
    if workspace_limit is not None:
        check_workspace_limit(workspace_limit, func=_FUNC)
    algorithms.choose(spec, algorithm, func=_FUNC)
    dtypes = [x_dtype, kernel.dtype] + ([] if bias_arr is None else [bias_arr.dtype])
    _, out_dtype = compute_dtype(*dtypes)
    if x.dtype != x_dtype:
        x = x.astype(x_dtype)  # integer images are computed as float32, as in conv2d

    first = spec.data_format == "channels_first"
    h_ax, w_ax, c_ax = (2, 3, 1) if first else (1, 2, 3)
    if len(x.chunks[c_ax]) > 1:
        x = x.rechunk({c_ax: -1})

    if out_chunks is None:
        out_bounds = [
            _out_bounds_from_input(x.chunks[ax], out_size=o, stride=s, pad_lo=pads[0])
            for ax, o, s, pads in zip(
                (h_ax, w_ax), (spec.oh, spec.ow), spec.strides, spec.pads, strict=True
            )
        ]
    else:
        pair = (
            out_chunks
            if isinstance(out_chunks, (tuple, list)) and len(out_chunks) == 2
            else (out_chunks, out_chunks)
        )
        out_bounds = [
            _out_bounds_given(v, out_size=o, axis=name)
            for v, o, name in zip(pair, (spec.oh, spec.ow), ("height", "width"), strict=True)
        ]
    rows = plan_axis(
        out_bounds[0],
        size=spec.h,
        k=spec.kh,
        stride=spec.strides[0],
        dilation=spec.dilation[0],
        pads=spec.pads[0],
    )
    cols = plan_axis(
        out_bounds[1],
        size=spec.w,
        k=spec.kw,
        stride=spec.strides[1],
        dilation=spec.dilation[1],
        pads=spec.pads[1],
    )
    options = {
        "strides": spec.strides,
        "dilation_rate": spec.dilation,
        "groups": spec.groups,
        "data_format": spec.data_format,
        "algorithm": algorithm,
        "workspace_limit": workspace_limit,
    }
    if algorithm not in ("auto", "measure"):  # a named one must apply to every block's shape
        _check_blocks(spec, kernel.shape, rows, cols, options)
    batch_chunks = x.chunks[0]

    def out_chunks_of(r: AxisBlock, c: AxisBlock) -> tuple[tuple[int, ...], ...]:
        chunks: list[tuple[int, ...]] = [batch_chunks, (), (), ()]
        chunks[h_ax], chunks[w_ax], chunks[c_ax] = (r.o1 - r.o0,), (c.o1 - c.o0,), (spec.c_out,)
        return tuple(chunks)

    band_list = []
    for r in rows:
        band = []
        for c in cols:
            chunks = out_chunks_of(r, c)
            if r.empty or c.empty:
                # Every window lies in the padding: conv2d gives exactly the bias there.
                shape = tuple(sum(ch) for ch in chunks)
                block = da.zeros(shape, chunks=chunks, dtype=out_dtype)
                if bias_arr is not None:
                    bshape = [1, 1, 1, 1]
                    bshape[c_ax] = spec.c_out
                    block = block + bias_arr.astype(out_dtype).reshape(bshape)
                band.append(block)
                continue
            index: list[slice] = [slice(None)] * 4
            index[h_ax], index[w_ax] = slice(r.a, r.b), slice(c.a, c.b)
            window = x[tuple(index)].rechunk({h_ax: -1, w_ax: -1})
            band.append(
                window.map_blocks(
                    _conv_block,
                    kernel,
                    bias_arr,
                    padding=((r.pad_lo, r.pad_hi), (c.pad_lo, c.pad_hi)),
                    chunks=chunks,
                    dtype=out_dtype,
                    meta=np.empty((0, 0, 0, 0), dtype=out_dtype),
                    **options,
                )
            )
        band_list.append(band[0] if len(band) == 1 else da.concatenate(band, axis=w_ax))
    return band_list[0] if len(band_list) == 1 else da.concatenate(band_list, axis=h_ax)


def local_client(
    n_workers: int | None = None,
    *,
    threads_per_worker: int = 1,
    set_as_default: bool = True,
    **cluster_options: Any,
) -> Any:
    """A ``dask.distributed`` client of a fresh LocalCluster with worker processes.

    While the client is open, ``.compute()`` on :func:`conv2d`'s result runs there. For any
    other cluster, ``distributed.Client(address)`` is all it takes: nothing in the graph is
    local to this process. ``set_as_default=False`` leaves the default scheduler alone (then
    use ``client.compute``). Other keywords go to LocalCluster (e.g. ``memory_limit``).
    Close both when done: ``cluster = client.cluster; client.close(); cluster.close()``.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - the dask extra is installed in CI
        raise ImportError(
            "a local cluster needs distributed: pip install 'patchconv[dask]'"
        ) from exc
    cluster = LocalCluster(
        n_workers=n_workers or max(1, (os.cpu_count() or 1) // threads_per_worker),
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=None,
        **cluster_options,
    )
    return Client(cluster, set_as_default=set_as_default)


# ---- streaming files in and out --------------------------------------------------------------


def _read_tiff_region(path: str, block_info: Any = None) -> np.ndarray:
    """The block of a TIFF's first series at ``block_info``'s location, read through tifffile's
    Zarr view (only the tiles or strips it covers are decoded)."""
    import tifffile
    import zarr

    where = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
    with tifffile.imread(path, aszarr=True) as store:
        return np.asarray(zarr.open_array(store, mode="r")[where])


def open_image(path: str | os.PathLike[str], *, chunks: int | None = None) -> Any:
    """A large image file as a lazy float32 Dask array ``(1, h, w, c)`` in [0, 1], as
    :func:`patchconv.images.load_image` reads it (integers scaled, floats clipped, alpha
    kept as the last channel: grey + alpha gives 2 channels, RGBA 4).

    TIFFs (tiled or striped; grey, white-is-zero, palette or RGB, read through tifffile's
    Zarr view a chunk at a time) and Zarr arrays (a ``.zarr`` directory) stream; any other
    format Pillow reads is loaded whole. CMYK, YCbCr and CIELab TIFFs are refused.
    ``chunks`` rechunks the spatial axes (default: the file's own tiles).
    """
    func = "open_image"
    if chunks is not None and (
        not isinstance(chunks, (int, np.integer)) or isinstance(chunks, bool) or chunks < 1
    ):
        raise PatchconvError(f"{func}: chunks must be an int >= 1 or None; got {chunks!r}")
    from patchconv.images import load_whole, tiff_colours, tiff_orientation, tiff_to_unit, upright

    da = _dask()
    p = Path(path)
    if not p.exists():
        raise PatchconvError(f"{func}: path must be an existing image file; got {os.fspath(p)!r}")
    suffix = p.suffix.lower()
    arr: Any
    orientation = 1  # a TIFF's tag; Pillow's formats come upright from load_image
    colours, lut = "plain", None  # how samples become colours (a TIFF's photometric tag)
    if suffix in (".tif", ".tiff"):
        import tifffile
        import zarr

        try:
            with tifffile.TiffFile(p) as tif:
                axes = tif.series[0].axes
                orientation = tiff_orientation(tif)
                colours, lut = tiff_colours(tif, func, os.fspath(p))
            with tifffile.imread(p, aszarr=True) as store:
                view = zarr.open_array(store, mode="r")
                shape, tiles, dtype = view.shape, view.chunks, view.dtype
        except PatchconvError:
            raise
        except Exception as exc:  # tifffile raises several types for unreadable files
            raise PatchconvError(f"{func}: cannot read {os.fspath(p)!r} as a TIFF: {exc}") from exc
        # Each task opens the file and reads its own tiles: the graph holds a path, not an
        # open file, so it pickles to the workers of any Dask cluster.
        arr = da.map_blocks(
            _read_tiff_region,
            str(p.resolve()),
            chunks=da.core.normalize_chunks(tiles, shape),
            dtype=dtype,
            meta=np.empty((0,) * len(shape), dtype=dtype),
        )
        if arr.ndim == 3 and axes not in ("YXS", "SYX"):
            raise PatchconvError(
                f"{func}: {os.fspath(p)!r} holds a stack of {shape[0]} images (axes {axes}); "
                "give one image, (h, w) or (h, w, c)"
            )
        if axes.startswith("S") and arr.ndim == 3:  # planar RGB: (c, h, w)
            arr = arr.transpose(1, 2, 0)
    elif is_zarr_path(p):
        import zarr

        try:
            arr = da.from_zarr(zarr.open_array(p, mode="r"))
        except Exception as exc:
            raise PatchconvError(
                f"{func}: cannot read {os.fspath(p)!r} as a Zarr array: {exc}"
            ) from exc
    else:
        arr = da.from_array(load_whole(p, func=func))
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise PatchconvError(
            f"{func}: the image must be 2-D (h, w) or 3-D (h, w, c); got shape {arr.shape} "
            f"from {os.fspath(p)!r}"
        )
    if arr.dtype.kind not in "uifb":  # complex samples lost their imaginary part
        raise PatchconvError(
            f"{func}: the image must hold integer, float or bool samples; got dtype "
            f"{arr.dtype} from {os.fspath(p)!r}"
        )
    arr = upright(arr, orientation)  # as load_image and viewers show it
    if chunks is not None:
        arr = arr.rechunk((chunks, chunks, -1))
    # As load_image: integers scaled, floats clipped, white-is-zero inverted, palette looked up.
    chunks_out = arr.chunks[:2] + (((3,),) if colours == "palette" else arr.chunks[2:])
    out = arr.map_blocks(
        tiff_to_unit,
        colours,
        lut,
        chunks=chunks_out,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )
    return out[None]


def _on_cluster() -> bool:
    """True if a dask.distributed client is the default scheduler in this process."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.default_client()
    except ValueError:
        return False
    return True


def _iter_blocks(arr: Any, batch: int) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Compute ``arr`` (h, w, c) a few blocks at a time, in row-major block order."""
    import dask

    r_bounds, c_bounds = _bounds(arr.chunks[0]), _bounds(arr.chunks[1])
    keys = [(i, j) for i in range(len(r_bounds) - 1) for j in range(len(c_bounds) - 1)]
    # Each call below optimises its own piece of one graph; on a distributed cluster the same
    # key then reaches the scheduler in two forms (dask/dask#9888: a KeyError, or a hang), so
    # there the graph goes unoptimised. Threads keep the fused graph (10-15% faster).
    optimize = not _on_cluster()
    for start in range(0, len(keys), batch):
        group = keys[start : start + batch]
        values = dask.compute(*[arr.blocks[i, j] for i, j in group], optimize_graph=optimize)
        for (i, j), value in zip(group, values, strict=True):
            yield (
                (slice(r_bounds[i], r_bounds[i + 1]), slice(c_bounds[j], c_bounds[j + 1])),
                value,
            )


def block_range(
    arr: Any,
    *,
    tile: int,
    progress: Callable[[int], None] | None = None,
    parallel: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel minimum and maximum of a lazy ``(h, w, c)`` array, computed block by block
    (one pass, a few blocks in memory): what "abs" and "normalise" scaling need up front."""
    func = "block_range"
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or tile < 1:
        raise PatchconvError(f"{func}: tile must be an int >= 1; got {tile!r}")
    if len(getattr(arr, "shape", ())) != 3:
        raise PatchconvError(
            f"{func}: arr must be a lazy (h, w, c) array; got shape {getattr(arr, 'shape', None)}"
        )
    arr = _dask().asarray(arr).rechunk((tile, tile, -1))
    low = np.full(arr.shape[2], np.inf)
    high = np.full(arr.shape[2], -np.inf)
    for _, value in _iter_blocks(arr, max(1, parallel)):
        low = np.minimum(low, value.min(axis=(0, 1)))
        high = np.maximum(high, value.max(axis=(0, 1)))
        if progress is not None:
            progress(1)
    return low, high


def write_blocks(
    arr: Any,
    path: str | os.PathLike[str],
    *,
    tile: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    dtype: Any = None,
    progress: Callable[[int], None] | None = None,
    parallel: int = 2,
) -> Path:
    """Compute a lazy ``(h, w, c)`` array block by block into a Zarr directory or a tiled TIFF.

    Blocks of ``tile x tile`` are computed ``parallel`` at a time (on whatever Dask scheduler
    is active), passed through ``transform`` (which maps values: it keeps each block's shape)
    and written; memory holds a few blocks, never the image. The file is written under a
    temporary name and renamed when complete, so a failure leaves nothing behind.
    ``progress(1)`` is called after each block is written.
    """
    func = "write_blocks"
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".zarr", ".tif", ".tiff"):
        raise PatchconvError(
            f"{func}: path must end in .zarr, .tif or .tiff; got {os.fspath(target)!r}"
        )
    arr = _dask().asarray(arr)  # a NumPy image too
    if arr.ndim != 3:
        raise PatchconvError(
            f"{func}: arr must be a lazy (h, w, c) array (one image: take [0] of conv2d's "
            f"(n, h, w, c)); got shape {arr.shape}"
        )
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool):
        raise TypeError(f"{func}: tile must be an int; got {tile!r}")
    if tile < 16 or (suffix != ".zarr" and tile % 16):
        raise PatchconvError(
            f"{func}: tile must be >= 16 (and a multiple of 16 for TIFF); got {tile}"
        )
    check_target(target, func=func)
    h, w, c = (int(v) for v in arr.shape)
    # Tiles no larger than the image (rounded up to 16 for TIFF): Zarr chunks and TIFF tiles
    # are written whole, so --chunks 100000 on a small image made a 100000^2 chunk in memory.
    tile = min(tile, max(h, w) if suffix == ".zarr" else -(-max(h, w) // 16) * 16)
    tile = max(tile, 16)
    arr = arr.rechunk((tile, tile, -1))
    out_dtype = np.dtype(dtype or arr.dtype)

    def blocks() -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
        for where, value in _iter_blocks(arr, max(1, parallel)):
            out = value if transform is None else np.asarray(transform(value))
            if out.shape != value.shape:  # else Zarr would broadcast it, TIFF fail mid-file
                raise PatchconvError(
                    f"{func}: transform must keep each block's shape (it maps values); a "
                    f"block of shape {value.shape} came back as {out.shape}"
                )
            if progress is not None:
                progress(1)
            yield where, out.astype(out_dtype, copy=False)

    tmp = target.with_name(f".{target.name}.partial")
    _remove(tmp)
    try:
        if suffix == ".zarr":
            import zarr

            z = zarr.open_array(
                tmp, mode="w", shape=(h, w, c), chunks=(tile, tile, c), dtype=out_dtype
            )
            for (rows, cols), value in blocks():
                z[rows, cols, :] = value
        else:
            import tifffile

            photometric = "rgb" if c == 3 and out_dtype.kind == "u" else "minisblack"
            tifffile.imwrite(
                tmp,
                (value if c > 1 else value[:, :, 0] for _, value in blocks()),
                shape=(h, w, c) if c > 1 else (h, w),
                dtype=out_dtype,
                tile=(tile, tile),
                photometric=photometric,
                planarconfig="contig" if c > 1 else None,
                bigtiff=h * w * c * out_dtype.itemsize > 2**31,
            )
        _remove(target)
        os.replace(tmp, target)
    finally:
        _remove(tmp)
    return target


def is_zarr_path(path: str | os.PathLike[str]) -> bool:
    """True if :func:`open_image` reads ``path`` as a Zarr array (a ``.zarr`` path or a
    folder), not as an image file."""
    p = Path(path)
    return p.suffix.lower() == ".zarr" or p.is_dir()


def check_target(path: str | os.PathLike[str], *, func: str = "check_target") -> None:
    """Refuse a path :func:`write_blocks` would replace that holds something else: a folder
    that is neither empty nor, for a ``.zarr`` path, a Zarr array (a Zarr group holds arrays
    of its own; a TIFF path is a file)."""
    target = Path(path)
    if not target.is_dir() or not any(target.iterdir()):
        return
    node = None
    if target.suffix.lower() == ".zarr":
        if (target / ".zarray").is_file():
            return
        try:
            node = json.loads((target / "zarr.json").read_text()).get("node_type")
        except (OSError, ValueError, AttributeError):
            pass
    if node != "array":
        raise PatchconvError(
            f"{func}: path is an existing folder that is not a Zarr array, which this would "
            f"replace; got {os.fspath(target)!r}"
        )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
