"""The ``open_clip`` backend of ``clip``/``siglip`` (OpenCLIP, Ilharco et al. 2021; Cherti et al., CVPR 2023): a
folder holding ``open_clip_config.json`` and ``open_clip_model.safetensors`` (the hub layout), or one checkpoint
file plus ``open_clip_arch`` (a built-in architecture name or a JSON model config). Patch tokens:
``visual.forward_intermediates(indices=1, normalize_intermediates=True)``, the last block after the final norm
(``layer=-1``), or ``indices=[layer - 1]`` without the final norm: the output of another block."""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any

from vistok._device import Placement
from vistok.preprocess import Preprocess, resample_name
from vistok.tokenizers.clip.config import ClipConfig, Family, Spec, locate, override, pair, read_json
from vistok.weights.checkpoints import CorruptWeightsError, check_weights_file, unreadable

__all__ = ["open_clip_spec", "OpenClipModel"]

_OPEN_CLIP_FILES = ["*.json", "*.txt", "*.model", "open_clip_model.safetensors"]
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                      "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")


def _open_clip_files(cfg: ClipConfig, family: Family) -> tuple[Path, Path, dict, dict, str | None]:
    """(path, weights file, model config, preprocess config, tokenizer source) from the config's model."""
    import open_clip

    path = locate(family.name, cfg.model, _OPEN_CLIP_FILES)
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
        doc = read_json(path / "open_clip_config.json")
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
        doc = read_json(Path(arch))
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


def open_clip_spec(cfg: ClipConfig, family: Family) -> Spec:
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
    image_size = pair(vision.get("image_size", 224))
    if vision.get("timm_model_name"):
        patch, layers, class_token = _timm_tower(vision["timm_model_name"])
    elif isinstance(vision.get("layers"), (list, tuple)):
        raise ValueError(f"{path}: the image tower is a ResNet, which has no patch tokens; the clip/siglip "
                         "tokenizers need a ViT image tower (use the cnn tokenizer for feature maps)")
    else:
        patch, layers, class_token = pair(vision.get("patch_size", 16)), int(vision.get("layers", 12)), True
    pp = merge_preprocess_dict(PreprocessCfg(), {**pp_cfg, "size": image_size})
    interpolation = resample_name(pp["interpolation"])
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
    preprocessing = override(base, cfg)
    fixed = _fixed_output(preprocessing)
    if fixed != image_size:
        got = "a size that depends on the image" if fixed is None else f"{fixed[1]}x{fixed[0]}"
        raise ValueError(f"open_clip ViTs take exactly {image_size[1]}x{image_size[0]} inputs, but the preprocessing "
                         f"overrides give {got}; keep the checkpoint's size and crop")
    return Spec(path, preprocessing, patch, image_size,
                detail={"weights": str(weights), "model_cfg": model_cfg, "tokenizer": tokenizer_source},
                layers=layers, class_token=class_token)


def _fixed_output(pp: Preprocess) -> tuple[int, int] | None:
    """``(height, width)`` of every preprocessed image, or None when it depends on the image."""
    if pp.crop is not None:
        return pair(pp.crop)
    if isinstance(pp.size, (tuple, list)):
        return pair(pp.size)
    return None


def _timm_tower(timm_name: str) -> tuple[tuple[int, int], int | None, bool]:
    """Patch size, number of blocks (None when the tower has no ``blocks``) and whether it has a class token, of
    a timm ViT, read from the model built on the meta device (no weights, no memory)."""
    import timm
    import torch

    with torch.device("meta"):
        trunk = timm.create_model(timm_name, pretrained=False, num_classes=0)
    embed = getattr(trunk, "patch_embed", None)
    if embed is None or not hasattr(embed, "patch_size"):
        raise ValueError(f"timm image tower {timm_name!r} has no patch embedding; "
                         "the clip/siglip tokenizers need a ViT")
    blocks = getattr(trunk, "blocks", None)
    return pair(embed.patch_size), None if blocks is None else len(blocks), bool(getattr(trunk, "has_class_token", 0))


class OpenClipModel:
    """A loaded open_clip ``CLIP``/``CustomTextCLIP`` built from its config, weights loaded strictly."""

    def __init__(self, spec: Spec, family: Family, place: Placement) -> None:
        import open_clip

        cfg = copy.deepcopy(spec.detail["model_cfg"])
        cfg.get("vision_cfg", {})["timm_model_pretrained"] = False   # never fetch tower weights
        cfg.get("text_cfg", {})["hf_model_pretrained"] = False
        custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
        cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
        model = cls(**cfg)
        weights = spec.detail["weights"]
        check_weights_file(weights)
        try:
            open_clip.load_checkpoint(model, weights, strict=True)
        except Exception as err:  # noqa: BLE001 - a damaged file, not a checkpoint, or another architecture
            problem = unreadable(weights, err)
            if isinstance(problem, CorruptWeightsError):
                raise problem from err
            text = str(err).strip()
            first = text.splitlines()[0] if text else ""
            if not isinstance(err, RuntimeError):
                raise ValueError(f"{weights}: not a readable open_clip checkpoint ({type(err).__name__}: "
                                 f"{first[:200]})") from err
            lines = [s.strip() for s in text.splitlines()[1:3]]
            raise ValueError(f"{weights}: the weights do not fit this open_clip architecture ({first} "
                             f"{' '.join(lines)[:300]}); refusing to run with randomly initialised parts. Is it the "
                             "right checkpoint or open_clip_arch?") from err
        self.model = place.model(model.eval())
        self.place = place
        self.spec, self.family = spec, family
        self._text_tokenizer = None

    def images(self, pixels: Any, block: int) -> tuple[Any, Any, Any]:
        """``(B,3,H,W)`` -> patch maps ``(B, rows, cols, D)``, class token ``(B, D)`` or None, embedding; the
        output of block ``block`` (1 = the first; the last one after the final norm)."""
        last = block == self.spec.layers
        out = self.model.visual.forward_intermediates(
            self.place.inputs(pixels), indices=1 if last else [block - 1], normalize_intermediates=last,
            output_fmt="NCHW", output_extra_tokens=True,
        )
        maps = out["image_intermediates"][-1].permute(0, 2, 3, 1)
        prefix = out.get("image_intermediates_prefix")
        cls = prefix[-1][:, 0] if self.spec.class_token and prefix and prefix[-1].shape[1] >= 1 else None
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
        return self.model.encode_text(self.place.inputs(self._text_tokenizer(texts)))

    def logit_scale_bias(self) -> tuple[Any, Any]:
        return self.model.logit_scale, getattr(self.model, "logit_bias", None)
