"""Filter an image larger than the memory the run may use, through patchconv.scale (Dask).

The image is synthetic and lazy: every block is generated when a task needs it, so the
full array never exists. The process caps its own address space with setrlimit(RLIMIT_AS)
at a quarter of the image's float32 size (or --memory-limit-mib), runs the Dask path on the
threaded scheduler, and reports throughput in megapixels per second and peak RSS. Peers
(scipy.ndimage.correlate, OpenCV's filter2D if importable, patchconv.conv2d in memory) filter
one tile that fits, in the same process, after the large run.

    OPENBLAS_CORETYPE= OPENBLAS_L2_SIZE= .venv/bin/python benchmarks/large_image.py
    .venv/bin/python benchmarks/large_image.py --size 40000        # 40000 x 40000 x 3, 17.9 GiB
    .venv/bin/python benchmarks/large_image.py --store /tmp/out.zarr  # the apply --chunks writer
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from typing import Any

import numpy as np

GIB = 2**30
MIB = 2**20


def _pattern(block_info: Any = None) -> np.ndarray:
    """One block of the synthetic RGB image: stripes, rings and a hash-like texture, computed
    from the block's global coordinates only (cheap, reproducible, never the whole image)."""
    (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
    i = np.arange(r0, r1, dtype=np.float32)[:, None]
    j = np.arange(c0, c1, dtype=np.float32)[None, :]
    red = 0.5 + 0.5 * np.sin(j * 0.05) * np.cos(i * 0.031)
    green = ((i.astype(np.int64) * 7 + j.astype(np.int64) * 13) % 251 / 250.0).astype(np.float32)
    blue = 0.5 + 0.5 * np.sin(np.hypot(i - 5000.0, j - 7000.0) * 0.02)
    return np.stack(np.broadcast_arrays(red, green, blue), axis=-1).astype(np.float32)


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _vm_peak_mib() -> float:
    """Peak address space (what RLIMIT_AS caps), from /proc on Linux."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _blas() -> str:
    from threadpoolctl import threadpool_info

    return ", ".join(
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
        f"x{p.get('num_threads')}"
        for p in threadpool_info()
        if p.get("user_api") == "blas"
    )


def _median_seconds(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        time.sleep(0.2)  # let OpenBLAS' spinning threads settle (PERF_NOTES item 6)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16000, help="image side (default 16000)")
    parser.add_argument("--chunks", type=int, default=1024, help="block side (default 1024)")
    parser.add_argument(
        "--source-chunks", type=int, default=512, help="tiles of the lazy source (default 512)"
    )
    parser.add_argument("--filter", default="sobel_x", help="named filter (default sobel_x)")
    parser.add_argument("--memory-limit-mib", type=int, help="address-space cap (default image/4)")
    parser.add_argument("--tile", type=int, default=4096, help="peer tile side (default 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="peer repeats (default 3)")
    parser.add_argument("--store", help="also write the result through apply's Zarr writer")
    args = parser.parse_args(argv)

    import dask
    import dask.array as da
    import distributed  # noqa: F401  (dask imports it lazily; import it before the cap)

    import patchconv
    from patchconv import images, scale

    image_bytes = args.size * args.size * 3 * 4
    try:  # fewer malloc arenas: each thread's 64 MiB arena reservation counts against RLIMIT_AS
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX = 2
    except OSError:  # pragma: no cover - not glibc
        pass
    limit = (args.memory_limit_mib or image_bytes // 4 // MIB) * MIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    k = images.filter_kernel(args.filter, 3)
    workspace = 32 * MIB  # per task: patch tiles stay small next to the blocks themselves

    # The source is lazy with small native chunks, like a tiled TIFF or a Zarr store; output
    # blocks of --chunks read their window from those tiles (plus a thin ring of halo tiles).
    src = da.core.normalize_chunks(args.source_chunks, (args.size,))[0]
    x = da.map_blocks(
        _pattern,
        chunks=(src, src, (3,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )[None]
    lazy = scale.conv2d(
        x,
        k.kernel,
        k.bias,
        groups=k.groups,
        padding="same",
        workspace_limit=workspace,
        out_chunks=args.chunks,
    )[0]
    mpx = args.size * args.size / 1e6
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, dask {dask.__version__}")
    print(f"BLAS: {_blas()}; {os.cpu_count()} cores")
    print(
        f"image: {args.size} x {args.size} x 3 float32 = {image_bytes / GIB:.2f} GiB, generated "
        f"lazily; blocks {args.chunks}; filter {args.filter} {k.kernel.shape} groups {k.groups}"
    )
    print(
        f"address-space cap (setrlimit RLIMIT_AS): {limit / MIB:.0f} MiB = image / "
        f"{image_bytes / limit:.1f}"
    )

    rss0 = _rss_peak_mib()
    n_blocks = len(lazy.chunks[0]) * len(lazy.chunks[1])
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if done[0] % max(1, n_blocks // 10) == 0 or done[0] == n_blocks:
            print(f"  {done[0]}/{n_blocks} blocks, peak RSS {_rss_peak_mib():.0f} MiB", flush=True)

    t0 = time.perf_counter()
    # The pass `patchconv apply --chunks` makes before writing: every output block computed
    # (two at a time, on the threaded scheduler) and reduced to per-channel extremes.
    low, high = scale.block_range(lazy, tile=args.chunks, parallel=2, progress=tick)
    seconds = time.perf_counter() - t0
    dask_rate = mpx / seconds
    rss = _rss_peak_mib()
    print(
        f"dask path: {seconds:.1f} s, {dask_rate:.2f} Mpx/s; peak RSS {rss:.0f} MiB "
        f"(before the run {rss0:.0f} MiB) = image / {image_bytes / MIB / rss:.1f}; peak "
        f"address space {_vm_peak_mib():.0f} MiB; "
        f"range {np.round(low, 3).tolist()} .. {np.round(high, 3).tolist()}"
    )
    if args.store:
        t0 = time.perf_counter()
        scale.write_blocks(
            lazy,
            args.store,
            tile=args.chunks,
            transform=lambda b: (images.scale_output(b, "clip", joint=True) * 255 + 0.5).astype(
                np.uint8
            ),
            dtype=np.uint8,
        )
        seconds = time.perf_counter() - t0
        print(
            f"apply's Zarr writer: {seconds:.1f} s, {mpx / seconds:.2f} Mpx/s; peak RSS "
            f"{_rss_peak_mib():.0f} MiB"
        )

    # Peers on one tile that fits in memory, same process, after the large run.
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    t = args.tile
    tile = _pattern({None: {"array-location": [(0, t), (0, t), (0, 3)]}})
    tile_mpx = t * t / 1e6
    plane = images.FILTERS[args.filter].plane
    peers: dict[str, Any] = {
        "patchconv.conv2d (in memory)": lambda: patchconv.conv2d(
            tile[None], k.kernel, k.bias, groups=k.groups, padding="same"
        ),
        "patchconv.scale.conv2d (dask, same tile)": lambda: scale.conv2d(
            da.from_array(tile[None], chunks=(1, args.chunks, args.chunks, 3)),
            k.kernel,
            k.bias,
            groups=k.groups,
            padding="same",
            workspace_limit=workspace,
        ).compute(),
    }
    if plane is not None:
        import scipy.ndimage as ndi

        peers["scipy.ndimage.correlate (per channel)"] = lambda: [
            ndi.correlate(tile[:, :, c], plane, mode="constant") for c in range(3)
        ]
        try:
            import cv2

            peers["OpenCV filter2D"] = lambda: cv2.filter2D(
                tile, -1, plane.astype(np.float32), borderType=cv2.BORDER_CONSTANT
            )
        except ImportError:
            print("OpenCV: not installed, skipped")
    print(f"\npeers on one {t} x {t} x 3 float32 tile, median of {args.repeats}:")
    rates = {name: tile_mpx / _median_seconds(fn, args.repeats) for name, fn in peers.items()}
    base = rates["patchconv.conv2d (in memory)"]
    for name, rate in rates.items():
        print(f"  {name:<42} {rate:8.2f} Mpx/s  ({rate / base:.2f}x patchconv in memory)")
    print(
        f"  {'dask path on the large image':<42} {dask_rate:8.2f} Mpx/s  ({dask_rate / base:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
