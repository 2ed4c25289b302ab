"""A picture of a training run: the first layer's learned kernels and the learning curves.

matplotlib is imported inside :func:`plot_training` only (the ``figures`` extra).
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import numpy as np

from patchconv.nn.training import TrainResult, channel_contrast

__all__ = ["plot_training"]

_CHANNEL_NAMES = {1: ("grey",), 3: ("R", "G", "B")}


def plot_training(result: TrainResult, path: str | PathLike[str]) -> None:
    """Write a PNG: one row per first-layer filter, one column per input channel (each row on
    one symmetric colour scale, so slices of the same filter compare directly), the filter as
    a colour patch when the input is RGB, and the loss and accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    kernel = result.first_conv.kernel
    assert kernel is not None
    c_in, filters = kernel.shape[2:]
    names = _CHANNEL_NAMES.get(c_in, tuple(f"ch {c}" for c in range(c_in)))
    rgb_column = c_in == 3
    cols = c_in + int(rgb_column)
    cell = 0.62
    kernel_h = max(4.0, filters * cell + 1.2)
    fig = plt.figure(figsize=(cols * cell * 1.35 + 1.4 + 6.0, kernel_h), dpi=110)
    outer = GridSpec(
        1,
        2,
        figure=fig,
        width_ratios=[cols * cell * 1.35 + 1.4, 6.0],
        wspace=0.25,
        top=1 - 0.75 / kernel_h,
        bottom=0.35 / kernel_h,
    )
    kgrid = outer[0].subgridspec(filters, cols, wspace=0.12, hspace=0.18)
    image: Any = None
    for f in range(filters):
        scale = float(np.abs(kernel[:, :, :, f]).max()) or 1.0
        for c in range(c_in):
            ax = fig.add_subplot(kgrid[f, c])
            image = ax.imshow(kernel[:, :, c, f], cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_xticks([])
            ax.set_yticks([])
            if f == 0:
                ax.set_title(names[c], fontsize=10)
            if c == 0:
                label = f"filter {f}" if f == 0 else f"{f}"
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        if rgb_column:
            ax = fig.add_subplot(kgrid[f, c_in])
            patch = kernel[:, :, :, f] / (2 * scale) + 0.5  # 0 -> mid grey, +-scale -> 0 / 1
            ax.imshow(np.clip(patch, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if f == 0:
                ax.set_title("as RGB", fontsize=10)
    kernel_title = f"first-layer kernel {kernel.shape}\nrows: filters, columns: input channels"
    if c_in > 1:
        kernel_title += f"\nchannel contrast {channel_contrast(kernel):.2f}"
        kernel_title += f" (start {channel_contrast(result.initial_kernel):.2f})"
    fig.text(
        outer[0].get_position(fig).x0,
        0.995,
        kernel_title,
        ha="left",
        va="top",
        fontsize=10,
    )
    if image is not None:
        fig.text(
            outer[0].get_position(fig).x0,
            0.005,
            "blue: negative weight, red: positive (each row on its own scale)",
            ha="left",
            va="bottom",
            fontsize=8,
        )
    # Curves keep a readable height however many filter rows stand beside them.
    spare = max(0.0, kernel_h - 6.5)
    curves = outer[1].subgridspec(3, 1, hspace=0.35, height_ratios=[3.0, 3.0, max(spare, 1e-3)])
    epochs = np.arange(1, len(result.history["loss"]) + 1)
    ax = fig.add_subplot(curves[0])
    ax.plot(epochs, result.history["loss"], marker="o", ms=3, label="train")
    if "val_loss" in result.history:
        ax.plot(epochs, result.history["val_loss"], marker="o", ms=3, label="test")
    ax.set_ylabel("loss (cross-entropy)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(
        f"{result.task}: test accuracy {result.test_accuracy:.4f} after {result.epochs} "
        f"epoch{'s' if result.epochs != 1 else ''} ({result.seconds:.1f} s)",
        fontsize=10,
    )
    ax = fig.add_subplot(curves[1])
    if "accuracy" in result.history:
        ax.plot(epochs, result.history["accuracy"], marker="o", ms=3, label="train")
    if "val_accuracy" in result.history:
        ax.plot(epochs, result.history["val_accuracy"], marker="o", ms=3, label="test")
    ax.set_xlabel("epoch")
    for axis in fig.axes[-2:]:  # whole epochs only (one epoch alone got ticks 0.95 .. 1.05)
        if len(epochs) <= 12:
            axis.set_xticks(epochs)
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
