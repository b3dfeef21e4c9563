"""``faces``: frontal faces with a boosted cascade, Haar (OpenCV) or MB-LBP (scikit-image).

* ``method="haar"``: OpenCV's ``haarcascade_frontalface_default.xml`` (Viola & Jones, "Rapid object detection
  using a boosted cascade of simple features", CVPR 2001; Lienhart & Maydt's extended Haar features, ICIP 2002)
  run by ``cv2.CascadeClassifier.detectMultiScale3(..., outputRejectLevels=True)`` on the grey image. A cascade
  has no probability; the score is the logistic ``1 / (1 + exp(-w / 4))`` of the box's level weight ``w`` (the
  sum of the last stage's weak classifiers for the best window of its group; about 0 to 12 on faces): monotone
  in the cascade's own confidence, so it ranks detections for AP, but it is not a calibrated probability.
* ``method="lbp"``: scikit-image's ``Cascade`` with ``lbp_frontal_face_cascade_filename()`` (multi-block LBP
  features, Liao et al., "Learning Multi-scale Block Local Binary Patterns for Face Recognition", ICB 2007)
  and ``detect_multi_scale``. It returns boxes only; the score is ``1 - exp(-side / 48)`` of the box's side in
  working pixels, a ranking by size alone (small detections are the cascade's usual false positives: on the
  synthetic faces set their median side is 72 px against 116 px for true faces), not a confidence.
  scikit-image's grouping keeps overlapping and nested duplicates of one face (OpenCV's grouping drops boxes
  inside larger ones), so greedy non-maximum suppression at IoU ``nms_iou`` (default 0.3; ``None``: off) follows,
  keeping the higher score, here the larger box; on ``benchmarks/regions_ap.py``'s 60 synthetic images it lifts
  AP50 from 0.68 to 0.91.

Images whose longer side exceeds ``max_side`` are scaled down (area interpolation) first and the boxes scaled
back to source pixels. ``min_size`` is the smallest face side searched, in source pixels (never below the
cascade's 24-pixel window at the working size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from vistok.regions.base import Region, register_detector
from vistok.regions.nms import nms

__all__ = ["FaceDetector", "create_faces", "METHODS"]

METHODS = ("haar", "lbp")
HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_TEMPERATURE = 4.0  # level weight -> score: logistic(w / 4) spreads the usual 0..12 over about 0.5..0.95
LBP_SIDE = 48.0  # box side (working px) -> score: 1 - exp(-side / 48)
_OPTIONS = ("method", "min_size", "scale_factor", "min_neighbors", "max_side", "nms_iou")
_INSTALL = "pip install 'vistok[regions]'"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class FaceDetector:
    """Frontal faces, label ``face``; see the module docstring for the methods and the scores."""

    name = "faces"
    labels = ["face"]

    def __init__(self, method: str = "haar", min_size: int = 20, scale_factor: float = 1.1, min_neighbors: int = 5,
                 max_side: int = 1024, nms_iou: float | None = 0.3) -> None:
        if method not in METHODS:
            raise ValueError(f"faces: unknown method {method!r}; pass one of {', '.join(METHODS)}")
        if not (_is_int(min_size) and min_size >= 1):
            raise ValueError(f"faces: min_size is the smallest face side in pixels, an int >= 1, got {min_size!r}")
        if not (isinstance(scale_factor, (int, float, np.integer, np.floating)) and not isinstance(scale_factor, bool)
                and scale_factor > 1.0):
            raise ValueError(f"faces: scale_factor is the step between searched scales, a number > 1 (e.g. 1.1), "
                             f"got {scale_factor!r}")
        if not (_is_int(min_neighbors) and min_neighbors >= 0):
            raise ValueError(f"faces: min_neighbors is how many overlapping raw hits a face needs, an int >= 0, "
                             f"got {min_neighbors!r}")
        if not (_is_int(max_side) and max_side >= 32):
            raise ValueError(f"faces: max_side is the longest working side in pixels, an int >= 32, got {max_side!r}")
        if nms_iou is not None and not (isinstance(nms_iou, (int, float, np.integer, np.floating))
                                        and not isinstance(nms_iou, bool) and 0 <= nms_iou <= 1):
            raise ValueError(f"faces: nms_iou is the IoU above which lbp drops the smaller of two boxes, a number in "
                             f"[0, 1] or None, got {nms_iou!r}")
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.method, self.min_size, self.scale_factor = method, int(min_size), float(scale_factor)
        self.min_neighbors, self.max_side = int(min_neighbors), int(max_side)
        self._cascade: Any = None

    def __repr__(self) -> str:
        return (f"FaceDetector(method={self.method!r}, min_size={self.min_size}, scale_factor={self.scale_factor}, "
                f"min_neighbors={self.min_neighbors}, max_side={self.max_side}, nms_iou={self.nms_iou})")

    def check(self) -> None:
        """Load the cascade now (ImportError with the pip command when its package is missing)."""
        self.cascade  # noqa: B018

    @property
    def cascade(self) -> Any:
        if self._cascade is None:
            if self.method == "haar":
                try:
                    import cv2
                except ImportError as e:
                    raise ImportError(f"faces(method='haar') needs OpenCV: {_INSTALL}") from e
                path = cv2.data.haarcascades + HAAR_FILE
                cascade = cv2.CascadeClassifier(path)
                if cascade.empty():
                    raise RuntimeError(f"faces: OpenCV could not load {path} (OpenCV 5 ships no Haar cascades; "
                                       "install opencv-python-headless<5)")
            else:
                try:
                    from skimage.data import lbp_frontal_face_cascade_filename
                    from skimage.feature import Cascade
                except ImportError as e:
                    raise ImportError(f"faces(method='lbp') needs scikit-image: {_INSTALL}") from e
                cascade = Cascade(lbp_frontal_face_cascade_filename())
            self._cascade = cascade
        return self._cascade

    def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(w, h)`` the cascade runs at: ``size`` scaled so its longer side is at most ``max_side``."""
        w, h = size
        s = min(1.0, self.max_side / max(w, h))
        return (max(1, round(w * s)), max(1, round(h * s))) if s < 1 else (w, h)

    def grey(self, image: Image.Image) -> np.ndarray:
        """The uint8 grey image at the working size the cascade sees (OpenCV's RGB->grey weights)."""
        import cv2

        rgb = np.asarray(image.convert("RGB"))
        size = self.working_size(image.size)
        if size != image.size:
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    def raw(self, grey: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes, scores)`` on a grey working-size image, searching faces of at least ``side`` pixels:
        ``(k, 4)`` x0, y0, x1, y1 and ``(k,)`` in (0, 1)."""
        if self.method == "haar":
            rects, _, weights = self.cascade.detectMultiScale3(
                grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side),
                outputRejectLevels=True)
            rects = np.asarray(rects, np.float64).reshape(-1, 4)
            w = np.asarray(weights, np.float64).reshape(-1)
            scores = 1.0 / (1.0 + np.exp(-w / HAAR_TEMPERATURE))
        else:
            cascade = self.cascade
            side = max(side, cascade.window_width, cascade.window_height)
            found = cascade.detect_multi_scale(img=grey, scale_factor=self.scale_factor, step_ratio=1,
                                               min_size=(side, side), max_size=grey.shape[:2],
                                               min_neighbor_number=self.min_neighbors)
            rects = np.asarray([(d["c"], d["r"], d["width"], d["height"]) for d in found], np.float64).reshape(-1, 4)
            scores = 1.0 - np.exp(-np.sqrt(rects[:, 2] * rects[:, 3]) / LBP_SIDE)
            if self.nms_iou is not None and len(rects):
                keep = np.sort(nms(np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1), scores,
                                   self.nms_iou))
                rects, scores = rects[keep], scores[keep]
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        return boxes, scores

    def detect(self, image: Image.Image) -> list[Region]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"faces.detect takes a PIL.Image.Image, got {type(image).__name__}")
        w, h = image.size
        grey = self.grey(image)
        boxes, scores = self.raw(grey, max(1, round(self.min_size * grey.shape[1] / w)))
        sx, sy = w / grey.shape[1], h / grey.shape[0]
        boxes = boxes * np.array([sx, sy, sx, sy])
        boxes = np.clip(boxes, 0, [w, h, w, h])
        order = np.lexsort((boxes[:, 0], boxes[:, 1], -scores))  # highest score first, then row-major
        return [Region(tuple(float(v) for v in boxes[i]), 0, float(scores[i])) for i in order
                if boxes[i, 2] > boxes[i, 0] and boxes[i, 3] > boxes[i, 1]]


def _check_options(name: str, options: dict[str, Any], valid: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


@register_detector("faces", description="frontal faces: Haar cascade (OpenCV) or MB-LBP cascade (scikit-image)",
                   source="Viola & Jones, CVPR 2001 (OpenCV haarcascade_frontalface_default); "
                          "Liao et al., ICB 2007 (scikit-image Cascade, MB-LBP)")
def create_faces(**options: Any) -> FaceDetector:
    """``faces`` detector: ``method`` (haar, lbp), ``min_size`` (px), ``scale_factor``, ``min_neighbors``,
    ``max_side`` (px), ``nms_iou`` (lbp only)."""
    _check_options("faces", options, _OPTIONS)
    return FaceDetector(**options)
