"""``patchconv explain``: turn command-line options into :func:`patchconv.explain` arguments,
load ``--image`` and ``--weights``, and write the renderings asked for.

The parser itself lives in :mod:`patchconv.cli` (one block per subcommand); this module holds
what that block calls. Messages start with the option's name; the CLI prefixes
``patchconv explain: error:``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import zipfile
from typing import Any, overload

import numpy as np

from patchconv._spec import PatchconvError

__all__ = ["FIGURE_SUFFIXES", "load_weights", "parse_ints", "parse_padding", "picture_path", "run"]

_PADDING_WORDS = ("valid", "same", "same_lower", "same_upper")
# What matplotlib's Agg, PDF, PS and SVG backends write (PNG first: the suffix of a bare name).
FIGURE_SUFFIXES = (
    ".png", ".svg", ".svgz", ".pdf", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp",
)  # fmt: skip


def parse_ints(text: str, *, name: str, counts: tuple[int, ...]) -> tuple[int, ...]:
    """'3' or '3,5' -> ints, with one of the allowed ``counts`` of values."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) not in counts:
        forms = " or ".join({1: "N", 2: "A,B", 4: "N,H,W,C"}[c] for c in counts)
        raise PatchconvError(f"{name} must be {forms} (integers); got {text!r}")
    return values


@overload
def _int_or_pair(text: str | None, *, name: str, default: int) -> int | tuple[int, int]: ...
@overload
def _int_or_pair(text: str | None, *, name: str) -> int | tuple[int, int] | None: ...
def _int_or_pair(
    text: str | None, *, name: str, default: int | None = None
) -> int | tuple[int, int] | None:
    """'2' or '2,1' -> 2 or (2, 1); ``default`` when the option was not given (a given 0 is
    passed on, to be refused by the layer's own check)."""
    if text is None:
        return default
    values = parse_ints(text, name=name, counts=(1, 2))
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_padding(text: str) -> Any:
    """'valid' | 'same' | 'same_lower' | 'P' | 'PH,PW' | 'T,B,L,R' -> conv2d's padding."""
    if text.lower() in _PADDING_WORDS:
        return text.lower()
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return (values[0], values[1])
    if len(values) == 4:
        return ((values[0], values[1]), (values[2], values[3]))
    raise PatchconvError(
        "--padding must be valid, same, same_lower, P, PH,PW or T,B,L,R (top, bottom, left, "
        f"right); got {text!r}"
    )


def picture_path(path: str, *, option: str, suffixes: tuple[str, ...]) -> str:
    """The file an output option will really write: the first of ``suffixes`` appended when
    the name has none (matplotlib would append one anyway), a suffix outside ``suffixes``
    refused, and so is a folder or a missing parent folder, all before any work."""
    if os.path.isdir(path):
        raise PatchconvError(f"{option} must name a file; got the folder {path!r}")
    suffix = os.path.splitext(path)[1].lower()
    if not suffix:
        path += suffixes[0]
    elif suffix not in suffixes:
        raise PatchconvError(f"{option} must end in {', '.join(suffixes)}; got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PatchconvError(f"{option}: folder {folder!r} does not exist; got {path!r}")
    return path


def load_weights(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """An .npz with "kernel" (kh, kw, c_in/groups, c_out) and optionally "bias" (c_out,)."""
    if not os.path.isfile(path):
        raise PatchconvError(f"--weights must be an existing .npz file; got {path!r}")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PatchconvError(
            f"--weights {path!r} is not a readable .npz file ({type(exc).__name__}; pickled "
            "objects are never loaded)"
        ) from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise PatchconvError(
            f"--weights {path!r} must be an .npz archive with a 'kernel' array; got a single "
            f"array of shape {np.shape(data)}"
        )
    with data:
        keys = sorted(data.files)
        if "kernel" not in keys:
            raise PatchconvError(
                f"--weights {path!r} has no 'kernel' array (kh, kw, c_in, c_out); found keys {keys}"
            )
        try:  # (a member that is no .npy comes back as raw bytes)
            kernel = np.asarray(data["kernel"])
            bias = np.asarray(data["bias"]) if "bias" in keys else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # object arrays too
            raise PatchconvError(
                f"--weights {path!r} holds arrays that need pickle: {exc}"
            ) from exc
    if kernel.dtype.kind not in "fiub":
        raise PatchconvError(
            f"--weights {path!r}: kernel must hold real numbers; got dtype {kernel.dtype}"
        )
    if bias is not None and bias.dtype.kind not in "fiub":
        raise PatchconvError(
            f"--weights {path!r}: bias must hold real numbers; got dtype {bias.dtype}"
        )
    for label, arr in (("kernel", kernel), ("bias", bias)):
        if arr is not None and not np.isfinite(arr).all():
            raise PatchconvError(f"--weights {path!r}: {label} holds NaN or Inf values")
    if kernel.ndim != 4:
        raise PatchconvError(
            f"--weights {path!r}: kernel must be 4-D (kh, kw, c_in // groups, c_out); got shape "
            f"{kernel.shape}"
        )
    if bias is not None and bias.shape != (kernel.shape[3],):
        raise PatchconvError(
            f"--weights {path!r}: bias must have shape ({kernel.shape[3]},) to match the "
            f"kernel's c_out; got bias {bias.shape}, kernel {kernel.shape}"
        )
    return kernel, bias


def _load_input(
    args: argparse.Namespace, kernel: np.ndarray | None, groups: int
) -> tuple[np.ndarray | None, tuple[int, int, int, int] | None]:
    """x from --image, or the random input's shape from --input-shape (None: the default)."""
    channels_first = args.data_format == "channels_first"
    if args.image is not None:
        from patchconv.images import load_image

        if args.input_shape is not None:
            raise PatchconvError(
                f"give --input-shape or --image, not both; got --input-shape "
                f"{args.input_shape!r} and --image {args.image!r}"
            )
        size = 16 if args.size is None else args.size
        if size < 1:
            raise PatchconvError(f"--size must be >= 1; got {size}")
        channels = None
        if kernel is not None:
            channels = int(kernel.shape[2]) * groups
            if channels not in (1, 3, 4):
                raise PatchconvError(
                    f"--weights: a kernel for {channels} input channels cannot read an image "
                    "(1, 3 or 4 channels); got kernel "
                    f"{kernel.shape} with --groups {groups}"
                )
        # An alpha channel is dropped unless the kernel reads 4 channels, as `apply` does.
        img = load_image(args.image, size=size, channels=channels, alpha=False)  # (size, size, c)
        x = img[None]  # (1, size, size, c)
        return (np.ascontiguousarray(np.moveaxis(x, -1, 1)) if channels_first else x), None
    if args.size is not None:
        raise PatchconvError(f"--size resizes an --image; got --size {args.size} without one")
    if args.input_shape is None:
        return None, None
    n, a, b, c = parse_ints(args.input_shape, name="--input-shape", counts=(4,))
    if kernel is not None:
        c_in = a if channels_first else c
        if c_in != kernel.shape[2] * groups:
            raise PatchconvError(
                f"--weights: the kernel {kernel.shape} reads {kernel.shape[2]} x groups "
                f"({groups}) = {kernel.shape[2] * groups} input channels, but --input-shape "
                f"{args.input_shape!r} has {c_in}"
            )
    return None, (n, a, b, c)


def run(args: argparse.Namespace) -> int:
    """The whole subcommand; returns the exit status (0 when every step matches)."""
    from patchconv.explain import explain

    padding = parse_padding(args.padding)
    groups = args.groups
    if args.figure is not None:
        figures = FIGURE_SUFFIXES
        args.figure = picture_path(args.figure, option="--figure", suffixes=figures)
    if args.animate is not None:
        args.animate = picture_path(args.animate, option="--animate", suffixes=(".gif",))
    if args.html is not None:
        args.html = picture_path(args.html, option="--html", suffixes=(".html", ".htm"))
    from patchconv.images import refuse_overwriting_inputs

    refuse_overwriting_inputs(
        (("--figure", args.figure), ("--animate", args.animate), ("--html", args.html)),
        (("--image", args.image), ("--weights", args.weights)),
    )
    kernel = bias = None
    notes: dict[str, str] = {}
    if args.weights is not None:
        kernel, bias = load_weights(args.weights)
        notes["kernel"] = f"from {args.weights}"
        notes["bias"] = f"from {args.weights}" if bias is not None else "zeros (none in the file)"
        if bias is None:
            bias = np.zeros(kernel.shape[3], dtype=kernel.dtype)  # a layer without bias
    if args.image is not None:
        notes["x"] = f"the image {args.image}, resized to {args.size or 16} x {args.size or 16}"
    x, input_shape = _load_input(args, kernel, groups)
    wt = explain(
        x,
        kernel,
        bias,
        seed=args.seed,
        input_shape=input_shape,
        filters=args.filters,
        kernel_size=_int_or_pair(args.kernel_size, name="--kernel-size"),
        strides=_int_or_pair(args.strides, name="--strides", default=1),
        padding=padding,
        dilation_rate=_int_or_pair(args.dilation_rate, name="--dilation-rate", default=1),
        groups=groups,
        data_format=args.data_format,
        position=tuple(args.position),
        batch_index=args.batch_index,
    )
    if notes:
        wt = dataclasses.replace(wt, notes={**wt.notes, **notes})
    # Pictures first, so a missing optional package fails before anything is printed.
    written = []
    if args.figure is not None:
        from patchconv.explain_figure import save_figure

        save_figure(wt, args.figure)
        written.append(("figure", args.figure))
    if args.animate is not None:
        from patchconv.explain_animate import save_animation

        save_animation(wt, args.animate)
        written.append(("animation", args.animate))
    if args.html is not None:
        from patchconv.explain_html import save_html

        save_html(wt, args.html)
        written.append(("web page", args.html))
    if args.json:
        from patchconv.explain_json import render_json

        sys.stdout.write(render_json(wt) + "\n")
    else:
        from patchconv.explain_text import render_text

        sys.stdout.write(render_text(wt))
    for what, path in written:
        print(f"wrote the {what} to {path}", file=sys.stderr)
    return 0 if wt.matches else 1
