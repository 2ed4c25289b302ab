"""Image I/O (Pillow, imported here only), the named filter bank, and ``patchconv apply``.

Images are float32 arrays ``(h, w, c)`` scaled to ``[0, 1]`` whatever their bit depth, so a
kernel means the same thing on an 8-bit PNG and a 16-bit TIFF.

A filter is one ordinary conv2d kernel ``(kh, kw, c_in, c_out)``. Per-channel filters (blur,
sharpen, Sobel...) filter each channel on its own: a depthwise kernel ``(k, k, 1, c)`` with
``groups = c``, so an RGB photo comes back as an RGB photo. Colour-mixing filters (luma edges,
colour opponents) read all three channels at once: kernels ``(k, k, 3, c_out)`` whose output
maps are single-channel pictures.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
import os
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchconv._config import check_memory
from patchconv._spec import PatchconvError
from patchconv.functional import conv2d

__all__ = [
    "FILTERS",
    "SCALINGS",
    "Filter",
    "Kernel",
    "apply_kernel",
    "contact_sheet",
    "convert_channels",
    "filter_kernel",
    "list_filters",
    "load_image",
    "load_kernel",
    "resolve_kernel",
    "run_apply",
    "sample_image",
    "save_image",
    "scale_output",
]


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - the images extra is installed in CI
        raise ImportError("patchconv images need Pillow: pip install 'patchconv[images]'") from exc
    return Image


_EXIF_ORIENTATION = 0x0112  # TIFF's Orientation tag (274) too


def upright(image: Any, orientation: int) -> Any:
    """An ``(h, w, c)`` NumPy or Dask array as viewers show it under an EXIF / TIFF
    orientation (1-8; others as 1), by views: flips and a transpose, no copy."""
    flip_rows, flip_cols, swap = {
        2: (False, True, False),  # mirrored left-right
        3: (True, True, False),  # rotated 180
        4: (True, False, False),  # mirrored top-bottom
        5: (False, False, True),  # transposed
        6: (True, False, True),  # shown rotated 90 clockwise
        7: (True, True, True),  # transversed
        8: (False, True, True),  # shown rotated 90 counter-clockwise
    }.get(orientation, (False, False, False))
    if not (flip_rows or flip_cols or swap):
        return image
    if swap:
        image = image.transpose(1, 0, 2)
        flip_rows, flip_cols = flip_cols, flip_rows
    return image[:: -1 if flip_rows else 1, :: -1 if flip_cols else 1]


def tiff_orientation(tif: Any) -> int:
    """The Orientation tag of a tifffile ``TiffFile``'s first page (1 where absent)."""
    tag = tif.pages[0].tags.get(_EXIF_ORIENTATION)
    return 1 if tag is None else int(tag.value)


def tiff_colours(tif: Any, func: str, name: str) -> tuple[str, np.ndarray | None]:
    """How a tifffile ``TiffFile``'s samples become colours: ("plain", None) for grey and RGB,
    ("white", None) for white-is-zero grey, ("palette", lut) for colour-map indices, lut the
    (entries, 3) float32 RGB table. Other colour spaces (CMYK, YCbCr, CIELab) are refused."""
    import tifffile

    page = tif.pages.first
    kind = tifffile.PHOTOMETRIC
    photometric = page.photometric
    if photometric in (kind.MINISBLACK, kind.RGB):
        return "plain", None
    if photometric == kind.MINISWHITE:
        return "white", None
    if photometric == kind.PALETTE and page.colormap is not None:
        cmap = np.asarray(page.colormap)  # (3, entries), 16-bit values
        # An 8-bit map written as value * 256 (Pillow does) reads back exactly.
        top = 65280.0 if np.all(cmap % 256 == 0) else 65535.0
        return "palette", np.ascontiguousarray(cmap.T.astype(np.float32) / np.float32(top))
    label = getattr(photometric, "name", photometric)
    raise PatchconvError(
        f"{func}: {name!r} holds {label} samples (photometric {int(photometric)}), which are "
        "read only as grey, white-is-zero, palette or RGB; convert it to RGB first"
    )


def tiff_to_unit(samples: np.ndarray, colours: str, lut: np.ndarray | None) -> np.ndarray:
    """A TIFF's (h, w, c) samples as float32 colours in [0, 1] (see :func:`tiff_colours`):
    integers scaled, floats clipped, white-is-zero grey inverted (not its alpha), palette
    indices looked up (an index past a short map takes its last entry)."""
    if colours == "palette":
        assert lut is not None
        index = np.clip(samples[..., 0].astype(np.intp), 0, len(lut) - 1)
        return lut[index]
    unit = np.clip(samples_to_unit(samples), 0.0, 1.0)
    if colours == "white":
        unit[..., 0] = 1.0 - unit[..., 0]
    return unit


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True if paths ``a`` and ``b`` name one file (links and relative paths resolved)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_inputs(
    outputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    inputs: Iterable[tuple[str, str | os.PathLike[str] | None]],
    *,
    advice: str = "choose another name",
) -> None:
    """A PatchconvError where an output (a label and its path) names an input's file: the
    picture or map would replace the image it was made from. An empty input label is left
    out of the message."""
    given = [(label, path) for label, path in inputs if path is not None]
    for out_label, out in outputs:
        for in_label, path in given:
            if out is not None and same_file(out, path):
                named = f"{in_label} " if in_label else ""
                raise PatchconvError(
                    f"{out_label} {os.fspath(out)!r} would overwrite the input "
                    f"{named}{os.fspath(path)!r}; {advice}"
                )


def _target_size(size: int | tuple[int, int], bands: int, func: str) -> tuple[int, int]:
    """``size`` as (height, width), checked: at least 1, and its image within memory."""
    h, w = (size, size) if isinstance(size, int) else size
    if min(h, w) < 1:
        raise PatchconvError(f"{func}: size must be >= 1; got {size!r}")
    # The resized image, its float32 copy and the clipped result.
    check_memory(
        int(h) * int(w) * bands * 12,
        func=func,
        what=f"an image resized to size {h} x {w}",
        hint="give a smaller size",
    )
    return int(h), int(w)


def load_image(
    path: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    alpha: bool = True,
) -> np.ndarray:
    """Read a PNG/JPEG/TIFF/... as float32 ``(h, w, c)`` in ``[0, 1]``.

    Parameters
    ----------
    size : int or (height, width), optional
        Resize to this (an int gives a square), with Lanczos resampling.
    channels : {1, 3, 4}, optional
        Convert to grayscale, RGB or RGBA; by default the file's own (palette images become RGB).
    alpha : bool
        False drops the file's alpha channel (RGBA -> RGB, grey+alpha -> grey) where
        ``channels`` does not ask for one.
    """
    Image = _pillow()
    func = "load_image"
    if not os.path.isfile(path):
        raise PatchconvError(
            f"{func}: path must be an existing image file; got {os.fspath(path)!r}"
        )
    if channels not in (None, 1, 3, 4):
        raise PatchconvError(f"{func}: channels must be 1, 3 or 4; got {channels!r}")
    tiff = os.fspath(path).lower().endswith((".tif", ".tiff"))
    if tiff and _deep_tiff(path):
        return _load_tiff(path, size, channels, alpha, None)
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # Pillow raises several types for unreadable files
        if tiff:
            return _load_tiff(path, size, channels, alpha, exc)
        raise PatchconvError(f"{func}: cannot read {os.fspath(path)!r} as an image: {exc}") from exc
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # a phone photo: upright, as viewers show it
        from PIL import ImageOps

        img = ImageOps.exif_transpose(img)
    # Grey deeper than 8 bits: Pillow's convert would clip it to 0..255, so it is scaled first
    # and its channels made below.
    deep_grey = img.mode in ("I;16", "I;16B", "I;16L", "I", "F")
    if channels is not None and not deep_grey:
        img = img.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
    elif img.mode == "1":  # bilevel: grey, as tifffile and open_image read it
        img = img.convert("L")
    elif img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif img.mode in ("LA", "La") and not alpha:
        img = img.convert("L")
    elif img.mode == "LA":
        img = img.convert("RGBA")
    if channels is None and not alpha and img.mode in ("RGBA", "RGBa", "PA"):
        img = img.convert("RGB")
    sixteen = img.mode in ("I;16", "I;16B", "I;16L")  # kept through a resize below
    if size is not None:
        h, w = _target_size(size, len(img.getbands()), func)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = img.convert("F")
        img = img.resize((w, h), Image.Resampling.LANCZOS)
    arr = np.asarray(img)
    if sixteen:  # a 16-bit file, even after the resize made it "F": its range is 0..65535
        scaled = arr.astype(np.float32) / 65535.0
    elif img.mode in ("I", "F"):
        scaled = arr.astype(np.float32)
        top = float(np.max(scaled)) if scaled.size else 1.0
        scaled = scaled / (65535.0 if top > 255.0 else 255.0)
    elif arr.dtype == np.bool_:
        scaled = arr.astype(np.float32)
    else:
        scaled = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if scaled.ndim == 2:
        scaled = scaled[:, :, None]
    scaled = np.clip(scaled, 0.0, 1.0)
    return convert_channels(scaled, channels) if deep_grey and channels is not None else scaled


def load_whole(path: str | os.PathLike[str], *, func: str = "load_whole") -> np.ndarray:
    """An image Pillow reads, as :func:`load_image` gives it with alpha kept, but grey + alpha
    as 2 channels (not RGBA), read whole after a check that it fits in memory: what
    :func:`patchconv.scale.open_image` does with formats it cannot stream."""
    try:
        Image = _pillow()
        with Image.open(path) as img:
            mode, need = img.mode, img.width * img.height * 4 * 4 * 2  # RGBA float32, twice
    except Exception:  # load_image below says what is wrong with the file
        mode, need = "", 0
    check_memory(need, func=func, what=f"{os.fspath(path)!r}, read whole")
    try:
        image = load_image(path)
    except PatchconvError as exc:
        raise PatchconvError(str(exc).replace("load_image:", f"{func}:", 1)) from exc
    return image[:, :, [0, 3]] if mode in ("LA", "La") else image


def samples_to_unit(arr: np.ndarray) -> np.ndarray:
    """Integer samples -> float32 in [0, 1], a signed type's range onto [0, 1] as a whole;
    floats unchanged. How TIFFs read here and by :func:`patchconv.scale.open_image` scale."""
    if arr.dtype.kind == "u":
        return arr.astype(np.float32) / np.float32(np.iinfo(arr.dtype).max)
    if arr.dtype.kind == "i":
        info = np.iinfo(arr.dtype)
        return (arr.astype(np.float64) - info.min).astype(np.float32) / np.float32(
            float(info.max) - float(info.min)
        )
    if arr.dtype.kind == "b":
        return arr.astype(np.float32)
    return arr.astype(np.float32, copy=False)


def _deep_tiff(path: str | os.PathLike[str]) -> bool:
    """True if tifffile is installed and the TIFF holds grey or RGB samples of more than 8 bits
    (16-bit, 32-bit, float) or signed, or white-is-zero or palette samples. Pillow reads 16-bit
    RGB as 8 bits, scales float grey by 1/255, signed bytes as unsigned, and neither inverts
    16-bit white-is-zero nor turns such images upright, so these go through tifffile, with the
    values open_image streams from the same file."""
    try:
        import tifffile
    except ImportError:
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            photometric = page.photometric
            dtype = tif.series[0].dtype
    except Exception:  # Pillow reads it, or says why it cannot
        return False
    kind = tifffile.PHOTOMETRIC
    if photometric in (kind.MINISWHITE, kind.PALETTE):
        return dtype.kind in "uif"
    plain = photometric in (kind.MINISBLACK, kind.RGB)
    return plain and (dtype.kind in "if" or (dtype.kind == "u" and dtype.itemsize > 1))


def _load_tiff(
    path: str | os.PathLike[str],
    size: int | tuple[int, int] | None,
    channels: int | None,
    alpha: bool,
    pillow_error: Exception | None,
) -> np.ndarray:
    """load_image for a TIFF through tifffile (the images extra): one Pillow reads wrong (see
    _deep_tiff) or not at all (float64, float RGB). Integers scale as
    :func:`patchconv.scale.open_image` scales them; floats are clipped to [0, 1]."""
    func = "load_image"
    name = os.fspath(path)
    try:
        import tifffile
    except ImportError:
        raise PatchconvError(
            f"{func}: cannot read {name!r} as an image: {pillow_error} (tifffile, in "
            "'patchconv[images]', reads more kinds of TIFF)"
        ) from pillow_error
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, arr = series.axes, series.asarray()
            orientation = tiff_orientation(tif)
            colours, lut = tiff_colours(tif, func, name)
    except PatchconvError:
        raise
    except Exception as exc:  # tifffile raises several types for unreadable files
        raise PatchconvError(f"{func}: cannot read {name!r} as a TIFF: {exc}") from exc
    samples = 1 if axes == "YX" else arr.shape[0] if axes == "SYX" else arr.shape[-1]
    if axes not in ("YX", "YXS", "SYX") or samples > 4:
        raise PatchconvError(
            f"{func}: {name!r} must hold one image, (h, w) or (h, w, c) with c <= 4; got "
            f"shape {series.shape} (axes {axes})"
        )
    arr = arr[:, :, None] if axes == "YX" else arr.transpose(1, 2, 0) if axes == "SYX" else arr
    image = tiff_to_unit(upright(arr, orientation), colours, lut)
    if image.shape[2] == 2:  # grey + alpha: kept for --channels 4, as Pillow's LA to RGBA
        keep = channels == 4 or (alpha and channels is None)
        image = image[:, :, [0, 0, 0, 1]] if keep else image[:, :, :1]
    if channels is not None:
        image = convert_channels(image, channels)
    elif not alpha and image.shape[2] == 4:
        image = image[:, :, :3]
    if size is not None:
        h, w = _target_size(size, image.shape[2], func)
        Image = _pillow()
        planes = [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(image[:, :, i]), mode="F").resize(
                    (w, h), Image.Resampling.LANCZOS
                )
            )
            for i in range(image.shape[2])
        ]
        image = np.clip(np.stack(planes, axis=-1), 0.0, 1.0)
    return np.ascontiguousarray(image, dtype=np.float32)


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write float ``(h, w)`` or ``(h, w, c)`` in ``[0, 1]`` (clipped) as an 8-bit image."""
    Image = _pillow()
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise PatchconvError(
            f"save_image: image must be (h, w), (h, w, 1), (h, w, 3) or (h, w, 4); got {arr.shape}"
        )
    data = np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(data).save(path)


# ---- the named filter bank -------------------------------------------------------------------

SCALINGS = ("clip", "abs", "normalise", "none")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the weights Pillow's "L" mode uses
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SCHARR_X = np.array([[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]])
_LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_BINOMIAL5 = np.outer([1.0, 4.0, 6.0, 4.0, 1.0], [1.0, 4.0, 6.0, 4.0, 1.0]) / 256.0


def _delta(k: int) -> np.ndarray:
    d = np.zeros((k, k))
    d[k // 2, k // 2] = 1.0
    return d


def _mix(weights: np.ndarray, planes: Sequence[np.ndarray]) -> np.ndarray:
    """A colour-mixing kernel ``(k, k, 3, c_out)``: output j = sum_c weights[c, j] * planes[j]."""
    w = np.asarray(weights, dtype=np.float64).reshape(3, len(planes))
    return np.stack([w[:, j][None, None, :] * p[:, :, None] for j, p in enumerate(planes)], -1)


@dataclass(frozen=True)
class Filter:
    """A named kernel. ``plane`` ``(k, k)`` is applied to every channel on its own; ``mixing``
    ``(k, k, 3, c_out)`` reads the three RGB channels at once."""

    name: str
    description: str
    scaling: str
    plane: np.ndarray | None = None
    mixing: np.ndarray | None = None
    bias: np.ndarray | None = None
    map_names: tuple[str, ...] = field(default=())


FILTERS: dict[str, Filter] = {
    f.name: f
    for f in [
        Filter("identity", "the input itself (3x3 delta)", "clip", plane=_delta(3)),
        Filter("box_blur", "5x5 mean", "clip", plane=np.full((5, 5), 1 / 25)),
        Filter("gaussian_blur", "5x5 binomial, sigma ~ 1", "clip", plane=_BINOMIAL5),
        Filter(
            "sharpen",
            "centre 5, 4-neighbours -1",
            "clip",
            plane=np.array([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]]),
        ),
        Filter(
            "unsharp",
            "5x5 unsharp mask: 2*delta - gaussian",
            "clip",
            plane=2 * _delta(5) - _BINOMIAL5,
        ),
        Filter(
            "emboss",
            "3x3 emboss, light from the top left",
            "clip",
            plane=np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]]),
        ),
        Filter("sobel_x", "horizontal gradient (vertical edges)", "abs", plane=_SOBEL_X),
        Filter("sobel_y", "vertical gradient (horizontal edges)", "abs", plane=_SOBEL_X.T),
        Filter("scharr_x", "Scharr horizontal gradient", "abs", plane=_SCHARR_X),
        Filter("scharr_y", "Scharr vertical gradient", "abs", plane=_SCHARR_X.T),
        Filter("laplacian", "4-neighbour Laplacian", "abs", plane=_LAPLACIAN),
        Filter(
            "grayscale",
            "1x1x3x1: BT.601 luma",
            "clip",
            mixing=_mix(_LUMA, [np.ones((1, 1))]),
            map_names=("luma",),
        ),
        Filter(
            "luma_edges",
            "3x3x3x2: Sobel x and y of the luma, all three channels at once",
            "abs",
            mixing=_mix(np.stack([_LUMA, _LUMA], 1), [_SOBEL_X, _SOBEL_X.T]),
            map_names=("dx", "dy"),
        ),
        Filter(
            "luma_laplacian",
            "3x3x3x1: Laplacian of the luma",
            "abs",
            mixing=_mix(_LUMA, [_LAPLACIAN]),
            map_names=("laplacian",),
        ),
        Filter(
            "opponent",
            "1x1x3x2: red - green and blue - yellow colour opponents",
            "normalise",
            mixing=_mix(np.array([[1.0, -0.5], [-1.0, -0.5], [0.0, 1.0]]), [np.ones((1, 1))] * 2),
            map_names=("red_green", "blue_yellow"),
        ),
    ]
}
# What `patchconv apply` runs when no filter is named: one of each kind.
DEFAULT_FILTERS = ("gaussian_blur", "sharpen", "sobel_x", "sobel_y", "laplacian", "luma_edges")


@dataclass(frozen=True)
class Kernel:
    """A conv2d kernel ready to run: HWIO ``kernel``, ``bias``, ``groups``; ``colour`` means the
    output channels are the input's colour channels (one picture), else separate maps."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray | None
    groups: int
    colour: bool
    scaling: str
    map_names: tuple[str, ...] = ()

    @property
    def c_in(self) -> int:
        return int(self.kernel.shape[2]) * self.groups


def _unknown_filter(name: str) -> PatchconvError:
    close = difflib.get_close_matches(name, FILTERS, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return PatchconvError(
        f"filter_kernel: name must be one of {', '.join(FILTERS)}; got {name!r}{hint}"
    )


def filter_kernel(name: str, c_in: int) -> Kernel:
    """The named filter as a kernel for a ``c_in``-channel image.

    Per-channel filters become a depthwise kernel ``(k, k, 1, c_in)`` with ``groups = c_in``;
    colour-mixing filters need ``c_in == 3`` and are ``(k, k, 3, c_out)``.

    >>> k = filter_kernel("sobel_x", 3)
    >>> k.kernel.shape, k.groups
    ((3, 3, 1, 3), 3)
    >>> filter_kernel("luma_edges", 3).kernel.shape
    (3, 3, 3, 2)
    """
    if name not in FILTERS:
        raise _unknown_filter(name)
    f = FILTERS[name]
    if f.plane is not None:
        kernel = np.repeat(f.plane[:, :, None, None], c_in, axis=3).astype(np.float32)
        return Kernel(name, kernel, None, c_in, True, f.scaling)
    assert f.mixing is not None
    if c_in != 3:
        raise PatchconvError(
            f"filter_kernel: filter {name!r} mixes the three RGB channels, so c_in must be 3; "
            f"got {c_in}"
        )
    return Kernel(name, f.mixing.astype(np.float32), f.bias, 1, False, f.scaling, f.map_names)


def list_filters() -> str:
    """The bank as a text table: name, kernel shape for RGB, default scaling, description."""
    lines = [f"{'name':<16}{'RGB kernel':<16}{'scaling':<11}description"]
    for f in FILTERS.values():
        k = filter_kernel(f.name, 3)
        shape = "x".join(str(v) for v in k.kernel.shape)
        kind = f"{shape}{' g3' if k.groups > 1 else ''}"
        lines.append(f"{f.name:<16}{kind:<16}{f.scaling:<11}{f.description}")
    lines.append("g3: depthwise (groups = channels), each channel filtered on its own")
    return "\n".join(lines) + "\n"


def load_kernel(path: str | os.PathLike[str]) -> Kernel:
    """A kernel from ``.npy`` or ``.npz`` (keys "kernel" and optional "bias", what
    ``patchconv train --save`` writes for its first conv layer). Never unpickles.

    A 2-D ``(k, k)`` kernel is applied to every channel on its own; 3-D ``(kh, kw, c_in)`` is one
    output map; 4-D is Keras' ``(kh, kw, c_in, c_out)``.
    """
    func = "load_kernel"
    p = Path(path)
    if not p.is_file():
        raise PatchconvError(f"{func}: path must be an existing .npy or .npz file; got {str(p)!r}")
    bias = None
    try:
        loaded = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if "Object arrays" in str(exc):
            raise PatchconvError(
                f"{func}: {str(p)!r} holds an object array, which is never loaded (it would "
                "need pickle)"
            ) from exc
        # NumPy's message for a text file suggests allow_pickle: say what the file is not.
        raise PatchconvError(
            f"{func}: {str(p)!r} is not a .npy or .npz array file ({type(exc).__name__}; "
            "pickled objects are never loaded)"
        ) from exc
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "kernel" not in loaded.files:
                raise PatchconvError(
                    f"{func}: {str(p)!r} must hold an array named 'kernel' (and optionally "
                    f"'bias'); got {sorted(loaded.files)}"
                )
            try:
                kernel = np.asarray(loaded["kernel"])
                if "bias" in loaded.files:
                    bias = np.asarray(loaded["bias"])
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise PatchconvError(
                    f"{func}: {str(p)!r} holds an array we cannot read ({type(exc).__name__}; "
                    "pickled objects are never loaded)"
                ) from exc
    else:
        kernel = np.asarray(loaded)
    if kernel.dtype.kind not in "fiub" or kernel.ndim not in (2, 3, 4) or 0 in kernel.shape:
        raise PatchconvError(
            f"{func}: kernel must be a real (k, k), (kh, kw, c_in) or (kh, kw, c_in, c_out) "
            f"array; got {kernel.dtype} {kernel.shape} from {str(p)!r}"
        )
    if bias is not None and bias.dtype.kind not in "fiub":  # bool as conv2d and explain take it
        raise PatchconvError(
            f"{func}: bias must hold real numbers; got dtype {bias.dtype} from {str(p)!r}"
        )
    for label, arr in (("kernel", kernel), ("bias", bias)):
        if arr is not None and not np.isfinite(arr).all():
            raise PatchconvError(f"{func}: {label} in {str(p)!r} holds NaN or Inf values")
    if bias is not None and bias.shape != (kernel.shape[-1] if kernel.ndim == 4 else 1,):
        raise PatchconvError(
            f"{func}: bias must have shape ({kernel.shape[-1] if kernel.ndim == 4 else 1},) to "
            f"match the kernel {kernel.shape}; got {bias.shape} from {str(p)!r}"
        )
    kernel = kernel.astype(np.float32)
    bias = None if bias is None else bias.astype(np.float32)
    if kernel.ndim == 2:
        # Like the named bank: each channel on its own; groups is set for the image in use.
        return Kernel(p.stem, kernel[:, :, None, None], bias, 0, True, "normalise")
    if kernel.ndim == 3:
        kernel = kernel[:, :, :, None]
    return Kernel(p.stem, kernel, bias, 1, False, "normalise")


def _for_channels(k: Kernel, c: int) -> Kernel:
    """Resolve a per-channel file kernel (groups 0 = "as many as the image has")."""
    if k.groups != 0:
        return k
    kernel = np.repeat(k.kernel, c, axis=3)
    bias = None if k.bias is None else np.repeat(k.bias, c)
    return Kernel(k.name, kernel, bias, c, True, k.scaling)


def apply_kernel(
    image: np.ndarray,
    k: Kernel,
    *,
    strides: Any = 1,
    padding: Any = "same",
    dilation_rate: Any = 1,
) -> np.ndarray:
    """conv2d of one ``(h, w, c)`` image with ``k``: the raw ``(oh, ow, c_out)`` float32 maps."""
    k = _for_channels(k, image.shape[2])
    return conv2d(
        image[None],
        k.kernel,
        k.bias,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=k.groups,
    )[0]


def scale_output(
    maps: np.ndarray,
    mode: str,
    *,
    joint: bool,
    low: np.ndarray | None = None,
    high: np.ndarray | None = None,
) -> np.ndarray:
    """Raw maps ``(h, w, c)`` -> values in [0, 1] for a picture.

    "clip": clip to [0, 1] (blurs, sharpening: the input's own range). "abs": ``|y| / max|y|``,
    for signed edge maps. "normalise": ``(y - min) / (max - min)``. "none": unchanged.
    Minima and maxima are per channel, or over all channels when ``joint`` (a colour picture
    keeps its balance); ``low``/``high`` pass precomputed per-channel ones (streaming).
    """
    if mode not in SCALINGS:
        raise PatchconvError(f"scale_output: mode must be one of {SCALINGS}; got {mode!r}")
    if mode == "none":
        return maps
    if mode == "clip":
        return np.clip(maps, 0.0, 1.0)
    lo = np.min(maps, axis=(0, 1)) if low is None else np.asarray(low)
    hi = np.max(maps, axis=(0, 1)) if high is None else np.asarray(high)
    if joint:
        lo, hi = np.full_like(lo, lo.min()), np.full_like(hi, hi.max())
    if mode == "abs":
        top = np.maximum(np.abs(lo), np.abs(hi))
        out = np.abs(maps) / np.where(top > 0, top, 1.0)
    else:
        span = hi - lo
        out = (maps - lo) / np.where(span > 0, span, 1.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---- sample image, contact sheet, the apply command ------------------------------------------


def _synthetic_image(size: int = 256) -> np.ndarray:
    """A picture with edges, gradients and colours, for when no sample file is available."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    img = np.stack([xx, yy, 1.0 - xx], -1) * 0.6
    for cy, cx, r, colour in [
        (0.3, 0.3, 0.18, (1.0, 0.2, 0.2)),
        (0.65, 0.6, 0.25, (0.2, 0.8, 0.3)),
        (0.25, 0.75, 0.12, (0.9, 0.9, 0.1)),
    ]:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    img[int(0.8 * size) : int(0.9 * size), int(0.1 * size) : int(0.5 * size)] = 1.0
    return img.astype(np.float32)


def convert_channels(image: Any, channels: int) -> Any:
    """(h, w, c) -> (h, w, channels) for c and channels in {1, 3, 4}: BT.601 luma for grey,
    grey repeated for RGB, alpha dropped or set opaque. Works on NumPy and Dask arrays alike."""
    c = int(image.shape[-1])
    if channels not in (1, 3, 4) or c not in (1, 3, 4):
        raise PatchconvError(
            f"convert_channels: channels must be 1, 3 or 4 (and so must the image's); got "
            f"{channels} for an image with {c}"
        )
    if c == channels:
        return image
    rgb = image[..., [0, 0, 0]] if c == 1 else image[..., :3]
    if channels == 1:
        return (rgb * _LUMA.astype(np.float32)).sum(axis=-1, keepdims=True)
    if channels == 3:
        return rgb
    # RGB plus an opaque alpha channel.
    return rgb[..., [0, 1, 2, 2]] * np.array([1, 1, 1, 0], np.float32) + np.array(
        [0, 0, 0, 1], np.float32
    )


def sample_image(
    *, size: int | tuple[int, int] | None = None, channels: int | None = None
) -> tuple[str, np.ndarray]:
    """The picture ``patchconv apply`` uses with no IMAGE: matplotlib's bundled photo of Grace
    Hopper (512x600 RGB) when matplotlib is installed, else a generated 256x256 test card.
    Returns (label, image) with ``size`` and ``channels`` as in :func:`load_image`."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if path.is_file():
            return str(path), load_image(path, size=size, channels=channels)
    image = _synthetic_image()
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        pil = _pillow().fromarray(_to_rgb8(image)).resize((int(w), int(h)))
        image = np.asarray(pil, dtype=np.float32) / 255.0
    return "synthetic.png", image if channels is None else convert_channels(image, channels)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    arr = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0.0, 1.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:  # alpha over a white background
        arr = arr[:, :, :3] * arr[:, :, 3:] + (1.0 - arr[:, :, 3:])
    elif arr.shape[2] != 3:
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return np.round(arr * 255.0).astype(np.uint8)


def contact_sheet(
    items: Sequence[tuple[str, np.ndarray]], *, tile: int = 240, columns: int = 4
) -> np.ndarray:
    """Labelled thumbnails side by side: ``items`` of (label, ``(h, w)`` or ``(h, w, c)`` image
    in [0, 1]), returned as one uint8 ``(H, W, 3)`` picture."""
    Image = _pillow()
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=13)
    label_h, gap = 34, 8
    cols = max(1, min(columns, len(items)))
    rows = -(-len(items) // cols)
    sheet = Image.new(
        "RGB", (cols * (tile + gap) + gap, rows * (tile + label_h + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(items):
        thumb = Image.fromarray(_to_rgb8(image))
        scale = min(tile / thumb.width, tile / thumb.height)
        size = (max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale)))
        thumb = thumb.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.NEAREST)
        x0 = gap + (i % cols) * (tile + gap)
        y0 = gap + (i // cols) * (tile + label_h + gap)
        for line, text in enumerate(label.split("\n")[:2]):
            draw.text((x0, y0 + line * 16), text, fill="black", font=font)
        sheet.paste(thumb, (x0 + (tile - size[0]) // 2, y0 + label_h))
    return np.asarray(sheet)


def _pictures(k: Kernel, raw: np.ndarray, mode: str) -> list[tuple[str, np.ndarray]]:
    if k.colour and raw.shape[2] in (1, 3, 4):
        return [("", scale_output(raw, mode, joint=True))]
    scaled = scale_output(raw, mode, joint=False)
    names = k.map_names or tuple(f"map{j}" for j in range(raw.shape[2]))
    return [(f"_{name}", scaled[:, :, j]) for j, name in enumerate(names)]


def _write_atomic(files: list[tuple[Path, np.ndarray]]) -> None:
    """Write every file under a temporary name, then rename them all; nothing partial stays."""
    tag = uuid.uuid4().hex[:8]
    temps: list[tuple[Path, Path]] = []
    try:
        for path, image in files:
            tmp = path.with_name(f".{path.stem}.{tag}.partial{path.suffix}")
            temps.append((tmp, path))
            _pillow().fromarray(image if image.dtype == np.uint8 else _to_gray_or_rgb8(image)).save(
                tmp, format="PNG"
            )
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if tmp.exists():
                tmp.unlink()


def _to_gray_or_rgb8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).astype(np.uint8)


def resolve_kernel(k: Kernel | str, c_in: int, *, label: str = "the image") -> Kernel:
    """A filter name or a loaded kernel, made ready for a ``c_in``-channel image (checked)."""
    if isinstance(k, str):
        return filter_kernel(k, c_in)
    k = _for_channels(k, c_in)
    if k.c_in != c_in:
        raise PatchconvError(
            f"apply: kernel {k.name!r} reads {k.c_in} input channels but {label!r} has {c_in}; "
            f"got kernel {k.kernel.shape} (--channels 1, 3 or 4 converts the image)"
        )
    return k


def run_apply(
    images: Sequence[tuple[str, np.ndarray]],
    kernels: Sequence[Kernel | str],
    out_dir: str | os.PathLike[str],
    *,
    strides: Any = 1,
    padding: Any = "same",
    dilation_rate: Any = 1,
    scaling: str | None = None,
    sheet: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Apply every kernel (a :class:`Kernel` or a filter name) to every ``(label, image)`` and
    write the PNGs and one contact sheet per image into ``out_dir``.

    Every check runs before the first convolution and every convolution before the first file
    is written; files go under temporary names and are renamed together, so an error leaves no
    partial output. Returns the paths written.
    """
    from patchconv.functional import conv_output_shape

    func = "apply"
    if scaling is not None and scaling not in SCALINGS:
        raise PatchconvError(f"{func}: scaling must be one of {SCALINGS}; got {scaling!r}")
    plans: list[tuple[str, np.ndarray, list[Kernel]]] = []
    kept = largest = 0  # bytes: every picture (uint8) until the end, one raw output at a time
    for label, image in images:
        resolved = [resolve_kernel(k, image.shape[2], label=label) for k in kernels]
        for k in resolved:
            values = math.prod(
                conv_output_shape(
                    (1, *image.shape),
                    k.kernel.shape,
                    strides=strides,
                    padding=padding,
                    dilation_rate=dilation_rate,
                    groups=k.groups,
                )
            )
            kept += values
            largest = max(largest, 12 * values)  # float32 output, scaled, clipped
        plans.append((label, image, resolved))
    check_memory(
        sum(image.nbytes for _, image in images) + kept + largest,
        func=func,
        what=f"{len(plans)} image(s) through {len(kernels)} filter(s), every map kept until "
        "all are written,",
        hint="give a smaller --size, or stream a large image with --chunks",
    )
    out = Path(out_dir)
    files: list[tuple[Path, np.ndarray]] = []
    used: set[str] = set()
    for label, image, resolved in plans:
        stem = Path(label).stem or "image"
        while stem in used:
            stem += "_"
        used.add(stem)
        h, w, c = image.shape
        sheet_items: list[tuple[str, np.ndarray]] = [
            (f"input {Path(label).name}\n{h}x{w}x{c}", image)
        ]
        for k in resolved:
            raw = apply_kernel(
                image, k, strides=strides, padding=padding, dilation_rate=dilation_rate
            )
            mode = scaling or k.scaling
            for suffix, picture in _pictures(k, raw, mode):
                files.append((out / f"{stem}_{k.name}{suffix}.png", picture))
                shape = "x".join(str(v) for v in picture.shape)
                sheet_items.append((f"{k.name}{suffix}\n{shape}, {mode}", picture))
            if progress is not None:
                progress(1)
        if sheet:
            files.append((out / f"{stem}_sheet.png", contact_sheet(sheet_items)))
    refuse_overwriting_inputs(  # an input named like an output (a_sobel_x.png) was replaced
        ((f"{func}: the output", path) for path, _ in files),
        (("", label) for label, _, _ in plans if os.path.isfile(label)),
        advice="choose another --out",
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PatchconvError(
            f"{func}: cannot make the output folder {os.fspath(out_dir)!r} ({exc.strerror})"
        ) from exc
    _write_atomic(files)
    return [path for path, _ in files]
