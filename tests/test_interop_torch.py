"""PyTorch -> patchconv: nn.Sequential models with random weights, loaded live, from
safetensors (read with NumPy alone) and from weights_only checkpoints, compared in eval mode."""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from torch import nn as tnn

from conftest import assert_close
from patchconv import PatchconvError, nn
from patchconv.interop import describe, from_state_dict, from_torch
from patchconv.interop.torch import read_safetensors, read_state_dict


def _strided_even() -> tnn.Sequential:
    """padding=1 at stride 2 on even sizes pads (1, 1), where Keras' "same" pads (0, 1)."""
    return tnn.Sequential(
        tnn.Conv2d(3, 6, 3, stride=2, padding=1),
        tnn.ReLU(),
        tnn.Conv2d(6, 4, (2, 3), stride=2, padding=(0, 1)),
        tnn.AdaptiveAvgPool2d(1),
        tnn.Flatten(),
        tnn.Linear(4, 3),
    )


def _depthwise_dilation_bn() -> tnn.Sequential:
    return tnn.Sequential(
        tnn.Conv2d(4, 8, 3, groups=4, dilation=2, padding="same"),
        tnn.BatchNorm2d(8),
        tnn.ReLU6(),
        tnn.Conv2d(8, 6, 3, groups=2, padding="valid", bias=False),
        tnn.BatchNorm2d(6, affine=False, eps=1e-3),
        tnn.LeakyReLU(0.1),
        tnn.MaxPool2d(2),
        tnn.Flatten(),
        tnn.Linear(6 * 2 * 2, 5),
        tnn.Softmax(dim=1),
    )


def _padding_modes_pooling() -> tnn.Sequential:
    return tnn.Sequential(
        tnn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        tnn.Tanh(),
        tnn.Conv2d(4, 4, 3, stride=2, padding=2, padding_mode="circular"),
        tnn.Sigmoid(),
        tnn.Conv2d(4, 3, 4, padding="same", padding_mode="replicate"),
        tnn.ZeroPad2d((1, 0, 2, 1)),
        tnn.AvgPool2d(3, stride=2, padding=1),  # count_include_pad=True, PyTorch's default
        tnn.MaxPool2d(3, stride=1, padding=1),
        tnn.Dropout(0.3),
        tnn.Identity(),
        tnn.Flatten(),
        tnn.Linear(3 * 4 * 3, 2),
    )


def _nested() -> tnn.Sequential:
    return tnn.Sequential(
        tnn.Sequential(tnn.Conv2d(3, 4, 3, stride=2, padding=1), tnn.BatchNorm2d(4), tnn.ReLU()),
        tnn.Sequential(tnn.Conv2d(4, 4, 3, groups=4, padding=1), tnn.AvgPool2d(2)),
        tnn.Flatten(),
        tnn.Linear(4 * 2 * 2, 3),
    )


ARCHITECTURES: dict[str, tuple[Callable[[], tnn.Sequential], tuple[int, ...]]] = {
    "strided_even": (_strided_even, (3, 3, 8, 10)),
    "depthwise_dilation_bn": (_depthwise_dilation_bn, (3, 4, 7, 7)),
    "padding_modes_pooling": (_padding_modes_pooling, (3, 2, 8, 7)),
    "nested": (_nested, (3, 3, 8, 8)),
}


def _randomised(builder: Callable[[], tnn.Sequential], seed: int) -> tnn.Sequential:
    torch.manual_seed(seed)
    module = builder()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                if m.affine:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    return module.eval()


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def saved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    builder, shape = ARCHITECTURES[request.param]
    module = _randomised(builder, seed=len(request.param))
    folder = tmp_path_factory.mktemp(request.param)
    state = module.state_dict()
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in state.items()}, folder / "m.safetensors"
    )
    torch.save(state, folder / "m.pt")
    (folder / "arch.json").write_text(json.dumps(describe(module)))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    return module, folder, x, expected


def test_live_module_matches(saved: tuple) -> None:
    module, _, x, expected = saved
    ours = from_torch(module)
    assert isinstance(ours, nn.Sequential)
    assert_close(ours.predict(x), expected, np.float32)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_float64_module_runs_in_float64(name: str, tmp_path: Path) -> None:
    # Its layers were float32: the weights rounded, the output float32 (error 7e-8).
    builder, shape = ARCHITECTURES[name]
    module = _randomised(builder, seed=7).double()
    x = np.random.default_rng(2).standard_normal(shape)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()}, tmp_path / "m.safetensors"
    )
    for ours in (from_torch(module), from_state_dict(tmp_path / "m.safetensors", describe(module))):
        out = ours.predict(x)
        assert out.dtype == np.float64
        assert_close(out, expected, np.float64)


def test_safetensors_and_json_architecture_match(saved: tuple) -> None:
    """The torch-free route: a .safetensors file and the architecture as JSON."""
    _, folder, x, expected = saved
    ours = from_state_dict(folder / "m.safetensors", folder / "arch.json")
    assert_close(ours.predict(x), expected, np.float32)


def test_weights_only_checkpoint_matches(saved: tuple) -> None:
    _, folder, x, expected = saved
    ours = from_torch(folder / "m.pt", json.loads((folder / "arch.json").read_text()))
    assert_close(ours.predict(x), expected, np.float32)


def test_torch_padding_is_explicit_not_keras_same() -> None:
    """PyTorch's padding=1 at stride 2 on an 8-wide input is (1, 1); Keras' "same" is (0, 1)."""
    module = _randomised(_strided_even, seed=0)
    ours = from_torch(module)
    first = ours.layers[0]
    assert first.padding == ((1, 1), (1, 1))
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 10)).astype(np.float32)
    kernel, bias = first.get_weights()
    import patchconv

    same = patchconv.conv2d(
        x, kernel, bias, strides=2, padding="same", data_format="channels_first"
    )
    with torch.no_grad():
        expected = module[0](torch.from_numpy(x)).numpy()
    assert_close(first(x), expected, np.float32)
    assert np.abs(same - expected).max() > 0.1  # "same" would be wrong here


def test_safetensors_whose_first_byte_looks_like_a_pickle_are_read(tmp_path: Path) -> None:
    # A header of 128 bytes modulo 256 starts the file with 0x80, a pickle's first byte: about
    # 1 in 5 Conv2d(3, n, 3) state_dicts (n = 1..128) were refused as "a raw pickle".
    found = []
    for n in range(1, 40):
        state = torch.nn.Conv2d(3, n, 3).state_dict()
        path = tmp_path / f"m{n}.safetensors"
        safetensors.torch.save_file(state, path)
        if path.read_bytes()[:1] == b"\x80":
            found.append(n)
            loaded = read_state_dict(path)
            np.testing.assert_array_equal(loaded["weight"], state["weight"].numpy())
    assert found, "no header of 128 bytes modulo 256 among these"
    (tmp_path / "p.pt").write_bytes(b"\x80\x04\x95" + bytes(20))  # a raw pickle stays refused
    with pytest.raises(PatchconvError, match=r"is a raw pickle; only .safetensors"):
        read_state_dict(tmp_path / "p.pt")


def test_read_safetensors_matches_the_safetensors_package(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": rng.standard_normal((2, 2)).astype(np.float16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.array(2.5, dtype=np.float32),
    }
    safetensors.numpy.save_file(tensors, tmp_path / "t.safetensors")
    ours = read_safetensors(tmp_path / "t.safetensors")
    assert sorted(ours) == sorted(tensors)
    for key, value in tensors.items():
        assert ours[key].dtype == value.dtype
        np.testing.assert_array_equal(ours[key], value)
    bf16 = torch.randn(4, 3).to(torch.bfloat16)
    safetensors.torch.save_file({"w": bf16}, tmp_path / "bf16.safetensors")
    np.testing.assert_array_equal(
        read_safetensors(tmp_path / "bf16.safetensors")["w"], bf16.float().numpy()
    )


def test_loaded_torch_model_trains() -> None:
    model = from_torch(_randomised(_nested, seed=4))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    model.compile(nn.Adam(1e-2), nn.SoftmaxCrossEntropy())
    before = model.evaluate(x, y)["loss"]
    for _ in range(8):
        model.train_on_batch(x, y)
    assert model.evaluate(x, y)["loss"] < 0.8 * before


# -- errors ------------------------------------------------------------------------------------
class _Boom:
    """Unpickling this would create a file: proof that nothing was unpickled."""

    marker: Path | None = None

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickle_only_checkpoint_is_refused_unopened(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    boom = _Boom()
    boom.marker = marker
    torch.save({"0.weight": torch.zeros(2), "payload": boom}, tmp_path / "evil.pt")
    with pytest.raises(
        PatchconvError,
        match=r"read_state_dict: .*evil.pt' is not a weights-only PyTorch checkpoint",
    ):
        read_state_dict(tmp_path / "evil.pt")
    torch.save(_randomised(_nested, seed=0), tmp_path / "whole_module.pt")  # pickles the module
    with pytest.raises(PatchconvError, match=r"is not a weights-only PyTorch checkpoint"):
        from_torch(tmp_path / "whole_module.pt", [])
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(boom))
    with pytest.raises(
        PatchconvError,
        match=r"raw.pt' is a raw pickle; only .safetensors and PyTorch zip checkpoints",
    ):
        read_state_dict(tmp_path / "raw.pt")
    assert not marker.exists()


def test_truncated_and_random_files(saved: tuple, tmp_path: Path) -> None:
    _, folder, _, _ = saved
    blob = (folder / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(PatchconvError, match=r"cut.pt' is a truncated or damaged zip checkpoint"):
        read_state_dict(tmp_path / "cut.pt")
    noise = np.random.default_rng(0).bytes(1000)
    (tmp_path / "noise.safetensors").write_bytes(noise)
    with pytest.raises(
        PatchconvError, match=r"read_state_dict: .*noise.safetensors' is not a zip checkpoint"
    ):
        read_state_dict(tmp_path / "noise.safetensors")
    data = (folder / "m.safetensors").read_bytes()
    (tmp_path / "short.safetensors").write_bytes(data[:-8])
    with pytest.raises(PatchconvError, match=r"do not fit the \d+-byte data section"):
        read_safetensors(tmp_path / "short.safetensors")
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 10**9) + header)
    with pytest.raises(PatchconvError, match=r"its header length \(1000000000\) exceeds the file"):
        read_safetensors(tmp_path / "huge.safetensors")


def test_unsupported_modules_are_named() -> None:
    with pytest.raises(PatchconvError, match=r"describe: module '1' \(Upsample\) is not supported"):
        from_torch(tnn.Sequential(tnn.Conv2d(1, 1, 3), tnn.Upsample(scale_factor=2)))

    class Block(tnn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(
        PatchconvError, match=r"describe: module must be a torch.nn.Sequential; got Block"
    ):
        from_torch(Block())
    with pytest.raises(
        PatchconvError,
        match=r"from_state_dict: module '0' \(MaxPool2d\): ceil_mode=True is not supported",
    ):
        from_torch(tnn.Sequential(tnn.MaxPool2d(2, ceil_mode=True)))


def test_modules_whose_forward_the_state_dict_cannot_show_are_refused() -> None:
    class Residual(tnn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + super().forward(x)

    with pytest.raises(PatchconvError, match=r"got Residual \(a custom forward\(\)"):
        from_torch(Residual(tnn.Conv2d(3, 3, 3, padding=1)))
    with pytest.raises(PatchconvError, match=r"module '1' \(Residual\) subclasses nn.Sequential"):
        from_torch(tnn.Sequential(tnn.ReLU(), Residual(tnn.Conv2d(3, 3, 3, padding=1))))

    class Scaled(tnn.Conv2d):
        pass

    with pytest.raises(PatchconvError, match=r"module '0' \(.*Scaled\) is not supported"):
        from_torch(tnn.Sequential(Scaled(3, 3, 3)))
    hooked = tnn.Sequential(tnn.Conv2d(3, 4, 3))
    hooked[0].register_forward_hook(lambda module, inputs, output: output * 3)
    with pytest.raises(PatchconvError, match=r"module '0' \(Conv2d\) has a forward hook"):
        from_torch(hooked)


def test_architecture_entries_are_checked_key_by_key() -> None:
    state = {"0.weight": np.ones((4, 3, 3, 3), np.float32), "0.bias": np.zeros(4, np.float32)}
    conv = {"type": "Conv2d", "name": "0", "in_channels": 3, "out_channels": 4, "kernel_size": 3}
    relu = {"type": "ReLU", "inplace": True}  # PyTorch's own arguments are all known
    pool = from_state_dict(state, [conv, relu, {"type": "MaxPool2d", "kernel_size": 2}])
    assert pool.predict(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 4, 3, 3)
    for entry, match in (
        ({**conv, "strides": 2}, r"module '0' \(Conv2d\): unknown keys \['strides'\]"),
        ({k: v for k, v in conv.items() if k != "kernel_size"}, r"Conv2d needs \['kernel_size'\]"),
        ({**conv, "padding": "same", "stride": 2}, r"padding='same' needs stride 1"),
        ({"type": "AdaptiveAvgPool2d"}, r"AdaptiveAvgPool2d needs \['output_size'\]"),
    ):
        with pytest.raises(PatchconvError, match=match):
            from_state_dict(state, [entry])
    with pytest.raises(PatchconvError, match=r"padding must be an int or \(left, right, top"):
        from_state_dict(state, [{"type": "ZeroPad2d", "padding": [1, 2]}, conv])
    bn = {"type": "BatchNorm2d", "name": "1", "num_features": 4}
    stats = {f"1.{k}": np.ones(5, np.float32) for k in ("weight", "bias")}
    stats |= {f"1.{k}": np.ones(4, np.float32) for k in ("running_mean", "running_var")}
    with pytest.raises(PatchconvError, match=r"module '1' \(BatchNorm2d\): weight must have"):
        from_state_dict(state | stats, [conv, bn])


def test_state_dict_and_architecture_must_agree(saved: tuple) -> None:
    module, folder, _, _ = saved
    arch = describe(module)
    state = dict(module.state_dict())
    key = next(k for k in state if k.endswith("weight"))
    del state[key]
    with pytest.raises(PatchconvError, match=rf"from_state_dict: .*the state_dict has no '{key}'"):
        from_state_dict(state, arch)
    state = dict(module.state_dict()) | {"extra.weight": torch.zeros(1)}
    with pytest.raises(
        PatchconvError,
        match=r"holds tensors no module in the architecture uses: \['extra.weight'\]",
    ):
        from_state_dict(state, arch)
    with pytest.raises(
        PatchconvError, match=r"from_torch: a state_dict or a file needs its architecture"
    ):
        from_torch(folder / "m.safetensors")


def test_loaders_never_unpickle(saved: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder, x, expected = saved

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    ours = from_state_dict(folder / "m.safetensors", folder / "arch.json")
    assert_close(ours.predict(x), expected, np.float32)


def test_tensors_a_module_does_not_read_are_unused() -> None:
    """A tensor under a module's name that the module does not read (a bias where the
    architecture says bias=False, weights of an Identity) is refused as unused: these were
    counted as used by their name alone and dropped, and the model gave x @ W0.T."""
    rng = np.random.default_rng(0)
    state = {
        "0.weight": rng.random((2, 3)),
        "0.bias": rng.random(2),
        "1.weight": rng.random((2, 2)),
    }
    arch = [
        {"type": "Linear", "name": "0", "in_features": 3, "out_features": 2, "bias": False},
        {"type": "Identity", "name": "1"},
    ]
    with pytest.raises(
        PatchconvError, match=r"no module in the architecture uses: \['0.bias', '1.weight'\]"
    ):
        from_state_dict(state, arch)
    del state["0.bias"], state["1.weight"]
    model = from_state_dict(state, arch)
    assert_close(model.predict(np.ones((1, 3))), np.ones((1, 3)) @ state["0.weight"].T, np.float32)


def test_bfloat16_models_widen_to_float32(tmp_path: Path) -> None:
    """NumPy has no bfloat16: the live and .pt paths widen it to float32 as the safetensors
    path does (they raised torch's "Got unsupported ScalarType BFloat16")."""
    torch.manual_seed(0)
    module = tnn.Sequential(tnn.Conv2d(3, 4, 3)).to(torch.bfloat16)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    x = np.random.default_rng(0).random((1, 3, 6, 6)).astype(np.float32)
    expected = module.float()(torch.from_numpy(x)).detach().numpy()
    for model in (
        from_torch(module.to(torch.bfloat16)),
        from_state_dict(tmp_path / "m.pt", describe(module)),
    ):
        assert model.layers[0].kernel.dtype == np.float32
        assert_close(model.predict(x), expected, np.float32)


@pytest.mark.parametrize(
    ("shape", "offsets"),
    [
        ([-1, -1], [0, 4]),
        ([1], ["0", "4"]),
        ([1], [0, 4.0]),
        ([True], [0, 4]),
        ([2**32, 2**32], [0, 0]),
    ],
)
def test_malformed_safetensors_sizes_are_refused(
    tmp_path: Path, shape: list, offsets: list
) -> None:
    """Negative, string, float and bool sizes or offsets, and sizes whose product overflowed
    int64 to 0, raised NumPy's ValueError or TypeError; each is a PatchconvError naming the
    tensor."""
    header = json.dumps({"a": {"dtype": "F32", "shape": shape, "data_offsets": offsets}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(PatchconvError, match=r"tensor 'a'"):
        read_safetensors(path)
