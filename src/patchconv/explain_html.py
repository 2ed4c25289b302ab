"""The walkthrough as one self-contained web page (reads a Walkthrough, computes nothing).

No network and no libraries: the data is inlined as JSON, the script is vanilla JavaScript.
Clicking any output pixel highlights its input patch (padding included), its row of the patch
matrix and the dot product that produced it; every number shown is one the Walkthrough holds
(the page only looks values up and formats them).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from patchconv.explain import Walkthrough
from patchconv.explain_json import to_dict

__all__ = ["page_data", "render_html", "save_html"]


def page_data(wt: Walkthrough) -> dict[str, Any]:
    """What the page needs: the explained image's arrays (NHWC / HWIO) and the geometry."""
    spec = wt.spec
    b = wt.batch_index
    per_image = spec.oh * spec.ow
    (pt, pb), (pl, pr) = spec.pads
    return {
        "summary": to_dict(wt, arrays=False),
        "spec": {
            "n": spec.n,
            "h": spec.h,
            "w": spec.w,
            "c_in": spec.c_in,
            "c_out": spec.c_out,
            "kh": spec.kh,
            "kw": spec.kw,
            "sh": spec.strides[0],
            "sw": spec.strides[1],
            "dh": spec.dilation[0],
            "dw": spec.dilation[1],
            "pt": pt,
            "pb": pb,
            "pl": pl,
            "pr": pr,
            "oh": spec.oh,
            "ow": spec.ow,
            "groups": spec.groups,
            "cg": spec.c_in_group,
            "cog": spec.c_out_group,
            "k_group": int(wt.flat_kernel.shape[1]),
            "batch_index": b,
            "channels_first": spec.data_format == "channels_first",
            "first_row": b * per_image,
        },
        "position": list(wt.position),
        "x": wt.x_nhwc[b].tolist(),  # (h, w, c_in)
        "rows": wt.all_patches[b * per_image : (b + 1) * per_image].tolist(),  # (oh*ow, K)
        "flat_kernel": wt.flat_kernel.tolist(),  # (G, K/G, c_out/G)
        "bias": wt.bias.tolist(),
        "by_hand": wt.all_patches_output[b].tolist(),  # (oh, ow, c_out): patches @ kernel + bias
        "conv": wt.output_nhwc[b].tolist(),  # (oh, ow, c_out): conv2d's output
    }


_CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 72em;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; }
h2 { font-size: 1.15em; margin: 1.4em 0 .4em; border-bottom: 1px solid #ddd; }
.lead { color: #444; max-width: 60em; }
.maps { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
.map h3 { font-size: .95em; margin: 0 0 .3em; font-weight: 600; }
table.grid { border-collapse: collapse; font: 11px/1 ui-monospace, monospace; }
table.grid td { width: 2.9em; height: 2.1em; text-align: center; border: 1px solid #fff;
                padding: 0; }
table.grid.tiny td { width: 9px; min-width: 9px; height: 9px; font-size: 0; }
td.pad { background: #e4e4e4; color: #888; }
td.out-cell { cursor: pointer; }
td.out-cell:hover { outline: 2px solid #888; }
td.hl { outline: 3px solid #ff7f0e; outline-offset: -3px; font-weight: bold; }
td.sel { outline: 3px solid #ff7f0e; outline-offset: -3px; font-weight: bold; }
.scroll { overflow-x: auto; max-width: 100%; }
table.matrix { border-collapse: collapse; font: 11px/1.2 ui-monospace, monospace; }
table.matrix td, table.matrix th { padding: 2px 4px; border: 1px solid #eee;
                                   text-align: right; white-space: nowrap; }
table.matrix th { background: #f6f6f6; font-weight: normal; color: #555; }
table.matrix tr.sel td { background: #ffe3c4; font-weight: bold; }
table.matrix tr.sel th { background: #ff7f0e; color: #fff; }
.terms { font: 12px/1.9 ui-monospace, monospace; }
.term { display: inline-block; background: #fff3e6; border-radius: 3px; padding: 0 4px;
        margin: 1px; }
.term.zero { background: #eee; color: #777; }
.filter { margin: .6em 0 1em; }
.result { font-weight: bold; color: #b35300; }
.ok { color: #1a7f37; font-weight: bold; }
.bad { color: #c00; font-weight: bold; }
#selected { font-weight: 600; }
"""

_JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("walkthrough-data").textContent);
  const S = D.spec;
  // output's index in the caller's data_format (the arrays here are all NHWC)
  const outIndex = (i, j, f) => S.channels_first
    ? `${S.batch_index}, ${f}, ${i}, ${j}` : `${S.batch_index}, ${i}, ${j}, ${f}`;
  const fmt = (v) => (Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 1e-3))
    ? v.toExponential(2) : v.toFixed(3);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const extent = (values) => {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return [lo, hi > lo ? hi : lo + 1];
  };
  // Colours only: lightness from the value's place in the range.
  const tint = (hue, sat, v, lo, hi) => {
    const t = (v - lo) / (hi - lo);
    return `hsl(${hue}, ${sat}%, ${Math.round(95 - 55 * t)}%)`;
  };
  const textOn = (v, lo, hi) => ((v - lo) / (hi - lo) > 0.7 ? "#fff" : "#222");
  const hues = S.c_in === 3 || S.c_in === 4 ? [0, 120, 220, 0] : null;

  // The input, channel by channel, inside its zero padding.
  const xs = D.x.flat(2);
  const [xlo, xhi] = extent(xs.concat([0]));
  const tiny = (rows, cols) => rows * cols > 400;
  const inputs = document.getElementById("inputs");
  for (let c = 0; c < S.c_in; c++) {
    const box = el("div", {class: "map"});
    box.appendChild(el("h3", {}, `input channel ${c}`));
    const t = el("table", {class: "grid" + (tiny(S.h + S.pt + S.pb, S.w + S.pl + S.pr) ?
      " tiny" : ""), id: `in-${c}`});
    for (let r = -S.pt; r < S.h + S.pb; r++) {
      const tr = el("tr");
      for (let q = -S.pl; q < S.w + S.pr; q++) {
        const inside = r >= 0 && r < S.h && q >= 0 && q < S.w;
        const v = inside ? D.x[r][q][c] : 0;
        const td = el("td", {class: "in-cell" + (inside ? "" : " pad"), "data-ch": c,
          "data-r": r, "data-c": q, "data-value": String(v), title: `x[${r}, ${q}, ${c}]`},
          inside ? v.toFixed(2) : "0");
        if (inside) {
          td.style.background = hues ? tint(hues[c], 70, v, xlo, xhi) : tint(0, 0, v, xlo, xhi);
          td.style.color = textOn(v, xlo, xhi);
        }
        tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    box.appendChild(t);
    inputs.appendChild(box);
  }

  // The output maps: click a pixel.
  const outs = D.conv.flat(2);
  const [olo, ohi] = extent(outs);
  const outputs = document.getElementById("outputs");
  for (let f = 0; f < S.c_out; f++) {
    const box = el("div", {class: "map"});
    box.appendChild(el("h3", {}, `output channel ${f}`));
    const t = el("table", {class: "grid" + (tiny(S.oh, S.ow) ? " tiny" : ""), id: `out-${f}`});
    for (let i = 0; i < S.oh; i++) {
      const tr = el("tr");
      for (let j = 0; j < S.ow; j++) {
        const v = D.conv[i][j][f];
        const td = el("td", {class: "out-cell", "data-f": f, "data-i": i, "data-j": j,
          "data-value": String(v), title: `output[${outIndex(i, j, f)}]`},
          v.toFixed(2));
        td.style.background = tint(265, 45, v, olo, ohi);
        td.style.color = textOn(v, olo, ohi);
        td.addEventListener("click", () => select(i, j));
        tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    box.appendChild(t);
    outputs.appendChild(box);
  }

  // Column labels of the patch matrix: row-major over (kh, kw, c_in) within each group.
  const colLabel = (k) => {
    const g = Math.floor(k / S.k_group), q = k % S.k_group;
    const a = Math.floor(q / (S.kw * S.cg)), b = Math.floor(q / S.cg) % S.kw, cc = q % S.cg;
    return `${a},${b},${g * S.cg + cc}`;
  };
  const K = S.k_group * S.groups;
  const TAP = "(kernel row, kernel column, channel)";
  const P = S.oh * S.ow;

  function drawMatrix(sel) {
    const t = document.getElementById("patch-matrix");
    t.textContent = "";
    const head = el("tr");
    head.appendChild(el("th", {}, "row"));
    for (let k = 0; k < K; k++) head.appendChild(el("th", {title: TAP}, colLabel(k)));
    t.appendChild(head);
    const lo = P <= 64 ? 0 : Math.max(0, Math.min(sel - 7, P - 15));
    const hi = P <= 64 ? P : Math.min(P, lo + 15);
    document.getElementById("matrix-window").textContent = P <= 64 ? "" :
      ` (rows ${S.first_row + lo} to ${S.first_row + hi - 1} of this image shown)`;
    for (let p = lo; p < hi; p++) {
      const tr = el("tr", {"data-row": S.first_row + p, class: p === sel ? "sel" : ""});
      tr.appendChild(el("th", {}, String(S.first_row + p)));
      for (let k = 0; k < K; k++) {
        const v = D.rows[p][k];
        tr.appendChild(el("td", {class: "pm-cell", "data-k": k, "data-value": String(v)}, fmt(v)));
      }
      t.appendChild(tr);
    }
  }

  function drawKernel() {
    const box = document.getElementById("flat-kernel");
    for (let g = 0; g < S.groups; g++) {
      const wrap = el("div", {class: "map"});
      const last = g * S.cog + S.cog - 1;
      if (S.groups > 1) wrap.appendChild(el("h3", {}, `group ${g}: filters ${g * S.cog}-${last}`));
      const t = el("table", {class: "matrix"});
      const head = el("tr");
      head.appendChild(el("th", {}, "row"));
      for (let q = 0; q < S.cog; q++) head.appendChild(el("th", {}, `filter ${g * S.cog + q}`));
      t.appendChild(head);
      for (let k = 0; k < S.k_group; k++) {
        const tr = el("tr");
        tr.appendChild(el("th", {title: TAP}, colLabel(g * S.k_group + k)));
        for (let q = 0; q < S.cog; q++) {
          tr.appendChild(el("td", {}, fmt(D.flat_kernel[g][k][q])));
        }
        t.appendChild(tr);
      }
      wrap.appendChild(t);
      box.appendChild(wrap);
    }
  }

  function drawDot(i, j, p) {
    const box = document.getElementById("dot");
    box.textContent = "";
    for (let f = 0; f < S.c_out; f++) {
      const g = Math.floor(f / S.cog), q = f % S.cog;
      const div = el("div", {class: "filter", id: `filter-${f}`});
      const cols = S.groups > 1 ? `, columns ${g * S.k_group}-${(g + 1) * S.k_group - 1}` : "";
      div.appendChild(el("h3", {}, `filter ${f}` + (S.groups > 1 ? ` (group ${g})` : "") +
        `: row ${S.first_row + p} of the patch matrix${cols} \u00b7 column ${q} of the ` +
        "flat kernel" + (S.groups > 1 ? ` ${g}` : "")));
      const terms = el("div", {class: "terms"});
      for (let k = 0; k < S.k_group; k++) {
        const a = D.rows[p][g * S.k_group + k], w = D.flat_kernel[g][k][q];
        terms.appendChild(el("span", {class: "term" + (a === 0 ? " zero" : "")},
          `${fmt(a)} \u00d7 ${fmt(w)}`));
        terms.appendChild(document.createTextNode(k + 1 < S.k_group ? " + " : ""));
      }
      terms.appendChild(document.createTextNode(` + bias ${fmt(D.bias[f])} = `));
      const byHand = D.by_hand[i][j][f], conv = D.conv[i][j][f];
      terms.appendChild(el("span", {class: "result", id: `result-${f}`,
        "data-value": String(byHand)}, byHand.toPrecision(7)));
      div.appendChild(terms);
      const check = el("div", {});
      check.appendChild(document.createTextNode(`conv2d's output[${outIndex(i, j, f)}] = `));
      check.appendChild(el("span", {id: `conv-${f}`, "data-value": String(conv)},
        conv.toPrecision(7)));
      check.appendChild(document.createTextNode(" \u00b7 difference "));
      check.appendChild(el("span", {class: byHand === conv ? "ok" : ""},
        Math.abs(byHand - conv).toExponential(1)));
      div.appendChild(check);
      box.appendChild(div);
    }
  }

  function select(i, j) {
    const p = i * S.ow + j;
    document.querySelectorAll("td.hl, td.sel").forEach((e) => e.classList.remove("hl", "sel"));
    for (let a = 0; a < S.kh; a++) {
      for (let b = 0; b < S.kw; b++) {
        const r = i * S.sh - S.pt + a * S.dh, q = j * S.sw - S.pl + b * S.dw;
        document.querySelectorAll(`td.in-cell[data-r="${r}"][data-c="${q}"]`)
          .forEach((e) => e.classList.add("hl"));
      }
    }
    document.querySelectorAll(`td.out-cell[data-i="${i}"][data-j="${j}"]`)
      .forEach((e) => e.classList.add("sel"));
    drawMatrix(p);
    drawDot(i, j, p);
    const sel = document.getElementById("selected");
    sel.textContent = `output pixel (${i}, ${j}) of image ${S.batch_index}: its patch is ` +
      `outlined in every input channel, it is row ${S.first_row + p} of the patch matrix, ` +
      `and each filter's value is that row \u00b7 the filter's column of the flat kernel + bias.`;
    sel.dataset.i = i;
    sel.dataset.j = j;
  }

  drawKernel();
  select(D.position[0], D.position[1]);
})();
"""


def _summary_html(wt: Walkthrough) -> str:
    spec = wt.spec
    p, k = wt.all_patches.shape
    if spec.c_in_group == 1:
        verdicts, more = "one slice per filter here, so the question does not arise", ""
    else:
        verdicts = "slices " + ", ".join(
            f"filter {f}: {'EQUAL' if e else 'NOT equal'}"
            for f, e in enumerate(wt.slices_equal[:8])
        )
        more = " ..." if len(wt.slices_equal) > 8 else ""
    status = '<span class="ok">MATCH</span>' if wt.matches else '<span class="bad">MISMATCH</span>'
    opts = ", ".join(f"{key}={val!r}" for key, val in wt.options.items())
    notes = "; ".join(f"{key}: {val}" for key, val in wt.notes.items())
    return (
        f"<p class='lead'>Conv2D(filters={spec.c_out}, kernel_size={(spec.kh, spec.kw)}, "
        f"{html.escape(opts)}) on an input of shape {wt.input_shape}. "
        f"{html.escape(notes)}.</p>"
        f"<p class='lead'>One kernel {wt.kernel_shape} = (kh, kw, c_in"
        f"{' / groups' if spec.groups > 1 else ''}, c_out) and one bias {wt.bias_shape}: each "
        f"filter is a {spec.kh}x{spec.kw}x{spec.c_in_group} block whose {spec.c_in_group} "
        f"channel slices are multiplied with their own input channel and summed into ONE "
        f"output channel ({html.escape(verdicts)}{more}). The convolution is the patch matrix "
        f"[{p}, {k}] @ the flat kernel {list(wt.kernel_matrix.shape)} + bias, reshaped to "
        f"{wt.output_shape}. Checked against conv2d: {status} (max |difference| "
        f"{wt.max_abs_diff:.3g} at the explained pixel, {wt.all_patches_max_abs_diff:.3g} over "
        f"all patches).</p>"
    )


def render_html(wt: Walkthrough) -> str:
    """The page as one string: inline CSS, inline data, inline script."""
    data = json.dumps(page_data(wt), allow_nan=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>patchconv explain: one convolution, step by step</title>
<style>{_CSS}</style>
</head>
<body>
<h1>One convolution, step by step</h1>
{_summary_html(wt)}
<p id="selected"></p>
<h2>The output: click any pixel</h2>
<div class="maps" id="outputs"></div>
<h2>The input, channel by channel (grey = zero padding); the patch is outlined</h2>
<div class="maps" id="inputs"></div>
<h2>The patch matrix [{wt.all_patches.shape[0]}, {wt.all_patches.shape[1]}]: one flattened
patch per output pixel<span id="matrix-window"></span></h2>
<div class="scroll"><table class="matrix" id="patch-matrix"></table></div>
<h2>The dot products: the patch's row times each filter's column of the flat kernel, plus the
bias</h2>
<div id="dot"></div>
<h2>The flat kernel {list(wt.kernel_matrix.shape)}: column f = filter f, rows labelled
(kernel row, kernel column, channel) in the patch's order</h2>
<div class="maps" id="flat-kernel"></div>
<script type="application/json" id="walkthrough-data">{data}</script>
<script>{_JS}</script>
</body>
</html>
"""


def save_html(wt: Walkthrough, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_html` to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(wt))
