"""conv2d against the loop reference and against properties every convolution has."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from reference import conv2d_reference
from strategies import Case, conv_cases


@given(conv_cases(dtypes=(np.float16, np.float32, np.float64)))
def test_matches_reference(case: Case) -> None:
    out = patchconv.conv2d(case.x, case.kernel, case.bias, **case.options)
    expected = conv2d_reference(case.x, case.kernel, case.bias, **case.options)
    assert out.dtype == case.x.dtype
    assert out.shape == expected.shape
    assert_close(out, expected, case.x.dtype)


@given(conv_cases(), st.integers(1, 4000))
def test_any_workspace_limit_gives_the_same_result(case: Case, limit: int) -> None:
    """Tiling (whole images, row runs, column runs, single positions) never changes a value."""
    whole = patchconv.conv2d(case.x, case.kernel, case.bias, **case.options)
    tiled = patchconv.conv2d(case.x, case.kernel, case.bias, workspace_limit=limit, **case.options)
    # BLAS may sum a product in another order for another tile shape: equal to rounding.
    assert_close(tiled, whole, case.x.dtype)


@given(conv_cases(dtypes=(np.float64,), bias=False), st.floats(-3, 3), st.floats(-3, 3))
def test_linear_in_x(case: Case, a: float, b: float) -> None:
    y = np.random.default_rng(0).standard_normal(case.x.shape)
    conv = lambda v: patchconv.conv2d(v, case.kernel, **case.options)  # noqa: E731
    assert_close(conv(a * case.x + b * y), a * conv(case.x) + b * conv(y), np.float64)


@given(conv_cases(dtypes=(np.float64,), bias=False))
def test_adjoint_of_im2col(case: Case) -> None:
    """<im2col(x), c> == <x, col2im(c)>: col2im is exactly im2col's transpose."""
    opts = dict(case.options)
    size = case.kernel.shape[:2]
    cols = patchconv.im2col(case.x, size, **opts)
    c = np.random.default_rng(1).standard_normal(cols.shape)
    back = patchconv.col2im(c, case.x.shape, size, **opts)
    assert back.shape == case.x.shape
    # A dot product can nearly cancel: judge it against the size of its terms (Cauchy-Schwarz).
    size = np.linalg.norm(cols) * np.linalg.norm(c)
    np.testing.assert_allclose(
        np.vdot(cols, c), np.vdot(case.x, back), rtol=1e-12, atol=1e-13 * size
    )


@given(conv_cases(dtypes=(np.float64,), bias=False))
def test_adjoint_of_conv(case: Case) -> None:
    """<conv(x), g> == <x, grad_x> and <conv(x), g> == <kernel, grad_kernel>."""
    out = patchconv.conv2d(case.x, case.kernel, **case.options)
    g = np.random.default_rng(2).standard_normal(out.shape)
    grads = patchconv.conv2d_backward(g, case.x, case.kernel, **case.options)
    size = np.linalg.norm(out) * np.linalg.norm(g)
    np.testing.assert_allclose(
        np.vdot(out, g), np.vdot(case.x, grads.grad_x), rtol=1e-10, atol=1e-12 * size
    )
    np.testing.assert_allclose(
        np.vdot(out, g), np.vdot(case.kernel, grads.grad_kernel), rtol=1e-10, atol=1e-12 * size
    )
    np.testing.assert_allclose(
        grads.grad_bias,
        g.sum(axis=(0, 2, 3) if case.options["data_format"] == "channels_first" else (0, 1, 2)),
        rtol=1e-12,
    )


@given(st.integers(1, 3), st.integers(3, 9), st.integers(3, 9), st.integers(1, 5))
def test_identity_1x1_kernel(n: int, h: int, w: int, c: int) -> None:
    x = np.random.default_rng(3).standard_normal((n, h, w, c))
    np.testing.assert_array_equal(patchconv.conv2d(x, np.eye(c).reshape(1, 1, c, c)), x)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_delta_image_reveals_the_flipped_kernel(kh: int, kw: int, c_in: int, c_out: int) -> None:
    """A cross-correlation of a single 1 shows the kernel rotated by 180 degrees."""
    kernel = np.random.default_rng(4).standard_normal((kh, kw, c_in, c_out))
    for c in range(c_in):
        x = np.zeros((1, 2 * kh - 1, 2 * kw - 1, c_in))
        x[0, kh - 1, kw - 1, c] = 1.0
        out = patchconv.conv2d(x, kernel)  # (1, kh, kw, c_out)
        np.testing.assert_array_equal(out[0], kernel[::-1, ::-1, c, :])


@given(conv_cases(dtypes=(np.float64,), bias=False), st.integers(0, 2), st.integers(0, 2))
def test_shift_equivariance_at_stride_1(case: Case, di: int, dj: int) -> None:
    opts = dict(case.options, strides=1, padding="valid", data_format="channels_last")
    x = np.random.default_rng(5).standard_normal((1, 12, 12, case.kernel.shape[2] * opts["groups"]))
    shifted = np.roll(x, (di, dj), axis=(1, 2))
    out, out_shifted = (
        patchconv.conv2d(x, case.kernel, **opts),
        patchconv.conv2d(shifted, case.kernel, **opts),
    )
    kh = (case.kernel.shape[0] - 1) * np.broadcast_to(opts["dilation_rate"], 2)[0] + 1
    kw = (case.kernel.shape[1] - 1) * np.broadcast_to(opts["dilation_rate"], 2)[1] + 1
    if 12 - kh + 1 - di <= 0 or 12 - kw + 1 - dj <= 0:
        return  # the shifted window leaves the image: nothing to compare
    # Away from the wrap-around, shifting the input shifts the output.
    assert_close(
        out_shifted[:, di:, dj:], out[:, : out.shape[1] - di, : out.shape[2] - dj], np.float64
    )


def test_readable_patch_values() -> None:
    """x[i, j] = 10*i + j: a wrong patch would show at once."""
    x = (10 * np.arange(5)[:, None] + np.arange(5)[None, :]).astype(np.float64).reshape(1, 5, 5, 1)
    cols = patchconv.im2col(x, 3, strides=2, padding=1)
    np.testing.assert_array_equal(cols[0], [0, 0, 0, 0, 0, 1, 0, 10, 11])
    np.testing.assert_array_equal(cols[4], [11, 12, 13, 21, 22, 23, 31, 32, 33])
    np.testing.assert_array_equal(cols[8], [33, 34, 0, 43, 44, 0, 0, 0, 0])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.bool_])
def test_integer_and_bool_inputs_compute_as_float32(dtype: type) -> None:
    x = (np.arange(2 * 5 * 5 * 3) % 7).reshape(2, 5, 5, 3).astype(dtype)
    kernel = np.random.default_rng(6).standard_normal((3, 3, 3, 2)).astype(np.float32)
    out = patchconv.conv2d(x, kernel)
    assert out.dtype == np.float32
    assert_close(out, conv2d_reference(x.astype(np.float64), kernel), np.float32)


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8"])
def test_big_endian_floats_compute_in_their_precision(dtype: str) -> None:
    # They were refused as "must have a real float ... dtype; got dtype >f4".
    rng = np.random.default_rng(8)
    x, kernel, bias = rng.random((1, 6, 6, 3)), rng.random((3, 3, 3, 2)), rng.random(2)
    out = patchconv.conv2d(x.astype(dtype), kernel.astype(dtype), bias.astype(dtype))
    native = np.dtype(dtype).newbyteorder("=")
    assert out.dtype == native
    expected = conv2d_reference(x.astype(native), kernel.astype(native), bias.astype(native))
    assert_close(out, expected, native)
    grads = patchconv.conv2d_backward(np.ones_like(out), x.astype(dtype), kernel.astype(dtype))
    assert all(g.dtype == native for g in grads if g is not None)


def test_array_likes_views_and_fortran_order_are_accepted_and_left_untouched() -> None:
    rng = np.random.default_rng(7)
    base = rng.standard_normal((3, 9, 11, 4))
    kernel = rng.standard_normal((3, 2, 4, 5))
    views = [
        base[:, ::2, 1::3, :],  # strided view
        np.asfortranarray(base),  # Fortran order
        base[::-1, :, ::-1, :],  # negative strides
        base.tolist(),  # nested lists
    ]
    for x in views:
        before = np.array(x, copy=True)
        out = patchconv.conv2d(x, kernel.tolist(), padding="same", strides=(2, 1))
        assert_close(
            out, conv2d_reference(np.asarray(x), kernel, padding="same", strides=(2, 1)), np.float64
        )
        np.testing.assert_array_equal(np.asarray(x), before)


def test_nan_and_inf_propagate() -> None:
    x = np.ones((1, 5, 5, 1))
    x[0, 0, 0, 0] = np.nan
    x[0, 4, 4, 0] = np.inf
    out = patchconv.conv2d(x, np.ones((3, 3, 1, 1)))[0, :, :, 0]
    assert np.isnan(out[0, 0]) and np.isinf(out[2, 2]) and np.isfinite(out[1, 1])


def test_stride_and_dilation_together() -> None:
    x = np.random.default_rng(8).standard_normal((2, 13, 12, 3))
    kernel = np.random.default_rng(9).standard_normal((3, 3, 3, 4))
    opts = {"strides": (2, 3), "dilation_rate": (2, 1), "padding": "same"}
    assert_close(
        patchconv.conv2d(x, kernel, **opts), conv2d_reference(x, kernel, **opts), np.float64
    )


def test_depthwise_groups_equal_channels() -> None:
    x = np.random.default_rng(10).standard_normal((2, 8, 8, 6))
    kernel = np.random.default_rng(11).standard_normal((3, 3, 1, 12))  # depth multiplier 2
    assert_close(
        patchconv.conv2d(x, kernel, groups=6, padding="same"),
        conv2d_reference(x, kernel, groups=6, padding="same"),
        np.float64,
    )


def test_same_upper_and_same_lower_differ_on_odd_total_padding() -> None:
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    kernel = np.ones((2, 2, 1, 1))  # total padding 1: it goes bottom/right or top/left
    upper = patchconv.conv2d(x, kernel, padding="same")
    lower = patchconv.conv2d(x, kernel, padding="same_lower")
    assert upper[0, 0, 0, 0] == 0 + 1 + 4 + 5
    assert lower[0, 0, 0, 0] == 0.0
    assert lower[0, 3, 3, 0] == 10 + 11 + 14 + 15


@pytest.mark.parametrize(("algorithm", "most"), [
    ("gemm", 3 * 3), ("winograd_f2", 4 * 4), ("winograd_f4", 8 * 8), ("fft", 32 * 32),
])  # fmt: skip
def test_a_nan_pixel_reaches_as_the_readme_says(algorithm: str, most: int) -> None:
    # gemm: the 3x3 outputs around it; winograd: the tiles it falls in; fft: everything.
    k = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        for at in (4, 5, 6, 13):
            x = np.ones((1, 32, 32, 16), np.float32)
            x[0, at, at, 0] = np.nan
            out = patchconv.conv2d(x, k, padding="same", algorithm=algorithm)
            spoilt = np.isnan(out).any(-1)[0]
            assert spoilt[at - 1 : at + 2, at - 1 : at + 2].all()
            assert 9 <= spoilt.sum() <= most
    assert algorithm != "fft" or spoilt.all()
