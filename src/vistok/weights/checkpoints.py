"""Checkpoint files from elsewhere (timm, transformers, open_clip): check that a file is whole before a library
reads it, and read a plain state_dict, so that a truncated or damaged download gives one line naming the file.

What is checked without reading the tensors:

* safetensors: the 8-byte header length and the JSON header must lie inside the file, and the file must hold
  every byte the header's ``data_offsets`` point to (the format: https://github.com/huggingface/safetensors).
* PyTorch's zip format (``torch.save`` since 1.6): the zip's central directory, at the very end of the file,
  must be there and list entries that lie inside the file.
* PyTorch's older pickle format cannot be checked without reading it; its reader's errors (``EOFError``,
  ``UnpicklingError``) are reported as a damaged file instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["WEIGHT_SUFFIXES", "CorruptWeightsError", "check_weights_file", "check_weights_folder",
           "read_state_dict", "unreadable", "file_sha256"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
"""File endings of checkpoints (safetensors and PyTorch)."""

_ADVICE = "download or copy it again"


class CorruptWeightsError(ValueError):
    """A weights file that is cut short or damaged; ``str(err)`` names the file and says what to do."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}; {_ADVICE}")


def _safetensors_problem(path: Path, size: int) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"truncated safetensors file ({size} bytes, shorter than its 8-byte header length)"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"truncated safetensors file: its header needs {8 + length:,} bytes, the file has {size:,}"
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except ValueError:
        return "corrupt safetensors file (its header is not valid JSON)"
    if not isinstance(header, dict):
        return "corrupt safetensors file (its header is not a JSON object)"
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"truncated safetensors file: its tensors need {needed:,} bytes, the file has {size:,}"
    return None


def _zip_problem(path: Path, size: int) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"truncated PyTorch checkpoint: entry {info.filename!r} runs past the end of the file"
    except zipfile.BadZipFile:
        return ("truncated or corrupt PyTorch checkpoint (a zip archive whose central directory, at the end of "
                "the file, is missing or damaged)")
    return None


def check_weights_file(path: str | os.PathLike) -> None:
    """Raise :class:`CorruptWeightsError` when ``path`` (a safetensors or PyTorch checkpoint) is cut short or its
    structure is damaged; reads the header and the zip directory only, never the tensors."""
    file = Path(path)
    size = file.stat().st_size
    if size == 0:
        raise CorruptWeightsError(file, "empty weights file (0 bytes)")
    if file.suffix == ".safetensors":
        problem = _safetensors_problem(file, size)
    else:
        with open(file, "rb") as handle:
            magic = handle.read(4)
        problem = _zip_problem(file, size) if magic == b"PK\x03\x04" else None
    if problem:
        raise CorruptWeightsError(file, problem)


def check_weights_folder(folder: str | os.PathLike) -> None:
    """:func:`check_weights_file` on every checkpoint file directly in ``folder`` (shards included)."""
    for file in sorted(Path(folder).iterdir()):
        if file.suffix in WEIGHT_SUFFIXES and file.is_file():
            check_weights_file(file)


def unreadable(path: str | os.PathLike, err: BaseException) -> ValueError:
    """A one-line error for a weights file a library failed to read: :class:`CorruptWeightsError` when the file
    is cut short or damaged (checked here, or said by the reader's error), else a ValueError quoting the
    reader's first line."""
    try:
        check_weights_file(path)
    except CorruptWeightsError as corrupt:
        return corrupt
    except OSError as os_err:
        return ValueError(f"{os.fspath(path)}: cannot read the weights file ({os_err.strerror or os_err})")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, EOFError) or "unexpected eof" in first.lower():
        return CorruptWeightsError(path, "truncated PyTorch checkpoint (its data ends early)")
    return ValueError(f"{os.fspath(path)}: not a readable PyTorch/safetensors checkpoint (corrupt, or another "
                      f"format: {first[:200]})")


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A ``{name: tensor}`` dict from a safetensors or PyTorch file (only tensors are unpickled). Common wrappers
    (``state_dict``, ``model``...) and DataParallel's ``module.`` prefix are taken off."""
    import torch

    path = Path(path)
    check_weights_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(os.fspath(path), device="cpu")
        else:
            state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error becomes one clear message
        raise unreadable(path, err) from err
    for wrapper in ("state_dict", "model", "state_dict_ema", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{os.fspath(path)}: holds {type(state).__name__}, not a state_dict of tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, hashed once per process for each (path, size, modification time, inode)."""
    st = os.stat(path)
    return _sha256(os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
