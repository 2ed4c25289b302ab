"""Element-wise activations (and softmax) with their derivatives, by Keras' names.

Each entry of :data:`ACTIVATIONS` is ``(forward, backward)``: ``y = forward(x)`` and
``grad_x = backward(grad_y, x, y)``, so layers can keep x and y from the forward pass and never
recompute them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError

__all__ = ["ACTIVATIONS", "get_activation", "relu_general", "softmax"]

Forward = Callable[[np.ndarray], np.ndarray]
Backward = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x)).
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def softmax(x: np.ndarray, axis: int | tuple[int, ...] = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along ``axis``, shifted by the max so exp never overflows."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(g: np.ndarray, y: np.ndarray, axis: int | tuple[int, ...] = -1) -> np.ndarray:
    """The softmax Jacobian-vector product: ``y * (g - sum(g * y))`` along ``axis``."""
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


def relu_general(
    x: np.ndarray, max_value: float | None, negative_slope: float, threshold: float
) -> np.ndarray:
    """Keras' ReLU: ``max_value`` above it, x above ``threshold``, ``negative_slope*(x-threshold)``
    below it (0 at it, as Keras' ``x * (x > threshold)``)."""
    y = (
        np.where(x > threshold, x, negative_slope * (x - threshold))
        if (negative_slope or threshold)
        else np.maximum(x, 0)
    )
    if max_value is not None:
        y = np.minimum(y, max_value)
    return y.astype(x.dtype, copy=False)


def relu_general_backward(
    g: np.ndarray, x: np.ndarray, max_value: float | None, negative_slope: float, threshold: float
) -> np.ndarray:
    # At the threshold itself Keras' gradient is 0, from both sides' terms; but a plain leaky
    # ReLU (threshold 0, no max_value), which Keras and PyTorch run as leaky_relu, takes
    # negative_slope at 0.
    at = negative_slope if threshold == 0 and max_value is None else 0.0
    slope = np.where(x > threshold, 1.0, np.where(x < threshold, negative_slope, at))
    slope = slope.astype(g.dtype)
    if max_value is not None:
        slope[x >= max_value] = 0
    return g * slope


_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


ACTIVATIONS: dict[str, tuple[Forward, Backward]] = {
    "linear": (lambda x: x, lambda g, x, y: g),
    "relu": (lambda x: np.maximum(x, 0), lambda g, x, y: g * (x > 0)),
    "relu6": (lambda x: np.clip(x, 0, 6), lambda g, x, y: g * ((x > 0) & (x < 6))),
    # Keras' activations.leaky_relu default slope is 0.2 (the LeakyReLU layer's is 0.3).
    "leaky_relu": (
        lambda x: np.where(x > 0, x, 0.2 * x),
        lambda g, x, y: g * np.where(x > 0, 1.0, 0.2).astype(g.dtype),
    ),
    "elu": (
        lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
        lambda g, x, y: g * np.where(x > 0, 1.0, y + 1.0).astype(g.dtype),
    ),
    "selu": (
        lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0))),
        lambda g, x, y: (
            g * np.where(x > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA).astype(g.dtype)
        ),
    ),
    "sigmoid": (_sigmoid, lambda g, x, y: g * y * (1 - y)),
    # Keras 3: relu6(x + 3) / 6.
    "hard_sigmoid": (
        lambda x: np.clip(x + 3, 0, 6) / 6,
        lambda g, x, y: g * ((x > -3) & (x < 3)) / 6,
    ),
    "tanh": (np.tanh, lambda g, x, y: g * (1 - y * y)),
    "softplus": (lambda x: np.logaddexp(0, x), lambda g, x, y: g * _sigmoid(x)),
    "silu": (
        lambda x: x * _sigmoid(x),
        lambda g, x, y: g * (_sigmoid(x) * (1 + x * (1 - _sigmoid(x)))),
    ),
    "softmax": (softmax, lambda g, x, y: softmax_backward(g, y)),
}
ACTIVATIONS["swish"] = ACTIVATIONS["silu"]


def get_activation(name: Any, *, func: str) -> str:
    """Check an activation name (None means "linear"); returns the canonical key."""
    if name is None:
        return "linear"
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise PatchconvError(
            f"{func}: activation must be one of {sorted(ACTIVATIONS)}; got {name!r}"
        )
    return name.lower()
