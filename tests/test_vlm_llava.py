"""vistok.vlm.patch on a tiny LLaVA-1.5 built from configs (random weights, real LlavaProcessor, no hub)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vistok
from processor_refs import tiny_tokenizer
from vistok import vlm

transformers = pytest.importorskip("transformers")

SIDE, PATCH = 84, 14  # a 6x6 grid of 36 visual tokens


def noise_image(seed: int, size: int = SIDE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def build_llava(folder, seed: int = 0):
    tok = tiny_tokenizer(["<image>"], extra_words=["what", "is", "in", "the", "a", "cat", "dog"])
    image_id = tok.convert_tokens_to_ids("<image>")
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=SIDE, patch_size=PATCH,
                                           projection_dim=32)
    text = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(folder)
    ip = transformers.CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    proc = transformers.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       image_token="<image>")
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    folder = build_llava(tmp_path_factory.mktemp("tiny-llava"))
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    proc = transformers.AutoProcessor.from_pretrained(folder)
    return model, proc, folder


def inputs(proc, n: int = 1, prompt: str = "<image> what is in the image"):
    images = [noise_image(i) for i in range(n)]
    texts = [prompt] * n if n > 1 else prompt
    return dict(proc(images=images if n > 1 else images[0], text=texts, return_tensors="pt", padding=True))


def manual_logits(model, batch, method, keep, **signals_fn):
    """Reference: features captured from the tower, reduced with vistok.reduce (numpy), inputs_embeds
    assembled by hand, the LM run directly."""
    inner = model.model
    cfg = model.config
    with torch.no_grad():
        out = inner.vision_tower(batch["pixel_values"], output_hidden_states=True, output_attentions=False)
        hidden = out.hidden_states[cfg.vision_feature_layer]  # (B, 37, D)
        feats = hidden[:, 1:]
        rows = []
        for b in range(feats.shape[0]):
            extra = {name: fn(model, hidden, b) for name, fn in signals_fn.items()}
            t = vistok.Tokens(values=feats[b].numpy().astype(np.float64), grid=(6, 6))
            r = vistok.reduce(t, method, keep=keep, **extra)
            rows.append(torch.from_numpy(np.asarray(r.values, dtype=np.float32)))
        image_id = cfg.image_token_id
        ids = batch["input_ids"]
        embeds, masks = [], []
        for b in range(ids.shape[0]):
            pos = (ids[b] == image_id).nonzero().flatten()
            drop = pos[keep:]
            keep_mask = torch.ones(ids.shape[1], dtype=torch.bool)
            keep_mask[drop] = False
            e = inner.get_input_embeddings()(ids[b][keep_mask])
            e[pos[:keep]] = inner.multi_modal_projector(rows[b][None])[0]
            embeds.append(e)
            masks.append(batch["attention_mask"][b][keep_mask])
        lm_out = inner.language_model(inputs_embeds=torch.stack(embeds), attention_mask=torch.stack(masks))
        return model.lm_head(lm_out.last_hidden_state)


def cls_attention_at(model, hidden_states_unused, b):
    return _signal(model, b, "cls")


def keys_at(model, hidden_states_unused, b):
    return _signal(model, b, "keys")


_CURRENT = {}


def _signal(model, b, kind):
    """CLS attention / keys of layer num_layers-2 computed by brute force from that layer's input."""
    batch = _CURRENT["batch"]
    tower = model.model.vision_tower
    with torch.no_grad():
        out = tower(batch["pixel_values"], output_hidden_states=True)
        layer = getattr(tower, "vision_model", tower).encoder.layers[1]  # hidden_states[-2] of 3 layers = output of layers[1]
        x = layer.layer_norm1(out.hidden_states[1][b])  # input of layers[1]
        attn = layer.self_attn
        h, d = attn.num_heads, attn.head_dim
        q = attn.q_proj(x).view(-1, h, d).transpose(0, 1)
        k = attn.k_proj(x).view(-1, h, d).transpose(0, 1)
        probs = torch.softmax(q @ k.transpose(1, 2) * d ** -0.5, dim=-1)
        if kind == "cls":
            return probs[:, 0, 1:].mean(0).double().numpy()
        return k.mean(0)[1:].double().numpy()


def test_supported_models_and_unsupported_error():
    assert "LlavaForConditionalGeneration" in vlm.supported_models()
    tower = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14))
    with pytest.raises(ValueError, match="does not support CLIPVisionModel; supported: .*LlavaFor"):
        vlm.patch(tower, "pool", keep=4)
    with pytest.raises(TypeError, match="loaded transformers VLM"):
        vlm.patch("llava", "pool", keep=4)


def test_keep_all_is_bit_identical(llava):
    model, proc, _ = llava
    batch = inputs(proc)
    with torch.no_grad():
        ref = model(**batch).logits
        with vlm.patch(model, "visionzip", keep=36) as handle:
            got = model(**batch).logits
    assert torch.equal(ref, got)
    assert handle.stats == [{"image": 0, "views": 1, "before": 36, "after": 36}]


@pytest.mark.parametrize("method,signals", [("pool", {}), ("random", {}), ("cls-attention", {"cls_attention": cls_attention_at}),
                                            ("tome", {"keys": keys_at}), ("divprune", {})])
def test_reduced_forward_equals_manual_reference(llava, method, signals):
    model, proc, _ = llava
    batch = inputs(proc, n=2)
    _CURRENT["batch"] = batch
    keep = 9
    ref = manual_logits(model, batch, method, keep, **signals)
    with torch.no_grad(), vlm.patch(model, method, keep=keep) as handle:
        got = model(**batch).logits
    assert got.shape == ref.shape == (2, batch["input_ids"].shape[1] - 27, model.config.text_config.vocab_size)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert handle.stats == [{"image": i, "views": 1, "before": 36, "after": 9} for i in range(2)]


def test_visionzip_uses_the_towers_cls_attention(llava):
    model, proc, _ = llava
    batch = inputs(proc)
    _CURRENT["batch"] = batch
    with torch.no_grad(), vlm.patch(model, "cls-attention", keep=5):
        got = model(**batch).logits
    ref = manual_logits(model, batch, "cls-attention", 5, cls_attention=cls_attention_at)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # a wrong signal (uniform attention) would choose other tokens: the check can fail
    wrong = manual_logits(model, batch, "cls-attention", 5,
                          cls_attention=lambda m, h, b: np.arange(36, dtype=np.float64))
    assert not torch.allclose(got, wrong, atol=1e-4)


def test_generate_matches_manual_and_returns_the_full_prompt(llava):
    model, proc, _ = llava
    batch = inputs(proc)
    steps = 5
    with torch.no_grad(), vlm.patch(model, "pool", keep=9):
        out = model.generate(**batch, max_new_tokens=steps, do_sample=False, min_new_tokens=steps)
    assert out.shape[1] == batch["input_ids"].shape[1] + steps
    assert torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"])
    # manual greedy decoding without a cache on the reduced embeddings
    inner = model.model
    with torch.no_grad():
        feats = inner.vision_tower(batch["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
        t = vistok.Tokens(values=feats[0].numpy().astype(np.float64), grid=(6, 6))
        red = torch.from_numpy(np.asarray(vistok.reduce(t, "pool", keep=9).values, dtype=np.float32))
        ids = batch["input_ids"][0]
        pos = (ids == model.config.image_token_id).nonzero().flatten()
        keep_mask = torch.ones_like(ids, dtype=torch.bool)
        keep_mask[pos[9:]] = False
        embeds = inner.get_input_embeddings()(ids[keep_mask])
        embeds[pos[:9]] = inner.multi_modal_projector(red[None])[0]
        generated = []
        for _ in range(steps):
            logits = model.lm_head(inner.language_model(inputs_embeds=embeds[None]).last_hidden_state)
            nxt = int(logits[0, -1].argmax())
            generated.append(nxt)
            embeds = torch.cat([embeds, inner.get_input_embeddings()(torch.tensor([nxt]))])
    assert out[0, -steps:].tolist() == generated


def test_kv_cache_length_is_count_minus_reduction(llava):
    model, proc, _ = llava
    batch = inputs(proc)
    length = batch["input_ids"].shape[1]
    with torch.no_grad(), vlm.patch(model, "visionzip", keep=8):
        out = model(**batch, use_cache=True)
    cache = out.past_key_values
    assert cache.get_seq_length() == length - (36 - 8)
    assert vistok.count((SIDE, SIDE), model="llava-hf/llava-1.5-7b-hf").image_tokens == 576  # sanity of count


def test_unpatch_restores_and_other_instances_are_untouched(llava):
    model, proc, folder = llava
    other = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    batch = inputs(proc)
    with torch.no_grad():
        ref = model(**batch).logits
        handle = vlm.patch(model, "pool", keep=4)
        assert model(**batch).logits.shape[1] == ref.shape[1] - 32
        assert torch.equal(other(**batch).logits, ref)
        assert "forward" not in other.__dict__ and "generate" not in other.__dict__
        handle.unpatch()
        handle.unpatch()  # idempotent
        assert "forward" not in model.__dict__ and "generate" not in model.__dict__
        assert torch.equal(model(**batch).logits, ref)
    assert type(model).forward is transformers.LlavaForConditionalGeneration.forward


def test_text_only_calls_pass_through(llava):
    model, proc, _ = llava
    ids = proc.tokenizer("what is in the image", return_tensors="pt")
    with torch.no_grad():
        ref = model(**ids).logits
        with vlm.patch(model, "pool", keep=4) as handle:
            assert torch.equal(model(**ids).logits, ref)
    assert handle.stats == []


def test_batch_with_left_padding(llava):
    model, proc, _ = llava
    proc.tokenizer.padding_side = "left"
    images = [noise_image(3), noise_image(4)]
    batch = dict(proc(images=images, text=["<image> what is in the image", "<image> a cat"],
                      return_tensors="pt", padding=True))
    with torch.no_grad(), vlm.patch(model, "pool", keep=4):
        out = model.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
        single = model.generate(**dict(proc(images=images[1], text="<image> a cat", return_tensors="pt")),
                                max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert torch.equal(out[1, -3:], single[0, -3:])


def test_errors(llava):
    model, proc, _ = llava
    with pytest.raises(ValueError, match="keep must be"):
        vlm.patch(model, "pool", keep=0)
    with pytest.raises(ValueError, match="exactly one of keep"):
        vlm.patch(model, "pool")
    with pytest.raises(TypeError, match="takes no option 'bogus'"):
        vlm.patch(model, "pool", keep=4, bogus=1)
    with pytest.raises(ValueError, match="unknown reduction method|did you mean"):
        vlm.patch(model, "visonzip", keep=4)
    with pytest.raises(ValueError, match="saliency"):
        vlm.patch(model, "saliency", keep=4)
    handle = vlm.patch(model, "pool", keep=4)
    try:
        with pytest.raises(ValueError, match="already patched"):
            vlm.patch(model, "random", keep=4)
    finally:
        handle.unpatch()
    batch = inputs(proc)
    batch["input_ids"] = batch["input_ids"][:, 5:]  # placeholders no longer match the image
    batch["attention_mask"] = batch["attention_mask"][:, 5:]
    with vlm.patch(model, "pool", keep=4), pytest.raises(ValueError, match="placeholder"):
        model(**batch)


def test_visual_tokens_are_what_the_lm_receives(llava):
    model, proc, _ = llava
    image = noise_image(7)
    tokens = vlm.visual_tokens(model, proc, image)
    assert isinstance(tokens, vistok.Tokens) and tokens.grid == (6, 6)
    batch = dict(proc(images=image, text="<image>", return_tensors="pt"))
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output[0]
    np.testing.assert_allclose(tokens.values, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert tokens.values.shape == (36, model.config.text_config.hidden_size)
    reduced = vistok.reduce(tokens, "pool", keep=9)
    assert len(reduced) == 9


def test_two_images_in_one_prompt_and_ratio(llava):
    model, proc, _ = llava
    batch = dict(proc(images=[noise_image(1), noise_image(2)], text="<image> a <image> cat", return_tensors="pt"))
    with torch.no_grad(), vlm.patch(model, "pool", ratio=0.25) as handle:
        out = model(**batch, use_cache=True)
    assert handle.stats == [{"image": 0, "views": 1, "before": 36, "after": 9},
                            {"image": 1, "views": 1, "before": 36, "after": 9}]
    assert out.past_key_values.get_seq_length() == batch["input_ids"].shape[1] - 2 * 27


def test_bfloat16_model(llava):
    _, proc, folder = llava
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16).eval()
    batch = inputs(proc)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    with torch.no_grad(), vlm.patch(model, "visionzip", keep=8) as handle:
        out = model.generate(**batch, max_new_tokens=2, do_sample=False, min_new_tokens=2)
        logits = model(**batch).logits
    assert logits.dtype == torch.bfloat16 and logits.shape[1] == batch["input_ids"].shape[1] - 28
    assert out.shape[1] == batch["input_ids"].shape[1] + 2
    assert handle.stats[0]["after"] == 8


def test_ask_reports_positions_and_matches_generate(llava):
    model, proc, _ = llava
    from vistok.vlm.run import ask

    image = noise_image(5)
    plain = ask(model, proc, image, "what is in the image", max_new_tokens=3)
    reduced = ask(model, proc, image, "what is in the image", method="pool", keep=9, max_new_tokens=3)
    assert plain.positions == plain.positions_unreduced == reduced.positions_unreduced
    assert reduced.positions == plain.positions - 27
    assert reduced.stats == [{"image": 0, "views": 1, "before": 36, "after": 9}]
    assert "forward" not in model.__dict__  # ask unpatches
    batch = dict(proc(images=image, text="<image> what is in the image", return_tensors="pt"))
    with torch.no_grad(), vlm.patch(model, "pool", keep=9):
        ref = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert reduced.token_ids == ref[0, batch["input_ids"].shape[1]:].tolist()


def test_cli_vlm_compare_and_errors(llava, tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app

    _, _, folder = llava
    image = tmp_path / "noise.png"
    noise_image(6).save(image)
    runner = CliRunner()
    result = runner.invoke(app, ["vlm", str(folder), str(image), "-p", "what is in the image", "-r", "pool:9",
                                 "--compare", "-n", "2", "--json"])
    assert result.exit_code == 0, result.output
    import json

    runs = json.loads(result.stdout)["runs"]
    assert [r["method"] for r in runs] == [None, "pool"]
    assert runs[0]["positions"] - runs[1]["positions"] == 27
    assert runs[1]["stats"] == [{"image": 0, "views": 1, "before": 36, "after": 9}]
    table = runner.invoke(app, ["vlm", str(folder), str(image), "-r", "pool:9", "-n", "1"])
    assert table.exit_code == 0 and "36 -> 9" in table.stdout
    bad = runner.invoke(app, ["vlm", str(folder), str(image), "-r", "visonzip:9"])
    assert bad.exit_code == 2 and "did you mean 'visionzip'" in bad.output
    missing = runner.invoke(app, ["vlm", str(tmp_path / "nope"), str(image)])
    assert missing.exit_code == 2 and "no such model folder" in missing.output
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert runner.invoke(app, ["vlm", str(folder), str(broken)]).exit_code == 1


@pytest.mark.parametrize("method", vistok.reduce_methods())
def test_every_registered_method_runs_inside_llava(llava, method):
    """Parametrized over the registry: each method either reduces every image to the count asked for, with the
    signals captured from the tower, or (a signal no VLM tower gives) refuses in one line naming it."""
    from vistok.reducers.core import method_info

    model, proc, _ = llava
    batch = inputs(proc, n=2)
    info = method_info(method)
    if set(info.needs) - {"cls_attention", "keys"}:
        with pytest.raises(ValueError, match=f"needs the '{info.needs[0]}' signal"):
            vlm.patch(model, method, keep=9)
        return
    with torch.no_grad(), vlm.patch(model, method, keep=9) as handle:
        out = model(**batch, use_cache=True)
    after = [s["after"] for s in handle.stats]
    assert after == [9, 9] if info.exact else all(1 <= a <= 9 for a in after)
    assert out.cache.get_seq_length() == batch["input_ids"].shape[1] - sum(36 - a for a in after) // 2
    assert torch.isfinite(out.logits).all()


def test_kv_length_is_vistok_count_minus_the_reduction(tmp_path):
    """At LLaVA-1.5's real 336 px geometry the LM holds vistok.count's 576 image tokens minus the reduction."""
    tok = tiny_tokenizer(["<image>"], extra_words=["what", "is", "in", "the"])
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, image_size=336, patch_size=14),
        text_config=transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"))
    model = transformers.LlavaForConditionalGeneration(config).eval()
    ip = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    proc = transformers.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       image_token="<image>")
    image = noise_image(9, size=500)
    batch = dict(proc(images=image, text="<image> what is in the image", return_tensors="pt"))
    text_tokens = int((batch["input_ids"] != config.image_token_id).sum())
    counted = vistok.count(image.size, model="llava-1.5-7b").image_tokens
    with torch.no_grad(), vlm.patch(model, "visionzip", keep=64):
        cache = model(**batch, use_cache=True).cache
    assert counted == 576
    assert cache.get_seq_length() == text_tokens + counted - (576 - 64)


def test_llama_vid_grid_pooling_inside_llava(llava):
    """pool's grid=g (LLaMA-VID's content tokens) gives g*g tokens per image inside the model."""
    model, proc, _ = llava
    batch = inputs(proc)
    with torch.no_grad(), vlm.patch(model, "pool", grid=2) as handle:
        out = model(**batch, use_cache=True)
    assert handle.stats == [{"image": 0, "views": 1, "before": 36, "after": 4}]
    assert out.cache.get_seq_length() == batch["input_ids"].shape[1] - 32


def test_dinov2_tower_gives_cls_attention(tmp_path):
    """LLaVA with a DINOv2 tower (as the focus-vit-s14 weights can be): cls-attention ranks by the attention
    CLS gives each patch at the feature layer, computed here by brute force from that layer's input."""
    tok = tiny_tokenizer(["<image>"], extra_words=["what", "is", "in", "the"])
    vision = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                       intermediate_size=64, image_size=56, patch_size=14)
    config = transformers.LlavaConfig(
        vision_config=vision, image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        text_config=transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok)))
    torch.manual_seed(1)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    tower = model.model.vision_tower
    pixels = torch.randn(1, 3, 56, 56)
    ids = torch.tensor([[tok.convert_tokens_to_ids("<image>")] * 16 + tok.convert_tokens_to_ids(["what", "is"])])
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states
        layer = tower.encoder.layer[2]
        x = layer.norm1(hidden[2][0])
        attn = layer.attention
        q = attn.q_proj(x).view(-1, 4, 8).transpose(0, 1)
        k = attn.k_proj(x).view(-1, 4, 8).transpose(0, 1)
        cls = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1)[:, 0, 1:].mean(0)
        expected = sorted(cls.topk(4).indices.tolist())
        seen = []
        projector = model.model.multi_modal_projector
        hook = projector.register_forward_pre_hook(lambda module, args: seen.append(args[0]) and None)
        try:
            with vlm.patch(model, "cls-attention", keep=4) as handle:
                model(input_ids=ids, pixel_values=pixels)
        finally:
            hook.remove()
    feats = hidden[-1][0, 1:]
    assert handle.stats == [{"image": 0, "views": 1, "before": 16, "after": 4}]
    reduced = seen[-1][0]  # the projector's last input: the kept patches, in order
    assert reduced.shape == (4, 32)
    assert [int((feats - row).abs().sum(1).argmin()) for row in reduced] == expected
    torch.testing.assert_close(reduced, feats[expected])
