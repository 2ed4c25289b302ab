"""BatchNormalization with Keras' semantics."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.layers import build_shape, check_initializer, initialize
from patchconv.nn.base import Layer

__all__ = ["BatchNormalization"]


class BatchNormalization(Layer):
    """Keras' ``BatchNormalization`` over one feature axis.

    Training: ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` with the batch's mean and
    (biased) variance over every axis but ``axis``, and
    ``moving = moving * momentum + batch_stat * (1 - momentum)``. Inference (and a layer with
    ``trainable=False``, as in Keras) uses the moving statistics.

    Parameters
    ----------
    axis : int
        The feature axis: -1 for channels_last, 1 for channels_first.
    momentum : float
        Keras' convention (0.99); PyTorch's ``momentum`` m corresponds to ``1 - m`` here.
    epsilon : float
        Keras' 1e-3 (PyTorch's default is 1e-5).
    center, scale : bool
        Whether beta and gamma exist.

    Notes
    -----
    Weights: ``[gamma, beta, moving_mean, moving_variance]`` (Keras' order; gamma or beta
    absent when scale or center is False). Only gamma and beta are trainable. PyTorch's
    ``running_var`` is the unbiased batch variance, Keras' (and this layer's) the biased one:
    copied statistics give the same inference outputs either way.

    >>> import numpy as np
    >>> from patchconv import nn
    >>> bn = nn.BatchNormalization()
    >>> y = bn(np.array([[0.0], [2.0]]), training=True)
    >>> [round(float(v), 4) for v in y.ravel()], [w.shape for w in bn.get_weights()]
    ([-0.9995, 0.9995], [(1,), (1,), (1,), (1,)])
    """

    weight_attrs = ("gamma", "beta", "moving_mean", "moving_variance")
    trainable_attrs = ("gamma", "beta")

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: str = "zeros",
        gamma_initializer: str = "ones",
        moving_mean_initializer: str = "zeros",
        moving_variance_initializer: str = "ones",
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        func = "BatchNormalization"
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise TypeError(f"{func}: axis must be an int; got {axis!r}")
        for label, value in (("momentum", momentum), ("epsilon", epsilon)):
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TypeError(f"{func}: {label} must be a number; got {value!r}")
        if not 0.0 <= momentum <= 1.0:
            raise PatchconvError(f"{func}: momentum must be in [0, 1]; got {momentum}")
        if epsilon <= 0:
            raise PatchconvError(f"{func}: epsilon must be > 0; got {epsilon}")
        inits = {
            "beta_initializer": beta_initializer,
            "gamma_initializer": gamma_initializer,
            "moving_mean_initializer": moving_mean_initializer,
            "moving_variance_initializer": moving_variance_initializer,
        }
        self.initializers = {k: check_initializer(v, label=k, func=func) for k, v in inits.items()}
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma: np.ndarray | None = None
        self.beta: np.ndarray | None = None
        self.moving_mean: np.ndarray | None = None
        self.moving_variance: np.ndarray | None = None
        self._cache: Any = None

    @property
    def built(self) -> bool:
        return self.moving_mean is not None

    def _feature_axis(self, ndim: int) -> int:
        if not -ndim <= self.axis < ndim or self.axis % ndim == 0:
            raise PatchconvError(
                f"BatchNormalization: axis ({self.axis}) must be a feature axis of the "
                f"{ndim}-D input (not the batch axis 0)"
            )
        return self.axis % ndim

    def build(self, input_shape: Sequence[int]) -> None:
        checked = build_shape(input_shape, func="BatchNormalization.build")  # before any weight
        features = checked[self._feature_axis(len(checked))]
        shape = (features,)
        init = self.initializers
        if self.scale:
            self.gamma = initialize(init["gamma_initializer"], shape, dtype=self.dtype)
        if self.center:
            self.beta = initialize(init["beta_initializer"], shape, dtype=self.dtype)
        self.moving_mean = initialize(init["moving_mean_initializer"], shape, dtype=self.dtype)
        self.moving_variance = initialize(
            init["moving_variance_initializer"], shape, dtype=self.dtype
        )
        self.input_shape = checked

    def _broadcast(self, v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
        shape = [1] * ndim
        shape[axis] = v.shape[0]
        return v.reshape(shape)

    def _work(self) -> np.dtype:
        """The dtype it computes in: float32 for a float16 layer (as Keras computes the
        moments), whose variance of values near 30 overflowed float16 (outputs 0, moving
        variance inf)."""
        return np.dtype(np.float32) if self.dtype == np.float16 else self.dtype

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        work = self._work()
        arr = self._prepare(x).astype(self.dtype, copy=False).astype(work, copy=False)
        axis = self._feature_axis(arr.ndim)
        assert self.moving_mean is not None and self.moving_variance is not None
        if arr.shape[axis] != self.moving_mean.shape[0]:
            raise PatchconvError(
                f"BatchNormalization: input features on axis {self.axis} "
                f"({arr.shape[axis]}) must equal the built size ({self.moving_mean.shape[0]}); "
                f"got x {arr.shape}"
            )
        reduce = tuple(a for a in range(arr.ndim) if a != axis)
        training = bool(training) and self.trainable
        if training and arr.size == 0:  # an empty batch: no statistics (NaN), none kept
            training = False
        if training:
            mean = arr.mean(axis=reduce)
            var = arr.var(axis=reduce)
            m = work.type(self.momentum)
            moving_mean = self.moving_mean.astype(work, copy=False) * m + mean * (1 - m)
            moving_variance = self.moving_variance.astype(work, copy=False) * m + var * (1 - m)
            self.moving_mean[...] = moving_mean
            self.moving_variance[...] = moving_variance
        else:
            mean = self.moving_mean.astype(work, copy=False)
            var = self.moving_variance.astype(work, copy=False)
        inv_std = (1.0 / np.sqrt(var + work.type(self.epsilon))).astype(work, copy=False)
        xhat = (arr - self._broadcast(mean, arr.ndim, axis)) * self._broadcast(
            inv_std, arr.ndim, axis
        )
        y = xhat
        if self.gamma is not None:
            y = y * self._broadcast(self.gamma.astype(work, copy=False), arr.ndim, axis)
        if self.beta is not None:
            y = y + self._broadcast(self.beta.astype(work, copy=False), arr.ndim, axis)
        self._cache = (xhat, inv_std, axis, reduce, training, y.shape)
        return y.astype(self.dtype, copy=False)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise self._no_forward()
        xhat, inv_std, axis, reduce, training, shape = self._cache
        work = self._work()
        g = (
            self._check_grad(grad_out, shape)
            .astype(self.dtype, copy=False)
            .astype(work, copy=False)
        )
        self._grads = {}
        if self.gamma is not None:
            self._grads["gamma"] = (g * xhat).sum(axis=reduce).astype(self.dtype, copy=False)
        if self.beta is not None:
            self._grads["beta"] = g.sum(axis=reduce).astype(self.dtype, copy=False)
        gamma = (
            self.gamma.astype(work, copy=False) if self.gamma is not None else np.ones_like(inv_std)
        )
        dxhat = g * self._broadcast(gamma, g.ndim, axis)
        scale = self._broadcast(inv_std, g.ndim, axis)
        if not training:
            return (dxhat * scale).astype(self.dtype, copy=False)
        # d/dx of (x - mean) / std with batch statistics: the mean and the variance depend on x.
        mean_dxhat = dxhat.mean(axis=reduce, keepdims=True)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=reduce, keepdims=True)
        dx = scale * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
        return dx.astype(self.dtype, copy=False)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load ``[gamma, beta, moving_mean, moving_variance]``; builds from their length."""
        if not self.built and isinstance(weights, (list, tuple)) and weights:
            shape = np.shape(weights[0])
            if len(shape) != 1:
                raise PatchconvError(
                    f"BatchNormalization.set_weights: weights must be 1-D (features,); got {shape}"
                )
            # The smallest input whose axis holds the features: (1, f) for axis -1 or 1,
            # (1, 1, 1, f) for axis 3 (a Keras model with free height and width).
            a, f = self.axis, int(shape[0])
            self.build((1,) * a + (f,) if a >= 0 else (1, f) + (1,) * (-a - 1))
        super().set_weights(weights)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            **self.initializers,
        }
