"""``torchvision``: torchvision's detection models with weights from a local file.

Architectures (``arch=``), each built by its torchvision builder with ``weights=None, weights_backbone=None`` so
nothing is ever downloaded, then loaded strictly from ``weights=PATH``:

* Faster R-CNN (Ren, He, Girshick & Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
  Networks", NeurIPS 2015): ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``;
* Mask R-CNN (He, Gkioxari, Dollar & Girshick, ICCV 2017): ``maskrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn_v2``
  (each region also gets its mask, the model's mask probability ``> 0.5`` over the source image);
* RetinaNet (Lin, Goyal, Girshick, He & Dollar, "Focal Loss for Dense Object Detection", ICCV 2017):
  ``retinanet_resnet50_fpn``, ``retinanet_resnet50_fpn_v2``;
* FCOS (Tian, Shen, Chen & He, ICCV 2019): ``fcos_resnet50_fpn``;
* SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016): ``ssd300_vgg16``,
  ``ssdlite320_mobilenet_v3_large``.

``weights`` is a state_dict saved with ``torch.save`` (``.pth``/``.pt``, read with ``weights_only=True``), a
``.safetensors`` file, or a training checkpoint holding the state_dict under ``"model"`` (torchvision's reference
scripts) or ``"state_dict"``. Every missing, unexpected or mis-shaped tensor is reported in one ValueError.
torchvision's own COCO files (e.g. ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``) load as well; for the three
legacy ones that torchvision runs with batch-norm ``eps=0`` (``fasterrcnn_resnet50_fpn``, ``maskrcnn_resnet50_fpn``
and ``retinanet_resnet50_fpn`` COCO_V1) that is done too, recognised by their published file name.

The image goes in as an RGB float tensor in [0, 1] at its source size; the model's own transform resizes it
(R-CNN/RetinaNet/FCOS: shorter side to 800 with the longer side at most ``max_side``, capped by the
architecture's own maximum; SSD: a fixed 300 or 320 square) and maps the boxes back to source pixels. The
model's internal score threshold is set to ``score_threshold`` (which leaves every box at or above it unchanged,
as low-scoring boxes suppress nothing in greedy NMS) and the model's own NMS and per-image cap apply.
Labels: ``labels=``, else the COCO category names from torchvision's weights metadata when ``num_classes=91``
(id 0 is ``__background__``, unused ids are ``N/A``), else ``class N``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok._device import placement
from vistok.regions.base import Region, register_detector

__all__ = ["TorchvisionDetector", "create_torchvision", "ARCHS", "read_state_dict"]

_OPTIONS = ("arch", "weights", "num_classes", "labels", "score_threshold", "max_side", "device")
_INSTALL = "pip install 'vistok[regions]'"

# arch -> name of its torchvision weights enum (COCO category names, the published file names)
ARCHS: dict[str, str] = {
    "fasterrcnn_resnet50_fpn": "FasterRCNN_ResNet50_FPN_Weights",
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "FasterRCNN_MobileNet_V3_Large_320_FPN_Weights",
    "maskrcnn_resnet50_fpn": "MaskRCNN_ResNet50_FPN_Weights",
    "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
    "retinanet_resnet50_fpn": "RetinaNet_ResNet50_FPN_Weights",
    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
    "fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights",
    "ssd300_vgg16": "SSD300_VGG16_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
}
# torchvision loads these published COCO files with eps=0 in the frozen batch norms (pytorch/vision#2933)
_EPS_ZERO = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn")


def _import_torchvision() -> tuple[Any, Any]:
    try:
        import torch
        import torchvision.models.detection as detection
    except ImportError as e:
        raise ImportError(f"the torchvision detector needs torch and torchvision: {_INSTALL}") from e
    return torch, detection


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a ``.pth``/``.pt`` state_dict (or a checkpoint with ``"model"``/``"state_dict"``) or a
    ``.safetensors`` file; ValueError when the file holds something else."""
    torch, _ = _import_torchvision()
    origin = str(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(origin, device="cpu")
        else:
            state = torch.load(origin, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and safetensors errors have many types
        raise ValueError(f"torchvision: weights {origin!r} could not be read as a torch state_dict or safetensors "
                         f"file ({type(e).__name__}: {e}); pass weights=PATH of a torchvision state_dict") from e
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"torchvision: weights {origin!r} holds no state_dict (name -> tensor); pass weights=PATH "
                         "of a torchvision state_dict (torch.save(model.state_dict(), PATH))")
    return dict(state)


class TorchvisionDetector:
    """A torchvision detection model with local weights; see the module docstring."""

    name = "torchvision"

    def __init__(self, arch: str = "fasterrcnn_resnet50_fpn", weights: str | os.PathLike[str] | None = None,
                 num_classes: int = 91, labels: list[str] | None = None, score_threshold: float = 0.5,
                 max_side: int = 1333, device: str = "cpu") -> None:
        if arch not in ARCHS:
            raise ValueError(f"torchvision: unknown arch {arch!r}; supported: {', '.join(ARCHS)}")
        if weights is None:
            raise ValueError(f"torchvision({arch!r}) needs weights=PATH of a torchvision state_dict (.pth/.pt or "
                             ".safetensors, e.g. torch.save(model.state_dict(), PATH)); vistok downloads none")
        if not isinstance(weights, (str, os.PathLike)):
            raise TypeError(f"torchvision: weights is a file path, got {type(weights).__name__}")
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"torchvision: weights file {str(path)!r} does not exist; pass weights=PATH of a "
                                    "torchvision state_dict")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"torchvision: num_classes is the model's class count including background (91 for "
                             f"COCO), an int >= 2, got {num_classes!r}")
        if labels is not None:
            if isinstance(labels, str) or not all(isinstance(x, str) for x in labels) or len(labels) != num_classes:
                raise ValueError(f"torchvision: labels is a list of {num_classes} class names, one per label id "
                                 f"0..{num_classes - 1} (id 0 is the background of R-CNN and SSD models), got "
                                 f"{labels!r:.200}")
            labels = list(labels)
        if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)) \
                or not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"torchvision: score_threshold is a number in [0, 1], got {score_threshold!r}")
        if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 32:
            raise ValueError(f"torchvision: max_side is the longest side the model works at, an int >= 32, "
                             f"got {max_side!r}")
        if not isinstance(device, str):
            raise TypeError(f"torchvision: device is a torch device name such as 'cpu' or 'cuda', got {device!r}")
        placement(device)  # a malformed device, or one this machine lacks: one ValueError naming the option
        self.arch, self.weights, self.num_classes = arch, path, int(num_classes)
        self.score_threshold, self.max_side, self.device = float(score_threshold), int(max_side), device
        self._labels = labels
        self._model: Any = None

    def __repr__(self) -> str:
        return (f"TorchvisionDetector(arch={self.arch!r}, weights={str(self.weights)!r}, num_classes={self.num_classes}"
                f", score_threshold={self.score_threshold}, max_side={self.max_side}, device={self.device!r})")

    def check(self) -> TorchvisionDetector:
        """Build the model and load the weights now (ImportError / ValueError as :attr:`model` raises them)."""
        self.model  # noqa: B018
        return self

    @property
    def labels(self) -> list[str]:
        """Class names, id -> name."""
        if self._labels is None:
            _, detection = _import_torchvision()
            categories = list(getattr(detection, ARCHS[self.arch]).COCO_V1.meta["categories"])
            self._labels = categories if self.num_classes == len(categories) else [
                f"class {i}" for i in range(self.num_classes)]
        return self._labels

    @property
    def model(self) -> Any:
        """The torchvision model in eval mode, weights loaded (built on first use)."""
        if self._model is None:
            self._model = self._build()
        return self._model

    def _build(self) -> Any:
        torch, detection = _import_torchvision()
        state = read_state_dict(self.weights)
        model = getattr(detection, self.arch)(weights=None, weights_backbone=None, num_classes=self.num_classes)
        expected = model.state_dict()
        # frozen batch norms (what torchvision's published files were saved from) keep no num_batches_tracked
        from vistok.weights import state_dict_mismatch

        problem = state_dict_mismatch(expected, state, side="file")
        if problem:
            raise ValueError(
                f"torchvision: weights {str(self.weights)!r} do not fit {self.arch!r} with num_classes="
                f"{self.num_classes}: {problem}. Pass arch= the architecture they were "
                "saved from and its num_classes")
        for key in expected.keys() - state.keys():
            state[key] = expected[key]
        model.load_state_dict(state, strict=True)
        if self.arch in _EPS_ZERO:
            published = getattr(detection, ARCHS[self.arch]).COCO_V1.url.rsplit("/", 1)[-1]
            if self.weights.name == published:
                for module in model.backbone.body.modules():
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.eps = 0.0
        if hasattr(model, "roi_heads"):
            model.roi_heads.score_thresh = self.score_threshold
        else:
            model.score_thresh = self.score_threshold
        model.transform.max_size = min(model.transform.max_size, self.max_side)
        return model.eval().to(self.device)

    def raw(self, image: Image.Image) -> dict[str, Any]:
        """The model's own output dict for ``image`` (boxes, labels, scores[, masks]) as CPU tensors."""
        torch, _ = _import_torchvision()
        model = self.model
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)
        with torch.inference_mode():
            out = model([pixels.to(self.device)])[0]
        return {k: v.cpu() for k, v in out.items()}

    def detect(self, image: Image.Image) -> list[Region]:
        if not isinstance(image, Image.Image):
            raise TypeError(f"torchvision.detect takes a PIL.Image.Image, got {type(image).__name__}")
        out = self.raw(image)
        w, h = image.size
        boxes = np.clip(out["boxes"].double().numpy().reshape(-1, 4), 0, [w, h, w, h])
        scores = out["scores"].double().numpy()
        labels = out["labels"].numpy()
        masks = (out["masks"][:, 0] > 0.5).numpy() if "masks" in out else None
        order = np.argsort(-scores, kind="stable")
        return [Region(tuple(float(v) for v in boxes[i]), int(labels[i]), float(scores[i]),
                       None if masks is None else masks[i])
                for i in order if scores[i] >= self.score_threshold]


@register_detector("torchvision", description="torchvision Faster/Mask R-CNN, RetinaNet, FCOS or SSD with local weights",
                   source="Ren et al. 2015 (Faster R-CNN); Lin et al. 2017 (RetinaNet); Liu et al. 2016 (SSD); "
                          "torchvision.models.detection")
def create_torchvision(**options: Any) -> TorchvisionDetector:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TypeError(f"torchvision: unknown option(s) {', '.join(map(repr, unknown))}; valid: "
                        f"{', '.join(_OPTIONS)}")
    return TorchvisionDetector(**options)
