"""patchconv.nn: a small training stack on patchconv's convolution.

Layers build lazily from their first input, run ``forward(x, training=False)`` and
``backward(grad_out)`` (returning the input's gradient and keeping the weights' gradients for
``grads()``), and keep their weights in Keras' layouts and order (``get_weights`` /
``set_weights`` / ``get_config``). Activations are NHWC by default; the convolution, pooling,
padding and flatten layers take ``data_format="channels_first"`` for NCHW models.

>>> import numpy as np
>>> from patchconv import nn
>>> model = nn.Sequential([nn.Conv2D(8, 3, padding="same", activation="relu", seed=0),
...                        nn.MaxPool2D(2), nn.Flatten(), nn.Dense(10, seed=1)])
>>> model.compile(nn.Adam(), nn.SoftmaxCrossEntropy())
>>> model(np.zeros((2, 8, 8, 1), dtype=np.float32)).shape
(2, 10)
"""

from __future__ import annotations

from patchconv.nn.activations import ACTIVATIONS
from patchconv.nn.base import Layer
from patchconv.nn.branches import AddBranches
from patchconv.nn.conv import Conv2D, DepthwiseConv2D
from patchconv.nn.core import (
    Activation,
    Dense,
    Dropout,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from patchconv.nn.losses import (
    LOSSES,
    Loss,
    MeanSquaredError,
    SoftmaxCrossEntropy,
    SparseCategoricalCrossentropy,
    get_loss,
)
from patchconv.nn.model import LAYERS, Sequential
from patchconv.nn.normalization import BatchNormalization
from patchconv.nn.optimizers import (
    OPTIMIZERS,
    SGD,
    Adam,
    Optimizer,
    PiecewiseConstantDecay,
    get_optimizer,
)
from patchconv.nn.pooling import AveragePool2D, GlobalAveragePooling2D, MaxPool2D
from patchconv.nn.reshaping import Flatten, ZeroPadding2D

# Keras' spellings.
MaxPooling2D = MaxPool2D
AveragePooling2D = AveragePool2D

__all__ = [
    "ACTIVATIONS",
    "LAYERS",
    "LOSSES",
    "OPTIMIZERS",
    "SGD",
    "Activation",
    "Adam",
    "AddBranches",
    "AveragePool2D",
    "AveragePooling2D",
    "BatchNormalization",
    "Conv2D",
    "Dense",
    "DepthwiseConv2D",
    "Dropout",
    "Flatten",
    "GlobalAveragePooling2D",
    "Layer",
    "LeakyReLU",
    "Loss",
    "MaxPool2D",
    "MaxPooling2D",
    "MeanSquaredError",
    "Optimizer",
    "PiecewiseConstantDecay",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "SoftmaxCrossEntropy",
    "SparseCategoricalCrossentropy",
    "Tanh",
    "ZeroPadding2D",
    "get_loss",
    "get_optimizer",
]
