"""Reading a tokens dataset back: :func:`open_dataset` gives a lazy, indexable view (a torch ``Dataset`` when
torch is installed) and :func:`collate` pads a batch and returns its attention mask.

Only the ``key`` column is read up front (for lookups by key); a row is read when it is asked for, one row group
at a time, and the last row group read is kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vistok.datasets.rows import from_row
from vistok.datasets.write import FORMAT, MANIFEST
from vistok.tokens import Tokens

__all__ = ["TokenDataset", "open_dataset", "collate"]


class TokenDataset:
    """The rows of a dataset written by :func:`vistok.datasets.tokenize_dataset`: ``len(ds)``, ``ds[i]`` and
    ``ds.get(key)`` give :class:`~vistok.tokens.Tokens`; ``ds.keys`` lists the keys in order."""

    def __init__(self, folder: str | Path) -> None:
        import pyarrow.parquet as pq

        self.folder = Path(folder).expanduser()
        file = self.folder / MANIFEST
        if not file.is_file():
            raise FileNotFoundError(f"{self.folder}: no {MANIFEST}; pass a folder written by vistok tokenize-dataset")
        self.manifest = json.loads(file.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{file}: not a vistok tokens dataset (format {FORMAT!r} expected)")
        if not self.manifest.get("complete"):
            raise ValueError(f"{self.folder}: the run that writes it has not finished; rerun it with --resume")
        self._files: list[Any] = []
        self._starts: list[int] = []
        self.keys: list[str] = []
        for shard in self.manifest["shards"]:
            if not shard["file"]:
                continue
            handle = pq.ParquetFile(str(self.folder / shard["file"]))
            self._starts.append(len(self.keys))
            self._files.append(handle)
            self.keys.extend(handle.read(columns=["key"]).column("key").to_pylist())
        self._index = {k: i for i, k in enumerate(self.keys)}
        self._shared = {"tokenizer": self.manifest["tokenizer"], "config": self.manifest.get("config"),
                        "kind": self.manifest.get("kind"), "dim": self.manifest.get("dim")}
        self._cache: tuple[tuple[int, int], list[dict[str, Any]]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def _locate(self, index: int) -> tuple[int, int, int]:
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = index - self._starts[shard]
        meta = self._files[shard].metadata
        group, offset = 0, row
        while offset >= meta.row_group(group).num_rows:
            offset -= meta.row_group(group).num_rows
            group += 1
        return shard, group, offset

    def __getitem__(self, index: int) -> Tokens:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an integer, got {type(index).__name__}; use .get(key) for keys")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} rows")
        shard, group, offset = self._locate(int(index) % n)
        if self._cache is None or self._cache[0] != (shard, group):
            self._cache = ((shard, group), self._files[shard].read_row_group(group).to_pylist())
        return from_row(self._cache[1][offset], self._shared)

    def get(self, key: str) -> Tokens:
        """The Tokens of ``key``; KeyError when it is not in the dataset (quarantined or never there)."""
        if key not in self._index:
            raise KeyError(f"{key!r} is not in {self.folder} (see its _quarantine.jsonl for images that failed)")
        return self[self._index[key]]

    def __iter__(self) -> Any:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return (f"TokenDataset({len(self)} rows, tokenizer={self.manifest['tokenizer']!r}, "
                f"{len(self._files)} shard(s), {self.manifest.get('quarantined', 0)} quarantined)")


def open_dataset(folder: str | Path) -> Any:
    """A lazy :class:`TokenDataset` over ``folder``; with torch installed it is also a ``torch.utils.data.Dataset``
    (use ``collate_fn=vistok.datasets.collate`` in a ``DataLoader``)."""
    try:
        from torch.utils.data import Dataset
    except ImportError:
        return TokenDataset(folder)

    class TorchTokenDataset(TokenDataset, Dataset):  # type: ignore[misc]
        pass

    return TorchTokenDataset(folder)


def collate(batch: list[Tokens]) -> dict[str, Any]:
    """Pad a list of Tokens to the longest: ``values`` ``(B, N)`` int64 (padded with 0) or ``(B, N, D)`` float32
    (zeros), ``attention_mask`` ``(B, N)`` bool (True on real tokens), ``lengths`` ``(B,)``; torch tensors."""
    import torch

    if not batch:
        raise ValueError("collate needs at least one Tokens")
    longest = max(len(t) for t in batch)
    hard = batch[0].is_hard
    if any(t.is_hard != hard for t in batch):
        raise ValueError("a batch mixes hard and soft tokens")
    if hard:
        values = torch.zeros(len(batch), longest, dtype=torch.int64)
    else:
        values = torch.zeros(len(batch), longest, batch[0].values.shape[1], dtype=torch.float32)
    mask = torch.zeros(len(batch), longest, dtype=torch.bool)
    for i, t in enumerate(batch):
        values[i, :len(t)] = torch.from_numpy(np.ascontiguousarray(t.values))
        mask[i, :len(t)] = True
    return {"values": values, "attention_mask": mask, "lengths": mask.sum(1)}
