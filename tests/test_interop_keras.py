"""Keras -> patchconv: models built in Keras with random weights, saved, loaded, compared.

Keras runs on its torch backend (tests/conftest.py). Every loader reads files with zipfile,
json and h5py; a test below makes pickle unusable while they run.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from conftest import assert_close
from patchconv import PatchconvError, nn
from patchconv.interop import from_keras, save_keras_weights, to_keras
from patchconv.interop.keras import keras_h5_names, read_keras

L = keras.layers


def _strided_same_even() -> keras.Model:
    """Keras "same" at stride 2 on even sizes pads (0, 1): the pitfall PyTorch differs on."""
    return keras.Sequential(
        [
            keras.Input((8, 10, 3)),
            L.Conv2D(6, 3, strides=2, padding="same", activation="relu"),
            L.Conv2D(4, (2, 3), strides=2, padding="same"),
            L.GlobalAveragePooling2D(),
            L.Dense(3),
        ]
    )


def _depthwise_dilation_bn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((9, 9, 4)),
            L.DepthwiseConv2D(3, depth_multiplier=2, dilation_rate=2, padding="same"),
            L.BatchNormalization(),
            L.ReLU(max_value=6.0),
            L.Conv2D(6, 3, groups=2, dilation_rate=(1, 2), padding="valid", use_bias=False),
            L.BatchNormalization(epsilon=1e-2),
            L.Activation("relu"),
            L.MaxPooling2D(2),
            L.Flatten(),
            L.Dense(5, activation="softmax"),
        ]
    )


def _pooling_padding() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((7, 6, 2)),
            L.ZeroPadding2D(((1, 1), (2, 1))),
            L.Conv2D(4, 3, activation="tanh"),
            # 7 x 7 here, so "same" pads (1, 1): Keras' torch backend counts the extra zero of
            # an uneven "same" average pool, unlike TensorFlow and patchconv (docs/porting.md).
            L.AveragePooling2D(3, strides=2, padding="same"),
            L.LeakyReLU(negative_slope=0.1),
            L.MaxPooling2D(2, strides=1, padding="same"),
            L.Dropout(0.3),
            L.Flatten(),
            L.Dense(8, activation="sigmoid"),
            L.Dense(2),
            L.Softmax(),
        ]
    )


def _functional_chain() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(3)(x))


ARCHITECTURES: dict[str, Callable[[], keras.Model]] = {
    "strided_same_even": _strided_same_even,
    "depthwise_dilation_bn": _depthwise_dilation_bn,
    "pooling_padding": _pooling_padding,
    "functional_chain": _functional_chain,
}


def _randomised(builder: Callable[[], keras.Model], seed: int) -> keras.Model:
    """Random weights everywhere, BatchNorm statistics included (they start at 0 and 1)."""
    keras.utils.set_random_seed(seed)
    model = builder()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            weights = [rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in weights]
        else:
            weights = [rng.normal(0, 0.5, w.shape).astype(np.float32) for w in weights]
        layer.set_weights(weights)
    return model


def _input(model: keras.Model, seed: int = 0) -> np.ndarray:
    shape = (3, *model.input_shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    name = request.param
    model = _randomised(ARCHITECTURES[name], seed=len(name))
    folder = tmp_path_factory.mktemp(name)
    model.save(folder / "model.keras")
    model.save_weights(folder / "model.weights.h5")
    x = _input(model)
    return model, folder, x, keras.ops.convert_to_numpy(model(x, training=False))


def test_keras_archive_matches(saved: tuple) -> None:
    model, folder, x, expected = saved
    ours = from_keras(folder / "model.keras")
    assert isinstance(ours, nn.Sequential)
    assert_close(ours.predict(x), expected, np.float32)
    # Same layers, same weights, in Keras' order.
    keras_weights = [w for layer in model.layers for w in layer.get_weights()]
    for a, b in zip(ours.get_weights(), keras_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_weights_h5_with_config_matches(saved: tuple) -> None:
    model, folder, x, expected = saved
    ours = from_keras(folder / "model.weights.h5", config=model.to_json())
    assert_close(ours.predict(x), expected, np.float32)
    bare = from_keras(folder / "model.weights.h5", config=model.get_config())
    assert_close(bare.predict(x), expected, np.float32)


def test_live_model_matches(saved: tuple) -> None:
    model, _, x, expected = saved
    assert_close(from_keras(model).predict(x), expected, np.float32)


def test_live_model_with_lora_uses_the_merged_kernel(tmp_path: Path) -> None:
    """LoRA on Conv2D and Dense: a live model's layers hold 4 arrays (kernel, bias and the two
    factors); the import takes the kernel Keras runs, as a saved .keras file holds it."""
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="c"), L.Flatten(), L.Dense(5, name="d")]
    )
    rng = np.random.default_rng(4)
    for layer in (model.layers[0], model.layers[2]):
        layer.enable_lora(2)
        layer.lora_kernel_b.assign(rng.standard_normal(layer.lora_kernel_b.shape) * 0.5)
    x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    frozen = keras.ops.convert_to_numpy(model.layers[0]._kernel)
    assert len(model.layers[0].get_weights()) == 4
    assert not np.allclose(keras.ops.convert_to_numpy(model.layers[0].kernel), frozen)
    ours = from_keras(model)
    assert_close(ours.predict(x), expected, np.float32)
    model.save(tmp_path / "lora.keras")  # Keras merges LoRA on save: the same model
    assert_close(from_keras(tmp_path / "lora.keras").predict(x), expected, np.float32)


def test_export_back_to_keras_weights(saved: tuple, tmp_path: Path) -> None:
    model, _, x, expected = saved
    ours = from_keras(model)
    save_keras_weights(ours, tmp_path / "back.weights.h5")
    clone = keras.models.clone_model(model)
    clone.load_weights(tmp_path / "back.weights.h5")
    assert_close(keras.ops.convert_to_numpy(clone(x, training=False)), expected, np.float32)


def test_to_keras_rebuilds_a_keras_model() -> None:
    model = _randomised(_pooling_padding, seed=3)
    x = _input(model)
    rebuilt = to_keras(from_keras(model))
    assert [type(la).__name__ for la in rebuilt.layers] == [
        type(la).__name__ for la in model.layers
    ]
    assert_close(
        keras.ops.convert_to_numpy(rebuilt(x)), keras.ops.convert_to_numpy(model(x)), np.float32
    )


def test_h5_group_names_follow_keras(tmp_path: Path) -> None:
    model = _randomised(_depthwise_dilation_bn, seed=1)
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    with h5py.File(path) as f:
        stored = sorted(f["layers"].keys())
    assert sorted(keras_h5_names([type(la).__name__ for la in model.layers])) == stored


def test_fine_tune_a_loaded_keras_model(tmp_path: Path) -> None:
    """Loaded weights keep training in patchconv.nn: the loss goes down."""
    keras_model = _randomised(_depthwise_dilation_bn, seed=5)
    keras_model.save(tmp_path / "model.keras")
    model = from_keras(tmp_path / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 9, 9, 4)).astype(np.float32)
    y = rng.integers(0, 5, 16)
    model.compile(nn.Adam(1e-2), nn.SparseCategoricalCrossentropy())  # softmax output
    before = model.evaluate(x, y)["loss"]
    for _ in range(8):
        model.train_on_batch(x, y)
    after = model.evaluate(x, y)["loss"]
    assert after < 0.8 * before, (before, after)


def test_frozen_layers_stay_frozen_in_training_as_in_keras(tmp_path: Path) -> None:
    """trainable=False came through as True: frozen layers trained, and a frozen
    BatchNormalization used batch statistics and moved its moving ones."""
    layers = keras.layers
    keras_model = keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            layers.Conv2D(4, 3),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(3),
        ]
    )
    keras_model.layers[0].trainable = keras_model.layers[1].trainable = False
    keras_model.save(tmp_path / "frozen.keras")
    ours = [from_keras(keras_model), from_keras(tmp_path / "frozen.keras")]
    assert [layer.trainable for layer in ours[0].layers] == [False, False, True, True, True]
    assert [layer.trainable for layer in to_keras(ours[0]).layers[:3]] == [False, False, True]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 6, 6, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    keras_model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    keras_model.train_on_batch(x, y)
    for model in ours:
        model.compile(nn.SGD(0.1), nn.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, y)
        for mine, theirs in zip(model.get_weights(), keras_model.get_weights(), strict=True):
            assert_close(mine, np.asarray(theirs), np.float32)


@pytest.mark.parametrize("axis", [3, -1])
def test_batchnorm_on_axis_3_of_a_model_with_free_height_and_width(axis: int) -> None:
    """An unbuilt model (Input((None, None, 3))) with BatchNormalization(axis=3) was refused:
    'build the layer (or call it once) before set_weights'."""
    layers = keras.layers
    keras_model = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            layers.Conv2D(4, 3),
            layers.BatchNormalization(axis=axis),
            layers.ReLU(),
        ]
    )
    rng = np.random.default_rng(2)
    for weight in keras_model.layers[1].weights:
        weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype(np.float32))
    ours = from_keras(keras_model)
    x = rng.standard_normal((2, 9, 7, 3)).astype(np.float32)
    assert_close(ours.predict(x), keras_model.predict(x, verbose=0), np.float32)


# -- malformed files ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "model.keras"
    _randomised(_strided_same_even, seed=2).save(path)
    return path


def test_truncated_archive(good_archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.keras"
    bad.write_bytes(good_archive.read_bytes()[: good_archive.stat().st_size // 2])
    with pytest.raises(
        PatchconvError, match=r"from_keras: .*cut.keras' is not a readable .keras archive"
    ):
        from_keras(bad)


def test_random_bytes(tmp_path: Path) -> None:
    bad = tmp_path / "noise.keras"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(
        PatchconvError,
        match=r"from_keras: .*noise.keras' is neither a .keras archive \(zip\) nor a .weights.h5 file",
    ):
        from_keras(bad)


def test_archive_without_weights(tmp_path: Path) -> None:
    bad = tmp_path / "empty.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(
        PatchconvError, match=r"is not a .keras archive: it lacks \['model.weights.h5'\]"
    ):
        from_keras(bad)


def test_wrong_h5_layout(tmp_path: Path) -> None:
    bad = tmp_path / "other.weights.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("kernel", data=np.zeros(3))
    with pytest.raises(
        PatchconvError,
        match=r"is not a Keras 3 weights file: expected a 'layers' group .* found top-level keys \['kernel'\]",
    ):
        from_keras(bad, config={"class_name": "Sequential", "config": {"layers": []}})
    with h5py.File(bad, "w") as f:
        f.create_group("layers/conv2d/vars").create_dataset("kernel", data=np.zeros(3))
    with pytest.raises(
        PatchconvError,
        match=r"'layers/conv2d/vars' must hold datasets '0', '1', ...; got \['kernel'\]",
    ):
        read_keras(bad)


def test_config_that_is_not_json(good_archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "badjson.keras"
    with zipfile.ZipFile(good_archive) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, b"{not json" if name == "config.json" else data)
    with pytest.raises(PatchconvError, match=r"config.json is not valid JSON"):
        from_keras(bad)


def test_weights_that_do_not_fit_the_config(good_archive: Path, tmp_path: Path) -> None:
    bad = tmp_path / "mismatch.keras"
    with zipfile.ZipFile(good_archive) as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                config = json.loads(data)
                config["config"]["layers"][1]["config"]["filters"] = 7
                data = json.dumps(config).encode()
            dst.writestr(name, data)
    with pytest.raises(PatchconvError, match=r"from_keras: layer 'conv2d\w*' \(Conv2D\): .*kernel"):
        from_keras(bad)


def test_weights_only_file_needs_config(saved: tuple) -> None:
    _, folder, _, _ = saved
    with pytest.raises(PatchconvError, match=r"holds weights only; pass config="):
        from_keras(folder / "model.weights.h5")


def test_unsupported_layer_is_named() -> None:
    model = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2DTranspose(2, 3)])
    with pytest.raises(
        PatchconvError,
        match=r"from_keras: layer 'conv2d_transpose\w*' \(Conv2DTranspose\): Keras layer 'Conv2DTranspose' is not supported",
    ):
        from_keras(model)


def test_branching_functional_model_is_refused() -> None:
    inputs = keras.Input((6, 6, 2))
    a = L.Conv2D(2, 3, padding="same")(inputs)
    model = keras.Model(inputs, L.Add()([a, inputs]))
    with pytest.raises(
        PatchconvError,
        match=r"layer 'add\w*' is not fed by .* \(inputs \['conv2d\w*', 'input_layer\w*'\]\)",
    ):
        from_keras(model)


def test_softmax_over_several_axes() -> None:
    model = keras.Sequential([keras.Input((3, 4, 5)), L.Softmax(axis=[2, 3])])
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ours = from_keras(model)
    assert_close(ours.predict(x), np.asarray(model(x)), np.float32)
    assert ours.layers[0].get_config()["axis"] == [2, 3]


@pytest.mark.parametrize("padding", [1, "same_lower", ((1, 0), (0, 1))])
def test_to_keras_refuses_padding_keras_lacks(padding: object) -> None:
    model = nn.Sequential([nn.Conv2D(2, 3, padding=padding, name="c")], input_shape=(6, 6, 1))
    with pytest.raises(PatchconvError, match=r"to_keras: layer 'c': padding .* has no Keras"):
        to_keras(model)


def test_not_a_model() -> None:
    with pytest.raises(
        TypeError, match=r"from_keras: model_or_path must be a keras model or a path"
    ):
        from_keras(42)


def test_loaders_never_unpickle(good_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    assert from_keras(good_archive).count_params() > 0


def test_to_keras_keeps_the_dtype() -> None:
    """A float64 model gives float64 Keras layers with the same weights (they were float32,
    the weights rounded)."""
    model = nn.Sequential([nn.Conv2D(2, 3, dtype="float64", seed=0)], input_shape=(5, 5, 2))
    theirs = to_keras(model)
    assert [layer.dtype for layer in theirs.layers] == ["float64"]
    kernel = theirs.layers[0].get_weights()[0]
    assert kernel.dtype == np.float64 and np.array_equal(kernel, model.layers[0].kernel)
    x = np.random.default_rng(0).random((2, 5, 5, 2))
    assert_close(np.asarray(theirs(x).detach().cpu()), model.predict(x), np.float64)


def test_from_keras_config_may_be_a_file(tmp_path: Path) -> None:
    """config= takes the path of model.to_json()'s file as well; text that is no JSON is an
    error naming config (it was a bare JSONDecodeError)."""
    theirs = _randomised(_strided_same_even, 3)
    theirs.save_weights(tmp_path / "m.weights.h5")
    (tmp_path / "arch.json").write_text(theirs.to_json())
    model = from_keras(tmp_path / "m.weights.h5", config=str(tmp_path / "arch.json"))
    x = _input(theirs)
    assert_close(model.predict(x), np.asarray(theirs(x).detach().cpu()), np.float32)
    with pytest.raises(PatchconvError, match=r"from_keras: config must be a dict, a JSON string"):
        from_keras(tmp_path / "m.weights.h5", config="{not json")
    with pytest.raises(PatchconvError, match=r"from_keras: config .*missing.json' does not exist"):
        from_keras(tmp_path / "m.weights.h5", config=str(tmp_path / "missing.json"))
