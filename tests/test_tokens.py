"""Tokens: validation, derived fields, and the exact safetensors round trip."""

import json

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
