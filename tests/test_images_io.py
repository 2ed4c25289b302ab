"""Image loading: bit depths and modes become float32 (h, w, c) in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchconv import PatchconvError
from patchconv.images import load_image, save_image


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (5, 7, 3)
    np.testing.assert_allclose(img, data / 255.0, atol=1e-7)
    save_image(tmp_path / "b.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")), data)


def test_16_bit_grayscale_and_resize(tmp_path: Path) -> None:
    data = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(data).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (8, 8, 1)
    np.testing.assert_allclose(img[:, :, 0], data / 65535.0, atol=1e-6)
    assert load_image(tmp_path / "g.png", size=(4, 6)).shape == (4, 6, 1)


def test_channel_conversion(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((3, 3, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png").shape == (3, 3, 4)
    assert load_image(tmp_path / "rgba.png", channels=3).shape == (3, 3, 3)
    assert load_image(tmp_path / "rgba.png", channels=1).shape == (3, 3, 1)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(
        PatchconvError,
        match=r"load_image: path must be an existing image file; got '.*missing.png'",
    ):
        load_image(tmp_path / "missing.png")
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(PatchconvError, match=r"load_image: cannot read '.*not.png' as an image"):
        load_image(tmp_path / "not.png")
    with pytest.raises(PatchconvError, match=r"load_image: channels must be 1, 3 or 4; got 2"):
        load_image(tmp_path / "not.png", channels=2)
    with pytest.raises(PatchconvError, match=r"save_image: image must be"):
        save_image(tmp_path / "x.png", np.zeros((2, 2, 2)))


def test_deep_tiffs_keep_their_values_as_open_image_streams_them(tmp_path: Path) -> None:
    """TIFFs of more than 8 bits a sample go through tifffile: Pillow read 16-bit RGB as 8 bits,
    divided float grey by 255 and could not open float64 or float RGB at all."""
    tifffile = pytest.importorskip("tifffile")
    from patchconv.scale import open_image

    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    grey = rng.random((6, 7)).astype(np.float32)
    rgb64 = rng.random((6, 7, 3))
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    tifffile.imwrite(tmp_path / "rgb64.tiff", rgb64, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", rgb64.transpose(2, 0, 1), photometric="rgb")
    cases = {"rgb16.tif": rgb16 / 65535.0, "grey.tif": grey[:, :, None]}
    cases |= {"rgb64.tiff": rgb64, "planar.tif": rgb64}
    for name, expected in cases.items():
        img = load_image(tmp_path / name)
        assert img.dtype == np.float32 and img.shape == expected.shape, name
        np.testing.assert_allclose(img, expected, atol=1e-6)
        np.testing.assert_allclose(img, open_image(tmp_path / name).compute()[0], atol=1e-7)
    luma = load_image(tmp_path / "rgb64.tiff", channels=1)
    np.testing.assert_allclose(luma[:, :, 0], rgb64 @ [0.299, 0.587, 0.114], atol=1e-6)
    small = load_image(tmp_path / "rgb16.tif", size=(3, 4))
    assert small.shape == (3, 4, 3) and 0.0 <= small.min() and small.max() <= 1.0
    stack = np.zeros((5, 4, 6), np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(PatchconvError, match=r"must hold one image, .* got shape \(5, 4, 6\)"):
        load_image(tmp_path / "stack.tif")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((4, 6, 3), np.uint8)
    stored[0, 0] = 255  # top left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show it"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    shown = load_image(tmp_path / "phone.png")
    np.testing.assert_array_equal(shown, np.rot90(stored, k=-1) / 255.0)  # (6, 4, 3)
    Image.fromarray(stored).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(load_image(tmp_path / "plain.png"), stored / 255.0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_reads_as_viewers_show_it(tmp_path: Path, orientation: int) -> None:
    import tifffile
    from PIL import ImageOps

    from patchconv import scale
    from patchconv.images import upright

    stored = np.random.default_rng(orientation).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "a.png", exif=exif)
    # Pillow's own transpose is the reference for the 8 cases.
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a.png"))) / 255.0
    np.testing.assert_array_equal(upright(stored, orientation) / 255.0, shown)
    np.testing.assert_allclose(load_image(tmp_path / "a.png"), shown, atol=1e-7)
    tag = [(274, "H", 1, orientation, True)]
    # 8-bit through Pillow; float32 through tifffile (Pillow reads no float RGB); tiled, streamed.
    tifffile.imwrite(tmp_path / "b.tif", stored, photometric="rgb", extratags=tag)
    tifffile.imwrite(
        tmp_path / "c.tif", stored.astype(np.float32) / 255, photometric="rgb", extratags=tag
    )
    tifffile.imwrite(tmp_path / "d.tif", stored, photometric="rgb", tile=(16, 16), extratags=tag)
    for name in ("b.tif", "c.tif"):
        np.testing.assert_allclose(load_image(tmp_path / name), shown, atol=1e-7)
    streamed = scale.open_image(tmp_path / "d.tif").compute()[0]
    np.testing.assert_allclose(streamed, shown, atol=1e-7)
