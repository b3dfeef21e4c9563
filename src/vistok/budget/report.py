"""Counting many files for many models: the loop behind ``vistok count``, its summary and histogram.

:func:`count_stream` reads its inputs lazily (folders with :func:`os.scandir`, one entry at a time) and keeps
running totals per model: the number of images, total tokens and KV cache, and how many images gave each
token count (exact percentiles and histograms from memory that grows with the distinct counts, not with
the images). A folder of a million files is counted in the memory of a few thousand.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vistok._headers import header_size
from vistok._sources import IMAGE_EXTENSIONS, ImageError, _sniffed_image, source_name
from vistok.budget.core import TokenCount, check_size

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CountReport", "Tally", "Named", "count_stream", "count_files", "iter_image_files", "histogram"]

_SORTED_FOLDER = 4096  # a folder with at most this many entries is walked in name order, a larger one as listed
_MEMO = 65536  # remembered (size -> count) answers per model; real folders repeat sizes a lot


class Tally:
    """Running totals of one model's counts over many images."""

    def __init__(self, model: str, has_lm: bool) -> None:
        self.model = model
        self.images = 0
        self.total_tokens = 0
        self.total_kv_bytes: int | None = 0 if has_lm else None
        self.counts: Counter[int] = Counter()  # image tokens -> number of images

    def add(self, tokens: int, kv_bytes: int | None) -> None:
        self.images += 1
        self.total_tokens += tokens
        self.counts[tokens] += 1
        if self.total_kv_bytes is not None and kv_bytes is not None:
            self.total_kv_bytes += kv_bytes

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile of the image tokens, as ``numpy.percentile`` (linear) computes it."""
        if not self.images:
            return 0.0
        position = (self.images - 1) * q / 100
        below = int(position)
        above = min(below + 1, self.images - 1)
        low = high = 0
        seen = 0
        for value in sorted(self.counts):  # the values at ranks `below` and `above` (0-based)
            seen += self.counts[value]
            if seen > below and seen - self.counts[value] <= below:
                low = value
            if seen > above:
                high = value
                break
        fraction = position - below
        return float(low + (high - low) * fraction) if fraction < 0.5 else float(high - (high - low) * (1 - fraction))

    def row(self) -> dict[str, Any]:
        """``model, images, p50, p95, max, mean, total_tokens, total_kv_bytes``."""
        return {"model": self.model, "images": self.images, "p50": self.percentile(50), "p95": self.percentile(95),
                "max": max(self.counts, default=0), "mean": self.total_tokens / self.images if self.images else 0.0,
                "total_tokens": self.total_tokens, "total_kv_bytes": self.total_kv_bytes}


class CountReport:
    """What :func:`count_stream` found: per-model :class:`Tally` totals, the first ``keep`` images counted in
    full (``counts``: file -> model -> :class:`TokenCount`; ``kv_bytes`` alike), and the inputs that could
    not be counted (``errors``: name -> reason)."""

    def __init__(self, models: list[str], has_lm: dict[str, bool]) -> None:
        self.models = models
        self.tallies = {m: Tally(m, has_lm[m]) for m in models}
        self.counts: dict[str, dict[str, TokenCount]] = {}
        self.kv_bytes: dict[str, dict[str, int | None]] = {}
        self.errors: dict[str, str] = {}

    @property
    def images(self) -> int:
        """Images counted (for every model)."""
        return self.tallies[self.models[0]].images if self.models else 0

    def distribution(self, model: str) -> Counter[int]:
        """Image tokens -> number of images, for ``model``."""
        return self.tallies[model].counts

    def tokens(self, model: str) -> np.ndarray:
        """Every image's tokens for ``model``, in ascending order."""
        counts = self.tallies[model].counts
        values = sorted(counts)
        import numpy as np

        return np.repeat(np.asarray(values, np.int64), [counts[v] for v in values])

    def summary(self) -> list[dict[str, Any]]:
        """Per model: images, p50/p95/max/mean image tokens, total tokens and total KV cache."""
        return [self.tallies[m].row() for m in self.models]


def iter_image_files(root: str | os.PathLike, *, recursive: bool = True) -> Iterator[str]:
    """The image files under the folder ``root``, one at a time, as :func:`vistok.images.find_images` picks
    them (image suffixes, suffix-less files that start like an image, hidden entries and symlinked folders
    skipped), in the same order for folders of up to 4,096 entries; larger folders in listing order."""
    try:
        scan = os.scandir(root)
    except OSError:
        return
    with scan:
        entries = []
        for entry in scan:
            entries.append(entry)
            if len(entries) > _SORTED_FOLDER:
                break
        else:
            entries.sort(key=lambda e: e.name)
        for entry in _chain(entries, scan):
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if recursive and not entry.is_symlink():
                    yield from iter_image_files(entry.path, recursive=True)
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_EXTENSIONS or (not suffix and _sniffed_image(entry.path)):
                yield entry.path


def _chain(first: list[os.DirEntry], rest: Iterator[os.DirEntry]) -> Iterator[os.DirEntry]:
    yield from first
    yield from rest


@dataclass(frozen=True)
class Named:
    """An input with the key its report rows use (a dataset's key): ``item`` is a path, bytes, ``(width, height)``,
    or the exception that made it unreadable."""

    key: str
    item: Any


def _expand(sources: Iterable[Any], recursive: bool, errors: dict[str, str]) -> Iterator[Any]:
    """Paths of files and folders expanded into files, lazily; other inputs (sizes, bytes, images) as given."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    for item in sources:
        if isinstance(item, (str, os.PathLike)):
            if os.path.isdir(item):
                yield from iter_image_files(item, recursive=recursive)
            elif os.path.lexists(item):
                yield os.fspath(item)
            else:
                errors[source_name(item)] = "no such file or directory"
        else:
            yield item


def _size_of(item: Any) -> tuple[int, int]:
    if type(item) is tuple and len(item) == 2:
        size = item
    else:  # the header alone (no numpy, no Pillow) where it answers, as vistok.probe_size would
        size = header_size(item) if isinstance(item, str) else None
        if size is None:
            from vistok.images import probe_size

            size = probe_size(item, max_pixels=None)  # nothing is decoded: no decompression-bomb limit
    w, h = size
    if type(w) is int and type(h) is int and 0 < w <= 1_000_000 and 0 < h <= 1_000_000:
        return size
    return check_size(w, h)


def count_stream(
    sources: Iterable[Any], models: Iterable[str], *, options: dict[str, Any] | None = None,
    dtype: str = "bfloat16", keep: int | None = 0, recursive: bool = True,
    on_file: Callable[[str], None] | None = None,
) -> CountReport:
    """Count every image in ``sources`` for every model, reading only headers and keeping running totals.

    ``sources``: any iterable (a generator is consumed lazily) of file or folder paths, encoded bytes, images
    or ``(width, height)`` pairs. ``keep``: how many images to also keep in full in ``report.counts`` (``None``:
    all, as :func:`count_files` does). Unreadable inputs are recorded in ``report.errors`` and skipped, never
    counted as zero; unknown models and bad options raise before any input is read.
    """
    from vistok.budget import _prepare, count
    from vistok.budget.cost import DTYPE_BYTES, cost, lm_presets
    from vistok.budget.models import resolve_model

    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    options = dict(options or {})
    models = list(models)
    prepared = [_prepare(m, None, options) for m in models]
    names = [p[0] for p in prepared]
    lms = [resolve_model(name).lm for name in names]
    configs = [lm_presets()[lm] if lm is not None else None for lm in lms]
    report = CountReport(names, {name: lm is not None for name, lm in zip(names, lms)})
    tallies = [report.tallies[name] for name in names]
    memos: list[dict[tuple[int, int], tuple[int, int | None]]] = [{} for _ in names]
    per_token = 2 * DTYPE_BYTES[dtype]
    for item in _expand(sources, recursive, report.errors):
        named = item.key if isinstance(item, Named) else None
        item = item.item if isinstance(item, Named) else item
        key = named or (item if isinstance(item, str) else repr(item) if isinstance(item, tuple) else source_name(item))
        try:
            if isinstance(item, Exception):
                raise ValueError(f"{type(item).__name__}: {item}")
            size = _size_of(item)
            answers = []
            for (_, rule, opts, _), memo, config in zip(prepared, memos, configs):
                answer = memo.get(size)
                if answer is None:
                    counted = rule.count(size[0], size[1], opts)
                    kv = None
                    if config is not None:
                        cross = int(counted.breakdown.get("cross_attention_states", 0))
                        kv = int(per_token * config.kv_heads * config.head_dim * (
                            int(counted.total_positions) * config.self_attention_layers
                            + cross * config.cross_attention_layers))
                    answer = (int(counted.image_tokens), kv)
                    if len(memo) >= _MEMO:
                        memo.clear()
                    memo[size] = answer
                answers.append(answer)
            if keep is None or len(report.counts) < keep:
                per = {name: count(size, model=name, **options) for name in names}
                report.counts[key] = per
                report.kv_bytes[key] = {name: cost(c, dtype=dtype).kv_cache_bytes if config is not None else None
                                        for (name, c), config in zip(per.items(), configs)}
        except ImageError as err:
            report.errors[key] = err.reason
        except ValueError as err:
            report.errors[key] = str(err)
        else:
            for tally, (tokens, kv) in zip(tallies, answers):
                tally.add(tokens, kv)
        if on_file is not None:
            on_file(key)
    return report


def count_files(
    paths: Iterable[str | os.PathLike], models: Iterable[str], *, options: dict[str, Any] | None = None,
    dtype: str = "bfloat16", on_file: Callable[[str], None] | None = None,
) -> CountReport:
    """Count every image under ``paths`` for every model, keeping every image's full count (for a few
    thousand files; :func:`count_stream` keeps only totals)."""
    return count_stream(paths, models, options=options, dtype=dtype, keep=None, on_file=on_file)


def histogram(report: CountReport, width: int = 900, bar_height: int = 170) -> Any:
    """A PNG-ready PIL image: one histogram of image tokens per model, stacked on one shared scale (token
    axis and image-count axis), with axes, tick labels and p50/p95 marked (:func:`vistok.viz.count_histogram`)."""
    from vistok.viz import count_histogram

    return count_histogram({m: dict(report.distribution(m)) for m in report.models},
                           {m: {"p50": report.tallies[m].percentile(50), "p95": report.tallies[m].percentile(95)}
                            for m in report.models if report.tallies[m].images},
                           width=width, panel_height=bar_height)
