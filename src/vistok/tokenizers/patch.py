"""``patch``: soft tokens from ViT-style patchify and a linear embedding fitted by PCA.

As in ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) the image is cut into
non-overlapping ``patch x patch`` squares, each flattened and mapped by one linear layer. Here that layer
is learned without labels: the principal components of patch pixels (Pearson 1901; scikit-learn's
``PCA``). Keeping all ``patch*patch*3`` components makes it an orthonormal change of basis, so decoding is
exact; keeping the first ``dim`` gives the best rank-``dim`` linear code, and the error grows as ``dim``
shrinks.

Shapes: patch vectors ``(N, P)`` with ``P = patch*patch*3`` in [0, 1]; mean ``(P,)``; components
``(P, P)`` (rows, by decreasing variance); tokens ``(N, dim)``.
"""

from __future__ import annotations

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

__all__ = ["PatchConfig", "PatchTokenizer", "DEFAULT_PCA"]

DEFAULT_PCA = "patch-default.safetensors"
_WEIGHTS_KIND = "patch-pca"


@dataclass
class PatchConfig:
    """Options of the ``patch`` tokenizer.

    patch: patch side in pixels. max_side: the longer image side is scaled down to at most this before
    cutting (None keeps the native size). dim: principal components kept per token (None keeps all
    ``patch*patch*3``, which decodes exactly). weights: path of a file from ``vistok fit-patch``; None uses
    the PCA that ships with vistok (its patch size must match ``patch``).
    """

    patch: int = 16
    max_side: int | None = 256
    dim: int | None = None
    weights: str | None = None


class PatchTokenizer(CellTokenizer):
    """Patches -> their coordinates in the first ``dim`` principal components."""

    name = "patch"
    kind = "soft"
    decodable = True

    def __init__(self, config: PatchConfig | None = None, mean: np.ndarray | None = None,
                 components: np.ndarray | None = None) -> None:
        self.config = config or PatchConfig()
        self._pca: tuple[np.ndarray, np.ndarray] | None = None
        if mean is not None and components is not None:
            self._pca = self._checked(np.asarray(mean, np.float32), np.asarray(components, np.float32), "<array>")

    @property
    def cell(self) -> int:
        return self.config.patch

    @property
    def full_dim(self) -> int:
        return self.cell * self.cell * 3

    @property
    def dim(self) -> int:
        """Token width: ``config.dim`` or all components."""
        return self.config.dim if self.config.dim is not None else self.full_dim

    @property
    def pca(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (P,), components (dim, P))`` float32, loaded on first use."""
        if self._pca is None:
            path = self.config.weights or bundled(DEFAULT_PCA)
            arrays, info = read_weights(path, _WEIGHTS_KIND)
            if info["config"]["patch"] != self.cell:
                raise ValueError(
                    f"PCA weights {os.fspath(path)!r} were fitted for {info['config']['patch']}-pixel patches, but "
                    f"this tokenizer uses patch={self.cell}; fit them with `vistok fit-patch IMAGES --patch "
                    f"{self.cell}` and pass the file as weights=PATH"
                )
            self._pca = self._checked(arrays["mean"], arrays["components"], os.fspath(path))
        mean, components = self._pca
        return mean, components[: self.dim]

    def _load_weights(self) -> None:
        self.pca  # noqa: B018 - loads and checks the components

    def _checked(self, mean: np.ndarray, components: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
        p = self.full_dim
        if mean.shape != (p,) or components.ndim != 2 or components.shape[1] != p:
            raise ValueError(f"PCA {origin} has mean {mean.shape}, components {components.shape}; patch={self.cell} "
                             f"needs ({p},) and (K, {p})")
        if not 1 <= self.dim <= len(components):
            raise ValueError(f"dim={self.config.dim} must lie in 1..{len(components)} (the components stored in {origin})")
        return mean.astype(np.float32), components.astype(np.float32)

    def _encode_cells(self, vectors: np.ndarray, grid: tuple[int, int]) -> Tokens:
        mean, components = self.pca
        return Tokens.from_grid((vectors - mean) @ components.T, grid, meta={"dim": self.dim})

    def _decode(self, tokens: Tokens) -> Image.Image:
        """Map tokens back through the components; exact when every component was kept."""
        if tokens.is_hard or tokens.grid is None or tokens.dim != self.dim:
            raise ValueError(f"patch (dim={self.dim}) decodes soft tokens of that width on a grid, got {tokens!r}")
        mean, components = self.pca
        return to_image(self.uncells(tokens.values.astype(np.float32) @ components + mean, tokens.grid))

    # -- learning the embedding -----------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        images: Iterable[ImageInput],
        *,
        patch: int = 16,
        max_side: int | None = 256,
        scales: tuple[float, ...] = (1.0, 2.0),
        seed: int = 0,
        on_image: Callable[[], None] | None = None,
    ) -> PatchTokenizer:
        """Fit all ``patch*patch*3`` principal components (scikit-learn ``PCA``, full SVD) to the patches of
        ``images`` at several scales with mirrors (the same sampling as ``grid``'s k-means)."""
        from sklearn.decomposition import PCA

        config = PatchConfig(patch=patch, max_side=max_side)
        data = cls(config).sample_cells(images, scales, on_image)
        full = patch * patch * 3
        if len(data) <= full:
            raise ValueError(f"PCA of {full}-pixel patches needs more than {full} patches, the images gave "
                             f"{len(data)}; add images or use a smaller --patch")
        pca = PCA(n_components=full, svd_solver="full", random_state=seed).fit(data.astype(np.float64))
        tokenizer = cls(config, pca.mean_, pca.components_)
        tokenizer.explained_variance = pca.explained_variance_ratio_.astype(np.float32)
        return tokenizer

    def save_weights(self, path: str | os.PathLike, *, sources: list[str] | None = None,
                     follow_symlinks: bool = False) -> Path:
        """Write the PCA for ``vistok.load("patch", weights=path)`` (all components, whatever ``dim``)."""
        self._load_weights()
        mean, components = self._pca  # type: ignore[misc]
        arrays = {"mean": mean, "components": components}
        if getattr(self, "explained_variance", None) is not None:
            arrays["explained_variance_ratio"] = self.explained_variance
        write_weights(path, arrays, {
            "kind": _WEIGHTS_KIND,
            "config": {"patch": self.cell, "max_side": self.config.max_side},
            "sources": sources or [],
        }, follow_symlinks=follow_symlinks)
        return Path(path)


@register_tokenizer(
    "patch", kind="soft", decodable=True, config=PatchConfig,
    weights="bundled (PCA on scikit-image/scikit-learn samples); yours: vistok fit-patch",
    description="ViT-style 16x16 patches -> linear PCA embedding; exact inverse with all components",
)
def create_patch(**options: object) -> PatchTokenizer:
    return PatchTokenizer(PatchConfig(**options))  # type: ignore[arg-type]
