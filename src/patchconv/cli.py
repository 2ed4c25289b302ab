"""The command line: ``patchconv explain | apply | train | bench``.

Each subcommand imports what it needs inside its own function, so ``patchconv --help`` stays
fast and optional extras are needed only by the subcommand that uses them.
"""

from __future__ import annotations

import argparse
import json
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


def _bench(args: argparse.Namespace) -> int:
    """The layer suite against the peers (benchmarks/ of a source checkout)."""
    import os
    from pathlib import Path

    here = Path(__file__).resolve()
    for root in (Path.cwd(), here.parents[2]):
        if (root / "benchmarks" / "conv_suite.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    else:
        raise OSError(
            "bench needs the benchmarks/ folder of a patchconv source checkout; run it from "
            "the repository root (python3 tasks.py bench)"
        )
    from benchmarks import conv_suite, layers, peers

    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if os.environ.get(var):
            print(
                f"note: {var} is set and slows OpenBLAS; `python3 tasks.py bench` unsets it",
                file=sys.stderr,
            )
    chosen = layers.select(args.layers, quick=args.quick)
    if not chosen:
        raise ValueError(f"--layers {args.layers} matches no layer of the suite")
    wanted = tuple(args.peers) if args.peers else peers.FORWARD_PEERS
    unknown = sorted(set(wanted) - set(peers.FORWARD_PEERS))
    if unknown:
        raise ValueError(f"--peers: unknown {unknown}; choose from {peers.FORWARD_PEERS}")
    present = peers.available(("patchconv", *[p for p in wanted if p != "patchconv"]))
    opts = conv_suite.Options(
        layers=chosen,
        peers=present,
        rounds=args.rounds if args.rounds else (3 if args.quick else 7),
        pause=args.pause,
        backward=not args.no_backward,
        memory=not args.no_memory,
        latency=not args.no_latency,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    result = conv_suite.run(opts)
    print(conv_suite.render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.png:
        conv_suite.chart(result, Path(args.png))
        print(f"wrote {args.png}")
    return 0


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
    bench = sub.add_parser(
        "bench",
        help="time the layer suite against PyTorch, ONNX Runtime and plain NumPy",
        description="Forward, forward+backward, peak memory and small-call latency of the "
        "issue-5 layer suite, every installed peer in one run, interleaved rounds, medians. "
        "For clean numbers run it on a quiet machine via `python3 tasks.py bench`.",
    )
    bench.add_argument("--quick", action="store_true", help="7 layers, 3 rounds (~2 minutes)")
    bench.add_argument("--layers", nargs="+", metavar="TEXT", help="layers whose name has TEXT")
    bench.add_argument("--peers", nargs="+", metavar="PEER", help="subset of the peers")
    bench.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 7)")
    bench.add_argument("--pause", type=float, default=0.15, help="seconds after each peer")
    bench.add_argument("--no-backward", action="store_true", help="skip forward+backward")
    bench.add_argument("--no-memory", action="store_true", help="skip peak memory")
    bench.add_argument("--no-latency", action="store_true", help="skip small-call latency")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--png", metavar="PATH", help="also draw the ratio bar chart")
    bench.set_defaults(handler=_bench)
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
