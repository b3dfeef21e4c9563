"""One preprocessing path for every encoder: open, resize, centre-crop, rescale and normalise a batch.

The steps follow the usual CLIP/ViT image processors (shortest edge resized to ``size`` with bicubic
resampling, centre crop, ``x * rescale``, then ``(x - mean) / std``); every number comes from the
encoder's config, never from its name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vistok.images import ImageInput, open_image, probe_size

__all__ = ["Preprocess", "preprocess", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocess:
    """How an encoder wants its pixels.

    size: an int resizes the shortest edge to it (aspect kept); ``(height, width)`` resizes exactly;
    None keeps the image's size. crop: centre crop to ``(height, width)`` (an int means a square), or None.
    resample: nearest, bilinear, bicubic or lanczos. rescale: multiplies the 0..255 values (1/255 gives
    0..1). mean / std: per-channel normalisation after rescaling.
    """

    size: int | tuple[int, int] | None = 224
    crop: int | tuple[int, int] | None = 224
    resample: str = "bicubic"
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(_RESAMPLE)}, got {self.resample!r}")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step."""
        if self.size is None:
            return width, height
        if isinstance(self.size, int):
            short = min(width, height)
            scale = self.size / short
            # the shorter side becomes exactly `size`; the other is scaled and truncated, as CLIP's does
            if width <= height:
                return self.size, int(height * scale)
            return int(width * scale), self.size
        return self.size[1], self.size[0]

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the tensor for an image of this size."""
        if self.crop is None:
            return self.resized_size(width, height)
        crop_h, crop_w = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        return crop_w, crop_h


def _one(image: ImageInput, cfg: Preprocess) -> np.ndarray:
    draft = None
    if isinstance(image, (str, os.PathLike)):
        draft = cfg.resized_size(*probe_size(image))
    rgb = open_image(image, draft_size=draft)
    target = cfg.resized_size(*rgb.size) if draft is None else draft
    if rgb.size != target:
        rgb = rgb.resize(target, _RESAMPLE[cfg.resample])
    if cfg.crop is not None:
        out_w, out_h = cfg.output_size(*rgb.size)
        left, top = (rgb.width - out_w) // 2, (rgb.height - out_h) // 2
        rgb = rgb.crop((left, top, left + out_w, top + out_h))
    return np.asarray(rgb)


def preprocess(images: Sequence[ImageInput] | ImageInput, cfg: Preprocess, *, threads: int | None = None) -> Any:
    """A ``(B, 3, H, W)`` float32 torch tensor for a list of images (one image gives B = 1).

    All images must come out the same size (use a crop or an exact size for mixed inputs).
    """
    import torch

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if threads is None:
        threads = min(8, os.cpu_count() or 1)
    if threads > 1 and len(items) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            arrays = list(pool.map(lambda im: _one(im, cfg), items))
    else:
        arrays = [_one(im, cfg) for im in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images came out in different sizes {sorted(shapes)}; set crop=... or an exact size")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (batch * cfg.rescale - mean) / std
