"""The ``Tokenizer`` protocol and the plumbing shared by tokenizers that cut an image into square cells."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Protocol, overload, runtime_checkable

import numpy as np
from PIL import Image

from vistok.images import ImageInput, open_image, probe_size
from vistok.tokens import Tokens

__all__ = ["Tokenizer", "CellTokenizer", "cell_layout"]


@runtime_checkable
class Tokenizer(Protocol):
    """What every vistok tokenizer offers. ``encode`` and ``decode`` take one item or a list (then return a
    list); a tokenizer that is not ``decodable`` raises ``NotImplementedError`` from ``decode``. What else an
    instance offers is declared in its registry entry (:class:`vistok.registry.TokenizerInfo`)."""

    name: str
    kind: str
    decodable: bool
    config: Any

    def encode(self, images: Any) -> Tokens | list[Tokens]: ...

    def decode(self, tokens: Tokens | Sequence[Tokens]) -> Image.Image | list[Image.Image]: ...

    def count(self, width: int, height: int) -> int: ...

    def check(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def cell_layout(width: int, height: int, cell: int, max_side: int | None) -> tuple[int, int]:
    """Working size ``(w, h)`` of an image cut into ``cell``-pixel squares.

    The image is first scaled down (never up) so its longer side is at most ``max_side``; each side is
    then rounded to the nearest multiple of ``cell`` (at least one cell). The aspect ratio changes by at
    most half a cell per side. Token count = ``(w // cell) * (h // cell)``.
    """
    for label, value in (("width", width), ("height", height), ("cell", cell)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")
    if max_side is not None and max_side < cell:
        raise ValueError(f"max_side ({max_side}) must be at least one cell ({cell})")
    scale = 1.0 if max_side is None else min(1.0, max_side / max(width, height))

    def side(n: int) -> int:
        cells = max(1, math.floor(n * scale / cell + 0.5))
        if max_side is not None:
            cells = min(cells, max_side // cell)
        return cells * cell

    return side(width), side(height)


class CellTokenizer:
    """Base for tokenizers that resize an image with :func:`cell_layout` and cut it into cells.

    Subclasses set ``name``, ``kind``, ``decodable`` and implement ``_encode_cells`` / ``_decode`` (one
    ``Tokens`` -> one image; :meth:`decode` adds lists).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    decodable: ClassVar[bool] = True
    config: Any

    @property
    def cell(self) -> int:
        raise NotImplementedError

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        return cell_layout(width, height, self.cell, self.config.max_side)

    def check(self) -> None:
        """Validate the options and load the weights now (``encode`` does it lazily); raises
        ``ValueError``/``FileNotFoundError`` saying what to pass."""
        self.count(self.cell, self.cell)
        self._load_weights()

    def _load_weights(self) -> None:
        raise NotImplementedError

    def count(self, width: int, height: int) -> int:
        """Number of tokens for an image of this size; needs no weights."""
        w, h = self.working_size(width, height)
        return (w // self.cell) * (h // self.cell)

    def prepare(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """Open an image and resize it to its working size: ``(H, W, 3)`` float32 in [0, 1], and the
        original ``(width, height)``. Files are probed first so that JPEGs decode at reduced scale
        (``draft``); resampling is Pillow's antialiased bicubic."""
        if isinstance(image, (str, os.PathLike)):
            original = probe_size(image)
            rgb = open_image(image, draft_size=self.working_size(*original))
        else:
            rgb = open_image(image)
            original = rgb.size
        target = self.working_size(*original)
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.float32) / 255.0, original

    def cells(self, pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Cut ``(H, W, 3)`` pixels into ``(rows * cols, cell * cell * 3)`` row-major cell vectors."""
        c = self.cell
        rows, cols = pixels.shape[0] // c, pixels.shape[1] // c
        blocks = pixels[: rows * c, : cols * c].reshape(rows, c, cols, c, 3).transpose(0, 2, 1, 3, 4)
        return blocks.reshape(rows * cols, c * c * 3), (rows, cols)

    def uncells(self, vectors: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """Inverse of :meth:`cells`: ``(rows * cols, cell * cell * 3)`` -> ``(H, W, 3)``."""
        c, (rows, cols) = self.cell, grid
        return vectors.reshape(rows, cols, c, c, 3).transpose(0, 2, 1, 3, 4).reshape(rows * c, cols * c, 3)

    @overload
    def encode(self, images: ImageInput) -> Tokens: ...

    @overload
    def encode(self, images: Sequence[ImageInput]) -> list[Tokens]: ...

    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list of images."""
        many = isinstance(images, (list, tuple))
        prepared = [self.prepare(image) for image in (images if many else [images])]
        cut = [self.cells(pixels) for pixels, _ in prepared]
        encoded = self._encode_many([vectors for vectors, _ in cut], [grid for _, grid in cut])
        config = self._config_dict()
        for tokens, (pixels, original) in zip(encoded, prepared):
            tokens.meta.update(
                tokenizer=self.name,
                config=dict(config),
                image_size=list(original),
                working_size=[pixels.shape[1], pixels.shape[0]],
                cell=self.cell,
            )
        return encoded if many else encoded[0]

    def _encode_many(self, vectors: list[np.ndarray], grids: list[tuple[int, int]]) -> list[Tokens]:
        """Several images' cells at once; one :meth:`_encode_cells` per image unless a subclass batches them."""
        return [self._encode_cells(v, g) for v, g in zip(vectors, grids)]

    def sample_cells(self, images: Iterable[ImageInput], scales: Sequence[float] = (1.0,),
                     on_image: Callable[[], None] | None = None) -> np.ndarray:
        """Training sample for fitting: the cells of every image at its working size times each of
        ``scales`` (never above the native size), plus their left-right mirrors, stacked ``(M, cell*cell*3)``."""
        c = self.cell
        out = [np.empty((0, c * c * 3), np.float32)]
        for image in images:
            rgb = open_image(image)
            for scale in scales:
                max_side = None if self.config.max_side is None else int(self.config.max_side * scale)
                w, h = cell_layout(*rgb.size, c, max_side if max_side and max_side < max(rgb.size) else None)
                pixels = np.asarray(rgb.resize((w, h), Image.Resampling.BICUBIC), np.float32) / 255.0
                out += [self.cells(pixels)[0], self.cells(pixels[:, ::-1])[0]]
            if on_image is not None:
                on_image()
        return np.concatenate(out)

    def _encode_cells(self, vectors: np.ndarray, grid: tuple[int, int]) -> Tokens:
        raise NotImplementedError

    @overload
    def decode(self, tokens: Tokens) -> Image.Image: ...

    @overload
    def decode(self, tokens: Sequence[Tokens]) -> list[Image.Image]: ...

    def decode(self, tokens: Tokens | Sequence[Tokens]) -> Image.Image | list[Image.Image]:
        """The image for one ``Tokens``, or a list of images for a list (as :meth:`encode` takes lists)."""
        many = isinstance(tokens, (list, tuple))
        items = list(tokens) if many else [tokens]
        for item in items:
            if not isinstance(item, Tokens):
                raise TypeError(f"{self.name} decodes vistok.Tokens or a list of them, got {type(item).__name__}")
        images = [self._decode(item) for item in items]
        return images if many else images[0]

    def _decode(self, tokens: Tokens) -> Image.Image:
        raise NotImplementedError(f"{self.name} does not decode")

    def _config_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.config).items() if not k.startswith("_")}

    def describe(self) -> dict[str, Any]:
        """Name, kind and config, for listings and file metadata."""
        return {"name": self.name, "kind": self.kind, "decodable": self.decodable, "config": self._config_dict()}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._config_dict().items())
        return f"{type(self).__name__}({options})"


def to_image(pixels: np.ndarray) -> Image.Image:
    """``(H, W, 3)`` floats in [0, 1] -> RGB PIL image (rounded, clipped)."""
    return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), "RGB")
