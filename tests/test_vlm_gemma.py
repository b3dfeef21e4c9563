"""vistok.vlm.patch on tiny PaliGemma and Gemma 3 models built from configs (random weights, their real
processors with tiny tokenizers, no hub), saved and loaded back.

The reference for every reduced call is written out by hand here: the projected image features, the
signals computed from the tower's last layer (q/k of its input, softmax, mean over heads and queries; Gemma 3
sums them over the projector's 2x2 windows), ``vistok.reduce`` on numpy ``Tokens``, input ids with the
first ``k`` placeholders of each image kept, ``inputs_embeds`` assembled by hand, the attention mask built
from ``token_type_ids`` by hand (PaliGemma: the prefix is bidirectional; Gemma 3: each image's run is, and
its sliding layers also limit keys to the window), and the language model run directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from processor_refs import tiny_tokenizer
from vistok import vlm

transformers = pytest.importorskip("transformers")

SIDE, PATCH = 32, 4  # SigLIP: an 8x8 grid of 64 patches
WORDS = ["what", "is", "in", "the", "a", "cat", "dog", "Here", "original", "and", "here", "are", "some", "crops",
         "to", "help", "you", "see", "better"]
SLIDING = 10  # Gemma 3's sliding window here: shorter than the prompts, so the window shapes the masks


def noise_image(seed: int, width: int = SIDE, height: int = SIDE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _vision(**extra):
    return transformers.SiglipVisionConfig(image_size=SIDE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=2, **extra)


def build_paligemma(folder):
    tok = tiny_tokenizer(["<image>"], extra_words=WORDS)
    ip = transformers.SiglipImageProcessor(size={"height": SIDE, "width": SIDE}, image_seq_length=64,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)
    proc = transformers.PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    text = transformers.GemmaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id)
    config = transformers.PaliGemmaConfig(vision_config=_vision(), text_config=text, projection_dim=32,
                                          hidden_size=32, vocab_size=len(tok), image_token_index=proc.image_token_id)
    torch.manual_seed(0)
    transformers.PaliGemmaForConditionalGeneration(config).save_pretrained(folder)
    proc.save_pretrained(folder)


def build_gemma3(folder):
    tok = tiny_tokenizer(["<start_of_image>", "<end_of_image>", "<image_soft_token>"], extra_words=WORDS)
    tok._set_model_specific_special_tokens({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                            "image_token": "<image_soft_token>"})
    ip = transformers.Gemma3ImageProcessor(size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=2, do_pan_and_scan=None,
                                           pan_and_scan_min_crop_size=None, pan_and_scan_max_num_crops=None,
                                           pan_and_scan_min_ratio_to_activate=None)
    proc = transformers.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=16)  # 4x4 pooled
    text = transformers.Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                         head_dim=16, query_pre_attn_scalar=16, sliding_window=SLIDING,
                                         layer_types=["sliding_attention", "full_attention"],
                                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id)
    config = transformers.Gemma3Config(vision_config=_vision(vision_use_head=False), text_config=text,
                                       mm_tokens_per_image=16, boi_token_index=tok.boi_token_id,
                                       eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id)
    torch.manual_seed(0)
    model = transformers.Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # transformers starts the projection at zero: every image would give zero features
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)


FAMILIES = {
    "paligemma": (build_paligemma, "PaliGemmaForConditionalGeneration", "<image>", "what is in the image"),
    "gemma3": (build_gemma3, "Gemma3ForConditionalGeneration", "<start_of_image>",
               "what is in the image a cat a dog here"),
}


def _load(name, folder):
    model = getattr(transformers, FAMILIES[name][1]).from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None  # random weights: always generate the full count
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """``(name, model, second instance, processor)``, both models loaded back from a saved folder."""
    name = request.param
    folder = tmp_path_factory.mktemp(f"tiny-{name}")
    FAMILIES[name][0](folder)
    model, proc = _load(name, folder), transformers.AutoProcessor.from_pretrained(folder)
    with torch.no_grad():  # distinct features per token, or any reduction would look right
        feats = model.model.get_image_features(pixel_values=inputs(name, proc)["pixel_values"]).pooler_output
    assert float(feats[0].std(dim=0).min()) > 0.01
    return name, model, _load(name, folder), proc


def inputs(name, proc, images=1, per_row=1, **extra):
    """Processor inputs: ``images`` rows with ``per_row`` images each, all with the same prompt."""
    placeholder, words = FAMILIES[name][2], FAMILIES[name][3]
    prompt = " ".join([placeholder] * per_row) + " " + words if name == "gemma3" else placeholder * per_row + words
    pictures = [[noise_image(row * per_row + i) for i in range(per_row)] for row in range(images)]
    return dict(proc(images=pictures, text=[prompt] * images, return_tensors="pt", padding=True, **extra))


# -- the reference, by hand -----------------------------------------------------------------------------

def tower_signals(model, pixel_values):
    """``attention_received`` (I, n) and ``keys`` (I, n, d) of the tower's last layer, on the LM's tokens."""
    tower = model.model.vision_tower
    layer = getattr(tower, "vision_model", tower).encoder.layers[-1]
    hidden = tower(pixel_values, output_hidden_states=True).hidden_states[-2]  # the last layer's input
    x = layer.layer_norm1(hidden)
    attn = layer.self_attn
    b, t = x.shape[:2]
    q = attn.q_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) * attn.head_dim ** -0.5).softmax(-1)  # (I, H, T, T)
    received, keys = probs.mean(dim=(1, 2)), k.mean(dim=1)
    if isinstance(model, transformers.Gemma3ForConditionalGeneration):  # 8x8 patches -> 4x4 tokens
        received = received.view(b, 4, 2, 4, 2).sum(dim=(2, 4)).reshape(b, 16)
        keys = keys.view(b, 4, 2, 4, 2, -1).mean(dim=(2, 4)).reshape(b, 16, -1)
    return received, keys


def reference_inputs(model, batch, method, keep, signal=False):
    """``(inputs_embeds, mask, positions, ids, attention_mask)`` of the reduced prompt, assembled by hand;
    positions count the real tokens only, as ``generate`` numbers left-padded rows."""
    inner, config = model.model, model.config
    with torch.no_grad():
        feats = inner.get_image_features(pixel_values=batch["pixel_values"]).pooler_output  # (I, n, D)
        received, keys = tower_signals(model, batch["pixel_values"])
    n, side = feats.shape[1], int(feats.shape[1] ** 0.5)
    info = vistok.reducers.method_info(method)
    reduced = []
    for i in range(feats.shape[0]):
        extra = {}
        if "keys" in {*info.needs, *info.uses}:
            extra["keys"] = keys[i].numpy()
        if signal:
            extra["cls_attention"] = received[i].numpy()
        tokens = vistok.Tokens.from_grid(feats[i].numpy().astype(np.float64), (side, side))
        reduced.append(torch.from_numpy(np.asarray(vistok.reduce(tokens, method, keep=keep, **extra).values,
                                                   dtype=np.float32)))
    ids, types = batch["input_ids"], batch["token_type_ids"]
    keep_rows = []
    for row in ids:
        at = (row == config.image_token_id).nonzero().flatten().tolist()
        drop = {p for start in range(0, len(at), n) for p in at[start + keep:start + n]}
        keep_rows.append([p for p in range(len(row)) if p not in drop])
    ids = torch.stack([ids[b, rows] for b, rows in enumerate(keep_rows)])
    types = torch.stack([types[b, rows] for b, rows in enumerate(keep_rows)])
    real = torch.stack([batch["attention_mask"][b, rows] for b, rows in enumerate(keep_rows)]).bool()
    embeds = model.get_input_embeddings()(ids).detach()
    embeds[ids == config.image_token_id] = torch.cat(reduced)
    length = ids.shape[1]
    q, k = torch.arange(length)[:, None], torch.arange(length)[None, :]
    causal = (k <= q) & real[:, None, :]  # padding is never a key
    if isinstance(model, transformers.PaliGemmaForConditionalGeneration):
        prefix = types == 0  # the image and the prompt see each other both ways
        allowed = causal | (prefix[:, :, None] & prefix[:, None, :] & real[:, None, :])
        mask = _additive(allowed)
        positions = real.long().cumsum(1)  # PaliGemma counts positions from 1
    else:
        image = types == 1
        starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
        block = torch.where(image, starts.cumsum(1), 0)  # each image's run is one block
        same = (block[:, :, None] == block[:, None, :]) & image[:, :, None] & real[:, None, :]
        allowed = causal | same
        mask = {"full_attention": _additive(allowed),
                "sliding_attention": _additive(allowed & (k > q - config.text_config.sliding_window))}
        positions = (real.long().cumsum(1) - 1).clamp(min=0)
    return embeds, mask, positions, ids, real


def _additive(allowed):
    return torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[:, None]


def reference_logits(model, batch, method, keep, signal=False):
    embeds, mask, positions, _, _ = reference_inputs(model, batch, method, keep, signal)
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask,
                                            position_ids=positions).last_hidden_state
        return model.lm_head(hidden)


def reference_generate(model, batch, method, keep, steps=5, signal=False):
    """Greedy decoding by hand: prefill the reduced prompt, then one token at a time through the cache."""
    embeds, mask, positions, _, real = reference_inputs(model, batch, method, keep, signal)
    lm = model.model.language_model
    cache = transformers.DynamicCache(config=lm.config)
    new = []
    with torch.no_grad():
        hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                    use_cache=True).last_hidden_state
        for _ in range(steps):
            token = model.lm_head(hidden[:, -1]).argmax(-1)
            new.append(token)
            positions = positions[:, -1:] + 1
            real = torch.cat([real, real.new_ones(real.shape[0], 1)], dim=1)
            hidden = lm(inputs_embeds=model.get_input_embeddings()(token[:, None]), position_ids=positions,
                        attention_mask=real.long(), cache=cache, use_cache=True).last_hidden_state
    return torch.stack(new, dim=1)


def logits(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs).logits


# -- the tests ------------------------------------------------------------------------------------------

METHODS = [("pool", 16, {}), ("divprune", 5, {}), ("tome", 7, {}), ("visionzip", 6, {"signal": "attention_received"}),
           ("prumerge+", 6, {"signal": "attention_received"})]


@pytest.mark.parametrize("method, keep, options", METHODS)
def test_reduced_forward_matches_reference(family, method, keep, options):
    name, model, _, proc = family
    batch = inputs(name, proc)
    keep = min(keep, 8)  # Gemma 3 has 16 tokens per image here
    with vlm.patch(model, method, keep=keep, **options) as handle:
        got = logits(model, batch)
    want = reference_logits(model, batch, method, keep, signal="signal" in options)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    n = 64 if name == "paligemma" else 16
    assert handle.stats == [{"image": 0, "views": 1, "before": n, "after": keep}]


def test_keep_all_is_bit_identical(family):
    name, model, _, proc = family
    batch = inputs(name, proc)
    before = logits(model, batch)
    n = 64 if name == "paligemma" else 16
    with vlm.patch(model, "divprune", keep=n):
        assert torch.equal(logits(model, batch), before)
    with vlm.patch(model, "pool", factor=1) as handle:  # reduces to all tokens through mm_encoder_outputs
        assert torch.equal(logits(model, batch), before)
    assert handle.stats[0]["after"] == n
    assert torch.equal(logits(model, batch), before)


@pytest.mark.parametrize("method, keep, options", [("divprune", 4, {}),
                                                   ("visionzip", 3, {"signal": "attention_received"})])
def test_generate_matches_reference(family, method, keep, options):
    name, model, _, proc = family
    batch = inputs(name, proc, images=2)
    with vlm.patch(model, method, keep=keep, **options):
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    prompt = batch["input_ids"]
    assert torch.equal(out[:, :prompt.shape[1]], prompt)  # the original prompt comes back in front
    want = reference_generate(model, batch, method, keep, signal="signal" in options)
    assert torch.equal(out[:, prompt.shape[1]:], want)


def test_unpatch_restores_and_second_instance_untouched(family):
    name, model, second, proc = family
    batch = inputs(name, proc)
    before = logits(model, batch)
    assert torch.equal(logits(second, batch), before)  # same saved weights
    handle = vlm.patch(model, "pool", keep=4)
    assert logits(model, batch).shape[1] < before.shape[1]
    assert "forward" not in second.__dict__ and torch.equal(logits(second, batch), before)
    handle.unpatch()
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(logits(model, batch), before)
    unpatched = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.equal(unpatched, second.generate(**batch, max_new_tokens=3, do_sample=False))


def test_kv_cache_holds_the_kept_tokens(family):
    name, model, _, proc = family
    batch = inputs(name, proc)
    full = batch["input_ids"].shape[1]
    n = 64 if name == "paligemma" else 16
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == n
    full_layer = model.config.text_config.num_hidden_layers - 1  # Gemma 3's full-attention layer
    with vlm.patch(model, "tome", keep=3):
        with torch.no_grad():
            out = model(**batch, use_cache=True)
    assert out.cache.get_seq_length(full_layer) == full - (n - 3)


@pytest.mark.parametrize("rows, per_row", [(2, 1), (1, 2), (2, 2)])
def test_batches_and_several_images(family, rows, per_row):
    name, model, _, proc = family
    batch = inputs(name, proc, images=rows, per_row=per_row)
    with vlm.patch(model, "tome", keep=5) as handle:
        got = logits(model, batch)
    torch.testing.assert_close(got, reference_logits(model, batch, "tome", 5), atol=1e-4, rtol=1e-4)
    assert [s["image"] for s in handle.stats] == list(range(rows * per_row))
    assert all(s["after"] == 5 for s in handle.stats)


def test_token_type_ids_stay_with_the_kept_tokens(family):
    """The shortened token_type_ids keep the kept image tokens in one bidirectional block: the first kept
    image token sees the last one (logits of the reduced forward equal the reference built from them)."""
    name, model, _, proc = family
    batch = inputs(name, proc)
    seen = {}

    def record(module, args, kwargs):
        seen.update(kwargs)

    hook = model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with vlm.patch(model, "divprune", keep=4):
            logits(model, batch)
    finally:
        hook.remove()
    ids = reference_inputs(model, batch, "divprune", 4)[3]
    assert torch.equal(seen["input_ids"], ids)
    image = ids == model.config.image_token_id
    types = seen["token_type_ids"]
    if name == "paligemma":
        assert torch.equal(types, torch.zeros_like(ids))  # the whole prompt is the prefix
    else:
        assert torch.equal(types.bool(), image) and int(image.sum()) == 4
    assert "pixel_values" not in seen or seen["pixel_values"] is None


def test_cls_methods_need_the_substitute_signal(family):
    name, model, _, _ = family
    label = "PaliGemma" if name == "paligemma" else "Gemma 3"
    for method in ("visionzip", "prumerge", "cls-attention"):
        with pytest.raises(ValueError, match=rf"{method} ranks tokens by the attention from a CLS token, and "
                                             rf"{label}'s vision tower has none; use one of .*tome.* "
                                             r"signal='attention_received'"):
            vlm.patch(model, method, keep=4)
        assert "forward" not in model.__dict__  # nothing left behind by the refused patch
    assert vlm.supported_models().count(type(model).__name__) == 1


def test_gemma3_pan_and_scan_reduces_each_crop(tmp_path):
    build_gemma3(tmp_path)
    model, proc = _load("gemma3", tmp_path), transformers.AutoProcessor.from_pretrained(tmp_path)
    picture = noise_image(3, width=120, height=30)
    batch = dict(proc(images=[[picture]], text=["<start_of_image> what is in the image"], return_tensors="pt",
                      do_pan_and_scan=True, pan_and_scan_min_crop_size=8))
    crops = batch["pixel_values"].shape[0]
    assert crops > 1 and int((batch["input_ids"] == model.config.image_token_id).sum()) == 16 * crops
    with vlm.patch(model, "pool", keep=4) as handle:
        got = logits(model, batch)
    torch.testing.assert_close(got, reference_logits(model, batch, "pool", 4), atol=1e-4, rtol=1e-4)
    assert handle.stats == [{"image": i, "views": 1, "before": 16, "after": 4} for i in range(crops)]


def test_visual_tokens_are_what_the_lm_receives(family):
    name, model, _, proc = family
    tokens = vlm.visual_tokens(model, proc, noise_image(0))
    batch = inputs(name, proc)
    with torch.no_grad():
        feats = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output[0]
    np.testing.assert_allclose(tokens.values, feats.numpy(), atol=1e-6)
    assert tokens.grid == ((8, 8) if name == "paligemma" else (4, 4))


def test_left_padded_prompts(family):
    """Rows of different lengths, padded on the left as for generate: the kept tokens, positions and padding
    mask match the reference in the forward (on the real positions) and in greedy decoding."""
    name, model, _, proc = family
    placeholder = FAMILIES[name][2]
    texts = [f"{placeholder} what", f"{placeholder} what is in the image a cat"]
    if name == "paligemma":
        texts = [t.replace(" ", "", 1) for t in texts]
    proc.tokenizer.padding_side = "left"
    try:
        batch = dict(proc(images=[[noise_image(0)], [noise_image(1)]], text=texts, return_tensors="pt",
                          padding=True))
    finally:
        proc.tokenizer.padding_side = "right"
    assert int((batch["attention_mask"] == 0).sum()) > 0
    with vlm.patch(model, "tome", keep=3):
        got = logits(model, batch)
        out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    real = reference_inputs(model, batch, "tome", 3)[4]
    want = reference_logits(model, batch, "tome", 3)
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=1e-4)
    assert torch.equal(out[:, batch["input_ids"].shape[1]:], reference_generate(model, batch, "tome", 3))


def test_bfloat16(tmp_path):
    """A bfloat16 model: features, reduction and scatter stay in the model's dtype; logits close to float32."""
    build_gemma3(tmp_path)
    proc = transformers.AutoProcessor.from_pretrained(tmp_path)
    batch = inputs("gemma3", proc)
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch.items()}
    with vlm.patch(model, "tome", keep=5) as handle:
        got = logits(model, half)
    assert got.dtype == torch.bfloat16 and handle.stats[0]["after"] == 5
    full = _load("gemma3", tmp_path)
    with vlm.patch(full, "tome", keep=5):
        want = logits(full, batch)
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.1)
