"""ONNX -> patchconv: CNNs exported from PyTorch in the test (TorchScript exporter,
``dynamo=False``: the dynamo exporter needs onnxscript, which is not installed) and graphs
built with onnx.helper, run in patchconv and compared with ONNX Runtime."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn as tnn

from conftest import assert_close
from patchconv import PatchconvError, nn
from patchconv.interop import from_onnx
from patchconv.nn.branches import AddBranches


class _Residual(tnn.Module):
    def __init__(self, channels: int, project: bool) -> None:
        super().__init__()
        self.body = tnn.Sequential(
            tnn.Conv2d(channels, channels, 3, padding=1, bias=False),
            tnn.BatchNorm2d(channels),
            tnn.ReLU(),
            tnn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        )
        self.skip = tnn.Conv2d(channels, channels, 1) if project else tnn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def _cnn() -> tnn.Module:
    return tnn.Sequential(
        tnn.Conv2d(3, 8, 3, stride=2, padding=1),  # stride 2 on even sizes: pads (1, 1)
        tnn.BatchNorm2d(8),
        tnn.ReLU(),
        tnn.Conv2d(8, 8, 3, groups=8, dilation=2, padding=2),
        tnn.MaxPool2d(2),
        tnn.Conv2d(8, 6, 1),
        tnn.AvgPool2d(3, stride=1, padding=1),
        tnn.Flatten(),
        tnn.Linear(6 * 4 * 4, 10),
    )


def _resnet_like() -> tnn.Module:
    return tnn.Sequential(
        tnn.Conv2d(3, 6, 3, stride=2, padding=1),
        tnn.ReLU(),
        _Residual(6, project=False),
        _Residual(6, project=True),
        tnn.AdaptiveAvgPool2d(1),
        tnn.Flatten(),
        tnn.Linear(6, 4),
        tnn.Softmax(dim=1),
    )


def _export(module: tnn.Module, x: np.ndarray, path: Path, *, fold: bool) -> Path:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    module.eval()
    torch.onnx.export(
        module,
        (torch.from_numpy(x),),
        str(path),
        dynamo=False,
        do_constant_folding=fold,
        # PRESERVE keeps BatchNormalization nodes; EVAL with folding merges them into Conv.
        training=torch.onnx.TrainingMode.EVAL if fold else torch.onnx.TrainingMode.PRESERVE,
    )
    return path


def _onnxruntime(path: Path | bytes, x: np.ndarray) -> np.ndarray:
    source = path if isinstance(path, bytes) else str(path)
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("fold", [True, False], ids=["bn_folded", "bn_kept"])
@pytest.mark.parametrize("builder", [_cnn, _resnet_like], ids=["cnn", "resnet_like"])
def test_pytorch_export_matches_onnxruntime(builder: object, fold: bool, tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = builder()  # type: ignore[operator]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    path = _export(module, x, tmp_path / "model.onnx", fold=fold)
    model = from_onnx(path)
    assert isinstance(model, nn.Sequential)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("BatchNormalization" in ops) == (not fold)
    expected = _onnxruntime(path, x)
    assert_close(model.predict(x), expected, np.float32)
    with torch.no_grad():
        assert_close(model.predict(x), module(torch.from_numpy(x)).numpy(), np.float32)
    if builder is _resnet_like:
        assert sum(isinstance(layer, AddBranches) for layer in model.layers) == 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("builder", [_cnn, _resnet_like], ids=["cnn", "resnet_like"])
def test_a_float64_model_runs_in_float64(builder: object, tmp_path: Path) -> None:
    # Its layers were float32: the weights rounded, the output float32 (error 4e-8).
    torch.manual_seed(3)
    module = builder().double()  # type: ignore[operator]
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16))
    path = _export(module, x, tmp_path / "model64.onnx", fold=False)
    model = from_onnx(path)
    out = model.predict(x)
    assert out.dtype == np.float64
    with torch.no_grad():  # ONNX Runtime has no float64 Conv: the exported module is the oracle
        assert_close(out, module(torch.from_numpy(x)).numpy(), np.float64)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_fresh_batchnorm_export_whose_constants_are_identity_nodes(tmp_path: Path) -> None:
    """A freshly made BatchNorm2d exported as it is: torch shares its equal zero and one
    initializers through Identity nodes, which read as the constants they copy."""
    torch.manual_seed(2)
    module = tnn.Sequential(tnn.Conv2d(3, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU())
    module.eval()
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "fresh.onnx"
    torch.onnx.export(
        module,
        (torch.from_numpy(x),),
        str(path),
        dynamo=False,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Identity" in ops and "BatchNormalization" in ops  # what this test is about
    model = from_onnx(path)
    assert_close(model.predict(x), _onnxruntime(path, x), np.float32)


def test_identity_of_a_constant_is_that_constant_and_of_data_is_dropped() -> None:
    rng = np.random.default_rng(6)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["w"], ["w_copy"]),
        helper.make_node("Identity", ["w_copy"], ["w_copy2"]),  # a chain folds too
        helper.make_node("Identity", ["x"], ["x_copy"]),
        helper.make_node("Conv", ["x_copy", "w_copy2"], ["y"], name="conv"),
    ]
    model_proto = _graph_model(nodes, {"w": w}, (1, 3, 5, 5), (1, 2, 3, 3))
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    model = from_onnx(model_proto)
    assert_close(model.predict(x), _onnxruntime(model_proto.SerializeToString(), x), np.float32)


def _graph_model(
    nodes: list, inits: dict[str, np.ndarray], x_shape: tuple, y_shape: tuple, opset: int = 17
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_hand_built_graph_matches_onnxruntime(tmp_path: Path) -> None:
    """SAME_UPPER on even sizes, Clip as ReLU6, LeakyRelu, Reshape(0, -1), MatMul + Add."""
    rng = np.random.default_rng(3)
    inits = {
        "w": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "lo": np.array(0.0, np.float32),
        "hi": np.array(6.0, np.float32),
        "shape": np.array([0, -1], np.int64),
        "m": rng.standard_normal((4 * 2 * 3, 5)).astype(np.float32),
        "c": rng.standard_normal(5).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("LeakyRelu", ["r1"], ["r2"], alpha=0.2),
        helper.make_node(
            "MaxPool", ["r2"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]
        ),
        helper.make_node("Reshape", ["p1", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["mm"]),
        helper.make_node("Add", ["mm", "c"], ["y"]),
    ]
    model = _graph_model(nodes, inits, (2, 2, 8, 10), (2, 5))
    path = tmp_path / "hand.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((2, 2, 8, 10)).astype(np.float32) * 4
    ours = from_onnx(path)
    assert [type(la).__name__ for la in ours.layers] == [
        "Conv2D",
        "ReLU",
        "LeakyReLU",
        "MaxPool2D",
        "Flatten",
        "Dense",
    ]
    assert_close(ours.predict(x), _onnxruntime(path, x), np.float32)


ONNX_DATA = os.path.join(
    os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted"
)


@pytest.mark.parametrize(
    "case_dir", sorted(glob.glob(os.path.join(ONNX_DATA, "test_Conv2d*"))), ids=os.path.basename
)
def test_onnx_conformance_conv_cases_as_whole_models(case_dir: str) -> None:
    model = from_onnx(os.path.join(case_dir, "model.onnx"))
    for data_set in sorted(glob.glob(os.path.join(case_dir, "test_data_set_*"))):
        x = onnx.numpy_helper.to_array(onnx.load_tensor(os.path.join(data_set, "input_0.pb")))
        expected = onnx.numpy_helper.to_array(
            onnx.load_tensor(os.path.join(data_set, "output_0.pb"))
        )
        assert_close(model.predict(x), expected, expected.dtype)


# -- errors ------------------------------------------------------------------------------------
def test_random_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(
        PatchconvError, match=r"read_onnx: .*noise.onnx' is not (an ONNX model|a valid ONNX model)"
    ):
        from_onnx(tmp_path / "noise.onnx")
    good = _graph_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        {"pad": np.zeros(1000, np.float32)},
        (1, 1, 2, 2),
        (1, 1, 2, 2),
    ).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) - 500])
    with pytest.raises(
        PatchconvError, match=r"read_onnx: .*cut.onnx' is not (an ONNX model|a valid ONNX model)"
    ):
        from_onnx(tmp_path / "cut.onnx")


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="act"),
        helper.make_node("Resize", ["r", "", "scales"], ["y"], name="up"),
    ]
    model = _graph_model(
        nodes, {"scales": np.array([1, 1, 2, 2], np.float32)}, (1, 1, 2, 2), (1, 1, 4, 4)
    )
    with pytest.raises(
        PatchconvError,
        match=r"from_onnx: node 'up' \(Resize\): op 'Resize' is not supported; supported: \['Add'",
    ):
        from_onnx(model)


def test_non_constant_weight_and_unsupported_attribute(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 3, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
    )
    with pytest.raises(
        PatchconvError, match=r"from_onnx: only models with one input and one output are supported"
    ):
        from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    nodes = [
        helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], ceil_mode=1)
    ]
    with pytest.raises(
        PatchconvError, match=r"node 'pool' \(MaxPool\): attribute ceil_mode=1 is not supported"
    ):
        from_onnx(_graph_model(nodes, {}, (1, 1, 5, 5), (1, 1, 3, 3)))
    # A layer's own refusal names the node too (Keras' LeakyReLU takes no negative slope;
    # the message named neither the node nor the op).
    nodes = [helper.make_node("LeakyRelu", ["x"], ["y"], name="leaky", alpha=-0.2)]
    with pytest.raises(
        PatchconvError,
        match=r"from_onnx: node 'leaky' \(LeakyRelu\): LeakyReLU: negative_slope must be >= 0",
    ):
        from_onnx(_graph_model(nodes, {}, (1, 1, 3, 3), (1, 1, 3, 3)))


def _run_both(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return from_onnx(model).predict(x), _onnxruntime(model.SerializeToString(), x)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_before_opset_13_normalises_everything_from_its_axis(opset: int, axis: int) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    model = _graph_model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=axis)], {}, x.shape, x.shape, opset
    )
    ours, theirs = _run_both(model, x)
    assert_close(ours, theirs, np.float32)


def test_gemm_and_matmul_biases_follow_onnx_broadcasting() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    w = rng.standard_normal((6, 12)).astype(np.float32)
    for c in (rng.standard_normal((1, 6)), rng.standard_normal(6), np.array(0.5)):
        nodes = [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1, beta=0.5),
        ]
        model = _graph_model(nodes, {"w": w, "c": c.astype(np.float32)}, x.shape, (2, 6))
        ours, theirs = _run_both(model, x)
        assert_close(ours, theirs, np.float32)
    for op, inits in (
        ("Gemm", {"w": w, "c": np.ones((2, 6), np.float32)}),
        ("MatMul", {"w": w.T.copy(), "c": np.ones((2, 1), np.float32)}),
    ):
        nodes = [helper.make_node("Flatten", ["x"], ["f"])] + (
            [helper.make_node("Gemm", ["f", "w", "c"], ["y"], transB=1, name="g")]
            if op == "Gemm"
            else [
                helper.make_node("MatMul", ["f", "w"], ["m"]),
                helper.make_node("Add", ["m", "c"], ["y"], name="g"),
            ]
        )
        with pytest.raises(PatchconvError, match=r"node 'g' .*the bias must be the same for"):
            from_onnx(_graph_model(nodes, inits, x.shape, (2, 6)))


def test_reshape_that_is_not_a_flatten_and_training_mode_are_refused() -> None:
    x_shape = (2, 16, 1, 1)
    for target in ([-1, 8], [4, -1]):
        nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")]
        inits = {"s": np.array(target, np.int64)}
        with pytest.raises(PatchconvError, match=r"node 'r' \(Reshape\): only a reshape to"):
            from_onnx(_graph_model(nodes, inits, x_shape, (4, 8)))
    x = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    for target in ([-1, 16], [2, -1], [0, -1]):  # flattens: the batch (fixed at 2) is kept
        nodes = [helper.make_node("Reshape", ["x", "s"], ["y"])]
        model = _graph_model(nodes, {"s": np.array(target, np.int64)}, x_shape, (2, 16))
        ours, theirs = _run_both(model, x)
        assert_close(ours, theirs, np.float32)
    nodes = [helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="d")]
    inits = {"r": np.array(0.5, np.float32), "t": np.array(True)}
    with pytest.raises(PatchconvError, match=r"node 'd' \(Dropout\): Dropout in training mode"):
        from_onnx(_graph_model(nodes, inits, x_shape, x_shape))
    stats = {k: np.ones(16, np.float32) for k in ("s", "b", "m", "v")}
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["x", "s", "b", "m", "v"],
            ["y", "rm", "rv", "sm", "sv"],
            name="bn",
        )
    ]
    with pytest.raises(PatchconvError, match=r"node 'bn' \(BatchNormalization\): training"):
        from_onnx(_graph_model(nodes, stats, x_shape, x_shape, 13))


def test_add_branches_gradients_config_and_saving(tmp_path: Path) -> None:
    """The residual block trains like any layer: finite differences, config, save/load."""
    rng = np.random.default_rng(0)
    block = AddBranches(
        [[nn.Conv2D(2, 3, padding="same", dtype="float64", seed=0), nn.Tanh(dtype="float64")], []],
        dtype="float64",
    )
    x = rng.standard_normal((2, 5, 5, 2))
    g = rng.standard_normal((2, 5, 5, 2))
    block.forward(x, training=True)
    grad_x = block.backward(g)
    (grad_kernel, _) = block.grads()
    eps = 1e-6
    for index in [(0, 1, 2, 0), (1, 4, 0, 1)]:
        bump = np.zeros_like(x)
        bump[index] = eps
        numeric = ((block(x + bump) - block(x - bump)) * g).sum() / (2 * eps)
        np.testing.assert_allclose(grad_x[index], numeric, rtol=1e-6)
    kernel = block.branches[0][0].kernel
    kernel[1, 1, 0, 1] += eps
    up = (block(x) * g).sum()
    kernel[1, 1, 0, 1] -= 2 * eps
    down = (block(x) * g).sum()
    kernel[1, 1, 0, 1] += eps
    np.testing.assert_allclose(grad_kernel[1, 1, 0, 1], (up - down) / (2 * eps), rtol=1e-6)

    again = AddBranches.from_config(block.get_config())
    model = nn.Sequential([block])
    copy = nn.Sequential([again])
    model.build(x.shape)
    copy.build(x.shape)
    model.save_weights(tmp_path / "w.npz")
    copy.load_weights(tmp_path / "w.npz")
    np.testing.assert_array_equal(copy.predict(x), model.predict(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_imported_resnet_trains(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    torch.manual_seed(2)
    module = _resnet_like()
    module[-1] = tnn.Identity()  # logits, for the softmax cross-entropy
    model = from_onnx(_export(module, x[:1], tmp_path / "r.onnx", fold=False))
    y = np.arange(8) % 4
    model.compile(nn.Adam(1e-2), nn.SoftmaxCrossEntropy())
    before = model.evaluate(x, y)["loss"]
    losses = [model.train_on_batch(x, y)["loss"] for _ in range(12)]
    assert losses[-1] < 0.95 * losses[0], losses
    # BatchNorm's moving statistics (ONNX momentum 0.9) follow more slowly.
    assert model.evaluate(x, y)["loss"] < before
