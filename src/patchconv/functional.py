"""conv2d and conv2d_backward: validate -> choose an algorithm -> run.

Legend for shapes: ``n`` batch, ``h, w`` input height and width, ``c_in, c_out`` channels,
``kh, kw`` kernel size, ``oh, ow`` output size, ``G`` groups.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple, overload

import numpy as np

from patchconv import algorithms
from patchconv._config import get_workspace_limit
from patchconv._patches import col2im as _col2im
from patchconv._patches import im2col as _im2col
from patchconv._spec import (
    PADDING_MODES,
    ConvSpec,
    PatchconvError,
    as_float_array,
    check_flag,
    check_workspace_limit,
    compute_dtype,
    conv_spec,
    float_dtype_of,
    shape_arg,
)
from patchconv.algorithms import Plan

__all__ = [
    "ConvGrads",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv_output_shape",
    "explain_algorithm",
    "im2col",
]

# (x shape, kernel shape, bias shape, options..., algorithm, dtype) -> (spec, plan). Checking
# arguments and planning cost ~10 us, as much as a whole tiny convolution; a repeated call with
# the same hashable arguments reuses both (unhashable padding forms just skip the cache).
_PLANS: dict[tuple[Any, ...], tuple[ConvSpec, Plan]] = {}
_PLANS_MAX = 512


def conv_options(
    strides: Any, padding: Any, dilation_rate: Any, groups: Any, data_format: Any, padding_mode: Any
) -> dict[str, Any]:
    """A convolution's options as :func:`~patchconv._spec.conv_spec` takes them."""
    return {
        "strides": strides,
        "padding": padding,
        "dilation_rate": dilation_rate,
        "groups": groups,
        "data_format": data_format,
        "padding_mode": padding_mode,
    }


def _spec_and_plan(
    x_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    options: dict[str, Any],
    algorithm: str,
    itemsize: int,
    func: str,
    workspace_limit: int,
) -> tuple[ConvSpec, Plan]:
    # Types are part of the key: True == 1 and 1.0 == 1 hash alike but must still be rejected.
    key: tuple[Any, ...] | None = (
        func,
        x_shape,
        kernel_shape,
        bias_shape,
        *((v.__class__, repr(v) if isinstance(v, (tuple, list)) else v) for v in options.values()),
        algorithm,
        itemsize,
        workspace_limit,
    )
    try:
        hit = _PLANS.get(key)  # type: ignore[arg-type]
    except TypeError:  # a list somewhere in the options
        hit, key = None, None
    if hit is not None:
        return hit
    spec = conv_spec(x_shape, kernel_shape, bias_shape, func=func, **options)
    # A padded mode runs as a "valid" convolution of the explicitly padded input.
    run_spec = spec if spec.padding_mode == "zeros" else spec.unpadded()
    plan = algorithms.choose(
        run_spec, algorithm, func=func, itemsize=itemsize, workspace_limit=workspace_limit
    )
    if key is not None:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = (spec, plan)
    return spec, plan


class ConvGrads(NamedTuple):
    """Gradients of a convolution's loss with respect to its three inputs (``grad_x`` None
    where it was not asked for, ``grad_bias`` None without a bias)."""

    grad_x: np.ndarray | None
    grad_kernel: np.ndarray
    grad_bias: np.ndarray | None


def _channel_sums(arr: np.ndarray) -> np.ndarray:
    """``arr.sum`` over every axis but the last, of a C-contiguous array: the bias gradient.

    NumPy adds a (rows, c) array's rows one at a time, a short vector each with few channels
    (1.4 ms for N64 32x32 32, 12 ms for 1024x1024x3). Rows are summed here k at a time as
    one row of k*c values (k a power of two dividing the rows, k*c <= 1024), then the k
    partial sums added: 3-20x faster, and more accurate (k running sums, not one). One
    channel is one contiguous run, which NumPy sums pairwise (more accurate still)."""
    c = arr.shape[-1]
    if c == 1:
        return arr.reshape(-1).sum(keepdims=True)
    rows = arr.size // max(1, c)
    k = math.gcd(rows, 1 << max(0, (1024 // max(1, c)).bit_length() - 1))
    return arr.reshape(rows // k, k * c).sum(axis=0).reshape(k, c).sum(axis=0)


def _to_nhwc(arr: np.ndarray, spec: ConvSpec) -> np.ndarray:
    return arr.transpose(0, 2, 3, 1) if spec.data_format == "channels_first" else arr


def _from_nhwc(arr: np.ndarray, spec: ConvSpec) -> np.ndarray:
    if spec.data_format == "channels_first":
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    return arr


def _pad_input(x_nhwc: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """x padded by ``spec.padding_mode`` ("reflect", "replicate", "circular"):
    (n, h + top + bottom, w + left + right, c_in)."""
    (top, bottom), (left, right) = spec.pads
    mode: Any = PADDING_MODES[spec.padding_mode]  # np.pad's name for it
    return np.pad(x_nhwc, ((0, 0), (top, bottom), (left, right), (0, 0)), mode=mode)


def _fold_border(grad_xp: np.ndarray, spec: ConvSpec) -> np.ndarray:
    """The adjoint of :func:`_pad_input`: the gradient of every border pixel added onto the
    input pixel it copies. (n, h + top + bottom, w + left + right, c) -> (n, h, w, c).

    The padding is one index map per axis (np.pad of ``arange(size)`` says which input row each
    padded row copies), so its adjoint is one scatter-add per axis over the few border rows.
    """
    out = grad_xp
    for axis, size, (lo, hi) in ((1, spec.h, spec.pads[0]), (2, spec.w, spec.pads[1])):
        if lo == hi == 0:
            continue
        mode: Any = PADDING_MODES[spec.padding_mode]
        source = np.pad(np.arange(size), (lo, hi), mode=mode)  # padded row -> input row
        lead: tuple[Any, ...] = (slice(None),) * axis
        folded = out[(*lead, slice(lo, lo + size))].copy()  # the interior, (n, size, ., c)
        for i in (*range(lo), *range(lo + size, lo + size + hi)):
            folded[(*lead, int(source[i]))] += out[(*lead, i)]
        out = folded
    return out


def _plan_limit(workspace_limit: object) -> int:
    """The limit a plan is made for: the call's own, or the one in force where it is None or
    not a valid limit (the call then refuses it after checking its other arguments)."""
    try:
        return _workspace(workspace_limit, "conv2d")  # type: ignore[arg-type]
    except (TypeError, PatchconvError):
        return get_workspace_limit()


def _workspace(workspace_limit: int | None, func: str) -> int:
    if workspace_limit is None:
        return get_workspace_limit()
    return check_workspace_limit(workspace_limit, func=func)


def _batch_pieces(
    spec: ConvSpec, copied: int, result: int, fixed: int, limit: int
) -> tuple[list[tuple[int, int]], int]:
    """(the batch's pieces as (start, stop), the algorithms' limit) for a call whose own
    copies take ``copied`` bytes an image: the inputs and result in the compute dtype
    (float16 runs in float32), in NHWC (channels_first) and padded (padding modes).

    Where the whole batch's copies fit in half the workspace limit, one piece, the algorithms
    within what they and ``fixed`` leave (bytes made once a call: the kernel's cast, its
    gradients); else pieces of equal size (to one image), each one's copies and ``result``
    (bytes an image of a piece's result, where the whole call's would have been the output
    itself) within half the limit less ``fixed`` (at most a quarter of the limit), and the
    algorithms within the rest, a quarter of the limit at the least. Float16 forward N32
    28x28 64 -> 64 under 8 MiB took 15 MiB. One image a piece at the least: its copies may
    still pass the limit."""
    half = limit // 2
    if copied == 0:
        return [(0, spec.n)], limit
    if spec.n * copied <= half:
        return [(0, spec.n)], max(limit // 4, limit - fixed - spec.n * copied)
    each = copied + result
    budget = half - min(fixed, half // 2)  # the pieces' copies: at least a quarter
    count = -(-spec.n // max(1, budget // each))
    biggest = -(-spec.n // count)
    pieces = [(i * spec.n // count, (i + 1) * spec.n // count) for i in range(count)]
    return pieces, max(limit // 4, limit - fixed - biggest * each)


def _copied_bytes(spec: ConvSpec, work: np.dtype, *converted: bool, padded: int = 1) -> int:
    """Bytes an image of the copies made around the algorithms: an input image for each true
    flag of ``converted`` (an input cast to ``work`` or transposed to NHWC), and ``padded``
    padded images where the padding mode pads the input."""
    (top, bottom), (left, right) = spec.pads
    image = spec.h * spec.w * spec.c_in * work.itemsize
    if spec.padding_mode == "zeros":
        padded = 0
    padded_image = (spec.h + top + bottom) * (spec.w + left + right) * spec.c_in * work.itemsize
    return image * sum(converted) + padded * padded_image


@overload
def conv2d(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
    algorithm: str = "auto",
    workspace_limit: int | None = None,
    return_plan: Literal[False] = False,
) -> np.ndarray: ...


@overload
def conv2d(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
    algorithm: str = "auto",
    workspace_limit: int | None = None,
    return_plan: Literal[True],
) -> tuple[np.ndarray, Plan]: ...


def conv2d(
    x: Any,
    kernel: Any,
    bias: Any = None,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
    algorithm: str = "auto",
    workspace_limit: int | None = None,
    return_plan: bool = False,
) -> np.ndarray | tuple[np.ndarray, Plan]:
    """2-D convolution (a cross-correlation, as in every CNN library) with Keras' semantics.

    Every output value is one flattened ``(kh, kw, c_in // groups)`` input patch times the kernel
    reshaped to ``(kh*kw*c_in // groups, c_out // groups)``, plus the bias; all patches at once
    make one matrix product ``[patches, kh*kw*c_in] @ [kh*kw*c_in, c_out]`` per group.

    Parameters
    ----------
    x : array_like, (n, h, w, c_in) or (n, c_in, h, w) for "channels_first"
        float16/32/64 are kept (float16 accumulates in float32); integer and bool arrays are
        converted to float32 first (integers past 2**24 round).
    kernel : array_like, (kh, kw, c_in // groups, c_out)
        Keras' HWIO layout whatever ``data_format`` is.
    bias : array_like, (c_out,), optional
    strides, dilation_rate : int or (int, int)
    padding : str, int, (int, int) or ((int, int), (int, int))
        "valid"; "same" (TensorFlow/Keras rule, odd pixel at the bottom/right, ONNX SAME_UPPER);
        "same_lower" (odd pixel at the top/left); an int; ``(ph, pw)``; or
        ``((top, bottom), (left, right))``.
    groups : int
        Divides ``c_in`` and ``c_out``; ``groups == c_in`` is a depthwise convolution.
    data_format : {"channels_last", "channels_first"}
    padding_mode : {"zeros", "reflect", "replicate", "circular"}
        What fills the padding, PyTorch's ``Conv2d(padding_mode=...)``: zeros (Keras, ONNX);
        the input mirrored without repeating the edge (``np.pad`` "reflect", each pad smaller
        than the input); the edge pixel repeated (``np.pad`` "edge"); or the input wrapped
        around (``np.pad`` "wrap", each pad at most the input size). The non-zero modes pad
        explicitly, then convolve with padding 0.
    algorithm : str
        "auto" (the cost model picks), "measure" (time every algorithm that applies once per
        shape and dtype, then reuse the fastest), or a name from
        ``patchconv.algorithms.ALGORITHMS``: "gemm", "pointwise", "depthwise", "winograd"
        ("winograd_f4", "winograd_f2"), "fft", "direct". A name that does not apply to the
        layer raises PatchconvError saying why.
    workspace_limit : int, optional
        Bytes of work buffers (patch tiles, transforms) a call may hold; defaults to
        :func:`patchconv.get_workspace_limit`.
    return_plan : bool
        Also return the :class:`~patchconv.algorithms.Plan`: the algorithm that ran and why.

    Returns
    -------
    ndarray, (n, oh, ow, c_out) or (n, c_out, oh, ow)
        In the result dtype of x, kernel and bias; ``(out, plan)`` with ``return_plan``.

    Notes
    -----
    ``oh = (h + top + bottom - ((kh - 1) * dilation_h + 1)) // stride_h + 1``, likewise ``ow``.
    For a Dask array ``x`` use :func:`patchconv.scale.conv2d`, which maps this function over
    chunks with the exact halo.

    Examples
    --------
    >>> import numpy as np, patchconv
    >>> x = np.arange(48, dtype=np.float32).reshape(1, 4, 4, 3)
    >>> kernel = np.ones((3, 3, 3, 2), dtype=np.float32)
    >>> out = patchconv.conv2d(x, kernel)
    >>> out.shape
    (1, 2, 2, 2)
    >>> float(out[0, 0, 0, 0]) == float(x[0, :3, :3, :].sum())
    True
    """
    func = "conv2d"
    return_plan = check_flag(return_plan, func=func, name="return_plan")
    # An integer x is converted after every check (a 4x copy of a large uint8 image came first)
    x = as_float_array(x, func=func, name="x", cast=False)
    kernel = as_float_array(kernel, func=func, name="kernel")
    bias_arr = None if bias is None else as_float_array(bias, func=func, name="bias")
    dtypes = [float_dtype_of(x), kernel.dtype] + ([] if bias_arr is None else [bias_arr.dtype])
    work, out_dtype = compute_dtype(*dtypes)
    options = conv_options(strides, padding, dilation_rate, groups, data_format, padding_mode)
    bias_shape = None if bias_arr is None else bias_arr.shape
    args = (kernel.shape, bias_shape, options, algorithm, work.itemsize, func)
    spec, plan = _spec_and_plan(x.shape, *args, _plan_limit(workspace_limit))
    limit = _workspace(workspace_limit, func)
    if spec.n == 0:  # an empty batch: an empty result (planned as one image, see choose)
        empty = np.empty(spec.out_shape, out_dtype)
        return (empty, plan) if return_plan else empty
    x = x.astype(float_dtype_of(x), copy=False)  # every argument checked: integers to float32
    kernel_w = kernel.astype(work, copy=False)
    bias_w = None if bias_arr is None else bias_arr.astype(work, copy=False)
    cf = spec.data_format == "channels_first"
    # (an identity test first: the common call, float32 NHWC zero-padded, copies nothing)
    if x.dtype is work and not cf and spec.padding_mode == "zeros":
        out, ran = _forward_nhwc(x, kernel_w, bias_w, spec, plan, work, limit, algorithm)
        result = out if out_dtype == work else out.astype(out_dtype)
        return (result, ran) if return_plan else result
    per_out = spec.oh * spec.ow * spec.c_out * work.itemsize  # the result before its cast
    result_copied = out_dtype != work or cf
    copied = _copied_bytes(spec, work, x.dtype != work, cf) + (per_out if result_copied else 0)
    fixed = kernel_w.nbytes if kernel_w is not kernel else 0
    pieces, inner = _batch_pieces(spec, copied, 0 if result_copied else per_out, fixed, limit)
    if len(pieces) == 1 and not result_copied:  # a padding mode alone: the result is ours
        pspec, pplan = _spec_and_plan(x.shape, *args, inner)
        out, ran = _forward_nhwc(x, kernel_w, bias_w, pspec, pplan, work, inner, algorithm)
        return (out, ran) if return_plan else out
    result = np.empty(spec.out_shape, out_dtype)
    plans = []
    for b0, b1 in pieces:
        piece = x[b0:b1]
        pspec, pplan = _spec_and_plan(piece.shape, *args, inner)
        out, ran = _forward_nhwc(piece, kernel_w, bias_w, pspec, pplan, work, inner, algorithm)
        result[b0:b1] = out.transpose(0, 3, 1, 2) if cf else out  # cast on the way
        plans.append(ran)
        del out  # before the next piece makes its own, and its work buffers too
        if len(pieces) > 1:
            algorithms.release_this_call()
    return (result, plans[0]) if return_plan else result


def _forward_nhwc(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    plan: Plan,
    work: np.dtype,
    limit: int,
    algorithm: str,
) -> tuple[np.ndarray, Plan]:
    """conv2d's result for ``x`` in NHWC and the compute dtype, and the plan that ran."""
    x_nhwc = _to_nhwc(x, spec).astype(work, copy=False)
    run_spec = spec
    if spec.padding_mode != "zeros":
        x_nhwc, run_spec = _pad_input(x_nhwc, spec), spec.unpadded()
    return algorithms.forward(
        plan, x_nhwc, kernel, bias, run_spec, limit, measure=algorithm == "measure"
    )


def explain_algorithm(
    x_shape: tuple[int, ...] | np.ndarray,
    kernel_shape: tuple[int, ...] | np.ndarray,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    algorithm: str = "auto",
    dtype: Any = None,
) -> Plan:
    """Which algorithm :func:`conv2d` would run for these shapes, and why, computing nothing.

    The plan lists the cost model's estimate for every algorithm that applies and the reason
    each other one does not; ``print(plan)`` shows it. ``x_shape`` and ``kernel_shape`` may
    also be the arrays themselves. ``dtype`` is the inputs' dtype: by default float32, or the
    dtype ``conv2d`` would compute in for the arrays given (integers and bool plan as
    float32, as ``conv2d`` computes them).

    >>> plan = explain_algorithm((8, 56, 56, 64), (3, 3, 64, 64), padding="same")
    >>> plan.algorithm.startswith("winograd") or plan.algorithm == "gemm"
    True
    >>> explain_algorithm((1, 8, 8, 4), (1, 1, 4, 2)).algorithm
    'pointwise'
    """
    func = "explain_algorithm"
    if dtype is None:  # the arrays' own dtypes where arrays are given
        given = [np.dtype(getattr(a, "dtype", np.float32)) for a in (x_shape, kernel_shape)]
    else:
        try:
            given = [np.dtype(dtype)]
        except TypeError as exc:
            raise TypeError(f"{func}: dtype must be a NumPy dtype; got {dtype!r}") from exc
    # The dtype conv2d would compute in for inputs of this dtype (integers as float32).
    work, _ = compute_dtype(
        *(as_float_array(np.empty(0, d), func=func, name="dtype").dtype for d in given)
    )
    spec = conv_spec(
        shape_arg(x_shape, func=func, name="x_shape"),
        shape_arg(kernel_shape, func=func, name="kernel_shape"),
        None,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=groups,
        data_format=data_format,
        func=func,
    )
    return algorithms.choose(spec, algorithm, func=func, itemsize=work.itemsize)


def conv2d_backward(
    grad_out: Any,
    x: Any,
    kernel: Any,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
    use_bias: bool = True,
    workspace_limit: int | None = None,
    algorithm: str = "auto",
    need_grad_x: bool = True,
) -> ConvGrads:
    """Gradients of :func:`conv2d` given the gradient of its output.

    ``grad_kernel = patches^T @ grad_out``, ``grad_x = col2im(grad_out @ kernel_matrix^T)``
    (col2im is the adjoint of the patch extraction) and ``grad_bias = grad_out`` summed over
    batch and space. Tiled under the same workspace limit as the forward pass.

    Parameters
    ----------
    grad_out : array_like, the shape :func:`conv2d` returned
    x, kernel : array_like, as given to :func:`conv2d`
    strides, padding, dilation_rate, groups, data_format, padding_mode
        As given to :func:`conv2d`. With a non-zero ``padding_mode`` the gradient of each
        border pixel is added onto the input pixel it copies.
    use_bias : bool
        If False, ``grad_bias`` is None.
    need_grad_x : bool
        If False, ``grad_x`` is None and not computed: a network's first layer needs only
        its weights' gradients (as PyTorch skips an input that does not require grad).
    algorithm : str
        As for :func:`conv2d`: the forward algorithm whose family computes the gradients.
        At stride 1, grad_x is a forward convolution of grad_out with the flipped kernel and
        runs whatever the chooser picks for it (Winograd for 3x3 layers).

    Returns
    -------
    ConvGrads
        ``(grad_x, grad_kernel, grad_bias)`` shaped like x, kernel and ``(c_out,)``, in the
        result dtype of the inputs.

    Examples
    --------
    >>> import numpy as np, patchconv
    >>> x = np.ones((1, 3, 3, 1)); kernel = np.ones((2, 2, 1, 1))
    >>> grads = patchconv.conv2d_backward(np.ones((1, 2, 2, 1)), x, kernel)
    >>> grads.grad_x[0, :, :, 0].tolist()
    [[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]
    """
    func = "conv2d_backward"
    use_bias = check_flag(use_bias, func=func, name="use_bias")
    need_grad_x = check_flag(need_grad_x, func=func, name="need_grad_x")
    # Integer arrays are converted after every check (see conv2d).
    grad_out = as_float_array(grad_out, func=func, name="grad_out", cast=False)
    x = as_float_array(x, func=func, name="x", cast=False)
    kernel = as_float_array(kernel, func=func, name="kernel")
    options = conv_options(strides, padding, dilation_rate, groups, data_format, padding_mode)
    spec = conv_spec(x.shape, kernel.shape, None, func=func, **options)
    if tuple(grad_out.shape) != spec.out_shape:
        raise PatchconvError(
            f"{func}: grad_out must have the output shape {spec.out_shape}; got grad_out "
            f"{tuple(grad_out.shape)}"
        )
    limit = _workspace(workspace_limit, func)
    grad_out = grad_out.astype(float_dtype_of(grad_out), copy=False)
    x = x.astype(float_dtype_of(x), copy=False)
    work, out_dtype = compute_dtype(grad_out.dtype, x.dtype, kernel.dtype)
    if spec.n == 0:  # an empty batch: no gradient flows (the algorithm is still checked)
        algorithms.choose(spec, algorithm, func=func, itemsize=work.itemsize, workspace_limit=limit)
        return ConvGrads(
            np.zeros(x.shape, out_dtype) if need_grad_x else None,
            np.zeros(kernel.shape, out_dtype),
            np.zeros(spec.c_out, out_dtype) if use_bias else None,
        )
    kernel_w = kernel.astype(work, copy=False)
    cf = spec.data_format == "channels_first"
    per_out = spec.oh * spec.ow * spec.c_out * work.itemsize
    # grad_out's copy (cast or NHWC), x's, and grad_x before its cast, transpose or fold
    copied = per_out if (grad_out.dtype != work or cf) else 0
    keep_x = not need_grad_x or (out_dtype == work and not cf and spec.padding_mode == "zeros")
    # the padded input, and grad_x padded, then folded back one axis at a time
    folds = 4 if need_grad_x else 1
    copied += _copied_bytes(spec, work, x.dtype != work, cf, not keep_x, padded=folds)
    image = spec.h * spec.w * spec.c_in * work.itemsize
    result = image if keep_x and need_grad_x else 0
    # in pieces: the kernel's cast, a piece's kernel gradient and their sum
    fixed = (3 if kernel_w is not kernel else 2) * kernel_w.nbytes
    pieces, inner = _batch_pieces(spec, copied, result, fixed, limit)
    if len(pieces) == 1:
        go, grad_x, grad_kernel = _backward_nhwc(
            grad_out, x, kernel_w, spec, work, inner, algorithm, need_grad_x
        )
        grad_bias = _channel_sums(go).astype(out_dtype) if use_bias else None
        return ConvGrads(
            None if grad_x is None else _from_nhwc(grad_x, spec).astype(out_dtype, copy=False),
            grad_kernel.astype(out_dtype, copy=False),
            grad_bias,
        )
    # A piece of the batch at a time: grad_x written into place, the kernel's and the bias'
    # gradients summed over the pieces in the compute dtype.
    grad_x_all = np.empty(x.shape, out_dtype) if need_grad_x else None
    kernel_sum = np.zeros(kernel.shape, work)
    bias_sum = np.zeros(spec.c_out, work)
    for b0, b1 in pieces:
        piece = x[b0:b1]
        pspec = conv_spec(piece.shape, kernel.shape, None, func=func, **options)
        go, grad_x, grad_kernel = _backward_nhwc(
            grad_out[b0:b1], piece, kernel_w, pspec, work, inner, algorithm, need_grad_x
        )
        kernel_sum += grad_kernel
        if use_bias:
            bias_sum += _channel_sums(go)
        if grad_x_all is not None and grad_x is not None:
            grad_x_all[b0:b1] = grad_x.transpose(0, 3, 1, 2) if cf else grad_x
        del go, grad_x, grad_kernel  # before the next piece makes its own, and its buffers too
        algorithms.release_this_call()
    grad_bias = bias_sum.astype(out_dtype, copy=False) if use_bias else None
    return ConvGrads(grad_x_all, kernel_sum.astype(out_dtype, copy=False), grad_bias)


def _backward_nhwc(
    grad_out: np.ndarray,
    x: np.ndarray,
    kernel: np.ndarray,
    spec: ConvSpec,
    work: np.dtype,
    limit: int,
    algorithm: str,
    need_grad_x: bool,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """grad_out in NHWC and the compute dtype, grad_x (NHWC, the border folded back) and
    grad_kernel, both in the compute dtype."""
    go = np.ascontiguousarray(_to_nhwc(grad_out, spec), dtype=work)  # (n, oh, ow, c_out)
    x_nhwc = _to_nhwc(x, spec).astype(work, copy=False)
    run_spec = spec
    if spec.padding_mode != "zeros":
        x_nhwc, run_spec = _pad_input(x_nhwc, spec), spec.unpadded()
    grad_x, grad_kernel, _ = algorithms.backward(
        go,
        x_nhwc,
        kernel,
        run_spec,
        limit,
        algorithm=algorithm,
        func="conv2d_backward",
        need_grad_x=need_grad_x,
    )
    if grad_x is not None and spec.padding_mode != "zeros":
        grad_x = _fold_border(grad_x, spec)  # (n, h, w, c_in)
    return go, grad_x, grad_kernel


def conv_output_shape(
    x_shape: tuple[int, ...] | np.ndarray,
    kernel_shape: tuple[int, ...] | np.ndarray,
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
) -> tuple[int, int, int, int]:
    """The shape :func:`conv2d` would return, with the same checks, computing nothing.
    ``x_shape`` and ``kernel_shape`` may also be the arrays themselves.

    >>> conv_output_shape((1, 4, 4, 3), (3, 3, 3, 2))
    (1, 2, 2, 2)
    """
    func = "conv_output_shape"
    return conv_spec(
        shape_arg(x_shape, func=func, name="x_shape"),
        shape_arg(kernel_shape, func=func, name="kernel_shape"),
        None,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=groups,
        data_format=data_format,
        padding_mode=padding_mode,
        func=func,
    ).out_shape


def _patch_spec(
    x_shape: tuple[int, ...],
    kernel_size: int | tuple[int, int],
    func: str,
    **options: Any,
) -> ConvSpec:
    from patchconv._spec import normalize_pair

    kh, kw = normalize_pair(kernel_size, func=func, name="kernel_size")
    groups = options.get("groups", 1)
    data_format = options.get("data_format", "channels_last")
    c_in = x_shape[1] if str(data_format).lower() == "channels_first" else x_shape[-1]
    c_group = c_in // groups if isinstance(groups, int) and groups > 0 else c_in
    return conv_spec(
        tuple(x_shape),
        (kh, kw, max(c_group, 1), groups if isinstance(groups, int) else 1),
        None,
        func=func,
        **options,
    )


def im2col(
    x: Any,
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
) -> np.ndarray:
    """The patch matrix ``(n*oh*ow, kh*kw*c_in)`` that :func:`conv2d` multiplies.

    Row ``(b*oh + i)*ow + j`` is the patch under output pixel ``(b, i, j)``, flattened row-major
    over ``(kh, kw, c_in)``; with groups, group g's patch fills columns ``g*K/G : (g+1)*K/G``.
    Padding positions hold zeros.

    >>> x = np.arange(16.0).reshape(1, 4, 4, 1)
    >>> im2col(x, 3)[0].tolist()
    [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0]
    """
    func = "im2col"
    arr = as_float_array(x, func=func, name="x")
    if arr.ndim != 4:
        raise PatchconvError(f"{func}: x must be 4-D; got ndim {arr.ndim}, shape {arr.shape}")
    spec = _patch_spec(
        arr.shape,
        kernel_size,
        func,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=groups,
        data_format=data_format,
    )
    return _im2col(_to_nhwc(arr, spec), spec)


def col2im(
    cols: Any,
    x_shape: tuple[int, int, int, int],
    kernel_size: int | tuple[int, int],
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
) -> np.ndarray:
    """The adjoint of :func:`im2col`: every patch value summed back onto its input pixel.

    ``<im2col(x), c> == <x, col2im(c, x.shape, ...)>`` for all x and c (``x`` itself may
    stand for ``x.shape``).
    """
    func = "col2im"
    arr = as_float_array(cols, func=func, name="cols")
    spec = _patch_spec(
        shape_arg(x_shape, func=func, name="x_shape"),
        kernel_size,
        func,
        strides=strides,
        padding=padding,
        dilation_rate=dilation_rate,
        groups=groups,
        data_format=data_format,
    )
    expected = (spec.n * spec.oh * spec.ow, spec.patch_size)
    if arr.shape != expected:
        raise PatchconvError(f"{func}: cols must have shape {expected}; got cols {arr.shape}")
    return _from_nhwc(_col2im(arr, spec), spec)
