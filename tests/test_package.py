"""Packaging promises: a NumPy-only import, a small public surface, a working command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import patchconv
from patchconv.cli import main


def test_import_pulls_in_numpy_and_nothing_else() -> None:
    code = (
        "import sys, json; before = set(sys.modules); import patchconv; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    new = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    heavy = {
        "torch",
        "keras",
        "dask",
        "distributed",
        "PIL",
        "matplotlib",
        "scipy",
        "onnx",
        "onnxruntime",
        "sklearn",
        "tqdm",
        "numba",
        "jax",
        "tensorflow",
        "h5py",
        "zarr",
    }
    top = {name.split(".")[0] for name in new}
    assert not top & heavy, f"import patchconv pulled in {sorted(top & heavy)}"
    assert "numpy" in top or "numpy" in sys.modules


def test_public_surface() -> None:
    assert set(patchconv.__all__) >= {
        "conv2d",
        "conv2d_backward",
        "Conv2D",
        "explain",
        "im2col",
        "col2im",
    }
    for name in patchconv.__all__:
        assert hasattr(patchconv, name), name
    assert isinstance(patchconv.__version__, str)


def test_explain_with_no_arguments_prints_the_seed_sequence(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["explain"]) == 0
    text = capsys.readouterr().out
    for needle in [
        "(3, 3, 3, 2)",
        "bias (2,)",
        "(1, 2, 2, 2)",
        "shape (3, 3, 3)",
        "(1, 27)",
        "(27, 2)",
        "[4, 27] @ [27, 2]",
        "NOT equal",
        "ONE output channel",
    ]:
        assert needle in text, needle
    assert text.rstrip().splitlines()[-1].startswith("MATCH")


def test_explain_as_a_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "patchconv.cli", "explain", "--seed", "3"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "MATCH" in out


def test_cli_reports_bad_input_without_a_traceback(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 2
    rc = main(["explain", "--seed", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and "Traceback" not in err


def test_seed_walkthrough_numbers_are_the_library_s() -> None:
    wt = patchconv.explain(seed=11)
    np.testing.assert_array_equal(wt.conv_output_at_position, wt.output[0, 0, 0])
    assert wt.max_abs_diff <= 1e-6 and wt.all_patches_max_abs_diff <= 1e-6
