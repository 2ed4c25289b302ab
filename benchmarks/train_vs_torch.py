"""Train the `patchconv train` digits network in patchconv.nn and in PyTorch, in one run.

Same data (scikit-learn's digits, the same 80/20 split), same starting weights (copied), same
minibatch order, same epochs, batch size and optimizer (Adam, Keras' epsilon, the same
learning-rate drop). Prints the median wall time of each, their ratio, the test accuracies,
and, per layer, the time of one forward + backward at the training batch size.

Usage (unset the OpenBLAS variables for benchmarks only):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/train_vs_torch.py

patchconv runs as the CLI runs it, with one BLAS thread (see
patchconv.nn.training._one_blas_thread); PyTorch runs with its default threads and with one.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info, threadpool_limits

from patchconv import nn
from patchconv.nn.datasets import load_digits
from patchconv.nn.training import TASKS, digits_model, task_optimizer


def orders(n: int, epochs: int, seed: int) -> list[np.ndarray]:
    """The minibatch order Sequential.fit uses: one permutation per epoch from ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for _ in range(epochs)]


class TorchDigits(torch.nn.Module):
    """The same network as patchconv.nn.training.digits_model, NCHW."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        (k1, b1, k2, b2, d1, e1, d2, e2) = (torch.from_numpy(w.copy()) for w in model.get_weights())
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(512, 64)
        self.fc2 = torch.nn.Linear(64, 10)
        with torch.no_grad():
            self.conv1.weight.copy_(k1.permute(3, 2, 0, 1))
            self.conv1.bias.copy_(b1)
            self.conv2.weight.copy_(k2.permute(3, 2, 0, 1))
            self.conv2.bias.copy_(b2)
            # patchconv flattens NHWC as (h, w, c); PyTorch NCHW as (c, h, w).
            self.fc1.weight.copy_(d1.reshape(4, 4, 32, 64).permute(3, 2, 0, 1).reshape(64, 512))
            self.fc1.bias.copy_(e1)
            self.fc2.weight.copy_(d2.T)
            self.fc2.bias.copy_(e2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.dropout(torch.flatten(h, 1), 0.3, self.training)
        return self.fc2(F.relu(self.fc1(h)))


def train_patchconv(data: Any, epochs: int, batch_size: int, seed: int) -> tuple[float, float]:
    model = digits_model(seed)
    steps = math.ceil(len(data.x_train) / batch_size)
    model.compile(task_optimizer("digits", epochs, steps), nn.SoftmaxCrossEntropy())
    with threadpool_limits(1, user_api="blas"):
        start = time.perf_counter()
        model.fit(
            data.x_train, data.y_train, epochs=epochs, batch_size=batch_size, verbose=0, seed=seed
        )
        seconds = time.perf_counter() - start
        accuracy = model.evaluate(data.x_test, data.y_test)["accuracy"]
    return seconds, accuracy


def train_torch(
    data: Any, epochs: int, batch_size: int, seed: int, threads: int
) -> tuple[float, float]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        net = TorchDigits(digits_model(seed))
        lr = TASKS["digits"].learning_rate
        opt = torch.optim.Adam(net.parameters(), lr=lr, eps=1e-7)
        x = torch.from_numpy(np.ascontiguousarray(data.x_train.transpose(0, 3, 1, 2)))
        y = torch.from_numpy(data.y_train)
        steps = math.ceil(len(x) / batch_size)
        drop_after = max(1, (3 * epochs) // 4) * steps
        step = 0
        net.train()
        start = time.perf_counter()
        for order in orders(len(x), epochs, seed):
            idx_all = torch.from_numpy(order)
            for b in range(0, len(x), batch_size):
                if step == drop_after:
                    for group in opt.param_groups:
                        group["lr"] = lr / 5
                idx = idx_all[b : b + batch_size]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()
                step += 1
        seconds = time.perf_counter() - start
        net.eval()
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(data.x_test.transpose(0, 3, 1, 2)))
            accuracy = float((net(xt).argmax(1).numpy() == data.y_test).mean())
    finally:
        torch.set_num_threads(previous)
    return seconds, accuracy


def layer_times(batch_size: int, repeats: int) -> list[tuple[str, float, float]]:
    """Median forward + backward time per layer of the network, patchconv vs PyTorch (default
    threads), at the training batch size."""
    model = digits_model(0)
    shape = (batch_size, 8, 8, 1)
    rng = np.random.default_rng(0)
    rows = []
    x = rng.random(shape).astype(np.float32)
    for layer in model.layers:
        y = layer.forward(x, training=True)
        g = rng.standard_normal(y.shape).astype(np.float32)

        def ours(layer: nn.Layer = layer, x: np.ndarray = x, g: np.ndarray = g) -> None:
            layer.forward(x, training=True)
            layer.backward(g)

        with threadpool_limits(1, user_api="blas"):
            t_ours = _median(ours, repeats)
        t_theirs = _median(_torch_layer(layer, x, g), repeats)
        rows.append((f"{layer.name} ({type(layer).__name__})", t_ours, t_theirs))
        x = y
    return rows


def _torch_layer(layer: nn.Layer, x: np.ndarray, g: np.ndarray) -> Callable[[], None]:
    xt = torch.from_numpy(np.ascontiguousarray(x if x.ndim == 2 else x.transpose(0, 3, 1, 2)))
    gt = torch.from_numpy(np.ascontiguousarray(g if g.ndim == 2 else g.transpose(0, 3, 1, 2)))
    xt.requires_grad_(True)
    op: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(layer, nn.Conv2D):
        mod = torch.nn.Conv2d(x.shape[-1], layer.filters, 3, padding=1)
        op = lambda t: F.relu(mod(t))  # noqa: E731
    elif isinstance(layer, nn.MaxPool2D):
        op = lambda t: F.max_pool2d(t, 2)  # noqa: E731
    elif isinstance(layer, nn.Flatten):
        op = lambda t: torch.flatten(t, 1)  # noqa: E731
    elif isinstance(layer, nn.Dropout):
        op = lambda t: F.dropout(t, 0.3, True)  # noqa: E731
    else:
        assert isinstance(layer, nn.Dense)
        lin = torch.nn.Linear(x.shape[-1], layer.units)
        op = (lambda t: F.relu(lin(t))) if layer.activation == "relu" else lin

    def run() -> None:
        xt.grad = None
        op(xt).backward(gt)

    return run


def _median(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=TASKS["digits"].epochs)
    parser.add_argument("--batch-size", type=int, default=TASKS["digits"].batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each, interleaved")
    args = parser.parse_args()
    blas = [
        f"{i['internal_api']} {i.get('version')} {i.get('architecture')} "
        f"({i['num_threads']} threads)"
        for i in threadpool_info()
        if i["user_api"] == "blas"
    ]
    print(f"NumPy BLAS: {'; '.join(blas)}")
    print(f"PyTorch {torch.__version__}, default threads {torch.get_num_threads()}")
    data = load_digits(seed=args.seed)
    print(
        f"digits: {len(data.x_train)} train / {len(data.x_test)} test, {args.epochs} epochs, "
        f"batch {args.batch_size}, Adam, {args.rounds} interleaved rounds (median)\n"
    )
    runs: dict[str, list[tuple[float, float]]] = {
        "patchconv": [],
        "torch": [],
        "torch 1 thread": [],
    }
    for _ in range(args.rounds):
        runs["patchconv"].append(train_patchconv(data, args.epochs, args.batch_size, args.seed))
        time.sleep(0.3)  # let BLAS worker threads stop spinning before the next library runs
        runs["torch"].append(
            train_torch(data, args.epochs, args.batch_size, args.seed, torch.get_num_threads())
        )
        time.sleep(0.3)
        runs["torch 1 thread"].append(train_torch(data, args.epochs, args.batch_size, args.seed, 1))
        time.sleep(0.3)
    medians = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    best = {k: min(t for t, _ in v) for k, v in runs.items()}
    print(f"{'trainer':<16}{'median s':>9}{'best s':>8}{'accuracy':>10}   runs s")
    for key, values in runs.items():
        times = ", ".join(f"{t:.2f}" for t, _ in values)
        print(f"{key:<16}{medians[key]:>9.2f}{best[key]:>8.2f}{values[0][1]:>10.4f}   {times}")
    print(
        f"\nratio patchconv / torch, median (best): "
        f"{medians['patchconv'] / medians['torch']:.2f} ({best['patchconv'] / best['torch']:.2f}); "
        f"vs torch with 1 thread: {medians['patchconv'] / medians['torch 1 thread']:.2f} "
        f"({best['patchconv'] / best['torch 1 thread']:.2f})"
    )
    print(f"\nper layer, forward + backward at batch {args.batch_size} (median of 200, us):")
    print(f"{'layer':<26}{'patchconv':>11}{'torch':>9}{'ratio':>8}")
    for name, ours, theirs in layer_times(args.batch_size, 200):
        print(f"{name:<26}{ours * 1e6:>11.0f}{theirs * 1e6:>9.0f}{ours / theirs:>8.1f}")


if __name__ == "__main__":
    main()
