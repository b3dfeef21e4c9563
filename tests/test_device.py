"""``device=`` and ``dtype=`` (:mod:`vistok._device`): checked when a tokenizer is created, with one clear
``ValueError``; half precision gives float32 outputs close to float32's, for every tokenizer that runs a torch model."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok._device import Placement, placement, to_numpy
from vistok.samples import sample_images

PLACED = [n for n in vistok.list_tokenizers() if "device" in vistok.tokenizer_info(n).config_fields()]
#: > 3 s each on 2 cores (EfficientNet-Lite0 in bfloat16 on the CPU)
SLOW = {"cnn", "efficientnet-lite0", "siglip-fmnist"}
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def small_image() -> Image.Image:
    return Image.open(sample_images()[0]).convert("RGB").resize((96, 64), Image.Resampling.BICUBIC)


def test_every_torch_tokenizer_takes_device_and_dtype():
    assert {"cnn", "efficientnet-lite0", "vit", "focus-vit-s14", "clip", "siglip", "sd-vae", "learned",
            "fsq-fmnist", "fsq-natural64", "siglip-fmnist"} <= set(PLACED)
    for name in PLACED:
        fields = vistok.tokenizer_info(name).config_fields()
        assert fields["device"] == "cpu" and fields["dtype"] == "float32", name


@no_cuda
@pytest.mark.parametrize("name", PLACED)
def test_bad_devices_and_dtypes_are_clear_errors(name, load_any):
    with pytest.raises(ValueError, match=r"^device='cuda': torch.cuda.is_available\(\) is False .*use device='cpu'$"):
        load_any(name, device="cuda")
    with pytest.raises(ValueError, match=r"^device='nonsense' is not a torch device string; use 'cpu', 'cuda'"):
        load_any(name, device="nonsense")
    with pytest.raises(ValueError, match=r"^dtype='float64' is not a precision .* 'bfloat16'$"):
        load_any(name, dtype="float64")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in PLACED])
def test_bfloat16_gives_float32_outputs_close_to_float32(name, load_any):
    image = small_image()
    full = load_any(name).encode(image)
    tok = load_any(name, dtype="bfloat16")
    half = tok.encode(image)
    assert half.meta["config"]["dtype"] == "bfloat16"
    assert half.values.dtype == full.values.dtype and half.values.shape == full.values.shape
    assert half.extras.keys() == full.extras.keys()
    for key, value in half.extras.items():
        assert value.dtype == full.extras[key].dtype and value.shape == full.extras[key].shape, key
    a, b = full.values.astype(np.float64), half.values.astype(np.float64)
    if full.is_hard:  # ids: a value near a quantizer's boundary may round the other way
        assert (a == b).mean() > 0.9
    else:
        assert abs(b.mean() - a.mean()) < 5e-2 * np.abs(a).mean()
        assert (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99
    if tok.decodable:
        assert tok.decode(half).size == tuple(half.meta["working_size"])


@pytest.mark.parametrize("name", ["fsq-fmnist", "vit", "clip"])
def test_float16_runs_on_the_cpu(name, load_any):
    image = small_image()
    full, half = load_any(name).encode(image), load_any(name, dtype="float16").encode(image)
    assert half.values.dtype == full.values.dtype
    if not full.is_hard:
        assert np.allclose(half.values, full.values, rtol=5e-2, atol=5e-2)


def test_onnxruntime_backend_is_cpu_float32_only():
    with pytest.raises(ValueError, match="backend='onnxruntime' runs on the CPU in float32 only.*backend='torch'"):
        vistok.load("focus-vit-s14", backend="onnxruntime", dtype="bfloat16")
    assert vistok.load("focus-vit-s14", backend="onnxruntime", device="cpu", dtype="float32").backend == "onnxruntime"


def test_placement_moves_inputs_and_brings_float32_back():
    place = placement("cpu", "bfloat16")
    assert place == Placement("cpu", "bfloat16") and place.torch_dtype == torch.bfloat16
    assert place.inputs(torch.zeros(2)).dtype == torch.bfloat16
    assert place.inputs(torch.zeros(2, dtype=torch.long)).dtype == torch.long  # ids keep their type
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32
    assert to_numpy(torch.ones(2, dtype=torch.long)).dtype == np.int64
    layer = torch.nn.Linear(2, 2)
    assert Placement().model(layer) is layer and place.model(layer).weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="device=3: pass a torch device string"):
        placement(3)


@no_cuda
def test_cli_takes_device_and_dtype_as_options(tmp_path):
    from vistok.cli import app

    image, out = sample_images()[0], tmp_path / "t.safetensors"
    result = CliRunner().invoke(app, ["tokenize", str(image), "-t", "fsq-fmnist", "-c", "device=cuda"])
    assert result.exit_code == 2 and "torch.cuda.is_available() is False" in result.output
    result = CliRunner().invoke(app, ["tokenize", str(image), "-t", "fsq-fmnist", "-c", "dtype=bfloat16",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert vistok.Tokens.load(out).meta["config"]["dtype"] == "bfloat16"
