"""conv2d against external oracles: Keras Conv2D, PyTorch, and ONNX's own Conv test cases.

The oracles are installed by the test command (`python3 tasks.py test`), so these tests never
skip: a missing oracle is an error.
"""

from __future__ import annotations

import contextlib
import glob
import os
import warnings
from collections.abc import Iterator

import keras
import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv.interop.onnx import conv_attributes, hwio_to_oihw, run_conv
from reference import pads_for
from strategies import Case, conv_cases

ORACLE_EXAMPLES = 300


# -- Keras ------------------------------------------------------------------------------------
@st.composite
def keras_cases(draw: st.DrawFn) -> Case:
    """What Keras' Conv2D layer accepts: "valid"/"same", strides or dilation (not both)."""
    case = draw(conv_cases(dtypes=(np.float32, np.float64)))
    options = dict(case.options)
    if draw(st.booleans()):
        options["dilation_rate"] = 1
    else:
        options["strides"] = 1
    options["padding"] = draw(st.sampled_from(["valid", "same"]))
    return Case(case.x, case.kernel, case.bias, options)


@settings(max_examples=ORACLE_EXAMPLES)
@given(keras_cases())
def test_against_keras_conv2d(case: Case) -> None:
    kh, kw, _, c_out = case.kernel.shape
    layer = keras.layers.Conv2D(
        filters=c_out,
        kernel_size=(kh, kw),
        use_bias=case.bias is not None,
        dtype=str(case.x.dtype),
        **case.options,
    )
    layer.build(case.x.shape)
    layer.set_weights([case.kernel] + ([] if case.bias is None else [case.bias]))
    with torch_oracle():
        expected = keras.ops.convert_to_numpy(layer(case.x))
    ours = patchconv.conv2d(case.x, case.kernel, case.bias, **case.options)
    assert ours.shape == expected.shape
    assert_close(ours, expected, case.x.dtype)

    # The Keras-compatible layer with the same weights gives the same output.
    mine = patchconv.Conv2D(
        c_out, (kh, kw), use_bias=case.bias is not None, dtype=str(case.x.dtype), **case.options
    )
    mine.set_weights(layer.get_weights())
    assert_close(mine(case.x), expected, case.x.dtype)


def test_keras_layer_shapes_match_the_seed() -> None:
    x = np.random.default_rng(0).random((1, 4, 4, 3)).astype(np.float32)
    layer = keras.layers.Conv2D(filters=2, kernel_size=3)
    out = keras.ops.convert_to_numpy(layer(x))
    kernel, bias = layer.get_weights()
    mine = patchconv.Conv2D(filters=2, kernel_size=3)
    mine.build(x.shape)
    assert (
        [w.shape for w in mine.get_weights()] == [kernel.shape, bias.shape] == [(3, 3, 3, 2), (2,)]
    )
    assert (
        mine.compute_output_shape(x.shape)
        == tuple(layer.compute_output_shape(x.shape))
        == out.shape
    )
    mine.set_weights([kernel, bias])
    assert_close(mine(x), out, np.float32)
    assert_close(
        x[0, :3, :3, :].reshape(1, -1) @ kernel.reshape(-1, 2) + bias, out[0, 0, :1], np.float32
    )


# -- PyTorch ------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_oracle() -> Iterator[None]:
    """PyTorch (and Keras on it) as an oracle: oneDNN off, one thread.

    PyTorch 2.13.0's oneDNN conv2d on this CPU returns wrong values, some of them unwritten
    memory, for some narrow strided layers, e.g. x (3, 1, 5, 4), weight (1, 1, 1, 4), stride
    (1, 3): the output misses the sum by up to 3.2 (hypothesis found it; PyTorch's own
    non-oneDNN kernel gives the right sum).
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():  # switching oneDNN says TF32 needs an Intel GPU
            warnings.filterwarnings("ignore", message="TF32 acceleration", category=UserWarning)
            with torch.backends.mkldnn.flags(enabled=False):
                yield
    finally:
        torch.set_num_threads(saved)


def torch_conv(case: Case) -> np.ndarray:
    """PyTorch's conv2d with every padding form made explicit by F.pad (asymmetric pads too)."""
    opts = case.options
    x = case.x if opts["data_format"] == "channels_first" else case.x.transpose(0, 3, 1, 2)
    kh, kw = case.kernel.shape[:2]
    strides = np.broadcast_to(opts["strides"], 2).tolist()
    dilation = np.broadcast_to(opts["dilation_rate"], 2).tolist()
    top, bottom, left, right = pads_for(
        opts["padding"], x.shape[2], x.shape[3], kh, kw, strides, dilation
    )
    tx = F.pad(torch.from_numpy(np.ascontiguousarray(x)), (left, right, top, bottom))
    weight = torch.from_numpy(np.ascontiguousarray(hwio_to_oihw(case.kernel)))
    bias = None if case.bias is None else torch.from_numpy(case.bias)
    with torch_oracle():
        out = F.conv2d(
            tx, weight, bias, stride=strides, dilation=dilation, groups=opts["groups"]
        ).numpy()
    return out if opts["data_format"] == "channels_first" else out.transpose(0, 2, 3, 1)


@settings(max_examples=ORACLE_EXAMPLES)
@given(conv_cases(dtypes=(np.float32, np.float64)))
def test_against_pytorch(case: Case) -> None:
    assert_close(
        patchconv.conv2d(case.x, case.kernel, case.bias, **case.options),
        torch_conv(case),
        case.x.dtype,
    )


@settings(max_examples=100)
@given(conv_cases(dtypes=(np.float32, np.float64)))
def test_gradients_against_pytorch_autograd(case: Case) -> None:
    opts = case.options
    x_t = torch.from_numpy(np.ascontiguousarray(case.x)).requires_grad_(True)
    # A contiguous OIHW leaf: PyTorch's CPU conv refuses a permuted weight in backward.
    k_t = torch.from_numpy(np.ascontiguousarray(hwio_to_oihw(case.kernel))).requires_grad_(True)
    x_nchw = x_t if opts["data_format"] == "channels_first" else x_t.permute(0, 3, 1, 2)
    kh, kw = case.kernel.shape[:2]
    strides = np.broadcast_to(opts["strides"], 2).tolist()
    dilation = np.broadcast_to(opts["dilation_rate"], 2).tolist()
    top, bottom, left, right = pads_for(
        opts["padding"], x_nchw.shape[2], x_nchw.shape[3], kh, kw, strides, dilation
    )
    with torch_oracle():
        out = F.conv2d(
            F.pad(x_nchw, (left, right, top, bottom)),
            k_t,
            stride=strides,
            dilation=dilation,
            groups=opts["groups"],
        )
        if opts["data_format"] == "channels_last":
            out = out.permute(0, 2, 3, 1)
        g = np.random.default_rng(0).standard_normal(tuple(out.shape)).astype(case.x.dtype)
        out.backward(torch.from_numpy(g))
    grads = patchconv.conv2d_backward(g, case.x, case.kernel, **opts)
    assert_close(grads.grad_x, x_t.grad.numpy(), case.x.dtype, grad=True)
    assert_close(grads.grad_kernel, k_t.grad.numpy().transpose(2, 3, 1, 0), case.x.dtype, grad=True)
    axes = (0, 2, 3) if opts["data_format"] == "channels_first" else (0, 1, 2)
    assert_close(grads.grad_bias, g.sum(axis=axes), case.x.dtype, grad=True)


# -- ONNX -----------------------------------------------------------------------------------
ONNX_DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
SHIPPED = sorted(glob.glob(os.path.join(ONNX_DATA, "pytorch-converted", "test_Conv2d*")))


def test_onnx_ships_its_conv2d_cases() -> None:
    assert len(SHIPPED) >= 10, SHIPPED


@pytest.mark.parametrize("case_dir", SHIPPED, ids=os.path.basename)
def test_onnx_shipped_conv2d_cases(case_dir: str) -> None:
    model = onnx.load(os.path.join(case_dir, "model.onnx"))
    (node,) = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(model.graph.node) == 1, "a single-Conv model"
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for data_set in sorted(glob.glob(os.path.join(case_dir, "test_data_set_*"))):
        inputs = [
            onnx.numpy_helper.to_array(onnx.load_tensor(p))
            for p in sorted(glob.glob(os.path.join(data_set, "input_*.pb")))
        ]
        (expected,) = [
            onnx.numpy_helper.to_array(onnx.load_tensor(p))
            for p in sorted(glob.glob(os.path.join(data_set, "output_*.pb")))
        ]
        values = dict(zip([i.name for i in model.graph.input], inputs, strict=False)) | initializers
        args = [values[name] for name in node.input if name]
        out = run_conv(node, *args)
        assert_close(out, expected, expected.dtype)


def _onnx_node_cases() -> list:
    from onnx.backend.test.case.node import collect_testcases

    return [
        c
        for c in collect_testcases("Conv")
        if len(c.model.graph.input[0].type.tensor_type.shape.dim) == 4
    ]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_onnx_in_memory_conv_node_cases() -> None:
    cases = _onnx_node_cases()
    assert len(cases) >= 6
    for case in cases:
        (node,) = case.model.graph.node
        for inputs, outputs in case.data_sets:
            assert_close(run_conv(node, *inputs), outputs[0], outputs[0].dtype)


def _onnx_model(attrs: dict, x: np.ndarray, w: np.ndarray) -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape)),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize(("h", "k", "s"), [(4, 2, 1), (5, 4, 1), (6, 3, 2), (7, 2, 3), (8, 4, 2)])
def test_onnx_same_upper_and_lower_against_onnxruntime(
    auto_pad: str, h: int, k: int, s: int
) -> None:
    """Odd total padding: SAME_UPPER puts the extra pixel bottom/right, SAME_LOWER top/left."""
    rng = np.random.default_rng(h * 100 + k * 10 + s)
    x = rng.standard_normal((2, 3, h, h + 1)).astype(np.float32)
    w = rng.standard_normal((4, 3, k, k)).astype(np.float32)
    attrs = {"auto_pad": auto_pad, "strides": [s, s], "kernel_shape": [k, k]}
    session = onnxruntime.InferenceSession(
        _onnx_model(attrs, x, w), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(None, {"x": x, "w": w})
    ours = patchconv.conv2d(x, w.transpose(2, 3, 1, 0), **conv_attributes(attrs))
    assert_close(ours, expected, np.float32)


def test_same_upper_and_lower_really_differ_here() -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
    kernel = np.random.default_rng(1).standard_normal((4, 4, 3, 2)).astype(np.float32)
    upper = patchconv.conv2d(x, kernel, **conv_attributes({"auto_pad": "SAME_UPPER"}))
    lower = patchconv.conv2d(x, kernel, **conv_attributes({"auto_pad": "SAME_LOWER"}))
    assert np.abs(upper - lower).max() > 0.1
