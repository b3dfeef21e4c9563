"""vistok.align: data, towers (MiniLM against sentence-transformers), training (seeded, resume, bad images), the
saved folder opened as a clip/siglip tokenizer (checked against the towers and heads by hand), and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.align import CLASSES, HELD_OUT, NAMES, AlignError, fashion_mnist_pairs, read_captions, train
from vistok.align.towers import ImageTower, TextTower, minilm_folder
from vistok.cli import app

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 40)}
SHAPES = ("square", "circle")


def _draw(colour: str, shape: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (48, 48), tuple(int(v) for v in rng.integers(0, 60, 3)))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, 16, 2))
    box = (x, y, x + 26, y + 26)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return image


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    """A caption CSV of 64 small drawings (colour x shape), plus one unreadable file among them."""
    root = tmp_path_factory.mktemp("pairs")
    lines = ["image,caption"]
    for i in range(64):
        colour, shape = list(COLOURS)[i % 4], SHAPES[(i // 4) % 2]
        _draw(colour, shape, i).save(root / f"{i}.png")
        lines.append(f"{i}.png,a {colour} {shape}")
        lines.append(f"{i}.png,a photo of a {colour} {shape}")
    (root / "broken.png").write_bytes(b"not a png")
    lines.append("broken.png,a broken image")
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    return root


FAST = dict(image_size=32, batch_size=16, steps=12, embed_dim=16, checkpoint_every=5)


@pytest.fixture(scope="module")
def trained(captions, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned") / "model"
    metrics = train(captions, out, **FAST)
    return out, metrics


# -- data ------------------------------------------------------------------------------------------

def test_fashion_mnist_pairs_hold_two_classes_out():
    train_pairs = fashion_mnist_pairs("train", limit=500)
    assert len(train_pairs) == 500 and not np.isin(train_pairs.labels, HELD_OUT).any()
    assert train_pairs.images[0].shape == (28, 28, 3) and train_pairs.images[0].dtype == np.uint8
    label = int(train_pairs.labels[0])
    assert f"a photo of a {NAMES[label][0]}." in train_pairs.captions[0]
    seen = " | ".join(c for group in train_pairs.captions for c in group)
    for name in ("pullover", "sweater", "jumper", "sneaker", "trainer", "running shoe"):
        assert name not in seen
    test_pairs = fashion_mnist_pairs("test")
    assert len(test_pairs) == 10_000 and set(test_pairs.labels.tolist()) == set(range(len(CLASSES)))


def test_described_captions_add_each_name_with_its_description():
    from vistok.align.data import DESCRIPTIONS, TEMPLATES, class_captions, class_prompt

    assert len(DESCRIPTIONS) == len(CLASSES) == len(set(DESCRIPTIONS))
    plain, described = class_captions(7, "names"), class_captions(7, "described")
    assert len(plain) == 3 * len(TEMPLATES) and described[:len(plain)] == plain
    assert "a photo of a sneaker, a low closed sports shoe with laces." in described and len(described) == 2 * len(plain)
    assert class_prompt(2) == "a photo of a pullover."
    assert class_prompt(2, "described") == "a photo of a pullover, a long-sleeved knitted top without buttons."
    train_pairs = fashion_mnist_pairs("train", limit=300, style="described")
    seen = " | ".join(c for group in train_pairs.captions for c in group)
    assert DESCRIPTIONS[0] in seen and DESCRIPTIONS[2] not in seen and DESCRIPTIONS[7] not in seen  # held out
    with pytest.raises(ValueError, match="caption style must be one of names, described"):
        class_captions(0, "poems")


def test_fashion_mnist_training_captions_follow_the_style(monkeypatch, tmp_path):
    import importlib

    from vistok.align.data import class_captions
    from vistok.align.towers import ImageTower

    train_module = importlib.import_module("vistok.align.train")
    labels = train_module.fashion_mnist_labels("train")
    monkeypatch.setattr(train_module, "cached_image_features", lambda tower, split, progress=None:
                        np.zeros((len(labels), 4), np.float32))
    tower = ImageTower("efficientnet-lite0", 64)
    for style in ("names", "described"):
        features, captions, _ = train_module._training_features("fashion-mnist", tower, tmp_path, 50, 0, None, style)
        assert features.shape == (50, 4) and len(captions) == 50
        first = next(c for c in range(len(CLASSES)) if class_captions(c, style) == captions[0])
        assert captions[0] == class_captions(first, style) and first not in HELD_OUT
    _, captions, _ = train_module._training_features("fashion-mnist", tower, tmp_path, None, 0, None, "names",
                                                     (*HELD_OUT, 4, 9))
    used = {c for c in range(len(CLASSES)) for group in captions[:2000] if group == class_captions(c)}
    assert len(captions) == 36_000 and used.isdisjoint({2, 7, 4, 9})  # 6,000 training images per class


def test_read_captions_csv_jsonl_and_errors(tmp_path, captions):
    pairs = read_captions(captions)
    assert len(pairs) == 65 and pairs.captions[0] == ["a red square", "a photo of a red square"]
    (tmp_path / "c.jsonl").write_text('{"image": "a.png", "caption": "x"}\n\n{"image": "/abs/b.png", "caption": "y"}\n')
    pairs = read_captions(tmp_path / "c.jsonl")
    assert [str(p) for p in pairs.images] == [str(tmp_path / "a.png"), "/abs/b.png"]
    for name, text, message in [("bad.csv", "img,text\na,b\n", "'image' and 'caption' columns"),
                                ("bad.jsonl", '{"image": "a.png"}\n', r"bad.jsonl:1: each row needs"),
                                ("bad2.jsonl", "[1]\n", "expected an object"),
                                ("bad3.jsonl", "{oops\n", "not a JSON object"),
                                ("bad.txt", "a", "unknown caption file type"),
                                ("empty.csv", "image,caption\n", "no image,caption rows")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            read_captions(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no captions.csv"):
        read_captions(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path)
    with pytest.raises(FileNotFoundError, match="no such caption file"):
        read_captions(tmp_path / "missing.csv")
    (tmp_path / "latin.csv").write_bytes("image,caption\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_captions(tmp_path / "latin.csv")


# -- towers ----------------------------------------------------------------------------------------

def test_minilm_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    texts = ["a photo of a coat.", "a sneaker", "word " * 400]  # the last is cut at 256 tokens by both
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode(texts)
    ours = TextTower("minilm").features(texts)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_towers_refuse_unknown_names():
    with pytest.raises(ValueError, match="unknown image tower 'resnet'"):
        ImageTower("resnet")
    with pytest.raises(ValueError, match="at least 32"):
        ImageTower("efficientnet-lite0", 8)
    with pytest.raises(ValueError, match="unknown text tower"):
        TextTower("no-such-tower")
    with pytest.raises(ValueError, match="non-empty list"):
        TextTower("minilm").features([])


def test_image_tower_pools_the_tokenizers_tokens():
    images = [np.asarray(_draw("red", "circle", 1)), np.asarray(_draw("blue", "square", 2))]
    tower = ImageTower("efficientnet-lite0", 64)
    tokens = vistok.load("efficientnet-lite0", size=64, crop=64, top_k=0).encode(images)
    np.testing.assert_allclose(tower.features(images), np.stack([t.extras["pooled"] for t in tokens]), atol=1e-6)
    # the pooled feature of EfficientNet is the mean of its final feature map... after the head's conv: check shape
    vit = ImageTower("focus-vit-s14", 56)
    tokens = vistok.load("focus-vit-s14", layer=8, size=56, attentions=False, saliency=False).encode(images)
    np.testing.assert_allclose(vit.features(images), np.stack([t.values.mean(0) for t in tokens]), atol=1e-5)


# -- training and the saved folder ------------------------------------------------------------------

def test_training_writes_a_siglip_folder_and_skips_the_bad_image(trained):
    out, metrics = trained
    assert metrics["train_images"] == 64 and metrics["skipped"] == 1 and metrics["captions"] == 16
    skipped = json.loads((out / "skipped.json").read_text())
    assert skipped[0]["image"].endswith("broken.png") and skipped[0]["reason"]
    config = json.loads((out / "vistok_align.json").read_text())
    assert config["family"] == "siglip" and config["image_tower"]["size"] == 32
    assert not (out / "checkpoint.pt").exists()
    assert metrics["loss_last"] < metrics["loss_first"]


def test_the_folder_opens_as_siglip_and_matches_a_hand_computation(trained, captions):
    from safetensors.torch import load_file

    out, _ = trained
    tok = vistok.load("siglip", model=str(out))
    assert type(tok).__name__ == "AlignedTokenizer" and vistok.load(str(out)).name == "siglip"
    image = captions / "3.png"
    tokens = tok.encode(image)
    # by hand: the tower's pooled feature through the saved linear image head
    heads = load_file(str(out / "heads.safetensors"))
    pooled = ImageTower("efficientnet-lite0", 32).features([image])[0]
    emb = heads["image_head.0.weight"].numpy() @ pooled + heads["image_head.0.bias"].numpy()
    np.testing.assert_allclose(tokens.extras["embedding"], emb, rtol=1e-4, atol=1e-5)
    assert tokens.meta["tokenizer"] == "siglip" and len(tokens) == tok.count(48, 48) == 1
    labels = ["red square", "blue circle"]
    text = TextTower("minilm").features([f"a photo of a {x}." for x in labels])
    t_emb = text @ heads["text_head.0.weight"].numpy().T + heads["text_head.0.bias"].numpy()
    cos = (t_emb / np.linalg.norm(t_emb, axis=1, keepdims=True)) @ (emb / np.linalg.norm(emb))
    logits = cos * math.exp(float(heads["logit_scale"])) + float(heads["logit_bias"])
    np.testing.assert_allclose(tok.similarity(tokens, [f"a photo of a {x}." for x in labels]), logits, rtol=1e-4,
                               atol=1e-4)
    ranked = tok.zero_shot(image, labels)
    probs = dict(ranked)
    for label, logit in zip(labels, logits):
        assert probs[label] == pytest.approx(1 / (1 + math.exp(-logit)), rel=1e-4)


def test_aligned_folder_refuses_wrong_family_and_options(trained):
    out, _ = trained
    with pytest.raises(ValueError, match="open it with vistok.load\\('siglip'"):
        vistok.load("clip", model=str(out))
    with pytest.raises(ValueError, match="size cannot be set"):
        vistok.load("siglip", model=str(out), size=64)


def test_resume_after_a_kill_gives_the_same_heads(captions, tmp_path, trained):
    from safetensors.torch import load_file

    out = tmp_path / "killed"

    def kill(step: int, loss: float) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(captions, out, on_step=kill, **FAST)
    assert (out / "checkpoint.pt").is_file()
    with pytest.raises(AlignError, match="holds a checkpoint"):
        train(captions, out, **FAST)
    train(captions, out, resume=True, **FAST)
    whole, resumed = load_file(str(trained[0] / "heads.safetensors")), load_file(str(out / "heads.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0)
    with pytest.raises(AlignError, match="no checkpoint.pt to resume"):
        train(captions, tmp_path / "fresh", resume=True, **FAST)


def test_softmax_training_and_chunked_sigmoid(captions, tmp_path, trained):
    from safetensors.torch import load_file

    out = tmp_path / "clip"
    train(captions, out, loss="softmax", **FAST)
    assert vistok.load(str(out)).name == "clip"
    ranked = vistok.load("clip", model=str(out)).zero_shot(captions / "0.png", ["red square", "green circle"])
    assert sum(p for _, p in ranked) == pytest.approx(1.0)
    chunked = tmp_path / "chunked"
    train(captions, chunked, chunk=5, **FAST)
    a, b = load_file(str(trained[0] / "heads.safetensors")), load_file(str(chunked / "heads.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"loss": "hinge"}, "loss must be one of sigmoid, softmax"),
    ({"head": "deep"}, "head must be one of"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"batch_size": 1}, "at least 2"),
    ({"batch_size": 500}, "fewer than one batch"),
    ({"loss": "softmax", "chunk": 4}, "chunk applies to the sigmoid loss only"),
    ({"image_tower": "resnet"}, "unknown image tower"),
    ({"captions": "poems"}, "captions must be one of names, described"),
])
def test_train_refuses_bad_options(captions, tmp_path, options, message):
    with pytest.raises(AlignError, match=message):
        train(captions, tmp_path / "x", **{**FAST, **options})


def test_focus_vit_tower_trains_and_encodes(captions, tmp_path):
    out = tmp_path / "vit"
    train(captions, out, image_tower="focus-vit-s14", **{**FAST, "image_size": 56, "steps": 3})
    tok = vistok.load(str(out))
    tokens = tok.encode(captions / "1.png")
    assert tokens.values.shape == (16, 384) and tokens.extras["embedding"].shape == (16,)
    assert tok.count(48, 48) == len(tokens) == 16 and tok.grid(48, 48) == (4, 4)


def test_train_refuses_a_folder_of_unreadable_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "captions.csv").write_text("image,caption\na.png,x\nmissing.png,y\n")
    with pytest.raises(AlignError, match="none of the 2 images could be read"):
        train(tmp_path, tmp_path / "out", **FAST)


def test_cli_align_runs_and_reports(captions, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["align", str(captions), "--out", str(out), "--image-size", "32", "--batch-size", "16",
                                 "--steps", "3", "--embed-dim", "8"])
    assert result.exit_code == 0, result.output
    assert "1 unreadable images skipped" in result.output and (out / "heads.safetensors").is_file()
    bad = runner.invoke(app, ["align", str(captions), "--out", str(tmp_path / "y"), "--loss", "hinge"])
    assert bad.exit_code == 2 and "loss must be one of sigmoid, softmax" in bad.output
    missing = runner.invoke(app, ["align", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "z")])
    assert missing.exit_code == 2 and "no such caption file" in missing.output


# -- the shipped siglip-fmnist -------------------------------------------------------------------------

def test_shipped_siglip_fmnist_classifies_held_out_test_images():
    """The shipped heads on 300 Fashion-MNIST test images: batch accuracy over the ten class prompts, and
    ``zero_shot`` per image ranking the same way as the batch computation."""
    from vistok.align.train import ZERO_SHOT_TEMPLATE, fashion_mnist_labels
    from vistok.learned.data import fashion_mnist

    tok = vistok.load("siglip-fmnist")
    images = fashion_mnist("test")[:300]
    labels = fashion_mnist_labels("test")[:300]
    names = [NAMES[c][0] for c in range(len(CLASSES))]
    embeddings = np.stack([t.extras["embedding"] for t in tok.encode([np.repeat(a, 3, 2) for a in images])])
    texts = tok.embed_text([ZERO_SHOT_TEMPLATE.format(n) for n in names])
    predicted = vistok.align.zero_shot_accuracy(embeddings, texts, labels)
    seen = ~np.isin(labels, HELD_OUT)
    seen_accuracy = vistok.align.zero_shot_accuracy(embeddings[seen], texts, labels[seen])
    assert predicted > 0.65 and seen_accuracy > 0.82  # 71.6% and 89.5% on all 10,000 (vistok_align.json)
    for i in range(5):
        ranked = tok.zero_shot(np.repeat(images[i], 3, 2), names)
        sims = embeddings[i] @ texts.T / np.linalg.norm(texts, axis=1)
        assert ranked[0][0] == names[int(sims.argmax())]
    info = tok.describe()
    assert info["metrics"]["zero_shot"] >= 0.70 and info["image_tower"]["name"] == "efficientnet-lite0"
