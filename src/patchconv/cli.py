"""The command line: ``patchconv explain | apply | train | bench``.

Each subcommand imports what it needs inside its own function, so ``patchconv --help`` stays
fast and optional extras are needed only by the subcommand that uses them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from patchconv import __version__

__all__ = ["main"]


def _explain(args: argparse.Namespace) -> int:
    from patchconv.explain_cli import run

    try:
        return run(args)
    except ImportError as exc:  # an optional extra (matplotlib, Pillow) is missing
        print(f"patchconv explain: error: {exc}", file=sys.stderr)
        return 2


# ---- apply ------------------------------------------------------------------------------------


def _apply_ints(text: str, option: str, count: tuple[int, ...]) -> tuple[int, ...]:
    """ "2" or "2,1" (or 4 numbers for padding) -> ints, with the option named on error."""
    from patchconv import PatchconvError

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in count:
        raise PatchconvError(
            f"apply: {option} must be {' or '.join(str(c) for c in count)} comma-separated "
            f"integers; got {text!r}"
        )
    return values


def _apply_pair(text: str, option: str) -> int | tuple[int, ...]:
    values = _apply_ints(text, option, (1, 2))
    return values[0] if len(values) == 1 else values


def _apply_padding(text: str) -> object:
    from patchconv import PatchconvError

    if text.lower() in ("valid", "same", "same_lower", "same_upper"):
        return text.lower()
    try:
        values = _apply_ints(text, "--padding", (1, 2, 4))
    except PatchconvError as exc:  # the words too, as explain's message gives them
        raise PatchconvError(
            f"apply: --padding must be valid, same, same_lower, P, PH,PW or T,B,L,R; got {text!r}"
        ) from exc
    if len(values) == 4:  # top, bottom, left, right
        return ((values[0], values[1]), (values[2], values[3]))
    return values[0] if len(values) == 1 else values


def _apply_progress(total: int, desc: str) -> object:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is installed with the train/test extras
        return None
    unit = "block" if "block" in desc else "map"
    # disable=None: a bar on a terminal only, so pipes and logs get the results alone.
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None)


def _apply(args: argparse.Namespace) -> int:
    import os

    from patchconv import PatchconvError, images

    if args.list_filters:
        sys.stdout.write(images.list_filters())
        return 0
    names = [n.strip() for group in args.filter or [] for n in group.split(",") if n.strip()]
    if args.filter and not names:  # -f "" ran the whole default bank
        raise PatchconvError(f"apply: -f/--filter needs a filter name; got {args.filter!r}")
    for name in names:
        if name not in images.FILTERS:
            images.filter_kernel(name, 3)  # raises the unknown-filter error with suggestions
    kernels: list[images.Kernel | str] = [*names, *(images.load_kernel(w) for w in args.weights)]
    streaming = args.chunks is not None
    if streaming and args.size is not None:
        raise PatchconvError(
            f"apply: --size resizes in memory and cannot be used with --chunks; got --size "
            f"{args.size} and --chunks {args.chunks}"
        )
    if not streaming and (args.output_format != "zarr" or args.cluster):
        given = "--output-format" if args.output_format != "zarr" else "--cluster"
        raise PatchconvError(f"apply: {given} is for streaming; it needs --chunks")
    if not streaming and args.scale == "none":
        raise PatchconvError(
            "apply: --scale none keeps raw float32 values, which only --chunks' Zarr or TIFF "
            "output can hold (a PNG would clip them to [0, 1]); got --scale none without --chunks"
        )
    for path in [] if streaming else args.image:
        if os.path.isdir(path):
            raise PatchconvError(
                f"apply: IMAGE must be an image file; got the folder {path!r} (a Zarr store is "
                "read in blocks: give --chunks N)"
            )
    # Checked before minutes of filtering, made only once every map is ready.
    folder = os.path.abspath(args.out)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        what = "a file" if not os.path.isdir(folder) else "a folder we cannot write to"
        raise PatchconvError(
            f"--out must be a folder we can write to or make; got {args.out!r}, where "
            f"{folder!r} is {what}"
        )
    seen: dict[str, str] = {} if args.no_sheet or streaming else {"sheet": "the contact sheet"}
    sources = [*(f"-f {n}" for n in names), *(f"-w {w}" for w in args.weights)]
    for k, source in zip(kernels, sources, strict=True):
        label = k if isinstance(k, str) else k.name
        if label in seen:
            raise PatchconvError(
                f"apply: {seen[label]!r} and {source!r} would both write maps named {label!r}; "
                "give each filter once and each weights file its own name"
            )
        seen[label] = source
    if not kernels:
        if streaming:
            raise PatchconvError(
                "apply: --chunks needs --filter NAME or --weights FILE (each is one pass over "
                "the image); got neither"
            )
        # The colour-mixing defaults need RGB: left out where --channels asks for 1 or 4.
        kernels = [
            k
            for k in images.DEFAULT_FILTERS
            if args.channels in (None, 3) or images.FILTERS[k].mixing is None
        ]
    options = {
        "strides": _apply_pair(args.strides, "--strides"),
        "padding": _apply_padding(args.padding),
        "dilation_rate": _apply_pair(args.dilation_rate, "--dilation-rate"),
    }
    # Colour-mixing filters read RGB; convert other images unless --channels says otherwise.
    mixing = any(isinstance(k, str) and images.FILTERS[k].mixing is not None for k in kernels)
    channels = args.channels or (3 if mixing else None)
    if streaming:
        return _apply_stream(args, kernels, channels, options)
    if args.image:
        # An alpha channel is dropped unless asked for (--channels 4): filtered like a colour,
        # it would make edge maps transparent.
        loaded = [
            (path, images.load_image(path, size=args.size, channels=channels, alpha=False))
            for path in args.image
        ]
    else:
        loaded = [images.sample_image(size=args.size, channels=channels)]
        print(f"apply: no IMAGE given, using {loaded[0][0]}")
    bar: Any = _apply_progress(len(loaded) * len(kernels), "filtering")
    try:
        written = images.run_apply(
            loaded,
            kernels,
            args.out,
            scaling=args.scale,
            sheet=not args.no_sheet,
            progress=None if bar is None else bar.update,
            **options,
        )
    finally:
        if bar is not None:
            bar.close()
    for path in written:
        print(path)
    return 0


def _apply_stream(
    args: argparse.Namespace,
    kernels: list[Any],
    channels: int | None,
    options: dict[str, Any],
) -> int:
    """--chunks: tiled TIFF / Zarr in, Zarr / tiled TIFF out, a few blocks in memory at a time."""
    import os
    from pathlib import Path

    from patchconv import PatchconvError, images, scale

    if not args.image:
        raise PatchconvError("apply: --chunks needs an IMAGE (a large TIFF or Zarr); got none")
    if args.chunks < 16 or (args.output_format == "tiff" and args.chunks % 16):
        raise PatchconvError(
            f"apply: --chunks must be >= 16 (and a multiple of 16 for --output-format tiff); "
            f"got {args.chunks}"
        )
    sources = [(path, scale.open_image(path)) for path in args.image]  # checks every file first
    out = Path(args.out)
    ext = ".zarr" if args.output_format == "zarr" else ".tif"
    stems: list[str] = []
    for path, _ in sources:  # two inputs with one stem (a.tif, a.zarr) get a.., a_..
        stem = Path(path).stem or "image"
        while stem in stems:
            stem += "_"
        stems.append(stem)
    # Every image's channels, kernels and options are checked (the lazy graphs built) before
    # the first file is written.
    plans = []
    for (path, x), stem in zip(sources, stems, strict=True):
        # An image file's alpha is dropped, as in memory (--channels 4 keeps it); a Zarr
        # array's channels are data, not colours, and stay as they are.
        c, image_file = int(x.shape[3]), not scale.is_zarr_path(path)
        if c == 2 and image_file:  # grey + alpha
            x = x[..., [0, 0, 0, 1]] if channels == 4 else x[..., :1]
        elif c == 4 and channels != 4 and image_file:
            x = x[..., :3]
        if channels is not None:
            x = images.convert_channels(x, channels)
        resolved = [images.resolve_kernel(k, int(x.shape[3]), label=path) for k in kernels]
        for k in resolved:
            # A 64 MiB patch workspace per block keeps memory near the blocks' own size.
            y = scale.conv2d(
                x,
                k.kernel,
                k.bias,
                groups=k.groups,
                out_chunks=args.chunks,
                workspace_limit=64 * 2**20,
                **options,
            )[0]  # (oh, ow, c_out), lazy
            target = out / f"{stem}_{k.name}{ext}"
            scale.check_target(target, func="apply")
            images.refuse_overwriting_inputs(
                (("the output", target),), (("IMAGE", p) for p in args.image)
            )
            plans.append((target, k, y))
    client = None  # connected before the output folder is made: none is left on a failure
    if args.cluster == "local":
        client = scale.local_client()
    elif args.cluster:
        from distributed import Client

        try:
            client = Client(args.cluster)
        except (OSError, ValueError, TypeError) as exc:  # TimeoutError is an OSError
            raise PatchconvError(
                f"apply: --cluster {args.cluster!r}: cannot connect ({exc})"
            ) from exc
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if client is not None:
            client.close()
        raise PatchconvError(f"apply: --out {args.out!r} cannot be made a folder: {exc}") from exc
    parallel = sum(client.nthreads().values()) if client is not None else 2
    try:
        for target, k, y in plans:
            mode = args.scale or k.scaling
            n_blocks = len(y.chunks[0]) * len(y.chunks[1])
            low = high = None
            if mode in ("abs", "normalise"):
                bar: Any = _apply_progress(n_blocks, f"{k.name}: range (blocks)")
                low, high = scale.block_range(
                    y, tile=args.chunks, parallel=parallel, progress=bar and bar.update
                )
                if bar is not None:
                    bar.close()

            def transform(
                block: Any, k: Any = k, mode: str = mode, lo: Any = low, hi: Any = high
            ) -> Any:
                scaled = images.scale_output(block, mode, joint=k.colour, low=lo, high=hi)
                return scaled if mode == "none" else (scaled * 255.0 + 0.5).astype("uint8")

            bar = _apply_progress(n_blocks, f"{k.name}: filtering (blocks)")
            try:
                written = scale.write_blocks(
                    y,
                    target,
                    tile=args.chunks,
                    transform=transform,
                    dtype="float32" if mode == "none" else "uint8",
                    progress=bar and bar.update,
                    parallel=parallel,
                )
            except OSError as exc:
                raise PatchconvError(f"apply: cannot write {os.fspath(target)!r}: {exc}") from exc
            if bar is not None:
                bar.close()
            print(written)
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None and args.cluster == "local":
                cluster.close()
    return 0


def _output_folders(*options: tuple[str, str | None]) -> None:
    """Each given output path's folder exists, checked before any work (a bench or a training
    run takes minutes)."""
    import os

    from patchconv._spec import PatchconvError

    for option, path in options:
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise PatchconvError(f"{option}: must name a file; got the folder {path!r}")
        if not os.path.isdir(folder):
            raise PatchconvError(f"{option}: folder {folder!r} does not exist; got {path!r}")
        if not os.access(folder, os.W_OK):
            raise PatchconvError(f"{option}: folder {folder!r} is not writable; got {path!r}")


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
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1; got {args.rounds}")
    if args.quick and args.layers:
        raise ValueError("--quick picks its own 7 layers; give --quick or --layers, not both")
    _output_folders(("--json", args.json), ("--png", args.png))
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
        rounds=args.rounds if args.rounds is not None else (3 if args.quick else 7),
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


# -- train ------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    import json
    import time

    from patchconv._spec import PatchconvError

    start = time.perf_counter()
    for option, value, least in (
        ("--epochs", args.epochs, 1),
        ("--batch-size", args.batch_size, 1),
        ("--seed", args.seed, 0),
    ):  # before the header line, which went out ahead of these errors
        if value is not None and value < least:
            raise PatchconvError(f"train: {option} must be >= {least}; got {value}")
    if args.plot:
        from patchconv.explain_cli import FIGURE_SUFFIXES, picture_path

        args.plot = picture_path(args.plot, option="--plot", suffixes=FIGURE_SUFFIXES)  # + folder
    if args.save:
        if not args.save.lower().endswith(".npz"):
            raise PatchconvError(f"--save: the weights file must end in .npz; got {args.save!r}")
    _output_folders(("--save", args.save))
    needed = ["sklearn"] if args.task == "digits" else []  # (tqdm: fit falls back to lines)
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
        # A bar on a terminal, a line per epoch in a log, nothing beside --json's one object.
        verbose=0 if args.quiet or args.json else (1 if sys.stderr.isatty() else 2),
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
        f"{result.epochs} epoch{'s' if result.epochs != 1 else ''}; training took "
        f"{result.seconds:.1f} s "
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
    apply = sub.add_parser(
        "apply",
        help="filter images with a named kernel or your own; writes PNGs and a contact sheet",
        description="Convolve images (PNG/JPEG/TIFF, 8 or 16 bit, grey, RGB or RGBA) with "
        "named filters or kernels from .npy/.npz files, and write each result map as a PNG "
        "plus a contact sheet of the input beside every map. With no IMAGE a bundled sample "
        "photo is used. With --chunks, large TIFF/Zarr images stream through Dask a block at "
        "a time into Zarr or tiled TIFF.",
    )
    apply.add_argument("image", nargs="*", metavar="IMAGE", help="image files (default: sample)")
    apply.add_argument(
        "-f",
        "--filter",
        action="append",
        metavar="NAME",
        help="named filter, repeatable or comma-separated (see --list-filters; default: "
        "gaussian_blur, sharpen, sobel_x, sobel_y, laplacian, luma_edges; none with --chunks)",
    )
    apply.add_argument(
        "-w",
        "--weights",
        action="append",
        default=[],
        metavar="FILE",
        help="kernel from .npy, or .npz with 'kernel' (and 'bias'), e.g. from patchconv train "
        "--save; (k, k) filters each channel, (kh, kw, c_in[, c_out]) must match the image",
    )
    apply.add_argument("--list-filters", action="store_true", help="list the named filters")
    apply.add_argument("--strides", default="1", help="S or SH,SW (default 1)")
    apply.add_argument(
        "--padding",
        default="same",
        help="same (default), valid, same_lower, P, PH,PW or TOP,BOTTOM,LEFT,RIGHT",
    )
    apply.add_argument("--dilation-rate", default="1", help="D or DH,DW (default 1)")
    apply.add_argument(
        "--scale",
        choices=("clip", "abs", "normalise", "none"),
        default=None,
        help="output scaling (default per filter: clip for blurs and sharpening, abs for "
        "signed edge maps, normalise for kernels from files); none keeps raw float32 values "
        "(with --chunks)",
    )
    apply.add_argument(
        "--channels",
        type=int,
        choices=(1, 3, 4),
        help="convert the image to grey, RGB or RGBA (by default an alpha channel is dropped)",
    )
    apply.add_argument(
        "--size", type=int, help="resize the image to SIZE x SIZE first (not with --chunks)"
    )
    apply.add_argument(
        "-o", "--out", default="patchconv_out", help="output folder (default ./patchconv_out)"
    )
    apply.add_argument("--no-sheet", action="store_true", help="skip the contact sheet")
    apply.add_argument(
        "--chunks",
        type=int,
        help="stream a large image through Dask in CHUNKS x CHUNKS blocks (e.g. 2048; at "
        "least 16, a multiple of 16 for TIFF output)",
    )
    apply.add_argument(
        "--output-format",
        choices=("zarr", "tiff"),
        default="zarr",
        help="with --chunks: a Zarr directory (default) or a tiled TIFF",
    )
    apply.add_argument(
        "--cluster",
        help="with --chunks: 'local' starts a local Dask cluster, or a scheduler address "
        "(default: Dask's threaded scheduler in this process)",
    )
    apply.set_defaults(handler=_apply)
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
    bench.add_argument("--rounds", type=int, help="interleaved rounds (default 7; 3 with --quick)")
    bench.add_argument("--pause", type=float, default=0.15, help="seconds after each peer")
    bench.add_argument("--no-backward", action="store_true", help="skip forward+backward")
    bench.add_argument("--no-memory", action="store_true", help="skip peak memory")
    bench.add_argument("--no-latency", action="store_true", help="skip small-call latency")
    bench.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    bench.add_argument("--png", metavar="PATH", help="also draw the ratio bar chart")
    bench.set_defaults(handler=_bench)
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
    except MemoryError as exc:  # past what the checks before the work foresaw
        print(
            f"patchconv {args.command}: error: out of memory ({exc or 'MemoryError'}); give a "
            "smaller input (--size, --input-shape) or stream a large image (apply --chunks)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
