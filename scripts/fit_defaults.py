"""Fit the default ``grid`` codebook and ``patch`` PCA that ship inside vistok.

Run by maintainers: ``python scripts/fit_defaults.py`` (needs scikit-image and scikit-learn). The training
images are the samples that scikit-image and scikit-learn carry offline. ``coffee``, ``rocket`` and
``grace_hopper`` are held out so that the reconstruction numbers reported on them are honest.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import skimage.data
from sklearn.datasets import load_sample_images

from vistok.tokenizers.grid import DEFAULT_CODEBOOK, GridTokenizer
from vistok.tokenizers.patch import DEFAULT_PCA, PatchTokenizer

OUT = Path(__file__).resolve().parents[1] / "src" / "vistok" / "weights"
HELD_OUT = ("coffee", "rocket", "grace_hopper")
SKIMAGE_TRAIN = (
    "astronaut", "brick", "camera", "cat", "cell", "chelsea", "clock", "coins", "colorwheel", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "text",
)


def training_images() -> tuple[list[np.ndarray], list[str]]:
    images, names = [], []
    for name in SKIMAGE_TRAIN:
        images.append(getattr(skimage.data, name)())
        names.append(f"skimage.data.{name}")
    left, _right, _disp = skimage.data.stereo_motorcycle()
    images.append(left)
    names.append("skimage.data.stereo_motorcycle[0]")
    for i, image in enumerate(load_sample_images().images):
        images.append(image)
        names.append(f"sklearn.datasets.load_sample_images[{i}]")
    return images, names


def main(vocab: int = 1024, cell: int = 16) -> None:
    images, names = training_images()
    t0 = time.perf_counter()
    grid = GridTokenizer.fit(images, cell=cell, vocab=vocab, scales=(1.0, 2.0, 4.0))
    grid.save_weights(OUT / DEFAULT_CODEBOOK, sources=names)
    t1 = time.perf_counter()
    patch = PatchTokenizer.fit(images, patch=cell, scales=(1.0, 2.0, 4.0))
    patch.save_weights(OUT / DEFAULT_PCA, sources=names)
    t2 = time.perf_counter()
    print(f"grid: {vocab} words of {cell}px cells in {t1 - t0:.1f}s; patch PCA in {t2 - t1:.1f}s; "
          f"{len(images)} training images")


if __name__ == "__main__":
    main()
