"""The ``transformers`` backend of ``clip``/``siglip``: a folder written by ``CLIPModel``/``SiglipModel``
``.save_pretrained`` (``config.json``, ``model.safetensors``, ``preprocessor_config.json`` and the text tokenizer
files), as on the hub. Patch tokens: the vision tower's ``last_hidden_state`` (``layer=-1``) or
``hidden_states[layer]``, without its class token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vistok._device import Placement
from vistok.preprocess import Preprocess, resample_name
from vistok.tokenizers.clip.config import CLIP, SIGLIP, ClipConfig, Family, Spec, locate, override, pair, read_json
from vistok.weights.checkpoints import check_weights_folder

__all__ = ["hf_spec", "HFModel"]

_HF_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def hf_preprocess(folder: Path, cfg: ClipConfig, family: Family) -> Preprocess:
    """Preprocess from ``preprocessor_config.json`` (a CLIP- or SigLIP-style image processor config)."""
    file = folder / "preprocessor_config.json"
    if file.is_file():
        pp = read_json(file)
    elif (folder / "processor_config.json").is_file():
        pp = read_json(folder / "processor_config.json").get("image_processor", {})
    else:
        pp = None
    if not pp:
        if cfg.size is not None and cfg.mean is not None and cfg.std is not None:
            return override(Preprocess(size=cfg.size, crop=None), cfg)
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
        crop = (int(raw["height"]), int(raw["width"])) if isinstance(raw, dict) else pair(raw)
    resample = resample_name(pp.get("resample", 3))
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
    return override(base, cfg)


def hf_spec(cfg: ClipConfig, family: Family) -> Spec:
    path = locate(family.name, cfg.model, _HF_FILES)
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
    config = read_json(path / "config.json")
    model_type = config.get("model_type")
    if model_type != family.hf_model_type:
        known = model_type in (CLIP.hf_model_type, SIGLIP.hf_model_type)
        hint = f"use vistok.load({model_type!r}, model=...)" if known else "pass a CLIP or SigLIP checkpoint"
        raise ValueError(
            f"{path}: config.json says model_type={model_type!r}, but the {family.name!r} tokenizer loads "
            f"{family.hf_model_type!r} checkpoints ({family.hf_class}); {hint}"
        )
    # the config class fills in the defaults that old config.json files leave out (no weights are read)
    import transformers

    full = getattr(transformers, family.hf_class).config_class.from_pretrained(path, local_files_only=True)
    patch = pair(full.vision_config.patch_size)
    image_size = pair(full.vision_config.image_size)
    preprocessing = hf_preprocess(path, cfg, family)
    return Spec(path, preprocessing, patch, image_size,
                detail={"model_type": model_type, "text_max_length": full.text_config.max_position_embeddings},
                layers=int(full.vision_config.num_hidden_layers), class_token=model_type == CLIP.hf_model_type)


class HFModel:
    """A loaded transformers ``CLIPModel``/``SiglipModel`` and its text tokenizer."""

    def __init__(self, spec: Spec, family: Family, place: Placement) -> None:
        import transformers

        cls = getattr(transformers, family.hf_class)
        check_weights_folder(spec.path)
        try:
            model, info = cls.from_pretrained(spec.path, local_files_only=True, output_loading_info=True)
        except Exception as err:  # noqa: BLE001 - every loader error (safetensors' own type too) becomes one line
            raise ValueError(f"{spec.path}: could not load a {family.hf_class} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from err
        problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        problems = {k: v for k, v in problems.items() if v}
        if problems:
            summary = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {v[0]})" for k, v in problems.items())
            raise ValueError(f"{spec.path}: the weights do not fit {family.hf_class} ({summary}); refusing to "
                             "run with randomly initialised parts. Is it the right checkpoint type?")
        self.model = place.model(model.eval())
        self.place = place
        self.spec, self.family = spec, family
        self._text_tokenizer = None

    def images(self, pixels: Any, block: int) -> tuple[Any, Any, Any]:
        """``(B,3,H,W)`` -> patch maps ``(B, rows, cols, D)``, class token ``(B, D)`` or None, embedding; the
        tokens of ``hidden_states[block]``, or ``last_hidden_state`` for the last block (SigLIP: post-LN)."""
        rows, cols = pixels.shape[2] // self.spec.patch[0], pixels.shape[3] // self.spec.patch[1]
        interpolate = (pixels.shape[2], pixels.shape[3]) != self.spec.image_size
        last = block == self.spec.layers
        out = self.model.get_image_features(pixel_values=self.place.inputs(pixels), interpolate_pos_encoding=interpolate,
                                            output_hidden_states=not last)
        hidden = out.last_hidden_state if last else out.hidden_states[block]
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
        return self.model.get_text_features(**{k: self.place.inputs(inputs[k]) for k in names}).pooler_output

    def logit_scale_bias(self) -> tuple[Any, Any]:
        return self.model.logit_scale, getattr(self.model, "logit_bias", None)
