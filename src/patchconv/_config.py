"""Process-wide defaults that callers may change."""

from __future__ import annotations

from patchconv._spec import check_workspace_limit

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
