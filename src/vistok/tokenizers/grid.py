"""``grid``: hard tokens from fixed-size cells and a learned visual-word codebook.

The image is cut into uniform ``cell x cell`` squares (grid-based segmentation) and each cell becomes the
id of its nearest codeword, a "visual word" (Sivic & Zisserman, "Video Google", ICCV 2003; Csurka et al.,
"Visual categorization with bags of keypoints", 2004). Here the words are raw cell pixels clustered with
k-means, so the tokens decode: pasting each cell's codeword back gives a picture of what they keep.

Shapes: cell vectors ``(N, cell*cell*3)`` in [0, 1]; codebook ``(K, cell*cell*3)``; ids ``(N,)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vistok.images import ImageInput
from vistok.registry import register_tokenizer
from vistok.tokenizers.base import CellTokenizer, to_image
from vistok.tokens import Tokens
from vistok.weights import bundled, read_weights, write_weights

__all__ = ["GridConfig", "GridTokenizer", "KMeansSettings", "fit_kmeans", "DEFAULT_CODEBOOK"]

DEFAULT_CODEBOOK = "grid-default.safetensors"
_WEIGHTS_KIND = "grid-codebook"


@dataclass
class GridConfig:
    """Options of the ``grid`` tokenizer.

    cell: cell side in pixels. max_side: the longer image side is scaled down to at most this before
    cutting (None keeps the native size). codebook: path of a file from ``vistok fit-codebook``; None uses
    the codebook that ships with vistok (its cell size must match ``cell``).
    """

    cell: int = 16
    max_side: int | None = 256
    codebook: str | None = None


class GridTokenizer(CellTokenizer):
    """Cells -> nearest visual word. ``decode`` pastes the codewords back."""

    name = "grid"
    kind = "hard"
    decodable = True

    def __init__(self, config: GridConfig | None = None, codebook: np.ndarray | None = None) -> None:
        self.config = config or GridConfig()
        self._codebook = None if codebook is None else self._checked(np.asarray(codebook, np.float32), "<array>")
        self._norms: np.ndarray | None = None  # |c|^2 per codeword, computed once

    @property
    def cell(self) -> int:
        return self.config.cell

    @property
    def codebook(self) -> np.ndarray:
        """``(K, cell*cell*3)`` float32 codewords in [0, 1], loaded on first use."""
        if self._codebook is None:
            path = self.config.codebook or bundled(DEFAULT_CODEBOOK)
            arrays, info = read_weights(path, _WEIGHTS_KIND)
            if info["config"]["cell"] != self.cell:
                raise ValueError(
                    f"codebook {os.fspath(path)!r} was fitted for {info['config']['cell']}-pixel cells, but this "
                    f"tokenizer uses cell={self.cell}; fit one with `vistok fit-codebook IMAGES --cells {self.cell}` "
                    "and pass it as codebook=PATH"
                )
            self._codebook = self._checked(arrays["codebook"].astype(np.float32), os.fspath(path))
        return self._codebook

    def _checked(self, codebook: np.ndarray, origin: str) -> np.ndarray:
        width = self.cell * self.cell * 3
        if codebook.ndim != 2 or codebook.shape[1] != width or len(codebook) < 1:
            raise ValueError(f"codebook {origin} has shape {codebook.shape}; cell={self.cell} needs (K, {width})")
        return codebook

    def _load_weights(self) -> None:
        self.codebook  # noqa: B018 - loads and checks the codebook

    @property
    def vocab_size(self) -> int:
        return len(self.codebook)

    def nearest(self, vectors: np.ndarray) -> np.ndarray:
        """Index of the nearest codeword (squared Euclidean) for each row of ``vectors``."""
        book = self.codebook
        if self._norms is None:
            self._norms = np.einsum("kd,kd->k", book, book)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every c, so it drops out of the argmin.
        scores = vectors @ book.T
        scores *= -2.0
        scores += self._norms
        return scores.argmin(axis=1).astype(np.int64)

    def _encode_cells(self, vectors: np.ndarray, grid: tuple[int, int]) -> Tokens:
        return self._encode_many([vectors], [grid])[0]

    def _encode_many(self, vectors: list[np.ndarray], grids: list[tuple[int, int]]) -> list[Tokens]:
        """One codebook matmul for a whole batch of images: far fewer passes over the codebook than one per image."""
        ids = np.split(self.nearest(np.concatenate(vectors)), np.cumsum([len(v) for v in vectors])[:-1])
        return [Tokens.from_grid(i, g, meta={"vocab_size": self.vocab_size}) for i, g in zip(ids, grids)]

    def _decode(self, tokens: Tokens) -> Image.Image:
        """Paste each id's codeword into its cell; the image has the working size used at encode time."""
        if not tokens.is_hard or tokens.grid is None:
            raise ValueError(f"grid decodes hard tokens laid out on a grid, got {tokens!r}")
        if len(tokens) and (tokens.values.min() < 0 or tokens.values.max() >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {tokens.values.min()}..{tokens.values.max()}")
        return to_image(self.uncells(self.codebook[tokens.values], tokens.grid))

    # -- learning the vocabulary ----------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        images: Iterable[ImageInput],
        *,
        cell: int = 16,
        vocab: int = 512,
        max_side: int | None = 256,
        scales: tuple[float, ...] = (1.0, 2.0),
        seed: int = 0,
        on_image: Callable[[], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        kmeans: KMeansSettings | None = None,
    ) -> GridTokenizer:
        """Learn a ``vocab``-word codebook by mini-batch k-means over the cells of ``images``.

        Each image contributes its cells at the working size times each of ``scales`` (capped at the native
        size) and their mirror images, which widens the sample without more files. ``on_image()`` is called
        after each image is cut, ``on_step(done, total)`` after each k-means batch (``done == total`` at the
        end, also when it stops early). ``kmeans`` tunes the clustering (see :class:`KMeansSettings`)."""
        config = GridConfig(cell=cell, max_side=max_side)
        data = cls(config).sample_cells(images, scales, on_image)
        if len(data) < vocab:
            raise ValueError(
                f"k-means needs at least vocab={vocab} cells, the images gave {len(data)}; "
                "add images, use a smaller --vocab, or a smaller --cells"
            )
        codebook = fit_kmeans(data, vocab, kmeans or KMeansSettings(), seed=seed, on_step=on_step)
        return cls(config, codebook=codebook)

    def save_weights(self, path: str | os.PathLike, *, sources: list[str] | None = None,
                     follow_symlinks: bool = False) -> Path:
        """Write the codebook for ``vistok.load("grid", codebook=path)``."""
        write_weights(path, {"codebook": self.codebook}, {
            "kind": _WEIGHTS_KIND,
            "config": {"cell": self.cell, "max_side": self.config.max_side},
            "vocab_size": self.vocab_size,
            "sources": sources or [],
        }, follow_symlinks=follow_symlinks)
        return Path(path)


@dataclass(frozen=True)
class KMeansSettings:
    """How :meth:`GridTokenizer.fit` runs mini-batch k-means (Sculley, "Web-scale k-means clustering", WWW
    2010; each update is scikit-learn's ``MiniBatchKMeans.partial_fit``, which also re-seeds unused words).

    batch_size: cells per update (at least ``vocab``). max_epochs: passes over the sample, at most.
    tol: stop once an epoch moves the words by less than this, measured as the mean squared move of a word
    over the sample's total variance. init_cells: the k-means++ seeding (Arthur & Vassilvitskii, SODA 2007)
    looks at this many cells, at least ``2 * vocab``; it runs in float64, where scikit-learn's distance code is
    fast (float32 input is upcast in small chunks and was 15x slower). max_cells: a bigger sample is cut down
    to this many cells, drawn at random with the seed.
    """

    batch_size: int = 4096
    max_epochs: int = 20
    tol: float = 1e-4
    init_cells: int = 4096
    max_cells: int = 200_000

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_epochs", "init_cells", "max_cells"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"k-means {name} must be a positive integer, got {getattr(self, name)}")
        if not self.tol >= 0:
            raise ValueError(f"k-means tol must be >= 0, got {self.tol}")


def fit_kmeans(data: np.ndarray, vocab: int, settings: KMeansSettings, *, seed: int = 0,
               on_step: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``(vocab, D)`` float32 k-means centres of the rows of ``data`` ``(N, D)``; see :class:`KMeansSettings`."""
    from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus

    rng = np.random.default_rng(seed)
    data = np.asarray(data, np.float32)
    if len(data) > settings.max_cells:
        data = data[np.sort(rng.choice(len(data), settings.max_cells, replace=False))]
    n = len(data)
    seeds = data[rng.choice(n, min(n, max(settings.init_cells, 2 * vocab)), replace=False)]
    init, _ = kmeans_plusplus(seeds.astype(np.float64), vocab, random_state=int(rng.integers(2**31)))
    batch = min(n, max(settings.batch_size, vocab))
    per_epoch = math.ceil(n / batch)
    total = per_epoch * settings.max_epochs
    kmeans = MiniBatchKMeans(n_clusters=vocab, init=init.astype(np.float32), n_init=1, batch_size=batch,
                             random_state=int(rng.integers(2**31)), compute_labels=False)
    variance = float(data.var(axis=0).sum()) or 1.0
    done = 0
    for _ in range(settings.max_epochs):
        before = kmeans.cluster_centers_.copy() if done else init
        order = rng.permutation(n)
        for start in range(0, n, batch):
            kmeans.partial_fit(data[order[start:start + batch]])
            done += 1
            if on_step is not None:
                on_step(done, total)
        moved = float(((kmeans.cluster_centers_ - before) ** 2).sum(axis=1).mean()) / variance
        if moved < settings.tol:
            break
    if on_step is not None and done < total:
        on_step(total, total)
    return kmeans.cluster_centers_.astype(np.float32)


@register_tokenizer(
    "grid", kind="hard", decodable=True, config=GridConfig,
    weights="bundled (k-means on scikit-image/scikit-learn samples); yours: vistok fit-codebook",
    description="fixed cells -> nearest visual word (k-means over cell pixels); decodes by pasting codewords",
)
def create_grid(**options: object) -> GridTokenizer:
    return GridTokenizer(GridConfig(**options))  # type: ignore[arg-type]
