"""Shared test settings: the one tolerance table, hypothesis profiles, oracle setup."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Keras 3 needs a backend before its first import; torch is already an oracle here.
os.environ.setdefault("KERAS_BACKEND", "torch")

# The tolerance table: (rtol, atol) per dtype, used by every comparison with an oracle or the
# reference. Values are relative to the size of the result (atol scales with it in `assert_close`).
TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float64): (1e-12, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-5),
    # float16 stores ~3 decimal digits; results are rounded once from a float32 accumulator.
    np.dtype(np.float16): (2e-3, 2e-3),
}
# Gradients sum over more terms (whole batches and images) than one forward output does.
GRAD_TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float64): (1e-10, 1e-10),
    np.dtype(np.float32): (1e-4, 1e-4),
    np.dtype(np.float16): (1e-2, 1e-2),
}


def tolerance(dtype: np.dtype | type, *, grad: bool = False) -> tuple[float, float]:
    table = GRAD_TOLERANCES if grad else TOLERANCES
    return table[np.dtype(dtype)]


def assert_close(
    actual: np.ndarray, expected: np.ndarray, dtype: np.dtype | type, *, grad: bool = False
) -> None:
    """assert_allclose with the table's rtol, and atol scaled by the result's magnitude (so
    values that cancel to near zero are judged against the size of the terms around them)."""
    rtol, atol = tolerance(dtype, grad=grad)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=atol * scale
    )


settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=150,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def shown_index(text: str) -> tuple[int | slice, ...]:
    """The index inside the first ``output[...]`` of ``text``, as NumPy takes it."""
    inside = text.split("output[", 1)[1].split("]", 1)[0]
    return tuple(slice(None) if p.strip() == ":" else int(p) for p in inside.split(","))
