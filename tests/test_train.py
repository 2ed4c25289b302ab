"""`patchconv train` and the training tasks: digits accuracy with the default command, learned
colour-selective first-layer kernels on the colour task, weight files and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchconv import nn
from patchconv.cli import main
from patchconv.nn.datasets import COLOR_CLASSES, grayscale, make_colors
from patchconv.nn.training import (
    channel_contrast,
    colors_model,
    random_channel_contrast,
    train_task,
)


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["train", "--json", "--quiet", *args]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1, "--json prints one JSON object and nothing else"
    return json.loads(out)


def test_default_command_reaches_98_percent_on_digits(capsys: pytest.CaptureFixture[str]) -> None:
    """The acceptance command itself: `patchconv train --json` (20 epochs, seed 0)."""
    result = run_json(capsys)
    assert result["task"] == "digits" and result["epochs"] == 20 and result["seed"] == 0
    assert result["train_samples"] == 1437 and result["test_samples"] == 360
    assert result["test_accuracy"] >= 0.98, result
    assert result["seconds"] > 0 and result["total_seconds"] >= result["seconds"]


def test_colour_task_learns_kernel_slices_that_differ_per_channel() -> None:
    """The measured claim: trained on RGB shapes whose class depends on hue, the first layer's
    filters respond differently to R, G and B (channel_contrast) far above what random starting
    kernels score, and far above the same network trained on colour-blind copies of the same
    images. The colour-blind run is the control: it can still learn the shapes."""
    coloured = train_task("colors", verbose=0)
    blind = train_task("colors", verbose=0, colorblind=True)
    conv = coloured.first_conv
    assert conv.kernel is not None and conv.kernel.shape == (3, 3, 3, 8)
    noise = random_channel_contrast(conv.kernel.shape, draws=300, seed=1)
    threshold = float(noise.max())  # the most any of 300 untrained kernels reached
    trained = channel_contrast(conv.kernel)
    assert trained > threshold, (trained, threshold)
    assert channel_contrast(coloured.initial_kernel) < threshold
    assert blind.first_conv.kernel is not None
    assert channel_contrast(blind.first_conv.kernel) < threshold
    # Same starting kernel in both runs: what colour-blind training wrote into the three slices
    # is identical (grey input is the same on every channel); with colour it differs.
    np.testing.assert_array_equal(coloured.initial_kernel, blind.initial_kernel)
    change = conv.kernel - coloured.initial_kernel
    blind_change = blind.first_conv.kernel - blind.initial_kernel
    assert _slice_difference(change) > 0.5
    assert _slice_difference(blind_change) < 1e-3
    # And colour matters for the task: with it nearly every image is right, without it the
    # network can only guess the hue (one in three) once it knows the shape.
    assert coloured.test_accuracy >= 0.95
    assert blind.test_accuracy <= 0.5


def _slice_difference(kernel: np.ndarray) -> float:
    """Mean over filters and channel pairs of |slice_a - slice_b| / mean(|slice_a|, |slice_b|)."""
    values = []
    for f in range(kernel.shape[3]):
        for a in range(kernel.shape[2]):
            for b in range(a + 1, kernel.shape[2]):
                sa, sb = kernel[:, :, a, f], kernel[:, :, b, f]
                norm = (np.linalg.norm(sa) + np.linalg.norm(sb)) / 2
                values.append(np.linalg.norm(sa - sb) / max(norm, 1e-12))
    return float(np.mean(values))


def test_channel_contrast_reads_colour_detectors() -> None:
    k = np.zeros((3, 3, 3, 2))
    k[:, :, :, 0] = 1.0  # the same slice on every channel: colour-blind
    k[:, :, 0, 1], k[:, :, 1, 1] = 1.0, -1.0  # red minus green
    assert channel_contrast(k[..., :1]) == 0.0
    assert channel_contrast(k[..., 1:]) == pytest.approx(1.0)
    assert 0.1 < random_channel_contrast((3, 3, 3, 8), draws=50).mean() < 0.35
    with pytest.raises(ValueError, match=r"channel_contrast: kernel needs >= 2 input channels"):
        channel_contrast(np.ones((3, 3, 1, 4)))


def test_colour_images_hide_hue_from_the_channel_mean() -> None:
    x, y = make_colors(600, seed=3)
    assert x.shape == (600, 16, 16, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(y).tolist()) == set(range(len(COLOR_CLASSES)))
    hue = y % 3
    brightest = x.reshape(600, -1, 3).max(axis=1)  # the shape's colour
    assert np.mean(brightest.argmax(axis=1) == hue) > 0.95  # red / green / blue channel wins
    grey = grayscale(x)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    # The grey level of the shape says (almost) nothing about its hue.
    level = grey.reshape(600, -1, 3).max(axis=1)[:, 0]
    means = [level[hue == h].mean() for h in range(3)]
    assert max(means) - min(means) < 0.05


def test_save_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights, picture = tmp_path / "colors.npz", tmp_path / "k.png"
    result = run_json(
        capsys,
        "--task",
        "colors",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--batch-size",
        "64",
        "--save",
        str(weights),
        "--plot",
        str(picture),
    )
    assert result["task"] == "colors" and result["epochs"] == 2 and result["batch_size"] == 64
    assert "channel_contrast" in result and "channel_contrast_untrained" in result
    with np.load(weights, allow_pickle=False) as data:
        kernel, bias = data["kernel"], data["bias"]
        first = data["layers.0.Conv2D.kernel"]
    assert kernel.shape == (3, 3, 3, 8) and bias.shape == (8,)
    np.testing.assert_array_equal(kernel, first)
    model = colors_model(seed=99)
    model.load_weights(weights)
    np.testing.assert_array_equal(model.get_weights()[0], kernel)
    with Image.open(picture) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 600 and height > 400


def test_text_output_reports_accuracy_and_contrast(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "colors", "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "after 1 epoch;" in out
    assert "first-layer channel contrast" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs", "0"], "train: --epochs must be >= 1; got 0"),
        (["--batch-size", "-3"], "train: --batch-size must be >= 1; got -3"),
        (["--seed", "-1"], "train: --seed must be >= 0; got -1"),
        (["--save", "/no/such/folder/w.npz"], "--save: folder '/no/such/folder' does not exist"),
        (["--plot", "/no/such/folder/k.png"], "--plot: folder '/no/such/folder' does not exist"),
        (["--plot", "k.gif"], "--plot must end in .png, .svg, .svgz, .pdf, .jpg"),
        (["--save", "k.png"], "--save: the weights file must end in .npz; got 'k.png'"),
        (["--save", "/tmp"], "--save: the weights file must end in .npz; got '/tmp'"),
        (["--save", "/"], "--save: the weights file must end in .npz"),
    ],
)
def test_bad_options_print_one_line(
    args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # a check that fails to fire writes nothing into the checkout
    assert main(["train", "--quiet", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert captured.out == ""  # the header line went out before some of these errors


def test_train_task_rejects_unknown_tasks() -> None:
    with pytest.raises(
        ValueError, match=r"train_task: task must be one of \['colors', 'digits'\]; got 'cifar'"
    ):
        train_task("cifar")
    with pytest.raises(ValueError, match=r"train_task: colorblind applies to the colors task only"):
        train_task("digits", colorblind=True)


def test_a_short_digits_schedule_already_learns() -> None:
    """Three epochs (a second or so): an honest lower bar for a shorter schedule."""
    result = train_task("digits", epochs=3, verbose=0, seed=1)
    assert result.test_accuracy >= 0.9
    assert isinstance(result.model.layers[0], nn.Conv2D)


def test_train_runs_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tqdm is an extra: train refused to start without it ("tqdm is needed here"), though
    fit prints a line an epoch in its place."""
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    assert main(["train", "--task", "colors", "--epochs", "1", "--json"]) == 0
    assert '"test_accuracy"' in capsys.readouterr().out
