"""Hypothesis strategies for random small convolution configurations (every padding form)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st


@dataclass
class Case:
    x: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray | None
    options: dict[str, Any]

    def __repr__(self) -> str:
        b = None if self.bias is None else self.bias.shape
        return f"Case(x={self.x.shape} {self.x.dtype}, kernel={self.kernel.shape}, bias={b}, {self.options})"


@st.composite
def paddings(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["valid", "same", "same_lower", "int", "pair", "explicit"]))
    if kind in ("valid", "same", "same_lower"):
        return kind
    if kind == "int":
        return draw(st.integers(0, 2))
    if kind == "pair":
        return (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    return tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))


def _pair(draw: st.DrawFn, lo: int, hi: int) -> int | tuple[int, int]:
    if draw(st.booleans()):
        return draw(st.integers(lo, hi))
    return (draw(st.integers(lo, hi)), draw(st.integers(lo, hi)))


def _both(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else v


@st.composite
def conv_cases(
    draw: st.DrawFn,
    dtypes: tuple[Any, ...] = (np.float32, np.float64),
    max_batch: int = 3,
    bias: bool | None = None,
) -> Case:
    """A random conv2d call small enough for the loop reference (and always valid)."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    c_in, c_out = groups * cg, groups * og
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = _pair(draw, 1, 3)
    dilation = _pair(draw, 1, 3)
    padding = draw(paddings())
    (dh, dw), (sh, sw) = _both(dilation), _both(strides)
    # Input large enough that the dilated kernel fits even with no padding.
    h = draw(st.integers((kh - 1) * dh + 1, (kh - 1) * dh + 7))
    w = draw(st.integers((kw - 1) * dw + 1, (kw - 1) * dw + 7))
    n = draw(st.integers(1, max_batch))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (n, c_in, h, w) if data_format == "channels_first" else (n, h, w, c_in)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((kh, kw, cg, c_out)).astype(dtype)
    use_bias = draw(st.booleans()) if bias is None else bias
    b = rng.standard_normal(c_out).astype(dtype) if use_bias else None
    del sh, sw
    return Case(
        x,
        kernel,
        b,
        {
            "strides": strides,
            "padding": padding,
            "dilation_rate": dilation,
            "groups": groups,
            "data_format": data_format,
        },
    )
