"""vistok.vlm.patch on tiny Qwen2-VL and Qwen2.5-VL models built from configs (random weights, their real
processors with a tiny tokenizer, saved and loaded back, no hub)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from processor_refs import tiny_tokenizer
from vistok import vlm

transformers = pytest.importorskip("transformers")

SPECIAL = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
PROMPT = "what is <|vision_start|><|image_pad|><|vision_end|> in the image"
KINDS = ("qwen2", "qwen2.5")
KEEP = 6


def noise_image(seed: int, width: int = 170, height: int = 120) -> Image.Image:
    """170x120 resizes to 168x112: a 12x8 patch grid, 24 merged tokens (4 rows x 6 columns)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def build(kind: str, folder, seed: int = 0):
    tok = tiny_tokenizer(SPECIAL, extra_words=["what", "is", "in", "the", "a", "cat", "dog"])
    start, image, end, video = tok.convert_tokens_to_ids(SPECIAL)
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ids = dict(image_token_id=image, video_token_id=video, vision_start_token_id=start, vision_end_token_id=end)
    if kind == "qwen2":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                      spatial_merge_size=2, temporal_patch_size=2)
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls, proc_cls = transformers.Qwen2VLForConditionalGeneration, transformers.Qwen2VLProcessor
    else:  # windows of 2x2 merged tokens in blocks 0 and 1, full attention in the last block (as 7/15/23/31 of 32)
        vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                      fullatt_block_indexes=[2])
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls, proc_cls = transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLProcessor
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    images = transformers.Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 30)
    proc = proc_cls(image_processor=images, tokenizer=tok, video_processor=transformers.Qwen2VLVideoProcessor())
    proc.save_pretrained(folder)
    return model_cls


@pytest.fixture(scope="module", params=KINDS)
def qwen(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model_cls = build(request.param, folder)
    model = model_cls.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None  # always 5 new tokens
    proc = transformers.AutoProcessor.from_pretrained(folder)
    return model, proc, folder, model_cls


def inputs(proc, images, prompts=None):
    prompts = prompts or [PROMPT] * len(images)
    return dict(proc(images=images, text=prompts, return_tensors="pt", padding=True))


# --- the manual reference -------------------------------------------------------------------------------


def last_block_input(model, batch):
    """The input of the tower's last block (its norm1 applied), and the block's rotary cos/sin."""
    visual = model.model.visual
    store = {}

    def hook(module, args, kwargs):
        store["x"], store["pe"] = args[0], kwargs["position_embeddings"]

    handle = visual.blocks[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    finally:
        handle.remove()
    return visual.blocks[-1].norm1(store["x"]), store["pe"]


def to_merger_order(model, batch, per_patch, how):
    """Per-patch values in the tower's order -> one value per merged token, in the merger's output order."""
    visual = model.model.visual
    groups = per_patch.reshape(per_patch.shape[0] // 4, 4, *per_patch.shape[1:])
    groups = groups.sum(1) if how == "sum" else groups.mean(1)
    if hasattr(visual, "window_size"):
        from transformers.vision_utils import get_vision_window_index

        index, _ = get_vision_window_index(batch["image_grid_thw"], 2, visual.window_size, visual.patch_size)
        groups = groups[torch.argsort(index)]
    return groups


def brute_signals(model, batch):
    """keys (pre-rotary, mean over heads and 2x2 groups) and attention received (softmax of the last block with
    its rotary embedding over each whole image, mean over heads and queries, summed over 2x2 groups)."""
    x, (cos, sin) = last_block_input(model, batch)
    attn = model.model.visual.blocks[-1].attn
    with torch.no_grad():
        q, k, _ = attn.qkv(x).reshape(x.shape[0], 3, attn.num_heads, -1).unbind(1)
        keys = k.mean(1)

        def rotate(t):
            half = t.shape[-1] // 2
            turned = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
            return t * cos[:, None] + turned * sin[:, None]

        qr, kr = rotate(q), rotate(k)
        sizes = batch["image_grid_thw"].prod(-1).tolist()
        received, start = [], 0
        for n in sizes:
            s = slice(start, start + n)
            probs = torch.einsum("qhd,khd->hqk", qr[s], kr[s]).mul(attn.head_dim ** -0.5).softmax(-1)
            received.append(probs.mean(dim=(0, 1)))
            start += n
        received = torch.cat(received)
    return {"keys": to_merger_order(model, batch, keys, "mean"),
            "cls_attention": to_merger_order(model, batch, received, "sum")}


def reduce_reference(model, batch, method, keep, signals=()):
    """Per image: the LM tokens reduced with the numpy vistok.reduce, sorted by the index of each output's
    representative (the kept token; for a merged group its member nearest to the merged vector)."""
    with torch.no_grad():
        feats = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    sig = brute_signals(model, batch) if signals else {}
    out, start = [], 0
    for f, (_, h, w) in zip(feats, batch["image_grid_thw"].tolist()):
        n = f.shape[0]
        extra = {name: sig[name][start:start + n].double().numpy() for name in signals}
        start += n
        tokens = vistok.Tokens(values=f.numpy().astype(np.float64), grid=(h // 2, w // 2))
        red = vistok.reduce(tokens, method, keep=keep, **extra)
        values = np.asarray(red.values)
        source = np.asarray(red.source).reshape(-1)
        reps = []
        for j in range(len(values)):
            members = np.flatnonzero(source == j)
            gap = np.linalg.norm(tokens.values[members] - values[j], axis=1)
            reps.append(int(members[np.argmin(gap)]))
        order = np.argsort(reps)
        out.append((torch.tensor(values[order], dtype=torch.float32), torch.tensor(np.asarray(reps)[order])))
    return out


def reference_rows(model, batch, method, keep, signals=()):
    """One (inputs_embeds, position_ids) per batch row, assembled by hand: text embeddings, the reduced tokens
    in the image block, positions = the columns of get_rope_index on the original input."""
    inner = model.model
    reduced = iter(reduce_reference(model, batch, method, keep, signals))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions, _ = inner.get_rope_index(ids, mm_token_type_ids=batch["mm_token_type_ids"],
                                        image_grid_thw=batch["image_grid_thw"],
                                        video_grid_thw=batch.get("video_grid_thw"), attention_mask=mask)
    rows = []
    with torch.no_grad():
        if batch.get("pixel_values_videos") is not None:
            video = iter(inner.get_video_features(batch["pixel_values_videos"], batch["video_grid_thw"]).pooler_output)
        for b in range(ids.shape[0]):
            real = mask[b].bool()
            row_ids, row_pos = ids[b][real], positions[:, b][:, real]
            image = (row_ids == model.config.image_token_id).nonzero().flatten()
            values, reps = next(reduced)
            columns = torch.cat([torch.arange(image[0]), image[0] + reps, torch.arange(image[-1] + 1, len(row_ids))])
            embeds = inner.get_input_embeddings()(row_ids[columns])
            embeds[image[0]:image[0] + len(reps)] = values
            frames = row_ids[columns] == model.config.video_token_id
            if frames.any():
                embeds[frames] = next(video)
            rows.append((embeds, row_pos[:, columns]))
    return rows


def lm_logits(model, embeds, position_ids):
    with torch.no_grad():
        hidden = model.model.language_model(inputs_embeds=embeds[None], position_ids=position_ids[:, None])
        return model.lm_head(hidden.last_hidden_state)[0]


def manual_greedy(model, embeds, position_ids, steps):
    """Greedy decoding without a cache: each new token at the last position + 1 on all three axes."""
    out = []
    for _ in range(steps):
        token = int(lm_logits(model, embeds, position_ids)[-1].argmax())
        out.append(token)
        with torch.no_grad():
            embeds = torch.cat([embeds, model.model.get_input_embeddings()(torch.tensor([token]))])
        position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=1)
    return out


# --- tests ----------------------------------------------------------------------------------------------


def test_both_classes_are_supported():
    names = vlm.supported_models()
    assert "Qwen2VLForConditionalGeneration" in names and "Qwen2_5_VLForConditionalGeneration" in names


def test_keep_all_is_bit_identical(qwen):
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(0)])
    with torch.no_grad():
        ref = model(**batch).logits
        with vlm.patch(model, "pool", keep=24) as handle:
            got = model(**batch).logits
    assert torch.equal(ref, got)
    assert handle.stats == [{"image": 0, "views": 1, "before": 24, "after": 24}]


@pytest.mark.parametrize("method,signals", [("pool", ()), ("random", ()), ("divprune", ()), ("stride", ()),
                                            ("tome", ("keys",)), ("dpc-knn", ())])
def test_reduced_forward_equals_manual_reference(qwen, method, signals):
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(1)])
    with torch.no_grad(), vlm.patch(model, method, keep=KEEP) as handle:
        got = model(**batch).logits[0]
    (embeds, positions), = reference_rows(model, batch, method, KEEP, signals)
    assert got.shape[0] == batch["input_ids"].shape[1] - (24 - KEEP)
    torch.testing.assert_close(got, lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)
    assert handle.stats == [{"image": 0, "views": 1, "before": 24, "after": KEEP}]


def test_tome_uses_the_towers_keys(qwen):
    """Without the keys the merge differs: the check can fail."""
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(2)])
    with torch.no_grad(), vlm.patch(model, "tome", keep=KEEP):
        got = model(**batch).logits[0]
    (embeds, positions), = reference_rows(model, batch, "tome", KEEP)
    assert not torch.allclose(got, lm_logits(model, embeds, positions), atol=1e-4)


@pytest.mark.parametrize("method", ["visionzip", "cls-attention", "prumerge+"])
def test_cls_methods_use_attention_received_when_asked(qwen, method):
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(3)])
    keep = KEEP if method != "prumerge+" else None
    options = {"keep": keep} if keep else {"ratio": 0.25}
    with torch.no_grad(), vlm.patch(model, method, signal="attention_received", **options) as handle:
        got = model(**batch).logits[0]
    after = handle.stats[0]["after"]
    signals = ("cls_attention", "keys") if method != "cls-attention" else ("cls_attention",)
    (embeds, positions), = reference_rows(model, batch, method, after, signals)
    torch.testing.assert_close(got, lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)


def test_attention_received_sums_to_one_per_image(qwen):
    model, proc, _, _ = qwen
    family = vlm._base.family_of(model)
    batch = inputs(proc, [noise_image(4), noise_image(5, 120, 120)])
    with torch.no_grad():
        views = family.encode(model, batch, {"attention_received", "keys"})
    ref = brute_signals(model, batch)
    assert [v.grid for v in views] == [(4, 6), (4, 4)]
    got = torch.cat([v.attention_received for v in views])
    torch.testing.assert_close(got, ref["cls_attention"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat([v.keys for v in views]), ref["keys"], rtol=1e-5, atol=1e-6)
    assert [round(float(v.attention_received.sum()), 5) for v in views] == [1.0, 1.0]


@pytest.mark.parametrize("method", ["visionzip", "cls-attention", "prumerge", "prumerge+"])
def test_cls_methods_without_opt_in_name_the_working_ones(qwen, method):
    model, _, _, _ = qwen
    with pytest.raises(ValueError, match=r"Qwen2-VL/Qwen2.5-VL's vision tower has none; use one of .*divprune.*"
                                         r"pool.*tome.*signal='attention_received'"):
        vlm.patch(model, method, keep=KEEP)
    assert "forward" not in model.__dict__


def test_kept_tokens_keep_their_m_rope_positions_through_generate(qwen):
    """Prefill positions = the kept columns of the unpatched positions; every decoding step's position equals
    the unpatched model's; model.model.rope_deltas grows by the removed count."""
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(6)])
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True)
    try:
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=3, do_sample=False)
            plain, deltas = seen[:], model.model.rope_deltas.clone()
            seen.clear()
            with vlm.patch(model, "divprune", keep=KEEP):
                model.generate(**batch, max_new_tokens=3, do_sample=False)
                patched_deltas = model.model.rope_deltas.clone()
    finally:
        hook.remove()
    (_, reference), = reference_rows(model, batch, "divprune", KEEP)
    assert torch.equal(seen[0][-3:, 0], reference)  # the 3 M-RoPE rows of the prefill
    for step in (1, 2):
        assert torch.equal(seen[step][-3:], plain[step][-3:])
    assert int(patched_deltas) == int(deltas) + (24 - KEEP)


def test_generate_matches_manual_and_returns_the_full_prompt(qwen):
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(7)])
    steps = 5
    with torch.no_grad(), vlm.patch(model, "pool", keep=KEEP):
        out = model.generate(**batch, max_new_tokens=steps, do_sample=False)
    length = batch["input_ids"].shape[1]
    assert out.shape[1] == length + steps and torch.equal(out[:, :length], batch["input_ids"])
    (embeds, positions), = reference_rows(model, batch, "pool", KEEP)
    assert out[0, -steps:].tolist() == manual_greedy(model, embeds, positions, steps)


def test_decoding_with_the_cache_continues_the_original_numbering(qwen):
    """A hand-written decoding loop (forward with the cache, no position ids) uses rope_deltas: the next token
    gets the position the unpatched model gives it."""
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(8)])
    with torch.no_grad(), vlm.patch(model, "stride", keep=KEEP):
        first = model(**batch, use_cache=True)
        token = first.logits[:, -1:].argmax(-1)
        step = model(input_ids=token, cache=first.past_key_values).logits[0, -1]
    (embeds, positions), = reference_rows(model, batch, "stride", KEEP)
    with torch.no_grad():
        embeds = torch.cat([embeds, model.model.get_input_embeddings()(token[0])])
    positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
    torch.testing.assert_close(step, lm_logits(model, embeds, positions)[-1], rtol=1e-4, atol=1e-4)


def test_kv_cache_length_is_count_minus_reduction(qwen):
    model, proc, _, _ = qwen
    batch = inputs(proc, [noise_image(9)])
    length = batch["input_ids"].shape[1]
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 24
    with torch.no_grad(), vlm.patch(model, "divprune", keep=KEEP):
        out = model(**batch, use_cache=True)
    assert out.past_key_values.get_seq_length() == length - (24 - KEEP)


def test_batch_of_two_images_of_different_sizes(qwen):
    """24 and 16 placeholders, both kept to 6: rows of different lengths are re-padded (left, as the tokenizer
    pads); each row equals its manual reference; generate on the batch equals each image alone."""
    model, proc, _, _ = qwen
    images = [noise_image(10), noise_image(11, 120, 120)]
    prompts = [PROMPT, "a <|vision_start|><|image_pad|><|vision_end|> cat"]
    proc.tokenizer.padding_side = "left"
    try:
        batch = inputs(proc, images, prompts)
        alone = inputs(proc, images[1:], prompts[1:])
    finally:
        proc.tokenizer.padding_side = "right"
    assert batch["image_grid_thw"].tolist() == [[1, 8, 12], [1, 8, 8]]
    with torch.no_grad(), vlm.patch(model, "pool", keep=KEEP) as handle:
        got = model(**batch).logits
        assert handle.stats == [{"image": 0, "views": 1, "before": 24, "after": KEEP},
                                {"image": 1, "views": 1, "before": 16, "after": KEEP}]
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
        single = model.generate(**alone, max_new_tokens=3, do_sample=False)
    for b, (embeds, positions) in enumerate(reference_rows(model, batch, "pool", KEEP)):
        n = embeds.shape[0]
        torch.testing.assert_close(got[b, -n:], lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)
    assert torch.equal(out[1, -3:], single[0, -3:])
    assert torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"])


def test_unpatch_restores_and_other_instances_are_untouched(qwen):
    model, proc, folder, model_cls = qwen
    other = model_cls.from_pretrained(folder).eval()
    batch = inputs(proc, [noise_image(12)])
    with torch.no_grad():
        ref = model(**batch).logits
        handle = vlm.patch(model, "pool", keep=4)
        assert model(**batch).logits.shape[1] == ref.shape[1] - 20
        assert torch.equal(other(**batch).logits, ref)
        assert "forward" not in other.__dict__ and "generate" not in other.__dict__
        handle.unpatch()
        assert "forward" not in model.__dict__ and "generate" not in model.__dict__
        assert torch.equal(model(**batch).logits, ref)
    assert type(model).forward is model_cls.forward


def test_visual_tokens_are_the_merged_tokens(qwen):
    model, proc, _, _ = qwen
    image = noise_image(13)
    tokens = vlm.visual_tokens(model, proc, image)
    assert tokens.grid == (4, 6) and tokens.values.shape == (24, 64)
    batch = inputs(proc, [image], ["<|vision_start|><|image_pad|><|vision_end|>"])
    with torch.no_grad():
        ref = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output[0]
    np.testing.assert_allclose(tokens.values, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_representatives_without_an_assignment_are_exact_for_selections():
    from vistok.vlm.qwen2_vl import representatives

    tokens = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    assert representatives(tokens, tokens[[3, 1, 2]]).tolist() == [3, 1, 2]  # duplicates keep distinct places
    merged = torch.tensor([[0.6, 0.0], [5.0, 5.0]])  # the mean of 0, 1, 2 (nearest input: 1)
    assert representatives(tokens, merged, torch.tensor([0, 0, 0, 1])).tolist() == [1, 3]
    assert representatives(tokens, merged, torch.tensor([0, -1, -1, 1])).tolist() == [0, 3]  # within its group


def test_videos_in_the_same_call_pass_through(qwen):
    """Images are reduced; the video's placeholders and features stay as the unpatched model has them."""
    model, proc, _, _ = qwen
    frames = np.stack([np.asarray(noise_image(20 + i, 56, 56)) for i in range(2)])
    prompt = "<|vision_start|><|image_pad|><|vision_end|> a <|vision_start|><|video_pad|><|vision_end|> cat"
    batch = dict(proc(images=[noise_image(14)], videos=[frames], text=[prompt], return_tensors="pt",
                      videos_kwargs={"do_sample_frames": False}))
    videos = int((batch["input_ids"] == model.config.video_token_id).sum())
    assert videos > 0
    with torch.no_grad():
        plain = model(**batch).logits[0]
        with vlm.patch(model, "pool", keep=KEEP):
            got = model(**batch).logits[0]
    assert got.shape[0] == plain.shape[0] - (24 - KEEP)
    torch.testing.assert_close(got[:1], plain[:1])  # the token before the image
    (embeds, positions), = reference_rows(model, batch, "pool", KEEP)
    torch.testing.assert_close(got, lm_logits(model, embeds, positions), rtol=1e-4, atol=1e-4)


def test_bfloat16_model(qwen):
    _, proc, folder, model_cls = qwen
    model = model_cls.from_pretrained(folder, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    batch = inputs(proc, [noise_image(15)])
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad(), vlm.patch(model, "tome", keep=KEEP) as handle:
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert logits.dtype == torch.bfloat16 and logits.shape[1] == batch["input_ids"].shape[1] - (24 - KEEP)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2 and handle.stats[0]["after"] == KEEP
