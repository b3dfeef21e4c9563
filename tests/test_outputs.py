"""Safe output files: what vistok refuses to write over, and how it writes (temporary file, then rename)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vistok.outputs import OutputError, check_output, file_kind, write_output
from vistok.tokens import Tokens, load_tokens, save_tokens


def tokens() -> Tokens:
    return Tokens.from_grid(np.array([1, 2, 3, 0]), (2, 2), meta={"vocab_size": 4})


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary files a write could leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_writes_a_new_file_and_replaces_a_regular_one(tmp_path):
    path = tmp_path / "sub" / "t.safetensors"  # the folder is created
    tokens().save(path)
    assert load_tokens(path)["0"].values.tolist() == [1, 2, 3, 0]
    os.chmod(path, 0o640)
    Tokens.from_grid(np.array([3, 3, 3, 3]), (2, 2), meta={"vocab_size": 4}).save(path)
    assert load_tokens(path)["0"].values.tolist() == [3, 3, 3, 3]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # the replaced file's mode is kept
    assert leftovers(path.parent) == []


def test_new_file_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        tokens().save(tmp_path / "t.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "t.safetensors").st_mode) == 0o640


def test_symlink_is_refused_and_left_alone(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target.name)
    with pytest.raises(OutputError, match=r"link\.safetensors: is a symbolic link \(to target\.txt\).*"
                                          r"--follow-symlinks"):
        tokens().save(link)
    assert link.is_symlink() and target.read_text() == "keep me"
    assert leftovers(tmp_path) == []


def test_symlink_followed_on_request_writes_the_target(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "t.safetensors"
    target.write_text("old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    tokens().save(link, follow_symlinks=True)
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link itself is kept
    assert load_tokens(target)["0"].values.tolist() == [1, 2, 3, 0]
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "real" / "new.safetensors")
    save_tokens(dangling, [tokens()], follow_symlinks=True)
    assert (tmp_path / "real" / "new.safetensors").is_file() and dangling.is_symlink()


def test_fifo_is_refused(tmp_path):
    fifo = tmp_path / "out.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match=r"out\.safetensors: is a named pipe \(FIFO\), not a regular file"):
        tokens().save(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="making a device node needs root")
def test_device_node_is_refused_as_root(tmp_path):
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a private copy of /dev/null
    with pytest.raises(OutputError, match=r"null: is a character device, not a regular file"):
        tokens().save(node)
    assert stat.S_ISCHR(os.lstat(node).st_mode)  # still the device, not replaced by a regular file


def test_folder_and_file_in_the_way_are_refused(tmp_path):
    with pytest.raises(OutputError, match=r"is a folder; give the name of a file"):
        tokens().save(tmp_path)
    (tmp_path / "image.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"image\.jpg is a file, not a folder"):
        tokens().save(tmp_path / "image.jpg" / "t.safetensors")
    with pytest.raises(OutputError, match=r"image\.jpg is a file, not a folder"):
        tokens().save(tmp_path / "image.jpg" / "deeper" / "t.safetensors")
    assert (tmp_path / "image.jpg").read_bytes() == b"x"


def test_virtual_file_systems_are_refused():
    with pytest.raises(OutputError, match=r"/proc/t\.safetensors: is in /proc, a virtual file system"):
        tokens().save("/proc/t.safetensors")
    with pytest.raises(OutputError, match=r"is in /sys"):
        check_output("/sys/kernel/t.png")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match=r"cannot create files in .*locked \(permission denied\)"):
            tokens().save(locked / "t.safetensors")
    finally:
        locked.chmod(0o700)


def test_folder_where_files_cannot_be_created_is_refused(tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # what a read-only mount or missing permission does
    with pytest.raises(OutputError, match=r"t\.safetensors: cannot create files in .* \(permission denied\); "
                                          r"choose a writable folder"):
        tokens().save(tmp_path / "t.safetensors")


def test_output_equal_to_an_input_is_refused(tmp_path):
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"jpeg bytes")
    with pytest.raises(OutputError, match=r"cat\.jpg: is also an input; writing it would overwrite that input"):
        save_tokens(image, {str(image): tokens()}, inputs=[image])
    (tmp_path / "hard.jpg").hardlink_to(image)  # same file under another name
    with pytest.raises(OutputError, match=r"hard\.jpg: is also an input \(.*cat\.jpg\)"):
        check_output(tmp_path / "hard.jpg", inputs=[tmp_path / "missing.jpg", image])
    assert image.read_bytes() == b"jpeg bytes"


def test_batch_result_never_overwrites_its_inputs(tmp_path):
    from vistok.batch import BatchResult

    image = tmp_path / "cat.jpg"
    image.write_bytes(b"jpeg bytes")
    result = BatchResult(tokens={str(image): tokens()})
    with pytest.raises(OutputError, match="is also an input"):
        result.save(image)
    assert image.read_bytes() == b"jpeg bytes"


def test_fitted_weights_are_written_safely(tmp_path):
    from vistok.weights import read_weights, write_weights

    link = tmp_path / "codebook.safetensors"
    link.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_weights(link, {"codebook": np.zeros((2, 3), np.float32)}, {"kind": "k"})
    write_weights(tmp_path / "ok.safetensors", {"codebook": np.ones((2, 3), np.float32)}, {"kind": "k"})
    arrays, info = read_weights(tmp_path / "ok.safetensors", "k")
    assert arrays["codebook"].tolist() == [[1, 1, 1], [1, 1, 1]] and info == {"kind": "k"}


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def broken(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_output(path, broken)
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_temporary_file_keeps_the_suffix_for_writers_that_need_it(tmp_path):
    from PIL import Image

    written = write_output(tmp_path / "picture.png", lambda tmp: Image.new("RGB", (3, 2)).save(tmp))
    assert written == tmp_path / "picture.png"
    with Image.open(written) as im:
        assert im.format == "PNG" and im.size == (3, 2)


def test_check_output_creates_nothing(tmp_path):
    assert check_output(tmp_path / "a" / "b" / "t.safetensors") == tmp_path / "a" / "b" / "t.safetensors"
    assert list(tmp_path.iterdir()) == []


def test_file_kind_names():
    assert file_kind(stat.S_IFIFO) == "a named pipe (FIFO)"
    assert file_kind(stat.S_IFSOCK) == "a socket"
    assert file_kind(stat.S_IFBLK) == "a block device"
    assert file_kind(stat.S_IFREG) == "a regular file"


def test_output_error_message_and_pickle():
    import pickle

    err = OutputError("a/b.png", "is a folder")
    assert str(err) == "a/b.png: is a folder" and isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.reason) == ("a/b.png", "is a folder")


def test_save_weights_follows_a_link_only_on_request(tmp_path):
    import vistok
    from vistok.tokenizers.grid import GridConfig, GridTokenizer

    codebook = np.random.default_rng(0).random((4, 16 * 16 * 3), dtype=np.float32)
    tokenizer = GridTokenizer(GridConfig(cell=16), codebook=codebook)
    link = tmp_path / "codebook.safetensors"
    link.symlink_to(tmp_path / "real.safetensors")
    with pytest.raises(OutputError, match="is a symbolic link"):
        tokenizer.save_weights(link)
    tokenizer.save_weights(link, follow_symlinks=True)
    assert link.is_symlink()
    back = vistok.load("grid", codebook=str(tmp_path / "real.safetensors"), cell=16)
    assert np.array_equal(back.codebook, codebook)
