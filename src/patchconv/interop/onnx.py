"""ONNX adapter: map ONNX Conv attributes and layouts onto :func:`patchconv.conv2d`.

ONNX activations are NCHW and weights OIHW ``(c_out, c_in / group, kh, kw)``; patchconv keeps
HWIO kernels, so weights are transposed at this edge and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.functional import conv2d
from patchconv.interop._common import as_path, layer_error, weights_dtype, with_dtype

__all__ = [
    "SUPPORTED_OPS",
    "OnnxGraph",
    "OnnxNode",
    "conv_attributes",
    "from_onnx",
    "hwio_to_oihw",
    "oihw_to_hwio",
    "read_onnx",
    "run_conv",
]

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


# -- whole models -------------------------------------------------------------------------------
@dataclass
class OnnxNode:
    """One graph node, read from protobuf: ``op_type``, tensor names and plain attributes."""

    op_type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


@dataclass
class OnnxGraph:
    """An ONNX model's graph as plain Python: nodes in order, initializers as arrays (Constant
    nodes, and Identity nodes of a constant, folded in), the data inputs (not initializers)
    with their shapes, and the outputs."""

    nodes: list[OnnxNode]
    initializers: dict[str, np.ndarray]
    inputs: list[tuple[str, tuple[int | None, ...]]]
    outputs: list[str]
    opset: int = 0
    producers: dict[str, OnnxNode] = field(default_factory=dict)
    # Each tensor's shape as ONNX's shape inference gives it (None for an unknown dimension);
    # tensors it cannot type are missing.
    shapes: dict[str, tuple[int | None, ...]] = field(default_factory=dict)


def read_onnx(path_or_model: Any) -> OnnxGraph:
    """Read an ONNX file (or a loaded ``ModelProto``) with the onnx package: protobuf only,
    no pickle, no onnxruntime. The model is checked with ``onnx.checker`` first."""
    import onnx
    import onnx.numpy_helper
    from google.protobuf.message import DecodeError

    func = "read_onnx"
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
        label = "the model"
    else:
        path = as_path(path_or_model, func=func)
        label = repr(path)
        try:
            model = onnx.load(path)
        except (DecodeError, ValueError, OSError, RuntimeError) as exc:
            raise PatchconvError(f"{func}: {label} is not an ONNX model ({exc})") from exc
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PatchconvError(f"{func}: {label} is not a valid ONNX model ({first})") from exc
    graph = model.graph
    if not graph.node:
        raise PatchconvError(f"{func}: {label} has no graph nodes")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.domain not in ("", "ai.onnx"):
            raise PatchconvError(
                f"{func}: node {node.name!r} is in domain {node.domain!r}; only standard ONNX "
                "ops are supported"
            )
        if node.op_type == "Constant":
            if "value" not in attrs:
                raise PatchconvError(
                    f"{func}: Constant node {node.name!r} must hold a tensor 'value'; got "
                    f"{sorted(attrs)}"
                )
            initializers[node.output[0]] = onnx.numpy_helper.to_array(attrs["value"])
            continue
        if node.op_type == "Identity" and node.input and node.input[0] in initializers:
            # A copy of a constant is that constant: torch's exporter shares equal
            # initializers this way (a fresh BatchNorm2d's zeros and ones).
            initializers[node.output[0]] = initializers[node.input[0]]
            continue
        nodes.append(OnnxNode(node.op_type, node.name, list(node.input), list(node.output), attrs))
    inputs = []
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        inputs.append(
            (value.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in dims))
        )
    out = OnnxGraph(nodes, initializers, inputs, [v.name for v in graph.output], opset)
    out.producers = {t: n for n in nodes for t in n.outputs}
    out.shapes = _inferred_shapes(model)
    return out


def _inferred_shapes(model: Any) -> dict[str, tuple[int | None, ...]]:
    """Tensor name -> shape, from ``onnx.shape_inference`` (empty where it cannot run)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help for checks, never a reason to refuse a model
        return {}
    shapes = {}
    g = inferred.graph
    for value in [*g.input, *g.value_info, *g.output]:
        t = value.type.tensor_type
        if t.HasField("shape"):
            shapes[value.name] = tuple(
                d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim
            )
    return shapes


SUPPORTED_OPS = (
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Conv",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Tanh",
)


class _Converter:
    """Walks an :class:`OnnxGraph` from its input to its output, one layer per node; a tensor
    read by two nodes opens branches that must meet again at one Add (a residual block)."""

    def __init__(self, graph: OnnxGraph, func: str) -> None:
        self.g = graph
        self.func = func
        self.dtype = weights_dtype(graph.initializers.values())
        self.consumers: dict[str, list[OnnxNode]] = {}
        for node in graph.nodes:
            for t in node.inputs:
                if t and t not in graph.initializers:
                    self.consumers.setdefault(t, []).append(node)
        self.skip: set[int] = set()

    # -- helpers ------------------------------------------------------------------------------
    def where(self, node: OnnxNode) -> str:
        return f"node {node.name or node.outputs[0]!r} ({node.op_type})"

    def fail(self, node: OnnxNode, message: str) -> PatchconvError:
        return PatchconvError(f"{self.func}: {self.where(node)}: {message}")

    def const(self, node: OnnxNode, index: int, *, required: bool = True) -> np.ndarray | None:
        if index >= len(node.inputs) or not node.inputs[index]:
            if required:
                raise self.fail(node, f"input {index} is missing")
            return None
        name = node.inputs[index]
        if name not in self.g.initializers:
            raise self.fail(
                node,
                f"input {index} ({name!r}) must be a constant (an initializer); it is "
                "computed in the graph",
            )
        return np.asarray(self.g.initializers[name])

    def row_bias(self, node: OnnxNode, c: np.ndarray, width: int | None = None) -> np.ndarray:
        """A constant added to every row of a (batch, width) product -> its (width,) bias; one
        that differs from row to row (shape (k, 1), (k, width)) is refused."""
        if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            raise self.fail(
                node,
                f"the bias must be the same for every row (shape (n,), (1, n) or a scalar); got "
                f"shape {c.shape}",
            )
        flat = c.reshape(-1)
        if width is not None and flat.size not in (1, width):
            raise self.fail(node, f"the bias must have {width} values; got shape {c.shape}")
        return flat

    def is_merge(self, node: OnnxNode) -> bool:
        return node.op_type == "Add" and all(t not in self.g.initializers for t in node.inputs[:2])

    def check_attrs(self, node: OnnxNode, allowed: dict[str, Any]) -> None:
        for key, value in node.attrs.items():
            if key not in allowed:
                raise self.fail(node, f"attribute {key!r} is not supported")
            ok = allowed[key]
            if ok is not None and value not in ok:
                raise self.fail(node, f"attribute {key}={value!r} is not supported (only {ok})")

    # -- walking ------------------------------------------------------------------------------
    def walk(
        self, tensor: str, first: OnnxNode | None = None
    ) -> tuple[list[Any], str, OnnxNode | None]:
        """Layers from ``tensor`` (through ``first`` if given) up to the graph output or the
        Add that merges this branch; returns (layers, last tensor, merging Add or None)."""
        from patchconv.nn.branches import AddBranches

        layers: list[Any] = []
        nxt = [first] if first is not None else None
        while True:
            cons = (
                nxt
                if nxt is not None
                else [n for n in self.consumers.get(tensor, []) if id(n) not in self.skip]
            )
            nxt = None
            if not cons:
                if tensor not in self.g.outputs:
                    raise PatchconvError(f"{self.func}: tensor {tensor!r} leads nowhere")
                return layers, tensor, None
            if len(cons) == 1 and self.is_merge(cons[0]):
                return layers, tensor, cons[0]
            if len(cons) == 1:
                node = cons[0]
                new, tensor = layer_error(self.func, self.where(node), partial(self.convert, node))
                layers += new
                continue
            if len(cons) != 2:
                raise PatchconvError(
                    f"{self.func}: tensor {tensor!r} feeds {len(cons)} nodes "
                    f"{[n.op_type for n in cons]}; only two-way residual branches are supported"
                )
            branches: list[list[Any]] = []
            adds: list[OnnxNode | None] = []
            for c in cons:
                if self.is_merge(c):
                    branches.append([])
                    adds.append(c)
                    continue
                sub, _, add = self.walk(tensor, c)
                branches.append(sub)
                adds.append(add)
            if adds[0] is None or adds[0] is not adds[1]:
                raise PatchconvError(
                    f"{self.func}: the two branches from tensor {tensor!r} do not meet at one "
                    "Add; only residual blocks (two branches summed) are supported"
                )
            merge = adds[0]
            self.check_attrs(merge, {})
            layers.append(AddBranches(branches, name=merge.name or None))
            tensor = merge.outputs[0]

    # -- one node -----------------------------------------------------------------------------
    def convert(self, node: OnnxNode) -> tuple[list[Any], str]:
        from patchconv import nn

        op = node.op_type
        out = node.outputs[0]
        cf = "channels_first"
        a = node.attrs
        if op == "Conv":
            w = self.const(node, 1)
            assert w is not None
            b = self.const(node, 2, required=False)
            try:
                options = conv_attributes(a)
            except PatchconvError as exc:
                raise self.fail(node, str(exc)) from exc
            layer = nn.Conv2D(
                int(w.shape[0]),
                (int(w.shape[2]), int(w.shape[3])),
                use_bias=b is not None,
                name=node.name or None,
                **options,
            )
            with_dtype(layer, self.dtype)
            layer.set_weights([oihw_to_hwio(w)] + ([] if b is None else [b]))
            return [layer], out
        if op in ("Gemm", "MatMul"):
            w = self.const(node, 1)
            assert w is not None
            if w.ndim != 2:
                raise self.fail(node, f"the weight must be 2-D; got shape {w.shape}")
            if op == "Gemm":
                self.check_attrs(
                    node, {"alpha": None, "beta": None, "transA": [0], "transB": [0, 1]}
                )
                kernel = w.T if a.get("transB", 0) else w
                kernel = kernel * np.asarray(a.get("alpha", 1.0), dtype=kernel.dtype)
                c = self.const(node, 2, required=False)
                bias = (
                    None
                    if c is None
                    else self.row_bias(node, c, int(kernel.shape[1]))
                    * np.asarray(a.get("beta", 1.0), dtype=c.dtype)
                )
            else:
                kernel, bias = w, None
                follow = self.consumers.get(out, [])
                if len(follow) == 1 and follow[0].op_type == "Add" and not self.is_merge(follow[0]):
                    add = follow[0]
                    k = 1 if add.inputs[0] == out else 0
                    c = self.const(add, k)
                    assert c is not None
                    bias = self.row_bias(add, c, int(kernel.shape[1]))
                    self.skip.add(id(add))
                    out = add.outputs[0]
            if bias is not None:
                bias = np.broadcast_to(bias, kernel.shape[1:])
            dense = nn.Dense(
                int(kernel.shape[1]), use_bias=bias is not None, name=node.name or None
            )
            with_dtype(dense, self.dtype)
            dense.set_weights(
                [np.ascontiguousarray(kernel)] + ([] if bias is None else [np.array(bias)])
            )
            return [dense], out
        if op == "Add":
            if self.is_merge(node):
                raise self.fail(
                    node,
                    "an Add of two computed tensors is supported only where it closes a residual "
                    "block (two branches from one tensor)",
                )
            raise self.fail(
                node, "an Add of a constant that does not follow a MatMul is not supported"
            )
        if op == "BatchNormalization":
            self.check_attrs(
                node, {"epsilon": None, "momentum": None, "training_mode": [0], "spatial": [1]}
            )
            if len([t for t in node.outputs if t]) > 1:
                raise self.fail(
                    node,
                    "training mode (batch statistics, running statistics as outputs) is not "
                    "supported; export the model in eval mode",
                )
            scale, bias, mean, var = (self.const(node, i) for i in range(1, 5))
            bn = nn.BatchNormalization(
                axis=1,
                momentum=float(a.get("momentum", 0.9)),
                epsilon=float(a.get("epsilon", 1e-5)),
                name=node.name or None,
            )
            with_dtype(bn, self.dtype)
            bn.set_weights([scale, bias, mean, var])
            return [bn], out
        if op in ("MaxPool", "AveragePool"):
            allowed: dict[str, Any] = {
                "kernel_shape": None, "strides": None, "pads": None, "auto_pad": None,
                "ceil_mode": [0], "dilations": [[1, 1]], "storage_order": [0],
                "count_include_pad": [0, 1],
            }  # fmt: skip
            self.check_attrs(node, allowed)
            if len(node.outputs) > 1 and node.outputs[1]:
                raise self.fail(node, "the Indices output is not supported")
            shape = a.get("kernel_shape", [])
            if len(shape) != 2:
                raise self.fail(node, f"only 2-D pooling is supported; got kernel_shape {shape}")
            pool = (int(shape[0]), int(shape[1]))
            given = a.get("strides", (1, 1))  # ONNX's default stride is 1, not the pool size
            strides = (int(given[0]), int(given[1]))
            options = conv_attributes(
                {k: a[k] for k in ("pads", "auto_pad") if k in a} | {"kernel_shape": shape}
            )
            if op == "MaxPool":
                return [
                    nn.MaxPool2D(pool, strides, options["padding"], cf, name=node.name or None)
                ], out
            include = bool(a.get("count_include_pad", 0))
            return [
                nn.AveragePool2D(
                    pool, strides, options["padding"], cf, include, name=node.name or None
                )
            ], out
        if op == "GlobalAveragePool":
            return [nn.GlobalAveragePooling2D(cf, keepdims=True, name=node.name or None)], out
        if op == "Flatten":
            self.check_attrs(node, {"axis": [1]})
            return [nn.Flatten(cf, name=node.name or None)], out
        if op == "Reshape":
            shape = self.const(node, 1)
            assert shape is not None
            target = shape.tolist()
            given = self.g.shapes.get(node.inputs[0])
            dims = [v for v in given[1:] if v is not None] if given is not None else []
            features = (
                math.prod(dims) if given is not None and len(dims) == len(given) - 1 else None
            )
            # A flatten keeps the batch: (0, -1) (0 copies it), (n, -1) where the graph fixes
            # the batch at n (an export traced at batch n), or (-1, k) where k is every feature
            # of one sample.
            batch = given[0] if given else None
            if not (
                target == [0, -1]
                or (len(target) == 2 and target[1] == -1 and bool(batch) and target[0] == batch)
                or (len(target) == 2 and target[0] == -1 and target[1] == features)
            ):
                raise self.fail(
                    node,
                    "only a reshape to (batch, -1) (a flatten) is supported; got shape "
                    f"{target} for an input of shape {given}",
                )
            return [nn.Flatten(cf, name=node.name or None)], out
        if op == "Relu":
            return [nn.ReLU(name=node.name or None)], out
        if op == "LeakyRelu":
            return [nn.LeakyReLU(float(a.get("alpha", 0.01)), name=node.name or None)], out
        if op == "Sigmoid":
            return [nn.Sigmoid(name=node.name or None)], out
        if op == "Tanh":
            return [nn.Tanh(name=node.name or None)], out
        if op == "Softmax":
            axis = int(a.get("axis", -1 if self.g.opset >= 13 else 1))
            if self.g.opset >= 13:
                return [nn.Softmax(axis, name=node.name or None)], out
            # Before opset 13 the input is flattened from axis on and normalised as one row.
            given = self.g.shapes.get(node.inputs[0])
            if given is None:
                raise self.fail(
                    node,
                    f"Softmax before opset 13 (here {self.g.opset}) needs its input's rank, "
                    "which shape inference could not give",
                )
            rank = len(given)
            first = axis + rank if axis < 0 else axis
            axes = list(range(first, rank))
            return [nn.Softmax(axes[0] if len(axes) == 1 else axes, name=node.name or None)], out
        if op == "Clip":
            lo = a.get("min") if "min" in a else self.const(node, 1, required=False)
            hi = a.get("max") if "max" in a else self.const(node, 2, required=False)
            if lo is None or float(lo) != 0.0:
                raise self.fail(
                    node, f"only Clip(min=0, max=m) (ReLU6 and kin) is supported; got min {lo}"
                )
            return [
                nn.ReLU(max_value=None if hi is None else float(hi), name=node.name or None)
            ], out
        if op == "Dropout":
            training = self.const(node, 2, required=False)
            if (training is not None and bool(training)) or a.get("is_test", 1) == 0:
                raise self.fail(
                    node, "Dropout in training mode is not supported; export in eval mode"
                )
            return [], out
        if op == "Identity":
            return [], out
        raise self.fail(node, f"op {op!r} is not supported; supported: {list(SUPPORTED_OPS)}")


def from_onnx(path_or_model: Any) -> Any:
    """An ONNX CNN as a :class:`patchconv.nn.Sequential` that takes NCHW input, as the ONNX
    model does, and returns its output.

    Supported: Conv, Gemm, MatMul (+ Add of a bias), Relu, LeakyRelu, Clip(0, m), Sigmoid,
    Tanh, Softmax, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape to (batch, -1),
    BatchNormalization (inference), Dropout and Identity (inference: dropped), and residual
    blocks (a tensor read by two branches summed by an Add, as
    :class:`~patchconv.nn.AddBranches`). Anything else raises PatchconvError
    naming the node and op.
    """
    from patchconv import nn

    func = "from_onnx"
    graph = read_onnx(path_or_model)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise PatchconvError(
            f"{func}: only models with one input and one output are supported; got inputs "
            f"{[n for n, _ in graph.inputs]}, outputs {graph.outputs}"
        )
    name, shape = graph.inputs[0]
    if len(shape) != 4:
        raise PatchconvError(f"{func}: input {name!r} must be 4-D NCHW; got shape {shape}")
    converter = _Converter(graph, func)
    layers, last, merge = converter.walk(name)
    if merge is not None or last != graph.outputs[0]:
        raise PatchconvError(f"{func}: the graph does not end at its output {graph.outputs[0]!r}")
    # The weightless layers (and branches) in the weights' dtype too.
    model = nn.Sequential([with_dtype(layer, converter.dtype) for layer in layers], name="onnx")
    if all(v is not None for v in shape[1:]):
        try:
            model.build((1, *(int(v or 0) for v in shape[1:])))
        except PatchconvError as exc:
            raise PatchconvError(
                f"{func}: the layers read from the graph do not fit its input {name!r} of shape "
                f"{shape} (a broadcasting op?): {exc}"
            ) from exc
    return model
