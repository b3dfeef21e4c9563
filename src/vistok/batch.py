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

    def save(self, path: str | os.PathLike) -> None:
        """Write every token set to one safetensors file, keyed by image path."""
        save_tokens(path, self.tokens)


def tokenize_files(
    paths: Iterable[str | os.PathLike],
    tokenizer: Any,
    *,
    on_file: Callable[[str], None] | None = None,
) -> BatchResult:
    """Encode every image under ``paths`` (files and folders, see :func:`vistok.images.find_images`).

    A file that cannot be read or tokenized is recorded in ``errors`` with its reason and skipped; the
    others are still tokenized. ``on_file(path)`` is called after each file (for progress bars).
    """
    result = BatchResult()
    for path in _expand(paths, result):
        key = str(path)
        try:
            result.tokens[key] = tokenizer.encode(path)
        except ImageError as err:
            result.errors[key] = err.reason
        except (OSError, ValueError) as err:
            result.errors[key] = f"{type(err).__name__}: {err}"
        if on_file is not None:
            on_file(key)
    return result


def _expand(paths: Iterable[str | os.PathLike], result: BatchResult) -> Iterable[os.PathLike]:
    for given in paths:
        try:
            yield from find_images([given])
        except ImageError as err:
            result.errors[str(given)] = err.reason
