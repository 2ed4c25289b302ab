"""The `patchconv train` tasks: which network, which data, how long, and what to measure.

Two tasks:

- ``digits``: scikit-learn's 8x8 digits, a small CNN, Adam with one learning-rate drop.
- ``colors``: RGB images whose classes differ by hue as well as shape
  (:func:`patchconv.nn.datasets.make_colors`); the first layer's kernels must learn different
  slices per input channel to tell red from green, which :func:`channel_contrast` measures.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError
from patchconv.nn.conv import Conv2D
from patchconv.nn.core import Dense, Dropout
from patchconv.nn.datasets import COLOR_CLASSES, Split, grayscale, load_digits, make_colors
from patchconv.nn.losses import SoftmaxCrossEntropy
from patchconv.nn.model import Sequential
from patchconv.nn.optimizers import Adam, PiecewiseConstantDecay
from patchconv.nn.pooling import MaxPool2D
from patchconv.nn.reshaping import Flatten

__all__ = [
    "TASKS",
    "TrainResult",
    "channel_contrast",
    "colors_model",
    "digits_model",
    "random_channel_contrast",
    "task_optimizer",
    "train_task",
]


@dataclass(frozen=True)
class TaskDefaults:
    epochs: int
    batch_size: int
    learning_rate: float
    description: str


TASKS: dict[str, TaskDefaults] = {
    "digits": TaskDefaults(20, 32, 2e-3, "scikit-learn's 8x8 digits, 10 classes"),
    "colors": TaskDefaults(10, 32, 3e-3, "16x16 RGB squares and crosses in red, green, blue"),
}


def digits_model(seed: int = 0) -> Sequential:
    """conv 3x3x16 -> conv 3x3x32 -> max pool -> dropout -> dense 64 -> dense 10 (logits)."""
    return Sequential(
        [
            Conv2D(16, 3, padding="same", activation="relu", seed=seed, name="conv1"),
            Conv2D(32, 3, padding="same", activation="relu", seed=seed + 1, name="conv2"),
            MaxPool2D(2),
            Flatten(),
            Dropout(0.3, seed=seed + 2),
            Dense(64, activation="relu", seed=seed + 3),
            Dense(10, seed=seed + 4, name="logits"),
        ],
        input_shape=(8, 8, 1),
        name="digits_cnn",
    )


def colors_model(seed: int = 0, *, size: int = 16) -> Sequential:
    """conv 3x3x8 -> pool -> conv 3x3x16 -> pool -> dense 6 (logits), on RGB input."""
    return Sequential(
        [
            Conv2D(8, 3, padding="same", activation="relu", seed=seed, name="conv1"),
            MaxPool2D(2),
            Conv2D(16, 3, padding="same", activation="relu", seed=seed + 1, name="conv2"),
            MaxPool2D(2),
            Flatten(),
            Dense(len(COLOR_CLASSES), seed=seed + 2, name="logits"),
        ],
        input_shape=(size, size, 3),
        name="colors_cnn",
    )


def channel_contrast(kernel: np.ndarray) -> float:
    """How differently a conv kernel's filters respond to the input channels, on average.

    For filter f, ``r_c = mean over (kh, kw) of kernel[:, :, c, f]`` is its response to a flat
    patch of channel c alone (pure red, green or blue). The filter's contrast is the spread of
    those responses, ``std_c(r_c)``, relative to its weights' RMS; the kernel's is the mean
    over filters. Zero when every channel slice has the same mean (as training on grey images
    leaves what it learned); about 0.2 for independent random slices (see
    :func:`random_channel_contrast`); a filter whose slices are a colour detector (positive on
    one channel, negative on another) scores far higher.

    >>> k = np.zeros((3, 3, 3, 1)); k[:, :, 0, 0] = 1; k[:, :, 1, 0] = -1
    >>> round(channel_contrast(k), 3)
    1.0
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 4:
        raise PatchconvError(
            f"channel_contrast: kernel must be 4-D (kh, kw, c_in, c_out); got shape {k.shape}"
        )
    if k.shape[2] < 2:
        raise PatchconvError(
            f"channel_contrast: kernel needs >= 2 input channels; got kernel {k.shape}"
        )
    responses = k.mean(axis=(0, 1))  # (c_in, c_out)
    rms = np.sqrt((k * k).mean(axis=(0, 1, 2)))  # (c_out,)
    return float(np.mean(responses.std(axis=0) / np.maximum(rms, 1e-12)))


def random_channel_contrast(
    shape: tuple[int, int, int, int], *, draws: int = 200, seed: int = 0
) -> np.ndarray:
    """:func:`channel_contrast` of ``draws`` untrained Glorot-uniform kernels of ``shape``:
    what random starting weights score without any learning."""
    from patchconv.layers import initialize

    rng = np.random.default_rng(seed)
    return np.array(
        [channel_contrast(initialize("glorot_uniform", shape, seed=rng)) for _ in range(draws)]
    )


@dataclass
class TrainResult:
    """What one training run produced."""

    task: str
    model: Sequential
    history: dict[str, list[float]]
    test_accuracy: float
    test_loss: float
    epochs: int
    batch_size: int
    seed: int
    seconds: float
    train_samples: int
    test_samples: int
    initial_kernel: np.ndarray
    class_names: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_conv(self) -> Conv2D:
        return next(layer for layer in self.model.layers if isinstance(layer, Conv2D))


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """These layers multiply matrices of at most a few hundred rows and columns, where a
    second OpenBLAS thread buys nothing and, on a busy machine, its spin-waiting can make a
    run several times slower. threadpoolctl comes with scikit-learn (the train extra)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - the train extra installs it
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def task_optimizer(task: str, epochs: int, steps_per_epoch: int) -> Adam:
    """Adam at the task's learning rate for the first three quarters of the epochs, then at a
    fifth of it."""
    lr = TASKS[task].learning_rate
    drop_after = max(1, (3 * epochs) // 4) * steps_per_epoch
    return Adam(PiecewiseConstantDecay([drop_after - 1], [lr, lr / 5]))


def _data(task: str, seed: int, colorblind: bool) -> Split:
    if task == "digits":
        return load_digits(seed=seed)
    x_train, y_train = make_colors(1500, seed=seed)
    x_test, y_test = make_colors(400, seed=seed + 10_000)
    if colorblind:
        x_train, x_test = grayscale(x_train), grayscale(x_test)
    return Split(x_train, y_train, x_test, y_test, COLOR_CLASSES)


def train_task(
    task: str = "digits",
    *,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    verbose: int = 1,
    colorblind: bool = False,
) -> TrainResult:
    """Train the task's network from ``seed`` and evaluate it on the held-out test set.

    Parameters
    ----------
    task : {"digits", "colors"}
    epochs, batch_size : int, optional
        Default to the task's (:data:`TASKS`).
    seed : int
        Fixes the split (digits) or the generated images (colors), the initial weights, the
        dropout masks and the shuffling.
    verbose : int
        As in :meth:`Sequential.fit`.
    colorblind : bool
        colors only: train and test on :func:`~patchconv.nn.datasets.grayscale` images (the
        control in which colour cannot matter).

    Notes
    -----
    Adam runs at the task's learning rate for the first three quarters of the epochs and at a
    fifth of it after that.
    """
    func = "train_task"
    if task not in TASKS:
        raise PatchconvError(f"{func}: task must be one of {sorted(TASKS)}; got {task!r}")
    if colorblind and task != "colors":
        raise PatchconvError(f"{func}: colorblind applies to the colors task only; got {task!r}")
    defaults = TASKS[task]
    epochs = defaults.epochs if epochs is None else epochs
    batch_size = defaults.batch_size if batch_size is None else batch_size
    for label, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PatchconvError(f"{func}: {label} must be an int >= 1; got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise PatchconvError(f"{func}: seed must be an int >= 0; got {seed!r}")
    data = _data(task, seed, colorblind)
    model = digits_model(seed) if task == "digits" else colors_model(seed)
    steps_per_epoch = math.ceil(len(data.x_train) / batch_size)
    model.compile(task_optimizer(task, epochs, steps_per_epoch), SoftmaxCrossEntropy())
    result_kernel = model.layers[0]
    assert isinstance(result_kernel, Conv2D) and result_kernel.kernel is not None
    initial_kernel = result_kernel.kernel.copy()
    with _one_blas_thread():
        start = time.perf_counter()
        history = model.fit(
            data.x_train,
            data.y_train,
            epochs=epochs,
            batch_size=batch_size,
            verbose=verbose,
            validation_data=(data.x_test, data.y_test),
            seed=seed,
        )
        seconds = time.perf_counter() - start
        final = model.evaluate(data.x_test, data.y_test)
    result = TrainResult(
        task=task,
        model=model,
        history=history,
        test_accuracy=final["accuracy"],
        test_loss=final["loss"],
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        seconds=seconds,
        train_samples=len(data.x_train),
        test_samples=len(data.x_test),
        initial_kernel=initial_kernel,
        class_names=data.class_names,
    )
    if task == "colors":
        assert result_kernel.kernel is not None
        result.extra["channel_contrast"] = channel_contrast(result_kernel.kernel)
        result.extra["channel_contrast_untrained"] = channel_contrast(initial_kernel)
    return result
