"""benchmarks/vlm_reduce_quality.py on a tiny small-VLM (real focus-vit-s14 tower, random 2-layer 32-wide Llama):
the result's structure, the tower cache giving the answers and logits of the uncached pipeline, skipped methods,
and the one-line errors for a bad method name and a missing model folder."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from vistok import vlm  # noqa: E402
from vistok.vlm import small  # noqa: E402
from vistok.vlm.run import load  # noqa: E402
from vistok.vlm.shapes import questions  # noqa: E402

SIZE = 112  # 8 x 8 patches: 64 visual tokens, 16 kept at 1/4
N = 6       # one question of each kind


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vlm_reduce_quality.py"
    spec = importlib.util.spec_from_file_location("vlm_reduce_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _bench()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-vlm")
    model, processor = small.build(hidden=32, layers=2, heads=2, image_size=SIZE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def loaded(folder):
    return load(folder)


@pytest.fixture(scope="module")
def items():
    return list(questions(N, seed=0, split="test", size=SIZE))


@pytest.fixture(scope="module")
def result(loaded, items):
    model, processor = loaded
    return bench.measure(model, processor, items, ["pool", "visionzip", "fastv", "saliency"], [1, 4])


def test_result_rows_counts_and_summary(result):
    assert result["questions"] == N and result["visual"] == 64 and result["budgets"] == [4]
    rows = result["rows"]
    assert [(r["method"], r["budget"], r["keep"]) for r in rows] == [
        ("unpatched", 1, 64), ("pool", 4, 16), ("visionzip", 4, 16), ("fastv", 4, 16), ("saliency", 4, 16)]
    assert rows[3]["options"] == {"layer": 1}  # FastV after layer 1 of the 2-layer LM
    for r in rows[:4]:
        assert len(r["answers"]) == N and r["questions"] == N
        assert sum(k["questions"] for k in r["per_kind"].values()) == N
        assert set(r["per_kind"]) == {"colour", "shape", "count", "relation", "exists", "text"}
        assert 0.0 <= r["accuracy"] <= 1.0 and r["prefill_ms"] > 0
        right = sum(a == t for a, t in zip(r["answers"], result["truth"]))
        assert r["accuracy"] == right / N
    assert rows[4]["skipped"].startswith("ValueError: saliency needs the 'saliency' signal")
    assert "\n" not in rows[4]["skipped"]
    check = result["cache_check"]
    assert check["uncached_answers_equal_cached"] is True
    assert check["tower_runs"] == N                 # once per image
    assert check["tower_hits"] == N * 4             # unpatched, pool, visionzip and fastv read the cache
    summary = bench.summary(result)
    assert set(summary["winners"]) == {"4"} and summary["best_at_9"] is None
    assert sorted(summary["fail_first"]) == sorted(rows[0]["per_kind"])
    best = max(r["accuracy"] for r in rows[1:4])
    assert summary["winners"]["4"]["accuracy"] == best
    text = bench.render(result, "tiny", markdown=True)
    assert "| unpatched | 1/1 | 64 |" in text and "skipped saliency (every budget): ValueError" in text
    json.dumps(result)  # every number is JSON-ready


def test_cached_answers_equal_the_uncached_pipeline(loaded, items, result):
    model, processor = loaded
    rows = {r["method"]: r for r in result["rows"]}
    assert small.evaluate(model, processor, items)["answers"] == rows["unpatched"]["answers"]
    for method, options in (("visionzip", {}), ("fastv", {"layer": 1})):
        plain = small.evaluate(model, processor, items, method=method, keep=16, **options)
        assert plain["answers"] == rows[method]["answers"], method


@pytest.mark.parametrize("method", ["visionzip", "tome", "pool"])
def test_tower_cache_gives_bit_identical_logits_and_signals(loaded, items, method):
    model, processor = loaded
    inputs = dict(processor(images=items[0].image, text=f"<image> {items[0].question}", return_tensors="pt"))
    other = dict(processor(images=items[1].image, text=f"<image> {items[1].question}", return_tensors="pt"))
    with torch.inference_mode():
        with vlm.patch(model, method, keep=8) as handle:
            expected = model(**inputs).logits
            stats = handle.stats
        with bench.TowerCache(model) as cache:
            model(**inputs)                       # fills the cache
            with vlm.patch(model, method, keep=8) as handle:
                got = model(**inputs).logits      # served from it (signals re-captured)
                assert handle.stats == stats
            assert (cache.runs, cache.hits) == (1, 1)
            model(**other)                        # other pixels: the tower runs
            assert (cache.runs, cache.hits) == (2, 1)
    assert torch.equal(got, expected)
    assert "forward" not in model.model.vision_tower.__dict__  # unwrapped on exit


def test_fastv_on_too_few_layers_is_skipped_with_its_reason(loaded, items):
    model, processor = loaded
    out = bench.measure(model, processor, items[:1], ["fastv"], [4], fastv=5)
    reason = out["rows"][1]["skipped"]
    assert reason.startswith("ValueError: fastv: layer must be a whole number in 1..1") and "\n" not in reason


def test_main_writes_json_and_plot(folder, tmp_path, capsys):
    out = bench.main(["--model", str(folder), "--questions", "2", "--methods", "stride", "--budgets", "1,4,16",
                      "--no-progress", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [(r["method"], r["keep"]) for r in saved["rows"]] == [("unpatched", 64), ("stride", 16), ("stride", 4)]
    assert saved["rows"][1]["answers"] == out["rows"][1]["answers"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1/16 (4 of 64 tokens): best stride" in printed and "total " in printed


@pytest.mark.parametrize(("argv", "needle"), [
    (["--methods", "pool,nope"], "--methods: unknown method 'nope'; choose from "),
    (["--budgets", "1,0"], "--budgets: each budget is a whole number b >= 1"),
    (["--budgets", "1,x"], "--budgets takes comma-separated whole numbers, got '1,x'"),
])
def test_bad_options_give_one_line(folder, capsys, argv, needle):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--model", str(folder), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {needle}") and "\n" not in err


def test_missing_model_folder_says_what_to_pass(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--model", str(missing)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --model {missing}: no such folder; pass a folder written by `vistok train-vlm` "
                   "(or 'shapes' for the model shipped with vistok)")
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        bench.check_methods(["nope"])
    with pytest.raises(SystemExit):
        bench.main(["--model", str(tmp_path)])  # a folder, but no model in it
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --model {tmp_path}: ") and "no config.json" in err and "\n" not in err
