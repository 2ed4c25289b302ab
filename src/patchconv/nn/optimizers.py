"""Optimizers with Keras' update rules and defaults: SGD (momentum, Nesterov) and Adam.

An optimizer updates arrays in place: ``step(params, grads)`` with a layer's or a model's
``params()`` and ``grads()``. Per-array state (velocities, moments) is keyed by the array
itself, so the same optimizer serves a whole model across steps.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError

__all__ = ["OPTIMIZERS", "SGD", "Adam", "Optimizer", "PiecewiseConstantDecay", "get_optimizer"]


def _rate(
    value: Any,
    *,
    func: str,
    name: str,
    low: float,
    high: float | None = None,
    high_included: bool = False,
) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be a number; got {value!r}")
    value = float(value)
    below_high = high is None or value < high or (high_included and value == high)
    if not (value >= low and below_high) or not np.isfinite(value):
        close = "]" if high_included else ")"
        bound = f">= {low}" if high is None else f"in [{low}, {high}{close}"
        raise PatchconvError(f"{func}: {name} must be {bound}; got {value}")
    return value


class PiecewiseConstantDecay:
    """Keras' learning-rate schedule: ``values[0]`` up to step ``boundaries[0]``, then
    ``values[1]`` up to ``boundaries[1]``, and so on (steps count from 0).

    >>> schedule = PiecewiseConstantDecay([100], [1e-3, 1e-4])
    >>> schedule(100), schedule(101)
    (0.001, 0.0001)
    """

    def __init__(self, boundaries: Sequence[int], values: Sequence[float]) -> None:
        func = "PiecewiseConstantDecay"
        for name, seq in (("boundaries", boundaries), ("values", values)):
            if isinstance(seq, (str, bytes)) or not isinstance(seq, (Sequence, np.ndarray)):
                raise TypeError(f"{func}: {name} must be a sequence; got {seq!r}")
        if not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in boundaries):
            raise TypeError(f"{func}: boundaries must be numbers (steps); got {list(boundaries)}")
        if len(values) != len(boundaries) + 1:
            raise PatchconvError(
                f"{func}: values must have one more entry than boundaries; got "
                f"{len(boundaries)} boundaries, {len(values)} values"
            )
        if list(boundaries) != sorted(boundaries):
            raise PatchconvError(f"{func}: boundaries must increase; got {list(boundaries)}")
        self.boundaries = [int(b) if float(b).is_integer() else float(b) for b in boundaries]
        self.values = [_rate(v, func=func, name="values", low=0.0) for v in values]

    def __call__(self, step: int) -> float:
        for boundary, value in zip(self.boundaries, self.values, strict=False):
            if step <= boundary:
                return value
        return self.values[-1]

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values}


class Optimizer:
    """Base class: subclasses implement :meth:`_update` for one array.

    ``learning_rate`` is a number or a schedule: a callable of the step count (Keras'
    ``optimizer.iterations``, from 0) such as :class:`PiecewiseConstantDecay`.
    """

    def __init__(self, learning_rate: float | Callable[[int], float]) -> None:
        if callable(learning_rate):
            self.learning_rate: float | Callable[[int], float] = learning_rate
        else:
            self.learning_rate = _rate(
                learning_rate, func=type(self).__name__, name="learning_rate", low=0.0
            )
        self.iterations = 0
        self._lr = 0.0
        # id(array) -> (array, state): holding the array keeps its id from being reused.
        self._state: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def _slots(self, param: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        entry = self._state.get(id(param))
        if entry is None:
            entry = (param, {n: np.zeros_like(param) for n in names})
            self._state[id(param)] = entry
        return entry[1]

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """Update every array of ``params`` in place from the matching ``grads``."""
        func = f"{type(self).__name__}.step"
        if len(params) != len(grads):
            raise PatchconvError(
                f"{func}: params and grads must pair up; got {len(params)} params, "
                f"{len(grads)} grads"
            )
        for p, g in zip(params, grads, strict=True):
            if p.shape != np.shape(g):
                raise PatchconvError(
                    f"{func}: each grad must have its param's shape; got param {p.shape}, grad "
                    f"{np.shape(g)}"
                )
        self._lr = self.current_learning_rate()
        self.iterations += 1
        for p, g in zip(params, grads, strict=True):
            self._update(p, np.asarray(g, dtype=p.dtype))

    def current_learning_rate(self) -> float:
        """The learning rate the next step uses."""
        if callable(self.learning_rate):
            return float(self.learning_rate(self.iterations))
        return self.learning_rate

    def apply_gradients(self, grads_and_vars: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Keras' spelling: ``apply_gradients(zip(grads, params))``."""
        pairs = list(grads_and_vars)
        self.step([v for _, v in pairs], [g for g, _ in pairs])

    def _update(self, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        lr = self.learning_rate
        if callable(lr):
            config = lr.get_config() if hasattr(lr, "get_config") else {}
            return {"learning_rate": {"class_name": type(lr).__name__, "config": config}}
        return {"learning_rate": lr}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Keras' ``SGD``: ``v = momentum * v - lr * g; w += v`` (Nesterov:
    ``w += momentum * v - lr * g``); plain ``w -= lr * g`` when momentum is 0.

    >>> import numpy as np
    >>> w = np.array([1.0]); SGD(0.1).step([w], [np.array([2.0])]); w.tolist()
    [0.8]
    """

    def __init__(
        self,
        learning_rate: float | Callable[[int], float] = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(learning_rate)
        self.momentum = _rate(  # Keras allows 1 (no decay)
            momentum, func="SGD", name="momentum", low=0.0, high=1.0, high_included=True
        )
        self.nesterov = bool(nesterov)

    def _update(self, param: np.ndarray, grad: np.ndarray) -> None:
        lr = param.dtype.type(self._lr)
        if self.momentum == 0:
            param -= lr * grad
            return
        mom = param.dtype.type(self.momentum)
        v = self._slots(param, ("velocity",))["velocity"]
        v *= mom
        v -= lr * grad
        if self.nesterov:
            param += mom * v - lr * grad
        else:
            param += v

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Keras' ``Adam`` (defaults lr 0.001, beta_1 0.9, beta_2 0.999, epsilon 1e-7):
    ``m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2);
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)``.

    Notes
    -----
    Keras adds epsilon to ``sqrt(v)`` before the bias correction, PyTorch after it; the two
    agree for epsilon -> 0.
    """

    def __init__(
        self,
        learning_rate: float | Callable[[int], float] = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
    ) -> None:
        super().__init__(learning_rate)
        self.beta_1 = _rate(beta_1, func="Adam", name="beta_1", low=0.0, high=1.0)
        self.beta_2 = _rate(beta_2, func="Adam", name="beta_2", low=0.0, high=1.0)
        self.epsilon = _rate(epsilon, func="Adam", name="epsilon", low=0.0)

    def _update(self, param: np.ndarray, grad: np.ndarray) -> None:
        t = self.iterations
        slots = self._slots(param, ("m", "v"))
        m, v = slots["m"], slots["v"]
        dt = param.dtype.type
        alpha = self._lr * np.sqrt(1 - self.beta_2**t) / (1 - self.beta_1**t)
        m += (grad - m) * dt(1 - self.beta_1)
        v += (grad * grad - v) * dt(1 - self.beta_2)
        param -= dt(alpha) * m / (np.sqrt(v) + dt(self.epsilon))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
        }


OPTIMIZERS: dict[str, Callable[[], Optimizer]] = {"sgd": SGD, "adam": Adam}


def get_optimizer(optimizer: Any, *, func: str = "get_optimizer") -> Optimizer:
    """An :class:`Optimizer` from an instance or a name in :data:`OPTIMIZERS` (defaults)."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise PatchconvError(
        f"{func}: optimizer must be an Optimizer or one of {sorted(OPTIMIZERS)}; got {optimizer!r}"
    )
