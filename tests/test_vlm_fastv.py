"""FastV inside a tiny LLaVA (CLIP tower + Llama or Qwen2 language model, random weights, saved and loaded
back), with the real LlavaProcessor and a tiny tokenizer.

The reference is FastV run by hand on the same model: layers ``0 .. K-1`` on every token, the full attention
matrix of layer ``K-1`` computed eagerly (``softmax(q k^T / sqrt(d) + mask)``, as the authors' code reads it
with ``output_attentions``), its last prompt row averaged over heads ranking each image's tokens, then the
layers ``K ..`` on the kept tokens with rotary embeddings computed from their original position ids and the
mask restricted to them. ``generate`` is checked against that reference run without a cache, the whole
sequence recomputed at every step.
"""

from __future__ import annotations

import pytest

from processor_refs import image_of, tiny_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vistok.vlm.fastv import FastVState, attach_fastv  # noqa: E402

WORDS = ["a", "b", "c", "d", "e"]
SIDE, PATCH = 56, 14
N_IMAGE = (SIDE // PATCH) ** 2          # 16 image tokens per image
LAYERS = 4
PROMPT = "describe <image> this a b"


# -- the tiny model ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def processor():
    tok = tiny_tokenizer(["<image>"], extra_words=WORDS)
    tok.padding_side = "left"
    ip = transformers.CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE})
    return transformers.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=PATCH,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       image_token="<image>")


def _build(folder, processor, family: str, seed: int = 0):
    tok = processor.tokenizer
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=SIDE, patch_size=PATCH)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                pad_token_id=tok.pad_token_id, initializer_range=0.3)
    text_config = transformers.LlamaConfig(**text) if family == "llama" else transformers.Qwen2Config(**text)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text_config,
                                      image_token_index=tok.convert_tokens_to_ids("<image>"))
    torch.manual_seed(seed)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    return transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request, processor, tmp_path_factory):
    return _build(tmp_path_factory.mktemp(request.param), processor, request.param)


@pytest.fixture(scope="module")
def single(processor):
    return dict(processor(images=image_of(60, 50), text=PROMPT, return_tensors="pt"))


@pytest.fixture(scope="module")
def batch(processor):
    """Two rows, one image each, left padding (the second prompt is longer)."""
    inputs = processor(images=[image_of(60, 50), image_of(40, 70)],
                       text=["describe <image> this", "a b describe <image> this c d"],
                       padding=True, return_tensors="pt")
    return dict(inputs, position_ids=_positions(inputs["attention_mask"]))


def _positions(mask):
    """The position ids ``generate`` gives a left-padded batch."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _image_id(model):
    return model.config.image_token_id


# -- FastV by hand -----------------------------------------------------------------------------------------

def _modeling(model):
    return __import__(type(model.model.language_model.layers[0].self_attn).__module__, fromlist=["x"])


def manual_fastv(model, inputs, layer, keep, prompt_length=None):
    """FastV's logits ``(B, L', V)`` and kept positions ``(B, L')`` computed layer by layer. ``prompt_length``:
    rank with the last token of the first ``prompt_length`` positions and keep every position after them (the
    prompt followed by generated tokens, recomputed without a cache)."""
    lm = model.model.language_model
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    batch, length = ids.shape
    prompt_length = prompt_length or length
    positions = inputs.get("position_ids", torch.arange(length)[None].expand(batch, -1))
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        image = ids == _image_id(model)
        image[:, prompt_length:] = False          # a generated image token id is only a token
        hidden = lm.embed_tokens(ids).masked_scatter(image[..., None], torch.cat(list(features)))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        full = causal[None] & (mask[:, None, :] | torch.eye(length, dtype=torch.bool)[None])
        full = full[:, None]                                                # (B, 1, L, L)
        pos = lm.rotary_emb(hidden, positions)
        for i in range(layer):
            entering = hidden
            hidden = lm.layers[i](hidden, attention_mask=_for(model, full), position_embeddings=pos,
                                  position_ids=positions)
        # layer K-1's full attention matrix, eagerly
        attn = lm.layers[layer - 1].self_attn
        normed = lm.layers[layer - 1].input_layernorm(entering)
        heads = attn.head_dim
        q = attn.q_proj(normed).view(batch, length, -1, heads).transpose(1, 2)
        k = attn.k_proj(normed).view(batch, length, -1, heads).transpose(1, 2)
        cos, sin = lm.rotary_emb(normed, positions)
        q, k = _modeling(model).apply_rotary_pos_emb(q, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        weights = (q @ k.transpose(-1, -2)) / heads ** 0.5
        weights = weights.masked_fill(~full, float("-inf")).softmax(-1)    # (B, H, L, L)
        last = prompt_length - 1
        score = weights[:, :, last].mean(1)                               # (B, L)
        keep_mask = torch.ones(batch, length, dtype=torch.bool)
        for b in range(batch):
            image = (ids[b, :prompt_length] == _image_id(model)).nonzero().flatten()
            for run in _split_runs(image.tolist()):
                keep_mask[b, run] = False
                run = torch.tensor(run)
                keep_mask[b, run[score[b, run].topk(keep).indices]] = True
        kept = torch.arange(length).expand(batch, -1)[keep_mask].view(batch, -1)
        hidden = torch.stack([hidden[b, kept[b]] for b in range(batch)])
        kept_positions = torch.stack([positions.expand(batch, -1)[b, kept[b]] for b in range(batch)])
        short = torch.stack([full[b][:, kept[b]][:, :, kept[b]] for b in range(batch)])
        pos = lm.rotary_emb(hidden, kept_positions)
        for i in range(layer, LAYERS):
            hidden = lm.layers[i](hidden, attention_mask=_for(model, short), position_embeddings=pos,
                                  position_ids=kept_positions)
        return model.lm_head(lm.norm(hidden)), kept


def _for(model, allowed):
    """The mask as the model's attention takes it: bool for sdpa, additive for eager."""
    if model.config.text_config._attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _split_runs(positions):
    runs, current = [], []
    for p in positions:
        if current and p != current[-1] + 1:
            runs.append(current)
            current = []
        current.append(p)
    return runs + [current] if current else runs


def _real(inputs, kept):
    """(B, L') True where the kept position is a real token (not padding)."""
    return torch.gather(inputs["attention_mask"].bool(), 1, kept)


def _no_grad_call(model, **inputs):
    with torch.no_grad():
        return model(**inputs)


def _greedy_reference(model, inputs, layer, keep, steps):
    """Greedy tokens and each step's last logits from :func:`manual_fastv` without a cache: the whole
    sequence recomputed at every step."""
    inputs, logits_per_step = dict(inputs), []
    prompt = inputs["input_ids"].shape[1]
    for _ in range(steps):
        logits, _ = manual_fastv(model, inputs, layer, keep, prompt_length=prompt)
        logits_per_step.append(logits[:, -1])
        token = logits[:, -1].argmax(-1, keepdim=True)
        inputs["input_ids"] = torch.cat([inputs["input_ids"], token], 1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(token)], 1)
        inputs["position_ids"] = _positions(inputs["attention_mask"])
    return inputs["input_ids"], logits_per_step


# -- keep everything: the unpatched model, bit for bit ---------------------------------------------------

@pytest.mark.parametrize("size", [dict(keep=N_IMAGE), dict(ratio=1.0)])
def test_keep_all_is_bit_identical(model, single, batch, size):
    plain = [_no_grad_call(model, **x).logits for x in (single, batch)]
    plain_tokens = model.generate(**batch, max_new_tokens=3, do_sample=False)
    with attach_fastv(model, layer=2, **size) as state:
        patched = [_no_grad_call(model, **x).logits for x in (single, batch)]
        tokens = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert all(torch.equal(a, b) for a, b in zip(plain, patched))
    assert torch.equal(plain_tokens, tokens)
    assert [s["after"] for s in state.stats] == [N_IMAGE, N_IMAGE]


# -- a reduced forward equals FastV by hand ----------------------------------------------------------------

@pytest.mark.parametrize("layer, keep", [(1, 3), (2, 4), (3, 10)])
def test_forward_matches_manual_reference(model, single, layer, keep):
    expected, kept = manual_fastv(model, single, layer, keep)
    with attach_fastv(model, layer=layer, keep=keep) as state:
        out = _no_grad_call(model, **single)
    length = single["input_ids"].shape[1]
    assert out.logits.shape == (1, length - N_IMAGE + keep, model.config.text_config.vocab_size)
    assert torch.equal(state.kept_positions, kept)
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert state.stats == [{"image": 0, "row": 0, "views": 1, "before": N_IMAGE, "after": keep, "layer": layer}]


def test_batch_with_left_padding_matches_manual_reference(model, batch):
    expected, kept = manual_fastv(model, batch, 2, 5)
    with attach_fastv(model, layer=2, keep=5) as state:
        out = _no_grad_call(model, **batch)
    assert torch.equal(state.kept_positions, kept)
    real = _real(batch, kept)
    torch.testing.assert_close(out.logits[real], expected[real], atol=1e-5, rtol=1e-5)
    assert [(s["row"], s["after"]) for s in state.stats] == [(0, 5), (1, 5)]


def test_several_images_in_a_row_keep_k_each(model, processor):
    inputs = dict(processor(images=[image_of(60, 50), image_of(30, 30)], text="describe <image> a b <image> c",
                            return_tensors="pt"))
    expected, kept = manual_fastv(model, inputs, 2, 3)
    with attach_fastv(model, layer=2, keep=3) as state:
        out = _no_grad_call(model, **inputs)
    assert [(s["image"], s["before"], s["after"]) for s in state.stats] == [(0, N_IMAGE, 3), (1, N_IMAGE, 3)]
    image = (inputs["input_ids"] == _image_id(model))[0]
    first, second = image.nonzero().flatten().split(N_IMAGE)
    kept_images = kept[0][image[kept[0]]]
    assert torch.isin(kept_images, first).sum() == 3 and torch.isin(kept_images, second).sum() == 3
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)


def test_ratio_keeps_the_rounded_share(model, single):
    with attach_fastv(model, layer=2, ratio=0.3) as state:   # 16 * 0.3 = 4.8 -> 5
        _no_grad_call(model, **single)
    expected, kept = manual_fastv(model, single, 2, 5)
    assert state.stats[0]["after"] == 5 and torch.equal(state.kept_positions, kept)


# -- generate and the KV cache -------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["single", "batch"])
def test_generate_matches_no_cache_reference(model, single, batch, which):
    inputs = single if which == "single" else batch
    inputs = {k: v for k, v in inputs.items() if k != "position_ids"}   # generate makes them from the mask
    with attach_fastv(model, layer=2, keep=4):
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    tokens, logits = _greedy_reference(model, dict(inputs, position_ids=_positions(inputs["attention_mask"])),
                                       2, 4, 5)
    assert torch.equal(out.sequences, tokens)
    for step, expected in zip(out.logits, logits, strict=True):
        torch.testing.assert_close(step, expected, atol=1e-5, rtol=1e-5)


def test_kv_cache_holds_fewer_positions_after_the_layer(model, single):
    length = single["input_ids"].shape[1]
    with attach_fastv(model, layer=2, keep=4):
        cache = _no_grad_call(model, **single, use_cache=True).cache
        assert [lay.keys.shape[-2] for lay in cache.layers] == [length] * 2 + [length - N_IMAGE + 4] * 2
        step = _no_grad_call(model, input_ids=torch.tensor([[5]]), attention_mask=torch.ones(1, length + 1,
                             dtype=torch.long), position_ids=torch.tensor([[length]]), cache=cache)
    assert [lay.keys.shape[-2] for lay in step.cache.layers] == [length + 1] * 2 + [length - N_IMAGE + 5] * 2
    assert cache.get_seq_length() == length + 1      # generate numbers new tokens from the full length


# -- scope: detach, other instances, attention kernels ----------------------------------------------------

def test_detach_restores_and_other_instances_are_untouched(model, single, processor, tmp_path):
    other = _build(tmp_path / "other", processor, "llama", seed=1)
    before = _no_grad_call(model, **single).logits
    other_before = _no_grad_call(other, **single).logits
    state = attach_fastv(model, layer=2, keep=4)
    assert state.attached and isinstance(state, FastVState)
    assert _no_grad_call(model, **single).logits.shape[1] < before.shape[1]
    assert torch.equal(_no_grad_call(other, **single).logits, other_before)
    state.detach()
    state.detach()                                    # twice is harmless
    assert not state.attached and "forward" not in model.__dict__
    assert torch.equal(_no_grad_call(model, **single).logits, before)
    with attach_fastv(model, layer=3, keep=2):        # attachable again after detach
        assert _no_grad_call(model, **single).logits.shape[1] == before.shape[1] - N_IMAGE + 2


def test_other_layers_keep_sdpa(model, single, monkeypatch):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    calls = []

    def counting(module, *args, **kwargs):
        calls.append(getattr(module, "layer_idx", None))
        return sdpa(module, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS, "sdpa", counting)
    with attach_fastv(model, layer=2, keep=4):
        out = _no_grad_call(model, **single)
        assert model.config.text_config._attn_implementation == "sdpa"
        assert model.model.language_model.config._attn_implementation == "sdpa"
    text_layers = [c for c in calls if c is not None]
    assert text_layers == list(range(LAYERS)) and out.logits.shape[1] < single["input_ids"].shape[1]


# -- errors --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [0, LAYERS, -1, True, 2.0])
def test_layer_out_of_range(model, layer):
    with pytest.raises(ValueError, match=rf"layer must be a whole number in 1\.\.{LAYERS - 1}"):
        attach_fastv(model, layer=layer, keep=4)


@pytest.mark.parametrize("size, message", [
    (dict(), "exactly one of keep"), (dict(keep=4, ratio=0.5), "exactly one of keep"),
    (dict(keep=0), "keep must be a whole number"), (dict(ratio=1.5), r"ratio must be a fraction in \(0, 1\]"),
])
def test_bad_sizes(model, size, message):
    with pytest.raises(ValueError, match=message):
        attach_fastv(model, layer=2, **size)


def test_keep_more_than_the_image_tokens(model, single):
    with attach_fastv(model, layer=2, keep=N_IMAGE + 1), pytest.raises(
            ValueError, match=rf"keep={N_IMAGE + 1} is more than the {N_IMAGE} image tokens of image 0"):
        _no_grad_call(model, **single)


def test_no_image_tokens(model, processor):
    text = processor.tokenizer("describe this a b", return_tensors="pt")
    with attach_fastv(model, layer=2, keep=4), pytest.raises(ValueError, match="no image tokens"):
        _no_grad_call(model, **text)


def test_rows_with_different_image_counts(model, processor):
    inputs = processor(images=[image_of(60, 50), image_of(60, 50), image_of(60, 50)],
                       text=["describe <image> this", "<image> a <image> b"], padding=True, return_tensors="pt")
    with attach_fastv(model, layer=2, keep=4), pytest.raises(ValueError, match="different numbers of image tokens"):
        _no_grad_call(model, **inputs)


def test_attach_twice_and_missing_language_model(model):
    with attach_fastv(model, layer=2, keep=4), pytest.raises(ValueError, match="already has FastV attached"):
        attach_fastv(model, layer=2, keep=4)
    with pytest.raises(ValueError, match="no model.model.language_model.layers"):
        attach_fastv(torch.nn.Linear(2, 2), keep=4)


# -- labels: the loss of the kept positions ---------------------------------------------------------------

def test_labels_score_each_kept_logit_against_the_next_input_token(model, single):
    labels = single["input_ids"].clone()
    plain = _no_grad_call(model, **single, labels=labels).loss
    with attach_fastv(model, layer=2, keep=N_IMAGE):
        assert torch.equal(_no_grad_call(model, **single, labels=labels).loss, plain)
    with attach_fastv(model, layer=2, keep=4) as state:
        out = _no_grad_call(model, **single, labels=labels)
    kept = state.kept_positions[0]
    following = torch.cat([labels[0, 1:], torch.tensor([-100])])[kept]
    expected = torch.nn.functional.cross_entropy(out.logits[0].float(), following, ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


# -- other families: the ranking is the layer's own eager attention; generate and the cache ----------------

def _qwen2_vl(folder):
    import test_vlm_qwen as qwen

    model_cls = qwen.build("qwen2", folder)
    proc = transformers.AutoProcessor.from_pretrained(folder)
    return model_cls, qwen.inputs(proc, [qwen.noise_image(0), qwen.noise_image(1)])


def _gemma(name):
    def build(folder):
        import test_vlm_gemma as gemma

        gemma.FAMILIES[name][0](folder)
        proc = transformers.AutoProcessor.from_pretrained(folder)
        return getattr(transformers, gemma.FAMILIES[name][1]), gemma.inputs(name, proc, images=2)

    return build


@pytest.fixture(scope="module", params=["qwen2-vl", "paligemma", "gemma3"])
def other_family(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    build = {"qwen2-vl": _qwen2_vl, "paligemma": _gemma("paligemma"), "gemma3": _gemma("gemma3")}[request.param]
    model_cls, inputs = build(folder)
    inputs.pop("labels", None)
    model = model_cls.from_pretrained(folder).eval()
    model.generation_config.eos_token_id = None
    eager = model_cls.from_pretrained(folder, attn_implementation="eager").eval()
    return model, eager, inputs


def test_ranking_is_the_layers_eager_attention_in_other_families(other_family):
    model, eager, inputs = other_family
    with attach_fastv(model, layer=1, keep=3) as state:
        _no_grad_call(model, **inputs)
    attentions = _no_grad_call(eager, **inputs, output_attentions=True).attentions
    expected = attentions[0][:, :, -1].float().mean(1)          # layer 0, last prompt token, mean over heads
    torch.testing.assert_close(state.attention, expected, atol=1e-5, rtol=1e-4)


def test_other_families_keep_all_generate_and_cache(other_family):
    model, _, inputs = other_family
    n_image = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    length = inputs["input_ids"].shape[1]
    plain = _no_grad_call(model, **inputs).logits
    plain_tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with attach_fastv(model, layer=1, keep=n_image):
        assert torch.equal(_no_grad_call(model, **inputs).logits, plain)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), plain_tokens)
    with attach_fastv(model, layer=1, keep=3) as state:
        cache = _no_grad_call(model, **inputs, use_cache=True).cache
        tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert cache.layers[1].keys.shape[-2] == length - n_image + 3
    assert tokens.shape == (2, length + 3) and [s["after"] for s in state.stats] == [3, 3]


def test_eager_attention_matches_manual_reference(processor, batch, tmp_path):
    """The eager path: additive float masks, shortened at prefill and rebuilt for each decode step."""
    _build(tmp_path, processor, "llama")
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    expected, kept = manual_fastv(model, batch, 2, 5)
    with attach_fastv(model, layer=2, keep=5):
        out = _no_grad_call(model, **batch)
        inputs = {k: v for k, v in batch.items() if k != "position_ids"}
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True)
    real = _real(batch, kept)
    torch.testing.assert_close(out.logits[real], expected[real], atol=1e-5, rtol=1e-5)
    tokens, logits = _greedy_reference(model, batch, 2, 5, 4)
    assert torch.equal(generated.sequences, tokens)
    for step, reference in zip(generated.logits, logits, strict=True):
        torch.testing.assert_close(step, reference, atol=1e-5, rtol=1e-5)
