"""``layer=`` and ``select=`` of ``clip``/``siglip``: the tokens must be exactly what a VLM's projector receives.

The references are the VLMs themselves: a tiny LLaVA whose vision tower has the weights of a tiny CLIP
checkpoint, and a tiny PaliGemma whose tower has those of a tiny SigLIP checkpoint (random weights, built here).
A forward pre-hook on ``multi_modal_projector`` captures its input during the model's own forward pass, which
is compared with the tokens vistok gives for the saved CLIP/SigLIP folder on the same pixels. The open_clip
backend is compared with forward hooks on its blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vistok
from vistok.preprocess import preprocess
from vistok.samples import sample_images
from vistok.tokenizers.clip import CLIP, ClipConfig, ContrastiveTokenizer

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from tiny_models import OPEN_CLIP_VIT, tiny_hf_folder, tiny_open_clip_folder  # noqa: E402 - after the importorskips

IMAGE_ID = 60  # the image placeholder id of the tiny language models (vocab of 64)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-layers")
    return {"clip": tiny_hf_folder(root / "clip", "clip"), "siglip": tiny_hf_folder(root / "siglip", "siglip"),
            "oc_clip": tiny_open_clip_folder(root / "oc-clip", OPEN_CLIP_VIT)}


def tiny_llava(folder, strategy: str):
    """LLaVA-1.5's wiring (hidden_states[-2]) on the CLIP checkpoint's vision weights and a tiny Llama."""
    clip = transformers.CLIPModel.from_pretrained(folder)
    text = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=64)
    config = transformers.LlavaConfig(vision_config=clip.config.vision_config, text_config=text,
                                      image_token_index=IMAGE_ID, vision_feature_layer=-2,
                                      vision_feature_select_strategy=strategy)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    return model


def tiny_paligemma(folder):
    """PaliGemma on the SigLIP checkpoint's vision weights and a tiny Gemma."""
    siglip = transformers.SiglipModel.from_pretrained(folder)
    text = transformers.GemmaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    config = transformers.PaliGemmaConfig(vision_config=siglip.config.vision_config, text_config=text,
                                          projection_dim=32, hidden_size=32, vocab_size=64,
                                          image_token_index=IMAGE_ID)
    torch.manual_seed(0)
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    model.model.vision_tower.load_state_dict(siglip.vision_model.state_dict())
    return model


def projector_input(model, pixels: torch.Tensor, n_tokens: int) -> np.ndarray:
    """What the VLM's projector receives in its own forward pass on a prompt of ``n_tokens`` placeholders."""
    seen = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    ids = torch.tensor([[IMAGE_ID] * n_tokens + [5, 6, 7]] * len(pixels))
    try:
        with torch.no_grad():
            model(input_ids=ids, pixel_values=pixels)
    finally:
        hook.remove()
    assert len(seen) == 1
    return seen[0].numpy()


def encode(name: str, folder, **options):
    tok = vistok.load(name, model=str(folder), **options)
    images = sample_images()[:2]
    return tok, tok.encode(images), preprocess(images, tok.preprocessing)


def test_llava_default_second_to_last_layer_is_the_projector_input(folders):
    tok, tokens, pixels = encode("clip", folders["clip"], layer=-2)
    model = tiny_llava(folders["clip"], "default")
    expected = projector_input(model, pixels, 16)
    assert expected.shape == (2, 16, 32) and all(t.grid == (4, 4) for t in tokens)
    ours = np.stack([t.values for t in tokens])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    # the class token of the same layer is the extra; the embedding is still the model's image embedding
    with torch.no_grad():
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        features = model.model.get_image_features(pixel_values=pixels).pooler_output
    np.testing.assert_allclose(np.stack([t.extras["cls"] for t in tokens]), hidden[-2][:, 0].numpy(), atol=1e-5)
    with torch.no_grad():
        projected = model.model.multi_modal_projector(torch.from_numpy(ours))
    np.testing.assert_allclose(projected.numpy(), torch.stack(list(features)).numpy(), rtol=1e-5, atol=1e-5)
    last = vistok.load("clip", model=str(folders["clip"])).encode(sample_images()[0])
    assert not np.allclose(last.values, tokens[0].values, atol=1e-3)  # layer -2 is not the default's layer
    assert tokens[0].meta["tokens"].startswith("vision hidden_states[-2], no final norm (transformers); layer=-2, "
                                               "select='default'")


def test_llava_full_keeps_the_class_token_first(folders, tmp_path):
    tok, tokens, pixels = encode("clip", folders["clip"], layer=-2, select="full")
    expected = projector_input(tiny_llava(folders["clip"], "full"), pixels, 17)
    assert expected.shape == (2, 17, 32)
    np.testing.assert_allclose(np.stack([t.values for t in tokens]), expected, rtol=1e-5, atol=1e-5)
    t = tokens[0]
    assert len(t) == 17 == tok.count(*t.image_size) and t.grid is None and "cls" not in t.extras
    assert t.base_grid == (4, 4) and list(t.source) == list(range(1, 17)) and list(t.sizes) == [0] + [1] * 16
    w, h = t.image_size
    np.testing.assert_allclose(t.boxes[0], [0, 0, w, h])  # a square photo, not cropped: all of it
    np.testing.assert_allclose(t.boxes[1], [0, 0, w / 4, h / 4])
    np.testing.assert_allclose(t.boxes[-1], [3 * w / 4, 3 * h / 4, w, h])
    assert "select='full': class token first" in t.meta["tokens"]
    t.save(tmp_path / "full.safetensors")
    assert vistok.Tokens.load(tmp_path / "full.safetensors").equals(t)


def test_full_boxes_follow_the_centre_crop(folders):
    from PIL import Image

    tok = vistok.load("clip", model=str(folders["clip"]), select="full")  # shortest side 32, crop 32x32
    t = tok.encode(Image.new("RGB", (128, 64)))
    np.testing.assert_allclose(t.boxes[0], [32, 0, 96, 64])  # the middle 64x64 of the 128x64 image
    np.testing.assert_allclose(t.boxes[1], [32, 0, 48, 16])


def test_paligemma_projector_input_is_siglip_default_tokens(folders):
    _, tokens, pixels = encode("siglip", folders["siglip"])
    expected = projector_input(tiny_paligemma(folders["siglip"]), pixels, 16)
    np.testing.assert_allclose(np.stack([t.values for t in tokens]), expected, rtol=1e-5, atol=1e-5)
    assert "after post_layernorm" in tokens[0].meta["tokens"]
    # SigLIP has no class token: "full" is "default"
    _, full, _ = encode("siglip", folders["siglip"], select="full")
    for a, b in zip(full, tokens):
        assert a.grid == b.grid == (4, 4) and np.array_equal(a.values, b.values) and a.extras.keys() == {"embedding"}


def test_siglip_other_layers_are_raw_hidden_states(folders):
    _, tokens, pixels = encode("siglip", folders["siglip"], layer=1)
    siglip = transformers.SiglipModel.from_pretrained(folders["siglip"]).eval()
    with torch.no_grad():
        out = siglip.vision_model(pixel_values=pixels, output_hidden_states=True)
    np.testing.assert_array_equal(np.stack([t.values for t in tokens]), out.hidden_states[1].numpy())
    # -1 and N (= 2) name the same layer: the final tokens, after post_layernorm
    _, last, _ = encode("siglip", folders["siglip"], layer=2)
    np.testing.assert_array_equal(np.stack([t.values for t in last]), out.last_hidden_state.numpy())


def test_open_clip_blocks(folders):
    ref = open_clip.create_model(f"local-dir:{folders['oc_clip']}").eval()
    outputs = []
    for block in ref.visual.transformer.resblocks:
        block.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    for layer, select in ((-2, "default"), (1, "full")):
        tok, tokens, pixels = encode("clip", folders["oc_clip"], backend="open_clip", layer=layer, select=select)
        outputs.clear()
        with torch.no_grad():
            ref.visual(pixels)
        hidden = outputs[0].numpy()  # block 1 = hidden_states[1] = hidden_states[-2] of a 2-block tower
        expected = hidden if select == "full" else hidden[:, 1:]
        np.testing.assert_array_equal(np.stack([t.values for t in tokens]), expected)
        assert len(tokens[0]) == tok.count(*tokens[0].image_size)
    with pytest.raises(ValueError, match="layer=0 .*not supported by the open_clip backend.*use 1..2 or -2..-1"):
        vistok.load("clip", model=str(folders["oc_clip"]), backend="open_clip", layer=0).count(32, 32)


def test_cli_passes_layer_and_select(folders, tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app

    out = tmp_path / "t.safetensors"
    result = CliRunner().invoke(app, ["tokenize", str(sample_images()[0]), "--tokenizer", "clip", "-c",
                                      f"model={folders['clip']}", "-c", "layer=-2", "-c", "select=full",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    (saved,) = vistok.load_tokens(out).values()
    direct = vistok.load("clip", model=str(folders["clip"]), layer=-2, select="full").encode(sample_images()[0])
    assert len(saved) == 17 and np.array_equal(saved.values, direct.values)
    assert saved.meta["config"]["layer"] == -2 and saved.meta["config"]["select"] == "full"


def test_bad_layer_and_select(folders):
    clip = str(folders["clip"])
    with pytest.raises(ValueError, match=r"^layer=3 is out of range: the vision tower has 2 layers, so layer must "
                                         r"lie in -3\.\.2 \(0 = the embeddings, -1 = the last layer\)$"):
        vistok.load("clip", model=clip, layer=3).count(32, 32)
    with pytest.raises(ValueError, match=r"^layer=-4 is out of range: the vision tower has 2 layers"):
        vistok.load("siglip", model=str(folders["siglip"]), layer=-4).encode(sample_images()[0])
    with pytest.raises(ValueError, match=r"^select must be one of 'default', 'full' .*got 'bogus'$"):
        vistok.load("clip", model=clip, select="bogus")
    for bad in (1.5, "-2", True):
        with pytest.raises(ValueError, match=r"^layer must be an integer hidden_states index .*got "):
            ContrastiveTokenizer(ClipConfig(model=clip, layer=bad), CLIP)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="option layer takes an integer"):  # vistok.load checks types first
            vistok.load("clip", model=clip, layer=bad)
    assert vistok.load("clip", model=clip, layer=np.int64(-2)).config.layer == -2
