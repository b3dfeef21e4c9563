"""Tokens: validation, derived fields, and the exact safetensors round trip."""

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import vistok
from vistok.tokens import FORMAT_VERSION, Tokens, load_tokens, save_tokens


def hard_tokens() -> Tokens:
    ids = np.array([3, 1, 4, 1, 5, 9], dtype=np.int64)
    return Tokens.from_grid(ids, (2, 3), meta={"vocab_size": 16, "tokenizer": "grid", "image_size": [30, 20]})


def soft_tokens() -> Tokens:
    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 30], [1.5, 2.25, 3.0, 4.0]], np.float32)
    return Tokens(
        rng.standard_normal((3, 5)).astype(np.float32),
        boxes=boxes,
        source=np.array([0, 0, 1, -1, 2, 2]),
        base_grid=(2, 3),
        extras={"cls": rng.standard_normal(5).astype(np.float32), "labels": np.array([7, 8, 9])},
        meta={"tokenizer": "test", "nested": {"a": [1, 2]}, "unicode": "chat noir \u00e9"},
    )


def test_hard_fields():
    t = hard_tokens()
    assert t.is_hard and t.dim is None and len(t) == 6
    assert t.vocab_size == 16
    assert t.bits == pytest.approx(6 * 4.0)
    assert t.sizes.tolist() == [1, 1, 1, 1, 1, 1]
    assert t.image_size == (30, 20)
    assert "6 hard, vocab 16, grid 2x3" in repr(t)


def test_soft_fields_and_sizes_from_source():
    t = soft_tokens()
    assert not t.is_hard and t.dim == 5 and t.bits is None and t.vocab_size is None
    # base patches 0,1 -> token 0; 2 -> token 1; 3 dropped; 4,5 -> token 2
    assert t.sizes.tolist() == [2, 1, 2]


@pytest.mark.parametrize("make", [hard_tokens, soft_tokens])
def test_save_load_round_trip_is_exact(tmp_path, make):
    t = make()
    t.save(tmp_path / "t.safetensors")
    back = Tokens.load(tmp_path / "t.safetensors")
    assert back.equals(t)
    assert back.values.dtype == t.values.dtype
    assert np.array_equal(back.values, t.values)  # bit-exact, not approximately equal


def test_many_tokens_in_one_file_keep_their_keys(tmp_path):
    items = {"a/cat.jpg": hard_tokens(), "b/dog.png": soft_tokens()}
    save_tokens(tmp_path / "many.safetensors", items)
    back = load_tokens(tmp_path / "many.safetensors")
    assert list(back) == ["a/cat.jpg", "b/dog.png"]
    assert all(back[k].equals(v) for k, v in items.items())
    with pytest.raises(ValueError, match="holds 2 token sets"):
        Tokens.load(tmp_path / "many.safetensors")


def test_file_is_plain_safetensors_with_json_metadata(tmp_path):
    hard_tokens().save(tmp_path / "t.safetensors")
    tensors = load_file(tmp_path / "t.safetensors")
    assert tensors["0.values"].tolist() == [3, 1, 4, 1, 5, 9]
    from safetensors import safe_open

    with safe_open(tmp_path / "t.safetensors", framework="numpy") as f:
        meta = f.metadata()
    assert meta["vistok_format"] == str(FORMAT_VERSION)
    assert json.loads(meta["vistok"])[0]["grid"] == [2, 3]


def test_newer_format_is_refused_with_upgrade_hint(tmp_path):
    hard_tokens().save(tmp_path / "t.safetensors")
    from safetensors import safe_open

    with safe_open(tmp_path / "t.safetensors", framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["vistok_format"] = str(FORMAT_VERSION + 1)
    save_file(tensors, tmp_path / "future.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"format 2.*reads up to format 1.*upgrade"):
        load_tokens(tmp_path / "future.safetensors")


def test_foreign_and_corrupt_files_are_refused(tmp_path):
    save_file({"x": np.zeros(3, np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not one written by vistok"):
        load_tokens(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="not a vistok tokens file"):
        load_tokens(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_tokens(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"values": np.zeros((2, 2, 2))}, "values must be"),
        ({"values": np.array([0.5, 1.5])}, "ids must be integers"),
        ({"values": np.zeros((2, 3), np.int64)}, "vectors must be floats"),
        ({"values": np.arange(5), "grid": (2, 3)}, "grid"),
        ({"values": np.arange(2), "boxes": np.zeros((3, 4))}, "boxes must be"),
        ({"values": np.arange(2), "source": np.array([0, 2])}, "source entries"),
        ({"values": np.arange(2), "source": np.array([0, 1, 1]), "base_grid": (2, 2)}, "base_grid"),
    ],
)
def test_invalid_tokens_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Tokens(**kwargs)


def test_meta_must_be_json(tmp_path):
    t = Tokens(np.arange(3), meta={"bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        t.save(tmp_path / "t.safetensors")


def test_to_torch_shares_values():
    torch = pytest.importorskip("torch")
    t = soft_tokens()
    tensor = t.to_torch()
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (3, 5)
    assert vistok.Tokens is Tokens


# -- damaged and hostile files ------------------------------------------------------------------------------
def _tensor_offset(path, name: str) -> int:
    """Byte offset in a safetensors file where tensor ``name``'s data starts."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    return 8 + n + header[name]["data_offsets"][0]


def _flip_bit(path, offset: int, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _write_raw(path, tensors: dict, docs, fmt: str = str(FORMAT_VERSION)) -> None:
    """A tokens file as the previous vistok wrote it: no checksums, and whatever tensors and doc we like."""
    save_file(tensors, path, metadata={"vistok_format": fmt,
                                       "vistok": docs if isinstance(docs, str) else json.dumps(docs)})


def _doc(key="img.jpg", meta=None, extras=()) -> dict:
    return {"key": key, "grid": None, "base_grid": None, "extras": list(extras),
            "meta": {"vocab_size": 1024, "tokenizer": "grid"} if meta is None else meta}


@pytest.mark.parametrize(("make", "tensor", "bit"), [(hard_tokens, "0.values", 3), (soft_tokens, "0.values", 7),
                                                     (soft_tokens, "0.extra.cls", 0), (soft_tokens, "0.boxes", 5)])
def test_flipped_bit_is_caught_naming_file_and_tensor(tmp_path, make, tensor, bit):
    path = tmp_path / "t.safetensors"
    make().save(path)
    _flip_bit(path, _tensor_offset(path, tensor) + 2, bit)
    with pytest.raises(ValueError, match=rf"t\.safetensors: checksum mismatch in tensor '{re.escape(tensor)}'"):
        load_tokens(path)


def test_flipped_bit_in_header_document_is_caught(tmp_path):
    path = tmp_path / "t.safetensors"
    hard_tokens().save(path)
    raw = path.read_bytes()
    at = raw.index(b'\\"tokenizer\\": \\"grid\\"') + len(b'\\"tokenizer\\": \\"') + 1  # the 'r' of grid
    _flip_bit(path, at, 0)  # 'r' -> 's': still valid JSON, silently different without the checksum
    with pytest.raises(ValueError, match="checksum mismatch in the header document"):
        load_tokens(path)


def test_checksums_are_stored_per_tensor(tmp_path):
    from safetensors import safe_open

    soft_tokens().save(tmp_path / "t.safetensors")
    with safe_open(tmp_path / "t.safetensors", framework="numpy") as f:
        crcs = json.loads(f.metadata()["vistok_crc32"])
        names = set(f.keys())
    assert set(crcs) == names | {"vistok"}
    import zlib

    values = soft_tokens().values
    assert crcs["0.values"] == zlib.crc32(values.tobytes())


def test_files_without_checksums_still_load(tmp_path):
    ids = np.array([5, 1023, 0], np.int64)
    _write_raw(tmp_path / "old.safetensors", {"0.values": ids}, [_doc()])
    back = Tokens.load(tmp_path / "old.safetensors")
    assert back.values.tolist() == [5, 1023, 0] and back.vocab_size == 1024


@pytest.mark.parametrize(("ids", "message"), [
    ([7, 280_000_000_000_000, 3], r"token id 280,000,000,000,000, outside its vocabulary of 1,024 words"),
    ([7, 1024], r"token id 1,024, outside its vocabulary of 1,024 words"),
    ([7, -5], r"a negative token id \(-5\)"),
])
def test_ids_outside_the_vocabulary_are_refused(tmp_path, ids, message):
    _write_raw(tmp_path / "old.safetensors", {"0.values": np.array(ids, np.int64)}, [_doc()])
    with pytest.raises(ValueError, match=r"old\.safetensors: token set 'img.jpg' holds " + message):
        load_tokens(tmp_path / "old.safetensors")
    # a file with valid checksums over bad ids (a bug, not damage) is refused the same way
    Tokens(np.array(ids, np.int64), meta={"vocab_size": 1024}).save(tmp_path / "new.safetensors")
    with pytest.raises(ValueError, match=r"new\.safetensors: token set '0' holds " + message):
        load_tokens(tmp_path / "new.safetensors")


def test_missing_tensors_are_named(tmp_path):
    _write_raw(tmp_path / "a.safetensors", {"0.other": np.zeros(2, np.int64)}, [_doc()])
    with pytest.raises(ValueError, match=r"a\.safetensors: token set 0 \('img.jpg'\) has no tensor '0.values'"):
        load_tokens(tmp_path / "a.safetensors")
    _write_raw(tmp_path / "b.safetensors", {"0.values": np.zeros(2, np.int64)}, [_doc(extras=["cls"])])
    with pytest.raises(ValueError, match=r"b\.safetensors: .* has no tensor '0.extra.cls'"):
        load_tokens(tmp_path / "b.safetensors")
    # a tensor removed from a file with checksums
    path = tmp_path / "c.safetensors"
    soft_tokens().save(path)
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys() if k != "0.boxes"}
    save_file(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match=r"c\.safetensors: tensor '0.boxes' is missing"):
        load_tokens(path)


@pytest.mark.parametrize(("docs", "fmt", "message"), [
    ("{not json", "1", r"the 'vistok' document is not JSON"),
    ('{"a": 1}', "1", r"the 'vistok' document is not a list of token sets"),
    ('[{"key": "x"}]', "1", r"entry 0 of the 'vistok' document lacks"),
    ("[]", "one", r"'vistok_format' is 'one', not a version number"),
])
def test_broken_header_names_the_file(tmp_path, docs, fmt, message):
    _write_raw(tmp_path / "h.safetensors", {"0.values": np.zeros(2, np.int64)}, docs, fmt)
    with pytest.raises(ValueError, match=r"h\.safetensors: damaged header: " + message):
        load_tokens(tmp_path / "h.safetensors")


def test_inconsistent_layout_names_the_file(tmp_path):
    doc = {**_doc(), "grid": [2, 2]}
    _write_raw(tmp_path / "g.safetensors", {"0.values": np.zeros(3, np.int64)}, [doc])
    with pytest.raises(ValueError, match=r"g\.safetensors: token set 'img.jpg': grid \(2, 2\) holds 4 tokens"):
        load_tokens(tmp_path / "g.safetensors")


@pytest.mark.parametrize(("change", "message"), [
    ({"meta": {"vocab_size": "abc"}}, r"meta\.vocab_size is 'abc', not a whole number"),
    ({"meta": {"vocab_size": 1e400}}, r"meta\.vocab_size is inf, not a whole number"),
    ({"meta": {"vocab_size": [1]}}, r"meta\.vocab_size is \[1\], not a whole number"),
    ({"meta": "x"}, r"meta is 'x', not a JSON object"),
    ({"meta": {"image_size": "xx"}}, r"meta\.image_size is 'xx', not two whole numbers"),
    ({"grid": [-2, -2]}, r"grid is \[-2, -2\], not two whole numbers"),
    ({"grid": [2.5, 2]}, r"grid is \[2\.5, 2\], not two whole numbers"),
    ({"grid": [4]}, r"grid is \[4\], not two whole numbers"),
    ({"base_grid": ["2", "2"]}, r"base_grid is \['2', '2'\], not two whole numbers"),
    ({"key": {"a": 1}}, r"key is \{'a': 1\}, not a string"),
    ({"extras": None}, r"extras is None, not a list of tensor names"),
])
def test_header_fields_of_the_wrong_type_name_the_file(tmp_path, change, message):
    # checksums cannot help here: a buggy or hostile writer can store a wrong header with right checksums
    _write_raw(tmp_path / "h.safetensors", {"0.values": np.zeros(4, np.int64)}, [{**_doc(), **change}])
    with pytest.raises(ValueError, match=r"h\.safetensors: damaged header: entry 0 of the 'vistok' document \("
                                         + message):
        load_tokens(tmp_path / "h.safetensors")


def test_duplicate_keys_and_float_source_are_refused(tmp_path):
    ids = np.zeros(2, np.int64)
    _write_raw(tmp_path / "d.safetensors", {"0.values": ids, "1.values": ids}, [_doc(), _doc()])
    with pytest.raises(ValueError, match=r"d\.safetensors: damaged header: token sets 0 and 1 have the same key "
                                         r"'img\.jpg'"):
        load_tokens(tmp_path / "d.safetensors")
    doc = {**_doc(), "base_grid": [1, 2]}
    _write_raw(tmp_path / "s.safetensors", {"0.values": ids, "0.source": np.array([0.0, 1.7])}, [doc])
    with pytest.raises(ValueError, match=r"s\.safetensors: token set 'img\.jpg': tensor '0\.source' holds float64"):
        load_tokens(tmp_path / "s.safetensors")


def test_keys_are_written_as_text_and_must_stay_distinct(tmp_path):
    save_tokens(tmp_path / "k.safetensors", {7: hard_tokens()})
    assert list(load_tokens(tmp_path / "k.safetensors")) == ["7"]
    with pytest.raises(ValueError, match="same key once written as text"):
        save_tokens(tmp_path / "k2.safetensors", {1: hard_tokens(), "1": hard_tokens()})
    assert not (tmp_path / "k2.safetensors").exists()


def test_folder_fifo_and_missing_file_are_named_without_blocking(tmp_path):
    import os

    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match=r"dir\.safetensors: is a folder, not a tokens file"):
        load_tokens(tmp_path / "dir.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors")  # opening it for reading would block forever
    with pytest.raises(ValueError, match=r"pipe\.safetensors: is a named pipe \(FIFO\), not a tokens file"):
        load_tokens(tmp_path / "pipe.safetensors")
    with pytest.raises(FileNotFoundError, match=r"gone\.safetensors: no such file; give the \.safetensors file"):
        load_tokens(tmp_path / "gone.safetensors")
