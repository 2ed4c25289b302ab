"""`patchconv bench` checks its options before any timing (a full run takes minutes)."""

from __future__ import annotations

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
