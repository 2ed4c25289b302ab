"""patchconv explain --html in a real headless browser (Debian's Chromium through Playwright)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import patchconv
from conftest import shown_index
from patchconv.cli import main
from patchconv.explain import Walkthrough
from patchconv.explain_html import save_html

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


def _open(browser: Any, path: Path) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    return page, requests, errors


def _check_pixel(page: Any, wt: Walkthrough, i: int, j: int) -> None:
    """After clicking (i, j): the outlined patch, the row and the numbers are the Walkthrough's."""
    page.click(f'#out-0 td[data-i="{i}"][data-j="{j}"]')
    highlighted = page.eval_on_selector_all(
        "td.in-cell.hl", "els => els.map(e => [+e.dataset.ch, +e.dataset.r, +e.dataset.c])"
    )
    rows, cols = wt.taps_of(i, j)
    expected = {(c, int(r), int(q)) for c in range(wt.spec.c_in) for r in rows for q in cols}
    assert {tuple(h) for h in highlighted} == expected
    assert len(highlighted) == len(expected)
    # The highlighted cells show the patch's values (zeros in the padding).
    values = page.eval_on_selector_all(
        "td.in-cell.hl",
        "els => els.map(e => [+e.dataset.ch, +e.dataset.r, +e.dataset.c, +e.dataset.value])",
    )
    top, left = wt.patch_origin
    dh, dw = wt.spec.dilation
    for c, r, q, v in values:
        assert v == wt.patch[(r - top) // dh, (q - left) // dw, c]
    # The patch matrix row is selected and holds the flattened patch.
    row = page.eval_on_selector("tr.sel", "e => +e.dataset.row")
    assert row == wt.patch_row
    row_values = page.eval_on_selector_all(
        "tr.sel td.pm-cell", "els => els.map(e => +e.dataset.value)"
    )
    np.testing.assert_array_equal(row_values, wt.flat_patch[0])
    # The displayed numbers: patch @ kernel + bias, and conv2d's output there.
    for f in range(wt.spec.c_out):
        shown = page.inner_text(f"#result-{f}")
        exact = float(page.get_attribute(f"#result-{f}", "data-value"))
        assert exact == float(wt.output_for_patch[f])
        assert float(shown) == pytest.approx(float(wt.output_for_patch[f]), rel=1e-6, abs=1e-6)
        assert float(page.get_attribute(f"#conv-{f}", "data-value")) == float(
            wt.conv_output_at_position[f]
        )
        # ... and the index it names is that value's in the caller's data_format.
        label = page.evaluate(f"document.getElementById('conv-{f}').parentElement.textContent")
        title = page.get_attribute(f'#out-{f} td[data-i="{i}"][data-j="{j}"]', "title")
        for shown in (label, title):
            assert wt.output[shown_index(shown)] == wt.conv_output_at_position[f]
    assert page.get_attribute("#selected", "data-i") == str(i)
    assert page.get_attribute("#selected", "data-j") == str(j)


def test_page_from_the_command_line_works_offline(
    browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "walk.html"
    assert main(["explain", "--seed", "4", "--padding", "same", "--html", str(path)]) == 0
    assert f"wrote the web page to {path}" in capsys.readouterr().err
    source = path.read_text(encoding="utf-8")
    assert "http://" not in source and "https://" not in source and "<script src" not in source
    page, requests, errors = _open(browser, path)
    # The same seed gives the same numbers: explain each pixel we click in Python too.
    for i, j in [(0, 0), (3, 3), (2, 0), (1, 2)]:
        _check_pixel(page, patchconv.explain(seed=4, padding="same", position=(i, j)), i, j)
    assert errors == []
    assert all(url.startswith(("file:", "data:", "about:")) for url in requests), requests
    page.close()


def test_page_with_groups_dilation_strides_and_channels_first(browser: Any, tmp_path: Path) -> None:
    options: dict[str, Any] = {
        "seed": 8,
        "input_shape": (2, 4, 9, 8),
        "data_format": "channels_first",
        "groups": 2,
        "filters": 4,
        "strides": (2, 1),
        "dilation_rate": (1, 2),
        "padding": ((2, 1), (0, 3)),
        "batch_index": 1,
    }
    path = tmp_path / "walk.html"
    save_html(patchconv.explain(**options), path)
    page, _, errors = _open(browser, path)
    wt0 = patchconv.explain(**options)
    oh, ow = wt0.spec.oh, wt0.spec.ow
    for i, j in [(oh - 1, ow - 1), (0, ow - 1), (oh // 2, 1)]:
        _check_pixel(page, patchconv.explain(**options, position=(i, j)), i, j)
    assert errors == []
    page.close()


def test_large_maps_keep_clickable_cells(browser: Any, tmp_path: Path) -> None:
    """Past 400 cells a map draws its cells small and without numbers; they were sized in
    em of a font-size of 0, so every cell was 0-1 px and no output pixel could be clicked."""
    options: dict[str, Any] = {"seed": 2, "input_shape": (1, 24, 24, 3), "padding": "same"}
    path = tmp_path / "walk.html"
    save_html(patchconv.explain(**options), path)
    page, _, errors = _open(browser, path)
    assert page.eval_on_selector("#in-0", "e => e.classList.contains('tiny')")
    assert page.eval_on_selector("#out-0", "e => e.classList.contains('tiny')")
    box = page.locator('#out-0 td[data-i="5"][data-j="7"]').bounding_box()
    assert box["width"] >= 8 and box["height"] >= 8
    for i, j in [(5, 7), (23, 23)]:
        _check_pixel(page, patchconv.explain(**options, position=(i, j)), i, j)
    assert errors == []
    page.close()
