"""patchconv.scale.conv2d: a lazy Dask conv2d equal to the in-memory one for every chunking."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import patchconv
from conftest import assert_close
from patchconv import PatchconvError
from patchconv.scale import conv2d, plan_axis
from reference import conv2d_reference
from strategies import Case, conv_cases


@st.composite
def chunkings(draw: st.DrawFn, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """A random chunking of every axis: uneven pieces, often smaller than any kernel."""
    out = []
    for size in shape:
        pieces: list[int] = []
        left = size
        while left:
            piece = draw(st.integers(1, left))
            pieces.append(piece)
            left -= piece
        out.append(tuple(pieces))
    return tuple(out)


def _check(case: Case, chunks: Any, **extra: Any) -> None:
    expected = patchconv.conv2d(case.x, case.kernel, case.bias, **case.options)
    lazy = conv2d(
        da.from_array(case.x, chunks=chunks), case.kernel, case.bias, **case.options, **extra
    )
    assert isinstance(lazy, da.Array)
    assert lazy.shape == expected.shape and lazy.dtype == expected.dtype
    got = lazy.compute(scheduler="threads")
    assert got.dtype == expected.dtype
    assert_close(got, expected, case.x.dtype)


@given(data=st.data(), case=conv_cases())
def test_equals_in_memory_conv2d_for_random_chunkings(data: st.DataObject, case: Case) -> None:
    # Every padding form, strides, dilation, groups and both data formats (the strategy's
    # ranges), against conv2d on the whole array, on the threaded scheduler.
    _check(case, data.draw(chunkings(case.x.shape)))


@given(data=st.data(), case=conv_cases(dtypes=(np.float64,), max_batch=2))
def test_given_output_blocks_equal_the_reference(data: st.DataObject, case: Case) -> None:
    out_shape = patchconv.conv_output_shape(case.x.shape, case.kernel.shape, **case.options)
    fmt = case.options["data_format"]
    oh, ow = out_shape[1:3] if fmt == "channels_last" else out_shape[2:]
    out_chunks = (data.draw(st.integers(1, oh)), data.draw(st.integers(1, ow)))
    lazy = conv2d(
        da.from_array(case.x, chunks=data.draw(chunkings(case.x.shape))),
        case.kernel,
        case.bias,
        out_chunks=out_chunks,
        **case.options,
    )
    spatial = lazy.chunks[1:3] if fmt == "channels_last" else lazy.chunks[2:]
    assert all(max(c) <= want for c, want in zip(spatial, out_chunks, strict=True))
    # The independent loop reference, not only the package's own conv2d.
    expected = conv2d_reference(case.x, case.kernel, case.bias, **case.options)
    assert_close(lazy.compute(), expected, np.float64)


def test_strided_blocks_line_up_and_padding_only_at_the_true_edges() -> None:
    # x[i, j] = 10*i + j makes a misplaced window obvious; 1-pixel chunks are far smaller than
    # the dilated 3x3 kernel (effective 5), and the explicit padding is asymmetric.
    x = (10.0 * np.arange(11)[:, None] + np.arange(9)[None, :])[None, :, :, None]
    kernel = np.arange(9.0).reshape(3, 3, 1, 1)
    options = {"strides": (2, 3), "dilation_rate": 2, "padding": ((3, 1), (0, 2))}
    expected = conv2d_reference(x, kernel, None, **options)
    for chunks in [(1, 1, 1, 1), (1, 4, 2, 1), (1, (5, 6), (2, 7), 1)]:
        got = conv2d(da.from_array(x, chunks=chunks), kernel, **options).compute()
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_windows_wholly_in_the_padding_give_the_bias() -> None:
    x = np.ones((1, 4, 4, 2))
    kernel = np.ones((1, 1, 2, 3))
    bias = np.array([0.5, -1.0, 2.0])
    lazy = conv2d(da.from_array(x, chunks=(1, 1, 1, 1)), kernel, bias, padding=3)
    expected = patchconv.conv2d(x, kernel, bias, padding=3)
    np.testing.assert_array_equal(lazy.compute(), expected)
    np.testing.assert_array_equal(expected[0, 0, 0], bias)  # the case really occurs


def test_integer_float16_and_numpy_inputs(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (2, 9, 8, 3), dtype=np.uint8)
    kernel = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    got = conv2d(da.from_array(img, chunks=(1, 4, 3, 2)), kernel, padding="same")
    assert got.dtype == np.float32
    assert_close(got.compute(), patchconv.conv2d(img, kernel, padding="same"), np.float32)
    x16 = rng.standard_normal((1, 7, 7, 2)).astype(np.float16)
    k16 = rng.standard_normal((2, 2, 2, 1)).astype(np.float16)
    half = conv2d(da.from_array(x16, chunks=3), k16, strides=2)
    assert half.dtype == np.float16
    assert_close(half.compute(), patchconv.conv2d(x16, k16, strides=2), np.float16)
    wrapped = conv2d(x16.astype(np.float64), k16.astype(np.float64))  # a NumPy array is wrapped
    assert isinstance(wrapped, da.Array)


def test_batch_chunks_map_block_wise_and_stay_lazy(rng: np.random.Generator) -> None:
    x = da.from_array(rng.standard_normal((6, 8, 8, 2)), chunks=(2, 8, 8, 2))
    lazy = conv2d(x, rng.standard_normal((3, 3, 2, 4)), padding="same")
    assert lazy.chunks[0] == (2, 2, 2) and lazy.chunks[1:] == ((8,), (8,), (4,))
    calls = []

    def count(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return dask.get(*args, **kwargs)

    with dask.config.set(scheduler=count):
        lazy.sum().compute()
    assert calls  # computing went through the scheduler, nothing ran at graph construction


def test_plan_axis_windows() -> None:
    # 10 pixels, k=3, stride 2, padding (1, 0): 5 outputs, windows start at -1, 1, 3, 5, 7.
    # Block [0, 3) reads padded [-1, 6): one row of top padding, then input [0, 6); block
    # [3, 5) reads [5, 10) and needs no padding.
    blocks = plan_axis([0, 3, 5], size=10, k=3, stride=2, dilation=1, pads=(1, 0))
    assert [(b.o0, b.o1, b.a, b.b, b.pad_lo, b.pad_hi) for b in blocks] == [
        (0, 3, 0, 6, 1, 0),
        (3, 5, 5, 10, 0, 0),
    ]
    tail = plan_axis([0, 2, 4], size=3, k=1, stride=1, dilation=1, pads=(0, 1))
    assert [b.empty for b in tail] == [False, False]
    assert plan_axis([3, 4], size=3, k=1, stride=1, dilation=1, pads=(0, 1))[0].empty


def test_errors_are_raised_before_any_work(rng: np.random.Generator) -> None:
    x = da.from_array(rng.standard_normal((1, 5, 5, 3)), chunks=2)
    with pytest.raises(
        PatchconvError,
        match=r"scale\.conv2d: kernel input channels \(4\) must equal x channels \(3\) / groups \(1\)",
    ):
        conv2d(x, np.ones((3, 3, 4, 1)))
    with pytest.raises(
        TypeError,
        match=r"scale\.conv2d: x must have a real float, integer or bool dtype; got dtype complex128",
    ):
        conv2d(x.astype(complex), np.ones((3, 3, 3, 1)))
    with pytest.raises(
        PatchconvError, match=r"scale\.conv2d: x must have known chunk sizes; got shape \(nan"
    ):
        conv2d(x[x[:, 0, 0, 0] > -10], np.ones((3, 3, 3, 1)))
    with pytest.raises(
        PatchconvError, match=r"scale\.conv2d: out_chunks must be >= 1; got 0 for height"
    ):
        conv2d(x, np.ones((3, 3, 3, 1)), out_chunks=0)
    with pytest.raises(
        PatchconvError,
        match=r"scale\.conv2d: out_chunks for the output width must be positive and sum to 3; got \(1, 1\)",
    ):
        conv2d(x, np.ones((3, 3, 3, 1)), out_chunks=((3,), (1, 1)))
    with pytest.raises(TypeError, match=r"scale\.conv2d: out_chunks must be an int, a pair"):
        conv2d(x, np.ones((3, 3, 3, 1)), out_chunks="big")
    with pytest.raises(PatchconvError, match=r"scale\.conv2d: algorithm must be 'auto' or one of"):
        conv2d(x, np.ones((3, 3, 3, 1)), algorithm="magic")
    with pytest.raises(
        PatchconvError, match=r"scale\.conv2d: workspace_limit must be >= 1 byte; got 0"
    ):
        conv2d(x, np.ones((3, 3, 3, 1)), workspace_limit=0)


def test_open_image_scales_signed_tiffs_and_refuses_stacks(tmp_path: Any) -> None:
    import tifffile

    from patchconv.scale import open_image

    signed = np.array([[-32768, 0], [32767, 1000]], np.int16)
    tifffile.imwrite(tmp_path / "s.tif", signed)
    got = open_image(tmp_path / "s.tif").compute()[0, :, :, 0]
    np.testing.assert_allclose(got, (signed + 32768.0) / 65535.0, rtol=1e-6)
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 10, 12), np.uint8))
    with pytest.raises(patchconv.PatchconvError, match=r"holds a stack of 5 images"):
        open_image(tmp_path / "stack.tif")


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_padding_modes_equal_in_memory_conv2d(mode: str, data_format: str) -> None:
    from patchconv.scale import conv2d as lazy_conv2d

    rng = np.random.default_rng(3)
    first = data_format == "channels_first"
    x = rng.standard_normal((2, 3, 13, 11) if first else (2, 13, 11, 3))
    kernel = rng.standard_normal((3, 5, 3, 4))
    chunks = (1, 3, 4, 5) if first else (1, 4, 5, 3)
    options = {
        "padding": "same",
        "strides": (2, 1),
        "padding_mode": mode,
        "data_format": data_format,
    }
    got = lazy_conv2d(da.from_array(x, chunks=chunks), kernel, **options)
    assert_close(got.compute(), patchconv.conv2d(x, kernel, **options), np.float64)
    zeros = lazy_conv2d(
        da.from_array(x, chunks=chunks), kernel, **{**options, "padding_mode": "zeros"}
    )
    assert got.chunks == zeros.chunks  # the padding folds into x's edge chunks
    if mode == "reflect":  # a reflection wider than the image: refused as in memory
        with pytest.raises(patchconv.PatchconvError, match=r"reflect"):
            lazy_conv2d(da.from_array(x, chunks=chunks), kernel, **{**options, "padding": 20})


def test_write_blocks_names_a_wrong_array_or_tile(tmp_path: Any) -> None:
    from patchconv.scale import write_blocks

    image = da.zeros((1, 32, 32, 3), chunks=16)
    with pytest.raises(patchconv.PatchconvError, match=r"arr must be a lazy \(h, w, c\) array"):
        write_blocks(image, tmp_path / "o.zarr", tile=16)
    written = write_blocks(np.ones((20, 20, 1), np.float32), tmp_path / "np.zarr", tile=16)
    assert written.name == "np.zarr"  # a NumPy image is taken as it is
    with pytest.raises(TypeError, match=r"write_blocks: tile must be an int; got 16.5"):
        write_blocks(image[0], tmp_path / "o.zarr", tile=16.5)  # type: ignore[arg-type]
    for suffix in (".zarr", ".tif"):  # a transform that changes the channel count
        target = tmp_path / f"gray{suffix}"
        with pytest.raises(
            patchconv.PatchconvError,
            match=r"transform must keep each block's shape .* \(16, 16, 3\) came back as "
            r"\(16, 16, 1\)",
        ):
            write_blocks(image[0], target, tile=16, transform=lambda b: b[:, :, :1])
        assert not target.exists() and not list(tmp_path.glob(".gray*"))  # nothing left


@pytest.mark.skipif(
    patchconv.algorithms.direct.applies(
        patchconv._spec.conv_spec((1, 40, 40, 3), (3, 3, 3, 4), None)
    )
    is not None,
    reason="direct needs numba",
)
def test_a_named_algorithm_is_checked_on_every_block_before_compute(
    rng: np.random.Generator,
) -> None:
    # direct applied to the 40 x 40 image, but not to the 6 x 6 blocks of 8 x 8 chunks: the
    # error came out of .compute().
    x = rng.standard_normal((1, 40, 40, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    with pytest.raises(
        PatchconvError,
        match=r"scale.conv2d: algorithm 'direct' does not apply: direct needs 64 output pixels"
        r".* in an output block of 6 x 6 that these chunks give: give larger chunks",
    ):
        conv2d(da.from_array(x, chunks=(1, 8, 8, 3)), kernel, algorithm="direct")
    y = conv2d(da.from_array(x, chunks=(1, 20, 20, 3)), kernel, padding="same", algorithm="direct")
    assert_close(
        y.compute(), conv2d_reference(x.astype(np.float64), kernel, padding="same"), np.float32
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_empty_batch_chunks_give_no_images(data_format: str) -> None:
    # A batch masked on a condition keeps chunks of length zero; each used to fail in compute
    # with "x must not be empty".
    base = np.arange(4.0)[:, None, None, None] * np.ones((4, 8, 8, 2))
    if data_format == "channels_first":
        base = base.transpose(0, 3, 1, 2).copy()
    x = da.from_array(base, chunks=(2, *base.shape[1:]))
    kept = x[x[:, 0, 0, 0] >= 2]
    kept.compute_chunk_sizes()
    assert kept.chunks[0] == (0, 2)
    kernel = np.ones((3, 3, 2, 5))
    options: dict[str, Any] = {"strides": 2, "padding": "same", "data_format": data_format}
    got = conv2d(kept, kernel, **options).compute()
    np.testing.assert_array_equal(got, patchconv.conv2d(base[2:], kernel, **options))


def test_helpers_name_a_bad_argument(tmp_path: Any) -> None:
    from patchconv.scale import block_range, open_image, write_blocks

    np.save(tmp_path / "a.npy", np.zeros((4, 4)))
    import tifffile
    import zarr

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((20, 20), np.uint8))
    for chunks in (0, -1, 1.5, "x", True):
        with pytest.raises(
            PatchconvError, match=rf"open_image: chunks must be an int >= 1 or None; got {chunks!r}"
        ):
            open_image(tmp_path / "a.tif", chunks=chunks)  # type: ignore[arg-type]
    with pytest.raises(PatchconvError, match=r"^open_image: cannot read .*a\.npy"):
        open_image(tmp_path / "a.npy")
    image = da.zeros((32, 32, 3), chunks=16)
    with pytest.raises(PatchconvError, match=r"block_range: tile must be an int >= 1; got 0"):
        block_range(image, tile=0)
    with pytest.raises(PatchconvError, match=r"block_range: arr must be a lazy \(h, w, c\)"):
        block_range(image[0], tile=16)
    # An existing folder that is not a Zarr array is not replaced (it was deleted).
    for name in ("dir.tif", "dir.zarr"):
        (tmp_path / name / "inner").mkdir(parents=True)
        (tmp_path / name / "inner" / "keep.txt").write_text("mine")
        with pytest.raises(PatchconvError, match=r"existing folder that is not a Zarr array"):
            write_blocks(image, tmp_path / name, tile=16)
        assert (tmp_path / name / "inner" / "keep.txt").read_text() == "mine"
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")  # a group holds arrays of its own
    group.create_array("x", shape=(2, 2), dtype="u1")
    with pytest.raises(PatchconvError, match=r"existing folder that is not a Zarr array"):
        write_blocks(image, tmp_path / "g.zarr", tile=16)
    assert (tmp_path / "g.zarr" / "x").is_dir()
    (tmp_path / "empty.zarr").mkdir()
    write_blocks(image, tmp_path / "empty.zarr", tile=16)  # an empty folder is taken
    write_blocks(image, tmp_path / "o.zarr", tile=16)
    write_blocks(image + 1, tmp_path / "o.zarr", tile=16)  # a Zarr array is replaced
    assert zarr.open_array(tmp_path / "o.zarr", mode="r")[0, 0, 0] == 1


def test_a_tiff_path_never_replaces_a_folder(tmp_path: Any) -> None:
    import zarr

    from patchconv.scale import write_blocks

    zarr.open_array(tmp_path / "z.tif", mode="w", shape=(3, 3), dtype="u1")
    with pytest.raises(PatchconvError, match=r"existing folder that is not a Zarr array"):
        write_blocks(np.zeros((20, 18, 1), np.float32), tmp_path / "z.tif", tile=16)
    assert (tmp_path / "z.tif").is_dir()


def test_complex_samples_are_refused(tmp_path: Any) -> None:
    """A complex Zarr lost its imaginary part with only NumPy's ComplexWarning."""
    import zarr

    from patchconv.scale import open_image

    path = tmp_path / "c.zarr"
    zarr.save_array(str(path), np.ones((32, 32, 1), np.complex64))
    with pytest.raises(PatchconvError, match=r"open_image: the image must hold integer, float or"):
        open_image(path)


def test_a_batch_of_no_images_gives_no_images() -> None:
    """Planning an empty batch divided by zero (ZeroDivisionError) once conv2d took it."""
    x = da.zeros((0, 8, 8, 3), chunks=(1, 8, 8, 3))
    assert conv2d(x, np.ones((3, 3, 3, 2))).compute().shape == (0, 6, 6, 2)
