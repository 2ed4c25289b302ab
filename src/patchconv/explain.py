"""The step-by-step walkthrough of one convolution, as data.

:func:`explain` computes every number of the seed's demonstration with the library itself and
checks it against the full convolution; renderings (text, JSON, figure, animation, web page) read
the returned :class:`Walkthrough` and recompute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from patchconv._spec import ConvSpec, PatchconvError, as_float_array, conv_spec
from patchconv.algorithms.gemm import kernel_matrices
from patchconv.functional import conv2d, im2col
from patchconv.layers import Conv2D

__all__ = ["Walkthrough", "explain"]


@dataclass(frozen=True)
class Walkthrough:
    """Every step of one convolution, with the arrays it shows (all NHWC / HWIO).

    ``patch`` is the ``(kh, kw, c_in)`` block under output pixel ``position`` of image
    ``batch_index`` (zeros where it hangs over the padding); ``flat_patch`` is it flattened to
    ``(1, kh*kw*c_in)``; ``flat_kernel`` is the kernel as ``groups`` matrices
    ``(groups, kh*kw*c_in/groups, c_out/groups)`` (for one group, the seed's ``(27, 2)`` with
    column j = filter j); ``output_for_patch`` is patch times kernel plus bias, and
    ``conv_output_at_position`` the full convolution's value there.
    """

    x: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    spec: ConvSpec
    options: dict[str, Any]
    output: np.ndarray
    batch_index: int
    position: tuple[int, int]
    patch_origin: tuple[int, int]
    patch: np.ndarray
    flat_patch: np.ndarray
    flat_kernel: np.ndarray
    output_for_patch: np.ndarray
    conv_output_at_position: np.ndarray
    max_abs_diff: float
    all_patches: np.ndarray
    all_patches_output: np.ndarray
    all_patches_max_abs_diff: float
    slices_equal: tuple[bool, ...]
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(self.kernel.shape)

    @property
    def bias_shape(self) -> tuple[int, ...]:
        return tuple(self.bias.shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.output.shape)

    @property
    def matches(self) -> bool:
        """Both hand computations agree with the full convolution within float32 rounding."""
        scale = max(1.0, float(np.max(np.abs(self.output))))
        tol = 1e-5 * scale if self.output.dtype != np.float64 else 1e-12 * scale
        return self.max_abs_diff <= tol and self.all_patches_max_abs_diff <= tol


def _cut_patch(
    x_nhwc: np.ndarray, spec: ConvSpec, b: int, i: int, j: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """The (kh, kw, c_in) patch under output (b, i, j), cut by hand from a zero-padded copy."""
    (pt, pb), (pl, pr) = spec.pads
    padded = np.pad(x_nhwc[b], ((pt, pb), (pl, pr), (0, 0)))  # (h + pt + pb, w + pl + pr, c_in)
    sh, sw = spec.strides
    dh, dw = spec.dilation
    top, left = i * sh, j * sw  # in padded coordinates
    patch = padded[
        top : top + (spec.kh - 1) * dh + 1 : dh, left : left + (spec.kw - 1) * dw + 1 : dw
    ]
    return patch, (top - pt, left - pl)  # origin in input coordinates (negative = in the padding)


def explain(
    x: Any = None,
    kernel: Any = None,
    bias: Any = None,
    *,
    seed: int | None = None,
    input_shape: tuple[int, int, int, int] = (1, 4, 4, 3),
    filters: int = 2,
    kernel_size: int | tuple[int, int] = 3,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    position: tuple[int, int] = (0, 0),
    batch_index: int = 0,
) -> Walkthrough:
    """Walk through one convolution the seed's way, checking every step.

    With no arguments: a random ``(1, 4, 4, 3)`` float32 image and ``Conv2D(filters=2,
    kernel_size=3)``, explained at output pixel ``(0, 0)``. ``x`` (in ``data_format``), ``kernel``
    (HWIO) and ``bias`` may be given instead; otherwise they are drawn from ``seed`` (the kernel by
    Keras' glorot_uniform, the bias uniformly, so that adding it shows).

    >>> wt = explain(seed=0)
    >>> wt.patch.shape, wt.flat_patch.shape, wt.flat_kernel.shape, wt.matches
    ((3, 3, 3), (1, 27), (1, 27, 2), True)
    """
    func = "explain"
    rng = np.random.default_rng(seed)
    if x is None:
        arr = rng.uniform(0.0, 1.0, size=tuple(input_shape)).astype(np.float32)
    else:
        arr = as_float_array(x, func=func, name="x")
    channels_axis = 1 if str(data_format).lower() == "channels_first" else -1
    if kernel is None:
        if arr.ndim != 4:
            raise PatchconvError(f"{func}: x must be 4-D; got ndim {arr.ndim}, shape {arr.shape}")
        layer = Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            groups=groups,
            data_format=data_format,
            seed=int(rng.integers(2**31)),
            dtype=arr.dtype.name if arr.dtype != np.float16 else "float32",
        )
        layer.build(arr.shape)
        assert layer.kernel is not None
        kern = layer.kernel
    else:
        kern = as_float_array(kernel, func=func, name="kernel")
    if bias is None:
        b = rng.uniform(-0.5, 0.5, size=(kern.shape[-1],) if kern.ndim == 4 else (1,))
        bias_arr = b.astype(kern.dtype)
    else:
        bias_arr = as_float_array(bias, func=func, name="bias")
    options = {
        "strides": strides,
        "padding": padding,
        "dilation_rate": dilation_rate,
        "groups": groups,
        "data_format": data_format,
    }
    spec = conv_spec(arr.shape, kern.shape, bias_arr.shape, func=func, **options)
    if not isinstance(batch_index, (int, np.integer)) or not 0 <= batch_index < spec.n:
        raise PatchconvError(f"{func}: batch_index must be in [0, {spec.n}); got {batch_index!r}")
    i, j = (int(v) for v in position)
    if not (0 <= i < spec.oh and 0 <= j < spec.ow):
        raise PatchconvError(
            f"{func}: position must lie inside the output (oh, ow) = ({spec.oh}, {spec.ow}); "
            f"got {tuple(position)}"
        )
    output = conv2d(arr, kern, bias_arr, **options)
    x_nhwc = np.moveaxis(arr, 1, -1) if channels_axis == 1 else arr
    out_nhwc = np.moveaxis(output, 1, -1) if channels_axis == 1 else output

    # Step by step, in float64 where the learner's arithmetic happens, then compared.
    patch, origin = _cut_patch(x_nhwc, spec, batch_index, i, j)  # (kh, kw, c_in)
    # Flattened row-major over (kh, kw, c_in); with groups, each group's channels form one block.
    grouped = patch.reshape(spec.kh, spec.kw, spec.groups, spec.c_in_group)
    flat_patch = grouped.transpose(2, 0, 1, 3).reshape(1, -1)  # (1, kh*kw*c_in)
    flat_kernel = kernel_matrices(kern, spec)  # (G, kh*kw*c_in/G, c_out/G)
    k_group = flat_kernel.shape[1]
    per_group = [
        flat_patch[:, g * k_group : (g + 1) * k_group] @ flat_kernel[g]  # (1, c_out/G)
        for g in range(spec.groups)
    ]
    output_for_patch = (np.concatenate(per_group, axis=1) + bias_arr)[0]  # (c_out,)
    at_position = out_nhwc[batch_index, i, j]  # (c_out,)
    max_abs_diff = float(np.max(np.abs(output_for_patch.astype(np.float64) - at_position)))

    all_patches = im2col(arr, (spec.kh, spec.kw), **options)  # (n*oh*ow, kh*kw*c_in)
    p = all_patches.shape[0]
    cols = all_patches.reshape(p, spec.groups, k_group).transpose(1, 0, 2)  # (G, P, K/G)
    products = np.matmul(cols, flat_kernel).transpose(1, 0, 2).reshape(p, spec.c_out)
    all_out = (products + bias_arr).reshape(spec.n, spec.oh, spec.ow, spec.c_out)
    all_diff = float(np.max(np.abs(all_out.astype(np.float64) - out_nhwc)))

    slices_equal = tuple(
        bool(all(np.array_equal(kern[:, :, 0, f], kern[:, :, c, f]) for c in range(kern.shape[2])))
        for f in range(kern.shape[3])
    )
    return Walkthrough(
        x=arr,
        kernel=kern,
        bias=bias_arr,
        spec=spec,
        options=options,
        output=output,
        batch_index=int(batch_index),
        position=(i, j),
        patch_origin=origin,
        patch=patch,
        flat_patch=flat_patch,
        flat_kernel=flat_kernel,
        output_for_patch=output_for_patch,
        conv_output_at_position=at_position,
        max_abs_diff=max_abs_diff,
        all_patches=all_patches,
        all_patches_output=all_out,
        all_patches_max_abs_diff=all_diff,
        slices_equal=slices_equal,
    )
