"""``superpixels``: every segment of an over-segmentation as one region, with its mask.

* ``method="slic"``: scikit-image ``segmentation.slic`` (Achanta et al., "SLIC Superpixels Compared to
  State-of-the-Art Superpixel Methods", TPAMI 2012) with ``n_segments`` and ``compactness`` (k-means in CIELAB +
  position; connectivity enforced, so the count is near, not exactly, ``n_segments``).
* ``method="felzenszwalb"``: scikit-image ``segmentation.felzenszwalb`` (Felzenszwalb & Huttenlocher,
  "Efficient Graph-Based Image Segmentation", IJCV 2004) with ``scale``, ``sigma`` (Gaussian pre-smoothing) and
  ``min_size`` (smallest segment, working pixels). ``sigma``, ``scale`` and ``min_size`` only apply here.

The image is segmented at a working size (longer side at most ``max_side``, Pillow bilinear resize); the label
map is brought back to the source size with nearest neighbour (source pixel centre ``y + 1/2`` -> working row
``floor((y + 1/2) h / H)``, exactly), so the masks partition the source image. Segment ids are renumbered in
row-major order of each segment's first working pixel; regions come in that order, each with label 0
(``region``), score 1.0, its mask over the source image and the mask's bounding box. Deterministic.
Every mask is a full ``(H, W)`` bool array: a 20-megapixel image with 64 segments holds 1.3 GB of masks.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from PIL import Image

from vistok.regions.base import Region, register_detector

__all__ = ["SuperpixelDetector", "create_superpixels", "METHODS"]

METHODS = ("slic", "felzenszwalb")
_OPTIONS = ("method", "n_segments", "compactness", "scale", "sigma", "min_size", "max_side")
_INSTALL = "pip install 'vistok[regions]'"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class SuperpixelDetector:
    """Over-segmentation regions with masks; see the module docstring."""

    name = "superpixels"
    labels = ["region"]

    def __init__(self, method: str = "slic", n_segments: int = 64, compactness: float = 10.0, scale: float = 100.0,
                 sigma: float = 0.8, min_size: int = 50, max_side: int = 512) -> None:
        if method not in METHODS:
            raise ValueError(f"superpixels: unknown method {method!r}; pass one of {', '.join(METHODS)}")
        if not (_is_int(n_segments) and n_segments >= 1):
            raise ValueError(f"superpixels: n_segments is the wanted segment count, an int >= 1, got {n_segments!r}")
        for key, value in (("compactness", compactness), ("scale", scale)):
            if not (_is_number(value) and value > 0):
                raise ValueError(f"superpixels: {key} must be a number > 0, got {value!r}")
        if not (_is_number(sigma) and sigma >= 0):
            raise ValueError(f"superpixels: sigma is a Gaussian width in pixels, a number >= 0, got {sigma!r}")
        if not (_is_int(min_size) and min_size >= 0):
            raise ValueError(f"superpixels: min_size is the smallest segment in pixels, an int >= 0, got {min_size!r}")
        if not (_is_int(max_side) and max_side >= 8):
            raise ValueError(f"superpixels: max_side is the longest working side in pixels, an int >= 8, "
                             f"got {max_side!r}")
        self.method, self.n_segments, self.compactness = method, int(n_segments), float(compactness)
        self.scale, self.sigma, self.min_size, self.max_side = float(scale), float(sigma), int(min_size), int(max_side)

    def __repr__(self) -> str:
        return (f"SuperpixelDetector(method={self.method!r}, n_segments={self.n_segments}, "
                f"compactness={self.compactness}, scale={self.scale}, sigma={self.sigma}, min_size={self.min_size}, "
                f"max_side={self.max_side})")

    def check(self) -> None:
        """ImportError with the pip command when scikit-image is missing."""
        try:
            importlib.import_module("skimage.segmentation")
        except ImportError as e:
            raise ImportError(f"superpixels needs scikit-image: {_INSTALL}") from e

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` segmented: ``size`` scaled so its longer side is at most ``max_side``."""
        w, h = size
        s = self.max_side / max(w, h)
        return (max(1, round(w * s)), max(1, round(h * s))) if s < 1 else (w, h)

    def working_array(self, image: Image.Image) -> np.ndarray:
        """The ``(h, w, 3)`` uint8 RGB image at the working size (Pillow bilinear)."""
        image = image.convert("RGB")
        size = self.working_size(image.size)
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image)

    def segment(self, array: np.ndarray) -> np.ndarray:
        """scikit-image's label map of an ``(h, w, 3)`` array, as it returns it."""
        self.check()
        from skimage import segmentation

        if self.method == "slic":
            return segmentation.slic(array, n_segments=self.n_segments, compactness=self.compactness, start_label=0,
                                     channel_axis=-1)
        return segmentation.felzenszwalb(array, scale=self.scale, sigma=self.sigma, min_size=self.min_size,
                                         channel_axis=-1)

    def label_map(self, image: Image.Image) -> np.ndarray:
        """``(h, w)`` int32 segment ids at the working size, renumbered 0.. in row-major first-pixel order."""
        raw = self.segment(self.working_array(image))
        values, first = np.unique(raw.ravel(), return_index=True)
        rank = np.empty(len(values), np.int32)
        rank[np.argsort(first, kind="stable")] = np.arange(len(values), dtype=np.int32)
        return rank[np.searchsorted(values, raw)]

    def detect(self, image: Image.Image) -> list[Region]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"superpixels.detect takes a PIL.Image.Image, got {type(image).__name__}")
        from scipy import ndimage

        W, H = image.size
        small = self.label_map(image)
        h, w = small.shape
        # nearest neighbour up to the source size: source pixel centre y + 1/2 -> working row floor((y + 1/2) h / H),
        # in exact integer arithmetic (float rounding moves the exact ties)
        rows = (2 * np.arange(H, dtype=np.int64) + 1) * h // (2 * H)
        cols = (2 * np.arange(W, dtype=np.int64) + 1) * w // (2 * W)
        full = small[rows[:, None], cols[None, :]]
        regions = []
        for k, window in enumerate(ndimage.find_objects(full + 1)):
            if window is None:  # cannot happen when upsampling; kept for safety
                continue
            ys, xs = window
            regions.append(Region((float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)), 0, 1.0,
                                  full == k))
        return regions


@register_detector("superpixels", description="SLIC or Felzenszwalb-Huttenlocher segments as regions with masks",
                   source="Achanta et al., TPAMI 2012 (SLIC); Felzenszwalb & Huttenlocher, IJCV 2004 "
                          "(scikit-image segmentation)")
def create_superpixels(**options: Any) -> SuperpixelDetector:
    """``superpixels`` detector: ``method`` (slic, felzenszwalb), ``n_segments``, ``compactness`` (slic),
    ``scale``, ``sigma``, ``min_size`` (felzenszwalb), ``max_side`` (px)."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"superpixels: unknown option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_OPTIONS)}")
    return SuperpixelDetector(**options)
