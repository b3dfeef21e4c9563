"""Tokenize many files, keeping going when one is bad: the loop behind ``vistok tokenize``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vistok.images import ImageError, find_images
from vistok.tokens import Tokens, save_tokens

__all__ = ["BatchResult", "tokenize_files"]


@dataclass
class BatchResult:
    """Tokens per file (keyed by path as given) and, for files that failed, the reason."""

    tokens: dict[str, Tokens] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def save(self, path: str | os.PathLike, *, follow_symlinks: bool = False) -> None:
        """Write every token set to one safetensors file, keyed by image path (never over one of them)."""
        save_tokens(path, self.tokens, inputs=self.tokens, follow_symlinks=follow_symlinks)


def tokenize_files(
    paths: Iterable[str | os.PathLike],
    tokenizer: Any,
    *,
    on_file: Callable[[str], None] | None = None,
    batch_size: int = 16,
) -> BatchResult:
    """Encode every image under ``paths`` (files and folders, see :func:`vistok.images.find_images`).

    Files go to ``tokenizer.encode`` in lists of ``batch_size`` (encoders run them as one batch). A file that
    cannot be read or tokenized is recorded in ``errors`` with its reason and skipped; the others are still
    tokenized: when a list fails, its files are retried one by one. ``on_file(path)`` is called after each
    file (for progress bars).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    result = BatchResult()
    chunk: list[os.PathLike] = []
    for path in _expand(paths, result):
        chunk.append(path)
        if len(chunk) == batch_size:
            _encode_chunk(chunk, tokenizer, result, on_file)
            chunk = []
    if chunk:
        _encode_chunk(chunk, tokenizer, result, on_file)
    return result


def _encode_chunk(chunk: list[os.PathLike], tokenizer: Any, result: BatchResult,
                  on_file: Callable[[str], None] | None) -> None:
    if len(chunk) > 1:
        try:
            encoded = tokenizer.encode(list(chunk))
        except (ImageError, OSError, ValueError):
            encoded = None  # someone in the list is bad: find out who, one by one
        if encoded is not None:
            for path, tokens in zip(chunk, encoded):
                result.tokens[str(path)] = tokens
                if on_file is not None:
                    on_file(str(path))
            return
    for path in chunk:
        key = str(path)
        try:
            result.tokens[key] = tokenizer.encode(path)
        except ImageError as err:
            result.errors[key] = err.reason
        except (OSError, ValueError) as err:
            result.errors[key] = f"{type(err).__name__}: {err}"
        if on_file is not None:
            on_file(key)


def _expand(paths: Iterable[str | os.PathLike], result: BatchResult) -> Iterable[os.PathLike]:
    for given in paths:
        try:
            yield from find_images([given])
        except ImageError as err:
            result.errors[str(given)] = err.reason
