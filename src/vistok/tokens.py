"""`Tokens`: the one data type every vistok tokenizer returns, and its safetensors file format.

Hard tokens are ``(N,)`` int64 ids, soft tokens are ``(N, D)`` float vectors. The layout travels with
them: a ``grid`` ``(rows, cols)`` when the tokens tile the image, ``boxes`` ``(N, 4)`` (x0, y0, x1, y1
in source pixels) when they are regions, and a ``source`` map that says which base patch each token
stands for. ``source`` follows the ToMe idea of tracking merged patches (Bolya et al., "Token Merging:
Your ViT but Faster", ICLR 2023), stored compactly: ``source[p]`` is the index of the token that now
represents base patch ``p`` of the original ``base_grid``, or ``-1`` where that patch was dropped.

Files are safetensors (tensors) plus a JSON document in the header metadata, so they load with any
safetensors reader. ``FORMAT_VERSION`` is bumped whenever the layout changes; a reader refuses newer
files with a clear message instead of guessing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "Tokens", "save_tokens", "load_tokens"]

FORMAT_VERSION = 1
_FORMAT_KEY = "vistok_format"
_DOC_KEY = "vistok"


@dataclass(eq=False)
class Tokens:
    """Tokens of one image.

    Shapes: ``values`` is ``(N,)`` int64 (hard) or ``(N, D)`` float (soft); ``boxes`` ``(N, 4)`` float;
    ``source`` ``(P,)`` int64 over the ``P = rows * cols`` base patches of ``base_grid``; every extra is an
    array (for example ``cls`` ``(D,)`` or ``scores`` ``(N,)``). ``meta`` is JSON-serialisable.
    """

    values: np.ndarray
    grid: tuple[int, int] | None = None
    boxes: np.ndarray | None = None
    source: np.ndarray | None = None
    base_grid: tuple[int, int] | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.ndim == 1:
            if not np.issubdtype(values.dtype, np.integer):
                raise ValueError(f"hard token ids must be integers, got dtype {values.dtype}")
            values = values.astype(np.int64, copy=False)
        elif values.ndim == 2:
            if not np.issubdtype(values.dtype, np.floating):
                raise ValueError(f"soft token vectors must be floats, got dtype {values.dtype}")
        else:
            raise ValueError(f"values must be (N,) ids or (N, D) vectors, got shape {values.shape}")
        self.values = values
        n = len(values)
        if self.grid is not None:
            self.grid = (int(self.grid[0]), int(self.grid[1]))
            if self.grid[0] * self.grid[1] != n:
                raise ValueError(f"grid {self.grid} holds {self.grid[0] * self.grid[1]} tokens, values hold {n}")
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float32)
            if self.boxes.shape != (n, 4):
                raise ValueError(f"boxes must be ({n}, 4), got {self.boxes.shape}")
        if self.base_grid is not None:
            self.base_grid = (int(self.base_grid[0]), int(self.base_grid[1]))
        if self.source is not None:
            self.source = np.asarray(self.source, dtype=np.int64)
            if self.source.ndim != 1:
                raise ValueError(f"source must be (P,), got {self.source.shape}")
            if self.base_grid is not None and self.base_grid[0] * self.base_grid[1] != len(self.source):
                raise ValueError(f"source has {len(self.source)} entries, base_grid {self.base_grid} needs "
                                 f"{self.base_grid[0] * self.base_grid[1]}")
            if len(self.source) and (self.source.max() >= n or self.source.min() < -1):
                raise ValueError(f"source entries must lie in [-1, {n - 1}]")
        self.extras = {str(k): np.asarray(v) for k, v in self.extras.items()}
        self.meta = dict(self.meta)

    @classmethod
    def from_grid(cls, values: np.ndarray, grid: tuple[int, int], **kwargs: Any) -> Tokens:
        """Tokens that tile the image one per cell: the source map is the identity over the grid."""
        n = int(grid[0]) * int(grid[1])
        return cls(values, grid=grid, source=np.arange(n), base_grid=grid, **kwargs)

    # -- what kind of tokens ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.values)

    @property
    def is_hard(self) -> bool:
        """True for discrete ids, False for continuous vectors."""
        return self.values.ndim == 1

    @property
    def dim(self) -> int | None:
        """Vector size of soft tokens, None for hard tokens."""
        return None if self.is_hard else int(self.values.shape[1])

    @property
    def vocab_size(self) -> int | None:
        """Codebook size of hard tokens (from ``meta['vocab_size']``), None when unknown or soft."""
        v = self.meta.get("vocab_size")
        return int(v) if v is not None and self.is_hard else None

    @property
    def bits(self) -> float | None:
        """Information size of hard tokens: ``N * log2(vocab_size)`` bits; None for soft tokens."""
        vocab = self.vocab_size
        return None if vocab is None else len(self) * float(np.log2(max(vocab, 2)))

    @property
    def sizes(self) -> np.ndarray | None:
        """How many base patches each token stands for (``(N,)``), derived from ``source``."""
        if self.source is None:
            return None
        kept = self.source[self.source >= 0]
        return np.bincount(kept, minlength=len(self)).astype(np.int64)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the source image, as recorded by the tokenizer."""
        size = self.meta.get("image_size")
        return (int(size[0]), int(size[1])) if size is not None else None

    def to_torch(self) -> Any:
        """``values`` as a torch tensor (shares memory)."""
        import torch

        return torch.from_numpy(self.values)

    def equals(self, other: Tokens, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
        """Equality of every array, layout field and meta entry: exact by default; with ``rtol``/``atol``,
        float arrays may differ as ``numpy.allclose`` allows (encoder outputs of one image can differ in the
        last bits between batch sizes). Integer arrays (ids, labels) are always compared exactly."""

        def same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if (rtol or atol) and np.issubdtype(a.dtype, np.floating):
                return bool(np.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))
            return bool(np.array_equal(a, b))

        return (
            same(self.values, other.values)
            and self.grid == other.grid
            and same(self.boxes, other.boxes)
            and same(self.source, other.source)
            and self.base_grid == other.base_grid
            and self.extras.keys() == other.extras.keys()
            and all(same(v, other.extras[k]) for k, v in self.extras.items())
            and _jsonable(self.meta) == _jsonable(other.meta)
        )

    def __repr__(self) -> str:
        kind = f"hard, vocab {self.vocab_size}" if self.is_hard else f"soft, dim {self.dim}"
        layout = f", grid {self.grid[0]}x{self.grid[1]}" if self.grid else ""
        boxes = ", boxes" if self.boxes is not None else ""
        extras = f", extras {sorted(self.extras)}" if self.extras else ""
        name = self.meta.get("tokenizer", "?")
        return f"Tokens({len(self)} {kind}{layout}{boxes}{extras}, tokenizer={name!r})"

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write these tokens to a safetensors file (see :func:`save_tokens`)."""
        save_tokens(path, [self])

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokens:
        """Read a file holding exactly one ``Tokens``."""
        items = load_tokens(path)
        if len(items) != 1:
            raise ValueError(f"{path}: holds {len(items)} token sets; use vistok.load_tokens() to read them all")
        return next(iter(items.values()))


def _jsonable(value: Any) -> Any:
    """Round-trip a value through JSON so that tuples and lists compare equal."""
    return json.loads(json.dumps(value))


def save_tokens(path: str | os.PathLike, items: Mapping[str, Tokens] | Sequence[Tokens]) -> None:
    """Write several ``Tokens`` (keyed by name, e.g. the image path, or by position) to one file.

    Layout: tensors ``"<i>.values"``, ``"<i>.boxes"``, ``"<i>.source"``, ``"<i>.extra.<name>"``; the
    header metadata holds ``vistok_format`` and a JSON list with each item's key, grid, base grid and meta.
    """
    from safetensors.numpy import save_file

    named = list(items.items()) if isinstance(items, Mapping) else [(str(i), t) for i, t in enumerate(items)]
    tensors: dict[str, np.ndarray] = {}
    docs = []
    for i, (key, tokens) in enumerate(named):
        if not isinstance(tokens, Tokens):
            raise TypeError(f"item {key!r} is {type(tokens).__name__}, expected vistok.Tokens")
        tensors[f"{i}.values"] = np.ascontiguousarray(tokens.values)
        if tokens.boxes is not None:
            tensors[f"{i}.boxes"] = np.ascontiguousarray(tokens.boxes)
        if tokens.source is not None:
            tensors[f"{i}.source"] = np.ascontiguousarray(tokens.source)
        for name, arr in tokens.extras.items():
            tensors[f"{i}.extra.{name}"] = np.ascontiguousarray(arr)
        docs.append({
            "key": key,
            "grid": tokens.grid,
            "base_grid": tokens.base_grid,
            "extras": sorted(tokens.extras),
            "meta": tokens.meta,
        })
    try:
        doc = json.dumps(docs)
    except TypeError as err:
        raise ValueError(f"Tokens.meta must be JSON-serialisable: {err}") from err
    save_file(tensors, os.fspath(path), metadata={_FORMAT_KEY: str(FORMAT_VERSION), _DOC_KEY: doc})


def load_tokens(path: str | os.PathLike) -> dict[str, Tokens]:
    """Read every ``Tokens`` in a file written by :func:`save_tokens`, keyed as saved."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a vistok tokens file ({err})") from err
    if _FORMAT_KEY not in metadata or _DOC_KEY not in metadata:
        raise ValueError(f"{path}: a safetensors file, but not one written by vistok (no '{_FORMAT_KEY}' metadata)")
    version = int(metadata[_FORMAT_KEY])
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written in vistok tokens format {version}, but this vistok reads up to format "
            f"{FORMAT_VERSION}; upgrade vistok (pip install -U vistok) to read it"
        )
    out: dict[str, Tokens] = {}
    for i, doc in enumerate(json.loads(metadata[_DOC_KEY])):
        out[doc["key"]] = Tokens(
            values=tensors[f"{i}.values"],
            grid=tuple(doc["grid"]) if doc["grid"] is not None else None,
            boxes=tensors.get(f"{i}.boxes"),
            source=tensors.get(f"{i}.source"),
            base_grid=tuple(doc["base_grid"]) if doc["base_grid"] is not None else None,
            extras={name: tensors[f"{i}.extra.{name}"] for name in doc["extras"]},
            meta=doc["meta"],
        )
    return out
