"""Tests for the ``vistok`` command line, run through its real entry points.

A few tests start the installed program in a subprocess (``python -m vistok`` and the ``vistok``
console script); the rest call ``vistok.cli.app`` in-process with Typer's ``CliRunner``, which runs the
same code path without the start-up cost. Every test checks real values: exit codes, the files written
and what they hold, and the messages a user reads.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.samples import sample_images

COMMANDS = ("list", "tokenize", "show", "inspect", "classify", "fit-codebook", "fit-patch", "demo")
# Rich folds long lines to the terminal width; a wide terminal keeps most messages on one line, and the
# helpers below compare text with whitespace collapsed (flat) or removed (squash) for the rest.
WIDE = {"COLUMNS": "200"}


def flat(text: str) -> str:
    """Whitespace runs (including Rich's line breaks) collapsed to one space."""
    return " ".join(text.split())


def squash(text: str) -> str:
    """All whitespace removed: survives Rich folding a long path in the middle."""
    return "".join(text.split())


def invoke(*args: object, expect: int | None = 0):
    """Run ``vistok ARGS`` in-process; check the exit code when ``expect`` is given."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=WIDE)
    if expect is not None:
        assert result.exit_code == expect, (
            f"vistok {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
            f"{result.output}\n{result.exception!r}"
        )
    return result


def run_program(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **WIDE, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def console_script() -> str:
    """The installed ``vistok`` script: next to this interpreter (a virtualenv), else on PATH."""
    found = shutil.which("vistok", path=str(Path(sys.executable).parent)) or shutil.which("vistok")
    assert found is not None, "the vistok console script is not installed next to this interpreter or on PATH"
    return found


@pytest.fixture(scope="module")
def samples() -> list[Path]:
    paths = sample_images()
    assert len(paths) == 6, paths
    return paths


def expected_counts(name: str, paths: list[Path], **config: object) -> dict[str, int]:
    tokenizer = vistok.load(name, **config)
    return {str(p): tokenizer.count(*vistok.probe_size(p)) for p in paths}


# --------------------------------------------------------------------------------------------------
# The installed program, in a subprocess


def test_python_m_vistok_help_lists_every_command(tmp_path: Path) -> None:
    proc = run_program([sys.executable, "-m", "vistok", "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in COMMANDS:
        assert re.search(rf"(?m)^\W*{re.escape(command)}\s", proc.stdout), f"{command!r} missing:\n{proc.stdout}"


def test_console_script_list_shows_tokenizers_and_kinds(tmp_path: Path) -> None:
    proc = run_program([console_script(), "list"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # One table row per tokenizer: "│ grid  │ hard │ ...".
    assert re.search(r"\bgrid\W+hard\b", proc.stdout), proc.stdout
    assert re.search(r"\bpatch\W+soft\b", proc.stdout), proc.stdout


def test_python_m_vistok_tokenize_writes_tokens(tmp_path: Path, samples: list[Path]) -> None:
    image = samples[1]
    proc = run_program([sys.executable, "-m", "vistok", "tokenize", str(image), "-t", "grid",
                        "--out", "tokens.safetensors"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    loaded = vistok.load_tokens(tmp_path / "tokens.safetensors")
    count = expected_counts("grid", [image])[str(image)]
    assert list(loaded) == [str(image)]
    assert len(loaded[str(image)]) == count
    assert re.search(rf"\b{count}\b", proc.stdout), proc.stdout


# --------------------------------------------------------------------------------------------------
# list


def test_list_pattern_and_kind_filter() -> None:
    text = invoke("list", "*", "--kind", "soft").output
    assert re.search(r"\bpatch\W+soft\b", text), text
    assert not re.search(r"\bgrid\W+hard\b", text), text
    assert "hard" not in text
    text = invoke("list", "g*").output
    assert re.search(r"\bgrid\W+hard\b", text), text
    assert not re.search(r"\bpatch\W+soft\b", text), text


def test_list_verbose_shows_options() -> None:
    text = squash(invoke("list", "-v").output)
    for option in ("dim=None", "patch=16", "cell=16", "max_side=256", "codebook=None", "weights=None"):
        assert option in text, option


def test_list_bad_kind_fails() -> None:
    result = invoke("list", "--kind", "medium", expect=None)
    assert result.exit_code != 0
    assert "kind" in result.output


# --------------------------------------------------------------------------------------------------
# tokenize


def test_tokenize_grid_table_and_file(tmp_path: Path, samples: list[Path]) -> None:
    images = samples[:2]
    out = tmp_path / "tmp" / "x.safetensors"
    out.parent.mkdir()
    text = invoke("tokenize", *images, "-t", "grid", "--out", out).output
    counts = expected_counts("grid", images)
    rows = [line for line in text.splitlines() if "│" in line]
    for image in images:
        row = next((r for r in rows if str(image) in r), None)
        assert row is not None, f"{image} not in the table:\n{text}"
        w, h = vistok.probe_size(image)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert cells[:3] == [str(image), f"{w}x{h}", str(counts[str(image)])], row
    assert "wrote 2 token set(s)" in text

    loaded = vistok.load_tokens(out)
    assert set(loaded) == set(counts)
    for key, tokens in loaded.items():
        assert tokens.is_hard
        assert tokens.values.shape == (counts[key],)
        assert tokens.values.dtype == np.int64
        assert 0 <= tokens.values.min() and tokens.values.max() < tokens.vocab_size


def test_tokenize_patch_with_dim(tmp_path: Path, samples: list[Path]) -> None:
    images = samples[2:4]
    out = tmp_path / "p.safetensors"
    text = invoke("tokenize", *images, "-t", "patch", "-c", "dim=32", "--out", out).output
    counts = expected_counts("patch", images, dim=32)
    loaded = vistok.load_tokens(out)
    assert set(loaded) == set(counts)
    for key, tokens in loaded.items():
        assert not tokens.is_hard
        assert tokens.values.shape == (counts[key], 32)
        assert np.issubdtype(tokens.values.dtype, np.floating)
        assert np.isfinite(tokens.values).all() and np.abs(tokens.values).max() > 0
        assert f"{counts[key]}x32" in text


@pytest.fixture
def bad_corpus(tmp_path: Path, samples: list[Path]) -> tuple[Path, list[Path], dict[str, str]]:
    """A folder with two good images and four bad ones; returns (folder, good, {bad name: reason regex})."""
    folder = tmp_path / "mix"
    folder.mkdir()
    good = [folder / "a-good.jpg", folder / "z-good.jpg"]
    shutil.copy(samples[1], good[0])
    shutil.copy(samples[5], good[1])
    (folder / "empty.jpg").write_bytes(b"")
    data = samples[4].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("meeting notes\nthese are not pixels\n")
    (folder / "noise.jpg").write_bytes(b"\x00\x81" + random.Random(1234).randbytes(4094))
    reasons = {
        "empty.jpg": r"empty",
        "truncated.jpg": r"truncated",
        "notes.png": r"text",
        "noise.jpg": r"not a recogni[sz]ed image|unknown format|corrupt",
    }
    return folder, good, reasons


def test_tokenize_bad_corpus_keeps_going(tmp_path: Path, bad_corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, good, reasons = bad_corpus
    monkeypatch.chdir(tmp_path)  # relative paths keep the table and messages short
    missing = Path("no-such-dir") / "missing.jpg"
    out = Path("tmp") / "mix.safetensors"
    out.parent.mkdir()
    result = invoke("tokenize", folder.name, missing, "-t", "grid", "--out", out, expect=1)
    text = result.output

    good_keys = [str(p.relative_to(tmp_path)) for p in good]
    loaded = vistok.load_tokens(out)
    assert sorted(loaded) == sorted(good_keys)
    counts = expected_counts("grid", [Path(k) for k in good_keys])
    assert {k: len(t) for k, t in loaded.items()} == counts
    for key in good_keys:
        assert key in text
    assert "wrote 2 token set(s)" in text

    errors = flat(result.stderr)
    assert "5 input(s) failed" in errors
    bad_keys = [str(Path(folder.name) / name) for name in reasons] + [str(missing)]
    next_key = "|".join(f" {re.escape(k)}: " for k in bad_keys)
    for name, reason in reasons.items():
        key = str(Path(folder.name) / name)
        match = re.search(rf"{re.escape(key)}: (.+?)(?={next_key}|$)", errors)
        assert match, f"{key} not reported:\n{result.stderr}"
        assert re.search(reason, match.group(1), re.IGNORECASE), f"{key}: unexpected reason {match.group(1)!r}"
    assert re.search(rf"{re.escape(str(missing))}: no such file", errors), result.stderr
    for key in good_keys:
        assert key not in errors


def test_tokenize_unknown_tokenizer_suggests_name(samples: list[Path]) -> None:
    result = invoke("tokenize", samples[0], "-t", "gird", expect=None)
    assert result.exit_code != 0
    assert re.search(r"did you mean\W+grid\b", flat(result.output)), result.output


def test_tokenize_unknown_option_is_named(samples: list[Path]) -> None:
    result = invoke("tokenize", samples[0], "-t", "grid", "-c", "nope=1", expect=None)
    assert result.exit_code != 0
    assert "'nope'" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_tokenize_malformed_option_fails(tmp_path: Path, samples: list[Path]) -> None:
    out = tmp_path / "never.safetensors"
    result = invoke("tokenize", samples[0], "-t", "patch", "-c", "dim", "--out", out, expect=None)
    assert result.exit_code != 0
    assert "KEY=VALUE" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# show


@pytest.mark.parametrize("name", ["grid", "patch"])
def test_show_writes_three_panel_png(tmp_path: Path, samples: list[Path], name: str) -> None:
    out = tmp_path / "tmp" / "s.png"
    out.parent.mkdir()
    text = invoke("show", samples[2], "-t", name, "--out", out).output
    with Image.open(out) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
        picture.load()
    assert height > 300
    assert width > 2 * height
    assert f"{width}x{height}" in text


def test_show_corrupt_file_fails(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "s.png"
    result = invoke("show", bad, "-t", "grid", "--out", out, expect=1)
    assert "broken.jpg" in squash(result.output)
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# fit-codebook and fit-patch


def test_fit_codebook_then_tokenize_with_it(tmp_path: Path, samples: list[Path]) -> None:
    codebook = tmp_path / "cb.safetensors"
    text = invoke("fit-codebook", *samples, "--cells", "8", "--vocab", "16", "--max-side", "64",
                  "--out", codebook).output
    assert codebook.is_file() and codebook.stat().st_size > 0
    assert "6 image(s)" in text

    image, out = samples[0], tmp_path / "t.safetensors"
    invoke("tokenize", image, "-t", "grid", "-c", "cell=8", "-c", "max_side=64",
           "-c", f"codebook={codebook}", "--out", out)
    tokens = vistok.load_tokens(out)[str(image)]
    assert len(tokens) == expected_counts("grid", [image], cell=8, max_side=64)[str(image)]
    assert tokens.values.min() >= 0
    assert tokens.values.max() < 16
    assert tokens.vocab_size == 16


def test_fit_codebook_vocab_too_large_fails(tmp_path: Path, samples: list[Path]) -> None:
    codebook = tmp_path / "cb.safetensors"
    result = invoke("fit-codebook", *samples[:2], "--cells", "8", "--vocab", "100000", "--max-side", "64",
                    "--out", codebook, expect=None)
    assert result.exit_code != 0
    assert "vocab" in result.output
    assert "Traceback" not in result.output
    assert not codebook.exists()


def test_fit_patch_then_tokenize_with_it(tmp_path: Path, samples: list[Path]) -> None:
    weights = tmp_path / "pca.safetensors"
    invoke("fit-patch", *samples, "--patch", "4", "--max-side", "64", "--out", weights)
    assert weights.is_file() and weights.stat().st_size > 0

    images, out = samples[:2], tmp_path / "t.safetensors"
    invoke("tokenize", *images, "-t", "patch", "-c", "patch=4", "-c", "max_side=64",
           "-c", f"weights={weights}", "--out", out)
    counts = expected_counts("patch", images, patch=4, max_side=64)
    loaded = vistok.load_tokens(out)
    assert set(loaded) == set(counts)
    for key, tokens in loaded.items():
        assert tokens.values.shape == (counts[key], 4 * 4 * 3)
        assert np.issubdtype(tokens.values.dtype, np.floating)


# --------------------------------------------------------------------------------------------------
# demo


def test_demo_writes_everything(tmp_path: Path, samples: list[Path]) -> None:
    out = tmp_path / "tmp" / "demo"
    text = invoke("demo", "--out", out).output
    assert str(out.resolve()) in squash(text)

    for name in ("grid", "patch"):
        loaded = vistok.load_tokens(out / f"{name}.safetensors")
        assert sorted(loaded) == sorted(map(str, samples))
    summary = json.loads((out / "summary.json").read_text(),  # strict JSON: no Infinity / NaN constants
                         parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))
    assert len(summary["tokenizers"]) == len(samples)
    assert all(row["patch_psnr"]["768"] is None for row in summary["tokenizers"])  # exact: infinite PSNR -> null
    budget = summary["budget"]
    assert sorted(budget) == sorted(p.name for p in samples)
    for sample in samples:
        size = vistok.probe_size(sample)
        for model, entry in budget[sample.name].items():
            assert entry["image_tokens"] == vistok.count(size, model=model).image_tokens
    assert "qwen2.5-vl-7b-instruct" in flat(text) and (out / "budget-histogram.png").is_file()

    # the pretrained encoders: labels from the ImageNet head, saliency from focus-vit-s14
    encoders = {row["image"]: row for row in summary["encoders"]}
    assert sorted(encoders) == sorted(p.name for p in samples)
    assert encoders["coffee.jpg"]["top_label"] == "espresso" and encoders["coffee.jpg"]["top_score"] > 0.5
    assert 0 < encoders["coffee.jpg"]["salient_tokens"] < encoders["coffee.jpg"]["vit_count"]  # the cup only
    assert all(0 <= row["salient_tokens"] <= row["vit_count"] for row in encoders.values())
    assert "espresso" in flat(text)

    pngs = sorted(out.glob("*.png"))
    for sample in samples:
        mine = [p.name for p in pngs if p.name.startswith(f"{sample.stem}-")]
        assert {f"{sample.stem}-{n}.png" for n in ("grid", "patch", "patch-dims", "efficientnet-lite0",
                                                     "focus-vit-s14")} <= set(mine), mine
    for png in pngs:
        with Image.open(png) as picture:
            assert picture.format == "PNG", png
            picture.load()
            assert picture.width > 0 and picture.height > 0


@pytest.mark.parametrize("command", ["tokenize", "show"])
@pytest.mark.parametrize(
    ("options", "message"),
    [(["-t", "patch", "-c", "dim=9999"], "dim=9999 must lie in 1..768"),
     (["-c", "max_side=4"], "max_side (4) must be at least one cell (16)"),
     (["-c", "cell=8"], "fit-codebook IMAGES --cells 8")],
)
def test_option_errors_are_usage_errors_not_per_image_failures(samples, tmp_path, command, options, message):
    result = invoke(command, samples[0], *options, "--out", tmp_path / "x.out", expect=2)
    assert message in flat(result.output)
    assert not (tmp_path / "x.out").exists()


def test_out_may_name_a_new_folder(samples, tmp_path):
    invoke("tokenize", samples[0], "--out", tmp_path / "a" / "b" / "t.safetensors")
    assert len(vistok.load_tokens(tmp_path / "a" / "b" / "t.safetensors")) == 1
    invoke("show", samples[0], "--out", tmp_path / "c" / "s.png")
    assert Image.open(tmp_path / "c" / "s.png").height > 300


def test_inspect_summarises_a_tokens_file(samples, tmp_path):
    invoke("tokenize", *samples[:2], "-t", "grid", "--out", tmp_path / "t.safetensors")
    result = invoke("inspect", tmp_path / "t.safetensors")
    text = squash(result.output)
    counts = expected_counts("grid", samples[:2])
    assert "2tokenset(s)fromgrid" in text
    for path, n in counts.items():
        assert squash(path) in text and f"{n}int64" in text
    missing = invoke("inspect", tmp_path / "nope.safetensors", expect=1)
    assert "nope.safetensors" in squash(missing.output)


# --------------------------------------------------------------------------------------------------
# classify


def test_classify_imagenet_labels_and_bad_files(samples, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    coffee = next(p for p in samples if p.name == "coffee.jpg")
    result = invoke("classify", coffee, bad, "--top", "2", expect=1)
    text = flat(result.output)
    tokens = vistok.load("efficientnet-lite0").encode(coffee)
    first, second = tokens.meta["label_names"][:2]
    assert f"espresso ({tokens.extras['scores'][0]:.3f})" in text and second.split(",")[0] in text
    assert first == "espresso" and "broken.jpg" in text and "1 input(s) failed" in text


def test_classify_zero_shot_equals_the_python_api(tokenizer_options, samples):
    model = tokenizer_options["clip"]["model"]
    labels = ["cat", "dog", "rocket"]
    result = invoke("classify", samples[0], "-t", "clip", "-c", f"model={model}", "--labels", ",".join(labels),
                    "--template", "a photo of a {} .", "--top", "3")
    ranked = vistok.load("clip", model=model).zero_shot(samples[0], labels, template="a photo of a {} .")
    expected = ", ".join(f"{label} ({p:.3f})" for label, p in ranked)
    assert expected in flat(result.output)


def test_classify_usage_errors(tokenizer_options, samples):
    model = tokenizer_options["clip"]["model"]
    assert "give the labels" in flat(invoke("classify", samples[0], "-t", "clip", "-c", f"model={model}",
                                            expect=2).output)
    assert "fixed label set" in flat(invoke("classify", samples[0], "--labels", "cat", expect=2).output)
    assert "needs a model" in flat(invoke("classify", samples[0], "-t", "clip", expect=2).output)
