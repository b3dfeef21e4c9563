"""LLaMA-VID's context and content tokens (vistok.vlm.llama_vid): the module checked by hand on tiny numbers,
then the 2-token VLM built from a tiny random DINOv2 tower and a tiny Llama, trained a few steps on images and
on video clips written to real files, saved, loaded and resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vistok.vlm import llama_vid  # noqa: E402
from vistok.vlm.llama_vid import ContextContent, LlamaVidError  # noqa: E402
from vistok.vlm.shapes import questions  # noqa: E402
from vlm_tiny import SIZE, TINY_LM, tiny_tower  # noqa: E402


def run(folder: Path, **options):
    settings = dict(steps=20, batch_size=4, seed=0, train_images=16, val_questions=16, lr=1e-2, warmup=3,
                    checkpoint_every=10, tower=tiny_tower(), **TINY_LM)
    settings.update(options)
    return llama_vid.train_llama_vid(folder, **settings)


# -- the module, by hand ----------------------------------------------------------------------------


def identity_module(dim: int, grid=1) -> ContextContent:
    """Every projection the identity, so the tokens are the attention-weighted and pooled visual tokens."""
    module = ContextContent(dim, dim, dim, grid=grid, projector="linear")
    eye = torch.eye(dim)
    with torch.no_grad():
        for linear in (module.query, module.key, module.value, module.content):
            linear.weight.copy_(eye)
            if linear.bias is not None:
                linear.bias.zero_()
    return module


def softmax_mean(visual: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """By hand: scores q . v / sqrt(D), softmax over the visual tokens, mean over the query words."""
    scores = query @ visual.T / math.sqrt(visual.shape[1])
    weights = np.exp(scores - scores.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    attention = weights.mean(0)
    return attention, attention @ visual


def test_context_token_is_the_softmax_weighted_mean_and_content_the_grid_mean():
    visual = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    query = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    tokens, attention = identity_module(3)(torch.tensor(visual)[None], torch.tensor(query)[None],
                                           grid_shape=(2, 2))
    weights, context = softmax_mean(visual, query)
    assert tokens.shape == (1, 2, 3)
    np.testing.assert_allclose(attention[0].detach().numpy(), weights, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tokens[0, 0].detach().numpy(), context, rtol=1e-6, atol=1e-7)  # context first
    np.testing.assert_allclose(tokens[0, 1].detach().numpy(), visual.mean(0), rtol=1e-6)      # grid:1 = mean
    assert float(attention.detach().sum()) == pytest.approx(1.0)
    # the first word (2, 0, 0) favours tokens 0 and 3, the second (0, 0, 3) tokens 2 and 3: token 3 gets most
    assert int(attention.argmax()) == 3


def test_masked_query_words_are_ignored():
    torch.manual_seed(0)
    visual, query = torch.randn(2, 4, 3), torch.randn(2, 3, 3)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    module = identity_module(3)
    masked, att = module(visual, query, mask, grid_shape=(2, 2))
    garbage = query.clone()
    garbage[0, 2], garbage[1, 1:] = 100.0, -100.0
    again, att2 = module(visual, garbage, mask, grid_shape=(2, 2))
    torch.testing.assert_close(masked, again)
    torch.testing.assert_close(att, att2)
    for row, words in ((0, 2), (1, 1)):
        weights, context = softmax_mean(visual[row].numpy(), query[row, :words].numpy())
        np.testing.assert_allclose(att[row].detach().numpy(), weights, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(masked[row, 0].detach().numpy(), context, rtol=1e-5, atol=1e-6)


def test_grid_2_pools_a_4x4_grid_into_four_2x2_means_row_major():
    visual = torch.arange(16 * 2, dtype=torch.float32).reshape(1, 16, 2)  # token t at (t // 4, t % 4)
    tokens, _ = identity_module(2, grid=2)(visual, torch.ones(1, 1, 2))
    assert tokens.shape == (1, 5, 2)
    grid = visual[0].reshape(4, 4, 2).numpy()
    expected = [grid[r:r + 2, c:c + 2].reshape(4, 2).mean(0) for r in (0, 2) for c in (0, 2)]
    np.testing.assert_allclose(tokens[0, 1:].detach().numpy(), np.stack(expected))
    wide, _ = identity_module(2, grid=(1, 2))(visual, torch.ones(1, 1, 2))  # left and right halves
    np.testing.assert_allclose(wide[0, 1:].detach().numpy(),
                               np.stack([grid[:, :2].reshape(8, 2).mean(0), grid[:, 2:].reshape(8, 2).mean(0)]))


def test_standardisation_key_bias_free_and_query_blind_option():
    module = identity_module(3)
    with torch.no_grad():
        module.mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
        module.std.copy_(torch.tensor([2.0, 2.0, 2.0]))
    torch.manual_seed(1)
    visual, query = torch.randn(1, 4, 3), torch.randn(1, 2, 3)
    tokens, _ = module(visual, query, grid_shape=(2, 2))
    plain, _ = identity_module(3)((visual - module.mean) / module.std, query, grid_shape=(2, 2))
    torch.testing.assert_close(tokens, plain)
    assert module.key.bias is None
    blind = ContextContent(3, 5, 7, context=False, grid=(1, 2))
    out, attention = blind(visual, torch.randn(1, 2, 5), grid_shape=(2, 2))
    assert out.shape == (1, 2, 7) and attention is None and blind.tokens_per_image == 2


@pytest.mark.parametrize("visual, query, mask, grid_shape, message", [
    ((1, 4, 2), (1, 2, 3), None, (2, 2), r"visual must be \(batch, tokens, 3\), got \(1, 4, 2\)"),
    ((1, 4, 3), (2, 2, 3), None, (2, 2), r"query must be \(1, words, 3\)"),
    ((1, 4, 3), (1, 2, 4), None, (2, 2), r"query must be \(1, words, 3\)"),
    ((1, 5, 3), (1, 2, 3), None, None, "visual has 5 tokens, not a square grid; pass grid_shape"),
    ((1, 16, 3), (1, 2, 3), None, (3, 5), "grid_shape 3x5 holds 15 tokens but visual has 16"),
    ((1, 4, 3), (1, 2, 3), [[False, False]], (2, 2), "query_mask leaves a row without words"),
    ((1, 4, 3), (1, 2, 3), [[True]], (2, 2), r"query_mask must be \(1, 2\)"),
])
def test_bad_inputs_raise_one_line(visual, query, mask, grid_shape, message):
    module = ContextContent(3, 3, 3)
    with pytest.raises(LlamaVidError, match=message) as error:
        module(torch.zeros(visual), torch.zeros(query), None if mask is None else torch.tensor(mask), grid_shape)
    assert "\n" not in str(error.value)


def test_bad_module_arguments():
    with pytest.raises(LlamaVidError, match="grid must be a positive integer"):
        ContextContent(3, 3, 3, grid=0)
    with pytest.raises(LlamaVidError, match="projector must be one of mlp, linear"):
        ContextContent(3, 3, 3, projector="conv")
    with pytest.raises(LlamaVidError, match="lm_dim must be a positive integer"):
        ContextContent(3, 3, 0)
    with pytest.raises(LlamaVidError, match="content grid 5x5 is finer than the patch grid 4x4"):
        ContextContent(3, 3, 3, grid=5)(torch.zeros(1, 16, 3), torch.zeros(1, 1, 3))


# -- the 2-token VLM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-vid")
    return folder, run(folder)


def test_training_lowers_the_loss_and_writes_metrics(trained):
    folder, metrics = trained
    losses = metrics["losses"]
    assert len(losses) == 20 and metrics["tokens_per_image"] == 2
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["val"]["questions"] == 16
    assert sum(k["questions"] for k in saved["val"]["per_kind"].values()) == 16
    assert not (folder / "checkpoint.pt").exists()
    assert sorted(p.name.split("-")[0] for p in (folder / "cache").glob("*.npy")) == ["train", "val"]


def test_saved_folder_loads_and_answers_like_training_evaluation(trained, tmp_path):
    folder, metrics = trained
    model = llama_vid.load(folder)
    items = list(questions(16, seed=1, split="val", size=SIZE))
    result = llama_vid.evaluate(model, items)
    # the full path (float32 tower) agrees with the evaluation on cached float16 features
    assert np.mean([a == b for a, b in zip(result["answers"], metrics["val"]["answers"])]) >= 0.9
    assert llama_vid.ask(model, items[0].image, items[0].question) == result["answers"][0]
    model.save(tmp_path / "again")
    again = llama_vid.load(tmp_path / "again")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert llama_vid.evaluate(again, items)["answers"] == result["answers"]
    items[0].image.save(tmp_path / "scene.png")
    assert llama_vid.ask(again, tmp_path / "scene.png", items[0].question) == result["answers"][0]


def test_two_tokens_per_image_and_the_context_attention(trained):
    folder, _ = trained
    model = llama_vid.load(folder)
    item = next(questions(1, seed=3, split="val", size=SIZE))
    feats = model.features([item.image])[None]
    ids = torch.tensor([model.processor.tokenizer(item.question, add_special_tokens=False)["input_ids"]])
    tokens, attention = model.visual_tokens(feats, ids)
    assert tokens.shape == (1, 2, 32) and attention.shape == (1, 1, 16)
    drawn = llama_vid.context_attention(model, item.image, item.question)
    assert drawn.shape == (1, 4, 4)
    torch.testing.assert_close(drawn.flatten(), attention.flatten())
    assert float(drawn.sum()) == pytest.approx(1.0)
    # the context token depends on the question, the content token does not
    other = torch.tensor([model.processor.tokenizer("how many circles are there ?",
                                                    add_special_tokens=False)["input_ids"]])
    tokens2, _ = model.visual_tokens(feats, other)
    assert not torch.allclose(tokens[0, 0], tokens2[0, 0])
    torch.testing.assert_close(tokens[0, 1], tokens2[0, 1])


def test_resume_after_a_kill_equals_an_uninterrupted_run_and_runs_repeat(tmp_path):
    options = dict(steps=6, checkpoint_every=3, val_questions=0, train_images=8, batch_size=2)
    whole = run(tmp_path / "whole", **options)
    twice = run(tmp_path / "twice", **options)
    assert twice["losses"] == whole["losses"]

    def kill(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", on_step=kill, **options)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    with pytest.raises(LlamaVidError, match="pass resume to continue it"):
        run(tmp_path / "cut", **options)
    with pytest.raises(LlamaVidError, match=r"other settings \(grid\)"):
        run(tmp_path / "cut", resume=True, grid=2, **options)
    resumed = run(tmp_path / "cut", resume=True, **options)
    assert resumed["losses"] == whole["losses"]
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_blind_model_ignores_the_image_and_grid_option(tmp_path):
    metrics = run(tmp_path / "blind", blind=True, steps=4, val_questions=4, train_images=8, grid=2)
    assert metrics["tokens_per_image"] == 5
    model = llama_vid.load(tmp_path / "blind")
    a, b = list(questions(2, seed=7, split="val", size=SIZE))
    ids = torch.tensor([model.processor.tokenizer(a.question, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = [model.logits(model.features([img])[None], ids, None, ids) for img in (a.image, b.image)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert llama_vid.evaluate(model, questions(4, seed=1, split="val", size=SIZE))["answers"] == \
        metrics["val"]["answers"]


def test_video_clips_through_real_files_end_to_end(tmp_path):
    pytest.importorskip("av")
    from vistok.vlm.video import clips, read_frames, write_clip

    metrics = run(tmp_path / "video", video=True, frames=2, train_clips=6, val_questions=3, steps=4,
                  batch_size=3, warmup=1)
    assert metrics["val"]["questions"] == 3 and len(metrics["losses"]) == 4
    cached = np.load(next((tmp_path / "video" / "cache").glob("clips-train-*.npy")), mmap_mode="r")
    assert cached.shape == (6, 2, 16, 32) and cached.dtype == np.float16
    model = llama_vid.load(tmp_path / "video")
    clip = next(clips(1, seed=4, split="test", frames=2, size=SIZE))
    path = write_clip(clip.frames, tmp_path / "clip.mp4")
    answer = llama_vid.ask(model, path, clip.question)
    assert answer == llama_vid.ask(model, read_frames(path), clip.question)
    feats = model.features(clip.frames)[None]
    ids = torch.tensor([model.processor.tokenizer(clip.question, add_special_tokens=False)["input_ids"]])
    tokens, attention = model.visual_tokens(feats, ids)
    assert tokens.shape == (1, 4, 32) and attention.shape == (1, 2, 16)  # [ctx, content] per frame, in order
    single, _ = model.visual_tokens(feats[:, 1:], ids)
    torch.testing.assert_close(tokens[:, 2:], single)
    result = llama_vid.evaluate(model, [clip])
    assert result["questions"] == 1 and list(result["per_kind"]) == [clip.kind]


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "steps must be an integer of at least 1"),
    ({"grid": 0}, "grid must be a positive integer"),
    ({"grid": 5}, "grid 5x5 is finer than the 4x4 patch grid"),
    ({"projector": "conv"}, "projector must be one of mlp, linear"),
    ({"image_size": 50}, "multiple of the tower's patch size 14"),
    ({"lr": 0}, "lr must be positive"),
    ({"resume": True}, "no checkpoint.pt to resume from"),
    ({"tower": "/nonexistent/tower"}, "not a DINOv2 checkpoint folder"),
])
def test_bad_arguments(tmp_path, options, message):
    with pytest.raises(LlamaVidError, match=message) as error:
        run(tmp_path / "out", **options)
    assert "\n" not in str(error.value)


def test_bad_folder_and_inputs(trained, tmp_path):
    with pytest.raises(LlamaVidError, match="no llama_vid.json and model.safetensors"):
        llama_vid.load(tmp_path)
    model = llama_vid.load(trained[0])
    item = next(questions(1, seed=3, split="val", size=SIZE))
    with pytest.raises(LlamaVidError, match="has no words"):
        llama_vid.ask(model, item.image, "")
    with pytest.raises(LlamaVidError, match="expected a Pillow image"):
        llama_vid.ask(model, 3, item.question)
    with pytest.raises(LlamaVidError, match="no such image or video file"):
        llama_vid.ask(model, tmp_path / "missing.png", item.question)
