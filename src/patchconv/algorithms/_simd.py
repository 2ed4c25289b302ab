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

import os
import threading
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from patchconv.algorithms._runtime import (
    APART_CHANNELS,
    VECTOR_BYTES,
    in_pool_thread,
    parallel_for,
    piece_plan,
    scratch,
)

__all__ = [
    "VECTOR_BYTES",
    "batched_matmul",
    "conv_rows",
    "conv_rows_narrow",
    "conv_rows_narrow_pairs",
    "depthwise_rows",
    "direct_grad_kernel",
    "direct_rows",
    "lanes",
    "native_ready",
    "parallel",
    "sload",
    "vadd",
    "vfma",
    "vfmas",
    "vload",
    "vmuls",
    "vstore",
    "vsub",
    "vzero",
    "vzero_like",
    "winograd_grad_output",
    "winograd_input",
    "winograd_kernel",
    "winograd_kernel_panels",
    "winograd_output",
]


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


@intrinsic
def vzero_like(typingctx: Any, a: Any) -> Any:
    """A vector of zeros of ``a``'s type."""
    sig = a(a)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return ir.Constant(args[0].type, None)

    return sig, codegen


@intrinsic
def sload(typingctx: Any, arr: Any, index: Any) -> Any:
    """``arr[index]`` without the negative-index wraparound numba adds to indexing."""
    sig = arr.dtype(arr, index)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(arr)(context, builder, args[0]).data
        return builder.load(builder.gep(data, [args[1]]))

    return sig, codegen


@intrinsic
def vsub(typingctx: Any, a: Any, b: Any) -> Any:
    """``a - b``."""
    sig = a(a, b)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fsub(args[0], args[1])

    return sig, codegen


def _splat(context: Any, builder: Any, vectype: Any, value: Any, valtype: Any) -> Any:
    scalar = context.cast(builder, value, valtype, vectype.dtype)
    element = context.get_value_type(vectype.dtype)
    vec = ir.Constant(ir.VectorType(element, vectype.count), ir.Undefined)
    vec = builder.insert_element(vec, scalar, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vectype.count), None)
    return builder.shuffle_vector(vec, vec, mask)


@intrinsic
def vmuls(typingctx: Any, a: Any, s: Any) -> Any:
    """``a * s`` for a scalar ``s``."""
    sig = a(a, s)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fmul(args[0], _splat(context, builder, a, args[1], s))

    return sig, codegen


@intrinsic
def vfmas(typingctx: Any, a: Any, s: Any, c: Any) -> Any:
    """``a * s + c`` for a scalar ``s``, fused where the CPU can."""
    sig = a(a, s, c)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        scalar = _splat(context, builder, a, args[1], s)
        product = builder.fmul(args[0], scalar, flags=("contract",))
        return builder.fadd(product, args[2], flags=("contract",))

    return sig, codegen


def _ints(values: Any) -> Any:
    """A constant vector of 32-bit ints (a shuffle mask, lane numbers)."""
    values = list(values)
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), values)


def _zip_halves(builder: Any, args: Any, lo: list[int]) -> Any:
    """The shuffle ``lo`` of args[0] and args[1] for half 0, the same lanes moved up half a
    vector for half 1 (args[2])."""
    n = len(lo)
    first = builder.shuffle_vector(args[0], args[1], _ints(lo))
    second = builder.shuffle_vector(args[0], args[1], _ints(v + n // 2 for v in lo))
    pick = builder.icmp_signed("==", args[2], ir.Constant(args[2].type, 0))
    return builder.select(pick, first, second)


@intrinsic
def vzip(typingctx: Any, a: Any, b: Any, half: Any) -> Any:
    """Interleave ``a`` and ``b`` lane by lane: the low halves for ``half`` 0
    (``a0 b0 a1 b1 ...``), the high halves for 1 (a constant where it is called)."""
    n = a.count
    lo = [i // 2 + (n if i % 2 else 0) for i in range(n)]
    return a(a, b, half), lambda context, builder, sig, args: _zip_halves(builder, args, lo)


@intrinsic
def vzip2(typingctx: Any, a: Any, b: Any, half: Any) -> Any:
    """:func:`vzip` on pairs of lanes: ``a0 a1 b0 b1 a2 a3 b2 b3 ...``."""
    n = a.count
    lo = [(i // 4) * 2 + i % 2 + (n if i % 4 >= 2 else 0) for i in range(n)]
    return a(a, b, half), lambda context, builder, sig, args: _zip_halves(builder, args, lo)


@intrinsic
def vdeint3(typingctx: Any, a: Any, b: Any, c: Any, k: Any) -> Any:
    """Lanes ``k, k+3, k+6, ...`` of ``a``, ``b``, ``c`` laid end to end: channel ``k`` (a
    constant, 0-2) of the pixels of three vectors of RGB values."""
    sig = a(a, b, c, k)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        n = a.count
        picks = []
        for ch in range(3):
            src = [3 * i + ch for i in range(n)]
            # from a and b (indices < 2n), then the rest from c (lanes n.. of the 2nd shuffle)
            ab = builder.shuffle_vector(args[0], args[1], _ints(v if v < 2 * n else 0 for v in src))
            picks.append(
                builder.shuffle_vector(
                    ab, args[2], _ints(i if v < 2 * n else n + v - 2 * n for i, v in enumerate(src))
                )
            )
        first = builder.icmp_signed("==", args[3], ir.Constant(args[3].type, 0))
        second = builder.icmp_signed("==", args[3], ir.Constant(args[3].type, 1))
        return builder.select(first, picks[0], builder.select(second, picks[1], picks[2]))

    return sig, codegen


@intrinsic
def vstore_quad(typingctx: Any, arr: Any, index: Any, value: Any, quad: Any, count: Any) -> Any:
    """``arr[index : index + count] = value[4*quad : 4*quad + count]``, count <= 4: one masked
    store of 4 lanes."""
    sig = types.void(arr, index, value, quad, count)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        element = context.get_value_type(arr.dtype)
        quad4 = ir.VectorType(element, 4)
        i32 = ir.IntType(32)
        base = builder.mul(builder.trunc(args[3], i32), ir.Constant(i32, 4))
        part = ir.Constant(quad4, ir.Undefined)
        for i in range(4):
            lane = builder.extract_element(args[2], builder.add(base, ir.Constant(i32, i)))
            part = builder.insert_element(part, lane, ir.Constant(i32, i))
        count = builder.trunc(args[4], i32)
        lanes = _ints(range(4))
        limit = builder.insert_element(
            ir.Constant(ir.VectorType(i32, 4), ir.Undefined), count, ir.Constant(i32, 0)
        )
        limit = builder.shuffle_vector(limit, limit, ir.Constant(ir.VectorType(i32, 4), None))
        mask = builder.icmp_signed("<", lanes, limit)
        data = context.make_array(arr)(context, builder, args[0]).data
        ptr = builder.gep(data, [args[1]])
        fnty = ir.FunctionType(ir.VoidType(), [quad4, ptr.type, i32, mask.type])
        kind = "f32" if arr.dtype.bitwidth == 32 else "f64"
        # The pointer's part of the name: "p0" for LLVM's opaque pointers, "p0f32" before them.
        where = "p0" if getattr(ptr.type, "is_opaque", False) else f"p0{kind}"
        name = f"llvm.masked.store.v4{kind}.{where}"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        align = ir.Constant(i32, arr.dtype.bitwidth // 8)
        builder.call(fn, [part, ptr, align, mask])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _planes(x, b, yy0, rows, pl, plane, pitch, wp):  # type: ignore[no-untyped-def]
    # Input rows yy0 : yy0+rows of image b (rows past the image read as zeros) into planes of
    # ``pitch`` values per channel, rows of wp: pl zero columns on the left, zeros after the
    # image's last column, and zeros from the last row to the plane's end.
    _, h, w, ci = x.shape
    lanes = VECTOR_BYTES // x.itemsize
    xf = x.reshape(-1)
    cols = min(w, wp - pl)
    for c in range(ci):
        for t in range(c * pitch + rows * wp, (c + 1) * pitch):
            plane[t] = 0.0
    for r in range(rows):
        yy = yy0 + r
        inside = 0 <= yy < h
        for c in range(ci):
            base = c * pitch + r * wp
            for t in range(pl if inside else wp):
                plane[base + t] = 0.0
            for t in range(pl + cols if inside else wp, wp):
                plane[base + t] = 0.0
        if not inside:
            continue
        row = (b * h + yy) * w * ci
        done = 0
        if ci == 1:
            for t in range(cols):
                plane[r * wp + pl + t] = xf[row + t]
            continue
        if ci == 3:  # RGB: three vectors of pixels -> one vector per channel
            while done + lanes <= cols:
                at = row + 3 * done
                v0 = vload(xf, at)
                v1 = vload(xf, at + lanes)
                v2 = vload(xf, at + 2 * lanes)
                for k in numba.literal_unroll((0, 1, 2)):
                    vstore(plane, k * pitch + r * wp + pl + done, vdeint3(v0, v1, v2, k))
                done += lanes
        if lanes == 16 and ci % 16 == 0:  # 16 pixels x 16 channels, transposed in registers
            while done + lanes <= cols:
                for c0 in range(0, ci, 16):
                    at = row + done * ci + c0
                    t = _transpose16(
                        (vload(xf, at), vload(xf, at + ci), vload(xf, at + 2 * ci),
                         vload(xf, at + 3 * ci), vload(xf, at + 4 * ci), vload(xf, at + 5 * ci),
                         vload(xf, at + 6 * ci), vload(xf, at + 7 * ci), vload(xf, at + 8 * ci),
                         vload(xf, at + 9 * ci), vload(xf, at + 10 * ci),
                         vload(xf, at + 11 * ci), vload(xf, at + 12 * ci),
                         vload(xf, at + 13 * ci), vload(xf, at + 14 * ci),
                         vload(xf, at + 15 * ci))
                    )  # fmt: skip
                    base = c0 * pitch + r * wp + pl + done
                    for k in numba.literal_unroll(_SIXTEEN):
                        vstore(plane, base + k * pitch, t[k])
                done += lanes
        for c in range(ci):
            base = c * pitch + r * wp + pl
            for t in range(done, cols):
                plane[base + t] = xf[row + t * ci + c]


_SIXTEEN = tuple(range(16))


@numba.njit(inline="always")
def _zip_rows(v):  # type: ignore[no-untyped-def]
    # One perfect shuffle of 16 vectors: rows r and r + 8 interleaved, low then high halves.
    return (
        vzip(v[0], v[8], 0), vzip(v[0], v[8], 1), vzip(v[1], v[9], 0), vzip(v[1], v[9], 1),
        vzip(v[2], v[10], 0), vzip(v[2], v[10], 1), vzip(v[3], v[11], 0), vzip(v[3], v[11], 1),
        vzip(v[4], v[12], 0), vzip(v[4], v[12], 1), vzip(v[5], v[13], 0), vzip(v[5], v[13], 1),
        vzip(v[6], v[14], 0), vzip(v[6], v[14], 1), vzip(v[7], v[15], 0), vzip(v[7], v[15], 1),
    )  # fmt: skip


@numba.njit(inline="always")
def _transpose16(v):  # type: ignore[no-untyped-def]
    # 16 vectors of 16 lanes, transposed: each perfect shuffle moves one bit of the row index
    # into the lane index and one back, so four of them swap the two.
    return _zip_rows(_zip_rows(_zip_rows(_zip_rows(v))))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def direct_rows(x, wt, biasv, out, kh, kw, dh, dw, pt, pl, per, work, lo, hi):  # type: ignore[no-untyped-def]
    # A dense convolution with few channels, stride 1: bands lo:hi (over n images x ``per``
    # bands of rows each). Vectors run along the image, not the channels: each band's input
    # rows go into ``work`` as zero-padded planes, one per input channel, rows wp = ow + (kw-1)*dw
    # long laid end to end. Output pixel (y, x) of the band is then position q = y*wp + x of a
    # flat row, and tap (i, j) reads plane position q + i*dh*wp + j*dw, so blocks of 4 vectors
    # of q run across row ends (the x >= ow they compute are dropped) and any width works.
    # Each block sums all c_in*kh*kw taps in registers, for 4 output channels at a time (16
    # accumulators; a last group of 3 computes a zero 4th), interleaved to NHWC by shuffles,
    # or 1 (4). wt (c_in*kh*kw, c_out rounded up to 4) holds the weights by tap (c, i, j);
    # biasv the bias, each value repeated over a vector. Needs each band's rows * wp >= 4 lanes.
    _, oh, ow, co = out.shape
    ci = x.shape[3]
    lanes = VECTOR_BYTES // x.itemsize
    span = 4 * lanes
    wp = ow + (kw - 1) * dw
    rmax = -(-oh // per) + (kh - 1) * dh
    pitch = rmax * wp + (kw - 1) * dw  # a band's last block reads past its last row
    co4 = wt.shape[1]
    wf = wt.reshape(-1)
    of = out.reshape(-1)
    plane = work[: ci * pitch]
    stage = work[ci * pitch : ci * pitch + span]
    offs = np.empty(span, np.int64)
    for bi in range(lo, hi):
        b = bi // per
        y0, y1 = _piece(oh, per, bi - b * per)
        _planes(x, b, y0 - pt, y1 - y0 + (kh - 1) * dh, pl, plane, pitch, wp)
        total = (y1 - y0) * wp
        for q0_ in range(0, total, span):
            q0 = min(q0_, total - span)
            yq = q0 // wp  # the block's first pixel: row yq of the band, column xq
            xq = q0 - yq * wp
            whole = xq + span <= ow
            if not whole:  # where each pixel of the block goes, -1 for the dropped columns
                y = yq
                xx = xq
                for px in range(span):
                    offs[px] = ((b * oh + y0 + y) * ow + xx) * co if xx < ow else -1
                    xx += 1
                    if xx == wp:
                        xx = 0
                        y += 1
            o0 = 0
            while o0 < co:
                left = co - o0
                if left >= 3:  # 4 channels
                    b0 = vload(biasv, o0 * lanes)
                    b1 = vload(biasv, (o0 + 1) * lanes)
                    b2 = vload(biasv, (o0 + 2) * lanes)
                    b3 = vload(biasv, (o0 + 3) * lanes)
                    acc = (b0, b0, b0, b0, b1, b1, b1, b1, b2, b2, b2, b2, b3, b3, b3, b3)
                    t = o0
                    for c in range(ci):
                        for i in range(kh):
                            p = c * pitch + q0 + i * dh * wp
                            for _ in range(kw):
                                acc = _fma_4x4(
                                    vload(plane, p),
                                    vload(plane, p + lanes),
                                    vload(plane, p + 2 * lanes),
                                    vload(plane, p + 3 * lanes),
                                    sload(wf, t),
                                    sload(wf, t + 1),
                                    sload(wf, t + 2),
                                    sload(wf, t + 3),
                                    acc,
                                )
                                p += dw
                                t += co4
                    count = min(4, left)
                    # Pixel-major at last: 4 channels x a vector of pixels -> vectors of 4
                    # pixels x 4 channels, then stored 4 channels a pixel (or 4 pixels at once).
                    for v in numba.literal_unroll((0, 1, 2, 3)):
                        t0 = vzip(acc[v], acc[4 + v], 0)
                        t1 = vzip(acc[v], acc[4 + v], 1)
                        t2 = vzip(acc[8 + v], acc[12 + v], 0)
                        t3 = vzip(acc[8 + v], acc[12 + v], 1)
                        quads = (vzip2(t0, t2, 0), vzip2(t0, t2, 1), vzip2(t1, t3, 0),
                                 vzip2(t1, t3, 1))  # fmt: skip
                        for g in numba.literal_unroll((0, 1, 2, 3)):
                            if whole:  # the block lies in one row: no pixel dropped
                                at = ((b * oh + y0 + yq) * ow + xq + v * lanes) * co + o0
                                at += g * (lanes // 4) * co
                                if co == 4:
                                    vstore(of, at, quads[g])
                                else:
                                    for qd in numba.literal_unroll((0, 1, 2, 3)):
                                        if qd < lanes // 4:
                                            vstore_quad(of, at + qd * co, quads[g], qd, count)
                            else:  # unrolled: each quad's lanes are then constants
                                for qd in numba.literal_unroll((0, 1, 2, 3)):
                                    if qd < lanes // 4:
                                        at = offs[v * lanes + g * (lanes // 4) + qd]
                                        if at >= 0:
                                            vstore_quad(of, at + o0, quads[g], qd, count)
                    o0 += 4
                else:  # 1 channel
                    s0 = vload(biasv, o0 * lanes)
                    s1 = s0
                    s2 = s0
                    s3 = s0
                    t = o0
                    for c in range(ci):
                        for i in range(kh):
                            p = c * pitch + q0 + i * dh * wp
                            for _ in range(kw):
                                wv = sload(wf, t)
                                s0 = vfmas(vload(plane, p), wv, s0)
                                s1 = vfmas(vload(plane, p + lanes), wv, s1)
                                s2 = vfmas(vload(plane, p + 2 * lanes), wv, s2)
                                s3 = vfmas(vload(plane, p + 3 * lanes), wv, s3)
                                p += dw
                                t += co4
                    vstore(stage, 0, s0)
                    vstore(stage, lanes, s1)
                    vstore(stage, 2 * lanes, s2)
                    vstore(stage, 3 * lanes, s3)
                    if whole and co == 1:  # the output row is the block: stored as it is
                        at = (b * oh + y0 + yq) * ow + xq
                        vstore(of, at, s0)
                        vstore(of, at + lanes, s1)
                        vstore(of, at + 2 * lanes, s2)
                        vstore(of, at + 3 * lanes, s3)
                    elif whole:
                        at = ((b * oh + y0 + yq) * ow + xq) * co + o0
                        for px in range(span):
                            of[at + px * co] = stage[px]
                    else:
                        for px in range(span):
                            at = offs[px]
                            if at >= 0:
                                of[at + o0] = stage[px]
                    o0 += 1


@numba.njit(inline="always")
def _item_of(i, n, items):  # type: ignore[no-untyped-def]
    # The piece of range(n) cut in ``items`` (as _piece cuts it) that holds i.
    q, r = divmod(n, items)
    big = r * (q + 1)  # the first r pieces are one longer
    return i // (q + 1) if i < big else r + (i - big) // q


@numba.njit(inline="always")
def _outer_4x4(x0, x1, x2, x3, g0, g1, g2, g3, a):  # type: ignore[no-untyped-def]
    # a[4*k + v] += x_k * g_v, lane by lane: 4 taps' input vectors times 4 channels' gradients.
    return (
        vfma(x0, g0, a[0]), vfma(x0, g1, a[1]), vfma(x0, g2, a[2]), vfma(x0, g3, a[3]),
        vfma(x1, g0, a[4]), vfma(x1, g1, a[5]), vfma(x1, g2, a[6]), vfma(x1, g3, a[7]),
        vfma(x2, g0, a[8]), vfma(x2, g1, a[9]), vfma(x2, g2, a[10]), vfma(x2, g3, a[11]),
        vfma(x3, g0, a[12]), vfma(x3, g1, a[13]), vfma(x3, g2, a[14]), vfma(x3, g3, a[15]),
    )  # fmt: skip


@numba.njit(nogil=True, cache=True, boundscheck=False)
def direct_grad_kernel(x, g, kh, kw, dh, dw, pt, pl, per, parts, work, lo, hi):  # type: ignore[no-untyped-def]
    # direct_rows' weight gradient: dk[(c, i, j), o] = sum over output pixels q of the input
    # plane c at q + i*dh*wp + j*dw times grad_out's plane o at q, for bands lo:hi. Both go
    # into planes as in direct_rows (grad_out's with zeros in the wp - ow columns it lacks, so
    # those positions add nothing); blocks of 4 taps x 4 output channels keep 16 vector sums
    # over the band's positions. Work items lo:hi each take a fixed run of the n*per bands, in
    # order, and add into their own row of vector sums, parts (items, taps4 * co4 * lanes),
    # zeroed (taps4 = taps rounded up to 4, the padding taps repeat the last), whose rows and
    # lanes the caller adds up: the same sums in the same order whichever thread ran them.
    _, oh, ow, co = g.shape
    ci = x.shape[3]
    lanes = VECTOR_BYTES // x.itemsize
    wp = ow + (kw - 1) * dw
    rows_max = -(-oh // per)
    rmax = rows_max + (kh - 1) * dh
    pitch = rmax * wp + (kw - 1) * dw + lanes  # a vector past the last position is read
    gpitch = rows_max * wp + lanes
    taps = ci * kh * kw
    co4 = -(-co // 4) * 4
    items = parts.shape[0]
    at = 0
    plane = work[at : at + ci * pitch]
    at += ci * pitch
    gplane = work[at : at + co4 * gpitch]
    for o in range(co, co4):  # the padding channels' planes stay zero
        for t in range(gpitch):
            gplane[o * gpitch + t] = 0.0
    offs = np.empty(4, np.int64)
    bands = g.shape[0] * per
    first = _piece(bands, items, lo)[0]  # the bands of items lo:hi
    last = _piece(bands, items, hi - 1)[1]
    for bi in range(first, last):
        dk = parts[_item_of(bi, bands, items)]
        b = bi // per
        y0, y1 = _piece(oh, per, bi - b * per)
        rows = y1 - y0
        _planes(x, b, y0 - pt, rows + (kh - 1) * dh, pl, plane, pitch, wp)
        _planes(g, b, y0, rows, 0, gplane, gpitch, wp)
        total = rows * wp
        for t0 in range(0, taps, 4):
            for k in range(4):  # where each of the 4 taps starts reading (the last repeats)
                t = min(t0 + k, taps - 1)
                c = t // (kh * kw)
                i = (t - c * kh * kw) // kw
                j = t - c * kh * kw - i * kw
                offs[k] = c * pitch + i * dh * wp + j * dw
            for o0 in range(0, co4, 4):
                z = vzero(dk)
                acc = (z, z, z, z, z, z, z, z, z, z, z, z, z, z, z, z)
                g0 = o0 * gpitch
                a0, a1, a2, a3 = offs[0], offs[1], offs[2], offs[3]
                for q in range(0, total, lanes):
                    acc = _outer_4x4(
                        vload(plane, a0 + q),
                        vload(plane, a1 + q),
                        vload(plane, a2 + q),
                        vload(plane, a3 + q),
                        vload(gplane, g0 + q),
                        vload(gplane, g0 + gpitch + q),
                        vload(gplane, g0 + 2 * gpitch + q),
                        vload(gplane, g0 + 3 * gpitch + q),
                        acc,
                    )
                for k in numba.literal_unroll((0, 1, 2, 3)):  # into this thread's sums
                    for v in numba.literal_unroll((0, 1, 2, 3)):
                        d = ((t0 + k) * co4 + o0 + v) * lanes
                        vstore(dk, d, vadd(vload(dk, d), acc[4 * k + v]))


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


@numba.njit(nogil=True, cache=True, boundscheck=False)
def depthwise_3x3_rows(x, k, bias, out, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
    # depthwise_rows for 3x3 kernels at stride and dilation 1 (the common case), two output
    # rows of one image at a time: each of their 4 input rows is loaded once per block of 6
    # columns (8 vectors) and serves both rows' taps, 12 accumulators in registers (measured
    # 5-15% faster than one row at a time on the 3x3 bench layers). Same sums in the same
    # order as depthwise_rows.
    _, h, w, c = x.shape
    oh, ow = out.shape[1], out.shape[2]
    lanes = VECTOR_BYTES // x.itemsize
    wp = ow + 2
    rowlen = (wp * c + lanes - 1) // lanes * lanes
    nslots = 4
    raw = np.zeros(nslots * rowlen + lanes, x.dtype)
    a0 = ((-raw.ctypes.data) % VECTOR_BYTES) // x.itemsize
    ring = raw[a0 : a0 + nslots * rowlen]
    held = np.full(nslots, -1, np.int64)
    ncopy = max(0, min(w, wp - pl)) * c
    xf = x.reshape(-1)
    of = out.reshape(-1)
    base = np.empty(4, np.int64)
    ok = np.empty(4, np.bool_)
    r = lo
    while r < hi:
        b = r // oh
        i = r - b * oh
        two = r + 1 < hi and i + 1 < oh
        for q in range(4):  # input rows i-pt .. i-pt+3
            y = i - pt + q
            ok[q] = 0 <= y < h and (q < 3 or two)
            if not ok[q]:
                continue
            slot = y % nslots
            base[q] = slot * rowlen
            if held[slot] != b * h + y:
                held[slot] = b * h + y
                src = (b * h + y) * w * c
                dst = slot * rowlen + pl * c
                for t in range(0, ncopy - lanes, lanes):
                    vstore(ring, dst + t, vload(xf, src + t))
                if ncopy > 0:
                    vstore(ring, dst + ncopy - lanes, vload(xf, src + ncopy - lanes))
        o0 = r * ow * c
        for c0 in range(0, c, lanes):
            cb = min(c0, c - lanes)
            bv = vload(bias, cb)
            for blk in range((ow + 5) // 6):
                j = min(blk * 6, ow - 6)
                p0 = bv
                p1 = bv
                p2 = bv
                p3 = bv
                p4 = bv
                p5 = bv
                q0 = bv
                q1 = bv
                q2 = bv
                q3 = bv
                q4 = bv
                q5 = bv
                for q in range(4):
                    if not ok[q]:
                        continue
                    p = base[q] + j * c + cb
                    x0 = vload(ring, p)
                    x1 = vload(ring, p + c)
                    x2 = vload(ring, p + 2 * c)
                    x3 = vload(ring, p + 3 * c)
                    x4 = vload(ring, p + 4 * c)
                    x5 = vload(ring, p + 5 * c)
                    x6 = vload(ring, p + 6 * c)
                    x7 = vload(ring, p + 7 * c)
                    if q < 3:  # kernel row q for output row i
                        kb = q * 3 * c + cb
                        wa = vload(k, kb)
                        wb = vload(k, kb + c)
                        wc = vload(k, kb + 2 * c)
                        p0 = vfma(x2, wc, vfma(x1, wb, vfma(x0, wa, p0)))
                        p1 = vfma(x3, wc, vfma(x2, wb, vfma(x1, wa, p1)))
                        p2 = vfma(x4, wc, vfma(x3, wb, vfma(x2, wa, p2)))
                        p3 = vfma(x5, wc, vfma(x4, wb, vfma(x3, wa, p3)))
                        p4 = vfma(x6, wc, vfma(x5, wb, vfma(x4, wa, p4)))
                        p5 = vfma(x7, wc, vfma(x6, wb, vfma(x5, wa, p5)))
                    if q > 0 and two:  # kernel row q-1 for output row i+1
                        kb = (q - 1) * 3 * c + cb
                        wa = vload(k, kb)
                        wb = vload(k, kb + c)
                        wc = vload(k, kb + 2 * c)
                        q0 = vfma(x2, wc, vfma(x1, wb, vfma(x0, wa, q0)))
                        q1 = vfma(x3, wc, vfma(x2, wb, vfma(x1, wa, q1)))
                        q2 = vfma(x4, wc, vfma(x3, wb, vfma(x2, wa, q2)))
                        q3 = vfma(x5, wc, vfma(x4, wb, vfma(x3, wa, q3)))
                        q4 = vfma(x6, wc, vfma(x5, wb, vfma(x4, wa, q4)))
                        q5 = vfma(x7, wc, vfma(x6, wb, vfma(x5, wa, q5)))
                o = o0 + j * c + cb
                vstore(of, o, p0)
                vstore(of, o + c, p1)
                vstore(of, o + 2 * c, p2)
                vstore(of, o + 3 * c, p3)
                vstore(of, o + 4 * c, p4)
                vstore(of, o + 5 * c, p5)
                if two:
                    o += ow * c
                    vstore(of, o, q0)
                    vstore(of, o + c, q1)
                    vstore(of, o + 2 * c, q2)
                    vstore(of, o + 3 * c, q3)
                    vstore(of, o + 4 * c, q4)
                    vstore(of, o + 5 * c, q5)
        r += 2 if two else 1


# Winograd's transforms on one vector of channels, with F(4x4, 3x3)'s and F(2x2, 3x3)'s
# constant matrices written out (winograd.TRANSFORMS holds the same matrices; the tests
# compare the two). B^T is applied to a column of a values, A^T to a column of a products.
@numba.njit(inline="always")
def _bt6(z0, z1, z2, z3, z4, z5):  # type: ignore[no-untyped-def]
    # 15 operations (the rows share d, e and t).
    d = vsub(z1, z3)
    e = vsub(z4, z2)
    t = vfmas(z3, 0.5, vfmas(z2, 1.5, z1))
    r0 = vfmas(d, 1.5, vadd(vsub(z0, z2), e))
    r5 = vfmas(e, -1.5, vadd(vsub(z5, z3), d))
    return r0, vsub(e, t), vadd(e, vfmas(z3, -3.0, t)), vfmas(d, -0.5, e), vfmas(d, 2.0, e), r5


@numba.njit(inline="always")
def _bt4(z0, z1, z2, z3):  # type: ignore[no-untyped-def]
    return vsub(z0, z2), vadd(z1, z2), vsub(z2, z1), vsub(z1, z3)


@numba.njit(inline="always")
def _at6(z0, z1, z2, z3, z4, z5):  # type: ignore[no-untyped-def]
    s = vadd(z1, z2)
    d = vsub(z1, z2)
    y0 = vadd(z0, vadd(s, vadd(z3, z4)))
    y1 = vfmas(z4, -0.5, vfmas(z3, 2.0, d))
    y2 = vfmas(z4, 0.25, vfmas(z3, 4.0, s))
    y3 = vadd(vfmas(z4, -0.125, vfmas(z3, 8.0, d)), z5)
    return y0, y1, y2, y3


@numba.njit(inline="always")
def _at4(z0, z1, z2, z3):  # type: ignore[no-untyped-def]
    return vadd(z0, vadd(z1, z2)), vsub(vsub(z1, z2), z3)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_input(x, pt, pl, m, th, tw, t0, lo, hi, v):  # type: ignore[no-untyped-def]
    # Tiles t0+lo : t0+hi (flattened over n, th, tw) -> v[:, lo:hi, :] (a*a, T, c) = B^T d B per
    # tile and channel, c >= lanes. Per tile and vector of channels: B^T along each of the a
    # rows into a small buffer (a*a vectors, in L1), then along each column into v. The last
    # channel vector overlaps the one before when lanes does not divide c. (No helper takes
    # an array: with inline load/store helpers this transform ran 45% slower, measured.)
    _, h, w, c = x.shape
    a = m + 2
    nt = v.shape[1]
    lanes = VECTOR_BYTES // x.itemsize
    xf = x.reshape(-1)
    vf = v.reshape(-1)
    buf = np.empty(a * a * lanes, x.dtype)
    edge = np.empty(a * lanes, x.dtype)  # one tile row with the zeros past the image
    step = a * nt * c  # between rows r and r+1 of one tile's a x a transformed values
    for t in range(lo, hi):
        tt = t0 + t
        b = tt // (th * tw)
        rem = tt - b * th * tw
        ty = rem // tw
        y0 = ty * m - pt
        x0 = (rem - ty * tw) * m - pl
        for c0 in range(0, c, lanes):
            cb = min(c0, c - lanes)
            for i in range(a):  # row i of the tile times B (B^T applied along the row)
                y = y0 + i
                at = ((b * h + y) * w + x0) * c + cb
                if 0 <= y < h and x0 >= 0 and x0 + a <= w:
                    z0 = vload(xf, at)
                    z1 = vload(xf, at + c)
                    z2 = vload(xf, at + 2 * c)
                    z3 = vload(xf, at + 3 * c)
                    z4 = vload(xf, at + 4 * c) if a == 6 else z0
                    z5 = vload(xf, at + 5 * c) if a == 6 else z0
                else:
                    for j in range(a):
                        if 0 <= y < h and 0 <= x0 + j < w:
                            vstore(edge, j * lanes, vload(xf, at + j * c))
                        else:
                            vstore(edge, j * lanes, vzero(xf))
                    z0 = vload(edge, 0)
                    z1 = vload(edge, lanes)
                    z2 = vload(edge, 2 * lanes)
                    z3 = vload(edge, 3 * lanes)
                    z4 = vload(edge, 4 * lanes) if a == 6 else z0
                    z5 = vload(edge, 5 * lanes) if a == 6 else z0
                o = i * a * lanes
                if a == 6:
                    r = _bt6(z0, z1, z2, z3, z4, z5)
                    vstore(buf, o, r[0])
                    vstore(buf, o + lanes, r[1])
                    vstore(buf, o + 2 * lanes, r[2])
                    vstore(buf, o + 3 * lanes, r[3])
                    vstore(buf, o + 4 * lanes, r[4])
                    vstore(buf, o + 5 * lanes, r[5])
                else:
                    r4 = _bt4(z0, z1, z2, z3)
                    vstore(buf, o, r4[0])
                    vstore(buf, o + lanes, r4[1])
                    vstore(buf, o + 2 * lanes, r4[2])
                    vstore(buf, o + 3 * lanes, r4[3])
            for s_ in range(a):  # then B^T down each column, into v[r*a + s, t]
                o = (s_ * nt + t) * c + cb
                q = a * lanes
                if a == 6:
                    col = _bt6(
                        vload(buf, s_ * lanes),
                        vload(buf, s_ * lanes + q),
                        vload(buf, s_ * lanes + 2 * q),
                        vload(buf, s_ * lanes + 3 * q),
                        vload(buf, s_ * lanes + 4 * q),
                        vload(buf, s_ * lanes + 5 * q),
                    )
                    vstore(vf, o, col[0])
                    vstore(vf, o + step, col[1])
                    vstore(vf, o + 2 * step, col[2])
                    vstore(vf, o + 3 * step, col[3])
                    vstore(vf, o + 4 * step, col[4])
                    vstore(vf, o + 5 * step, col[5])
                else:
                    col4 = _bt4(
                        vload(buf, s_ * lanes),
                        vload(buf, s_ * lanes + q),
                        vload(buf, s_ * lanes + 2 * q),
                        vload(buf, s_ * lanes + 3 * q),
                    )
                    vstore(vf, o, col4[0])
                    vstore(vf, o + step, col4[1])
                    vstore(vf, o + 2 * step, col4[2])
                    vstore(vf, o + 3 * step, col4[3])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_output(mm, bias, out, m, th, tw, t0, lo, hi):  # type: ignore[no-untyped-def]
    # mm (a*a, T, c) for tiles t0+lo : t0+hi -> out (n, oh, ow, c) = A^T M A + bias, c >= lanes;
    # outputs past the bottom or right edge are dropped.
    _, oh, ow, c = out.shape
    a = m + 2
    nt = mm.shape[1]
    lanes = VECTOR_BYTES // out.itemsize
    mf = mm.reshape(-1)
    of = out.reshape(-1)
    buf = np.empty(m * a * lanes, out.dtype)
    step = a * nt * c  # between rows r and r+1 of one tile's a x a products
    for t in range(lo, hi):
        tt = t0 + t
        b = tt // (th * tw)
        rem = tt - b * th * tw
        ty = rem // tw
        tx = rem - ty * tw
        for c0 in range(0, c, lanes):
            cb = min(c0, c - lanes)
            bv = vload(bias, cb)
            for j in range(a):  # A^T down column j of the products
                p = (j * nt + t) * c + cb
                if a == 6:
                    col = _at6(
                        vload(mf, p),
                        vload(mf, p + step),
                        vload(mf, p + 2 * step),
                        vload(mf, p + 3 * step),
                        vload(mf, p + 4 * step),
                        vload(mf, p + 5 * step),
                    )
                    vstore(buf, j * lanes, col[0])
                    vstore(buf, (6 + j) * lanes, col[1])
                    vstore(buf, (12 + j) * lanes, col[2])
                    vstore(buf, (18 + j) * lanes, col[3])
                else:
                    col2 = _at4(
                        vload(mf, p),
                        vload(mf, p + step),
                        vload(mf, p + 2 * step),
                        vload(mf, p + 3 * step),
                    )
                    vstore(buf, j * lanes, col2[0])
                    vstore(buf, (4 + j) * lanes, col2[1])
            for r in range(m):  # then along each row, plus the bias, into the output
                oy = ty * m + r
                if oy >= oh:
                    break
                base = ((b * oh + oy) * ow + tx * m) * c + cb
                if a == 6:
                    row = _at6(
                        vload(buf, r * 6 * lanes),
                        vload(buf, (r * 6 + 1) * lanes),
                        vload(buf, (r * 6 + 2) * lanes),
                        vload(buf, (r * 6 + 3) * lanes),
                        vload(buf, (r * 6 + 4) * lanes),
                        vload(buf, (r * 6 + 5) * lanes),
                    )
                    if tx * m + 4 <= ow:
                        vstore(of, base, vadd(row[0], bv))
                        vstore(of, base + c, vadd(row[1], bv))
                        vstore(of, base + 2 * c, vadd(row[2], bv))
                        vstore(of, base + 3 * c, vadd(row[3], bv))
                    else:
                        for s in range(ow - tx * m):
                            vstore(of, base + s * c, vadd(row[s], bv))
                else:
                    row2 = _at4(
                        vload(buf, r * 4 * lanes),
                        vload(buf, (r * 4 + 1) * lanes),
                        vload(buf, (r * 4 + 2) * lanes),
                        vload(buf, (r * 4 + 3) * lanes),
                    )
                    vstore(of, base, vadd(row2[0], bv))
                    if tx * m + 1 < ow:
                        vstore(of, base + c, vadd(row2[1], bv))


@numba.njit(inline="always")
def _taps9(kf, q, p):  # type: ignore[no-untyped-def]
    # The 9 taps of the (9, q) flat kernel at vector p.
    return (
        vload(kf, p), vload(kf, q + p), vload(kf, 2 * q + p), vload(kf, 3 * q + p),
        vload(kf, 4 * q + p), vload(kf, 5 * q + p), vload(kf, 6 * q + p),
        vload(kf, 7 * q + p), vload(kf, 8 * q + p),
    )  # fmt: skip


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_kernel(k9, kron, u, lo, hi):  # type: ignore[no-untyped-def]
    # u[lo:hi] = kron[lo:hi] (P, 9) @ k9 (9, q): the transformed kernel U = G g G^T for
    # transform positions lo:hi, q = c_in*c_out >= lanes, kron telling F(4x4) (36 rows) from
    # F(2x2). Per vector of q the 9 taps stay in registers while G goes along the rows, then
    # the columns (_u_row; BLAS at K = 9 re-reads them from memory and ran at a third of
    # this speed on 14x14x256's 9.4 MB U, and kron's 9 multiply-adds a position, one chain
    # each, took 3-4x as long as the two passes: N1 28x28x128's U 0.147 ms on two cores).
    q = k9.shape[1]
    lanes = VECTOR_BYTES // k9.itemsize
    m = 4 if kron.shape[0] == 36 else 2
    a = m + 2
    kf = k9.reshape(-1)
    uf = u.reshape(-1)
    for r in range(lo // a, (hi - 1) // a + 1):  # a row of positions at a time (see below)
        for p0 in range(0, q, lanes):
            p = min(p0, q - lanes)
            _u_row(_taps9(kf, q, p), m, r, lo, hi, uf, p, q)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_kernel_panels(k9, kron, u, lo, hi):  # type: ignore[no-untyped-def]
    # winograd_kernel into column panels, as batched_matmul reads U: u (a*a, panels, c_in,
    # 4 lanes), panel p holding output channels pc : pc + 4 lanes, pc = min(p * 4 lanes,
    # c_out - 4 lanes); positions lo:hi. k9 is (9, c_in*c_out), c_out >= 4 lanes.
    panels, ci, width = u.shape[1], u.shape[2], u.shape[3]
    q = k9.shape[1]
    co = q // ci
    lanes = VECTOR_BYTES // k9.itemsize
    kf = k9.reshape(-1)
    uf = u.reshape(-1)
    pitch = panels * ci * width  # from one position to the next
    m = 4 if kron.shape[0] == 36 else 2
    a = m + 2
    # A row of positions at a time, the kernel read in order for each: the positions lie a
    # multiple of 4 KB apart where c_in and c_out are powers of two, and a vector's stores to
    # all of them at once fell in one L1 cache set (18 of them a core under F(4x4) on two
    # cores) and evicted each other (measured, one core: 128 -> 128 145 -> 85 ns a vector,
    # 64 -> 64 146 -> 41).
    for r in range(lo // a, (hi - 1) // a + 1):
        for c in range(ci):  # U written in runs of 4 vectors
            for panel in range(panels):
                pc = min(panel * width, co - width)
                for vec in range(4):
                    g = _taps9(kf, q, c * co + pc + vec * lanes)
                    at = (panel * ci + c) * width + vec * lanes
                    _u_row(g, m, r, lo, hi, uf, at, pitch)


@numba.njit(inline="always")
def _a6t(d0, d1, d2, d3):  # type: ignore[no-untyped-def]
    # A (6x4) applied to 4 values: the adjoint of _at6.
    s1 = vadd(d1, d3)
    s2 = vadd(d0, d2)
    r3 = vfmas(d1, 2.0, vfmas(d2, 4.0, vfmas(d3, 8.0, d0)))
    r4 = vfmas(d1, -0.5, vfmas(d2, 0.25, vfmas(d3, -0.125, d0)))
    return d0, vadd(s2, s1), vsub(s2, s1), r3, r4, d3


@numba.njit(inline="always")
def _a4t(d0, d1):  # type: ignore[no-untyped-def]
    # A (4x2) applied to 2 values: the adjoint of _at4.
    return d0, vadd(d0, d1), vsub(d0, d1), vsub(vzero_like(d0), d1)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_grad_output(go, m, th, tw, t0, lo, hi, gm):  # type: ignore[no-untyped-def]
    # The adjoint of winograd_output: grad_out tiles t0+lo : t0+hi (m x m, zeros past the
    # edge) -> gm[:, lo:hi, :] (a*a, T, c) = A dY A^T, c >= lanes.
    _, oh, ow, c = go.shape
    a = m + 2
    nt = gm.shape[1]
    lanes = VECTOR_BYTES // go.itemsize
    gf = go.reshape(-1)
    mf = gm.reshape(-1)
    buf = np.empty(m * a * lanes, go.dtype)
    edge = np.empty(m * lanes, go.dtype)
    step = a * nt * c  # between rows i and i+1 of one tile's a x a values
    for t in range(lo, hi):
        tt = t0 + t
        b = tt // (th * tw)
        rem = tt - b * th * tw
        ty = rem // tw
        tx = rem - ty * tw
        for c0 in range(0, c, lanes):
            cb = min(c0, c - lanes)
            for r in range(m):  # row r of dY times A^T (A applied along the row)
                oy = ty * m + r
                at = ((b * oh + oy) * ow + tx * m) * c + cb
                if oy < oh and tx * m + m <= ow:
                    d0 = vload(gf, at)
                    d1 = vload(gf, at + c)
                    d2 = vload(gf, at + 2 * c) if m == 4 else d0
                    d3 = vload(gf, at + 3 * c) if m == 4 else d0
                else:
                    for s in range(m):
                        if oy < oh and tx * m + s < ow:
                            vstore(edge, s * lanes, vload(gf, at + s * c))
                        else:
                            vstore(edge, s * lanes, vzero(gf))
                    d0 = vload(edge, 0)
                    d1 = vload(edge, lanes)
                    d2 = vload(edge, 2 * lanes) if m == 4 else d0
                    d3 = vload(edge, 3 * lanes) if m == 4 else d0
                o = r * a * lanes
                if m == 4:
                    z = _a6t(d0, d1, d2, d3)
                    vstore(buf, o, z[0])
                    vstore(buf, o + lanes, z[1])
                    vstore(buf, o + 2 * lanes, z[2])
                    vstore(buf, o + 3 * lanes, z[3])
                    vstore(buf, o + 4 * lanes, z[4])
                    vstore(buf, o + 5 * lanes, z[5])
                else:
                    z4 = _a4t(d0, d1)
                    vstore(buf, o, z4[0])
                    vstore(buf, o + lanes, z4[1])
                    vstore(buf, o + 2 * lanes, z4[2])
                    vstore(buf, o + 3 * lanes, z4[3])
            q = a * lanes
            for j in range(a):  # then A down each column, into gm[i*a + j, t]
                o = (j * nt + t) * c + cb
                if m == 4:
                    col = _a6t(
                        vload(buf, j * lanes),
                        vload(buf, j * lanes + q),
                        vload(buf, j * lanes + 2 * q),
                        vload(buf, j * lanes + 3 * q),
                    )
                    vstore(mf, o, col[0])
                    vstore(mf, o + step, col[1])
                    vstore(mf, o + 2 * step, col[2])
                    vstore(mf, o + 3 * step, col[3])
                    vstore(mf, o + 4 * step, col[4])
                    vstore(mf, o + 5 * step, col[5])
                else:
                    col4 = _a4t(vload(buf, j * lanes), vload(buf, j * lanes + q))
                    vstore(mf, o, col4[0])
                    vstore(mf, o + step, col4[1])
                    vstore(mf, o + 2 * step, col4[2])
                    vstore(mf, o + 3 * step, col4[3])


# The 6 x 4 register block that conv_rows and batched_matmul share: 6 rows (output columns or
# tiles) x 4 vectors of output channels, 24 accumulators carried as one tuple.
@numba.njit(inline="always")
def _block_6x4(e0, e1, e2, e3):  # type: ignore[no-untyped-def]
    return (e0, e1, e2, e3, e0, e1, e2, e3, e0, e1, e2, e3,
            e0, e1, e2, e3, e0, e1, e2, e3, e0, e1, e2, e3)  # fmt: skip


@numba.njit(inline="always")
def _fma_6x4(u0, u1, u2, u3, s0, s1, s2, s3, s4, s5, a):  # type: ignore[no-untyped-def]
    # a[4*r + v] += s_r * u_v: one value of each of the 6 rows times 4 kernel vectors.
    return (
        vfmas(u0, s0, a[0]), vfmas(u1, s0, a[1]), vfmas(u2, s0, a[2]), vfmas(u3, s0, a[3]),
        vfmas(u0, s1, a[4]), vfmas(u1, s1, a[5]), vfmas(u2, s1, a[6]), vfmas(u3, s1, a[7]),
        vfmas(u0, s2, a[8]), vfmas(u1, s2, a[9]), vfmas(u2, s2, a[10]), vfmas(u3, s2, a[11]),
        vfmas(u0, s3, a[12]), vfmas(u1, s3, a[13]), vfmas(u2, s3, a[14]), vfmas(u3, s3, a[15]),
        vfmas(u0, s4, a[16]), vfmas(u1, s4, a[17]), vfmas(u2, s4, a[18]), vfmas(u3, s4, a[19]),
        vfmas(u0, s5, a[20]), vfmas(u1, s5, a[21]), vfmas(u2, s5, a[22]), vfmas(u3, s5, a[23]),
    )  # fmt: skip


@numba.njit(inline="always")
def _fma_4x4(u0, u1, u2, u3, s0, s1, s2, s3, a):  # type: ignore[no-untyped-def]
    # _fma_6x4 for 4 rows: conv_rows' last block of a row.
    return (
        vfmas(u0, s0, a[0]), vfmas(u1, s0, a[1]), vfmas(u2, s0, a[2]), vfmas(u3, s0, a[3]),
        vfmas(u0, s1, a[4]), vfmas(u1, s1, a[5]), vfmas(u2, s1, a[6]), vfmas(u3, s1, a[7]),
        vfmas(u0, s2, a[8]), vfmas(u1, s2, a[9]), vfmas(u2, s2, a[10]), vfmas(u3, s2, a[11]),
        vfmas(u0, s3, a[12]), vfmas(u1, s3, a[13]), vfmas(u2, s3, a[14]), vfmas(u3, s3, a[15]),
    )  # fmt: skip


@numba.njit(inline="always")
def _add_4x4(a, b):  # type: ignore[no-untyped-def]
    # a + b, two 4 x 4 register blocks.
    return (
        vadd(a[0], b[0]), vadd(a[1], b[1]), vadd(a[2], b[2]), vadd(a[3], b[3]),
        vadd(a[4], b[4]), vadd(a[5], b[5]), vadd(a[6], b[6]), vadd(a[7], b[7]),
        vadd(a[8], b[8]), vadd(a[9], b[9]), vadd(a[10], b[10]), vadd(a[11], b[11]),
        vadd(a[12], b[12]), vadd(a[13], b[13]), vadd(a[14], b[14]), vadd(a[15], b[15]),
    )  # fmt: skip


@numba.njit(inline="always")
def _add_6x4(a, b):  # type: ignore[no-untyped-def]
    # a + b, two 6 x 4 register blocks.
    return (
        vadd(a[0], b[0]), vadd(a[1], b[1]), vadd(a[2], b[2]), vadd(a[3], b[3]),
        vadd(a[4], b[4]), vadd(a[5], b[5]), vadd(a[6], b[6]), vadd(a[7], b[7]),
        vadd(a[8], b[8]), vadd(a[9], b[9]), vadd(a[10], b[10]), vadd(a[11], b[11]),
        vadd(a[12], b[12]), vadd(a[13], b[13]), vadd(a[14], b[14]), vadd(a[15], b[15]),
        vadd(a[16], b[16]), vadd(a[17], b[17]), vadd(a[18], b[18]), vadd(a[19], b[19]),
        vadd(a[20], b[20]), vadd(a[21], b[21]), vadd(a[22], b[22]), vadd(a[23], b[23]),
    )  # fmt: skip


@numba.njit(inline="always")
def _store_4x4(arr, at, pitch, a):  # type: ignore[no-untyped-def]
    n = VECTOR_BYTES // arr.itemsize
    for r in numba.literal_unroll((0, 1, 2, 3)):
        vstore(arr, at + r * pitch, a[4 * r])
        vstore(arr, at + r * pitch + n, a[4 * r + 1])
        vstore(arr, at + r * pitch + 2 * n, a[4 * r + 2])
        vstore(arr, at + r * pitch + 3 * n, a[4 * r + 3])


@numba.njit(inline="always")
def _store_6x4(arr, at, pitch, a):  # type: ignore[no-untyped-def]
    # Row r of the block to arr[at + r*pitch : ... + 4 lanes] (written out: a tuple indexed
    # by a loop variable would go through memory).
    n = VECTOR_BYTES // arr.itemsize
    vstore(arr, at, a[0])
    vstore(arr, at + n, a[1])
    vstore(arr, at + 2 * n, a[2])
    vstore(arr, at + 3 * n, a[3])
    vstore(arr, at + pitch, a[4])
    vstore(arr, at + pitch + n, a[5])
    vstore(arr, at + pitch + 2 * n, a[6])
    vstore(arr, at + pitch + 3 * n, a[7])
    vstore(arr, at + 2 * pitch, a[8])
    vstore(arr, at + 2 * pitch + n, a[9])
    vstore(arr, at + 2 * pitch + 2 * n, a[10])
    vstore(arr, at + 2 * pitch + 3 * n, a[11])
    vstore(arr, at + 3 * pitch, a[12])
    vstore(arr, at + 3 * pitch + n, a[13])
    vstore(arr, at + 3 * pitch + 2 * n, a[14])
    vstore(arr, at + 3 * pitch + 3 * n, a[15])
    vstore(arr, at + 4 * pitch, a[16])
    vstore(arr, at + 4 * pitch + n, a[17])
    vstore(arr, at + 4 * pitch + 2 * n, a[18])
    vstore(arr, at + 4 * pitch + 3 * n, a[19])
    vstore(arr, at + 5 * pitch, a[20])
    vstore(arr, at + 5 * pitch + n, a[21])
    vstore(arr, at + 5 * pitch + 2 * n, a[22])
    vstore(arr, at + 5 * pitch + 3 * n, a[23])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _ring(x, out, nslots, kw, sw, dw, pl):  # type: ignore[no-untyped-def]
    # conv_rows' row source src: x itself where no tap reaches the left or right padding (the
    # patch values are scalar broadcasts, so its alignment does not matter), else an aligned
    # ring of zero-padded row copies (nslots rows); its row length and the padded width the taps
    # reach; and _row_taps' bookkeeping: which (image, row) each slot holds (none yet), and room
    # for up to nslots kernel rows and where their input rows start.
    _, _, w, ci = x.shape
    ow = out.shape[2]
    lanes = VECTOR_BYTES // x.itemsize
    wp = (ow - 1) * sw + (kw - 1) * dw + 1  # padded columns the taps reach
    rowlen = (wp * ci + lanes - 1) // lanes * lanes
    direct = pl == 0 and wp <= w
    raw = np.zeros(0 if direct else nslots * rowlen + lanes, x.dtype)
    a0 = 0 if direct else ((-raw.ctypes.data) % VECTOR_BYTES) // x.itemsize
    ring = raw[a0 : a0 + nslots * rowlen]  # written by _row_taps (empty where direct)
    # What the products read: x or the ring. Only the ring is written, so a read-only x (a
    # memory map, a frozen array) types as read-only here and compiles.
    src = x.reshape(-1) if direct else ring
    held = np.full(nslots, -1, np.int64)
    taps, bases = np.empty(nslots, np.int64), np.empty(nslots, np.int64)
    return direct, src, ring, rowlen, wp, held, taps, bases


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _row_taps(x, ring, direct, rowlen, wp, held, taps, bases, b, y0, kh, dh, pl):  # type: ignore[no-untyped-def]
    # The kernel rows of the output row starting at input row y0 (of image b) that fall inside
    # the image -> taps[:nr], and where each input row starts -> bases[:nr]; rows not yet in
    # the ring are copied in (the kh*dh input rows of one output row are distinct modulo kh*dh).
    _, h, w, ci = x.shape
    lanes = VECTOR_BYTES // x.itemsize
    xf = x.reshape(-1)
    nslots = held.shape[0]
    ncopy = max(0, min(w, wp - pl)) * ci  # input values per row inside the padded span
    nr = 0
    for di in range(kh):
        y = y0 + di * dh
        if y < 0 or y >= h:
            continue
        taps[nr] = di
        nr += 1
        if direct:
            bases[nr - 1] = (b * h + y) * w * ci
            continue
        slot = y % nslots
        bases[nr - 1] = slot * rowlen
        if held[slot] != b * h + y:
            held[slot] = b * h + y
            src = (b * h + y) * w * ci
            dst = slot * rowlen + pl * ci
            if ncopy >= lanes:  # vectors, the last one overlapping the one before
                for q in range(0, ncopy - lanes, lanes):
                    vstore(ring, dst + q, vload(xf, src + q))
                vstore(ring, dst + ncopy - lanes, vload(xf, src + ncopy - lanes))
            else:
                for q in range(ncopy):
                    ring[dst + q] = xf[src + q]
    return nr


@numba.njit(nogil=True, cache=True, boundscheck=False)
def conv_rows(x, kmat, bias, out, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
    # Implicit GEMM: out (n, oh, ow, co) rows lo:hi of the flattened (n*oh) output = patches @
    # kernel (kh*kw*ci, co) + bias (co,), without a patch matrix. kmat holds the kernel in
    # column panels, (panels, kh*kw*ci, 4 lanes), 64-byte aligned: panel p is output channels
    # pc : pc + 4 lanes, pc = min(p * 4 lanes, co - 4 lanes) (see gemm.kernel_panels). Each
    # input row a tap needs is copied once into an aligned ring of zero-padded rows (as
    # depthwise_rows does), then each output row is done in blocks of 6 columns x 4 vectors of
    # output channels: 24 accumulators stay in registers while the patch's kh*kw*ci values go
    # by, each a broadcast times 4 kernel vectors (4x4 blocks ran 5% slower: more kernel reads
    # per multiply-add). The last block of a row and the last channel panel overlap the ones
    # before (co >= 4 lanes, ow >= 6).
    ci = x.shape[3]
    oh, ow, co = out.shape[1], out.shape[2], out.shape[3]
    lanes = VECTOR_BYTES // x.itemsize
    direct, src, ring, rowlen, wp, held, taps, bases = _ring(x, out, kh * dh, kw, sw, dw, pl)
    kf = kmat.reshape(-1)
    of = out.reshape(-1)
    step = sw * ci
    width = 4 * lanes
    for r in range(lo, hi):
        b = r // oh
        i = r - b * oh
        nr = _row_taps(x, ring, direct, rowlen, wp, held, taps, bases, b, i * sh - pt, kh, dh, pl)
        obase = r * ow * co
        for panel in range(kmat.shape[0]):
            pc = min(panel * width, co - width)
            kp = panel * kmat.shape[1] * width
            e0 = vload(bias, pc)
            e1 = vload(bias, pc + lanes)
            e2 = vload(bias, pc + 2 * lanes)
            e3 = vload(bias, pc + 3 * lanes)
            # Blocks of 6 columns; 1 to 4 left over go in one block of 4 (overlapping the
            # one before when fewer), 5 in an overlapping block of 6 (28 columns computed 30).
            rest = ow % 6
            for blk in range(ow // 6 + (1 if rest == 5 else 0)):
                j = min(blk * 6, ow - 6)
                acc = _block_6x4(e0, e1, e2, e3)
                for t in range(nr):
                    for dj in range(kw):
                        a = bases[t] + (j * sw + dj * dw) * ci
                        kb = kp + (taps[t] * kw + dj) * ci * width
                        for c in range(ci):
                            acc = _fma_6x4(
                                vload(kf, kb),
                                vload(kf, kb + lanes),
                                vload(kf, kb + 2 * lanes),
                                vload(kf, kb + 3 * lanes),
                                sload(src, a + c),
                                sload(src, a + step + c),
                                sload(src, a + 2 * step + c),
                                sload(src, a + 3 * step + c),
                                sload(src, a + 4 * step + c),
                                sload(src, a + 5 * step + c),
                                acc,
                            )
                            kb += width
                _store_6x4(of, obase + j * co + pc, co, acc)
            if 0 < rest < 5:
                j = ow - 4
                acc4 = (e0, e1, e2, e3, e0, e1, e2, e3, e0, e1, e2, e3, e0, e1, e2, e3)
                for t in range(nr):
                    for dj in range(kw):
                        a = bases[t] + (j * sw + dj * dw) * ci
                        kb = kp + (taps[t] * kw + dj) * ci * width
                        for c in range(ci):
                            acc4 = _fma_4x4(
                                vload(kf, kb),
                                vload(kf, kb + lanes),
                                vload(kf, kb + 2 * lanes),
                                vload(kf, kb + 3 * lanes),
                                sload(src, a + c),
                                sload(src, a + step + c),
                                sload(src, a + 2 * step + c),
                                sload(src, a + 3 * step + c),
                                acc4,
                            )
                            kb += width
                _store_4x4(of, obase + j * co + pc, co, acc4)


@numba.njit(inline="always")
def _fma_12x1(u, s, a):  # type: ignore[no-untyped-def]
    # a[r] += s[r] * u: 12 columns' values times one kernel vector.
    return (
        vfmas(u, s[0], a[0]), vfmas(u, s[1], a[1]), vfmas(u, s[2], a[2]), vfmas(u, s[3], a[3]),
        vfmas(u, s[4], a[4]), vfmas(u, s[5], a[5]), vfmas(u, s[6], a[6]), vfmas(u, s[7], a[7]),
        vfmas(u, s[8], a[8]), vfmas(u, s[9], a[9]), vfmas(u, s[10], a[10]),
        vfmas(u, s[11], a[11]),
    )  # fmt: skip


@numba.njit(inline="always")
def _row12(ring, a, step, c):  # type: ignore[no-untyped-def]
    # The 12 columns' values of channel c: ring[a + q*step + c].
    return (
        sload(ring, a + c), sload(ring, a + step + c), sload(ring, a + 2 * step + c),
        sload(ring, a + 3 * step + c), sload(ring, a + 4 * step + c),
        sload(ring, a + 5 * step + c), sload(ring, a + 6 * step + c),
        sload(ring, a + 7 * step + c), sload(ring, a + 8 * step + c),
        sload(ring, a + 9 * step + c), sload(ring, a + 10 * step + c),
        sload(ring, a + 11 * step + c),
    )  # fmt: skip


@numba.njit(inline="always")
def _store_12x1(arr, at, pitch, a):  # type: ignore[no-untyped-def]
    # a[q] to arr[at + q*pitch : ... + lanes]: a block of 12 columns.
    for q in numba.literal_unroll((0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)):
        vstore(arr, at + q * pitch, a[q])


@numba.njit(inline="always")
def _store_4x1(arr, at, pitch, a):  # type: ignore[no-untyped-def]
    for q in numba.literal_unroll((0, 1, 2, 3)):
        vstore(arr, at + q * pitch, a[q])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def conv_rows_narrow(x, kmat, bias, out, kh, kw, sh, sw, dh, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
    # conv_rows for 1 to 3 vectors of output channels (lanes <= co < 4 lanes): blocks of 12
    # columns x 1 vector, 12 accumulators, each patch value a broadcast times one kernel vector
    # (ow >= 12; the last block and the last vector overlap the ones before). The large-kernel
    # layers with few channels, such as 11x11 16 -> 16, where FFT did 2 GFLOP-equivalents of
    # transforms for 1 GFLOP of products.
    ci = x.shape[3]
    oh, ow, co = out.shape[1], out.shape[2], out.shape[3]
    lanes = VECTOR_BYTES // x.itemsize
    direct, src, ring, rowlen, wp, held, taps, bases = _ring(x, out, kh * dh, kw, sw, dw, pl)
    kf = kmat.reshape(-1)
    of = out.reshape(-1)
    step = sw * ci
    for r in range(lo, hi):
        b = r // oh
        i = r - b * oh
        nr = _row_taps(x, ring, direct, rowlen, wp, held, taps, bases, b, i * sh - pt, kh, dh, pl)
        obase = r * ow * co
        for p0 in range(0, co, lanes):
            pc = min(p0, co - lanes)
            e = vload(bias, pc)
            for blk in range((ow + 11) // 12):
                j = min(blk * 12, ow - 12)
                acc = (e, e, e, e, e, e, e, e, e, e, e, e)
                for t in range(nr):
                    for dj in range(kw):
                        a = bases[t] + (j * sw + dj * dw) * ci
                        kb = (taps[t] * kw + dj) * ci * co + pc
                        for c in range(ci):
                            acc = _fma_12x1(vload(kf, kb), _row12(src, a, step, c), acc)
                            kb += co
                _store_12x1(of, obase + j * co + pc, co, acc)


@numba.njit(inline="always")
def _fma_12x2(k0, k1, ring, a, step, c, a0, a1):  # type: ignore[no-untyped-def]
    # a0[q] += s_q * k0 and a1[q] += s_q * k1 for the 12 columns' values s_q = ring[a + q*step
    # + c]: each broadcast used twice as soon as it is loaded (written in that order: with all
    # 12 loaded first, LLVM kept them and spilled accumulators).
    s0 = sload(ring, a + c)
    s1 = sload(ring, a + step + c)
    s2 = sload(ring, a + 2 * step + c)
    b00, b10 = vfmas(k0, s0, a0[0]), vfmas(k1, s0, a1[0])
    b01, b11 = vfmas(k0, s1, a0[1]), vfmas(k1, s1, a1[1])
    b02, b12 = vfmas(k0, s2, a0[2]), vfmas(k1, s2, a1[2])
    s3 = sload(ring, a + 3 * step + c)
    s4 = sload(ring, a + 4 * step + c)
    s5 = sload(ring, a + 5 * step + c)
    b03, b13 = vfmas(k0, s3, a0[3]), vfmas(k1, s3, a1[3])
    b04, b14 = vfmas(k0, s4, a0[4]), vfmas(k1, s4, a1[4])
    b05, b15 = vfmas(k0, s5, a0[5]), vfmas(k1, s5, a1[5])
    s6 = sload(ring, a + 6 * step + c)
    s7 = sload(ring, a + 7 * step + c)
    s8 = sload(ring, a + 8 * step + c)
    b06, b16 = vfmas(k0, s6, a0[6]), vfmas(k1, s6, a1[6])
    b07, b17 = vfmas(k0, s7, a0[7]), vfmas(k1, s7, a1[7])
    b08, b18 = vfmas(k0, s8, a0[8]), vfmas(k1, s8, a1[8])
    s9 = sload(ring, a + 9 * step + c)
    s10 = sload(ring, a + 10 * step + c)
    s11 = sload(ring, a + 11 * step + c)
    b09, b19 = vfmas(k0, s9, a0[9]), vfmas(k1, s9, a1[9])
    b0a, b1a = vfmas(k0, s10, a0[10]), vfmas(k1, s10, a1[10])
    b0b, b1b = vfmas(k0, s11, a0[11]), vfmas(k1, s11, a1[11])
    return (
        (b00, b01, b02, b03, b04, b05, b06, b07, b08, b09, b0a, b0b),
        (b10, b11, b12, b13, b14, b15, b16, b17, b18, b19, b1a, b1b),
    )


@numba.njit(inline="always")
def _fma_4x2(k0, k1, ring, a, step, c, a0, a1):  # type: ignore[no-untyped-def]
    # _fma_12x2 for 4 columns: a row's last columns.
    s0 = sload(ring, a + c)
    s1 = sload(ring, a + step + c)
    s2 = sload(ring, a + 2 * step + c)
    s3 = sload(ring, a + 3 * step + c)
    return (
        (vfmas(k0, s0, a0[0]), vfmas(k0, s1, a0[1]), vfmas(k0, s2, a0[2]), vfmas(k0, s3, a0[3])),
        (vfmas(k1, s0, a1[0]), vfmas(k1, s1, a1[1]), vfmas(k1, s2, a1[2]), vfmas(k1, s3, a1[3])),
    )


@numba.njit(inline="always")
def _fma_4x1(k, ring, a, step, c, acc):  # type: ignore[no-untyped-def]
    return (
        vfmas(k, sload(ring, a + c), acc[0]),
        vfmas(k, sload(ring, a + step + c), acc[1]),
        vfmas(k, sload(ring, a + 2 * step + c), acc[2]),
        vfmas(k, sload(ring, a + 3 * step + c), acc[3]),
    )


@numba.njit(inline="always")
def _pair_taps_12(kf, ring, rows, bases, nr, kh, kw, ci, co, step, col, dw, pc, a0, a1):  # type: ignore[no-untyped-def]
    # The taps of a row pair on 12 columns starting at ring offset col: input row offset yo
    # is tap yo of the first row and tap yo - 1 of the second; the first and last input rows
    # feed one row only.
    krow = kw * ci * co  # one row of kernel taps
    for t in range(nr):
        yo = rows[t]
        for dj in range(kw):
            a = bases[t] + col + dj * dw * ci
            kb = yo * krow + dj * ci * co + pc
            if yo == 0:
                for c in range(ci):
                    a0 = _fma_12x1(vload(kf, kb), _row12(ring, a, step, c), a0)
                    kb += co
            elif yo == kh:
                for c in range(ci):
                    a1 = _fma_12x1(vload(kf, kb - krow), _row12(ring, a, step, c), a1)
                    kb += co
            else:
                for c in range(ci):
                    a0, a1 = _fma_12x2(
                        vload(kf, kb), vload(kf, kb - krow), ring, a, step, c, a0, a1
                    )
                    kb += co
    return a0, a1


@numba.njit(inline="always")
def _pair_taps_4(kf, ring, rows, bases, nr, kh, kw, ci, co, step, col, dw, pc, a0, a1):  # type: ignore[no-untyped-def]
    # _pair_taps_12 on 4 columns.
    krow = kw * ci * co
    for t in range(nr):
        yo = rows[t]
        for dj in range(kw):
            a = bases[t] + col + dj * dw * ci
            kb = yo * krow + dj * ci * co + pc
            if yo == 0:
                for c in range(ci):
                    a0 = _fma_4x1(vload(kf, kb), ring, a, step, c, a0)
                    kb += co
            elif yo == kh:
                for c in range(ci):
                    a1 = _fma_4x1(vload(kf, kb - krow), ring, a, step, c, a1)
                    kb += co
            else:
                for c in range(ci):
                    a0, a1 = _fma_4x2(vload(kf, kb), vload(kf, kb - krow), ring, a, step, c, a0, a1)
                    kb += co
    return a0, a1


@numba.njit(nogil=True, cache=True, boundscheck=False)
def conv_rows_narrow_pairs(x, kmat, bias, out, kh, kw, sw, dw, pt, pl, lo, hi):  # type: ignore[no-untyped-def]
    # conv_rows_narrow two output rows at a time, for stride and dilation 1 down the image:
    # units lo:hi of (n, ceil(oh / 2)) row pairs (r, r + 1), the last pair of an odd oh
    # overlapping the one before (oh >= 2). Input row r - pt + yo feeds tap yo of row r and tap
    # yo - 1 of row r + 1, so each broadcast serves two kernel vectors: 12 columns x 2 rows,
    # 24 accumulators, 14 loads per 24 multiply-adds where one row needs 13 per 12. A row's
    # last 1 to 8 columns go in blocks of 4, not an overlapping block of 12 (measured, N8
    # 64x64 16 -> 16 11x11: 7.5 ms one row at a time, 6.4 in pairs, 5.6 with the blocks of
    # 4, where 64 columns took 72). kmat is (kh*kw*ci, co), flat.
    ci = x.shape[3]
    oh, ow, co = out.shape[1], out.shape[2], out.shape[3]
    lanes = VECTOR_BYTES // x.itemsize
    # The kh + 1 input rows of a pair, each in a slot of its own.
    direct, src, ring, rowlen, wp, held, rows, bases = _ring(x, out, kh + 1, kw, sw, dw, pl)
    kf = kmat.reshape(-1)
    of = out.reshape(-1)
    step = sw * ci
    pairs = (oh + 1) // 2
    full, rest = divmod(ow, 12)
    blocks = full + (1 if rest > 8 else 0)  # 9 to 11 left: a 12-block overlapping the last
    tail = 0 if rest > 8 else -(-rest // 4) * 4  # else 4 or 8 columns in blocks of 4
    for unit in range(lo, hi):
        b = unit // pairs
        r = min(2 * (unit - b * pairs), oh - 2)
        # The last pair of an odd oh overlaps the one before, which may be another thread's:
        # it stores its second row only.
        first = r == 2 * (unit - b * pairs)
        nr = _row_taps(x, ring, direct, rowlen, wp, held, rows, bases, b, r - pt, kh + 1, 1, pl)
        obase = (b * oh + r) * ow * co
        for p0 in range(0, co, lanes):
            pc = min(p0, co - lanes)
            e = vload(bias, pc)
            for blk in range(blocks):
                j = min(blk * 12, ow - 12)
                a0 = (e, e, e, e, e, e, e, e, e, e, e, e)
                a0, a1 = _pair_taps_12(
                    kf, src, rows, bases, nr, kh, kw, ci, co, step, j * step, dw, pc, a0, a0
                )
                at = obase + j * co + pc
                if first:
                    _store_12x1(of, at, co, a0)
                _store_12x1(of, at + ow * co, co, a1)
            for j in range(ow - tail, ow, 4):
                c0 = (e, e, e, e)
                c0, c1 = _pair_taps_4(
                    kf, src, rows, bases, nr, kh, kw, ci, co, step, j * step, dw, pc, c0, c0
                )
                at = obase + j * co + pc
                if first:
                    _store_4x1(of, at, co, c0)
                _store_4x1(of, at + ow * co, co, c1)


@numba.njit(inline="always")
def _rows6_panel(vf, a, ci, uf, ub, width, cn, acc):  # type: ignore[no-untyped-def]
    # acc (a 6 x 4 block) + the 6 rows of vf at a, a + ci, ... (values 0:cn) times the cn rows
    # of a column panel, uf[ub + c * width : + width]: the Winograd products' register block.
    lanes = width // 4
    # One view per row: each loop step then addresses row + c, no sums to form.
    r0 = vf[a:]
    r1 = vf[a + ci :]
    r2 = vf[a + 2 * ci :]
    r3 = vf[a + 3 * ci :]
    r4 = vf[a + 4 * ci :]
    r5 = vf[a + 5 * ci :]
    kb = ub
    for c in range(cn):
        acc = _fma_6x4(
            vload(uf, kb), vload(uf, kb + lanes), vload(uf, kb + 2 * lanes),
            vload(uf, kb + 3 * lanes), sload(r0, c), sload(r1, c), sload(r2, c),
            sload(r3, c), sload(r4, c), sload(r5, c), acc,
        )  # fmt: skip
        kb += width
    return acc


@numba.njit(inline="always")
def _rows4_panel(vf, a, ci, uf, ub, width, cn, acc):  # type: ignore[no-untyped-def]
    # _rows6_panel for 4 rows (acc a 4 x 4 block).
    lanes = width // 4
    r0 = vf[a:]
    r1 = vf[a + ci :]
    r2 = vf[a + 2 * ci :]
    r3 = vf[a + 3 * ci :]
    kb = ub
    for c in range(cn):
        acc = _fma_4x4(
            vload(uf, kb), vload(uf, kb + lanes), vload(uf, kb + 2 * lanes),
            vload(uf, kb + 3 * lanes), sload(r0, c), sload(r1, c), sload(r2, c),
            sload(r3, c), acc,
        )  # fmt: skip
        kb += width
    return acc


@numba.njit(nogil=True, cache=True, boundscheck=False)
def batched_matmul(v, u, out, lo, hi):  # type: ignore[no-untyped-def]
    # out[xi] (nt, co) = v[xi] (nt, ci) @ U[xi] (ci, co), xi in lo:hi, co >= 4 lanes, nt >= 6:
    # the Winograd products. U comes in column panels, u (a*a, panels, ci, 4 lanes) (see
    # winograd_kernel_panels), so each panel is read as one contiguous stream: read from a
    # (ci, co) matrix its rows sit co values apart and share a few cache sets (measured, one
    # core: 14x14x256's products 133 -> 146 GF/s, 7x7x512's at N8 99 -> 149). Blocks of 6 rows
    # x 4 vectors of columns keep 24 accumulators in registers while the ci broadcasts of v go
    # by (OpenBLAS, which packs u[xi] again for each product, ran these at 102-107 GF/s a core).
    _, nt, ci = v.shape
    panels, width = u.shape[1], u.shape[3]
    co = out.shape[2]
    vf = v.reshape(-1)
    uf = u.reshape(-1)
    of = out.reshape(-1)
    # Blocks of 6 rows; 1 to 4 left over go in one block of 4 rows (overlapping the one
    # before when fewer), 5 in a block of 6 overlapping the one before (measured, prepared
    # F(2x2) on N1 7x7x512, 16 tiles: 6+6+4 rows, whole call 0.73-0.75 ms against 0.79 for
    # 6+6+6; N1 14x14x256, 49 tiles, 0.53 against 0.57).
    rest = nt % 6
    blocks = nt // 6 + (1 if rest == 5 else 0)
    for xi in range(lo, hi):
        vb = xi * nt * ci
        ob = xi * nt * co
        for panel in range(panels):
            pc = min(panel * width, co - width)
            ub = (xi * panels + panel) * ci * width
            # Past APART_CHANNELS each chunk of input channels sums from zero in the registers
            # and is added to what the chunks before left (as _panel_rows_apart).
            if 0 < rest < 5:
                t0 = nt - 4
                at = ob + t0 * co + pc
                for c0 in range(0, ci, APART_CHANNELS):
                    cn = min(APART_CHANNELS, ci - c0)
                    z = vzero(vf)
                    acc4 = _block_6x4(z, z, z, z)[:16]
                    va, ua = vb + t0 * ci + c0, ub + c0 * width
                    acc4 = _rows4_panel(vf, va, ci, uf, ua, width, cn, acc4)
                    if c0 > 0:
                        acc4 = _add_4x4(acc4, _load_rows(of, at, co, 4)[:16])
                    _store_4x4(of, at, co, acc4)
            for blk in range(blocks):
                t0 = min(blk * 6, nt - 6)
                at = ob + t0 * co + pc
                for c0 in range(0, ci, APART_CHANNELS):
                    cn = min(APART_CHANNELS, ci - c0)
                    z = vzero(vf)
                    acc = _block_6x4(z, z, z, z)
                    va, ua = vb + t0 * ci + c0, ub + c0 * width
                    acc = _rows6_panel(vf, va, ci, uf, ua, width, cn, acc)
                    if c0 > 0:
                        acc = _add_6x4(acc, _load_rows(of, at, co, 6))
                    _store_6x4(of, at, co, acc)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def flip_swap(w, out, lo, hi):  # type: ignore[no-untyped-def]
    # out[i, j, q, c] = w[kh-1-i, kw-1-j, c, q] for the taps lo:hi (flattened i, j): grad_x's
    # kernel. Plain scalar loops in 16 x 16 blocks, so both sides stay in cache (no vectors).
    kh, kw, ci, co = w.shape
    for tap in range(lo, hi):
        i = tap // kw
        j = tap - i * kw
        src = w[kh - 1 - i, kw - 1 - j]
        dst = out[i, j]
        for c0 in range(0, ci, 16):
            c1 = min(ci, c0 + 16)
            for q0 in range(0, co, 16):
                for q in range(q0, min(co, q0 + 16)):
                    for c in range(c0, c1):
                        dst[q, c] = src[c, q]


# --- Native parallel launches -------------------------------------------------------------
#
# Handing work to the Python thread pool costs about 90 us on these VMs (two futex wake-ups,
# each followed by a wait for the GIL; measured: a no-op parallel_for 83-90 us, the implicit
# GEMM of a 56x56 64 -> 256 1x1 layer 0.52 ms on two cores against 0.36 for one core's half).
# numba's OpenMP (or TBB) threading layer hands a region to its workers in about 2 us without
# the GIL, so the compiled kernels below run their row ranges through it: each wrapper takes
# pieces from an atomic counter, so a core slowed by other programs takes fewer of them.
# Work that calls BLAS stays on the Python pool.


@intrinsic
def _take(typingctx: Any, counter: Any) -> Any:
    """``counter[0] += 1`` atomically; returns the value before."""
    sig = types.int64(counter)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        data = context.make_array(counter)(context, builder, args[0]).data
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", data, one, "monotonic")

    return sig, codegen


@numba.njit(inline="always")
def _piece(n, pieces, p):  # type: ignore[no-untyped-def]
    # Piece p of range(n) cut in `pieces`, the longer ones first: when the lengths differ by
    # one, the cores finish together (3- and 4-row pieces taken in turn left one core 16 rows
    # of 28 and the other 12: a 3x3 stride-2 layer 15% slower).
    q, r = divmod(n, pieces)
    lo = p * q + min(p, r)
    return lo, lo + q + (1 if p < r else 0)


_par = numba.njit(nogil=True, cache=True, parallel=True)


@_par
def _conv_rows_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            conv_rows(*args, lo, hi)
            p = _take(counter)


@_par
def _conv_rows_narrow_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            conv_rows_narrow(*args, lo, hi)
            p = _take(counter)


@_par
def _conv_rows_narrow_pairs_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            conv_rows_narrow_pairs(*args, lo, hi)
            p = _take(counter)


@_par
def _depthwise_rows_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            depthwise_rows(*args, lo, hi)
            p = _take(counter)


@_par
def _depthwise_3x3_rows_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            depthwise_3x3_rows(*args, lo, hi)
            p = _take(counter)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _small_products(v, u, out, lo, hi):  # type: ignore[no-untyped-def]
    # batched_matmul for fewer than 6 tiles (a tail block): out[xi] = v[xi] @ U[xi], U in
    # column panels (a later panel overlapping an earlier one recomputes those columns whole).
    # Past APART_CHANNELS each chunk of input channels sums apart in part, then adds to row.
    _, nt, ci = v.shape
    panels, width = u.shape[1], u.shape[3]
    co = out.shape[2]
    part = np.empty(width, out.dtype)
    for xi in range(lo, hi):
        for t in range(nt):
            for panel in range(panels):
                pc = min(panel * width, co - width)
                row = out[xi, t, pc : pc + width]
                row[:] = 0.0
                for c0 in range(0, ci, APART_CHANNELS):
                    part[:] = 0.0
                    for c in range(c0, min(ci, c0 + APART_CHANNELS)):
                        s = v[xi, t, c]
                        krow = u[xi, panel, c]
                        for o in range(width):
                            part[o] += s * krow[o]
                    for o in range(width):
                        row[o] += part[o]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_blocks(x, pt, pl, m, th, tw, u, bias, out, block, total, work, lo, hi):  # type: ignore[no-untyped-def]
    # Blocks lo:hi of ``block`` tiles (of ``total``): input transform, the a*a products with
    # U (in column panels, see winograd_kernel_panels) and output transform, in one compiled
    # call; ``work`` holds one block's V and M. Needs c_in >= lanes, c_out >= 4 lanes.
    a = m + 2
    c_in, c_out = x.shape[3], out.shape[3]
    for bi in range(lo, hi):
        t0 = bi * block
        nt = min(block, total - t0)
        v = work[: a * a * nt * c_in].reshape(a * a, nt, c_in)
        mm = work[a * a * block * c_in : a * a * (block * c_in + nt * c_out)].reshape(
            a * a, nt, c_out
        )
        winograd_input(x, pt, pl, m, th, tw, t0, 0, nt, v)
        if nt >= 6:
            batched_matmul(v, u, mm, 0, a * a)
        else:
            _small_products(v, u, mm, 0, a * a)
        winograd_output(mm, bias, out, m, th, tw, t0, 0, nt)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_position_products(k9, kron, u, v, mm, lo, hi):  # type: ignore[no-untyped-def]
    # The split schedule's share of positions lo:hi: U = G g G^T there, then M = V @ U there.
    winograd_kernel_panels(k9, kron, u, lo, hi)
    batched_matmul(v, u, mm, lo, hi)


# G (a x 3) applied to 3 values, F(4x4, 3x3)'s and F(2x2, 3x3)'s written out: U = G g G^T as
# two passes over the taps, 108 (F(4x4)) or 28 (F(2x2)) vector operations for the 36 or 16
# positions, where kron(G, G) @ g takes 9 multiply-adds per position (324 or 144).
@numba.njit(inline="always")
def _g6(g0, g1, g2):  # type: ignore[no-untyped-def]
    return (
        _g6_at(0, g0, g1, g2), _g6_at(1, g0, g1, g2), _g6_at(2, g0, g1, g2),
        _g6_at(3, g0, g1, g2), _g6_at(4, g0, g1, g2), _g6_at(5, g0, g1, g2),
    )  # fmt: skip


@numba.njit(inline="always")
def _g4(g0, g1, g2):  # type: ignore[no-untyped-def]
    return (
        _g4_at(0, g0, g1, g2),
        _g4_at(1, g0, g1, g2),
        _g4_at(2, g0, g1, g2),
        _g4_at(3, g0, g1, g2),
    )


@numba.njit(inline="always")
def _g6_at(r, g0, g1, g2):  # type: ignore[no-untyped-def]
    # Value r of G (F(4x4)'s, 6 x 3) times (g0, g1, g2): _g6 is all six.
    if r == 0:
        return g0
    if r == 1:
        return vmuls(vadd(vadd(g0, g2), g1), -1.0 / 3.0)
    if r == 2:
        return vmuls(vsub(vadd(g0, g2), g1), 1.0 / 3.0)
    if r == 3:
        return vmuls(vfmas(g2, 4.0, vfmas(g1, 2.0, g0)), 1.0 / 15.0)
    if r == 4:
        return vmuls(vfmas(g0, -16.0, vfmas(g1, 8.0, vmuls(g2, -4.0))), 1.0 / 15.0)
    return g2


@numba.njit(inline="always")
def _g4_at(r, g0, g1, g2):  # type: ignore[no-untyped-def]
    # Value r of G (F(2x2)'s, 4 x 3) times (g0, g1, g2): _g4 is all four.
    if r == 0:
        return g0
    if r == 3:
        return g2
    s = vmuls(vadd(g0, g2), 0.5)
    h = vmuls(g1, 0.5)
    return vadd(s, h) if r == 1 else vsub(s, h)


@numba.njit(inline="always")
def _u_row(g, m, r, lo, hi, uf, ub, pitch):  # type: ignore[no-untyped-def]
    # Row r of U = G g G^T (positions a*r : a*r + a) for one vector of pairs, g its 9 taps:
    # position xi to uf[ub + xi * pitch] for xi in lo:hi. The same values as _u_vector.
    if m == 4:
        c0 = _g6_at(r, g[0], g[3], g[6])
        c1 = _g6_at(r, g[1], g[4], g[7])
        c2 = _g6_at(r, g[2], g[5], g[8])
        row = _g6(c0, c1, c2)
        for s in numba.literal_unroll((0, 1, 2, 3, 4, 5)):
            if lo <= 6 * r + s < hi:
                vstore(uf, ub + (6 * r + s) * pitch, row[s])
    else:
        row4 = _g4(
            _g4_at(r, g[0], g[3], g[6]), _g4_at(r, g[1], g[4], g[7]), _g4_at(r, g[2], g[5], g[8])
        )
        for s in numba.literal_unroll((0, 1, 2, 3)):
            if lo <= 4 * r + s < hi:
                vstore(uf, ub + (4 * r + s) * pitch, row4[s])


@numba.njit(inline="always")
def _u_vector(kf, q, p, m, uf, ub, pitch):  # type: ignore[no-untyped-def]
    # U = G g G^T at every position for one vector of (c_in, c_out) pairs, the 9 taps at
    # kf[p + tap * q]: position xi to uf[ub + xi * pitch].
    g = _taps9(kf, q, p)
    if m == 4:
        c0 = _g6(g[0], g[3], g[6])  # G along the kernel's rows, one column of taps at a time
        c1 = _g6(g[1], g[4], g[7])
        c2 = _g6(g[2], g[5], g[8])
        for r in numba.literal_unroll((0, 1, 2, 3, 4, 5)):  # then along its columns
            row = _g6(c0[r], c1[r], c2[r])
            for s in numba.literal_unroll((0, 1, 2, 3, 4, 5)):
                vstore(uf, ub + (6 * r + s) * pitch, row[s])
    else:
        c0 = _g4(g[0], g[3], g[6])
        c1 = _g4(g[1], g[4], g[7])
        c2 = _g4(g[2], g[5], g[8])
        for r in numba.literal_unroll((0, 1, 2, 3)):
            row = _g4(c0[r], c1[r], c2[r])
            for s in numba.literal_unroll((0, 1, 2, 3)):
                vstore(uf, ub + (4 * r + s) * pitch, row[s])


@numba.njit(inline="always")
def _load_rows(arr, at, pitch, rows):  # type: ignore[no-untyped-def]
    # A 6 x 4 register block from arr (rows 6) or its first 4 rows (rows 4), as _store_6x4 and
    # _store_4x4 write them.
    n = VECTOR_BYTES // arr.itemsize
    r0 = (vload(arr, at), vload(arr, at + n), vload(arr, at + 2 * n), vload(arr, at + 3 * n))
    b = at + pitch
    r1 = (vload(arr, b), vload(arr, b + n), vload(arr, b + 2 * n), vload(arr, b + 3 * n))
    b += pitch
    r2 = (vload(arr, b), vload(arr, b + n), vload(arr, b + 2 * n), vload(arr, b + 3 * n))
    b += pitch
    r3 = (vload(arr, b), vload(arr, b + n), vload(arr, b + 2 * n), vload(arr, b + 3 * n))
    if rows == 4:
        return r0 + r1 + r2 + r3 + r3 + r3
    b += pitch
    r4 = (vload(arr, b), vload(arr, b + n), vload(arr, b + 2 * n), vload(arr, b + 3 * n))
    b += pitch
    r5 = (vload(arr, b), vload(arr, b + n), vload(arr, b + 2 * n), vload(arr, b + 3 * n))
    return r0 + r1 + r2 + r3 + r4 + r5


@numba.njit(inline="always")
def _panel_rows(vf, vb, ci, uf, ub, width, of, ob, co, nt, cn, add):  # type: ignore[no-untyped-def]
    # of[ob + t*co : + width] = (of's values if add, else 0) + sum over c < cn of
    # vf[vb + t*ci + c] * uf[ub + c*width : + width], for the nt rows t: blocks of 6 rows x 4
    # vectors in registers, then one of 4 rows and single rows (no block overlaps another, so
    # the rows can add to what earlier chunks of c_in left).
    lanes = width // 4
    z = vzero(vf)
    full = nt - nt % 6
    for t0 in range(0, full, 6):
        acc = _load_rows(of, ob + t0 * co, co, 6) if add else _block_6x4(z, z, z, z)
        acc = _rows6_panel(vf, vb + t0 * ci, ci, uf, ub, width, cn, acc)
        _store_6x4(of, ob + t0 * co, co, acc)
    t0 = full
    if nt - t0 >= 4:
        acc4 = _load_rows(of, ob + t0 * co, co, 4)[:16] if add else _block_6x4(z, z, z, z)[:16]
        acc4 = _rows4_panel(vf, vb + t0 * ci, ci, uf, ub, width, cn, acc4)
        _store_4x4(of, ob + t0 * co, co, acc4)
        t0 += 4
    for t in range(t0, nt):  # 1 to 3 rows left
        o = ob + t * co
        if add:
            e0, e1 = vload(of, o), vload(of, o + lanes)
            e2, e3 = vload(of, o + 2 * lanes), vload(of, o + 3 * lanes)
        else:
            e0, e1, e2, e3 = z, z, z, z
        r0 = vf[vb + t * ci :]
        kb = ub
        for c in range(cn):
            s = sload(r0, c)
            e0 = vfmas(vload(uf, kb), s, e0)
            e1 = vfmas(vload(uf, kb + lanes), s, e1)
            e2 = vfmas(vload(uf, kb + 2 * lanes), s, e2)
            e3 = vfmas(vload(uf, kb + 3 * lanes), s, e3)
            kb += width
        vstore(of, o, e0)
        vstore(of, o + lanes, e1)
        vstore(of, o + 2 * lanes, e2)
        vstore(of, o + 3 * lanes, e3)


@numba.njit(inline="always")
def _panel_rows_apart(vf, vb, ci, uf, ub, width, of, ob, co, nt, cn, tmp):  # type: ignore[no-untyped-def]
    # _panel_rows adding to of's values, the chunk summed apart first, from zero, in tmp (nt
    # rows of width): a sum of thousands of input channels then rounds as chunks of them, not
    # as one running total (F(4x4) by name, float32, error against the tolerance table's bound:
    # N1 7x7 8192 -> 128 1.40 -> 0.21, N4 8x8 2048 -> 64 1.19 -> 0.19). Up to APART_CHANNELS
    # the running total stays (its error 0.30 on N1 7x7x512): summed apart in the registers,
    # the extra adds made that layer's forward 5% slower.
    _panel_rows(vf, vb, ci, uf, ub, width, tmp, 0, width, nt, cn, False)
    lanes = width // 4
    for t in range(nt):
        o = ob + t * co
        for vec in range(4):
            at = o + vec * lanes
            vstore(of, at, vadd(vload(of, at), vload(tmp, t * width + vec * lanes)))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_panel_products(k9, v, mm, m, chunk, work, lo, hi):  # type: ignore[no-untyped-def]
    # The split schedule by output channels: for column panels lo:hi (4 vectors of output
    # channels each; c_out a multiple of 4 lanes), M[xi][:, panel] = V[xi] @ U[xi][:, panel] at
    # every position xi. U is made chunk input channels at a time into work (a*a, chunk,
    # 4 lanes), which stays in L2 while the products read it: the kernel is read once in
    # all, and U never goes out to memory (the positions split, U made whole, wrote and read
    # it back through L3: 17-38 MB a call on 7x7x512). The positions lie a vector more than
    # chunk rows apart: at a power of two (F(2x2), 256 channels: 64 KB) each vector's a*a
    # stores fell in one L1 cache set and evicted each other (measured, N1 7x7x512 F(2x2),
    # both cores: U made in 0.57 -> 0.27 ms; whole calls 1.09-1.13 -> 1.02-1.05 ms).
    a = m + 2
    _, nt, ci = v.shape
    co = mm.shape[2]
    lanes = VECTOR_BYTES // v.itemsize
    width = 4 * lanes
    q = ci * co
    kf = k9.reshape(-1)
    vf = v.reshape(-1)
    of = mm.reshape(-1)
    pitch = chunk * width + lanes  # work: from one position to the next (see above)
    if work.size < a * a * pitch:
        raise ValueError("winograd_panel_products: work holds fewer than winograd.u_chunk_values")
    # Past APART_CHANNELS each chunk's sum goes apart first, in the rows after U's chunk.
    tmp = work[a * a * pitch :]
    apart = ci > APART_CHANNELS and tmp.size >= nt * width
    for panel in range(lo, hi):
        pc = panel * width
        for c0 in range(0, ci, chunk):
            cn = min(chunk, ci - c0)
            for c in range(cn):  # (software prefetch of the next chunk's taps: no gain)
                for vec in range(4):
                    _u_vector(kf, q, (c0 + c) * co + pc + vec * lanes, m, work,
                              c * width + vec * lanes, pitch)  # fmt: skip
            for xi in range(a * a):
                vb, ob = xi * nt * ci + c0, xi * nt * co + pc
                if apart and c0 > 0:
                    _panel_rows_apart(vf, vb, ci, work, xi * pitch, width, of, ob, co, nt, cn, tmp)
                else:
                    _panel_rows(vf, vb, ci, work, xi * pitch, width, of, ob, co, nt, cn, c0 > 0)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_channel_products(k9, v, mm, m, chunk, parts, work, lo, hi):  # type: ignore[no-untyped-def]
    # The split schedule by input channels, for layers with few tiles: item i of ``parts`` (lo:hi)
    # sums the products over its share of the input channels into its own part of M,
    # mm[i*a*a : (i+1)*a*a], for the caller to sum. U is made chunk input channels
    # at a time for all of c_out into work (c_out/(4 lanes) panels of (a*a, chunk, 4 lanes)),
    # so each of the kernel's 9 taps is read as one contiguous run of rows: by column panels
    # (winograd_panel_products) each row is read in 256-byte pieces 2 KB apart, which ran at
    # about 10 GB/s against 27 here (measured, one thread a half, N1 7x7x512 F(4x4): U made in
    # 0.49 ms against 1.0). Each part's M (a*a, nt, c_out) stays in L2 while the chunks add to it.
    a = m + 2
    _, nt, ci = v.shape
    co = mm.shape[2]
    lanes = VECTOR_BYTES // v.itemsize
    width = 4 * lanes
    panels = co // width
    q = ci * co
    kf = k9.reshape(-1)
    vf = v.reshape(-1)
    pitch = chunk * width + lanes  # work: from one position to the next (as by panels)
    pstride = a * a * pitch  # from one panel to the next
    if work.size < panels * pstride:
        raise ValueError("winograd_channel_products: work holds fewer than winograd.u_chunk_values")
    tmp = work[panels * pstride :]  # as in winograd_panel_products
    for item in range(lo, hi):
        of = mm[item * a * a : (item + 1) * a * a].reshape(-1)
        c_lo, c_hi = item * ci // parts, (item + 1) * ci // parts
        apart = c_hi - c_lo > APART_CHANNELS and tmp.size >= nt * width
        if c_hi == c_lo:  # more parts than input channels: this one adds nothing
            of[:] = 0.0
        for c0 in range(c_lo, c_hi, chunk):
            cn = min(chunk, c_hi - c0)
            for c in range(cn):
                row = (c0 + c) * co
                for panel in range(panels):
                    for vec in range(4):
                        _u_vector(kf, q, row + panel * width + vec * lanes, m, work,
                                  panel * pstride + c * width + vec * lanes, pitch)  # fmt: skip
            for panel in range(panels):
                for xi in range(a * a):
                    ub = panel * pstride + xi * pitch
                    ob = xi * nt * co + panel * width
                    vb = xi * nt * ci + c0
                    if apart and c0 > c_lo:
                        _panel_rows_apart(vf, vb, ci, work, ub, width, of, ob, co, nt, cn, tmp)
                    else:
                        _panel_rows(vf, vb, ci, work, ub, width, of, ob, co, nt, cn, c0 > c_lo)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_input_into(x, pt, pl, m, th, tw, t0, v, lo, hi):  # type: ignore[no-untyped-def]
    # winograd_input with the tile range last, as parallel() passes it.
    winograd_input(x, pt, pl, m, th, tw, t0, lo, hi, v)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def batched_matmul_tn(v, g, du, lo, hi):  # type: ignore[no-untyped-def]
    # du[xi] (ci, co) = v[xi]^T (ci, nt) @ g[xi] (nt, co), xi in lo:hi, ci >= 6, co >= 4 lanes:
    # the Winograd weight gradient's products. Blocks of 6 input channels x 4 vectors of
    # output channels stay in registers while the nt tiles go by, each 6 consecutive values of
    # v times 4 vectors of g.
    _, nt, ci = v.shape
    co = g.shape[2]
    lanes = VECTOR_BYTES // v.itemsize
    vf = v.reshape(-1)
    gf = g.reshape(-1)
    df = du.reshape(-1)
    for xi in range(lo, hi):
        vb = xi * nt * ci
        gb = xi * nt * co
        db = xi * ci * co
        for p0 in range(0, co, 4 * lanes):
            pc = min(p0, co - 4 * lanes)
            for r0_ in range(0, ci, 6):
                r0 = min(r0_, ci - 6)
                z = vzero(vf)
                acc = _block_6x4(z, z, z, z)
                a = vb + r0
                kb = gb + pc
                for _ in range(nt):
                    acc = _fma_6x4(
                        vload(gf, kb),
                        vload(gf, kb + lanes),
                        vload(gf, kb + 2 * lanes),
                        vload(gf, kb + 3 * lanes),
                        sload(vf, a),
                        sload(vf, a + 1),
                        sload(vf, a + 2),
                        sload(vf, a + 3),
                        sload(vf, a + 4),
                        sload(vf, a + 5),
                        acc,
                    )
                    a += ci
                    kb += co
                _store_6x4(df, db + r0 * co + pc, co, acc)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_grad_blocks(x, pt, pl, m, th, tw, go, block, total, du, work, lo, hi):  # type: ignore[no-untyped-def]
    # Blocks lo:hi of ``block`` tiles: V and dM of the block, then dU += V^T dM per position
    # into the partial dU ``du`` (a*a*c_in*c_out values); ``work`` holds V, dM and one
    # position's product. c_in >= lanes, c_out >= 4 lanes.
    a = m + 2
    ci, co = x.shape[3], go.shape[3]
    q = ci * co
    vo = 0
    mo = vo + a * a * block * ci
    to = mo + a * a * block * co
    tmp = work[to : to + q].reshape(1, ci, co)
    tf = work[to : to + q]
    for bi in range(lo, hi):
        t0 = bi * block
        nt = min(block, total - t0)
        v = work[vo : vo + a * a * nt * ci].reshape(a * a, nt, ci)
        gm = work[mo : mo + a * a * nt * co].reshape(a * a, nt, co)
        winograd_input(x, pt, pl, m, th, tw, t0, 0, nt, v)
        winograd_grad_output(go, m, th, tw, t0, 0, nt, gm)
        for xi in range(a * a):
            batched_matmul_tn(v[xi : xi + 1], gm[xi : xi + 1], tmp, 0, 1)
            d = du[xi * q : (xi + 1) * q]
            for i in range(q):
                d[i] += tf[i]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_grad_items(x, pt, pl, m, th, tw, go, block, total, parts, work, lo, hi):  # type: ignore[no-untyped-def]
    # Work items lo:hi of parts.shape[0]: item i sums its fixed run of the blocks of ``block``
    # tiles (winograd_grad_blocks, in order) into its own row of ``parts``, (items, a*a*q):
    # the same sums in the same order whichever thread ran it, so dU is the same on every
    # call (per-thread sums took blocks in whatever order the threads reached them).
    a = m + 2
    q = x.shape[3] * go.shape[3]
    items = parts.shape[0]
    blocks = -(-total // block)
    for item in range(lo, hi):
        b0, b1 = _piece(blocks, items, item)
        row = parts[item]
        for t in range(a * a * q):
            row[t] = 0.0
        winograd_grad_blocks(x, pt, pl, m, th, tw, go, block, total, row, work, b0, b1)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_kernel_adjoint(kron, parts, dw, lo, hi):  # type: ignore[no-untyped-def]
    # dw (9, q) = kron^T (9, a*a) @ dU, dU the sum of the rows of ``parts`` (P, >= a*a*q) each
    # read as (a*a, q): G^T dU G for the vectors lo:hi of q (q >= lanes).
    q = dw.shape[1]
    aa = kron.shape[0]
    lanes = VECTOR_BYTES // dw.itemsize
    df = dw.reshape(-1)
    for vi in range(lo, hi):
        p = min(vi * lanes, q - lanes)
        z = vzero(df)
        c0, c1, c2, c3, c4, c5, c6, c7, c8 = z, z, z, z, z, z, z, z, z
        for part in range(parts.shape[0]):
            pf = parts[part]
            for xi in range(aa):
                d = vload(pf, xi * q + p)
                c0 = vfmas(d, kron[xi, 0], c0)
                c1 = vfmas(d, kron[xi, 1], c1)
                c2 = vfmas(d, kron[xi, 2], c2)
                c3 = vfmas(d, kron[xi, 3], c3)
                c4 = vfmas(d, kron[xi, 4], c4)
                c5 = vfmas(d, kron[xi, 5], c5)
                c6 = vfmas(d, kron[xi, 6], c6)
                c7 = vfmas(d, kron[xi, 7], c7)
                c8 = vfmas(d, kron[xi, 8], c8)
        vstore(df, p, c0)
        vstore(df, q + p, c1)
        vstore(df, 2 * q + p, c2)
        vstore(df, 3 * q + p, c3)
        vstore(df, 4 * q + p, c4)
        vstore(df, 5 * q + p, c5)
        vstore(df, 6 * q + p, c6)
        vstore(df, 7 * q + p, c7)
        vstore(df, 8 * q + p, c8)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def winograd_grad_output_into(go, m, th, tw, t0, gm, lo, hi):  # type: ignore[no-untyped-def]
    # winograd_grad_output with the tile range last, as parallel() passes it.
    winograd_grad_output(go, m, th, tw, t0, lo, hi, gm)


@_par
def _winograd_grad_items_par(args, n, pieces, threads, counter, work):  # type: ignore[no-untyped-def]
    for t in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_grad_items(*args, work[t], lo, hi)
            p = _take(counter)


@_par
def _batched_matmul_tn_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            batched_matmul_tn(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_kernel_adjoint_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_kernel_adjoint(*args, lo, hi)
            p = _take(counter)


@_par
def _flip_swap_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            flip_swap(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_grad_output_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_grad_output_into(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_blocks_par(args, n, pieces, threads, counter, work):  # type: ignore[no-untyped-def]
    for t in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_blocks(*args, work[t], lo, hi)
            p = _take(counter)


@_par
def _winograd_input_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_input_into(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_output_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_output(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_kernel_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_kernel(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_kernel_panels_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_kernel_panels(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_position_products_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_position_products(*args, lo, hi)
            p = _take(counter)


@_par
def _direct_grad_kernel_par(args, n, pieces, threads, counter, work):  # type: ignore[no-untyped-def]
    for t in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            direct_grad_kernel(*args, work[t], lo, hi)
            p = _take(counter)


@_par
def _direct_rows_par(args, n, pieces, threads, counter, work):  # type: ignore[no-untyped-def]
    for t in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            direct_rows(*args, work[t], lo, hi)
            p = _take(counter)


@_par
def _batched_matmul_par(args, n, pieces, threads, counter):  # type: ignore[no-untyped-def]
    for _ in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            batched_matmul(*args, lo, hi)
            p = _take(counter)


@_par
def _winograd_panel_products_par(args, n, pieces, threads, counter, work):  # type: ignore[no-untyped-def]
    for t in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_panel_products(*args, work[t], lo, hi)
            p = _take(counter)


@_par
def _winograd_channel_products_par(args, n, pieces, threads, counter, work):  # type: ignore[no-untyped-def]
    for t in numba.prange(threads):
        p = _take(counter)
        while p < pieces:
            lo, hi = _piece(n, pieces, p)
            winograd_channel_products(*args, work[t], lo, hi)
            p = _take(counter)


_NATIVE = {
    batched_matmul: _batched_matmul_par,
    conv_rows: _conv_rows_par,
    conv_rows_narrow: _conv_rows_narrow_par,
    conv_rows_narrow_pairs: _conv_rows_narrow_pairs_par,
    depthwise_rows: _depthwise_rows_par,
    depthwise_3x3_rows: _depthwise_3x3_rows_par,
    winograd_input_into: _winograd_input_par,
    winograd_output: _winograd_output_par,
    winograd_kernel: _winograd_kernel_par,
    winograd_kernel_panels: _winograd_kernel_panels_par,
    winograd_position_products: _winograd_position_products_par,
    batched_matmul_tn: _batched_matmul_tn_par,
    winograd_kernel_adjoint: _winograd_kernel_adjoint_par,
    winograd_grad_output_into: _winograd_grad_output_par,
    flip_swap: _flip_swap_par,
}
_NATIVE_WITH_WORK = {
    winograd_blocks: _winograd_blocks_par,
    winograd_grad_items: _winograd_grad_items_par,
    winograd_panel_products: _winograd_panel_products_par,
    winograd_channel_products: _winograd_channel_products_par,
    direct_rows: _direct_rows_par,
    direct_grad_kernel: _direct_grad_kernel_par,
}


@_par
def _probe(out):  # type: ignore[no-untyped-def]
    for i in numba.prange(out.shape[0]):
        out[i] = i


_native_pid: int | None = None  # the process that started numba's threads; None: not yet
_native_ok = False
_native_lock = threading.Lock()

# OpenMP's workers spin this many times for the next region before they sleep: about 0.1-0.2 ms
# here, enough to bridge the regions of one call (libgomp's default, 300000, kept a core busy for
# several ms and halved the speed of the BLAS work that ran next on our own threads).
_GOMP_SPINCOUNT = "10000"


def native_ready() -> bool:
    """True if numba's threads run regions here: a thread-safe layer (OpenMP or TBB, not the
    workqueue), in the process that started them (GNU OpenMP aborts a forked child)."""
    global _native_pid, _native_ok
    with _native_lock:
        if _native_pid is None:
            _native_pid = os.getpid()
            ours = not any(k in os.environ for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"))
            if ours:  # libgomp reads it once, when numba loads it for the first region
                os.environ["GOMP_SPINCOUNT"] = _GOMP_SPINCOUNT
            try:
                _probe(np.zeros(2))
                _native_ok = numba.threading_layer() in ("omp", "tbb")
            except (ImportError, OSError, ValueError):  # no layer loads: the Python pool works
                _native_ok = False
            finally:
                if ours:
                    del os.environ["GOMP_SPINCOUNT"]
        return _native_ok and _native_pid == os.getpid()


def parallel(
    kernel: Any,
    args: tuple[Any, ...],
    n: int,
    *,
    min_items: int = 1,
    pieces_per_worker: int = 4,
    work: tuple[int, np.dtype, int] | None = None,
    native: bool = True,
) -> None:
    """``kernel(*args, lo, hi)`` over pieces of ``range(n)`` on all cores, as
    :func:`~patchconv.algorithms._runtime.parallel_for` does, but through numba's threads where
    the kernel has a native wrapper and the layer allows it. ``native=False`` keeps it on the
    Python pool (for a step followed by BLAS work there: numba's workers spin a while after
    each region).

    With ``work = (size, dtype, limit)`` each thread also gets a work buffer of ``size``
    elements of its own, ``kernel(*args, buffer, lo, hi)``, for its scratch values."""
    workers, pieces = piece_plan(n, min_items, pieces_per_worker)
    buffers = None
    if work is not None:
        size = -(-work[0] // 16) * 16  # every thread's buffer on a cache line of its own
        flat = scratch("simd.work", workers * size, work[1], limit=work[2])
        buffers = flat.reshape(workers, size)
    table: dict[Any, Any] = _NATIVE_WITH_WORK if work is not None else _NATIVE
    wrapper = table.get(kernel) if native else None
    if workers > 1 and wrapper is not None and not in_pool_thread() and native_ready():
        counter = np.zeros(1, np.int64)
        if buffers is None:
            wrapper(args, n, pieces, workers, counter)
        else:
            wrapper(args, n, pieces, workers, counter, buffers)
        return
    slots: dict[int, int] = {}
    lock = threading.Lock()

    def piece(lo: int, hi: int) -> None:
        if buffers is None:
            kernel(*args, lo, hi)
            return
        with lock:  # this thread's buffer: at most `workers` threads take pieces
            row = slots.setdefault(threading.get_ident(), len(slots))
        kernel(*args, buffers[row], lo, hi)

    parallel_for(
        piece, n, min_items=min_items, pieces_per_worker=pieces_per_worker, workers=workers
    )
