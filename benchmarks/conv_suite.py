"""patchconv against its peers on the issue-5 layer suite, in one process run.

Method: for every layer, all peers are timed in interleaved rounds (the peer order rotates
each round); in a round a peer runs a few back-to-back calls and keeps their median, and the
result is the median over rounds. Each row also gives the lowest and highest of its rounds' own
ratios (the best peer's time in a round over patchconv's in the same round): load from other
machines on the host comes and goes over seconds, and the spread shows which rows it can tip
over their targets. After each peer's turn the runner sleeps ``pause`` seconds,
because OpenBLAS' (and ONNX Runtime's) worker threads keep spinning ~100 ms after a call and
would steal a core from the next peer; then each peer makes one untimed call before its timed
burst (about 0.1 s of calls), so every library is measured in steady state, as in a loop over
batches, not waking from the pause. NumPy's own 2048^3 float32 matmul is measured in the
same run as the machine's BLAS reference. Load averages are recorded before and after.

Memory: peak bytes allocated during one patchconv call beyond its inputs and output, by
tracemalloc, cold (work buffers released first) and warm (the reused buffers already held).
For every peer, including patchconv, the growth of resident memory during one call in a fresh
subprocess (after a one-image warm-up that loads libraries and compiled code; sampled every
0.2 ms), minus its output; that counts what any allocator
(oneDNN, ONNX Runtime arenas, NumPy) touches, though a buffer living under 0.2 ms can be missed.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from benchmarks import peers as peer_mod
from benchmarks.layers import MEMORY_LAYER, SEED, Layer

import patchconv

__all__ = ["Options", "run"]

MiB = 2**20


@dataclass
class Options:
    layers: list[Layer]
    peers: list[str]
    rounds: int = 5
    min_time: float = 0.1  # seconds of back-to-back calls per peer per round
    pause: float = 0.15
    backward: bool = True
    memory: bool = True
    latency: bool = True
    progress: Callable[[str], None] = field(default=lambda msg: None)


def _timed(fn: Callable[[], Any], min_time: float) -> float:
    """Median seconds per call over back-to-back calls lasting about ``min_time``."""
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 2 and time.perf_counter() - start >= min_time:
            break
    return statistics.median(times)


def interleaved(
    calls: dict[str, Callable[[], Any]], rounds: int, min_time: float, pause: float
) -> dict[str, list[float]]:
    """Each call's per-round medians (seconds), peers rotating order each round."""
    names = list(calls)
    for name in names:  # warm-up: compile, fault in buffers, build plans
        calls[name]()
        time.sleep(pause)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            # One untimed call first, for every peer alike: after the pause a library's worker
            # threads (ours, OpenMP's, OpenBLAS') may be asleep, and the timed burst should
            # measure steady-state calls as in a loop over batches, not the wake-up.
            calls[name]()
            samples[name].append(_timed(calls[name], min_time))
            time.sleep(pause)
    return samples


def round_ratios(samples: dict[str, list[float]], peer: str) -> list[float]:
    """Per round: ``peer``'s time over patchconv's in that round. Rounds a few seconds apart
    see different load from other machines sharing the host, so their spread says how far a
    row's median ratio (which lies within it) can move between runs."""
    if peer not in samples or "patchconv" not in samples:
        return []
    return [samples[peer][r] / t for r, t in enumerate(samples["patchconv"])]


def matmul_peak(rounds: int = 5) -> float:
    """NumPy's float32 2048^3 matmul in GF/s (median)."""
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, a, out=out)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.matmul(a, a, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "filepath")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def _data(layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.x_shape, dtype=np.float32)
    kernel = rng.standard_normal(layer.kernel_shape, dtype=np.float32) * 0.1
    return x, kernel


def tracemalloc_extra(layer: Layer, *, cold: bool) -> int:
    """Peak bytes patchconv allocates in one call beyond inputs and output."""
    x, kernel = _data(layer)
    opts = layer.options
    patchconv.conv2d(x, kernel, **opts)
    if cold:
        patchconv.release_workspace()
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        out = patchconv.conv2d(x, kernel, **opts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base - out.nbytes


_CHILD = """
import json, os, sys, threading, time
sys.path.insert(0, {root!r})
from benchmarks.conv_suite import _data
from benchmarks.layers import Layer
from benchmarks import peers
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
fields = json.loads({layer!r})
small = Layer(**dict(fields, n=1))  # warm-up: load libraries, compile, build primitives
peers.forward_fn({peer!r}, small, *_data(small))()
layer = Layer(**fields)
x, kernel = _data(layer)
call = peers.forward_fn({peer!r}, layer, x, kernel)
peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.0002)
base = rss()
t = threading.Thread(target=sample)
t.start()
out = call()
done.set()
t.join()
peak[0] = max(peak[0], rss())
print(json.dumps({{"growth_bytes": peak[0] - base}}))
"""


def rss_growth(peer: str, layer: Layer) -> float | None:
    """Peak resident-memory growth (MiB) over one call of ``peer`` in a fresh process (after a
    warm-up on one image; RSS sampled every 0.2 ms by a thread), minus the output size; None
    if the child fails."""
    root = str(Path(__file__).resolve().parent.parent)
    code = _CHILD.format(root=root, layer=json.dumps(asdict(layer)), peer=peer)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        return None
    growth = json.loads(proc.stdout.strip().splitlines()[-1])["growth_bytes"] / MiB
    spec = layer.spec()
    out_mib = spec.n * spec.oh * spec.ow * spec.c_out * 4 / MiB
    return float(max(0.0, growth - out_mib))


def run(opts: Options) -> dict[str, Any]:
    """Run the suite; returns everything measured (the JSON document)."""
    say = opts.progress
    result: dict[str, Any] = {
        "machine": {
            "cpus": patchconv.algorithms._runtime.n_workers(),
            "load_before": os.getloadavg(),
            "numpy": np.__version__,
            "blas": blas_info(),
            "numba": patchconv.algorithms._runtime.get_numba() is not None,
            "blas_pinned": patchconv.algorithms._runtime.blas_pinned(),
        },
        "peers": opts.peers,
        "rounds": opts.rounds,
    }
    say("NumPy matmul peak...")
    peak_before = matmul_peak()
    forward: list[dict[str, Any]] = []
    for i, layer in enumerate(opts.layers, 1):
        say(f"[{i}/{len(opts.layers)}] forward {layer.name}")
        x, kernel = _data(layer)
        calls = {p: peer_mod.forward_fn(p, layer, x, kernel) for p in opts.peers}
        samples = interleaved(calls, opts.rounds, opts.min_time, opts.pause)
        plan = patchconv.explain_algorithm(layer.x_shape, layer.kernel_shape, **layer.options)
        forward.append(_row(layer, samples, plan.algorithm))
        del calls
        gc.collect()
    result["forward"] = forward
    if opts.backward:
        rows = []
        layers = [la for la in opts.layers if la.dense_3x3_s1 and la.n == 8]
        back_peers = [p for p in opts.peers if p in peer_mod.BACKWARD_PEERS]
        for i, layer in enumerate(layers, 1):
            say(f"[{i}/{len(layers)}] forward+backward {layer.name}")
            x, kernel = _data(layer)
            calls = {p: peer_mod.backward_fn(p, layer, x, kernel) for p in back_peers}
            samples = interleaved(calls, opts.rounds, opts.min_time, opts.pause)
            rows.append(_row(layer, samples, "forward+backward"))
        result["forward_backward"] = rows
    if opts.latency:
        say("small-call latency (the seed's (1, 4, 4, 3) call)")
        x, kernel = _data(SEED)
        calls = {p: peer_mod.forward_fn(p, SEED, x, kernel) for p in opts.peers}
        samples = interleaved(calls, max(opts.rounds, 5), 0.05, opts.pause)
        result["latency_us"] = {p: statistics.median(v) * 1e6 for p, v in samples.items()}
    if opts.memory:
        say(f"peak memory on {MEMORY_LAYER.name}")
        mem: dict[str, Any] = {
            "layer": MEMORY_LAYER.name,
            "workspace_limit_mib": patchconv.get_workspace_limit() / MiB,
            "patchconv_tracemalloc_cold_mib": tracemalloc_extra(MEMORY_LAYER, cold=True) / MiB,
            "patchconv_tracemalloc_warm_mib": tracemalloc_extra(MEMORY_LAYER, cold=False) / MiB,
            "rss_growth_mib": {},
        }
        for p in opts.peers:
            say(f"  peak RSS growth: {p}")
            mem["rss_growth_mib"][p] = rss_growth(p, MEMORY_LAYER)
        result["memory"] = mem
    result["matmul_gflops"] = {"before": peak_before, "after": matmul_peak()}
    result["machine"]["load_after"] = os.getloadavg()
    return result


def _row(layer: Layer, samples: dict[str, list[float]], algorithm: str) -> dict[str, Any]:
    times = {p: statistics.median(v) for p, v in samples.items()}
    others = {p: t for p, t in times.items() if p != "patchconv"}
    best = min(others, key=lambda p: others[p]) if others else None
    ms = {p: t * 1e3 for p, t in times.items()}
    flops = layer.spec().flops
    cl = "torch_cl" in times
    return {
        "layer": layer.name,
        "category": layer.category,
        "n": layer.n,
        "algorithm": algorithm,
        "ms": ms,
        "gflops": {p: flops / t / 1e9 for p, t in times.items()},
        "best_peer": best,
        "ratio_vs_best": (others[best] / times["patchconv"]) if best else None,
        "ratio_vs_torch_cl": (times["torch_cl"] / times["patchconv"]) if cl else None,
        "round_ratios_vs_best": round_ratios(samples, best) if best else [],
        "round_ratios_vs_torch_cl": round_ratios(samples, "torch_cl"),
    }


TARGETS = {"3x3 s1 dense": 1.3, "other dense": 0.9, "depthwise": 0.7}


def render(result: dict[str, Any]) -> str:
    """The result as a plain-text report: tables, targets, memory, latency."""
    peers = result["peers"]
    lines = []
    m = result["machine"]
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')} "
        f"({b.get('num_threads')} threads)"
        for b in m["blas"]
        if b.get("user_api") == "blas"
    )
    yes = {True: "yes", False: "no"}
    lines.append(
        f"machine: {m['cpus']} cpus, NumPy {m['numpy']}, BLAS {blas or 'unknown'}, numba "
        f"{yes[m['numba']]}, BLAS pinned to 1 thread in calls {yes[m['blas_pinned']]}"
    )
    lines.append(
        "load average before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *m["load_before"], *m["load_after"]
        )
    )
    mm = result["matmul_gflops"]
    lines.append(
        f"NumPy float32 2048^3 matmul: {mm['before']:.0f} GF/s before, {mm['after']:.0f} after"
    )
    lines.append(f"rounds: {result['rounds']} interleaved, medians in ms")
    for key, title in (("forward", "forward"), ("forward_backward", "forward + backward")):
        rows = result.get(key)
        if not rows:
            continue
        cols = [p for p in peers if p in rows[0]["ms"]]
        head = (
            f"| {title} | algorithm | "
            + " | ".join(cols)
            + " | best peer | ratio | rounds | target |"
        )
        lines += ["", head, "|" + "---|" * (len(cols) + 6)]
        for r in rows:
            target = 1.0 if key == "forward_backward" else TARGETS[r["category"]]
            which = "best" if key == "forward" else "torch_cl"
            ratio = r[f"ratio_vs_{which}"]
            met = "met" if ratio is not None and ratio >= target else "NOT met"
            cells = " | ".join(f"{r['ms'][p]:.3g}" for p in cols)
            shown = "n/a" if ratio is None else f"{ratio:.2f}x"  # no peer to compare with
            lines.append(
                f"| {r['layer']} | {r['algorithm']} | {cells} | {r['best_peer']} | "
                f"{shown} | {_spread(r.get(f'round_ratios_vs_{which}', []), target)} | "
                f">= {target}x {met} |"
            )
        if key == "forward_backward":
            lines.append("(ratio: PyTorch channels_last time / patchconv time)")
        else:
            lines.append("(ratio: best peer's time / patchconv's time; > 1 means faster)")
        lines.append(
            "(rounds: the lowest and highest of the rounds' own ratios, and in how many rounds "
            "the target held)"
        )
    lat = result.get("latency_us")
    if lat:
        lines.append("")
        lines.append(
            "seed (1, 4, 4, 3) 3x3 -> 2 valid, per call (us): "
            + ", ".join(f"{p} {v:.1f}" for p, v in lat.items())
        )
        if "torch_cl" in lat or "torch_nchw" in lat:
            torch_best = min(lat.get("torch_cl", np.inf), lat.get("torch_nchw", np.inf))
            ratio = lat["patchconv"] / torch_best
            lines.append(
                f"patchconv / PyTorch latency: {ratio:.2f}x (target <= 2x: "
                f"{'met' if ratio <= 2 else 'NOT met'})"
            )
    mem = result.get("memory")
    if mem:
        lines.append("")
        lines.append(
            f"peak extra memory on {mem['layer']} (workspace limit "
            f"{mem['workspace_limit_mib']:.0f} MiB): patchconv tracemalloc cold "
            f"{mem['patchconv_tracemalloc_cold_mib']:.1f} MiB, warm "
            f"{mem['patchconv_tracemalloc_warm_mib']:.1f} MiB"
        )
        growth = mem["rss_growth_mib"]
        lines.append(
            "peak RSS growth over one call after a one-image warm-up, minus the output (MiB): "
            + ", ".join(f"{p} {'n/a' if v is None else f'{v:.0f}'}" for p, v in growth.items())
        )
    return "\n".join(lines)


def _spread(ratios: list[float], target: float) -> str:
    """The rounds' ratios as 'low-high, k/n met'."""
    if not ratios:
        return "n/a"
    met = sum(v >= target for v in ratios)
    return f"{min(ratios):.2f}-{max(ratios):.2f}, {met}/{len(ratios)} met"


def chart(result: dict[str, Any], path: Path) -> None:
    """Bar chart of patchconv's speed ratio per layer (forward vs best peer, and forward +
    backward vs PyTorch channels_last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["forward"]
    back = result.get("forward_backward") or []
    fig, axes = plt.subplots(
        1, 2 if back else 1, figsize=(13 if back else 8, 0.35 * len(rows) + 1.5), squeeze=False
    )
    ax = axes[0][0]
    names = [r["layer"] for r in rows]
    ratios = [r["ratio_vs_best"] for r in rows]
    colors = [
        "tab:green" if v >= TARGETS[r["category"]] else "tab:red"
        for v, r in zip(ratios, rows, strict=True)
    ]
    ax.barh(names, ratios, color=colors)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.invert_yaxis()
    ax.set_xlabel("best peer time / patchconv time (forward)")
    ax.set_title("patchconv vs best peer (green: target met)")
    if back:
        ax2 = axes[0][1]
        ax2.barh([r["layer"] for r in back], [r["ratio_vs_torch_cl"] for r in back])
        ax2.axvline(1.0, color="black", lw=0.8)
        ax2.invert_yaxis()
        ax2.set_xlabel("PyTorch channels_last / patchconv (forward + backward)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
