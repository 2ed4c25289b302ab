"""The Layer protocol every patchconv.nn layer follows, and the helpers they share.

A layer builds lazily from the first input shape, runs ``forward(x, training=False)``, and after a
forward pass ``backward(grad_out)`` returns the gradient with respect to its input and stores the
gradients of its trainable weights, which :meth:`Layer.grads` returns in the order of
:meth:`Layer.params`. ``params()`` are the live arrays an optimizer updates in place.

Weights follow Keras' order and names (``get_weights`` / ``set_weights`` / ``weight_names``), and
``get_config`` / ``from_config`` round-trip the constructor arguments with Keras' names, so a model
importer maps a Keras, PyTorch or ONNX layer onto one of these by its config and its weights.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from patchconv._spec import PatchconvError, as_float_array
from patchconv.layers import batch_agnostic, build_shape, check_name, float_dtype
from patchconv.nn.activations import ACTIVATIONS

__all__ = ["Layer", "float_dtype", "set_all_weights", "spatial_axes"]


def _snake(name: str) -> str:
    """``GlobalAveragePooling2D`` -> ``global_average_pooling2d`` (Keras' default layer names)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


def set_all_weights(layers: Sequence[Layer], weights: Sequence[Any], *, func: str) -> None:
    """Load one flat list of weights into ``layers`` in order, all or nothing: the count is
    checked first, and if any layer refuses its arrays (shape, dtype), the layers loaded before
    it get their old weights back before the error propagates."""
    counts = [len(layer.weight_names()) for layer in layers]
    if not isinstance(weights, (list, tuple)) or len(weights) != sum(counts):
        got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
        raise PatchconvError(f"{func}: expected {sum(counts)} arrays; got {got}")
    done: list[tuple[Layer, list[np.ndarray]]] = []
    start = 0
    try:
        for layer, count in zip(layers, counts, strict=True):
            if count:
                old = layer.get_weights()
                layer.set_weights(list(weights[start : start + count]))
                done.append((layer, old))
            start += count
    except Exception:
        for layer, old in reversed(done):
            if old:
                layer.set_weights(old)
        raise


def spatial_axes(data_format: str) -> tuple[int, int, int]:
    """(height axis, width axis, channel axis) of a 4-D activation in ``data_format``."""
    return (2, 3, 1) if data_format == "channels_first" else (1, 2, 3)


class Layer:
    """Base class of every patchconv.nn layer.

    Subclasses set ``weight_attrs`` (attribute names in Keras' weight order) and
    ``trainable_attrs`` (the subset an optimizer updates; BatchNormalization's moving statistics
    are weights but not trainable), and implement ``build`` (if they have weights),
    ``compute_output_shape``, ``forward`` and ``backward``.

    Attributes
    ----------
    name : str
    trainable : bool
        False freezes the layer: ``params()`` is empty (BatchNormalization also stops updating
        its moving statistics, as in Keras).
    input_shape : tuple of int or None
        The shape the layer was built for (batch size included, as first seen).
    """

    weight_attrs: ClassVar[tuple[str, ...]] = ()
    trainable_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, *, name: str | None = None, dtype: Any = "float32", trainable: bool = True
    ) -> None:
        cls = type(self).__name__
        self.name = check_name(name, func=cls) or _snake(cls)
        self.dtype = float_dtype(dtype, func=cls)
        self.trainable = bool(trainable)
        self.input_shape: tuple[int, ...] | None = None
        self._grads: dict[str, np.ndarray] = {}

    # -- building -------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.input_shape is not None

    def build(self, input_shape: Sequence[int]) -> None:
        """Create the weights for inputs of ``input_shape``; weightless layers only record it."""
        self.input_shape = build_shape(input_shape, func=f"{type(self).__name__}.build")

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The output shape for ``input_shape``, computing nothing (Keras' method)."""
        return tuple(int(v) for v in input_shape)

    def _prepare(self, x: Any) -> np.ndarray:
        """Check and cast the input, build on first use."""
        arr = as_float_array(x, func=type(self).__name__, name="x")
        if not self.built:
            self.build(arr.shape)
        return arr

    # -- running --------------------------------------------------------------------------
    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        return self.forward(x, training=training)

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        """The layer's output for ``x``; keeps what :meth:`backward` needs."""
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Gradient with respect to the last forward input; stores the weights' gradients."""
        raise NotImplementedError

    def backward_weights(self, grad_out: np.ndarray) -> None:
        """:meth:`backward` for a model's first trainable layer: the weights' gradients alone,
        as nothing needs the input's. Layers that can skip that gradient's work (the
        convolutions) override it."""
        self.backward(grad_out)

    def _check_grad(self, grad_out: Any, expected: tuple[int, ...]) -> np.ndarray:
        func = f"{type(self).__name__}.backward"
        g = as_float_array(grad_out, func=func, name="grad_out")
        if g.shape != expected:
            raise PatchconvError(
                f"{func}: grad_out must have the last output's shape {expected}; got grad_out "
                f"{g.shape}"
            )
        return g

    def _no_forward(self) -> PatchconvError:
        return PatchconvError(f"{type(self).__name__}.backward: call forward before backward")

    # For layers that end in an activation (Conv2D, DepthwiseConv2D, Dense).
    activation: str = "linear"
    _fused: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _activate(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``activation(z)``, keeping ``(x, z, y)`` for :meth:`_activation_grad`."""
        y = ACTIVATIONS[self.activation][0](z)
        self._fused = (x, z, y)
        return y

    def _activation_grad(self, grad_out: Any) -> tuple[np.ndarray, np.ndarray]:
        """The last forward's input and the gradient of its pre-activation ``z``."""
        if self._fused is None:
            raise self._no_forward()
        x, z, y = self._fused
        g = self._check_grad(grad_out, y.shape).astype(self.dtype, copy=False)
        return x, ACTIVATIONS[self.activation][1](g, z, y)

    # -- weights --------------------------------------------------------------------------
    def weight_names(self) -> list[str]:
        """Names of :meth:`get_weights`' arrays, in the same (Keras') order."""
        return [a for a in self.weight_attrs if getattr(self, a, None) is not None]

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights in Keras' order (empty before the layer is built)."""
        return [np.array(getattr(self, a), copy=True) for a in self.weight_names()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load weights in Keras' order; shapes must match the built layer."""
        func = f"{type(self).__name__}.set_weights"
        if not self.built:
            raise PatchconvError(f"{func}: build the layer (or call it once) before set_weights")
        names = self.weight_names()
        if not isinstance(weights, (list, tuple)) or len(weights) != len(names):
            count = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise PatchconvError(f"{func}: expected {len(names)} arrays {names}; got {count}")
        arrays = []
        for attr, value in zip(names, weights, strict=True):
            arr = as_float_array(value, func=func, name=attr)
            current = getattr(self, attr)
            if arr.shape != current.shape:
                raise PatchconvError(
                    f"{func}: {attr} must have shape {current.shape}; got {attr} {arr.shape}"
                )
            arrays.append(arr)
        for attr, arr in zip(names, arrays, strict=True):
            getattr(self, attr)[...] = arr  # in place: an optimizer's state stays attached

    def params(self) -> list[np.ndarray]:
        """The trainable weight arrays themselves (not copies), updated in place by optimizers."""
        if not self.trainable:
            return []
        return [
            getattr(self, a) for a in self.trainable_attrs if getattr(self, a, None) is not None
        ]

    def grads(self) -> list[np.ndarray]:
        """Gradients from the last :meth:`backward`, aligned with :meth:`params`."""
        if not self.trainable:
            return []
        out = []
        for attr in self.trainable_attrs:
            if getattr(self, attr, None) is None:
                continue
            if attr not in self._grads:
                raise PatchconvError(
                    f"{type(self).__name__}.grads: no gradient for {attr}; call backward first"
                )
            out.append(self._grads[attr])
        return out

    def count_params(self) -> int:
        return int(sum(np.size(getattr(self, a)) for a in self.weight_names()))

    # -- config ---------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-ready dict (Keras' names)."""
        return {"name": self.name, "dtype": self.dtype.name, "trainable": self.trainable}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        """A new, unbuilt layer from :meth:`get_config`'s dict."""
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
