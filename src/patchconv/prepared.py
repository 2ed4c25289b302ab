"""A convolution whose kernel is fixed: inference that prepares the kernel once.

``patchconv.conv2d`` works from the kernel on every call, as training needs (an optimizer
changes the kernel in place between calls). For inference the kernel stays the same, and deep
3x3 layers spend much of each call transforming it for Winograd: 512 -> 512 channels give a
transformed kernel U of 17-38 MB. :func:`prepare` copies the kernel and builds U once, as ONNX
Runtime packs its weights once when a session is made; each call then runs the products alone.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np

from patchconv import algorithms
from patchconv._config import get_workspace_limit
from patchconv._spec import PatchconvError, as_float_array, check_workspace_limit, conv_spec
from patchconv.algorithms import winograd
from patchconv.functional import conv2d, conv_options

__all__ = ["PreparedConv", "prepare"]


class PreparedConv:
    """``conv2d(x, kernel, bias, **options)`` for inputs of one shape, the kernel prepared once.

    Made by :func:`prepare`. It holds a read-only copy of the kernel, so changing the array it
    was made from changes nothing here; prepare again after new weights. The workspace limit
    is the one in force at :func:`prepare`.

    Where ``conv2d`` would pick another algorithm, the prepared call runs Winograd F(2x2): the
    results agree within the tolerance table, but a NaN or Inf input spreads over the tiles it
    falls in, as under ``algorithm="winograd_f2"`` (see the README on non-finite inputs).

    Attributes
    ----------
    input_shape : tuple of int
        The one input shape it takes.
    kernel : ndarray
        Its own copy of the kernel.
    prepared : str
        What was prepared: "winograd_f4" or "winograd_f2" (the transformed kernel is kept), or
        "nothing" (each call is a plain ``conv2d``: keeping a transformed kernel pays only on
        deep 3x3 stride-1 layers, and is done only for float32 and float64 kernels in
        channels_last with zero padding).
    """

    def __init__(
        self,
        kernel: Any,
        input_shape: tuple[int, ...],
        options: dict[str, Any],
        workspace_limit: int | None,
    ) -> None:
        func = "prepare"
        self.kernel = np.array(as_float_array(kernel, func=func, name="kernel"), copy=True)
        self.kernel.setflags(write=False)  # the kept transform is of these values: no changes
        if not isinstance(input_shape, (tuple, list)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in input_shape
        ):
            raise TypeError(f"{func}: input_shape must be a tuple of ints; got {input_shape!r}")
        self.input_shape = tuple(int(v) for v in input_shape)
        self.options = MappingProxyType(dict(options))
        spec = conv_spec(self.input_shape, self.kernel.shape, None, func=func, **options)
        self.workspace_limit = (
            get_workspace_limit()
            if workspace_limit is None
            else check_workspace_limit(workspace_limit, func=func)
        )
        self._fast: tuple[Any, int, np.ndarray] | None = None
        dtype = self.kernel.dtype
        if (
            dtype in (np.float32, np.float64)
            and spec.data_format == "channels_last"
            and spec.padding_mode == "zeros"
            and spec.n > 0  # an empty batch: conv2d's empty result, nothing to keep
        ):
            # The Winograd form conv2d's chooser picks; F(2x2) where it picks another
            # algorithm (deep batch-1 layers, where the transform is what makes Winograd
            # dear) or F(4x4) whose U is not kept: F(4x4)'s larger rounding error is taken
            # only where conv2d takes it.
            plan = algorithms.choose(
                spec,
                "auto",
                func=func,
                itemsize=dtype.itemsize,
                workspace_limit=self.workspace_limit,
            )
            m = 4 if plan.algorithm == "winograd_f4" else 2
            u = winograd.prepared_u(self.kernel, spec, dtype, self.workspace_limit, m)
            if u is None and m == 4:  # F(4x4)'s U not kept, as where our products have too
                # few tiles (under 6: N1 7x7x512, whose U is 38 MB); F(2x2)'s may be (there
                # 0.70-0.80 ms a call, against 1.0-1.1 for F(4x4) by input channels)
                m = 2
                u = winograd.prepared_u(self.kernel, spec, dtype, self.workspace_limit, m)
            if u is not None:
                self._fast = (spec, m, u)
        self.prepared = "nothing" if self._fast is None else f"winograd_f{self._fast[1]}"

    def __call__(self, x: Any, bias: Any = None) -> np.ndarray:
        """The convolution of ``x`` (of :attr:`input_shape`), plus ``bias`` if given."""
        func = "PreparedConv"
        arr = as_float_array(x, func=func, name="x")
        if arr.shape != self.input_shape:
            raise PatchconvError(
                f"{func}: x must have the shape it was prepared for, {self.input_shape}; got x "
                f"{arr.shape} (prepare again for another shape)"
            )
        b = None if bias is None else as_float_array(bias, func=func, name="bias")
        c_out = self.kernel.shape[3]
        if b is not None and b.shape != (c_out,):
            raise PatchconvError(f"{func}: bias must have shape ({c_out},); got bias {b.shape}")
        fast = self._fast
        if (
            fast is None
            or arr.dtype != self.kernel.dtype
            or (b is not None and b.dtype != arr.dtype)
        ):
            # Mixed dtypes take conv2d's own casts.
            return conv2d(arr, self.kernel, b, workspace_limit=self.workspace_limit, **self.options)
        spec, m, u = fast
        return winograd.forward(arr, self.kernel, b, spec, self.workspace_limit, m=m, u_ready=u)

    def __repr__(self) -> str:
        return (
            f"PreparedConv(kernel {self.kernel.shape}, input_shape {self.input_shape}, "
            f"prepared {self.prepared})"
        )


def prepare(
    kernel: Any,
    input_shape: tuple[int, ...],
    *,
    strides: int | tuple[int, int] = 1,
    padding: Any = "valid",
    dilation_rate: int | tuple[int, int] = 1,
    groups: int = 1,
    data_format: str = "channels_last",
    padding_mode: str = "zeros",
    workspace_limit: int | None = None,
) -> PreparedConv:
    """A :class:`PreparedConv`: ``conv2d`` with this kernel and these options, for inference
    on inputs of ``input_shape``, with the kernel's transform done once, here.

    Takes :func:`patchconv.conv2d`'s arguments, checked here. Results equal ``conv2d``'s within
    the tolerance table: the same algorithm runs, or Winograd F(2x2) on a deep layer where
    ``conv2d`` would pick another (see :class:`PreparedConv`).

    Examples
    --------
    >>> import numpy as np, patchconv
    >>> kernel = np.ones((3, 3, 4, 2), dtype=np.float32)
    >>> layer = patchconv.prepare(kernel, (1, 5, 5, 4), padding="same")
    >>> layer(np.ones((1, 5, 5, 4), dtype=np.float32)).shape
    (1, 5, 5, 2)
    """
    options = conv_options(strides, padding, dilation_rate, groups, data_format, padding_mode)
    return PreparedConv(kernel, input_shape, options, workspace_limit)
