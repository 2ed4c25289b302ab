"""The walkthrough as text for an 80-column terminal (reads a Walkthrough, computes nothing).

Every line fits in 80 columns: big arrays are summarised with ``...`` (their shapes are always
printed) and blocks shown side by side wrap onto further rows when they do not fit.
"""

from __future__ import annotations

import textwrap

import numpy as np

from patchconv.explain import Walkthrough

__all__ = ["render_text"]

WIDTH = 80
NBSP = "\xa0"  # a space that textwrap does not break at
INDENT = 5
# Arrays with more elements than this are summarised with "..." (3 items at each edge).
THRESHOLD = 64
# Filters shown slice by slice in the last step; the rest get one summary line.
SHOWN_FILTERS = 4

_DEFAULTS = {
    "strides": 1,
    "padding": "valid",
    "dilation_rate": 1,
    "groups": 1,
    "data_format": "channels_last",
}


def _num(value: float) -> str:
    return f"{float(value):.3f}"


def _channels_of(g: int, cg: int) -> str:
    """Which input channels group g holds, in words."""
    return f"channel {g}" if cg == 1 else f"channels {g * cg} to {g * cg + cg - 1}"


def _array(arr: np.ndarray, width: int = WIDTH - INDENT) -> str:
    return np.array2string(
        np.asarray(arr, dtype=np.float64),
        precision=3,
        suppress_small=True,
        max_line_width=width,
        floatmode="fixed",
        sign=" ",
        threshold=THRESHOLD,
        edgeitems=3,
    )


def _fmt(arr: np.ndarray, indent: int = INDENT) -> str:
    return textwrap.indent(_array(arr, WIDTH - indent), " " * indent)


def _keep(text: str) -> str:
    """Protect text from being broken across lines by :func:`_para`."""
    return text.replace(" ", NBSP)


def _keep_seed(text: str) -> str:
    return text.replace("seed ", "seed" + NBSP)


def _para(text: str, indent: int = 3, first: int | None = None) -> str:
    filled = textwrap.fill(
        text,
        width=WIDTH,
        initial_indent=" " * (indent if first is None else first),
        subsequent_indent=" " * indent,
        break_on_hyphens=False,
    )
    return filled.replace(NBSP, " ")


def _heading(number: int, text: str) -> str:
    label = f"{number}. "
    return _para(label + text, indent=len(label) if len(label) <= 3 else 4, first=0)


def _side_by_side(blocks: list[str], titles: list[str], indent: int = INDENT, gap: int = 3) -> str:
    """Blocks next to each other, as many per row as fit in WIDTH; the rest on further rows."""
    split = [b.splitlines() for b in blocks]
    widths = [
        max(len(t), *(len(line) for line in lines)) for t, lines in zip(titles, split, strict=True)
    ]
    rows: list[list[int]] = [[]]
    used = indent
    for k, w in enumerate(widths):
        need = w if not rows[-1] else gap + w
        if rows[-1] and used + need > WIDTH:
            rows.append([])
            used, need = indent, w
        rows[-1].append(k)
        used += need
    out: list[str] = []
    for row in rows:
        sep = " " * gap
        out.append(" " * indent + sep.join(titles[k].ljust(widths[k]) for k in row).rstrip())
        for r in range(max(len(split[k]) for k in row)):
            cells = [(split[k][r] if r < len(split[k]) else "").ljust(widths[k]) for k in row]
            out.append(" " * indent + sep.join(cells).rstrip())
    return "\n".join(out)


def _channel_blocks(arr3: np.ndarray, label: str) -> str:
    """A (rows, cols, c) array shown as c matrices side by side (wrapping to fit)."""
    blocks = [_array(arr3[:, :, c], WIDTH - INDENT) for c in range(arr3.shape[2])]
    return _side_by_side(blocks, [f"{label} {c}" for c in range(arr3.shape[2])])


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[str] = []
    start = prev = indices[0]
    for k in [*indices[1:], None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return ", ".join(parts)


def _options(wt: Walkthrough) -> str:
    return ", ".join(_keep(f"{k}={v!r}") for k, v in wt.options.items() if v != _DEFAULTS[k])


def _dot_product(wt: Walkthrough, f: int) -> str:
    """Filter f's output written out: the first products, the count, the bias, the result."""
    spec = wt.spec
    cog = spec.c_out_group
    g, col = divmod(f, cog)
    k_group = wt.flat_kernel.shape[1]
    row = wt.flat_patch[0, g * k_group : (g + 1) * k_group]  # (K/G,)
    weights = wt.flat_kernel[g, :, col]  # (K/G,)
    terms = [f"{_num(a)} x {_num(b)}" for a, b in zip(row, weights, strict=True)]
    if len(terms) > 4:
        terms = [*terms[:3], "...", terms[-1]]
    where = f" (group {g})" if spec.groups > 1 else ""
    # Non-breaking spaces keep each product, the count and the bias on one line when wrapped.
    chunks = [
        f"filter {f}{where}:",
        *(t + " +" for t in terms[:-1]),
        terms[-1],
        f"(sum of {k_group} products)",
        f"+ bias {_num(wt.bias[f])}",
        f"= {_num(wt.output_for_patch[f])}",
    ]
    return _para(" ".join(_keep(c) for c in chunks), indent=7, first=5)


def render_text(wt: Walkthrough) -> str:
    """The seed's sequence, step by step, ending with the match."""
    spec = wt.spec
    n, i, j = wt.batch_index, *wt.position
    kh, kw, cg, c_out = wt.kernel_shape
    k_group = wt.flat_kernel.shape[1]
    p = wt.all_patches.shape[0]
    first = spec.data_format == "channels_first"
    x_layout = "(n, c_in, h, w)" if first else "(n, h, w, c_in)"
    out_layout = "(n, c_out, oh, ow)" if first else "(n, oh, ow, c_out)"
    opts = _options(wt)
    notes = wt.notes
    lines = [
        _para(
            f"patchconv explain: Conv2D(filters={c_out}, {_keep(f'kernel_size={(kh, kw)}')}"
            f"{', ' + opts if opts else ''}) on an input of shape {_keep(str(wt.input_shape))}",
            indent=2,
            first=0,
        ),
        "",
        _heading(
            1,
            f"The input x {wt.input_shape} = {x_layout}"
            f"{': ' + _keep_seed(notes['x']) if 'x' in notes else ''}. Image {n}, channel by "
            "channel:",
        ),
        _channel_blocks(wt.x_nhwc[n], "input channel"),
        "",
        _heading(2, "The weights: ONE kernel and one bias for the whole layer."),
        _para(
            f"kernel {wt.kernel_shape} = (kh, kw, c_in{' / groups' if spec.groups > 1 else ''}, "
            f"c_out), bias {wt.bias_shape} = (c_out,)"
        ),
    ]
    if "kernel" in notes:
        lines.append(
            _para(
                f"kernel: {_keep_seed(notes['kernel'])}; bias: "
                f"{_keep_seed(notes.get('bias', 'given'))}."
            )
        )
    lines += [
        _para(
            f"Its third axis runs over the {cg} input channel{'s' if cg > 1 else ''} each filter "
            "sees and its fourth "
            f"over the {c_out} filters: each filter is a {kh}x{kw}x{cg} block, not one "
            f"{kh}x{kw} kernel per colour."
        ),
        "",
        _heading(3, f"The full convolution: output {wt.output_shape} = {out_layout}."),
        _channel_blocks(wt.output_nhwc[n], "output channel"),
        "",
    ]
    top, left = wt.patch_origin
    dh, dw = spec.dilation
    step = "" if spec.dilation == (1, 1) else f", every {dh} rows and {dw} columns (dilation)"
    lines.append(
        _heading(
            4,
            f"The patch under output pixel ({i}, {j}) of image {n}: input rows {top} to "
            f"{top + (kh - 1) * dh}, columns {left} to {left + (kw - 1) * dw}{step}, all "
            f"{spec.c_in} channels; shape {wt.patch.shape}.",
        )
    )
    pad = wt.patch_in_padding
    if pad.any():
        lines.append(
            _para(
                f"It hangs over the border: {int(pad.sum()) * spec.c_in} of its "
                f"{wt.patch.size} entries are the zero padding (P below; . is the image)."
            )
        )
        lines += [" " * INDENT + " ".join("P" if v else "." for v in r) for r in pad]
    lines += [
        _channel_blocks(wt.patch, "input channel"),
        "",
    ]
    if spec.groups == 1:
        lines.append(
            _heading(5, f"Flattened row-major over (kh, kw, c_in): shape {wt.flat_patch.shape}.")
        )
    else:
        lines.append(
            _heading(
                5,
                f"Flattened row-major over (kh, kw, c_in), one block of {k_group} per group "
                f"(group 0 holds input {_channels_of(0, cg)}, group 1 {_channels_of(1, cg)}, "
                f"...): shape {wt.flat_patch.shape}.",
            )
        )
    lines += [_fmt(wt.flat_patch), ""]
    if spec.groups == 1:
        lines.append(
            _heading(
                6,
                f"The kernel reshaped to ({k_group}, {c_out}): column f = filter f, rows in the "
                "patch's order.",
            )
        )
        lines.append(_fmt(wt.kernel_matrix))
    else:
        cog = spec.c_out_group
        lines.append(
            _heading(
                6,
                f"With groups={spec.groups}, the kernel is {spec.groups} matrices "
                f"({k_group}, {cog}), shape {wt.flat_kernel.shape}: the filters of group g "
                f"(columns of matrix g) see only group g's block of the patch.",
            )
        )
        lines.append(
            _side_by_side(
                [_array(wt.flat_kernel[g]) for g in range(spec.groups)],
                [f"group {g}" for g in range(spec.groups)],
            )
        )
    lines += [
        "",
        _heading(7, "patch @ kernel + bias: one dot product per filter."),
        *(_dot_product(wt, f) for f in range(min(c_out, SHOWN_FILTERS))),
    ]
    if c_out > SHOWN_FILTERS:
        lines.append(_para(f"... and {c_out - SHOWN_FILTERS} more filters; all {c_out}:", 5))
    lines += [
        _fmt(wt.output_for_patch),
        "",
        _heading(8, f"The full convolution's output[{wt.output_index(i, j)}]:"),
        _fmt(wt.conv_output_at_position),
        f"   max |difference| = {wt.max_abs_diff:.3g}",
        "",
        _heading(
            9,
            f"All patches at once: the patch matrix [{p}, {wt.all_patches.shape[1]}] @ "
            f"[{k_group}, {spec.c_out_group}]{' per group' if spec.groups > 1 else ''} + bias "
            f"= [{p}, {c_out}], reshaped to ({spec.n}, {spec.oh}, {spec.ow}, {c_out})"
            f"{' and moved to channels_first' if first else ''}; max |difference| from the "
            f"output = {wt.all_patches_max_abs_diff:.3g}.",
        ),
        "",
        _heading(10, "Does each colour slice of a filter hold the same kernel?"),
    ]
    if cg == 1:
        lines.append(
            _para(
                "Each filter sees a single input channel here"
                f"{f' (groups={spec.groups})' if spec.groups > 1 else ''}, so it has one "
                f"{kh}x{kw} slice and the question does not arise: try c_in > 1."
            )
        )
    else:
        for f in range(min(c_out, SHOWN_FILTERS)):
            lines.append(_channel_blocks(wt.kernel[:, :, :, f], f"filter {f}, channel"))
            verdict = "EQUAL" if wt.slices_equal[f] else "NOT equal"
            lines.append(" " * INDENT + f"-> the {cg} slices of filter {f} are {verdict}.")
        rest = list(range(SHOWN_FILTERS, c_out))
        for verdict, flag in (("EQUAL", True), ("NOT equal", False)):
            chosen = [f for f in rest if wt.slices_equal[f] == flag]
            if chosen:
                lines.append(_para(f"-> filters {_ranges(chosen)}: slices {verdict}.", 5))
        lines.append(
            _para(
                "Each filter's slices are multiplied with their own input channel and all the "
                "products are summed into ONE output channel: the colours are mixed, not kept "
                "apart."
            )
        )
    ok, where = wt.matches, wt.output_index(i, j)
    one, every = wt.patch_matches, wt.all_patches_match
    lines += [
        "",
        _para(
            f"patch @ kernel + bias {'equals' if one else 'DIFFERS from'} output[{where}], "
            f"and all patches at once {'equal' if every else 'DIFFER from'} the whole output "
            f"(tolerance {wt.tolerance:.3g}).",
            indent=0,
        ),
        f"{'MATCH' if ok else 'MISMATCH'} (max |difference| {wt.max_abs_diff:.3g} for the patch, "
        f"{wt.all_patches_max_abs_diff:.3g} for all patches)",
    ]
    return "\n".join(lines) + "\n"
