"""conv2d_backward: PyTorch autograd over hundreds of random configurations, float64 finite
differences, adjoint identities, and tiling that never changes a gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv.algorithms._runtime import get_numba
from reference import pads_for
from strategies import Case, conv_cases

AUTOGRAD_EXAMPLES = 400


def _pair(v: int | tuple[int, int]) -> list[int]:
    return list(np.broadcast_to(v, 2))


def torch_conv_grads(case: Case, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """grad_x, grad_kernel (HWIO), grad_bias from PyTorch autograd; every padding form is made
    explicit with F.pad, so asymmetric padding is covered too."""
    opts = case.options
    x_t = torch.from_numpy(np.ascontiguousarray(case.x)).requires_grad_(True)
    k_t = torch.from_numpy(np.ascontiguousarray(case.kernel.transpose(3, 2, 0, 1)))
    k_t.requires_grad_(True)  # OIHW leaf
    b_t = torch.zeros(case.kernel.shape[3], dtype=x_t.dtype, requires_grad=True)
    x_nchw = x_t if opts["data_format"] == "channels_first" else x_t.permute(0, 3, 1, 2)
    kh, kw = case.kernel.shape[:2]
    strides, dilation = _pair(opts["strides"]), _pair(opts["dilation_rate"])
    top, bottom, left, right = pads_for(
        opts["padding"], x_nchw.shape[2], x_nchw.shape[3], kh, kw, strides, dilation
    )
    out = F.conv2d(
        F.pad(x_nchw, (left, right, top, bottom)),
        k_t,
        b_t,
        stride=strides,
        dilation=dilation,
        groups=opts["groups"],
    )
    if opts["data_format"] == "channels_last":
        out = out.permute(0, 2, 3, 1)
    out.backward(torch.from_numpy(g))
    assert x_t.grad is not None and k_t.grad is not None and b_t.grad is not None
    return x_t.grad.numpy(), k_t.grad.numpy().transpose(2, 3, 1, 0), b_t.grad.numpy()


@settings(max_examples=AUTOGRAD_EXAMPLES)
@given(conv_cases(dtypes=(np.float32, np.float64)), st.integers(0, 2**31))
def test_gradients_match_pytorch_autograd(case: Case, seed: int) -> None:
    """Within the gradient tolerances (1e-4 float32, 1e-10 float64, relative to the result)."""
    out_shape = patchconv.conv_output_shape(case.x.shape, case.kernel.shape, **case.options)
    g = np.random.default_rng(seed).standard_normal(out_shape).astype(case.x.dtype)
    grads = patchconv.conv2d_backward(g, case.x, case.kernel, **case.options)
    gx, gk, gb = torch_conv_grads(case, g)
    assert grads.grad_x.dtype == grads.grad_kernel.dtype == case.x.dtype
    assert grads.grad_x.shape == case.x.shape and grads.grad_kernel.shape == case.kernel.shape
    assert_close(grads.grad_x, gx, case.x.dtype, grad=True)
    assert_close(grads.grad_kernel, gk, case.x.dtype, grad=True)
    assert grads.grad_bias is not None
    assert_close(grads.grad_bias, gb, case.x.dtype, grad=True)


def _probe(shape: tuple[int, ...], rng: np.random.Generator, count: int) -> list[tuple[int, ...]]:
    """Every index of a small array, or ``count`` random ones of a larger one."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= count else rng.choice(size, count, replace=False)
    return [tuple(int(i) for i in np.unravel_index(f, shape)) for f in flat]


@settings(max_examples=120)
@given(conv_cases(dtypes=(np.float64,), bias=True), st.integers(0, 2**31))
def test_gradients_match_float64_finite_differences(case: Case, seed: int) -> None:
    """Central differences of L = <conv2d(x, kernel, bias), g>, entry by entry."""
    rng = np.random.default_rng(seed)
    assert case.bias is not None
    x, kernel, bias = case.x.copy(), case.kernel.copy(), case.bias.copy()
    out = patchconv.conv2d(x, kernel, bias, **case.options)
    g = rng.standard_normal(out.shape)
    grads = patchconv.conv2d_backward(g, x, kernel, **case.options)
    assert grads.grad_bias is not None
    eps = 1e-3  # L is linear in each argument, so only rounding limits the difference

    def loss() -> float:
        return float(np.vdot(patchconv.conv2d(x, kernel, bias, **case.options), g))

    scale = float(np.abs(out).sum() * np.abs(g).max()) + 1.0
    for arr, grad in ((x, grads.grad_x), (kernel, grads.grad_kernel), (bias, grads.grad_bias)):
        for idx in _probe(arr.shape, rng, 24):
            arr[idx] += eps
            up = loss()
            arr[idx] -= 2 * eps
            down = loss()
            arr[idx] += eps
            fd = (up - down) / (2 * eps)
            np.testing.assert_allclose(grad[idx], fd, rtol=1e-8, atol=1e-10 * scale / eps)


@given(conv_cases(dtypes=(np.float64,), bias=False), st.integers(1, 3000))
def test_adjoint_identities_hold_under_any_tiling(case: Case, limit: int) -> None:
    """<conv(x), g> == <x, grad_x> == <kernel, grad_kernel> with the patch matrix built in
    tiles of at most ``limit`` bytes, and the tiled gradients equal the untiled ones."""
    out = patchconv.conv2d(case.x, case.kernel, **case.options)
    g = np.random.default_rng(3).standard_normal(out.shape)
    tiled = patchconv.conv2d_backward(
        g, case.x, case.kernel, use_bias=False, workspace_limit=limit, **case.options
    )
    whole = patchconv.conv2d_backward(g, case.x, case.kernel, use_bias=False, **case.options)
    assert tiled.grad_bias is None
    inner = np.vdot(out, g)
    np.testing.assert_allclose(np.vdot(case.x, tiled.grad_x), inner, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        np.vdot(case.kernel, tiled.grad_kernel), inner, rtol=1e-10, atol=1e-10
    )
    assert_close(tiled.grad_x, whole.grad_x, np.float64, grad=True)
    assert_close(tiled.grad_kernel, whole.grad_kernel, np.float64, grad=True)


@given(conv_cases(dtypes=(np.float64,), bias=False))
def test_col2im_is_the_adjoint_of_im2col_in_both_formats(case: Case) -> None:
    size = case.kernel.shape[:2]
    cols = patchconv.im2col(case.x, size, **case.options)
    c = np.random.default_rng(4).standard_normal(cols.shape)
    back = patchconv.col2im(c, case.x.shape, size, **case.options)
    np.testing.assert_allclose(np.vdot(cols, c), np.vdot(case.x, back), rtol=1e-12, atol=1e-12)


def test_grad_kernel_is_patches_transposed_times_grad_out() -> None:
    """The seed's picture: grad_kernel = patches^T @ grad_out, grad_x = col2im(grad_out @ K^T)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 5, 3))
    kernel = rng.standard_normal((3, 2, 3, 4))
    opts = {"strides": (2, 1), "padding": "same"}
    g = rng.standard_normal(patchconv.conv_output_shape(x.shape, kernel.shape, **opts))
    cols = patchconv.im2col(x, (3, 2), **opts)  # (n*oh*ow, kh*kw*c_in)
    grads = patchconv.conv2d_backward(g, x, kernel, **opts)
    g2 = g.reshape(-1, 4)  # (n*oh*ow, c_out)
    np.testing.assert_allclose(grads.grad_kernel.reshape(-1, 4), cols.T @ g2, rtol=1e-12)
    np.testing.assert_allclose(
        grads.grad_x,
        patchconv.col2im(g2 @ kernel.reshape(-1, 4).T, x.shape, (3, 2), **opts),
        rtol=1e-12,
    )


@settings(max_examples=60)
@given(conv_cases(dtypes=(np.float32, np.float64), bias=True), st.integers(0, 2**31))
def test_skipping_grad_x_leaves_the_other_gradients_unchanged(case: Case, seed: int) -> None:
    """need_grad_x=False: grad_x is None, grad_kernel and grad_bias are the full call's."""
    out_shape = patchconv.conv_output_shape(case.x.shape, case.kernel.shape, **case.options)
    g = np.random.default_rng(seed).standard_normal(out_shape).astype(case.x.dtype)
    full = patchconv.conv2d_backward(g, case.x, case.kernel, **case.options)
    weights = patchconv.conv2d_backward(g, case.x, case.kernel, need_grad_x=False, **case.options)
    assert full.grad_x is not None and weights.grad_x is None
    np.testing.assert_array_equal(weights.grad_kernel, full.grad_kernel)
    assert weights.grad_bias is not None and full.grad_bias is not None
    np.testing.assert_array_equal(weights.grad_bias, full.grad_bias)


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "groups", "algorithm"),
    [
        ((2, 9, 9, 6), (1, 1, 6, 5), 1, "pointwise"),
        ((2, 9, 9, 6), (3, 3, 1, 6), 6, "depthwise"),
        ((2, 12, 12, 16), (3, 3, 16, 16), 1, "winograd_f4"),
        ((2, 12, 12, 16), (3, 3, 16, 16), 1, "winograd_f2"),
        ((2, 20, 20, 3), (3, 3, 3, 8), 1, "direct"),
        ((2, 9, 9, 6), (3, 3, 6, 5), 1, "gemm"),
    ],
)
def test_skipping_grad_x_under_every_algorithm_family(
    x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], groups: int, algorithm: str
) -> None:
    if algorithm == "direct" and get_numba() is None:
        pytest.skip("direct needs numba")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    opts = {"padding": "same", "groups": groups, "algorithm": algorithm}
    g = rng.standard_normal(x_shape[:3] + kernel_shape[3:]).astype(np.float32)
    full = patchconv.conv2d_backward(g, x, kernel, **opts)
    weights = patchconv.conv2d_backward(g, x, kernel, need_grad_x=False, **opts)
    assert full.grad_x is not None and weights.grad_x is None
    np.testing.assert_array_equal(weights.grad_kernel, full.grad_kernel)


@pytest.mark.parametrize("name", ["need_grad_x", "use_bias"])
def test_backward_flags_must_be_booleans(name: str) -> None:
    x, kernel = np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1))
    with pytest.raises(TypeError, match=f"{name} must be True or False; got 'no'"):
        patchconv.conv2d_backward(np.ones((1, 2, 2, 1)), x, kernel, **{name: "no"})


@pytest.mark.parametrize(
    "shape", [(64, 32, 32, 32), (1, 1024, 1024, 3), (3, 5, 7, 3), (2, 3, 3, 2048)]
)
def test_grad_bias_is_the_channel_sum_within_float32_rounding(shape: tuple[int, ...]) -> None:
    """The bias gradient, summed in wide rows (see functional._channel_sums), against float64;
    row counts with no power-of-two factor (3*5*7) and channels past 1024 included."""
    g = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    x = np.zeros((shape[0], shape[1], shape[2], 1), np.float32)
    kernel = np.zeros((1, 1, 1, shape[3]), np.float32)
    grads = patchconv.conv2d_backward(g, x, kernel, need_grad_x=False)
    exact = g.astype(np.float64).sum(axis=(0, 1, 2))
    assert grads.grad_bias is not None and grads.grad_bias.dtype == np.float32
    rows = g.size // shape[3]
    # Sums of `rows` values of size ~1 (measured errors: 5e-4 at 65536 rows, 1e-3 at 2**20;
    # NumPy's row-by-row sum, 4e-3 and 8e-3).
    np.testing.assert_allclose(grads.grad_bias, exact, rtol=0, atol=rows * 2e-8 + 1e-5)


@pytest.mark.skipif(get_numba() is None, reason="the direct algorithm needs numba")
@pytest.mark.parametrize("c_out", [16, 32, 48])
def test_direct_gradients_with_channels_in_16x16_transposes(c_out: int) -> None:
    """direct's weight gradient lays grad_out's channels out in planes 16 at a time, and its
    grad_x is a direct forward of c_out channels in: both against PyTorch autograd."""
    rng = np.random.default_rng(c_out)
    x = rng.standard_normal((2, 21, 37, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, c_out)).astype(np.float32)
    case = Case(x, kernel, None, {"strides": 1, "padding": "same", "dilation_rate": 1,
                                  "groups": 1, "data_format": "channels_last"})  # fmt: skip
    g = rng.standard_normal((2, 21, 37, c_out)).astype(np.float32)
    grads = patchconv.conv2d_backward(g, x, kernel, padding="same", algorithm="direct")
    gx, gk, _ = torch_conv_grads(case, g)
    assert grads.grad_x is not None
    assert_close(grads.grad_x, gx, np.float32, grad=True)
    assert_close(grads.grad_kernel, gk, np.float32, grad=True)


@pytest.mark.skipif(get_numba() is None, reason="the direct algorithm needs numba")
def test_auto_takes_directs_weight_gradient_whatever_runs_forward() -> None:
    """Under "auto" a layer with few input channels that direct applies to takes direct's
    weight gradient, though gemm's narrow implicit form runs its forward pass; a request for
    gemm by name keeps gemm's. Both equal PyTorch's."""
    from patchconv import algorithms
    from patchconv._spec import conv_spec

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 21, 37, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    g = rng.standard_normal((2, 21, 37, 32)).astype(np.float32)
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    case = Case(x, kernel, None, {"strides": 1, "padding": "same", "dilation_rate": 1,
                                  "groups": 1, "data_format": "channels_last"})  # fmt: skip
    _, gk, _ = torch_conv_grads(case, g)
    for algorithm, expected in (("auto", "direct"), ("gemm", "gemm")):
        _, grad_kernel, used = algorithms.backward(
            g, x, kernel, spec, 2**28, algorithm=algorithm, need_grad_x=False
        )
        assert used["forward_plan"].algorithm == "gemm"
        assert used["grad_kernel"].startswith(expected)
        assert_close(grad_kernel, gk, np.float32, grad=True)


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "groups", "algorithm"),
    [
        ((16, 40, 40, 64), (3, 3, 64, 64), 1, "winograd_f4"),  # compiled blocks of tiles
        ((4, 30, 30, 16), (3, 3, 16, 24), 1, "winograd_f4"),  # BLAS products
        ((2, 39, 45, 32), (4, 4, 1, 32), 32, "depthwise"),
        ((4, 18, 68, 27), (3, 3, 27, 51), 1, "direct"),  # Winograd's weight gradient
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradients_are_the_same_on_every_call(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    groups: int,
    algorithm: str,
    dtype: type,
) -> None:
    """Partial sums kept per work item and added in a fixed order: no call differs from the
    first in any bit (per-thread partials differed in the last bits, run to run)."""
    if algorithm == "direct" and get_numba() is None:
        pytest.skip("direct needs numba")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal(kernel_shape).astype(dtype)
    opts = {"padding": "same", "groups": groups, "algorithm": algorithm}
    out_shape = patchconv.conv_output_shape(x.shape, kernel.shape, padding="same", groups=groups)
    g = rng.standard_normal(out_shape).astype(dtype)
    first = patchconv.conv2d_backward(g, x, kernel, need_grad_x=False, **opts).grad_kernel
    for _ in range(12):
        again = patchconv.conv2d_backward(g, x, kernel, need_grad_x=False, **opts).grad_kernel
        np.testing.assert_array_equal(again, first)
