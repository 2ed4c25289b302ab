"""What the Keras, PyTorch and ONNX adapters share: error wording, file checks, dtype names.

Nothing here imports a framework; every adapter reads files with h5py, zipfile, json or
protobuf, never with pickle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from patchconv._spec import PatchconvError

if TYPE_CHECKING:
    from patchconv.nn import Layer

__all__ = [
    "as_path",
    "float_dtype_name",
    "layer_error",
    "set_layer_weights",
    "weights_dtype",
    "with_dtype",
]

T = TypeVar("T")


def as_path(value: Any, *, func: str, name: str = "path") -> str:
    """A str or os.PathLike naming an existing file -> its str path."""
    if not isinstance(value, (str, PathLike)):
        raise TypeError(f"{func}: {name} must be a path (str or os.PathLike); got {value!r}")
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise PatchconvError(f"{func}: {name} {path!r} does not exist or is not a file")
    return str(path)


def float_dtype_name(dtype: Any, *, func: str, where: str) -> str:
    """A framework's dtype (a name, a Keras DTypePolicy dict, a numpy dtype) -> "float32" etc."""
    if isinstance(dtype, dict):  # Keras 3: {"class_name": "DTypePolicy", "config": {"name": ..}}
        dtype = dtype.get("config", {}).get("name", dtype.get("name"))
    name = str(dtype).replace("torch.", "")
    if name in ("float16", "float32", "float64"):
        return name
    if name in ("half", "float", "double"):
        return {"half": "float16", "float": "float32", "double": "float64"}[name]
    raise PatchconvError(
        f"{func}: {where} has dtype {dtype!r}; patchconv runs float16, float32 or float64 (a "
        "mixed-precision policy is not supported: save the model in float32)"
    )


def layer_error(func: str, where: str, build: Callable[[], T]) -> T:
    """Run ``build``; a PatchconvError or TypeError it raises is re-raised naming the layer."""
    try:
        return build()
    except (PatchconvError, TypeError) as exc:
        if str(exc).startswith(f"{func}: "):  # already names the function (and the layer)
            raise
        raise type(exc)(f"{func}: {where}: {exc}") from exc


def set_layer_weights(layer: Layer, weights: list[np.ndarray], *, func: str, where: str) -> None:
    """Load weights into a patchconv.nn layer, building it from the weights when needed."""
    names = layer.weight_names() if layer.built else None
    if names is not None and len(names) != len(weights):
        raise PatchconvError(
            f"{func}: {where} has {len(weights)} weight arrays; the patchconv layer expects "
            f"{len(names)} {names}"
        )
    layer_error(func, where, lambda: layer.set_weights(list(weights)))


def weights_dtype(arrays: Any) -> np.dtype:
    """The float dtype a model's weights share (float16, float32 or float64), else float32:
    a float64 PyTorch or ONNX model runs in float64, as its framework runs it."""
    kinds = {np.dtype(a.dtype) for a in arrays if np.dtype(a.dtype).kind == "f"}
    one = kinds.pop() if len(kinds) == 1 else np.dtype(np.float32)
    return one if one in (np.float16, np.float32, np.float64) else np.dtype(np.float32)


def with_dtype(layer: Layer, dtype: np.dtype) -> Layer:
    """``layer`` (and any layers in its branches) computing in ``dtype``, set before its
    weights are, so they are not rounded to float32 on the way in."""
    layer.dtype = np.dtype(dtype)
    for branch in getattr(layer, "branches", ()):
        for inner in branch:
            with_dtype(inner, dtype)
    return layer
