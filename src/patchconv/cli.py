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
    from patchconv.explain import explain
    from patchconv.explain_text import render_text

    wt = explain(seed=args.seed)
    sys.stdout.write(render_text(wt))
    return 0 if wt.matches else 1


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
