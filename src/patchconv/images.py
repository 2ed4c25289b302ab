"""Image I/O (Pillow, imported here only) and, later, the named filter bank.

Images are float32 arrays ``(h, w, c)`` scaled to ``[0, 1]`` whatever their bit depth, so a
kernel means the same thing on an 8-bit PNG and a 16-bit TIFF.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError

__all__ = ["load_image", "save_image"]


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - the images extra is installed in CI
        raise ImportError("patchconv images need Pillow: pip install 'patchconv[images]'") from exc
    return Image


def load_image(
    path: str | os.PathLike[str],
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
) -> np.ndarray:
    """Read a PNG/JPEG/TIFF/... as float32 ``(h, w, c)`` in ``[0, 1]``.

    Parameters
    ----------
    size : int or (height, width), optional
        Resize to this (an int gives a square), with Lanczos resampling.
    channels : {1, 3, 4}, optional
        Convert to grayscale, RGB or RGBA; by default the file's own (palette images become RGB).
    """
    Image = _pillow()
    func = "load_image"
    if not os.path.isfile(path):
        raise PatchconvError(
            f"{func}: path must be an existing image file; got {os.fspath(path)!r}"
        )
    if channels not in (None, 1, 3, 4):
        raise PatchconvError(f"{func}: channels must be 1, 3 or 4; got {channels!r}")
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # Pillow raises several types for unreadable files
        raise PatchconvError(f"{func}: cannot read {os.fspath(path)!r} as an image: {exc}") from exc
    if channels is not None:
        img = img.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
    elif img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        img = img.convert("RGB")
    elif img.mode == "LA":
        img = img.convert("RGBA")
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if min(h, w) < 1:
            raise PatchconvError(f"{func}: size must be >= 1; got {size!r}")
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            img = img.convert("F")
        img = img.resize((int(w), int(h)), Image.Resampling.LANCZOS)
    arr = np.asarray(img)
    if img.mode in ("I;16", "I;16B", "I;16L"):
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
    return np.clip(scaled, 0.0, 1.0)


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
