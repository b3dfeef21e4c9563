"""``clip`` and ``siglip``: tiny randomly initialised checkpoints, built and saved here in the layouts real
checkpoints use, go through vistok's real loading code and must give exactly what transformers or
open_clip give when called directly on the same pixels.

The builders live in ``tiny_models.py``, shared with the registry-wide tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from vistok.preprocess import preprocess
from vistok.samples import sample_images

pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from tiny_models import (  # noqa: E402 - after the importorskips
    OPEN_CLIP_SIGLIP,
    OPEN_CLIP_VIT,
    SIGLIP_PREPROCESS,
    TEXTS,
    tiny_hf_folder,
    tiny_open_clip_folder,
    tiny_open_clip_model,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("contrastive")
    return {
        "hf_clip": tiny_hf_folder(root / "hf-clip", "clip"),
        "hf_siglip": tiny_hf_folder(root / "hf-siglip", "siglip"),
        "oc_clip": tiny_open_clip_folder(root / "oc-clip", OPEN_CLIP_VIT),
        "oc_siglip": tiny_open_clip_folder(root / "oc-siglip", OPEN_CLIP_SIGLIP, SIGLIP_PREPROCESS),
    }


def images():
    """Three photos plus a grayscale and a half-transparent one: mixed modes go through open_image."""
    paths = sample_images()[:3]
    gray = Image.open(sample_images()[3]).convert("L")
    rgba = Image.open(sample_images()[4]).convert("RGBA")
    rgba.putalpha(128)
    return [*paths, gray, rgba]


def stack(tokens, field=None):
    return np.stack([t.values if field is None else t.extras[field] for t in tokens])


# -- transformers ----------------------------------------------------------------------------------

def test_clip_equals_transformers(folders):
    from transformers import AutoTokenizer, CLIPModel

    tok = vistok.load("clip", model=str(folders["hf_clip"]))
    inputs = images()
    tokens = tok.encode(inputs)
    pixels = preprocess(inputs, tok.preprocessing)
    assert pixels.shape == (5, 3, 32, 32)

    ref = CLIPModel.from_pretrained(folders["hf_clip"]).eval()
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=pixels)
    hidden = out.last_hidden_state.numpy()
    assert all(t.grid == (4, 4) and len(t) == tok.count(*t.image_size) == 16 for t in tokens)
    np.testing.assert_array_equal(stack(tokens), hidden[:, 1:])
    np.testing.assert_array_equal(stack(tokens, "cls"), hidden[:, 0])
    np.testing.assert_array_equal(stack(tokens, "embedding"), out.pooler_output.numpy())

    text_tok = AutoTokenizer.from_pretrained(folders["hf_clip"])
    batch = text_tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        text_ref = ref.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=pixels[:1]).logits_per_image[0].numpy()
    np.testing.assert_array_equal(tok.embed_text(TEXTS), text_ref.pooler_output.numpy())
    np.testing.assert_allclose(tok.similarity(inputs[0], TEXTS), logits, rtol=1e-5, atol=1e-5)

    ranked = tok.zero_shot(inputs[0], ["cat", "dog", "rocket"], template="a photo of a {} .")
    expected = torch.softmax(torch.from_numpy(logits[:2]).double(), 0)  # the first two texts are these labels
    probs = dict(ranked)
    assert [p for _, p in ranked] == sorted(probs.values(), reverse=True)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs["cat"] / probs["dog"] == pytest.approx(float(expected[0] / expected[1]), rel=1e-5)


def test_siglip_equals_transformers(folders):
    from transformers import AutoTokenizer, SiglipModel

    tok = vistok.load("siglip", model=str(folders["hf_siglip"]))
    inputs = images()
    tokens = tok.encode(inputs)
    pixels = preprocess(inputs, tok.preprocessing)
    ref = SiglipModel.from_pretrained(folders["hf_siglip"]).eval()
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=pixels)
    np.testing.assert_array_equal(stack(tokens), out.last_hidden_state.numpy())  # SigLIP: no class token
    np.testing.assert_array_equal(stack(tokens, "embedding"), out.pooler_output.numpy())
    assert "cls" not in tokens[0].extras and tokens[0].grid == (4, 4)

    # SigLIP was trained on text padded to the full length
    batch = AutoTokenizer.from_pretrained(folders["hf_siglip"])(TEXTS, padding="max_length", max_length=16,
                                                               return_tensors="pt")
    with torch.no_grad():
        text_ref = ref.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=pixels[:1]).logits_per_image[0].numpy()
    np.testing.assert_array_equal(tok.embed_text(TEXTS), text_ref.pooler_output.numpy())
    np.testing.assert_allclose(tok.similarity(inputs[0], TEXTS), logits, rtol=1e-5, atol=1e-5)

    probs = dict(tok.zero_shot(inputs[0], ["cat", "dog"], template="a photo of a {} ."))
    np.testing.assert_allclose([probs["cat"], probs["dog"]], 1 / (1 + np.exp(-logits[:2].astype(np.float64))),
                               rtol=1e-5)


def test_preprocessing_comes_from_the_checkpoint_and_matches_its_processor(folders):
    from transformers import AutoImageProcessor

    for name, key in (("clip", "hf_clip"), ("siglip", "hf_siglip")):
        tok = vistok.load(name, model=str(folders[key]))
        ref = AutoImageProcessor.from_pretrained(folders[key], backend="pil")
        for image in images():
            expected = ref(images=Image.open(image) if isinstance(image, Path) else image,
                           return_tensors="pt")["pixel_values"]
            ours = preprocess([image], tok.preprocessing)
            assert ours.shape == expected.shape
            # in pixel units: within the 2/255 budget (resize implementations differ slightly)
            scale = torch.tensor(tok.preprocessing.std).view(1, 3, 1, 1)
            assert float(((ours - expected) * scale).abs().mean()) < 2 / 255
    pp = vistok.load("siglip", model=str(folders["hf_siglip"])).preprocessing
    assert (pp.size, pp.crop, pp.mean, pp.resample) == ((32, 32), None, (0.5, 0.5, 0.5), "bicubic")


# -- open_clip -------------------------------------------------------------------------------------

def test_open_clip_vit_equals_open_clip(folders):
    tok = vistok.load("clip", model=str(folders["oc_clip"]), backend="open_clip")
    inputs = images()
    tokens = tok.encode(inputs)
    pixels = preprocess(inputs, tok.preprocessing)

    ref = open_clip.create_model(f"local-dir:{folders['oc_clip']}").eval()
    text = open_clip.get_tokenizer(f"local-dir:{folders['oc_clip']}")(TEXTS)
    with torch.no_grad():
        embedding = ref.encode_image(pixels)
        text_ref = ref.encode_text(text)
        image_f, text_f, scale = ref(pixels[:1], text)
        ref.visual.output_tokens = True           # what open_clip issue #458 asks for: all patch tokens
        pooled, patch_tokens = ref.visual(pixels)
    np.testing.assert_array_equal(stack(tokens), patch_tokens.numpy())
    np.testing.assert_array_equal(stack(tokens, "embedding"), embedding.numpy())
    # CLIP pools by the class token: its final (normed) state times the projection is the embedding
    np.testing.assert_allclose(stack(tokens, "cls") @ ref.visual.proj.detach().numpy(), embedding.numpy(),
                               rtol=1e-5, atol=1e-6)
    assert tokens[0].grid == (4, 4) and tok.count(640, 480) == 16

    np.testing.assert_array_equal(tok.embed_text(TEXTS), text_ref.numpy())
    np.testing.assert_allclose(tok.similarity(inputs[0], TEXTS), (scale * image_f @ text_f.T)[0].numpy(),
                               rtol=1e-5, atol=1e-5)


def test_open_clip_siglip_timm_tower_equals_open_clip(folders):
    tok = vistok.load("siglip", model=str(folders["oc_siglip"]), backend="open_clip")
    pp = tok.preprocessing
    assert (pp.size, pp.crop, pp.mean) == ((160, 160), None, (0.5, 0.5, 0.5))  # squash, from preprocess_cfg
    inputs = images()[:3]
    tokens = tok.encode(inputs)
    pixels = preprocess(inputs, pp)
    ref = open_clip.create_model(f"local-dir:{folders['oc_siglip']}").eval()
    trunk = ref.visual.trunk
    with torch.no_grad():
        features = trunk.forward_features(pixels)
        embedding = ref.encode_image(pixels)
        text = open_clip.get_tokenizer(f"local-dir:{folders['oc_siglip']}")(TEXTS)
        image_f, text_f, scale, bias = ref(pixels[:1], text)
    np.testing.assert_array_equal(stack(tokens), features[:, trunk.num_prefix_tokens:].numpy())
    np.testing.assert_array_equal(stack(tokens, "cls"), features[:, 0].numpy())
    np.testing.assert_array_equal(stack(tokens, "embedding"), embedding.numpy())
    assert tokens[0].grid == (10, 10) and tok.count(33, 999) == 100
    logits = (scale * image_f @ text_f.T + bias)[0].detach().numpy()
    np.testing.assert_allclose(tok.similarity(inputs[0], TEXTS), logits, rtol=1e-5, atol=1e-5)
    probs = [p for _, p in tok.zero_shot(inputs[0], TEXTS, template="{}")]
    np.testing.assert_allclose(sorted(probs, reverse=True), sorted(1 / (1 + np.exp(-logits)), reverse=True),
                               rtol=1e-5)


def test_open_clip_checkpoint_file_with_a_json_arch(folders, tmp_path):
    model = tiny_open_clip_model(OPEN_CLIP_VIT)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny-arch.json").write_text(json.dumps(OPEN_CLIP_VIT))
    tok = vistok.load("clip", model=str(tmp_path / "tiny.pt"), backend="open_clip",
                      open_clip_arch=str(tmp_path / "tiny-arch.json"))
    from_folder = vistok.load("clip", model=str(folders["oc_clip"]), backend="open_clip")
    image = sample_images()[0]
    assert tok.encode(image).values.tobytes() == from_folder.encode(image).values.tobytes()
    np.testing.assert_array_equal(tok.embed_text(TEXTS), from_folder.embed_text(TEXTS))


def test_count_from_open_clip_builtin_configs_needs_no_weights(tmp_path):
    placeholder = tmp_path / "weights.pt"
    placeholder.write_bytes(b"never read by count()")
    for arch, expected in (("ViT-B-32", 49), ("ViT-B-16", 196), ("ViT-L-14-336", 576)):
        tok = vistok.load("clip", model=str(placeholder), backend="open_clip", open_clip_arch=arch)
        assert tok.count(640, 480) == expected
    # SigLIP's preprocessing lives in open_clip's pretrained table, not in the model config
    siglip = vistok.load("siglip", model=str(placeholder), backend="open_clip", open_clip_arch="ViT-B-16-SigLIP")
    assert siglip.count(640, 480) == 196
    assert (siglip.preprocessing.size, siglip.preprocessing.crop, siglip.preprocessing.mean) == ((224, 224), None,
                                                                                                (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="use different preprocessing.*open_clip_tag="):
        vistok.load("clip", model=str(placeholder), backend="open_clip", open_clip_arch="ViT-L-14").count(9, 9)
    openai = vistok.load("clip", model=str(placeholder), backend="open_clip", open_clip_arch="ViT-L-14",
                         open_clip_tag="openai")
    assert openai.count(9, 9) == 256 and openai.preprocessing.std[0] == pytest.approx(0.26862954)
    arch = tmp_path / "tiny.json"
    arch.write_text(json.dumps(OPEN_CLIP_VIT))
    with pytest.raises(ValueError, match="not a readable open_clip checkpoint"):
        vistok.load("clip", model=str(placeholder), backend="open_clip", open_clip_arch=str(arch)).check()
    with pytest.raises(ValueError, match="did you mean 'ViT-B-32'"):
        vistok.load("clip", model=str(placeholder), backend="open_clip", open_clip_arch="ViT-B-33").count(9, 9)


# -- shapes, sizes, image modes, batches -----------------------------------------------------------

def test_grayscale_and_alpha_images(folders):
    tok = vistok.load("clip", model=str(folders["hf_clip"]))
    rgb = Image.open(sample_images()[0]).convert("RGB")
    gray = rgb.convert("L")
    np.testing.assert_array_equal(tok.encode(gray).values, tok.encode(gray.convert("RGB")).values)
    rgba = rgb.copy()
    rgba.putalpha(0)   # fully transparent: composited over white, like open_image documents
    np.testing.assert_array_equal(tok.encode(rgba).values, tok.encode(Image.new("RGB", rgb.size, "white")).values)
    assert tok.encode(np.zeros((20, 30), np.uint8)).image_size == (30, 20)


@pytest.mark.parametrize("key", ["hf_clip", "hf_siglip", "oc_clip", "oc_siglip"])
def test_batched_encode_equals_one_by_one(folders, key):
    name = "clip" if key.endswith("clip") else "siglip"
    backend = "open_clip" if key.startswith("oc") else "transformers"
    tok = vistok.load(name, model=str(folders[key]), backend=backend, batch_size=2)
    inputs = images()
    batch = tok.encode(inputs)
    assert isinstance(batch, list) and len(batch) == 5
    for tokens, image in zip(batch, inputs):
        single = tok.encode(image)
        assert single.grid == tokens.grid and single.meta == tokens.meta
        # a batched matrix product may round differently from a single one; nothing more
        np.testing.assert_allclose(tokens.values, single.values, rtol=1e-5, atol=1e-5)
        for field in single.extras:
            np.testing.assert_allclose(tokens.extras[field], single.extras[field], rtol=1e-5, atol=1e-5)


def test_uncropped_sizes_interpolate_positions_and_count_matches(folders):
    from transformers import CLIPModel

    tok = vistok.load("clip", model=str(folders["hf_clip"]), crop=0)   # shortest edge 32, no crop
    shapes = [(64, 32), (32, 96), (40, 40), (1, 1), (5, 700)]
    inputs = [Image.new("RGB", s, (30 * i, 90, 200)) for i, s in enumerate(shapes)]
    out = tok.encode(inputs)
    assert [t.grid for t in out] == [(4, 8), (12, 4), (4, 4), (4, 4), (560, 4)]
    assert [len(t) for t in out] == [tok.count(*s) for s in shapes]
    ref = CLIPModel.from_pretrained(folders["hf_clip"]).eval()
    with torch.no_grad():
        hidden = ref.get_image_features(pixel_values=preprocess([inputs[0]], tok.preprocessing),
                                        interpolate_pos_encoding=True).last_hidden_state
    np.testing.assert_allclose(out[0].values, hidden[0, 1:].numpy(), rtol=1e-5, atol=1e-5)


def test_tokens_round_trip_and_similarity_reuses_tokens(folders, tmp_path):
    tok = vistok.load("siglip", model=str(folders["hf_siglip"]))
    tokens = tok.encode(sample_images()[1])
    tokens.save(tmp_path / "t.safetensors")
    again = vistok.Tokens.load(tmp_path / "t.safetensors")
    assert again.equals(tokens) and again.meta["backend"] == "transformers"
    np.testing.assert_array_equal(tok.similarity(again, TEXTS), tok.similarity(sample_images()[1], TEXTS))
    assert tok.describe()["probabilities"] == "sigmoid"


# -- errors ------------------------------------------------------------------------------------------

def test_no_model_constructs_and_says_what_to_pass():
    for name in ("clip", "siglip"):
        tok = vistok.load(name)
        assert tok.kind == "soft" and not tok.decodable
        for call in (tok.check, lambda tok=tok: tok.encode(sample_images()[0]), lambda tok=tok: tok.count(10, 10)):
            with pytest.raises(ValueError, match=rf"needs a model.*vistok.load\('{name}', model="):
                call()
        with pytest.raises(NotImplementedError, match="do not decode"):
            tok.decode(vistok.Tokens.from_grid(np.zeros((1, 2), np.float32), (1, 1)))


def test_missing_path_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        vistok.load("clip", model=str(tmp_path / "nowhere")).check()
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        vistok.load("siglip", model="weights/siglip.safetensors", backend="open_clip").count(5, 5)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for backend in ("transformers", "open_clip"):
        with pytest.raises(FileNotFoundError, match=r"no local weights at 'google/siglip-base-patch16-224' and the "
                           r"Hugging Face hub is not reachable \(offline.*vistok.load\('siglip', model="):
            vistok.load("siglip", model="google/siglip-base-patch16-224", backend=backend).check()


def test_wrong_checkpoint_types(folders, tmp_path):
    with pytest.raises(ValueError, match="model_type='siglip'.*use vistok.load\\('siglip'"):
        vistok.load("clip", model=str(folders["hf_siglip"])).check()
    with pytest.raises(ValueError, match="model_type='clip'.*use vistok.load\\('clip'"):
        vistok.load("siglip", model=str(folders["hf_clip"])).encode(sample_images()[0])
    with pytest.raises(ValueError, match="backend='open_clip'"):
        vistok.load("clip", model=str(folders["oc_clip"])).check()
    with pytest.raises(ValueError, match="backend='transformers'"):
        vistok.load("clip", model=str(folders["hf_clip"]), backend="open_clip").check()
    with pytest.raises(ValueError, match="SigLIP-style"):
        vistok.load("clip", model=str(folders["oc_siglip"]), backend="open_clip").check()
    with pytest.raises(ValueError, match="is a file; the transformers backend loads a folder"):
        vistok.load("clip", model=str(folders["hf_clip"] / "model.safetensors")).check()

    # a clip config with SigLIP weights: strict loading refuses instead of initialising at random
    mixed = tmp_path / "mixed"
    shutil.copytree(folders["hf_clip"], mixed)
    shutil.copy(folders["hf_siglip"] / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(ValueError, match="do not fit CLIPModel|could not load a CLIPModel"):
        vistok.load("clip", model=str(mixed)).check()

    # one tensor missing: transformers would initialise it at random; vistok refuses
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(folders["hf_clip"], partial)
    weights = load_file(partial / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"do not fit CLIPModel \(1 missing keys \(e.g. visual_projection.weight"):
        vistok.load("clip", model=str(partial)).check()

    # a random state_dict, and weights of another width, for an open_clip architecture
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(OPEN_CLIP_VIT))
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "random.pt")
    with pytest.raises(ValueError, match="do not fit this open_clip architecture.*Missing key"):
        vistok.load("clip", model=str(tmp_path / "random.pt"), backend="open_clip", open_clip_arch=str(arch)).check()
    wider = json.loads(json.dumps(OPEN_CLIP_VIT))
    wider["vision_cfg"]["width"] = 48
    torch.save(tiny_open_clip_model(wider).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match="do not fit this open_clip architecture"):
        vistok.load("clip", model=str(tmp_path / "wider.pt"), backend="open_clip", open_clip_arch=str(arch)).check()
    with pytest.raises(ValueError, match="pass its architecture too"):
        vistok.load("clip", model=str(tmp_path / "wider.pt"), backend="open_clip").check()


def test_bad_options_and_inputs(folders, tmp_path):
    with pytest.raises(ValueError, match="backend must be one of"):
        vistok.load("clip", backend="onnx")
    with pytest.raises(ValueError, match="take exactly 32x32"):
        vistok.load("clip", model=str(folders["oc_clip"]), backend="open_clip", crop=0).count(64, 64)
    no_processor = tmp_path / "no-processor"
    shutil.copytree(folders["hf_clip"], no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="no preprocessor_config.json.*size=..., crop=..., mean=..., std="):
        vistok.load("clip", model=str(no_processor)).count(64, 64)
    tok = vistok.load("clip", model=str(folders["hf_clip"]))
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(vistok.ImageError, match="notes.jpg"):
        tok.encode(bad)
    for size in [(0, 10), (10, -1), (10.5, 10)]:
        with pytest.raises(ValueError, match="positive integer"):
            tok.count(*size)
    with pytest.raises(ValueError, match="at least one label"):
        tok.zero_shot(sample_images()[0], [])
    with pytest.raises(ValueError, match="must contain"):
        tok.zero_shot(sample_images()[0], ["cat"], template="a photo")
    with pytest.raises(ValueError, match="non-empty list of strings"):
        tok.embed_text([])


# -- bounds and damaged files ----------------------------------------------------------------------

def test_strip_is_refused_before_the_weights_load_and_the_batch_goes_on(folders, tmp_path, monkeypatch):
    from vistok import preprocess as pp
    from vistok.batch import tokenize_files

    strip, picture = tmp_path / "strip.png", tmp_path / "picture.png"
    Image.new("L", (1, 20000), 128).save(strip)
    Image.open(sample_images()[0]).convert("RGB").resize((64, 40)).save(picture)
    clip = vistok.load("clip", model=str(folders["hf_clip"]))   # shortest edge 32, crop 32
    assert clip.preprocessing.working_pixels(1, 20000) == 32 * 640_000
    clip._model = None
    with pytest.raises(vistok.ImageError, match=r"strip.png: a 1x20000 image .* resized to 32x640000"):
        clip.encode([picture, strip])
    assert clip._model is None  # refused from the header, before the weights were read
    seen: list[int] = []
    real = pp._resize
    monkeypatch.setattr(pp, "_resize", lambda rgb, target, cfg, box: seen.append(target[0] * target[1])
                        or real(rgb, target, cfg, box))
    result = tokenize_files([picture, strip], clip)
    assert list(result.tokens) == [str(picture)] and list(result.errors) == [str(strip)]
    np.testing.assert_array_equal(result.tokens[str(picture)].values, clip.encode(picture).values)
    assert max(seen) <= pp.MAX_WORKING_PIXELS
    # SigLIP resizes to an exact 32x32: the same strip is within the bound and encodes
    assert vistok.load("siglip", model=str(folders["hf_siglip"])).encode(strip).grid == (4, 4)


def _cut(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_truncated_weights_give_one_line_naming_the_file(folders, tmp_path):
    hf = shutil.copytree(folders["hf_clip"], tmp_path / "hf")
    _cut(hf / "model.safetensors")
    oc = shutil.copytree(folders["oc_clip"], tmp_path / "oc")
    _cut(oc / "open_clip_model.safetensors")
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(OPEN_CLIP_VIT))
    torch.save(tiny_open_clip_model(OPEN_CLIP_VIT).state_dict(), tmp_path / "zip.pt")
    _cut(tmp_path / "zip.pt")
    torch.save(tiny_open_clip_model(OPEN_CLIP_VIT).state_dict(), tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    _cut(tmp_path / "old.pt")
    cases = [
        ({"model": str(hf)}, r"hf/model.safetensors: truncated safetensors file: its tensors need"),
        ({"model": str(oc), "backend": "open_clip"}, r"oc/open_clip_model.safetensors: truncated safetensors file"),
        ({"model": str(tmp_path / "zip.pt"), "backend": "open_clip", "open_clip_arch": str(arch)},
         r"zip.pt: truncated or corrupt PyTorch checkpoint \(a zip archive whose central directory"),
        ({"model": str(tmp_path / "old.pt"), "backend": "open_clip", "open_clip_arch": str(arch)},
         r"old.pt: truncated PyTorch checkpoint \(its data ends early\)"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message + ".*; download or copy it again$") as err:
            vistok.load("clip", **options).check()
        assert "\n" not in str(err.value)


def test_cli_truncated_weights_exit_2_without_traceback(folders, tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app

    hf = shutil.copytree(folders["hf_siglip"], tmp_path / "hf")
    _cut(hf / "model.safetensors")
    out = tmp_path / "t.safetensors"
    result = CliRunner().invoke(app, ["tokenize", str(sample_images()[0]), "--tokenizer", "siglip",
                                      "-c", f"model={hf}", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "model.safetensors: truncated safetensors file" in result.output
    assert not out.exists()
