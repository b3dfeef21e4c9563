"""`Tokens`: the one data type every vistok tokenizer returns, and its safetensors file format.

Hard tokens are ``(N,)`` int64 ids, soft tokens are ``(N, D)`` float vectors. The layout travels with
them: a ``grid`` ``(rows, cols)`` when the tokens tile the image, ``boxes`` ``(N, 4)`` (x0, y0, x1, y1
in source pixels) when they are regions, and a ``source`` map that says which base patch each token
stands for. ``source`` follows the ToMe idea of tracking merged patches (Bolya et al., "Token Merging:
Your ViT but Faster", ICLR 2023), stored compactly: ``source[p]`` is the index of the token that now
represents base patch ``p`` of the original ``base_grid``, or ``-1`` where that patch was dropped.

Files are safetensors (tensors) plus a JSON document in the header metadata, so they load with any
safetensors reader. ``FORMAT_VERSION`` is bumped whenever the layout changes; a reader refuses newer
files with a clear message instead of guessing. The metadata also holds a CRC-32 (zlib's, ISO 3309) of
each tensor's bytes and of the JSON document, checked on load, so a damaged file raises instead of
loading changed ids or vectors; files written before checksums were added still load. Hard ids are
checked on load to lie in ``[0, vocab_size)``.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "Tokens", "save_tokens", "load_tokens"]

FORMAT_VERSION = 1
_FORMAT_KEY = "vistok_format"
_DOC_KEY = "vistok"
_CRC_KEY = "vistok_crc32"  # JSON {tensor name: CRC-32 of its bytes, "vistok": CRC-32 of the document}


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
    def save(self, path: str | os.PathLike, *, follow_symlinks: bool = False) -> None:
        """Write these tokens to a safetensors file (see :func:`save_tokens`)."""
        save_tokens(path, [self], follow_symlinks=follow_symlinks)

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


#: safetensors refuses a header (tensor table plus metadata) over 100 MB.
MAX_HEADER_BYTES = 100_000_000


def save_tokens(
    path: str | os.PathLike,
    items: Mapping[str, Tokens] | Sequence[Tokens],
    *,
    inputs: Iterable[str | os.PathLike] = (),
    follow_symlinks: bool = False,
) -> None:
    """Write several ``Tokens`` (keyed by name, e.g. the image path, or by position) to one file.

    Layout: tensors ``"<i>.values"``, ``"<i>.boxes"``, ``"<i>.source"``, ``"<i>.extra.<name>"``; the
    header metadata holds ``vistok_format``, a JSON list with each item's key, grid, base grid and meta,
    and ``vistok_crc32``, the checksums. The file is written safely (:func:`vistok.outputs.write_output`):
    ``path`` must not be one of ``inputs``, a folder, a device or (unless ``follow_symlinks``) a link.
    """
    from safetensors.numpy import save_file

    from vistok.outputs import write_output

    named = list(items.items()) if isinstance(items, Mapping) else [(str(i), t) for i, t in enumerate(items)]
    tensors: dict[str, np.ndarray] = {}
    docs = []
    if len({str(key) for key, _ in named}) < len(named):
        raise ValueError("two items have the same key once written as text (e.g. 1 and '1'); give each a distinct key")
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
            "key": str(key),
            "grid": tokens.grid,
            "base_grid": tokens.base_grid,
            "extras": sorted(tokens.extras),
            "meta": tokens.meta,
        })
    try:
        doc = json.dumps(docs)
    except TypeError as err:
        raise ValueError(f"Tokens.meta must be JSON-serialisable: {err}") from err
    crcs = {name: _crc32(arr) for name, arr in tensors.items()}
    crcs[_DOC_KEY] = zlib.crc32(doc.encode())
    metadata = {_FORMAT_KEY: str(FORMAT_VERSION), _DOC_KEY: doc, _CRC_KEY: json.dumps(crcs)}
    header = sum(len(v) for v in metadata.values()) + 120 * len(tensors)  # each tensor's entry: name, dtype, shape
    if header > MAX_HEADER_BYTES:
        raise ValueError(f"{len(named)} token sets are too many for one Tokens file: its header would take about "
                         f"{header / 1e6:.0f} MB, over safetensors' {MAX_HEADER_BYTES // 1_000_000} MB limit; write a "
                         "dataset instead: `vistok tokenize-dataset INPUT -t NAME --out FOLDER` or "
                         "vistok.datasets.tokenize_dataset (sharded Parquet, read back with vistok.open_dataset)")
    write_output(path, lambda tmp: save_file(tensors, tmp, metadata=metadata),
                 inputs=inputs, follow_symlinks=follow_symlinks)


def _crc32(arr: np.ndarray) -> int:
    """CRC-32 of an array's bytes as safetensors stores them (little-endian, C order)."""
    data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return zlib.crc32(data.reshape(-1).view(np.uint8))  # flat bytes; an empty array is fine too


def load_tokens(path: str | os.PathLike) -> dict[str, Tokens]:
    """Read every ``Tokens`` in a file written by :func:`save_tokens`, keyed as saved.

    Raises ``ValueError`` naming the file (and the tensor or item) for a file that is not a vistok tokens
    file, is damaged (a checksum differs, a tensor is missing, the document is not JSON) or holds hard ids
    outside ``[0, vocab_size)``.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    _check_regular(path)
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
    try:
        version = int(metadata[_FORMAT_KEY])
    except ValueError:
        raise ValueError(f"{path}: damaged header: '{_FORMAT_KEY}' is {metadata[_FORMAT_KEY][:40]!r}, "
                         "not a version number") from None
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written in vistok tokens format {version}, but this vistok reads up to format "
            f"{FORMAT_VERSION}; upgrade vistok (pip install -U vistok) to read it"
        )
    _verify_checksums(path, metadata, tensors)
    try:
        docs = json.loads(metadata[_DOC_KEY])
    except ValueError as err:
        raise ValueError(f"{path}: damaged header: the '{_DOC_KEY}' document is not JSON ({err})") from None
    if not isinstance(docs, list):
        raise ValueError(f"{path}: damaged header: the '{_DOC_KEY}' document is not a list of token sets")
    out: dict[str, Tokens] = {}
    for i, doc in enumerate(docs):
        key, tokens = _item(path, i, doc, tensors)
        if key in out:
            raise ValueError(f"{path}: damaged header: token sets {list(out).index(key)} and {i} have the same key "
                             f"{key!r}; one would hide the other: re-create the file (vistok tokenize --out)")
        out[key] = tokens
    return out


def _check_regular(path: str) -> None:
    """A folder, FIFO or device is refused before it is opened (a FIFO would block the read forever)."""
    import stat

    from vistok.outputs import file_kind

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file; give the .safetensors file written by vistok tokenize "
                                "--out") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path}: is {file_kind(mode)}, not a tokens file; give the .safetensors file written "
                         "by vistok tokenize --out")


def _verify_checksums(path: str, metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> None:
    """Compare every stored CRC-32 with the data; files from before checksums have none to compare."""
    if _CRC_KEY not in metadata:
        return
    try:
        crcs = json.loads(metadata[_CRC_KEY])
        if not isinstance(crcs, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise ValueError(f"{path}: damaged header: the '{_CRC_KEY}' checksums are not readable ({err})") from None
    damaged = "; the file was changed or damaged after it was written: re-create it (vistok tokenize --out)"
    for name, want in crcs.items():
        if name == _DOC_KEY:
            got = zlib.crc32(metadata[_DOC_KEY].encode())
        elif name in tensors:
            got = _crc32(tensors[name])
        else:
            raise ValueError(f"{path}: tensor '{name}' is missing{damaged}")
        if got != want:
            what = "the header document" if name == _DOC_KEY else f"tensor '{name}'"
            raise ValueError(f"{path}: checksum mismatch in {what} (CRC-32 {got:08x}, stored "
                             f"{int(want) & 0xFFFFFFFF:08x}){damaged}")


def _item(path: str, i: int, doc: Any, tensors: dict[str, np.ndarray]) -> tuple[str, Tokens]:
    """Token set ``i`` of a file, every field checked, errors naming the file, the item and the tensor."""

    def tensor(name: str, required: bool = True) -> np.ndarray | None:
        if f"{i}.{name}" not in tensors and required:
            raise ValueError(f"{path}: token set {i} ({label}) has no tensor '{i}.{name}'; the file is "
                             "incomplete: re-create it")
        return tensors.get(f"{i}.{name}")

    if not isinstance(doc, dict) or not {"key", "grid", "base_grid", "extras", "meta"} <= doc.keys():
        raise ValueError(f"{path}: damaged header: entry {i} of the '{_DOC_KEY}' document lacks key, grid, "
                         "base_grid, extras or meta")
    _check_doc(path, i, doc)
    label = repr(doc["key"])
    try:
        tokens = Tokens(
            values=tensor("values"),
            grid=tuple(doc["grid"]) if doc["grid"] is not None else None,
            boxes=tensor("boxes", False),
            source=tensor("source", False),
            base_grid=tuple(doc["base_grid"]) if doc["base_grid"] is not None else None,
            extras={name: tensor(f"extra.{name}") for name in doc["extras"]},
            meta=doc["meta"],
        )
    except (TypeError, ValueError) as err:
        message = str(err)
        raise ValueError(message if message.startswith(path) else f"{path}: token set {label}: {err}") from None
    if tokens.source is not None and not np.issubdtype(tensors[f"{i}.source"].dtype, np.integer):
        raise ValueError(f"{path}: token set {label}: tensor '{i}.source' holds {tensors[f'{i}.source'].dtype}, "
                         "not integer patch indices; the file is damaged: re-create it")
    _check_ids(path, label, tokens)
    return str(doc["key"]), tokens


def _is_count(value: Any) -> bool:
    """A whole number >= 0 as JSON stores it (not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_count(v) for v in value)


def _check_doc(path: str, i: int, doc: dict[str, Any]) -> None:
    """Entry ``i`` of the header document has the types :func:`save_tokens` writes, else a one-line error."""
    problem = None
    meta = doc["meta"]
    if not isinstance(doc["key"], (str, int)) or isinstance(doc["key"], bool):  # int: a Mapping keyed by ints
        problem = f"key is {doc['key']!r:.60}, not a string"
    elif (bad := next((f for f in ("grid", "base_grid") if doc[f] is not None and not _is_pair(doc[f])), None)):
        problem = f"{bad} is {doc[bad]!r:.60}, not two whole numbers (rows, columns)"
    elif not isinstance(doc["extras"], list) or not all(isinstance(e, str) for e in doc["extras"]):
        problem = f"extras is {doc['extras']!r:.60}, not a list of tensor names"
    elif not isinstance(meta, dict):
        problem = f"meta is {meta!r:.60}, not a JSON object"
    elif meta.get("vocab_size") is not None and not _is_count(meta["vocab_size"]):
        problem = f"meta.vocab_size is {meta['vocab_size']!r:.60}, not a whole number"
    elif meta.get("image_size") is not None and not _is_pair(meta["image_size"]):
        problem = f"meta.image_size is {meta['image_size']!r:.60}, not two whole numbers (width, height)"
    if problem:
        raise ValueError(f"{path}: damaged header: entry {i} of the '{_DOC_KEY}' document ({problem}); "
                         "re-create the file (vistok tokenize --out)")


def _check_ids(path: str, label: str, tokens: Tokens) -> None:
    if not tokens.is_hard or not len(tokens):
        return
    low, high = int(tokens.values.min()), int(tokens.values.max())
    vocab = tokens.vocab_size
    if low < 0:
        raise ValueError(f"{path}: token set {label} holds a negative token id ({low}); the file is damaged: "
                         "re-create it")
    if vocab is not None and high >= vocab:
        raise ValueError(f"{path}: token set {label} holds token id {high:,}, outside its vocabulary of "
                         f"{vocab:,} words; the file is damaged: re-create it")
