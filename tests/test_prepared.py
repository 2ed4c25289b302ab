"""patchconv.prepare: conv2d with the kernel prepared once, for inference."""

from __future__ import annotations

import numpy as np
import pytest

import patchconv
from conftest import assert_close
from patchconv.algorithms._runtime import get_numba

CASES = [
    ((2, 9, 8, 6), (3, 3, 6, 4), {"padding": "same"}),
    ((1, 12, 12, 8), (3, 3, 8, 8), {"strides": 2, "padding": "valid", "dilation_rate": 1}),
    ((2, 4, 10, 4), (2, 3, 2, 6), {"groups": 2, "padding": ((1, 0), (2, 1))}),
    ((1, 5, 10, 10), (3, 3, 5, 7), {"data_format": "channels_first", "padding": "same"}),
    ((1, 8, 8, 3), (3, 3, 3, 4), {"padding": "same", "padding_mode": "reflect"}),
]


@pytest.mark.parametrize(("x_shape", "k_shape", "options"), CASES)
def test_equals_conv2d(x_shape: tuple, k_shape: tuple, options: dict) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(k_shape).astype(np.float32)
    bias = rng.standard_normal(k_shape[3]).astype(np.float32)
    prepared = patchconv.prepare(kernel, x_shape, **options)
    expected = patchconv.conv2d(x, kernel, bias, **options)
    assert_close(prepared(x, bias), expected, np.float32)
    assert_close(prepared(x), patchconv.conv2d(x, kernel, **options), np.float32)
    assert_close(prepared(x.astype(np.float64), bias), expected, np.float32)  # mixed dtypes


@pytest.mark.parametrize(
    ("x_shape", "c_out", "dtype", "few_tiles"),
    [((1, 7, 7, 512), 512, np.float32, True), ((1, 14, 14, 256), 256, np.float32, False),
     ((1, 14, 14, 256), 256, np.float64, False)],
)  # fmt: skip
def test_deep_layers_keep_the_transformed_kernel(
    x_shape: tuple, c_out: int, dtype: type, few_tiles: bool
) -> None:
    """A deep layer keeps the transformed kernel of the chooser's Winograd form, or of F(2x2)
    where the chooser picks another algorithm or F(4x4) has too few tiles (4 on 7x7) for our
    products on a kept U."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal((3, 3, x_shape[3], c_out)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    prepared = patchconv.prepare(kernel, x_shape, padding="same")
    exact = patchconv.conv2d(
        x.astype(np.float64), kernel.astype(np.float64), bias.astype(np.float64), padding="same"
    )
    if get_numba() is not None:  # what conv2d's chooser takes, or F(2x2)
        picked = patchconv.explain_algorithm(
            x_shape, kernel.shape, padding="same", dtype=dtype
        ).algorithm
        kept = picked if picked.startswith("winograd") and not few_tiles else "winograd_f2"
        assert prepared.prepared == kept
    for _ in range(2):  # the kept U is read, never written
        assert_close(prepared(x, bias), exact, dtype)
    kernel[...] = 0  # the caller's array changes; the prepared copy does not
    assert_close(prepared(x, bias), exact, dtype)


def test_errors_name_the_parameter() -> None:
    kernel = np.ones((3, 3, 4, 2), np.float32)
    prepared = patchconv.prepare(kernel, (1, 5, 5, 4))
    with pytest.raises(
        patchconv.PatchconvError,
        match=r"PreparedConv: x must have the shape it was prepared for, \(1, 5, 5, 4\); got x "
        r"\(1, 6, 5, 4\)",
    ):
        prepared(np.ones((1, 6, 5, 4), np.float32))
    for bias in (np.ones(3, np.float32), np.ones(3)):  # named PreparedConv, not conv2d
        with pytest.raises(
            patchconv.PatchconvError,
            match=r"PreparedConv: bias must have shape \(2,\); got bias \(3,\)",
        ):
            prepared(np.ones((1, 5, 5, 4), np.float32), bias)
    with pytest.raises(patchconv.PatchconvError, match=r"prepare: strides must be >= 1; got 0"):
        patchconv.prepare(kernel, (1, 5, 5, 4), strides=0)
    with pytest.raises(TypeError, match=r"prepare: input_shape must be a tuple of ints"):
        patchconv.prepare(kernel, "1,5,5,4")  # type: ignore[arg-type]
    assert "prepared nothing" in repr(prepared)
    with pytest.raises(ValueError, match=r"read-only"):
        prepared.kernel[0, 0, 0, 0] = 2.0  # the kept transform is of these values
