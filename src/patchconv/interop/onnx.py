"""ONNX adapter: map ONNX Conv attributes and layouts onto :func:`patchconv.conv2d`.

ONNX activations are NCHW and weights OIHW ``(c_out, c_in / group, kh, kw)``; patchconv keeps
HWIO kernels, so weights are transposed at this edge and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.functional import conv2d

__all__ = ["conv_attributes", "hwio_to_oihw", "oihw_to_hwio", "run_conv"]

_AUTO_PAD = {"SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}


def oihw_to_hwio(weight: np.ndarray) -> np.ndarray:
    """ONNX/PyTorch ``(c_out, c_in/g, kh, kw)`` -> Keras/patchconv ``(kh, kw, c_in/g, c_out)``."""
    return np.transpose(weight, (2, 3, 1, 0))


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """The inverse of :func:`oihw_to_hwio`."""
    return np.transpose(kernel, (3, 2, 0, 1))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def conv_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """ONNX Conv attributes (a plain dict) -> conv2d keyword arguments for NCHW input.

    ``pads`` is ONNX's ``[top, left, bottom, right]``; ``auto_pad`` NOTSET defers to it.
    """
    for key in attrs:
        if key not in ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"):
            raise PatchconvError(f"onnx Conv: attribute {key!r} is not supported")
    dims = len(attrs.get("kernel_shape", [0, 0]))
    if dims != 2:
        raise PatchconvError(
            f"onnx Conv: only 2-D convolutions are supported; got {dims}-D kernel_shape"
        )
    auto_pad = _text(attrs.get("auto_pad", "NOTSET"))
    padding: Any
    if auto_pad in _AUTO_PAD:
        padding = _AUTO_PAD[auto_pad]
    elif auto_pad == "NOTSET":
        top, left, bottom, right = (int(p) for p in attrs.get("pads", [0, 0, 0, 0]))
        padding = ((top, bottom), (left, right))
    else:
        raise PatchconvError(
            f"onnx Conv: auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID; got {auto_pad!r}"
        )
    return {
        "strides": tuple(int(s) for s in attrs.get("strides", (1, 1))),
        "dilation_rate": tuple(int(d) for d in attrs.get("dilations", (1, 1))),
        "groups": int(attrs.get("group", 1)),
        "padding": padding,
        "data_format": "channels_first",
    }


def run_conv(
    node: Any, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """Run one ONNX Conv ``NodeProto`` on NCHW ``x`` with OIHW ``weight`` through conv2d."""
    import onnx.helper

    if node.op_type != "Conv":
        raise PatchconvError(f"onnx: expected a Conv node; got {node.op_type!r}")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return conv2d(x, oihw_to_hwio(weight), bias, **conv_attributes(attrs))
