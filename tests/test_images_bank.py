"""The named filter bank, kernels from files, output scaling, channel conversion, the sample
image and the streaming file helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

from patchconv import PatchconvError, images
from patchconv.images import (
    FILTERS,
    apply_kernel,
    contact_sheet,
    convert_channels,
    filter_kernel,
    load_kernel,
    sample_image,
    scale_output,
)
from patchconv.scale import open_image, write_blocks


@pytest.mark.parametrize("name", [n for n, f in FILTERS.items() if f.plane is not None])
def test_per_channel_filters_equal_scipy_on_every_channel(
    name: str, rng: np.random.Generator
) -> None:
    x = rng.random((13, 11, 3)).astype(np.float32)
    k = filter_kernel(name, 3)
    assert k.kernel.shape[2:] == (1, 3) and k.groups == 3 and k.colour
    plane = FILTERS[name].plane
    expected = np.stack(
        [ndi.correlate(x[:, :, c].astype(float), plane, mode="constant") for c in range(3)], -1
    )
    np.testing.assert_allclose(apply_kernel(x, k), expected, rtol=1e-5, atol=1e-5)


def test_colour_mixing_filters_read_all_three_channels(rng: np.random.Generator) -> None:
    x = rng.random((9, 10, 3))
    luma = x @ np.array([0.299, 0.587, 0.114])
    edges = filter_kernel("luma_edges", 3)
    assert edges.kernel.shape == (3, 3, 3, 2) and not edges.colour
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    got = apply_kernel(x.astype(np.float32), edges)
    np.testing.assert_allclose(
        got[:, :, 0], ndi.correlate(luma, sobel_x, mode="constant"), atol=1e-5
    )
    np.testing.assert_allclose(
        got[:, :, 1], ndi.correlate(luma, sobel_x.T, mode="constant"), atol=1e-5
    )
    opp = apply_kernel(x.astype(np.float32), filter_kernel("opponent", 3))
    np.testing.assert_allclose(opp[:, :, 0], x[:, :, 0] - x[:, :, 1], atol=1e-6)
    np.testing.assert_allclose(opp[:, :, 1], x[:, :, 2] - (x[:, :, 0] + x[:, :, 1]) / 2, atol=1e-6)
    grey = apply_kernel(x.astype(np.float32), filter_kernel("grayscale", 3))
    np.testing.assert_allclose(grey[:, :, 0], luma, atol=1e-6)


def test_sobel_x_is_a_cross_correlation_positive_on_rising_ramps() -> None:
    x = np.tile(np.arange(6, dtype=np.float32), (5, 1))[:, :, None]  # x[i, j] = j
    out = apply_kernel(x, filter_kernel("sobel_x", 1), padding="valid")
    np.testing.assert_array_equal(out, np.full((3, 4, 1), 8.0))


def test_filter_errors() -> None:
    with pytest.raises(
        PatchconvError,
        match=r"filter_kernel: name must be one of identity, .*; got 'blur' \(did you mean",
    ):
        filter_kernel("blur", 3)
    with pytest.raises(
        PatchconvError,
        match=r"filter_kernel: filter 'opponent' mixes the three RGB channels, so c_in must be 3; got 4",
    ):
        filter_kernel("opponent", 4)


def test_scale_output_modes() -> None:
    y = np.array([[[-2.0, 1.0], [1.0, 3.0]]])  # (1, 2, 2)
    np.testing.assert_array_equal(scale_output(y, "clip", joint=False), np.clip(y, 0, 1))
    np.testing.assert_allclose(scale_output(y, "abs", joint=False), [[[1.0, 1 / 3], [0.5, 1.0]]])
    np.testing.assert_allclose(scale_output(y, "abs", joint=True), np.abs(y) / 3)
    np.testing.assert_allclose(
        scale_output(y, "normalise", joint=False), [[[0.0, 0.0], [1.0, 1.0]]]
    )
    np.testing.assert_allclose(scale_output(y, "normalise", joint=True), (y + 2) / 5)
    np.testing.assert_array_equal(scale_output(y, "none", joint=True), y)
    flat = scale_output(np.zeros((2, 2, 1)), "normalise", joint=False)
    np.testing.assert_array_equal(flat, np.zeros((2, 2, 1)))  # a constant map stays finite
    with pytest.raises(PatchconvError, match=r"scale_output: mode must be one of .*; got 'log'"):
        scale_output(y, "log", joint=False)


def test_load_kernel_shapes_and_errors(tmp_path: Path) -> None:
    np.save(tmp_path / "k2.npy", np.ones((3, 3)))
    np.save(tmp_path / "k3.npy", np.ones((3, 3, 3)))
    np.savez(tmp_path / "k4.npz", kernel=np.ones((5, 5, 3, 4)), bias=np.arange(4.0))
    assert load_kernel(tmp_path / "k2.npy").groups == 0  # filters every channel on its own
    assert load_kernel(tmp_path / "k3.npy").kernel.shape == (3, 3, 3, 1)
    k4 = load_kernel(tmp_path / "k4.npz")
    assert k4.kernel.shape == (5, 5, 3, 4) and k4.bias is not None and k4.c_in == 3
    with pytest.raises(
        PatchconvError,
        match=r"load_kernel: path must be an existing .npy or .npz file; got '.*nope.npy'",
    ):
        load_kernel(tmp_path / "nope.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(
        PatchconvError,
        match=r"load_kernel: '.*obj.npy' holds an object array, which is never loaded",
    ):
        load_kernel(tmp_path / "obj.npy")
    np.savez(tmp_path / "w.npz", weights=np.ones((3, 3)))
    with pytest.raises(
        PatchconvError,
        match=r"load_kernel: '.*w.npz' must hold an array named 'kernel' \(and optionally 'bias'\); got \['weights'\]",
    ):
        load_kernel(tmp_path / "w.npz")
    np.savez(tmp_path / "b.npz", kernel=np.ones((3, 3, 1, 2)), bias=np.ones(3))
    with pytest.raises(
        PatchconvError,
        match=r"load_kernel: bias must have shape \(2,\) to match the kernel \(3, 3, 1, 2\); got \(3,\)",
    ):
        load_kernel(tmp_path / "b.npz")
    np.save(tmp_path / "k5.npy", np.ones((1, 1, 1, 1, 1)))
    with pytest.raises(
        PatchconvError,
        match=r"load_kernel: kernel must be a real \(k, k\), .*; got float64 \(1, 1, 1, 1, 1\)",
    ):
        load_kernel(tmp_path / "k5.npy")


def test_convert_channels_on_numpy_and_dask(rng: np.random.Generator) -> None:
    rgb = rng.random((4, 5, 3)).astype(np.float32)
    grey = convert_channels(rgb, 1)
    np.testing.assert_allclose(
        grey[:, :, 0], rgb @ np.array([0.299, 0.587, 0.114], np.float32), rtol=1e-6
    )
    rgba = convert_channels(rgb, 4)
    np.testing.assert_array_equal(rgba[:, :, :3], rgb)
    np.testing.assert_array_equal(rgba[:, :, 3], 1.0)
    np.testing.assert_array_equal(convert_channels(grey, 3), np.repeat(grey, 3, axis=2))
    lazy = convert_channels(da.from_array(rgb, chunks=2), 1)
    np.testing.assert_allclose(lazy.compute(), grey, rtol=1e-6)
    with pytest.raises(
        PatchconvError,
        match=r"convert_channels: channels must be 1, 3 or 4 .*; got 2 for an image with 3",
    ):
        convert_channels(rgb, 2)


def test_sample_image_and_its_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    label, img = sample_image()
    assert label.endswith("grace_hopper.jpg") and img.shape == (600, 512, 3)
    assert sample_image(size=64, channels=1)[1].shape == (64, 64, 1)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    label, card = sample_image(size=(40, 50), channels=4)
    assert label == "synthetic.png" and card.shape == (40, 50, 4)
    assert 0.0 <= card.min() and card.max() <= 1.0 and card.std() > 0.1


def test_contact_sheet_layout() -> None:
    items = [("input", np.ones((30, 60, 3))), ("map", np.zeros((60, 30)))]
    sheet = contact_sheet(items, tile=50, columns=4)
    assert sheet.shape == (50 + 34 + 16, 2 * 58 + 8, 3) and sheet.dtype == np.uint8
    assert sheet[8 + 34 + 20, 8 + 25].tolist() == [255, 255, 255]  # the white input thumbnail
    assert sheet[8 + 34 + 25, 8 + 58 + 25].tolist() == [0, 0, 0]  # the black map thumbnail


def test_streaming_helpers_errors(tmp_path: Path) -> None:
    with pytest.raises(
        PatchconvError, match=r"open_image: path must be an existing image file; got '.*none.tif'"
    ):
        open_image(tmp_path / "none.tif")
    (tmp_path / "bad.tif").write_text("no")
    with pytest.raises(PatchconvError, match=r"open_image: cannot read '.*bad.tif' as a TIFF"):
        open_image(tmp_path / "bad.tif")
    arr = da.zeros((40, 40, 1), chunks=16)
    with pytest.raises(
        PatchconvError,
        match=r"write_blocks: path must end in .zarr, .tif or .tiff; got '.*out.png'",
    ):
        write_blocks(arr, tmp_path / "out.png", tile=16)
    with pytest.raises(
        PatchconvError,
        match=r"write_blocks: tile must be >= 16 \(and a multiple of 16 for TIFF\); got 20",
    ):
        write_blocks(arr, tmp_path / "out.tif", tile=20)


def test_open_image_reads_zarr_planar_tiff_and_png(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    import tifffile
    import zarr

    data = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    z = zarr.open_array(
        tmp_path / "a.zarr", mode="w", shape=data.shape, chunks=(8, 8, 3), dtype=data.dtype
    )
    z[:] = data
    tifffile.imwrite(
        tmp_path / "p.tif", data.transpose(2, 0, 1), photometric="rgb", planarconfig="separate"
    )
    images.save_image(tmp_path / "g.png", data[:, :, 0] / 65535.0)
    for name in ("a.zarr", "p.tif"):
        x = open_image(tmp_path / name, chunks=16)
        assert x.shape == (1, 20, 30, 3) and x.dtype == np.float32
        np.testing.assert_allclose(x.compute()[0], data / 65535.0, rtol=1e-6)
    assert open_image(tmp_path / "g.png").shape == (1, 20, 30, 1)
