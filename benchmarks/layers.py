"""The layer suite of issue 5: float32, padding "same" unless noted, NHWC shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from patchconv._spec import ConvSpec, conv_spec

__all__ = ["MEMORY_LAYER", "SEED", "SUITE", "Layer", "select"]


@dataclass(frozen=True)
class Layer:
    n: int
    hw: int
    c_in: int
    c_out: int
    k: int
    stride: int = 1
    groups: int = 1
    padding: str = "same"

    @property
    def name(self) -> str:
        kind = f"{self.k}x{self.k}"
        if self.stride > 1:
            kind += f" s{self.stride}"
        if self.groups == self.c_in and self.groups > 1:
            kind += " dw"
        elif self.groups > 1:
            kind += f" g{self.groups}"
        return f"N{self.n} {self.hw}x{self.hw} {self.c_in}->{self.c_out} {kind}"

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.n, self.hw, self.hw, self.c_in)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.k, self.k, self.c_in // self.groups, self.c_out)

    @property
    def options(self) -> dict[str, Any]:
        return {"strides": self.stride, "padding": self.padding, "groups": self.groups}

    def spec(self) -> ConvSpec:
        return conv_spec(self.x_shape, self.kernel_shape, None, **self.options)

    @property
    def dense_3x3_s1(self) -> bool:
        return self.k == 3 and self.stride == 1 and self.groups == 1

    @property
    def category(self) -> str:
        """The issue's target group for this layer."""
        if self.groups == self.c_in and self.groups > 1:
            return "depthwise"
        if self.dense_3x3_s1:
            return "3x3 s1 dense"
        return "other dense"


def _both(hw: int, c_in: int, c_out: int, k: int, stride: int = 1) -> list[Layer]:
    return [Layer(n, hw, c_in, c_out, k, stride) for n in (1, 8)]


SUITE: list[Layer] = [
    *_both(56, 64, 64, 3),
    *_both(56, 64, 256, 1),
    *_both(28, 128, 128, 3),
    *_both(14, 256, 256, 3),
    *_both(7, 512, 512, 3),
    *_both(56, 128, 128, 3, 2),
    *_both(224, 3, 64, 7, 2),
    Layer(8, 112, 128, 128, 3),
    Layer(8, 112, 32, 32, 3, groups=32),
    Layer(8, 56, 128, 128, 3, groups=128),
    Layer(8, 56, 96, 96, 7, groups=96),
    Layer(8, 64, 16, 16, 11),
]
# The seed's call: a (1, 4, 4, 3) image, 2 filters of 3x3, valid padding (latency only).
SEED = Layer(1, 4, 3, 2, 3, padding="valid")
# The layer whose peak memory the issue pins (patch matrix 441 MiB in plain im2col).
MEMORY_LAYER = Layer(8, 112, 128, 128, 3)
QUICK = {
    "N8 56x56 64->64 3x3",
    "N8 28x28 128->128 3x3",
    "N8 56x56 64->256 1x1",
    "N8 56x56 128->128 3x3 s2",
    "N8 224x224 3->64 7x7 s2",
    "N8 112x112 32->32 3x3 dw",
    "N8 64x64 16->16 11x11",
}


def select(names: list[str] | None, *, quick: bool) -> list[Layer]:
    """The suite, or the quick subset, or layers whose name contains any of ``names``."""
    layers = [layer for layer in SUITE if not quick or layer.name in QUICK]
    if names:
        layers = [layer for layer in SUITE if any(s in layer.name for s in names)]
    return layers
