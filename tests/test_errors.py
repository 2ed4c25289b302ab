"""Every bad input raises a clear error, before any work, naming the parameter and the values."""

from __future__ import annotations

import re

import numpy as np
import pytest

import patchconv
from patchconv import PatchconvError

X = np.zeros((2, 8, 8, 3), dtype=np.float32)
K = np.zeros((3, 3, 3, 5), dtype=np.float32)


@pytest.mark.parametrize(
    ("x", "kernel", "kwargs", "match"),
    [
        (
            np.zeros((8, 8, 3)),
            K,
            {},
            r"conv2d: x must be 4-D \(n, h, w, c_in\) for channels_last; got ndim 3",
        ),
        (X, np.zeros((3, 3, 3)), {}, r"conv2d: kernel must be 4-D .* got ndim 3"),
        (
            X,
            np.zeros((3, 3, 4, 5)),
            {},
            r"conv2d: kernel input channels \(4\) must equal x channels \(3\) / groups \(1\); "
            r"got x \(2, 8, 8, 3\), kernel \(3, 3, 4, 5\)",
        ),
        (
            np.zeros((2, 8, 8, 4)),
            np.zeros((3, 3, 2, 5)),
            {"groups": 2},
            r"groups \(2\) must divide kernel output channels \(5\)",
        ),
        (X, K, {"groups": 2}, r"conv2d: groups \(2\) must divide x channels \(3\)"),
        (X, K, {"groups": 0}, r"conv2d: groups must be >= 1; got 0"),
        (X, K, {"strides": 0}, r"conv2d: strides must be >= 1; got 0"),
        (X, K, {"strides": (1, -2)}, r"conv2d: strides must be >= 1; got \(1, -2\)"),
        (X, K, {"dilation_rate": 0}, r"conv2d: dilation_rate must be >= 1; got 0"),
        (
            X,
            np.zeros((0, 3, 3, 5)),
            {},
            r"conv2d: kernel sizes must be >= 1; got kernel \(0, 3, 3, 5\)",
        ),
        (X, np.zeros((3, 3, 3, 0)), {}, r"conv2d: kernel sizes must be >= 1"),
        (X, K, {"padding": -1}, r"conv2d: padding must be >= 0; got -1"),
        (X, K, {"padding": ((0, 1), (-1, 0))}, r"conv2d: padding must be >= 0"),
        (X, K, {"padding": "full"}, r"conv2d: padding must be one of 'valid', 'same'.*got 'full'"),
        (
            X,
            K,
            {"data_format": "nhwc"},
            r"conv2d: data_format must be 'channels_last' or 'channels_first'; got 'nhwc'",
        ),
        (
            X,
            np.zeros((9, 3, 3, 5)),
            {},
            r"conv2d: the dilated kernel height \(9\) must not exceed the padded input height \(8\)",
        ),
        (
            X,
            K,
            {"dilation_rate": 5},
            r"conv2d: the dilated kernel height \(11\) must not exceed the padded input height \(8\)",
        ),
        (X, K, {"workspace_limit": 0}, r"conv2d: workspace_limit must be >= 1 byte; got 0"),
        (X, K, {"algorithm": "magic"}, r"conv2d: algorithm must be 'auto' or one of"),
        (np.zeros((1, 0, 8, 3)), K, {}, r"conv2d: x's height, width and channels must not be"),
        (np.zeros((0, 8, 8, 3)), K, {"padding": "bogus"}, r"conv2d: padding must be"),
    ],
)
def test_value_errors(x: np.ndarray, kernel: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(PatchconvError, match=match):
        patchconv.conv2d(x, kernel, **kwargs)


def test_errors_are_value_errors() -> None:
    assert issubclass(PatchconvError, ValueError)


def test_bias_of_the_wrong_shape() -> None:
    with pytest.raises(
        PatchconvError,
        match=re.escape(
            "conv2d: bias must have shape (5,) to match kernel output channels; got bias (3,)"
        ),
    ):
        patchconv.conv2d(X, K, np.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strides": 1.5}, r"conv2d: strides must be an int or a pair of ints; got 1.5"),
        ({"strides": True}, r"conv2d: strides must be an int or a pair of ints; got True"),
        ({"dilation_rate": (1, 2, 3)}, r"conv2d: dilation_rate must be an int or a pair"),
        ({"padding": 1.0}, r"conv2d: padding must be a string, an int"),
        ({"padding": (1, "a")}, r"conv2d: padding must be a string, an int"),
        ({"groups": 1.0}, r"conv2d: groups must be an int; got 1.0"),
        ({"workspace_limit": 2.5}, r"conv2d: workspace_limit must be an int number of bytes"),
    ],
)
def test_type_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        patchconv.conv2d(X, K, **kwargs)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((1, 4, 4, 3), dtype=complex),
        np.array([["a"]] * 4).reshape(1, 2, 2, 1),
        np.empty((1, 3, 3, 1), dtype=object),
    ],
)
def test_unsupported_dtypes(bad: np.ndarray) -> None:
    with pytest.raises(
        TypeError, match=r"conv2d: x must have a real float, integer or bool dtype; got dtype"
    ):
        patchconv.conv2d(bad, np.zeros((1, 1, bad.shape[-1], 1)))


def test_channels_first_message_names_its_layout() -> None:
    with pytest.raises(PatchconvError, match=r"x must be 4-D \(n, c_in, h, w\) for channels_first"):
        patchconv.conv2d(np.zeros((3, 8, 8)), K, data_format="channels_first")


def test_backward_checks_grad_out_shape() -> None:
    with pytest.raises(
        PatchconvError,
        match=re.escape(
            "conv2d_backward: grad_out must have the output shape (2, 6, 6, 5); got grad_out (2, 8, 8, 5)"
        ),
    ):
        patchconv.conv2d_backward(np.zeros((2, 8, 8, 5)), X, K)


def test_errors_come_before_any_allocation() -> None:
    """A huge input with a bad argument fails fast without touching memory."""
    huge = np.lib.stride_tricks.as_strided(
        np.zeros(1, np.float32), (64, 4096, 4096, 3), (0, 0, 0, 0)
    )
    with pytest.raises(PatchconvError, match="padding must be >= 0"):
        patchconv.conv2d(huge, K, padding=-2)
    # An integer image too: it was converted to float32 (a 4x copy, 400 MB here) first.
    import tracemalloc

    big8 = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (8, 2048, 2048, 3), (0,) * 4)
    go8 = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (8, 2046, 2046, 2), (0,) * 4)
    tracemalloc.start()
    try:
        with pytest.raises(PatchconvError, match="padding must be >= 0"):
            patchconv.conv2d(big8, K, padding=-2)
        with pytest.raises(PatchconvError, match="groups must be >= 1"):
            patchconv.conv2d_backward(go8, big8, K, groups=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak / 2**20:.0f} MiB allocated before the error"
    with pytest.raises(TypeError, match="conv2d: return_plan must be True or False; got 'no'"):
        patchconv.conv2d(X, K, return_plan="no")  # type: ignore[call-overload]


def test_set_workspace_limit_checks_and_restores() -> None:
    with pytest.raises(
        PatchconvError, match="set_workspace_limit: workspace_limit must be >= 1 byte; got -5"
    ):
        patchconv.set_workspace_limit(-5)
    previous = patchconv.set_workspace_limit(1024)
    try:
        assert patchconv.get_workspace_limit() == 1024
    finally:
        patchconv.set_workspace_limit(previous)


def test_explain_algorithm_plans_integer_dtypes_as_conv2d_runs_them() -> None:
    x_shape, k_shape = (1, 8, 8, 1024), (3, 3, 1024, 64)
    ran = patchconv.conv2d(
        np.ones(x_shape, np.int64), np.full(k_shape, 1e-3, np.float32), padding="same",
        return_plan=True,
    )[1].algorithm  # fmt: skip
    for dtype in (np.int64, np.uint8, bool):
        plan = patchconv.explain_algorithm(x_shape, k_shape, padding="same", dtype=dtype)
        assert plan.algorithm == ran  # int64 planned as 8-byte floats before
    with pytest.raises(TypeError, match=r"explain_algorithm: dtype must have a real float"):
        patchconv.explain_algorithm(x_shape, k_shape, dtype=np.complex64)
    with pytest.raises(TypeError, match=r"explain_algorithm: dtype must be a NumPy dtype"):
        patchconv.explain_algorithm(x_shape, k_shape, dtype="no such type")


def test_shape_arguments_take_integer_tuples_or_the_arrays() -> None:
    """explain_algorithm, conv_output_shape and col2im take shapes; given the arrays they use
    their shapes (and explain_algorithm their dtypes), where the arrays once went into the
    message whole. Anything else is a TypeError naming the parameter, kept short."""
    x = np.zeros((1, 7, 7, 512), np.float64)
    kernel = np.zeros((3, 3, 512, 512), np.float32)
    assert patchconv.conv_output_shape(x, kernel, padding="same") == (1, 7, 7, 512)
    # A shape held in a 1-D integer array is still a shape.
    assert patchconv.conv_output_shape(np.array([1, 8, 8, 3]), np.array([3, 3, 3, 4])) == (
        1, 6, 6, 4,
    )  # fmt: skip
    ran = patchconv.conv2d(x, kernel, padding="same", return_plan=True)[1].algorithm
    assert patchconv.explain_algorithm(x, kernel, padding="same").algorithm == ran
    by_shape = patchconv.explain_algorithm(x.shape, kernel.shape, padding="same", dtype=x.dtype)
    assert by_shape.algorithm == ran
    given = patchconv.explain_algorithm(x, kernel, padding="same", dtype=np.float32)
    assert (
        given.algorithm
        == patchconv.explain_algorithm(x.shape, kernel.shape, padding="same").algorithm
    )
    for bad in (5, None, "abcd", (1, 4, 4, 3.0), (1, 4, 4, True), [[0.5] * 500]):
        with pytest.raises(TypeError, match=r"conv_output_shape: x_shape must be a shape") as info:
            patchconv.conv_output_shape(bad, (3, 3, 3, 2))
        assert len(str(info.value)) < 200
        with pytest.raises(TypeError, match=r"explain_algorithm: kernel_shape must be a shape"):
            patchconv.explain_algorithm((1, 4, 4, 3), bad)
        with pytest.raises(TypeError, match=r"col2im: x_shape must be a shape"):
            patchconv.col2im(np.zeros((4, 27)), bad, 3)


def test_an_empty_batch_gives_an_empty_result_as_pytorch() -> None:
    """Batch 0 was refused ("x must not be empty"); PyTorch and Keras return an empty result
    and, backward, zero weight gradients. The options are still checked first."""
    import torch

    x = np.zeros((0, 3, 6, 5), np.float32)  # NCHW
    kernel = np.ones((3, 3, 3, 4), np.float32)
    options: dict = {"strides": 2, "padding": 1, "data_format": "channels_first"}
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(kernel.transpose(3, 2, 0, 1)), stride=2, padding=1
    )
    out, plan = patchconv.conv2d(x, kernel, np.ones(4), return_plan=True, **options)
    assert out.shape == tuple(expected.shape) and out.dtype == np.float64
    assert plan.algorithm in patchconv.algorithms.ALGORITHMS
    assert patchconv.conv_output_shape(x, kernel, **options) == out.shape
    grads = patchconv.conv2d_backward(np.zeros(out.shape, np.float32), x, kernel, **options)
    assert grads.grad_x.shape == x.shape
    assert not grads.grad_kernel.any() and grads.grad_kernel.shape == kernel.shape
    assert grads.grad_bias is not None and not grads.grad_bias.any()
    assert patchconv.Conv2D(4, 3)(np.zeros((0, 9, 9, 3), np.float32)).shape == (0, 7, 7, 4)
    # What plans for it plans for one image (the cost model divided by the batch).
    deep = np.zeros((3, 3, 64, 64), np.float32)
    assert patchconv.explain_algorithm((0, 8, 8, 64), deep.shape).algorithm in (
        patchconv.algorithms.ALGORITHMS
    )
    prepared = patchconv.prepare(deep, (0, 8, 8, 64))
    assert prepared(np.zeros((0, 8, 8, 64), np.float32)).shape == (0, 6, 6, 64)
    with pytest.raises(PatchconvError, match=r"conv2d_backward: algorithm must be 'auto' or"):
        patchconv.conv2d_backward(
            np.zeros(out.shape, np.float32), x, kernel, algorithm="nonsense", **options
        )
    with pytest.raises(PatchconvError, match=r"explain: x must hold at least one image"):
        patchconv.explain(x=np.zeros((0, 8, 8, 3)))
    with pytest.raises(PatchconvError, match=r"conv2d: groups \(2\) must divide x channels"):
        patchconv.conv2d(x, kernel, groups=2, data_format="channels_first")
