"""patchconv: CNN convolution as patches x kernel matrix, Keras-exact, on NumPy.

One kernel of shape ``(kh, kw, c_in, c_out)`` handles every input and output channel at once:
each output value is a flattened ``kh x kw x c_in`` patch times the kernel reshaped to
``(kh*kw*c_in, c_out)``, plus the bias, and all patches together are one matrix product.
"""

from __future__ import annotations

from patchconv._config import get_workspace_limit, set_workspace_limit
from patchconv._spec import PatchconvError
from patchconv.algorithms import release_workspace
from patchconv.explain import explain
from patchconv.functional import (
    ConvGrads,
    col2im,
    conv2d,
    conv2d_backward,
    conv_output_shape,
    explain_algorithm,
    im2col,
)
from patchconv.layers import Conv2D
from patchconv.prepared import PreparedConv, prepare

__version__ = "0.1.0"

__all__ = [
    "Conv2D",
    "ConvGrads",
    "PatchconvError",
    "PreparedConv",
    "__version__",
    "col2im",
    "conv2d",
    "conv2d_backward",
    "conv_output_shape",
    "explain",
    "explain_algorithm",
    "get_workspace_limit",
    "im2col",
    "prepare",
    "release_workspace",
    "set_workspace_limit",
]
