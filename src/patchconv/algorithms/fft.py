"""Large kernels by the cross-correlation theorem: a product of spectra per frequency.

For a stride-1 layer, the valid correlation of the padded input ``xp`` (``oh + ekh - 1`` rows)
with a kernel of effective height ``ekh = (kh - 1) * dh + 1`` equals the circular correlation
on any transform size ``F >= oh + ekh - 1`` (no output index wraps around), and a circular
correlation is ``irfft2(rfft2(xp) * conj(rfft2(kernel)))``. With channels, every frequency is
a small matrix product ``X[f] (n, c_in) @ conj(W[f]) (c_in, c_out)``. The work is
``O(n * c * F log F)`` for the transforms plus ``8 * n * c_in * c_out`` real multiply-adds per
frequency, against ``kh * kw`` per output for the patch matrix: it wins for large kernels.

Transforms use ``scipy.fft`` (threaded, ``workers``) when it is installed, else ``numpy.fft``;
float32 stays complex64 throughout. Images are processed in chunks under the workspace limit,
the cores taking images in parallel (one image alone gets scipy's threaded transforms).
Rounding: errors scale with the largest input times the kernel's sum of magnitudes, about
1e-6 of the largest output in float32 for the suite's 11x11 layer (float64: 1e-15).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from patchconv._spec import ConvSpec
from patchconv.algorithms._runtime import n_workers, parallel_for

__all__ = ["applies", "fast_length", "forward", "layout", "past_limit"]


def applies(spec: ConvSpec) -> str | None:
    """None if the FFT algorithm handles ``spec``, else the reason it does not."""
    if spec.strides != (1, 1):
        return f"fft needs strides 1; got {spec.strides}"
    if spec.groups != 1:
        return f"fft needs groups 1; got {spec.groups}"
    return None


def fast_length(n: int) -> int:
    """The smallest 2, 3, 5-smooth integer >= n (cheap transform sizes)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _fft_funcs() -> tuple[Callable[..., Any], Callable[..., Any], dict[str, Any]]:
    try:
        import scipy.fft as sfft

        return sfft.rfft2, sfft.irfft2, {"workers": n_workers()}
    except ImportError:  # pragma: no cover - scipy is optional
        return np.fft.rfft2, np.fft.irfft2, {}


def sizes(spec: ConvSpec) -> tuple[int, int, int, int]:
    """(padded rows, padded cols, transform rows, transform cols)."""
    ekh = (spec.kh - 1) * spec.dilation[0] + 1
    ekw = (spec.kw - 1) * spec.dilation[1] + 1
    hp, wp = spec.oh + ekh - 1, spec.ow + ekw - 1
    return hp, wp, fast_length(hp), fast_length(wp)


def _bytes(spec: ConvSpec, itemsize: int, cb: int) -> tuple[int, int]:
    """(the kernel spectra of ``cb`` output channels, one image's transforms) in bytes."""
    _, _, fh, fw = sizes(spec)
    spectra = 2 * spec.c_in * cb * fh * (fw // 2 + 1) * 2 * itemsize  # the spectrum, as wmat
    return spectra, (spec.c_in + 2 * cb) * fh * fw * 2 * itemsize


def layout(spec: ConvSpec, itemsize: int, workspace_limit: int) -> tuple[int, int]:
    """(cores taking images, output channels a block) whose kernel spectra and images'
    transforms fit ``workspace_limit``: every channel and every core where they fit, else
    halved blocks of channels (each block transforms the images again), then fewer cores;
    (1, 1) may still pass a limit smaller than one channel and one image."""
    workers, cb = min(n_workers(), spec.n), spec.c_out

    def fits(cb: int, workers: int) -> bool:
        spectra, image = _bytes(spec, itemsize, cb)
        return spectra + workers * image <= workspace_limit

    while not fits(cb, workers) and (cb > 1 or workers > 1):
        workers, cb = (workers, (cb + 1) // 2) if cb > 1 else (workers - 1, cb)
    return workers, cb


def past_limit(spec: ConvSpec, itemsize: int, workspace_limit: int) -> int:
    """The bytes of FFT's smallest layout (one output channel, one image) where even that
    passes ``workspace_limit``, else 0."""
    spectra, image = _bytes(spec, itemsize, 1)
    return spectra + image if spectra + image > workspace_limit else 0


def forward(
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """NHWC ``x``, HWIO ``kernel`` -> NHWC output, stride 1 (any padding and dilation), its
    kernel spectra and the images' transforms under ``workspace_limit`` (see :func:`layout`)."""
    rfft2, irfft2, opts = _fft_funcs()
    dtype = x.dtype
    cdtype = np.result_type(dtype, np.complex64)
    hp, wp, fh, fw = sizes(spec)
    dh, dw = spec.dilation
    (pt, _), (pl, _) = spec.pads
    fr = fw // 2 + 1
    nf = fh * fr
    workers, cb = layout(spec, np.dtype(dtype).itemsize, workspace_limit)
    spectra, per_image = _bytes(spec, np.dtype(dtype).itemsize, cb)
    room = max(0, workspace_limit - spectra)
    step = max(1, min(-(-spec.n // workers), room // workers // max(1, per_image)))
    out = np.empty((spec.n, spec.oh, spec.ow, spec.c_out), dtype=dtype)
    rows = min(spec.h, hp - pt)
    cols = min(spec.w, wp - pl)
    if workers > 1 and "workers" in opts:
        opts = {**opts, "workers": 1}  # the cores take images, not transform threads

    for c0 in range(0, spec.c_out, cb):
        c1 = min(spec.c_out, c0 + cb)
        # Kernel spectrum, conjugated for a correlation: (c_in, cb, fh, fr) -> per frequency.
        kpad = np.zeros((spec.c_in, c1 - c0, fh, fw), dtype=dtype)
        taps = kernel[..., c0:c1].transpose(2, 3, 0, 1)
        kpad[:, :, : (spec.kh - 1) * dh + 1 : dh, : (spec.kw - 1) * dw + 1 : dw] = taps
        wspec = rfft2(kpad, axes=(2, 3), **opts)  # (c_in, cb, fh, fr)
        del kpad
        np.conjugate(wspec, out=wspec)
        wmat = np.ascontiguousarray(wspec.reshape(spec.c_in, c1 - c0, nf).transpose(2, 0, 1))
        del wspec  # wmat: (F, c_in, cb)

        def chunk(b0: int, b1: int, wmat: np.ndarray = wmat, c0: int = c0, c1: int = c1) -> None:
            nb = b1 - b0
            xp = np.zeros((nb, spec.c_in, fh, fw), dtype=dtype)  # NCHW, zero padded
            xp[:, :, pt : pt + rows, pl : pl + cols] = x[b0:b1, :rows, :cols].transpose(0, 3, 1, 2)
            xs = rfft2(xp, axes=(2, 3), **opts).reshape(nb, spec.c_in, nf)  # (nb, c_in, F)
            del xp
            xf = np.ascontiguousarray(xs.transpose(2, 0, 1))  # (F, nb, c_in)
            del xs
            yf = np.matmul(xf, wmat).astype(cdtype, copy=False)  # (F, nb, cb)
            del xf
            ys = np.ascontiguousarray(yf.transpose(1, 2, 0)).reshape(nb, c1 - c0, fh, fr)
            del yf
            y = irfft2(ys, s=(fh, fw), axes=(2, 3), **opts)  # (nb, cb, fh, fw)
            out[b0:b1, :, :, c0:c1] = y[:, :, : spec.oh, : spec.ow].transpose(0, 2, 3, 1)

        def images(lo: int, hi: int, chunk: Callable[[int, int], None] = chunk) -> None:
            for b0 in range(lo, hi, step):
                chunk(b0, min(hi, b0 + step))

        parallel_for(images, spec.n, workers=workers, pieces_per_worker=1)
        del wmat, chunk, images  # chunk holds this block's wmat: freed before the next one
    if bias is not None:
        out += bias
    return out
