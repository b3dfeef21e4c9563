"""User errors on the command line: one line on stderr that names the input, a non-zero exit, no traceback.

Most tests run ``vistok.cli.app`` in-process with Typer's ``CliRunner`` (stdout and stderr kept apart); the
line-wrapping test starts the real program with stderr on a pipe, as a script or CI log would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vistok.cli import app
from vistok.samples import sample_images

IMAGE = sample_images()[0]


def run(*args: object, expect: int) -> tuple[str, str]:
    """``vistok ARGS`` in-process: (stdout, stderr), after checking the exit code and that nothing raised."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    return result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    """The single ``error:`` line of ``stderr``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    return lines[0]


# --------------------------------------------------------------------------------------------------
# -c KEY=VALUE: the option, the value and the type expected


@pytest.mark.parametrize(
    ("options", "wanted"),
    [(["min_pixels=0", "max_pixels=0"], "max_pixels must be at least 1, got 0"),
     (["max_pixels=-1"], "max_pixels must be at least 1, got -1"),
     (["min_pixels=-5"], "min_pixels must be at least 0, got -5"),
     (["max_pixels=abc"], "option max_pixels takes an integer, got 'abc'"),
     (["max_pixels=1.5"], "option max_pixels takes an integer, got '1.5'")],
)
def test_count_bad_model_option_is_one_usage_error(options: list[str], wanted: str) -> None:
    config = [part for option in options for part in ("-c", option)]
    _, stderr = run("count", IMAGE, "-m", "qwen2-vl-7b", *config, expect=2)
    line = one_error_line(stderr)
    assert wanted in line, line


def test_count_good_pixel_bounds_still_count() -> None:
    stdout, _ = run("count", IMAGE, "-m", "qwen2-vl-7b", "-c", "min_pixels=0", "-c", "max_pixels=200704",
                    "--json", expect=0)
    rows = json.loads(stdout)["images"]
    assert [row["image_tokens"] for row in rows] == [256]  # 512x512 -> 448x448 -> 16x16 merged patches


@pytest.mark.parametrize(
    ("tokenizer", "option", "wanted"),
    [("efficientnet-lite0", "batch_size=abc", "tokenizer 'efficientnet-lite0': option batch_size takes an "
                                              "integer, got 'abc'"),
     ("patch", "dim=12x", "tokenizer 'patch': option dim takes an integer or none, got '12x'"),
     ("grid", "max_side=big", "tokenizer 'grid': option max_side takes an integer or none, got 'big'")],
)
def test_tokenizer_option_of_wrong_type_names_option_value_and_type(tokenizer, option, wanted, tmp_path):
    _, stderr = run("tokenize", IMAGE, "-t", tokenizer, "-c", option, "--out", tmp_path / "t.safetensors",
                    expect=2)
    assert one_error_line(stderr) == f"error: {wanted}"
    assert not (tmp_path / "t.safetensors").exists()


def test_text_option_keeps_digits_as_text() -> None:
    from vistok._options import check_options, from_text

    assert from_text("123", str) == "123" and from_text("123", int) == 123 and from_text("none", str | None) is None
    assert from_text("0.5", float | None) == 0.5 and from_text("true", bool) is True and from_text("12") == 12
    from vistok.tokenizers.grid import GridConfig

    check_options("tokenizer 'grid'", GridConfig, {"cell": 8, "max_side": None, "codebook": "cb.safetensors"})
    with pytest.raises(TypeError, match=r"option cell takes an integer, got '8'"):
        check_options("tokenizer 'grid'", GridConfig, {"cell": "8"})


def test_python_api_rejects_wrong_option_types_with_the_same_message() -> None:
    import vistok

    with pytest.raises(TypeError, match=r"tokenizer 'patch': option dim takes an integer or none, got 'abc'"):
        vistok.load("patch", dim="abc")
    with pytest.raises(TypeError, match=r"option max_pixels takes an integer, got 'abc'"):
        vistok.count((512, 512), model="qwen2-vl-7b", max_pixels="abc")
    with pytest.raises(ValueError, match=r"max_pixels must be at least 1, got 0"):
        vistok.count((512, 512), model="qwen2-vl-7b", max_pixels=0)


# --------------------------------------------------------------------------------------------------
# empty inputs


def test_count_empty_folder_fails_with_its_name(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    _, stderr = run("count", tmp_path, "-m", "llava-1.5-7b", expect=1)
    assert f"no images found in {tmp_path}" in one_error_line(stderr)


def test_fit_empty_folder_fails_with_its_name(tmp_path: Path) -> None:
    _, stderr = run("fit", tmp_path, "-m", "llava-1.5-7b", "--budget", "100", expect=1)
    assert f"no images found in {tmp_path}" in one_error_line(stderr)


# --------------------------------------------------------------------------------------------------
# train --batch-size


def test_train_batch_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _, stderr = run("train", "samples-64", "--out", out, "--steps", "1", "--pool", "8",
                    "--batch-size", "100000000", expect=2)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --batch-size 100000000 is more than the 8 training images of samples-64; "
                      "use at most 8"], stderr
    assert not (out / "model.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# stderr that is not a terminal: no folding at 80 columns


def test_error_lines_do_not_wrap_when_stderr_is_a_pipe(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    missing = tmp_path / ("a-folder-with-a-long-name-" * 4) / "and-an-image-with-a-long-name-too.jpg"
    name = "not-a-model-" * 8
    proc = subprocess.run([sys.executable, "-m", "vistok", "count", str(missing), str(IMAGE), "-m", name],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = one_error_line(proc.stderr)
    assert len(line) > 100 and name in line, proc.stderr

    proc = subprocess.run([sys.executable, "-m", "vistok", "count", str(missing), str(IMAGE), "-m", "llava-1.5-7b"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert f"  {missing}: " in proc.stderr, proc.stderr  # the whole path on one line


def test_error_message_with_brackets_is_printed_as_is(tmp_path: Path) -> None:
    _, stderr = run("count", IMAGE, "-m", "[bold]x[/bold]", expect=2)
    assert "'[bold]x[/bold]'" in one_error_line(stderr)


# --------------------------------------------------------------------------------------------------
# strict JSON


def test_json_safe_writes_null_for_infinity_and_nan() -> None:
    from vistok._json import dumps

    text = dumps({"psnr": {768: float("inf"), 8: 31.5}, "nan": float("nan"), "path": Path("a/b"), "size": (3, 4)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "psnr": {"768": None, "8": 31.5}, "nan": None, "path": "a/b", "size": [3, 4]}


VISTOK = str(Path(sys.executable).with_name("vistok"))  # the console script installed beside this Python


@pytest.mark.parametrize(("args", "wanted"), [
    (["count", "a.jpg", "-m", "qwen2-vl", "-c"], "error: Option '-c' requires an argument."),
    (["train", "samples-64", "-t", "fsq", "--levels", "abc", "--out", "x"],
     "error: Invalid value for --levels: expected comma-separated integers like 8,5,5,5, got 'abc' "
     "(see 'vistok train -h')"),
    (["fit", "a.jpg", "-m", "qwen2-vl", "--budget", "0"],
     "error: Invalid value for '--budget': 0 is not in the range x>=1. (see 'vistok fit -h')"),
    (["bogus"], "error: No such command 'bogus'. (see 'vistok -h')"),
])
def test_usage_errors_of_the_installed_command_are_one_line(args: list[str], wanted: str, tmp_path: Path) -> None:
    # the console script (vistok.cli.main), not CliRunner: Typer's boxed panel becomes one error line, exit 2
    proc = subprocess.run([VISTOK, *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.strip().startswith(wanted), proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr


def test_the_installed_command_keeps_exit_codes_and_help(tmp_path: Path) -> None:
    def vistok(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([VISTOK, *args], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)

    assert vistok("--version").returncode == 0
    assert vistok("count", "-h").returncode == 0 and "Usage: vistok count" in vistok("count", "-h").stdout
    assert vistok("count", str(sample_images()[0]), "-m", "llava-1.5-7b", "--json").returncode == 0
    assert vistok("count", "missing.jpg", "-m", "llava-1.5-7b").returncode == 1
    bare = vistok()
    assert bare.returncode == 2 and "Usage: vistok" in bare.stdout + bare.stderr
