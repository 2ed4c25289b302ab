"""An independent conv2d reference: plain loops in float64, sharing no code with patchconv.

Everything is recomputed here from the definitions, the output-size rule and the "same" padding
rule included, so that a bug in patchconv's shared helpers cannot hide in both places.
"""

from __future__ import annotations

import math

import numpy as np


def pads_for(
    padding: object,
    h: int,
    w: int,
    kh: int,
    kw: int,
    strides: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for any padding form, by the definitions."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        out = []
        for size, k, s, d in ((h, kh, strides[0], dilation[0]), (w, kw, strides[1], dilation[1])):
            # Output keeps ceil(size / s) positions; pad just enough to reach them.
            wanted = -(-size // s)
            needed = (wanted - 1) * s + d * (k - 1) + 1
            total = max(0, needed - size)
            if mode in ("same", "same_upper"):
                out += [total // 2, total - total // 2]
            else:
                out += [total - total // 2, total // 2]
        return (out[0], out[1], out[2], out[3])
    if isinstance(padding, int):
        return (padding,) * 4
    a, b = padding  # type: ignore[misc]
    if isinstance(a, int):
        return (a, a, b, b)
    return (a[0], a[1], b[0], b[1])


def conv2d_reference(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: object = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
) -> np.ndarray:
    """out[b, i, j, o] = bias[o] + sum over (di, dj, c) of
    xpad[b, i*sh + di*dh, j*sw + dj*dw, g*cg + c] * kernel[di, dj, c, o], with g = o // (c_out/G)."""
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    dh, dw = (dilation_rate, dilation_rate) if isinstance(dilation_rate, int) else dilation_rate
    xx = np.asarray(x, dtype=np.float64)
    if data_format == "channels_first":
        xx = xx.transpose(0, 2, 3, 1)
    k = np.asarray(kernel, dtype=np.float64)
    n, h, w, c_in = xx.shape
    kh, kw, cg, c_out = k.shape
    top, bottom, left, right = pads_for(padding, h, w, kh, kw, (sh, sw), (dh, dw))
    xp = np.zeros((n, h + top + bottom, w + left + right, c_in))
    xp[:, top : top + h, left : left + w, :] = xx
    oh = math.floor((h + top + bottom - dh * (kh - 1) - 1) / sh) + 1
    ow = math.floor((w + left + right - dw * (kw - 1) - 1) / sw) + 1
    per_group = c_out // groups
    out = np.zeros((n, oh, ow, c_out))
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for o in range(c_out):
                    g = o // per_group
                    acc = 0.0 if bias is None else float(bias[o])
                    for di in range(kh):
                        for dj in range(kw):
                            for c in range(cg):
                                acc += (
                                    xp[b, i * sh + di * dh, j * sw + dj * dw, g * cg + c]
                                    * k[di, dj, c, o]
                                )
                    out[b, i, j, o] = acc
    if data_format == "channels_first":
        out = out.transpose(0, 3, 1, 2)
    return out
