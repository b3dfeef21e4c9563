"""One Parquet row per image: how :class:`~vistok.tokens.Tokens` become columns and come back.

Columns: ``key`` (string), ``width``/``height`` (the source image, int32), ``values`` (hard: ``list<int64>`` ids;
soft: ``list<fixed_size_list<float32, D>>``, one vector per token), ``grid``/``base_grid`` (``[rows, cols]`` or
null), and for every other array (``boxes``, ``source``, each extra) a flattened list ``<name>`` with its shape in
``<name>.shape``; extras are named ``extra.<name>``. ``meta`` is the image's own metadata as JSON, without what
every row shares (tokenizer name and config: those live once in the manifest).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from vistok.tokens import Tokens

__all__ = ["to_table", "from_row", "SHARED_META"]

#: Metadata every row of a dataset shares; kept in the manifest, not repeated per row.
SHARED_META = ("tokenizer", "config")


def _flat(name: str, arrays: Sequence[np.ndarray | None]) -> dict[str, Any]:
    import pyarrow as pa

    present = [a for a in arrays if a is not None]
    dtype = np.result_type(*[a.dtype for a in present]) if present else np.float32
    if np.issubdtype(dtype, np.floating):
        dtype = np.float32
    flat = pa.array([None if a is None else np.asarray(a, dtype).reshape(-1) for a in arrays],
                    type=pa.list_(pa.from_numpy_dtype(dtype)))
    shape = pa.array([None if a is None else list(np.shape(a)) for a in arrays], type=pa.list_(pa.int32()))
    return {name: flat, f"{name}.shape": shape}


def _values(tokens: Sequence[Tokens]) -> Any:
    import pyarrow as pa

    hard = tokens[0].is_hard
    if any(t.is_hard != hard for t in tokens):
        raise ValueError("a batch mixes hard and soft tokens")
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int32)
    if hard:
        flat = pa.array(np.concatenate([t.values for t in tokens]).astype(np.int64))
        return pa.ListArray.from_arrays(pa.array(offsets), flat)
    dims = {t.values.shape[1] for t in tokens}
    if len(dims) != 1:
        raise ValueError(f"token vectors of different widths in one batch: {sorted(dims)}")
    dim = dims.pop()
    flat = pa.array(np.concatenate([t.values.astype(np.float32).reshape(-1) for t in tokens]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.FixedSizeListArray.from_arrays(flat, dim))


def to_table(keys: Sequence[str], tokens: Sequence[Tokens], sizes: Sequence[tuple[int, int]]) -> Any:
    """A pyarrow Table with one row per image."""
    import pyarrow as pa

    if not tokens:
        raise ValueError("no tokens to write")
    columns: dict[str, Any] = {
        "key": pa.array(list(keys), type=pa.string()),
        "width": pa.array([int(s[0]) for s in sizes], type=pa.int32()),
        "height": pa.array([int(s[1]) for s in sizes], type=pa.int32()),
        "values": _values(tokens),
        "grid": pa.array([None if t.grid is None else list(t.grid) for t in tokens], type=pa.list_(pa.int32())),
        "base_grid": pa.array([None if t.base_grid is None else list(t.base_grid) for t in tokens],
                              type=pa.list_(pa.int32())),
    }
    columns.update(_flat("boxes", [t.boxes for t in tokens]))
    columns.update(_flat("source", [t.source for t in tokens]))
    for name in sorted({k for t in tokens for k in t.extras}):
        columns.update(_flat(f"extra.{name}", [t.extras.get(name) for t in tokens]))
    columns["meta"] = pa.array([json.dumps({k: v for k, v in t.meta.items() if k not in SHARED_META},
                                           sort_keys=True, default=str) for t in tokens], type=pa.string())
    return pa.table(columns)


def _array(row: dict[str, Any], name: str) -> np.ndarray | None:
    flat = row.get(name)
    if flat is None:
        return None
    return np.asarray(flat).reshape(row[f"{name}.shape"])


def from_row(row: dict[str, Any], shared: dict[str, Any]) -> Tokens:
    """Tokens from one row (as ``Table.to_pylist()`` gives it) and the manifest's shared metadata."""
    values = row["values"]
    array = np.asarray(values, dtype=np.int64) if values and not isinstance(values[0], list) else \
        np.asarray(values, dtype=np.float32)
    if array.size == 0 and shared.get("kind") == "soft":
        array = array.reshape(0, int(shared.get("dim") or 0))
    extras = {name[len("extra."):]: _array(row, name) for name in row
              if name.startswith("extra.") and not name.endswith(".shape") and row[name] is not None}
    meta = {**{k: shared[k] for k in SHARED_META if k in shared}, **json.loads(row["meta"])}
    return Tokens(array, grid=row.get("grid") and tuple(row["grid"]), boxes=_array(row, "boxes"),
                  source=_array(row, "source"), base_grid=row.get("base_grid") and tuple(row["base_grid"]),
                  extras=extras, meta=meta)
