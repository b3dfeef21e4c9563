"""vistok.vlm.patch on Idefics3 and SmolVLM: tiny random models built from configs, saved and loaded back, with
their real processors (tiny tokenizer). Images split into crops of ``max_image_size`` 32 plus a global image;
the tower (patch 4, 32 px) gives 8x8 patches, the connector's pixel shuffle (scale 2) 4x4 = 16 tokens per frame.

The manual reference runs the model's own ``get_image_features``, computes the signals itself from the last
tower layer's input (q/k projections, softmax, pixel-shuffle gathering written out with reshapes), reduces each
frame with the numpy ``vistok.reduce``, keeps the first K placeholders of each frame's run in ``input_ids``,
scatters the reduced tokens into the LM embeddings by hand and runs the LM directly.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
import vistok.vlm
from processor_refs import tiny_tokenizer

transformers = pytest.importorskip("transformers")

ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
SPECIAL = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *ROW_COL]
PER_FRAME, GRID, SCALE = 16, (4, 4), 2


def _tokenizer():
    """Whitespace words, with "\\n" and "\\n\\n" kept as tokens (the row breaks the processor writes)."""
    from tokenizers import Regex, pre_tokenizers

    tok = tiny_tokenizer(SPECIAL)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n\n|\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
    ])
    return tok


def _build(kind: str):
    tok = _tokenizer()
    images = dict(size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True,
                  image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                  patch_size=4)
    text = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    image_id = tok.convert_tokens_to_ids("<image>")
    torch.manual_seed(0)
    if kind == "idefics3":
        proc = transformers.Idefics3Processor(image_processor=transformers.Idefics3ImageProcessor(**images),
                                              tokenizer=tok, image_seq_len=PER_FRAME)
        config = transformers.Idefics3Config(vision_config=transformers.Idefics3VisionConfig(**vision),
                                             text_config=text, image_token_id=image_id, scale_factor=SCALE)
        return transformers.Idefics3ForConditionalGeneration(config), proc
    from transformers.models.smolvlm import processing_smolvlm

    if processing_smolvlm.num2words is None:  # only needed for video prompts; not a vistok dependency
        processing_smolvlm.num2words = str
    proc = transformers.SmolVLMProcessor(image_processor=transformers.SmolVLMImageProcessor(**images),
                                         tokenizer=tok, image_seq_len=PER_FRAME,
                                         video_processor=transformers.SmolVLMVideoProcessor())
    config = transformers.SmolVLMConfig(vision_config=transformers.SmolVLMVisionConfig(**vision), text_config=text,
                                        image_token_id=image_id, scale_factor=SCALE)
    return transformers.SmolVLMForConditionalGeneration(config), proc


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"])
def saved(request, tmp_path_factory):
    """(model class, processor, folder) of a tiny model saved with save_pretrained."""
    model, proc = _build(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    loaded = type(proc).from_pretrained(folder)
    loaded.tokenizer.padding_side = "left"
    return type(model), loaded, folder


@pytest.fixture(scope="module")
def model(saved):
    klass, _, folder = saved
    return klass.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def proc(saved):
    return saved[1]


def _image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def batch(proc):
    """Two prompts: a 64x32 image (1x2 crops + global = 3 frames) and a 64x64 one (2x2 + global = 5 frames); the
    first sample's pixel_values hold 2 all-zero padding frames."""
    return proc(images=[[_image(64, 32, 1)], [_image(64, 64, 2)]],
                text=["describe <image> this", "describe this <image> image"], return_tensors="pt", padding=True)


@pytest.fixture(scope="module")
def reference_logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


# -- the manual reference ---------------------------------------------------------------------------------


def _frames(model, inputs):
    """Connector outputs per real frame ``(F, 16, D)`` and the last tower layer's input ``(F, 64, C)``."""
    inner = model.model
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    handle = inner.vision_model.encoder.layers[-1].self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            out = inner.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"], return_dict=True)
    finally:
        handle.remove()
    features = torch.cat(list(out.pooler_output))
    return features.view(-1, PER_FRAME, features.shape[-1]), seen["x"]


def _signals(model, x):
    """attention_received ``(F, 16)`` and keys ``(F, 16, 4*head_dim)`` at the connector's tokens, by hand."""
    attn = model.model.vision_model.encoder.layers[-1].self_attn
    frames, length, _ = x.shape
    heads, dim = attn.num_heads, attn.head_dim
    with torch.no_grad():
        q = attn.q_proj(x).view(frames, length, heads, dim).transpose(1, 2)
        k = attn.k_proj(x).view(frames, length, heads, dim).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) * dim ** -0.5, dim=-1)  # (F, H, T, T)
    side, rows = 8, GRID[0]
    received = probs.mean(dim=(1, 2)).view(frames, rows, SCALE, rows, SCALE).sum(dim=(2, 4)).flatten(1)
    keys = k.mean(dim=1).view(frames, rows, SCALE, rows, SCALE, dim).permute(0, 1, 3, 2, 4, 5)
    assert side == rows * SCALE
    return received, keys.reshape(frames, rows * rows, SCALE * SCALE * dim)


def _reduce_frames(model, inputs, method, keep):
    info = vistok.reducers.method_info(method)
    signal_names = {*info.needs, *info.uses}
    frames, x = _frames(model, inputs)
    received, keys = _signals(model, x)
    out = []
    for f in range(frames.shape[0]):
        signals = {}
        if "cls_attention" in signal_names:
            signals["cls_attention"] = received[f].numpy()
        if "keys" in signal_names:
            signals["keys"] = keys[f].numpy()
        tokens = vistok.Tokens(values=frames[f].detach().float().numpy(), grid=GRID)
        out.append(torch.from_numpy(vistok.reduce(tokens, method, keep=keep, **signals).values))
    return out


def _manual_embeds(model, inputs, reduced, keep):
    """Shortened, left-padded inputs_embeds and attention mask, assembled by hand."""
    image_id = model.config.image_token_id
    embed = model.get_input_embeddings()
    features = iter(reduced)
    rows = []
    for ids in inputs["input_ids"].tolist():
        mask_row = inputs["attention_mask"][len(rows)].tolist()
        kept_ids, kept_mask, vectors, run = [], [], [], 0
        for position, token in enumerate(ids):
            if mask_row[position] == 0:  # old padding is dropped before re-padding
                continue
            if token == image_id:
                if run == 0:
                    current = next(features)
                if run < keep:
                    kept_ids.append(token)
                    kept_mask.append(mask_row[position])
                    vectors.append(current[run])
                run += 1
                continue
            run = 0
            kept_ids.append(token)
            kept_mask.append(mask_row[position])
        with torch.no_grad():
            emb = embed(torch.tensor(kept_ids))
        slots = [i for i, t in enumerate(kept_ids) if t == image_id]
        emb[slots] = torch.stack(vectors).to(emb.dtype)
        rows.append((emb, kept_mask))
    width = max(len(m) for _, m in rows)
    pad = embed(torch.tensor([model.config.text_config.pad_token_id]))[0]
    embeds = torch.stack([torch.cat([pad.expand(width - len(m), -1), e]) for e, m in rows])
    mask = torch.tensor([[0] * (width - len(m)) + m for _, m in rows])
    return embeds.detach(), mask


def _lm_logits(model, embeds, mask, position_ids=None):
    with torch.no_grad():
        hidden = model.model.text_model(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=position_ids).last_hidden_state
        return model.lm_head(hidden)


def _manual_generate(model, embeds, mask, steps):
    embed = model.get_input_embeddings()
    new = []
    for _ in range(steps):
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        token = _lm_logits(model, embeds, mask, positions)[:, -1].argmax(-1)
        new.append(token)
        with torch.no_grad():
            embeds = torch.cat([embeds, embed(token)[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(new, dim=1)


# -- tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [PER_FRAME, 1000])
def test_keep_all_gives_bit_identical_logits(model, batch, reference_logits, keep):
    with vistok.vlm.patch(model, "pool", keep=keep) as handle, torch.no_grad():
        logits = model(**batch).logits
    assert torch.equal(logits, reference_logits)
    assert handle.stats == [{"image": 0, "views": 3, "before": 48, "after": 48},
                            {"image": 1, "views": 5, "before": 80, "after": 80}]


@pytest.mark.parametrize(("method", "keep", "options"), [
    ("pool", 4, {}),
    ("divprune", 5, {}),
    ("tome", 6, {}),  # uses the keys
    ("visionzip", 5, {"signal": "attention_received"}),  # attention received as its ranking, and the keys
    ("prumerge", 4, {"signal": "attention_received"}),
])
def test_reduced_forward_matches_manual_reference(model, batch, method, keep, options):
    with vistok.vlm.patch(model, method, keep=keep, **options) as handle, torch.no_grad():
        logits = model(**batch).logits
    reduced = _reduce_frames(model, batch, method, keep)
    assert [r.shape[0] for r in reduced] == [keep] * 8
    embeds, mask = _manual_embeds(model, batch, reduced, keep)
    expected = _lm_logits(model, embeds, mask)
    # old padding is dropped and rows re-padded: the width is the longest shortened row (the 5-frame one)
    assert logits.shape == expected.shape == (2, 96 - 5 * (PER_FRAME - keep), model.config.text_config.vocab_size)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    assert handle.stats == [{"image": 0, "views": 3, "before": 48, "after": 3 * keep},
                            {"image": 1, "views": 5, "before": 80, "after": 5 * keep}]


@pytest.mark.parametrize("method", ["pool", "tome"])
def test_generate_equals_manual_greedy_path(model, batch, method):
    keep = 4
    with vistok.vlm.patch(model, method, keep=keep), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    prompt = batch["input_ids"]
    assert torch.equal(out[:, :prompt.shape[1]], prompt)  # the original prompt, then the answer
    embeds, mask = _manual_embeds(model, batch, _reduce_frames(model, batch, method, keep), keep)
    assert torch.equal(out[:, prompt.shape[1]:], _manual_generate(model, embeds, mask, 5))


def test_kv_cache_holds_original_length_minus_removed(model, proc):
    inputs = proc(images=[[_image(64, 64, 3)]], text=["describe <image> this"], return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    assert length == 5 * (PER_FRAME + 2) + 1 + 2 + 2  # 4 crops, global, closing fake; "\n", "\n\n"; 2 words
    with torch.no_grad():
        full = model(**inputs, use_cache=True).cache.get_seq_length()
        with vistok.vlm.patch(model, "pool", keep=4) as handle:
            short = model(**inputs, use_cache=True).cache.get_seq_length()
    assert full == length
    assert short == length - 5 * (PER_FRAME - 4)
    assert handle.stats == [{"image": 0, "views": 5, "before": 80, "after": 20}]


def test_markers_kept_around_each_frame(model, proc, batch):
    """The shortened prompt is what the processor writes with image_seq_len=K: row/col, global and fake tokens."""
    from vistok.vlm._base import shorten

    family = vistok.vlm._base.family_of(model)
    with torch.no_grad():
        views = family.encode(model, dict(batch), set())
    _, blocks = family.to_lm(model, views, [v.tokens[:3] for v in views])
    new, keep = shorten(dict(batch), model.config.image_token_id, blocks, proc.tokenizer.pad_token_id)
    writer = copy.copy(proc)
    writer.image_seq_len = 3
    short = writer(images=[[_image(64, 32, 1)], [_image(64, 64, 2)]],
                   text=["describe <image> this", "describe this <image> image"], return_tensors="pt", padding=True)
    for row in range(2):  # the old left padding stays padding: compare the attended tokens
        assert torch.equal(new["input_ids"][row][new["attention_mask"][row] == 1],
                           short["input_ids"][row][short["attention_mask"][row] == 1])
    assert keep.shape == batch["input_ids"].shape
    # the dropped placeholders, and the old padding (rows are re-padded to the longest shortened row)
    assert int((~keep).sum()) == 8 * (PER_FRAME - 3) + int((batch["attention_mask"] == 0).sum())


def test_two_images_in_one_prompt_are_counted_apart(model, proc):
    images = [[_image(64, 32, 4), _image(20, 20, 5)], [_image(32, 64, 6)]]
    inputs = proc(images=images, text=["<image> describe <image> this", "describe <image>"], return_tensors="pt",
                  padding=True)
    with vistok.vlm.patch(model, "stride", keep=2) as handle, torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    # 64x32 -> 1x2 + global; 20x20 upscaled to 64x64 -> 2x2 + global; 32x64 -> 2x1 + global
    assert handle.stats == [{"image": 0, "views": 3, "before": 48, "after": 6},
                            {"image": 1, "views": 5, "before": 80, "after": 10},
                            {"image": 2, "views": 3, "before": 48, "after": 6}]
    # old padding is dropped: the width is the longest row once its placeholders are removed
    real = inputs["attention_mask"].sum(dim=1).tolist()
    assert logits.shape[1] == max(real[0] - (42 + 70), real[1] - 42)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_signals_gathered_through_the_pixel_shuffle(model, batch):
    family = vistok.vlm._base.family_of(model)
    with torch.no_grad():
        views = family.encode(model, dict(batch), {"attention_received", "keys"})
    received, keys = _signals(model, _frames(model, batch)[1])
    assert len(views) == 8 and [v.image for v in views] == [0, 0, 0, 1, 1, 1, 1, 1]
    assert all(v.grid == GRID and v.cls_attention is None for v in views)
    torch.testing.assert_close(torch.stack([v.attention_received for v in views]), received)
    torch.testing.assert_close(torch.stack([v.keys for v in views]), keys)
    # a distribution over each frame's tokens (sums over the s*s patches of each token)
    torch.testing.assert_close(received.sum(dim=1), torch.ones(8))


def test_attention_received_ignores_padded_patches(model, batch):
    """With part of a frame masked (pixel_attention_mask 0), the tower masks those keys: the signal renormalises
    over real keys and averages real queries, as the eager tower's own attention weights give."""
    inputs = dict(batch)
    mask = inputs["pixel_attention_mask"].clone()
    mask[1, 0, :, 16:] = 0  # right half of the second sample's first crop
    inputs["pixel_attention_mask"] = mask
    family = vistok.vlm._base.family_of(model)
    with torch.no_grad():
        view = family.encode(model, inputs, {"attention_received"})[3]
    eager = type(model).from_pretrained(model.name_or_path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = eager.model.vision_model(pixel_values=inputs["pixel_values"][1, :1],
                                       patch_attention_mask=(torch.arange(8) < 4).expand(1, 8, 8).contiguous(),
                                       output_attentions=True)
    probs = out.attentions[-1][0].mean(dim=0)  # (T, T), padded keys get 0
    valid = (torch.arange(64) % 8) < 4
    received = probs[valid].mean(dim=0).reshape(4, 2, 4, 2).sum(dim=(1, 3)).flatten()
    torch.testing.assert_close(view.attention_received, received, atol=1e-5, rtol=1e-4)
    assert float(view.attention_received.view(4, 4)[:, 2:].abs().max()) < 1e-6


def test_unpatch_restores_and_second_instance_untouched(saved, model, batch, reference_logits):
    klass, _, folder = saved
    other = klass.from_pretrained(folder).eval()
    handle = vistok.vlm.patch(model, "pool", keep=4)
    with torch.no_grad():
        assert model(**batch).logits.shape[1] < reference_logits.shape[1]
        assert torch.equal(other(**batch).logits, reference_logits)
    assert "forward" not in other.__dict__ and "generate" not in other.__dict__
    handle.unpatch()
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert "forward" not in vars(klass) or vars(klass)["forward"] is klass.forward
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference_logits)


def test_bfloat16_model_runs_reduced(saved, batch):
    klass, _, folder = saved
    half = klass.from_pretrained(folder, dtype=torch.bfloat16).eval()
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    with vistok.vlm.patch(half, "visionzip", keep=4, signal="attention_received") as handle, torch.no_grad():
        logits = half(**inputs).logits
        out = half.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert logits.dtype == torch.bfloat16 and logits.shape[1] == 96 - 5 * 12
    assert out.shape == (2, 98)
    assert [s["after"] for s in handle.stats] == [12, 20]


def test_cls_based_method_without_signal_names_working_methods(model):
    with pytest.raises(ValueError, match="CLS") as err:
        vistok.vlm.patch(model, "visionzip", keep=4)
    message = str(err.value)
    assert "Idefics3 / SmolVLM" in message and "attention_received" in message
    assert "pool" in message and "tome" in message and "visionzip" not in message.split("use one of")[1]
    assert "forward" not in model.__dict__  # nothing was installed


def test_mismatched_input_ids_are_refused(model, batch):
    inputs = dict(batch)
    ids = inputs["input_ids"].clone()
    ids[0, ids[0] == model.config.image_token_id] = 0  # the first prompt lost its placeholders
    inputs["input_ids"] = ids
    with vistok.vlm.patch(model, "pool", keep=4), pytest.raises(ValueError, match="row 0 of input_ids holds 0"):
        model(**inputs)


def test_visual_tokens_are_the_connector_outputs_of_every_frame(model, proc):
    image = _image(64, 64, 7)
    tokens = vistok.vlm.visual_tokens(model, proc, image)
    inputs = proc(images=[[image]], text=["<image>"], return_tensors="pt")
    expected = _frames(model, inputs)[0].reshape(-1, model.config.text_config.hidden_size)
    assert tokens.values.shape == (5 * PER_FRAME, 32) and tokens.grid is None  # 4 crops + global, no one grid
    assert tokens.meta["views"] == 5
    np.testing.assert_allclose(tokens.values, expected.numpy(), atol=1e-6)
