"""Every conv2d argument normalised once, with all input checks.

After :func:`conv_spec` the rest of the package never asks "was padding a string?": it reads a
frozen :class:`ConvSpec` holding integers only. All checks run here, before any allocation, and
every message names the function, the parameter, the rule and both values.

Internally activations are NHWC and kernels HWIO (Keras' layout), so a flattened patch is
``(kh, kw, c_in)`` in row-major order and matches ``kernel.reshape(-1, c_out)``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = [
    "DATA_FORMATS",
    "PADDING_MODES",
    "ConvSpec",
    "PatchconvError",
    "as_float_array",
    "check_flag",
    "check_workspace_limit",
    "compute_dtype",
    "conv_spec",
    "normalize_data_format",
    "normalize_padding",
    "normalize_padding_mode",
    "normalize_pair",
]

DATA_FORMATS = ("channels_last", "channels_first")
# Names accepted for string padding; ONNX's auto_pad spellings map onto ours.
_PADDING_NAMES = {
    "valid": "valid",
    "same": "same",
    "same_upper": "same",
    "same_lower": "same_lower",
}

PadPairs = tuple[tuple[int, int], tuple[int, int]]

# PyTorch's Conv2d padding_mode values -> np.pad's mode names ("zeros" pads inside the
# algorithms and never calls np.pad).
PADDING_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}


class PatchconvError(ValueError):
    """A wrong value given to a patchconv function (a ValueError subclass)."""


@dataclass(frozen=True)
class ConvSpec:
    """One 2-D convolution, every size resolved.

    Shapes use NHWC for activations and HWIO for the kernel whatever the caller's data_format.
    ``pads`` is ``((top, bottom), (left, right))``; ``oh, ow`` follow the rule
    ``o = (i + lo + hi - ((k - 1) * d + 1)) // s + 1``.
    """

    n: int
    h: int
    w: int
    c_in: int
    c_out: int
    kh: int
    kw: int
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pads: PadPairs
    groups: int
    data_format: str
    oh: int
    ow: int
    padding_mode: str = "zeros"

    @property
    def c_in_group(self) -> int:
        return self.c_in // self.groups

    @property
    def c_out_group(self) -> int:
        return self.c_out // self.groups

    @property
    def patch_size(self) -> int:
        """Length of one flattened (kh, kw, c_in) patch (all groups together)."""
        return self.kh * self.kw * self.c_in

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        """The caller's x shape, in the caller's data_format."""
        if self.data_format == "channels_first":
            return (self.n, self.c_in, self.h, self.w)
        return (self.n, self.h, self.w, self.c_in)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """The output shape, in the caller's data_format."""
        if self.data_format == "channels_first":
            return (self.n, self.c_out, self.oh, self.ow)
        return (self.n, self.oh, self.ow, self.c_out)

    def unpadded(self) -> ConvSpec:
        """The same convolution run on the input padded beforehand: pads 0, mode "zeros".

        A non-zero ``padding_mode`` is applied explicitly (``np.pad`` on the NHWC input), and
        the algorithms then see this spec, in which the padded border is ordinary input.
        """
        (top, bottom), (left, right) = self.pads
        return replace(
            self,
            h=self.h + top + bottom,
            w=self.w + left + right,
            pads=((0, 0), (0, 0)),
            padding_mode="zeros",
        )

    @property
    def flops(self) -> int:
        """Multiply-adds times two, the usual convention for GF/s."""
        return 2 * self.n * self.oh * self.ow * self.c_out * self.kh * self.kw * self.c_in_group


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def shape_arg(value: Any, *, func: str, name: str) -> tuple[int, ...]:
    """``value`` as a shape: a tuple or list of integers, or an array's ``.shape`` (so
    ``explain_algorithm(x, kernel)`` works as ``explain_algorithm(x.shape, kernel.shape)``).

    Raises
    ------
    TypeError
        Neither, or an entry that is not an integer; the message names ``func`` and ``name``.
    """
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        value = value.tolist()  # a shape held in an array (never a valid 4-D input itself)
    elif not isinstance(value, (tuple, list)) and isinstance(getattr(value, "shape", None), tuple):
        value = value.shape
    if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise TypeError(
            f"{func}: {name} must be a shape, a tuple of integers such as (1, 4, 4, 3), or an "
            f"array; got {shown}"
        )
    return tuple(int(v) for v in value)


def normalize_pair(value: Any, *, func: str, name: str, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints -> ``(a, b)``, each at least ``minimum``."""
    if _is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{func}: {name} must be an int or a pair of ints; got {value!r}")
    if min(pair) < minimum:
        raise PatchconvError(f"{func}: {name} must be >= {minimum}; got {value!r}")
    return pair


def _same_total(size: int, k: int, stride: int, dilation: int) -> int:
    # TensorFlow/Keras rule, identical to ONNX SAME_UPPER/SAME_LOWER totals.
    effective = (k - 1) * dilation + 1
    return max((math.ceil(size / stride) - 1) * stride + effective - size, 0)


def normalize_padding(
    padding: Any,
    *,
    func: str,
    hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
) -> PadPairs:
    """Every padding form -> ``((top, bottom), (left, right))``.

    Strings: "valid"; "same" (extra pixel at the bottom/right, ONNX SAME_UPPER); "same_lower"
    (extra at the top/left); ONNX spellings and any case are accepted. Numbers: an int, a pair
    ``(ph, pw)``, or ``((top, bottom), (left, right))``.
    """
    if isinstance(padding, str):
        mode = _PADDING_NAMES.get(padding.lower())
        if mode is None:
            raise PatchconvError(
                f"{func}: padding must be one of 'valid', 'same', 'same_lower', an int, a pair or "
                f"((top, bottom), (left, right)); got {padding!r}"
            )
        if mode == "valid":
            return ((0, 0), (0, 0))
        pads = []
        for size, k, s, d in zip(hw, kernel_hw, strides, dilation, strict=True):
            total = _same_total(size, k, s, d)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if mode == "same" else (big, small))
        return (pads[0], pads[1])
    pairs: list[tuple[int, int]]
    if _is_int(padding):
        pairs = [(int(padding), int(padding))] * 2
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        if all(_is_int(p) for p in padding):
            pairs = [(int(padding[0]), int(padding[0])), (int(padding[1]), int(padding[1]))]
        elif all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p)
            for p in padding
        ):
            pairs = [(int(p[0]), int(p[1])) for p in padding]
        else:
            raise TypeError(
                f"{func}: padding must be a string, an int, a pair of ints or "
                f"((top, bottom), (left, right)); got {padding!r}"
            )
    else:
        raise TypeError(
            f"{func}: padding must be a string, an int, a pair of ints or "
            f"((top, bottom), (left, right)); got {padding!r}"
        )
    if min(min(p) for p in pairs) < 0:
        raise PatchconvError(f"{func}: padding must be >= 0; got {padding!r}")
    return (pairs[0], pairs[1])


def normalize_data_format(data_format: Any, *, func: str) -> str:
    """ "channels_last" or "channels_first" (any case), lower-cased; None is Keras' default
    (its ``image_data_format()`` unless configured), "channels_last"."""
    if data_format is None:
        return "channels_last"
    if not isinstance(data_format, str) or data_format.lower() not in DATA_FORMATS:
        raise PatchconvError(
            f"{func}: data_format must be 'channels_last' or 'channels_first'; got {data_format!r}"
        )
    return data_format.lower()


def normalize_padding_mode(padding_mode: Any, *, func: str) -> str:
    """PyTorch's ``padding_mode``: "zeros", "reflect", "replicate" or "circular" (any case)."""
    if not isinstance(padding_mode, str):
        raise TypeError(
            f"{func}: padding_mode must be a string, one of {list(PADDING_MODES)}; got "
            f"{padding_mode!r}"
        )
    mode = padding_mode.lower()
    if mode not in PADDING_MODES:
        raise PatchconvError(
            f"{func}: padding_mode must be one of {list(PADDING_MODES)}; got {padding_mode!r}"
        )
    return mode


def _check_mode_pads(
    mode: str, pads: PadPairs, hw: tuple[int, int], *, func: str, padding: Any
) -> None:
    """reflect needs every pad < the input size, circular <= it (PyTorch's rules: a reflection
    never repeats the edge pixel, a wrap never goes round twice)."""
    if mode not in ("reflect", "circular"):
        return
    for axis, size, pair in zip(("height", "width"), hw, pads, strict=True):
        big = max(pair)
        if (mode == "reflect" and big >= size) or (mode == "circular" and big > size):
            rule = "smaller than" if mode == "reflect" else "at most"
            raise PatchconvError(
                f"{func}: padding_mode {mode!r} needs each pad {rule} the input {axis} ({size}); "
                f"got padding {padding!r} -> {pair} on the {axis}"
            )


def check_flag(value: object, *, func: str, name: str) -> bool:
    """A True/False option (NumPy's bool too), else a TypeError naming it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be True or False; got {value!r}")
    return bool(value)


def check_workspace_limit(limit_bytes: object, *, func: str) -> int:
    """A workspace limit must be a positive int number of bytes."""
    if not _is_int(limit_bytes):
        raise TypeError(
            f"{func}: workspace_limit must be an int number of bytes; got {limit_bytes!r}"
        )
    assert isinstance(limit_bytes, numbers.Integral)
    if limit_bytes < 1:
        raise PatchconvError(f"{func}: workspace_limit must be >= 1 byte; got {limit_bytes}")
    return int(limit_bytes)


def as_float_array(value: Any, *, func: str, name: str, cast: bool = True) -> np.ndarray:
    """Any array-like -> an ndarray of a float dtype (never a copy unless needed).

    float16/32/64 are kept (in native byte order: big-endian ones are copied); integer and bool
    arrays (e.g. uint8 images) become float32 (integers past 2**24 round; with ``cast=False``
    they are returned as they are, for the caller to convert after its other checks, with
    :func:`float_dtype_of` saying the dtype they will have); complex, object, string and
    other dtypes raise TypeError.
    """
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise TypeError(
                f"{func}: {name} must be array-like; got {type(value).__name__}"
            ) from exc
    kind = arr.dtype.kind
    if kind == "f" and not arr.dtype.isnative:  # big-endian data (FITS, network order)
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if kind == "f" and arr.dtype in (np.float16, np.float32, np.float64):
        return arr
    if kind in "iub":
        return arr.astype(np.float32) if cast else arr
    raise TypeError(
        f"{func}: {name} must have a real float, integer or bool dtype; got dtype {arr.dtype}"
    )


def float_dtype_of(arr: np.ndarray) -> np.dtype:
    """The dtype :func:`as_float_array` gives ``arr`` (float32 for integers and bool)."""
    return np.dtype(np.float32) if arr.dtype.kind in "iub" else arr.dtype


def compute_dtype(*dtypes: np.dtype) -> tuple[np.dtype, np.dtype]:
    """(dtype to compute in, dtype to return): float16 accumulates in float32."""
    out = np.result_type(*dtypes)
    work = np.dtype(np.float32) if out == np.float16 else out
    return work, out


def conv_spec(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    *,
    strides: Any = 1,
    padding: Any = "valid",
    dilation_rate: Any = 1,
    groups: Any = 1,
    data_format: Any = "channels_last",
    padding_mode: Any = "zeros",
    func: str = "conv2d",
) -> ConvSpec:
    """Check every argument of a 2-D convolution and resolve all sizes.

    Raises
    ------
    TypeError
        An argument of the wrong type.
    PatchconvError
        A wrong value; the message names ``func``, the parameter and both values.
    """
    data_format = normalize_data_format(data_format, func=func)
    mode = normalize_padding_mode(padding_mode, func=func)
    if len(x_shape) != 4:
        layout = "(n, h, w, c_in)" if data_format == "channels_last" else "(n, c_in, h, w)"
        raise PatchconvError(
            f"{func}: x must be 4-D {layout} for {data_format}; got ndim {len(x_shape)}, "
            f"shape {tuple(x_shape)}"
        )
    if len(kernel_shape) != 4:
        raise PatchconvError(
            f"{func}: kernel must be 4-D (kh, kw, c_in // groups, c_out); got ndim "
            f"{len(kernel_shape)}, shape {tuple(kernel_shape)}"
        )
    if data_format == "channels_first":
        n, c_in, h, w = (int(v) for v in x_shape)
    else:
        n, h, w, c_in = (int(v) for v in x_shape)
    kh, kw, kc, c_out = (int(v) for v in kernel_shape)
    if min(kh, kw, kc, c_out) < 1:
        raise PatchconvError(f"{func}: kernel sizes must be >= 1; got kernel {tuple(kernel_shape)}")
    if min(h, w, c_in) < 1:  # an empty batch is allowed: an empty result, as PyTorch's
        raise PatchconvError(
            f"{func}: x's height, width and channels must not be empty; got x {tuple(x_shape)}"
        )
    if not _is_int(groups):
        raise TypeError(f"{func}: groups must be an int; got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise PatchconvError(f"{func}: groups must be >= 1; got {groups}")
    if c_in % groups:
        raise PatchconvError(
            f"{func}: groups ({groups}) must divide x channels ({c_in}); got x {tuple(x_shape)}"
        )
    if c_out % groups:
        raise PatchconvError(
            f"{func}: groups ({groups}) must divide kernel output channels ({c_out}); got kernel "
            f"{tuple(kernel_shape)}"
        )
    if kc * groups != c_in:
        raise PatchconvError(
            f"{func}: kernel input channels ({kc}) must equal x channels ({c_in}) / groups "
            f"({groups}); got x {tuple(x_shape)}, kernel {tuple(kernel_shape)}"
        )
    if bias_shape is not None and tuple(bias_shape) != (c_out,):
        raise PatchconvError(
            f"{func}: bias must have shape ({c_out},) to match kernel output channels; got bias "
            f"{tuple(bias_shape)}"
        )
    stride_pair = normalize_pair(strides, func=func, name="strides")
    dilation_pair = normalize_pair(dilation_rate, func=func, name="dilation_rate")
    pads = normalize_padding(
        padding,
        func=func,
        hw=(h, w),
        kernel_hw=(kh, kw),
        strides=stride_pair,
        dilation=dilation_pair,
    )
    _check_mode_pads(mode, pads, (h, w), func=func, padding=padding)
    out_hw = []
    for axis, size, k, s, d, (lo, hi) in zip(
        ("height", "width"), (h, w), (kh, kw), stride_pair, dilation_pair, pads, strict=True
    ):
        effective = (k - 1) * d + 1
        padded = size + lo + hi
        if effective > padded:
            raise PatchconvError(
                f"{func}: the dilated kernel {axis} ({effective}) must not exceed the padded input "
                f"{axis} ({padded}); got x {tuple(x_shape)}, kernel {tuple(kernel_shape)}, "
                f"padding {padding!r}, dilation_rate {dilation_rate!r}"
            )
        out_hw.append((padded - effective) // s + 1)
    return ConvSpec(
        n=n,
        h=h,
        w=w,
        c_in=c_in,
        c_out=c_out,
        kh=kh,
        kw=kw,
        strides=stride_pair,
        dilation=dilation_pair,
        pads=pads,
        groups=groups,
        data_format=data_format,
        oh=out_hw[0],
        ow=out_hw[1],
        padding_mode=mode,
    )
