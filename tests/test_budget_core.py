"""The budget API over every model in the table: count, cost, fit, and the CLI commands around them."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.budget import TokenCount, cost, count, fit, list_models, lm_presets, resolve_model
from vistok.budget.core import all_families
from vistok.budget.cost import LMConfig
from vistok.cli import app
from vistok.samples import sample_images

MODELS = list_models()
SIZES = [(1, 1), (3, 2000), (2000, 3), (336, 336), (640, 480), (1024, 768), (4032, 3024)]


# -- every model in the table -----------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_every_model_counts_sane_values(model):
    entry = resolve_model(model)
    assert entry.lm is None or entry.lm in lm_presets(), f"{model}: unknown LM preset {entry.lm}"
    for size in SIZES:
        try:
            c = count(size, model=model)
        except ValueError as err:  # some rules refuse extreme aspect ratios, with a reason
            assert "aspect" in str(err).lower() or "ratio" in str(err).lower(), err
            continue
        assert isinstance(c, TokenCount) and c.model == model and c.image_size == size
        assert c.image_tokens >= 1 and c.total_positions >= c.image_tokens
        assert c.source and c.family == entry.family
        json.dumps(c.breakdown), json.dumps(c.options)
        if entry.lm is not None:
            assert cost(c).kv_cache_bytes > 0


@pytest.mark.parametrize("model", MODELS)
def test_every_alias_resolves_to_its_model(model):
    entry = resolve_model(model)
    for alias in (model, model.upper(), *entry.aliases, f"someone/{model}"):
        assert resolve_model(alias).name == model, alias


@pytest.mark.parametrize("model", MODELS)
def test_every_model_rejects_bad_sizes(model):
    for size in [(0, 10), (10, 0), (-5, 10), (10**7, 10), (10.5, 10), ("10", 10)]:
        with pytest.raises(ValueError):
            count(size, model=model)


def test_every_family_is_used_and_says_how_it_is_proven():
    used = {resolve_model(m).family for m in MODELS}
    for name, family in all_families().items():
        assert family.proof in ("processor", "documentation")
        assert name in used, f"family {name} has no model in the table"


# -- names ------------------------------------------------------------------------------------------

def test_names_aliases_and_prefix_fallback():
    assert resolve_model("llava-1.5-7b").name == "llava-1.5-7b"
    assert resolve_model("LLAVA-HF/llava-1.5-7b-hf").name == "llava-1.5-7b"
    assert resolve_model("someone/llava-1.5-7b-hf").name == "llava-1.5-7b"  # organisation ignored
    assert resolve_model("llava-1.5-7b-hf-awq-int4").name == "llava-1.5-7b"  # longest known prefix
    with pytest.raises(KeyError, match="did you mean 'llava-1.5"):
        resolve_model("lava-1.5-7b")


def test_count_arguments():
    path = sample_images()[0]
    assert count(path, model="llava-1.5-7b") == count(vistok.probe_size(path), model="llava-1.5-7b")
    assert count((640, 480), family="llava").image_tokens == 576
    assert count((640, 480), family="llava", vision_feature_select_strategy="full").image_tokens == 577
    with pytest.raises(TypeError, match="exactly one"):
        count((640, 480))
    with pytest.raises(TypeError, match="no option 'max_tiles'"):
        count((640, 480), model="llava-1.5-7b", max_tiles=3)
    with pytest.raises(ValueError, match=r"\(width, height\)"):
        count((640, 480, 3), model="llava-1.5-7b")
    with pytest.raises(vistok.ImageError):
        count(b"not an image", model="llava-1.5-7b")


# -- cost -------------------------------------------------------------------------------------------

def test_kv_cache_and_flops_by_hand():
    c = count((640, 480), model="llava-1.5-7b")  # 576 positions in Vicuna-7B (32 layers, 32 KV heads, 128)
    result = cost(c)
    assert result.lm == "vicuna-7b"
    assert result.kv_cache_bytes == 576 * 2 * 32 * 32 * 128 * 2 == 301_989_888
    per_token = 2 * 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # q,k,v,o + gated MLP, 2 FLOPs per MAC
    assert result.linear_flops == per_token * 576
    assert cost(c, dtype="fp8").kv_cache_bytes == result.kv_cache_bytes // 2


def test_attention_term_is_quadratic_brute_force():
    lm = dict(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16)
    for n, t in [(1, 0), (5, 0), (5, 3), (40, 17)]:
        pairs = sum(1 for q in range(t, t + n) for k in range(q + 1))  # causal: key index <= query index
        assert cost(n, lm=lm, prompt_tokens=t).attention_flops == 4 * 2 * 4 * pairs * 2
    small, big = cost(100, lm=lm).attention_flops, cost(200, lm=lm).attention_flops
    assert big / small == pytest.approx(4, rel=0.02)


def test_cross_attention_states_live_in_cross_layers():
    lm = LMConfig(layers=10, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, cross_attention_layers=2)
    c = TokenCount("x", "x", (560, 560), 1, 1, {"cross_attention_states": 1601})
    result = cost(c, lm=lm)
    per_token = 2 * 2 * 16 * 2
    assert result.kv_cache_bytes == per_token * (1 * 8 + 1601 * 2)
    plain = LMConfig(layers=10, hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128)
    with pytest.raises(ValueError, match="cross-attention"):
        cost(c, lm=plain)


def test_cost_errors():
    with pytest.raises(KeyError, match="did you mean 'vicuna-7b'"):
        cost(10, lm="vicuna-7")
    with pytest.raises(ValueError, match="pass lm"):
        cost(10)
    with pytest.raises(ValueError, match="dtype"):
        cost(10, lm="vicuna-7b", dtype="float12")
    with pytest.raises(ValueError, match="positive"):
        cost(10, lm=dict(layers=0, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16))


# -- fit --------------------------------------------------------------------------------------------

def test_fit_fixed_count_model_cannot_resize():
    result = fit((640, 480), "llava-1.5-7b", 100)
    assert not result.fits_already and result.resize is None and result.option is None
    assert result.keep_fraction == pytest.approx(100 / 576)
    assert fit((640, 480), "llava-1.5-7b", 576).fits_already


@pytest.mark.parametrize("model", [m for m in MODELS if m.startswith(("qwen2-vl-7b", "internvl2.5-8b", "pixtral"))])
@pytest.mark.parametrize("budget", [64, 300, 1000])
def test_fit_resize_is_the_largest_within_budget(model, budget):
    width, height = 1800, 1200
    result = fit((width, height), model, budget)
    if result.fits_already:
        return
    if count((1, 1), model=model).image_tokens > budget:  # e.g. InternVL: one tile is 256 tokens
        assert result.resize is None and "does not shrink" in " ".join(result.notes)
        return
    assert result.resize is not None and result.resized.image_tokens <= budget
    w, h = result.resize
    assert abs(w / h - width / height) < 0.05 or min(w, h) < 20
    for side in range(w + 1, width + 1):  # brute force: no larger aspect-preserving size fits
        other = max(1, round(height * side / width))
        assert count((side, other), model=model).image_tokens > budget
    if result.option is not None:
        assert result.option_count.image_tokens <= budget


def test_fit_errors():
    with pytest.raises(ValueError, match="budget"):
        fit((640, 480), "llava-1.5-7b", 0)
    with pytest.raises(KeyError):
        fit((640, 480), "no-such-model", 10)


# -- CLI --------------------------------------------------------------------------------------------

def run(*args, expect=0):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == expect, result.output
    return result


def test_cli_count_folder_with_a_bad_file(tmp_path):
    for path in sample_images()[:3]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    result = run("count", tmp_path, "-m", "llava-1.5-7b", "--hist", tmp_path / "h.png", expect=1)
    text = " ".join(result.output.split())
    assert "summary over 3 image(s)" in text and "broken.jpg" in text
    assert "1,728" in text  # 3 x 576 tokens
    assert "864.0 MiB" in text  # 3 x 288 MiB of KV cache
    assert Image.open(tmp_path / "h.png").width == 900


def test_cli_count_unknown_model():
    result = run("count", sample_images()[0], "-m", "lava-1.5", expect=2)
    assert "did you mean" in result.output


def test_cli_fit_writes_resized_image(tmp_path):
    out = tmp_path / "small.png"
    result = run("fit", sample_images()[4], "-m", "qwen2-vl-7b", "--budget", "200", "--out", out)
    fitted = fit(sample_images()[4], "qwen2-vl-7b", 200)
    assert Image.open(out).size == fitted.resize
    assert "max_pixels" in result.output
