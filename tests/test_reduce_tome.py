"""ToMe (Bolya et al., ICLR 2023): the standalone ``tome`` method and the in-model patch, each against a
plain-Python re-derivation of bipartite soft matching on small inputs, plus the invariants (sizes add up,
exact counts, provenance through chains, r=0 changes nothing, one instance only)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vistok
from vistok.preprocess import preprocess
from vistok.reducers.tome import merge_schedule
from vistok.reducers.tome_patch import bipartite_merge, is_patched, merged_count, patch, unpatch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import DINOV2, tiny_dinov2_folder  # noqa: E402

# -- a plain re-derivation of the paper's algorithm ------------------------------------------------------

def cosine(u, v) -> float:
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
    return sum(a * b for a, b in zip(u, v)) / max(nu * nv, 1e-300)


def match(features: list[list[float]], r: int, fixed: frozenset[int] = frozenset()) -> list[int]:
    """One bipartite soft matching step in plain Python: the output token of each row, numbered in the order of
    the rows that remain. Rows in ``fixed`` neither merge nor receive (ToMe's -inf for CLS). Ties: the first
    best B token, then the earlier A token."""
    a_rows, b_rows = list(range(0, len(features), 2)), list(range(1, len(features), 2))
    links = []
    for i in a_rows:
        scores = [-math.inf if i in fixed or j in fixed else cosine(features[i], features[j]) for j in b_rows]
        best = max(range(len(scores)), key=lambda m: (scores[m], -m))
        links.append((scores[best], i, b_rows[best]))
    merged = {i: j for _, i, j in sorted(links, key=lambda link: (-link[0], link[1]))[:r]}
    remaining = [i for i in range(len(features)) if i not in merged]
    new = {i: n for n, i in enumerate(remaining)}
    return [new[merged.get(i, i)] for i in range(len(features))]


def reference_tome(features: np.ndarray, sizes: np.ndarray, k: int, r: int | None = None,
                   protect: tuple[int, ...] = ()) -> list[int]:
    """Rounds of :func:`match` until ``k`` groups remain, the groups kept in order of their first member, a
    group's features the size-weighted sum of its members'; outputs numbered by first member. ``protect``:
    inputs that stay alone, in place in the alternating split (ToMe's CLS)."""
    groups = [[i] for i in range(len(features))]
    while len(groups) > k:
        n = len(groups)
        fixed = frozenset(p for p, g in enumerate(groups) if g[0] in protect)
        free_a = sum(1 for p in range(0, n, 2) if p not in fixed)
        if all(p in fixed for p in range(1, n, 2)):
            raise ValueError("every B position is protected")
        step = min(n - k, free_a, r or n)
        sums = [[sum(sizes[m] * features[m][d] for m in g) for d in range(features.shape[1])] for g in groups]
        target = match(sums, step, fixed)
        joined: dict[int, list[int]] = {}
        for g, t in zip(groups, target):
            joined.setdefault(t, []).extend(g)
        groups = sorted((sorted(g) for g in joined.values()), key=lambda g: g[0])
    out = [0] * len(features)
    for t, g in enumerate(groups):
        for m in g:
            out[m] = t
    return out


def tokens_from(values: np.ndarray, **extras: np.ndarray) -> vistok.Tokens:
    return vistok.Tokens(values.astype(np.float32), source=np.arange(len(values)), base_grid=(1, len(values)),
                         extras=extras, meta={"tokenizer": "test"})


# -- the standalone method --------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.data())
def test_standalone_equals_the_plain_reference(n, data):
    seed = data.draw(st.integers(0, 10_000))
    k = data.draw(st.integers(1, n))
    r = data.draw(st.one_of(st.none(), st.integers(1, 4)))
    use_keys = data.draw(st.booleans())
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 4))
    keys = rng.normal(size=(n, 3))
    out = vistok.reduce(tokens_from(values, **({"keys": keys} if use_keys else {})), "tome", keep=k,
                        **({"r": r} if r else {}))
    expected = reference_tome(keys if use_keys else values.astype(np.float32), np.ones(n), k, r)
    assert len(out) == k and list(out.source) == expected
    assert out.sizes.sum() == n
    for t in range(k):  # each output is the mean of its members (all of size 1 here)
        np.testing.assert_allclose(out.values[t], values[out.source == t].mean(0), rtol=1e-5, atol=1e-6)


def test_hand_worked_merge_with_sizes():
    # A = {0, 2}, B = {1, 3}; 0 is nearly 1, 2 is nearly 3; keep 2 -> both links merge, sizes weigh the means
    values = np.array([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [0.3, 1.0]], np.float32)
    first = vistok.Tokens(values, source=np.array([0, 1, 1, 1, 2, 3]), base_grid=(2, 3))  # sizes 1, 3, 1, 1
    out = vistok.reduce(first, "tome", keep=2)
    np.testing.assert_allclose(out.values, [[1.0, 0.15], [0.15, 1.0]], rtol=1e-6)
    assert list(out.sizes) == [4, 2] and list(out.source) == [0, 0, 0, 0, 1, 1]
    # one round merges at most |A| = ceil(n / 2) tokens: 9 -> 2 takes 9 -> 4 -> 2
    assert merge_schedule(9, 2) == [5, 2] and merge_schedule(9, 2, r=2) == [2, 2, 2, 1]
    assert merge_schedule(5, 5) == []


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 9), st.integers(3, 9))
def test_invariants_and_chains(seed, rows, cols):
    rng = np.random.default_rng(seed)
    n = rows * cols
    tokens = vistok.Tokens.from_grid(rng.normal(size=(n, 6)).astype(np.float32), (rows, cols),
                                     extras={"keys": rng.normal(size=(n, 5)).astype(np.float32)},
                                     meta={"tokenizer": "test"})
    k1 = int(rng.integers(2, n + 1))
    first = vistok.reduce(tokens, "tome", keep=k1, seed=seed)
    second = vistok.reduce(first, "tome", keep=int(rng.integers(1, k1 + 1)))
    for out in (first, second):
        assert out.sizes.sum() == n and (out.sizes >= 1).all()
        # reading order: each output's first patch comes after the previous output's
        firsts = [int(np.flatnonzero(out.source == t)[0]) for t in range(len(out))]
        assert firsts == sorted(firsts)
        for t in range(len(out)):  # the value is the mean of the base tokens it stands for
            np.testing.assert_allclose(out.values[t], tokens.values[out.source == t].mean(0), rtol=1e-4, atol=1e-5)
    other_seed = vistok.reduce(tokens, "tome", keep=k1, seed=seed + 1)  # the seed plays no part
    assert np.array_equal(other_seed.source, first.source) and np.array_equal(other_seed.values, first.values)


def test_keys_are_the_similarity_and_protected_tokens_stay_alone():
    rng = np.random.default_rng(1)
    values, keys = rng.normal(size=(10, 4)), rng.normal(size=(10, 3))
    tokens = tokens_from(values, keys=keys)
    with_keys = vistok.reduce(tokens, "tome", keep=4)
    assert list(with_keys.source) == reference_tome(keys, np.ones(10), 4)
    without = vistok.reduce(tokens_from(values), "tome", keep=4)
    assert list(without.source) == reference_tome(values.astype(np.float32), np.ones(10), 4)
    guarded = vistok.reduce(tokens, "tome", keep=4, protect=[0, 7], split="free")
    assert np.bincount(guarded.source)[guarded.source[[0, 7]]].tolist() == [1, 1]
    rest = [i for i in range(10) if i not in (0, 7)]
    groups = reference_tome(keys[rest], np.ones(8), 2)
    for a, i in enumerate(rest):  # the others are merged among themselves, as they would be without 0 and 7
        for b, j in enumerate(rest):
            assert (guarded.source[i] == guarded.source[j]) == (groups[a] == groups[b])


def test_protected_cls_takes_its_place_in_tomes_alternation():
    # CLS (0) + 4 patches (1..4), keep 3. ToMe's code alternates the whole sequence: A = {0 (CLS, -inf), 2, 4},
    # B = {1, 3}; 2 and 4 are nearest 3, so patches 2, 3, 4 merge. split="free" alternates the patches only:
    # A = {1, 3}, B = {2, 4}; 1 and 3 are nearest 2, so patches 1, 2, 3 merge.
    x = np.array([[0.45, 1], [1, 0], [0.5, 1], [0.4, 1], [0, 1]], np.float32)
    tokens = tokens_from(x)
    assert list(vistok.reduce(tokens, "tome", keep=3, protect=[0]).source) == [0, 1, 2, 2, 2]
    assert list(vistok.reduce(tokens, "tome", keep=3, protect=[0], split="free").source) == [0, 1, 1, 1, 2]
    # the in-model step does the same with CLS as its protected token: patch groups (0,), (1, 2, 3)
    t = torch.from_numpy(x)[None]
    out, size, assign = bipartite_merge(t, t, None, 1, 2)
    assert assign[0].tolist() == [0, 1, 1, 1] and size[0].tolist() == [1, 3]
    np.testing.assert_allclose(out[0].numpy(), [x[0], x[1], x[2:].mean(0)], rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.data())
def test_protected_tokens_in_place_equal_the_plain_reference(n, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    protect = tuple(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=2))))
    k = data.draw(st.integers(len(protect) + 1, n))
    r = data.draw(st.one_of(st.none(), st.integers(1, 3)))
    values = rng.normal(size=(n, 4)).astype(np.float32)
    try:
        expected = reference_tome(values, np.ones(n), k, r, protect)
    except ValueError:  # the protected tokens hold every B position: nothing can merge
        with pytest.raises(ValueError, match="split='free'"):
            vistok.reduce(tokens_from(values), "tome", keep=k, protect=list(protect), **({"r": r} if r else {}))
        return
    out = vistok.reduce(tokens_from(values), "tome", keep=k, protect=list(protect), **({"r": r} if r else {}))
    assert list(out.source) == expected
    assert all(np.sum(out.source == out.source[p]) == 1 for p in protect)


def test_protected_tokens_holding_every_b_position():
    tokens = tokens_from(np.random.default_rng(0).normal(size=(6, 3)))
    with pytest.raises(ValueError, match="every B position.*split='free'"):
        vistok.reduce(tokens, "tome", keep=4, protect=[1, 3, 5])
    out = vistok.reduce(tokens, "tome", keep=4, protect=[1, 3, 5], split="free")
    assert len(out) == 4 and [int(np.sum(out.source == out.source[p])) for p in (1, 3, 5)] == [1, 1, 1]
    with pytest.raises(ValueError, match="split must be 'sequence'"):
        vistok.reduce(tokens, "tome", keep=4, split="patches")


def test_bad_inputs():
    rng = np.random.default_rng(0)
    tokens = tokens_from(rng.normal(size=(8, 4)))
    with pytest.raises(ValueError, match="r .merges per round"):
        vistok.reduce(tokens, "tome", keep=4, r=0)
    with pytest.raises(ValueError, match="protect must hold token indices"):
        vistok.reduce(tokens, "tome", keep=4, protect=[8])
    with pytest.raises(ValueError, match="protected"):
        vistok.reduce(tokens, "tome", keep=2, protect=[0, 1, 2])
    with pytest.raises(ValueError, match="keys must have one entry per token"):
        vistok.reduce(tokens, "tome", keep=4, keys=np.ones((7, 3)))
    with pytest.raises(ValueError, match="hard ids"):
        vistok.reduce(vistok.Tokens(np.arange(8)), "tome", keep=4)
    with pytest.raises(TypeError, match="no option"):
        vistok.reduce(tokens, "tome", keep=4, rounds=2)


# -- the in-model patch -----------------------------------------------------------------------------------

def reference_merge(x: np.ndarray, metric: np.ndarray, size: np.ndarray, protected: int, r: int):
    """One ToMe step on one image in plain Python: :func:`match` over the whole sequence with the protected
    rows fixed, as ToMe's code splits it (it numbers the remaining tokens in their order, as the patch does;
    protected rows stay first), and size-weighted means of the patch tokens."""
    target = [t - protected for t in match(metric.tolist(), r, frozenset(range(protected)))[protected:]]
    m = max(target) + 1
    new_size = [0.0] * m
    sums = [[0.0] * x.shape[1] for _ in range(m)]
    for i, t in enumerate(target):
        new_size[t] += size[i]
        for d in range(x.shape[1]):
            sums[t][d] += size[i] * x[protected + i, d]
    merged = [[v / new_size[t] for v in sums[t]] for t in range(m)]
    return np.vstack([x[:protected], np.array(merged)]), np.array(new_size), np.array(target)


@pytest.mark.parametrize("protected", [0, 1, 3])
def test_one_merge_step_equals_the_plain_reference(protected):
    rng = np.random.default_rng(protected)
    x, metric = rng.normal(size=(2, protected + 11, 5)), rng.normal(size=(2, protected + 11, 4))
    size = rng.integers(1, 4, size=(2, 11)).astype(np.float32)
    out, new_size, assign = bipartite_merge(torch.from_numpy(x), torch.from_numpy(metric), torch.from_numpy(size),
                                            protected, 4)
    for b in range(2):
        ref_x, ref_size, ref_assign = reference_merge(x[b], metric[b], size[b], protected, 4)
        np.testing.assert_allclose(out[b].numpy(), ref_x, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(new_size[b].numpy(), ref_size)
        np.testing.assert_array_equal(assign[b].numpy(), ref_assign)
    with pytest.raises(ValueError, match="at most floor"):
        bipartite_merge(torch.from_numpy(x), torch.from_numpy(metric), None, protected, 6)


def tiny_models() -> dict[str, torch.nn.Module]:
    import timm
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        ViTConfig,
        ViTModel,
    )

    torch.manual_seed(0)
    return {
        "dinov2": Dinov2Model(Dinov2Config(**DINOV2)).eval(),
        "registers": Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2, num_register_tokens=2)).eval(),
        "vit": ViTModel(ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  image_size=48, patch_size=8), add_pooling_layer=False).eval(),
        "timm": timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=96,
                                  num_classes=0).eval(),
    }


def run(name: str, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        if name == "timm":
            return model.forward_features(pixels)
        return model(pixel_values=pixels).last_hidden_state


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.mark.parametrize("name", ["dinov2", "registers", "vit", "timm"])
def test_patch_r0_is_identical_unpatch_restores_and_sizes_add_up(models, name):
    model = models[name]
    side = 96 if name == "timm" else 48  # 6 x 6 patches either way
    pixels = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    before = {id(m): (dict(vars(m)), dict(m._forward_hooks)) for m in model.modules()}
    reference = run(name, model, pixels)
    with patch(model, 0) as handle:
        assert torch.equal(run(name, model, pixels), reference)
        assert handle.size is None and torch.equal(handle.source[0], torch.arange(handle.source.shape[1]))
    handle = patch(model, 3)
    assert is_patched(model)
    merged = run(name, model, pixels)
    protected, patches = handle.protected, handle.source.shape[1]
    assert protected == {"registers": 3}.get(name, 1)
    assert merged.shape[1] == protected + merged_count(patches, 3, len(handle.blocks)) < reference.shape[1]
    assert torch.equal(handle.size.sum(1), torch.full((2,), float(patches)))
    for b in range(2):  # the source map and the sizes agree
        assert torch.equal(torch.bincount(handle.source[b]).float(), handle.size[b])
    unpatch(model)
    assert not is_patched(model)
    assert torch.equal(run(name, model, pixels), reference)
    assert {id(m): (dict(vars(m)), dict(m._forward_hooks)) for m in model.modules()} == before
    with pytest.raises(ValueError, match="not ToMe-patched"):
        unpatch(model)


@pytest.mark.parametrize("name", ["dinov2", "registers", "vit", "timm"])
def test_the_two_halves_of_a_patched_block_make_the_block(models, name):
    """The patch runs a block as attention half, merge, MLP half; with nothing merged that is the block."""
    from vistok.reducers.tome_patch import _find_blocks

    blocks, kind = _find_blocks(models[name])
    x = torch.randn(2, 10, 192 if name == "timm" else 32, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        for block in blocks:
            assert torch.equal(kind.mlp(block, kind.attention(block, x, None, {})), block(x))


def reference_dinov2(model, pixels: torch.Tensor, r: int) -> torch.Tensor:
    """DINOv2 with ToMe written out by hand: eager attention with + log(size), merge, MLP, per image."""
    out = []
    with torch.no_grad():
        for image in pixels:
            x = model.embeddings(image[None])[0].double().numpy()
            size = np.ones(x.shape[0] - 1)
            for block in model.encoder.layer:
                def t(a, m):  # a linear layer in float32, as the model runs it
                    return (torch.from_numpy(np.asarray(a)).float() @ m.weight.T + m.bias).double().numpy()
                h = block.norm1(torch.from_numpy(x).float()).double().numpy()
                q, k, v = t(h, block.attention.q_proj), t(h, block.attention.k_proj), t(h, block.attention.v_proj)
                heads = block.attention.num_attention_heads
                dh = q.shape[1] // heads
                mixed = np.zeros_like(q)
                for hd in range(heads):
                    cols = slice(hd * dh, (hd + 1) * dh)
                    logits = q[:, cols] @ k[:, cols].T / math.sqrt(dh) + np.log(np.r_[1.0, size])[None]
                    weights = np.exp(logits - logits.max(1, keepdims=True))
                    mixed[:, cols] = (weights / weights.sum(1, keepdims=True)) @ v[:, cols]
                x = x + t(mixed, block.attention.o_proj) * block.layer_scale1.lambda1.double().numpy()
                metric = k.reshape(len(k), heads, dh).mean(1)
                x, size, _ = reference_merge(x, metric, size, 1, min(r, (len(x) - 1) // 2))
                mlp = block.mlp(block.norm2(torch.from_numpy(x).float())).double().numpy()
                x = x + mlp * block.layer_scale2.lambda1.double().numpy()
            out.append(model.layernorm(torch.from_numpy(x).float()).numpy())
    return np.stack(out)


def test_patched_dinov2_equals_a_hand_written_tome_forward(models):
    model = models["dinov2"]
    pixels = torch.randn(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))  # 6 x 5 patches
    with patch(model, 4):
        got = run("dinov2", model, pixels)
    assert got.shape[1] == 1 + 30 - 4 - 4 - 4
    np.testing.assert_allclose(got.numpy(), reference_dinov2(model, pixels, 4), atol=2e-5)


def test_patch_is_scoped_to_one_instance(models):
    import timm
    from timm.models.vision_transformer import Block

    forward = Block.forward
    twin = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, img_size=96, num_classes=0).eval()
    twin.load_state_dict(models["timm"].state_dict())
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    reference = run("timm", twin, pixels)
    with patch(models["timm"], [5, 2]) as handle:  # a per-block schedule: 36 -> 31 -> 29 -> 29
        assert run("timm", models["timm"], pixels).shape[1] == 1 + 29 == 1 + handle.count(36)
        assert torch.equal(run("timm", twin, pixels), reference) and not is_patched(twin)
        assert Block.forward is forward
        with pytest.raises(ValueError, match="already ToMe-patched"):
            patch(models["timm"], 1)
    with pytest.raises(ValueError, match="r must be a whole number"):
        patch(twin, -1)
    with pytest.raises(TypeError, match="no transformer blocks"):
        patch(torch.nn.Linear(2, 2), 1)
    assert not is_patched(twin)


# -- the vit tokenizer with tome_r --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_dinov2_folder(tmp_path_factory.mktemp("tome") / "reg", registers=2, size=64)


def test_vit_tokenizer_runs_the_patched_model(folder):
    from PIL import Image
    from transformers import AutoModel

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (50, 64, 3), np.uint8)) for _ in range(2)]
    tok = vistok.load("vit", model=str(folder), tome_r=5, attentions=True, keys=True, cls="include")
    tokens = tok.encode(images)
    rows, cols = 6, 8  # fit: 64 x 50 -> 64 x 48
    assert tokens[0].meta["working_size"] == [64, 48]
    assert len(tokens[0]) == tok.count(64, 50) == 1 + merged_count(48, 5, 3) == 1 + 48 - 15
    assert vistok.load("vit", model=str(folder), tome_r=30).count(64, 50) == 48 - 24 - 12 - 6
    pixels = preprocess(images, tok.preprocessing_for(64, 50))  # what encode fed the model
    model = AutoModel.from_pretrained(folder).eval()
    last = model.encoder.layer[-1]
    seen = {}
    last.register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    with patch(model, 5) as handle:
        final = run("registers", model, pixels)
        source, assign, size = handle.source, handle.last_assign, handle.last_size
    # the chosen (last) block's attention from CLS, with ToMe's + log(size), summed over its merge; its keys,
    # size-weighted
    with torch.no_grad():
        h = last.norm1(seen["x"])
        q, k = last.attention.q_proj(h).numpy(), last.attention.k_proj(h).numpy()
    heads, dh = 4, 8
    for b, t in enumerate(tokens):
        assert t.grid is None and t.base_grid == (rows, cols) and t.sizes.sum() == rows * cols
        np.testing.assert_array_equal(t.source, source[b].numpy() + 1)  # CLS is token 0
        np.testing.assert_allclose(t.values[1:], final[b, 3:].numpy(), atol=1e-5)
        logits = np.einsum("hd,thd->ht", q[b, 0].reshape(heads, dh), k[b].reshape(-1, heads, dh)) / np.sqrt(dh)
        logits[:, 3:] += np.log(size[b].numpy())
        weights = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        expected = np.zeros((heads, len(t) - 1))
        np.add.at(expected.T, assign[b].numpy(), weights[:, 3:].T)
        np.testing.assert_allclose(t.extras["cls_attention_heads"], np.c_[weights[:, :1], expected], atol=1e-5)
        w = size[b].numpy()[:, None]
        keys = np.zeros((len(t) - 1, 32))
        np.add.at(keys, assign[b].numpy(), w * k[b, 3:])
        keys /= np.bincount(assign[b].numpy(), w[:, 0])[:, None]
        np.testing.assert_allclose(t.extras["keys"], np.r_[k[b, :1], keys], atol=1e-5)
        patches = np.flatnonzero(t.source == 5)  # token 5's box: the union of its patches' cells
        r, c = np.divmod(patches, cols)
        box = [c.min() / cols * 64, r.min() / rows * 50, (c.max() + 1) / cols * 64, (r.max() + 1) / rows * 50]
        np.testing.assert_allclose(t.boxes[5], box, rtol=1e-5)
    assert not is_patched(tok._model)  # patched for the forward pass only
    plain = vistok.load("vit", model=str(folder)).encode(images[0])
    assert plain.grid == (rows, cols) and len(plain) == 48
    with pytest.raises(ValueError, match="tome_r must be"):
        vistok.load("vit", model=str(folder), tome_r=-1)
    with pytest.raises(ValueError, match="onnxruntime"):
        vistok.load("focus-vit-s14", tome_r=4, backend="onnxruntime")


def test_focus_vit_with_tome_keeps_saliency_per_merged_token():
    from vistok.samples import sample_images

    tok = vistok.load("focus-vit-s14", tome_r=8, saliency_map=True)
    image = sample_images()[2]
    tokens = tok.encode(image)
    rows, cols = tokens.base_grid
    assert len(tokens) == tok.count(*tokens.image_size) == merged_count(rows * cols, 8, tok.layer)
    assert tokens.sizes.sum() == rows * cols and tokens.meta["config"]["tome_r"] == 8
    p = tok.patch
    per_patch = tokens.extras["saliency_map"].reshape(rows, p, cols, p).mean(axis=(1, 3)).reshape(-1)
    expected = np.bincount(tokens.source, per_patch) / tokens.sizes
    np.testing.assert_allclose(tokens.extras["saliency"], expected, rtol=1e-5, atol=1e-6)
    assert tokens.extras["cls_attention"].shape == (len(tokens),) and tokens.extras["cls"].shape == (384,)
    # the merged tokens still find the subject: their saliency tracks the unmerged tokens' saliency
    plain = vistok.load("focus-vit-s14").encode(image)
    spread = tokens.extras["saliency"][tokens.source]
    assert np.corrcoef(spread, plain.extras["saliency"])[0, 1] > 0.8
