"""conv2d(padding_mode=...): PyTorch's "zeros", "reflect", "replicate" and "circular" padding.

The non-zero modes are np.pad's "reflect", "edge" and "wrap" applied before a padding-0
convolution; their backward folds the gradient of every border pixel back onto the input pixel
it copies. PyTorch (forward and autograd) is the oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv import PatchconvError
from patchconv.interop.onnx import hwio_to_oihw
from reference import pads_for
from strategies import Case, conv_cases

MODES = ["zeros", "reflect", "replicate", "circular"]
NP_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _nchw_pads(case: Case) -> tuple[tuple[int, ...], tuple[int, int, int, int]]:
    opts = case.options
    shape = (
        case.x.shape
        if opts["data_format"] == "channels_first"
        else case.x.transpose(0, 3, 1, 2).shape
    )
    kh, kw = case.kernel.shape[:2]
    strides = np.broadcast_to(opts["strides"], 2).tolist()
    dilation = np.broadcast_to(opts["dilation_rate"], 2).tolist()
    return shape, pads_for(opts["padding"], shape[2], shape[3], kh, kw, strides, dilation)


@settings(max_examples=80)
@given(conv_cases(dtypes=(np.float32, np.float64)), st.sampled_from(MODES))
def test_forward_and_gradients_against_pytorch_autograd(case: Case, mode: str) -> None:
    opts = case.options
    shape, (top, bottom, left, right) = _nchw_pads(case)
    h, w = shape[2], shape[3]
    # PyTorch's own rules, which patchconv checks too (tested below).
    assume(mode != "reflect" or (max(top, bottom) < h and max(left, right) < w))
    assume(mode != "circular" or (max(top, bottom) <= h and max(left, right) <= w))
    x_t = torch.from_numpy(np.ascontiguousarray(case.x)).requires_grad_(True)
    k_t = torch.from_numpy(np.ascontiguousarray(hwio_to_oihw(case.kernel))).requires_grad_(True)
    x_nchw = x_t if opts["data_format"] == "channels_first" else x_t.permute(0, 3, 1, 2)
    pad_args = {"mode": "constant"} if mode == "zeros" else {"mode": mode}
    out = F.conv2d(
        F.pad(x_nchw, (left, right, top, bottom), **pad_args),
        k_t,
        None if case.bias is None else torch.from_numpy(case.bias),
        stride=np.broadcast_to(opts["strides"], 2).tolist(),
        dilation=np.broadcast_to(opts["dilation_rate"], 2).tolist(),
        groups=opts["groups"],
    )
    if opts["data_format"] == "channels_last":
        out = out.permute(0, 2, 3, 1)
    ours = patchconv.conv2d(case.x, case.kernel, case.bias, padding_mode=mode, **opts)
    assert_close(ours, out.detach().numpy(), case.x.dtype)
    g = np.random.default_rng(0).standard_normal(tuple(out.shape)).astype(case.x.dtype)
    out.backward(torch.from_numpy(g))
    grads = patchconv.conv2d_backward(g, case.x, case.kernel, padding_mode=mode, **opts)
    assert_close(grads.grad_x, x_t.grad.numpy(), case.x.dtype, grad=True)
    assert_close(grads.grad_kernel, k_t.grad.numpy().transpose(2, 3, 1, 0), case.x.dtype, grad=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("padding", "stride", "dilation", "groups"),
    [(1, 1, 1, 1), ((2, 1), 2, 1, 2), (2, 1, 2, 1), ("same", 1, 1, 4), ((1, 3), (2, 1), 1, 1)],
)
def test_against_torch_nn_conv2d_with_padding_mode(
    mode: str, padding: object, stride: object, dilation: int, groups: int
) -> None:
    """torch.nn.Conv2d(padding_mode=...) itself, weights copied, input and weight gradients."""
    rng = np.random.default_rng(7)
    conv = torch.nn.Conv2d(
        4, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=mode,
    ).double()  # fmt: skip
    x = rng.standard_normal((2, 4, 6, 7))
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = conv(x_t)
    g = rng.standard_normal(tuple(out.shape))
    out.backward(torch.from_numpy(g))
    pads = padding if isinstance(padding, str) else np.broadcast_to(padding, 2).tolist()
    if isinstance(pads, list):
        pads = ((pads[0], pads[0]), (pads[1], pads[1]))  # PyTorch pads symmetrically
    options = {
        "strides": stride,
        "padding": pads,
        "dilation_rate": dilation,
        "groups": groups,
        "data_format": "channels_first",
        "padding_mode": mode,
    }
    kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    bias = conv.bias.detach().numpy()
    assert_close(patchconv.conv2d(x, kernel, bias, **options), out.detach().numpy(), np.float64)
    grads = patchconv.conv2d_backward(g, x, kernel, **options)
    assert_close(grads.grad_x, x_t.grad.numpy(), np.float64, grad=True)
    assert_close(
        grads.grad_kernel, conv.weight.grad.numpy().transpose(2, 3, 1, 0), np.float64, grad=True
    )
    assert_close(grads.grad_bias, conv.bias.grad.numpy(), np.float64, grad=True)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_modes_are_np_pad_then_valid(mode: str) -> None:
    """Without any framework: the padded modes equal np.pad followed by padding 0."""
    x = (10.0 * np.arange(5)[:, None] + np.arange(6)[None, :])[
        None, :, :, None
    ]  # x[i, j] = 10i + j
    kernel = np.random.default_rng(0).standard_normal((3, 3, 1, 2))
    pads = ((2, 1), (1, 2))
    padded = np.pad(x, ((0, 0), *pads, (0, 0)), mode=NP_MODES[mode])
    assert_close(
        patchconv.conv2d(x, kernel, padding=pads, padding_mode=mode),
        patchconv.conv2d(padded, kernel),
        np.float64,
    )
    # The border really differs from zero padding here.
    zeros = patchconv.conv2d(x, kernel, padding=pads)
    assert np.abs(zeros - patchconv.conv2d(x, kernel, padding=pads, padding_mode=mode)).max() > 1


@settings(max_examples=40)
@given(conv_cases(dtypes=(np.float64,)), st.sampled_from(["reflect", "replicate", "circular"]))
def test_adjoint_identity(case: Case, mode: str) -> None:
    """<conv(x), g> == <x, grad_x> (no bias): the border fold is the padding's exact adjoint."""
    shape, (top, bottom, left, right) = _nchw_pads(case)
    assume(max(top, bottom) < shape[2] and max(left, right) < shape[3])
    out = patchconv.conv2d(case.x, case.kernel, padding_mode=mode, **case.options)
    g = np.random.default_rng(1).standard_normal(out.shape)
    grads = patchconv.conv2d_backward(g, case.x, case.kernel, padding_mode=mode, **case.options)
    lhs, rhs = float((out * g).sum()), float((case.x * grads.grad_x).sum())
    scale = float(np.abs(out * g).sum()) + 1.0
    assert abs(lhs - rhs) <= 1e-10 * scale


def test_zeros_is_the_default_and_case_is_ignored() -> None:
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal((1, 5, 5, 2)), rng.standard_normal((3, 3, 2, 3))
    default = patchconv.conv2d(x, kernel, padding="same")
    np.testing.assert_array_equal(
        patchconv.conv2d(x, kernel, padding="same", padding_mode="zeros"), default
    )
    np.testing.assert_array_equal(
        patchconv.conv2d(x, kernel, padding="same", padding_mode="Reflect"),
        patchconv.conv2d(x, kernel, padding="same", padding_mode="reflect"),
    )
    assert patchconv.conv_output_shape(
        x.shape, kernel.shape, padding=2, padding_mode="circular"
    ) == (1, 7, 7, 3)


def test_conv2d_layer_padding_mode_and_config() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    layer = patchconv.Conv2D(4, 3, padding=1, padding_mode="replicate", seed=0)
    out = layer(x)
    kernel, bias = layer.get_weights()
    assert_close(
        out, patchconv.conv2d(x, kernel, bias, padding=1, padding_mode="replicate"), np.float32
    )
    config = layer.get_config()
    assert config["padding_mode"] == "replicate"
    again = patchconv.Conv2D.from_config(config)
    again.set_weights([kernel, bias])
    assert_close(again(x), out, np.float32)
    assert "padding_mode='replicate'" in repr(layer)
    # A zeros layer's config stays Keras' own (Keras has no padding_mode).
    assert "padding_mode" not in patchconv.Conv2D(4, 3).get_config()


X = np.zeros((1, 3, 4, 2))
K = np.zeros((3, 3, 2, 1))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"padding_mode": "mirror"},
            PatchconvError,
            r"conv2d: padding_mode must be one of \['zeros', 'reflect', 'replicate', 'circular'\]; got 'mirror'",
        ),
        ({"padding_mode": None}, TypeError, r"conv2d: padding_mode must be a string, .* got None"),
        (
            {"padding": ((3, 0), (0, 0)), "padding_mode": "reflect"},
            PatchconvError,
            r"conv2d: padding_mode 'reflect' needs each pad smaller than the input height \(3\); got padding \(\(3, 0\), \(0, 0\)\) -> \(3, 0\) on the height",
        ),
        (
            {"padding": ((0, 0), (0, 5)), "padding_mode": "circular"},
            PatchconvError,
            r"conv2d: padding_mode 'circular' needs each pad at most the input width \(4\); got padding .* -> \(0, 5\) on the width",
        ),
    ],
)
def test_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        patchconv.conv2d(X, K, **kwargs)
    backward_match = match.replace("conv2d:", "conv2d_backward:")
    with pytest.raises(error, match=backward_match):
        patchconv.conv2d_backward(np.zeros((1, 1, 2, 1)), X, K, **kwargs)


def test_edge_cases_that_torch_allows() -> None:
    """reflect with pad = size - 1 and circular with pad = size are PyTorch's limits."""
    x = np.arange(12.0).reshape(1, 1, 3, 4)
    kernel = np.ones((1, 1, 1, 1))
    for mode, pads in (("reflect", ((2, 2), (3, 3))), ("circular", ((3, 3), (4, 4)))):
        ours = patchconv.conv2d(
            x, kernel, padding=pads, padding_mode=mode, data_format="channels_first"
        )
        expected = F.pad(
            torch.from_numpy(x), (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), mode=mode
        )
        np.testing.assert_array_equal(ours, expected.numpy())


def test_layer_rejects_a_bad_mode_at_construction() -> None:
    with pytest.raises(PatchconvError, match=r"Conv2D: padding_mode must be one of .* got 'wrap'"):
        patchconv.Conv2D(2, 3, padding_mode="wrap")


def test_nn_conv2d_padding_mode_trains_like_torch() -> None:
    """patchconv.nn.Conv2D(padding_mode=...): forward, input and weight gradients vs PyTorch,
    and the config round trip through Sequential."""
    from patchconv import nn

    rng = np.random.default_rng(3)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular").double()
    layer = nn.Conv2D(
        4, 3, strides=2, padding=1, data_format="channels_first", padding_mode="circular",
        dtype="float64",
    )  # fmt: skip
    layer.set_weights(
        [conv.weight.detach().numpy().transpose(2, 3, 1, 0), conv.bias.detach().numpy()]
    )
    x = rng.standard_normal((2, 3, 6, 6))
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = conv(x_t)
    g = rng.standard_normal(tuple(out.shape))
    out.backward(torch.from_numpy(g))
    assert_close(layer.forward(x, training=True), out.detach().numpy(), np.float64)
    assert_close(layer.backward(g), x_t.grad.numpy(), np.float64, grad=True)
    grad_kernel, grad_bias = layer.grads()
    assert_close(grad_kernel, conv.weight.grad.numpy().transpose(2, 3, 1, 0), np.float64, grad=True)
    assert_close(grad_bias, conv.bias.grad.numpy(), np.float64, grad=True)
    again = nn.Sequential.from_config(nn.Sequential([layer]).get_config()).layers[0]
    assert again.padding_mode == "circular"
