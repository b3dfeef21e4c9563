"""``regions``: detected objects, faces, text lines and salient regions as hard tokens.

A detector (``vistok.regions.detectors``: saliency, faces, text, superpixels, yolo, torchvision) finds
entities; each becomes one token whose id is its label (the seeds' object tokens, evaluated by Average
Precision). The layout is ``boxes`` (x0, y0, x1, y1 in source pixels); extras hold ``scores``, normalised
``boxes_norm``, ``masks`` when the detector gives them, and ``embeddings`` of each region from a soft
tokenizer when ``embed`` is set:

- ``embed_mode="roi"``: RoI Align (He et al., "Mask R-CNN", ICCV 2017; ``torchvision.ops.roi_align``, 2x2
  bins averaged) on the token grid of the whole image, with each box mapped onto the part of the image the
  grid covers (centre crops included);
- ``embed_mode="crop"``: each box cropped from the image and encoded on its own, tokens mean-pooled.

``meta["loc_tokens"]`` writes the boxes as PaliGemma location tokens (see :mod:`vistok.regions.loc`).
The number of tokens depends on the image content, so ``count()`` cannot predict it without detecting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from PIL import Image

from vistok.images import ImageInput, open_image, source_name
from vistok.registry import register_tokenizer
from vistok.tokens import Tokens

__all__ = ["RegionsConfig", "RegionsTokenizer"]


@dataclass
class RegionsConfig:
    """Options of ``regions`` (``-t regions:faces`` picks the detector). detector: a name from
    ``vistok.regions.base.list_detectors()``. embed: a soft tokenizer (``efficientnet-lite0``,
    ``focus-vit-s14``, ...) whose features describe each region, None for none. embed_mode: ``roi`` or
    ``crop``. masks: keep masks when the detector gives them. max_regions: keep the highest-scoring ones.
    Any other option goes to the detector (``method="lbp"`` for faces, ``model=PATH`` for yolo, ...)."""

    detector: str = "saliency"
    embed: str | None = None
    embed_mode: str = "roi"
    masks: bool = True
    max_regions: int | None = None
    detector_options: dict[str, Any] = field(default_factory=dict)


class RegionsTokenizer:
    """Image -> one hard token per detected region (label id), with boxes, scores and optional masks/embeddings."""

    kind = "hard"
    decodable = False

    def __init__(self, config: RegionsConfig) -> None:
        if config.embed_mode not in ("roi", "crop"):
            raise ValueError(f"embed_mode must be 'roi' or 'crop', got {config.embed_mode!r}")
        if config.max_regions is not None and config.max_regions < 0:
            raise ValueError(f"max_regions must be >= 0, got {config.max_regions}")
        from vistok.regions.base import detector_info

        detector_info(config.detector)  # unknown names fail now, listing the known ones
        self.config = config
        self.name = "regions"
        self._detector: Any = None
        self._embedder: Any = None

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from vistok.regions.base import load_detector

            self._detector = load_detector(self.config.detector, **self.config.detector_options)
        return self._detector

    @property
    def embedder(self) -> Any:
        if self._embedder is None and self.config.embed is not None:
            from vistok.registry import load

            self._embedder = load(self.config.embed)
            if self._embedder.kind != "soft":
                raise ValueError(f"embed={self.config.embed!r} gives hard tokens; region embeddings need a soft "
                                 "tokenizer such as efficientnet-lite0 or focus-vit-s14")
        return self._embedder

    @property
    def labels(self) -> list[str]:
        return list(self.detector.labels)

    def check(self) -> None:
        """Create the detector (and embedder) now, so that bad options fail before any image is read."""
        self.detector.check()
        if self.embedder is not None:
            self.embedder.check()

    def count(self, width: int, height: int) -> int:
        """Not predictable: the number of regions depends on what the detector finds."""
        for label, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        raise ValueError("the number of region tokens depends on the image content (what the detector finds); "
                         "encode the image and take len(tokens)")

    def prepare(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        rgb = open_image(image)
        return np.asarray(rgb, np.float32) / 255.0, rgb.size

    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list of images."""
        if isinstance(images, (list, tuple)):
            return [self.encode(image) for image in images]
        rgb = open_image(images)
        regions = sorted(self.detector.detect(rgb), key=lambda r: -r.score)
        if self.config.max_regions is not None:
            regions = regions[: self.config.max_regions]
        return self._tokens(rgb, regions, source_name(images))

    def _tokens(self, rgb: Image.Image, regions: list[Any], source: str) -> Tokens:
        from vistok.regions.loc import to_loc_tokens

        w, h = rgb.size
        labels = self.labels
        boxes = np.array([r.box for r in regions], np.float32).reshape(-1, 4)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        ids = np.array([r.label for r in regions], np.int64)
        extras: dict[str, np.ndarray] = {
            "scores": np.array([r.score for r in regions], np.float32),
            "boxes_norm": boxes / np.array([w, h, w, h], np.float32),
        }
        if self.config.masks and regions and all(r.mask is not None for r in regions):
            extras["masks"] = np.stack([np.asarray(r.mask, bool) for r in regions])
        if self.embedder is not None:
            extras["embeddings"] = self.embed_regions(rgb, boxes)
        names = [labels[i] if 0 <= i < len(labels) else f"class {i}" for i in ids]
        meta = {
            "tokenizer": self.name, "config": self._config_dict(), "detector": self.config.detector,
            "image_size": [w, h], "working_size": [w, h], "labels": labels,
            "vocab_size": max(len(labels), int(ids.max()) + 1 if len(ids) else 0),  # ids past the labels count too
            "loc_tokens": to_loc_tokens(boxes, (w, h), names),
        }
        return Tokens(ids, boxes=boxes, extras=extras, meta=meta)

    # -- region embeddings --------------------------------------------------------------------------
    def embed_regions(self, rgb: Image.Image, boxes: np.ndarray) -> np.ndarray:
        """``(N, D)`` features of each box from the ``embed`` tokenizer (RoI Align on its grid, or crops)."""
        tok = self.embedder
        if len(boxes) == 0:
            dim = tok.encode(Image.new("RGB", (32, 32))).dim
            return np.zeros((0, dim), np.float32)
        if self.config.embed_mode == "crop":
            out = []
            for x0, y0, x1, y1 in boxes:
                crop = rgb.crop((int(x0), int(y0), max(int(np.ceil(x1)), int(x0) + 1), max(int(np.ceil(y1)), int(y0) + 1)))
                out.append(tok.encode(crop).values.mean(axis=0))
            return np.stack(out).astype(np.float32)
        import torch
        from torchvision.ops import roi_align

        tokens = tok.encode(rgb)
        if tokens.grid is None:
            raise ValueError(f"embed_mode='roi' needs tokens on a grid; {tok.name} gives none (use embed_mode='crop')")
        rows, cols = tokens.grid
        vx0, vy0, vx1, vy1 = visible_region(tok, rgb.size)
        grid_boxes = np.empty_like(boxes, dtype=np.float32)
        grid_boxes[:, [0, 2]] = (boxes[:, [0, 2]] - vx0) / (vx1 - vx0) * cols
        grid_boxes[:, [1, 3]] = (boxes[:, [1, 3]] - vy0) / (vy1 - vy0) * rows
        feature = torch.from_numpy(tokens.values.astype(np.float32)).T.reshape(1, -1, rows, cols)
        rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(grid_boxes)], dim=1)
        pooled = roi_align(feature, rois, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return pooled.mean(dim=(2, 3)).numpy().astype(np.float32)

    def _config_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self.config, f.name) for f in fields(self.config)}
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "decodable": False, "config": self._config_dict()}

    def decode(self, tokens: Tokens) -> Image.Image:
        raise NotImplementedError("region tokens cannot be decoded into pixels; draw them with `vistok show` "
                                  "(vistok.viz.show)")

    def __repr__(self) -> str:
        return f"RegionsTokenizer(detector={self.config.detector!r}, embed={self.config.embed!r})"


def visible_region(tokenizer: Any, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of an image of ``size`` (w, h) that a soft tokenizer's grid covers, in source pixels:
    the whole image, unless its preprocessing centre-crops (``preprocess_config`` of the tokenizers registered
    with ``preprocessing=True``, such as ``cnn``)."""
    from vistok.registry import tokenizer_info

    w, h = size
    if not tokenizer_info(tokenizer.name).preprocessing:
        return 0.0, 0.0, float(w), float(h)
    p = tokenizer.preprocess_config
    if p.size is None:
        sx = sy = 1.0
    elif isinstance(p.size, int) or (isinstance(p.size, tuple) and len(p.size) == 1):
        s = p.size if isinstance(p.size, int) else p.size[0]
        sx = sy = s / min(w, h)
    else:
        sy, sx = p.size[0] / h, p.size[1] / w
    rw, rh = w * sx, h * sy
    if p.crop is None:
        return 0.0, 0.0, float(w), float(h)
    ch, cw = (p.crop, p.crop) if isinstance(p.crop, int) else p.crop
    x0, y0 = (rw - cw) / 2, (rh - ch) / 2
    return x0 / sx, y0 / sy, (x0 + cw) / sx, (y0 + ch) / sy


@register_tokenizer(
    "regions", kind="hard", decodable=False, config=RegionsConfig, countable=False, argument="detector",
    extra_options=True,
    weights="per detector: focus-vit-s14 saliency, OpenCV/scikit-image cascades, the PP-OCR det ONNX in "
            "rapidocr-onnxruntime, scikit-image superpixels, your YOLO ONNX / torchvision weights by path",
    description="one token per detected region (label id) with box, score, mask and optional embedding; "
                "-t regions:faces|text|superpixels|saliency|yolo|torchvision",
)
def create_regions(**options: Any) -> RegionsTokenizer:
    own = {f.name for f in fields(RegionsConfig)}
    extra = {k: v for k, v in options.items() if k not in own}
    config = RegionsConfig(**{k: v for k, v in options.items() if k in own})
    config.detector_options = {**config.detector_options, **extra}
    return RegionsTokenizer(config)
