"""patchconv explain --figure and --animate: the files render and are not blank."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

import patchconv
from patchconv.cli import main
from patchconv.explain_animate import animation_frames
from patchconv.explain_figure import save_figure


def _pixels(path: Any) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float64)


def test_figure_from_the_command_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "walk.png"
    assert main(["explain", "--seed", "0", "--figure", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.rstrip().splitlines()[-1].startswith("MATCH")  # the text is unchanged
    assert f"wrote the figure to {path}" in captured.err
    pixels = _pixels(path)
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1200
    assert pixels.std() > 20.0  # not blank
    # The highlight colour (the patch, its row, the output pixel) is drawn.
    orange = np.all(np.abs(pixels - [255, 127, 14]) < 30, axis=-1)
    assert orange.sum() > 500
    # A name without a suffix gets .png, and the message names the file written.
    assert main(["explain", "--seed", "0", "--figure", str(tmp_path / "bare")]) == 0
    assert f"wrote the figure to {tmp_path / 'bare.png'}" in capsys.readouterr().err
    assert (tmp_path / "bare.png").is_file() and not (tmp_path / "bare").exists()
    assert main(["explain", "--seed", "0", "--figure", str(tmp_path / "w.jpg")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "w.jpg") as img:
        assert img.format == "JPEG"


@pytest.mark.parametrize(
    "options",
    [
        {"seed": 1, "groups": 3, "filters": 6, "padding": "same", "position": (0, 3)},
        {
            "seed": 2,
            "input_shape": (2, 3, 12, 12),
            "data_format": "channels_first",
            "strides": 2,
            "dilation_rate": 2,
            "padding": ((2, 0), (1, 3)),
            "filters": 8,
            "position": (4, 5),
            "batch_index": 1,
        },
        {"seed": 3, "input_shape": (1, 40, 40, 16), "filters": 32, "kernel_size": 5},
    ],
)
def test_figure_renders_for_other_options(tmp_path: Any, options: dict[str, Any]) -> None:
    path = tmp_path / "walk.png"
    save_figure(patchconv.explain(**options), path)
    assert _pixels(path).std() > 20.0


def test_animation_from_the_command_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    path = tmp_path / "walk.gif"
    assert main(["explain", "--seed", "0", "--animate", str(path)]) == 0
    assert f"wrote the animation to {path}" in capsys.readouterr().err
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        # Four output pixels, two frames each: the patch and its row, then its output.
        assert gif.n_frames == 8
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.float64))
    assert all(f.std() > 20.0 for f in frames)
    assert all(np.abs(a - b).max() > 0 for a, b in itertools.pairwise(frames))


def test_animation_caps_its_frames_on_big_outputs() -> None:
    wt = patchconv.explain(seed=0, input_shape=(1, 20, 20, 3), padding="same")
    frames = animation_frames(wt, max_frames=12)
    assert len(frames) == 12  # one per sampled position, the first and last included
    assert np.asarray(frames[-1].convert("RGB")).std() > 20.0


def test_kernel_grid_names_each_groups_channels() -> None:
    """With groups, row r of filter f reads input channel g*cg + r: the rows were all labelled
    "channel r" (true of group 0 only); they are slices, each title naming its channels."""
    from patchconv.explain_figure import draw_figure, pyplot

    fig = draw_figure(patchconv.explain(seed=1, groups=3, filters=6, input_shape=(1, 6, 6, 3)))
    try:
        titles = {ax.get_title() for ax in fig.axes}
        labels = {ax.get_ylabel() for ax in fig.axes}
    finally:
        pyplot().close(fig)
    assert "filter 2\n(group 1: ch 1-1)" in titles and "filter 5\n(group 2: ch 2-2)" in titles
    assert "slice 0" in labels and "channel 0" not in labels
    fig = draw_figure(patchconv.explain(seed=1, input_shape=(1, 6, 6, 3)))
    try:
        assert "channel 2" in {ax.get_ylabel() for ax in fig.axes}
    finally:
        pyplot().close(fig)


def test_an_output_never_replaces_the_image(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """--figure (or --animate, --html) naming the --image file replaced the image with the
    picture; refused before any work."""
    from PIL import Image

    image = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    before = image.read_bytes()
    assert main(["explain", "--image", str(image), "--size", "5", "--figure", str(image)]) == 2
    assert f"--figure {str(image)!r} would overwrite the input --image" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_blank_maps_hold_zeros_under_their_mask() -> None:
    """np.ma.masked_all leaves its data uninitialised and matplotlib's colour maps scale the
    masked values too: a garbage 1e38 overflowed now and then (a RuntimeWarning in the
    figure with groups). The blanks hold zeros."""
    from patchconv.explain_figure import blank

    b = blank((3, 4))
    assert b.mask.all() and not np.ma.getdata(b).any()
