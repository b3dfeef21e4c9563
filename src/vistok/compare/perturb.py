"""Small, label-preserving changes to an image, for measuring how much tokens move under them.

Every perturbation is deterministic (the noise is seeded from the image's size) and keeps the image's size, so
tokens of the changed image line up with the original's wherever the tokenizer's layout depends on size alone.
Strengths scale with the image's shorter side ``s``:

* ``blur``: Gaussian blur, radius ``s / 200`` px (about 1 px at 224 px);
* ``noise``: additive Gaussian noise, sigma 12 grey levels, clipped to 0..255;
* ``jpeg``: JPEG re-compression at quality 30 (Pillow / libjpeg, 4:2:0 chroma);
* ``rotate``: 5 degrees counter-clockwise about the centre, bicubic, corners filled with the image's mean colour;
* ``crop``: the central 90% of each side, resized back (bicubic) to the original size.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["PERTURBATIONS", "perturb"]


def _blur(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=min(image.size) / 200))


def _noise(image: Image.Image) -> Image.Image:
    rng = np.random.default_rng(image.width * 100_003 + image.height)
    pixels = np.asarray(image, np.float32)
    return Image.fromarray(np.clip(np.rint(pixels + rng.normal(0.0, 12.0, pixels.shape)), 0, 255).astype(np.uint8))


def _jpeg(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=30)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _rotate(image: Image.Image) -> Image.Image:
    mean = tuple(int(round(v)) for v in np.asarray(image, np.float64).reshape(-1, 3).mean(axis=0))
    return image.rotate(5.0, resample=Image.Resampling.BICUBIC, fillcolor=mean)


def _crop(image: Image.Image) -> Image.Image:
    w, h = image.size
    dx, dy = round(0.05 * w), round(0.05 * h)
    return image.crop((dx, dy, w - dx, h - dy)).resize((w, h), Image.Resampling.BICUBIC)


#: name -> function of an RGB image, in the order reports list them.
PERTURBATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "blur": _blur, "noise": _noise, "jpeg": _jpeg, "rotate": _rotate, "crop": _crop,
}


def perturb(image: Image.Image, name: str) -> Image.Image:
    """``image`` (converted to RGB) changed by the perturbation ``name`` (see :data:`PERTURBATIONS`)."""
    if name not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name](image.convert("RGB"))
