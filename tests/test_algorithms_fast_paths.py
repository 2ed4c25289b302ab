"""The round-2 fast paths: the compiled patch packing, the column-blocked depthwise loop (rows
wider than one block) and its register-blocked SIMD form, the few-large-tiles path of deep
layers and both Winograd schedules, each on configurations large enough to reach it. Without numba the same tests check the
NumPy fallbacks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv._patches import Tile, fill_patches, iter_tiles
from patchconv._spec import ConvSpec, conv_spec
from patchconv.algorithms import _runtime, gemm, winograd
from reference import conv2d_reference
from strategies import paddings


@settings(max_examples=60)
@given(
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    c_in=st.integers(1, 5),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=paddings(),
    budget=st.integers(1, 4000),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_packing_equals_the_slice_fill(
    n: int,
    hw: tuple[int, int],
    c_in: int,
    k: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    padding: object,
    budget: int,
    seed: int,
) -> None:
    """pack_patches writes exactly what fill_patches writes, for every tile of every shape."""
    kh, kw = k
    h = max(hw[0], (kh - 1) * dilation[0] + 1)
    w = max(hw[1], (kw - 1) * dilation[1] + 1)
    x = np.random.default_rng(seed).standard_normal((n, h, w, c_in)).astype(np.float32)
    spec = conv_spec(
        x.shape, (kh, kw, c_in, 2), None, strides=strides, padding=padding, dilation_rate=dilation
    )
    for tile in iter_tiles(spec, spec.patch_size * 4, budget):
        shape = (*tile.shape, 1, kh, kw, c_in)
        packed = np.full(shape, np.nan, dtype=np.float32)
        filled = np.full(shape, np.nan, dtype=np.float32)
        gemm.pack_patches(packed, x, spec, tile)
        fill_patches(filled, x, spec, tile)
        np.testing.assert_array_equal(packed, filled)


def test_packing_falls_back_for_non_contiguous_input() -> None:
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 4)).astype(np.float32)[..., ::2]
    spec = conv_spec(x.shape, (3, 3, 2, 1), None, padding="same")
    tile = Tile(0, 1, 0, 6, 0, 6)
    packed = np.empty((*tile.shape, 1, 3, 3, 2), dtype=np.float32)
    filled = np.empty_like(packed)
    gemm.pack_patches(packed, x, spec, tile)
    fill_patches(filled, x, spec, tile)
    np.testing.assert_array_equal(packed, filled)


@settings(max_examples=20)
@given(
    c=st.sampled_from([3, 8, 12]),
    w=st.integers(90, 200),
    k=st.integers(1, 7),
    stride_h=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from(["same", "valid"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_depthwise_column_blocks_match_the_reference(
    c: int, w: int, k: int, stride_h: int, dilation: int, padding: str, seed: int
) -> None:
    """Output rows wider than one column block (1024 values) are summed block by block (the
    loop for fewer channels than one SIMD vector)."""
    rng = np.random.default_rng(seed)
    h = (k - 1) * dilation + 3
    x = rng.standard_normal((1, h, w, c)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 1, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    options = {
        "strides": (stride_h, 1),
        "padding": padding,
        "dilation_rate": dilation,
        "groups": c,
    }
    out, plan = patchconv.conv2d(
        x, kernel, bias, algorithm="depthwise", return_plan=True, **options
    )
    assert plan.algorithm == "depthwise"
    assert_close(out, conv2d_reference(x, kernel, bias, **options), np.float32)


@settings(max_examples=60)
@given(
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    c_dtype=st.sampled_from(
        [
            (16, np.float32),
            (20, np.float32),
            (33, np.float32),
            (48, np.float32),
            (8, np.float64),
            (12, np.float64),
        ]
    ),
    k=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=paddings(),
    seed=st.integers(0, 2**32 - 1),
)
def test_depthwise_register_blocks_match_the_reference(
    n: int,
    hw: tuple[int, int],
    c_dtype: tuple[int, type],
    k: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    padding: object,
    seed: int,
) -> None:
    """The SIMD forward (at least one vector of channels): rows under and over 8 columns, the
    overlapping last block and last channel vector, taps in the padding on every side."""
    c, dtype = c_dtype
    kh, kw = k
    h = max(hw[0], (kh - 1) * dilation[0] + 1)
    w = max(hw[1], (kw - 1) * dilation[1] + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal((kh, kw, 1, c)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    options = {"strides": strides, "padding": padding, "dilation_rate": dilation, "groups": c}
    out, plan = patchconv.conv2d(
        x, kernel, bias, algorithm="depthwise", return_plan=True, **options
    )
    assert plan.algorithm == "depthwise"
    assert_close(out, conv2d_reference(x, kernel, bias, **options), dtype)


@pytest.mark.parametrize(
    ("shape", "c_out", "padding", "limit"),
    [
        ((2, 3, 3, 512), 160, "same", None),  # kernel matrix 2.9 MB > one tile: heavy path
        ((3, 4, 5, 300), 300, "valid", None),
        ((2, 3, 3, 512), 160, "same", 300_000),  # heavy path with tiles of single rows
    ],
)
def test_deep_layers_take_few_large_tiles_exactly(
    shape: tuple[int, int, int, int], c_out: int, padding: str, limit: int | None
) -> None:
    """The few-large-tiles path gives the values of the many-small-tiles path (which the
    property tests pin to the reference), forward and backward."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, shape[-1], c_out)) * 0.05).astype(np.float32)
    spec = conv_spec(x.shape, kernel.shape, None, padding=padding)
    assert gemm._kernel_heavy(spec, 4)
    opts: dict[str, object] = {"padding": padding, "algorithm": "gemm"}
    if limit is not None:
        opts["workspace_limit"] = limit
    g = rng.standard_normal(spec_out(spec)).astype(np.float32)
    out = patchconv.conv2d(x, kernel, **opts)
    got = patchconv.conv2d_backward(g, x, kernel, **opts)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gemm, "_kernel_heavy", lambda spec, itemsize: False)
        expected = patchconv.conv2d(x, kernel, **opts)
        ref = patchconv.conv2d_backward(g, x, kernel, **opts)
    assert_close(out, expected, np.float32)
    assert_close(got.grad_x, ref.grad_x, np.float32, grad=True)
    assert_close(got.grad_kernel, ref.grad_kernel, np.float32, grad=True)


def spec_out(spec: ConvSpec) -> tuple[int, int, int, int]:
    return (spec.n, spec.oh, spec.ow, spec.c_out)


@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(("c_in", "c_out"), [(6, 5), (20, 17), (16, 5), (8, 70)])
def test_winograd_products_split_by_position_or_by_tiles(
    m: int, split: bool, c_in: int, c_out: int
) -> None:
    """Both Winograd schedules (products split over the cores by transform position, or
    blocks of tiles per core) agree with the reference, with the transforms' loops (few
    channels) and their SIMD forms (a vector of channels or more, on either side), and the
    SIMD products (4 vectors of output channels or more)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 10, 11, c_in)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winograd, "_forward_splits", lambda *args: split)
        out = patchconv.conv2d(x, kernel, bias, padding="same", algorithm=f"winograd_f{m}")
    expected = conv2d_reference(x, kernel, bias, padding="same")
    assert_close(out, expected, np.float32)


@pytest.mark.skipif(winograd.kernels() is None, reason="the fused Winograd blocks need numba")
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    ("c_in", "c_out", "dtype"), [(16, 64, np.float32), (20, 70, np.float32), (8, 32, np.float64)]
)
def test_fused_winograd_blocks_match_the_reference(
    m: int, c_in: int, c_out: int, dtype: type, native: bool
) -> None:
    """Whole blocks in one compiled call (SIMD transforms, our products, a last block of
    fewer than 6 tiles, overlapping channel panels), on numba's threads or the Python pool."""
    from patchconv.algorithms import _simd

    rng = np.random.default_rng(c_out)
    x = rng.standard_normal((2, 13, 9, c_in)).astype(dtype)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    spec = conv_spec(x.shape, kernel.shape, bias.shape, padding="same")
    assert winograd._fused_blocks(spec, np.dtype(dtype))
    a = m + 2
    per_tile = a * a * (c_in + c_out) * np.dtype(dtype).itemsize
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winograd, "_forward_splits", lambda *args: False)
        if not native:
            mp.setattr(_simd, "native_ready", lambda: False)
        out = patchconv.conv2d(
            x,
            kernel,
            bias,
            padding="same",
            algorithm=f"winograd_f{m}",
            workspace_limit=7 * 2 * per_tile,  # blocks of 7 tiles: 24 tiles (F4) end with 3
        )
    assert_close(out, conv2d_reference(x, kernel, bias, padding="same"), dtype)


@pytest.mark.skipif(winograd.kernels() is None, reason="the Winograd weight gradient needs numba")
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("shape", "c_out", "padding"),
    [
        ((3, 17, 22, 6), 5, "same"),
        ((2, 9, 8, 4), 7, "valid"),
        ((1, 11, 13, 3), 2, ((2, 0), (1, 2))),
        ((2, 9, 10, 17), 16, "same"),  # the SIMD input transform
    ],
)
def test_winograd_weight_gradient_equals_the_patch_matrix_one(
    shape: tuple[int, int, int, int], c_out: int, padding: object, dtype: type, m: int
) -> None:
    """``G^T (sum over tiles of V^T @ A dY A^T) G`` gives ``patches^T @ grad_out``, with edge
    tiles cut by the output and blocks of tiles spread over the cores; the backward of a
    layer whose forward plan is Winograd takes it."""
    from patchconv import algorithms

    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((3, 3, shape[-1], c_out)).astype(dtype)
    spec = conv_spec(x.shape, kernel.shape, None, padding=padding)
    g = rng.standard_normal(spec_out(spec)).astype(dtype)
    _, expected = gemm.backward(g, x, kernel, spec, 2**28, need_x=False)
    assert expected is not None
    got = winograd.grad_kernel(g, x, spec, 2**28, m=m)
    assert got.dtype == dtype
    assert_close(got, expected, dtype, grad=True)
    _, via_backward, used = algorithms.backward(
        g, x, kernel, spec, 2**28, algorithm=f"winograd_f{m}"
    )
    assert used["grad_kernel"].startswith(f"winograd_f{m}")
    assert_close(via_backward, expected, dtype, grad=True)


def test_deep_layers_keep_the_patch_matrix_weight_gradient_unless_split() -> None:
    """A layer whose partial dU would pass 4 MB (14x14x256) keeps gemm for grad_kernel unless
    all its tiles fit one block (the split schedule) and there are enough of them."""
    spec = conv_spec((8, 14, 14, 256), (3, 3, 256, 256), None, padding="same")
    split = winograd.kernels() is not None and winograd.split_products(spec, 4, 4, 2**28)
    assert winograd.grad_kernel_applies(spec, 4, 2**28) == split
    assert not winograd.grad_kernel_applies(spec, 4, 2**20)  # V and dM over the workspace
    few = conv_spec((1, 14, 14, 256), (3, 3, 256, 256), None, padding="same")
    assert not winograd.grad_kernel_applies(few, 4, 2**28, m=2)  # 49 tiles: gemm is faster
    small = conv_spec((8, 28, 28, 128), (3, 3, 128, 128), None, padding="same")
    assert winograd.grad_kernel_applies(small, 4, 2**28) == (winograd.kernels() is not None)
    assert not winograd.grad_kernel_applies(small, 4, 2**20)  # partials over the workspace


@pytest.mark.skipif(winograd.kernels() is None, reason="the Winograd weight gradient needs numba")
def test_auto_takes_the_f2_weight_gradient_where_f4s_does_not_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """N8 7x7x256 under an F(4x4) forward plan: its 32 tiles are too few for F(4x4)'s split
    weight gradient, F(2x2)'s 128 are not. Under auto the weight gradient is F(2x2)'s; a
    request for winograd_f4 by name keeps F(4x4) or gemm."""
    from patchconv import algorithms

    rng = np.random.default_rng(12)
    x = rng.standard_normal((8, 7, 7, 256)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float32)
    g = rng.standard_normal((8, 7, 7, 256)).astype(np.float32)
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    assert not winograd.grad_kernel_applies(spec, 4, 2**28, m=4)
    assert winograd.grad_kernel_applies(spec, 4, 2**28, m=2)
    _, expected = gemm.backward(g, x, kernel, spec, 2**28, need_x=False)
    assert expected is not None
    real = algorithms.choose
    monkeypatch.setattr(  # auto's forward plan: F(4x4), whatever the cost model says here
        algorithms,
        "choose",
        lambda spec, algorithm, **kw: real(
            spec, "winograd_f4" if algorithm == "auto" else algorithm, **kw
        ),
    )
    for algorithm, taken in (("auto", "winograd_f2"), ("winograd_f4", "gemm")):
        _, got, used = algorithms.backward(
            g, x, kernel, spec, 2**28, algorithm=algorithm, need_grad_x=False
        )
        assert used["forward_plan"].algorithm == "winograd_f4"
        assert used["grad_kernel"].startswith(taken)
        assert_close(got, expected, np.float32, grad=True)


@pytest.mark.skipif(winograd.kernels() is None, reason="the Winograd weight gradient needs numba")
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(("c_in", "c_out", "dtype"), [(5, 6, np.float32), (17, 16, np.float32)])
def test_split_winograd_weight_gradient_equals_the_patch_matrix_one(
    m: int, c_in: int, c_out: int, dtype: type
) -> None:
    """The deep-layer schedule (one block of all tiles, products split by position), forced on
    a small layer: the loops and the SIMD transforms, edge tiles on both sides."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 9, 11, c_in)).astype(dtype)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    g = rng.standard_normal(spec_out(spec)).astype(dtype)
    _, expected = gemm.backward(g, x, kernel, spec, 2**28, need_x=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winograd, "split_products", lambda *args: True)
        mp.setattr(winograd, "_SPLIT_GRAD_MIN_TILES", 1)
        assert winograd.grad_kernel_applies(spec, 4, 2**28, m=m)
        got = winograd.grad_kernel(g, x, spec, 2**28, m=m)
    assert_close(got, expected, dtype, grad=True)


@pytest.mark.skipif(winograd.kernels() is None, reason="the compiled weight gradient needs numba")
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("split", [True, False])
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    ("c_in", "c_out", "dtype"), [(16, 64, np.float32), (20, 70, np.float32), (8, 32, np.float64)]
)
def test_compiled_winograd_weight_gradient_equals_the_patch_matrix_one(
    m: int, split: bool, native: bool, c_in: int, c_out: int, dtype: type
) -> None:
    """The weight gradient with every step compiled (our V^T dM products, G^T dU G from the
    per-thread partials): both schedules, blocks of 5 tiles (the last one shorter), channel
    counts that cut the 6-row and 4-vector blocks, on numba's threads or the Python pool."""
    from patchconv.algorithms import _simd

    rng = np.random.default_rng(c_out + m)
    x = rng.standard_normal((2, 9, 11, c_in)).astype(dtype)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    g = rng.standard_normal(spec_out(spec)).astype(dtype)
    _, expected = gemm.backward(g, x, kernel, spec, 2**28, need_x=False)
    assert winograd._native_grad(spec, np.dtype(dtype))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winograd, "split_products", lambda *args: split)
        if not native:
            mp.setattr(_simd, "native_ready", lambda: False)
        per_tile = (m + 2) ** 2 * (c_in + c_out) * np.dtype(dtype).itemsize
        limit = 4 * _runtime.n_workers() * 5 * per_tile  # blocks of 5 tiles
        got = winograd.grad_kernel(g, x, spec, limit, m=m)
    assert_close(got, expected, dtype, grad=True)


@pytest.mark.skipif(winograd.kernels() is None, reason="the SIMD transforms need numba")
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(("dtype", "c"), [(np.float32, 16), (np.float32, 21), (np.float64, 8)])
@pytest.mark.parametrize(("hw", "pads"), [((9, 11), (1, 1)), ((6, 5), (0, 2)), ((13, 7), (2, 0))])
def test_simd_winograd_transforms_equal_the_matrix_loops(
    m: int, dtype: type, c: int, hw: tuple[int, int], pads: tuple[int, int]
) -> None:
    """The written-out F(4x4)/F(2x2) transforms (input, output and the output's adjoint)
    equal the loops over TRANSFORMS' matrices, on edge tiles (zeros past the image, outputs past the edge dropped) and a sub-range of tiles
    of a later block (t0, lo, hi)."""
    kernels = winograd.kernels()
    assert kernels is not None
    rng = np.random.default_rng(m * c)
    bt, _, at = winograd.TRANSFORMS[m]
    a = m + 2
    h, w = hw
    pt, pl = pads
    oh, ow = h + 2 * pt - 2, w + 2 * pl - 2
    th, tw = -(-oh // m), -(-ow // m)
    total = 3 * th * tw
    t0 = 1
    nt = total - t0
    lo, hi = 1, nt - 1  # tiles t0+lo : t0+hi of a block that starts at tile t0
    x = rng.standard_normal((3, h, w, c)).astype(dtype)
    v_loop = np.zeros((a * a, nt, c), dtype)
    v_simd = np.zeros((a * a, nt, c), dtype)
    kernels["in"](x, bt.astype(dtype), pt, pl, m, th, tw, t0, lo, hi, v_loop)
    kernels["in_simd"](x, pt, pl, m, th, tw, t0, lo, hi, v_simd)
    assert_close(v_simd, v_loop, dtype)
    assert np.all(v_simd[:, :lo] == 0) and np.all(v_simd[:, hi:] == 0)
    mm = rng.standard_normal((a * a, nt, c)).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    out_loop = np.full((3, oh, ow, c), np.nan, dtype)
    out_simd = np.full((3, oh, ow, c), np.nan, dtype)
    kernels["out"](mm, at.astype(dtype), bias, out_loop, th, tw, t0, lo, hi)
    kernels["out_simd"](mm, bias, out_simd, m, th, tw, t0, lo, hi)
    np.testing.assert_array_equal(np.isnan(out_simd), np.isnan(out_loop))
    written = ~np.isnan(out_loop)
    assert written.any()
    assert_close(out_simd[written], out_loop[written], dtype)
    go = rng.standard_normal((3, oh, ow, c)).astype(dtype)
    gm_loop = np.zeros((a * a, nt, c), dtype)
    gm_simd = np.zeros((a * a, nt, c), dtype)
    kernels["grad_out"](go, at.astype(dtype), th, tw, t0, lo, hi, gm_loop)
    kernels["grad_out_simd"](go, m, th, tw, t0, lo, hi, gm_simd)
    assert_close(gm_simd, gm_loop, dtype)
    assert np.all(gm_simd[:, :lo] == 0) and np.all(gm_simd[:, hi:] == 0)


def _random_layer(
    n: int,
    hw: tuple[int, int],
    c_in: int,
    c_out_dtype: tuple[int, type],
    k: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    padding: object,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """x, kernel, bias and options of a drawn layer, the input at least as large as the
    dilated kernel."""
    c_out, dtype = c_out_dtype
    kh, kw = k
    h = max(hw[0], (kh - 1) * dilation[0] + 1)
    w = max(hw[1], (kw - 1) * dilation[1] + 1)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c_in)).astype(dtype)
    kernel = rng.standard_normal((kh, kw, c_in, c_out)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    return x, kernel, bias, {"strides": strides, "padding": padding, "dilation_rate": dilation}


@settings(max_examples=40)
@given(
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(1, 14), st.integers(6, 16)),
    c_in=st.sampled_from([1, 3, 8]),
    c_out_dtype=st.sampled_from(
        [(64, np.float32), (70, np.float32), (32, np.float64), (40, np.float64)]
    ),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    strides=st.tuples(st.integers(1, 3), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=paddings(),
    seed=st.integers(0, 2**32 - 1),
)
def test_implicit_gemm_matches_the_reference(
    n: int,
    hw: tuple[int, int],
    c_in: int,
    c_out_dtype: tuple[int, type],
    k: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    padding: object,
    seed: int,
) -> None:
    """gemm's and pointwise's implicit kernel (4 SIMD vectors of output channels or more): the
    overlapping last block of columns and last channel panel, taps in the padding, strides
    and dilations; where it does not apply (too few output columns) the tiles answer."""
    x, kernel, bias, options = _random_layer(
        n, hw, c_in, c_out_dtype, k, strides, dilation, padding, seed
    )
    dtype = x.dtype
    expected = conv2d_reference(x, kernel, bias, **options)
    out = patchconv.conv2d(x, kernel, bias, algorithm="gemm", **options)
    assert_close(out, expected, dtype)
    if k == (1, 1):
        out = patchconv.conv2d(x, kernel, bias, algorithm="pointwise", **options)
        assert_close(out, expected, dtype)


@pytest.mark.parametrize("ow", [6, 7, 8, 9, 10, 11, 12, 13, 16, 17])
def test_implicit_gemm_row_ends_match_the_reference(ow: int) -> None:
    """Every row end of the implicit GEMM: whole blocks of 6 columns, then 1 to 4 columns in
    a block of 4 (overlapping when fewer) or 5 in an overlapping block of 6."""
    rng = np.random.default_rng(ow)
    x = rng.standard_normal((1, 5, ow, 8)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 8, 64)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    out = patchconv.conv2d(x, kernel, bias, padding="same", algorithm="gemm")
    assert_close(out, conv2d_reference(x, kernel, bias, padding="same"), np.float32)


@pytest.mark.parametrize(("shape", "length"), [((2, 7, 9, 16), 6), ((1, 56, 56, 16), 196)])
def test_pointwise_rows_of_any_pixels_match_the_reference(
    shape: tuple[int, int, int, int], length: int
) -> None:
    """A 1x1 stride-1 unpadded layer runs over rows cut from the pixels regardless of image
    rows (fewer columns wasted on the last overlapping block)."""
    n, h, w, c = shape
    assert gemm._pixel_rows(n * h * w, w, c * 4) == length
    rng = np.random.default_rng(length)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((1, 1, c, 64)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    out = patchconv.conv2d(x, kernel, bias, algorithm="pointwise")
    assert_close(out, conv2d_reference(x, kernel, bias), np.float32)


@pytest.mark.parametrize(
    ("c_out", "dtype", "k", "strides", "dilation", "padding"),
    [
        (16, np.float32, 11, 1, 1, "same"),
        (20, np.float32, 5, 2, 1, "valid"),
        (40, np.float32, 4, 1, 2, ((3, 0), (1, 2))),
        (8, np.float64, 5, (1, 2), 1, "same"),
    ],
)
def test_narrow_implicit_gemm_matches_the_reference(
    c_out: int, dtype: type, k: int, strides: object, dilation: int, padding: object
) -> None:
    """The implicit GEMM's narrow form (1 to 3 vectors of output channels, blocks of 12
    columns): overlapping last block and last vector, padding, strides and dilation."""
    rng = np.random.default_rng(c_out)
    x = rng.standard_normal((2, 31, 29, 16)).astype(dtype)
    kernel = rng.standard_normal((k, k, 16, c_out)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    options = {"strides": strides, "padding": padding, "dilation_rate": dilation}
    spec = conv_spec(x.shape, kernel.shape, bias.shape, **options)  # type: ignore[arg-type]
    assert gemm.narrow_applies(spec, np.dtype(dtype).itemsize)
    out = patchconv.conv2d(x, kernel, bias, algorithm="gemm", **options)  # type: ignore[arg-type]
    assert_close(out, conv2d_reference(x, kernel, bias, **options), dtype)


@settings(max_examples=40)
@given(
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(1, 19), st.integers(12, 29)),
    c_in=st.integers(1, 40),  # patches from 27 values (3x3x3) take the narrow form
    c_out_dtype=st.sampled_from([(16, np.float32), (37, np.float32), (8, np.float64)]),
    k=st.tuples(st.integers(1, 7), st.integers(2, 7)),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=paddings(),
    seed=st.integers(0, 2**32 - 1),
)
def test_narrow_implicit_gemm_matches_the_reference_anywhere(
    n: int,
    hw: tuple[int, int],
    c_in: int,
    c_out_dtype: tuple[int, type],
    k: tuple[int, int],
    strides: tuple[int, int],
    dilation: tuple[int, int],
    padding: object,
    seed: int,
) -> None:
    """The narrow form (one row or row pairs) on random layers: any height, row ends, taps in
    the padding, strides and dilations; where it does not apply the tiles answer."""
    x, kernel, bias, options = _random_layer(
        n, hw, c_in, c_out_dtype, k, strides, dilation, padding, seed
    )
    out = patchconv.conv2d(x, kernel, bias, algorithm="gemm", **options)
    assert_close(out, conv2d_reference(x, kernel, bias, **options), x.dtype)


@pytest.mark.parametrize(("h", "w"), [(6, 17), (7, 25), (8, 17), (17, 21)])
@pytest.mark.parametrize(
    ("dtype", "dilation", "padding"),
    [(np.float32, 1, "valid"), (np.float64, (1, 2), ((3, 0), (1, 2))), (np.float32, 1, "same")],
)
def test_narrow_row_pairs_match_the_reference(
    h: int, w: int, dtype: type, dilation: object, padding: object
) -> None:
    """The narrow form two output rows at a time (stride and dilation 1 down the image): an
    even and an odd number of output rows (the last pair overlapping), down to two rows, input
    rows in the padding above and below, dilation across, and every kind of row end (0 to 11
    columns past the blocks of 12: blocks of 4, or a 12-block overlapping the one before)."""
    rng = np.random.default_rng(h)
    x = rng.standard_normal((2, h, w, 16)).astype(dtype)
    kernel = rng.standard_normal((5, 5, 16, 24)).astype(dtype)
    bias = rng.standard_normal(24).astype(dtype)
    options = {"padding": padding, "dilation_rate": dilation}
    spec = conv_spec(x.shape, kernel.shape, bias.shape, **options)  # type: ignore[arg-type]
    assert gemm.narrow_applies(spec, np.dtype(dtype).itemsize) and spec.oh >= 2
    out = patchconv.conv2d(x, kernel, bias, algorithm="gemm", **options)  # type: ignore[arg-type]
    assert_close(out, conv2d_reference(x, kernel, bias, **options), dtype)


@pytest.mark.parametrize(("kh", "kw", "pairs"), [(3, 7, True), (4, 9, True), (1, 1, False)])
def test_narrow_row_pairs_with_other_kernel_shapes(kh: int, kw: int, pairs: bool) -> None:
    """Row pairs with kernels taller than wide and the reverse, an even height among them;
    a 1x1 kernel (no input row serves both rows of a pair) keeps one row at a time."""
    rng = np.random.default_rng(kh * 10 + kw)
    c_in = 16 if kh > 1 else 32  # a patch of 27 values or more: the narrow form
    x = rng.standard_normal((2, 9, 19, c_in)).astype(np.float32)
    kernel = rng.standard_normal((kh, kw, c_in, 24)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    spec = conv_spec(x.shape, kernel.shape, bias.shape, padding="same")
    assert gemm.narrow_applies(spec, 4) and gemm._pairs(spec) == pairs
    out = patchconv.conv2d(x, kernel, bias, algorithm="gemm", padding="same")
    assert_close(out, conv2d_reference(x, kernel, bias, padding="same"), np.float32)


def test_implicit_gemm_applies_where_documented() -> None:
    """Shallow kernels take the implicit kernel; deep ones (2.4 MB kernel matrix), few output
    channels, groups or fewer than 6 output columns keep the tiles."""
    numba_here = winograd.kernels() is not None
    stem = conv_spec((1, 224, 224, 3), (7, 7, 3, 64), None, strides=2, padding="same")
    assert gemm.implicit_applies(stem, 4) == numba_here
    deep = conv_spec((1, 14, 14, 256), (3, 3, 256, 256), None, padding="same")
    assert not gemm.implicit_applies(deep, 4)
    narrow = conv_spec((1, 8, 8, 3), (3, 3, 3, 32), None, padding="same")
    assert not gemm.implicit_applies(narrow, 4)  # 32 float32 outputs: 2 vectors
    assert gemm.implicit_applies(narrow, 8) == numba_here  # 32 float64: 4 vectors
    grouped = conv_spec((1, 8, 8, 4), (3, 3, 2, 64), None, padding="same", groups=2)
    assert not gemm.implicit_applies(grouped, 4)
    thin = conv_spec((1, 8, 5, 4), (3, 3, 4, 64), None, padding="same")
    assert not gemm.implicit_applies(thin, 4)


@pytest.mark.skipif(winograd.kernels() is None, reason="the SIMD products need numba")
@pytest.mark.parametrize(
    ("nt", "c_in", "c_out"),
    [(6, 1, 64), (13, 33, 70), (7, 8, 128), (16, 5, 64), (17, 9, 80), (10, 3, 64)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_batched_products_equal_matmul(nt: int, c_in: int, c_out: int, dtype: type) -> None:
    """The split schedule's products for positions lo:hi only, with overlapping last blocks of
    rows and of columns, U in column panels: 1 to 4 rows past the blocks of 6 go in a block
    of 4 (16, 10, 13 and 7 tiles), 5 in an overlapping block of 6 (17)."""
    kernels = winograd.kernels()
    assert kernels is not None
    rng = np.random.default_rng(nt)
    v = rng.standard_normal((5, nt, c_in)).astype(dtype)
    u = rng.standard_normal((5, c_in, c_out)).astype(dtype)
    shape = winograd.u_panels(3, c_in, c_out, np.dtype(dtype))[1:]
    panels = np.empty((5, *shape), dtype)
    width = shape[-1]
    for p in range(shape[0]):
        pc = min(p * width, c_out - width)
        panels[:, p] = u[:, :, pc : pc + width]
    out = np.full((5, nt, c_out), np.nan, dtype)
    kernels["products_simd"](v, panels, out, 1, 4)
    assert_close(out[1:4], np.matmul(v[1:4], u[1:4]), dtype)
    assert np.isnan(out[0]).all() and np.isnan(out[4]).all()


@pytest.mark.skipif(winograd.kernels() is None, reason="the column panels need numba")
@pytest.mark.parametrize(("m", "c_in", "c_out"), [(4, 3, 64), (2, 5, 80), (4, 2, 136)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_transform_in_panels_matches_the_matrix_form(
    m: int, c_in: int, c_out: int, dtype: type
) -> None:
    """U in column panels (the last overlapping the one before where 4 vectors do not divide
    c_out) holds the same values as ``kron(G, G) @ kernel``."""
    rng = np.random.default_rng(c_out)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    dt = np.dtype(dtype)
    plain = winograd.kernel_transform(kernel, m, dt)
    panels = winograd.kernel_transform(kernel, m, dt, panels=True)
    assert panels.shape == winograd.u_panels(m + 2, c_in, c_out, dt)
    width = panels.shape[-1]
    for p in range(panels.shape[1]):
        pc = min(p * width, c_out - width)
        np.testing.assert_array_equal(panels[:, p], plain[:, :, pc : pc + width])
    narrow = kernel[..., : width // 2]
    with pytest.raises(ValueError, match=f"got c_out {width // 2}"):
        winograd.kernel_transform(narrow, m, dt, panels=True)


@pytest.mark.skipif(winograd.kernels() is None, reason="the column panels need numba")
@pytest.mark.parametrize("m", [2, 4])
def test_whole_kernel_transform_equals_the_streamed_ones_bit_for_bit(m: int) -> None:
    """U made whole (kernel_transform, prepare) a row of positions at a time holds the values
    the streamed schedules make a vector at a time (_simd._u_vector), bit for bit."""
    import numba

    from patchconv.algorithms import _simd

    @numba.njit
    def by_vectors(k9: Any, m: int, u: Any) -> None:  # pragma: no cover - numba
        _, panels, ci, width = u.shape
        q = k9.shape[1]
        co = q // ci
        lanes = width // 4
        pitch = panels * ci * width
        kf, uf = k9.reshape(-1), u.reshape(-1)
        for c in range(ci):
            for panel in range(panels):
                pc = min(panel * width, co - width)
                for vec in range(4):
                    at = (panel * ci + c) * width + vec * lanes
                    _simd._u_vector(kf, q, c * co + pc + vec * lanes, m, uf, at, pitch)

    for c_in, c_out in [(3, 64), (128, 128), (5, 80)]:
        kernel = np.random.default_rng(c_in).standard_normal((3, 3, c_in, c_out))
        kernel = kernel.astype(np.float32)
        whole = winograd.kernel_transform(kernel, m, np.dtype(np.float32), panels=True).copy()
        streamed = np.zeros_like(whole)
        by_vectors(np.ascontiguousarray(kernel.reshape(9, -1)), m, streamed)
        np.testing.assert_array_equal(whole, streamed)


@pytest.mark.skipif(winograd.kernels() is None, reason="the compiled flip needs numba")
def test_compiled_kernel_flip_gives_the_same_input_gradient() -> None:
    """grad_x of a stride-1 layer as a forward pass with the flipped, channel-swapped kernel:
    the compiled flip (deep layers) equals NumPy's transpose, on a 2x3 kernel with 17 -> 19
    channels (blocks of 16 cut on both sides), dilation and uneven padding."""
    from patchconv import algorithms

    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 7, 9, 17)).astype(np.float32)
    kernel = rng.standard_normal((2, 3, 17, 19)).astype(np.float32)
    spec = conv_spec(x.shape, kernel.shape, None, padding=((1, 0), (2, 1)), dilation_rate=(2, 1))
    plain = algorithms._transposed(spec, kernel, 2**28)
    assert plain is not None
    plain = (plain[0], plain[1].copy())  # a kept work buffer, which the next call rewrites
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(algorithms, "_COMPILED_FLIP_VALUES", 1)
        compiled = algorithms._transposed(spec, kernel, 2**28)
        g = rng.standard_normal(spec_out(spec)).astype(np.float32)
        grad_x, _, used = algorithms.backward(g, x, kernel, spec, 2**28)
    assert compiled is not None
    assert compiled[0] == plain[0]
    np.testing.assert_array_equal(compiled[1], plain[1])
    assert used["grad_x"].endswith("(transposed convolution)")
    expected, _ = gemm.backward(g, x, kernel, spec, 2**28, need_kernel=False)
    assert_close(grad_x, expected, np.float32, grad=True)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("padding", ["same", "valid", ((2, 0), (1, 2)), ((0, 3), (0, 0))])
def test_numpy_winograd_in_bands_of_tile_rows(m: int, padding: object) -> None:
    """Without numba, an image whose block would pass the budget is done in bands of tile
    rows (the workspace limit holds for one large image too); every band edge agrees."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((2, 13, 9, 3)).astype(np.float64)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float64)
    bias = rng.standard_normal(4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(winograd, "_compile", lambda: None)
        mp.setattr(winograd, "BLOCK_BYTES", 1)  # one tile row a band
        out = patchconv.conv2d(x, kernel, bias, padding=padding, algorithm=f"winograd_f{m}")
    assert_close(out, conv2d_reference(x, kernel, bias, padding=padding), np.float64)


@pytest.mark.skipif(winograd.kernels() is None, reason="the SIMD depthwise kernel needs numba")
@pytest.mark.parametrize("padding", ["same", "valid", ((2, 0), (0, 2))])
@pytest.mark.parametrize("c", [16, 20])
def test_depthwise_3x3_row_pairs_over_any_row_ranges(padding: object, c: int) -> None:
    """The two-rows-at-a-time 3x3 kernel over row ranges that cut pairs and images apart
    (odd starts, a range of one row, the last row of an image alone)."""
    from patchconv.algorithms import _runtime, depthwise

    kernels = depthwise.kernels()
    assert kernels is not None
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, 9, 11, c)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 1, c)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    expected = conv2d_reference(x, kernel, bias, padding=padding, groups=c)
    spec = conv_spec(x.shape, kernel.shape, bias.shape, padding=padding, groups=c)
    (pt, _), (pl, _) = spec.pads
    k = _runtime.aligned_empty((9 * c,), np.float32)
    k[:] = kernel.reshape(-1)
    b = _runtime.aligned_empty((c,), np.float32)
    b[:] = bias
    out = np.full(expected.shape, np.nan, np.float32)
    rows = spec.n * spec.oh
    for lo, hi in [
        (0, 3),
        (3, 4),
        (4, spec.oh - 1),
        (spec.oh - 1, spec.oh + 2),
        (spec.oh + 2, rows),
    ]:
        kernels["fwd_simd_3x3"](x, k, b, out, pt, pl, lo, hi)
    assert_close(out, expected, np.float32)


@pytest.mark.skipif(winograd.kernels() is None, reason="the panel products need numba")
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    ("nt", "c_in", "chunk", "dtype"),
    [
        (1, 9, 4, np.float32),
        (3, 20, 20, np.float32),
        (4, 33, 7, np.float32),
        (5, 16, 5, np.float64),
        (11, 40, 16, np.float32),
        (16, 8, 3, np.float64),
    ],
)
def test_panel_products_make_u_and_multiply(
    m: int, nt: int, c_in: int, chunk: int, dtype: type
) -> None:
    """The split schedule by panels: U made from the kernel a chunk of input channels at a
    time (the last chunk shorter where ``chunk`` does not divide c_in), then M = V @ U at every
    position, for the panels lo:hi only. 1 to 5 rows past the blocks of 6 go in a block of 4
    and single rows, which add to the chunks before them without overlapping."""
    kernels = winograd.kernels()
    assert kernels is not None
    from patchconv.algorithms import _simd

    a = m + 2
    dt = np.dtype(dtype)
    width = 4 * _simd.lanes(dt)
    c_out = 3 * width
    rng = np.random.default_rng(nt * c_in)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    v = rng.standard_normal((a * a, nt, c_in)).astype(dtype)
    mm = np.full((a * a, nt, c_out), np.nan, dtype)
    work = np.empty(winograd.u_chunk_values(a, chunk, 1, dt), dtype)
    k9 = np.ascontiguousarray(kernel.reshape(9, -1))
    _simd.winograd_panel_products(k9, v, mm, m, chunk, work, 1, 3)
    u = winograd._kron(m, np.dtype(np.float64)) @ kernel.reshape(9, -1).astype(np.float64)
    expected = np.matmul(v.astype(np.float64), u.reshape(a * a, c_in, c_out))
    assert_close(mm[..., width:], expected[..., width:], dtype)
    assert np.isnan(mm[..., :width]).all()


@pytest.mark.skipif(winograd.kernels() is None, reason="the schedules' kernels need numba")
def test_u_chunk_kernels_refuse_a_short_work_buffer() -> None:
    """Both schedules write U's chunk with each position a vector longer than its rows (see
    winograd_panel_products); a work buffer without that room is refused, not overrun."""
    from patchconv.algorithms import _simd

    dt = np.dtype(np.float32)
    m, a, c_in, chunk, nt = 2, 4, 8, 8, 6
    c_out = 4 * _simd.lanes(dt)
    k9 = np.zeros((9, c_in * c_out), dt)
    v = np.zeros((a * a, nt, c_in), dt)
    mm = np.zeros((a * a, nt, c_out), dt)
    need = winograd.u_chunk_values(a, chunk, 1, dt)
    assert need == a * a * (chunk * c_out + _simd.lanes(dt))
    short = np.zeros(need - 1, dt)
    with pytest.raises(ValueError, match="work holds fewer"):
        _simd.winograd_panel_products(k9, v, mm, m, chunk, short, 0, 1)
    with pytest.raises(ValueError, match="work holds fewer"):
        _simd.winograd_channel_products(k9, v, mm, m, chunk, 1, short, 0, 1)
    _simd.winograd_panel_products(k9, v, mm, m, chunk, np.zeros(need, dt), 0, 1)
    assert not mm.any()


@pytest.mark.skipif(winograd.kernels() is None, reason="the channel products need numba")
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize(
    ("nt", "c_in", "chunk", "parts", "dtype"),
    [
        (1, 9, 4, 2, np.float32),
        (3, 20, 20, 2, np.float32),
        (4, 33, 7, 3, np.float32),
        (5, 16, 5, 3, np.float64),
        (2, 40, 16, 2, np.float64),
        (2, 3, 4, 5, np.float32),  # parts 0 and 2 have no input channel: zeros
    ],
)
def test_channel_products_sum_to_the_products(
    m: int, nt: int, c_in: int, chunk: int, parts: int, dtype: type
) -> None:
    """The split schedule by input channels: item i of ``parts`` makes U a chunk of its share
    of the input channels at a time (the last chunk shorter where ``chunk`` does not divide
    it) and writes V @ U over that share into its own part of M, for the items lo:hi only;
    the parts sum to M = V @ U, as the split schedule sums them before the output transform."""
    kernels = winograd.kernels()
    assert kernels is not None
    from patchconv.algorithms import _simd

    a = m + 2
    dt = np.dtype(dtype)
    c_out = 2 * 4 * _simd.lanes(dt)
    rng = np.random.default_rng(nt * c_in + parts)
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype(dtype)
    v = rng.standard_normal((a * a, nt, c_in)).astype(dtype)
    mm = np.full((parts * a * a, nt, c_out), np.nan, dtype)
    work = np.empty(winograd.u_chunk_values(a, chunk, c_out // (4 * _simd.lanes(dt)), dt), dtype)
    k9 = np.ascontiguousarray(kernel.reshape(9, -1))
    _simd.winograd_channel_products(k9, v, mm, m, chunk, parts, work, 1, parts)
    assert np.isnan(mm[: a * a]).all()  # item 0 not asked for
    mm[: a * a] = 0.0
    _simd.winograd_channel_products(k9, v, mm, m, chunk, parts, work, 0, 1)
    u = winograd._kron(m, np.dtype(np.float64)) @ kernel.reshape(9, -1).astype(np.float64)
    u = u.reshape(a * a, c_in, c_out)
    share = [i * c_in // parts for i in range(parts + 1)]
    for i in range(parts):  # each part holds its own share of the input channels
        lo, hi = share[i], share[i + 1]
        part = np.matmul(v[..., lo:hi].astype(np.float64), u[:, lo:hi])
        assert_close(mm[i * a * a : (i + 1) * a * a], part, dtype)
    total = mm.reshape(parts, a * a, nt, c_out).sum(axis=0)
    assert_close(total, np.matmul(v.astype(np.float64), u), dtype)


@pytest.mark.parametrize(
    ("m", "shape", "path"),
    [
        (4, (1, 7, 7, 256), "channels"),  # 4 tiles, U of 9.4 MB
        (4, (1, 14, 14, 256), "panels"),  # 16 tiles, U of 9.4 MB
        (4, (5, 16, 16, 256), "other"),  # 80 tiles: each panel would read V again
        (2, (1, 14, 14, 256), "other"),  # U of 4.2 MB
    ],
)
def test_winograd_on_deep_layers_within_the_tolerance(
    m: int, shape: tuple[int, int, int, int], path: str
) -> None:
    """The rounding errors of Winograd's transformed products grow with the input channels:
    with 256 of them float32 stays within the tolerance table, on every schedule (F(4x4) with
    the interpolation points 0, +-1, +-2 missed it there, 1.2e-5 of the largest output)."""
    spec, out, exact = _deep_layer_by_name(5, shape, 256, m)
    if winograd.kernels() is not None:
        f32 = np.dtype(np.float32)
        assert winograd.channel_products(spec, m, f32) == (path == "channels")
        assert winograd.panel_products(spec, m, f32) == (path == "panels")
    assert_close(out, exact, np.float32)


def _deep_layer_by_name(
    seed: int, shape: tuple[int, int, int, int], c_out: int, m: int
) -> tuple[ConvSpec, np.ndarray, np.ndarray]:
    """A random 3x3 "same" layer: its spec, its float32 output by F(m x m) by name, and the
    exact output (float64, gemm)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    kernel = rng.standard_normal((3, 3, shape[3], c_out))
    exact = patchconv.conv2d(x, kernel, padding="same", algorithm="gemm")
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    x32, k32 = x.astype(np.float32), kernel.astype(np.float32)
    out = patchconv.conv2d(x32, k32, padding="same", algorithm=f"winograd_f{m}")
    return spec, out, exact


@pytest.mark.parametrize(
    ("shape", "c_out", "path"),
    [
        ((1, 7, 7, 8192), 128, "channels"),  # was 1.40x the table's bound
        ((4, 8, 8, 2048), 64, "panels"),  # was 1.19x
    ],
)
def test_f4_by_name_on_thousands_of_input_channels_within_the_tolerance(
    shape: tuple[int, int, int, int], c_out: int, path: str
) -> None:
    """Our split schedules' products sum each chunk of input channels from zero and add it to
    M: summed as one running total over thousands of channels, F(4x4) by name passed the
    tolerance table on these layers."""
    if winograd.kernels() is None:
        pytest.skip("the split schedules need numba")
    spec, out, exact = _deep_layer_by_name(3, shape, c_out, 4)
    f32 = np.dtype(np.float32)
    assert winograd.channel_products(spec, 4, f32) == (path == "channels")
    assert winograd.panel_products(spec, 4, f32) == (path == "panels")
    assert_close(out, exact, np.float32)


@pytest.mark.parametrize(
    ("shape", "c_out", "path"),
    [
        ((8, 8, 8, 4096), 32, "blas"),  # was 1.28x the table's bound (1.33 without numba)
        ((4, 14, 14, 2048), 64, "blocks"),  # was 1.34x (1.24 without numba)
    ],
)
def test_f4_by_name_past_512_input_channels_on_the_other_products_within_the_tolerance(
    shape: tuple[int, int, int, int], c_out: int, path: str
) -> None:
    """The same on the products outside the split schedules: BLAS (fewer than 4 vectors of
    output channels, and every layer without numba) and our blocks' products
    (``_simd.batched_matmul``) sum each 512 input channels apart too."""
    spec, out, exact = _deep_layer_by_name(4, shape, c_out, 4)
    f32 = np.dtype(np.float32)
    if winograd.kernels() is not None:  # not the split schedules: whole U, tiles in blocks
        assert not winograd.u_streamed(spec, 4, f32, patchconv.get_workspace_limit())
        assert winograd.blas_free(spec, f32, patchconv.get_workspace_limit()) == (path == "blocks")
    assert_close(out, exact, np.float32)


def test_auto_leaves_f4_out_of_float32_layers_past_512_input_channels() -> None:
    """F(4x4)'s float32 error grows with the input channels (half the tolerance table's bound
    near 2048, F(2x2)'s a tenth): auto and the "winograd" alias take F(2x2) there and say why;
    by name F(4x4) still runs; float64 keeps it."""
    from patchconv import algorithms

    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 8, 2048))
    kernel = rng.standard_normal((3, 3, 2048, 64))
    exact = patchconv.conv2d(x, kernel, padding="same", algorithm="gemm")
    x32, k32 = x.astype(np.float32), kernel.astype(np.float32)
    out, plan = patchconv.conv2d(x32, k32, padding="same", return_plan=True)
    assert plan.algorithm != "winograd_f4"
    assert "winograd_f4" not in dict(plan.estimates)
    assert "keeps it to 512 or fewer; got c_in 2048" in dict(plan.skipped)["winograd_f4"]
    assert_close(out, exact, np.float32)
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    assert algorithms.choose(spec, "winograd", itemsize=4).algorithm == "winograd_f2"
    assert algorithms.choose(spec, "winograd_f4", itemsize=4).algorithm == "winograd_f4"
    assert "winograd_f4" in dict(algorithms.choose(spec, itemsize=8).estimates)
    shallow = conv_spec((4, 8, 8, 512), (3, 3, 512, 64), None, padding="same")
    assert "winograd_f4" in dict(algorithms.choose(shallow, itemsize=4).estimates)


def _frozen(arr: np.ndarray) -> np.ndarray:
    view = arr.view()
    view.flags.writeable = False
    return view


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "padding", "groups"),
    [
        ((1, 16, 16, 8), (3, 3, 8, 16), "valid", 1),  # implicit GEMM reading x itself
        ((1, 16, 16, 8), (3, 3, 8, 16), "same", 1),  # ... through its ring of padded rows
        ((2, 20, 20, 3), (3, 3, 3, 32), "valid", 1),  # narrow implicit GEMM
        ((1, 40, 40, 16), (11, 11, 16, 16), "valid", 1),  # row pairs
        ((2, 14, 14, 64), (3, 3, 64, 64), "same", 1),  # Winograd
        ((2, 12, 12, 32), (3, 3, 1, 32), "same", 32),  # depthwise
        ((1, 10, 10, 3), (3, 3, 3, 3), "same", 1),  # direct (numba), else gemm
    ],
)
def test_read_only_arrays_give_the_same_results(
    x_shape: tuple[int, ...],
    k_shape: tuple[int, ...],
    padding: str,
    groups: int,
    tmp_path: Any,
    rng: np.random.Generator,
) -> None:
    # A memory-mapped or frozen input failed to compile in the implicit GEMM (it wrote to x's
    # type in a branch that never ran): numba's TypingError instead of a result.
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(k_shape).astype(np.float32)
    bias = rng.standard_normal(k_shape[3]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    options: dict[str, Any] = {"padding": padding, "groups": groups}
    expected = patchconv.conv2d(x, kernel, bias, **options)
    for arr in (mapped, _frozen(x)):
        got = patchconv.conv2d(arr, _frozen(kernel), _frozen(bias), **options)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        patchconv.prepare(_frozen(kernel), x.shape, **options)(mapped, bias), expected
    )
    grad_out = rng.standard_normal(expected.shape).astype(np.float32)
    want = patchconv.conv2d_backward(grad_out, x, kernel, **options)
    got = patchconv.conv2d_backward(_frozen(grad_out), mapped, _frozen(kernel), **options)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
