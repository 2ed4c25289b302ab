"""`patchconv bench` checks its options before any timing (a full run takes minutes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from patchconv.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "--rounds must be >= 1; got 0"),
        (["--quick", "--layers", "11x11"], "give --quick or --layers, not both"),
        (["--json", "/no/such/folder/b.json"], "--json: folder '/no/such/folder' does not exist"),
        (["--layers", "no-such-layer"], "--layers ['no-such-layer'] matches no layer"),
    ],
)
def test_bad_options_fail_at_once(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.fixture
def conv_suite(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks import conv_suite

    return conv_suite


def test_round_ratios_pair_each_round(conv_suite: Any) -> None:
    samples = {"patchconv": [1.0, 2.0, 4.0], "a": [2.0, 1.0, 8.0], "b": [3.0, 3.0, 2.0]}
    assert conv_suite.round_ratios(samples, "a") == [2.0, 0.5, 2.0]
    assert conv_suite.round_ratios(samples, "b") == [3.0, 1.5, 0.5]
    assert conv_suite.round_ratios(samples, "torch_cl") == []


def _tiny_run(conv_suite: Any, peers: list[str], rounds: int) -> tuple[dict[str, Any], str]:
    """The suite on one small layer, forward only: (result, its table line)."""
    from benchmarks.layers import Layer

    opts = conv_suite.Options(
        layers=[Layer(1, 8, 4, 4, 3)],
        peers=peers,
        rounds=rounds,
        min_time=0.001,
        pause=0.0,
        backward=False,
        memory=False,
        latency=False,
    )
    result = conv_suite.run(opts)
    line = next(s for s in conv_suite.render(result).splitlines() if "N1 8x8" in s)
    return result, line


def test_table_reports_each_rows_spread_over_rounds(conv_suite: Any) -> None:
    result, line = _tiny_run(conv_suite, ["patchconv", "numpy_im2col"], 3)
    row = result["forward"][0]
    ratios = row["round_ratios_vs_best"]
    assert len(ratios) == 3 and all(v > 0 for v in ratios)
    assert min(ratios) <= row["ratio_vs_best"] <= max(ratios)  # the median lies among them
    met = sum(v >= conv_suite.TARGETS[row["category"]] for v in ratios)
    assert f"{min(ratios):.2f}-{max(ratios):.2f}, {met}/3 met" in line


def test_a_row_without_peers_renders(conv_suite: Any) -> None:
    _, line = _tiny_run(conv_suite, ["patchconv"], 2)
    assert "| None | n/a | n/a | >= 1.3x NOT met |" in line
