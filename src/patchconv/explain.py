"""The step-by-step walkthrough of one convolution, as data.

:func:`explain` computes every number of the seed's demonstration with the library itself and
checks it against the full convolution; renderings (text, JSON, figure, animation, web page) read
the returned :class:`Walkthrough` and recompute nothing.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from patchconv._config import check_memory
from patchconv._spec import ConvSpec, PatchconvError, as_float_array, conv_spec, normalize_pair
from patchconv.algorithms.gemm import kernel_matrices
from patchconv.functional import conv2d, im2col
from patchconv.layers import Conv2D

__all__ = ["Step", "Walkthrough", "explain"]

# Values of the patch matrix summed in float64 at a time (8 MB).
_EXACT_BLOCK = 2**20

# How close "patch @ kernel + bias" must come to conv2d's output, relative to the output's size:
# the same float32/float64 rounding budget as the test suite's tolerance table.
_MATCH_TOL = {
    np.dtype(np.float64): 1e-12,
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float16): 2e-3,
}


@dataclass(frozen=True)
class Step:
    """One step of the walkthrough: a key, a one-line title and the arrays it shows."""

    key: str
    title: str
    arrays: dict[str, np.ndarray]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(arr.shape) for name, arr in self.arrays.items()}


@dataclass(frozen=True)
class Walkthrough:
    """Every step of one convolution, with the arrays it shows (all NHWC / HWIO).

    ``x`` and ``output`` are in the caller's ``data_format``; everything else is NHWC / HWIO.
    ``patch`` is the ``(kh, kw, c_in)`` block under output pixel ``position`` of image
    ``batch_index`` (zeros where it hangs over the padding); ``flat_patch`` is it flattened to
    ``(1, kh*kw*c_in)`` (row-major over ``(kh, kw, c_in)``; with groups, one such block per
    group); ``flat_kernel`` is the kernel as ``groups`` matrices
    ``(groups, kh*kw*c_in/groups, c_out/groups)`` (the seed's ``(1, 27, 2)``; for one group
    ``kernel_matrix`` is the ``(27, 2)`` matrix, column j = filter j); ``output_for_patch``
    is patch times kernel plus bias, and ``conv_output_at_position`` the full convolution's
    value there. ``all_patches`` is the patch matrix ``(n*oh*ow, kh*kw*c_in)`` and
    ``all_patches_output`` its product with the kernel plus bias, reshaped to
    ``(n, oh, ow, c_out)``. ``slices_equal[f]`` says whether the ``c_in`` slices
    ``kernel[:, :, c, f]`` of filter ``f`` are all equal. ``notes`` says where x, kernel
    and bias came from.
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
    def x_nhwc(self) -> np.ndarray:
        """``x`` as ``(n, h, w, c_in)`` whatever the data_format (a view)."""
        return np.moveaxis(self.x, 1, -1) if self.spec.data_format == "channels_first" else self.x

    @property
    def output_nhwc(self) -> np.ndarray:
        """The full convolution's output as ``(n, oh, ow, c_out)`` (a view)."""
        if self.spec.data_format == "channels_first":
            return np.moveaxis(self.output, 1, -1)
        return self.output

    def output_index(self, i: int, j: int, f: int | None = None) -> str:
        """The index of output pixel ``(i, j)`` (filter ``f``, or all of them) of image
        ``batch_index`` in ``output``, in its data_format: ``"0, 1, 0"`` or ``"0, :, 1, 0"``."""
        n = self.batch_index
        if self.spec.data_format == "channels_first":
            return f"{n}, {':' if f is None else f}, {i}, {j}"
        return f"{n}, {i}, {j}" if f is None else f"{n}, {i}, {j}, {f}"

    @property
    def kernel_matrix(self) -> np.ndarray:
        """The flat kernel as the seed shows it: ``(K, c_out)`` for one group, else per group."""
        return self.flat_kernel[0] if self.spec.groups == 1 else self.flat_kernel

    @property
    def patch_row(self) -> int:
        """The row of ``all_patches`` that holds the explained patch."""
        i, j = self.position
        return (self.batch_index * self.spec.oh + i) * self.spec.ow + j

    def origin_of(self, i: int, j: int) -> tuple[int, int]:
        """Input (row, column) of the top-left tap of output pixel ``(i, j)``'s patch.

        Negative, or beyond ``h``/``w`` further on, means the padding.
        """
        (pt, _), (pl, _) = self.spec.pads
        return (i * self.spec.strides[0] - pt, j * self.spec.strides[1] - pl)

    def taps_of(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Input rows ``(kh,)`` and columns ``(kw,)`` that output pixel ``(i, j)`` reads."""
        top, left = self.origin_of(i, j)
        rows = top + self.spec.dilation[0] * np.arange(self.spec.kh)
        cols = left + self.spec.dilation[1] * np.arange(self.spec.kw)
        return rows, cols

    @property
    def patch_in_padding(self) -> np.ndarray:
        """``(kh, kw)`` booleans: which taps of the explained patch fall in the zero padding."""
        rows, cols = self.taps_of(*self.position)
        inside_r = (rows >= 0) & (rows < self.spec.h)
        inside_c = (cols >= 0) & (cols < self.spec.w)
        return ~(inside_r[:, None] & inside_c[None, :])

    @property
    def tolerance(self) -> float:
        """The largest difference that still counts as a match (float rounding only)."""
        scale = max(1.0, float(np.max(np.abs(self.output))))
        return _MATCH_TOL.get(np.dtype(self.output.dtype), 1e-5) * scale

    @property
    def patch_matches(self) -> bool:
        """The explained patch's product (summed in float64) agrees with conv2d's output there."""
        return self.max_abs_diff <= self.tolerance

    @property
    def all_patches_match(self) -> bool:
        """All patches at once (one matrix product) agree with conv2d's whole output."""
        return self.all_patches_max_abs_diff <= self.tolerance

    @property
    def matches(self) -> bool:
        """Both hand computations agree with the full convolution within float rounding."""
        return self.patch_matches and self.all_patches_match

    @property
    def steps(self) -> tuple[Step, ...]:
        """The walkthrough in the seed's order, each step with the arrays it shows."""
        i, j = self.position
        return (
            Step("input", "the input", {"x": self.x}),
            Step(
                "weights",
                "one kernel (kh, kw, c_in/groups, c_out) and one bias (c_out,)",
                {"kernel": self.kernel, "bias": self.bias},
            ),
            Step("output", "the full convolution", {"output": self.output}),
            Step("patch", f"the patch under output pixel ({i}, {j})", {"patch": self.patch}),
            Step("flat_patch", "the patch flattened", {"flat_patch": self.flat_patch}),
            Step("flat_kernel", "the kernel flattened", {"flat_kernel": self.kernel_matrix}),
            Step(
                "patch_times_kernel",
                "patch @ kernel + bias",
                {"output_for_patch": self.output_for_patch},
            ),
            Step(
                "compare",
                f"the full convolution's output[{self.output_index(i, j)}]",
                {"conv_output_at_position": self.conv_output_at_position},
            ),
            Step(
                "all_patches",
                "all patches at once",
                {"all_patches": self.all_patches, "all_patches_output": self.all_patches_output},
            ),
            Step(
                "slices",
                "the c_in slices of each filter",
                {"slices_equal": np.array(self.slices_equal, dtype=bool)},
            ),
        )


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


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(value: Any, *, name: str, minimum: int) -> int:
    if not _is_int(value):
        raise TypeError(f"explain: {name} must be an int; got {value!r}")
    if value < minimum:
        raise PatchconvError(f"explain: {name} must be >= {minimum}; got {value!r}")
    return int(value)


def _default_input_shape(
    kernel_hw: tuple[int, int],
    dilation: tuple[int, int],
    strides: tuple[int, int],
    c_in: int,
    data_format: str,
) -> tuple[int, int, int, int]:
    """The seed's (1, 4, 4, 3), grown so that the output is at least 2 x 2 without padding."""
    h, w = (
        max(4, (k - 1) * d + 1 + s) for k, d, s in zip(kernel_hw, dilation, strides, strict=True)
    )
    return (1, c_in, h, w) if data_format == "channels_first" else (1, h, w, c_in)


def explain(
    x: Any = None,
    kernel: Any = None,
    bias: Any = None,
    *,
    seed: int | None = None,
    input_shape: tuple[int, int, int, int] | None = None,
    filters: int | None = None,
    kernel_size: int | tuple[int, int] | None = None,
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
    (HWIO) and ``bias`` may be given instead; otherwise they are drawn from ``seed`` (x uniformly
    in [0, 1), the kernel by Keras' glorot_uniform, the bias uniformly in [-0.5, 0.5) so that
    adding it shows).

    Parameters
    ----------
    x : array_like, (n, h, w, c_in) or (n, c_in, h, w) for "channels_first", optional
    kernel : array_like, (kh, kw, c_in // groups, c_out), optional
    bias : array_like, (c_out,), optional
    seed : int, optional
        Seeds everything that is drawn; None draws fresh numbers.
    input_shape : 4 ints, optional
        The random x's shape, in ``data_format``'s layout. By default ``(1, 4, 4, c_in)``, grown
        so that the output is at least 2 x 2, with ``c_in = 3`` (a multiple of ``groups``, or
        the kernel's ``c_in * groups``).
    filters, kernel_size : optional
        The drawn kernel's ``c_out`` (default 2, a multiple of ``groups``) and ``(kh, kw)``
        (default 3). With ``kernel`` given they may be left out; if given they must agree.
    strides, padding, dilation_rate, groups, data_format
        As in :func:`patchconv.conv2d`.
    position : (int, int)
        The output pixel ``(i, j)`` to explain.
    batch_index : int
        Which image of the batch.

    Returns
    -------
    Walkthrough

    >>> wt = explain(seed=0)
    >>> wt.patch.shape, wt.flat_patch.shape, wt.kernel_matrix.shape, wt.matches
    ((3, 3, 3), (1, 27), (27, 2), True)
    """
    func = "explain"
    if seed is not None:
        seed = _check_int(seed, name="seed", minimum=0)
    groups_int = _check_int(groups, name="groups", minimum=1)
    fmt = data_format.lower() if isinstance(data_format, str) else data_format
    channels_first = fmt == "channels_first"
    if (
        not isinstance(position, (tuple, list, np.ndarray))
        or len(position) != 2
        or not all(_is_int(v) for v in position)
    ):
        raise TypeError(f"{func}: position must be a pair of ints (i, j); got {position!r}")
    notes: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    seed_text = "a fresh seed" if seed is None else f"seed {seed}"

    kern: np.ndarray | None = None
    if kernel is not None:
        kern = as_float_array(kernel, func=func, name="kernel")
        if kern.ndim != 4:
            raise PatchconvError(
                f"{func}: kernel must be 4-D (kh, kw, c_in // groups, c_out); got ndim "
                f"{kern.ndim}, shape {kern.shape}"
            )
        if filters is not None and filters != kern.shape[3]:
            raise PatchconvError(
                f"{func}: filters ({filters}) must equal the kernel's c_out ({kern.shape[3]}); "
                f"got kernel {kern.shape}"
            )
        if kernel_size is not None and normalize_pair(
            kernel_size, func=func, name="kernel_size"
        ) != tuple(kern.shape[:2]):
            raise PatchconvError(
                f"{func}: kernel_size ({kernel_size!r}) must equal the kernel's (kh, kw) "
                f"({kern.shape[0]}, {kern.shape[1]}); got kernel {kern.shape}"
            )
        notes["kernel"] = "given"
    kernel_hw = (
        (int(kern.shape[0]), int(kern.shape[1]))
        if kern is not None
        else normalize_pair(
            3 if kernel_size is None else kernel_size, func=func, name="kernel_size"
        )
    )

    if x is not None:
        if input_shape is not None:
            raise PatchconvError(
                f"{func}: give x or input_shape, not both; got x {np.shape(x)} and input_shape "
                f"{input_shape!r}"
            )
        arr = as_float_array(x, func=func, name="x")
        notes["x"] = "given"
    else:
        if input_shape is None:
            c_in = (
                int(kern.shape[2]) * groups_int
                if kern is not None
                else groups_int * math.ceil(3 / groups_int)
            )
            shape = _default_input_shape(
                kernel_hw,
                normalize_pair(dilation_rate, func=func, name="dilation_rate"),
                normalize_pair(strides, func=func, name="strides"),
                c_in,
                "channels_first" if channels_first else "channels_last",
            )
        else:
            if (
                not isinstance(input_shape, (tuple, list))
                or len(input_shape) != 4
                or not all(_is_int(v) for v in input_shape)
            ):
                raise TypeError(f"{func}: input_shape must be 4 ints; got {input_shape!r}")
            if min(input_shape) < 1:
                raise PatchconvError(f"{func}: input_shape must be >= 1; got {input_shape!r}")
            shape = tuple(int(v) for v in input_shape)  # type: ignore[assignment]
        # float64 draws, then their float32 copy: 12 bytes a value for a moment.
        check_memory(
            12 * math.prod(shape),
            func=func,
            what=f"a random input of input_shape {shape}",
            hint="give a smaller input_shape",
        )
        arr = rng.uniform(0.0, 1.0, size=shape).astype(np.float32)
        notes["x"] = f"random, uniform in [0, 1), {seed_text}"
    if arr.ndim != 4:
        raise PatchconvError(f"{func}: x must be 4-D; got ndim {arr.ndim}, shape {arr.shape}")

    if kern is None:
        n_filters = (
            groups_int * math.ceil(2 / groups_int)
            if filters is None
            else _check_int(filters, name="filters", minimum=1)
        )
        c_in = arr.shape[1] if str(data_format).lower() == "channels_first" else arr.shape[-1]
        check_memory(  # the random kernel (float64 draws, then float32)
            12 * kernel_hw[0] * kernel_hw[1] * max(1, c_in // groups_int) * n_filters,
            func=func,
            what=f"a random kernel of {n_filters} filters",
            hint="give fewer filters or a smaller kernel_size",
        )
        layer = Conv2D(
            n_filters,
            kernel_hw,
            strides=strides,
            padding=padding,
            dilation_rate=dilation_rate,
            groups=groups_int,
            data_format=data_format,
            seed=int(rng.integers(2**31)),
            dtype=arr.dtype.name if arr.dtype != np.float16 else "float32",
        )
        layer.build(arr.shape)
        assert layer.kernel is not None
        kern = layer.kernel
        notes["kernel"] = f"random, Keras' glorot_uniform, {seed_text}"
    if bias is None:
        bias_arr = rng.uniform(-0.5, 0.5, size=(kern.shape[-1],)).astype(kern.dtype)
        notes["bias"] = f"random, uniform in [-0.5, 0.5), {seed_text}"
    else:
        bias_arr = as_float_array(bias, func=func, name="bias")
        notes["bias"] = "given"
    options = {
        "strides": strides,
        "padding": padding,
        "dilation_rate": dilation_rate,
        "groups": groups_int,
        "data_format": data_format,
    }
    spec = conv_spec(arr.shape, kern.shape, bias_arr.shape, func=func, **options)
    if spec.n == 0:  # conv2d takes an empty batch; a walkthrough needs an image
        raise PatchconvError(f"{func}: x must hold at least one image; got x {arr.shape}")
    if not _is_int(batch_index) or not 0 <= batch_index < spec.n:
        raise PatchconvError(f"{func}: batch_index must be in [0, {spec.n}); got {batch_index!r}")
    i, j = (int(v) for v in position)
    if not (0 <= i < spec.oh and 0 <= j < spec.ow):
        raise PatchconvError(
            f"{func}: position must lie inside the output (oh, ow) = ({spec.oh}, {spec.ow}); "
            f"got {tuple(position)}"
        )
    n_rows, n_cols = spec.n * spec.oh * spec.ow, spec.kh * spec.kw * spec.c_in
    check_memory(  # and the float64 sums: a block of the patch matrix (8 MB at most), outputs
        max(arr.itemsize, 4) * (n_rows * n_cols + 4 * n_rows * spec.c_out)
        + 8 * (min(n_rows * n_cols, _EXACT_BLOCK) + n_rows * spec.c_out)
        + arr.nbytes,
        func=func,
        what=f"the walkthrough of x {arr.shape} (patch matrix [{n_rows}, {n_cols}], outputs)",
        hint="give a smaller input (input_shape, x or an image's size)",
    )
    output = conv2d(arr, kern, bias_arr, **options)
    x_nhwc = np.moveaxis(arr, 1, -1) if channels_first else arr
    out_nhwc = np.moveaxis(output, 1, -1) if channels_first else output

    # Step by step, the learner's way, then compared with the library's full convolution.
    patch, origin = _cut_patch(x_nhwc, spec, batch_index, i, j)  # (kh, kw, c_in)
    # Flattened row-major over (kh, kw, c_in); with groups, each group's channels form one block.
    grouped = patch.reshape(spec.kh, spec.kw, spec.groups, spec.c_in_group)
    flat_patch = grouped.transpose(2, 0, 1, 3).reshape(1, -1)  # (1, kh*kw*c_in)
    flat_kernel = kernel_matrices(kern, spec)  # (G, kh*kw*c_in/G, c_out/G)
    k_group = flat_kernel.shape[1]
    # The one patch's products summed in float64, the exact reference: a float32 row times
    # the kernel is a single running sum, whose rounding passed the tolerance on a
    # 1000x1000 kernel (3 million terms) while conv2d itself was within 6e-7.
    kernel64 = flat_kernel.astype(np.float64)  # (G, kh*kw*c_in/G, c_out/G)
    per_group = [
        flat_patch[:, g * k_group : (g + 1) * k_group].astype(np.float64) @ kernel64[g]
        for g in range(spec.groups)
    ]  # (1, c_out/G) each; all patches below are summed in float64 as well
    exact = (np.concatenate(per_group, axis=1) + bias_arr.astype(np.float64))[0]  # (c_out,)
    output_for_patch = exact.astype(output.dtype)
    at_position = out_nhwc[batch_index, i, j]  # (c_out,)
    max_abs_diff = float(np.max(np.abs(exact - at_position)))

    all_patches = im2col(arr, (spec.kh, spec.kw), **options)  # (n*oh*ow, kh*kw*c_in)
    p = all_patches.shape[0]
    # Summed in float64 too (rows of _EXACT_BLOCK values at a time), so the page's numbers
    # for any pixel are the text's for the explained one.
    exact_all = np.empty((p, spec.c_out), np.float64)
    block = max(1, _EXACT_BLOCK // max(1, all_patches.shape[1]))
    for r0 in range(0, p, block):
        rows = all_patches[r0 : r0 + block].astype(np.float64)
        cols = rows.reshape(len(rows), spec.groups, k_group).transpose(1, 0, 2)  # (G, P, K/G)
        exact_all[r0 : r0 + block] = (
            np.matmul(cols, kernel64).transpose(1, 0, 2).reshape(len(rows), spec.c_out)
        )
    exact_all += bias_arr.astype(np.float64)
    exact_nhwc = exact_all.reshape(spec.n, spec.oh, spec.ow, spec.c_out)
    all_out = exact_nhwc.astype(output.dtype)
    all_diff = float(np.max(np.abs(exact_nhwc - out_nhwc)))
    del exact_all, exact_nhwc

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
        notes=notes,
    )
