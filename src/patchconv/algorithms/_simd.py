"""Explicit SIMD vectors for numba kernels, and the kernels written with them.

A vector is one 64-byte register of float32 (16) or float64 (8).

numba's loop vectoriser only sees innermost loops and keeps nothing in registers across an outer
loop, so a kernel that should hold several accumulators while it walks the kernel taps (the
depthwise forward) either streams its output through memory once per tap or stays scalar.
These intrinsics give numba code an LLVM vector value: ``vload``/``vstore`` read and write
``lanes(dtype)`` consecutive elements of a 1-D array at an element index, ``vfma`` is
``a * b + c``, ``vadd`` a sum and ``vzero`` zeros. An accumulator is then a plain local
variable that LLVM keeps in a register. On a CPU without 512-bit registers LLVM splits each
vector into the widest ones it has, so the kernels stay portable.

Imports numba at module level: import this module only after
:func:`patchconv.algorithms._runtime.get_numba` returned numba. The kernels live here, at module
level, because numba's disk cache keys a function on its closure variables, and intrinsics do
not pickle the same way twice (a kernel defined in a function was recompiled by every process).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, models, register_model

__all__ = ["VECTOR_BYTES", "depthwise_rows", "lanes", "vadd", "vfma", "vload", "vstore", "vzero"]

VECTOR_BYTES = 64


def lanes(dtype: np.dtype | type) -> int:
    """Elements of ``dtype`` in one vector."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


class Vector(types.Type):
    """numba type of a ``lanes``-wide vector of ``dtype`` (float32 or float64)."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype
        self.count = VECTOR_BYTES // (dtype.bitwidth // 8)
        super().__init__(name=f"Vector({dtype}x{self.count})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm: Any, fe_type: Vector) -> None:
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.count))


def _vector_pointer(context: Any, builder: Any, arrtype: Any, arr: Any, index: Any) -> Any:
    data = context.make_array(arrtype)(context, builder, arr).data
    element = context.get_value_type(arrtype.dtype)
    vector = ir.VectorType(element, VECTOR_BYTES // (arrtype.dtype.bitwidth // 8))
    return builder.bitcast(builder.gep(data, [index]), ir.PointerType(vector))


@intrinsic
def vload(typingctx: Any, arr: Any, index: Any) -> Any:
    """``arr[index : index + lanes]`` as a vector (no bounds check; any alignment)."""
    sig = Vector(arr.dtype)(arr, index)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _vector_pointer(context, builder, arr, args[0], args[1])
        return builder.load(ptr, align=arr.dtype.bitwidth // 8)

    return sig, codegen


@intrinsic
def vstore(typingctx: Any, arr: Any, index: Any, value: Any) -> Any:
    """``arr[index : index + lanes] = value`` (no bounds check; any alignment)."""
    sig = types.void(arr, index, value)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _vector_pointer(context, builder, arr, args[0], args[1])
        builder.store(args[2], ptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def vfma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """``a * b + c``, fused into one multiply-add where the CPU has it."""
    sig = a(a, b, c)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        product = builder.fmul(args[0], args[1], flags=("contract",))
        return builder.fadd(product, args[2], flags=("contract",))

    return sig, codegen


@intrinsic
def vadd(typingctx: Any, a: Any, b: Any) -> Any:
    """``a + b``."""
    sig = a(a, b)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fadd(args[0], args[1])

    return sig, codegen


@intrinsic
def vzero(typingctx: Any, arr: Any) -> Any:
    """A vector of zeros of ``arr``'s dtype (``arr`` only names the dtype)."""
    sig = Vector(arr.dtype)(arr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        element = context.get_value_type(arr.dtype)
        count = VECTOR_BYTES // (arr.dtype.bitwidth // 8)
        return ir.Constant(ir.VectorType(element, count), None)

    return sig, codegen


@numba.njit(nogil=True, cache=True, boundscheck=False)
def depthwise_rows(x, k, bias, out, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
    # x (n, h, w, c); k (kh*kw*c,), bias (c,) and out (n, oh, ow, c) 64-byte aligned;
    # rows lo:hi of the flattened (n*oh) output. Each input row a tap needs is first copied
    # into an aligned ring of zero-padded rows (so no tap ever falls outside a row and every
    # load is aligned when c is a multiple of the lanes), then each output row is done in
    # blocks of 8 columns x one vector of channels: 8 accumulators stay in registers while
    # the taps go by, and the output is written once. The last block of a row and the last
    # channel vector overlap the previous ones rather than run short (they recompute a few
    # values instead of needing a scalar tail).
    _, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    lanes = VECTOR_BYTES // x.itemsize
    wp = (ow - 1) * sw + (kw - 1) * dw + 1  # padded columns the taps reach
    rowlen = (wp * c + lanes - 1) // lanes * lanes
    nslots = kh * dh  # the kh rows of one output row are distinct modulo kh*dh
    raw = np.zeros(nslots * rowlen + lanes, x.dtype)
    a0 = ((-raw.ctypes.data) % VECTOR_BYTES) // x.itemsize
    ring = raw[a0 : a0 + nslots * rowlen]
    held = np.full(nslots, -1, np.int64)  # which (image, row) each slot holds
    ncopy = max(0, min(w, wp - pl)) * c  # input values per row inside the padded span
    xf = x.reshape(-1)
    of = out.reshape(-1)
    offs = np.empty(kh * kw, np.int64)
    kofs = np.empty(kh * kw, np.int64)
    step = sw * c
    for r in range(lo, hi):
        b = r // oh
        i = r - b * oh
        nt = 0
        for di in range(kh):
            y = i * sh - pt + di * dh
            if y < 0 or y >= h:
                continue
            slot = y % nslots
            if held[slot] != b * h + y:
                held[slot] = b * h + y
                src = (b * h + y) * w * c
                dst = slot * rowlen + pl * c
                # A vector copy (numba's slice assignment runs at a third of this); the
                # last vector overlaps the one before (ncopy >= c >= lanes).
                for q in range(0, ncopy - lanes, lanes):
                    vstore(ring, dst + q, vload(xf, src + q))
                if ncopy > 0:
                    vstore(ring, dst + ncopy - lanes, vload(xf, src + ncopy - lanes))
            for dj in range(kw):
                offs[nt] = slot * rowlen + dj * dw * c
                kofs[nt] = (di * kw + dj) * c
                nt += 1
        obase = r * ow * c
        for c0 in range(0, c, lanes):
            cb = min(c0, c - lanes)
            bv = vload(bias, cb)
            if ow >= 8:
                for blk in range((ow + 7) // 8):
                    j = min(blk * 8, ow - 8)
                    v0 = bv
                    v1 = bv
                    v2 = bv
                    v3 = bv
                    v4 = bv
                    v5 = bv
                    v6 = bv
                    v7 = bv
                    xb = j * step + cb
                    for t in range(nt):
                        wv = vload(k, kofs[t] + cb)
                        p = offs[t] + xb
                        v0 = vfma(vload(ring, p), wv, v0)
                        v1 = vfma(vload(ring, p + step), wv, v1)
                        v2 = vfma(vload(ring, p + 2 * step), wv, v2)
                        v3 = vfma(vload(ring, p + 3 * step), wv, v3)
                        v4 = vfma(vload(ring, p + 4 * step), wv, v4)
                        v5 = vfma(vload(ring, p + 5 * step), wv, v5)
                        v6 = vfma(vload(ring, p + 6 * step), wv, v6)
                        v7 = vfma(vload(ring, p + 7 * step), wv, v7)
                    o = obase + j * c + cb
                    vstore(of, o, v0)
                    vstore(of, o + c, v1)
                    vstore(of, o + 2 * c, v2)
                    vstore(of, o + 3 * c, v3)
                    vstore(of, o + 4 * c, v4)
                    vstore(of, o + 5 * c, v5)
                    vstore(of, o + 6 * c, v6)
                    vstore(of, o + 7 * c, v7)
            else:
                # Narrow rows: one column at a time, the taps split over two accumulators
                # so consecutive multiply-adds do not wait on each other.
                for j in range(ow):
                    v0 = bv
                    v1 = vzero(of)
                    xb = j * step + cb
                    for t in range(0, nt - 1, 2):
                        v0 = vfma(vload(ring, offs[t] + xb), vload(k, kofs[t] + cb), v0)
                        v1 = vfma(vload(ring, offs[t + 1] + xb), vload(k, kofs[t + 1] + cb), v1)
                    if nt % 2 == 1:
                        t = nt - 1
                        v0 = vfma(vload(ring, offs[t] + xb), vload(k, kofs[t] + cb), v0)
                    vstore(of, obase + j * c + cb, vadd(v0, v1))
