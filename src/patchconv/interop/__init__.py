"""Run Keras, PyTorch and ONNX CNNs in patchconv, exactly; each adapter imports its framework
(or h5py, or onnx) itself, inside the function that needs it.

- :func:`from_keras` (``.keras``, ``.weights.h5`` or a live model; NHWC input),
  :func:`save_keras_weights` / :func:`to_keras` back to Keras;
- :func:`from_torch` (a live ``nn.Sequential``, or a state_dict from ``.safetensors`` / a
  ``weights_only`` checkpoint plus an architecture from :func:`describe`; NCHW input);
- :func:`from_onnx` (an ``.onnx`` file; NCHW input).

Each returns a :class:`patchconv.nn.Sequential` that gives the source model's outputs at
inference and trains with ``compile`` / ``fit``. No loader unpickles.
"""

from __future__ import annotations

from patchconv.interop.keras import from_keras, save_keras_weights, to_keras
from patchconv.interop.onnx import from_onnx
from patchconv.interop.torch import describe, from_state_dict, from_torch

__all__ = [
    "describe",
    "from_keras",
    "from_onnx",
    "from_state_dict",
    "from_torch",
    "save_keras_weights",
    "to_keras",
]
