"""Every algorithm against the loop reference, its gradients against gemm's, and the chooser."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv.algorithms import ALGORITHMS, Plan, measured_plans
from patchconv.algorithms._runtime import get_numba
from reference import conv2d_reference
from strategies import Case, paddings


@st.composite
def algorithm_cases(
    draw: st.DrawFn, name: str, dtypes: tuple[Any, ...] = (np.float32, np.float64)
) -> Case:
    """A random small call that ``name`` applies to (every padding form and data format)."""
    groups, cg, og = 1, draw(st.integers(1, 4)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if name == "pointwise":
        kh = kw = 1
        groups = draw(st.sampled_from([1, 2]))
    elif name == "depthwise":
        groups, cg, og = draw(st.integers(1, 5)), 1, draw(st.integers(1, 3))
    elif name.startswith("winograd"):
        kh = kw = 3
        sh = sw = dh = dw = 1
    elif name == "fft":
        sh = sw = 1
        kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    elif name == "direct":  # 1-9 output channels: groups of 4, a padded 4th, single channels
        sh = sw = 1  # 16 and 32 input channels: their planes are cut by 16x16 transposes
        cg, og = draw(st.sampled_from([1, 2, 3, 4, 5, 16, 32])), draw(st.integers(1, 9))
    else:
        groups = draw(st.sampled_from([1, 2]))
    c_in, c_out = groups * cg, groups * og
    h = draw(st.integers((kh - 1) * dh + 1, (kh - 1) * dh + (20 if name == "direct" else 9)))
    # direct runs blocks of 64 pixels along rows laid end to end: narrow and wide rows
    low = (kw - 1) * dw + 1
    w = draw(st.integers(low, low + (70 if name == "direct" else 8)))
    n = draw(st.integers(1, 3))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (n, c_in, h, w) if data_format == "channels_first" else (n, h, w, c_in)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((kh, kw, cg, c_out)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype) if draw(st.booleans()) else None
    options = {
        "strides": (sh, sw),
        "padding": draw(paddings()),
        "dilation_rate": (dh, dw),
        "groups": groups,
        "data_format": data_format,
    }
    if name == "direct":  # at least one block of 64 an image: its rows, each (kw-1)*dw longer
        out = patchconv.conv_output_shape(shape, kernel.shape, **options)
        oh, ow = out[1:3] if data_format == "channels_last" else out[2:]
        assume(oh * (ow + (kw - 1) * dw) >= 64)
    return Case(x, kernel, bias, options)


NAMED = [name for name in ALGORITHMS if name != "winograd"] + ["winograd"]


def _needs_numba(name: str) -> None:
    if name == "direct" and get_numba() is None:  # refused then: see the test below
        pytest.skip("the direct algorithm needs numba")


@pytest.mark.parametrize("name", NAMED)
@settings(max_examples=40)
@given(data=st.data())
def test_each_algorithm_matches_the_reference(name: str, data: st.DataObject) -> None:
    _needs_numba(name)
    case = data.draw(algorithm_cases(name, dtypes=(np.float16, np.float32, np.float64)))
    out, plan = patchconv.conv2d(
        case.x, case.kernel, case.bias, algorithm=name, return_plan=True, **case.options
    )
    assert plan.algorithm.startswith(name)
    expected = conv2d_reference(case.x, case.kernel, case.bias, **case.options)
    assert out.dtype == case.x.dtype and out.shape == expected.shape
    assert_close(out, expected, case.x.dtype)


@pytest.mark.parametrize("name", NAMED)
@settings(max_examples=25)
@given(data=st.data(), limit=st.integers(1, 20_000))
def test_each_algorithm_is_exact_under_any_workspace_limit(
    name: str, data: st.DataObject, limit: int
) -> None:
    """Tiles, blocks and image chunks of every size give the same values."""
    _needs_numba(name)
    case = data.draw(algorithm_cases(name, dtypes=(np.float64,)))
    whole = patchconv.conv2d(case.x, case.kernel, case.bias, algorithm=name, **case.options)
    tiled = patchconv.conv2d(
        case.x, case.kernel, case.bias, algorithm=name, workspace_limit=limit, **case.options
    )
    assert_close(tiled, whole, np.float64)


@pytest.mark.parametrize("name", NAMED)
@settings(max_examples=25)
@given(data=st.data())
def test_each_algorithm_s_gradients_match_gemm(name: str, data: st.DataObject) -> None:
    """conv2d_backward through each family equals the patch-matrix gradients (which the
    adjoint and PyTorch tests pin)."""
    _needs_numba(name)
    case = data.draw(algorithm_cases(name, dtypes=(np.float32, np.float64)))
    out = patchconv.conv2d(case.x, case.kernel, **case.options)
    g = np.random.default_rng(7).standard_normal(out.shape).astype(case.x.dtype)
    got = patchconv.conv2d_backward(g, case.x, case.kernel, algorithm=name, **case.options)
    ref = patchconv.conv2d_backward(g, case.x, case.kernel, algorithm="gemm", **case.options)
    assert got.grad_x.dtype == case.x.dtype
    assert_close(got.grad_x, ref.grad_x, case.x.dtype, grad=True)
    assert_close(got.grad_kernel, ref.grad_kernel, case.x.dtype, grad=True)
    np.testing.assert_allclose(got.grad_bias, ref.grad_bias, rtol=1e-6)


@pytest.mark.parametrize("name", ["depthwise", "winograd_f4", "winograd_f2"])
@settings(max_examples=15)
@given(data=st.data())
def test_numpy_fallback_without_numba(name: str, data: st.DataObject) -> None:
    """With numba absent (PATCHCONV_NUMBA=0 reads as absent) the NumPy paths give the same."""
    case = data.draw(algorithm_cases(name, dtypes=(np.float64,)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATCHCONV_NUMBA", "0")
        out = patchconv.conv2d(case.x, case.kernel, case.bias, algorithm=name, **case.options)
        g = np.random.default_rng(8).standard_normal(out.shape)
        got = patchconv.conv2d_backward(g, case.x, case.kernel, algorithm=name, **case.options)
    expected = conv2d_reference(case.x, case.kernel, case.bias, **case.options)
    assert_close(out, expected, np.float64)
    ref = patchconv.conv2d_backward(g, case.x, case.kernel, algorithm="gemm", **case.options)
    assert_close(got.grad_x, ref.grad_x, np.float64, grad=True)
    assert_close(got.grad_kernel, ref.grad_kernel, np.float64, grad=True)


@pytest.mark.parametrize(
    ("m", "bound32"),
    [(4, 2.5e-6), (2, 2e-6)],  # F(4x4): 1.7e-6 (3.3e-6 with the points 0, +-1, +-2)
)
def test_winograd_accuracy_against_float64(m: int, bound32: float) -> None:
    """The documented accuracy: largest error / largest output, float32 and float64."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 20, 17, 32))
    kernel = rng.standard_normal((3, 3, 32, 24))
    exact = patchconv.conv2d(x, kernel, padding="same", algorithm="gemm")
    scale = np.abs(exact).max()
    name = f"winograd_f{m}"
    out32 = patchconv.conv2d(
        x.astype(np.float32), kernel.astype(np.float32), padding="same", algorithm=name
    )
    out64 = patchconv.conv2d(x, kernel, padding="same", algorithm=name)
    direct32 = patchconv.conv2d(
        x.astype(np.float32), kernel.astype(np.float32), padding="same", algorithm="gemm"
    )
    err32 = np.abs(out32 - exact).max() / scale
    err_direct = np.abs(direct32 - exact).max() / scale
    print(f"F({m}x{m}, 3x3): float32 {err32:.2e} (direct {err_direct:.2e})")
    assert err32 <= bound32
    assert np.abs(out64 - exact).max() / scale <= 1e-13


@pytest.mark.parametrize(
    ("name", "x_shape", "kernel_shape", "options", "message"),
    [
        ("winograd", (1, 9, 9, 2), (5, 5, 2, 3), {}, "winograd needs a 3x3 kernel; got 5x5"),
        (
            "winograd_f4",
            (1, 9, 9, 2),
            (3, 3, 2, 3),
            {"strides": 2},
            r"winograd needs strides 1; got \(2, 2\)",
        ),
        (
            "winograd_f2",
            (1, 9, 9, 2),
            (3, 3, 2, 3),
            {"dilation_rate": 2},
            r"winograd needs dilation_rate 1; got \(2, 2\)",
        ),
        ("winograd", (1, 9, 9, 4), (3, 3, 2, 4), {"groups": 2}, "winograd needs groups 1; got 2"),
        ("pointwise", (1, 9, 9, 2), (3, 3, 2, 3), {}, "pointwise needs a 1x1 kernel; got 3x3"),
        (
            "depthwise",
            (1, 9, 9, 4),
            (3, 3, 2, 4),
            {"groups": 2},
            "depthwise needs groups == c_in; got groups 2, c_in 4",
        ),
        ("fft", (1, 9, 9, 2), (3, 3, 2, 3), {"strides": 2}, r"fft needs strides 1; got \(2, 2\)"),
        (
            "direct",
            (1, 9, 90, 2),
            (3, 3, 2, 3),
            {"strides": 2},
            r"direct needs strides 1; got \(2, 2\)",
        ),
        (
            "direct",
            (1, 4, 9, 2),
            (3, 3, 2, 3),
            {},
            r"direct needs 64 output pixels or more an image, counting the 2 of each row its "
            r"flat rows add; got 2 x 9",
        ),
        (
            "direct",
            (1, 9, 90, 65),
            (3, 3, 65, 3),
            {},
            "direct needs at most 64 channels in and out; got c_in 65, c_out 3",
        ),
    ],
)
def test_an_algorithm_that_does_not_apply_is_refused(
    name: str,
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    options: dict[str, Any],
    message: str,
) -> None:
    x, kernel = np.ones(x_shape), np.ones(kernel_shape)
    with pytest.raises(
        patchconv.PatchconvError, match=f"conv2d: algorithm '{name}' does not apply: {message}"
    ):
        patchconv.conv2d(x, kernel, algorithm=name, **options)
    g = np.ones(patchconv.conv_output_shape(x_shape, kernel_shape, **options))
    with pytest.raises(
        patchconv.PatchconvError, match=f"conv2d_backward: algorithm '{name}' does not apply"
    ):
        patchconv.conv2d_backward(g, x, kernel, algorithm=name, **options)


@pytest.mark.skipif(get_numba() is None, reason="the direct algorithm needs numba")
def test_direct_weight_gradient_is_the_same_on_every_call() -> None:
    """Each core's share of the bands is fixed and summed in order, so training with a fixed
    seed repeats exactly (threads taking bands as they came made the sums differ run to run)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 32, 32, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 16)).astype(np.float32)
    g = rng.standard_normal((16, 32, 32, 16)).astype(np.float32)
    first = patchconv.conv2d_backward(g, x, kernel, padding="same", algorithm="direct")
    for _ in range(10):
        again = patchconv.conv2d_backward(g, x, kernel, padding="same", algorithm="direct")
        np.testing.assert_array_equal(again.grad_kernel, first.grad_kernel)
    gemm = patchconv.conv2d_backward(g, x, kernel, padding="same", algorithm="gemm")
    assert_close(first.grad_kernel, gemm.grad_kernel, np.float32, grad=True)


def test_direct_is_refused_without_numba_and_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHCONV_NUMBA", "0")
    x, kernel = np.ones((1, 8, 80, 3)), np.ones((3, 3, 3, 2))
    with pytest.raises(patchconv.PatchconvError, match="direct needs numba"):
        patchconv.conv2d(x, kernel, algorithm="direct")
    plan = patchconv.explain_algorithm(x.shape, kernel.shape)
    assert plan.algorithm != "direct" and "direct" not in dict(plan.estimates)


def test_unknown_and_mistyped_algorithm_names() -> None:
    x, kernel = np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 1))
    with pytest.raises(
        patchconv.PatchconvError,
        match=r"conv2d: algorithm must be 'auto' or one of \('measure', 'gemm'.*got 'winograd3'",
    ):
        patchconv.conv2d(x, kernel, algorithm="winograd3")
    with pytest.raises(TypeError, match="conv2d: algorithm must be a string; got 3"):
        patchconv.conv2d(x, kernel, algorithm=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("x_shape", "kernel_shape", "options", "expected"),
    [
        ((8, 56, 56, 64), (1, 1, 64, 256), {}, "pointwise"),
        ((8, 112, 112, 32), (3, 3, 1, 32), {"groups": 32, "padding": "same"}, "depthwise"),
        ((8, 56, 56, 96), (7, 7, 1, 96), {"groups": 96, "padding": "same"}, "depthwise"),
        ((1, 4, 4, 3), (3, 3, 3, 2), {}, "gemm"),
        ((8, 56, 56, 128), (3, 3, 128, 128), {"strides": 2, "padding": "same"}, "gemm"),
        ((8, 56, 56, 64), (3, 3, 64, 64), {"padding": "same"}, "winograd_f4"),
        ((8, 64, 64, 16), (11, 11, 16, 16), {"padding": "same"}, "gemm, or fft without numba"),
        # Not a benchmark layer: an RGB filter over a photo (Winograd took 25x as long).
        ((1, 1024, 1024, 3), (3, 3, 3, 3), {"padding": "same"}, "direct, or gemm without numba"),
    ],
)
def test_the_chooser_on_the_benchmark_layers(
    x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], options: dict[str, Any], expected: str
) -> None:
    if ", or " in expected:  # the implicit GEMM's narrow form and direct need numba
        with_numba, without = expected.removesuffix(" without numba").split(", or ")
        expected = with_numba if get_numba() is not None else without
    plan = patchconv.explain_algorithm(x_shape, kernel_shape, **options)
    assert isinstance(plan, Plan)
    assert plan.algorithm == expected, str(plan)
    text = str(plan)
    assert text.startswith(expected) and "estimated:" in text
    assert plan.estimates[0][0] == expected


def test_return_plan_and_measure() -> None:
    rng = np.random.default_rng(3)
    x, kernel = rng.standard_normal((2, 10, 10, 4)), rng.standard_normal((3, 3, 4, 5))
    out, plan = patchconv.conv2d(x, kernel, padding="same", algorithm="measure", return_plan=True)
    assert "fastest when measured" in plan.reason
    assert any(spec.h == 10 and spec.c_out == 5 for spec, _ in measured_plans())
    assert_close(out, conv2d_reference(x, kernel, padding="same"), np.float64)
    again, plan2 = patchconv.conv2d(
        x, kernel, padding="same", algorithm="measure", return_plan=True
    )
    assert plan2.algorithm == plan.algorithm
    np.testing.assert_array_equal(again, out)


def test_release_workspace_drops_cached_buffers() -> None:
    rng = np.random.default_rng(4)
    patchconv.conv2d(
        rng.standard_normal((2, 16, 16, 8)), rng.standard_normal((3, 3, 8, 8)), algorithm="gemm"
    )
    assert patchconv.release_workspace() > 0
    assert patchconv.release_workspace() == 0
