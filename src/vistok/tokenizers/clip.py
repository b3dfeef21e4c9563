"""``clip`` and ``siglip``: patch tokens, image embeddings and text embeddings from contrastive
image-text models, loaded from a local folder or file (a Hugging Face hub id only when the hub is reachable).

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021)
trains an image and a text encoder so that matching pairs have a high cosine similarity; the logits are
``exp(t) * cos`` and class probabilities a softmax over the labels. SigLIP (Zhai et al., "Sigmoid Loss
for Language Image Pre-Training", ICCV 2023) replaces the softmax by a per-pair sigmoid with a learnt
bias, ``sigmoid(exp(t) * cos + b)``, so each label gets an independent probability.

Two backends load the weights:

- ``transformers``: a folder written by ``CLIPModel``/``SiglipModel.save_pretrained`` (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json`` and the text tokenizer files), as on the hub.
- ``open_clip`` (OpenCLIP, Ilharco et al. 2021; Cherti et al., CVPR 2023): a folder holding
  ``open_clip_config.json`` and ``open_clip_model.safetensors`` (the hub layout), or one checkpoint file
  (``.safetensors``/``.pt``/``.bin``) plus ``open_clip_arch``: a built-in open_clip architecture name
  (``open_clip.list_models()``) or a JSON file with the model config.

Preprocessing is read from the checkpoint (``preprocessor_config.json``; open_clip's preprocess config
and the image tower's input size), never from the model's name; each field can be overridden.

Shapes: pixels ``(B, 3, H, W)``; patch tokens ``(rows * cols, D)`` row-major over the ``(H/p, W/p)`` grid;
``cls`` ``(D,)``; ``embedding`` ``(E,)``; ``embed_text`` ``(T, E)``; ``similarity`` ``(T,)``.

What the patch tokens are, exactly (each library's own definition, so the tests can compare to it):

- transformers: ``last_hidden_state`` of the vision tower without its first (class) token. For CLIP
  that is the last encoder layer *before* ``post_layernorm``; for SigLIP it is *after* ``post_layernorm``
  (SigLIP has no class token).
- open_clip: ``visual.forward_intermediates(indices=1, normalize_intermediates=True)``, the last block's
  tokens after the tower's final norm: the same tokens ``visual.output_tokens = True`` returns for
  open_clip ViTs (what open_clip issue #458 asked for), and also available for timm image towers.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vistok.images import ImageInput
from vistok.hub import offline_reason
from vistok.preprocess import Preprocess, batches, preprocess, sized_inputs
from vistok.registry import register_tokenizer
from vistok.tokens import Tokens

__all__ = ["ClipConfig", "SiglipConfig", "ContrastiveTokenizer"]

_BACKENDS = ("transformers", "open_clip")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# PIL's resampling enum values, as stored in Hugging Face image processor configs
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass
class ClipConfig:
    """Options of the ``clip`` tokenizer (``siglip`` has the same options).

    model: a local folder or checkpoint file, or a Hugging Face hub id (``org/name``) that is either in
    the local hub cache or downloadable (never when ``HF_HUB_OFFLINE=1``). Required: no CLIP weights
    ship with vistok. backend: ``"transformers"`` or ``"open_clip"``. open_clip_arch: for a single
    open_clip checkpoint file, its architecture: a built-in open_clip name such as ``"ViT-B-32"`` or
    the path of a JSON model config. open_clip_tag: for a built-in architecture, the open_clip pretrained
    tag the file was released as (``"openai"``, ``"webli"``...); preprocessing then comes from open_clip's
    table for that tag (needed only when the architecture's tags disagree).

    Preprocessing overrides (None: read from the checkpoint): size (an int resizes the shortest edge,
    ``[height, width]`` resizes exactly), crop (an int or ``[height, width]`` centre crop; 0 disables
    it), resample (nearest, bilinear, bicubic, lanczos), rescale, mean, std.

    batch_size: images per forward pass in ``encode``. device: torch device for the model.
    """

    model: str | None = None
    backend: str = "transformers"
    open_clip_arch: str | None = None
    open_clip_tag: str | None = None
    size: int | tuple[int, int] | None = None
    crop: int | tuple[int, int] | None = None
    resample: str | None = None
    rescale: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    batch_size: int = 16
    device: str = "cpu"


@dataclass
class SiglipConfig(ClipConfig):
    """Options of the ``siglip`` tokenizer; the same as :class:`ClipConfig`."""


@dataclass(frozen=True)
class _Family:
    """What differs between the ``clip`` and ``siglip`` tokenizers (data, not name sniffing)."""

    name: str
    hf_model_type: str          # config.json "model_type" the transformers backend accepts
    hf_class: str               # transformers class that loads it
    logit_bias: bool            # SigLIP models carry a learnt logit bias, CLIP models do not
    text_padding: str           # "longest" (CLIP) or "max_length" (SigLIP was trained on padded text)
    probabilities: str          # "softmax" over labels (CLIP) or independent "sigmoid" (SigLIP)


_CLIP = _Family("clip", "clip", "CLIPModel", False, "longest", "softmax")
_SIGLIP = _Family("siglip", "siglip", "SiglipModel", True, "max_length", "sigmoid")


@dataclass(frozen=True)
class _Spec:
    """Everything known about a checkpoint before its weights are read."""

    path: Path                       # local folder or file
    preprocessing: Preprocess
    patch: tuple[int, int]           # (height, width) of one patch in pixels
    image_size: tuple[int, int]      # (height, width) the position table was trained for
    detail: dict[str, Any]           # backend-specific facts (model type, configs, weight file)


# -- finding the files --------------------------------------------------------------------------

def _locate(name: str, model: str | None, patterns: list[str]) -> Path:
    """A local path for ``model``: an existing file or folder, or a hub repo from the local cache or
    (when online) downloaded with only the files matching ``patterns``."""
    example = f"vistok.load({name!r}, model='/path/to/folder')"
    if model is None:
        raise ValueError(
            f"the {name!r} tokenizer needs a model: no {name.upper()} weights ship with vistok; pass a local "
            f"folder or checkpoint, e.g. {example} (see the README on using real checkpoints)"
        )
    path = Path(model).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(model) or model.lower().endswith(_WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"model {model!r}: no such file or folder; pass a local folder or file: {example}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers and open_clip
        raise FileNotFoundError(f"no local weights at {model!r} and huggingface_hub is not installed; "
                                f"pass a local folder: {example}") from err
    try:
        return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local cache; try the hub below
        pass
    reason = offline_reason()
    if reason:
        raise FileNotFoundError(
            f"no local weights at {model!r} and the Hugging Face hub is not reachable (offline: {reason}); download the "
            f"repository elsewhere and pass its folder: {example}"
        )
    try:
        return Path(snapshot_download(model, allow_patterns=patterns))
    except Exception as err:
        root = err.__cause__ or err
        raise FileNotFoundError(
            f"no local weights at {model!r} and the Hugging Face hub is not reachable ({type(root).__name__}: "
            f"{str(root)[:120]}); pass a local folder: {example}"
        ) from err


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _override(base: Preprocess, cfg: ClipConfig) -> Preprocess:
    """Apply the config's explicit preprocessing fields on top of the checkpoint's."""
    changes: dict[str, Any] = {}
    if cfg.size is not None:
        changes["size"] = cfg.size if isinstance(cfg.size, int) else _pair(cfg.size)
    if cfg.crop is not None:
        changes["crop"] = None if cfg.crop == 0 else (cfg.crop if isinstance(cfg.crop, int) else _pair(cfg.crop))
    for key in ("resample", "rescale"):
        if getattr(cfg, key) is not None:
            changes[key] = getattr(cfg, key)
    for key in ("mean", "std"):
        if getattr(cfg, key) is not None:
            changes[key] = tuple(float(v) for v in getattr(cfg, key))
    return replace(base, **changes)


# -- transformers backend ------------------------------------------------------------------------

_HF_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def _hf_preprocess(folder: Path, cfg: ClipConfig, family: _Family) -> Preprocess:
    """Preprocess from ``preprocessor_config.json`` (a CLIP- or SigLIP-style image processor config)."""
    file = folder / "preprocessor_config.json"
    if file.is_file():
        pp = _read_json(file)
    elif (folder / "processor_config.json").is_file():
        pp = _read_json(folder / "processor_config.json").get("image_processor", {})
    else:
        pp = None
    if not pp:
        if cfg.size is not None and cfg.mean is not None and cfg.std is not None:
            return _override(Preprocess(size=cfg.size, crop=None), cfg)
        raise ValueError(
            f"{folder}: no preprocessor_config.json, so the image size and normalisation are unknown; copy it "
            f"from the checkpoint's repository, or pass size=..., crop=..., mean=..., std=... to "
            f"vistok.load({family.name!r}, ...)"
        )
    size: int | tuple[int, int] | None = None
    if pp.get("do_resize", True):
        raw = pp.get("size")
        if isinstance(raw, dict) and "shortest_edge" in raw:
            size = int(raw["shortest_edge"])
        elif isinstance(raw, dict) and "height" in raw and "width" in raw:
            size = (int(raw["height"]), int(raw["width"]))
        elif isinstance(raw, int):
            size = raw
        else:
            raise ValueError(f"{file}: unsupported resize setting size={raw!r}; pass size=... explicitly")
    crop = None
    if pp.get("do_center_crop", False):
        raw = pp.get("crop_size", size)
        crop = (int(raw["height"]), int(raw["width"])) if isinstance(raw, dict) else _pair(raw)
    resample = _PIL_RESAMPLE.get(int(pp.get("resample", 3)))
    if resample is None:
        raise ValueError(f"{file}: unsupported resample={pp.get('resample')!r}; pass resample=... explicitly")
    normalise = pp.get("do_normalize", True)
    base = Preprocess(
        size=size,
        crop=crop,
        resample=resample,
        rescale=float(pp.get("rescale_factor", 1 / 255)) if pp.get("do_rescale", True) else 1.0,
        mean=tuple(pp.get("image_mean", (0.0, 0.0, 0.0))) if normalise else (0.0, 0.0, 0.0),
        std=tuple(pp.get("image_std", (1.0, 1.0, 1.0))) if normalise else (1.0, 1.0, 1.0),
    )
    return _override(base, cfg)


def _hf_spec(cfg: ClipConfig, family: _Family) -> _Spec:
    path = _locate(family.name, cfg.model, _HF_FILES)
    if path.is_file():
        raise ValueError(
            f"{path} is a file; the transformers backend loads a folder written by "
            f"{family.hf_class}.save_pretrained (config.json, model.safetensors, preprocessor_config.json). "
            f"For a single open_clip checkpoint pass backend='open_clip' and open_clip_arch=..."
        )
    if not (path / "config.json").is_file():
        hint = ("it holds an open_clip model (open_clip_config.json): pass backend='open_clip'"
                if (path / "open_clip_config.json").is_file() else "pass the folder of a saved transformers model")
        raise ValueError(f"{path}: no config.json, so not a transformers checkpoint; {hint}")
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    if model_type != family.hf_model_type:
        known = model_type in (_CLIP.hf_model_type, _SIGLIP.hf_model_type)
        hint = f"use vistok.load({model_type!r}, model=...)" if known else "pass a CLIP or SigLIP checkpoint"
        raise ValueError(
            f"{path}: config.json says model_type={model_type!r}, but the {family.name!r} tokenizer loads "
            f"{family.hf_model_type!r} checkpoints ({family.hf_class}); {hint}"
        )
    # the config class fills in the defaults that old config.json files leave out (no weights are read)
    import transformers

    full = getattr(transformers, family.hf_class).config_class.from_pretrained(path, local_files_only=True)
    patch = _pair(full.vision_config.patch_size)
    image_size = _pair(full.vision_config.image_size)
    preprocessing = _hf_preprocess(path, cfg, family)
    return _Spec(path, preprocessing, patch, image_size,
                 detail={"model_type": model_type, "text_max_length": full.text_config.max_position_embeddings})


class _HFModel:
    """A loaded transformers ``CLIPModel``/``SiglipModel`` and its text tokenizer."""

    def __init__(self, spec: _Spec, family: _Family, device: str) -> None:
        import torch
        import transformers

        cls = getattr(transformers, family.hf_class)
        try:
            model, info = cls.from_pretrained(spec.path, local_files_only=True, output_loading_info=True)
        except (OSError, RuntimeError, ValueError) as err:
            raise ValueError(f"{spec.path}: could not load a {family.hf_class} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from err
        problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            summary = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {v[0]})" for k, v in problems.items())
            raise ValueError(f"{spec.path}: the weights do not fit {family.hf_class} ({summary}); refusing to "
                             "run with randomly initialised parts. Is it the right checkpoint type?")
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.spec, self.family = spec, family
        self._text_tokenizer = None

    def images(self, pixels: Any) -> tuple[Any, Any, Any]:
        """``(B,3,H,W)`` -> patch maps ``(B, rows, cols, D)``, class token ``(B, D)`` or None, embedding."""
        rows, cols = pixels.shape[2] // self.spec.patch[0], pixels.shape[3] // self.spec.patch[1]
        interpolate = (pixels.shape[2], pixels.shape[3]) != self.spec.image_size
        out = self.model.get_image_features(pixel_values=pixels.to(self.device), interpolate_pos_encoding=interpolate)
        hidden = out.last_hidden_state
        prefix = hidden.shape[1] - rows * cols
        maps = hidden[:, prefix:].reshape(hidden.shape[0], rows, cols, hidden.shape[2])
        return maps, hidden[:, 0] if prefix == 1 else None, out.pooler_output

    def text_tokenizer(self) -> Any:
        if self._text_tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._text_tokenizer = AutoTokenizer.from_pretrained(self.spec.path, local_files_only=True)
            except Exception as err:  # noqa: BLE001 - missing files, or a missing optional package
                raise ValueError(
                    f"{self.spec.path}: could not load the text tokenizer ({type(err).__name__}: {str(err)[:200]}); "
                    "copy its files (tokenizer.json, or vocab/merges, or spiece.model) from the checkpoint's "
                    "repository; SigLIP's spiece.model also needs `pip install sentencepiece`"
                ) from err
        return self._text_tokenizer

    def texts(self, texts: list[str]) -> Any:
        tok = self.text_tokenizer()
        max_length = self.spec.detail.get("text_max_length")
        padding = "max_length" if self.family.text_padding == "max_length" else True
        inputs = tok(texts, padding=padding, truncation=max_length is not None, max_length=max_length,
                     return_tensors="pt")
        names = [k for k in ("input_ids", "attention_mask") if k in inputs and k in tok.model_input_names]
        return self.model.get_text_features(**{k: inputs[k].to(self.device) for k in names}).pooler_output

    def logit_scale_bias(self) -> tuple[Any, Any]:
        return self.model.logit_scale, getattr(self.model, "logit_bias", None)


# -- open_clip backend ---------------------------------------------------------------------------

_OPEN_CLIP_FILES = ["*.json", "*.txt", "*.model", "open_clip_model.safetensors"]
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                      "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")


def _open_clip_files(cfg: ClipConfig, family: _Family) -> tuple[Path, Path, dict, dict, str | None]:
    """(path, weights file, model config, preprocess config, tokenizer source) from the config's model."""
    import open_clip

    path = _locate(family.name, cfg.model, _OPEN_CLIP_FILES)
    if path.is_dir():
        if cfg.open_clip_arch is not None or cfg.open_clip_tag is not None:
            raise ValueError(f"open_clip_arch/open_clip_tag are only for a single checkpoint file; {path} is a "
                             "folder, whose open_clip_config.json gives the architecture and preprocessing")
        if not (path / "open_clip_config.json").is_file():
            hint = ("it holds a transformers checkpoint (config.json): pass backend='transformers'"
                    if (path / "config.json").is_file() else
                    "pass a folder with open_clip_config.json and open_clip_model.safetensors, or a checkpoint file "
                    "with open_clip_arch=...")
            raise ValueError(f"{path}: no open_clip_config.json, so not an open_clip model folder; {hint}")
        doc = _read_json(path / "open_clip_config.json")
        if "model_cfg" not in doc:
            raise ValueError(f"{path / 'open_clip_config.json'}: has no 'model_cfg' entry")
        weights = next((path / n for n in _OPEN_CLIP_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: no open_clip weights file ({', '.join(_OPEN_CLIP_WEIGHTS)})")
        return path, weights, doc["model_cfg"], doc.get("preprocess_cfg", {}), f"local-dir:{path}"
    arch = cfg.open_clip_arch
    if arch is None:
        raise ValueError(
            f"{path} is a single checkpoint file; pass its architecture too, e.g. "
            f"vistok.load({family.name!r}, model={str(path)!r}, backend='open_clip', open_clip_arch='ViT-B-32') "
            "(a name from open_clip.list_models() or a JSON model config file)"
        )
    if arch.lower().endswith(".json"):
        if not Path(arch).is_file():
            raise FileNotFoundError(f"open_clip_arch {arch!r}: no such file")
        doc = _read_json(Path(arch))
        model_cfg, pp = (doc["model_cfg"], doc.get("preprocess_cfg", {})) if "model_cfg" in doc else (doc, {})
        return path, path, model_cfg, pp, None
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"open_clip_arch {arch!r} is not a built-in open_clip architecture; {hint}"
                         "see open_clip.list_models(), or pass a JSON model config file")
    return path, path, model_cfg, _open_clip_tag_preprocess(arch, cfg), arch


def _open_clip_tag_preprocess(arch: str, cfg: ClipConfig) -> dict[str, Any]:
    """Preprocessing of a built-in architecture's released checkpoints, from open_clip's pretrained table:
    the tag's entry when ``open_clip_tag`` is given, else the entry all its tags share (SigLIP's 0.5 mean/std
    are only there, not in the model config)."""
    import open_clip

    keys = ("mean", "std", "interpolation", "resize_mode")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if cfg.open_clip_tag is not None:
        if cfg.open_clip_tag not in tags:
            raise ValueError(f"open_clip_tag {cfg.open_clip_tag!r} is not a pretrained tag of {arch!r}; "
                             f"known: {', '.join(tags) or 'none'}")
        tags = [cfg.open_clip_tag]
    found = {json.dumps({k: open_clip.get_pretrained_cfg(arch, t).get(k) for k in keys}, sort_keys=True)
             for t in tags}
    if len(found) > 1 and (cfg.mean is None or cfg.std is None):
        raise ValueError(f"the released {arch!r} checkpoints use different preprocessing "
                         f"({' / '.join(sorted(found))}); pass open_clip_tag=<one of {', '.join(tags)}> "
                         "or mean=..., std=...")
    if len(found) != 1:
        return {}
    return {k: v for k, v in json.loads(found.pop()).items() if v is not None}


def _open_clip_spec(cfg: ClipConfig, family: _Family) -> _Spec:
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    path, weights, model_cfg, pp_cfg, tokenizer_source = _open_clip_files(cfg, family)
    has_bias = model_cfg.get("init_logit_bias") is not None
    if has_bias != family.logit_bias:
        kind, other = ("a SigLIP-style (sigmoid, logit bias)", "siglip") if has_bias else ("a CLIP-style", "clip")
        raise ValueError(f"{path}: the open_clip config describes {kind} model; load it with "
                         f"vistok.load({other!r}, model=..., backend='open_clip')")
    if "multimodal_cfg" in model_cfg:
        raise ValueError(f"{path}: CoCa models (multimodal_cfg) are not supported by the {family.name!r} tokenizer")
    vision = model_cfg.get("vision_cfg", {})
    image_size = _pair(vision.get("image_size", 224))
    if vision.get("timm_model_name"):
        patch = _timm_patch(vision["timm_model_name"])
    elif isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"{path}: the image tower is a ResNet, which has no patch tokens; the clip/siglip "
                         "tokenizers need a ViT image tower (use the cnn tokenizer for feature maps)")
    else:
        patch = _pair(vision.get("patch_size", 16))
    pp = merge_preprocess_dict(PreprocessCfg(), {**pp_cfg, "size": image_size})
    interpolation = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}.get(pp["interpolation"])
    if interpolation is None:
        raise ValueError(f"{path}: unsupported open_clip interpolation {pp['interpolation']!r}; pass resample=...")
    if pp["resize_mode"] == "shortest" and image_size[0] == image_size[1]:
        size, crop = image_size[0], image_size
    elif pp["resize_mode"] == "squash":
        size, crop = image_size, None
    elif cfg.size is None:
        raise ValueError(f"{path}: open_clip resize_mode={pp['resize_mode']!r} for {image_size} is not supported by "
                         "vistok's preprocessing (it pads); pass size=... and crop=... explicitly")
    else:
        size, crop = image_size, None
    base = Preprocess(size=size, crop=crop, resample=interpolation, rescale=1 / 255,
                      mean=tuple(pp["mean"]), std=tuple(pp["std"]))
    preprocessing = _override(base, cfg)
    fixed = _fixed_output(preprocessing)
    if fixed != image_size:
        got = "a size that depends on the image" if fixed is None else f"{fixed[1]}x{fixed[0]}"
        raise ValueError(f"open_clip ViTs take exactly {image_size[1]}x{image_size[0]} inputs, but the preprocessing "
                         f"overrides give {got}; keep the checkpoint's size and crop")
    return _Spec(path, preprocessing, patch, image_size,
                 detail={"weights": str(weights), "model_cfg": model_cfg, "tokenizer": tokenizer_source})


def _fixed_output(pp: Preprocess) -> tuple[int, int] | None:
    """``(height, width)`` of every preprocessed image, or None when it depends on the image."""
    if pp.crop is not None:
        return _pair(pp.crop)
    if isinstance(pp.size, (tuple, list)):
        return _pair(pp.size)
    return None


def _timm_patch(timm_name: str) -> tuple[int, int]:
    """Patch size of a timm ViT, read from the model built on the meta device (no weights, no memory)."""
    import timm
    import torch

    with torch.device("meta"):
        trunk = timm.create_model(timm_name, pretrained=False, num_classes=0)
    embed = getattr(trunk, "patch_embed", None)
    if embed is None or not hasattr(embed, "patch_size"):
        raise ValueError(f"timm image tower {timm_name!r} has no patch embedding; "
                         "the clip/siglip tokenizers need a ViT")
    return _pair(embed.patch_size)


class _OpenClipModel:
    """A loaded open_clip ``CLIP``/``CustomTextCLIP`` built from its config, weights loaded strictly."""

    def __init__(self, spec: _Spec, family: _Family, device: str) -> None:
        import open_clip
        import torch

        cfg = copy.deepcopy(spec.detail["model_cfg"])
        cfg.get("vision_cfg", {})["timm_model_pretrained"] = False   # never fetch tower weights
        cfg.get("text_cfg", {})["hf_model_pretrained"] = False
        custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
        cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
        model = cls(**cfg)
        weights = spec.detail["weights"]
        try:
            open_clip.load_checkpoint(model, weights, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[0] if str(err) else ""
            lines = [s.strip() for s in str(err).splitlines()[1:3]]
            raise ValueError(f"{weights}: the weights do not fit this open_clip architecture ({first} "
                             f"{' '.join(lines)[:300]}); refusing to run with randomly initialised parts. Is it the "
                             "right checkpoint or open_clip_arch?") from err
        except Exception as err:
            raise ValueError(f"{weights}: not a readable open_clip checkpoint ({type(err).__name__}: {err})") from err
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.spec, self.family = spec, family
        self._text_tokenizer = None

    def images(self, pixels: Any) -> tuple[Any, Any, Any]:
        out = self.model.visual.forward_intermediates(
            pixels.to(self.device), indices=1, normalize_intermediates=True, output_fmt="NCHW",
            output_extra_tokens=True,
        )
        maps = out["image_intermediates"][-1].permute(0, 2, 3, 1)
        prefix = out.get("image_intermediates_prefix")
        cls = prefix[-1][:, 0] if prefix and prefix[-1].shape[1] >= 1 else None
        return maps, cls, out["image_features"]

    def texts(self, texts: list[str]) -> Any:
        if self._text_tokenizer is None:
            import open_clip

            source = self.spec.detail["tokenizer"]
            text_cfg = self.spec.detail["model_cfg"].get("text_cfg", {})
            try:
                if source is None:   # a JSON config file: open_clip's own tokenizer for it, or its HF tokenizer
                    if text_cfg.get("hf_tokenizer_name"):
                        self._text_tokenizer = open_clip.tokenizer.HFTokenizer(
                            text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77),
                            **text_cfg.get("tokenizer_kwargs", {}))
                    else:
                        self._text_tokenizer = open_clip.SimpleTokenizer(
                            context_length=text_cfg.get("context_length", 77), **text_cfg.get("tokenizer_kwargs", {}))
                else:
                    self._text_tokenizer = open_clip.get_tokenizer(source)
            except Exception as err:
                raise ValueError(
                    f"{self.spec.path}: could not build the open_clip text tokenizer ({type(err).__name__}: {err}); "
                    "its files may need the hub: use a model folder that holds them (the hub repository layout)"
                ) from err
        return self.model.encode_text(self._text_tokenizer(texts).to(self.device))

    def logit_scale_bias(self) -> tuple[Any, Any]:
        return self.model.logit_scale, getattr(self.model, "logit_bias", None)


# -- the tokenizer -------------------------------------------------------------------------------

class ContrastiveTokenizer:
    """Patch tokens and embeddings of a CLIP or SigLIP model; ``embed_text``, ``similarity`` and
    ``zero_shot`` use its text tower. Weights load on first use (or ``check()``)."""

    kind = "soft"
    decodable = False

    def __init__(self, config: ClipConfig, family: _Family) -> None:
        if config.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {config.backend!r}")
        if not isinstance(config.batch_size, int) or config.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {config.batch_size!r}")
        self.config = config
        self.family = family
        self.name = family.name
        self._model: _HFModel | _OpenClipModel | None = None

    # -- what is known without weights ----------------------------------------------------------
    @cached_property
    def spec(self) -> _Spec:
        """Paths, preprocessing and patch size, read from the checkpoint's config files (no weights)."""
        build = _hf_spec if self.config.backend == "transformers" else _open_clip_spec
        return build(self.config, self.family)

    @property
    def preprocessing(self) -> Preprocess:
        """The :class:`~vistok.preprocess.Preprocess` applied to every image."""
        return self.spec.preprocessing

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, cols)`` of patch tokens for an image of this size."""
        for label, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        out_w, out_h = self.preprocessing.output_size(int(width), int(height))
        return out_h // self.spec.patch[0], out_w // self.spec.patch[1]

    def count(self, width: int, height: int) -> int:
        """Patch tokens for an image of this size: ``(H/p) * (W/p)`` of the preprocessed input, e.g.
        ``(224/16)^2 = 196``. The class token (CLIP) is not counted: it comes as the ``cls`` extra. Reads
        the checkpoint's config files, not its weights."""
        rows, cols = self.grid(width, height)
        return rows * cols

    def check(self) -> None:
        """Find and load the weights now (``encode`` does it lazily); raises a clear error otherwise."""
        self._loaded()

    def _loaded(self) -> _HFModel | _OpenClipModel:
        if self._model is None:
            cls = _HFModel if self.config.backend == "transformers" else _OpenClipModel
            self._model = cls(self.spec, self.family, self.config.device)
        return self._model

    # -- images ---------------------------------------------------------------------------------
    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list of images (run in batches of ``batch_size``).

        values: patch tokens ``(rows*cols, D)`` on the grid; extras: ``embedding`` (the projected image
        embedding, as ``get_image_features`` / ``encode_image`` give it, not normalised) and ``cls``
        (the class token's final state) where the model has one.
        """
        if isinstance(images, (list, tuple)):
            return self._encode_many(list(images))
        return self._encode_many([images])[0]

    def _encode_many(self, items: list[ImageInput]) -> list[Tokens]:
        import torch

        model = self._loaded()
        ready, sizes = sized_inputs(items)
        results: list[Tokens | None] = [None] * len(items)
        for _, chunk in batches(sizes, self.preprocessing.output_size, self.config.batch_size):
            pixels = preprocess([ready[i] for i in chunk], self.preprocessing)
            with torch.inference_mode():
                maps, cls, embedding = model.images(pixels)
            maps = maps.float().cpu().numpy()
            for j, i in enumerate(chunk):
                rows, cols, dim = maps.shape[1:]
                extras = {"embedding": embedding[j].float().cpu().numpy()}
                if cls is not None:
                    extras["cls"] = cls[j].float().cpu().numpy()
                results[i] = Tokens.from_grid(
                    np.ascontiguousarray(maps[j].reshape(rows * cols, dim)), (rows, cols), extras=extras,
                    meta=self._meta(sizes[i], (pixels.shape[3], pixels.shape[2])),
                )
        return results  # type: ignore[return-value]

    def _meta(self, image_size: tuple[int, int], working: tuple[int, int]) -> dict[str, Any]:
        spec = self.spec
        return {
            "tokenizer": self.name,
            "config": self._config_dict(),
            "image_size": [int(image_size[0]), int(image_size[1])],
            "working_size": [int(working[0]), int(working[1])],
            "model": self.config.model,
            "model_path": str(spec.path),
            "backend": self.config.backend,
            "patch_size": list(spec.patch),
            "tokens": ("vision last_hidden_state (transformers)" if self.config.backend == "transformers"
                       else "visual.forward_intermediates last block, final norm applied (open_clip)"),
        }

    def _image_embedding(self, image: Any) -> Any:
        import torch

        if isinstance(image, Tokens):
            if "embedding" not in image.extras or image.meta.get("tokenizer") != self.name:
                raise ValueError(f"expected Tokens from the {self.name!r} tokenizer (with an 'embedding' extra), "
                                 f"got {image!r}")
            return torch.from_numpy(image.extras["embedding"]).float()[None]
        if isinstance(image, (list, tuple)):
            raise TypeError("similarity/zero_shot take one image; call them once per image")
        return torch.from_numpy(self.encode(image).extras["embedding"])[None]

    # -- text -----------------------------------------------------------------------------------
    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(T, E)`` projected text embeddings (as ``get_text_features`` / ``encode_text`` give them,
        not normalised), in the image embedding's space."""
        import torch

        items = [texts] if isinstance(texts, str) else list(texts)
        if not items or not all(isinstance(t, str) for t in items):
            raise ValueError("embed_text needs a non-empty list of strings")
        model = self._loaded()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(items), 64):
                parts.append(model.texts(items[start:start + 64]).float().cpu())
        return torch.cat(parts).numpy()

    def similarity(self, image: Any, texts: str | Sequence[str]) -> np.ndarray:
        """``(T,)`` the model's logits for one image against each text: ``exp(t) * cos(image, text)``,
        plus the learnt bias ``b`` for SigLIP; the same numbers as the model's ``logits_per_image``.
        ``image`` is an image or Tokens from this tokenizer (its ``embedding`` extra is reused)."""
        import torch

        image_emb = self._image_embedding(image)
        text_emb = torch.from_numpy(self.embed_text(texts))
        scale, bias = self._loaded().logit_scale_bias()
        image_emb = image_emb / image_emb.norm(p=2, dim=-1, keepdim=True)
        text_emb = text_emb / text_emb.norm(p=2, dim=-1, keepdim=True)
        with torch.inference_mode():
            logits = (text_emb @ image_emb.T)[:, 0] * scale.detach().float().cpu().exp()
            if bias is not None:
                logits = logits + bias.detach().float().cpu()
        return logits.reshape(-1).numpy()

    def zero_shot(self, image: Any, labels: Sequence[str],
                  template: str = "a photo of a {}.") -> list[tuple[str, float]]:
        """Zero-shot classification: ``[(label, probability)]``, most probable first. The texts are
        ``template.format(label)``. CLIP: a softmax over the labels (they sum to 1). SigLIP: an independent
        sigmoid per label, as in Zhai et al. 2023 (they need not sum to 1)."""
        labels = list(labels)
        if not labels:
            raise ValueError("zero_shot needs at least one label")
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the label goes, got {template!r}")
        logits = self.similarity(image, [template.format(label) for label in labels]).astype(np.float64)
        if self.family.probabilities == "softmax":
            shifted = np.exp(logits - logits.max())
            probs = shifted / shifted.sum()
        else:
            probs = 1.0 / (1.0 + np.exp(-logits))
        order = sorted(range(len(labels)), key=lambda i: -probs[i])
        return [(labels[i], float(probs[i])) for i in order]

    # -- the rest of the protocol ---------------------------------------------------------------
    def decode(self, tokens: Tokens) -> Any:
        raise NotImplementedError(f"{self.name} tokens are encoder features and do not decode to an image")

    def _config_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}

    def describe(self) -> dict[str, Any]:
        """Name, kind and config, for listings and file metadata."""
        return {"name": self.name, "kind": self.kind, "decodable": self.decodable, "config": self._config_dict(),
                "probabilities": self.family.probabilities}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._config_dict().items() if v is not None)
        return f"{type(self).__name__}({self.name}: {options})"


@register_tokenizer(
    "clip", kind="soft", decodable=False, config=ClipConfig, zero_shot=True,
    weights="yours (model=PATH): a transformers CLIPModel folder or an open_clip checkpoint; hub ids when online",
    description="CLIP ViT patch tokens + CLS + image embedding; text embeddings, logits, zero-shot (softmax)",
)
def create_clip(**options: Any) -> ContrastiveTokenizer:
    return ContrastiveTokenizer(ClipConfig(**options), _CLIP)


@register_tokenizer(
    "siglip", kind="soft", decodable=False, config=SiglipConfig, zero_shot=True,
    weights="yours (model=PATH): a transformers SiglipModel folder or an open_clip SigLIP checkpoint; "
            "hub ids when online",
    description="SigLIP ViT patch tokens + pooled image embedding; text embeddings, logits, zero-shot (sigmoid)",
)
def create_siglip(**options: Any) -> ContrastiveTokenizer:
    return ContrastiveTokenizer(SiglipConfig(**options), _SIGLIP)
