"""Sequential: a stack of layers with Keras' compile / fit / evaluate / predict.

Weights save to ``.npz`` (``np.savez``) under the keys ``layers.{i}.{ClassName}.{weight}`` and load
with ``np.load(allow_pickle=False)``; a file that does not match the model is refused with the
keys or shapes that differ, before any weight changes.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np

from patchconv._spec import PatchconvError, as_float_array
from patchconv.layers import batch_agnostic, build_shape
from patchconv.nn import branches, conv, core, normalization, pooling, reshaping
from patchconv.nn.base import Layer, set_all_weights
from patchconv.nn.losses import Loss, get_loss
from patchconv.nn.optimizers import Optimizer, get_optimizer

__all__ = ["LAYERS", "Sequential"]

#: Every layer class by name, for :meth:`Sequential.from_config` (and importers).
LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls
    for module in (branches, conv, core, normalization, pooling, reshaping)
    for cls in (getattr(module, name) for name in module.__all__)
}

FORMAT = "patchconv.nn.Sequential weights v1"
_FORMAT_KEY = "format"


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _correct(y_true: np.ndarray, y_pred: np.ndarray, sparse: bool) -> float:
    """How many samples are right: argmax against the label (or the target's argmax), each
    sample counting the share of its labels that are right where it has several (a label per
    pixel), so that divided by the samples it is Keras' accuracy, the mean over all labels."""
    if sparse:
        hits = y_pred.argmax(axis=-1) == y_true.reshape(y_pred.shape[:-1])
    elif y_pred.shape[-1] == 1:
        hits = (y_pred > 0.5) == (y_true.reshape(y_pred.shape) > 0.5)
    else:
        hits = y_pred.argmax(axis=-1) == y_true.argmax(axis=-1)
    if hits.size == 0:
        return 0.0
    return float(hits.reshape(len(hits), -1).mean(axis=1).sum())


class Sequential:
    """A stack of :class:`~patchconv.nn.base.Layer` s run in order.

    Parameters
    ----------
    layers : sequence of Layer, optional
    input_shape : tuple of int, optional
        One sample's shape (no batch axis), as Keras' ``input_shape``: builds at once.
    name : str

    Examples
    --------
    >>> import numpy as np
    >>> from patchconv import nn
    >>> model = nn.Sequential([nn.Conv2D(4, 3, activation="relu", seed=0), nn.Flatten(),
    ...                        nn.Dense(2, seed=1)], input_shape=(5, 5, 1))
    >>> model.compile(nn.SGD(0.1), nn.SoftmaxCrossEntropy())
    >>> x = np.random.default_rng(0).random((8, 5, 5, 1)); y = np.arange(8) % 2
    >>> history = model.fit(x, y, epochs=2, batch_size=4, verbose=0, seed=0)
    >>> sorted(history), model.predict(x).shape
    (['accuracy', 'loss'], (8, 2))
    """

    def __init__(
        self,
        layers: Sequence[Layer] | None = None,
        *,
        input_shape: Sequence[int] | None = None,
        name: str = "sequential",
    ) -> None:
        self.name = name
        self.layers: list[Layer] = []
        self.optimizer: Optimizer | None = None
        self.loss: Loss | None = None
        self.metrics: list[str] = []
        self.output_shapes: list[tuple[int, ...]] = []
        self.input_shape: tuple[int, ...] | None = None
        for layer in layers or []:
            self.add(layer)
        if input_shape is not None:
            self.build((1, *input_shape))

    # -- structure ------------------------------------------------------------------------
    def add(self, layer: Layer) -> None:
        """Append a layer; a repeated name gets Keras' ``_1``, ``_2`` suffix."""
        if not isinstance(layer, Layer):
            raise TypeError(
                f"Sequential.add: layer must be a patchconv.nn Layer; got {type(layer).__name__}"
            )
        if any(layer is other for other in self.layers):
            raise PatchconvError(f"Sequential.add: layer {layer.name!r} is already in the model")
        names = {other.name for other in self.layers}
        if layer.name in names:
            base, k = layer.name, 1
            while f"{base}_{k}" in names:
                k += 1
            layer.name = f"{base}_{k}"
        if self.built:  # as Keras: a built model builds what is added to it
            shape = self.output_shapes[-1] if self.output_shapes else self.input_shape
            assert shape is not None
            if not layer.built:
                layer.build(shape)
            self.output_shapes.append(tuple(layer.compute_output_shape(shape)))
        self.layers.append(layer)

    @property
    def built(self) -> bool:
        return self.input_shape is not None

    def build(self, input_shape: Sequence[int]) -> None:
        """Build every layer for inputs of ``input_shape`` (batch axis included)."""
        shape = build_shape(input_shape, func="Sequential.build")
        self.input_shape = shape
        self.output_shapes = []
        for layer in self.layers:
            if not layer.built:
                layer.build(shape)
            shape = tuple(layer.compute_output_shape(shape))
            self.output_shapes.append(shape)

    @batch_agnostic
    def compute_output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        shape = tuple(int(v) for v in input_shape)
        for layer in self.layers:
            shape = tuple(layer.compute_output_shape(shape))
        return shape

    # -- running --------------------------------------------------------------------------
    def forward(self, x: Any, training: bool = False) -> np.ndarray:
        """Run every layer; keeps what :meth:`backward` needs."""
        out = as_float_array(x, func="Sequential", name="x")
        if not self.built:
            self.build(out.shape)
        for layer in self.layers:
            out = layer.forward(out, training=training)
        return out

    def __call__(self, x: Any, training: bool = False) -> np.ndarray:
        return self.forward(x, training=training)

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Back through every layer; returns the gradient with respect to the model's input."""
        g = grad_out
        for layer in reversed(self.layers):
            g = layer.backward(g)
        return g

    def _backward_for_step(self, grad_out: np.ndarray) -> None:
        """:meth:`backward` as a training step needs it: the weights' gradients only. The
        first layer with trainable weights gets :meth:`Layer.backward_weights`, and the layers
        before it (none with trainable weights) are skipped: no gradient of the input is
        computed (measured: 1.7 ms of a 6.6 ms backward for N64 32x32 3 -> 32)."""
        first = next((i for i, layer in enumerate(self.layers) if layer.params()), None)
        if first is None:
            return
        g = grad_out
        for layer in reversed(self.layers[first + 1 :]):
            g = layer.backward(g)
        self.layers[first].backward_weights(g)

    def params(self) -> list[np.ndarray]:
        return [p for layer in self.layers for p in layer.params()]

    def grads(self) -> list[np.ndarray]:
        return [g for layer in self.layers for g in layer.grads()]

    def count_params(self) -> int:
        return sum(layer.count_params() for layer in self.layers)

    # -- training -------------------------------------------------------------------------
    def compile(
        self,
        optimizer: Any = "adam",
        loss: Any = "softmax_cross_entropy",
        metrics: Sequence[str] | None = None,
    ) -> None:
        """Choose the optimizer, the loss and the metrics (only "accuracy"; by default it is
        reported for the cross-entropy losses)."""
        self.optimizer = get_optimizer(optimizer, func="Sequential.compile")
        self.loss = get_loss(loss, func="Sequential.compile")
        if metrics is None:
            metrics = ["accuracy"] if self.loss.sparse_labels else []
        for metric in metrics:
            if metric not in ("accuracy", "acc"):
                raise PatchconvError(
                    f"Sequential.compile: metrics may only hold 'accuracy'; got {metric!r}"
                )
        self.metrics = ["accuracy"] if metrics else []

    def _compiled(self, func: str) -> tuple[Optimizer, Loss]:
        if self.optimizer is None or self.loss is None:
            raise PatchconvError(f"Sequential.{func}: call compile(optimizer, loss) first")
        return self.optimizer, self.loss

    def _data(self, x: Any, y: Any, func: str) -> tuple[np.ndarray, np.ndarray]:
        xs = as_float_array(x, func=f"Sequential.{func}", name="x")
        ys = np.asarray(y)
        if xs.ndim < 1 or ys.ndim < 1 or len(xs) != len(ys):
            raise PatchconvError(
                f"Sequential.{func}: x and y must hold the same number of samples; got x "
                f"{xs.shape}, y {ys.shape}"
            )
        return xs, ys

    @staticmethod
    def _batch_size(batch_size: Any, func: str) -> int:
        if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool):
            raise TypeError(f"Sequential.{func}: batch_size must be an int; got {batch_size!r}")
        if batch_size < 1:
            raise PatchconvError(f"Sequential.{func}: batch_size must be >= 1; got {batch_size}")
        return int(batch_size)

    def train_on_batch(self, x: Any, y: Any) -> dict[str, float]:
        """One optimizer step on one batch; returns its loss (and accuracy)."""
        optimizer, loss_fn = self._compiled("train_on_batch")
        out = self.forward(x, training=True)
        loss, grad = loss_fn.value_and_grad(y, out)
        self._backward_for_step(grad)
        optimizer.step(self.params(), self.grads())
        result = {"loss": loss}
        if self.metrics:
            result["accuracy"] = _correct(np.asarray(y), out, loss_fn.sparse_labels) / max(
                1, len(out)
            )
        return result

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int = 1,
        validation_split: float = 0.0,
        validation_data: tuple[Any, Any] | None = None,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> dict[str, list[float]]:
        """Train for ``epochs`` passes over ``(x, y)`` in minibatches.

        Parameters
        ----------
        batch_size, epochs : int
        verbose : int
            0 silent; 1 a tqdm progress bar per epoch with the running loss and accuracy
            (on stderr; one line per epoch where tqdm is not installed); 2 one line per epoch.
        validation_split : float
            The last fraction of the samples (before shuffling, as in Keras) is held out and
            evaluated after each epoch.
        validation_data : (x_val, y_val), optional
            Evaluated after each epoch; overrides ``validation_split``.
        shuffle : bool
            Reshuffle the training samples every epoch, from ``seed``.
        seed : int, optional

        Returns
        -------
        dict
            ``{"loss": [...], "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``, one
            value per epoch (accuracy only when compiled with it; val_* only with validation).
        """
        func = "fit"
        optimizer, loss_fn = self._compiled(func)
        xs, ys = self._data(x, y, func)
        batch_size = self._batch_size(batch_size, func)
        if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
            raise PatchconvError(f"Sequential.fit: epochs must be an int >= 0; got {epochs!r}")
        if (
            not isinstance(validation_split, numbers.Real)
            or isinstance(validation_split, bool)
            or not 0 <= validation_split < 1
        ):
            raise PatchconvError(
                f"Sequential.fit: validation_split must be in [0, 1); got {validation_split!r}"
            )
        if validation_data is None and validation_split > 0:
            n_val = len(xs) - math.floor(len(xs) * (1 - validation_split))  # Keras split point
            if n_val < 1 or n_val >= len(xs):
                raise PatchconvError(
                    f"Sequential.fit: validation_split {validation_split} of {len(xs)} samples "
                    f"leaves {n_val} for validation and {len(xs) - n_val} for training; both "
                    "must be >= 1"
                )
            validation_data = (xs[-n_val:], ys[-n_val:])
            xs, ys = xs[:-n_val], ys[:-n_val]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                shown = type(validation_data).__name__
                if isinstance(validation_data, (tuple, list)):
                    shown = f"{shown} of {len(validation_data)}"
                raise PatchconvError(
                    f"Sequential.fit: validation_data must be (x_val, y_val); got {shown} "
                    "(sample weights are not supported)"
                )
            validation_data = self._data(*validation_data, "fit")
        if not self.built:
            self.build(xs.shape)
        rng = np.random.default_rng(seed)
        history: dict[str, list[float]] = {"loss": []}
        if self.metrics:
            history["accuracy"] = []
        if validation_data is not None:
            history["val_loss"] = []
            if self.metrics:
                history["val_accuracy"] = []
        n = len(xs)
        slices = _batches(n, batch_size)
        if verbose == 1:
            try:  # tqdm comes with the train extra, not with patchconv itself
                from tqdm.auto import tqdm
            except ImportError:
                verbose = 2  # a line an epoch instead of a bar
        for epoch in range(int(epochs)):
            order = rng.permutation(n) if shuffle else np.arange(n)
            bar = None
            if verbose == 1:
                bar = tqdm(
                    total=len(slices),
                    desc=f"epoch {epoch + 1}/{epochs}",
                    unit="batch",
                    file=sys.stderr,
                    leave=True,
                    dynamic_ncols=True,
                )
            start = time.perf_counter()
            total_loss, correct, seen = 0.0, 0.0, 0
            for k, sl in enumerate(slices):
                idx = order[sl]
                xb, yb = xs[idx], ys[idx]
                out = self.forward(xb, training=True)
                loss, grad = loss_fn.value_and_grad(yb, out)
                self._backward_for_step(grad)
                optimizer.step(self.params(), self.grads())
                total_loss += loss * len(idx)
                seen += len(idx)
                if self.metrics:
                    correct += _correct(yb, out, loss_fn.sparse_labels)
                if bar is not None:
                    bar.update(1)
                    if k % 5 == 4 or k == len(slices) - 1:
                        postfix = {"loss": f"{total_loss / seen:.4f}"}
                        if self.metrics:
                            postfix["accuracy"] = f"{correct / seen:.4f}"
                        bar.set_postfix(postfix, refresh=False)
            history["loss"].append(total_loss / max(1, seen))
            if self.metrics:
                history["accuracy"].append(correct / max(1, seen))
            if validation_data is not None:
                val = self.evaluate(*validation_data, batch_size=max(batch_size, 256))
                history["val_loss"].append(val["loss"])
                if self.metrics:
                    history["val_accuracy"].append(val["accuracy"])
            line = ", ".join(f"{key} {values[-1]:.4f}" for key, values in history.items())
            if bar is not None:
                bar.set_postfix_str(line, refresh=True)
                bar.close()
            elif verbose == 2:
                took = time.perf_counter() - start
                print(f"epoch {epoch + 1}/{epochs} ({took:.2f} s): {line}", file=sys.stderr)
        return history

    def evaluate(self, x: Any, y: Any, *, batch_size: int = 256) -> dict[str, float]:
        """Mean loss (and accuracy) over ``(x, y)`` at inference (Dropout off, BatchNorm on
        its moving statistics)."""
        _, loss_fn = self._compiled("evaluate")
        xs, ys = self._data(x, y, "evaluate")
        batch_size = self._batch_size(batch_size, "evaluate")
        total_loss, correct = 0.0, 0.0
        for sl in _batches(len(xs), batch_size):
            out = self.forward(xs[sl], training=False)
            total_loss += loss_fn(ys[sl], out) * len(out)
            if self.metrics:
                correct += _correct(ys[sl], out, loss_fn.sparse_labels)
        n = max(1, len(xs))
        result = {"loss": total_loss / n}
        if self.metrics:
            result["accuracy"] = correct / n
        return result

    def predict(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """The model's outputs at inference, computed ``batch_size`` samples at a time."""
        xs = as_float_array(x, func="Sequential.predict", name="x")
        batch_size = self._batch_size(batch_size, "predict")
        if len(xs) == 0:
            raise PatchconvError(f"Sequential.predict: x must hold samples; got x {xs.shape}")
        outs = [self.forward(xs[sl], training=False) for sl in _batches(len(xs), batch_size)]
        return np.concatenate(outs, axis=0)

    # -- weights --------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """Every layer's weights in order, each layer's in Keras' order (copies)."""
        return [w for layer in self.layers for w in layer.get_weights()]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Load :meth:`get_weights`' list, all or nothing: on any error (count, shape, dtype)
        every layer keeps its weights."""
        set_all_weights(self.layers, weights, func="Sequential.set_weights")

    def weights_dict(self) -> dict[str, np.ndarray]:
        """``{"layers.{i}.{ClassName}.{weight}": array}``: what :meth:`save_weights` writes."""
        out = {}
        for i, layer in enumerate(self.layers):
            for wname, arr in zip(layer.weight_names(), layer.get_weights(), strict=True):
                out[f"layers.{i}.{type(layer).__name__}.{wname}"] = arr
        return out

    def save_weights(
        self, path: str | PathLike[str], *, extra: Mapping[str, Any] | None = None
    ) -> None:
        """Write every weight to ``path`` with ``np.savez`` (exactly that file name).

        ``extra`` arrays are stored beside them under their own keys (for other readers, e.g.
        ``kernel`` and ``bias`` of the first layer for ``patchconv explain --weights``);
        :meth:`load_weights` ignores them.
        """
        if not self.built:
            raise PatchconvError("Sequential.save_weights: the model is not built yet")
        arrays: dict[str, Any] = self.weights_dict()
        arrays[_FORMAT_KEY] = np.array(FORMAT)
        for key, value in (extra or {}).items():
            if key in arrays or key.startswith("layers."):
                raise PatchconvError(
                    f"Sequential.save_weights: extra key {key!r} clashes with the model's keys"
                )
            arrays[key] = np.asarray(value)
        with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
            np.savez(fh, **arrays)

    def load_weights(self, path: str | PathLike[str]) -> None:
        """Load a :meth:`save_weights` file into this (built) model.

        Raises PatchconvError, naming the keys or shapes that differ, when the file was saved
        from another architecture; nothing changes then.
        """
        func = "Sequential.load_weights"
        if not self.built:
            raise PatchconvError(
                f"{func}: build the model first (Sequential(..., input_shape=...), build() or "
                "one call) so its weight shapes are known"
            )
        try:
            data = np.load(path, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise PatchconvError(
                f"{func}: {path} is not an .npz weights file ({type(exc).__name__})"
            ) from exc
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise PatchconvError(f"{func}: {path} is not an .npz weights file (a single array)")
        try:
            stored = {key: data[key] for key in data.files}
        except ValueError as exc:  # an object array would need unpickling: refused
            raise PatchconvError(f"{func}: {path} holds an array we cannot read ({exc})") from exc
        finally:
            data.close()
        if _FORMAT_KEY not in stored:
            raise PatchconvError(
                f"{func}: {path} is not a patchconv weights file (no {_FORMAT_KEY!r} key); it "
                f"holds {sorted(stored)[:8]}"
            )
        if stored[_FORMAT_KEY].shape != () or str(stored[_FORMAT_KEY]) != FORMAT:
            raise PatchconvError(
                f"{func}: {path}'s {_FORMAT_KEY!r} must be {FORMAT!r}; got "
                f"{str(stored[_FORMAT_KEY])[:80]!r}"
            )
        expected = self.weights_dict()
        found = {k: v for k, v in stored.items() if k.startswith("layers.")}
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        if missing or unexpected:
            raise PatchconvError(
                f"{func}: {path} does not match this model's layers: missing {missing[:6]}"
                f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                f"{' ...' if len(unexpected) > 6 else ''}"
            )
        for key, arr in expected.items():
            if found[key].shape != arr.shape:
                raise PatchconvError(
                    f"{func}: {key} must have shape {arr.shape}; got {found[key].shape} in {path}"
                )
        # In the model's own order: set_all_weights restores every layer on any later refusal.
        set_all_weights(self.layers, [found[key] for key in expected], func=func)

    # -- description ----------------------------------------------------------------------
    def summary(self) -> str:
        """A Keras-like table: layer, output shape, parameter count."""
        if not self.built:
            raise PatchconvError("Sequential.summary: the model is not built yet")
        rows = [("Layer (type)", "Output shape", "Params")]
        for layer, shape in zip(self.layers, self.output_shapes, strict=True):
            rows.append(
                (
                    f"{layer.name} ({type(layer).__name__})",
                    str((None, *shape[1:])),
                    str(layer.count_params()),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"Model: {self.name}"]
        for k, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
            if k == 0:
                lines.append("-" * (sum(widths) + 4))
        lines.append(f"Total params: {self.count_params()}")
        return "\n".join(lines)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layers": [
                {"class_name": type(layer).__name__, "config": layer.get_config()}
                for layer in self.layers
            ],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Sequential:
        """A new, unbuilt model from :meth:`get_config`'s dict (layer classes from
        :data:`LAYERS`)."""
        layers = []
        for entry in config.get("layers", []):
            name = entry.get("class_name")
            if name not in LAYERS:
                raise PatchconvError(
                    f"Sequential.from_config: unknown layer class {name!r}; known: {sorted(LAYERS)}"
                )
            layers.append(LAYERS[name].from_config(dict(entry.get("config", {}))))
        return cls(layers, name=config.get("name", "sequential"))

    def __repr__(self) -> str:
        return f"Sequential({[type(layer).__name__ for layer in self.layers]})"
