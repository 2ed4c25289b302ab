"""The walkthrough as one picture (matplotlib, imported here only; reads a Walkthrough).

Top: the input channels with the patch outlined (padding drawn as grey zeros) and the output
maps with the explained pixel marked. Middle: the kernel as a grid (rows = input channels,
columns = filters) with its values, and the arithmetic in words. Bottom: the patch matrix with
the patch's row highlighted, and on the right the flat kernel, column f = filter f.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from patchconv.explain import Walkthrough

__all__ = ["draw_figure", "save_figure"]

HIGHLIGHT = "#ff7f0e"  # the patch, its row and its output pixel, everywhere
PAD_COLOUR = "#d9d9d9"
MAX_CHANNELS = 4  # input channels and output maps drawn; the rest are named in the title
MAX_FILTERS = 6  # kernel-grid columns and flat-kernel rows drawn
WINDOW = 12  # patch-matrix rows drawn around the explained patch's row


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - the figures extra is installed in CI
        raise ImportError(
            "patchconv explain --figure/--animate need matplotlib: pip install 'patchconv[figures]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def channel_cmap(c: int, c_in: int) -> str:
    """Red, green and blue maps for an RGB input's channels, grey otherwise."""
    if c_in in (3, 4) and c < 3:
        return ("Reds", "Greens", "Blues")[c]
    return "Greys"


def _dark(cmap: str, level: float) -> bool:
    """Whether a cell at ``level`` (0..1 of the colour range) needs white text."""
    if cmap == "RdBu_r":
        return abs(level - 0.5) > 0.3
    if cmap == "viridis":
        return level < 0.55
    return level > 0.55


def heatmap(
    ax: Any,
    arr: np.ndarray,
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    values: bool,
    origin: tuple[int, int] = (0, 0),
    fontsize: float = 8.0,
    fmt: str = "{:.2f}",
    aspect: str = "auto",
    masked_text: str = "0",
) -> Any:
    """A 2-D array as coloured cells centred on integer coordinates (plus ``origin``).

    Masked cells are drawn grey, labelled ``masked_text`` (the padding's "0" by default).
    """
    r0, c0 = origin
    rows, cols = arr.shape
    from matplotlib import colormaps

    image = ax.imshow(
        arr,
        cmap=colormaps[cmap].with_extremes(bad=PAD_COLOUR),
        vmin=vmin,
        vmax=vmax,
        extent=(c0 - 0.5, c0 + cols - 0.5, r0 + rows - 0.5, r0 - 0.5),
        interpolation="nearest",
        aspect=aspect,
    )
    if values:
        span = (vmax - vmin) or 1.0
        data = np.ma.getdata(arr)
        for r in range(rows):
            for c in range(cols):
                masked = bool(np.ma.getmaskarray(arr)[r, c])
                dark = not masked and _dark(cmap, (float(data[r, c]) - vmin) / span)
                ax.text(
                    c0 + c,
                    r0 + r,
                    masked_text if masked else fmt.format(float(data[r, c])),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    color="white" if dark else "black",
                )
    ax.set_xlim(c0 - 0.5, c0 + cols - 0.5)
    ax.set_ylim(r0 + rows - 0.5, r0 - 0.5)
    return image


def blank(shape: tuple[int, ...]) -> np.ma.MaskedArray:
    """All masked, over zeros: ``np.ma.masked_all`` leaves its data uninitialised, and the
    colour map scales masked values too (a garbage 1e38 overflowed now and then)."""
    return np.ma.masked_array(np.zeros(shape), mask=True)


def padded_channel(wt: Walkthrough, c: int) -> tuple[np.ma.MaskedArray, tuple[int, int]]:
    """Channel c of the explained image inside its zero padding (masked) and its origin."""
    spec = wt.spec
    (pt, pb), (pl, pr) = spec.pads
    img = wt.x_nhwc[wt.batch_index, :, :, c]  # (h, w)
    full = np.ma.masked_all((spec.h + pt + pb, spec.w + pl + pr), dtype=np.float64)
    full[pt : pt + spec.h, pl : pl + spec.w] = img
    full.data[full.mask] = 0.0  # padding reads as 0
    return full, (-pt, -pl)


def outline_patch(ax: Any, wt: Walkthrough, i: int, j: int, **style: Any) -> list[Any]:
    """Outline the taps of output pixel (i, j)'s patch (each tap, when dilated)."""
    from matplotlib.patches import Rectangle

    spec = wt.spec
    rows, cols = wt.taps_of(i, j)
    kw = dict(fill=False, edgecolor=HIGHLIGHT, linewidth=3.0, **style)
    if spec.dilation == (1, 1):
        rect = Rectangle((cols[0] - 0.5, rows[0] - 0.5), spec.kw, spec.kh, **kw)
        return [ax.add_patch(rect)]
    thin = {**kw, "linewidth": 2.0}
    return [ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, **thin)) for r in rows for c in cols]


def _no_ticks(ax: Any) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _index_ticks(ax: Any, rows: range, cols: range, small: bool) -> None:
    if small:
        ax.set_xticks(list(cols))
        ax.set_yticks(list(rows))
        ax.tick_params(labelsize=7, length=0)
    else:
        _no_ticks(ax)


def _shown(total: int, limit: int) -> tuple[int, str]:
    return (total, "") if total <= limit else (limit, f" (first {limit} of {total})")


def draw_figure(wt: Walkthrough) -> Any:
    """The whole walkthrough in one matplotlib Figure."""
    plt = pyplot()
    spec = wt.spec
    n, (i, j) = wt.batch_index, wt.position
    kh, kw, cg, c_out = wt.kernel_shape
    n_in, in_note = _shown(spec.c_in, MAX_CHANNELS)
    n_out, out_note = _shown(c_out, MAX_CHANNELS)
    x_img = wt.x_nhwc[n]
    out_img = wt.output_nhwc[n]
    (pt, pb), (pl, pr) = spec.pads
    # Values are written into cells at least ~0.42 inch wide (a panel is ~14/(panels) inches).
    panel = 14.0 / (n_in + n_out)
    hp, wp = spec.h + pt + pb, spec.w + pl + pr
    small_in = panel / max(hp, wp) >= 0.42
    small_out = panel / max(spec.oh, spec.ow) >= 0.42

    fig = plt.figure(figsize=(16, 12), dpi=100)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.9, bottom=0.05)
    outer = fig.add_gridspec(3, 1, height_ratios=[1.2, 1.1, 1.1], hspace=0.35)
    fig.suptitle(
        f"One kernel {wt.kernel_shape}, one bias {wt.bias_shape}: output pixel ({i}, {j}) of "
        f"image {n} = its {wt.patch.shape} patch, flattened, @ the flat kernel + bias",
        fontsize=15,
        fontweight="bold",
    )

    # Row 1: the input channels (patch outlined) and the output maps (pixel marked).
    top = outer[0].subgridspec(1, n_in + n_out, wspace=0.25)
    lo, hi = float(np.min(x_img)), float(np.max(x_img))
    lo, hi = min(lo, 0.0), max(hi, lo + 1e-12)
    for c in range(n_in):
        ax = fig.add_subplot(top[0, c])
        chan, origin = padded_channel(wt, c)
        heatmap(
            ax,
            chan,
            cmap=channel_cmap(c, spec.c_in),
            vmin=lo,
            vmax=hi,
            values=small_in,
            origin=origin,
            fontsize=8,
            aspect="equal",
        )
        outline_patch(ax, wt, i, j)
        _index_ticks(ax, range(-pt, spec.h + pb), range(-pl, spec.w + pr), max(hp, wp) <= 10)
        if c == 0:
            ax.set_ylabel("input row")
        ax.set_title(
            f"input channel {c}{in_note if c == 0 else ''}\n(grey = zero padding)"
            if spec.pads != ((0, 0), (0, 0))
            else f"input channel {c}{in_note if c == 0 else ''}",
            fontsize=10,
        )
    olo, ohi = float(np.min(out_img)), float(np.max(out_img))
    ohi = max(ohi, olo + 1e-12)
    from matplotlib.patches import Rectangle

    for f in range(n_out):
        ax = fig.add_subplot(top[0, n_in + f])
        heatmap(
            ax,
            out_img[:, :, f],
            cmap="viridis",
            vmin=olo,
            vmax=ohi,
            values=small_out,
            aspect="equal",
        )
        ax.add_patch(
            Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=3.5)
        )
        _index_ticks(ax, range(spec.oh), range(spec.ow), max(spec.oh, spec.ow) <= 10)
        ax.set_title(
            f"output channel {f}{out_note if f == 0 else ''}\n"
            f"[{i}, {j}] = {wt.conv_output_at_position[f]:.3f}",
            fontsize=10,
        )

    # Row 2: the kernel grid (rows = input channels, columns = filters) and the words.
    mid = outer[1].subgridspec(1, 2, width_ratios=[1.25, 1.0], wspace=0.08)
    n_rows, row_note = _shown(cg, MAX_CHANNELS)
    n_cols, col_note = _shown(c_out, MAX_FILTERS)
    grid = mid[0].subgridspec(n_rows, n_cols, wspace=0.08, hspace=0.12)
    kmax = float(np.max(np.abs(wt.kernel))) or 1.0
    for r in range(n_rows):
        for f in range(n_cols):
            ax = fig.add_subplot(grid[r, f])
            heatmap(
                ax,
                wt.kernel[:, :, r, f],
                cmap="RdBu_r",
                vmin=-kmax,
                vmax=kmax,
                values=kh * kw <= 25 and n_rows * n_cols <= 12,
                fontsize=7 if n_rows > 2 else 8,
            )
            _no_ticks(ax)
            if r == 0:
                g = f // spec.c_out_group
                # With groups, row r of filter f is input channel g*cg + r: the rows are slices
                # and each title names its group's channels (the rows were all "channel r").
                group = f"\n(group {g}: ch {g * cg}-{g * cg + cg - 1})" if spec.groups > 1 else ""
                ax.set_title(f"filter {f}{group}", fontsize=10 if spec.groups == 1 else 8)
            if f == 0:
                ax.set_ylabel(f"channel {r}" if spec.groups == 1 else f"slice {r}", fontsize=10)
    fig.text(
        0.05,
        grid[0, 0].get_position(fig).y1 + 0.035,
        f"the kernel {wt.kernel_shape}: rows = "
        f"{'input channels' if spec.groups == 1 else 'slices (each group its channels)'}"
        f"{row_note}, "
        f"columns = filters{col_note}",
        fontsize=11,
        fontweight="bold",
    )

    words = fig.add_subplot(mid[1])
    words.axis("off")
    k_group = wt.flat_kernel.shape[1]
    lines = [
        f"patch {wt.patch.shape} -> flat patch {wt.flat_patch.shape}",
        f"kernel {wt.kernel_shape} -> flat kernel {wt.kernel_matrix.shape}",
        "",
        "patch @ kernel + bias, one dot product per filter:",
    ]
    for f in range(min(c_out, 4)):
        lines.append(
            f"  filter {f}: sum of {k_group} products + {wt.bias[f]:.3f} "
            f"= {wt.output_for_patch[f]:.4f}"
        )
    if c_out > 4:
        lines.append(f"  ... {c_out - 4} more filters")
    vals = ", ".join(f"{v:.4f}" for v in wt.conv_output_at_position[:4])
    lines += [
        f"conv2d output[{wt.output_index(i, j)}] = [{vals}{', ...' if c_out > 4 else ''}]",
        f"max |difference| = {wt.max_abs_diff:.3g}",
        "",
        f"all patches at once: {list(wt.all_patches.shape)} @ "
        f"{[k_group, spec.c_out_group]}{' per group' if spec.groups > 1 else ''}",
        f"  -> {wt.output_shape}, max |difference| = {wt.all_patches_max_abs_diff:.3g}",
        "",
    ]
    if cg > 1:
        verdicts = ["EQUAL" if e else "NOT equal" for e in wt.slices_equal]
        same = all(v == verdicts[0] for v in verdicts)
        lines.append(
            f"colour slices of each filter: {verdicts[0]}"
            if same
            else f"colour slices: {', '.join(verdicts[:4])}{' ...' if c_out > 4 else ''}"
        )
        lines.append("they are summed into ONE output channel per filter")
    lines.append("MATCH" if wt.matches else "MISMATCH")
    words.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        fontsize=10,
        family="monospace",
        transform=words.transAxes,
    )

    # Row 3: the patch matrix (a window of rows around the patch's row when it is tall) and,
    # under it, the flat kernel drawn transposed so that each filter's column lines up with the
    # patch values it multiplies.
    p, k = wt.all_patches.shape
    row = wt.patch_row
    r0 = min(max(row - WINDOW // 2, 0), max(p - WINDOW, 0))
    r1 = min(p, r0 + WINDOW)
    flat = wt.flat_kernel.transpose(1, 0, 2).reshape(k_group, -1)  # (K/G, c_out)
    shown_f = min(c_out, MAX_FILTERS)
    bottom = outer[2].subgridspec(2, 1, height_ratios=[r1 - r0, shown_f + 0.8], hspace=0.05)
    ax = fig.add_subplot(bottom[0])
    values = k <= 40
    heatmap(
        ax,
        wt.all_patches[r0:r1],
        cmap="Greys",
        vmin=lo,
        vmax=hi,
        values=values,
        origin=(r0, 0),
        fontsize=6.5 if k <= 30 else 5.5,
    )
    ax.add_patch(Rectangle((-0.5, row - 0.5), k, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=3.0))
    shown_rows = "" if (r0, r1) == (0, p) else f", rows {r0}-{r1 - 1} shown"
    ax.set_title(
        f"the patch matrix {list(wt.all_patches.shape)}{shown_rows}: one flattened patch per "
        f"output pixel; row {row} = output pixel ({i}, {j})",
        fontsize=11,
        fontweight="bold",
    )
    ax.set_yticks(range(r0, r1))
    ax.tick_params(labelsize=7, length=0)
    ax.set_xticks([])
    ax = fig.add_subplot(bottom[1])
    if spec.groups == 1:
        heatmap(
            ax,
            flat[:, :shown_f].T,
            cmap="RdBu_r",
            vmin=-kmax,
            vmax=kmax,
            values=values,
            fontsize=6.5 if k <= 30 else 5.5,
        )
        ax.set_yticks(range(shown_f))
        ax.set_yticklabels([f"filter {f}" for f in range(shown_f)])
        ax.set_xlabel(
            f"the flat kernel {list(wt.kernel_matrix.shape)}, drawn on its side: its column f "
            "(= filter f) lines up with the patch values it multiplies",
            fontsize=11,
            fontweight="bold",
        )
    else:
        # Group g's matrix multiplies only columns g*K/G:(g+1)*K/G of the patch matrix.
        blocks = blank((shown_f, k))
        for f in range(shown_f):
            g = f // spec.c_out_group
            blocks[f, g * k_group : (g + 1) * k_group] = flat[:, f]
        heatmap(
            ax,
            blocks,
            cmap="RdBu_r",
            vmin=-kmax,
            vmax=kmax,
            values=values,
            masked_text="",
            fontsize=6.5 if k <= 30 else 5.5,
        )
        ax.set_yticks(range(shown_f))
        ax.set_yticklabels([f"filter {f}" for f in range(shown_f)])
        ax.set_xlabel(
            f"the flat kernel {list(wt.flat_kernel.shape)} (one matrix per group), on its side: "
            "each filter multiplies only its group's block of the patch (grey: not used)",
            fontsize=11,
            fontweight="bold",
        )
    ax.set_xticks([])
    ax.tick_params(labelsize=8, length=0)
    return fig


def save_figure(wt: Walkthrough, path: str | os.PathLike[str], *, dpi: int = 100) -> None:
    """Draw :func:`draw_figure` into a PNG (or any format matplotlib knows from the suffix)."""
    plt = pyplot()
    fig = draw_figure(wt)
    try:
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
