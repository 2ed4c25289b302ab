"""Sequential, the optimizers and weight files: whole-network gradients against PyTorch (an NCHW
model represented exactly), update rules against Keras' optimizers, training behaviour, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from patchconv import PatchconvError, nn


def small_cnn(
    data_format: str = "channels_last", dtype: str = "float64", seed: int = 0
) -> nn.Sequential:
    return nn.Sequential(
        [
            nn.ZeroPadding2D(1, data_format=data_format),
            nn.Conv2D(
                4, 3, strides=1, data_format=data_format, activation="relu", dtype=dtype, seed=seed
            ),
            nn.BatchNormalization(axis=1 if data_format == "channels_first" else -1, dtype=dtype),
            nn.MaxPool2D(2, data_format=data_format),
            nn.DepthwiseConv2D(
                2,
                depth_multiplier=2,
                padding="same",
                data_format=data_format,
                bias_initializer="random_normal",
                dtype=dtype,
                seed=seed + 1,
            ),
            nn.AveragePool2D(2, strides=1, data_format=data_format),
            nn.Flatten(data_format=data_format),
            nn.Dense(6, activation="tanh", dtype=dtype, seed=seed + 2),
            nn.Dense(3, dtype=dtype, seed=seed + 3),
        ]
    )


def test_channels_first_model_equals_pytorch_exactly() -> None:
    """An NCHW PyTorch network and the same weights in patchconv.nn (channels_first): outputs,
    the loss, and every gradient, Flatten's (c, h, w) order included."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 9, 9))  # NCHW
    labels = np.array([0, 2, 1, 1, 0])
    model = small_cnn("channels_first")
    model.build(x.shape)
    ws = model.get_weights()
    conv_k, conv_b, gamma, beta, mm, mv, dw_k, dw_b, d1_k, d1_b, d2_k, d2_b = ws
    t = {
        k: torch.from_numpy(np.ascontiguousarray(v)).requires_grad_(True)
        for k, v in {
            "conv_w": conv_k.transpose(3, 2, 0, 1),
            "conv_b": conv_b,
            "gamma": gamma,
            "beta": beta,
            "dw_w": dw_k.transpose(2, 3, 0, 1).reshape(-1, 1, 2, 2),
            "dw_b": dw_b,
            "d1_w": d1_k.T,
            "d1_b": d1_b,
            "d2_w": d2_k.T,
            "d2_b": d2_b,
        }.items()
    }
    x_t = torch.from_numpy(x).requires_grad_(True)
    h = F.relu(F.conv2d(F.pad(x_t, (1, 1, 1, 1)), t["conv_w"], t["conv_b"]))
    h = F.batch_norm(
        h,
        torch.from_numpy(mm.copy()),
        torch.from_numpy(mv.copy()),
        t["gamma"],
        t["beta"],
        True,
        0.01,
        1e-3,
    )
    h = F.max_pool2d(h, 2)
    h = F.conv2d(F.pad(h, (0, 1, 0, 1)), t["dw_w"], t["dw_b"], groups=4)  # "same" for 2x2
    h = F.avg_pool2d(h, 2, 1)
    h = torch.tanh(F.linear(torch.flatten(h, 1), t["d1_w"], t["d1_b"]))
    logits_t = F.linear(h, t["d2_w"], t["d2_b"])
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()

    logits = model.forward(x, training=True)
    loss, grad = nn.SoftmaxCrossEntropy().value_and_grad(labels, logits)
    grad_x = model.backward(grad)
    assert_close(logits, logits_t.detach().numpy(), np.float64)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-12)
    assert_close(grad_x, x_t.grad.numpy(), np.float64, grad=True)
    expected = {
        "conv_w": lambda a: a.transpose(2, 3, 1, 0),
        "conv_b": None,
        "gamma": None,
        "beta": None,
        "dw_w": lambda a: a.reshape(4, 2, 2, 2).transpose(2, 3, 0, 1),
        "dw_b": None,
        "d1_w": lambda a: a.T,
        "d1_b": None,
        "d2_w": lambda a: a.T,
        "d2_b": None,
    }
    mine = model.grads()
    assert len(mine) == len(expected) == len(model.params())
    for ours, (key, to_ours) in zip(mine, expected.items(), strict=True):
        theirs = t[key].grad.numpy()
        assert_close(ours, to_ours(theirs) if to_ours else theirs, np.float64, grad=True)


def test_channels_last_and_first_models_agree_with_transposed_inputs() -> None:
    """The same weights give the same logits in both layouts once Flatten's order is matched
    (channels_last flattens (h, w, c), so the first Dense kernel's rows are permuted)."""
    x = np.random.default_rng(1).standard_normal((3, 9, 9, 2))
    last, first = small_cnn("channels_last"), small_cnn("channels_first")
    last.build(x.shape)
    first.build(x.transpose(0, 3, 1, 2).shape)
    weights = last.get_weights()
    d1 = weights[8]  # (h*w*c, 6) rows in (h, w, c) order -> (c, h, w) order
    c, hw = 8, int(np.sqrt(d1.shape[0] // 8))
    weights[8] = d1.reshape(hw, hw, c, -1).transpose(2, 0, 1, 3).reshape(d1.shape)
    first.set_weights(weights)
    assert_close(first.predict(x.transpose(0, 3, 1, 2)), last.predict(x), np.float64)


# -- optimizers ---------------------------------------------------------------------------------
# Keras keeps hyperparameters in float32 variables: dyadic values make them exact, so the
# float64 updates must agree to float64 precision; Keras' defaults are compared in float32.
@pytest.mark.parametrize(
    "ours, theirs, dtype",
    [
        (lambda: nn.SGD(0.125), lambda: keras.optimizers.SGD(0.125), np.float64),
        (
            lambda: nn.SGD(0.0625, momentum=0.875),
            lambda: keras.optimizers.SGD(0.0625, momentum=0.875),
            np.float64,
        ),
        (
            lambda: nn.SGD(0.0625, momentum=0.75, nesterov=True),
            lambda: keras.optimizers.SGD(0.0625, momentum=0.75, nesterov=True),
            np.float64,
        ),
        (
            lambda: nn.Adam(2**-6, beta_1=0.875, beta_2=1 - 2**-10, epsilon=2**-20),
            lambda: keras.optimizers.Adam(2**-6, beta_1=0.875, beta_2=1 - 2**-10, epsilon=2**-20),
            np.float64,
        ),
        (lambda: nn.Adam(), lambda: keras.optimizers.Adam(), np.float32),
        (lambda: nn.SGD(), lambda: keras.optimizers.SGD(), np.float32),
    ],
    ids=["sgd", "sgd-momentum", "sgd-nesterov", "adam", "adam-defaults", "sgd-defaults"],
)
def test_optimizers_follow_keras_update_rules(ours: Any, theirs: Any, dtype: Any) -> None:
    rng = np.random.default_rng(2)
    start = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    params = [p.copy() for p in start]
    variables = [keras.Variable(p.copy(), dtype=np.dtype(dtype).name) for p in start]
    opt_ours, opt_theirs = ours(), theirs()
    for _ in range(5):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in start]
        opt_ours.step(params, grads)
        opt_theirs.apply_gradients(
            zip([keras.ops.convert_to_tensor(g) for g in grads], variables, strict=True)
        )
    for p, v in zip(params, variables, strict=True):
        assert p.dtype == dtype
        assert_close(p, keras.ops.convert_to_numpy(v), dtype)
    assert opt_ours.iterations == 5


def test_piecewise_schedule_changes_the_step() -> None:
    w = np.zeros(1)
    opt = nn.SGD(nn.PiecewiseConstantDecay([1], [1.0, 0.1]))
    for _ in range(3):
        opt.step([w], [np.ones(1)])
    np.testing.assert_allclose(w, [-(1.0 + 1.0 + 0.1)])
    assert opt.get_config()["learning_rate"]["class_name"] == "PiecewiseConstantDecay"


# -- fit / evaluate / predict -------------------------------------------------------------------
def blobs(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes of 6x6 single-channel images: a bright row, a bright column, a bright dot."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 0.3, (n, 6, 6, 1)).astype(np.float32)
    pos = rng.integers(0, 6, n)
    for i in range(n):
        if y[i] == 0:
            x[i, pos[i], :, 0] += 1
        elif y[i] == 1:
            x[i, :, pos[i], 0] += 1
        else:
            x[i, pos[i], (pos[i] + 3) % 6, 0] += 2
    return x, y


def tiny(seed: int = 0) -> nn.Sequential:
    return nn.Sequential(
        [
            nn.Conv2D(6, 3, padding="same", activation="relu", seed=seed),
            nn.MaxPool2D(2),
            nn.Flatten(),
            nn.Dropout(0.1, seed=seed),
            nn.Dense(3, seed=seed + 1),
        ],
        input_shape=(6, 6, 1),
    )


def test_fit_learns_and_is_reproducible_from_its_seeds() -> None:
    x, y = blobs()
    runs = []
    for _ in range(2):
        model = tiny()
        model.compile(nn.Adam(0.01), nn.SoftmaxCrossEntropy())
        history = model.fit(x, y, epochs=6, batch_size=16, verbose=0, seed=3, validation_split=0.25)
        runs.append((history, model.get_weights()))
    (h1, w1), (h2, w2) = runs
    assert h1 == h2
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(h1) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 6 for v in h1.values())
    assert h1["loss"][-1] < 0.5 * h1["loss"][0]
    assert h1["val_accuracy"][-1] >= 0.9  # chance is 1/3


def test_another_shuffle_seed_gives_another_run() -> None:
    x, y = blobs()
    losses = []
    for seed in (1, 2):
        model = tiny()
        model.compile(nn.SGD(0.05), nn.SoftmaxCrossEntropy())
        losses.append(model.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=seed)["loss"][0])
    assert losses[0] != losses[1]


def test_evaluate_and_predict_agree_and_run_at_inference() -> None:
    x, y = blobs(50)
    model = tiny()
    model.compile("sgd", "softmax_cross_entropy")
    logits = model.predict(x, batch_size=7)
    assert logits.shape == (50, 3)
    # Dropout off, no state: the batch size changes only BLAS' summation order.
    assert_close(logits, model.predict(x), np.float32)
    result = model.evaluate(x, y, batch_size=13)
    value = nn.SoftmaxCrossEntropy()(y, logits)
    np.testing.assert_allclose(result["loss"], value, rtol=1e-5)
    assert result["accuracy"] == np.mean(logits.argmax(-1) == y)


def test_mse_training_and_train_on_batch() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 3))
    target = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    model = nn.Sequential([nn.Dense(1, dtype="float64", seed=0)])
    model.compile(nn.SGD(0.1, momentum=0.5), "mse")
    first = model.train_on_batch(x, target)["loss"]
    model.fit(x, target, epochs=40, batch_size=16, verbose=0, seed=0)
    assert model.evaluate(x, target)["loss"] < 1e-3 * first
    assert "accuracy" not in model.evaluate(x, target)


def test_fit_shows_a_progress_bar_with_loss_and_accuracy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    x, y = blobs(40)
    model = tiny()
    model.compile()
    model.fit(x, y, epochs=1, batch_size=8, verbose=1, seed=0)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss" in err and "accuracy" in err
    model.fit(x, y, epochs=1, batch_size=8, verbose=2, seed=0)
    assert "epoch 1/1" in capsys.readouterr().err


# -- weights: get/set, .npz files, config -------------------------------------------------------
def test_save_and_load_weights_round_trip(tmp_path: Path) -> None:
    x, y = blobs(40)
    model = tiny()
    model.compile()
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    path = tmp_path / "w.npz"
    model.save_weights(path, extra={"kernel": model.layers[0].get_weights()[0]})
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
    assert {
        "layers.0.Conv2D.kernel",
        "layers.0.Conv2D.bias",
        "layers.4.Dense.kernel",
        "kernel",
    } <= keys
    fresh = tiny(seed=9)
    before = fresh.predict(x)
    fresh.load_weights(path)
    np.testing.assert_array_equal(fresh.predict(x), model.predict(x))
    assert not np.array_equal(before, fresh.predict(x))
    # The optimizer's state stays attached: loading writes into the same arrays.
    params = fresh.params()
    fresh.load_weights(path)
    assert all(a is b for a, b in zip(params, fresh.params(), strict=True))


def test_load_weights_refuses_a_mismatched_file(tmp_path: Path) -> None:
    model = tiny()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    other = nn.Sequential(
        [
            nn.Conv2D(5, 3, padding="same"),
            nn.MaxPool2D(2),
            nn.Flatten(),
            nn.Dropout(0.1),
            nn.Dense(3),
        ],
        input_shape=(6, 6, 1),
    )
    before = other.get_weights()
    with pytest.raises(
        PatchconvError,
        match=r"layers.0.Conv2D.kernel must have shape \(3, 3, 1, 5\); got \(3, 3, 1, 6\)",
    ):
        other.load_weights(path)
    for a, b in zip(before, other.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # nothing changed
    deeper = nn.Sequential(
        [nn.Conv2D(6, 3, padding="same"), nn.MaxPool2D(2), nn.Flatten(), nn.Dense(3), nn.Dense(3)],
        input_shape=(6, 6, 1),
    )
    with pytest.raises(
        PatchconvError,
        match=r"does not match this model's layers: missing \['layers.3.Dense.kernel'",
    ):
        deeper.load_weights(path)
    np.savez(tmp_path / "plain.npz", kernel=np.zeros((3, 3, 1, 6)))
    with pytest.raises(
        PatchconvError, match=r"is not a patchconv weights file \(no 'format' key\)"
    ):
        model.load_weights(tmp_path / "plain.npz")
    with np.load(path, allow_pickle=False) as data:
        stored = dict(data)
    np.savez(tmp_path / "v9.npz", **{**stored, "format": np.array("patchconv weights v9")})
    with pytest.raises(
        PatchconvError,
        match=r"'format' must be 'patchconv.nn.Sequential weights v1'; got 'patchconv weights v9'",
    ):
        model.load_weights(tmp_path / "v9.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(PatchconvError, match=r"is not an \.npz weights file"):
        model.load_weights(tmp_path / "junk.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(PatchconvError, match=r"is not an .npz weights file \(a single array\)"):
        model.load_weights(tmp_path / "one.npy")
    np.savez(tmp_path / "pickled.npz", format=np.array(["x", None], dtype=object))
    with pytest.raises(PatchconvError, match="holds an array we cannot read"):
        model.load_weights(tmp_path / "pickled.npz")
    with pytest.raises(PatchconvError, match="build the model first"):
        nn.Sequential([nn.Dense(2)]).load_weights(path)
    with pytest.raises(PatchconvError, match=r"extra key 'layers\.0\.x' clashes"):
        model.save_weights(tmp_path / "x.npz", extra={"layers.0.x": np.zeros(1)})


def test_weight_loads_are_all_or_nothing(tmp_path: Path) -> None:
    # The keys and shapes match, but the last array is text: no layer may change.
    model = tiny()
    before = model.get_weights()
    path = tmp_path / "w.npz"
    arrays = model.weights_dict()
    arrays["layers.4.Dense.bias"] = np.array(["a", "b", "c"])
    np.savez(path, format=np.array(nn.model.FORMAT), **arrays)
    with pytest.raises(TypeError, match=r"Dense.set_weights: bias must have a real float"):
        model.load_weights(path)
    new = [w + 1 for w in before]
    with pytest.raises(PatchconvError, match=r"Dense.set_weights: kernel must have shape"):
        model.set_weights([*new[:2], np.zeros((1, 3), np.float32), new[3]])
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.set_weights(new)  # and a good list still loads
    np.testing.assert_array_equal(model.get_weights()[0], new[0])


def test_shapes_take_keras_none_batch_and_dtype_none() -> None:
    model = nn.Sequential([nn.Conv2D(3, 3, dtype=None), nn.Flatten(), nn.Dense(2, dtype=None)])
    model.build((None, 6, 6, 1))
    assert model.compute_output_shape((None, 6, 6, 1)) == (None, 2)
    assert all(w.dtype == np.float32 for w in model.get_weights())
    assert model.predict(np.zeros((3, 6, 6, 1), np.float32)).shape == (3, 2)
    for layer, shape in (
        (nn.Dense(2), (None, None)),
        (nn.Conv2D(2, 3), (None, 5, None, 3)),
        (nn.DepthwiseConv2D(3), (None, 5, 5, None)),
        (nn.BatchNormalization(), (None, 8, 8, None)),
    ):
        with pytest.raises(PatchconvError, match=r"only the batch size may be None"):
            layer.build(shape)
        assert not layer.built  # refused before any weight was made


def test_junk_weights_file_message_does_not_suggest_unpickling(tmp_path: Path) -> None:
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(PatchconvError, match=r"is not an \.npz weights file") as info:
        tiny().load_weights(tmp_path / "junk.npz")
    assert "pickle" not in str(info.value)


def test_config_round_trip_rebuilds_the_same_network() -> None:
    model = small_cnn("channels_first", dtype="float32")
    x = np.random.default_rng(5).standard_normal((2, 2, 9, 9)).astype(np.float32)
    model.build(x.shape)
    config = json.loads(json.dumps(model.get_config()))  # JSON-ready
    clone = nn.Sequential.from_config(config)
    clone.build(x.shape)
    clone.set_weights(model.get_weights())
    np.testing.assert_array_equal(clone.predict(x), model.predict(x))
    assert [type(layer).__name__ for layer in clone.layers] == [
        type(layer).__name__ for layer in model.layers
    ]
    with pytest.raises(PatchconvError, match="unknown layer class 'Bogus'"):
        nn.Sequential.from_config({"layers": [{"class_name": "Bogus", "config": {}}]})


def test_layer_names_are_unique_and_summary_lists_every_layer() -> None:
    model = nn.Sequential([nn.Dense(4), nn.Dense(4), nn.Dense(2)], input_shape=(3,))
    assert [layer.name for layer in model.layers] == ["dense", "dense_1", "dense_2"]
    text = model.summary()
    assert "dense_1 (Dense)" in text and "(None, 4)" in text
    assert f"Total params: {4 * 4 + 4 + 3 * 4 + 4 + 4 * 2 + 2}" in text


def test_set_weights_keras_order_and_counts() -> None:
    model = small_cnn()
    model.build((1, 9, 9, 2))
    names = [n for layer in model.layers for n in layer.weight_names()]
    assert names == [
        "kernel",
        "bias",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
        "kernel",
        "bias",
        "kernel",
        "bias",
        "kernel",
        "bias",
    ]
    with pytest.raises(PatchconvError, match=r"Sequential.set_weights: expected 12 arrays; got 3"):
        model.set_weights(model.get_weights()[:3])
    frozen = nn.Dense(2, trainable=False)
    frozen(np.ones((1, 3)))
    assert frozen.params() == [] and frozen.grads() == []


# -- input checks ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nn.Dense(0), r"Dense: units must be >= 1; got 0"),
        (
            lambda: nn.Dense(2, activation="gelu"),
            r"Dense: activation must be one of .*; got 'gelu'",
        ),
        (lambda: nn.Dropout(1.0), r"Dropout: rate must be in \[0, 1\); got 1.0"),
        (
            lambda: nn.MaxPool2D(2, padding="full"),
            r"MaxPool2D: padding must be one of 'valid', 'same'",
        ),
        (
            lambda: nn.AveragePool2D(2, data_format="NHWC"),
            r"AveragePool2D: data_format must be 'channels_last' or 'channels_first'; got 'NHWC'",
        ),
        (
            lambda: nn.BatchNormalization(momentum=1.5),
            r"BatchNormalization: momentum must be in \[0, 1\]; got 1.5",
        ),
        (
            lambda: nn.DepthwiseConv2D(3, depth_multiplier=0),
            r"DepthwiseConv2D: depth_multiplier must be >= 1; got 0",
        ),
        (
            lambda: nn.Conv2D(2, 3, activation="nope"),
            r"Conv2D: activation must be one of .*; got 'nope'",
        ),
        (lambda: nn.Adam(beta_1=1.0), r"Adam: beta_1 must be in \[0.0, 1.0\); got 1.0"),
        (lambda: nn.SGD(-0.1), r"SGD: learning_rate must be >= 0.0; got -0.1"),
        (
            lambda: nn.PiecewiseConstantDecay([5], [1.0]),
            r"values must have one more entry than boundaries",
        ),
        (lambda: nn.ReLU(max_value=-1), r"ReLU: max_value must be >= 0; got -1"),
        (lambda: nn.get_loss("hinge"), r"get_loss: loss must be a Loss or one of .*; got 'hinge'"),
    ],
)
def test_constructor_errors(make: Any, match: str) -> None:
    with pytest.raises(PatchconvError, match=match):
        make()


def test_type_errors_name_the_parameter() -> None:
    with pytest.raises(TypeError, match=r"Dropout: rate must be a number; got '0.5'"):
        nn.Dropout("0.5")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"Sequential.add: layer must be a patchconv.nn Layer; got str"
    ):
        nn.Sequential().add("dense")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"ZeroPadding2D: padding must be an int"):
        nn.ZeroPadding2D("same")
    with pytest.raises(TypeError, match=r"Conv2D: dtype must be float16, float32 or float64"):
        nn.Conv2D(2, 3, dtype="foo")
    with pytest.raises(TypeError, match=r"Conv2D: name must be a str; got 5"):
        nn.Conv2D(2, 3, name=5)  # type: ignore[arg-type]
    for make in (
        lambda: nn.Dense(2, seed="x"),
        lambda: nn.Dropout(0.5, seed="x"),
        lambda: nn.DepthwiseConv2D(3, seed="x"),
    ):
        with pytest.raises(
            TypeError, match=r"(Dense|Dropout|DepthwiseConv2D): seed must be an int"
        ):
            make()
    with pytest.raises(PatchconvError, match=r"Dense: seed must be >= 0; got -1"):
        nn.Dense(2, seed=-1)
    with pytest.raises(PatchconvError, match=r"Softmax: axis \(\(1, -3\)\) must index .*each once"):
        nn.Softmax([1, -3])(np.ones((2, 3, 4, 5)))  # -3 is axis 1 again
    with pytest.raises(
        TypeError,
        match=r"SoftmaxCrossEntropy: y_true must hold integer class labels; got dtype float64",
    ):
        nn.SoftmaxCrossEntropy()(np.array([0.5]), np.zeros((1, 2)))


def test_runtime_errors_name_both_values() -> None:
    dense = nn.Dense(2)
    dense(np.ones((1, 3)))
    with pytest.raises(
        PatchconvError,
        match=r"Dense: input last axis must equal the kernel's input size \(3\); got x \(1, 4\)",
    ):
        dense(np.ones((1, 4)))
    with pytest.raises(
        PatchconvError,
        match=r"Dense.backward: grad_out must have the last output's shape \(1, 2\); got grad_out \(1, 3\)",
    ):
        dense.backward(np.ones((1, 3)))
    with pytest.raises(PatchconvError, match=r"MaxPool2D.backward: call forward before backward"):
        nn.MaxPool2D().backward(np.ones((1, 1, 1, 1)))
    with pytest.raises(
        PatchconvError,
        match=r"MaxPool2D: pool_size height \(3\) must not exceed the padded input height \(2\)",
    ):
        nn.MaxPool2D(3)(np.ones((1, 2, 5, 1)))
    with pytest.raises(
        PatchconvError,
        match=r"MaxPool2D: padding must be smaller than pool_size \(2\) on the height",
    ):
        nn.MaxPool2D(2, padding=2)(np.ones((1, 4, 4, 1)))
    with pytest.raises(
        PatchconvError,
        match=r"SoftmaxCrossEntropy: labels must be in \[0, 3\) for 3 classes; got labels in \[0, 3\]",
    ):
        nn.SoftmaxCrossEntropy()(np.array([0, 3]), np.zeros((2, 3)))
    with pytest.raises(
        PatchconvError,
        match=r"MeanSquaredError: y_true must have the shape of y_pred; got y_true \(2,\), y_pred \(2, 1\)",
    ):
        nn.MeanSquaredError()(np.zeros(2), np.zeros((2, 1)))
    with pytest.raises(
        PatchconvError, match=r"Sequential.fit: call compile\(optimizer, loss\) first"
    ):
        tiny().fit(np.zeros((2, 6, 6, 1)), np.zeros(2))
    model = tiny()
    model.compile()
    with pytest.raises(
        PatchconvError,
        match=r"Sequential.fit: x and y must hold the same number of samples; got x \(2, 6, 6, 1\), y \(3,\)",
    ):
        model.fit(np.zeros((2, 6, 6, 1)), np.zeros(3, dtype=int))
    with pytest.raises(
        PatchconvError, match=r"validation_split 0.6 of 2 samples leaves 2 for validation and 0"
    ):
        model.fit(np.zeros((2, 6, 6, 1)), np.zeros(2, dtype=int), validation_split=0.6, verbose=0)
    with pytest.raises(PatchconvError, match=r"Sequential.fit: batch_size must be >= 1; got 0"):
        model.fit(np.zeros((4, 6, 6, 1)), np.zeros(4, dtype=int), batch_size=0)
    with pytest.raises(
        PatchconvError,
        match=r"SGD.step: each grad must have its param's shape; got param \(2,\), grad \(3,\)",
    ):
        nn.SGD().step([np.zeros(2)], [np.zeros(3)])


def test_importing_nn_and_its_tasks_pulls_in_numpy_only() -> None:
    """tqdm, scikit-learn and matplotlib are imported inside the functions that use them."""
    import subprocess
    import sys

    code = (
        "import sys, json; before = set(sys.modules); import patchconv.nn, "
        "patchconv.nn.training, patchconv.nn.datasets, patchconv.nn.plot; "
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    new = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not set(new) & {"sklearn", "tqdm", "matplotlib", "torch", "scipy", "threadpoolctl"}, new


def test_a_training_step_skips_only_the_first_layers_input_gradient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fit and train_on_batch ask the first trainable layer (after a ZeroPadding2D) for its
    weights' gradients alone; every gradient equals a full backward's."""
    from patchconv.nn import conv

    asked: list[bool] = []
    real = conv.conv2d_backward

    def spy(*args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs["need_grad_x"])
        return real(*args, **kwargs)

    monkeypatch.setattr(conv, "conv2d_backward", spy)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 9, 9, 2))
    labels = np.array([0, 2, 1, 1, 0])
    model = small_cnn()
    model.compile(nn.SGD(0.0), nn.SoftmaxCrossEntropy())
    _, grad = nn.SoftmaxCrossEntropy().value_and_grad(labels, model.forward(x, training=True))
    model.backward(grad)
    full = [g.copy() for g in model.grads()]
    assert asked == [True, True]  # DepthwiseConv2D, then Conv2D
    asked.clear()
    for g in model.grads():
        g.fill(np.nan)  # so a gradient the step did not compute again shows
    model.train_on_batch(x, labels)  # a zero learning rate: the same weights
    assert asked == [True, False]
    for ours, theirs in zip(model.grads(), full, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_layers_added_to_a_built_model_are_built(tmp_path: Path) -> None:
    """As Keras: ``add`` on a model built from ``input_shape`` builds the layer, so its
    weights are saved and loaded (they were left out, with no error, and summary failed)."""
    source = nn.Sequential([nn.Flatten(), nn.Dense(3, seed=0)], input_shape=(4,))
    source.save_weights(tmp_path / "a.npz")
    model = nn.Sequential(input_shape=(4,))
    model.add(nn.Flatten())
    model.add(nn.Dense(3, seed=1))
    assert model.count_params() == source.count_params() == 15
    assert model.output_shapes == [(1, 4), (1, 3)]
    model.save_weights(tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as saved:
        assert len(saved.files) == 3  # format, kernel, bias
    model.load_weights(tmp_path / "a.npz")
    x = np.random.default_rng(0).random((2, 4))
    assert_close(model.predict(x), source.predict(x), np.float32)
    assert "(Dense)" in model.summary()


def test_accuracy_is_the_mean_over_every_label() -> None:
    """A label per pixel: accuracy is the share of right labels, as Keras' (it was the count
    of right pixels over the samples, 12.75 here). A single output is right where it and
    its target fall on the same side of 0.5."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 6, 6, 1)).astype(np.float32)
    y = rng.integers(0, 3, (4, 6, 6))
    model = nn.Sequential([nn.Conv2D(3, 3, padding="same", seed=0)], input_shape=(6, 6, 1))
    model.compile(nn.SGD(0.0), nn.SoftmaxCrossEntropy())
    expected = float((model.predict(x).argmax(axis=-1) == y).mean())
    assert model.evaluate(x, y)["accuracy"] == pytest.approx(expected)
    assert model.train_on_batch(x, y)["accuracy"] == pytest.approx(expected)
    assert model.fit(x, y, verbose=0)["accuracy"][0] == pytest.approx(expected)
    binary = nn.Sequential([nn.Dense(1, seed=0)], input_shape=(3,))
    binary.compile(nn.SGD(0.0), "mse", metrics=["accuracy"])
    xb = rng.random((5, 3)).astype(np.float32)
    yb = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    right = float(((binary.predict(xb)[:, 0] > 0.5) == (yb > 0.5)).mean())
    assert binary.evaluate(xb, yb.reshape(5, 1))["accuracy"] == pytest.approx(right)


def test_fit_without_tqdm_prints_a_line_an_epoch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tqdm comes with the train extra only: fit's default verbose=1 raised
    ModuleNotFoundError without it; it now prints verbose=2's line an epoch."""
    monkeypatch.setitem(__import__("sys").modules, "tqdm", None)
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)
    model = nn.Sequential([nn.Dense(2, seed=0)], input_shape=(3,))
    model.compile()
    history = model.fit(np.ones((4, 3)), np.zeros(4, int), epochs=2)
    assert len(history["loss"]) == 2
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err


def test_mean_squared_error_of_float16_predictions_in_float32() -> None:
    """Keras computes losses in float32: 300**2 overflowed float16 to inf."""
    value, grad = nn.MeanSquaredError().value_and_grad(
        np.array([[300.0]]), np.array([[0.0]], dtype=np.float16)
    )
    assert value == 90000.0
    assert grad.dtype == np.float16 and grad[0, 0] == -600.0


def test_fit_and_schedule_arguments_named_in_errors() -> None:
    """NumPy scalars are numbers; a (x, y, weights) validation tuple and bad schedule entries
    get errors naming the parameter; SGD takes momentum 1, as Keras does."""
    model = nn.Sequential([nn.Dense(2, seed=0)], input_shape=(3,))
    model.compile()
    x, y = np.ones((10, 3)), np.zeros(10, int)
    history = model.fit(x, y, validation_split=np.float32(0.2), verbose=0)
    assert len(history["val_loss"]) == 1
    with pytest.raises(PatchconvError, match=r"fit: validation_data must be \(x_val, y_val\)"):
        model.fit(x, y, validation_data=(x, y, np.ones(10)), verbose=0)
    with pytest.raises(TypeError, match=r"PiecewiseConstantDecay: boundaries must be numbers"):
        nn.PiecewiseConstantDecay(["a"], [1.0, 2.0])
    with pytest.raises(TypeError, match=r"PiecewiseConstantDecay: boundaries must be a sequ"):
        nn.PiecewiseConstantDecay(5, [1.0, 2.0])  # type: ignore[arg-type]
    # As Keras': any sequence of numbers.
    assert nn.PiecewiseConstantDecay(range(100, 300, 100), [0.1, 0.01, 0.001])(150) == 0.01
    assert nn.PiecewiseConstantDecay([100.0, 200.5], [1.0, 2.0, 3.0])(200) == 2.0
    assert nn.SGD(momentum=1.0).momentum == 1.0
    with pytest.raises(PatchconvError, match=r"SGD: momentum must be in \[0.0, 1.0\]"):
        nn.SGD(momentum=1.5)
