"""Whole datasets as tokens: :func:`tokenize_dataset` writes sharded Parquet with a manifest (resumable, bad
images quarantined, memory bounded by the batch; local processes or Ray Data), :func:`open_dataset` reads it back
lazily, :func:`collate` pads batches for a ``DataLoader``."""

from vistok.datasets.read import TokenDataset, collate, open_dataset
from vistok.datasets.sources import Source, open_source
from vistok.datasets.write import ENGINES, DatasetError, tokenize_dataset

__all__ = ["tokenize_dataset", "open_dataset", "collate", "TokenDataset", "open_source", "Source", "DatasetError",
           "ENGINES"]
