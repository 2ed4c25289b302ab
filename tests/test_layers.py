"""The Keras-compatible Conv2D layer and its initializers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import patchconv
from conftest import assert_close
from patchconv import PatchconvError
from patchconv.layers import INITIALIZERS, initialize
from reference import conv2d_reference


def test_the_seeds_example() -> None:
    """(1, 4, 4, 3) input, Conv2D(filters=2, kernel_size=3): one (3, 3, 3, 2) kernel, and the
    first patch flattened times the kernel flattened, plus bias, is output[0, 0, 0]."""
    x = np.random.default_rng(0).random((1, 4, 4, 3)).astype(np.float32)
    layer = patchconv.Conv2D(filters=2, kernel_size=3, bias_initializer="random_uniform", seed=1)
    out = layer(x)
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 3, 3, 2) and bias.shape == (2,)
    assert out.shape == (1, 2, 2, 2)
    by_hand = x[0, :3, :3, :].reshape(1, -1) @ kernel.reshape(-1, 2) + bias  # (1, 27) @ (27, 2)
    assert_close(by_hand[0], out[0, 0, 0], np.float32)
    assert np.any(bias != 0)  # the bias really took part


def test_builds_on_first_call_and_infers_channels() -> None:
    layer = patchconv.Conv2D(4, (3, 2), groups=2, use_bias=False, seed=0)
    assert not layer.built and layer.get_weights() == []
    out = layer(np.ones((2, 6, 6, 6), dtype=np.float32))
    assert layer.built and layer.kernel is not None
    assert layer.kernel.shape == (3, 2, 3, 4) and layer.bias is None
    assert len(layer.get_weights()) == 1
    assert out.shape == layer.compute_output_shape((2, 6, 6, 6)) == (2, 4, 5, 4)


def test_channels_first_layer() -> None:
    layer = patchconv.Conv2D(3, 3, padding="same", strides=2, data_format="channels_first", seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, 7, 7)).astype(np.float32)
    out = layer(x)
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 3, 5, 3)
    assert out.shape == layer.compute_output_shape(x.shape) == (2, 3, 4, 4)
    expected = conv2d_reference(
        x, kernel, bias, strides=2, padding="same", data_format="channels_first"
    )
    assert_close(out, expected, np.float32)


def test_set_weights_then_call_and_get_config_round_trip() -> None:
    layer = patchconv.Conv2D(2, 3, strides=(1, 2), dilation_rate=(2, 1), padding=((1, 0), (2, 1)))
    rng = np.random.default_rng(2)
    kernel, bias = rng.standard_normal((3, 3, 3, 2)), rng.standard_normal(2)
    layer.set_weights([kernel, bias])
    np.testing.assert_array_equal(layer.get_weights()[0], kernel.astype(np.float32))
    config = json.loads(json.dumps(layer.get_config()))
    clone = patchconv.Conv2D.from_config(config)
    clone.set_weights(layer.get_weights())
    x = rng.standard_normal((1, 9, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(clone(x), layer(x))
    assert clone.get_config() == layer.get_config()


def test_seed_makes_weights_reproducible() -> None:
    a = patchconv.Conv2D(8, 3, seed=42)
    b = patchconv.Conv2D(8, 3, seed=42)
    c = patchconv.Conv2D(8, 3, seed=43)
    for layer in (a, b, c):
        layer.build((1, 5, 5, 4))
    np.testing.assert_array_equal(a.kernel, b.kernel)
    assert not np.array_equal(a.kernel, c.kernel)


@pytest.mark.parametrize(
    ("name", "expected_std"),
    [
        # Keras' variance scaling for a (3, 3, 16, 32) kernel: fan_in 144, fan_out 288.
        ("glorot_uniform", np.sqrt(2 / (144 + 288))),
        ("glorot_normal", np.sqrt(2 / (144 + 288))),
        ("he_uniform", np.sqrt(2 / 144)),
        ("he_normal", np.sqrt(2 / 144)),
        ("lecun_uniform", np.sqrt(1 / 144)),
        ("lecun_normal", np.sqrt(1 / 144)),
        ("random_normal", 0.05),
    ],
)
def test_initializer_distributions(name: str, expected_std: float) -> None:
    draws = np.concatenate([initialize(name, (3, 3, 16, 32), seed=s).ravel() for s in range(20)])
    assert abs(draws.std() - expected_std) / expected_std < 0.02
    assert abs(draws.mean()) < 0.05 * expected_std + 1e-3
    if "uniform" in name:
        assert np.abs(draws).max() <= np.sqrt(3) * expected_std * (1 + 1e-6)
    if name.endswith("normal") and name != "random_normal":
        # Truncated at two standard deviations of the untruncated normal.
        assert np.abs(draws).max() <= 2 * expected_std / 0.87962566103423978 * (1 + 1e-6)


def test_constant_initializers() -> None:
    assert not initialize("zeros", (2, 2)).any()
    assert (initialize("ones", (2, 2)) == 1).all()
    assert set(INITIALIZERS) >= {"glorot_uniform", "he_normal", "lecun_normal", "zeros", "ones"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"filters": 0, "kernel_size": 3}, PatchconvError, r"Conv2D: filters must be >= 1; got 0"),
        ({"filters": 2.0, "kernel_size": 3}, TypeError, r"Conv2D: filters must be an int; got 2.0"),
        (
            {"filters": 2, "kernel_size": 0},
            PatchconvError,
            r"Conv2D: kernel_size must be >= 1; got 0",
        ),
        (
            {"filters": 2, "kernel_size": 3, "strides": -1},
            PatchconvError,
            r"Conv2D: strides must be >= 1",
        ),
        (
            {"filters": 3, "kernel_size": 3, "groups": 2},
            PatchconvError,
            r"Conv2D: groups \(2\) must divide filters \(3\)",
        ),
        (
            {"filters": 2, "kernel_size": 3, "padding": "full"},
            PatchconvError,
            r"Conv2D: padding must be one of",
        ),
        (
            {"filters": 2, "kernel_size": 3, "padding": -1},
            PatchconvError,
            r"Conv2D: padding must be >= 0",
        ),
        (
            {"filters": 2, "kernel_size": 3, "data_format": "NCHW"},
            PatchconvError,
            r"Conv2D: data_format must be",
        ),
        (
            {"filters": 2, "kernel_size": 3, "kernel_initializer": "magic"},
            PatchconvError,
            r"Conv2D: kernel_initializer must be one of",
        ),
        (
            {"filters": 2, "kernel_size": 3, "dtype": "int32"},
            TypeError,
            r"Conv2D: dtype must be float16, float32 or float64",
        ),
        (
            {"filters": 2, "kernel_size": 3, "dtype": "foo"},
            TypeError,
            r"Conv2D: dtype must be float16, float32 or float64; got 'foo'",
        ),
        ({"filters": 2, "kernel_size": 3, "seed": "x"}, TypeError, r"Conv2D: seed must be an int"),
        (
            {"filters": 2, "kernel_size": 3, "seed": -1},
            PatchconvError,
            r"seed must be >= 0; got -1",
        ),
        ({"filters": 2, "kernel_size": 3, "name": 5}, TypeError, r"Conv2D: name must be a str"),
    ],
)
def test_constructor_errors(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        patchconv.Conv2D(**kwargs)


def test_dtype_none_means_float32_as_in_keras() -> None:
    layer = patchconv.Conv2D(4, 3, dtype=None)
    out = layer(np.zeros((1, 5, 5, 2), dtype=np.float64))
    assert layer.kernel is not None and layer.kernel.dtype == np.float32
    assert out.dtype == np.float32


def test_compute_output_shape_takes_a_none_batch() -> None:
    layer = patchconv.Conv2D(4, 3, strides=2, padding="same")
    assert layer.compute_output_shape((None, 9, 7, 3)) == (None, 5, 4, 4)
    assert layer.compute_output_shape((2, 9, 7, 3)) == (2, 5, 4, 4)
    with pytest.raises(PatchconvError, match=r"only the batch size may be None; got input_shape"):
        layer.compute_output_shape((None, None, 7, 3))


def test_set_weights_errors() -> None:
    layer = patchconv.Conv2D(2, 3)
    with pytest.raises(
        PatchconvError,
        match=re.escape("Conv2D.set_weights: expected 2 arrays ([kernel, bias]); got 1"),
    ):
        layer.set_weights([np.zeros((3, 3, 3, 2))])
    with pytest.raises(
        PatchconvError,
        match=re.escape(
            "Conv2D.set_weights: kernel must have shape (3, 3, c_in // 1, 2); got kernel (3, 3, 3, 4)"
        ),
    ):
        layer.set_weights([np.zeros((3, 3, 3, 4)), np.zeros(2)])
    with pytest.raises(
        PatchconvError,
        match=re.escape("Conv2D.set_weights: bias must have shape (2,); got bias (3,)"),
    ):
        layer.set_weights([np.zeros((3, 3, 3, 2)), np.zeros(3)])
    layer.build((1, 5, 5, 3))
    with pytest.raises(
        PatchconvError,
        match=re.escape(
            "Conv2D.set_weights: kernel must have shape (3, 3, 3, 2); got kernel (3, 3, 4, 2)"
        ),
    ):
        layer.set_weights([np.zeros((3, 3, 4, 2)), np.zeros(2)])


def test_call_errors() -> None:
    layer = patchconv.Conv2D(2, 3, groups=2)
    with pytest.raises(
        PatchconvError, match=re.escape("Conv2D: groups (2) must divide input channels (3)")
    ):
        layer(np.zeros((1, 5, 5, 3)))
    with pytest.raises(
        PatchconvError, match=re.escape("Conv2D: input must be 4-D; got ndim 3, shape (5, 5, 3)")
    ):
        patchconv.Conv2D(2, 3)(np.zeros((5, 5, 3)))


def test_conv2d_layer_takes_keras_data_format_none_and_keyword_options() -> None:
    """Keras' default data_format=None is channels_last (it was refused). Past groups the
    options are keyword-only: Keras' 8th positional argument is activation, which this layer
    has not, and "relu" there was taken as use_bias=True in silence."""
    layer = patchconv.Conv2D(2, 3, data_format=None, seed=0)
    assert layer.data_format == "channels_last"
    assert layer(np.zeros((2, 5, 5, 3), np.float32)).shape == (2, 3, 3, 2)
    with pytest.raises(TypeError, match="positional"):
        patchconv.Conv2D(2, 3, 1, "valid", "channels_last", 1, 1, "relu")  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"Conv2D: use_bias must be True or False; got 'relu'"):
        patchconv.Conv2D(2, 3, use_bias="relu")  # type: ignore[arg-type]
