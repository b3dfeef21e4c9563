"""``text``: text-line boxes from a Differentiable Binarization (DB) text detector run with onnxruntime.

The default network is PP-OCRv4's detection model (PaddleOCR), taken as the ONNX file that ships inside the
``rapidocr-onnxruntime`` wheel; only the file is used, the package is never imported. The pre- and
post-processing are written here, following Liao et al., "Real-time Scene Text Detection with Differentiable
Binarization", AAAI 2020, and PaddleOCR's documented inference settings:

* pre-processing: the image is scaled so its longer side is at most ``max_side`` (never up, except that an
  image whose longer side is under 32 px is enlarged to 32), padded at the right/bottom to multiples of 32 with
  the normalised value 0, channels in BGR order, ``(pixel / 255 - mean) / std`` with ImageNet
  mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), NCHW float32. Very large images are therefore
  detected at ``max_side``: text lower than ~6 working pixels (``6 * longer side / max_side`` source pixels)
  is lost; raise ``max_side`` for big scans.
* post-processing: the probability map is thresholded at ``box_threshold``; each outer contour of the binary
  map is a shrunk text kernel, scored by the mean probability inside it (dropped below ``score_threshold``);
  its minimum-area rectangle is "unclipped" by ``D = A * unclip_ratio / L`` (A its area, L its perimeter, the
  inverse of the shrink used to make DB's training kernels), by moving each side out by D, which is exact for a
  rectangle; kernels whose short side is under ``min_size`` working pixels are dropped. The rotated rectangle
  is mapped back to source pixels and clipped; ``Region.box`` is its axis-aligned bounding box and
  ``TextRegion.quad`` its four corners.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok.regions.base import Region, register_detector

__all__ = ["TextDetector", "TextRegion", "packaged_model", "unclip_rectangle", "create_text"]

PIP_MODEL = "pip install --no-deps rapidocr-onnxruntime==1.4.4"
PACKAGED_FILE = "ch_PP-OCRv4_det_infer.onnx"
MEAN = (0.485, 0.456, 0.406)  # applied to the B, G, R planes in this order, as PaddleOCR does on cv2 images
STD = (0.229, 0.224, 0.225)
STRIDE = 32
OPTIONS = {"model": None, "max_side": 960, "box_threshold": 0.3, "score_threshold": 0.5, "unclip_ratio": 1.6,
           "min_size": 3, "max_candidates": 1000, "threads": None}


@dataclass
class TextRegion(Region):
    """A :class:`Region` that also keeps the rotated rectangle: ``quad`` is ``(4, 2)`` float x, y corners in
    source pixels (not clipped; ``box`` is their clipped bounding box)."""

    quad: np.ndarray | None = None


def packaged_model() -> Path:
    """Path of PP-OCRv4's detection ONNX inside the installed ``rapidocr-onnxruntime`` (not imported)."""
    try:
        spec = importlib.util.find_spec("rapidocr_onnxruntime")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "models" / PACKAGED_FILE
        if path.is_file():
            return path
    raise ImportError(f"the text detector's default model ({PACKAGED_FILE}) comes from the rapidocr-onnxruntime "
                      f"wheel, which is not installed; run `{PIP_MODEL}` (only its ONNX files are used), or pass "
                      "model='path/to/a DB text detection .onnx'")


def working_size(width: int, height: int, max_side: int) -> tuple[int, int, int, int]:
    """``(resized_w, resized_h, padded_w, padded_h)``: the image scaled so its longer side is at most
    ``max_side`` (enlarged to 32 only when the longer side is under 32), then padded up to multiples of 32."""
    longer = max(width, height)
    scale = min(1.0, max_side / longer)
    if longer * scale < STRIDE:
        scale = STRIDE / longer
    rw, rh = max(1, round(width * scale)), max(1, round(height * scale))
    return rw, rh, -(-rw // STRIDE) * STRIDE, -(-rh // STRIDE) * STRIDE


def unclip_rectangle(rect: tuple[tuple[float, float], tuple[float, float], float],
                     ratio: float) -> tuple[tuple[float, float], tuple[float, float], float]:
    """DB's unclip of a rotated rectangle ``((cx, cy), (w, h), angle)`` (cv2.minAreaRect's form): every side
    moves out by ``D = A * ratio / L`` with ``A = w * h`` and ``L = 2 (w + h)``, so ``(w, h)`` grows by 2D."""
    (cx, cy), (w, h), angle = rect
    perimeter = 2.0 * (w + h)
    distance = w * h * ratio / perimeter if perimeter > 0 else 0.0
    return (cx, cy), (w + 2 * distance, h + 2 * distance), angle


def _corners(rect: tuple[tuple[float, float], tuple[float, float], float]) -> np.ndarray:
    """The four corners of a rotated rectangle (angle in degrees, cv2.minAreaRect's convention)."""
    (cx, cy), (w, h), angle = rect
    a = math.radians(angle)
    u = np.array([math.cos(a), math.sin(a)]) * (w / 2)
    v = np.array([-math.sin(a), math.cos(a)]) * (h / 2)
    c = np.array([cx, cy])
    return np.stack([c - u - v, c + u - v, c + u + v, c - u + v])


class TextDetector:
    """DB text detection (Liao et al., AAAI 2020) with PP-OCR's det ONNX; see the module docstring."""

    name = "text"
    labels = ["text"]

    def __init__(self, model: str | os.PathLike | None = None, max_side: int = 960, box_threshold: float = 0.3,
                 score_threshold: float = 0.5, unclip_ratio: float = 1.6, min_size: float = 3,
                 max_candidates: int = 1000, threads: int | None = None) -> None:
        if model is not None:
            path = Path(os.fspath(model)).expanduser()
            if not path.exists():
                raise FileNotFoundError(f"text detector model {str(model)!r} does not exist; pass the path of a "
                                        "DB-style text detection .onnx file, or model=None for PP-OCRv4's")
            if not path.is_file():
                raise ValueError(f"text detector model {str(model)!r} is a folder; pass the .onnx file itself")
            model = path
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < STRIDE:
            raise ValueError(f"max_side must be an int >= {STRIDE} (working pixels), got {max_side!r}")
        for option, value in (("box_threshold", box_threshold), ("score_threshold", score_threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{option} is a probability in [0, 1], got {value!r}")
        if isinstance(unclip_ratio, bool) or not isinstance(unclip_ratio, (int, float)) or unclip_ratio < 0:
            raise ValueError(f"unclip_ratio must be a number >= 0 (PP-OCR uses 1.5-2.0), got {unclip_ratio!r}")
        if isinstance(min_size, bool) or not isinstance(min_size, (int, float)) or min_size < 0:
            raise ValueError(f"min_size must be a number >= 0 (working pixels), got {min_size!r}")
        if isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1:
            raise ValueError(f"max_candidates must be an int >= 1, got {max_candidates!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None (onnxruntime's default) or an int >= 1, got {threads!r}")
        self.model: Path | None = model
        self.max_side, self.threads = max_side, threads
        self.box_threshold, self.score_threshold = float(box_threshold), float(score_threshold)
        self.unclip_ratio, self.min_size, self.max_candidates = float(unclip_ratio), float(min_size), max_candidates
        self._session: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"TextDetector(model={str(self.model) if self.model else 'PP-OCRv4 det'!r}, max_side={self.max_side}, "
                f"box_threshold={self.box_threshold}, score_threshold={self.score_threshold}, "
                f"unclip_ratio={self.unclip_ratio}, min_size={self.min_size})")

    @property
    def session(self) -> Any:
        """The onnxruntime ``InferenceSession``, created on first use."""
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._session = self._load()
        return self._session

    def _load(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("the text detector runs with onnxruntime; pip install 'vistok[regions]'") from err
        path = self.model if self.model is not None else packaged_model()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own InvalidProtobuf / Fail / NoSuchFile types
            raise ValueError(f"text detector model {str(path)!r} is not a loadable ONNX model ({err}); pass a "
                             "DB-style text detection .onnx file (input N x 3 x H x W, output a probability map), "
                             "or model=None for PP-OCRv4's") from err
        inputs = session.get_inputs()
        channels = inputs[0].shape[1] if len(inputs) == 1 and len(inputs[0].shape) == 4 else 0
        if isinstance(channels, int) and channels != 3:  # a dynamic channel axis is a str or None
            raise ValueError(f"text detector model {str(path)!r} takes {[(i.name, i.shape) for i in inputs]}; a DB "
                             "text detector takes one N x 3 x H x W image tensor")
        return session

    def check(self) -> TextDetector:
        """Load the model now (instead of on the first :meth:`detect`); raises what loading raises."""
        _ = self.session
        return self

    def preprocess(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int]]:
        """``(tensor, (resized_w, resized_h))``: the ``1 x 3 x H x W`` float32 BGR input (see the module
        docstring) and the size the image content has inside it (the rest is padding)."""
        image = _rgb(image)
        rw, rh, pw, ph = working_size(image.width, image.height, self.max_side)
        if (rw, rh) != image.size:
            image = image.resize((rw, rh), Image.Resampling.BILINEAR)  # PIL widens the filter when shrinking
        pixels = np.asarray(image, np.float32)[:, :, ::-1] / 255.0  # BGR
        tensor = np.zeros((1, 3, ph, pw), np.float32)
        tensor[0, :, :rh, :rw] = ((pixels - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)
        return tensor, (rw, rh)

    def probability_map(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The network's ``(H, W)`` text probability map over the padded working tensor; ``image`` is a PIL
        image or a tensor from :meth:`preprocess`."""
        tensor = self.preprocess(image)[0] if isinstance(image, Image.Image) else np.asarray(image, np.float32)
        if tensor.ndim != 4 or tensor.shape[:2] != (1, 3):
            raise ValueError(f"probability_map takes a PIL image or a 1 x 3 x H x W tensor from preprocess(), got "
                             f"an array of shape {tensor.shape}")
        session = self.session
        out = np.asarray(session.run(None, {session.get_inputs()[0].name: tensor})[0])
        if out.ndim == 4 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 3 or out.shape[1:] != tensor.shape[2:]:
            raise ValueError(f"text detector model gave an output of shape {out.shape} for an input of shape "
                             f"{tensor.shape}; a DB text detector gives N x 1 x H x W probabilities")
        return out[0]

    def boxes(self, probability: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """DB post-processing on a ``(H, W)`` probability map: ``(quad, score)`` pairs in map pixels (continuous
        coordinates, pixel ``i`` spans ``[i, i + 1)``), before mapping to the source image."""
        import cv2

        probability = np.asarray(probability, np.float32)
        bitmap = (probability > self.box_threshold).astype(np.uint8)
        contours, _ = cv2.findContours(bitmap, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        areas = [cv2.contourArea(c) + len(c) for c in contours]
        order = sorted(range(len(contours)), key=lambda i: -areas[i])[: self.max_candidates]
        found = []
        for i in order:
            contour = contours[i]
            (cx, cy), (w, h), angle = cv2.minAreaRect(contour)
            # contour points are pixel indices: move them to pixel centres; the size stays that of the rectangle
            # through the boundary pixels' centres, the one PP-OCR's unclip_ratio was tuned on
            kernel = ((cx + 0.5, cy + 0.5), (w, h), angle)
            if min(kernel[1]) < self.min_size:
                continue
            x, y, bw, bh = cv2.boundingRect(contour)
            mask = np.zeros((bh, bw), np.uint8)
            cv2.fillPoly(mask, [contour.reshape(-1, 2) - (x, y)], 1)
            score = float(probability[y:y + bh, x:x + bw][mask.astype(bool)].mean())
            if score < self.score_threshold:
                continue
            found.append((_corners(unclip_rectangle(kernel, self.unclip_ratio)), score))
        return found

    def detect(self, image: Image.Image) -> list[Region]:
        """Text regions in source pixels, in reading order (top to bottom, then left to right)."""
        image = _rgb(image)
        tensor, (rw, rh) = self.preprocess(image)
        probability = self.probability_map(tensor)
        sx, sy = image.width / rw, image.height / rh
        regions: list[Region] = []
        for quad, score in self.boxes(probability):
            quad = quad * (sx, sy)
            x0, y0 = np.clip(quad.min(0), 0, (image.width, image.height))
            x1, y1 = np.clip(quad.max(0), 0, (image.width, image.height))
            if x1 > x0 and y1 > y0:
                regions.append(TextRegion((float(x0), float(y0), float(x1), float(y1)), 0, score, None, quad))
        regions.sort(key=lambda r: (r.box[1], r.box[0]))
        return regions


def _rgb(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"the text detector takes a PIL.Image.Image, got {type(image).__name__}; open files with "
                        "PIL.Image.open(path)")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"the text detector got an empty image of size {image.size}")
    return image if image.mode == "RGB" else image.convert("RGB")


@register_detector("text", description="text-line boxes from PP-OCRv4's DB text detector (onnxruntime; model file "
                   "from rapidocr-onnxruntime)",
                   source="Liao et al., Differentiable Binarization, AAAI 2020; PaddleOCR PP-OCRv4 det model")
def create_text(model: str | os.PathLike | None = None, max_side: int = 960, box_threshold: float = 0.3,
                score_threshold: float = 0.5, unclip_ratio: float = 1.6, min_size: float = 3,
                max_candidates: int = 1000, threads: int | None = None, **unknown: Any) -> TextDetector:
    """The ``text`` detector; options as :class:`TextDetector` (unknown ones raise ``TypeError``)."""
    if unknown:
        raise TypeError(f"detector 'text' has no option {', '.join(map(repr, sorted(unknown)))}; options: "
                        + ", ".join(f"{k}={v!r}" for k, v in OPTIONS.items()))
    return TextDetector(model, max_side, box_threshold, score_threshold, unclip_ratio, min_size, max_candidates,
                        threads)
