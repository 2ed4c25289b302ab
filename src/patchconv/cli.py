"""The command line: ``patchconv explain | apply | train | bench``.

Each subcommand imports what it needs inside its own function, so ``patchconv --help`` stays
fast and optional extras are needed only by the subcommand that uses them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from patchconv import __version__

__all__ = ["main"]


def _explain(args: argparse.Namespace) -> int:
    from patchconv.explain_cli import run

    try:
        return run(args)
    except ImportError as exc:  # an optional extra (matplotlib, Pillow) is missing
        print(f"patchconv explain: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchconv",
        description="CNN convolution as patches x kernel matrix, Keras-exact, on NumPy.",
    )
    parser.add_argument("--version", action="version", version=f"patchconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain = sub.add_parser(
        "explain",
        help="walk through one multi-channel convolution step by step",
        description="Show, with real numbers, how one (kh, kw, c_in, c_out) kernel convolves "
        "a multi-channel input: patch -> flattened patch -> patch @ kernel + bias -> output.",
    )
    explain.add_argument("--seed", type=int, default=None, help="random seed (default: fresh)")
    what = explain.add_argument_group("the input and the weights")
    what.add_argument(
        "--input-shape",
        metavar="N,H,W,C",
        help="shape of the random input (N,C,H,W with channels_first); default 1,4,4,3, "
        "grown to fit a bigger kernel",
    )
    what.add_argument("--image", metavar="PATH", help="a real image instead (PNG, JPEG, ...)")
    what.add_argument(
        "--size", type=int, metavar="PIXELS", help="resize --image to PIXELS x PIXELS (16)"
    )
    what.add_argument(
        "--weights",
        metavar="FILE",
        help='an .npz with "kernel" (kh, kw, c_in, c_out) and optionally "bias" '
        "(e.g. from patchconv train --save)",
    )
    layer = explain.add_argument_group("the layer (Keras' Conv2D arguments)")
    layer.add_argument("--filters", type=int, help="output channels (2)")
    layer.add_argument("--kernel-size", metavar="K|KH,KW", help="(3)")
    layer.add_argument("--strides", metavar="S|SH,SW", help="(1)")
    layer.add_argument(
        "--padding",
        default="valid",
        metavar="MODE",
        help="valid (default), same, same_lower, P, PH,PW or T,B,L,R",
    )
    layer.add_argument("--dilation-rate", metavar="D|DH,DW", help="(1)")
    layer.add_argument("--groups", type=int, default=1, help="(1)")
    layer.add_argument(
        "--data-format",
        choices=["channels_last", "channels_first"],
        default="channels_last",
    )
    where = explain.add_argument_group("which output pixel")
    where.add_argument(
        "--position",
        nargs=2,
        type=int,
        default=(0, 0),
        metavar=("I", "J"),
        help="the output pixel to explain (0 0)",
    )
    where.add_argument("--batch-index", type=int, default=0, help="which image of the batch (0)")
    out = explain.add_argument_group("renderings (text on stdout by default)")
    out.add_argument("--json", action="store_true", help="one JSON object on stdout instead")
    out.add_argument("--figure", metavar="PATH.png", help="draw every step in one picture")
    out.add_argument("--animate", metavar="PATH.gif", help="the patch sliding over the input")
    out.add_argument(
        "--html", metavar="PATH.html", help="a self-contained page: click any output pixel"
    )
    explain.set_defaults(handler=_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (ValueError, TypeError, OSError) as exc:
        # Input errors are the user's to fix: one clear line, no traceback.
        print(f"patchconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
