"""Flatten and ZeroPadding2D."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from patchconv._spec import PadPairs, PatchconvError, normalize_data_format, normalize_padding
from patchconv.layers import batch_agnostic
from patchconv.nn.base import Layer, spatial_axes

__all__ = ["Flatten", "ZeroPadding2D"]


class Flatten(Layer):
    """Flatten everything but the batch axis, in the input array's own order.

    ``channels_last`` input ``(n, h, w, c)`` gives ``(n, h*w*c)`` in (h, w, c) order (Keras);
    ``channels_first`` input ``(n, c, h, w)`` gives (c, h, w) order, PyTorch's and ONNX's
    ``Flatten``, so the weights of a Dense layer that follows are PyTorch's unchanged.

    Notes
    -----
    Keras' own ``Flatten(data_format="channels_first")`` moves channels last before
    flattening; to import such a layer, transpose the next Dense kernel's rows instead
    (or use ``Flatten(data_format="channels_last")`` after a channels-last model).

    >>> import numpy as np
    >>> from patchconv import nn
    >>> nn.Flatten(data_format="channels_first")(np.arange(8.0).reshape(1, 2, 2, 2)).tolist()
    [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]]
    """

    def __init__(
        self,
        data_format: str = "channels_last",
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.data_format = normalize_data_format(data_format, func="Flatten")
        self._shape: tuple[int, ...] | None = None

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        if len(input_shape) < 1:
            raise PatchconvError("Flatten: input must have a batch axis; got shape ()")
        return (int(input_shape[0]), math.prod(int(v) for v in input_shape[1:]))

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        self._shape = arr.shape
        return arr.reshape(self.compute_output_shape(arr.shape))

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise self._no_forward()
        g = self._check_grad(grad_out, self.compute_output_shape(self._shape))
        return g.reshape(self._shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format}


class ZeroPadding2D(Layer):
    """Keras' ``ZeroPadding2D``: zeros around height and width.

    Parameters
    ----------
    padding : int, (int, int) or ((top, bottom), (left, right))
    data_format : {"channels_last", "channels_first"}

    >>> import numpy as np
    >>> from patchconv import nn
    >>> nn.ZeroPadding2D(((1, 0), (0, 2)))(np.ones((1, 2, 2, 1))).shape
    (1, 3, 4, 1)
    """

    def __init__(
        self,
        padding: Any = 1,
        data_format: str = "channels_last",
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        if isinstance(padding, str):
            raise TypeError(
                f"ZeroPadding2D: padding must be an int, a pair of ints or "
                f"((top, bottom), (left, right)); got {padding!r}"
            )
        self.pads: PadPairs = normalize_padding(
            padding,
            func="ZeroPadding2D",
            hw=(1, 1),
            kernel_hw=(1, 1),
            strides=(1, 1),
            dilation=(1, 1),
        )
        self.data_format = normalize_data_format(data_format, func="ZeroPadding2D")
        self._shape: tuple[int, ...] | None = None

    def _width(self, ndim: int) -> list[tuple[int, int]]:
        if ndim != 4:
            raise PatchconvError(f"ZeroPadding2D: input must be 4-D; got ndim {ndim}")
        ha, wa, _ = spatial_axes(self.data_format)
        width = [(0, 0)] * 4
        width[ha], width[wa] = self.pads
        return width

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        width = self._width(len(input_shape))
        return tuple(int(v) + lo + hi for v, (lo, hi) in zip(input_shape, width, strict=True))

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        self._shape = arr.shape
        return np.pad(arr, self._width(arr.ndim))

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise self._no_forward()
        g = self._check_grad(grad_out, self.compute_output_shape(self._shape))
        index = tuple(slice(lo, g.shape[a] - hi) for a, (lo, hi) in enumerate(self._width(g.ndim)))
        return g[index]

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "padding": [list(p) for p in self.pads],
            "data_format": self.data_format,
        }
