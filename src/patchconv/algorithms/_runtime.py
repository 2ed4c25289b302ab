"""What every algorithm shares: a small thread pool for the non-BLAS work, reused scratch
buffers, and the optional numba import.

Threads: NumPy slicing copies, NumPy ufuncs, pocketfft and numba ``nogil`` kernels release the
GIL, so splitting a tile's copy over the machine's cores with plain threads scales. The pool is
created on first use and sized to the CPUs this process may run on.

BLAS: inside a parallel section every thread runs its own single-threaded matrix products
(OpenBLAS' per-thread ``openblas_set_num_threads_local``), so each core takes a cache-sized tile
from copy to product and BLAS' spinning worker threads never compete with ours. Where that call
is missing (another BLAS), :func:`blas_per_thread` is False and algorithms fall back to one
multi-threaded product per tile.

Scratch buffers: first touching a fresh page costs about 1.4 us per 4 KiB on the VMs this runs
on, so a call that allocates a fresh large work buffer can spend more time faulting than
computing. Work buffers are therefore kept per calling thread and reused by the next call that
asks for the same role; together they never exceed the workspace limit in force, and
:func:`release_workspace` hands them back.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "blas_per_thread",
    "get_numba",
    "n_workers",
    "parallel_for",
    "release_workspace",
    "scratch",
    "split_range",
]

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_pool_threads: set[int] = set()


def n_workers() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_blas_local: Callable[[int], int] | None = None
_blas_tried = False


def _find_blas_local() -> Callable[[int], int] | None:
    """OpenBLAS' ``openblas_set_num_threads_local`` from NumPy's own BLAS, if it has one."""
    import ctypes
    import glob

    here = os.path.dirname(np.__file__)
    patterns = [os.path.join(here, "..", "numpy.libs", "*openblas*.so*")]
    patterns.append(os.path.join(here, ".dylibs", "*openblas*.dylib"))
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                lib = ctypes.CDLL(path)
                fn = lib.openblas_set_num_threads_local
            except (OSError, AttributeError):
                continue
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_int]
            return fn
    return None


def _blas_setter() -> Callable[[int], int] | None:
    global _blas_local, _blas_tried
    if not _blas_tried:
        _blas_tried = True
        if os.environ.get("PATCHCONV_BLAS_PER_THREAD", "1") != "0":
            _blas_local = _find_blas_local()
    return _blas_local


def blas_per_thread() -> bool:
    """True if each of our threads can run single-threaded BLAS (NumPy's OpenBLAS >= 0.3.27)."""
    return _blas_setter() is not None and n_workers() > 1


def _mark_pool_thread() -> None:
    _pool_threads.add(threading.get_ident())
    setter = _blas_setter()
    if setter is not None:
        setter(1)


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


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` contiguous, nearly equal, non-empty pieces."""
    parts = max(1, min(parts, n))
    bounds = [n * p // parts for p in range(parts + 1)]
    return [(bounds[p], bounds[p + 1]) for p in range(parts) if bounds[p] < bounds[p + 1]]


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
    from a pool thread (no nested waiting on the same pool). When the work is split, every
    piece runs single-threaded BLAS (see the module notes).
    """
    if n <= 0:
        return
    workers = min(workers or n_workers(), max(1, n // max(1, min_items)))
    if workers <= 1 or threading.get_ident() in _pool_threads:
        fn(0, n)
        return
    pieces = split_range(n, min(n // max(1, min_items), workers * max(1, pieces_per_worker)))
    taken = itertools.count()  # next() on a count is atomic under the GIL

    def worker() -> None:
        for i in iter(lambda: next(taken), -1):
            if i >= len(pieces):
                return
            fn(*pieces[i])

    pool = _get_pool()
    futures: Sequence[Future[Any]] = [pool.submit(worker) for _ in range(workers - 1)]
    error: BaseException | None = None
    setter = _blas_setter()
    previous = setter(1) if setter is not None else 0
    try:
        worker()
    except BaseException as exc:  # wait for the others before re-raising
        error = exc
    finally:
        if setter is not None:
            setter(previous)
    for fut in futures:
        try:
            fut.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


class _Scratch:
    """One thread's reusable work buffers, by role."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}

    def total(self) -> int:
        return sum(b.nbytes for b in self.buffers.values())


_local = threading.local()
_all_scratch: weakref.WeakSet[_Scratch] = weakref.WeakSet()


def _mine() -> _Scratch:
    mine = getattr(_local, "scratch", None)
    if mine is None:
        mine = _local.scratch = _Scratch()
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
    if buf is not None:
        del mine.buffers[role]
    fresh = np.empty(size, dtype=dtype)
    if mine.total() + fresh.nbytes <= limit:
        mine.buffers[role] = fresh
    return fresh


def release_workspace() -> int:
    """Drop every cached work buffer (all threads); returns the bytes released."""
    released = 0
    for s in list(_all_scratch):
        released += s.total()
        s.buffers.clear()
    return released


_numba: ModuleType | None = None
_numba_tried = False


def get_numba() -> ModuleType | None:
    """numba if it is installed and not disabled (``PATCHCONV_NUMBA=0``), else None.

    Imported on first need only, so ``import patchconv`` stays NumPy-only.
    """
    global _numba, _numba_tried
    if os.environ.get("PATCHCONV_NUMBA", "1") == "0":
        return None
    if not _numba_tried:
        _numba_tried = True
        try:
            import numba

            _numba = numba
        except ImportError:  # pragma: no cover - the fast extra is not installed
            _numba = None
    return _numba
