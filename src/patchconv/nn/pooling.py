"""MaxPool2D, AveragePool2D and GlobalAveragePooling2D, both data formats.

A pooling window is handled one offset ``(i, j)`` at a time, as the patch code handles a kernel:
``x[:, i::sh, j::sw]`` (cropped to the output size) is the (n, oh, ow, c) block of every window's
``(i, j)`` element, so a pool is ``kh*kw`` whole-array operations, and its backward pass adds
``kh*kw`` blocks back into the input gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from patchconv._spec import (
    PadPairs,
    PatchconvError,
    normalize_data_format,
    normalize_padding,
    normalize_pair,
)
from patchconv.layers import batch_agnostic, padding_from_config, padding_to_config
from patchconv.nn.base import Layer, spatial_axes

__all__ = ["AveragePool2D", "GlobalAveragePooling2D", "MaxPool2D"]


class _Pool2D(Layer):
    def __init__(
        self,
        pool_size: int | tuple[int, int] = 2,
        strides: int | tuple[int, int] | None = None,
        padding: Any = "valid",
        data_format: str = "channels_last",
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        func = type(self).__name__
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.pool_size = normalize_pair(pool_size, func=func, name="pool_size")
        self.strides = (
            self.pool_size
            if strides is None
            else normalize_pair(strides, func=func, name="strides")
        )
        self.data_format = normalize_data_format(data_format, func=func)
        self.padding = padding.lower() if isinstance(padding, str) else padding
        normalize_padding(
            self.padding,
            func=func,
            hw=(1, 1),
            kernel_hw=self.pool_size,
            strides=self.strides,
            dilation=(1, 1),
        )
        self._cache: Any = None

    def _geometry(self, shape: Sequence[int]) -> tuple[PadPairs, int, int]:
        func = type(self).__name__
        if len(shape) != 4:
            raise PatchconvError(
                f"{func}: input must be 4-D; got ndim {len(shape)}, shape {tuple(shape)}"
            )
        ha, wa, _ = spatial_axes(self.data_format)
        h, w = int(shape[ha]), int(shape[wa])
        pads = normalize_padding(
            self.padding,
            func=func,
            hw=(h, w),
            kernel_hw=self.pool_size,
            strides=self.strides,
            dilation=(1, 1),
        )
        out = []
        for axis, size, k, s, (lo, hi) in zip(
            ("height", "width"), (h, w), self.pool_size, self.strides, pads, strict=True
        ):
            if max(lo, hi) >= k:
                raise PatchconvError(
                    f"{func}: padding must be smaller than pool_size ({k}) on the {axis}, so no "
                    f"window sees only padding; got padding {self.padding!r} -> {(lo, hi)}"
                )
            if k > size + lo + hi:
                raise PatchconvError(
                    f"{func}: pool_size {axis} ({k}) must not exceed the padded input {axis} "
                    f"({size + lo + hi}); got x {tuple(shape)}, padding {self.padding!r}"
                )
            out.append((size + lo + hi - k) // s + 1)
        return pads, out[0], out[1]

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        _, oh, ow = self._geometry(input_shape)
        shape = [int(v) for v in input_shape]
        ha, wa, _ = spatial_axes(self.data_format)
        shape[ha], shape[wa] = oh, ow
        return tuple(shape)

    def _pad(self, x: np.ndarray, pads: PadPairs, value: float) -> np.ndarray:
        if pads == ((0, 0), (0, 0)):
            return x
        ha, wa, _ = spatial_axes(self.data_format)
        width = [(0, 0)] * 4
        width[ha], width[wa] = pads[0], pads[1]
        return np.pad(x, width, constant_values=value)

    def _crop(self, xp: np.ndarray, pads: PadPairs) -> np.ndarray:
        (t, b), (left, r) = pads
        ha, wa, _ = spatial_axes(self.data_format)
        index = [slice(None)] * 4
        index[ha] = slice(t, xp.shape[ha] - b)
        index[wa] = slice(left, xp.shape[wa] - r)
        return xp[tuple(index)]

    def _window(self, i: int, j: int, oh: int, ow: int) -> tuple[slice, ...]:
        """Index of every window's (i, j) element in the padded input."""
        sh, sw = self.strides
        ha, wa, _ = spatial_axes(self.data_format)
        index = [slice(None)] * 4
        index[ha] = slice(i, i + (oh - 1) * sh + 1, sh)
        index[wa] = slice(j, j + (ow - 1) * sw + 1, sw)
        return tuple(index)

    def _offsets(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.pool_size[0]) for j in range(self.pool_size[1])]

    def get_config(self) -> dict[str, Any]:
        padding = padding_to_config(self.padding)
        return {
            **super().get_config(),
            "pool_size": list(self.pool_size),
            "strides": list(self.strides),
            "padding": padding,
            "data_format": self.data_format,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        options = dict(config)
        options["padding"] = padding_from_config(options.get("padding", "valid"))
        return cls(**options)


class MaxPool2D(_Pool2D):
    """Keras' ``MaxPooling2D``: the largest value in each ``pool_size`` window.

    Parameters
    ----------
    pool_size : int or (int, int)
    strides : int or (int, int), optional
        Defaults to ``pool_size``.
    padding : "valid", "same" or any explicit form :func:`patchconv.conv2d` accepts
        Padded positions never win (they count as -inf, as in Keras, PyTorch and ONNX).
    data_format : {"channels_last", "channels_first"}

    Notes
    -----
    The gradient goes to the first maximum of each window in row-major order.

    >>> import numpy as np
    >>> from patchconv import nn
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> nn.MaxPool2D(2)(x)[0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
    """

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        pads, oh, ow = self._geometry(arr.shape)
        xp = self._pad(arr, pads, -np.inf)
        offsets = self._offsets()
        out = xp[self._window(*offsets[0], oh, ow)].copy()
        for i, j in offsets[1:]:
            np.maximum(out, xp[self._window(i, j, oh, ow)], out=out)
        self._cache = (arr.shape, xp, pads, out)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise self._no_forward()
        x_shape, xp, pads, out = self._cache
        g = self._check_grad(grad_out, out.shape)
        _, oh, ow = self._geometry(x_shape)
        grad_xp = np.zeros(xp.shape, dtype=g.dtype)
        taken = np.zeros(out.shape, dtype=bool)  # windows whose maximum has been found
        for i, j in self._offsets():
            window = self._window(i, j, oh, ow)
            hit = xp[window] == out
            hit &= ~taken  # only the first maximum in row-major order takes the gradient
            taken |= hit
            # Within one offset, distinct windows touch distinct inputs, so += is exact.
            grad_xp[window] += g * hit
        return self._crop(grad_xp, pads)


class AveragePool2D(_Pool2D):
    """Keras' ``AveragePooling2D``: the mean of each ``pool_size`` window.

    Parameters
    ----------
    pool_size, strides, padding, data_format
        As in :class:`MaxPool2D`.
    count_include_pad : bool
        False (Keras, TensorFlow, ONNX's default): a window's mean is over its positions inside
        the input. True (PyTorch's default): padded zeros count too.

    >>> import numpy as np
    >>> from patchconv import nn
    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> nn.AveragePool2D(2)(x)[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """

    def __init__(
        self,
        pool_size: int | tuple[int, int] = 2,
        strides: int | tuple[int, int] | None = None,
        padding: Any = "valid",
        data_format: str = "channels_last",
        count_include_pad: bool = False,
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(
            pool_size, strides, padding, data_format, name=name, dtype=dtype, trainable=trainable
        )
        self.count_include_pad = bool(count_include_pad)

    def _counts(self, shape: Sequence[int], pads: PadPairs, oh: int, ow: int) -> np.ndarray | float:
        """How many input positions each window averages: a number, or one per window."""
        if self.count_include_pad or pads == ((0, 0), (0, 0)):
            return float(self.pool_size[0] * self.pool_size[1])
        ha, wa, _ = spatial_axes(self.data_format)
        ones_shape = [1, 1, 1, 1]
        ones_shape[ha], ones_shape[wa] = int(shape[ha]), int(shape[wa])
        inside = self._pad(np.ones(ones_shape), pads, 0.0)
        counts = sum(inside[self._window(i, j, oh, ow)] for i, j in self._offsets())
        return np.asarray(counts)

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        pads, oh, ow = self._geometry(arr.shape)
        xp = self._pad(arr, pads, 0.0)
        total = None
        for i, j in self._offsets():
            block = xp[self._window(i, j, oh, ow)]
            total = block.copy() if total is None else total + block
        assert total is not None
        counts = self._counts(arr.shape, pads, oh, ow)
        out = (total / counts).astype(arr.dtype, copy=False)
        self._cache = (arr.shape, xp.shape, pads, counts, out.shape)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise self._no_forward()
        x_shape, xp_shape, pads, counts, out_shape = self._cache
        g = self._check_grad(grad_out, out_shape)
        _, oh, ow = self._geometry(x_shape)
        share = (g / counts).astype(g.dtype, copy=False)
        grad_xp = np.zeros(xp_shape, dtype=g.dtype)
        for i, j in self._offsets():
            grad_xp[self._window(i, j, oh, ow)] += share
        return self._crop(grad_xp, pads)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


class GlobalAveragePooling2D(Layer):
    """Keras' ``GlobalAveragePooling2D``: the mean over height and width, per channel.

    >>> import numpy as np
    >>> from patchconv import nn
    >>> nn.GlobalAveragePooling2D()(np.ones((2, 3, 3, 4))).shape
    (2, 4)
    """

    def __init__(
        self,
        data_format: str = "channels_last",
        keepdims: bool = False,
        *,
        name: str | None = None,
        dtype: str = "float32",
        trainable: bool = True,
    ) -> None:
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.data_format = normalize_data_format(data_format, func="GlobalAveragePooling2D")
        self.keepdims = bool(keepdims)
        self._shape: tuple[int, ...] | None = None

    def _check(self, shape: Sequence[int]) -> None:
        if len(shape) != 4:
            raise PatchconvError(
                f"GlobalAveragePooling2D: input must be 4-D; got ndim {len(shape)}, shape "
                f"{tuple(shape)}"
            )

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        self._check(input_shape)
        ha, wa, ca = spatial_axes(self.data_format)
        shape = [int(v) for v in input_shape]
        if self.keepdims:
            shape[ha] = shape[wa] = 1
            return tuple(shape)
        return (shape[0], shape[ca])

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x)
        self._check(arr.shape)
        ha, wa, _ = spatial_axes(self.data_format)
        self._shape = arr.shape
        return arr.mean(axis=(ha, wa), keepdims=self.keepdims)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._shape is None:
            raise self._no_forward()
        g = self._check_grad(grad_out, self.compute_output_shape(self._shape))
        ha, wa, _ = spatial_axes(self.data_format)
        if not self.keepdims:
            g = np.expand_dims(g, (ha, wa))
        scale = g.dtype.type(1.0 / (self._shape[ha] * self._shape[wa]))
        return np.broadcast_to(g * scale, self._shape).copy()

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "data_format": self.data_format, "keepdims": self.keepdims}
