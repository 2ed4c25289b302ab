"""Small data sets for training demos: scikit-learn's bundled digits and a procedural colour task.

scikit-learn is imported inside :func:`load_digits` only; the colour task needs nothing but NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from patchconv._spec import PatchconvError

__all__ = ["COLOR_CLASSES", "Split", "grayscale", "load_digits", "make_colors"]

#: The colour task's classes: label = 3 * shape + hue.
COLOR_CLASSES = (
    "red square",
    "green square",
    "blue square",
    "red cross",
    "green cross",
    "blue cross",
)


class Split(NamedTuple):
    """A train/test split: images NHWC float32 in [0, 1], integer labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


def load_digits(*, seed: int = 0, test_size: float = 0.2) -> Split:
    """scikit-learn's 1797 8x8 digits (bundled, no download) as ``(n, 8, 8, 1)`` in [0, 1], split
    80/20 (stratified, reproducible from ``seed``)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    return Split(x_train, y_train, x_test, y_test, tuple(str(d) for d in range(10)))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all in [0, 1]; returns ``(..., 3)``."""
    sector = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ]
    )  # (6, ..., 3)
    return np.take_along_axis(table, sector[None, ..., None], axis=0)[0]


def make_colors(n: int, *, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB images ``(n, size, size, 3)`` of one coloured shape on dim noise, and labels.

    Six classes (:data:`COLOR_CLASSES`): a filled square or a cross, red, green or blue. Hue is
    jittered by +-18 degrees, saturation drawn from [0.6, 1] and brightness from [0.5, 1], so
    the average of the three channels says nothing about the hue: a colour-blind network (one
    fed :func:`grayscale` images) can tell the shape but only guess the colour.
    Position and size vary too.
    """
    if not isinstance(n, int) or n < 1:
        raise PatchconvError(f"make_colors: n must be an int >= 1; got {n!r}")
    if not isinstance(size, int) or size < 8:
        raise PatchconvError(f"make_colors: size must be an int >= 8; got {size!r}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(COLOR_CLASSES), n)
    shape, hue_class = labels // 3, labels % 3
    x = rng.uniform(0.0, 0.2, (n, size, size, 3))  # dim, colourful background noise
    hue = (hue_class / 3 + rng.uniform(-0.05, 0.05, n)) % 1.0
    rgb = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0, n), rng.uniform(0.5, 1.0, n))  # (n, 3)
    half = rng.integers(3, size // 3 + 1, n)  # half the side (squares) or arm length (crosses)
    cy = rng.integers(half, size - half)
    cx = rng.integers(half, size - half)
    yy, xx = np.mgrid[:size, :size]
    dy = np.abs(yy[None] - cy[:, None, None])  # (n, size, size)
    dx = np.abs(xx[None] - cx[:, None, None])
    h = half[:, None, None]
    square = (dy <= h - 1) & (dx <= h - 1)
    cross = ((dy == 0) & (dx <= h)) | ((dx == 0) & (dy <= h))
    mask = np.where((shape == 0)[:, None, None], square, cross)  # (n, size, size)
    x = np.where(mask[..., None], rgb[:, None, None, :], x)
    return x.astype(np.float32), labels.astype(np.int64)


def grayscale(x: np.ndarray) -> np.ndarray:
    """The channel mean copied into every channel: the same images, colour removed."""
    return np.repeat(x.mean(axis=-1, keepdims=True), x.shape[-1], axis=-1).astype(x.dtype)
