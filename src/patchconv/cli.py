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


# -- train ------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    import json
    import os
    import time

    from patchconv._spec import PatchconvError

    start = time.perf_counter()
    for option, path in (("--save", args.save), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        if path and not os.path.isdir(folder):
            raise PatchconvError(f"{option}: folder {folder!r} does not exist; got {path!r}")
    needed = ["sklearn", "tqdm"] if args.task == "digits" else ["tqdm"]
    if args.plot:
        needed.append("matplotlib")
    for module in needed:
        try:
            __import__(module)
        except ImportError as exc:
            raise PatchconvError(
                f"{module} is needed here; install it with pip install 'patchconv[train,figures]'"
            ) from exc
    from patchconv.nn.training import TASKS, train_task

    if not args.json:
        print(f"patchconv train: {args.task} ({TASKS[args.task].description}), seed {args.seed}")
    result = train_task(
        args.task,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        verbose=0 if args.quiet else 1,
    )
    conv = result.first_conv
    if args.save:
        # The first conv layer also under "kernel" / "bias": what `explain --weights` reads.
        extra = {"kernel": conv.kernel}
        if conv.bias is not None:
            extra["bias"] = conv.bias
        result.model.save_weights(args.save, extra=extra)
    if args.plot:
        from patchconv.nn.plot import plot_training

        plot_training(result, args.plot)
    summary = {
        "task": result.task,
        "test_accuracy": round(result.test_accuracy, 6),
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "total_seconds": round(time.perf_counter() - start, 3),
        "seed": result.seed,
        "batch_size": result.batch_size,
        "train_samples": result.train_samples,
        "test_samples": result.test_samples,
        "test_loss": round(result.test_loss, 6),
    }
    for key, value in result.extra.items():
        summary[key] = round(float(value), 6)
    if args.json:
        print(json.dumps(summary))
        return 0
    if not args.quiet:
        print(result.model.summary())
    right = round(result.test_accuracy * result.test_samples)
    print(
        f"test accuracy {result.test_accuracy:.4f} ({right}/{result.test_samples}) after "
        f"{result.epochs} epochs; training took {result.seconds:.1f} s "
        f"({result.train_samples} training images, batch size {result.batch_size})"
    )
    if "channel_contrast" in result.extra:
        print(
            f"first-layer channel contrast {result.extra['channel_contrast']:.3f} (at the random "
            f"start {result.extra['channel_contrast_untrained']:.3f}): the R, G and B slices of "
            "each learned filter respond differently to colour"
        )
    if args.save:
        print(f"saved all weights to {args.save} (first conv layer also as 'kernel' and 'bias')")
    if args.plot:
        print(f"wrote {args.plot}: first-layer kernels (filter x channel) and learning curves")
    return 0


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="train a small CNN on real data (digits) or on a colour task",
        description="Train a small CNN with patchconv.nn from random weights: scikit-learn's "
        "8x8 digits (default, no download) or --task colors, RGB shapes whose classes differ by "
        "hue, where the first layer must learn different kernel slices per input channel.",
    )
    train.add_argument(
        "--task", choices=["digits", "colors"], default="digits", help="default: digits"
    )
    train.add_argument(
        "--epochs", type=int, default=None, help="passes over the training set (20 / 10)"
    )
    train.add_argument("--seed", type=int, default=0, help="split, weights, shuffling (default 0)")
    train.add_argument("--batch-size", type=int, default=None, help="minibatch size (32)")
    train.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    train.add_argument("--save", metavar="FILE.npz", help="write the weights (np.savez)")
    train.add_argument(
        "--plot", metavar="PATH.png", help="draw first-layer kernels and learning curves"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=_train)


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
    _add_train_parser(sub)
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
