"""What every algorithm shares: a small thread pool for the non-BLAS work, reused scratch
buffers, and the optional numba import.

Threads: NumPy slicing copies, NumPy ufuncs, pocketfft and numba ``nogil`` kernels release the
GIL, so splitting a tile's copy over the machine's cores with plain threads scales. The pool is
created on first use and sized to the CPUs this process may run on.

BLAS: while a patchconv call runs, NumPy's OpenBLAS is held to one thread
(:func:`single_threaded_blas`, process-wide and counted, so overlapping calls from several
threads restore it only when the last one ends) and every large product is split over our own
threads instead. OpenBLAS' thread count is global (``openblas_set_num_threads_local`` sets it
for the whole process too), and its workers spin for a while after each threaded product, so
mixing its threads with ours left a core fighting over the other (measured: the same 3x3 layer
at 4.7 ms or 8.3 ms depending on which thread set the count last). Where OpenBLAS' setter is
missing (another BLAS), :func:`blas_pinned` is False and algorithms fall back to one
multi-threaded product per tile.

Compiled kernels (numba) do not use this pool where they can avoid it: a hand-off to a Python
thread costs about 90 us here (futex wake-ups and waits for the GIL), so
:func:`patchconv.algorithms._simd.parallel` runs them on numba's OpenMP or TBB threads, which
take a region in about 2 us. Those workers spin for a while after each region, which would
slow BLAS work on this pool right after, so a call runs either all its steps there or none.

Scratch buffers: first touching a fresh page costs about 1.4 us per 4 KiB on the VMs this runs
on, so a call that allocates a fresh large work buffer can spend more time faulting than
computing. Work buffers are therefore kept per calling thread and reused by the next call that
asks for the same role; together they never exceed the workspace limit in force, and
:func:`release_workspace` hands them back.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "VECTOR_BYTES",
    "aligned_empty",
    "blas_pinned",
    "get_numba",
    "in_pool_thread",
    "matmul",
    "n_workers",
    "parallel_for",
    "piece_plan",
    "release_workspace",
    "scratch",
    "single_threaded_blas",
    "split_range",
]

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_threads: set[int] = set()


_workers: tuple[float, int, int] = (-1.0, 0, 0)  # (when read, by which process, CPUs)
_WORKERS_TTL = 1.0


def n_workers() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count), read again
    at most once a second: a call asked it about 8 times, a system call each."""
    global _workers
    now = time.monotonic()
    when, pid, count = _workers
    if now - when < _WORKERS_TTL and pid == os.getpid():
        return count
    try:
        count = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        count = max(1, os.cpu_count() or 1)
    _workers = (now, os.getpid(), count)
    return count


_blas: tuple[Callable[[int], None], Callable[[], int]] | None = None
_blas_tried = False
_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved = 0


def _find_openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """OpenBLAS' ``openblas_set_num_threads`` / ``get`` from NumPy's own BLAS, if it has them."""
    import ctypes
    import glob

    here = os.path.dirname(np.__file__)
    patterns = [os.path.join(here, "..", "numpy.libs", "*openblas*.so*")]
    patterns.append(os.path.join(here, ".dylibs", "*openblas*.dylib"))
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix, suffix in _OPENBLAS_NAMES:
                try:
                    setter = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
                    getter = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}")
                except AttributeError:
                    continue
                setter.restype, setter.argtypes = None, [ctypes.c_int]
                getter.restype, getter.argtypes = ctypes.c_int, []
                return setter, getter
    return None


# Symbol spellings: NumPy's wheels bundle scipy-openblas (64-bit integers, renamed symbols).
_OPENBLAS_NAMES = (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", ""))


def _openblas() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    global _blas, _blas_tried
    if not _blas_tried:
        _blas_tried = True
        if os.environ.get("PATCHCONV_PIN_BLAS", "1") != "0":
            _blas = _find_openblas()
    return _blas


def blas_pinned() -> bool:
    """True if patchconv holds NumPy's OpenBLAS to one thread during its calls and splits the
    products over its own threads (several CPUs and OpenBLAS' thread setter found)."""
    return _openblas() is not None and n_workers() > 1


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """NumPy's OpenBLAS at one thread inside, restored when the outermost such block ends."""
    global _blas_depth, _blas_saved
    blas = _openblas() if n_workers() > 1 else None
    if blas is None:
        yield
        return
    setter, getter = blas
    with _blas_lock:
        if _blas_depth == 0:
            _blas_saved = getter()
            if _blas_saved != 1:
                setter(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0 and _blas_saved != 1:
                setter(_blas_saved)


def in_pool_thread() -> bool:
    """True on one of patchconv's pool threads (where a nested parallel call runs serially)."""
    return threading.get_ident() in _pool_threads


def _mark_pool_thread() -> None:
    _pool_threads.add(threading.get_ident())


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(1, n_workers() - 1),
                thread_name_prefix="patchconv",
                initializer=_mark_pool_thread,
            )
        return _pool


def _after_fork_in_child() -> None:
    # A forked child has only the thread that forked: the pool's threads are gone, so work
    # handed to the parent's pool waited for ever, and a lock another thread held stays held.
    # The child starts a pool of its own when it needs one.
    global _pool, _pool_lock, _pool_threads, _blas_lock, _scratch_lock
    _pool = None
    _pool_lock = threading.Lock()
    _pool_threads = set()
    _blas_lock = threading.Lock()
    _scratch_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` contiguous, nearly equal, non-empty pieces, the
    longer ones first (cores taking them in turn then finish together; see _simd._piece)."""
    parts = max(1, min(parts, n))
    q, r = divmod(n, parts)
    starts = [p * q + min(p, r) for p in range(parts + 1)]
    return [(starts[p], starts[p + 1]) for p in range(parts) if starts[p] < starts[p + 1]]


def piece_plan(
    n: int, min_items: int, pieces_per_worker: int, workers: int | None = None
) -> tuple[int, int]:
    """(threads, pieces) for ``range(n)``: no more threads than pieces of ``min_items``, about
    ``pieces_per_worker`` pieces per thread (``parallel_for`` and ``_simd.parallel``)."""
    workers = min(workers or n_workers(), max(1, n // max(1, min_items)))
    return workers, min(n // max(1, min_items), workers * max(1, pieces_per_worker))


def parallel_for(
    fn: Callable[[int, int], Any],
    n: int,
    *,
    min_items: int = 1,
    workers: int | None = None,
    pieces_per_worker: int = 4,
) -> None:
    """Run ``fn(lo, hi)`` over pieces of ``range(n)`` on all cores; the caller works too.

    The range is cut into about ``pieces_per_worker`` pieces per core (each at least
    ``min_items`` long) that the threads take in turn, so a core slowed by other programs
    simply takes fewer pieces. Small work stays on the calling thread, as does a call made
    from a pool thread (no nested waiting on the same pool).
    """
    if n <= 0:
        return
    workers, count = piece_plan(n, min_items, pieces_per_worker, workers)
    if workers <= 1 or in_pool_thread():
        fn(0, n)
        return
    pieces = split_range(n, count)
    taken = itertools.count()  # next() on a count is atomic under the GIL

    def worker() -> None:
        for i in iter(lambda: next(taken), -1):
            if i >= len(pieces):
                return
            fn(*pieces[i])

    pool = _get_pool()
    futures: Sequence[Future[Any]] = [pool.submit(worker) for _ in range(workers - 1)]
    error: BaseException | None = None
    try:
        worker()
    except BaseException as exc:  # wait for the others before re-raising
        error = exc
    for fut in futures:
        try:
            fut.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


def matmul(
    a: np.ndarray,
    b: np.ndarray,
    out: np.ndarray,
    *,
    accumulate: bool = False,
    temp_bytes: int = 2**21,
) -> None:
    """``out = a @ b`` (``out += a @ b`` with ``accumulate``) for 2-D operands, split over the
    cores when BLAS is pinned to one thread: by rows of ``a`` or by columns of ``b``, whichever
    makes each core re-read the smaller operand. Called from a pool thread it runs as is.

    ``accumulate`` adds the product a block of rows at a time, through temporaries of
    ``temp_bytes`` in all (at least a row each): a weight gradient of 35 MiB took another
    35 MiB at once."""
    m, n = a.shape[0], b.shape[1]
    work = m * n * a.shape[1]
    if not blas_pinned() or work < _SPLIT_WORK:
        if accumulate:
            add_product(a, b, out, temp_bytes)
        else:
            np.matmul(a, b, out=out)
        return
    share = max(1, temp_bytes // n_workers())
    if b.nbytes <= a.nbytes and m >= 2 * _SPLIT_MIN:

        def rows(lo: int, hi: int) -> None:
            if accumulate:
                add_product(a[lo:hi], b, out[lo:hi], share)
            else:
                np.matmul(a[lo:hi], b, out=out[lo:hi])

        parallel_for(rows, m, min_items=_SPLIT_MIN, pieces_per_worker=1)
        return

    def cols(lo: int, hi: int) -> None:
        if accumulate:
            add_product(a, b[:, lo:hi], out[:, lo:hi], share)
        else:
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

    parallel_for(cols, n, min_items=min(_SPLIT_MIN, max(1, n // n_workers())), pieces_per_worker=1)


def product_temp_bytes(workspace_limit: int) -> int:
    """The bound on a weight gradient's product temporaries (:func:`add_product`) under a
    workspace limit: a quarter of it, and at least 256 KiB (under tiny limits a bound of a
    few bytes made one BLAS call a row: N1 14x14x256 backward under 1 byte 684 ms against
    196)."""
    return max(2**18, workspace_limit // 4)


def add_product(a: np.ndarray, b: np.ndarray, out: np.ndarray, temp_bytes: int) -> None:
    """``out += a @ b`` (2-D) a block of rows of ``a`` at a time, each product's temporary
    within ``temp_bytes`` (at least one row)."""
    step = max(1, temp_bytes // max(1, out.shape[1] * out.itemsize))
    for r in range(0, a.shape[0], step):
        out[r : r + step] += a[r : r + step] @ b


# Below this many multiply-adds a product stays on one core (thread hand-off costs ~50 us).
_SPLIT_WORK = 1 << 21
_SPLIT_MIN = 32


class _Scratch:
    """One thread's reusable work buffers, by role."""

    def __init__(self, pool: bool) -> None:
        self.buffers: dict[str, np.ndarray] = {}
        self.pool = pool  # a thread of patchconv's pool, which every caller's work uses

    def total(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())


_local = threading.local()
_all_scratch: weakref.WeakSet[_Scratch] = weakref.WeakSet()
# Held while any thread's buffers change or are counted or dropped from another thread.
_scratch_lock = threading.Lock()


def _mine() -> _Scratch:
    mine = getattr(_local, "scratch", None)
    if mine is None:
        mine = _local.scratch = _Scratch(in_pool_thread())
        with _scratch_lock:
            _all_scratch.add(mine)
    return mine


def scratch(role: str, size: int, dtype: np.dtype | type, *, limit: int) -> np.ndarray:
    """A flat work buffer of ``size`` elements, reused across calls for the same ``role``.

    The contents are undefined. Buffers are kept only while this thread's buffers together stay
    within ``limit`` bytes (the workspace limit); a larger request gets a fresh array.
    """
    dtype = np.dtype(dtype)
    mine = _mine()
    buf = mine.buffers.get(role)
    if buf is not None and buf.dtype == dtype and buf.size >= size:
        return buf[:size]
    with _scratch_lock:
        mine.buffers.pop(role, None)
    fresh = aligned_empty((size,), dtype)  # SIMD kernels store whole cache lines
    with _scratch_lock:
        if mine.total() + fresh.nbytes <= limit:
            mine.buffers[role] = fresh
    return fresh


# Bytes of one SIMD register as the compiled kernels use it (``_simd``): 16 float32, 8 float64.
# A kernel that works on vectors of channels needs at least this many bytes of them.
VECTOR_BYTES = 64

# Past this many input channels in one sum, Winograd's products sum each chunk of them apart,
# from zero, before adding it to the total (``_simd._panel_rows_apart``, ``batched_matmul``,
# ``winograd._products``).
APART_CHANNELS = 512


def aligned_empty(shape: Sequence[int], dtype: np.dtype | type, align: int = 64) -> np.ndarray:
    """``np.empty(shape, dtype)`` starting on an ``align``-byte boundary.

    NumPy's large arrays come from malloc, 16 bytes past a page boundary, so a 64-byte vector
    load from one straddles two cache lines every time (measured: the depthwise forward 25%
    slower on such input).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _this_call(mine: _Scratch) -> list[_Scratch]:
    # The buffers a call on this thread can use: its own and the pool threads' (under the lock).
    return [s for s in list(_all_scratch) if s is mine or s.pool]


def workspace_kept() -> int:
    """Bytes of the work buffers kept for later calls that a call on this thread can use: its
    own and those of patchconv's pool threads (other threads' are theirs)."""
    mine = _mine()  # (takes the lock the first time)
    with _scratch_lock:
        return sum(s.total() for s in _this_call(mine))


def release_this_call() -> None:
    """Drop the work buffers :func:`workspace_kept` counts."""
    mine = _mine()
    with _scratch_lock:
        for s in _this_call(mine):
            s.buffers.clear()


def release_workspace() -> int:
    """Drop every cached work buffer (all threads); returns the bytes released."""
    released = 0
    with _scratch_lock:
        for s in list(_all_scratch):
            released += s.total()
            s.buffers.clear()
    return released


_numba: ModuleType | None = None
_numba_tried = False
_numba_lock = threading.Lock()


def _writable(folder: str) -> bool:
    """True if ``folder`` can be written, or created in a parent that can be."""
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent
    return os.path.isdir(folder) and os.access(folder, os.W_OK)


def _numba_cache_fallback() -> None:
    """numba caches compiled kernels in the package's ``__pycache__`` or in the user's cache
    folder, and raises on the first cached kernel where it can write neither (a read-only
    install run by a user without a writable home). Then point it at a per-user temporary
    folder; an explicit ``NUMBA_CACHE_DIR`` is left alone."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    in_tree = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if _writable(in_tree) or _writable(home):
        return
    uid = os.getuid() if hasattr(os, "getuid") else 0
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"patchconv-numba-{uid}")


def get_numba() -> ModuleType | None:
    """numba if it is installed and not disabled (``PATCHCONV_NUMBA=0``), else None.

    Imported on first need only, so ``import patchconv`` stays NumPy-only.
    """
    global _numba, _numba_tried
    if os.environ.get("PATCHCONV_NUMBA", "1") == "0":
        return None
    if not _numba_tried:
        # One thread imports; the others wait for it (a flag set before the import finished
        # told threads calling at the same time that numba was missing).
        with _numba_lock:
            if not _numba_tried:
                _numba_cache_fallback()
                try:
                    import numba

                    _numba = numba
                except ImportError:  # pragma: no cover - the fast extra is not installed
                    _numba = None
                _numba_tried = True
    return _numba
