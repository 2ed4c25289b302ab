"""patchconv.nn layers: backward against float64 finite differences, forward and gradients
against Keras (torch backend, so Keras' own semantics under PyTorch autograd) and PyTorch."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close
from patchconv import PatchconvError, nn
from patchconv.nn.activations import ACTIVATIONS
from strategies import Case, conv_cases


# -- helpers ------------------------------------------------------------------------------------
def check_finite_differences(
    layer: nn.Layer, x: np.ndarray, *, training: bool = True, probes: int = 30, seed: int = 0
) -> None:
    """backward's input and weight gradients against central differences of <forward(x), g>."""
    rng = np.random.default_rng(seed)
    y = layer.forward(x, training=training)
    g = rng.standard_normal(y.shape)
    grad_x = layer.backward(g)
    grads = [gr.copy() for gr in layer.grads()]
    params = layer.params()
    assert grad_x.shape == x.shape and len(grads) == len(params)
    eps = 1e-6

    def loss() -> float:
        return float(np.vdot(layer.forward(x, training=training), g))

    for arr, grad in [(x, grad_x), *zip(params, grads, strict=True)]:
        size = arr.size
        picks = np.arange(size) if size <= probes else rng.choice(size, probes, replace=False)
        for flat in picks:
            idx = np.unravel_index(flat, arr.shape)
            old = arr[idx]
            arr[idx] = old + eps
            up = loss()
            arr[idx] = old - eps
            down = loss()
            arr[idx] = old
            np.testing.assert_allclose(grad[idx], (up - down) / (2 * eps), rtol=1e-6, atol=1e-7)


def keras_forward_backward(
    layer: Any, x: np.ndarray, g: np.ndarray, training: bool = False
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Keras layer under PyTorch autograd: output, grad wrt input, grads wrt trainable weights."""
    x_t = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
    out = layer(x_t, training=training)
    out.backward(torch.from_numpy(np.ascontiguousarray(g)))
    weight_grads = [w.value.grad.numpy() for w in layer.trainable_weights]
    assert x_t.grad is not None
    return out.detach().numpy(), x_t.grad.numpy(), weight_grads


def randn(shape: tuple[int, ...], seed: int = 0, dtype: Any = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- Conv2D / DepthwiseConv2D -------------------------------------------------------------------
@settings(max_examples=40)
@given(conv_cases(dtypes=(np.float64,), max_batch=2), st.sampled_from(["linear", "relu", "tanh"]))
def test_conv2d_layer_finite_differences(case: Case, activation: str) -> None:
    kh, kw, _, c_out = case.kernel.shape
    layer = nn.Conv2D(
        c_out,
        (kh, kw),
        activation=activation,
        use_bias=case.bias is not None,
        dtype="float64",
        seed=1,
        **case.options,
    )
    layer.build(case.x.shape)
    layer.set_weights([case.kernel] + ([] if case.bias is None else [case.bias]))
    check_finite_differences(layer, case.x.copy())


def test_conv2d_layer_is_the_core_layer_with_the_same_weights_and_config() -> None:
    import patchconv

    x = randn((2, 7, 6, 4), dtype=np.float32)
    mine = nn.Conv2D(6, 3, strides=2, padding="same", groups=2, seed=3)
    core = patchconv.Conv2D(6, 3, strides=2, padding="same", groups=2, seed=3)
    np.testing.assert_array_equal(mine(x), core(x))
    assert isinstance(mine, patchconv.Conv2D) and isinstance(mine, nn.Layer)
    config = mine.get_config()
    assert config["activation"] == "linear" and config["trainable"] is True
    clone = nn.Conv2D.from_config(config)
    clone.set_weights(mine.get_weights())
    np.testing.assert_array_equal(clone(x), mine(x))


@settings(max_examples=60)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from(["valid", "same"]),
    st.sampled_from([(1, 1), (2, 2), (1, 2)]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_depthwise_matches_keras_forward_and_gradients(
    kh: int,
    kw: int,
    c_in: int,
    multiplier: int,
    padding: str,
    strides: tuple[int, int],
    use_bias: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 7, 6, c_in)).astype(np.float32)
    theirs = keras.layers.DepthwiseConv2D(
        (kh, kw),
        strides=strides,
        padding=padding,
        depth_multiplier=multiplier,
        use_bias=use_bias,
        bias_initializer="random_normal",
    )
    theirs.build(x.shape)
    mine = nn.DepthwiseConv2D(
        (kh, kw),
        strides=strides,
        padding=padding,
        depth_multiplier=multiplier,
        use_bias=use_bias,
    )
    mine.set_weights(theirs.get_weights())  # builds from the kernel's shape
    assert mine.kernel is not None and mine.kernel.shape == (kh, kw, c_in, multiplier)
    y = mine.forward(x, training=True)
    g = rng.standard_normal(y.shape).astype(np.float32)
    out, gx, gw = keras_forward_backward(theirs, x, g)
    assert_close(y, out, np.float32)
    assert_close(mine.backward(g), gx, np.float32, grad=True)
    for a, b in zip(mine.grads(), gw, strict=True):
        assert_close(a, b, np.float32, grad=True)


def test_depthwise_finite_differences_channels_first() -> None:
    layer = nn.DepthwiseConv2D(
        (3, 2),
        strides=(2, 1),
        padding="same_lower",
        depth_multiplier=2,
        data_format="channels_first",
        dilation_rate=(1, 2),
        activation="sigmoid",
        bias_initializer="random_normal",
        dtype="float64",
        seed=4,
    )
    check_finite_differences(layer, randn((2, 3, 7, 8), seed=1))
    assert layer.compute_output_shape((2, 3, 7, 8)) == (2, 6, 4, 8)


# -- Dense and activations ----------------------------------------------------------------------
def test_dense_matches_pytorch_linear() -> None:
    x = randn((5, 3, 7), seed=2, dtype=np.float32)
    mine = nn.Dense(4, bias_initializer="random_uniform", seed=0)
    y = mine.forward(x, training=True)
    assert mine.kernel is not None and mine.bias is not None
    x_t = torch.from_numpy(x).requires_grad_(True)
    w_t = torch.from_numpy(mine.kernel.T.copy()).requires_grad_(True)  # PyTorch's (out, in)
    b_t = torch.from_numpy(mine.bias.copy()).requires_grad_(True)
    out = F.linear(x_t, w_t, b_t)
    g = randn(y.shape, seed=3, dtype=np.float32)
    out.backward(torch.from_numpy(g))
    assert_close(y, out.detach().numpy(), np.float32)
    assert_close(mine.backward(g), x_t.grad.numpy(), np.float32, grad=True)
    gk, gb = mine.grads()
    assert_close(gk, w_t.grad.numpy().T, np.float32, grad=True)
    assert_close(gb, b_t.grad.numpy(), np.float32, grad=True)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_dense_with_each_activation_finite_differences(activation: str) -> None:
    layer = nn.Dense(5, activation=activation, bias_initializer="random_normal", dtype="float64")
    check_finite_differences(layer, randn((4, 6), seed=5))


TORCH_ACTIVATIONS = {
    "linear": lambda t: t,
    "relu": F.relu,
    "relu6": F.relu6,
    "leaky_relu": lambda t: F.leaky_relu(t, 0.2),
    "elu": F.elu,
    "selu": F.selu,
    "sigmoid": torch.sigmoid,
    # Keras 3 definition (F.hardsigmoid scales its float64 gradient by a float32 1/6).
    "hard_sigmoid": lambda t: F.relu6(t + 3) / 6,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "silu": F.silu,
    "swish": F.silu,
    "softmax": lambda t: F.softmax(t, dim=-1),
}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activation_matches_pytorch_autograd(activation: str) -> None:
    x = randn((3, 4, 5), seed=6) * 4  # wide enough to reach relu6's and hard_sigmoid's limits
    layer = nn.Activation(activation)
    y = layer.forward(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = TORCH_ACTIVATIONS[activation](x_t)
    g = randn(x.shape, seed=7)
    out.backward(torch.from_numpy(g))
    assert_close(y, out.detach().numpy(), np.float64)
    assert_close(layer.backward(g), x_t.grad.numpy(), np.float64, grad=True)


@pytest.mark.parametrize(
    "layer",
    [
        nn.ReLU(),
        nn.ReLU(max_value=1.5),
        nn.ReLU(negative_slope=0.1, threshold=0.3),
        nn.LeakyReLU(),
        nn.Softmax(axis=1),
        nn.Softmax(axis=[1, 2]),
        nn.Sigmoid(),
        nn.Tanh(),
    ],
    ids=repr,
)
def test_activation_layers_match_keras(layer: nn.Layer) -> None:
    config = layer.get_config()
    for key in ("name", "dtype", "trainable"):
        config.pop(key)
    cls = type(layer).__name__
    if cls in ("Sigmoid", "Tanh"):
        theirs = keras.layers.Activation(cls.lower(), dtype="float64")
    else:
        theirs = getattr(keras.layers, cls)(dtype="float64", **config)
    x = randn((3, 4, 5), seed=8) * 2
    g = randn(x.shape, seed=9)
    out, gx, _ = keras_forward_backward(theirs, x, g)
    assert_close(layer.forward(x), out, np.float64)
    assert_close(layer.backward(g), gx, np.float64, grad=True)


@pytest.mark.parametrize("negative_slope", [0.0, 0.1])
def test_relu_threshold_matches_keras_at_the_threshold(negative_slope: float) -> None:
    """Keras computes ``x * (x > threshold)``: 0 at the threshold, gradient 0 there; this
    gave x and a gradient of 1 (random inputs never hit it). A negative threshold is refused,
    as Keras' ReLU layer refuses it."""
    x = np.array([[-0.5, 0.0, 0.5, 0.75, 1.0, 3.0]])
    g = np.arange(1.0, 7.0).reshape(x.shape)
    mine = nn.ReLU(negative_slope=negative_slope, threshold=0.5)
    theirs = keras.layers.ReLU(negative_slope=negative_slope, threshold=0.5, dtype="float64")
    out, gx, _ = keras_forward_backward(theirs, x, g)
    assert mine.forward(x)[0, 2] == 0.0 == out[0, 2]
    assert_close(mine.forward(x), out, np.float64)
    assert_close(mine.backward(g), gx, np.float64, grad=True)
    with pytest.raises(PatchconvError, match=r"ReLU: threshold must be >= 0; got -1.0"):
        nn.ReLU(max_value=2.0, threshold=-1.0)


# -- pooling ------------------------------------------------------------------------------------
@st.composite
def pool_cases(draw: st.DrawFn) -> dict[str, Any]:
    pool = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(
        st.one_of(
            st.sampled_from(["valid", "same"]),
            st.tuples(
                st.tuples(st.integers(0, pool[0] - 1), st.integers(0, pool[0] - 1)),
                st.tuples(st.integers(0, pool[1] - 1), st.integers(0, pool[1] - 1)),
            ),
        )
    )
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    h, w = draw(st.integers(pool[0], 8)), draw(st.integers(pool[1], 8))
    c = draw(st.integers(1, 3))
    shape = (2, c, h, w) if data_format == "channels_first" else (2, h, w, c)
    return {
        "pool_size": pool,
        "strides": strides,
        "padding": padding,
        "data_format": data_format,
        "shape": shape,
        "seed": draw(st.integers(0, 2**31)),
    }


def _torch_pool(kind: str, case: dict[str, Any], x_t: torch.Tensor, include_pad: bool) -> Any:
    """PyTorch pooling with any padding made explicit (-inf for max, zeros for average)."""
    from reference import pads_for

    nchw = x_t if case["data_format"] == "channels_first" else x_t.permute(0, 3, 1, 2)
    top, bottom, left, right = pads_for(
        case["padding"], nchw.shape[2], nchw.shape[3], *case["pool_size"], case["strides"], (1, 1)
    )
    pad = (left, right, top, bottom)
    k, s = case["pool_size"], case["strides"]
    if kind == "max":
        out = F.max_pool2d(F.pad(nchw, pad, value=-float("inf")), k, s)
    else:
        total = F.avg_pool2d(F.pad(nchw, pad), k, s, divisor_override=1)
        if include_pad:
            out = total / (k[0] * k[1])
        else:
            ones = F.pad(torch.ones_like(nchw[:1, :1]), pad)
            out = total / F.avg_pool2d(ones, k, s, divisor_override=1)
    return out if case["data_format"] == "channels_first" else out.permute(0, 2, 3, 1)


@settings(max_examples=150)
@given(pool_cases(), st.sampled_from(["max", "avg", "avg_include_pad"]))
def test_pools_match_pytorch_autograd(case: dict[str, Any], kind: str) -> None:
    options = {k: case[k] for k in ("pool_size", "strides", "padding", "data_format")}
    if kind == "max":
        layer: nn.Layer = nn.MaxPool2D(**options)
    else:
        layer = nn.AveragePool2D(**options, count_include_pad=kind == "avg_include_pad")
    x = randn(case["shape"], seed=case["seed"])
    y = layer.forward(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = _torch_pool(kind[:3], case, x_t, kind == "avg_include_pad")
    g = randn(y.shape, seed=case["seed"] + 1)
    out.backward(torch.from_numpy(g))
    assert y.shape == tuple(out.shape) == layer.compute_output_shape(x.shape)
    assert_close(y, out.detach().numpy(), np.float64)
    assert_close(layer.backward(g), x_t.grad.numpy(), np.float64, grad=True)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("cls", ["MaxPool2D", "AveragePool2D"])
def test_pools_match_keras(cls: str, padding: str) -> None:
    """Keras' own layers, "same" included (odd padding goes bottom/right; averages exclude it)."""
    keras_cls = {
        "MaxPool2D": keras.layers.MaxPooling2D,
        "AveragePool2D": keras.layers.AveragePooling2D,
    }
    x = randn((2, 7, 6, 3), seed=10)
    theirs = keras_cls[cls]((3, 2), strides=(2, 2), padding=padding, dtype="float64")
    mine = getattr(nn, cls)((3, 2), strides=(2, 2), padding=padding)
    g = randn(theirs.compute_output_shape(x.shape), seed=11)
    out, gx, _ = keras_forward_backward(theirs, x, g)
    assert_close(mine.forward(x), out, np.float64)
    assert_close(mine.backward(g), gx, np.float64, grad=True)


def test_max_pool_gradient_goes_to_the_first_maximum() -> None:
    x = np.ones((1, 2, 2, 1))
    layer = nn.MaxPool2D(2)
    layer(x)
    np.testing.assert_array_equal(
        layer.backward(np.ones((1, 1, 1, 1)))[0, :, :, 0], [[1, 0], [0, 0]]
    )


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_average_pooling_matches_pytorch(data_format: str, keepdims: bool) -> None:
    # PyTorch, not Keras: Keras' torch-backend mean loses float64 precision (3e-8 here).
    x = randn((2, 3, 4, 5), seed=12)
    axes = (2, 3) if data_format == "channels_first" else (1, 2)
    mine = nn.GlobalAveragePooling2D(data_format, keepdims=keepdims)
    x_t = torch.from_numpy(x).requires_grad_(True)
    out = x_t.mean(dim=axes, keepdim=keepdims)
    g = randn(tuple(out.shape), seed=13)
    out.backward(torch.from_numpy(g))
    assert mine.compute_output_shape(x.shape) == tuple(out.shape)
    assert_close(mine.forward(x), out.detach().numpy(), np.float64)
    assert_close(mine.backward(g), x_t.grad.numpy(), np.float64, grad=True)


# -- BatchNormalization -------------------------------------------------------------------------
BN_CASES = [(-1, (6, 3, 4, 5)), (1, (6, 5, 3, 4)), (-1, (8, 7))]


def _bn_start(features: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [
        rng.uniform(0.5, 1.5, features),
        rng.standard_normal(features),
        rng.standard_normal(features),
        rng.uniform(0.5, 2.0, features),
    ]


@pytest.mark.parametrize("axis, shape", BN_CASES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_normalization_matches_keras(
    axis: int, shape: tuple[int, ...], training: bool
) -> None:
    """Keras' own layer, three steps: outputs, gradients, moving statistics. In float32:
    Keras' torch backend computes means only to float32 precision, even for float64."""
    rng = np.random.default_rng(14)
    theirs = keras.layers.BatchNormalization(axis=axis, momentum=0.9)
    theirs.build(shape)
    start = [w.astype(np.float32) for w in _bn_start(shape[axis], rng)]
    theirs.set_weights(start)
    mine = nn.BatchNormalization(axis=axis, momentum=0.9)
    mine.build(shape)
    mine.set_weights(start)
    for _ in range(3):
        x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
        g = rng.standard_normal(shape).astype(np.float32)
        for w in theirs.trainable_weights:
            w.value.grad = None
        out, gx, gw = keras_forward_backward(theirs, x, g, training=training)
        assert_close(mine.forward(x, training=training), out, np.float32)
        assert_close(mine.backward(g), gx, np.float32, grad=True)
        for a, b in zip(mine.grads(), gw, strict=True):
            assert_close(a, b, np.float32, grad=True)
        for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
            assert_close(a, b, np.float32)


def test_batch_normalization_in_float16_computes_in_float32_as_keras() -> None:
    """float16 values near 30: their variance overflowed in float16 (outputs 0, the moving
    variance inf). Keras' float16 layer computes the moments in float32; so does this one,
    and gives Keras' outputs, gradients and moving statistics in float16."""
    shape = (64, 8, 8, 2)
    x = (np.random.default_rng(0).standard_normal(shape) + 30).astype(np.float16)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float16)
    mine = nn.BatchNormalization(dtype="float16")
    theirs = keras.layers.BatchNormalization(dtype="float16")
    theirs.build(shape)
    out, gx, gw = keras_forward_backward(theirs, x, g, training=True)
    y = mine(x, training=True)
    assert y.dtype == np.float16 and np.isfinite(mine.moving_variance).all()
    assert_close(y, out, np.float16)
    assert_close(mine.backward(g), gx, np.float16, grad=True)
    for a, b in zip(mine.grads(), gw, strict=True):
        assert a.dtype == np.float16
        assert_close(a, b, np.float16, grad=True)
    for a, b in zip(mine.get_weights(), theirs.get_weights(), strict=True):
        assert_close(a, b, np.float16)


@pytest.mark.parametrize("axis, shape", BN_CASES)
def test_batch_normalization_training_matches_pytorch_in_float64(
    axis: int, shape: tuple[int, ...]
) -> None:
    """F.batch_norm in training mode; PyTorch's momentum m is Keras' 1 - m. PyTorch keeps the
    unbiased variance as running_var, Keras the biased one: that one is checked by formula."""
    rng = np.random.default_rng(15)
    gamma, beta, mean, var = _bn_start(shape[axis], rng)
    mine = nn.BatchNormalization(axis=axis, momentum=0.9, epsilon=1e-3, dtype="float64")
    mine.build(shape)
    mine.set_weights([gamma, beta, mean, var])
    x = rng.standard_normal(shape) * 2 + 1
    g = rng.standard_normal(shape)
    nchw = np.moveaxis(x, axis, 1)
    x_t = torch.from_numpy(np.ascontiguousarray(nchw)).requires_grad_(True)
    w_t = torch.from_numpy(gamma.copy()).requires_grad_(True)
    b_t = torch.from_numpy(beta.copy()).requires_grad_(True)
    running_mean = torch.from_numpy(mean.copy())
    out = F.batch_norm(x_t, running_mean, torch.from_numpy(var.copy()), w_t, b_t, True, 0.1, 1e-3)
    out.backward(torch.from_numpy(np.ascontiguousarray(np.moveaxis(g, axis, 1))))
    assert_close(
        mine.forward(x, training=True), np.moveaxis(out.detach().numpy(), 1, axis), np.float64
    )
    assert_close(mine.backward(g), np.moveaxis(x_t.grad.numpy(), 1, axis), np.float64, grad=True)
    g_gamma, g_beta = mine.grads()
    assert_close(g_gamma, w_t.grad.numpy(), np.float64, grad=True)
    assert_close(g_beta, b_t.grad.numpy(), np.float64, grad=True)
    reduce = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    assert_close(mine.get_weights()[2], running_mean.numpy(), np.float64)
    assert_close(mine.get_weights()[3], 0.9 * var + 0.1 * x.var(axis=reduce), np.float64)


def test_batch_normalization_finite_differences_and_weight_order() -> None:
    layer = nn.BatchNormalization(axis=1, dtype="float64")
    x = randn((5, 3, 2, 2), seed=15)
    layer.build(x.shape)
    assert layer.gamma is not None and layer.beta is not None
    layer.gamma[...] = [0.5, 1.5, 2.0]
    layer.beta[...] = [0.1, -0.2, 0.3]
    check_finite_differences(layer, x, training=True)
    check_finite_differences(layer, x, training=False)
    assert layer.weight_names() == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert len(layer.params()) == 2  # the moving statistics are weights, not trainable
    frozen = nn.BatchNormalization(trainable=False)
    frozen(x, training=True)
    np.testing.assert_array_equal(frozen.get_weights()[2], 0)  # Keras: frozen BN infers


# -- Flatten, ZeroPadding2D, Dropout ------------------------------------------------------------
def test_flatten_channels_first_is_pytorchs_order() -> None:
    x = randn((2, 3, 4, 5), seed=16)  # (n, c, h, w)
    y = nn.Flatten(data_format="channels_first")(x)
    np.testing.assert_array_equal(y, torch.flatten(torch.from_numpy(x), 1).numpy())
    last = nn.Flatten()
    z = last(x.transpose(0, 2, 3, 1))  # (n, h, w, c): Keras' (h, w, c) order
    np.testing.assert_array_equal(z, x.transpose(0, 2, 3, 1).reshape(2, -1))
    np.testing.assert_array_equal(last.backward(z), x.transpose(0, 2, 3, 1))


@pytest.mark.parametrize("padding", [1, (2, 1), ((1, 0), (0, 3))])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_zero_padding_matches_keras(padding: Any, data_format: str) -> None:
    x = randn((2, 3, 4, 5), seed=17)
    theirs = keras.layers.ZeroPadding2D(padding, data_format=data_format, dtype="float64")
    mine = nn.ZeroPadding2D(padding, data_format=data_format)
    g = randn(theirs.compute_output_shape(x.shape), seed=18)
    out, gx, _ = keras_forward_backward(theirs, x, g)
    assert_close(mine.forward(x), out, np.float64)
    assert_close(mine.backward(g), gx, np.float64, grad=True)
    assert nn.ZeroPadding2D.from_config(mine.get_config()).pads == mine.pads


def test_dropout_is_seeded_scaled_and_uses_its_mask_backward() -> None:
    x = np.ones((200, 50))
    a, b = nn.Dropout(0.25, seed=7), nn.Dropout(0.25, seed=7)
    ya, yb = a.forward(x, training=True), b.forward(x, training=True)
    np.testing.assert_array_equal(ya, yb)
    assert set(np.unique(ya).tolist()) == {0.0, 1 / 0.75}
    assert abs((ya == 0).mean() - 0.25) < 0.02
    g = randn(x.shape, seed=19)
    np.testing.assert_array_equal(a.backward(g), g * ya)  # ya is exactly the mask
    np.testing.assert_array_equal(a.forward(x, training=False), x)
    np.testing.assert_array_equal(a.backward(g), g)


# -- losses -------------------------------------------------------------------------------------
def test_softmax_cross_entropy_matches_pytorch() -> None:
    logits = randn((7, 5), seed=20) * 3
    labels = np.array([0, 4, 2, 2, 1, 3, 0])
    value, grad = nn.SoftmaxCrossEntropy().value_and_grad(labels, logits)
    t = torch.from_numpy(logits).requires_grad_(True)
    loss = F.cross_entropy(t, torch.from_numpy(labels))
    loss.backward()
    np.testing.assert_allclose(value, loss.item(), rtol=1e-12)
    assert_close(grad, t.grad.numpy(), np.float64, grad=True)


def test_cross_entropy_from_probabilities_matches_keras_and_finite_differences() -> None:
    probs = nn.Activation("softmax")(randn((6, 4), seed=21))
    labels = np.array([1, 0, 3, 2, 2, 1])
    loss = nn.SparseCategoricalCrossentropy()
    theirs = keras.losses.SparseCategoricalCrossentropy()
    value, grad = loss.value_and_grad(labels, probs)
    np.testing.assert_allclose(value, float(theirs(labels, probs)), rtol=1e-6)
    eps = 1e-6
    for i, j in [(0, 1), (2, 3), (4, 0)]:
        p = probs.copy()
        p[i, j] += eps
        up = loss(labels, p)
        p[i, j] -= 2 * eps
        down = loss(labels, p)
        np.testing.assert_allclose(grad[i, j], (up - down) / (2 * eps), rtol=1e-5)


def test_mean_squared_error_matches_pytorch() -> None:
    pred, target = randn((4, 3), seed=22), randn((4, 3), seed=23)
    value, grad = nn.MeanSquaredError().value_and_grad(target, pred)
    t = torch.from_numpy(pred).requires_grad_(True)
    loss = F.mse_loss(t, torch.from_numpy(target))
    loss.backward()
    np.testing.assert_allclose(value, loss.item(), rtol=1e-12)
    assert_close(grad, t.grad.numpy(), np.float64, grad=True)


def test_frozen_branches_freeze_their_layers() -> None:
    """As Keras: ``trainable=False`` on AddBranches (or set later) sets it on every branch
    layer, so a BatchNormalization inside runs on its moving statistics and keeps them; it
    updated them while its block was frozen."""
    bn = nn.BatchNormalization()
    block = nn.AddBranches([[bn], []], trainable=False)
    x = randn((8, 3), seed=3).astype(np.float32) + 5
    y = block.forward(x, training=True)
    assert not bn.trainable and not bn.moving_mean.any()
    assert_close(y, x / np.sqrt(1 + 1e-3) + x, np.float32)  # moving mean 0, variance 1
    assert block.params() == []
    block.trainable = True
    assert bn.trainable
    block.forward(x, training=True)
    assert bn.moving_mean.any()
    block.trainable = False
    assert not bn.trainable and block.get_config()["trainable"] is False


def test_leaky_relu_gradient_at_zero_is_the_slope() -> None:
    """PyTorch and Keras run a plain leaky ReLU as leaky_relu: gradient negative_slope at 0
    (a threshold above 0, or a max_value, gives 0 there, as Keras' formula)."""
    x = np.array([[-1.0, 0.0, 1.0]])
    layer = nn.LeakyReLU(0.2)
    layer.forward(x)
    x_t = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.leaky_relu(x_t, 0.2).backward(torch.ones_like(x_t))
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), x_t.grad.numpy())
    capped = nn.ReLU(negative_slope=0.2, max_value=6.0)
    capped.forward(x)
    np.testing.assert_array_equal(capped.backward(np.ones_like(x)), [[0.2, 0.0, 1.0]])


def test_batch_normalization_keeps_its_statistics_on_an_empty_batch() -> None:
    """An empty batch (conv2d takes one now) made the moving statistics NaN; PyTorch's
    BatchNorm keeps them."""
    bn = nn.BatchNormalization()
    bn.build((1, 4))
    y = bn.forward(np.zeros((0, 4), np.float32), training=True)
    assert y.shape == (0, 4)
    np.testing.assert_array_equal(bn.moving_mean, 0.0)
    np.testing.assert_array_equal(bn.moving_variance, 1.0)
