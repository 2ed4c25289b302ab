"""Process-wide defaults that callers may change."""

from __future__ import annotations

import os

from patchconv._spec import PatchconvError, check_workspace_limit

__all__ = ["get_workspace_limit", "set_workspace_limit"]

# Patch-matrix workspace per call, in bytes. 256 MiB holds the whole patch matrix of most layers
# at batch 1 while keeping an (8, 224, 224, 64) 3x3 layer from needing its 925 MB in one piece.
_workspace_limit = 256 * 2**20


def get_workspace_limit() -> int:
    """The default patch workspace limit in bytes (used when a call passes none)."""
    return _workspace_limit


def set_workspace_limit(limit_bytes: int) -> int:
    """Set the default patch workspace limit in bytes; returns the previous value."""
    global _workspace_limit
    check_workspace_limit(limit_bytes, func="set_workspace_limit")
    previous, _workspace_limit = _workspace_limit, int(limit_bytes)
    return previous


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def physical_memory() -> int | None:
    """This machine's memory in bytes, or a container's limit where smaller (cgroup v2 or v1);
    None where the OS does not say."""
    try:
        total = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux or macOS
        return None
    for path in _CGROUP_LIMITS:
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" where there is no limit
            total = min(total, int(text))
    return total


def check_memory(need: int, *, func: str, what: str, hint: str = "") -> None:
    """Refuse, before any work, what needs more than the machine's memory: a clear error where
    the work would otherwise end in a MemoryError or the kernel's out-of-memory kill."""
    have = physical_memory()
    if have is not None and need > have:
        raise PatchconvError(
            f"{func}: {what} needs about {_bytes(need)}, more than this machine's "
            f"{_bytes(have)} of memory{'; ' + hint if hint else ''}"
        )


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
