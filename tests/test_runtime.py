"""The shared runtime: NumPy's BLAS held to one thread during a call and given back after it,
and the product split over the cores."""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import patchconv
from conftest import assert_close
from patchconv.algorithms import _runtime


def _blas_threads() -> int:
    blas = _runtime._openblas()
    assert blas is not None
    return blas[1]()


needs_pinning = pytest.mark.skipif(
    not _runtime.blas_pinned(), reason="needs NumPy's OpenBLAS and two or more CPUs"
)


@needs_pinning
def test_blas_is_one_thread_inside_and_restored_after() -> None:
    before = _blas_threads()
    seen: list[int] = []
    with _runtime.single_threaded_blas():
        seen.append(_blas_threads())
        with _runtime.single_threaded_blas():  # nested: still one, not restored early
            seen.append(_blas_threads())
        seen.append(_blas_threads())
    assert seen == [1, 1, 1]
    assert _blas_threads() == before


@needs_pinning
def test_overlapping_calls_from_threads_restore_once_the_last_ends() -> None:
    before = _blas_threads()
    inside = threading.Event()
    release = threading.Event()

    def other() -> None:
        with _runtime.single_threaded_blas():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert inside.wait(10)
    with _runtime.single_threaded_blas():
        pass
    still = _blas_threads()  # the other thread's block is still open
    release.set()
    t.join()
    assert still == 1
    assert _blas_threads() == before


@needs_pinning
@pytest.mark.parametrize("algorithm", ["gemm", "winograd_f4", "pointwise", "fft", "depthwise"])
def test_a_call_gives_numpys_blas_threads_back(algorithm: str) -> None:
    """The old per-section setter was process-wide, so a call could leave NumPy's BLAS at one
    thread (or at two inside our parallel sections); now every call restores the count."""
    rng = np.random.default_rng(0)
    c = 8
    x = rng.standard_normal((4, 20, 20, c)).astype(np.float32)
    k = 1 if algorithm == "pointwise" else 3
    c_out, groups = (c, c) if algorithm == "depthwise" else (6, 1)
    kernel = rng.standard_normal((k, k, c // groups, c_out)).astype(np.float32)
    before = _blas_threads()
    assert before > 1
    for _ in range(3):
        out = patchconv.conv2d(x, kernel, padding="same", groups=groups, algorithm=algorithm)
        assert _blas_threads() == before
        patchconv.conv2d_backward(np.ones_like(out), x, kernel, padding="same", groups=groups)
        assert _blas_threads() == before


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(3000, 200, 40), (40, 200, 3000), (7, 5, 3), (600, 900, 700)],
)
@pytest.mark.parametrize(("accumulate", "temp_bytes"), [(False, 2**21), (True, 2**21), (True, 1)])
def test_split_matmul_equals_numpy(
    m: int, k: int, n: int, accumulate: bool, temp_bytes: int
) -> None:
    """Split by rows (tall a), by columns (wide b) or not at all (small), with or without
    accumulating (through temporaries of a row at a time at the least); also through a
    transposed view as the gradients use it."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((k, m)).astype(np.float32).T  # non-contiguous view
    b = rng.standard_normal((k, n)).astype(np.float32)
    start = rng.standard_normal((m, n)).astype(np.float32)
    out = start.copy()
    with _runtime.single_threaded_blas():
        _runtime.matmul(a, b, out, accumulate=accumulate, temp_bytes=temp_bytes)
    expected = (start if accumulate else 0) + a.astype(np.float64) @ b
    assert_close(out, expected.astype(np.float32), np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 7, 9, 33)])
def test_aligned_empty_starts_on_64_bytes(shape: tuple[int, ...], dtype: type) -> None:
    arrays = [_runtime.aligned_empty(shape, dtype) for _ in range(8)]  # several heap positions
    for arr in arrays:
        assert arr.shape == shape
        assert arr.dtype == dtype
        assert arr.flags.c_contiguous and arr.flags.writeable
        assert arr.ctypes.data % 64 == 0


def test_concurrent_calls_from_threads_give_the_serial_results() -> None:
    """Four threads calling at once, over the depthwise, implicit GEMM, pointwise and Winograd
    paths (each kernel keeps its row copies per call, work buffers per thread): every result
    equals the one computed alone."""
    rng = np.random.default_rng(0)
    layers = [
        ((2, 20, 21, 32), (3, 3, 1, 32), {"groups": 32, "padding": "same"}),
        ((2, 23, 19, 5), (3, 3, 5, 64), {"strides": 2, "padding": "same"}),
        ((2, 30, 30, 16), (1, 1, 16, 64), {}),
        ((2, 12, 12, 32), (3, 3, 32, 32), {"padding": "same", "algorithm": "winograd_f4"}),
    ]
    cases = []
    for x_shape, k_shape, options in layers:
        x = rng.standard_normal(x_shape).astype(np.float32)
        kernel = rng.standard_normal(k_shape).astype(np.float32)
        cases.append((x, kernel, options, patchconv.conv2d(x, kernel, **options)))
    mismatches: list[int] = []

    def work(seed: int) -> None:
        order = np.random.default_rng(seed).integers(len(cases), size=20)
        for i in order:
            x, kernel, options, expected = cases[i]
            if not np.array_equal(patchconv.conv2d(x, kernel, **options), expected):
                mismatches.append(int(i))

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []


needs_numba = pytest.mark.skipif(_runtime.get_numba() is None, reason="needs numba")


def _rows_layer() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 11, 13, 8)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 8, 64)).astype(np.float32)
    return x, kernel, rng.standard_normal(64).astype(np.float32)


@needs_numba
@pytest.mark.parametrize(
    ("n", "min_items", "pieces_per_worker"), [(33, 1, 4), (33, 5, 1), (7, 1, 9)]
)
@pytest.mark.parametrize("native", [True, False])
def test_parallel_kernel_covers_every_row_once(
    n: int, min_items: int, pieces_per_worker: int, native: bool
) -> None:
    """``_simd.parallel`` through numba's threads (or the Python pool where they cannot run)
    writes every output row of the implicit GEMM once, as one serial call does."""
    from patchconv.algorithms import _simd
    from patchconv.algorithms.gemm import kernel_panels

    x, kernel, bias = _rows_layer()
    x = np.concatenate([x] * 11)[:n]
    kmat = kernel_panels(kernel.reshape(-1, 64), 64, np.dtype(np.float32))
    args = (x, kmat, bias, None, 3, 3, 1, 1, 1, 1, 1, 1)
    serial = np.full((n, 11, 13, 64), np.nan, np.float32)
    _simd.conv_rows(*args[:3], serial, *args[4:], 0, n * 11)
    out = np.full_like(serial, np.nan)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(_simd, "native_ready", lambda: False)
        _simd.parallel(
            _simd.conv_rows,
            (*args[:3], out, *args[4:]),
            n * 11,
            min_items=min_items,
            pieces_per_worker=pieces_per_worker,
        )
    np.testing.assert_array_equal(out, serial)


@needs_numba
@pytest.mark.parametrize("native", [True, False])
def test_parallel_row_pairs_cover_every_row_once(native: bool) -> None:
    """The narrow implicit GEMM's row pairs through numba's threads (or the Python pool): with
    an odd number of output rows the last pair overlaps the one before, and the result equals
    one serial call's."""
    from patchconv.algorithms import _simd

    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 11, 14, 16)).astype(np.float32)  # 11 output rows per image
    kmat = rng.standard_normal((5 * 5 * 16 * 24,)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    serial = np.full((5, 11, 14, 24), np.nan, np.float32)
    args = (x, kmat, bias, serial, 5, 5, 1, 1, 2, 2)
    _simd.conv_rows_narrow_pairs(*args, 0, 5 * 6)
    assert not np.isnan(serial).any()
    out = np.full_like(serial, np.nan)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(_simd, "native_ready", lambda: False)
        _simd.parallel(_simd.conv_rows_narrow_pairs, (*args[:3], out, *args[4:]), 5 * 6)
    np.testing.assert_array_equal(out, serial)


def test_threads_asking_for_numba_at_once_all_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first calls from several threads at once: each waits for the one import, none is
    told numba is missing (which refused algorithm="direct" and hid the compiled paths)."""
    if _runtime.get_numba() is None:
        pytest.skip("numba is not installed or is disabled")
    for _ in range(20):
        monkeypatch.setattr(_runtime, "_numba", None)
        monkeypatch.setattr(_runtime, "_numba_tried", False)
        start = threading.Barrier(4)
        seen: list[object] = []

        def ask(start: threading.Barrier = start, seen: list[object] = seen) -> None:
            start.wait()
            seen.append(_runtime.get_numba())

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(seen) == 4 and all(m is not None for m in seen)


def test_worker_count_is_reread_after_a_second_or_in_another_process() -> None:
    """n_workers keeps the affinity count for a second in the process that read it."""
    true_count = len(os.sched_getaffinity(0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_runtime, "_workers", (time.monotonic(), os.getpid(), 99))
        assert _runtime.n_workers() == 99  # still fresh
        mp.setattr(_runtime, "_workers", (time.monotonic() - 2.0, os.getpid(), 99))
        assert _runtime.n_workers() == true_count  # a second old: read again
        mp.setattr(_runtime, "_workers", (time.monotonic(), os.getpid() + 1, 99))
        assert _runtime.n_workers() == true_count  # another process's count


@needs_numba
def test_native_threads_leave_the_environment_as_it_was() -> None:
    """The spin count OpenMP reads once at start-up is set for that moment only."""
    from patchconv.algorithms import _simd

    before = dict(os.environ)
    _simd.native_ready()
    assert dict(os.environ) == before


def _child_result(queue: Any) -> None:
    x, kernel, bias = _rows_layer()
    queue.put(patchconv.conv2d(x, kernel, bias, padding="same", algorithm="gemm"))


@needs_numba
@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork processes"
)
def test_a_forked_child_computes_after_the_parent_used_native_threads() -> None:
    """GNU OpenMP aborts a forked child that starts a parallel region; the child falls back to
    the Python pool and gets the parent's answer."""
    x, kernel, bias = _rows_layer()
    expected = patchconv.conv2d(x, kernel, bias, padding="same", algorithm="gemm")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_result, args=(queue,))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_array_equal(got, expected)


@needs_numba
def test_compiled_only_calls_leave_numpys_blas_alone() -> None:
    """A forward pass with no BLAS in it (the implicit GEMM, depthwise, Winograd with every step
    compiled) does not hold NumPy's BLAS to one thread; one with BLAS products (FFT) does."""
    import contextlib

    from patchconv import algorithms

    entered: list[str] = []

    @contextlib.contextmanager
    def recording() -> Any:
        entered.append("pinned")
        yield

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 12, 16)).astype(np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(algorithms, "single_threaded_blas", recording)
        for kernel, options in [
            (rng.standard_normal((3, 3, 16, 64)), {"algorithm": "gemm"}),
            (rng.standard_normal((3, 3, 1, 16)), {"groups": 16, "algorithm": "depthwise"}),
            (rng.standard_normal((3, 3, 16, 64)), {"algorithm": "winograd_f4"}),
        ]:
            patchconv.conv2d(x, kernel.astype(np.float32), padding="same", **options)
        assert entered == []
        patchconv.conv2d(x, rng.standard_normal((5, 5, 16, 8)), padding="same", algorithm="fft")
    assert entered == ["pinned"]


@pytest.mark.parametrize(("n", "parts"), [(28, 8), (7, 3), (5, 9), (64, 4), (1, 1)])
def test_split_range_covers_the_range_longer_pieces_first(n: int, parts: int) -> None:
    """Contiguous pieces that cover range(n) once, lengths within one of each other and never
    growing, so cores taking them in turn finish together."""
    pieces = _runtime.split_range(n, parts)
    assert [i for lo, hi in pieces for i in range(lo, hi)] == list(range(n))
    lengths = [hi - lo for lo, hi in pieces]
    assert len(pieces) == min(n, parts)
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)


def test_numba_caches_in_a_temporary_folder_where_it_could_write_nowhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(_runtime, "_writable", lambda folder: False)
    _runtime._numba_cache_fallback()
    assert os.environ["NUMBA_CACHE_DIR"].startswith(tempfile.gettempdir())
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    _runtime._numba_cache_fallback()
    assert os.environ["NUMBA_CACHE_DIR"] == str(tmp_path)  # the user's choice stays
    monkeypatch.undo()
    assert _runtime._writable(str(tmp_path / "new" / "deeper"))  # created when needed
    (tmp_path / "file.txt").write_text("")
    assert not _runtime._writable(str(tmp_path / "file.txt" / "sub"))  # under a file: never


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_convolutions_after_the_parent_used_the_pool() -> None:
    """A forked child has none of the parent's pool threads: work handed to that pool waited
    for ever. The child now starts its own, and gets the parent's result."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 16, 32)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    _runtime.parallel_for(lambda lo, hi: None, 8, workers=2)  # the parent's pool is running
    expected = patchconv.conv2d(x, kernel, padding="same")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
        pid = os.fork()
    if pid == 0:  # the child: exit 0 only if both runs finish with the parent's result
        code = 1
        try:
            pieces: list[tuple[int, int]] = []
            _runtime.parallel_for(lambda lo, hi: pieces.append((lo, hi)), 8, workers=2)
            out = patchconv.conv2d(x, kernel, padding="same")
            ok = sum(hi - lo for lo, hi in pieces) == 8 and np.allclose(out, expected, atol=1e-4)
            code = 0 if ok else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's convolution did not finish within 60 s")


def test_work_buffers_kept_counted_and_dropped_while_threads_use_them() -> None:
    """Threads taking work buffers while another counts and drops them: no error (the dicts
    were walked while they changed), and a call drops its own and the pool's buffers only."""
    import sys

    errors: list[BaseException] = []
    stop = threading.Event()

    def take() -> None:
        i = 0
        while not stop.is_set():
            try:
                for role in ("a", "b", "c"):
                    _runtime.scratch(role, 1000 + (i % 7) * 500, np.float32, limit=10**9)
            except BaseException as e:  # any error is the failure
                errors.append(e)
            i += 1

    def drop() -> None:
        while not stop.is_set():
            try:
                _runtime.workspace_kept()
                _runtime.release_this_call()
                _runtime.release_workspace()
            except BaseException as e:
                errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=take) for _ in range(3)]
        threads.append(threading.Thread(target=drop))
        for t in threads:
            t.start()
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []

    kept = threading.Event()
    done = threading.Event()

    def other() -> None:  # another caller's thread keeps a buffer
        _runtime.scratch("theirs", 4096, np.float32, limit=10**9)
        kept.set()
        done.wait(10)

    t = threading.Thread(target=other)
    t.start()
    assert kept.wait(10)
    _runtime.scratch("mine", 4096, np.float32, limit=10**9)
    before = _runtime.workspace_kept()
    _runtime.release_this_call()
    assert "mine" not in _runtime._mine().buffers
    assert before >= 4096 * 4 and _runtime.workspace_kept() == 0
    others = [s for s in _runtime._all_scratch if "theirs" in s.buffers]
    done.set()
    t.join()
    assert len(others) == 1
