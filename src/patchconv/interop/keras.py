"""Keras adapter: ``.keras`` archives, ``.weights.h5`` files and live Keras models <->
:class:`patchconv.nn.Sequential`.

Files are read with zipfile, json and h5py only, never with pickle, and never with Keras: a
``.keras`` archive is a zip holding ``config.json`` (the architecture) and ``model.weights.h5``
(every layer's variables under ``layers/<name>/vars/<i>``, in ``get_weights`` order). Keras' own
layouts are kept: NHWC activations and HWIO kernels, so weights copy over unchanged.

>>> from patchconv.interop.keras import keras_h5_names
>>> keras_h5_names(["Conv2D", "ReLU", "Conv2D", "GlobalAveragePooling2D"])
['conv2d', 're_lu', 'conv2d_1', 'global_average_pooling2d']
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.interop._common import (
    as_path,
    float_dtype_name,
    layer_error,
    set_layer_weights,
)

if TYPE_CHECKING:
    from patchconv import nn

__all__ = [
    "KerasModelFile",
    "from_keras",
    "keras_h5_names",
    "read_keras",
    "read_keras_weights",
    "save_keras_weights",
    "to_keras",
]

_ARCHIVE_CONFIG = "config.json"
_ARCHIVE_WEIGHTS = "model.weights.h5"


@dataclass
class KerasModelFile:
    """What a Keras file holds, read without Keras.

    Attributes
    ----------
    config : dict or None
        ``{"class_name": "Sequential" | "Functional", "config": {...}}`` from ``config.json``
        (None for a bare ``.weights.h5``).
    weights : dict
        ``{h5 name: [arrays in get_weights order]}`` for every top-level layer, e.g.
        ``{"conv2d": [kernel, bias], "conv2d_1": [...]}``.
    """

    config: dict[str, Any] | None
    weights: dict[str, list[np.ndarray]] = field(default_factory=dict)


def _snake(name: str) -> str:
    """Keras' ``to_snake_case``: ``GlobalAveragePooling2D`` -> ``global_average_pooling2d``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def keras_h5_names(class_names: Sequence[str]) -> list[str]:
    """The group names Keras 3 gives layers in a weights file: the snake-cased class name,
    ``_1``, ``_2``... for repeats, in layer order (the layers' own names play no part)."""
    seen: dict[str, int] = {}
    out = []
    for cls in class_names:
        base = _snake(cls)
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.append(base if k == 0 else f"{base}_{k}")
    return out


# -- reading ------------------------------------------------------------------------------------
def _h5_weights(source: Any, *, func: str, label: str) -> dict[str, list[np.ndarray]]:
    import h5py

    try:
        handle = h5py.File(source, "r")
    except OSError as exc:
        raise PatchconvError(f"{func}: {label} is not an HDF5 file ({exc})") from exc
    with handle as f:
        if "model_weights" in f or "model_config" in f.attrs:
            raise PatchconvError(
                f"{func}: {label} is a legacy Keras 2 HDF5 file; re-save it with Keras 3 "
                "(model.save('model.keras')) to load it here"
            )
        if not isinstance(f.get("layers"), h5py.Group):
            raise PatchconvError(
                f"{func}: {label} is not a Keras 3 weights file: expected a 'layers' group with "
                f"'layers/<name>/vars/<i>' datasets; found top-level keys {sorted(f.keys())[:8]}"
            )
        out: dict[str, list[np.ndarray]] = {}
        for name, group in f["layers"].items():
            if not isinstance(group, h5py.Group):
                raise PatchconvError(
                    f"{func}: {label}: 'layers/{name}' must be a group; got a "
                    f"{type(group).__name__}"
                )
            if "layers" in group:
                raise PatchconvError(
                    f"{func}: {label}: layer {name!r} holds nested layers (a model inside the "
                    "model); only flat models are supported"
                )
            vars_ = group.get("vars")
            if vars_ is None:
                out[name] = []
                continue
            keys = sorted(vars_.keys(), key=lambda k: int(k) if k.isdigit() else -1)
            if any(not k.isdigit() for k in keys) or keys != [str(i) for i in range(len(keys))]:
                raise PatchconvError(
                    f"{func}: {label}: 'layers/{name}/vars' must hold datasets '0', '1', ...; "
                    f"got {keys}"
                )
            arrays = []
            for k in keys:
                item = vars_[k]
                if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "fiub":
                    raise PatchconvError(
                        f"{func}: {label}: 'layers/{name}/vars/{k}' must be a numeric dataset"
                    )
                arrays.append(np.asarray(item[()]))
            out[name] = arrays
        return out


def read_keras_weights(path: str | PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Read a Keras 3 ``.weights.h5`` file: ``{h5 layer name: [arrays]}`` (h5py only)."""
    func = "read_keras_weights"
    p = as_path(path, func=func)
    return _h5_weights(p, func=func, label=repr(p))


def read_keras(path: str | PathLike[str], *, func: str = "read_keras") -> KerasModelFile:
    """Read a ``.keras`` archive (zip: config.json + model.weights.h5) or a ``.weights.h5``
    file, with zipfile, json and h5py; never unpickles, never imports Keras."""
    p = as_path(path, func=func)
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"\x89HDF"):
        return KerasModelFile(None, _h5_weights(p, func=func, label=repr(p)))
    if not head.startswith(b"PK"):
        raise PatchconvError(
            f"{func}: {p!r} is neither a .keras archive (zip) nor a .weights.h5 file (HDF5); "
            f"it starts with {head!r}"
        )
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
            missing = [n for n in (_ARCHIVE_CONFIG, _ARCHIVE_WEIGHTS) if n not in names]
            if missing:
                raise PatchconvError(
                    f"{func}: {p!r} is not a .keras archive: it lacks {missing}; it holds "
                    f"{names[:8]}"
                )
            config_text = archive.read(_ARCHIVE_CONFIG)
            weights_bytes = archive.read(_ARCHIVE_WEIGHTS)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise PatchconvError(f"{func}: {p!r} is not a readable .keras archive ({exc})") from exc
    try:
        config = json.loads(config_text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PatchconvError(f"{func}: {p!r}: config.json is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or "class_name" not in config:
        raise PatchconvError(
            f"{func}: {p!r}: config.json must hold a model's config with a 'class_name'"
        )
    weights = _h5_weights(io.BytesIO(weights_bytes), func=func, label=f"{p!r} model.weights.h5")
    return KerasModelFile(config, weights)


# -- architecture -------------------------------------------------------------------------------
def _activation(value: Any, *, func: str, where: str) -> str:
    if value is None:
        return "linear"
    if isinstance(value, dict):  # a serialised built-in function
        inner = value.get("config")
        if value.get("class_name") == "function" and isinstance(inner, str):
            value = inner
        else:
            raise PatchconvError(f"{func}: {where}: activation {value!r} is not supported")
    if not isinstance(value, str):
        raise PatchconvError(f"{func}: {where}: activation {value!r} is not supported")
    return {"swish": "silu"}.get(value, value)


def _pairs(value: Any) -> Any:
    """JSON lists -> tuples, recursively (Keras configs store tuples as lists)."""
    if isinstance(value, list):
        return tuple(_pairs(v) for v in value)
    return value


def _axis(value: Any) -> int:
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    return int(value)


def _axes(value: Any) -> int | list[int]:
    """Keras' Softmax axis: an int, or a list of several (normalised jointly)."""
    if isinstance(value, (list, tuple)) and len(value) > 1:
        return [int(v) for v in value]
    return _axis(value)


def _layer_from_config(
    class_name: str, config: Mapping[str, Any], *, func: str, where: str
) -> nn.Layer | None:
    """One Keras layer's config -> an unbuilt patchconv.nn layer (None for InputLayer)."""
    from patchconv import nn

    c = dict(config)
    common: dict[str, Any] = {
        "name": c.get("name"),
        "dtype": float_dtype_name(c.get("dtype", "float32"), func=func, where=where),
        # A frozen layer stays frozen: no updates, and BatchNormalization on its moving
        # statistics, as in Keras.
        "trainable": bool(c.get("trainable", True)),
    }
    fmt = c.get("data_format") or "channels_last"

    def act() -> str:
        return _activation(c.get("activation"), func=func, where=where)

    builders: dict[str, Callable[[], nn.Layer]] = {
        "Conv2D": lambda: nn.Conv2D(
            c["filters"],
            _pairs(c["kernel_size"]),
            strides=_pairs(c.get("strides", 1)),
            padding=_pairs(c.get("padding", "valid")),
            data_format=fmt,
            dilation_rate=_pairs(c.get("dilation_rate", 1)),
            groups=c.get("groups", 1),
            activation=act(),
            use_bias=c.get("use_bias", True),
            **common,
        ),
        "DepthwiseConv2D": lambda: nn.DepthwiseConv2D(
            _pairs(c["kernel_size"]),
            strides=_pairs(c.get("strides", 1)),
            padding=_pairs(c.get("padding", "valid")),
            depth_multiplier=c.get("depth_multiplier", 1),
            data_format=fmt,
            dilation_rate=_pairs(c.get("dilation_rate", 1)),
            activation=act(),
            use_bias=c.get("use_bias", True),
            **common,
        ),
        "Dense": lambda: nn.Dense(
            c["units"], activation=act(), use_bias=c.get("use_bias", True), **common
        ),
        "Activation": lambda: nn.Activation(act(), **common),
        "ReLU": lambda: nn.ReLU(
            c.get("max_value"), c.get("negative_slope", 0.0), c.get("threshold", 0.0), **common
        ),
        "LeakyReLU": lambda: nn.LeakyReLU(c.get("negative_slope", c.get("alpha", 0.3)), **common),
        "Softmax": lambda: nn.Softmax(_axes(c.get("axis", -1)), **common),
        "MaxPooling2D": lambda: nn.MaxPool2D(
            _pairs(c.get("pool_size", 2)),
            _pairs(c.get("strides")),
            _pairs(c.get("padding", "valid")),
            fmt,
            **common,
        ),
        "AveragePooling2D": lambda: nn.AveragePool2D(
            _pairs(c.get("pool_size", 2)),
            _pairs(c.get("strides")),
            _pairs(c.get("padding", "valid")),
            fmt,
            **common,
        ),
        "GlobalAveragePooling2D": lambda: nn.GlobalAveragePooling2D(
            fmt, bool(c.get("keepdims", False)), **common
        ),
        "Flatten": lambda: nn.Flatten("channels_last", **common),
        "Dropout": lambda: nn.Dropout(c.get("rate", 0.0), c.get("seed"), **common),
        "ZeroPadding2D": lambda: nn.ZeroPadding2D(_pairs(c.get("padding", 1)), fmt, **common),
        "BatchNormalization": lambda: nn.BatchNormalization(
            _axis(c.get("axis", -1)),
            c.get("momentum", 0.99),
            c.get("epsilon", 1e-3),
            c.get("center", True),
            c.get("scale", True),
            **common,
        ),
    }
    aliases = {"MaxPool2D": "MaxPooling2D", "AvgPool2D": "AveragePooling2D"}
    class_name = aliases.get(class_name, class_name)
    if class_name == "InputLayer":
        return None
    if class_name not in builders:
        raise PatchconvError(
            f"{func}: {where}: Keras layer {class_name!r} is not supported; supported: "
            f"{sorted([*builders, 'InputLayer'])}"
        )
    if class_name == "Flatten" and fmt == "channels_first":
        raise PatchconvError(
            f"{func}: {where}: Flatten(data_format='channels_first') (Keras moves channels last "
            "before flattening) is not supported; use a channels_last model"
        )
    if class_name == "BatchNormalization" and c.get("renorm"):
        raise PatchconvError(f"{func}: {where}: BatchNormalization(renorm=True) is not supported")
    return layer_error(func, where, builders[class_name])


def _sources(arg: Any, out: list[Any]) -> None:
    """The layers named by the keras_history of every tensor in a node's (nested) args."""
    if isinstance(arg, (list, tuple)):
        for item in arg:
            _sources(item, out)
    elif isinstance(arg, dict):
        history = arg.get("config", {}).get("keras_history")
        if history:
            out.append(history[0])


def _layer_list(model_config: Mapping[str, Any], *, func: str) -> tuple[str, list[dict[str, Any]]]:
    """``(model class, [layer entries])``; a Functional model must be one chain of layers."""
    kind = model_config.get("class_name")
    config = model_config.get("config", {})
    layers = config.get("layers") if isinstance(config, dict) else None
    if kind not in ("Sequential", "Functional", "Model") or not isinstance(layers, list):
        raise PatchconvError(
            f"{func}: only Sequential models and single-chain Functional models are supported; "
            f"got a {kind!r} model"
        )
    if kind != "Sequential":
        previous = None
        for entry in layers:
            nodes = entry.get("inbound_nodes") or []
            sources: list[Any] = []
            for node in nodes:
                _sources(node.get("args", []) if isinstance(node, dict) else [], sources)
            if entry.get("class_name") == "InputLayer":
                if previous is not None:
                    raise PatchconvError(
                        f"{func}: a Functional model with several inputs is not supported"
                    )
            elif len(nodes) != 1 or sources != [previous]:
                raise PatchconvError(
                    f"{func}: layer {entry.get('config', {}).get('name')!r} is not fed by the "
                    f"previous layer {previous!r} alone (inputs {sources}); only single-chain "
                    "Functional models are supported"
                )
            previous = entry.get("config", {}).get("name")
    return str(kind), layers


def _config_arg(config: Any, *, func: str) -> Any:
    """``config`` as given, or parsed where it is a JSON string or the path of a JSON file
    (``model.to_json()`` saved)."""
    if isinstance(config, PathLike) or (
        isinstance(config, str) and not config.lstrip().startswith(("{", "["))
    ):
        path = as_path(config, func=func, name="config")
        try:
            with open(path, encoding="utf-8") as fh:
                config = fh.read()
        except OSError as exc:
            raise PatchconvError(
                f"{func}: config must be a dict, a JSON string or a JSON file; {path!r} could "
                f"not be read ({exc.strerror or exc})"
            ) from exc
    if isinstance(config, str):
        try:
            return json.loads(config)
        except ValueError as exc:
            shown = config if len(config) <= 60 else config[:57] + "..."
            raise PatchconvError(
                f"{func}: config must be a dict, a JSON string or a JSON file; got {shown!r}, "
                f"which is not valid JSON ({exc})"
            ) from exc
    return config


def _wrap_config(config: Any) -> dict[str, Any]:
    """``model.get_config()`` (a bare dict with "layers") or ``{"class_name", "config"}``."""
    if isinstance(config, Mapping) and "class_name" not in config and "layers" in config:
        chained = any(entry.get("inbound_nodes") for entry in config["layers"])
        return {"class_name": "Functional" if chained else "Sequential", "config": dict(config)}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"from_keras: config must be a dict or a JSON string; got {type(config).__name__}"
        )
    return dict(config)


def _input_shape(
    model_config: Mapping[str, Any], layers: list[dict[str, Any]]
) -> tuple[int, ...] | None:
    shape = None
    for entry in layers:
        if entry.get("class_name") == "InputLayer":
            c = entry.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape")
            break
    if shape is None:
        shape = model_config.get("config", {}).get("build_input_shape") or model_config.get(
            "build_config", {}
        ).get("input_shape")
    if not shape or any(v is None for v in list(shape)[1:]):
        return None
    return (1, *(int(v) for v in list(shape)[1:]))


def _build(
    model_config: Mapping[str, Any],
    weights_for: Callable[[int, str, str], list[np.ndarray] | None],
    *,
    func: str,
) -> nn.Sequential:
    from patchconv import nn

    kind, entries = _layer_list(model_config, func=func)
    counted = [e for e in entries if kind != "Sequential" or e.get("class_name") != "InputLayer"]
    h5_names = dict(
        zip(map(id, counted), keras_h5_names([e["class_name"] for e in counted]), strict=True)
    )
    pairs: list[tuple[nn.Layer, list[np.ndarray], str]] = []
    for index, entry in enumerate(entries):
        cls = str(entry.get("class_name"))
        lname = entry.get("config", {}).get("name", f"#{index}")
        where = f"layer {lname!r} ({cls})"
        layer = _layer_from_config(cls, entry.get("config", {}), func=func, where=where)
        if layer is None:
            continue
        arrays = weights_for(index, lname, h5_names.get(id(entry), ""))
        if arrays is None:
            raise PatchconvError(
                f"{func}: {where}: no weights found for it (h5 group "
                f"'layers/{h5_names.get(id(entry))}/vars')"
            )
        pairs.append((layer, arrays, where))
    model = nn.Sequential(
        [layer for layer, _, _ in pairs],
        name=str(model_config.get("config", {}).get("name", "sequential")),
    )
    shape = _input_shape(model_config, entries)
    if shape is not None:
        layer_error(func, f"building for input {shape}", lambda: model.build(shape))
    for layer, arrays, where in pairs:
        expected = len(layer.weight_names()) if layer.built else None
        if arrays or expected:
            set_layer_weights(layer, arrays, func=func, where=where)
    return model


def from_keras(
    model_or_path: Any, *, config: Mapping[str, Any] | str | PathLike[str] | None = None
) -> nn.Sequential:
    """A Keras model as a :class:`patchconv.nn.Sequential` with the same layers and weights.

    Parameters
    ----------
    model_or_path : keras.Model, str or os.PathLike
        A live Keras ``Sequential`` (or single-chain Functional) model, a ``.keras`` archive, or
        a ``.weights.h5`` file (then ``config`` gives the architecture).
    config : dict, str or os.PathLike, optional
        ``model.get_config()`` wrapped as ``{"class_name": ..., "config": ...}``,
        ``model.to_json()``, or the path of a file holding it; needed for a ``.weights.h5``
        file, ignored otherwise.

    Returns
    -------
    patchconv.nn.Sequential
        Takes NHWC input (Keras' own layout) and returns what the Keras model returns
        (inference: Dropout off, BatchNormalization on its moving statistics); trainable with
        ``compile`` / ``fit``.

    Raises
    ------
    PatchconvError
        An unsupported layer (named), a model that is not a single chain, a malformed file.
    """
    func = "from_keras"
    if isinstance(model_or_path, (str, PathLike)):
        data = read_keras(model_or_path, func=func)
        model_config = data.config
        if model_config is None:
            if config is None:
                raise PatchconvError(
                    f"{func}: {str(model_or_path)!r} holds weights only; pass config= "
                    "(model.to_json() or {'class_name': ..., 'config': model.get_config()})"
                )
            model_config = _wrap_config(_config_arg(config, func=func))
        stored = data.weights

        def from_file(index: int, lname: str, h5name: str) -> list[np.ndarray] | None:
            return stored.get(h5name)

        return _build(model_config, from_file, func=func)
    if hasattr(model_or_path, "layers") and hasattr(model_or_path, "get_config"):
        import keras

        model = model_or_path
        live_config = {"class_name": type(model).__name__, "config": model.get_config()}
        if isinstance(model, keras.Sequential):
            live_config["class_name"] = "Sequential"
        elif type(model).__name__ not in ("Functional", "Model"):
            live_config["class_name"] = "Functional"
        by_name = {layer.name: layer for layer in model.layers}
        try:
            live_config["config"]["build_input_shape"] = list(model.input_shape)
        except (AttributeError, ValueError):
            pass

        def from_live(index: int, lname: str, h5name: str) -> list[np.ndarray] | None:
            layer = by_name.get(lname)
            if layer is None:
                return None
            weights = [np.asarray(w) for w in layer.get_weights()]
            if getattr(layer, "lora_enabled", False):
                # LoRA's two factors come last; the kernel Keras runs is the merged one (as a
                # saved .keras file holds it: Keras merges LoRA on save).
                merged = keras.ops.convert_to_numpy(layer.kernel)
                weights = [np.asarray(merged), *weights[1:-2]]
            return weights

        return _build(live_config, from_live, func=func)
    raise TypeError(
        f"{func}: model_or_path must be a keras model or a path to a .keras / .weights.h5 file; "
        f"got {type(model_or_path).__name__}"
    )


# -- export -------------------------------------------------------------------------------------
_NN_TO_KERAS = {
    "Conv2D": "Conv2D",
    "DepthwiseConv2D": "DepthwiseConv2D",
    "Dense": "Dense",
    "Activation": "Activation",
    "ReLU": "ReLU",
    "LeakyReLU": "LeakyReLU",
    "Softmax": "Softmax",
    "MaxPool2D": "MaxPooling2D",
    "AveragePool2D": "AveragePooling2D",
    "GlobalAveragePooling2D": "GlobalAveragePooling2D",
    "Flatten": "Flatten",
    "Dropout": "Dropout",
    "ZeroPadding2D": "ZeroPadding2D",
    "BatchNormalization": "BatchNormalization",
}


def _keras_class(layer: Any, *, func: str) -> str:
    name = type(layer).__name__
    if name not in _NN_TO_KERAS:
        raise PatchconvError(
            f"{func}: layer {layer.name!r} ({name}) has no Keras counterpart; exportable: "
            f"{sorted(_NN_TO_KERAS)}"
        )
    if name == "Flatten" and layer.data_format == "channels_first":
        raise PatchconvError(
            f"{func}: layer {layer.name!r}: Flatten(data_format='channels_first') flattens in "
            "(c, h, w) order, which Keras' Flatten does not; export a channels_last model"
        )
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        raise PatchconvError(
            f"{func}: layer {layer.name!r}: padding_mode {layer.padding_mode!r} has no Keras "
            "counterpart (Keras pads with zeros)"
        )
    return _NN_TO_KERAS[name]


def save_keras_weights(model: nn.Sequential, path: str | PathLike[str]) -> None:
    """Write a patchconv.nn model's weights as a Keras 3 ``.weights.h5`` file (h5py only).

    ``keras_model.load_weights(path)`` then loads them into a Keras ``Sequential`` with the
    same layers in the same order (:func:`to_keras` builds one); Keras matches the groups by
    layer class and position, not by layer name.
    """
    import h5py

    func = "save_keras_weights"
    classes = [_keras_class(layer, func=func) for layer in model.layers]
    if not model.built and any(not layer.built for layer in model.layers if layer.weight_attrs):
        raise PatchconvError(f"{func}: the model is not built yet (call it once or build it)")
    with h5py.File(path, "w") as f:
        layers = f.create_group("layers")
        for layer, name in zip(model.layers, keras_h5_names(classes), strict=True):
            group = layers.create_group(name).create_group("vars")
            group.attrs["name"] = layer.name
            for i, arr in enumerate(layer.get_weights()):
                group.create_dataset(str(i), data=arr)
        f.create_group("vars").attrs["name"] = model.name


def _keras_config(layer: Any) -> dict[str, Any]:
    """A patchconv.nn layer's config in Keras' spelling (for :func:`to_keras`)."""
    config = {k: v for k, v in layer.get_config().items() if k != "seed"}  # dtype kept
    name = type(layer).__name__
    if name == "DepthwiseConv2D":
        config.pop("depthwise_initializer", None)
    if name in ("Conv2D", "Dense"):
        config.pop("kernel_initializer", None)
        config.pop("bias_initializer", None)
    if name == "BatchNormalization":
        for key in list(config):
            if key.endswith("_initializer"):
                del config[key]
    if name == "AveragePool2D":
        if config.pop("count_include_pad", False):
            raise PatchconvError(
                f"to_keras: layer {layer.name!r}: AveragePool2D(count_include_pad=True) has no "
                "Keras counterpart"
            )
    if name == "ZeroPadding2D":
        config["padding"] = tuple(tuple(p) for p in config["padding"])
    if name != "ZeroPadding2D" and config.get("padding", "valid") not in ("valid", "same"):
        raise PatchconvError(
            f"to_keras: layer {layer.name!r}: padding {config['padding']!r} has no Keras "
            "counterpart (Keras has 'valid' and 'same'; add a ZeroPadding2D)"
        )
    if name == "Flatten":
        config = {"name": config["name"], "dtype": config["dtype"]}
    return config


def to_keras(model: nn.Sequential) -> Any:
    """A live ``keras.Sequential`` with the same layers and weights (needs Keras)."""
    import tempfile

    import keras

    func = "to_keras"
    if not model.built or model.input_shape is None:
        raise PatchconvError(f"{func}: the model is not built yet (call it once or build it)")
    # The model's dtype (float64 layers were made float32 ones, their weights rounded).
    dtype = model.layers[0].dtype.name if model.layers else "float32"
    layers = [keras.Input(model.input_shape[1:], dtype=dtype)]
    for layer in model.layers:
        cls = getattr(keras.layers, _keras_class(layer, func=func))
        layers.append(cls(**_keras_config(layer)))
    kmodel = keras.Sequential(layers, name=model.name)
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/model.weights.h5"
        save_keras_weights(model, path)
        kmodel.load_weights(path)
    return kmodel
