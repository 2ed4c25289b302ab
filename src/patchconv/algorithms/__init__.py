"""Convolution algorithms, one module each, and the chooser that picks between them.

Every algorithm takes NHWC ``x`` and an HWIO ``kernel`` already in the compute dtype, plus a
checked :class:`~patchconv._spec.ConvSpec`, and returns NHWC output. They differ only in how
they spend time and memory; all agree with the reference within the tolerance table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchconv._spec import ConvSpec, PatchconvError
from patchconv.algorithms import gemm

__all__ = ["ALGORITHMS", "Plan", "choose", "forward"]

ALGORITHMS = ("gemm",)


@dataclass(frozen=True)
class Plan:
    """What the chooser picked for one call, and why."""

    algorithm: str
    reason: str


def choose(spec: ConvSpec, algorithm: str = "auto", *, func: str = "conv2d") -> Plan:
    """Pick an algorithm for ``spec`` ("auto"), or check that a named one applies."""
    if algorithm == "auto":
        return Plan("gemm", "patch matrix x kernel matrix in workspace-bounded tiles")
    if algorithm not in ALGORITHMS:
        raise PatchconvError(
            f"{func}: algorithm must be 'auto' or one of {ALGORITHMS}; got {algorithm!r}"
        )
    return Plan(algorithm, "requested by name")


def forward(
    plan: Plan,
    x: np.ndarray,
    kernel: np.ndarray,
    bias: np.ndarray | None,
    spec: ConvSpec,
    workspace_limit: int,
) -> np.ndarray:
    """Run the planned algorithm's forward pass (NHWC in, NHWC out)."""
    return gemm.forward(x, kernel, bias, spec, workspace_limit)
