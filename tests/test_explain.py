"""patchconv explain: the walkthrough's data, its text and JSON renderings, and its options."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import patchconv
from conftest import assert_close, shown_index
from patchconv.cli import main
from patchconv.explain_json import to_dict
from patchconv.explain_text import render_text
from reference import conv2d_reference

JSON_KEYS = {
    "input_shape",
    "kernel_shape",
    "bias_shape",
    "output_shape",
    "position",
    "patch_shape",
    "flat_patch_shape",
    "flat_kernel_shape",
    "output_for_patch",
    "conv_output_at_position",
    "max_abs_diff",
    "all_patches_shape",
    "all_patches_max_abs_diff",
}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["explain", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    rc, out, err = run_cli(capsys, "--json", *args)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1  # one JSON object, nothing else on stdout
    data: dict[str, Any] = json.loads(out)
    return data


# -- the text ----------------------------------------------------------------------------------


def test_no_arguments_prints_the_seed_sequence_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    rc, text, _ = run_cli(capsys)
    assert rc == 0
    steps = [
        "kernel (3, 3, 3, 2)",
        "bias (2,)",
        "output (1, 2, 2, 2)",
        "The patch under output pixel (0, 0)",
        "shape (3, 3, 3)",
        "shape (1, 27)",
        "reshaped to (27, 2): column f = filter f",
        "patch @ kernel + bias",
        "The full convolution's output[0, 0, 0]",
        "max |difference|",
        "[4, 27] @ [27, 2]",
        "reshaped to (1, 2, 2, 2)",
        "Does each colour slice of a filter hold the same kernel?",
        "NOT equal",
        "ONE output channel",
    ]
    where = [text.find(s) for s in steps]
    assert -1 not in where, [s for s, k in zip(steps, where, strict=True) if k == -1]
    assert where == sorted(where)
    assert text.rstrip().splitlines()[-1].startswith("MATCH")


OPTION_SETS: list[dict[str, Any]] = [
    {},
    {"seed": 1, "padding": "same", "position": (0, 3)},
    {
        "seed": 2,
        "input_shape": (2, 9, 7, 3),
        "strides": (2, 1),
        "dilation_rate": 2,
        "padding": ((1, 2), (0, 3)),
        "position": (3, 5),
        "batch_index": 1,
    },
    {"seed": 3, "groups": 3, "filters": 6, "padding": "same_lower", "position": (3, 0)},
    {
        "seed": 4,
        "input_shape": (1, 4, 20, 20),
        "data_format": "channels_first",
        "filters": 16,
        "kernel_size": 7,
        "position": (13, 13),
    },
    {"seed": 5, "input_shape": (1, 30, 30, 8), "groups": 2, "filters": 8, "kernel_size": (1, 5)},
    {"seed": 6, "input_shape": (1, 5, 5, 64), "filters": 3, "kernel_size": 1},
]


@pytest.mark.parametrize("options", OPTION_SETS)
def test_text_fits_80_columns_and_ends_with_the_match(options: dict[str, Any]) -> None:
    wt = patchconv.explain(**options)
    text = render_text(wt)
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, too_wide
    assert text.rstrip().splitlines()[-1].startswith("MATCH")
    for shape in (wt.input_shape, wt.kernel_shape, wt.output_shape, wt.patch.shape):
        assert str(shape) in text


def test_text_writes_out_each_dot_product_with_the_walkthrough_s_numbers() -> None:
    wt = patchconv.explain(seed=0)
    text = render_text(wt)
    for f in range(2):
        line = next(s for s in text.splitlines() if s.strip().startswith(f"filter {f}:"))
        first = f"{wt.flat_patch[0, 0]:.3f} x {wt.kernel_matrix[0, f]:.3f}"
        assert first in line
    assert f"bias {wt.bias[1]:.3f}" in text
    assert f"= {wt.output_for_patch[1]:.3f}" in text


def test_padding_is_shown_as_zeros_in_the_patch() -> None:
    wt = patchconv.explain(seed=0, padding="same", position=(0, 0))
    assert wt.patch_in_padding[0].all() and wt.patch_in_padding[:, 0].all()
    np.testing.assert_array_equal(wt.patch[wt.patch_in_padding], 0.0)
    assert wt.patch_origin == (-1, -1)
    text = render_text(wt)
    assert "It hangs over the border: 15 of its 27 entries are the zero padding" in text
    assert "P P P" in text


# -- the slices answer -------------------------------------------------------------------------


def _save_weights(path: Any, kernel: np.ndarray, bias: np.ndarray | None = None) -> str:
    arrays = {"kernel": kernel} if bias is None else {"kernel": kernel, "bias": bias}
    np.savez(path, **arrays)
    return str(path)


def test_slices_answer_is_true_for_the_weights_used(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    kernel[:, :, 1, 0] = kernel[:, :, 0, 0]  # filter 0: one 3x3 kernel repeated per colour
    kernel[:, :, 2, 0] = kernel[:, :, 0, 0]
    kernel[:, :, 1, 2] = kernel[:, :, 0, 2]  # filter 2: two of three slices equal only
    path = _save_weights(tmp_path / "w.npz", kernel)
    truth = [
        all(np.array_equal(kernel[:, :, 0, f], kernel[:, :, c, f]) for c in range(3))
        for f in range(3)
    ]
    assert truth == [True, False, False]
    rc, text, _ = run_cli(capsys, "--weights", path, "--seed", "1")
    assert rc == 0
    for f, equal in enumerate(truth):
        assert f"the 3 slices of filter {f} are {'EQUAL' if equal else 'NOT equal'}." in text
    data = run_json(capsys, "--weights", path, "--seed", "1")
    assert data["slices_equal"] == truth


def test_random_weights_answer_not_equal_for_every_filter() -> None:
    wt = patchconv.explain(seed=9, filters=12)
    assert wt.slices_equal == (False,) * 12
    text = render_text(wt)
    assert text.count("are NOT equal") == 4  # four shown in full
    assert "-> filters 4-11: slices NOT equal." in text


def test_one_channel_per_filter_says_the_question_does_not_arise() -> None:
    text = render_text(patchconv.explain(seed=0, groups=3, filters=3))
    assert "the question does not arise" in text


# -- JSON across random options ----------------------------------------------------------------


@st.composite
def cli_options(draw: st.DrawFn) -> tuple[list[str], dict[str, Any]]:
    """Random explain options as command-line arguments, and the same as conv2d options."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3))
    filters = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["valid", "same", "same_lower", "int", "pair", "explicit"]))
    padding: Any
    if kind in ("valid", "same", "same_lower"):
        padding, text = kind, kind
    elif kind == "int":
        padding = draw(st.integers(0, 3))
        text = str(padding)
    elif kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
        text = f"{padding[0]},{padding[1]}"
    else:  # explicit and usually asymmetric
        t, b, le, r = (draw(st.integers(0, 3)) for _ in range(4))
        padding, text = ((t, b), (le, r)), f"{t},{b},{le},{r}"
    h = draw(st.integers((kh - 1) * dh + 1, (kh - 1) * dh + 6))
    w = draw(st.integers((kw - 1) * dw + 1, (kw - 1) * dw + 6))
    n = draw(st.integers(1, 2))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    shape = (n, c_in, h, w) if data_format == "channels_first" else (n, h, w, c_in)
    options = {
        "strides": (sh, sw),
        "padding": padding,
        "dilation_rate": (dh, dw),
        "groups": groups,
        "data_format": data_format,
    }
    out = patchconv.conv_output_shape(shape, (kh, kw, c_in // groups, filters), **options)
    oh, ow = out[2:] if data_format == "channels_first" else out[1:3]
    # Border positions often: the corners are where padding shows.
    i = draw(st.sampled_from([0, oh - 1, draw(st.integers(0, oh - 1))]))
    j = draw(st.sampled_from([0, ow - 1, draw(st.integers(0, ow - 1))]))
    b = draw(st.integers(0, n - 1))
    args = [
        "--seed", str(draw(st.integers(0, 2**31 - 1))),
        "--input-shape", ",".join(map(str, shape)),
        "--filters", str(filters),
        "--kernel-size", f"{kh},{kw}",
        "--strides", f"{sh},{sw}",
        "--padding", text,
        "--dilation-rate", f"{dh},{dw}",
        "--groups", str(groups),
        "--data-format", data_format,
        "--position", str(i), str(j),
        "--batch-index", str(b),
    ]  # fmt: skip
    return args, {**options, "position": (i, j), "batch_index": b}


@given(case=cli_options())
def test_json_is_exact_across_random_options(case: tuple[list[str], dict[str, Any]]) -> None:
    args, options = case
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["explain", "--json", *args])
    assert rc == 0, err.getvalue()
    assert len(out.getvalue().strip().splitlines()) == 1
    data = json.loads(out.getvalue())
    assert JSON_KEYS <= set(data)
    assert data["dtype"] == "float32"
    assert data["max_abs_diff"] <= 1e-5
    assert data["all_patches_max_abs_diff"] <= 1e-5
    assert data["matches"] is True

    x = np.asarray(data["x"], dtype=np.float32)
    kernel = np.asarray(data["kernel"], dtype=np.float32)
    bias = np.asarray(data["bias"], dtype=np.float32)
    conv = {k: options[k] for k in ("strides", "padding", "dilation_rate", "groups", "data_format")}
    b, (i, j) = options["batch_index"], options["position"]
    out = patchconv.conv2d(x, kernel, bias, **conv)
    out_nhwc = np.moveaxis(out, 1, -1) if conv["data_format"] == "channels_first" else out
    # The values it reports are conv2d's output at that position, and the hand computation
    # agrees with an independent loop reference.
    np.testing.assert_array_equal(data["conv_output_at_position"], out_nhwc[b, i, j])
    ref = conv2d_reference(x, kernel, bias, **conv)
    ref_nhwc = np.moveaxis(ref, 1, -1) if conv["data_format"] == "channels_first" else ref
    assert_close(np.asarray(data["output_for_patch"]), ref_nhwc[b, i, j], np.float32)

    kh, kw, cg, c_out = data["kernel_shape"]
    c_in = cg * conv["groups"]
    assert data["position"] == [i, j]
    assert data["patch_shape"] == [kh, kw, c_in]
    assert data["flat_patch_shape"] == [1, kh * kw * c_in]
    assert data["output_shape"] == list(out.shape)
    n_pos = out_nhwc.shape[0] * out_nhwc.shape[1] * out_nhwc.shape[2]
    assert data["all_patches_shape"] == [n_pos, kh * kw * c_in]
    groups = conv["groups"]
    expected_flat = (
        [kh * kw * cg, c_out] if groups == 1 else [groups, kh * kw * cg, c_out // groups]
    )
    assert data["flat_kernel_shape"] == expected_flat
    # The patch really is the input under the pixel (zeros in the padding).
    x_nhwc = np.moveaxis(x, 1, -1) if conv["data_format"] == "channels_first" else x
    patch = np.asarray(data["patch"])
    top, left = data["patch_origin"]
    dh, dw = conv["dilation_rate"]
    for a in range(kh):
        for c in range(kw):
            r, q = top + a * dh, left + c * dw
            inside = 0 <= r < x_nhwc.shape[1] and 0 <= q < x_nhwc.shape[2]
            expected = x_nhwc[b, r, q] if inside else np.zeros(c_in)
            np.testing.assert_array_equal(patch[a, c], expected)
            assert data["patch_in_padding"][a][c] == (not inside)


def test_walkthrough_in_float64_and_float16() -> None:
    rng = np.random.default_rng(1)
    x64 = rng.standard_normal((1, 5, 5, 3))
    wt = patchconv.explain(x64, seed=0, padding="same", position=(4, 4))
    assert wt.output.dtype == np.float64 and wt.max_abs_diff <= 1e-12 and wt.matches
    wt16 = patchconv.explain(x64.astype(np.float16), seed=0)
    assert wt16.matches


def test_steps_follow_the_seed_s_order_and_hold_the_arrays() -> None:
    wt = patchconv.explain(seed=0)
    keys = [s.key for s in wt.steps]
    assert keys == [
        "input", "weights", "output", "patch", "flat_patch", "flat_kernel",
        "patch_times_kernel", "compare", "all_patches", "slices",
    ]  # fmt: skip
    shapes = {k: v for s in wt.steps for k, v in s.shapes.items()}
    assert shapes["patch"] == (3, 3, 3)
    assert shapes["flat_patch"] == (1, 27)
    assert shapes["flat_kernel"] == (27, 2)
    assert shapes["all_patches"] == (4, 27)
    data = to_dict(wt)
    assert [s["key"] for s in data["steps"]] == keys


def test_defaults_grow_to_fit_the_options() -> None:
    wt = patchconv.explain(seed=0, kernel_size=5, dilation_rate=2, strides=2)
    assert wt.output_shape[1:3] == (2, 2)
    wt = patchconv.explain(seed=0, groups=2)
    assert wt.input_shape == (1, 4, 4, 4) and wt.kernel_shape == (3, 3, 2, 2)
    wt = patchconv.explain(seed=0, data_format="channels_first")
    assert wt.input_shape == (1, 3, 4, 4) and wt.output_shape == (1, 2, 2, 2)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_the_text_indexes_the_output_in_its_data_format(data_format: str) -> None:
    shape = (2, 5, 6, 5)
    wt = patchconv.explain(
        seed=2,
        input_shape=shape,
        filters=3,
        data_format=data_format,
        position=(1, 0),
        batch_index=1,
    )
    text = render_text(wt)
    step8 = text.split("8. The full convolution's ", 1)[1]
    last = text.split("patch @ kernel + bias equals ", 1)[1]
    for shown in (step8, last):
        np.testing.assert_array_equal(wt.output[shown_index(shown)], wt.conv_output_at_position)


def test_a_walkthrough_past_the_memory_is_refused_before_the_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from patchconv import _config

    # (1, 64, 64, 3) 3x3 valid: patch matrix [3844, 27] in float32, 574 KiB with the outputs,
    # and its float64 copy with the float64 sums (the patch's and the outputs') 871 KiB more.
    monkeypatch.setattr(_config, "physical_memory", lambda: 420 * 2**10)
    with pytest.raises(
        ValueError,
        match=r"explain: the walkthrough of x \(1, 64, 64, 3\) \(patch matrix \[3844, 27\]",
    ):
        patchconv.explain(seed=0, input_shape=(1, 64, 64, 3))
    with pytest.raises(
        ValueError, match=r"explain: a random input of input_shape \(1, 110, 110, 3\)"
    ):
        patchconv.explain(seed=0, input_shape=(1, 110, 110, 3))  # 12 bytes a value: 425 KiB
    monkeypatch.setattr(_config, "physical_memory", lambda: 1400 * 2**10)
    with pytest.raises(ValueError, match=r"explain: the walkthrough of x \(1, 64, 64, 3\)"):
        patchconv.explain(seed=0, input_shape=(1, 64, 64, 3))
    monkeypatch.setattr(_config, "physical_memory", lambda: 1450 * 2**10)
    assert patchconv.explain(seed=0, input_shape=(1, 64, 64, 3)).matches


def test_same_seed_same_numbers() -> None:
    a, b = patchconv.explain(seed=7), patchconv.explain(seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.kernel, b.kernel)
    np.testing.assert_array_equal(a.bias, b.bias)


# -- --weights and --image ---------------------------------------------------------------------


def test_weights_file_is_used_as_is(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((5, 5, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    path = _save_weights(tmp_path / "trained.npz", kernel, bias)
    data = run_json(capsys, "--weights", path, "--seed", "0", "--padding", "same")
    np.testing.assert_array_equal(data["kernel"], kernel)
    np.testing.assert_array_equal(data["bias"], bias)
    assert data["input_shape"] == [1, 6, 6, 3]  # grown to fit the 5 x 5 kernel
    assert data["notes"]["kernel"] == f"from {path}"
    assert data["max_abs_diff"] <= 1e-5 and data["all_patches_max_abs_diff"] <= 1e-5


def test_weights_without_bias_use_zeros(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    kernel = np.ones((3, 3, 3, 2), dtype=np.float32)
    path = _save_weights(tmp_path / "nobias.npz", kernel)
    data = run_json(capsys, "--weights", path, "--seed", "0")
    assert data["bias"] == [0.0, 0.0]
    assert data["notes"]["bias"] == "zeros (none in the file)"


def test_weights_errors(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    no_kernel = tmp_path / "nokernel.npz"
    np.savez(no_kernel, weights=np.ones((3, 3, 3, 2)), bias=np.zeros(2))
    rc, _, err = run_cli(capsys, "--weights", str(no_kernel))
    assert rc == 2
    assert (
        f"--weights '{no_kernel}' has no 'kernel' array (kh, kw, c_in, c_out); found keys ['bias', 'weights']"
        in err
    )

    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04junk")
    rc, _, err = run_cli(capsys, "--weights", str(junk))
    assert rc == 2 and "is not a readable .npz file (BadZipFile" in err
    bad = _save_weights(tmp_path / "nan.npz", np.full((3, 3, 3, 2), np.inf, dtype=np.float32))
    rc, _, err = run_cli(capsys, "--weights", bad)
    assert rc == 2 and "kernel holds NaN or Inf values" in err

    path = _save_weights(tmp_path / "w.npz", np.ones((3, 3, 4, 2), dtype=np.float32))
    rc, _, err = run_cli(capsys, "--weights", path, "--input-shape", "1,5,5,3")
    assert rc == 2
    assert (
        "--weights: the kernel (3, 3, 4, 2) reads 4 x groups (1) = 4 input channels, but --input-shape '1,5,5,3' has 3"
        in err
    )
    assert "Traceback" not in err

    single = tmp_path / "k.npy"
    np.save(single, np.ones((3, 3, 3, 2)))
    rc, _, err = run_cli(capsys, "--weights", str(single))
    assert rc == 2 and "must be an .npz archive with a 'kernel' array" in err

    pickled = tmp_path / "obj.npz"
    np.savez(pickled, kernel=np.array([{"a": 1}], dtype=object))
    rc, _, err = run_cli(capsys, "--weights", str(pickled))
    assert rc == 2 and "holds arrays that need pickle" in err

    bad_bias = _save_weights(tmp_path / "bb.npz", np.ones((3, 3, 3, 2)), np.zeros(3))
    rc, _, err = run_cli(capsys, "--weights", bad_bias)
    assert rc == 2 and "bias must have shape (2,) to match the kernel's c_out; got bias (3,)" in err

    rc, _, err = run_cli(capsys, "--weights", path, "--filters", "5", "--input-shape", "1,4,4,4")
    assert rc == 2 and "explain: filters (5) must equal the kernel's c_out (2)" in err

    rc, _, err = run_cli(capsys, "--weights", str(tmp_path / "missing.npz"))
    assert rc == 2 and "--weights must be an existing .npz file" in err


def _photo(path: Any, mode: str = "RGB") -> str:
    from PIL import Image

    yy, xx = np.mgrid[0:30, 0:40]
    rgb = np.stack([xx * 6, yy * 8, (xx + yy) * 3], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).convert(mode).save(path)
    return str(path)


def test_image_becomes_a_resized_input(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from patchconv.images import load_image

    path = _photo(tmp_path / "photo.png")
    data = run_json(capsys, "--image", path, "--size", "8", "--seed", "0", "--position", "5", "5")
    assert data["input_shape"] == [1, 8, 8, 3]
    np.testing.assert_array_equal(data["x"], load_image(path, size=8)[None])
    assert data["max_abs_diff"] <= 1e-5 and data["all_patches_max_abs_diff"] <= 1e-5
    data = run_json(capsys, "--image", path, "--size", "6", "--data-format", "channels_first")
    assert data["input_shape"] == [1, 3, 6, 6]
    rc, text, _ = run_cli(capsys, "--image", path, "--seed", "0")
    assert rc == 0 and "(1, 16, 16, 3)" in text  # the default size
    assert all(len(line) <= 80 for line in text.splitlines())


def test_image_is_read_with_the_weights_channel_count(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _photo(tmp_path / "photo.png")
    weights = _save_weights(tmp_path / "gray.npz", np.ones((3, 3, 1, 2), dtype=np.float32))
    data = run_json(capsys, "--image", path, "--size", "8", "--weights", weights)
    assert data["input_shape"] == [1, 8, 8, 1]
    weights = _save_weights(tmp_path / "two.npz", np.ones((3, 3, 2, 2), dtype=np.float32))
    rc, _, err = run_cli(capsys, "--image", path, "--weights", weights)
    assert rc == 2
    assert (
        "--weights: a kernel for 2 input channels cannot read an image (1, 3 or 4 channels)" in err
    )


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--padding", "foo"],
            "--padding must be valid, same, same_lower, P, PH,PW or T,B,L,R (top, bottom, left, right); got 'foo'",
        ),
        (["--input-shape", "1,2"], "--input-shape must be N,H,W,C (integers); got '1,2'"),
        (["--kernel-size", "3,x"], "--kernel-size must be N or A,B (integers); got '3,x'"),
        (["--size", "8"], "--size resizes an --image; got --size 8 without one"),
        (
            ["--position", "2", "0"],
            "explain: position must lie inside the output (oh, ow) = (2, 2); got (2, 0)",
        ),
        (["--seed", "-1"], "explain: seed must be >= 0; got -1"),
        (["--groups", "2", "--filters", "3"], "groups (2) must divide"),
        (
            ["--kernel-size", "5", "--input-shape", "1,4,4,3"],
            "explain: the dilated kernel height (5) must not exceed the padded input height (4)",
        ),
        (["--batch-index", "1"], "explain: batch_index must be in [0, 1); got 1"),
        (["--strides", "0"], "explain: strides must be >= 1; got 0"),
        (["--dilation-rate", "0"], "explain: dilation_rate must be >= 1; got 0"),
        (["--figure", "."], "--figure must name a file; got the folder '.'"),
        (["--animate", "walk.mp4"], "--animate must end in .gif; got 'walk.mp4'"),
        (["--html", "no/such/dir/page.html"], "--html: folder "),
    ],
)
def test_cli_errors_are_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2 and out == ""
    assert err.startswith("patchconv explain: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_image_and_input_shape_together(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = _photo(tmp_path / "p.png")
    rc, _, err = run_cli(capsys, "--image", path, "--input-shape", "1,4,4,3")
    assert rc == 2 and "give --input-shape or --image, not both" in err


def test_api_errors() -> None:
    with pytest.raises(
        TypeError, match=r"explain: position must be a pair of ints \(i, j\); got \(1,\)"
    ):
        patchconv.explain(position=(1,))
    with pytest.raises(TypeError, match=r"explain: input_shape must be 4 ints; got \(4, 4, 3\)"):
        patchconv.explain(input_shape=(4, 4, 3))
    with pytest.raises(
        patchconv.PatchconvError, match=r"explain: input_shape must be >= 1; got \(1, 0, 4, 3\)"
    ):
        patchconv.explain(input_shape=(1, 0, 4, 3))
    with pytest.raises(patchconv.PatchconvError, match=r"explain: give x or input_shape, not both"):
        patchconv.explain(np.ones((1, 4, 4, 3)), input_shape=(1, 4, 4, 3))
    with pytest.raises(
        patchconv.PatchconvError,
        match=r"explain: kernel_size \(5\) must equal the kernel's \(kh, kw\) \(3, 3\)",
    ):
        patchconv.explain(kernel=np.ones((3, 3, 3, 2)), kernel_size=5)
    with pytest.raises(patchconv.PatchconvError, match=r"explain: kernel must be 4-D"):
        patchconv.explain(kernel=np.ones((3, 3, 3)))
    with pytest.raises(TypeError, match=r"explain: seed must be an int; got 1.5"):
        patchconv.explain(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(
        patchconv.PatchconvError,
        match=r"explain: kernel input channels \(4\) must equal x channels \(3\)",
    ):
        patchconv.explain(np.ones((1, 4, 4, 3)), np.ones((3, 3, 4, 2)))


# -- the docs ----------------------------------------------------------------------------------


def test_tutorial_quotes_the_command_s_real_output() -> None:
    """docs/tutorial.md shows `patchconv explain --seed 0` as it is (regenerate it if not)."""
    from pathlib import Path

    tutorial = (Path(__file__).parents[1] / "docs" / "tutorial.md").read_text(encoding="utf-8")
    text = render_text(patchconv.explain(seed=0))
    # Differences and tolerances depend on the BLAS's last bits; everything else is fixed.
    lines = [s for s in text.splitlines() if s.strip() and "difference" not in s]
    missing = [s for s in lines if s not in tutorial]
    assert not missing, missing[:5]
    assert (Path(__file__).parents[1] / "docs" / "walkthrough.png").stat().st_size < 300_000


def test_a_huge_kernel_still_matches() -> None:
    """A 1000x1000 kernel: the patch's 3 million products summed in float32 in one running
    sum differed from the exact sum by 2e-5 and the walkthrough said MISMATCH (exit 1),
    while conv2d was within 6e-7. The patch is now summed in float64; each claim of the
    closing sentence has its own verdict."""
    wt = patchconv.explain(seed=0, kernel_size=1000)
    assert wt.matches and wt.patch_matches and wt.all_patches_match
    assert wt.output_for_patch.dtype == wt.output.dtype
    exact = wt.flat_patch.astype(np.float64) @ wt.kernel_matrix.astype(np.float64)
    assert wt.max_abs_diff == pytest.approx(
        float(np.max(np.abs(exact[0] + wt.bias - wt.conv_output_at_position))), rel=1e-9
    )


def test_weights_member_that_is_no_array_is_one_line(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """NumPy hands back a member that is no .npy as raw bytes: it raised AttributeError."""
    import zipfile

    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("kernel.npy", b"garbage")
    assert main(["explain", "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert "kernel must hold real numbers" in err and "Traceback" not in err


def test_a_huge_filter_count_is_checked_before_the_kernel_is_drawn() -> None:
    with pytest.raises(
        patchconv.PatchconvError, match=r"a random kernel of 1000000000 filters needs about"
    ):
        patchconv.explain(filters=10**9)
