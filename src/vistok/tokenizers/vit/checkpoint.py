"""Where a ``vit`` checkpoint comes from and how it loads: its architecture facts and preprocessing read from
its small JSON files (no weights), the weights loaded strictly, and one loaded model per process and source."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vistok.hub import from_cache_or_hub, offline_reason
from vistok.preprocess import resample_name
from vistok.tokenizers.vit.config import FOCUS
from vistok.weights.checkpoints import check_weights_folder

__all__ = ["Source", "describe_source", "load_transformers", "focus_norm", "cached", "model_lock"]

#: transformers classes this tokenizer drives, keyed by ``config.json``'s ``model_type``
_ARCHITECTURES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel", "vit": "ViTModel"}
#: weights a checkpoint may hold that a bare backbone does not use (task heads, pre-training tokens)
_UNUSED_PREFIXES = ("classifier.", "pooler.", "head.", "decoder.", "lm_head.")


@dataclass(frozen=True)
class Source:
    """What a checkpoint is, read from its small JSON files (no weights)."""

    kind: str  # "focus" | "folder" | "hub"
    ref: str
    model_type: str
    patch: int
    layers: int
    registers: int
    preprocess: dict[str, Any] = field(default_factory=dict)


def describe_source(ref: str) -> Source:
    """The :class:`Source` of ``focus-vit-s14``, a local checkpoint folder or a hub id."""
    if ref == FOCUS:
        from vistok.weights import focus_vit

        cfg, pre = focus_vit.DINOV2_CONFIG, focus_vit.PREPROCESS
        return Source("focus", FOCUS, "dinov2", cfg["patch_size"], cfg["num_hidden_layers"], 0,
                      {"size": pre["size"], "resample": "bicubic", "rescale": pre["rescale"],
                       "mean": pre["mean"], "std": pre["std"]})
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{ref!r} is a file; vit loads a transformers checkpoint folder (config.json plus "
                             "model.safetensors), e.g. one written by model.save_pretrained(folder)")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {ref!r}: not a transformers checkpoint folder; pass a folder "
                                    "written by save_pretrained, or model='focus-vit-s14'")
        return _source_from_files("folder", os.fspath(path), path / "config.json",
                                  path / "preprocessor_config.json")
    config_file, pre_file = _hub_files(ref)
    return _source_from_files("hub", ref, config_file, pre_file)


def _read_json(file: Path) -> Any:
    try:
        return json.loads(Path(file).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{file}: not a readable JSON file ({err})") from err


def _source_from_files(kind: str, ref: str, config_file: Path, pre_file: Path | None) -> Source:
    config = _read_json(config_file)
    model_type = config.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"{ref!r} holds a {model_type!r} checkpoint (config.json model_type); vit loads "
            f"{', '.join(sorted(_ARCHITECTURES))} checkpoints (use the clip/siglip/cnn tokenizers for others)"
        )
    pre: dict[str, Any] = {}
    if pre_file is not None and Path(pre_file).is_file():
        p = _read_json(pre_file)
        size = p.get("crop_size") if p.get("do_center_crop") else p.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        # an unknown filter is left out: the tokenizer then asks for resample=...
        pre = {"size": size, "resample": resample_name(p.get("resample", 3)),
               "rescale": p.get("rescale_factor", 1 / 255) if p.get("do_rescale", True) else 1.0,
               "mean": p.get("image_mean"), "std": p.get("image_std")}
        if not p.get("do_normalize", True):
            pre.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    patch = config.get("patch_size", 16)
    return Source(kind, ref, model_type, int(patch[0] if isinstance(patch, list) else patch),
                  int(config.get("num_hidden_layers", 12)), int(config.get("num_register_tokens", 0) or 0),
                  {k: v for k, v in pre.items() if v is not None})


def _offline_error(ref: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no local weights at {ref!r} and the Hugging Face hub is not reachable (offline); pass a local folder: "
        f"vistok.load('vit', model='/path/to/folder') (save one with model.save_pretrained), or use the offline "
        f"default model='{FOCUS}'"
    )


def _hub_files(ref: str) -> tuple[Path, Path | None]:
    """config.json (and preprocessor_config.json) of a hub id: from the local HF cache, else downloaded when
    the hub is reachable, else the one offline error."""
    from huggingface_hub import hf_hub_download

    def fetch(local: bool) -> tuple[Path, Path | None]:
        config = Path(hf_hub_download(ref, "config.json", local_files_only=local))
        try:
            pre: Path | None = Path(hf_hub_download(ref, "preprocessor_config.json", local_files_only=local))
        except Exception:  # noqa: BLE001 - a checkpoint without a processor: options must then be given
            pre = None
        return config, pre

    def not_found(err: Exception) -> FileNotFoundError:
        return FileNotFoundError(f"{ref!r} is neither a local folder nor a model on the Hugging Face hub "
                                 f"({type(err).__name__}); pass a checkpoint folder")

    return from_cache_or_hub(fetch, lambda _reason: _offline_error(ref), not_found)


def load_transformers(src: Source) -> Any:
    """The transformers backbone of ``src``, every weight read from the checkpoint (else a clear error)."""
    import transformers

    cls = getattr(transformers, _ARCHITECTURES[src.model_type])
    kwargs: dict[str, Any] = {"output_loading_info": True, "attn_implementation": "sdpa"}
    if src.model_type == "vit":
        kwargs["add_pooling_layer"] = False
    if src.kind == "folder":
        kwargs["local_files_only"] = True
        check_weights_folder(src.ref)
    elif offline_reason() is not None:
        kwargs["local_files_only"] = True
    try:
        model, info = cls.from_pretrained(src.ref, **kwargs)
    except OSError as err:
        if src.kind == "hub" and kwargs.get("local_files_only"):
            raise _offline_error(src.ref) from err
        raise FileNotFoundError(f"{src.ref!r}: no loadable weights ({_first_line(err)})") from err
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{src.ref!r}: the weights do not fit a {cls.__name__} ({_first_line(err)})") from err
    except Exception as err:  # noqa: BLE001 - a reader's own error type (safetensors'): one line
        raise ValueError(f"{src.ref!r}: could not read the weights ({type(err).__name__}: {_first_line(err)}); "
                         "the files may be damaged: download or copy them again") from err
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("mask_token")]
    unexpected = [k for k in info.get("unexpected_keys", [])
                  if not k.startswith(_UNUSED_PREFIXES) and not k.endswith("mask_token")]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{src.ref!r} does not hold {cls.__name__} weights: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}, mismatched {mismatched[:3]}; refusing to run with random weights"
        )
    return model.eval()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def focus_norm(focus_vit: Any) -> Any:
    """The final LayerNorm of focus-vit-s14 as a numpy function (for the onnxruntime backend)."""
    state, _ = focus_vit.load_state()
    weight, bias = state["layernorm.weight"], state["layernorm.bias"]
    eps = focus_vit.DINOV2_CONFIG["layer_norm_eps"]

    def norm(x: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)

    return norm


_models: dict[tuple[str, ...], Any] = {}
_models_lock = threading.Lock()
_forward_locks: dict[int, threading.Lock] = {}


def cached(key: tuple[str, ...], build: Any) -> Any:
    """One loaded model per process and source: tokenizers with other options share it (it is only read)."""
    with _models_lock:
        if key not in _models:
            _models[key] = build()
        return _models[key]


def model_lock(model: Any) -> threading.Lock:
    """Hooks live on the shared model for one forward pass, so passes on one model take turns."""
    with _models_lock:
        return _forward_locks.setdefault(id(model), threading.Lock())
