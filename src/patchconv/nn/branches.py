"""AddBranches: the sum of parallel stacks of layers (residual blocks, e.g. read from ONNX).

``AddBranches([[conv, bn, relu, conv, bn], []])`` is a ResNet block with an identity skip
(an empty branch is the identity); ``AddBranches([[conv, bn], [conv_1x1]])`` one with a
projection skip. It follows the :class:`patchconv.nn.Layer` protocol, so it sits in a
:class:`patchconv.nn.Sequential`, trains and saves like any other layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.layers import batch_agnostic, build_shape
from patchconv.nn.base import Layer, set_all_weights

__all__ = ["AddBranches"]


class AddBranches(Layer):
    """``y = sum(branch(x) for branch in branches)``; an empty branch is ``x`` itself.

    Weights are every branch's, in branch order, then layer order; ``weight_names`` are
    ``"{branch}.{layer}.{weight}"``.

    >>> import numpy as np
    >>> from patchconv import nn
    >>> block = AddBranches([[nn.ReLU()], []])
    >>> block(np.array([[-1.0, 2.0]])).tolist()
    [[-1.0, 4.0]]
    """

    def __init__(
        self,
        branches: Sequence[Sequence[Layer]],
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if not isinstance(branches, (list, tuple)) or len(branches) < 2:
            raise PatchconvError(
                f"AddBranches: branches must be a list of at least 2 lists of layers; got "
                f"{branches!r}"
            )
        self.branches = [list(b) for b in branches]
        for branch in self.branches:
            for layer in branch:
                if not isinstance(layer, Layer):
                    raise TypeError(
                        f"AddBranches: every branch must hold patchconv.nn layers; got "
                        f"{type(layer).__name__}"
                    )
        self._out_shape: tuple[int, ...] | None = None
        if not trainable:  # frozen: its layers too (set before they were held)
            self.trainable = False

    @property
    def trainable(self) -> bool:
        """Whether its weights train. Setting it sets every branch layer's too, as Keras
        does, so a frozen block's BatchNormalization runs on its moving statistics."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for layer in self._layers():
            layer.trainable = self._trainable

    def _layers(self) -> list[Layer]:
        return [layer for branch in getattr(self, "branches", []) for layer in branch]

    def build(self, input_shape: Sequence[int]) -> None:
        first = build_shape(input_shape, func="AddBranches.build")
        for branch in self.branches:
            shape = first
            for layer in branch:
                if not layer.built:
                    layer.build(shape)
                shape = tuple(layer.compute_output_shape(shape))
        super().build(input_shape)

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shapes = []
        for branch in self.branches:
            shape = tuple(int(v) for v in input_shape)
            for layer in branch:
                shape = tuple(layer.compute_output_shape(shape))
            shapes.append(shape)
        if len(set(shapes)) != 1:
            raise PatchconvError(
                f"AddBranches: every branch must give the same shape; got {shapes} for input "
                f"{tuple(input_shape)}"
            )
        return shapes[0]

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        total: np.ndarray | None = None
        for branch in self.branches:
            out = arr
            for layer in branch:
                out = layer.forward(out, training=training)
            if total is not None and out.shape != total.shape:
                raise PatchconvError(
                    f"AddBranches: every branch must give the same shape; got {total.shape} and "
                    f"{out.shape}"
                )
            total = out.copy() if total is None else total + out
        assert total is not None
        self._out_shape = total.shape
        return total

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._out_shape is None:
            raise self._no_forward()
        g = self._check_grad(grad_out, self._out_shape)
        total: np.ndarray | None = None
        for branch in self.branches:
            gb = g
            for layer in reversed(branch):
                gb = layer.backward(gb)
            total = gb.copy() if total is None else total + gb
        assert total is not None
        return total

    # Weights are the sublayers': the base class's attribute lists do not apply.
    def weight_names(self) -> list[str]:
        return [
            f"{b}.{i}.{w}"
            for b, branch in enumerate(self.branches)
            for i, layer in enumerate(branch)
            for w in layer.weight_names()
        ]

    def get_weights(self) -> list[np.ndarray]:
        return [w for layer in self._layers() for w in layer.get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Every branch layer's weights in order, all or nothing (see :func:`set_all_weights`)."""
        set_all_weights(self._layers(), weights, func="AddBranches.set_weights")

    def params(self) -> list[np.ndarray]:
        if not self.trainable:
            return []
        return [p for layer in self._layers() for p in layer.params()]

    def grads(self) -> list[np.ndarray]:
        if not self.trainable:
            return []
        return [g for layer in self._layers() for g in layer.grads()]

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self._layers())

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "branches": [
                [{"class_name": type(layer).__name__, "config": layer.get_config()} for layer in b]
                for b in self.branches
            ],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AddBranches:
        """A new, unbuilt block from :meth:`get_config` (layer classes from
        :data:`patchconv.nn.LAYERS`, and AddBranches itself)."""
        from patchconv.nn.model import LAYERS  # model imports this module: import late

        known: dict[str, Any] = {**LAYERS, "AddBranches": cls}
        options = dict(config)
        branches = []
        for branch in options.pop("branches", []):
            layers = []
            for entry in branch:
                name = entry.get("class_name")
                if name not in known:
                    raise PatchconvError(
                        f"AddBranches.from_config: unknown layer class {name!r}; known: "
                        f"{sorted(known)}"
                    )
                layers.append(known[name].from_config(dict(entry.get("config", {}))))
            branches.append(layers)
        return cls(branches, **options)

    def __repr__(self) -> str:
        inner = ", ".join(f"[{', '.join(type(la).__name__ for la in b)}]" for b in self.branches)
        return f"AddBranches({inner})"
