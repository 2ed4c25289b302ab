"""Memory: the patch matrix is built in tiles under the workspace limit, never kh*kw copies."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import patchconv
from conftest import assert_close
from patchconv._spec import conv_spec

MiB = 2**20


def peak_extra_bytes(x: np.ndarray, kernel: np.ndarray, **kwargs: object) -> tuple[int, np.ndarray]:
    """Peak bytes allocated during one call, beyond its inputs, minus the output it returns.

    Work buffers kept from earlier calls are released first, so they count here too.
    """
    patchconv.release_workspace()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        out = patchconv.conv2d(x, kernel, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base - out.nbytes, out


@pytest.mark.slow
@pytest.mark.parametrize("limit_mib", [None, 32])
def test_large_input_stays_under_the_workspace_limit(limit_mib: int | None) -> None:
    """(8, 224, 224, 64) float32 with a 3x3 kernel: its full patch matrix would be 925 MB."""
    x = np.random.default_rng(0).standard_normal((8, 224, 224, 64), dtype=np.float32)
    kernel = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    limit = patchconv.get_workspace_limit() if limit_mib is None else limit_mib * MiB
    full_patch_matrix = 8 * 224 * 224 * 9 * 64 * 4
    extra, out = peak_extra_bytes(
        x, kernel, padding="same", workspace_limit=None if limit_mib is None else limit
    )
    print(
        f"limit {limit / MiB:.0f} MiB: peak extra {extra / MiB:.1f} MiB "
        f"(full patch matrix {full_patch_matrix / MiB:.0f} MiB)"
    )
    assert extra <= limit
    assert extra < full_patch_matrix / 3
    # Spot-check a few outputs against a direct sum.
    xp = np.pad(x[5], ((1, 1), (1, 1), (0, 0)))
    for i, j in [(0, 0), (100, 223), (223, 17)]:
        direct = np.einsum("hwc,hwco->o", xp[i : i + 3, j : j + 3].astype(np.float64), kernel)
        np.testing.assert_allclose(out[5, i, j], direct, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("limit", [1, 100, 10_000, 10**9])
def test_tiny_limits_still_work(limit: int) -> None:
    """A limit below one patch still runs, one output position at a time."""
    x = np.random.default_rng(2).standard_normal((2, 6, 7, 3))
    kernel = np.random.default_rng(3).standard_normal((3, 3, 3, 4))
    expected = patchconv.conv2d(x, kernel, padding="same")
    np.testing.assert_allclose(
        patchconv.conv2d(x, kernel, padding="same", workspace_limit=limit),
        expected,
        rtol=1e-12,
        atol=1e-12,
    )
    extra, _ = peak_extra_bytes(x, kernel, padding="same", workspace_limit=limit)
    assert extra <= max(limit, 3 * 3 * 3 * 8) + 64 * 1024  # plus small per-tile temporaries


@pytest.mark.parametrize(
    ("shape", "schedule"),
    [((1, 7, 7, 256), "channel_products"), ((1, 14, 14, 256), "panel_products")],
)
def test_winograd_streams_its_kernel_transform_under_a_small_limit(
    shape: tuple[int, int, int, int], schedule: str
) -> None:
    """F(4x4) on a deep layer under a limit smaller than its transformed kernel U (9.4 MB):
    the schedules that make U a chunk at a time (by input channels with 4 tiles, by column
    panels with 16) stay under the limit, where the blocks made all of U (36 MiB on
    7x7x512 under 8 MiB)."""
    from patchconv.algorithms import winograd
    from patchconv.algorithms._runtime import n_workers

    limit = 6 * MiB
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal((3, 3, shape[3], 256)).astype(np.float32)
    if winograd.kernels() is not None:
        spec = conv_spec(x.shape, kernel.shape, None, padding="same")
        f32 = np.dtype(np.float32)
        assert getattr(winograd, schedule)(spec, 4, f32)
        assert winograd.u_streamed(spec, 4, f32, limit) == (n_workers() > 1)
    options = {"padding": "same", "algorithm": "winograd_f4", "workspace_limit": limit}
    patchconv.conv2d(x, kernel, **options)  # loads the compiled kernels (tracemalloc sees it)
    extra, out = peak_extra_bytes(x, kernel, **options)
    exact = patchconv.conv2d(x.astype(np.float64), kernel.astype(np.float64), padding="same")
    assert_close(out, exact, np.float32)
    if winograd.kernels() is not None and n_workers() > 1:
        assert extra <= limit, (
            f"peak extra {extra / MiB:.1f} MiB over a {limit / MiB:.0f} MiB limit"
        )


def test_auto_leaves_out_winograd_whose_whole_kernel_transform_passes_the_limit() -> None:
    """Where Winograd would make its transformed kernel whole (c_out 500 is no multiple of 4
    vectors, so no schedule makes it a chunk at a time) and that passes the workspace limit,
    auto says so and takes another algorithm that stays under it; by name Winograd still
    runs. Plans are kept per limit: the same shapes under the default limit plan again."""
    from patchconv.algorithms import winograd

    limit = 8 * MiB
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 7, 7, 512)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 512, 500)).astype(np.float32)
    exact = patchconv.conv2d(x.astype(np.float64), kernel.astype(np.float64), padding="same")
    out, plan = patchconv.conv2d(x, kernel, padding="same", workspace_limit=limit, return_plan=True)
    assert not plan.algorithm.startswith("winograd")
    skipped = dict(plan.skipped)
    assert "transformed kernel whole here (36.0 MiB)" in skipped["winograd_f4"]
    assert "passes the workspace limit (8.0 MiB)" in skipped["winograd_f4"]
    assert "(16.0 MiB)" in skipped["winograd_f2"]
    assert_close(out, exact, np.float32)
    extra, _ = peak_extra_bytes(x, kernel, padding="same", workspace_limit=limit)
    assert extra <= limit, f"peak extra {extra / MiB:.1f} MiB over a {limit / MiB:.0f} MiB limit"
    named = patchconv.conv2d(
        x, kernel, padding="same", workspace_limit=limit, algorithm="winograd_f4"
    )
    assert_close(named, exact, np.float32)
    _, roomy = patchconv.conv2d(x, kernel, padding="same", return_plan=True)
    assert "winograd_f4" not in dict(roomy.skipped)
    assert (
        winograd.whole_u_past_limit(
            conv_spec(x.shape, kernel.shape, None, padding="same"), 4, np.dtype(np.float32), limit
        )
        == 36 * MiB
    )


def test_the_plan_follows_the_calls_limit_and_the_alias_keeps_within_it() -> None:
    """A plan depends on the limit of the call alone (the cost model read the global one, so
    whichever call came first fixed the plan for the other); where both Winograd forms are
    left out, the "winograd" alias runs F(2x2), the smaller transformed kernel; a bad limit
    is refused after the other arguments, as before."""
    from patchconv.algorithms import choose

    spec = conv_spec((4, 14, 14, 64), (3, 3, 64, 512), None, padding="same")
    before = patchconv.get_workspace_limit()
    try:
        patchconv.set_workspace_limit(8 * MiB)
        under_global = choose(spec)
    finally:
        patchconv.set_workspace_limit(before)
    assert choose(spec, workspace_limit=8 * MiB) == under_global
    deep = conv_spec((4, 8, 8, 1024), (3, 3, 1024, 1024), None, padding="same")
    both = choose(deep, "winograd", workspace_limit=8 * MiB)
    assert {"winograd_f4", "winograd_f2"} <= dict(both.skipped).keys()
    assert both.algorithm == "winograd_f2"
    x, kernel = np.ones((1, 5, 5, 3), np.float32), np.ones((3, 3, 4, 2), np.float32)
    with pytest.raises(patchconv.PatchconvError, match="kernel"):
        patchconv.conv2d(x, kernel, workspace_limit=-1)


def peak_extra_backward(
    grad_out: np.ndarray, x: np.ndarray, kernel: np.ndarray, **kwargs: object
) -> tuple[int, patchconv.ConvGrads]:
    """:func:`peak_extra_bytes` for conv2d_backward: its three gradients are its outputs."""
    patchconv.release_workspace()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        grads = patchconv.conv2d_backward(grad_out, x, kernel, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = sum(g.nbytes for g in grads if g is not None)
    return peak - base - outputs, grads


@pytest.mark.parametrize(
    ("shape", "c_out", "strides", "groups", "limit_mib"),
    [
        ((16, 4, 4, 1024), 512, 1, 1, 8),  # was 33.9 MiB: two kernel-sized temporaries
        ((1, 7, 7, 512), 512, 1, 1, 8),  # was 12.7
        ((4, 28, 28, 128), 192, 1, 1, 4),  # was 8.8: both gradients' buffers at once
        ((8, 56, 56, 64), 64, 1, 1, 4),  # was 6.8
        ((2, 28, 28, 512), 512, 2, 1, 8),  # was 12.8
        ((2, 14, 14, 1024), 1024, 1, 2, 8),  # was 42.9: the kernel and its gradient copied
        ((4, 14, 14, 512), 512, 2, 4, 2),  # was 6.5
    ],
)
def test_backward_stays_under_a_small_workspace_limit(
    shape: tuple[int, int, int, int], c_out: int, strides: int, groups: int, limit_mib: int
) -> None:
    """conv2d_backward keeps to the limit: the weight gradient adds its products a block at
    a time, the flipped kernel for grad_x counts against the limit, grad_x runs in what
    grad_kernel's kept buffers leave, and grouped layers read and write the kernel's layout
    through views. The gradients equal those under the default limit."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    kernel = rng.standard_normal((3, 3, shape[3] // groups, c_out), dtype=np.float32)
    oh = -(-shape[1] // strides)
    grad_out = rng.standard_normal((shape[0], oh, oh, c_out), dtype=np.float32)
    options: dict[str, object] = {"padding": "same", "strides": strides, "groups": groups}
    limit = limit_mib * MiB
    patchconv.conv2d_backward(grad_out, x, kernel, workspace_limit=limit, **options)  # compiles
    extra, grads = peak_extra_backward(grad_out, x, kernel, workspace_limit=limit, **options)
    assert extra <= limit, f"peak extra {extra / MiB:.1f} MiB over a {limit_mib} MiB limit"
    expected = patchconv.conv2d_backward(grad_out, x, kernel, **options)
    assert_close(grads.grad_x, expected.grad_x, np.float32, grad=True)
    assert_close(grads.grad_kernel, expected.grad_kernel, np.float32, grad=True)


@pytest.mark.parametrize(
    ("shape", "c_out", "strides", "limit_mib"),
    [
        ((8, 56, 56, 256), 64, 1, 4),  # was 24.5 MiB: a (P, c_in) array as large as grad_x
        ((8, 56, 56, 256), 512, 2, 4),  # was 12.3: all the picked pixels copied at once
    ],
)
def test_pointwise_backward_stays_under_a_small_workspace_limit(
    shape: tuple[int, int, int, int], c_out: int, strides: int, limit_mib: int
) -> None:
    """1x1 layers: the picked pixels go a tile at a time, and at stride 1 (every pixel
    picked) grad_out @ kernel^T is written straight into grad_x. Checked against float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    kernel = rng.standard_normal((1, 1, shape[3], c_out), dtype=np.float32)
    picked = x[:, ::strides, ::strides]
    grad_out = rng.standard_normal((*picked.shape[:3], c_out), dtype=np.float32)
    limit = limit_mib * MiB
    options: dict[str, object] = {"strides": strides, "workspace_limit": limit}
    patchconv.conv2d_backward(grad_out, x, kernel, **options)  # loads what it uses
    extra, grads = peak_extra_backward(grad_out, x, kernel, **options)
    assert extra <= limit, f"peak extra {extra / MiB:.1f} MiB over a {limit_mib} MiB limit"
    go = grad_out.reshape(-1, c_out).astype(np.float64)
    expected_x = np.zeros(x.shape)
    expected_x[:, ::strides, ::strides] = (go @ kernel[0, 0].T).reshape(picked.shape)
    assert_close(grads.grad_x, expected_x, np.float32, grad=True)
    expected_k = picked.reshape(-1, shape[3]).T.astype(np.float64) @ go
    assert_close(grads.grad_kernel, expected_k.reshape(kernel.shape), np.float32, grad=True)


@pytest.mark.parametrize(
    ("dtype", "options", "groups"),
    [
        (np.float16, {}, 1),  # forward was 15.0 MiB under 8, backward 21.4
        (np.float16, {}, 64),  # depthwise: 12.3 and 18.4
        (np.float32, {"data_format": "channels_first"}, 1),  # 8.8 and 15.1
        (np.float32, {"padding_mode": "reflect"}, 1),  # 9.7 and 23.7
    ],
)
def test_copies_around_the_algorithms_keep_to_the_limit(
    dtype: type, options: dict[str, object], groups: int
) -> None:
    """float16 runs in float32, channels_first in NHWC and a padding mode on a padded copy:
    where those copies of a whole batch would pass half the limit, conv2d and
    conv2d_backward take the batch a piece at a time. The results equal float64's."""
    rng = np.random.default_rng(0)
    shape = (32, 28, 28, 64)
    if options.get("data_format") == "channels_first":
        shape = (32, 64, 28, 28)
    x = rng.standard_normal(shape).astype(dtype)
    kernel = rng.standard_normal((3, 3, 64 // groups, 64)).astype(dtype)
    grad_out = rng.standard_normal(shape).astype(dtype)
    limit = 8 * MiB
    kwargs: dict[str, object] = {"padding": "same", "groups": groups, **options}
    patchconv.conv2d(x, kernel, workspace_limit=limit, **kwargs)  # compiles
    extra, out = peak_extra_bytes(x, kernel, workspace_limit=limit, **kwargs)
    assert extra <= limit, f"forward: peak extra {extra / MiB:.1f} MiB over 8 MiB"
    patchconv.conv2d_backward(grad_out, x, kernel, workspace_limit=limit, **kwargs)  # compiles
    extra, grads = peak_extra_backward(grad_out, x, kernel, workspace_limit=limit, **kwargs)
    assert extra <= limit, f"backward: peak extra {extra / MiB:.1f} MiB over 8 MiB"
    x64, k64, go64 = x.astype(np.float64), kernel.astype(np.float64), grad_out.astype(np.float64)
    assert out.dtype == grads.grad_x.dtype == grads.grad_kernel.dtype == np.dtype(dtype)
    assert_close(out, patchconv.conv2d(x64, k64, **kwargs), dtype)
    exact = patchconv.conv2d_backward(go64, x64, k64, **kwargs)
    assert_close(grads.grad_x, exact.grad_x, dtype, grad=True)
    assert_close(grads.grad_kernel, exact.grad_kernel, dtype, grad=True)
    assert_close(grads.grad_bias, exact.grad_bias, dtype, grad=True)


@pytest.mark.parametrize(("kernel_size", "strides"), [(3, 1), (7, 1), (3, 2)])
def test_depthwise_keeps_to_a_small_limit(kernel_size: int, strides: int) -> None:
    """Depthwise forward and backward within 2 MiB, numba or not: without it they go by tiles
    of output whose temporaries fit (whole images took 6.1 MiB forward, the whole batch 24.5
    backward). Checked against float64."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 56, 56, 128), dtype=np.float32)
    kernel = rng.standard_normal((kernel_size, kernel_size, 1, 128), dtype=np.float32)
    kwargs: dict[str, object] = {"padding": "same", "strides": strides, "groups": 128}
    limit = 2 * MiB
    patchconv.conv2d(x, kernel, workspace_limit=limit, **kwargs)  # compiles
    extra, out = peak_extra_bytes(x, kernel, workspace_limit=limit, **kwargs)
    assert extra <= limit, f"forward: peak extra {extra / MiB:.1f} MiB over 2 MiB"
    grad_out = rng.standard_normal(out.shape, dtype=np.float32)
    patchconv.conv2d_backward(grad_out, x, kernel, workspace_limit=limit, **kwargs)  # compiles
    extra, grads = peak_extra_backward(grad_out, x, kernel, workspace_limit=limit, **kwargs)
    assert extra <= limit, f"backward: peak extra {extra / MiB:.1f} MiB over 2 MiB"
    x64, k64, go64 = x.astype(np.float64), kernel.astype(np.float64), grad_out.astype(np.float64)
    assert_close(out, patchconv.conv2d(x64, k64, **kwargs), np.float32)
    exact = patchconv.conv2d_backward(go64, x64, k64, **kwargs)
    assert_close(grads.grad_x, exact.grad_x, np.float32, grad=True)
    assert_close(grads.grad_kernel, exact.grad_kernel, np.float32, grad=True)


def test_copies_that_fit_leave_the_algorithms_the_rest_of_the_limit() -> None:
    """Where a batch's copies fit in half the limit the call is one piece and its algorithms
    run in what the copies leave (a reflect-padded N16 14x14x128 under 4 MiB took 5.8), and a
    large kernel does not split a batch whose copies are small (a channels_first backward
    with a 9 MiB kernel went an image at a time: 9.1 MiB under 8, 0.7 as one piece)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 14, 14, 128), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, 128, 128), dtype=np.float32)
    kwargs: dict[str, object] = {"padding": "same", "padding_mode": "reflect"}
    patchconv.conv2d(x, kernel, workspace_limit=4 * MiB, **kwargs)  # compiles
    extra, out = peak_extra_bytes(x, kernel, workspace_limit=4 * MiB, **kwargs)
    assert extra <= 4 * MiB, f"forward: peak extra {extra / MiB:.1f} MiB over 4 MiB"
    exact = patchconv.conv2d(x.astype(np.float64), kernel.astype(np.float64), **kwargs)
    assert_close(out, exact, np.float32)
    x = rng.standard_normal((8, 512, 2, 2), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, 512, 512), dtype=np.float32)
    grad_out = rng.standard_normal((8, 512, 2, 2), dtype=np.float32)
    kwargs = {"padding": "same", "data_format": "channels_first", "workspace_limit": 8 * MiB}
    patchconv.conv2d_backward(grad_out, x, kernel, **kwargs)  # compiles
    extra, grads = peak_extra_backward(grad_out, x, kernel, **kwargs)
    assert extra <= 8 * MiB, f"backward: peak extra {extra / MiB:.1f} MiB over 8 MiB"
    expected = patchconv.conv2d_backward(
        grad_out, x, kernel, padding="same", data_format="channels_first"
    )
    assert_close(grads.grad_kernel, expected.grad_kernel, np.float32, grad=True)
    assert_close(grads.grad_x, expected.grad_x, np.float32, grad=True)


def test_the_kernels_cast_counts_when_the_batch_is_one_piece() -> None:
    """float16 with a 3x3 256 -> 256 kernel (2.25 MiB in float32): its cast and its gradient
    come off the algorithms' limit where the batch's copies fit in one piece (forward N16
    took 10.3 MiB under 8, backward N2 9.6)."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 256, 256)).astype(np.float16)
    limit = 8 * MiB
    for n in (2, 16):
        x = rng.standard_normal((n, 8, 8, 256)).astype(np.float16)
        patchconv.conv2d(x, kernel, padding="same", workspace_limit=limit)  # compiles
        extra, out = peak_extra_bytes(x, kernel, padding="same", workspace_limit=limit)
        assert extra <= limit, f"N{n} forward: peak extra {extra / MiB:.1f} MiB over 8 MiB"
        x64, k64 = x.astype(np.float64), kernel.astype(np.float64)
        assert_close(out, patchconv.conv2d(x64, k64, padding="same"), np.float16)
        patchconv.conv2d_backward(x, x, kernel, padding="same", workspace_limit=limit)
        extra, grads = peak_extra_backward(x, x, kernel, padding="same", workspace_limit=limit)
        assert extra <= limit, f"N{n} backward: peak extra {extra / MiB:.1f} MiB over 8 MiB"
        exact = patchconv.conv2d_backward(x64, x64, k64, padding="same")
        assert_close(grads.grad_kernel, exact.grad_kernel, np.float16, grad=True)
        assert_close(grads.grad_x, exact.grad_x, np.float16, grad=True)


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "limit"),
    [
        ((2, 64, 64, 64), (31, 31, 64, 128), 256 * MiB),  # all spectra 616 MB: 4 blocks
        ((4, 40, 40, 32), (9, 9, 32, 64), 4 * MiB),  # blocks of 8 channels
        ((1, 32, 32, 64), (15, 15, 64, 64), 40 * MiB),  # 2 blocks, the spectra most of it
    ],
)
def test_fft_takes_its_output_channels_in_blocks_under_the_limit(
    x_shape: tuple[int, ...], k_shape: tuple[int, ...], limit: int
) -> None:
    """FFT made every output channel's kernel spectrum at once beside the limit (872 and 54
    MiB here; the third, 75 MiB with all its channels, kept a block's spectrum past the next
    one: 56 MiB); it now goes by blocks of channels."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(np.float32)
    kernel = rng.standard_normal(k_shape).astype(np.float32)
    exact = patchconv.conv2d(x.astype(np.float64), kernel.astype(np.float64), padding="same")
    patchconv.conv2d(x, kernel, padding="same", algorithm="fft", workspace_limit=limit)
    extra, out = peak_extra_bytes(x, kernel, padding="same", algorithm="fft", workspace_limit=limit)
    assert extra <= limit, f"peak extra {extra / MiB:.1f} MiB over a {limit / MiB:.0f} MiB limit"
    assert_close(out, exact, np.float32)


def test_auto_leaves_out_fft_where_one_channel_passes_the_limit() -> None:
    from patchconv.algorithms import fft

    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 32, 32, 128)).astype(np.float32)
    kernel = rng.standard_normal((15, 15, 128, 16)).astype(np.float32)
    limit = MiB
    _, roomy = patchconv.conv2d(x, kernel, padding="same", return_plan=True)
    assert roomy.algorithm == "fft"  # the cheapest under the default limit
    out, plan = patchconv.conv2d(x, kernel, padding="same", workspace_limit=limit, return_plan=True)
    assert plan.algorithm != "fft"
    assert "past the workspace limit (1.0 MiB)" in dict(plan.skipped)["fft"]
    spec = conv_spec(x.shape, kernel.shape, None, padding="same")
    assert fft.past_limit(spec, 4, limit) > limit and fft.past_limit(spec, 4, 256 * MiB) == 0
    extra, _ = peak_extra_bytes(x, kernel, padding="same", workspace_limit=limit)
    assert extra <= limit
    exact = patchconv.conv2d(x.astype(np.float64), kernel.astype(np.float64), padding="same")
    assert_close(out, exact, np.float32)


@pytest.mark.skipif(patchconv.algorithms.get_numba() is None, reason="direct needs numba")
@pytest.mark.parametrize(
    ("shape", "k", "c_out", "limit"),
    [
        ((1, 16, 16, 8), 11, 64, MiB),  # was 11.4 MiB: direct's sums, a set per core
        ((2, 48, 48, 8), 7, 64, MiB // 4),  # was 4.6 MiB
    ],
)
def test_direct_weight_gradient_only_where_its_sums_fit(
    shape: tuple[int, int, int, int], k: int, c_out: int, limit: int
) -> None:
    """Under auto, layers with few input channels take direct's weight gradient, whose sums
    (16 a tap and channel pair, a set per core) ignored the limit; where they do not fit,
    gemm's tiles do it within the limit, with the same gradient."""
    from patchconv.algorithms import direct

    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    kernel = rng.standard_normal((k, k, shape[3], c_out), dtype=np.float32)
    grad_out = rng.standard_normal((*shape[:3], c_out), dtype=np.float32)
    options: dict[str, object] = {"padding": "same", "need_grad_x": False}
    patchconv.conv2d_backward(grad_out, x, kernel, workspace_limit=limit, **options)  # compiles
    extra, grads = peak_extra_backward(grad_out, x, kernel, workspace_limit=limit, **options)
    assert extra <= limit, f"peak extra {extra / MiB:.2f} MiB over a {limit / MiB} MiB limit"
    spec = patchconv._spec.conv_spec(shape, kernel.shape, None, padding="same", func="test")
    assert direct.grad_kernel_bytes(spec, 4, limit) > limit  # direct's would pass the limit
    expected = patchconv.conv2d_backward(grad_out, x, kernel, algorithm="gemm", **options)
    assert_close(grads.grad_kernel, expected.grad_kernel, np.float32, grad=True)
