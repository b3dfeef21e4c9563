"""Flags every command shares (--version, -h, --json), `vistok fit` over a folder, and a light start-up.

``--json`` prints on stdout the same data a command's table shows, as strict JSON (no ``Infinity``);
messages (``wrote ...``, skipped files) go to stderr so that stdout stays parseable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.samples import sample_images

SAMPLES = sample_images()


def run(*args: object, expect: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def strict_json(text: str):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {text[:200]}"))


def test_import_of_the_cli_loads_no_heavy_library() -> None:
    code = ("import sys, vistok.cli; heavy = ('torch', 'sklearn', 'transformers', 'timm', 'numpy', 'PIL', 'scipy'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_help_loads_no_heavy_library() -> None:
    code = ("import sys; from vistok.cli import app; sys.argv = ['vistok', '--help']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'transformers', 'numpy') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
    assert "count" in proc.stdout


def test_counting_a_jpeg_loads_no_numpy_pillow_or_pydantic(tmp_path) -> None:
    # the count path reads headers in pure Python: its start-up carries none of these imports
    from PIL import Image

    Image.new("RGB", (640, 480)).save(tmp_path / "a.jpg")
    code = ("import sys; from vistok.cli import app\n"
            f"sys.argv = ['vistok', 'count', {str(tmp_path / 'a.jpg')!r}, '-m', 'llava-1.5-7b', '--json']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'pydantic') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "[]", proc.stderr
    assert json.loads(proc.stdout)["summary"][0]["total_tokens"] == 576


def test_version_prints_the_package_version() -> None:
    for flag in ("--version", "-V"):
        assert run(flag).stdout == f"vistok {vistok.__version__}\n"


@pytest.mark.parametrize("command", ["", "list", "tokenize", "inspect", "show", "reducers", "classify", "count",
                                     "fit", "models", "train", "eval-recon", "fit-codebook", "fit-patch", "demo"])
def test_h_is_help_on_every_command(command: str) -> None:
    args = [command] if command else []
    short, long = run(*args, "-h").stdout, run(*args, "--help").stdout
    assert short == long and "Usage: vistok" in short


# --------------------------------------------------------------------------------------------------
# --json: the table's data


def test_list_json() -> None:
    rows = strict_json(run("list", "--json").stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name["grid"]["kind"] == "hard" and by_name["grid"]["decodes"] is True
    assert by_name["patch"]["options"]["patch"] == 16
    assert sorted(by_name) == sorted(vistok.list_tokenizers())


def test_models_and_reducers_json() -> None:
    models = strict_json(run("models", "qwen2-vl*", "--json").stdout)
    assert models and all(row["family"] == "qwen2-vl" for row in models)
    methods = {row["method"]: row for row in strict_json(run("reducers", "--json").stdout)}
    assert sorted(methods) == sorted(vistok.reduce_methods())
    assert methods["tome"]["kind"] == "merge"


def test_tokenize_and_inspect_json(tmp_path: Path) -> None:
    target = tmp_path / "t.safetensors"
    result = run("tokenize", *SAMPLES[:2], "--json", "-o", target)
    data = strict_json(result.stdout)
    assert f"wrote 2 token set(s) to {target}" in result.stderr
    assert [row["image"] for row in data["images"]] == [str(p) for p in SAMPLES[:2]]
    loaded = vistok.load_tokens(target)
    for row in data["images"]:
        tokens = loaded[row["image"]]
        assert row["tokens"] == len(tokens) and row["vocab"] == tokens.vocab_size == 1024
        assert tuple(row["grid"]) == tokens.grid and row["shape"] == list(tokens.values.shape)
    assert data["out"] == str(target) and data["failed"] == {}
    inspected = strict_json(run("inspect", target, "--json").stdout)
    assert inspected["tokenizers"] == ["grid"] and inspected["images"] == data["images"]


def test_count_json_matches_the_python_api() -> None:
    data = strict_json(run("count", *SAMPLES[:3], "-m", "llava-1.5-7b", "-m", "qwen2-vl-7b", "--json").stdout)
    assert data["models"] == ["llava-1.5-7b", "qwen2-vl-7b-instruct"]
    for row in data["images"]:
        assert row["image_tokens"] == vistok.count(Path(row["image"]), model=row["model"]).image_tokens
    assert {row["model"]: row["images"] for row in data["summary"]} == {m: 3 for m in data["models"]}
    summary_only = strict_json(run("count", *SAMPLES[:3], "-m", "llava-1.5-7b", "--summary-only", "--json").stdout)
    assert summary_only["images"] is None and summary_only["summary"][0]["p50"] == 576


def test_count_json_lists_failures_and_exits_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    result = run("count", SAMPLES[0], broken, "-m", "llava-1.5-7b", "--json", expect=1)
    data = strict_json(result.stdout)
    assert list(data["failed"]) == [str(broken)] and len(data["images"]) == 1


# --------------------------------------------------------------------------------------------------
# vistok fit over several images or a folder


def test_fit_folder_gives_one_row_per_image_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = SAMPLES[0].parent
    monkeypatch.chdir(folder)  # short relative paths: the table does not fold them
    rows = [line for line in run("fit", ".", "-m", "qwen2-vl-7b", "--budget", "300").stdout.splitlines()
            if ".jpg" in line]
    assert [row.split()[1] for row in rows] == sorted(p.name for p in SAMPLES)
    assert "1,116" in next(row for row in rows if "hubble.jpg" in row)  # 1000x872 as is
    data = strict_json(run("fit", folder, "-m", "qwen2-vl-7b", "--budget", "300", "--json").stdout)
    assert sorted(Path(row["image"]).name for row in data["images"]) == sorted(p.name for p in SAMPLES)
    for row in data["images"]:
        direct = vistok.fit(Path(row["image"]), "qwen2-vl-7b", 300)
        assert row["image_tokens"] == direct.original.image_tokens
        assert row["fits_already"] == (direct.original.image_tokens <= 300)
        assert (row["resize"] and tuple(row["resize"])) == (direct.resize or None)
        if not row["fits_already"]:
            assert row["resized_tokens"] <= 300


def test_fit_folder_writes_each_resized_image_into_out(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "fitted"
    run("fit", SAMPLES[0].parent, "-m", "qwen2-vl-7b", "--budget", "300", "--out", out)
    data = strict_json(run("fit", SAMPLES[0].parent, "-m", "qwen2-vl-7b", "--budget", "300", "--json").stdout)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in SAMPLES)  # a folder where all fit
    for row in data["images"]:
        written = out / Path(row["image"]).name
        with Image.open(written) as picture:
            assert picture.size == tuple(row["resize"])
        assert vistok.count(written, model="qwen2-vl-7b").image_tokens <= 300


def test_fit_one_image_keeps_the_table_of_ways() -> None:
    text = run("fit", SAMPLES[4], "-m", "qwen2-vl-7b", "--budget", "300").stdout
    assert "as is" in text and "resize" in text and "reduce later" in text
