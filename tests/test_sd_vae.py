"""sd-vae against diffusers' AutoencoderKL called directly, on the tiny VAE of ``tiny_models.tiny_vae_folder``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

import vistok
from vistok.metrics import psnr
from vistok.samples import sample_images
from vistok.tokenizers.sd_vae import SdVaeTokenizer, is_vae_folder

SHIFT, SCALE = 0.25, 0.5


def photo(width: int, height: int, index: int = 0) -> Image.Image:
    return Image.open(sample_images()[index]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def folder(tokenizer_options) -> Path:
    """The tiny trained VAE the registry-wide tests use (built once per session)."""
    return Path(tokenizer_options["sd-vae"]["model"])


@pytest.fixture(scope="module")
def shifted(folder, tmp_path_factory) -> Path:
    """The same weights with a shift and another scaling factor in config.json (as SD3/FLUX VAEs have)."""
    out = tmp_path_factory.mktemp("sd-vae-shifted") / "vae"
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    config.update(shift_factor=SHIFT, scaling_factor=SCALE)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def reference(folder) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(folder, low_cpu_mem_usage=False).eval()


def direct_latents(vae: AutoencoderKL, tok: SdVaeTokenizer, image, sample_seed: int | None = None) -> torch.Tensor:
    """``(1, C, h, w)`` latents from diffusers for ``image`` prepared as the tokenizer prepares it."""
    x = torch.from_numpy(tok.prepare(image)[0]).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        return dist.mean if sample_seed is None else dist.sample(generator=torch.Generator().manual_seed(sample_seed))


def as_tokens(latents: torch.Tensor) -> np.ndarray:
    return latents[0].permute(1, 2, 0).reshape(-1, latents.shape[1]).numpy()


def direct_decode(vae: AutoencoderKL, z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        x = vae.decode(z).sample[0]
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.uint8)


# -- values against diffusers ------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [False, True])
def test_tokens_and_decode_equal_diffusers(shift, folder, shifted, reference):
    shift_factor, scale = (SHIFT, SCALE) if shift else (0.0, 0.18215)
    tok = vistok.load("sd-vae", model=str(shifted if shift else folder))
    image = photo(301, 199)
    tokens = tok.encode(image)
    mean = direct_latents(reference, tok, image)
    assert tokens.grid == tuple(mean.shape[2:]) == (100, 151)
    np.testing.assert_allclose(tokens.values, as_tokens((mean - shift_factor) * scale), atol=1e-5)
    assert tokens.values.dtype == np.float32 and tokens.dim == 4
    meta = tokens.meta
    assert meta["image_size"] == [301, 199] and meta["working_size"] == [302, 200] and meta["factor"] == 2
    assert meta["scaling_factor"] == pytest.approx(scale) and meta["latent_channels"] == 4
    assert meta["shift_factor"] == (SHIFT if shift else None)
    decoded = np.asarray(tok.decode(tokens))
    expected = direct_decode(reference, mean)
    assert decoded.shape == expected.shape == (200, 302, 3)
    assert np.abs(decoded.astype(int) - expected).max() <= 1


def test_unscaled_tokens_are_raw_latents(folder, reference):
    raw = vistok.load("sd-vae", model=str(folder), scaled=False)
    image = photo(64, 48, 3)
    tokens = raw.encode(image)
    np.testing.assert_allclose(tokens.values, as_tokens(direct_latents(reference, raw, image)), atol=1e-5)
    scaled = vistok.load("sd-vae", model=str(folder))
    np.testing.assert_allclose(scaled.encode(image).values, tokens.values * 0.18215, atol=1e-6)
    # decode follows the tokens' own record of the scaling, whichever tokenizer decodes them
    a, b = np.asarray(raw.decode(tokens), int), np.asarray(scaled.decode(tokens), int)
    assert np.abs(a - b).max() <= 1


def test_sample_is_seeded_and_differs_from_the_mean(folder, reference):
    image = photo(80, 64, 1)
    tok = vistok.load("sd-vae", model=str(folder), sample=True, seed=7)
    a, b = tok.encode(image), tok.encode(image)
    assert a.equals(b)
    expected = direct_latents(reference, tok, image, sample_seed=7) * 0.18215
    np.testing.assert_allclose(a.values, as_tokens(expected), atol=1e-5)
    mean = vistok.load("sd-vae", model=str(folder)).encode(image)
    assert np.abs(a.values - mean.values).mean() > 1e-3
    other = vistok.load("sd-vae", model=str(folder), sample=True, seed=8).encode(image)
    assert not np.allclose(other.values, a.values)
    # each image draws from its own generator: a batch gives what single images give
    batch = vistok.load("sd-vae", model=str(folder), sample=True, seed=7, batch_size=2).encode([image, image, image])
    assert all(np.allclose(t.values, a.values, rtol=1e-4, atol=1e-4) for t in batch)


def test_decode_resembles_the_image(folder):
    tok = vistok.load("sd-vae", model=str(folder))
    for path in sample_images()[:3]:
        reference = Image.fromarray((tok.prepare(path)[0] * 255).round().astype(np.uint8))
        assert psnr(reference, tok.decode(tok.encode(path))) > 15.0


def test_tokens_from_a_file_decode_the_same(folder, tmp_path):
    tok = vistok.load("sd-vae", model=str(folder))
    tokens = tok.encode(photo(120, 90, 2))
    tokens.save(tmp_path / "t.safetensors")
    loaded = vistok.Tokens.load(tmp_path / "t.safetensors")
    assert loaded.equals(tokens)
    np.testing.assert_array_equal(np.asarray(tok.decode(loaded)), np.asarray(tok.decode(tokens)))


# -- counting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_side", [512, 64, None])
def test_count_equals_encode(folder, max_side):
    tok = vistok.load("sd-vae", model=str(folder), max_side=max_side)
    sizes = [(1, 1), (3, 7), (33, 17), (301, 199)] + ([(2000, 900), (17, 1300)] if max_side else [])
    counted = [tok.count(*size) for size in sizes]
    encoded = [len(t) for t in tok.encode([photo(*size) for size in sizes])]
    assert counted == encoded
    if max_side == 64:
        assert tok.count(2000, 900) == 32 * 14  # 64 x 28 pixels, factor 2
    assert tok.count(3, 7) == 2 * 4  # (4, 8) pixels: sides rounded to multiples of 2


def test_count_reads_only_the_config(folder, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("count() must not load weights")

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", refuse)
    assert vistok.load("sd-vae", model=str(folder)).count(640, 480) == 256 * 192  # scaled to 512 x 384 first
    # no model: Stable Diffusion's factor 8
    assert vistok.load("sd-vae").count(512, 512) == 64 * 64
    assert vistok.load("sd-vae", max_side=None).count(100, 50) == 13 * 6
    with pytest.raises(ValueError, match="positive"):
        vistok.load("sd-vae").count(0, 5)


# -- finding the VAE --------------------------------------------------------------------------------

def test_pipeline_folder_and_subfolder(folder, tmp_path):
    pipe = tmp_path / "pipeline"
    shutil.copytree(folder, pipe / "vae")
    (pipe / "unet").mkdir()
    (pipe / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    image = photo(50, 40)
    expected = vistok.load("sd-vae", model=str(folder)).encode(image).values
    for options in ({}, {"subfolder": "vae"}):
        np.testing.assert_array_equal(vistok.load("sd-vae", model=str(pipe), **options).encode(image).values, expected)
    with pytest.raises(ValueError, match=r"UNet2DConditionModel, not an AutoencoderKL"):
        vistok.load("sd-vae", model=str(pipe), subfolder="unet").count(8, 8)
    with pytest.raises(FileNotFoundError, match="no subfolder 'text_encoder'"):
        vistok.load("sd-vae", model=str(pipe), subfolder="text_encoder").count(8, 8)


def test_is_vae_folder(folder, tmp_path):
    assert is_vae_folder(folder) and is_vae_folder(str(folder))
    pipe = tmp_path / "pipe"
    shutil.copytree(folder, pipe / "vae")
    assert is_vae_folder(pipe)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (tmp_path / "file.txt").write_text("x")
    for path in (unet, broken, tmp_path / "empty-missing", tmp_path / "file.txt", tmp_path):
        assert not is_vae_folder(path), path


# -- errors ------------------------------------------------------------------------------------------

def test_no_model_says_what_to_pass():
    with pytest.raises(ValueError, match=r"model=PATH of a diffusers AutoencoderKL folder.*vae/ subfolder"):
        vistok.load("sd-vae").encode(photo(16, 16))


def test_folders_that_are_not_a_vae(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*empty"):
        vistok.load("sd-vae", model=str(empty)).count(8, 8)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "sample_size": 64}))
    with pytest.raises(ValueError, match=r"unet.config\.json describes a diffusers UNet2DConditionModel, not an "
                                         r"AutoencoderKL; sd-vae needs a diffusers AutoencoderKL folder"):
        vistok.load("sd-vae", model=str(unet)).count(8, 8)
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    with pytest.raises(ValueError, match=r"transformers clip model, not an AutoencoderKL"):
        vistok.load("sd-vae", model=str(clip)).check()
    with pytest.raises(ValueError, match="is a file"):
        vistok.load("sd-vae", model=str(folder / "config.json")).count(8, 8)
    with pytest.raises(FileNotFoundError, match="no folder at"):
        vistok.load("sd-vae", model=str(tmp_path / "missing")).count(8, 8)


def test_weights_missing_or_not_fitting(folder, tmp_path):
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(folder / "config.json", bare)
    tok = vistok.load("sd-vae", model=str(bare))
    assert tok.count(64, 64) == 32 * 32  # the config alone is enough to count
    with pytest.raises(FileNotFoundError, match=r"has a config\.json but no weights \(diffusion_pytorch_model"):
        tok.encode(photo(16, 16))
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    state.pop("decoder.conv_out.weight")
    state["decoder.extra.weight"] = torch.zeros(2)
    save_file(state, bare / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"weights do not fit.*1 missing keys \(decoder\.conv_out\.weight\).*"
                                         r"1 unexpected keys \(decoder\.extra\.weight\)"):
        vistok.load("sd-vae", model=str(bare)).check()
    state = load_file(folder / "diffusion_pytorch_model.safetensors")
    state["decoder.conv_out.weight"] = torch.zeros(3, 8, 1, 1)
    save_file(state, bare / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"bare.*could not load the AutoencoderKL weights|weights do not fit"):
        vistok.load("sd-vae", model=str(bare)).encode(photo(16, 16))
    (bare / "diffusion_pytorch_model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not load the AutoencoderKL weights"):
        vistok.load("sd-vae", model=str(bare)).check()


def test_hub_id_offline_names_the_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = vistok.load("sd-vae", model="vistok-tests/no-such-vae")
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set.*pass a local path"):
        tok.count(64, 64)


def test_decode_refuses_foreign_tokens(folder):
    tok = vistok.load("sd-vae", model=str(folder))
    with pytest.raises(ValueError, match="decode hard tokens"):
        tok.decode(vistok.Tokens.from_grid(np.arange(4), (2, 2)))
    with pytest.raises(ValueError, match="decode 3-dim tokens"):
        tok.decode(vistok.Tokens.from_grid(np.zeros((4, 3), np.float32), (2, 2)))
    with pytest.raises(ValueError, match="decode tokens laid out on a grid"):
        tok.decode(vistok.Tokens(np.zeros((4, 4), np.float32)))


def test_option_errors(folder):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        vistok.load("sd-vae", model=str(folder), batch_size=0)
    with pytest.raises(ValueError, match="max_side"):
        vistok.load("sd-vae", model=str(folder), max_side=1).count(10, 10)
    with pytest.raises(TypeError, match="no option 'steps'"):
        vistok.load("sd-vae", steps=3)
    info = vistok.tokenizer_info("sd-vae")
    assert info.kind == "soft" and info.decodable and info.config_fields()["max_side"] == 512


def test_vistok_load_takes_the_folder_path(folder, tmp_path):
    tok = vistok.load(folder)
    assert tok.name == "sd-vae" and tok.config.model == str(folder)
    pipeline = tmp_path / "pipeline"
    shutil.copytree(folder, pipeline / "vae")
    assert vistok.load(pipeline).encode(Image.new("RGB", (16, 16))).grid == (8, 8)
    (tmp_path / "plain").mkdir()
    with pytest.raises(KeyError, match="is a path, but holds none of: .*vistok train"):
        vistok.load(tmp_path / "plain")
