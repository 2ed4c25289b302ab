"""`patchconv apply`: PNGs and a contact sheet that are the conv2d of the input, clear errors,
no partial output, kernels from files, and streaming through Dask with --chunks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import tifffile
import zarr
from PIL import Image

import patchconv
from patchconv import images, scale
from patchconv.cli import main

LUMA = np.array([0.299, 0.587, 0.114])


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 255.0


def _abs_scaled(y: np.ndarray) -> np.ndarray:
    return np.abs(y) / np.abs(y).max()


def _close_to_png(path: Path, expected: np.ndarray) -> None:
    # One 8-bit step: the PNG holds round(255 * value).
    np.testing.assert_allclose(_png(path), np.clip(expected, 0, 1), rtol=0, atol=0.5 / 255 + 1e-6)


def test_no_arguments_writes_the_conv2d_of_the_sample_as_pngs_and_a_sheet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["apply"]) == 0
    printed = capsys.readouterr().out
    label, _ = images.sample_image()
    assert label.endswith("grace_hopper.jpg") and label in printed
    x = np.asarray(Image.open(label), dtype=np.float64) / 255.0  # (600, 512, 3)
    out = tmp_path / "patchconv_out"
    # Per-channel filters, checked against scipy's correlate with zero borders ("same").
    planes = {
        "gaussian_blur": (np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256, "clip"),
        "sharpen": (np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]), "clip"),
        "sobel_x": (np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]), "abs"),
        "sobel_y": (np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]), "abs"),
        "laplacian": (np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]), "abs"),
    }
    for name, (plane, mode) in planes.items():
        y = np.stack([ndi.correlate(x[:, :, c], plane, mode="constant") for c in range(3)], -1)
        _close_to_png(out / f"grace_hopper_{name}.png", _abs_scaled(y) if mode == "abs" else y)
    # luma_edges: one (3, 3, 3, 2) kernel reading all three channels at once.
    luma = x @ LUMA
    for suffix, plane in [("dx", planes["sobel_x"][0]), ("dy", planes["sobel_y"][0])]:
        y = ndi.correlate(luma, plane, mode="constant")
        _close_to_png(out / f"grace_hopper_luma_edges_{suffix}.png", _abs_scaled(y))
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == 8 and not [n for n in written if "partial" in n]
    # The contact sheet: input + 7 maps as labelled 240-pixel tiles, 4 per row.
    sheet = np.asarray(Image.open(out / "grace_hopper_sheet.png"))
    assert sheet.shape == (2 * (240 + 34 + 8) + 8, 4 * (240 + 8) + 8, 3)
    thumb_w = round(512 * 240 / 600)
    tile = sheet[8 + 34 : 8 + 34 + 240, 8 + (240 - thumb_w) // 2 :][:, :thumb_w].astype(float)
    small = np.asarray(Image.open(label).resize((thumb_w, 240), Image.Resampling.LANCZOS), float)
    assert np.corrcoef(tile.ravel(), small.ravel())[0, 1] > 0.99  # the input, beside the maps


def test_kernels_from_npz_and_npy(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "photo.png")
    x = img / 255.0
    kernel = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
    bias = np.array([0.25, -0.5], dtype=np.float32)
    np.savez(tmp_path / "trained.npz", kernel=kernel, bias=bias)  # what train --save writes
    np.save(tmp_path / "blur.npy", np.full((3, 3), 1 / 9))
    argv = ["apply", str(tmp_path / "photo.png"), "-w", str(tmp_path / "trained.npz")]
    argv += ["-w", str(tmp_path / "blur.npy"), "--strides", "2", "--padding", "1,0,2,1"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    options = {"strides": 2, "padding": ((1, 0), (2, 1))}
    y = patchconv.conv2d(x[None], kernel, bias, **options)[0]  # (10, 13, 2)
    for j in range(2):
        m = y[:, :, j]
        _close_to_png(tmp_path / "out" / f"photo_trained_map{j}.png", (m - m.min()) / np.ptp(m))
    blur = np.stack(
        [
            ndi.correlate(
                np.pad(x[:, :, c], ((1, 0), (2, 1))), np.full((3, 3), 1 / 9), mode="constant"
            )[1:-1:2, 1:-1:2]
            for c in range(3)
        ],
        -1,
    )
    assert _png(tmp_path / "out" / "photo_blur.png").shape == (10, 13, 3) == blur.shape
    _close_to_png(tmp_path / "out" / "photo_blur.png", (blur - blur.min()) / np.ptp(blur))


def test_grey_16_bit_input_and_list_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (np.arange(30 * 40).reshape(30, 40) * 50).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "g16.png")
    argv = ["apply", str(tmp_path / "g16.png"), "-f", "identity,sobel_x", "--no-sheet"]
    assert main([*argv, "-o", str(tmp_path / "o"), "--dilation-rate", "2"]) == 0
    _close_to_png(tmp_path / "o" / "g16_identity.png", data / 65535.0)
    # Dilation 2 spreads the 3x3 Sobel over 5x5 with zeros between its taps.
    dilated = np.zeros((5, 5))
    dilated[::2, ::2] = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    y = ndi.correlate(data / 65535.0, dilated, mode="constant")
    _close_to_png(tmp_path / "o" / "g16_sobel_x.png", _abs_scaled(y))
    assert not (tmp_path / "o" / "g16_sheet.png").exists()
    assert main(["apply", "--list-filters"]) == 0
    text = capsys.readouterr().out
    for name in images.FILTERS:
        assert name in text
    assert "3x3x3x2" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.png"], r"load_image: path must be an existing image file; got '.*missing.png'"),
        (["-f", "sobl"], r"filter_kernel: name must be one of .*; got 'sobl' \(did you mean sobel"),
        (["-w", "bad.npy"], r"apply: kernel 'bad' reads 2 input channels but '.*a.png' has 3"),
        (["--strides", "x"], r"apply: --strides must be 1 or 2 comma-separated integers; got 'x'"),
        (["--padding", "1,2,3"], r"apply: --padding must be valid, same, same_lower, P, PH,PW"),
        (["--padding", "bogus"], r"apply: --padding must be valid, .* or T,B,L,R; got 'bogus'"),
        (["-f", ""], r"apply: -f/--filter needs a filter name; got \[''\]"),
        (["-f", ",", "-f", " "], r"apply: -f/--filter needs a filter name; got \[',', ' '\]"),
        (["--chunks", "64"], r"apply: --chunks needs --filter NAME or --weights FILE"),
        (["--chunks", "0", "-f", "identity"], r"apply: --chunks must be >= 16 .*; got 0"),
        (["--chunks", "64", "--size", "8", "-f", "identity"], r"--size resizes in memory"),
        (["--output-format", "tiff"], r"apply: --output-format is for streaming; it needs"),
        (["--cluster", "local"], r"apply: --cluster is for streaming; it needs --chunks"),
        (["-f", "identity,identity"], r"'-f identity' and '-f identity' would both write maps"),
        (["-w", "sheet.npy"], r"'the contact sheet' and '-w sheet.npy' would both write"),
        (["-f", "identity", "-w", "identity.npy"], r"and '-w identity.npy' would both write"),
        (["-w", "junk.npz"], r"load_kernel: '.*junk.npz' is not a .npy or .npz array file"),
        (["-w", "text.npy"], r"is not a .npy or .npz array file \(ValueError; pickled objects"),
        (["-w", "nan.npy"], r"load_kernel: kernel in '.*nan.npy' holds NaN or Inf values"),
        (["-o", "a.png"], r"--out must be a folder we can write to or make; got 'a.png', where"),
        (["-o", "a.png/sub"], r"got 'a.png/sub', where '.*a.png' is a file"),
        (
            ["-f", "sobel_x", "--scale", "none"],
            r"--scale none keeps raw float32 .* without --chunks",
        ),
        (["folder.zarr"], r"IMAGE must be an image file; got the folder 'folder.zarr' .* --chunks"),
        (["--size", "10000000"], r"load_image: an image resized to size 10000000 x 10000000 needs"),
        (
            ["-f", "luma_edges", "--channels", "1"],
            r"filter_kernel: filter 'luma_edges' mixes the three RGB channels, so c_in must be 3; got 1",
        ),
    ],
)
def test_errors_are_one_line_and_leave_no_output(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save("a.png")
    np.save("bad.npy", np.ones((3, 3, 2, 1)))
    np.save("identity.npy", np.ones((3, 3)))
    np.save("sheet.npy", np.ones((3, 3)))
    np.save("nan.npy", np.full((3, 3), np.nan))
    Path("junk.npz").write_bytes(b"PK\x03\x04junk")
    Path("text.npy").write_text("1 2 3")
    Path("folder.zarr").mkdir()
    full = ["apply", *(argv if argv[0] in ("missing.png", "folder.zarr") else ["a.png", *argv])]
    assert main(full) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "patchconv_out").exists()


def test_a_bad_second_image_or_a_failing_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_text("not an image")
    out = tmp_path / "out"
    assert main(["apply", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out)]) == 2
    assert not out.exists()
    calls = []
    real_save = Image.Image.save

    def failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        calls.append(fp)
        if len(calls) == 3:
            raise OSError("disk full")
        real_save(self, fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "save", failing_save)
    assert main(["apply", str(tmp_path / "a.png"), "-o", str(out)]) == 2
    assert len(calls) == 3 and list(out.iterdir()) == []


def test_streaming_tiled_tiff_to_zarr_and_tiff(tmp_path: Path, rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img, tile=(32, 32), photometric="rgb")
    x = img / np.float32(255)
    out = tmp_path / "s"
    argv = ["apply", str(tmp_path / "big.tif"), "--chunks", "48", "-o", str(out)]
    assert main([*argv, "-f", "sobel_x", "--scale", "none", "--strides", "2"]) == 0
    sobel = images.filter_kernel("sobel_x", 3)
    expected = patchconv.conv2d(x[None], sobel.kernel, strides=2, padding="same", groups=3)[0]
    got = zarr.open_array(out / "big_sobel_x.zarr", mode="r")
    assert got.chunks == (48, 48, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[:], expected, rtol=1e-5, atol=1e-5)
    assert main([*argv, "-f", "luma_edges", "--output-format", "tiff"]) == 0
    with tifffile.TiffFile(out / "big_luma_edges.tif") as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].tilewidth == 48
        maps = tif.asarray()
    y = np.stack(
        [
            ndi.correlate(x @ LUMA, p, mode="constant")
            for p in (
                np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
                np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),
            )
        ],
        -1,
    )
    np.testing.assert_allclose(
        maps / 255.0, np.abs(y) / np.abs(y).max(axis=(0, 1)), atol=0.5 / 255 + 1e-5
    )
    assert sorted(p.name for p in out.iterdir()) == ["big_luma_edges.tif", "big_sobel_x.zarr"]


def test_streaming_errors_and_a_local_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40
    tifffile.imwrite(tmp_path / "g.tif", img, tile=(16, 16))
    out = ["-o", str(tmp_path / "o")]
    assert main(["apply", "--chunks", "32", "-f", "identity", *out]) == 2
    tiff40 = ["--chunks", "40", "--output-format", "tiff", "-f", "identity"]
    assert main(["apply", str(tmp_path / "g.tif"), *tiff40, *out]) == 2
    err = capsys.readouterr().err
    assert "apply: --chunks needs an IMAGE (a large TIFF or Zarr); got none" in err
    assert (
        "apply: --chunks must be >= 16 (and a multiple of 16 for --output-format tiff); got 40"
        in err
    )
    assert not (tmp_path / "o").exists()
    argv = ["apply", str(tmp_path / "g.tif"), "--chunks", "16", "-f", "box_blur", "--scale", "none"]
    assert main([*argv, "--cluster", "local", *out]) == 0
    # Zarr takes any chunk size from 16; two inputs with one stem get two outputs.
    import shutil

    shutil.copytree(tmp_path / "o" / "g_box_blur.zarr", tmp_path / "g.zarr")
    two = ["apply", str(tmp_path / "g.tif"), str(tmp_path / "g.zarr"), "-f", "identity"]
    assert main([*two, "--chunks", "20", "--scale", "none", *out]) == 0
    assert (tmp_path / "o" / "g_identity.zarr").is_dir()
    assert (tmp_path / "o" / "g__identity.zarr").is_dir()
    got = zarr.open_array(tmp_path / "o" / "g_box_blur.zarr", mode="r")[:, :, 0]
    expected = ndi.correlate(img / 65535.0, np.full((5, 5), 1 / 25), mode="constant")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_dark_16_bit_images_keep_their_scale_when_resized(tmp_path: Path) -> None:
    data = np.linspace(50, 249, 40 * 40).reshape(40, 40).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "dark16.png")
    loaded = images.load_image(tmp_path / "dark16.png", size=20)
    assert 0.0 < loaded.max() <= 250 / 65535.0


def test_alpha_is_dropped_unless_asked_for(tmp_path: Path) -> None:
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[:, 6:, :3] = 200
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    out = tmp_path / "o"
    assert (
        main(["apply", str(tmp_path / "a.png"), "-f", "sobel_x", "--no-sheet", "-o", str(out)]) == 0
    )
    written = np.asarray(Image.open(out / "a_sobel_x.png"))
    assert written.shape == (12, 12, 3)  # no alpha plane: an opaque edge map
    assert written[:, 5:7].max() > 0 and written[:, :4].max() == 0
    kept = images.load_image(tmp_path / "a.png")
    assert kept.shape[2] == 4 and images.load_image(tmp_path / "a.png", alpha=False).shape[2] == 3


def test_streaming_drops_alpha_too(tmp_path: Path) -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, 16:, :3] = 200
    rgba[..., 3] = 255
    tifffile.imwrite(tmp_path / "a.tif", rgba, tile=(16, 16), photometric="rgb", extrasamples=[2])
    argv = ["apply", str(tmp_path / "a.tif"), "--chunks", "16", "-f", "sobel_x"]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 0
    assert zarr.open_array(tmp_path / "o" / "a_sobel_x.zarr", mode="r").shape == (32, 32, 3)


def test_default_filters_fit_the_channels_asked_for(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "o"
    assert (
        main(["apply", str(tmp_path / "a.png"), "--channels", "1", "--no-sheet", "-o", str(out)])
        == 0
    )
    written = sorted(p.name for p in out.iterdir())
    expected = [f"a_{k}.png" for k in images.DEFAULT_FILTERS if images.FILTERS[k].mixing is None]
    assert written == sorted(expected) and len(expected) == len(images.DEFAULT_FILTERS) - 1


def test_maps_past_the_memory_are_refused_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from patchconv import _config

    image = np.zeros((64, 64, 3), np.float32)  # 48 KiB; with its six maps and a raw output 260
    monkeypatch.setattr(_config, "physical_memory", lambda: 5 * image.nbytes)
    with pytest.raises(ValueError, match=r"apply: 1 image\(s\) through 6 filter\(s\).* needs"):
        images.run_apply([("a", image)], list(images.DEFAULT_FILTERS), tmp_path / "o")
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(_config, "physical_memory", lambda: 6 * image.nbytes)
    assert (
        len(images.run_apply([("a", image)], list(images.DEFAULT_FILTERS), tmp_path / "o")) == 8
    )  # 7 maps, 1 sheet


def test_a_containers_memory_limit_counts_where_smaller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from patchconv import _config

    whole = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    (tmp_path / "v2").write_text("max\n")  # no limit
    (tmp_path / "v1").write_text(f"{2**20}\n")
    monkeypatch.setattr(_config, "_CGROUP_LIMITS", (str(tmp_path / "v2"), str(tmp_path / "none")))
    assert _config.physical_memory() == whole
    monkeypatch.setattr(_config, "_CGROUP_LIMITS", (str(tmp_path / "v2"), str(tmp_path / "v1")))
    assert _config.physical_memory() == 2**20


def _stream_and_memory(tmp_path: Path, name: str, *extra: str) -> tuple[np.ndarray, np.ndarray]:
    """apply's maps for one image and filter, streamed (--chunks) and in memory (PNG)."""
    src = str(tmp_path / name)
    stem = Path(name).stem
    assert main(["apply", src, "--chunks", "16", *extra, "-o", str(tmp_path / "s")]) == 0
    assert main(["apply", src, "--no-sheet", *extra, "-o", str(tmp_path / "m")]) == 0
    filt = extra[extra.index("-f") + 1]
    streamed = zarr.open_array(tmp_path / "s" / f"{stem}_{filt}.zarr", mode="r")[:]
    memory = np.asarray(Image.open(tmp_path / "m" / f"{stem}_{filt}.png"))
    return streamed, memory.reshape(memory.shape[0], memory.shape[1], -1)


@pytest.mark.parametrize(
    ("kind", "channels"),
    [
        ("float", 3),  # values past [0, 1]: clipped, as in memory
        ("miniswhite", 1),  # 0 is white
        ("palette", 3),  # indices into a colour map
        ("grey_alpha_tiff", 1),  # grey + alpha: alpha dropped, one channel left
        ("grey_alpha_png", 1),
    ],
)
def test_streaming_reads_images_as_memory_does(
    tmp_path: Path, rng: np.random.Generator, kind: str, channels: int
) -> None:
    h, w = 37, 29
    name = f"{kind}.tif"
    if kind == "float":
        data = rng.uniform(-1.5, 2.5, (h, w, 3)).astype(np.float32)
        tifffile.imwrite(tmp_path / name, data, tile=(16, 16), photometric="rgb")
    elif kind == "miniswhite":
        data = rng.integers(0, 256, (h, w), dtype=np.uint8)
        tifffile.imwrite(tmp_path / name, data, tile=(16, 16), photometric="miniswhite")
    elif kind == "palette":
        data = rng.integers(0, 4, (h, w), dtype=np.uint8)
        cmap = np.zeros((3, 256), np.uint16)
        cmap[:, :4] = [[65535, 0, 0, 30000], [0, 65535, 0, 30000], [0, 0, 65535, 30000]]
        tifffile.imwrite(tmp_path / name, data, photometric="palette", colormap=cmap)
    elif kind == "cmyk":
        data = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        tifffile.imwrite(tmp_path / name, data, photometric="separated")
    elif kind == "grey_alpha_tiff":
        data = np.stack([rng.integers(0, 256, (h, w)), np.full((h, w), 255)], -1).astype(np.uint8)
        tifffile.imwrite(
            tmp_path / name, data, tile=(16, 16), photometric="minisblack", extrasamples=[2]
        )
    else:
        name = "grey_alpha.png"
        data = np.stack([rng.integers(0, 256, (h, w)), np.full((h, w), 255)], -1).astype(np.uint8)
        Image.fromarray(data, mode="LA").save(tmp_path / name)
    expected = images.load_image(tmp_path / name, alpha=False)
    assert expected.shape == (h, w, channels)
    streamed = scale.open_image(tmp_path / name).compute()[0]
    np.testing.assert_allclose(streamed[..., :channels], expected, atol=1e-6)
    assert streamed.shape[2] == channels + (kind.startswith("grey_alpha"))  # alpha kept there
    got, memory = _stream_and_memory(tmp_path, name, "-f", "gaussian_blur")
    assert got.shape == memory.shape == (h, w, channels)
    assert np.abs(got.astype(int) - memory).max() <= 1


def test_sixteen_bit_grey_png_keeps_its_range_in_any_channels(tmp_path: Path) -> None:
    data = np.linspace(0, 65535, 30 * 40).reshape(30, 40).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "g16.png")
    grey = images.load_image(tmp_path / "g16.png")
    np.testing.assert_allclose(grey[..., 0], data / 65535.0, atol=1e-6)
    for channels in (1, 3, 4):  # Pillow's convert clipped it at 255 of 65535: nearly all white
        got = images.load_image(tmp_path / "g16.png", channels=channels)
        assert got.shape == (30, 40, channels)
        np.testing.assert_allclose(got[..., : min(channels, 3)], grey[..., [0] * min(channels, 3)])
    assert images.load_image(tmp_path / "g16.png", channels=4)[..., 3].min() == 1.0
    got, memory = _stream_and_memory(tmp_path, "g16.png", "--channels", "3", "-f", "sharpen")
    assert np.abs(got.astype(int) - memory).max() <= 1


def test_streaming_checks_every_image_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(tmp_path / "grey.png")
    np.save(tmp_path / "k.npy", np.ones((3, 3, 3, 2), np.float32))  # reads 3 channels
    out = tmp_path / "o"
    argv = ["apply", str(tmp_path / "rgb.png"), str(tmp_path / "grey.png"), "--chunks", "16"]
    assert main([*argv, "-w", str(tmp_path / "k.npy"), "-o", str(out)]) == 2
    assert "grey.png" in capsys.readouterr().err
    assert not out.exists()  # rgb.png's map was not written first


def test_streaming_chunks_larger_than_the_image(tmp_path: Path) -> None:
    Image.fromarray(np.full((37, 29, 3), 90, np.uint8)).save(tmp_path / "a.png")
    argv = ["apply", str(tmp_path / "a.png"), "--chunks", "100000", "-f", "sobel_x"]
    assert main([*argv, "-o", str(tmp_path / "o")]) == 0
    assert zarr.open_array(tmp_path / "o" / "a_sobel_x.zarr", mode="r").chunks == (37, 37, 3)
    assert (
        main([*argv[:3], "4096", *argv[4:], "--output-format", "tiff", "-o", str(tmp_path / "t")])
        == 0
    )
    with tifffile.TiffFile(tmp_path / "t" / "a_sobel_x.tif") as tif:
        assert tif.pages[0].tilewidth == 48 and tif.asarray().shape == (37, 29, 3)


def _orient6(tmp_path: Path, name: str, data: np.ndarray, **options: object) -> Path:
    """``data`` saved as a tiled TIFF whose Orientation tag (6) says: turn it clockwise."""
    path = tmp_path / name
    tifffile.imwrite(path, data, tile=(16, 16), extratags=[(274, "H", 1, 6, True)], **options)
    return path


def test_streamed_tiffs_of_every_colour_kind_come_upright_as_in_memory(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    index = rng.integers(0, 4, (20, 36), dtype=np.uint8)
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :4] = [[65535, 0, 0, 30000], [0, 65535, 0, 30000], [0, 0, 65535, 30000]]
    white16 = rng.integers(0, 65536, (20, 36), dtype=np.uint16)
    paths = {
        "palette": _orient6(tmp_path, "p.tif", index, photometric="palette", colormap=cmap),
        "white16": _orient6(tmp_path, "w.tif", white16, photometric="miniswhite"),
        "int8": _orient6(tmp_path, "i.tif", rng.integers(-128, 128, (20, 36), dtype=np.int8)),
    }
    expected = {
        "palette": np.rot90(cmap.T[index] / 65535.0, -1),
        "white16": np.rot90(1.0 - white16 / 65535.0, -1)[:, :, None],
    }
    for kind, path in paths.items():
        memory = images.load_image(path)
        streamed = scale.open_image(path)
        assert max(streamed.chunks[1] + streamed.chunks[2]) == 16  # a tile at a time
        np.testing.assert_allclose(streamed.compute()[0], memory, atol=1e-6)
        assert memory.shape[:2] == (36, 20)
        if kind in expected:
            np.testing.assert_allclose(memory, expected[kind], atol=1e-6)
    signed = images.load_image(paths["int8"])[..., 0]  # -128..127 onto 0..1, not as unsigned
    raw = np.rot90(tifffile.imread(paths["int8"]), -1)
    np.testing.assert_allclose(signed, (raw.astype(float) + 128) / 255, atol=1e-6)


def test_cmyk_is_refused_when_streamed_and_bilevel_is_grey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((20, 20, 4), np.uint8), photometric="separated")
    with pytest.raises(patchconv.PatchconvError, match=r"holds SEPARATED samples .* convert it"):
        scale.open_image(tmp_path / "c.tif")
    assert images.load_image(tmp_path / "c.tif").shape == (20, 20, 3)  # Pillow converts it
    bits = np.zeros((20, 20), bool)
    bits[:, 10:] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    tifffile.imwrite(tmp_path / "b.tif", bits)
    for name in ("b.png", "b.tif"):
        memory = images.load_image(tmp_path / name)
        assert memory.shape == (20, 20, 1)
        np.testing.assert_array_equal(scale.open_image(tmp_path / name).compute()[0], memory)


def test_sixteen_bit_grey_alpha_keeps_its_alpha_for_channels_4(tmp_path: Path) -> None:
    data = np.stack([np.full((16, 16), 30000), np.full((16, 16), 6000)], -1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "la16.tif", data, photometric="minisblack", extrasamples=[2])
    got = images.load_image(tmp_path / "la16.tif", channels=4, alpha=False)
    np.testing.assert_allclose(got[0, 0], [30000 / 65535] * 3 + [6000 / 65535], atol=1e-6)


def test_streaming_cluster_and_targets_are_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(tmp_path / "grey.png")
    np.save(tmp_path / "k.npy", np.ones((3, 3, 3, 2), np.float32))  # reads 3 channels
    started: list[str] = []
    monkeypatch.setattr(scale, "local_client", lambda: started.append("cluster"))
    argv = ["apply", str(tmp_path / "grey.png"), "--chunks", "16", "--cluster", "local"]
    assert main([*argv, "-w", str(tmp_path / "k.npy"), "-o", str(tmp_path / "o")]) == 2
    assert started == []  # no cluster left running after a failed check
    (tmp_path / "p" / "grey_sobel_y.zarr" / "mine").mkdir(parents=True)
    argv = ["apply", str(tmp_path / "grey.png"), "--chunks", "16", "-f", "sobel_x,sobel_y"]
    assert main([*argv, "-o", str(tmp_path / "p")]) == 2
    assert "existing folder that is not a Zarr array" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["grey_sobel_y.zarr"]


def test_a_zarr_arrays_channels_are_all_kept(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((20, 20, 2)).astype(np.float32)
    zarr.open_array(tmp_path / "two.zarr", mode="w", shape=data.shape, dtype="f4")[:] = data
    argv = ["apply", str(tmp_path / "two.zarr"), "--chunks", "16", "-f", "box_blur"]
    assert main([*argv, "--scale", "none", "-o", str(tmp_path / "o")]) == 0
    got = zarr.open_array(tmp_path / "o" / "two_box_blur.zarr", mode="r")[:]
    expected = patchconv.conv2d(
        data[None], images.filter_kernel("box_blur", 2).kernel, padding="same", groups=2
    )[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_white_is_zero_inverts_grey_not_alpha_and_floats_too(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    both = np.stack([grey, np.full_like(grey, 255)], -1)
    tifffile.imwrite(
        tmp_path / "wa.tif", both, photometric="miniswhite", extrasamples=[2], tile=(16, 16)
    )
    floats = rng.random((20, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "wf.tif", floats, photometric="miniswhite")
    for read in (lambda p: scale.open_image(p).compute()[0], images.load_image):
        alpha = read(tmp_path / "wa.tif")
        np.testing.assert_allclose(alpha[..., 0], 1.0 - grey / 255.0, atol=1e-6)
        assert alpha[..., -1].min() == 1.0  # opaque stays opaque
        np.testing.assert_allclose(read(tmp_path / "wf.tif")[..., 0], 1.0 - floats, atol=1e-6)


def test_pillows_palette_tiff_reads_back_exactly(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8))
    img.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    img.putpixel((3, 3), 1)
    img.save(tmp_path / "p.tif")
    for got in (images.load_image(tmp_path / "p.tif"), scale.open_image(tmp_path / "p.tif")[0]):
        np.testing.assert_allclose(np.asarray(got)[0, 0], [1.0, 1.0, 1.0], atol=1e-7)
        np.testing.assert_allclose(np.asarray(got)[3, 3], np.array([10, 20, 30]) / 255, atol=1e-7)


def test_an_output_never_replaces_an_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An input named like an output (a_sobel_x.png beside a.png, or a_sobel_x.zarr streamed
    beside a.zarr) was replaced by the other image's map with no error."""
    monkeypatch.chdir(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save("a.png")
    Image.fromarray(rgb[::-1]).save("a_sobel_x.png")
    before = Path("a_sobel_x.png").read_bytes()
    assert main(["apply", "a.png", "a_sobel_x.png", "-f", "sobel_x", "-o", ".", "--no-sheet"]) == 2
    err = capsys.readouterr().err
    assert "would overwrite the input 'a_sobel_x.png'" in err, err
    assert Path("a_sobel_x.png").read_bytes() == before
    zarr.save_array("a.zarr", np.zeros((32, 32, 1), np.float32))
    zarr.save_array("a_sobel_x.zarr", np.ones((32, 32, 1), np.float32))
    argv = ["apply", "a.zarr", "a_sobel_x.zarr", "--chunks", "16", "-f", "sobel_x", "-o", "."]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"the output '.*a_sobel_x.zarr' would overwrite the input IMAGE", err), err
    np.testing.assert_array_equal(zarr.open_array("a_sobel_x.zarr", mode="r")[:], 1.0)


def test_an_unreachable_cluster_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client connects before the output folder is made (an empty one was left after
    the 30 s timeout), and the error names --cluster."""
    import distributed

    def refuse(address: str, **kwargs: object) -> None:
        raise OSError(f"Timed out trying to connect to {address} after 30 s")

    monkeypatch.setattr(distributed, "Client", refuse)
    monkeypatch.chdir(tmp_path)
    zarr.save_array("a.zarr", np.zeros((32, 32, 1), np.float32))
    argv = [
        "apply",
        "a.zarr",
        "--chunks",
        "16",
        "-f",
        "sobel_x",
        "--cluster",
        "tcp://x:1",
        "-o",
        "s",
    ]
    assert main(argv) == 2
    assert "apply: --cluster 'tcp://x:1': cannot connect (Timed out" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
