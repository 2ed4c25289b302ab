"""1x1 kernels: the input itself is the patch matrix.

A 1x1 patch is one pixel's channels, so at stride 1 without padding the whole layer is
``x.reshape(n*h*w, c_in) @ kernel.reshape(c_in, c_out)`` with no copy at all. With few input
channels gemm's implicit kernel (:func:`~patchconv.algorithms.gemm.forward_implicit`) does the
same product faster than BLAS does at such a short inner dimension (measured: 64 -> 256
channels on 56x56, 0.68 against 0.83 ms at N=1 and 3.2 against 4.4 ms at N=8; 256 -> 64, 3.2
against 3.7 ms; 256 -> 512 at stride 2, a tie). A stride picks
every s-th pixel (one strided copy, tiled under the workspace limit); padding only adds output
positions that see zeros, which get the bias alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from patchconv._patches import iter_tiles, valid_range
from patchconv._spec import ConvSpec
from patchconv.algorithms._runtime import (
    blas_pinned,
    matmul,
    parallel_for,
    product_temp_bytes,
    scratch,
)
from patchconv.algorithms.gemm import forward_implicit, implicit_applies, kernel_matrices

__all__ = ["applies", "backward", "forward"]


def applies(spec: ConvSpec) -> str | None:
    """None if pointwise handles ``spec``, else the reason it does not."""
    if (spec.kh, spec.kw) != (1, 1):
        return f"pointwise needs a 1x1 kernel; got {spec.kh}x{spec.kw}"
    return None


def _interior(spec: ConvSpec) -> tuple[int, int, int, int, int, int]:
    """Output rows lo:hi and columns lo:hi that see input pixels, and the first input row/col."""
    (pt, _), (pl, _) = spec.pads
    rl, rh, ih = valid_range(0, spec.oh, 0, spec.strides[0], pt, spec.h)
    cl, ch, iw = valid_range(0, spec.ow, 0, spec.strides[1], pl, spec.w)
    return rl, max(rl, rh), cl, max(cl, ch), ih, iw


def _product(
    a: np.ndarray, mats: np.ndarray, spec: ConvSpec, out: np.ndarray, *, split: bool = True
) -> None:
    """``out (P, c_out) = a (P, c_in) @ kernel``, all groups in one batched product; with
    ``split`` a single-group product is spread over the cores."""
    if spec.groups == 1:
        if split:
            matmul(a, mats[0], out)
        else:
            np.matmul(a, mats[0], out=out)
        return
    p, g = a.shape[0], spec.groups
    np.matmul(
        a.reshape(p, g, spec.c_in_group).transpose(1, 0, 2),
        mats,
        out=out.reshape(p, g, spec.c_out_group).transpose(1, 0, 2),
    )  # (G, P, c_in/G) @ (G, c_in/G, c_out/G)


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """NHWC ``x``, 1x1 HWIO ``kernel`` -> NHWC output."""
    if implicit_applies(spec, x.dtype.itemsize):
        return forward_implicit(x, kernel, bias, spec)
    mats = kernel_matrices(kernel, spec)  # (G, c_in/G, c_out/G)
    rl, rh, cl, ch, ih, iw = _interior(spec)
    sh, sw = spec.strides
    full = (rl, rh, cl, ch) == (0, spec.oh, 0, spec.ow)
    if full and (sh, sw) == (1, 1) and x.flags.c_contiguous:
        out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype=x.dtype)
        pixels = x.reshape(-1, spec.c_in)  # (P, c_in)
        flat_out = out.reshape(-1, spec.c_out)  # (P, c_out)

        def row_block(lo: int, hi: int) -> None:
            _product(pixels[lo:hi], mats, spec, flat_out[lo:hi], split=False)
            if bias is not None:
                flat_out[lo:hi] += bias

        if blas_pinned():
            parallel_for(row_block, pixels.shape[0], min_items=256)
        else:
            row_block(0, pixels.shape[0])
        return out
    if full:
        out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype=x.dtype)
    else:
        out = np.zeros((spec.n, spec.oh, spec.ow, spec.c_out), dtype=x.dtype)
    if rh > rl and ch > cl:
        rows, cols = rh - rl, ch - cl
        picked = x[:, ih : ih + (rows - 1) * sh + 1 : sh, iw : iw + (cols - 1) * sw + 1 : sw]
        inner = replace_hw(spec, rows, cols)
        tiles = list(iter_tiles(inner, spec.c_in * x.dtype.itemsize, workspace_limit))
        largest = max(t.positions for t in tiles)
        flat = scratch("pointwise.pixels", largest * spec.c_in, x.dtype, limit=workspace_limit)
        res = None if full else np.empty((largest, spec.c_out), dtype=x.dtype)
        for t in tiles:
            a = flat[: t.positions * spec.c_in].reshape(*t.shape, spec.c_in)
            a[...] = picked[t.n0 : t.n1, t.r0 : t.r1, t.c0 : t.c1]
            a2 = a.reshape(t.positions, spec.c_in)  # (P, c_in)
            if full:
                block = out[t.n0 : t.n1, t.r0 : t.r1, t.c0 : t.c1].reshape(t.positions, -1)
                _product(a2, mats, spec, block)
            else:
                assert res is not None
                _product(a2, mats, spec, res[: t.positions])
                out[t.n0 : t.n1, rl + t.r0 : rl + t.r1, cl + t.c0 : cl + t.c1] = res[
                    : t.positions
                ].reshape(*t.shape, spec.c_out)
    if bias is not None:
        out += bias
    return out


def replace_hw(spec: ConvSpec, oh: int, ow: int) -> ConvSpec:
    """The spec of the interior block alone: an oh x ow output, unpadded."""
    from dataclasses import replace

    return replace(spec, h=oh, w=ow, oh=oh, ow=ow, pads=((0, 0), (0, 0)), strides=(1, 1))


def backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    kernel: np.ndarray,
    spec: ConvSpec,
    workspace_limit: int,
    *,
    need_x: bool = True,
    need_kernel: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``grad_kernel = pixels^T @ grad_out``, ``grad_x[picked] = grad_out @ kernel^T``.

    The picked pixels go a tile of output positions at a time within half the workspace
    limit (their copies and the product for grad_x; a strided layer copied all of them at
    once). At stride 1 every pixel is picked, and grad_x's product is written in place."""
    mats = kernel_matrices(kernel, spec)  # (G, c_in/G, c_out/G)
    rl, rh, cl, ch, ih, iw = _interior(spec)
    sh, sw = spec.strides
    g, cg, cog = spec.groups, spec.c_in_group, spec.c_out_group
    grad_x = np.zeros((spec.n, spec.h, spec.w, spec.c_in), dtype=x.dtype) if need_x else None
    grad_mats = np.zeros_like(mats) if need_kernel else None
    if rh > rl and ch > cl:
        inner = replace(spec, oh=rh - rl, ow=ch - cl)  # the outputs that see input pixels
        per_position = 2 * (spec.c_in + spec.c_out) * x.dtype.itemsize
        temp = product_temp_bytes(workspace_limit)
        for i, t in enumerate(iter_tiles(inner, per_position, max(1, workspace_limit // 2))):
            p = t.positions
            pick = (
                slice(t.n0, t.n1),
                slice(ih + t.r0 * sh, ih + (t.r1 - 1) * sh + 1, sh),
                slice(iw + t.c0 * sw, iw + (t.c1 - 1) * sw + 1, sw),
            )
            block = grad_out[t.n0 : t.n1, rl + t.r0 : rl + t.r1, cl + t.c0 : cl + t.c1]
            go = np.ascontiguousarray(block).reshape(p, spec.c_out)  # (P, c_out)
            if grad_mats is not None:
                a = np.ascontiguousarray(x[pick]).reshape(p, spec.c_in)  # (P, c_in)
                if g == 1:
                    matmul(a.T, go, grad_mats[0], accumulate=i > 0, temp_bytes=temp)
                else:
                    product = np.matmul(
                        a.reshape(p, g, cg).transpose(1, 2, 0),
                        go.reshape(p, g, cog).transpose(1, 0, 2),
                    )  # (G, cg, P) @ (G, P, cog)
                    if i > 0:
                        grad_mats += product
                    else:
                        grad_mats[...] = product
                    del product
            if grad_x is None:
                continue
            target = grad_x[pick]
            if g == 1 and target.flags.c_contiguous:
                # Every input pixel picked (stride 1): the product goes straight into grad_x.
                matmul(go, mats[0].T, target.reshape(p, spec.c_in))
                continue
            if g == 1:
                back = np.empty((p, spec.c_in), dtype=np.result_type(go, mats))
                matmul(go, mats[0].T, back)  # (P, c_in)
            else:
                back = np.matmul(
                    go.reshape(p, g, cog).transpose(1, 0, 2), mats.transpose(0, 2, 1)
                ).transpose(1, 0, 2)  # (P, G, cg)
            target[...] = back.reshape(target.shape)
    grad_kernel = None
    if grad_mats is not None:
        grad_kernel = grad_mats.transpose(1, 0, 2).reshape(1, 1, cg, spec.c_out)
    return grad_x, grad_kernel
