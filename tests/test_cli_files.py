"""Files in and out of the ``vistok`` command: what ``--out`` refuses, and inputs checked before a model loads.

Every refusal is one line on stderr with a non-zero exit and no traceback, and it comes before any image is
encoded: the tests make loading a tokenizer fail loudly to prove it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.samples import sample_images

WIDE = {"COLUMNS": "300"}


def invoke(*args: object, expect: int):
    result = CliRunner().invoke(app, [str(a) for a in args], env=WIDE)
    assert result.exit_code == expect, f"exited {result.exit_code}, expected {expect}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for src in sample_images()[:2]:
        paths.append(tmp_path / src.name)
        shutil.copy(src, paths[-1])
    return paths


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a tokenizer fails the test: the command had to stop before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tokenizer was loaded before the inputs and --out were checked")

    import vistok.cli.tokens

    monkeypatch.setattr(vistok.cli.tokens, "load_tokenizer", refuse)
    monkeypatch.setattr(vistok, "load", refuse)


COMMANDS_WITH_OUT = [
    ("tokenize", []),
    ("show", []),
    ("fit-codebook", ["--vocab", "4"]),
    ("fit-patch", []),
    ("fit", ["-m", "qwen2-vl", "--budget", "64"]),
]


@pytest.mark.parametrize(("command", "options"), COMMANDS_WITH_OUT)
def test_out_equal_to_an_input_is_refused(images, command, options, no_model):
    before = images[0].read_bytes()
    result = invoke(command, images[0], *options, "--out", images[0], expect=2)
    assert one_line(result.stderr) == (f"error: --out {images[0]}: is also an input; writing it would overwrite "
                                       "that input: choose another output path")
    assert images[0].read_bytes() == before


@pytest.mark.parametrize(("command", "options", "flag"), [
    *[(c, o, "--out") for c, o in COMMANDS_WITH_OUT if c != "fit"],  # fit's --out may be a folder
    ("count", ["-m", "qwen2-vl"], "--hist"),
])
def test_a_file_output_spelled_as_a_folder_is_refused(images, tmp_path, monkeypatch, command, options, flag, no_model):
    # "out/" names a folder: Path("out/") forgets the slash, and vistok used to write a file called "out"
    monkeypatch.chdir(tmp_path)
    result = invoke(command, images[0], *options, flag, "out/", expect=2)
    assert one_line(result.stderr) == (f"error: {flag} out/: ends with '/', which names a folder; give the name of a "
                                       "file to write in it, e.g. out/NAME")
    assert not (tmp_path / "out").exists()


def test_out_naming_an_input_through_another_path_is_refused(images, tmp_path, monkeypatch, no_model):
    monkeypatch.chdir(tmp_path)
    os.link(images[1].name, "other-name.jpg")
    result = invoke("tokenize", images[0].name, "./", "--out", "other-name.jpg", expect=2)
    assert "other-name.jpg: is also an input" in one_line(result.stderr)


@pytest.mark.parametrize(("command", "options"), COMMANDS_WITH_OUT)
def test_out_symlink_is_refused_unless_followed(images, tmp_path, command, options):
    target = tmp_path / "real.out"
    target.write_text("keep")
    link = tmp_path / ("link.png" if command in ("show", "fit") else "link.safetensors")
    link.symlink_to(target.name)
    result = invoke(command, images[0], *options, "--out", link, expect=2)
    assert f"--out {link}: is a symbolic link (to real.out)" in one_line(result.stderr)
    assert "--follow-symlinks" in result.stderr and target.read_text() == "keep"
    invoke(command, images[0], *options, "--out", link, "--follow-symlinks", expect=0)
    assert link.is_symlink() and target.stat().st_size > 100  # the link kept, its target written


def test_followed_symlink_writes_loadable_tokens(images, tmp_path):
    target = tmp_path / "real.safetensors"
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    invoke("tokenize", *images, "--out", link, "--follow-symlinks", expect=0)
    assert sorted(vistok.load_tokens(target)) == sorted(map(str, images))


def test_out_fifo_and_device_are_refused(images, tmp_path, no_model):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    result = invoke("tokenize", images[0], "--out", fifo, expect=2)
    assert "is a named pipe (FIFO), not a regular file" in one_line(result.stderr)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    if os.geteuid() == 0:  # only root can make a device node; a private one stands in for /dev/null
        node = tmp_path / "null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        result = invoke("show", images[0], "--out", node, expect=2)
        assert "is a character device, not a regular file" in one_line(result.stderr)
        assert stat.S_ISCHR(os.lstat(node).st_mode)


@pytest.mark.parametrize(("where", "message"), [
    ("folder", "is a folder; give the name of a file"),
    ("under-file", "is a file, not a folder"),
    ("proc", "is in /proc, a virtual file system"),
])
@pytest.mark.parametrize("command", ["tokenize", "show", "fit-patch"])
def test_bad_out_place_is_one_line_before_any_work(images, tmp_path, no_model, command, where, message):
    out = {"folder": tmp_path, "under-file": images[0] / "x.out", "proc": Path("/proc/vistok.out")}[where]
    result = invoke(command, images[0], "--out", out, expect=2)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: --out {out}") and message in one_line(result.stderr)


def test_hist_is_checked_before_counting(images, tmp_path):
    result = invoke("count", images[0], "-m", "qwen2-vl", "--hist", tmp_path, expect=2)
    assert one_line(result.stderr).startswith(f"error: --hist {tmp_path}: is a folder")


# -- inputs -----------------------------------------------------------------------------------------------
def test_fifo_input_is_skipped_with_a_reason(images, tmp_path, deadline):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    out = tmp_path / "t.safetensors"
    result = invoke("tokenize", fifo, images[0], "--out", out, expect=1)
    assert list(vistok.load_tokens(out)) == [str(images[0])]
    assert f"{fifo}: not a regular file (a named pipe (FIFO))" in one_line(result.stderr)


def test_fifo_inside_a_folder_is_reported_not_waited_on(images, tmp_path, deadline):
    os.mkfifo(tmp_path / "pipe.png")
    result = invoke("tokenize", tmp_path, expect=1)
    assert "1 input(s) failed" in result.stderr and "pipe.png: not a regular file" in one_line(result.stderr)
    assert all(p.name in one_line(result.stdout) for p in images)


def test_image_without_a_suffix_in_a_folder_is_tokenized(images, tmp_path):
    images[1].rename(tmp_path / "no-suffix")
    (tmp_path / "notes").write_text("not an image")
    out = tmp_path / "t.safetensors"
    invoke("tokenize", tmp_path, "--out", out, expect=0)
    assert sorted(vistok.load_tokens(out)) == sorted([str(images[0]), str(tmp_path / "no-suffix")])


@pytest.mark.parametrize("command", ["tokenize", "classify", "show", "fit-codebook"])
def test_unreadable_inputs_fail_before_the_model_loads(tmp_path, no_model, command, deadline):
    (tmp_path / "text.jpg").write_text("not pixels")
    os.mkfifo(tmp_path / "pipe.png")
    result = invoke(command, tmp_path / "text.jpg", *(["--out", tmp_path / "o"] if command == "show" else []),
                    expect=1)
    assert "text.jpg: this is a text file, not an image" in one_line(result.stderr)
    if command != "show":
        result = invoke(command, tmp_path, expect=1)
        text = one_line(result.stderr)
        assert text.startswith("error: no readable images: 2 input(s) cannot be used")
        assert "pipe.png: not a regular file" in text and "text.jpg: this is a text file" in text


def test_empty_folder_is_an_error(tmp_path, no_model):
    (tmp_path / "empty").mkdir()
    result = invoke("tokenize", tmp_path / "empty", expect=1)
    assert one_line(result.stderr).startswith(f"error: no images found in {tmp_path / 'empty'}")


# -- inspect on damaged tokens files ----------------------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    if how == "bit":
        raw[8 + n + header["0.values"]["data_offsets"][0] + 5] ^= 0x10
    elif how == "header":
        meta = header["__metadata__"]
        meta["vistok"] = meta["vistok"][:-3]  # cut JSON, same length kept with spaces below
        text = json.dumps(header).encode()
        raw = bytearray(len(text).to_bytes(8, "little") + text + raw[8 + n:])
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(("how", "message"), [
    ("bit", "checksum mismatch in tensor '0.values'"),
    ("header", "checksum mismatch in the header document"),
])
def test_inspect_damaged_file_is_one_line(images, tmp_path, how, message):
    out = tmp_path / "t.safetensors"
    invoke("tokenize", images[0], "--out", out, expect=0)
    _damage(out, how)
    result = invoke("inspect", out, expect=1)
    assert result.stderr.count("\n") <= 2 and one_line(result.stderr).startswith(f"error: {out}: {message}")


def test_inspect_ids_outside_the_vocabulary(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    doc = [{"key": "a.jpg", "grid": None, "base_grid": None, "extras": [], "meta": {"vocab_size": 1024}}]
    save_file({"0.values": np.array([1, 280_000_000_000_000])}, tmp_path / "old.safetensors",
              metadata={"vistok_format": "1", "vistok": json.dumps(doc)})
    result = invoke("inspect", tmp_path / "old.safetensors", expect=1)
    assert "holds token id 280,000,000,000,000, outside its vocabulary of 1,024 words" in one_line(result.stderr)
    save_file({"0.other": np.array([1])}, tmp_path / "part.safetensors",
              metadata={"vistok_format": "1", "vistok": json.dumps(doc)})
    result = invoke("inspect", tmp_path / "part.safetensors", expect=1)
    assert "has no tensor '0.values'" in one_line(result.stderr)
