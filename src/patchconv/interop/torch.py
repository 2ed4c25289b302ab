"""PyTorch adapter: state_dicts (safetensors, or ``.pt`` with ``weights_only=True``) plus an
architecture description, or a live ``nn.Sequential`` -> :class:`patchconv.nn.Sequential`.

The architecture is a list of dicts, one per module, with PyTorch's class name under
``"type"``, its state_dict prefix under ``"name"`` and its constructor arguments by PyTorch's
names; :func:`describe` writes it for a live module, and ``json.dump`` keeps it beside a
``.safetensors`` file, so the model can be loaded later with neither torch nor pickle:

>>> arch = [{"type": "Conv2d", "name": "0", "in_channels": 3, "out_channels": 8,
...          "kernel_size": 3, "stride": 2, "padding": 1},
...         {"type": "ReLU"}, {"type": "AdaptiveAvgPool2d", "output_size": 1},
...         {"type": "Flatten"}, {"type": "Linear", "name": "4", "in_features": 8,
...          "out_features": 2}]
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> state = {"0.weight": rng.random((8, 3, 3, 3)), "0.bias": rng.random(8),
...          "4.weight": rng.random((2, 8)), "4.bias": rng.random(2)}
>>> model = from_state_dict(state, arch)
>>> model.predict(np.zeros((1, 3, 16, 16))).shape
(1, 2)

PyTorch's padding is symmetric: ``padding=1`` at stride 2 on an even size pads (1, 1), where
Keras' "same" pads (0, 1). Every PyTorch padding is therefore turned into explicit
``((top, bottom), (left, right))`` pads here, and the model takes NCHW input, as PyTorch does.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.interop._common import (
    as_path,
    layer_error,
    set_layer_weights,
    weights_dtype,
    with_dtype,
)
from patchconv.interop.onnx import oihw_to_hwio

if TYPE_CHECKING:
    from patchconv import nn

__all__ = [
    "SUPPORTED_MODULES",
    "describe",
    "from_state_dict",
    "from_torch",
    "read_safetensors",
    "read_state_dict",
]

# safetensors dtype names -> numpy (BF16 is widened to float32 below).
_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}
_HEADER_LIMIT = 100 * 2**20  # safetensors' own cap on the JSON header


def read_safetensors(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file with NumPy alone: 8 bytes of little-endian header length,
    a JSON header ``{name: {"dtype", "shape", "data_offsets"}}``, then the raw data.

    Every offset and size is checked against the file before any array is made.
    """
    func = "read_safetensors"
    p = as_path(path, func=func)
    with open(p, "rb") as fh:
        blob = fh.read()
    if len(blob) < 8:
        raise PatchconvError(
            f"{func}: {p!r} is too short to be a safetensors file ({len(blob)} bytes)"
        )
    (size,) = struct.unpack("<Q", blob[:8])
    if size > min(_HEADER_LIMIT, len(blob) - 8):
        raise PatchconvError(
            f"{func}: {p!r} is not a safetensors file: its header length ({size}) exceeds the "
            f"file ({len(blob)} bytes)"
        )
    try:
        header = json.loads(blob[8 : 8 + size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise PatchconvError(f"{func}: {p!r} is not a safetensors file (header: {exc})") from exc
    if not isinstance(header, dict):
        raise PatchconvError(
            f"{func}: {p!r} is not a safetensors file (header is not a JSON object)"
        )
    data = memoryview(blob)[8 + size :]
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            shape = tuple(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise PatchconvError(
                f"{func}: {p!r}: tensor {name!r} has a malformed entry {info!r}"
            ) from exc
        # Sizes and offsets are JSON integers >= 0 (not 4.0, "4", true or -1), counted in
        # Python's integers, which do not overflow.
        if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
            raise PatchconvError(
                f"{func}: {p!r}: tensor {name!r} has a malformed entry {info!r}: its shape and "
                "data_offsets must be integers >= 0"
            )
        if dtype_name == "BF16":
            itemsize = 2
        elif dtype_name in _SAFETENSORS_DTYPES:
            itemsize = np.dtype(_SAFETENSORS_DTYPES[dtype_name]).itemsize
        else:
            raise PatchconvError(
                f"{func}: {p!r}: tensor {name!r} has unsupported dtype {dtype_name!r}"
            )
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * itemsize:
            raise PatchconvError(
                f"{func}: {p!r}: tensor {name!r} {dtype_name} {shape} needs {count * itemsize} "
                f"bytes; its offsets [{begin}, {end}) do not fit the {len(data)}-byte data section"
            )
        raw = data[begin:end]
        if dtype_name == "BF16":  # the upper half of a float32
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, _SAFETENSORS_DTYPES[dtype_name]).copy()
        out[name] = arr.reshape(shape)
    return out


def read_state_dict(path: str | PathLike[str]) -> dict[str, np.ndarray]:
    """A state_dict from ``.safetensors`` (NumPy alone) or a PyTorch zip checkpoint (``.pt``,
    ``.pth``: ``torch.load(weights_only=True)``, needs torch).

    Legacy (pre-zip) and other pickle files are refused without being opened by pickle; so is
    a checkpoint holding anything but tensors.
    """
    func = "read_state_dict"
    p = as_path(path, func=func)
    with open(p, "rb") as fh:
        head = fh.read(9)
    if not head.startswith(b"PK"):
        # safetensors: the JSON header's length (little-endian u64), then the header's "{". Its
        # first byte is 0x80 for a length of 128 modulo 256, as a pickle's is.
        if len(head) == 9 and struct.unpack("<Q", head[:8])[0] < 2**32 and head[8:] == b"{":
            return read_safetensors(p)
        kind = "a raw pickle" if head[:1] == b"\x80" else "not a zip checkpoint"
        raise PatchconvError(
            f"{func}: {p!r} is {kind}; only .safetensors and PyTorch zip checkpoints saved with "
            "torch.save(model.state_dict(), ...) are read (nothing is unpickled)"
        )
    if not zipfile.is_zipfile(p):
        raise PatchconvError(f"{func}: {p!r} is a truncated or damaged zip checkpoint")
    try:
        import torch
    except ImportError as exc:
        raise PatchconvError(
            f"{func}: reading {p!r} needs torch (torch.load(weights_only=True)); without torch, "
            "save the state_dict with safetensors instead"
        ) from exc
    try:
        loaded = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise PatchconvError(
            f"{func}: {p!r} is not a weights-only PyTorch checkpoint; torch.load(weights_only="
            f"True) refused it: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise PatchconvError(
            f"{func}: {p!r} must hold a state_dict (names -> tensors); got {type(loaded).__name__}"
        )
    return {str(k): _to_numpy(v) for k, v in loaded.items()}


# -- architecture -------------------------------------------------------------------------------
_ARGS: dict[str, tuple[str, ...]] = {
    "Conv2d": (
        "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
        "bias", "padding_mode",
    ),
    "Linear": ("in_features", "out_features", "bias"),
    "BatchNorm2d": ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    "MaxPool2d": ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    "AvgPool2d": (
        "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override",
    ),
    "AdaptiveAvgPool2d": ("output_size",),
    "Flatten": ("start_dim", "end_dim"),
    "ReLU": ("inplace",),
    "ReLU6": ("inplace",),
    "LeakyReLU": ("negative_slope", "inplace"),
    "Sigmoid": (),
    "Tanh": (),
    "Softmax": ("dim",),
    "Dropout": ("p", "inplace"),
    "Identity": (),
    "ZeroPad2d": ("padding",),
}  # fmt: skip
SUPPORTED_MODULES = tuple(_ARGS)


def describe(module: Any) -> list[dict[str, Any]]:
    """The architecture of a live ``nn.Sequential`` (nested ones flattened) as JSON-ready
    dicts for :func:`from_state_dict`; a module it cannot describe is named in the error."""
    import torch

    func = "describe"
    out: list[dict[str, Any]] = []

    def no_hooks(mod: Any, name: str) -> None:
        # A hook changes what forward() returns, and the state_dict cannot say how.
        for attr in ("_forward_hooks", "_forward_pre_hooks"):
            if getattr(mod, attr, None):
                raise PatchconvError(
                    f"{func}: module {name!r} ({type(mod).__name__}) has a forward hook, which "
                    "cannot be read; remove it or export the model to ONNX"
                )

    def walk(mod: Any, prefix: str) -> None:
        for key, child in mod.named_children():
            name = f"{prefix}{key}"
            no_hooks(child, name)
            cls = type(child).__name__
            if isinstance(child, torch.nn.Sequential):
                if type(child).forward is not torch.nn.Sequential.forward:
                    raise PatchconvError(
                        f"{func}: module {name!r} ({cls}) subclasses nn.Sequential with its own "
                        "forward(), which cannot be read; export the model to ONNX"
                    )
                walk(child, f"{name}.")
                continue
            # Exactly PyTorch's class: a subclass (a user's, or e.g. torch.ao's quantization
            # -aware Conv2d) may compute something else under the same name.
            if cls not in _ARGS or type(child) is not getattr(torch.nn, cls, None):
                where = type(child).__module__
                label = cls if where.startswith("torch.nn.modules") else f"{where}.{cls}"
                raise PatchconvError(
                    f"{func}: module {name!r} ({label}) is not supported; supported: torch.nn's "
                    f"{sorted(SUPPORTED_MODULES)} inside nn.Sequential"
                )
            entry: dict[str, Any] = {"type": cls, "name": name}
            for arg in _ARGS[cls]:
                value = getattr(child, arg)
                if arg == "bias" and cls in ("Conv2d", "Linear"):
                    value = value is not None
                if isinstance(value, tuple):
                    value = list(value)
                entry[arg] = value
            out.append(entry)

    if (
        not isinstance(module, torch.nn.Sequential)
        or type(module).forward is not torch.nn.Sequential.forward
    ):
        raise PatchconvError(
            f"{func}: module must be a torch.nn.Sequential; got {type(module).__name__} (a custom "
            "forward() cannot be read; rebuild it as nn.Sequential or export it to ONNX)"
        )
    no_hooks(module, "")
    walk(module, "")
    return out


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            return (int(value[0]), int(value[0]))
        return (int(value[0]), int(value[1]))
    return (int(value), int(value))


def _torch_pads(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> Any:
    """PyTorch's Conv2d padding -> explicit ((top, bottom), (left, right)).

    "same" (stride 1 only, in PyTorch) pads ``d*(k-1)`` in all, the smaller half first, as
    PyTorch does; an int or a pair pads both sides alike.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0), (0, 0))
        if padding == "same":
            totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise PatchconvError(f"padding must be 'same', 'valid', an int or a pair; got {padding!r}")
    ph, pw = _pair(padding)
    return ((ph, ph), (pw, pw))


_REQUIRED: dict[str, tuple[str, ...]] = {
    "Conv2d": ("in_channels", "out_channels", "kernel_size"),
    "Linear": ("in_features", "out_features"),
    "BatchNorm2d": ("num_features",),
    "MaxPool2d": ("kernel_size",),
    "AvgPool2d": ("kernel_size",),
    "AdaptiveAvgPool2d": ("output_size",),
    "ZeroPad2d": ("padding",),
}


def _check_keys(entry: Mapping[str, Any]) -> None:
    """Every key of an architecture entry known (a misspelt one would silently be the default),
    and the arguments without a default present."""
    kind = entry.get("type")
    if kind not in _ARGS:
        raise PatchconvError(
            f"module type {kind!r} is not supported; supported: {sorted(SUPPORTED_MODULES)}"
        )
    known = {"type", "name", *_ARGS[kind]}
    unknown = sorted(str(k) for k in entry if k not in known)
    if unknown:
        raise PatchconvError(f"unknown keys {unknown}; {kind} takes {sorted(_ARGS[kind])}")
    missing = [k for k in _REQUIRED.get(kind, ()) if k not in entry]
    if missing:
        raise PatchconvError(f"{kind} needs {missing}")


def _check(entry: Mapping[str, Any], rules: Mapping[str, Any]) -> None:
    for key, allowed in rules.items():
        value = entry.get(key, allowed[0] if isinstance(allowed, list) else allowed)
        if isinstance(value, list):
            value = tuple(value)
        ok = value in allowed if isinstance(allowed, list) else value == allowed
        if not ok:
            raise PatchconvError(f"{key}={value!r} is not supported (only {allowed!r})")


def _layer(
    entry: Mapping[str, Any], where: str, func: str
) -> tuple[nn.Layer | None, Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]]:
    """One architecture entry -> (patchconv.nn layer or None, state -> weights in Keras order)."""
    from patchconv import nn

    _check_keys(entry)
    kind = entry.get("type")
    e = dict(entry)
    name = str(e.get("name", ""))
    prefix = f"{name}." if name else ""

    def get(state: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        full = prefix + key
        if full not in state:
            raise PatchconvError(f"{func}: {where}: the state_dict has no {full!r}")
        return np.asarray(state[full])

    def no_weights(state: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return []

    cf = "channels_first"
    if kind == "Conv2d":
        kernel = _pair(e["kernel_size"])
        dilation = _pair(e.get("dilation", 1))
        groups = int(e.get("groups", 1))
        bias = bool(e.get("bias", True))
        mode = e.get("padding_mode", "zeros")
        if e.get("padding") == "same" and _pair(e.get("stride", 1)) != (1, 1):
            raise PatchconvError(
                f"padding='same' needs stride 1 (as in PyTorch); got stride {e.get('stride')!r}"
            )
        layer: Any = nn.Conv2D(
            int(e["out_channels"]),
            kernel,
            strides=_pair(e.get("stride", 1)),
            padding=_torch_pads(e.get("padding", 0), kernel, dilation),
            data_format=cf,
            dilation_rate=dilation,
            groups=groups,
            use_bias=bias,
        )
        if mode != "zeros":
            layer = _with_padding_mode(layer, mode)

        def conv_weights(state: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            w = get(state, "weight")  # (out, in / groups, kh, kw)
            expected = (int(e["out_channels"]), int(e["in_channels"]) // groups, *kernel)
            if w.shape != expected:
                raise PatchconvError(
                    f"{func}: {where}: weight must have shape {expected}; got {w.shape}"
                )
            return [oihw_to_hwio(w)] + ([get(state, "bias")] if bias else [])

        return layer, conv_weights
    if kind == "Linear":
        bias = bool(e.get("bias", True))

        def linear_weights(state: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            w = get(state, "weight")  # (out, in)
            expected = (int(e["out_features"]), int(e["in_features"]))
            if w.shape != expected:
                raise PatchconvError(
                    f"{func}: {where}: weight must have shape {expected}; got {w.shape}"
                )
            return [w.T] + ([get(state, "bias")] if bias else [])

        return nn.Dense(int(e["out_features"]), use_bias=bias), linear_weights
    if kind == "BatchNorm2d":
        _check(e, {"track_running_stats": True})
        affine = bool(e.get("affine", True))
        momentum = e.get("momentum", 0.1)
        layer = nn.BatchNormalization(
            axis=1,
            momentum=0.99 if momentum is None else 1.0 - float(momentum),
            epsilon=float(e.get("eps", 1e-5)),
            center=affine,
            scale=affine,
        )

        def bn_weights(state: Mapping[str, np.ndarray]) -> list[np.ndarray]:
            keys = ["weight", "bias"] if affine else []
            arrays = [get(state, k) for k in [*keys, "running_mean", "running_var"]]
            features = (int(e["num_features"]),)
            for key, arr in zip([*keys, "running_mean", "running_var"], arrays, strict=True):
                if arr.shape != features:
                    raise PatchconvError(
                        f"{func}: {where}: {key} must have shape {features}; got {arr.shape}"
                    )
            return arrays

        return layer, bn_weights
    if kind in ("MaxPool2d", "AvgPool2d"):
        _check(e, {"ceil_mode": False})
        size = _pair(e["kernel_size"])
        stride = size if e.get("stride") in (None, [], ()) else _pair(e["stride"])
        ph, pw = _pair(e.get("padding", 0))
        pads = ((ph, ph), (pw, pw))
        if kind == "MaxPool2d":
            _check(e, {"dilation": [1, (1, 1)], "return_indices": False})
            return nn.MaxPool2D(size, stride, pads, cf), no_weights
        _check(e, {"divisor_override": None})
        include = bool(e.get("count_include_pad", True))
        return nn.AveragePool2D(size, stride, pads, cf, include), no_weights
    if kind == "AdaptiveAvgPool2d":
        _check(e, {"output_size": [1, (1, 1)]})
        return nn.GlobalAveragePooling2D(cf, keepdims=True), no_weights
    if kind == "Flatten":
        _check(e, {"start_dim": 1, "end_dim": -1})
        return nn.Flatten(cf), no_weights
    if kind == "ReLU":
        return nn.ReLU(), no_weights
    if kind == "ReLU6":
        return nn.ReLU(max_value=6.0), no_weights
    if kind == "LeakyReLU":
        return nn.LeakyReLU(float(e.get("negative_slope", 0.01))), no_weights
    if kind == "Sigmoid":
        return nn.Sigmoid(), no_weights
    if kind == "Tanh":
        return nn.Tanh(), no_weights
    if kind == "Softmax":
        dim = e.get("dim")
        if dim is None:
            raise PatchconvError(
                "Softmax(dim=None) (PyTorch's implicit dim) is not supported; give dim"
            )
        return nn.Softmax(int(dim)), no_weights
    if kind == "Dropout":
        return nn.Dropout(float(e.get("p", 0.5))), no_weights
    if kind == "Identity":
        return None, no_weights
    if kind == "ZeroPad2d":
        pad = e.get("padding", 0)
        if isinstance(pad, (list, tuple)) and len(pad) != 4:
            raise PatchconvError(
                f"padding must be an int or (left, right, top, bottom); got {pad!r}"
            )
        left, right, top, bottom = (
            (int(pad),) * 4 if not isinstance(pad, (list, tuple)) else tuple(int(v) for v in pad)
        )
        return nn.ZeroPadding2D(((top, bottom), (left, right)), cf), no_weights
    raise PatchconvError(
        f"module type {kind!r} is not supported; supported: {sorted(SUPPORTED_MODULES)}"
    )


def _with_padding_mode(layer: nn.Layer, mode: str) -> nn.Layer:
    """A Conv2D that pads with PyTorch's ``padding_mode`` (reflect, replicate, circular)."""
    from patchconv import nn

    config = layer.get_config()
    config["padding_mode"] = mode
    conv: Any = nn.Conv2D.from_config(config)
    return conv


def from_state_dict(
    state_dict: Mapping[str, Any] | str | PathLike[str],
    architecture: Sequence[Mapping[str, Any]] | str | PathLike[str],
) -> nn.Sequential:
    """A PyTorch model from its state_dict and its architecture, without torch (for
    ``.safetensors``) and without pickle.

    Parameters
    ----------
    state_dict : mapping or path
        Names -> arrays (NumPy or torch tensors), a ``.safetensors`` file, or a PyTorch zip
        checkpoint (read with ``torch.load(weights_only=True)``).
    architecture : list of dict, or a path to its JSON
        One entry per module in order: ``"type"`` (PyTorch's class name), ``"name"`` (the
        state_dict prefix, e.g. "0" or "features.3"; needed for modules with weights) and the
        constructor's arguments by PyTorch's names (defaults as in PyTorch).
        :func:`describe` writes it for a live module.

    Returns
    -------
    patchconv.nn.Sequential
        Takes NCHW input, as PyTorch does; in eval mode it returns what ``module.eval()(x)``
        returns.
    """
    func = "from_state_dict"
    from patchconv import nn

    raw: Any = architecture
    if isinstance(raw, (str, PathLike)):
        path = as_path(raw, func=func, name="architecture")
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PatchconvError(
                f"{func}: architecture {path!r} is not valid JSON ({exc})"
            ) from exc
    if not isinstance(raw, Sequence) or not all(isinstance(a, Mapping) for a in raw):
        raise TypeError(
            f"{func}: architecture must be a list of dicts (see describe()); got "
            f"{type(raw).__name__}"
        )
    arch: list[Mapping[str, Any]] = list(raw)
    if isinstance(state_dict, (str, PathLike)):
        state = read_state_dict(state_dict)
    elif isinstance(state_dict, Mapping):
        state = {str(k): _to_numpy(v) for k, v in state_dict.items()}
    else:
        raise TypeError(
            f"{func}: state_dict must be a mapping or a path; got {type(state_dict).__name__}"
        )
    layers: list[nn.Layer] = []
    dtype = weights_dtype(state.values())
    reads = _ReadKeys(state)  # the tensors the modules read, and only those, count as used
    for index, entry in enumerate(arch):
        where = f"module {entry.get('name', index)!r} ({entry.get('type')})"
        layer, weights_of = layer_error(func, where, partial(_layer, entry, where, func))
        weights = weights_of(reads)
        if layer is None:
            continue
        with_dtype(layer, dtype)
        if weights:
            set_layer_weights(layer, weights, func=func, where=where)
        layers.append(layer)
    unused = sorted(
        k for k in state if k not in reads.read and not k.endswith("num_batches_tracked")
    )
    if unused:
        raise PatchconvError(
            f"{func}: the state_dict holds tensors no module in the architecture uses: "
            f"{unused[:6]}{' ...' if len(unused) > 6 else ''}"
        )
    return nn.Sequential(layers)


class _ReadKeys(dict[str, np.ndarray]):
    """A state_dict that records which keys were read: a tensor under a module's name that
    the module does not read (a bias where the architecture says bias=False) is unused, not
    dropped in silence."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        super().__init__(state)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        self.read.add(key)
        return super().__getitem__(key)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # NumPy has none: float32, as safetensors'
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def from_torch(
    module: Any, architecture: Sequence[Mapping[str, Any]] | str | PathLike[str] | None = None
) -> nn.Sequential:
    """A PyTorch model as a :class:`patchconv.nn.Sequential`.

    ``from_torch(module)`` reads a live ``nn.Sequential`` (its modules and state_dict);
    ``from_torch(state_dict_or_path, architecture)`` is :func:`from_state_dict`.
    The result takes NCHW input and returns what ``module.eval()(x)`` returns.
    """
    if architecture is not None:
        return from_state_dict(module, architecture)
    if isinstance(module, (str, PathLike, Mapping)):
        raise PatchconvError(
            "from_torch: a state_dict or a file needs its architecture: from_torch(state, "
            "architecture) (describe(module) writes it)"
        )
    return from_state_dict(module.state_dict(), describe(module))
