"""Options of the ``clip`` and ``siglip`` tokenizers, what differs between the two, and the parts both backends
share: finding the checkpoint (a local path, or a hub id through :mod:`vistok.hub`) and preprocessing overrides."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vistok.hub import HUB_ID, from_cache_or_hub
from vistok.preprocess import Preprocess
from vistok.weights.checkpoints import WEIGHT_SUFFIXES

__all__ = ["ClipConfig", "SiglipConfig", "Family", "CLIP", "SIGLIP", "Spec", "BACKENDS", "SELECT", "locate",
           "read_json", "pair", "override"]

BACKENDS = ("transformers", "open_clip")
SELECT = ("default", "full")


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

    layer: the vision tower's hidden state the tokens come from, indexed like transformers' ``hidden_states``
    (``N + 1`` entries for ``N`` layers: 0 = the embeddings, ``k`` = after layer ``k``, negative counts from
    the end). ``-1`` (or ``N``) is the library's own final output, as before these options existed:
    transformers' ``last_hidden_state``, which for CLIP *is* ``hidden_states[-1]`` (before
    ``post_layernorm``) and for SigLIP is ``post_layernorm(hidden_states[-1])``; open_clip's last block
    after the final norm. Every other layer is the raw ``hidden_states[layer]`` (no final norm). So the
    tokens are what a VLM's projector receives: LLaVA feeds ``hidden_states[vision_feature_layer]``
    (LLaVA-1.5: ``-2``, so ``layer=-2``); PaliGemma feeds ``vision_tower(pixel_values).last_hidden_state``
    (post-LN: ``layer=-1``). The open_clip backend gives block outputs only, not layer 0.

    select: as transformers' ``vision_feature_select_strategy``: ``"default"`` drops the class token (patch
    tokens on the grid; the class token of the same layer is ``extras["cls"]``), ``"full"`` keeps it as
    token 0 (the tokens then carry boxes and a source map instead of a grid). On a tower without a class
    token (SigLIP's) ``"full"`` gives the same tokens as ``"default"``. The ``embedding`` extra is always the model's
    image embedding, whatever the layer.

    batch_size: images per forward pass in ``encode``. device, dtype: where the model runs (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``, ``"mps"``) and in which precision (``"float32"``, ``"float16"``, ``"bfloat16"``);
    tokens, embeddings and logits are float32 either way (see :mod:`vistok._device`).
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
    layer: int = -1
    select: str = "default"
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class SiglipConfig(ClipConfig):
    """Options of the ``siglip`` tokenizer; the same as :class:`ClipConfig`."""


@dataclass(frozen=True)
class Family:
    """What differs between the ``clip`` and ``siglip`` tokenizers (data, not name sniffing)."""

    name: str
    hf_model_type: str          # config.json "model_type" the transformers backend accepts
    hf_class: str               # transformers class that loads it
    logit_bias: bool            # SigLIP models carry a learnt logit bias, CLIP models do not
    text_padding: str           # "longest" (CLIP) or "max_length" (SigLIP was trained on padded text)
    probabilities: str          # "softmax" over labels (CLIP) or independent "sigmoid" (SigLIP)


CLIP = Family("clip", "clip", "CLIPModel", False, "longest", "softmax")
SIGLIP = Family("siglip", "siglip", "SiglipModel", True, "max_length", "sigmoid")


@dataclass(frozen=True)
class Spec:
    """Everything known about a checkpoint before its weights are read."""

    path: Path                       # local folder or file
    preprocessing: Preprocess
    patch: tuple[int, int]           # (height, width) of one patch in pixels
    image_size: tuple[int, int]      # (height, width) the position table was trained for
    detail: dict[str, Any]           # backend-specific facts (model type, configs, weight file)
    layers: int | None = None        # layers (blocks) of the vision tower; None when unknown
    class_token: bool = False        # whether the vision tower has a class token


def locate(name: str, model: str | None, patterns: list[str]) -> Path:
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
    if not HUB_ID.match(model) or model.lower().endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"model {model!r}: no such file or folder; pass a local folder or file: {example}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:  # pragma: no cover - huggingface_hub comes with transformers and open_clip
        raise FileNotFoundError(f"no local weights at {model!r} and huggingface_hub is not installed; "
                                f"pass a local folder: {example}") from err

    def fetch(local: bool) -> Path:
        return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=local))

    def offline(reason: str) -> FileNotFoundError:
        return FileNotFoundError(f"no local weights at {model!r} and the Hugging Face hub is not reachable (offline: "
                                 f"{reason}); download the repository elsewhere and pass its folder: {example}")

    def failed(err: Exception) -> FileNotFoundError:
        root = err.__cause__ or err
        return FileNotFoundError(f"no local weights at {model!r} and the Hugging Face hub is not reachable "
                                 f"({type(root).__name__}: {str(root)[:120]}); pass a local folder: {example}")

    return from_cache_or_hub(fetch, offline, failed)


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def override(base: Preprocess, cfg: ClipConfig) -> Preprocess:
    """Apply the config's explicit preprocessing fields on top of the checkpoint's."""
    changes: dict[str, Any] = {}
    if cfg.size is not None:
        changes["size"] = cfg.size if isinstance(cfg.size, int) else pair(cfg.size)
    if cfg.crop is not None:
        changes["crop"] = None if cfg.crop == 0 else (cfg.crop if isinstance(cfg.crop, int) else pair(cfg.crop))
    for key in ("resample", "rescale"):
        if getattr(cfg, key) is not None:
            changes[key] = getattr(cfg, key)
    for key in ("mean", "std"):
        if getattr(cfg, key) is not None:
            changes[key] = tuple(float(v) for v in getattr(cfg, key))
    return replace(base, **changes)
