"""vistok.vlm.patch on tiny LLaVA-NeXT and LLaVA-OneVision models built from configs (random weights, their real
processors with a tiny tokenizer, saved and loaded back, no hub).

Each view (the base image and every anyres crop) is a 6x6 grid of 36 tower tokens; pinpoints of 48x96, 96x48 and
96x96 give a 1x2 crop grid for a wide image and a 2x2 grid for a near-square one.
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

SIDE, PATCH, GRID = 48, 8, 36
PINPOINTS = [[48, 96], [96, 48], [96, 96]]
WIDE, SQUARE = (96, 48), (90, 80)  # (width, height): 1x2 and 2x2 crops
WORDS = ["what", "is", "in", "the", "a", "cat", "dog"]


def noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    width, height = size
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _text_config(kind, tok):
    common = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return kind(**common)


def build_next(folder):
    tok = tiny_tokenizer(["<image>"], extra_words=WORDS)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=SIDE, patch_size=PATCH)
    config = transformers.LlavaNextConfig(
        vision_config=vision, text_config=_text_config(transformers.LlamaConfig, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=PINPOINTS,
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    transformers.LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    images = transformers.LlavaNextImageProcessor(size={"shortest_edge": SIDE}, image_grid_pinpoints=PINPOINTS,
                                                  crop_size={"height": SIDE, "width": SIDE})
    transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=PATCH,
                                    vision_feature_select_strategy="default",
                                    num_additional_image_tokens=1).save_pretrained(folder)
    return transformers.LlavaNextForConditionalGeneration


def build_onevision(folder):
    tok = tiny_tokenizer(["<image>", "<video>"], extra_words=WORDS)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, image_size=SIDE, patch_size=PATCH,
                                             vision_use_head=False)
    config = transformers.LlavaOnevisionConfig(
        vision_config=vision, text_config=_text_config(transformers.Qwen2Config, tok),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS, vision_feature_layer=-1, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1", pad_token_id=tok.pad_token_id)  # max_1: the 2x2 grid is downsampled
    torch.manual_seed(0)
    transformers.LlavaOnevisionForConditionalGeneration(config).save_pretrained(folder)
    images = transformers.LlavaOnevisionImageProcessor(size={"height": SIDE, "width": SIDE},
                                                       image_grid_pinpoints=PINPOINTS, image_mean=[0.5] * 3,
                                                       image_std=[0.5] * 3)
    videos = transformers.LlavaOnevisionVideoProcessor(size={"height": SIDE, "width": SIDE})
    transformers.LlavaOnevisionProcessor(image_processor=images, tokenizer=tok, video_processor=videos,
                                         num_image_tokens=GRID, vision_feature_select_strategy="full",
                                         vision_aspect_ratio="anyres_max_1").save_pretrained(folder)
    return transformers.LlavaOnevisionForConditionalGeneration


BUILDERS = {"next": build_next, "onevision": build_onevision}


_LOADED: dict[str, tuple] = {}


def _load(kind, tmp_path_factory):
    """Build, save and load back one tiny model and its processor (once per module)."""
    if kind not in _LOADED:
        folder = tmp_path_factory.mktemp(f"tiny-llava-{kind}")
        klass = BUILDERS[kind](folder)
        model = klass.from_pretrained(folder).eval()
        proc = transformers.AutoProcessor.from_pretrained(folder)
        _LOADED[kind] = (kind, model, proc, folder)
    _LOADED[kind][2].tokenizer.padding_side = "right"
    return _LOADED[kind]


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def vlm_model(request, tmp_path_factory):
    return _load(request.param, tmp_path_factory)


@pytest.fixture()
def onevision(tmp_path_factory):
    return _load("onevision", tmp_path_factory)


def make_batch(proc, sizes=(WIDE, SQUARE), prompts=("<image> what is in the image", "a cat <image>"), side="right"):
    proc.tokenizer.padding_side = side
    images = [noise_image(i, size) for i, size in enumerate(sizes)]
    if len(images) == 1:
        return dict(proc(images=images[0], text=prompts[0], return_tensors="pt"))
    return dict(proc(images=images, text=list(prompts[:len(images)]), return_tensors="pt", padding=True))


# --- the manual reference ----------------------------------------------------------------------------------


def view_counts(model, batch):
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    cfg = model.config
    counts = [image_size_to_num_patches(s, cfg.image_grid_pinpoints, SIDE) for s in batch["image_sizes"]]
    per_sample = batch.get("batch_num_images")
    if per_sample is not None:
        tiled = [int(n) == 1 for n in per_sample for _ in range(int(n))]
        counts = [c if t else 1 for c, t in zip(counts, tiled)]
    return counts


def tower_views(model, batch):
    """Per image, the list of its views' (tokens, signals), straight from the tower: features at the selected
    layer, and CLS attention / attention received / keys computed by brute force from that layer's input."""
    cfg, inner = model.config, model.model
    counts = view_counts(model, batch)
    pixels = torch.cat([batch["pixel_values"][i, :c] for i, c in enumerate(counts)])
    encoder = getattr(inner.vision_tower, "vision_model", inner.vision_tower).encoder
    index = cfg.vision_feature_layer % (len(encoder.layers) + 1)  # hidden_states index = output of layers[index-1]
    cls = cfg.vision_feature_select_strategy == "default"
    with torch.no_grad():
        hidden = inner.vision_tower(pixels, output_hidden_states=True).hidden_states
        layer = encoder.layers[index - 1]
        x = layer.layer_norm1(hidden[index - 1])
        attn = layer.self_attn
        heads, dim = attn.num_heads, attn.head_dim
        q = attn.q_proj(x).view(x.shape[0], -1, heads, dim).transpose(1, 2)
        k = attn.k_proj(x).view(x.shape[0], -1, heads, dim).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) * dim ** -0.5, dim=-1)  # (V, H, T, T)
    start = 1 if cls else 0
    feats = hidden[index][:, start:]
    signals = {"keys": k.mean(1)[:, start:], "attention_received": probs.mean((1, 2))[:, start:]}
    if cls:
        signals["cls_attention"] = probs[:, :, 0, 1:].mean(1)
    out, row = [], 0
    for count in counts:
        out.append([(feats[row + v], {n: s[row + v] for n, s in signals.items()}) for v in range(count)])
        row += count
    return out


def reference_features(model, batch, method, keep, signal="cls_attention"):
    """Per image, what the LM receives: every view reduced with vistok.reduce (numpy), projected, then packed as
    documented (base, crops in order; a single-view image gets one image_newline)."""
    from vistok.reducers import method_info

    info = method_info(method)
    inner = model.model
    images = []
    for views in tower_views(model, batch):
        rows = []
        for tokens, signals in views:
            extra = {}
            for name in {*info.needs, *info.uses} & {"cls_attention", "keys"}:
                source = "attention_received" if name == "cls_attention" and signal != name else name
                extra[name] = signals[source].double().numpy()
            t = vistok.Tokens(values=tokens.float().numpy(), grid=(6, 6))
            rows.append(np.asarray(vistok.reduce(t, method, keep=keep, **extra).values, dtype=np.float32))
        with torch.no_grad():
            packed = inner.multi_modal_projector(torch.from_numpy(np.concatenate(rows))[None])[0]
            if len(views) == 1:
                packed = torch.cat([packed, inner.image_newline[None]])
        images.append(packed)
    return images


def placeholder_runs(ids, image_id):
    """(start, length) of each run of consecutive placeholders in a 1-D id tensor."""
    runs, start = [], None
    for i, value in enumerate((ids == image_id).tolist() + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def reference_rows(model, batch, features):
    """Per batch row (padding removed): the reduced ids and inputs_embeds assembled by hand."""
    inner, image_id = model.model, model.config.image_token_id
    feature_iter = iter(features)
    rows = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = ids[mask.bool()]
        keep = torch.ones_like(ids, dtype=torch.bool)
        blocks = []
        for start, length in placeholder_runs(ids, image_id):
            feats = next(feature_iter)
            keep[start + feats.shape[0]:start + length] = False
            blocks.append(feats)
        short = ids[keep]
        with torch.no_grad():
            embeds = inner.get_input_embeddings()(short)
            embeds[short == image_id] = torch.cat(blocks) if blocks else embeds[:0]
        rows.append((short, embeds))
    return rows


def lm_logits(model, embeds):
    with torch.no_grad():
        return model.lm_head(model.model.language_model(inputs_embeds=embeds[None]).last_hidden_state)[0]


def reference_greedy(model, embeds, steps):
    out = []
    for _ in range(steps):
        nxt = int(lm_logits(model, embeds)[-1].argmax())
        out.append(nxt)
        with torch.no_grad():
            embeds = torch.cat([embeds, model.model.get_input_embeddings()(torch.tensor([nxt]))])
    return out


def cases(kind):
    """(method, patch options) checked against the reference for one family."""
    if kind == "next":
        return [("pool", {}), ("visionzip", {}), ("cls-attention", {}), ("tome", {}), ("divprune", {})]
    return [("pool", {}), ("tome", {}), ("divprune", {}), ("visionzip", {"signal": "attention_received"}),
            ("cls-attention", {"signal": "attention_received"})]


# --- tests ---------------------------------------------------------------------------------------------------


def test_both_classes_are_supported():
    names = vlm.supported_models()
    assert {"LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration"} <= set(names)


@pytest.mark.parametrize("amount", [{"keep": GRID}, {"keep": 1000}, {"ratio": 1.0}])
def test_keep_all_is_bit_identical(vlm_model, amount):
    kind, model, proc, _ = vlm_model
    batch = make_batch(proc)
    with torch.no_grad():
        ref = model(**batch).logits
        with vlm.patch(model, "pool", **amount) as handle:
            got = model(**batch).logits
    assert torch.equal(ref, got)
    before = [int(n) for n in (batch["input_ids"] == model.config.image_token_id).sum(1)]  # the processor's counts
    assert handle.stats == [{"image": 0, "views": 3, "before": before[0], "after": before[0]},
                            {"image": 1, "views": 5, "before": before[1], "after": before[1]}]
    assert before == ([114, 166] if kind == "next" else [72, 71])  # unpadded grids with newlines, OneVision shrunk


def test_reduced_forward_equals_manual_reference(vlm_model):
    kind, model, proc, _ = vlm_model
    batch = make_batch(proc)  # two images, 1x2 and 2x2 crops, right padding
    keep = 6
    placeholders = [int(n) for n in (batch["input_ids"] == model.config.image_token_id).sum(1)]
    for method, options in cases(kind):
        features = reference_features(model, batch, method, keep, options.get("signal", "cls_attention"))
        rows = reference_rows(model, batch, features)
        with torch.no_grad(), vlm.patch(model, method, keep=keep, **options) as handle:
            got = model(**batch).logits
        assert handle.stats == [{"image": 0, "views": 3, "before": placeholders[0], "after": 3 * keep},
                                {"image": 1, "views": 5, "before": placeholders[1], "after": 5 * keep}], method
        real = batch["attention_mask"].sum(1).tolist()  # old padding is dropped, rows re-padded to the longest
        assert got.shape[1] == max(r - (p - a["after"]) for r, p, a in zip(real, placeholders, handle.stats))
        for b, (short, embeds) in enumerate(rows):
            ref = lm_logits(model, embeds)
            torch.testing.assert_close(got[b, :len(short)], ref, rtol=1e-4, atol=1e-4, msg=f"{kind} {method} row {b}")


def test_reference_sees_a_wrong_layout(vlm_model):
    """The reference comparison can fail: crops in reverse order give other logits."""
    kind, model, proc, _ = vlm_model
    batch = make_batch(proc, sizes=(WIDE,))
    features = reference_features(model, batch, "pool", 4)
    wrong = [torch.cat([f[:4], f[8:12], f[4:8]]) for f in features]  # base, crop 2, crop 1
    with torch.no_grad(), vlm.patch(model, "pool", keep=4):
        got = model(**batch).logits[0]
    (short, good), = reference_rows(model, batch, features)
    (_, bad), = reference_rows(model, batch, wrong)
    torch.testing.assert_close(got, lm_logits(model, good), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, lm_logits(model, bad), atol=1e-4)


def test_layout_base_then_crops_without_newline(vlm_model):
    kind, model, proc, _ = vlm_model
    batch = make_batch(proc, sizes=(SQUARE,))
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"][0].detach().clone()

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad(), vlm.patch(model, "stride", keep=5):
            model(**batch)
    finally:
        hook.remove()
    views = tower_views(model, batch)[0]
    stride = [np.asarray(vistok.reduce(vistok.Tokens(values=t.float().numpy(), grid=(6, 6)), "stride",
                                       keep=5).values, dtype=np.float32) for t, _ in views]
    with torch.no_grad():
        expected = [model.model.multi_modal_projector(torch.from_numpy(s)[None])[0] for s in stride]
    ids = batch["input_ids"][0]
    start = int((ids == model.config.image_token_id).nonzero()[0])
    block = seen["embeds"][start:start + 25]
    for v in range(5):  # base first, then crops 1..4 in the model's (row-major) order
        torch.testing.assert_close(block[5 * v:5 * v + 5], expected[v], rtol=1e-5, atol=1e-5)
    count = int((ids == model.config.image_token_id).sum())
    with torch.no_grad():  # the text after the image follows at once: no image_newline in between
        text_after = model.model.get_input_embeddings()(ids[start + count])
    torch.testing.assert_close(seen["embeds"][start + 25], text_after)


def test_generate_matches_the_manual_path(vlm_model):
    kind, model, proc, _ = vlm_model
    method, options = ("visionzip", {}) if kind == "next" else ("visionzip", {"signal": "attention_received"})
    steps = 5
    for sizes in [(WIDE,), (SQUARE,)]:
        batch = make_batch(proc, sizes=sizes)
        with torch.no_grad(), vlm.patch(model, method, keep=6, **options):
            out = model.generate(**batch, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
        length = batch["input_ids"].shape[1]
        assert out.shape == (1, length + steps)
        assert torch.equal(out[:, :length], batch["input_ids"])
        features = reference_features(model, batch, method, 6, options.get("signal", "cls_attention"))
        (_, embeds), = reference_rows(model, batch, features)
        assert out[0, length:].tolist() == reference_greedy(model, embeds, steps)


def test_batched_generate_with_left_padding_matches_single_images(vlm_model):
    kind, model, proc, _ = vlm_model
    batch = make_batch(proc, side="left")
    with torch.no_grad(), vlm.patch(model, "pool", keep=4):
        out = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
        for b, (size, prompt) in enumerate(zip((WIDE, SQUARE), ("<image> what is in the image", "a cat <image>"))):
            single = dict(proc(images=noise_image(b, size), text=prompt, return_tensors="pt"))
            alone = model.generate(**single, max_new_tokens=3, min_new_tokens=3, do_sample=False)
            assert torch.equal(out[b, -3:], alone[0, -3:])
    proc.tokenizer.padding_side = "right"


def test_kv_cache_length_is_count_minus_reduction(vlm_model):
    kind, model, proc, _ = vlm_model
    for sizes, views in [((WIDE,), 3), ((SQUARE,), 5)]:
        batch = make_batch(proc, sizes=sizes)
        count = int((batch["input_ids"] == model.config.image_token_id).sum())
        with torch.no_grad(), vlm.patch(model, "pool", keep=9) as handle:
            out = model(**batch, use_cache=True)
        removed = count - 9 * views
        assert handle.stats == [{"image": 0, "views": views, "before": count, "after": 9 * views}]
        assert out.past_key_values.get_seq_length() == batch["input_ids"].shape[1] - removed


def test_unpatch_restores_and_other_instances_are_untouched(vlm_model):
    kind, model, proc, folder = vlm_model
    other = type(model).from_pretrained(folder).eval()
    batch = make_batch(proc)
    with torch.no_grad():
        ref = model(**batch).logits
        handle = vlm.patch(model, "pool", keep=4)
        assert model(**batch).logits.shape[1] < ref.shape[1]
        assert torch.equal(other(**batch).logits, ref)
        assert "forward" not in other.__dict__ and "generate" not in other.__dict__
        handle.unpatch()
        assert "forward" not in model.__dict__ and "generate" not in model.__dict__
        assert torch.equal(model(**batch).logits, ref)
    assert type(model).forward is type(other).forward


def test_visual_tokens_are_what_the_lm_receives(vlm_model):
    kind, model, proc, _ = vlm_model
    image = noise_image(3, SQUARE)
    tokens = vlm.visual_tokens(model, proc, image)
    batch = dict(proc(images=image, text="<image>", return_tensors="pt"))
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=batch["pixel_values"], image_sizes=batch["image_sizes"],
                                             return_dict=True).pooler_output[0]
    np.testing.assert_allclose(tokens.values, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert tokens.grid is None and tokens.meta["views"] == 5
    assert tokens.meta["lm_positions"] == int((batch["input_ids"] == model.config.image_token_id).sum())


def test_onevision_cls_methods_need_the_explicit_substitute(onevision):
    kind, model, proc, _ = onevision
    for method in ("visionzip", "cls-attention", "prumerge"):
        with pytest.raises(ValueError, match=r"LLaVA-OneVision's vision tower has none; use one of .*pool.*"
                                             r"signal='attention_received'"):
            vlm.patch(model, method, keep=4)
    assert "forward" not in model.__dict__


def test_onevision_multi_image_prompt_keeps_one_newline_per_image(onevision):
    kind, model, proc, _ = onevision
    images = [noise_image(0, WIDE), noise_image(1, SQUARE)]
    batch = dict(proc(images=[images], text=["<image> what is <image> in the image"], return_tensors="pt"))
    assert batch["batch_num_images"].tolist() == [2]
    count = int((batch["input_ids"] == model.config.image_token_id).sum())
    assert count == 2 * (GRID + 1)
    features = reference_features(model, batch, "divprune", 5)
    assert [f.shape[0] for f in features] == [6, 6]
    (short, embeds), = reference_rows(model, batch, features)
    with torch.no_grad(), vlm.patch(model, "divprune", keep=5) as handle:
        got = model(**batch).logits[0]
    assert handle.stats == [{"image": i, "views": 1, "before": GRID + 1, "after": 6} for i in range(2)]
    torch.testing.assert_close(got, lm_logits(model, embeds), rtol=1e-4, atol=1e-4)
    newline = model.model.image_newline
    image_rows = embeds[short == model.config.image_token_id]
    torch.testing.assert_close(image_rows[5], newline)
    torch.testing.assert_close(image_rows[11], newline)


def test_onevision_video_passes_through_unreduced(onevision):
    kind, model, proc, _ = onevision
    frames = [np.random.default_rng(s).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8) for s in range(4)]
    batch = dict(proc(images=[noise_image(0, WIDE)], videos=[frames], text=["<video> what is <image> in the image"],
                      return_tensors="pt"))
    video_id = model.config.video_token_id
    n_video = int((batch["input_ids"] == video_id).sum())
    with torch.no_grad():
        ref = model(**batch).logits
        with vlm.patch(model, "pool", keep=GRID):
            assert torch.equal(model(**batch).logits, ref)
        with vlm.patch(model, "pool", keep=4) as handle:
            got = model(**batch).logits[0]
        video = model.model.get_video_features(batch["pixel_values_videos"], return_dict=True).pooler_output[0]
    assert video.shape[0] == n_video
    features = reference_features(model, batch, "pool", 4)
    (short, embeds), = reference_rows(model, batch, features)
    embeds[short == video_id] = video
    assert handle.stats == [{"image": 0, "views": 3, "before": 72, "after": 12}]
    torch.testing.assert_close(got, lm_logits(model, embeds), rtol=1e-4, atol=1e-4)


def test_bfloat16_and_missing_image_sizes(vlm_model):
    kind, model, proc, folder = vlm_model
    half = type(model).from_pretrained(folder, dtype=torch.bfloat16).eval()
    batch = make_batch(proc, side="left")
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    count = [int(n) for n in (batch["input_ids"] == model.config.image_token_id).sum(1)]
    with torch.no_grad(), vlm.patch(half, "tome", keep=5) as handle:
        logits = half(**batch).logits
        out = half.generate(**batch, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    assert logits.dtype == torch.bfloat16 and bool(torch.isfinite(logits).all())
    real = batch["attention_mask"].sum(1).tolist()
    assert logits.shape[1] == max(r - (c - 5 * v) for r, c, v in zip(real, count, (3, 5)))
    assert [s["after"] for s in handle.stats] == [15, 25]
    assert out.shape == (2, batch["input_ids"].shape[1] + 2)
    del batch["image_sizes"]
    with vlm.patch(model, "pool", keep=4), pytest.raises(ValueError, match="needs image_sizes with pixel_values"):
        model(**batch)
