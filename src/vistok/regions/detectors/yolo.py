"""``yolo``: any Ultralytics YOLO *detect* export in ONNX (YOLOv5, YOLOv8, YOLO11), run by onnxruntime.

YOLO (Redmon, Divvala, Girshick & Farhadi, "You Only Look Once: Unified, Real-Time Object Detection", CVPR 2016)
predicts boxes and class scores in one pass over the whole image. This backend reads the ONNX files that
Ultralytics' ``model.export(format="onnx")`` writes (https://docs.ultralytics.com/modes/export/):

* input ``(1, 3, H, W)`` float RGB in [0, 1]; a static ``H, W`` is used as is, a dynamic one takes ``size=``,
  else the ``imgsz`` the exporter wrote into the metadata, else 640;
* metadata ``names`` (a Python dict literal ``{0: 'person', ...}``, read with ``ast.literal_eval``), ``task``
  (only ``detect`` is accepted), ``imgsz`` and ``stride``;
* one output, either ``(1, 4 + classes, boxes)`` (YOLOv8/YOLO11: cx, cy, w, h then one score per class, no
  objectness) or ``(1, boxes, 5 + classes)`` (YOLOv5: cx, cy, w, h, objectness, then class probabilities),
  boxes in input pixels. When the class count is known (from ``names`` or ``labels=``) it decides the layout;
  otherwise the shorter axis is taken as the per-box one.

Pre- and post-processing follow Ultralytics' predictor: letterbox (keep the aspect ratio, resize with OpenCV's
bilinear ``INTER_LINEAR``, pad centred with grey 114 to the input size), score = the best class score (times the
objectness for YOLOv5), keep scores ``> conf``, class-wise greedy NMS at IoU ``iou`` on the input-space boxes,
the ``max_det`` best, then undo the padding and scaling and clip to the source image. Boxes that clip to nothing
are dropped.
"""

from __future__ import annotations

import ast
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok.regions.base import Region, register_detector
from vistok.regions.nms import batched_nms

__all__ = ["YoloDetector", "create_yolo", "letterbox", "decode"]

_OPTIONS = ("model", "labels", "conf", "iou", "max_det", "size", "threads")
_INSTALL = "pip install 'vistok[regions]'"
_PAD = 114
_DEFAULT_SIZE = 640
_MAX_NMS = 30000  # candidates entering NMS at most (the best-scoring ones), as Ultralytics does
_SUPPORTED = ("(1, 4 + classes, boxes) from YOLOv8/YOLO11 detect exports, or (1, boxes, 5 + classes) from YOLOv5 "
              "detect exports")


@dataclass(frozen=True)
class Letterbox:
    """How a source image was placed in the model input: ``scale`` per axis and ``pad`` (left, top) in input
    pixels; input ``x = source_x * sx + left``."""

    sx: float
    sy: float
    left: int
    top: int

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """``(N, 4)`` input-space x0, y0, x1, y1 -> source pixels (not clipped)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        offset = np.array([self.left, self.top, self.left, self.top], np.float64)
        return (boxes - offset) / np.array([self.sx, self.sy, self.sx, self.sy])


def letterbox(rgb: np.ndarray, height: int, width: int) -> tuple[np.ndarray, Letterbox]:
    """``(height, width, 3)`` uint8 input and its :class:`Letterbox`: ``rgb`` (H, W, 3) scaled by
    ``min(height / H, width / W)`` keeping its aspect ratio (OpenCV ``INTER_LINEAR``) and padded centred with
    grey 114, the way Ultralytics' ``LetterBox(auto=False)`` does."""
    import cv2

    h, w = rgb.shape[:2]
    r = min(height / h, width / w)
    new_w, new_h = max(1, min(width, round(w * r))), max(1, min(height, round(h * r)))
    if (new_w, new_h) != (w, h):
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    out = np.full((height, width, 3), _PAD, np.uint8)
    out[top:top + new_h, left:left + new_w] = rgb
    return out, Letterbox(new_w / w, new_h / h, left, top)


def _layout(shape: tuple[Any, ...], classes: int | None) -> str:
    """``"v8"`` or ``"v5"`` for an output shape (ints, or None/str for dynamic axes); ValueError otherwise."""
    if len(shape) == 3 and (not isinstance(shape[0], int) or shape[0] == 1):
        a, b = (d if isinstance(d, int) else None for d in shape[1:])
        if classes is not None:
            if a == 4 + classes:
                return "v8"
            if b == 5 + classes:
                return "v5"
            if a is not None or b is not None:
                raise ValueError(
                    f"output shape {_show(shape)} does not fit {classes} classes: expected (1, {4 + classes}, boxes) "
                    f"(YOLOv8/YOLO11) or (1, boxes, {5 + classes}) (YOLOv5); pass labels= one name per class of "
                    "this model")
        if a is not None and a >= 5 and (b is None or a < b):
            return "v8"
        if b is not None and b >= 6 and (a is None or b < a):
            return "v5"
    raise ValueError(f"output shape {_show(shape)} is not a YOLO detect output; supported: {_SUPPORTED}")


def _show(shape: tuple[Any, ...]) -> str:
    dims = [str(d) if isinstance(d, int) else "?" for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def decode(output: np.ndarray, layout: str, conf: float, iou: float, max_det: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(boxes, scores, labels)`` from one raw output ``(1, 4 + nc, N)`` (``"v8"``) or ``(1, N, 5 + nc)``
    (``"v5"``): input-space x0, y0, x1, y1 boxes after the score filter, class-wise NMS and ``max_det``, best
    first."""
    rows = output[0].T if layout == "v8" else output[0]
    rows = np.asarray(rows, np.float32)
    if layout == "v8":
        cls = rows[:, 4:]
    else:
        cls = rows[:, 5:] * rows[:, 4:5]
    labels = cls.argmax(1)
    scores = cls[np.arange(len(cls)), labels]
    keep = np.flatnonzero(scores > conf)
    if len(keep) > _MAX_NMS:
        keep = keep[np.argsort(-scores[keep], kind="stable")[:_MAX_NMS]]
    cx, cy, w, h = (rows[keep, i].astype(np.float64) for i in range(4))
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores, labels = scores[keep].astype(np.float64), labels[keep]
    idx = batched_nms(boxes, scores, labels, iou)[:max_det]  # best first, ties by index
    return boxes[idx], scores[idx], labels[idx]


def _names(raw: str | None, origin: str) -> list[str] | None:
    """Class names from Ultralytics' ``names`` metadata (a dict or list literal), None when absent/unreadable."""
    if raw is None:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        warnings.warn(f"yolo: {origin}: metadata 'names' is not a Python literal; using 'class N' labels", stacklevel=3)
        return None
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value or not all(isinstance(k, int) and k >= 0 for k in value):
        warnings.warn(f"yolo: {origin}: metadata 'names' is not an id -> name mapping; using 'class N' labels",
                      stacklevel=3)
        return None
    return [str(value.get(i, f"class {i}")) for i in range(max(value) + 1)]


@dataclass
class _Graph:
    session: Any
    input_name: str
    input_type: Any
    height: int
    width: int
    layout: str
    labels: list[str]


class YoloDetector:
    """An Ultralytics YOLO detect export (ONNX) on onnxruntime's CPU provider; see the module docstring."""

    name = "yolo"

    def __init__(self, model: str | os.PathLike[str] | None = None, labels: list[str] | None = None,
                 conf: float = 0.25, iou: float = 0.45, max_det: int = 300,
                 size: int | tuple[int, int] | None = None, threads: int | None = None) -> None:
        if model is None:
            raise ValueError("yolo needs model=PATH of an Ultralytics ONNX export (e.g. from "
                             "`yolo export model=yolov8n.pt format=onnx`); vistok ships and downloads none")
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError(f"yolo: model is the path of an ONNX file, got {type(model).__name__}")
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"yolo: model file {str(path)!r} does not exist; pass model=PATH of an "
                                    "Ultralytics ONNX export")
        if labels is not None:
            if isinstance(labels, str) or not all(isinstance(x, str) for x in labels) or not len(labels):
                raise ValueError(f"yolo: labels is a list of class names (id -> name), got {labels!r}")
            labels = list(labels)
        for key, value in (("conf", conf), ("iou", iou)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"yolo: {key} is a number in [0, 1], got {value!r}")
        if isinstance(max_det, bool) or not isinstance(max_det, (int, np.integer)) or max_det < 1:
            raise ValueError(f"yolo: max_det is the most boxes returned, an int >= 1, got {max_det!r}")
        if size is not None:
            pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
            if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 32
                                         for s in pair):
                raise ValueError(f"yolo: size is the input side (an int) or (height, width), each >= 32, got {size!r}")
            size = (int(pair[0]), int(pair[1]))
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"yolo: threads is an int >= 1 (or None for onnxruntime's default), got {threads!r}")
        self.model, self.conf, self.iou, self.max_det = path, float(conf), float(iou), int(max_det)
        self.size, self.threads, self._labels = size, threads, labels
        self._graph: _Graph | None = None

    def __repr__(self) -> str:
        return (f"YoloDetector(model={str(self.model)!r}, conf={self.conf}, iou={self.iou}, max_det={self.max_det}, "
                f"size={self.size!r})")

    def check(self) -> YoloDetector:
        """Open the graph now: ImportError with the pip command, ValueError for a graph this backend cannot read."""
        self.graph  # noqa: B018
        return self

    @property
    def labels(self) -> list[str]:
        """Class names, id -> name (opens the graph on first use)."""
        return self.graph.labels

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the model input the image is letterboxed to."""
        return self.graph.height, self.graph.width

    @property
    def graph(self) -> _Graph:
        if self._graph is None:
            self._graph = self._open()
        return self._graph

    def _open(self) -> _Graph:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError(f"yolo needs onnxruntime: {_INSTALL}") from e
        origin = str(self.model)
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(origin, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"yolo: {origin!r} could not be opened as an ONNX graph ({e}); pass model=PATH of an "
                             "Ultralytics ONNX export") from e
        meta = dict(session.get_modelmeta().custom_metadata_map)
        task = meta.get("task", "detect")
        if task != "detect":
            raise ValueError(f"yolo: {origin!r} is an Ultralytics {task!r} export; only detect exports are supported")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        dims = inputs[0].shape if len(inputs) == 1 else []
        if len(dims) != 4 or isinstance(dims[1], int) and dims[1] != 3:
            raise ValueError(f"yolo: {origin!r} takes {[(i.name, i.shape) for i in inputs]}; a YOLO export takes one "
                             "(1, 3, height, width) image")
        if len(outputs) != 1:
            raise ValueError(f"yolo: {origin!r} has {len(outputs)} outputs ({', '.join(o.name for o in outputs)}); "
                             f"a YOLO detect export has one, of shape {_SUPPORTED}")
        height, width = self._input_hw(inputs[0].shape, meta, origin)
        input_type = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        labels = self._labels if self._labels is not None else _names(meta.get("names"), origin)
        classes = None if labels is None else len(labels)
        shape = tuple(d if isinstance(d, int) else None for d in outputs[0].shape)
        try:
            layout = _layout(shape, classes)
        except ValueError as e:
            if None not in shape:
                raise ValueError(f"yolo: {origin!r}: {e}") from None
            # dynamic axes hide the layout: run once on a grey image and read the real shape
            probe = np.full((1, 3, height, width), _PAD / 255.0, input_type)
            shape = tuple(session.run(None, {inputs[0].name: probe})[0].shape)
            try:
                layout = _layout(shape, classes)
            except ValueError as e:
                raise ValueError(f"yolo: {origin!r}: {e}") from None
        if labels is None:
            count = shape[1] - 4 if layout == "v8" else shape[2] - 5
            labels = [f"class {i}" for i in range(count)]
        return _Graph(session, inputs[0].name, input_type, height, width, layout, labels)

    def _input_hw(self, shape: list[Any], meta: dict[str, str], origin: str) -> tuple[int, int]:
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int):
            if self.size is not None and self.size != (h, w):
                raise ValueError(f"yolo: {origin!r} has a fixed {h}x{w} (height x width) input; size={self.size!r} "
                                 "does not match it (leave size=None)")
            return h, w
        if self.size is not None:
            size = self.size
        else:
            try:
                imgsz = ast.literal_eval(meta.get("imgsz", "None"))
            except (ValueError, SyntaxError):
                imgsz = None
            if isinstance(imgsz, int):
                imgsz = [imgsz, imgsz]
            ok = isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(isinstance(s, int) for s in imgsz)
            size = (int(imgsz[0]), int(imgsz[1])) if ok else (_DEFAULT_SIZE, _DEFAULT_SIZE)
        try:
            stride = int(meta.get("stride", "32"))
        except ValueError:
            stride = 32
        if size[0] % stride or size[1] % stride:
            raise ValueError(f"yolo: {origin!r} has a dynamic input; size={size} must be a multiple of its stride "
                             f"{stride}")
        return size

    def run(self, image: Image.Image) -> tuple[np.ndarray, Letterbox]:
        """The raw model output for ``image`` and where the image sits in the input."""
        graph = self.graph
        rgb = np.asarray(image.convert("RGB"))
        boxed, placement = letterbox(rgb, graph.height, graph.width)
        tensor = (boxed.transpose(2, 0, 1)[None].astype(np.float32) / 255.0).astype(graph.input_type)
        return np.asarray(graph.session.run(None, {graph.input_name: tensor})[0]), placement

    def detect(self, image: Image.Image) -> list[Region]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"yolo.detect takes a PIL.Image.Image, got {type(image).__name__}")
        graph = self.graph
        output, placement = self.run(image)
        try:
            layout = _layout(tuple(output.shape), len(graph.labels))
        except ValueError as e:
            raise ValueError(f"yolo: {str(self.model)!r}: {e}") from None
        if layout != graph.layout:
            raise ValueError(f"yolo: {str(self.model)!r}: output shape {_show(output.shape)} changed layout")
        boxes, scores, labels = decode(output, layout, self.conf, self.iou, self.max_det)
        w, h = image.size
        boxes = np.clip(placement.to_source(boxes), 0, [w, h, w, h])
        return [Region(tuple(float(v) for v in box), int(label), float(min(max(score, 0.0), 1.0)))
                for box, score, label in zip(boxes, scores, labels) if box[2] > box[0] and box[3] > box[1]]


@register_detector("yolo", description="Ultralytics YOLOv5/v8/11 detect export (ONNX, local file) on onnxruntime",
                   source="Redmon et al., You Only Look Once, CVPR 2016; Ultralytics ONNX export format")
def create_yolo(**options: Any) -> YoloDetector:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"yolo: unknown option(s) {', '.join(map(repr, unknown))}; valid: {', '.join(_OPTIONS)}")
    return YoloDetector(**options)
