"""Format conversion to and from other frameworks; each adapter imports its framework itself.

``patchconv.interop.onnx`` needs the ``onnx`` package; importing this package needs nothing.
"""

from __future__ import annotations

__all__: list[str] = []
