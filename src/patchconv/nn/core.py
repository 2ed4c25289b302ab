"""Dense, the activation layers and Dropout."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.layers import (
    _positive_int,
    batch_agnostic,
    build_shape,
    check_initializer,
    check_seed,
    initialize,
)
from patchconv.nn.activations import (
    ACTIVATIONS,
    get_activation,
    relu_general,
    relu_general_backward,
    softmax,
    softmax_backward,
)
from patchconv.nn.base import Layer

__all__ = [
    "Activation",
    "Dense",
    "Dropout",
    "LeakyReLU",
    "ReLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
]


def _number(value: Any, *, func: str, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be a number; got {value!r}")
    return float(value)


class Dense(Layer):
    """Keras' ``Dense``: ``activation(x @ kernel + bias)`` on the last axis.

    Notes
    -----
    Weights: ``[kernel (in, units), bias (units,)]``. A PyTorch ``Linear`` weight ``(units, in)``
    is its transpose.

    Examples
    --------
    >>> import numpy as np
    >>> from patchconv import nn
    >>> layer = nn.Dense(3, seed=0)
    >>> layer(np.ones((2, 5), dtype=np.float32)).shape, layer.kernel.shape
    ((2, 3), (5, 3))
    """

    weight_attrs = ("kernel", "bias")
    trainable_attrs = ("kernel", "bias")

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        seed: int | None = None,
        dtype: str = "float32",
        name: str | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.units = _positive_int(units, name="units", func="Dense")
        self.activation = get_activation(activation, func="Dense")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = check_initializer(
            kernel_initializer, label="kernel_initializer", func="Dense"
        )
        self.bias_initializer = check_initializer(
            bias_initializer, label="bias_initializer", func="Dense"
        )
        self.seed = check_seed(seed, func="Dense")
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    @property
    def built(self) -> bool:
        return self.kernel is not None

    def build(self, input_shape: Sequence[int]) -> None:
        if len(input_shape) < 2:
            raise PatchconvError(
                f"Dense: input must be at least 2-D (n, features); got shape {tuple(input_shape)}"
            )
        shape = build_shape(input_shape, func="Dense.build")  # checked before any weight
        rng = np.random.default_rng(self.seed)
        n_in = shape[-1]
        self.kernel = initialize(
            self.kernel_initializer, (n_in, self.units), seed=rng, dtype=self.dtype
        )
        if self.use_bias:
            self.bias = initialize(self.bias_initializer, (self.units,), seed=rng, dtype=self.dtype)
        self.input_shape = shape

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return (*(int(v) for v in input_shape[:-1]), self.units)

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x).astype(self.dtype, copy=False)
        assert self.kernel is not None
        if arr.ndim < 2 or arr.shape[-1] != self.kernel.shape[0]:
            raise PatchconvError(
                f"Dense: input last axis must equal the kernel's input size "
                f"({self.kernel.shape[0]}); got x {arr.shape}"
            )
        z = arr @ self.kernel  # (..., units)
        if self.bias is not None:
            z += self.bias
        return self._activate(arr, z)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        x, gz = self._activation_grad(grad_out)
        assert self.kernel is not None
        g2 = gz.reshape(-1, self.units)  # (n*..., units)
        self._grads = {"kernel": x.reshape(-1, x.shape[-1]).T @ g2}  # (in, units)
        if self.use_bias:
            self._grads["bias"] = g2.sum(axis=0)
        return gz @ self.kernel.T  # (..., in)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load ``[kernel, bias]``; an unbuilt layer builds from the kernel's shape."""
        if not self.built and isinstance(weights, (list, tuple)) and weights:
            shape = np.shape(weights[0])
            if len(shape) != 2 or shape[1] != self.units:
                raise PatchconvError(
                    f"Dense.set_weights: kernel must have shape (in, {self.units}); got kernel "
                    f"{shape}"
                )
            self.build((1, int(shape[0])))
        super().set_weights(weights)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "seed": self.seed,
        }


class Activation(Layer):
    """Keras' ``Activation``: one named function from
    :data:`patchconv.nn.activations.ACTIVATIONS` applied element-wise (softmax on the last axis).

    >>> import numpy as np
    >>> from patchconv import nn
    >>> nn.Activation("relu")(np.array([[-1.0, 2.0]])).tolist()
    [[0.0, 2.0]]
    """

    def __init__(
        self,
        activation: str = "linear",
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.activation = get_activation(activation, func=type(self).__name__)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def _fn(self, x: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation][0](x)

    def _grad(self, g: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation][1](g, x, y)

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        y = self._fn(arr)
        self._cache = (arr, y)
        return y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise self._no_forward()
        x, y = self._cache
        g = self._check_grad(grad_out, y.shape).astype(y.dtype, copy=False)
        return self._grad(g, x, y)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": self.activation}


class Sigmoid(Activation):
    """``Activation("sigmoid")`` under PyTorch's name."""

    def __init__(
        self, *, name: str | None = None, dtype: str = "float32", trainable: bool = True
    ) -> None:
        super().__init__("sigmoid", name=name, dtype=dtype, trainable=trainable)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["activation"]
        return config


class Tanh(Activation):
    """``Activation("tanh")`` under PyTorch's name."""

    def __init__(
        self, *, name: str | None = None, dtype: str = "float32", trainable: bool = True
    ) -> None:
        super().__init__("tanh", name=name, dtype=dtype, trainable=trainable)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["activation"]
        return config


class ReLU(Activation):
    """Keras' ``ReLU`` layer: ``min(max_value, x)`` for ``x > threshold``, else
    ``negative_slope * (x - threshold)`` (0 at the threshold, as Keras' ``x * (x > threshold)``).
    ``ReLU(max_value=6.0)`` is ReLU6.

    >>> import numpy as np
    >>> from patchconv import nn
    >>> nn.ReLU(max_value=6.0)(np.array([-1.0, 3.0, 9.0])).tolist()
    [0.0, 3.0, 6.0]
    """

    def __init__(
        self,
        max_value: float | None = None,
        negative_slope: float = 0.0,
        threshold: float = 0.0,
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__("linear", name=name, dtype=dtype, trainable=trainable)
        func = type(self).__name__  # ReLU or LeakyReLU
        self.max_value = (
            None if max_value is None else _number(max_value, func=func, name="max_value")
        )
        self.negative_slope = _number(negative_slope, func=func, name="negative_slope")
        self.threshold = _number(threshold, func=func, name="threshold")
        if self.max_value is not None and self.max_value < 0:
            raise PatchconvError(f"{func}: max_value must be >= 0; got {max_value}")
        if self.negative_slope < 0:  # as Keras (PyTorch and ONNX allow it)
            raise PatchconvError(f"{func}: negative_slope must be >= 0; got {negative_slope}")
        if self.threshold < 0:  # as Keras' ReLU layer
            raise PatchconvError(f"{func}: threshold must be >= 0; got {threshold}")

    def _fn(self, x: np.ndarray) -> np.ndarray:
        return relu_general(x, self.max_value, self.negative_slope, self.threshold)

    def _grad(self, g: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return relu_general_backward(g, x, self.max_value, self.negative_slope, self.threshold)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["activation"]
        return {
            **config,
            "max_value": self.max_value,
            "negative_slope": self.negative_slope,
            "threshold": self.threshold,
        }


class LeakyReLU(ReLU):
    """Keras' ``LeakyReLU``: x for x >= 0, else ``negative_slope * x`` (Keras' default 0.3;
    PyTorch's is 0.01)."""

    def __init__(
        self,
        negative_slope: float = 0.3,
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(None, negative_slope, 0.0, name=name, dtype=dtype, trainable=trainable)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["max_value"], config["threshold"]
        return config


class Softmax(Activation):
    """Keras' ``Softmax`` along ``axis`` (default the last), or jointly along a list of axes."""

    def __init__(
        self,
        axis: int | Sequence[int] = -1,
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__("linear", name=name, dtype=dtype, trainable=trainable)
        axes = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
        if not axes or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes):
            raise TypeError(f"Softmax: axis must be an int or a list of ints; got {axis!r}")
        self.axis: int | tuple[int, ...] = axes if isinstance(axis, (list, tuple)) else axes[0]

    def _fn(self, x: np.ndarray) -> np.ndarray:
        axes = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        if not all(-x.ndim <= a < x.ndim for a in axes) or len({a % x.ndim for a in axes}) < len(
            axes
        ):
            raise PatchconvError(
                f"Softmax: axis ({self.axis}) must index the input's {x.ndim} axes, each once; "
                f"got x {x.shape}"
            )
        return softmax(x, self.axis)

    def _grad(self, g: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return softmax_backward(g, y, self.axis)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["activation"]
        axis = list(self.axis) if isinstance(self.axis, tuple) else self.axis
        return {**config, "axis": axis}


class Dropout(Layer):
    """Keras' ``Dropout``: while training, zero each value with probability ``rate`` and scale
    the rest by ``1 / (1 - rate)``; the identity at inference.

    ``seed`` makes the sequence of masks reproducible (one generator per layer).

    >>> import numpy as np
    >>> from patchconv import nn
    >>> layer = nn.Dropout(0.5, seed=0)
    >>> bool((layer(np.ones((4, 4))) == 1).all())
    True
    >>> sorted(set(layer(np.ones((4, 4)), training=True).ravel().tolist()))
    [0.0, 2.0]
    """

    def __init__(
        self,
        rate: float,
        seed: int | None = None,
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        rate = _number(rate, func="Dropout", name="rate")
        if not 0.0 <= rate < 1.0:
            raise PatchconvError(f"Dropout: rate must be in [0, 1); got {rate}")
        self.rate = rate
        self.seed = check_seed(seed, func="Dropout")
        self._rng = np.random.default_rng(self.seed)
        self._mask: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        self._shape = arr.shape
        if not training or self.rate == 0.0:
            self._mask = None
            return arr
        keep = self._rng.random(arr.shape) >= self.rate
        self._mask = keep.astype(arr.dtype) / arr.dtype.type(1.0 - self.rate)
        return arr * self._mask

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise self._no_forward()
        g = self._check_grad(grad_out, self._shape)
        return g if self._mask is None else g * self._mask

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}
