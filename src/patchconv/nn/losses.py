"""Losses: softmax cross-entropy with integer labels, and mean squared error.

Keras' argument order: ``loss(y_true, y_pred)``; the value is the mean over the batch.
:meth:`Loss.value_and_grad` returns the gradient with respect to ``y_pred`` as well, which is
what a model's backward pass starts from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patchconv._spec import PatchconvError, as_float_array
from patchconv.nn.activations import softmax

__all__ = [
    "LOSSES",
    "Loss",
    "MeanSquaredError",
    "SoftmaxCrossEntropy",
    "SparseCategoricalCrossentropy",
    "get_loss",
]

_EPSILON = 1e-7  # Keras' backend.epsilon(), the clip for probabilities


class Loss:
    """Base class: subclasses implement :meth:`value_and_grad`."""

    name = "loss"
    #: Whether "accuracy" means argmax(y_pred) == integer label (True) or
    #: argmax(y_pred) == argmax(y_true) (False).
    sparse_labels = False

    def __call__(self, y_true: Any, y_pred: Any) -> float:
        return self.value_and_grad(y_true, y_pred)[0]

    def value_and_grad(self, y_true: Any, y_pred: Any) -> tuple[float, np.ndarray]:
        """(mean loss over the batch, d loss / d y_pred)."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SparseCategoricalCrossentropy(Loss):
    """Keras' ``SparseCategoricalCrossentropy``: integer labels ``(n,)`` against scores
    ``(n, classes)``.

    Parameters
    ----------
    from_logits : bool
        True: ``y_pred`` are logits and the softmax is part of the loss (the stable choice),
        whose gradient is ``(softmax(logits) - onehot) / n``. False (Keras' default):
        ``y_pred`` are probabilities (after a softmax layer), clipped to [1e-7, 1 - 1e-7] as
        Keras does. :class:`SoftmaxCrossEntropy` is this loss with ``from_logits=True``.

    >>> import numpy as np
    >>> loss = SparseCategoricalCrossentropy(from_logits=True)
    >>> round(loss(np.array([0]), np.array([[0.0, 0.0]])), 6)  # log(2)
    0.693147
    """

    name = "sparse_categorical_crossentropy"
    sparse_labels = True

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def _labels(self, y_true: Any, y_pred: np.ndarray, func: str) -> np.ndarray:
        labels = np.asarray(y_true)
        if labels.ndim == y_pred.ndim and labels.shape[-1:] == (1,):
            labels = labels[..., 0]  # Keras accepts (n, 1) labels too
        if labels.dtype.kind not in "iu":
            if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
                labels = labels.astype(np.int64)
            else:
                raise TypeError(
                    f"{func}: y_true must hold integer class labels; got dtype {labels.dtype}"
                )
        if y_pred.ndim < 2 or labels.shape != y_pred.shape[:-1]:
            raise PatchconvError(
                f"{func}: y_true must have shape y_pred.shape[:-1]; got y_true {labels.shape}, "
                f"y_pred {y_pred.shape}"
            )
        classes = y_pred.shape[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= classes):
            raise PatchconvError(
                f"{func}: labels must be in [0, {classes}) for {classes} classes; got labels in "
                f"[{labels.min()}, {labels.max()}]"
            )
        return labels

    def value_and_grad(self, y_true: Any, y_pred: Any) -> tuple[float, np.ndarray]:
        func = type(self).__name__
        pred = as_float_array(y_pred, func=func, name="y_pred")
        labels = self._labels(y_true, pred, func)
        count = max(1, labels.size)
        flat = pred.reshape(-1, pred.shape[-1])  # (n, classes)
        idx = labels.reshape(-1)
        rows = np.arange(flat.shape[0])
        if self.from_logits:
            shifted = flat - flat.max(axis=-1, keepdims=True)
            log_z = np.log(np.exp(shifted).sum(axis=-1))
            value = float((log_z - shifted[rows, idx]).sum() / count)
            grad = softmax(flat)
            grad[rows, idx] -= 1
        else:
            total = flat.sum(axis=-1, keepdims=True)
            probs = flat / total
            clipped = np.clip(probs, _EPSILON, 1 - _EPSILON)
            value = float(-np.log(clipped[rows, idx]).sum() / count)
            # d/d pred of -log(pred_y / sum(pred)), zero where the clip is active.
            inside = (probs[rows, idx] > _EPSILON) & (probs[rows, idx] < 1 - _EPSILON)
            grad = np.broadcast_to(1.0 / total, flat.shape).copy()
            grad[rows, idx] -= 1.0 / flat[rows, idx]
            grad[~inside] = 0
        grad /= count
        return value, grad.reshape(pred.shape).astype(pred.dtype, copy=False)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "from_logits": self.from_logits}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits})"


class SoftmaxCrossEntropy(SparseCategoricalCrossentropy):
    """Softmax cross-entropy from logits with integer labels (the usual classifier loss)."""

    name = "softmax_cross_entropy"

    def __init__(self) -> None:
        super().__init__(from_logits=True)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return "SoftmaxCrossEntropy()"


class MeanSquaredError(Loss):
    """Keras' ``MeanSquaredError``: mean over the last axis, then over the batch.

    >>> import numpy as np
    >>> MeanSquaredError()(np.array([[1.0, 3.0]]), np.array([[0.0, 0.0]]))
    5.0
    """

    name = "mean_squared_error"

    def value_and_grad(self, y_true: Any, y_pred: Any) -> tuple[float, np.ndarray]:
        func = "MeanSquaredError"
        pred = as_float_array(y_pred, func=func, name="y_pred")
        target = as_float_array(y_true, func=func, name="y_true")
        if target.shape != pred.shape:
            raise PatchconvError(
                f"{func}: y_true must have the shape of y_pred; got y_true {target.shape}, "
                f"y_pred {pred.shape}"
            )
        # float16 predictions in float32, as Keras computes losses: 300**2 overflowed to inf.
        work = np.dtype(np.float32) if pred.dtype == np.float16 else pred.dtype
        diff = pred.astype(work, copy=False) - target.astype(work, copy=False)
        value = float(np.mean(diff * diff)) if diff.size else 0.0
        grad = (diff * work.type(2.0 / max(1, diff.size))).astype(pred.dtype, copy=False)
        return value, grad


LOSSES: dict[str, type[Loss]] = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}


def get_loss(loss: Any, *, func: str = "get_loss") -> Loss:
    """A :class:`Loss` from an instance or a name in :data:`LOSSES`."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise PatchconvError(f"{func}: loss must be a Loss or one of {sorted(LOSSES)}; got {loss!r}")
