"""``vistok.reduce``: checks every registered method goes through (parametrized over the registry), plus the
core's own behaviour and the built-in simple methods against hand-computed references."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import vistok
from vistok.reducers import keep_count, method_info
from vistok.samples import sample_images

METHODS = vistok.reduce_methods()


def synthetic(rows: int = 6, cols: int = 8, dim: int = 5, seed: int = 0) -> vistok.Tokens:
    """Grid tokens with every signal a method may ask for (attention sums to < 1 like a real CLS row)."""
    rng = np.random.default_rng(seed)
    n = rows * cols
    logits = rng.normal(size=n + 1)
    attention = np.exp(logits) / np.exp(logits).sum()
    return vistok.Tokens.from_grid(
        rng.normal(size=(n, dim)).astype(np.float32), (rows, cols),
        extras={"cls": rng.normal(size=dim).astype(np.float32), "cls_attention": attention[1:].astype(np.float32),
                "keys": rng.normal(size=(n, dim)).astype(np.float32),
                "saliency": rng.uniform(size=n).astype(np.float32)},
        meta={"tokenizer": "synthetic", "image_size": [cols * 10, rows * 10]},
    )


@pytest.fixture(scope="module")
def real():
    return vistok.load("focus-vit-s14", keys=True).encode(sample_images()[2])


def keep_for(method: str, tokens: vistok.Tokens, k: int) -> dict:
    """keep=k, except pool needs a count that factors into a grid inside the token grid."""
    if method == "pool":
        rows, cols = tokens.grid
        return {"keep": (rows // 2) * (cols // 2)}
    return {"keep": k}


def assert_provenance(before: vistok.Tokens, after: vistok.Tokens, averages: bool = True) -> None:
    """Every base patch maps to the token that now stands for it, and that token is the size-weighted mean
    of the original tokens mapped to it (for merges that average) or one of them (for selections)."""
    assert after.base_grid == before.base_grid and len(after.source) == len(before.source)
    sizes = after.sizes
    assert sizes.sum() == (after.source >= 0).sum()
    for token in range(len(after)):
        members = np.flatnonzero(after.source == token)
        assert len(members) == sizes[token] >= 1
        originals = np.unique(before.source[members])
        if not averages:
            continue
        if len(originals) == 1:
            np.testing.assert_allclose(after.values[token], before.values[originals[0]], rtol=1e-4, atol=1e-5)
        else:
            weights = before.sizes[originals].astype(np.float64)
            mean = (weights[:, None] * before.values[originals]).sum(0) / weights.sum()
            np.testing.assert_allclose(after.values[token], mean, rtol=1e-4, atol=1e-5)


# -- every method in the registry --------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("source", ["synthetic", "real"])
def test_exact_count_provenance_and_determinism(method, source, real):
    tokens = synthetic() if source == "synthetic" else real
    info = method_info(method)
    args = keep_for(method, tokens, len(tokens) // 4)
    out = vistok.reduce(tokens, method, **args)
    if info.exact:
        assert len(out) == args["keep"]
    assert out.meta["reductions"][-1]["method"] == method and out.meta["reductions"][-1]["from"] == len(tokens)
    assert out.dim == tokens.dim and out.values.dtype == tokens.values.dtype
    assert_provenance(tokens, out, info.averages)
    if info.merges and info.averages:
        assert out.sizes.sum() == len(tokens)  # averaging merges lose no patch
    elif info.merges:
        assert out.sizes.sum() <= len(tokens)  # PruMerge drops tokens no kept token claims
    else:
        kept = np.unique(tokens.source[out.source >= 0])
        assert out.sizes.max() == 1 and len(kept) == len(out)
        if info.keeps_order:
            order = [int(np.flatnonzero(out.source == i)[0]) for i in range(len(out))]
            assert order == sorted(order)
    again = vistok.reduce(tokens, method, **args)
    assert again.equals(out)
    assert out.meta["tokenizer"] == tokens.meta["tokenizer"] and out.extras["cls"].shape == tokens.extras["cls"].shape


@pytest.mark.parametrize("method", METHODS)
def test_chaining_keeps_provenance(method):
    tokens = synthetic(8, 8)
    first = vistok.reduce(tokens, "pool", factor=2) if method != "pool" else vistok.reduce(tokens, "stride", keep=40)
    if method == "pool" and first.grid is None:
        with pytest.raises(ValueError, match="grid"):
            vistok.reduce(first, "pool", keep=4)
        return
    second = vistok.reduce(first, method, **keep_for(method, first, 6))
    assert_provenance(tokens, second, method_info(method).averages)
    assert [s["method"] for s in second.meta["reductions"]] == [first.meta["reductions"][0]["method"], method]


@pytest.mark.parametrize("method", METHODS)
def test_missing_signals_name_the_signal_and_where_to_get_it(method):
    info = method_info(method)
    bare = vistok.Tokens.from_grid(synthetic().values, (6, 8), meta={"tokenizer": "efficientnet-lite0"})
    if not info.needs:
        assert len(vistok.reduce(bare, method, **keep_for(method, bare, 12))) >= 1
        return
    with pytest.raises(ValueError, match=rf"{re.escape(method)} needs the '{info.needs[0]}' signal.*efficientnet-lite0"):
        vistok.reduce(bare, method, keep=12)
    # the same signal passed by hand works
    given = {name: synthetic().extras[name] for name in info.needs}
    assert len(vistok.reduce(bare, method, keep=12, **given)) == 12 or not info.exact


@pytest.mark.parametrize("method", METHODS)
def test_list_input_and_file_round_trip(method, tmp_path):
    batch = [synthetic(seed=1), synthetic(seed=2)]
    out = vistok.reduce(batch, method, **keep_for(method, batch[0], 10))
    assert isinstance(out, list) and len(out) == 2
    assert out[1].equals(vistok.reduce(batch[1], method, **keep_for(method, batch[1], 10)))
    out[0].save(tmp_path / "r.safetensors")
    loaded = vistok.Tokens.load(tmp_path / "r.safetensors")
    assert loaded.equals(out[0]) and np.array_equal(loaded.sizes, out[0].sizes)


# -- the core -----------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.floats(1e-4, 1.0))
def test_keep_count_from_a_ratio_rounds_and_stays_in_range(n, ratio):
    k = keep_count(n, None, ratio)
    assert 1 <= k <= n and abs(k - n * ratio) <= max(0.5, 1 - n * ratio) + 1e-9


def test_bad_arguments():
    tokens = synthetic()
    for kwargs, message in [({}, "exactly one of keep"), ({"keep": 3, "ratio": 0.5}, "exactly one of keep"),
                            ({"keep": 0}, r"1\.\.48"), ({"keep": 49}, r"1\.\.48"), ({"keep": 2.5}, "whole number"),
                            ({"ratio": 0}, r"\(0, 1\]"), ({"ratio": 1.5}, r"\(0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            vistok.reduce(tokens, "stride", **kwargs)
    with pytest.raises(KeyError, match="did you mean 'stride'"):
        vistok.reduce(tokens, "strde", keep=3)
    with pytest.raises(TypeError, match="stride takes no option 'factor'"):
        vistok.reduce(tokens, "stride", keep=3, factor=2)
    with pytest.raises(ValueError, match="one entry per token"):
        vistok.reduce(tokens, "cls-attention", keep=3, cls_attention=np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        vistok.reduce(tokens, "saliency", keep=3, saliency=np.full(48, np.nan))
    with pytest.raises(TypeError, match="Tokens"):
        vistok.reduce(np.zeros((4, 3)), "stride", keep=2)


def test_hard_tokens_can_be_selected_not_merged():
    ids = vistok.Tokens.from_grid(np.arange(48) % 7, (6, 8), meta={"vocab_size": 7})
    kept = vistok.reduce(ids, "stride", keep=6)
    np.testing.assert_array_equal(kept.values, (np.floor((np.arange(6) + 0.5) * 8)).astype(int) % 7)
    with pytest.raises(ValueError, match="works on token vectors"):
        vistok.reduce(ids, "pool", factor=2)


# -- the simple methods, by hand -----------------------------------------------------------------------

def test_stride_random_cls_attention_and_saliency_by_hand():
    tokens = synthetic()
    stride = vistok.reduce(tokens, "stride", keep=5)
    np.testing.assert_array_equal(np.flatnonzero(stride.source >= 0), [4, 14, 24, 33, 43])  # floor((i+.5)*48/5)
    rnd = vistok.reduce(tokens, "random", keep=5, seed=3)
    expected = np.sort(np.random.default_rng(3).choice(48, 5, replace=False))
    np.testing.assert_array_equal(np.flatnonzero(rnd.source >= 0), expected)
    assert not np.array_equal(np.flatnonzero(vistok.reduce(tokens, "random", keep=5, seed=4).source >= 0), expected)
    for method, signal in (("cls-attention", "cls_attention"), ("saliency", "saliency")):
        out = vistok.reduce(tokens, method, keep=7)
        best = sorted(np.argsort(-tokens.extras[signal])[:7])
        np.testing.assert_array_equal(np.flatnonzero(out.source >= 0), best)
        np.testing.assert_array_equal(out.values, tokens.values[best])
        np.testing.assert_array_equal(out.extras[signal], tokens.extras[signal][best])


def test_pool_is_a_weighted_block_mean():
    tokens = synthetic(4, 6, dim=3)
    two = vistok.reduce(tokens, "pool", factor=2)
    assert two.grid == (2, 3) and list(two.sizes) == [4] * 6
    grid = tokens.values.reshape(4, 6, 3)
    np.testing.assert_allclose(two.values.reshape(2, 3, 3), grid.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)), rtol=1e-6)
    # attention mass adds up when tokens merge; other per-token extras are averaged
    np.testing.assert_allclose(two.extras["cls_attention"].sum(), tokens.extras["cls_attention"].sum(), rtol=1e-6)
    # an uneven split: 4x6 -> 3x4 by keep=12 (the factor pair closest to the 2:3 aspect)
    uneven = vistok.reduce(tokens, "pool", keep=12)
    assert uneven.grid == (3, 4) and uneven.sizes.sum() == 24
    one = vistok.reduce(tokens, "pool", grid=1)
    np.testing.assert_allclose(one.values[0], tokens.values.mean(0), rtol=1e-5)
    three = vistok.reduce(tokens, "pool", factor=3)  # avg_pool2d: 1 x 2 whole 3x3 windows, row 3 dropped
    assert three.grid == (1, 2) and list(three.sizes) == [9, 9] and (three.source[18:] == -1).all()
    three = vistok.reduce(tokens, "pool", factor=3, bins="cover")  # ceil: 2 x 2 bins of 3x3, the last partial
    assert three.grid == (2, 2) and sorted(three.sizes) == [3, 3, 9, 9]
    with pytest.raises(ValueError, match="no r x c = 7 fits"):
        vistok.reduce(tokens, "pool", keep=7)
    with pytest.raises(ValueError, match="not both"):
        vistok.reduce(tokens, "pool", keep=6, factor=2)


def test_pool_on_grids_it_does_not_divide_follows_avg_pool2d():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    def pooled(t, window, ceil=False):  # what the originals run: F.avg_pool2d on the (1, D, rows, cols) grid
        rows, cols = t.grid
        grid = torch.from_numpy(t.values.reshape(rows, cols, -1)).permute(2, 0, 1)[None]
        out = F.avg_pool2d(grid, window, ceil_mode=ceil)[0]
        return out.permute(1, 2, 0).reshape(-1, grid.shape[1]).numpy(), tuple(out.shape[1:])

    # 5x5, factor 2, by hand: 2x2 whole windows, row 4 and column 4 dropped
    hand = vistok.Tokens(np.arange(25, dtype=np.float32).reshape(25, 1), grid=(5, 5))
    out = vistok.reduce(hand, "pool", factor=2)
    assert out.grid == (2, 2) and out.values.ravel().tolist() == [3, 5, 13, 15]
    assert out.source.reshape(5, 5)[4].tolist() == [-1] * 5 and out.source.reshape(5, 5)[:, 4].tolist() == [-1] * 5
    cover = vistok.reduce(hand, "pool", factor=2, bins="cover")  # 3x3, the last row/column of windows partial
    assert cover.grid == (3, 3) and cover.values.ravel().tolist() == [3, 5, 6.5, 13, 15, 16.5, 20.5, 22.5, 24]
    # a 27x27 SigLIP grid, LLaVA's 2x2: 13x13 (floor mode); bins="cover" is ceil mode, 14x14
    t = vistok.Tokens(np.random.default_rng(0).normal(size=(27 * 27, 3)).astype(np.float32), grid=(27, 27))
    for bins, ceil in (("windows", False), ("cover", True)):
        out, (values, shape) = vistok.reduce(t, "pool", factor=2, bins=bins), pooled(t, 2, ceil)
        assert out.grid == shape == ((13, 13) if not ceil else (14, 14))
        np.testing.assert_allclose(out.values, values, rtol=1e-5, atol=1e-6)
    # LLaMA-VID's grid:5 on 24x24: window 24 // 5 = 4, so 6x6 tokens; on 16x16: window 3, 5x5, row/col 15 dropped
    for side, window, shape in ((24, 4, (6, 6)), (16, 3, (5, 5))):
        t = vistok.Tokens(np.random.default_rng(side).normal(size=(side * side, 3)).astype(np.float32),
                          grid=(side, side))
        out = vistok.reduce(t, "pool", grid=5)
        assert out.grid == shape == pooled(t, window)[1]
        np.testing.assert_allclose(out.values, pooled(t, window)[0], rtol=1e-5, atol=1e-6)
        even = vistok.reduce(t, "pool", grid=5, bins="cover")  # exactly 5x5, every patch in one bin
        assert even.grid == (5, 5) and even.sizes.sum() == side * side
    with pytest.raises(ValueError, match="bins must be 'windows'"):
        vistok.reduce(hand, "pool", factor=2, bins="ceil")
    with pytest.raises(ValueError, match="factor=6 is larger than the 5x5 token grid.*bins='cover'"):
        vistok.reduce(hand, "pool", factor=6)
    assert vistok.reduce(hand, "pool", factor=6, bins="cover").grid == (1, 1)


# -- the CLI ---------------------------------------------------------------------------------------------

def test_cli_reduce_and_reducers(tmp_path):
    from vistok.cli import app, parse_reduce

    assert parse_reduce("tome:0.25") == ("tome", {"ratio": 0.25})
    assert parse_reduce("cls-attention:64") == ("cls-attention", {"keep": 64})
    assert parse_reduce("visionzip:1/8,contextual=0.2") == ("visionzip", {"ratio": 0.125, "contextual": 0.2})
    assert parse_reduce("pool:factor=2") == ("pool", {"factor": 2})
    runner = CliRunner()
    image = sample_images()[2]
    target = tmp_path / "r.safetensors"
    result = runner.invoke(app, ["tokenize", str(image), "-t", "focus-vit-s14", "-r", "pool:factor=2", "-r",
                                 "cls-attention:10", "--out", str(target)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    saved = vistok.load_tokens(target)[str(image)]
    expected = vistok.reduce(vistok.reduce(vistok.load("focus-vit-s14").encode(image), "pool", factor=2),
                             "cls-attention", keep=10)
    assert saved.equals(expected, rtol=1e-4, atol=1e-4) and "176 (pool, cls-attention)" in result.output
    result = runner.invoke(app, ["tokenize", str(image), "-t", "efficientnet-lite0", "-r", "saliency:5"])
    assert result.exit_code == 2 and "needs the 'saliency' signal" in " ".join(result.output.split())
    png = tmp_path / "r.png"
    result = runner.invoke(app, ["show", str(image), "-t", "focus-vit-s14", "-r", "saliency:1/4", "-o", str(png)])
    assert result.exit_code == 0 and png.is_file()
    listing = runner.invoke(app, ["reducers"], env={"COLUMNS": "250"})
    assert listing.exit_code == 0 and all(m in listing.output for m in METHODS)


def test_groups_are_painted_over_their_patches():
    from PIL import Image

    from vistok.viz import draw_groups, paint_tokens

    tokens = synthetic(2, 4, dim=3)
    tokens.meta["image_size"] = [80, 40]
    out = vistok.reduce(tokens, "pool", factor=2)  # two groups: left half and right half
    out.grid = None  # draw it as a reduced set
    image = Image.new("RGB", (80, 40), (0, 0, 0))
    drawn = np.asarray(draw_groups(image, out)).astype(int)
    assert (drawn[5:15, 5:15] == drawn[5, 5]).all() and (drawn[25:35, 45:75] == drawn[25, 45]).all()
    assert not np.array_equal(drawn[5, 5], drawn[25, 45]) and (drawn[:, 40] == 255).all()  # the border
    dropped = vistok.reduce(tokens, "stride", keep=2)
    grey = np.asarray(draw_groups(Image.new("RGB", (80, 40), (128, 128, 128)), dropped)).astype(int)
    kept_cells = np.flatnonzero(dropped.source >= 0)
    for cell in range(8):
        r, c = divmod(cell, 4)
        centre = grey[r * 20 + 10, c * 20 + 10]
        assert (centre == 32).all() != (cell in kept_cells)  # dropped patches dimmed to a quarter
    assert np.asarray(paint_tokens(dropped, (80, 40))).shape == (40, 80, 3)
