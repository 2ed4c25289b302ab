"""A Keras-compatible Conv2D layer and Keras' weight initializers.

The layer builds on its first call (c_in is read from the input), keeps its weights in Keras'
layout (kernel ``(kh, kw, c_in // groups, filters)``, bias ``(filters,)``), and round-trips
``get_weights`` / ``set_weights`` / ``get_config`` / ``from_config`` as Keras does, so weights
copied from a Keras model give the same outputs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from patchconv._spec import (
    PatchconvError,
    as_float_array,
    check_flag,
    conv_spec,
    normalize_data_format,
    normalize_padding,
    normalize_padding_mode,
    normalize_pair,
)
from patchconv.functional import conv2d

__all__ = ["INITIALIZERS", "Conv2D", "initialize"]

# Keras divides the stddev of its truncated normals by this, the stddev of a unit normal
# truncated at two standard deviations, so the kept samples have the intended variance.
_TRUNC_STD = 0.87962566103423978


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    """Keras' fan rule: a (kh, kw, in, out) kernel has fan_in kh*kw*in, fan_out kh*kw*out."""
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():  # redraw outside two sigma, as Keras' truncated normal does
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def _variance_scaling(scale: float, mode: str, distribution: str) -> Callable[..., np.ndarray]:
    def init(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, fan)
        if distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return rng.uniform(-limit, limit, shape)
        return _truncated_normal(rng, shape, math.sqrt(variance) / _TRUNC_STD)

    return init


INITIALIZERS: dict[str, Callable[..., np.ndarray]] = {
    "glorot_uniform": _variance_scaling(1.0, "fan_avg", "uniform"),
    "glorot_normal": _variance_scaling(1.0, "fan_avg", "normal"),
    "he_uniform": _variance_scaling(2.0, "fan_in", "uniform"),
    "he_normal": _variance_scaling(2.0, "fan_in", "normal"),
    "lecun_uniform": _variance_scaling(1.0, "fan_in", "uniform"),
    "lecun_normal": _variance_scaling(1.0, "fan_in", "normal"),
    "zeros": lambda shape, rng: np.zeros(shape),
    "ones": lambda shape, rng: np.ones(shape),
    "random_uniform": lambda shape, rng: rng.uniform(-0.05, 0.05, shape),
    "random_normal": lambda shape, rng: rng.normal(0.0, 0.05, shape),
    "truncated_normal": lambda shape, rng: _truncated_normal(rng, shape, 0.05),
}
# Keras' aliases.
INITIALIZERS["xavier_uniform"] = INITIALIZERS["glorot_uniform"]
INITIALIZERS["xavier_normal"] = INITIALIZERS["glorot_normal"]
INITIALIZERS["uniform"] = INITIALIZERS["random_uniform"]
INITIALIZERS["normal"] = INITIALIZERS["random_normal"]


def check_initializer(name: Any, *, label: str, func: str) -> str:
    """An initializer name (any case) -> its canonical lower-case key, or a clear error."""
    if not isinstance(name, str) or name.lower() not in INITIALIZERS:
        raise PatchconvError(f"{func}: {label} must be one of {sorted(INITIALIZERS)}; got {name!r}")
    return name.lower()


def initialize(
    name: str,
    shape: tuple[int, ...],
    *,
    seed: int | np.random.Generator | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Draw an array of ``shape`` from Keras' initializer ``name`` (reproducible from ``seed``).

    >>> initialize("glorot_uniform", (3, 3, 3, 2), seed=0).shape
    (3, 3, 3, 2)
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in INITIALIZERS:
        raise PatchconvError(
            f"initialize: initializer must be one of {sorted(INITIALIZERS)}; got {name!r}"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return np.asarray(INITIALIZERS[key](tuple(shape), rng), dtype=dtype)


def padding_to_config(padding: Any) -> Any:
    """A padding value in JSON-ready form: nested tuples become lists (strings and ints stay)."""
    if isinstance(padding, tuple):
        return [list(p) if isinstance(p, tuple) else p for p in padding]
    return padding


def padding_from_config(padding: Any) -> Any:
    """The inverse of :func:`padding_to_config`: nested lists become tuples again."""
    if isinstance(padding, list):
        return tuple(tuple(p) if isinstance(p, list) else p for p in padding)
    return padding


def input_channels(input_shape: Sequence[int], data_format: str, *, func: str) -> int:
    """c_in of a 4-D input shape in ``data_format``, or a clear error naming ``func``."""
    if len(input_shape) != 4:
        raise PatchconvError(
            f"{func}: input must be 4-D; got ndim {len(input_shape)}, shape {tuple(input_shape)}"
        )
    return int(input_shape[1] if data_format == "channels_first" else input_shape[-1])


def float_dtype(dtype: Any, *, func: str) -> np.dtype:
    """A layer's ``dtype`` argument -> float16, float32 or float64; None means float32, as
    Keras' default policy."""
    if dtype is None:
        return np.dtype(np.float32)
    try:
        out = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(
            f"{func}: dtype must be float16, float32 or float64; got {dtype!r}"
        ) from exc
    if out not in (np.float16, np.float32, np.float64):
        raise TypeError(f"{func}: dtype must be float16, float32 or float64; got {dtype!r}")
    return out


def check_seed(seed: Any, *, func: str) -> int | None:
    """A layer's ``seed`` argument: None or a non-negative int, checked at construction."""
    if seed is None:
        return None
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"{func}: seed must be an int or None; got {seed!r}")
    if seed < 0:
        raise PatchconvError(f"{func}: seed must be >= 0; got {seed}")
    return int(seed)


def check_name(name: Any, *, func: str) -> str | None:
    """A layer's ``name`` argument: None or a str."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"{func}: name must be a str; got {name!r}")
    return name


ShapeFn = TypeVar("ShapeFn", bound=Callable[..., tuple[Any, ...]])


def batch_agnostic(method: ShapeFn) -> ShapeFn:
    """Let ``compute_output_shape`` take Keras' ``None`` batch size: the shape is worked out
    for a batch of 1 and the ``None`` put back. Any other ``None`` is a clear error."""

    @functools.wraps(method)
    def wrapper(self: Any, input_shape: Sequence[int | None]) -> tuple[Any, ...]:
        shape = tuple(input_shape)
        func = f"{type(self).__name__}.compute_output_shape"
        out = method(self, build_shape(shape, func=func))
        return (None, *out[1:]) if shape and shape[0] is None else out

    return wrapper  # type: ignore[return-value]


def build_shape(input_shape: Sequence[int | None], *, func: str) -> tuple[int, ...]:
    """A shape given to ``build`` as ints, Keras' None batch size read as 1 (no weight depends
    on it); any other None is a clear error."""
    shape = tuple(input_shape)
    if any(v is None for v in shape[1:]):
        raise PatchconvError(f"{func}: only the batch size may be None; got input_shape {shape}")
    return tuple(1 if v is None else int(v) for v in shape)


def _positive_int(value: Any, *, name: str, func: str = "Conv2D") -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be an int; got {value!r}")
    if value < 1:
        raise PatchconvError(f"{func}: {name} must be >= 1; got {value}")
    return int(value)


class Conv2D:
    """Keras' ``Conv2D`` on NumPy: same arguments, same weights, same outputs.

    Parameters
    ----------
    filters : int
        Output channels ``c_out``.
    kernel_size : int or (int, int)
    strides, padding, data_format, dilation_rate, groups
        As in :func:`patchconv.conv2d` (stride and dilation together are allowed here).
    use_bias : bool
    kernel_initializer, bias_initializer : str
        Names from :data:`INITIALIZERS`.
    seed : int, optional
        Makes the initial weights reproducible.
    dtype : str
        The weights' dtype (float16, float32 or float64; None means float32); inputs are cast
        to it, as Keras' layers do.
    name : str, optional
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        PyTorch's ``Conv2d`` option (Keras has none: always "zeros"); see
        :func:`patchconv.conv2d`. It appears in :meth:`get_config` only when not "zeros", so
        the config of a Keras-style layer stays Keras' own.

    Examples
    --------
    >>> import numpy as np, patchconv
    >>> layer = patchconv.Conv2D(filters=2, kernel_size=3, seed=0)
    >>> out = layer(np.zeros((1, 4, 4, 3), dtype=np.float32))
    >>> [w.shape for w in layer.get_weights()], out.shape
    ([(3, 3, 3, 2), (2,)], (1, 2, 2, 2))
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        strides: int | tuple[int, int] = 1,
        padding: Any = "valid",
        data_format: str | None = "channels_last",
        dilation_rate: int | tuple[int, int] = 1,
        groups: int = 1,
        *,  # Keras' 8th is activation, which this layer has not (nn.Conv2D has)
        use_bias: bool = True,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        seed: int | None = None,
        dtype: str = "float32",
        name: str | None = None,
        padding_mode: str = "zeros",
    ) -> None:
        func = "Conv2D"
        self.filters = _positive_int(filters, name="filters")
        self.kernel_size = normalize_pair(kernel_size, func=func, name="kernel_size")
        self.strides = normalize_pair(strides, func=func, name="strides")
        self.dilation_rate = normalize_pair(dilation_rate, func=func, name="dilation_rate")
        self.groups = _positive_int(groups, name="groups")
        if self.filters % self.groups:
            raise PatchconvError(
                f"{func}: groups ({self.groups}) must divide filters ({self.filters})"
            )
        self.data_format = normalize_data_format(data_format, func=func)
        self.padding = padding.lower() if isinstance(padding, str) else padding
        self.padding_mode = normalize_padding_mode(padding_mode, func=func)
        # Check the padding form now (any size will do) so a bad value fails at construction.
        normalize_padding(
            self.padding,
            func=func,
            hw=(1, 1),
            kernel_hw=self.kernel_size,
            strides=self.strides,
            dilation=self.dilation_rate,
        )
        self.use_bias = check_flag(use_bias, func=func, name="use_bias")
        self.kernel_initializer = check_initializer(
            kernel_initializer, label="kernel_initializer", func=func
        )
        self.bias_initializer = check_initializer(
            bias_initializer, label="bias_initializer", func=func
        )
        self.seed = check_seed(seed, func=func)
        self.dtype = float_dtype(dtype, func=func)
        self.name = check_name(name, func=func) or "conv2d"
        self.kernel: np.ndarray | None = None
        self.bias: np.ndarray | None = None

    # -- building -------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self.kernel is not None

    def _channels(self, input_shape: Sequence[int]) -> int:
        return input_channels(input_shape, self.data_format, func="Conv2D")

    def kernel_shape(self, c_in: int) -> tuple[int, int, int, int]:
        """Keras' kernel shape for ``c_in`` input channels."""
        if c_in % self.groups:
            raise PatchconvError(
                f"Conv2D: groups ({self.groups}) must divide input channels ({c_in})"
            )
        return (*self.kernel_size, c_in // self.groups, self.filters)

    def build(self, input_shape: Sequence[int]) -> None:
        """Create the weights for inputs of ``input_shape`` (only the channel count matters)."""
        shape = self.kernel_shape(self._channels(input_shape))
        rng = np.random.default_rng(self.seed)
        self.kernel = initialize(self.kernel_initializer, shape, seed=rng, dtype=self.dtype)
        if self.use_bias:
            self.bias = initialize(
                self.bias_initializer, (self.filters,), seed=rng, dtype=self.dtype
            )

    # -- running --------------------------------------------------------------------------
    def _conv_options(self) -> dict[str, Any]:
        return {
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "data_format": self.data_format,
            "padding_mode": self.padding_mode,
        }

    def __call__(self, x: Any) -> np.ndarray:
        arr = as_float_array(x, func="Conv2D", name="x")
        if not self.built:
            self.build(arr.shape)
        assert self.kernel is not None
        return conv2d(
            arr.astype(self.dtype, copy=False), self.kernel, self.bias, **self._conv_options()
        )

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """The output shape for ``input_shape``, computing nothing (Keras' method); the batch
        size may be None."""
        c_in = self._channels(input_shape)
        return conv_spec(
            tuple(int(v) for v in input_shape),
            self.kernel_shape(c_in),
            None,
            func="Conv2D.compute_output_shape",
            **self._conv_options(),
        ).out_shape

    # -- weights --------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """``[kernel, bias]`` (``[kernel]`` without bias), copies, as Keras returns them."""
        if not self.built:
            return []
        assert self.kernel is not None
        weights = [self.kernel.copy()]
        if self.use_bias:
            assert self.bias is not None
            weights.append(self.bias.copy())
        return weights

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load ``[kernel, bias]`` (or ``[kernel]`` without bias); builds the layer if needed."""
        expected = 2 if self.use_bias else 1
        if not isinstance(weights, (list, tuple)) or len(weights) != expected:
            count = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
            raise PatchconvError(
                f"Conv2D.set_weights: expected {expected} arrays ([kernel"
                f"{', bias' if self.use_bias else ''}]); got {count}"
            )
        kernel = as_float_array(weights[0], func="Conv2D.set_weights", name="kernel")
        if (
            kernel.ndim != 4
            or kernel.shape[:2] != self.kernel_size
            or kernel.shape[3] != (self.filters)
        ):
            raise PatchconvError(
                f"Conv2D.set_weights: kernel must have shape ({self.kernel_size[0]}, "
                f"{self.kernel_size[1]}, c_in // {self.groups}, {self.filters}); got kernel "
                f"{kernel.shape}"
            )
        if self.built:
            assert self.kernel is not None
            if kernel.shape != self.kernel.shape:
                raise PatchconvError(
                    f"Conv2D.set_weights: kernel must have shape {self.kernel.shape}; got kernel "
                    f"{kernel.shape}"
                )
        if self.use_bias:
            bias = as_float_array(weights[1], func="Conv2D.set_weights", name="bias")
            if bias.shape != (self.filters,):
                raise PatchconvError(
                    f"Conv2D.set_weights: bias must have shape ({self.filters},); got bias "
                    f"{bias.shape}"
                )
            self.bias = bias.astype(self.dtype, copy=True)
        self.kernel = kernel.astype(self.dtype, copy=True)

    # -- config ---------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-ready dict (Keras' names)."""
        padding = padding_to_config(self.padding)
        config: dict[str, Any] = {
            "name": self.name,
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": padding,
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
            "groups": self.groups,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "seed": self.seed,
            "dtype": self.dtype.name,
        }
        if self.padding_mode != "zeros":
            config["padding_mode"] = self.padding_mode
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Conv2D:
        """A new, unbuilt layer from :meth:`get_config`'s dict."""
        options = dict(config)
        for key in ("kernel_size", "strides", "dilation_rate"):
            if isinstance(options.get(key), list):
                options[key] = tuple(options[key])
        options["padding"] = padding_from_config(options.get("padding", "valid"))
        return cls(**options)

    def __repr__(self) -> str:
        mode = "" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode!r}"
        return (
            f"Conv2D(filters={self.filters}, kernel_size={self.kernel_size}, "
            f"strides={self.strides}, padding={self.padding!r}{mode})"
        )
