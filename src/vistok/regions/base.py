"""Regions and the detector registry behind the ``regions`` tokenizer.

A detector turns an RGB image into :class:`Region` objects: a box in source pixels, a label id, a score and
optionally a boolean mask. Backends live one per module in ``vistok.regions.detectors`` and register a
factory by name, like tokenizers do; they must not import heavy packages (torch, cv2, onnxruntime) at module
level, only inside their functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from vistok._registry import Registry

__all__ = ["Region", "Detector", "DetectorInfo", "register_detector", "list_detectors", "detector_info",
           "load_detector", "nms", "box_iou"]


@dataclass
class Region:
    """One detected region. ``box`` is ``(x0, y0, x1, y1)`` in source-image pixels (x1, y1 exclusive edges,
    floats), ``label`` an id into the detector's ``labels``, ``score`` in [0, 1] where the detector has one
    (1.0 otherwise), ``mask`` an optional ``(H, W)`` bool array over the whole source image."""

    box: tuple[float, float, float, float]
    label: int = 0
    score: float = 1.0
    mask: np.ndarray | None = None


@runtime_checkable
class Detector(Protocol):
    """What every backend offers: ``labels`` (id -> name), ``detect(image) -> list[Region]`` and ``check()``,
    which loads its model now so that bad options or files fail before any image is read."""

    name: str
    labels: Sequence[str]

    def detect(self, image: Image.Image) -> list[Region]: ...

    def check(self) -> Any: ...


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    description: str
    source: str
    factory: Callable[..., Detector] = field(repr=False)


_detectors: Registry[DetectorInfo] = Registry("detector", package="vistok.regions.detectors",
                                              hint="(see vistok.regions.base.list_detectors())")


def register_detector(name: str, *, description: str, source: str) -> Callable[[Callable[..., Detector]], Callable[..., Detector]]:
    """Decorator for a factory ``f(**options) -> Detector``; ``source`` names the paper/library it follows."""
    return _detectors.decorator(name, lambda factory: DetectorInfo(name, description, source, factory))


def list_detectors(pattern: str = "*") -> list[str]:
    """Sorted detector names matching a shell-style ``pattern``."""
    return _detectors.list(pattern)


def detector_info(name: str) -> DetectorInfo:
    """The registry entry for ``name``; an unknown name raises ``KeyError`` listing close matches."""
    return _detectors.get(name)


def load_detector(name: str, **options: Any) -> Detector:
    """Create the detector ``name`` with its options (``TypeError`` naming them for an unknown one)."""
    return detector_info(name).factory(**options)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of ``(N, 4)`` and ``(M, 4)`` x0, y0, x1, y1 boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


from vistok.regions.nms import nms  # noqa: E402  (re-exported: the detectors' NMS lives in vistok.regions.nms)
