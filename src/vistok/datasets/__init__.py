"""Whole datasets as tokens: :func:`tokenize_dataset` writes sharded Parquet with a manifest (resumable, bad
images quarantined, memory bounded by the batch; local processes or Ray Data), :func:`open_dataset` reads it back
lazily, :func:`collate` pads batches for a ``DataLoader``.

Names load on first use, so that ``vistok count`` can ask :mod:`.sources` whether a path is a dataset without
importing numpy."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vistok.datasets.read import TokenDataset, collate, open_dataset
    from vistok.datasets.sources import Source, open_source
    from vistok.datasets.write import ENGINES, DatasetError, tokenize_dataset

_LAZY = {"TokenDataset": "read", "collate": "read", "open_dataset": "read", "Source": "sources",
         "open_source": "sources", "ENGINES": "write", "DatasetError": "write", "tokenize_dataset": "write"}

__all__ = ["tokenize_dataset", "open_dataset", "collate", "TokenDataset", "open_source", "Source", "DatasetError",
           "ENGINES"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'vistok.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vistok.datasets.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
