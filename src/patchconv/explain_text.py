"""The walkthrough as text for an 80-column terminal (reads a Walkthrough, computes nothing)."""

from __future__ import annotations

import textwrap

import numpy as np

from patchconv.explain import Walkthrough

__all__ = ["render_text"]

WIDTH = 80


def _fmt(arr: np.ndarray, indent: int = 5) -> str:
    text = np.array2string(
        np.asarray(arr, dtype=np.float64),
        precision=3,
        suppress_small=True,
        max_line_width=WIDTH - indent,
        floatmode="fixed",
        sign=" ",
    )
    return textwrap.indent(text, " " * indent)


def _para(text: str, indent: int = 3) -> str:
    return textwrap.fill(
        text, width=WIDTH, initial_indent=" " * indent, subsequent_indent=" " * indent
    )


def _side_by_side(blocks: list[str], titles: list[str], indent: int = 5) -> str:
    split = [b.splitlines() for b in blocks]
    widths = [
        max(len(t), *(len(line) for line in lines)) for t, lines in zip(titles, split, strict=True)
    ]
    rows = [" " * indent + "   ".join(t.ljust(w) for t, w in zip(titles, widths, strict=True))]
    for k in range(max(len(lines) for lines in split)):
        cells = [
            (lines[k] if k < len(lines) else "").ljust(w)
            for lines, w in zip(split, widths, strict=True)
        ]
        rows.append(" " * indent + "   ".join(cells).rstrip())
    return "\n".join(rows)


def _channel_blocks(arr3: np.ndarray, label: str) -> str:
    """A (kh, kw, c) block shown as c small matrices side by side."""
    blocks = [
        np.array2string(
            arr3[:, :, c].astype(np.float64),
            precision=3,
            suppress_small=True,
            floatmode="fixed",
            sign=" ",
        )
        for c in range(arr3.shape[2])
    ]
    return _side_by_side(blocks, [f"{label} {c}" for c in range(arr3.shape[2])])


def render_text(wt: Walkthrough) -> str:
    """The seed's sequence, step by step, ending with the match."""
    spec = wt.spec
    n, i, j = wt.batch_index, *wt.position
    kh, kw, cg, c_out = wt.kernel_shape
    k_flat = wt.flat_kernel.shape[1]
    p = wt.all_patches.shape[0]
    last = "(n, c_out, oh, ow)" if spec.data_format == "channels_first" else "(n, oh, ow, c_out)"
    opts = ", ".join(
        f"{k}={v!r}"
        for k, v in wt.options.items()
        if v
        != {
            "strides": 1,
            "padding": "valid",
            "dilation_rate": 1,
            "groups": 1,
            "data_format": "channels_last",
        }[k]
    )
    lines = [
        f"patchconv explain: Conv2D(filters={c_out}, kernel_size={(kh, kw)}"
        f"{', ' + opts if opts else ''}) on an input of shape {wt.input_shape}",
        "",
        "1. The weights: ONE kernel and one bias for the whole layer.",
        f"   kernel {wt.kernel_shape} = (kh, kw, c_in{' / groups' if spec.groups > 1 else ''}, "
        f"c_out), bias {wt.bias_shape} = (c_out,)",
        _para(
            f"Its third axis runs over the {cg} input channels it sees and its fourth over the "
            f"{c_out} filters: each filter is a {kh}x{kw}x{cg} block, not one {kh}x{kw} kernel "
            "per colour."
        ),
        "",
        f"2. The full convolution: output {wt.output_shape} = {last}.",
    ]
    out_nhwc = np.moveaxis(wt.output, 1, -1) if spec.data_format == "channels_first" else wt.output
    lines.append(_channel_blocks(out_nhwc[n], "output channel"))
    top, left = wt.patch_origin
    pad_note = ""
    if (
        top < 0
        or left < 0
        or top + (kh - 1) * spec.dilation[0] >= spec.h
        or (left + (kw - 1) * spec.dilation[1] >= spec.w)
    ):
        pad_note = " (it hangs over the border: those entries are the zero padding)"
    dil = "" if spec.dilation == (1, 1) else f" every {spec.dilation} pixels"
    lines += [
        "",
        f"3. The patch under output pixel ({i}, {j}) of image {n}: rows from {top}, columns from "
        f"{left}{dil}, all {spec.c_in} channels; shape {wt.patch.shape}{pad_note}.",
        _channel_blocks(wt.patch, "input channel"),
        "",
        f"4. Flattened row-major over (kh, kw, c_in): shape {wt.flat_patch.shape}.",
        _fmt(wt.flat_patch),
        "",
    ]
    if spec.groups == 1:
        lines.append(
            f"5. The kernel reshaped to ({k_flat}, {c_out}): column f = filter f, rows in the "
            "patch's order."
        )
        lines.append(_fmt(wt.flat_kernel[0]))
    else:
        lines.append(
            f"5. With groups={spec.groups}, the kernel is {spec.groups} matrices "
            f"({k_flat}, {spec.c_out_group}); group g's filters see only input channels "
            f"g*{spec.c_in_group} to g*{spec.c_in_group}+{spec.c_in_group - 1}."
        )
        lines.append(_fmt(wt.flat_kernel))
    lines += [
        "",
        "6. patch @ kernel + bias, one number per filter:",
        _fmt(wt.output_for_patch),
        "",
        f"7. The full convolution's output at ({n}, {i}, {j}): ",
        _fmt(wt.conv_output_at_position),
        f"   max |difference| = {wt.max_abs_diff:.3g}",
        "",
        f"8. All patches at once: [{p}, {wt.all_patches.shape[1]}] @ "
        f"[{k_flat}, {c_out if spec.groups == 1 else spec.c_out_group}]"
        f"{' per group' if spec.groups > 1 else ''} + bias = [{p}, {c_out}], reshaped to "
        f"({spec.n}, {spec.oh}, {spec.ow}, {c_out}); max |difference| from the output = "
        f"{wt.all_patches_max_abs_diff:.3g}",
        "",
        "9. Does each colour slice of a filter hold the same kernel?",
    ]
    for f, equal in enumerate(wt.slices_equal):
        lines.append(_channel_blocks(wt.kernel[:, :, :, f], f"filter {f}, channel"))
        lines.append(
            f"     -> the {cg} slices of filter {f} are {'EQUAL' if equal else 'NOT equal'}."
        )
    lines.append(
        _para(
            "Each filter's slices are multiplied with their own input channel and all the "
            "products are summed into ONE output channel: the colours are mixed, not kept apart.",
        )
    )
    verdict = "MATCH" if wt.matches else "MISMATCH"
    lines += [
        "",
        f"{verdict}: patch @ kernel + bias equals output[{n}, {i}, {j}] (max |difference| "
        f"{wt.max_abs_diff:.3g}), and all patches at once equal the whole output "
        f"(max |difference| {wt.all_patches_max_abs_diff:.3g}).",
    ]
    return "\n".join(lines) + "\n"
