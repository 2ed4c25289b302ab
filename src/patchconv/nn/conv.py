"""Convolution layers with a backward pass: Conv2D (the core layer) and DepthwiseConv2D.

Both run :func:`patchconv.conv2d` forward and :func:`patchconv.conv2d_backward` backward, so the
gradients are the same patch matrix transposed: ``grad_kernel = patches^T @ grad_out`` and
``grad_x = col2im(grad_out @ kernel_matrix^T)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from patchconv import layers as base_layers
from patchconv._spec import (
    PatchconvError,
    as_float_array,
    conv_spec,
    normalize_data_format,
    normalize_padding,
)
from patchconv._spec import normalize_pair as _pair
from patchconv.functional import conv2d, conv2d_backward
from patchconv.layers import (
    batch_agnostic,
    build_shape,
    check_initializer,
    check_seed,
    initialize,
    input_channels,
    padding_from_config,
    padding_to_config,
)
from patchconv.nn.activations import get_activation
from patchconv.nn.base import Layer

__all__ = ["Conv2D", "DepthwiseConv2D"]


class _ConvBackward:
    """backward and backward_weights of the convolution layers, both through their
    ``_backward``, which skips the input's gradient for backward_weights."""

    def _backward(self, grad_out: np.ndarray, *, need_grad_x: bool) -> np.ndarray | None:
        raise NotImplementedError

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = self._backward(grad_out, need_grad_x=True)
        assert grad_x is not None
        return grad_x

    def backward_weights(self, grad_out: np.ndarray) -> None:
        self._backward(grad_out, need_grad_x=False)


class Conv2D(_ConvBackward, base_layers.Conv2D, Layer):  # type: ignore[misc]  # from_config returns Conv2D
    """Keras' ``Conv2D`` with a backward pass: :class:`patchconv.Conv2D` plus ``activation``.

    Parameters
    ----------
    filters, kernel_size, strides, padding, data_format, dilation_rate, groups, use_bias,
    kernel_initializer, bias_initializer, seed, dtype, name
        As in :class:`patchconv.Conv2D` (Keras' names, order and defaults).
    activation : str, optional
        A name from :data:`patchconv.nn.activations.ACTIVATIONS`, applied after the bias.
    trainable : bool
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        PyTorch's Conv2d option (see :func:`patchconv.conv2d`); the backward pass folds the
        padded border's gradient back onto the input.

    Notes
    -----
    Weights: ``[kernel (kh, kw, c_in // groups, filters), bias (filters,)]``, Keras' HWIO layout
    whatever ``data_format`` is.

    Examples
    --------
    >>> import numpy as np
    >>> from patchconv import nn
    >>> layer = nn.Conv2D(2, 3, padding="same", seed=0)
    >>> y = layer.forward(np.ones((1, 4, 4, 3), dtype=np.float32), training=True)
    >>> grad_x = layer.backward(np.ones_like(y))
    >>> grad_x.shape, [g.shape for g in layer.grads()]
    ((1, 4, 4, 3), [(3, 3, 3, 2), (2,)])
    """

    weight_attrs = ("kernel", "bias")
    trainable_attrs = ("kernel", "bias")

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: Any = "valid",
        data_format: str = "channels_last",
        dilation_rate: int | tuple[int, int] = 1,
        groups: int = 1,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        seed: int | None = None,
        dtype: str = "float32",
        name: str | None = None,
        trainable: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            seed=seed,
            dtype=dtype,
            name=name,
            padding_mode=padding_mode,
        )
        self.activation = get_activation(activation, func="Conv2D")
        self.trainable = bool(trainable)
        self.input_shape: tuple[int, ...] | None = None
        self._grads: dict[str, np.ndarray] = {}

    def build(self, input_shape: Sequence[int]) -> None:
        shape = build_shape(input_shape, func="Conv2D.build")  # checked before any weight
        super().build(shape)
        self.input_shape = shape

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        return self.forward(x, training=training)

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = as_float_array(x, func="Conv2D", name="x")
        if not self.built:
            self.build(arr.shape)
        assert self.kernel is not None
        arr = arr.astype(self.dtype, copy=False)
        z = conv2d(arr, self.kernel, self.bias, **self._conv_options())
        return self._activate(arr, z)

    def _backward(self, grad_out: np.ndarray, *, need_grad_x: bool) -> np.ndarray | None:
        x, gz = self._activation_grad(grad_out)
        assert self.kernel is not None
        grads = conv2d_backward(
            gz,
            x,
            self.kernel,
            use_bias=self.use_bias,
            need_grad_x=need_grad_x,
            **self._conv_options(),
        )
        self._grads = {"kernel": grads.grad_kernel}
        if grads.grad_bias is not None:
            self._grads["bias"] = grads.grad_bias
        return grads.grad_x

    def set_weights(self, weights: Sequence[Any]) -> None:
        old = (self.kernel, self.bias)
        super().set_weights(weights)  # checks, builds if needed, replaces the arrays
        # Write into the old arrays when their shapes allow, so optimizer state stays attached.
        for attr, previous in zip(("kernel", "bias"), old, strict=True):
            new = getattr(self, attr)
            if previous is not None and new is not None and previous.shape == new.shape:
                previous[...] = new
                setattr(self, attr, previous)

    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int, int]:
        return super().compute_output_shape(input_shape)  # batch_agnostic there

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["activation"] = self.activation
        config["trainable"] = self.trainable
        return config


class DepthwiseConv2D(_ConvBackward, Layer):
    """Keras' ``DepthwiseConv2D``: each input channel convolved with its own
    ``depth_multiplier`` filters.

    Keras' kernel ``(kh, kw, c_in, depth_multiplier)`` reshapes (no copy) to the grouped kernel
    ``(kh, kw, 1, c_in * depth_multiplier)`` of :func:`patchconv.conv2d` with ``groups = c_in``:
    output channel ``c * depth_multiplier + m`` is input channel c's m-th filter, Keras' order.

    Parameters
    ----------
    kernel_size, strides, padding, depth_multiplier, data_format, dilation_rate, activation,
    use_bias, depthwise_initializer, bias_initializer, seed, dtype, name, trainable
        Keras' names and defaults.

    Notes
    -----
    Weights: ``[kernel (kh, kw, c_in, depth_multiplier), bias (c_in * depth_multiplier,)]``.
    A PyTorch/ONNX depthwise weight ``(c_in * m, 1, kh, kw)`` maps to it by
    ``w.reshape(c_in, m, kh, kw).transpose(2, 3, 0, 1)``.

    Examples
    --------
    >>> import numpy as np
    >>> from patchconv import nn
    >>> layer = nn.DepthwiseConv2D(3, depth_multiplier=2, padding="same", seed=0)
    >>> layer(np.ones((1, 5, 5, 4), dtype=np.float32)).shape, layer.kernel.shape
    ((1, 5, 5, 8), (3, 3, 4, 2))
    """

    weight_attrs = ("kernel", "bias")
    trainable_attrs = ("kernel", "bias")

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: Any = "valid",
        depth_multiplier: int = 1,
        data_format: str = "channels_last",
        dilation_rate: int | tuple[int, int] = 1,
        activation: str | None = None,
        use_bias: bool = True,
        depthwise_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        seed: int | None = None,
        dtype: str = "float32",
        name: str | None = None,
        trainable: bool = True,
    ) -> None:
        func = "DepthwiseConv2D"
        super().__init__(name=name, dtype=dtype, trainable=trainable)
        self.kernel_size = _pair(kernel_size, func=func, name="kernel_size")
        self.strides = _pair(strides, func=func, name="strides")
        self.dilation_rate = _pair(dilation_rate, func=func, name="dilation_rate")
        self.depth_multiplier = base_layers._positive_int(
            depth_multiplier, name="depth_multiplier", func=func
        )
        self.data_format = normalize_data_format(data_format, func=func)
        self.padding = padding.lower() if isinstance(padding, str) else padding
        normalize_padding(
            self.padding,
            func=func,
            hw=(1, 1),
            kernel_hw=self.kernel_size,
            strides=self.strides,
            dilation=self.dilation_rate,
        )
        self.depthwise_initializer = check_initializer(
            depthwise_initializer, label="depthwise_initializer", func=func
        )
        self.bias_initializer = check_initializer(
            bias_initializer, label="bias_initializer", func=func
        )
        self.activation = get_activation(activation, func=func)
        self.use_bias = bool(use_bias)
        self.seed = check_seed(seed, func=func)
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    @property
    def built(self) -> bool:
        return self.kernel is not None

    def _channels(self, input_shape: Sequence[int]) -> int:
        return input_channels(input_shape, self.data_format, func="DepthwiseConv2D")

    def build(self, input_shape: Sequence[int]) -> None:
        checked = build_shape(input_shape, func="DepthwiseConv2D.build")  # before any weight
        c_in = self._channels(checked)
        rng = np.random.default_rng(self.seed)
        shape = (*self.kernel_size, c_in, self.depth_multiplier)
        self.kernel = initialize(self.depthwise_initializer, shape, seed=rng, dtype=self.dtype)
        if self.use_bias:
            self.bias = initialize(
                self.bias_initializer, (c_in * self.depth_multiplier,), seed=rng, dtype=self.dtype
            )
        self.input_shape = checked

    def _conv_options(self, c_in: int) -> dict[str, Any]:
        return {
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": c_in,
            "data_format": self.data_format,
        }

    def _grouped_kernel(self) -> np.ndarray:
        assert self.kernel is not None
        kh, kw, c_in, m = self.kernel.shape
        return self.kernel.reshape(kh, kw, 1, c_in * m)  # (kh, kw, 1, c_in*m)

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int, int]:
        c_in = self._channels(input_shape)
        return conv_spec(
            tuple(int(v) for v in input_shape),
            (*self.kernel_size, 1, c_in * self.depth_multiplier),
            None,
            func="DepthwiseConv2D.compute_output_shape",
            **self._conv_options(c_in),
        ).out_shape

    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        arr = self._prepare(x).astype(self.dtype, copy=False)
        assert self.kernel is not None
        c_in = self._channels(arr.shape)
        if c_in != self.kernel.shape[2]:
            raise PatchconvError(
                f"DepthwiseConv2D: input channels ({c_in}) must equal the kernel's "
                f"({self.kernel.shape[2]}); got x {arr.shape}, kernel {self.kernel.shape}"
            )
        z = conv2d(arr, self._grouped_kernel(), self.bias, **self._conv_options(c_in))
        return self._activate(arr, z)

    def _backward(self, grad_out: np.ndarray, *, need_grad_x: bool) -> np.ndarray | None:
        x, gz = self._activation_grad(grad_out)
        assert self.kernel is not None
        c_in = self.kernel.shape[2]
        grads = conv2d_backward(
            gz,
            x,
            self._grouped_kernel(),
            use_bias=self.use_bias,
            need_grad_x=need_grad_x,
            **self._conv_options(c_in),
        )
        self._grads = {"kernel": grads.grad_kernel.reshape(self.kernel.shape)}
        if grads.grad_bias is not None:
            self._grads["bias"] = grads.grad_bias
        return grads.grad_x

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load ``[kernel, bias]`` (``[kernel]`` without bias); builds from the kernel's shape."""
        if not self.built and isinstance(weights, (list, tuple)) and weights:
            shape = np.shape(weights[0])
            if len(shape) != 4 or tuple(shape[:2]) != self.kernel_size:
                raise PatchconvError(
                    f"DepthwiseConv2D.set_weights: kernel must have shape "
                    f"({self.kernel_size[0]}, {self.kernel_size[1]}, c_in, depth_multiplier); "
                    f"got kernel {shape}"
                )
            c_in = int(shape[2])
            self.build((1, c_in, 1, 1) if self.data_format == "channels_first" else (1, 1, 1, c_in))
        super().set_weights(weights)

    def get_config(self) -> dict[str, Any]:
        padding = padding_to_config(self.padding)
        return {
            **super().get_config(),
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": padding,
            "depth_multiplier": self.depth_multiplier,
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
            "activation": self.activation,
            "use_bias": self.use_bias,
            "depthwise_initializer": self.depthwise_initializer,
            "bias_initializer": self.bias_initializer,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DepthwiseConv2D:
        options = dict(config)
        options["padding"] = padding_from_config(options.get("padding", "valid"))
        return cls(**options)
