"""Where a dataset's images come from. Each source lists its keys up front (cheap: names, not pixels) in a fixed
order, and reads any range of them on its own, so shards can be encoded by separate workers and redone alone.

- a folder (searched recursively) or a glob of image files: the key is the path relative to the folder;
- WebDataset tar shards (``*.tar``, a folder of them, or a glob): samples grouped by the part of the member name
  before the first dot, the first member with an image extension is the image (Aizman et al., WebDataset format);
  the key is ``TAR/KEY``;
- a Parquet file or folder with an image column (raw encoded bytes, or a ``{bytes, path}`` struct as Hugging Face
  ``datasets`` writes images): the key is the ``key`` / ``__key__`` / ``id`` column when there is one, else the row;
- a Hugging Face ``datasets`` folder written by ``save_to_disk``, read with ``datasets.load_from_disk``.
"""

from __future__ import annotations

import glob as globbing
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Source", "open_source", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
_KEY_COLUMNS = ("key", "__key__", "id")
_IMAGE_COLUMNS = ("image", "img", "jpg", "png", "image_bytes")


@dataclass
class Source:
    """Keys in order and a reader for any of them: ``read(indices)`` gives encoded bytes per index."""

    kind: str
    root: str
    keys: list[str]
    _refs: list[Any] = field(repr=False)
    column: str | None = None
    _opened: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.keys)

    def name_of(self, index: int) -> str | None:
        """What errors call image ``index``: its path for a folder (whose bytes carry no name), else None."""
        return str(Path(self.root) / self.keys[index]) if self.kind == "folder" else None

    def portable(self) -> Source:
        """This source without its opened table, small enough to send to a worker process."""
        return Source(self.kind, self.root, self.keys, self._refs, self.column)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": self.root, "images": len(self.keys), "column": self.column}

    def read(self, indices: Sequence[int]) -> list[Any]:
        """The encoded image bytes for each index; an unreadable entry becomes the exception that explains it,
        so one bad item never stops the others. Files are read once here: probing and decoding then work in
        memory instead of opening each file three times."""
        if self.kind == "folder":
            out = []
            for i in indices:
                try:
                    out.append((Path(self.root) / self.keys[i]).read_bytes())
                except OSError as err:
                    out.append(err)
            return out
        if self.kind == "webdataset":
            out: list[Any] = []
            opened: dict[str, tarfile.TarFile] = {}
            try:
                for i in indices:
                    tar_path, member = self._refs[i]
                    try:
                        tar = opened.get(tar_path) or opened.setdefault(tar_path, tarfile.open(tar_path))
                        handle = tar.extractfile(member)
                        out.append(handle.read() if handle else ValueError(f"{member}: not a regular file"))
                    except (OSError, tarfile.TarError) as err:
                        out.append(err)
            finally:
                for tar in opened.values():
                    tar.close()
            return out
        return self._read_table(indices)

    def _table(self) -> Any:
        """The opened table, once per Source (a worker reads many batches from it)."""
        if self._opened is None:
            if self.kind == "hf":
                from datasets import Image, load_from_disk

                self._opened = load_from_disk(self.root).cast_column(self.column, Image(decode=False))
            else:
                import pyarrow.dataset as ds

                self._opened = ds.dataset(self.root, format="parquet")
        return self._opened

    def _read_table(self, indices: Sequence[int]) -> list[Any]:
        if self.kind == "hf":
            items = self._table().select(list(indices))[self.column]
        else:
            items = self._table().take(list(indices), columns=[self.column]).column(self.column).to_pylist()
        return [_payload(item, self.root) for item in items]


def _payload(item: Any, root: str) -> Any:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, dict):
        if item.get("bytes"):
            return bytes(item["bytes"])
        if item.get("path"):
            path = Path(item["path"])
            return path if path.is_absolute() else Path(root) / path
    return ValueError(f"no image bytes or path in this row (got {type(item).__name__})")


def _folder(paths: list[Path], root: Path) -> Source:
    """Image files under ``paths`` (folders walked with ``os.scandir``, one entry at a time), keyed by their path
    relative to ``root`` and sorted: only the keys are kept, about 70 bytes per image."""
    from vistok.budget.report import iter_image_files

    keys: list[str] = []
    base = root.resolve()

    def key(absolute: Path) -> str:
        return absolute.relative_to(base).as_posix() if absolute.is_relative_to(base) else absolute.as_posix()

    for path in paths:
        if not path.is_dir():
            keys.append(key(path.resolve()))
            continue
        # The folder is resolved once and each file's key is string work, not a resolve() (syscalls) per file.
        folder, prefix = key(path.resolve()), len(os.path.join(str(path), ""))
        for file in iter_image_files(path):
            inner = file[prefix:].replace(os.sep, "/")
            keys.append(inner if folder == "." else f"{folder}/{inner}")
    keys.sort()
    return Source("folder", str(root), keys, [])


def _webdataset(tars: list[Path]) -> Source:
    keys, refs = [], []
    for tar_path in tars:
        try:
            with tarfile.open(tar_path) as tar:
                seen: dict[str, str] = {}
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    stem, dot, ext = Path(member.name).name.partition(".")
                    sample = f"{str(Path(member.name).parent / stem).lstrip('./')}"
                    if dot and f".{ext.lower().split('.')[-1]}" in IMAGE_SUFFIXES and sample not in seen:
                        seen[sample] = member.name
        except (OSError, tarfile.TarError) as err:
            raise ValueError(f"{tar_path}: not a readable tar file ({err})") from err
        for sample, member in seen.items():
            keys.append(f"{tar_path.name}/{sample}")
            refs.append((str(tar_path), member))
    return Source("webdataset", str(tars[0].parent), keys, refs)


def _table_source(kind: str, root: Path, names: list[str], column: str | None, key_values: list[Any] | None) -> Source:
    if column is None:
        found = [c for c in _IMAGE_COLUMNS if c in names]
        if not found:
            raise ValueError(f"{root}: no image column (looked for {', '.join(_IMAGE_COLUMNS)}; columns: "
                             f"{', '.join(names)}); pass image_column=... (--image-column)")
        column = found[0]
    elif column not in names:
        raise ValueError(f"{root}: no column {column!r}; columns: {', '.join(names)}")
    n = len(key_values) if key_values is not None else 0
    keys = [str(k) for k in key_values] if key_values is not None else []
    if len(set(keys)) != n:
        raise ValueError(f"{root}: the key column has repeated values; keys must be unique")
    return Source(kind, str(root), keys, list(range(n)), column)


def _parquet(root: Path, column: str | None) -> Source:
    import pyarrow.dataset as ds

    data = ds.dataset(str(root), format="parquet")
    names = data.schema.names
    key = next((c for c in _KEY_COLUMNS if c in names), None)
    keys = data.to_table(columns=[key]).column(key).to_pylist() if key else list(range(data.count_rows()))
    return _table_source("parquet", root, names, column, keys)


def _hf(root: Path, column: str | None) -> Source:
    try:
        from datasets import load_from_disk
    except ImportError as err:
        raise ValueError(f"{root} is a Hugging Face datasets folder: pip install datasets") from err
    data = load_from_disk(str(root))
    if not hasattr(data, "column_names") or isinstance(data.column_names, dict):
        raise ValueError(f"{root}: a DatasetDict; pass the folder of one split (e.g. {root}/train)")
    names = list(data.column_names)
    key = next((c for c in _KEY_COLUMNS if c in names), None)
    keys = data[key] if key else list(range(len(data)))
    return _table_source("hf", root, names, column, keys)


def _glob_root(pattern: str) -> Path:
    """The folder a glob's keys are relative to: its leading parts without a wildcard (``data/*/x*.jpg`` -> data)."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if any(ch in p for ch in "*?["))]]
    return Path(*fixed) if fixed else Path(".")


def open_source(spec: str | Path, *, image_column: str | None = None) -> Source:
    """The source behind ``spec``: a folder, a glob, a ``.tar``/``.parquet`` file, or a folder of tars, of Parquet
    files, or written by ``datasets.save_to_disk``. Raises FileNotFoundError/ValueError naming ``spec``."""
    text = str(spec)
    if any(ch in text for ch in "*?["):
        matches = sorted(Path(p) for p in globbing.glob(text, recursive=True))
        if not matches:
            raise FileNotFoundError(f"{text}: the pattern matches no file")
        tars = [p for p in matches if p.suffix == ".tar"]
        if tars and len(tars) == len(matches):
            return _webdataset(tars)
        parquet = [p for p in matches if p.suffix == ".parquet"]
        if parquet and len(parquet) == len(matches):
            return _parquet(parquet[0] if len(parquet) == 1 else parquet[0].parent, image_column)
        return _folder(matches, _glob_root(text))
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder; pass a folder of images, a glob, WebDataset "
                                ".tar files, a Parquet table or a datasets.save_to_disk folder")
    if path.is_file():
        if path.suffix == ".tar":
            return _webdataset([path])
        if path.suffix == ".parquet":
            return _parquet(path, image_column)
        return _folder([path], path.parent)
    if (path / "dataset_info.json").is_file() and (path / "state.json").is_file():
        return _hf(path, image_column)
    if (path / "_manifest.json").is_file():
        raise ValueError(f"{path}: a vistok tokens dataset, not images; open it with vistok.open_dataset")
    tars = sorted(path.glob("*.tar"))
    if tars:
        return _webdataset(tars)
    if sorted(path.glob("*.parquet")):
        return _parquet(path, image_column)
    return _folder([path], path)


def is_dataset(spec: str | Path) -> bool:
    """Whether ``spec`` names a dataset rather than image files: a tokens dataset, a ``.tar``/``.parquet`` file, a
    glob of them, or a folder of them or written by ``datasets.save_to_disk``."""
    text = str(spec)
    if any(ch in text for ch in "*?["):
        return all(Path(p).suffix in (".tar", ".parquet") for p in globbing.glob(text)) and bool(globbing.glob(text))
    path = Path(text).expanduser()
    if path.is_file():
        return path.suffix in (".tar", ".parquet")
    return path.is_dir() and ((path / "_manifest.json").is_file() or (path / "dataset_info.json").is_file()
                              or any(path.glob("*.tar")) or any(path.glob("*.parquet")))


def count_inputs(spec: str | Path, chunk: int = 256) -> tuple[int, Any]:
    """``(images, iterator)`` for counting a dataset's images without decoding them: a tokens dataset gives each
    row's source ``(width, height)`` from its columns; any other source its images (paths or encoded bytes) a chunk
    at a time. Items are :class:`vistok.budget.report.Named`, keyed by the dataset's keys."""
    from vistok.budget.report import Named

    path = Path(str(spec)).expanduser()
    if path.is_dir() and (path / "_manifest.json").is_file():
        import pyarrow.dataset as ds

        table = ds.dataset(str(path), format="parquet").to_table(columns=["key", "width", "height"])
        rows = zip(*(table.column(c).to_pylist() for c in ("key", "width", "height")))
        return table.num_rows, (Named(k, (w, h)) for k, w, h in rows)
    source = open_source(spec)

    def items() -> Any:
        if source.kind == "folder":  # sizes come from the headers: never read whole files
            yield from (Named(key, str(Path(source.root) / key)) for key in source.keys)
            return
        for start in range(0, len(source), chunk):
            indices = list(range(start, min(start + chunk, len(source))))
            for i, payload in zip(indices, source.read(indices)):
                yield Named(source.keys[i], payload)

    return len(source), items()
