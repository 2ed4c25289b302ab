"""The walkthrough as an animated GIF: the patch slides over the input while the matching row
of the patch matrix and the output pixel fill in (matplotlib draws, Pillow writes; both are
imported here only, and nothing is recomputed: every frame reads the Walkthrough).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from patchconv.explain import Walkthrough
from patchconv.explain_figure import (
    HIGHLIGHT,
    blank,
    channel_cmap,
    heatmap,
    outline_patch,
    padded_channel,
    pyplot,
)

__all__ = ["animation_frames", "save_animation"]

MAX_FRAMES = 48  # positions shown; with more output pixels, evenly spaced ones (ends included)
MAX_PANELS = 3  # input channels and output maps drawn
SLOW_POSITIONS = 16  # up to this many positions, two frames each


def _positions(wt: Walkthrough, max_frames: int) -> list[tuple[int, int]]:
    oh, ow = wt.spec.oh, wt.spec.ow
    total = oh * ow
    picks = np.unique(np.linspace(0, total - 1, min(total, max_frames)).round().astype(int))
    return [divmod(int(k), ow) for k in picks]


def animation_frames(wt: Walkthrough, *, max_frames: int = MAX_FRAMES, dpi: int = 80) -> list[Any]:
    """PIL images, output positions in raster order, outputs filled in up to each.

    Up to ``SLOW_POSITIONS`` output pixels, each gets two frames (its patch and row, then its
    output); beyond that, one frame each for at most ``max_frames`` evenly spaced positions.
    """
    from matplotlib.patches import Rectangle
    from PIL import Image

    plt = pyplot()
    spec = wt.spec
    b = wt.batch_index
    n_in = min(spec.c_in, MAX_PANELS)
    n_out = min(spec.c_out, MAX_PANELS)
    x_img = wt.x_nhwc[b]
    out_img = wt.output_nhwc[b]
    per_image = spec.oh * spec.ow
    first_row = b * per_image
    rows = wt.all_patches[first_row : first_row + per_image]  # (oh*ow, K)
    lo, hi = min(float(x_img.min()), 0.0), float(x_img.max())
    hi = max(hi, lo + 1e-12)
    olo, ohi = float(out_img.min()), float(out_img.max())
    ohi = max(ohi, olo + 1e-12)

    fig = plt.figure(figsize=(12, 7.5), dpi=dpi)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.86, bottom=0.06)
    grid = fig.add_gridspec(2, n_in + n_out, height_ratios=[1.0, 0.9], hspace=0.35, wspace=0.3)
    title = fig.suptitle("", fontsize=14, fontweight="bold")
    in_axes = []
    for c in range(n_in):
        ax = fig.add_subplot(grid[0, c])
        chan, origin = padded_channel(wt, c)
        heatmap(
            ax,
            chan,
            cmap=channel_cmap(c, spec.c_in),
            vmin=lo,
            vmax=hi,
            values=max(chan.shape) <= 8,
            origin=origin,
            aspect="equal",
            fontsize=7,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"input channel {c}", fontsize=11)
        in_axes.append(ax)
    out_images = []
    out_marks = []
    for f in range(n_out):
        ax = fig.add_subplot(grid[0, n_in + f])
        empty = blank((spec.oh, spec.ow))
        out_images.append(
            heatmap(ax, empty, cmap="viridis", vmin=olo, vmax=ohi, values=False, aspect="equal")
        )
        mark = Rectangle((-0.5, -0.5), 1, 1, fill=False, edgecolor=HIGHLIGHT, linewidth=3)
        out_marks.append(ax.add_patch(mark))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"output channel {f}", fontsize=11)
    ax_rows = fig.add_subplot(grid[1, :])
    blank_rows = blank(rows.shape)
    rows_image = heatmap(
        ax_rows, blank_rows, cmap="Greys", vmin=lo, vmax=hi, values=False, origin=(first_row, 0)
    )
    row_mark = ax_rows.add_patch(
        Rectangle((-0.5, first_row - 0.5), rows.shape[1], 1, fill=False, edgecolor=HIGHLIGHT, lw=3)
    )
    ax_rows.set_xticks([])
    ax_rows.yaxis.get_major_locator().set_params(integer=True)
    ax_rows.set_ylabel("patch matrix row")
    ax_rows.set_title(
        f"the patch matrix {list(wt.all_patches.shape)}: row r = the flattened patch of output "
        "pixel r",
        fontsize=11,
    )

    frames = []
    outlines: list[Any] = []
    positions = _positions(wt, max_frames)
    # With few positions, each takes two frames: the patch and its row, then its output pixel.
    phases = (False, True) if per_image <= SLOW_POSITIONS else (True,)

    for i, j in positions:
        k = i * spec.ow + j  # this position's row within the image
        for artist in outlines:
            artist.remove()
        outlines = [a for ax in in_axes for a in outline_patch(ax, wt, i, j)]
        for show_output in phases:
            done = np.arange(per_image) <= k  # (oh*ow,) rows filled in so far
            rows_image.set_data(np.ma.array(rows, mask=~np.broadcast_to(done[:, None], rows.shape)))
            row_mark.set_y(first_row + k - 0.5)
            filled = (done if show_output else np.arange(per_image) < k).reshape(spec.oh, spec.ow)
            for f in range(n_out):
                out_images[f].set_data(np.ma.array(out_img[:, :, f], mask=~filled))
                out_marks[f].set_xy((j - 0.5, i - 0.5))
            if show_output:
                values = ", ".join(f"{v:.3f}" for v in wt.all_patches_output[b, i, j, :n_out])
                more = ", ..." if spec.c_out > n_out else ""
                text = (
                    f"output pixel ({i}, {j}) = row {first_row + k} @ the flat kernel + bias "
                    f"= [{values}{more}]"
                )
            else:
                text = (
                    f"the patch under output pixel ({i}, {j}), flattened = row "
                    f"{first_row + k} of the patch matrix"
                )
            title.set_text(text)
            fig.canvas.draw()
            rgba = np.asarray(fig.canvas.buffer_rgba())
            frames.append(Image.fromarray(rgba[:, :, :3].copy()).quantize(colors=200))
    plt.close(fig)
    return frames


def save_animation(
    wt: Walkthrough,
    path: str | os.PathLike[str],
    *,
    max_frames: int = MAX_FRAMES,
    frame_ms: int = 700,
) -> None:
    """Write the animation as a looping GIF; the last frame is held three times as long."""
    frames = animation_frames(wt, max_frames=max_frames)
    durations = [frame_ms] * len(frames)
    durations[-1] = 3 * frame_ms
    frames[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
    )
