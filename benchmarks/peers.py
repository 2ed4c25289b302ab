"""The peers, each behind one small adapter: build once per layer, then call.

Every adapter receives the same NHWC float32 input and HWIO kernel and converts them once,
outside the timed call, to its own preferred layout. "same" padding is TensorFlow's rule (the
odd pixel at the bottom/right); PyTorch only pads symmetrically, so where the rule is
asymmetric (stride 2) its timed call includes an explicit ``F.pad``, as a user would write.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np
from benchmarks.layers import Layer

import patchconv

__all__ = ["BACKWARD_PEERS", "FORWARD_PEERS", "available", "backward_fn", "forward_fn"]

Call = Callable[[], Any]

FORWARD_PEERS = (
    "patchconv",
    "torch_nchw",
    "torch_cl",
    "onnxruntime",
    "numpy_im2col",
    "jax",
    "tensorflow",
)
BACKWARD_PEERS = ("patchconv", "torch_nchw", "torch_cl", "numpy_im2col")
_MODULES = {
    "torch_nchw": "torch",
    "torch_cl": "torch",
    "onnxruntime": "onnxruntime",
    "jax": "jax",
    "tensorflow": "tensorflow",
}


def available(peers: tuple[str, ...]) -> list[str]:
    """The peers whose package is importable here."""
    return [p for p in peers if p not in _MODULES or importlib.util.find_spec(_MODULES[p])]


def _pads(layer: Layer) -> tuple[tuple[int, int], tuple[int, int]]:
    spec = layer.spec()
    return spec.pads


def _torch_setup(layer: Layer, x: np.ndarray, kernel: np.ndarray, channels_last: bool) -> Any:
    import torch

    torch.set_num_threads(patchconv.algorithms._runtime.n_workers())
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
    wt = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous(memory_format=fmt)
    (pt, pb), (pl, pr) = _pads(layer)
    symmetric = pt == pb and pl == pr
    return torch, xt, wt, (pt, pl) if symmetric else None, (pl, pr, pt, pb)


def _torch_forward(layer: Layer, x: np.ndarray, kernel: np.ndarray, channels_last: bool) -> Call:
    torch, xt, wt, pad, full = _torch_setup(layer, x, kernel, channels_last)
    conv = torch.nn.functional.conv2d
    s, g = layer.stride, layer.groups

    if pad is not None:

        def call() -> Any:
            with torch.no_grad():
                return conv(xt, wt, stride=s, padding=pad, groups=g)

    else:

        def call() -> Any:
            with torch.no_grad():
                return conv(torch.nn.functional.pad(xt, full), wt, stride=s, groups=g)

    return call


def _onnx_forward(layer: Layer, x: np.ndarray, kernel: np.ndarray) -> Call:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    spec = layer.spec()
    (pt, pb), (pl, pr) = spec.pads
    weight = numpy_helper.from_array(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), "W")
    node = helper.make_node(
        "Conv",
        ["X", "W"],
        ["Y"],
        strides=[layer.stride] * 2,
        pads=[pt, pl, pb, pr],
        group=layer.groups,
        kernel_shape=[layer.k] * 2,
    )
    graph = helper.make_graph(
        [node],
        "conv",
        [
            helper.make_tensor_value_info(
                "X", TensorProto.FLOAT, [spec.n, spec.c_in, spec.h, spec.w]
            )
        ],
        [
            helper.make_tensor_value_info(
                "Y", TensorProto.FLOAT, [spec.n, spec.c_out, spec.oh, spec.ow]
            )
        ],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = patchconv.algorithms._runtime.n_workers()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    xn = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return lambda: session.run(None, {"X": xn})[0]


def numpy_im2col(x: np.ndarray, kernel: np.ndarray, layer: Layer) -> np.ndarray:
    """The textbook NumPy version: pad, sliding_window_view, copy to a patch matrix, matmul."""
    spec = layer.spec()
    (pt, pb), (pl, pr) = spec.pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if pt + pb + pl + pr else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (layer.k, layer.k), axis=(1, 2))
    win = win[:, :: layer.stride, :: layer.stride]  # (n, oh, ow, c_in, kh, kw)
    g, cg, cog = layer.groups, layer.c_in // layer.groups, layer.c_out // layer.groups
    n, oh, ow = win.shape[:3]
    if g == 1:
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)  # copies
        return (cols @ kernel.reshape(-1, layer.c_out)).reshape(n, oh, ow, layer.c_out)
    win = win.reshape(n, oh, ow, g, cg, layer.k, layer.k).transpose(3, 0, 1, 2, 5, 6, 4)
    gcols = win.reshape(g, n * oh * ow, -1)  # (G, P, K/G), copies
    mats = kernel.reshape(-1, g, cog).transpose(1, 0, 2)  # (G, K/G, c_out/G)
    return np.matmul(gcols, mats).transpose(1, 0, 2).reshape(n, oh, ow, layer.c_out)


def _jax_forward(layer: Layer, x: np.ndarray, kernel: np.ndarray) -> Call:
    import jax

    spec = layer.spec()
    xj, kj = jax.numpy.asarray(x), jax.numpy.asarray(kernel)
    fn = jax.jit(
        lambda a, b: jax.lax.conv_general_dilated(
            a,
            b,
            (layer.stride,) * 2,
            list(spec.pads),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=layer.groups,
        )
    )
    return lambda: fn(xj, kj).block_until_ready()


def _tf_forward(layer: Layer, x: np.ndarray, kernel: np.ndarray) -> Call:
    import tensorflow as tf

    xt, kt = tf.constant(x), tf.constant(kernel)
    if layer.groups == layer.c_in and layer.groups > 1:
        kd = tf.constant(kernel.reshape(layer.k, layer.k, layer.c_in, -1))
        return lambda: tf.nn.depthwise_conv2d(
            xt, kd, (1, layer.stride, layer.stride, 1), "SAME"
        ).numpy()
    return lambda: tf.nn.conv2d(xt, kt, layer.stride, layer.padding.upper()).numpy()


def forward_fn(peer: str, layer: Layer, x: np.ndarray, kernel: np.ndarray) -> Call:
    """A no-argument forward call of ``peer`` on this layer's data."""
    if peer == "patchconv":
        opts = layer.options
        return lambda: patchconv.conv2d(x, kernel, **opts)
    if peer == "torch_nchw":
        return _torch_forward(layer, x, kernel, channels_last=False)
    if peer == "torch_cl":
        return _torch_forward(layer, x, kernel, channels_last=True)
    if peer == "onnxruntime":
        return _onnx_forward(layer, x, kernel)
    if peer == "numpy_im2col":
        return lambda: numpy_im2col(x, kernel, layer)
    if peer == "jax":
        return _jax_forward(layer, x, kernel)
    if peer == "tensorflow":
        return _tf_forward(layer, x, kernel)
    raise ValueError(f"unknown peer {peer!r}")


def backward_fn(peer: str, layer: Layer, x: np.ndarray, kernel: np.ndarray) -> Call:
    """Forward plus the gradients of input and kernel for an upstream gradient of ones."""
    if peer == "patchconv":
        opts = layer.options

        def call() -> Any:
            out = patchconv.conv2d(x, kernel, **opts)
            return patchconv.conv2d_backward(np.ones_like(out), x, kernel, **opts)

        return call
    if peer == "numpy_im2col":
        return _numpy_backward(layer, x, kernel)
    torch, xt, wt, pad, full = _torch_setup(layer, x, kernel, peer == "torch_cl")
    xt.requires_grad_(True)
    wt.requires_grad_(True)
    conv = torch.nn.functional.conv2d

    def tcall() -> Any:
        xt.grad = wt.grad = None
        xin = xt if pad is not None else torch.nn.functional.pad(xt, full)
        out = conv(xin, wt, stride=layer.stride, padding=pad or 0, groups=layer.groups)
        out.backward(torch.ones_like(out))
        return xt.grad, wt.grad

    return tcall


def _numpy_backward(layer: Layer, x: np.ndarray, kernel: np.ndarray) -> Call:
    """Naive NumPy training step: im2col forward, patches^T @ g, and a col2im by k*k adds."""
    spec = layer.spec()
    (pt, pb), (pl, pr) = spec.pads
    k, s = layer.k, layer.stride

    def call() -> Any:
        xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s]
        n, oh, ow = win.shape[:3]
        cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(n * oh * ow, -1)
        out = cols @ kernel.reshape(-1, layer.c_out)
        g = np.ones_like(out)
        grad_k = (cols.T @ g).reshape(kernel.shape)
        dcols = (g @ kernel.reshape(-1, layer.c_out).T).reshape(n, oh, ow, k, k, -1)
        gxp = np.zeros_like(xp)
        for i in range(k):
            for j in range(k):
                gxp[:, i : i + (oh - 1) * s + 1 : s, j : j + (ow - 1) * s + 1 : s] += dcols[
                    :, :, :, i, j
                ]
        return gxp[:, pt : pt + spec.h, pl : pl + spec.w], grad_k

    return call
