"""``sd-vae``: soft tokens from the latent space of a Stable Diffusion autoencoder.

Latent diffusion (Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022)
runs its diffusion model on the latents of a KL-regularised autoencoder instead of on pixels: the encoder
turns an ``H x W`` image into a ``C x H/f x W/f`` grid (``f = 8``, ``C = 4`` for Stable Diffusion 1/2 and
SDXL; 16 channels for SD3 and FLUX) and the decoder turns such a grid back into pixels. Each latent cell is
a token here: ``C`` numbers that stand for one ``f x f`` square, on the latent grid, and the tokens decode.
The autoencoder is diffusers' ``AutoencoderKL`` (https://github.com/huggingface/diffusers), loaded from a
local folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as ``save_pretrained`` writes it; a
pipeline folder's ``vae/`` is found by itself) or, when the hub is reachable, a hub id.

* The tokens are the posterior mean (``sample=True``: one draw from the posterior, seeded), scaled as
  diffusion models consume them: ``(z - shift_factor) * scaling_factor`` from the VAE's config (``scaled=False``
  keeps the raw latents). ``decode`` undoes the scaling.
* The image is scaled down so its longer side is at most ``max_side`` and each side is rounded to a multiple
  of ``f = 2 ** (len(block_out_channels) - 1)`` (:func:`vistok.tokenizers.base.cell_layout`), so ``count``
  needs only ``config.json``; with no model it assumes Stable Diffusion's ``f = 8``.

Shapes: pixels ``(B, 3, H, W)`` in [-1, 1]; latents ``(B, C, H/f, W/f)``; tokens ``(H/f * W/f, C)`` float32,
row-major over the latent grid; ``decode`` gives an ``H x W`` RGB image.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok._device import Placement, placement, to_numpy
from vistok.hub import HUB_ID, from_cache_or_hub, offline_reason
from vistok.registry import register_path_handler, register_tokenizer
from vistok.tokenizers.base import CellTokenizer, to_image
from vistok.tokens import Tokens

__all__ = ["SdVaeConfig", "SdVaeTokenizer", "is_vae_folder", "DEFAULT_FACTOR"]

#: Downsampling factor ``count`` assumes when no model is given: that of every Stable Diffusion VAE.
DEFAULT_FACTOR = 8
_CLASS = "AutoencoderKL"
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                 "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")
_VARIANTS = ("fp16", "bf16")
_NEEDS = ("a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors, as "
          "AutoencoderKL.save_pretrained writes it), e.g. a Stable Diffusion pipeline's vae/ subfolder")


@dataclass
class SdVaeConfig:
    """Options of the ``sd-vae`` tokenizer.

    model: a local diffusers ``AutoencoderKL`` folder, a pipeline folder holding one in ``vae/``, or a hub id
    (used only when the hub is reachable). subfolder: the VAE's folder inside ``model`` (e.g. ``"vae"``; None
    finds ``vae/`` by itself when ``model`` has no AutoencoderKL config of its own). max_side: the longer side
    is scaled down to at most this (None keeps the native size); sides are rounded to multiples of the
    VAE's factor. scaled: tokens are ``(z - shift_factor) * scaling_factor`` as diffusion models use them
    (False: raw latents). sample: False takes the posterior mean, True one sample drawn with ``seed``.
    device, dtype: where the VAE runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``) and in which precision
    (``"float32"``, ``"float16"``, ``"bfloat16"``); tokens are float32 either way (see :mod:`vistok._device`).
    batch_size: images per forward pass.
    """

    model: str | None = None
    subfolder: str | None = None
    max_side: int | None = 512
    scaled: bool = True
    sample: bool = False
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8


@dataclass(frozen=True)
class _Source:
    """Where the VAE is and what its config says (no weights read)."""

    ref: str                 # what was given as model=
    local: Path | None       # the folder holding config.json, for local models
    hub_id: str | None
    subfolder: str | None    # inside the hub repo
    config_file: Path
    config: dict[str, Any]

    @property
    def where(self) -> str:
        if self.local is not None:
            return os.fspath(self.local)
        return f"{self.hub_id}/{self.subfolder}" if self.subfolder else str(self.hub_id)

    @property
    def factor(self) -> int:
        blocks = self.config.get("block_out_channels", (64,))
        return 2 ** (len(blocks) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.config.get("latent_channels", 4))

    @property
    def scaling_factor(self) -> float:
        return float(self.config.get("scaling_factor", 0.18215))

    @property
    def shift_factor(self) -> float | None:
        shift = self.config.get("shift_factor")
        return None if shift is None else float(shift)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from err
    return config if isinstance(config, dict) else {}


def _is_vae_config(path: Path) -> bool:
    try:
        return path.is_file() and _read_config(path).get("_class_name") == _CLASS
    except ValueError:
        return False


def is_vae_folder(path: str | os.PathLike) -> bool:
    """True when ``path``, or its ``vae/`` subfolder, holds a ``config.json`` of a diffusers AutoencoderKL."""
    try:
        folder = Path(path).expanduser()
    except TypeError:
        return False
    return _is_vae_config(folder / "config.json") or _is_vae_config(folder / "vae" / "config.json")


def _checked(source: _Source) -> _Source:
    """``source`` if its config describes an AutoencoderKL, else one clear error."""
    name = source.config.get("_class_name")
    if name != _CLASS:
        if name:
            what = f"a diffusers {name}"
        elif source.config.get("model_type") or source.config.get("architectures"):
            what = f"a transformers {source.config.get('model_type') or source.config['architectures'][0]} model"
        else:
            what = "no diffusers model (no _class_name)"
        raise ValueError(f"{source.config_file} describes {what}, not an {_CLASS}; sd-vae needs {_NEEDS}")
    blocks = source.config.get("block_out_channels", (64,))
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError(f"{source.config_file}: block_out_channels must be a non-empty list, got {blocks!r}")
    return source


def _local_source(ref: str, path: Path, subfolder: str | None) -> _Source:
    if not path.is_dir():
        raise ValueError(f"{ref!r} is a file; sd-vae loads {_NEEDS}")
    if subfolder:
        folder = path / subfolder
        if not folder.is_dir():
            raise FileNotFoundError(f"no subfolder {subfolder!r} in {os.fspath(path)!r}; pass subfolder= the folder "
                                    f"that holds the VAE (e.g. 'vae'), or None")
    elif not _is_vae_config(path / "config.json") and (path / "vae" / "config.json").is_file():
        folder = path / "vae"  # a pipeline folder: its VAE
    else:
        folder = path
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {os.fspath(folder)!r}: not a diffusers model folder; sd-vae needs "
                                f"{_NEEDS}")
    return _checked(_Source(ref, folder, None, None, config_file, _read_config(config_file)))


def _offline_error(ref: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{ref!r} is not a local folder and the Hugging Face hub cannot be used ({reason}); pass a local path: "
        f"vistok.load('sd-vae', model='/path/to/vae'), {_NEEDS}"
    )


def _hub_source(ref: str, subfolder: str | None) -> _Source:
    """config.json of a hub repo (from the local HF cache, else downloaded when the hub is reachable); with no
    subfolder, a pipeline repo's ``vae/`` is tried when the root holds no AutoencoderKL config."""
    from huggingface_hub import hf_hub_download

    candidates = [subfolder] if subfolder else [None, "vae"]

    def fetch(local: bool) -> _Source:
        found = None
        for sub in candidates:
            try:
                path = Path(hf_hub_download(ref, "config.json", subfolder=sub, local_files_only=local))
            except Exception:  # noqa: BLE001 - not there (or not cached): try the next place
                continue
            found = _Source(ref, None, ref, sub, path, _read_config(path))
            if found.config.get("_class_name") == _CLASS:
                return found
        if found is None:
            raise FileNotFoundError(ref)
        return found

    def not_found(_err: Exception) -> FileNotFoundError:
        where = f"{ref}/{subfolder}" if subfolder else ref
        return FileNotFoundError(f"{where!r} is neither a local folder nor a diffusers model on the Hugging Face hub "
                                 f"(no config.json); sd-vae needs {_NEEDS}")

    return _checked(from_cache_or_hub(fetch, lambda reason: _offline_error(ref, reason), not_found))


def _resolve(model: str | None, subfolder: str | None) -> _Source:
    if model is None:
        raise ValueError(f"sd-vae needs a VAE: pass model=PATH of {_NEEDS}, e.g. "
                         "vistok.load('sd-vae', model='/models/stable-diffusion-v1-5/vae')")
    path = Path(os.fspath(model)).expanduser()
    if path.exists():
        return _local_source(str(model), path, subfolder)
    if HUB_ID.fullmatch(str(model)) and not str(model).startswith("."):
        return _hub_source(str(model), subfolder)
    raise FileNotFoundError(f"no folder at {str(model)!r}; sd-vae needs {_NEEDS} (or a hub id such as "
                            "'stabilityai/sd-vae-ft-mse' when online)")


def _weights_variant(folder: Path) -> str | None:
    """The weights ``variant`` to load from ``folder`` (None: the plain files), or a clear error if none."""
    if any((folder / name).is_file() for name in _WEIGHT_FILES):
        return None
    for variant in _VARIANTS:
        if any((folder / name.replace("diffusion_pytorch_model", f"diffusion_pytorch_model.{variant}")).is_file()
               for name in _WEIGHT_FILES):
            return variant
    raise FileNotFoundError(f"{os.fspath(folder)!r} has a config.json but no weights (diffusion_pytorch_model"
                            f".safetensors or .bin); sd-vae needs {_NEEDS}")


def _load_vae(source: _Source, place: Placement) -> Any:
    """The AutoencoderKL of ``source`` on ``place``'s device and dtype, with every weight read from the
    checkpoint."""
    try:
        from diffusers import AutoencoderKL
        from diffusers.utils import logging as diffusers_logging
    except ImportError as err:  # pragma: no cover - diffusers comes with the learned extra
        raise ImportError("sd-vae needs torch and diffusers: pip install 'vistok[learned]'") from err

    kwargs: dict[str, Any] = {"output_loading_info": True, "low_cpu_mem_usage": False,
                              "torch_dtype": place.torch_dtype}
    reason = None
    if source.local is not None:
        target: str = os.fspath(source.local)
        kwargs["variant"] = _weights_variant(source.local)
    else:
        target = str(source.hub_id)
        kwargs["subfolder"] = source.subfolder
        reason = offline_reason()
        kwargs["local_files_only"] = reason is not None
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # missing/unexpected keys are reported below, as one error
    try:
        vae, info = AutoencoderKL.from_pretrained(target, **kwargs)
    except Exception as err:  # noqa: BLE001 - every loader error becomes one message naming the folder
        if reason is not None:
            raise _offline_error(source.ref, reason) from err
        raise ValueError(f"{source.where}: could not load the {_CLASS} weights ({type(err).__name__}: {err})") from err
    finally:
        diffusers_logging.set_verbosity(verbosity)
    problems = []
    for label in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [k[0] if isinstance(k, tuple) else k for k in info.get(label) or []]
        if keys:
            shown = ", ".join(sorted(keys)[:6]) + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")
            problems.append(f"{len(keys)} {label.replace('_', ' ')} ({shown})")
    if info.get("error_msgs"):
        problems.append("; ".join(info["error_msgs"]))
    if problems:
        raise ValueError(f"{source.where}: the weights do not fit the {_CLASS} its config.json describes: "
                         f"{'; '.join(problems)}. Pass the folder the weights were saved with")
    return vae.to(place.torch_device).eval()


class SdVaeTokenizer(CellTokenizer):
    """Latent cells of a diffusers AutoencoderKL as soft tokens; ``decode`` runs its decoder."""

    name = "sd-vae"
    kind = "soft"
    decodable = True

    def __init__(self, config: SdVaeConfig | None = None) -> None:
        self.config = config or SdVaeConfig()
        c = self.config
        def whole(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        if not whole(c.batch_size) or c.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {c.batch_size!r}")
        if c.max_side is not None and (not whole(c.max_side) or c.max_side < 1):
            raise ValueError(f"max_side must be a positive integer or None, got {c.max_side!r}")
        if not whole(c.seed):
            raise ValueError(f"seed must be an integer, got {c.seed!r}")
        self._place = placement(c.device, c.dtype)
        self._vae: Any = None

    # -- the checkpoint (config only) ------------------------------------------------------------
    @functools.cached_property
    def source(self) -> _Source:
        """Where the VAE is and its config (read from config.json; no weights)."""
        return _resolve(self.config.model, self.config.subfolder)

    @property
    def cell(self) -> int:
        """The VAE's downsampling factor (8 when no model is given, as for every Stable Diffusion VAE)."""
        return DEFAULT_FACTOR if self.config.model is None else self.source.factor

    @property
    def factor(self) -> int:
        return self.cell

    # -- loading ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Validate the options, read config.json and load the weights now (``encode`` does it lazily)."""
        _ = self.source
        super().check()

    def _load_weights(self) -> None:
        if self._vae is None:
            self._vae = _load_vae(self.source, self._place)

    @property
    def vae(self) -> Any:
        """The diffusers ``AutoencoderKL`` (loaded on first use)."""
        self._load_weights()
        return self._vae

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list (run in batches of images of one working size)."""
        from vistok.preprocess import batches, sized_inputs

        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        ready, sizes = sized_inputs(items)
        source, vae = self.source, self.vae
        out: list[Tokens | None] = [None] * len(items)
        for (width, height), chunk in batches(sizes, self.working_size, self.config.batch_size):
            pixels = np.stack([self.prepare(ready[i])[0] for i in chunk])
            latents = self._latents(vae, pixels)
            for b, i in enumerate(chunk):
                channels, rows, cols = latents[b].shape
                values = np.ascontiguousarray(latents[b].transpose(1, 2, 0).reshape(rows * cols, channels))
                out[i] = Tokens.from_grid(values, (rows, cols), meta={
                    "tokenizer": self.name, "config": self._config_dict(), "image_size": list(sizes[i]),
                    "working_size": [width, height], "factor": source.factor, "scaled": bool(self.config.scaled),
                    "scaling_factor": source.scaling_factor, "shift_factor": source.shift_factor,
                    "latent_channels": source.latent_channels, "model": source.where,
                })
        return out[0] if single else out  # type: ignore[return-value]

    def _latents(self, vae: Any, pixels: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` pixels in [0, 1] -> ``(B, C, h, w)`` float32 latents (scaled unless ``scaled=False``)."""
        import torch

        c, source = self.config, self.source
        # a contiguous NCHW tensor, as diffusers' image processor gives: the memory format picks the conv kernel
        x = self._place.inputs(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous() * 2.0 - 1.0)
        with torch.inference_mode():
            posterior = vae.encode(x).latent_dist
            z = posterior.mean
            if c.sample:  # one float32 draw per image from its own seeded generator: independent of batch and dtype
                seeded = [torch.Generator().manual_seed(int(c.seed)) for _ in range(len(z))]
                noise = torch.cat([torch.randn((1, *z.shape[1:]), generator=g) for g in seeded]).to(z)
                z = z + posterior.std * noise
            if c.scaled:
                if source.shift_factor is not None:
                    z = z - source.shift_factor
                z = z * source.scaling_factor
        return to_numpy(z)

    # -- decoding --------------------------------------------------------------------------------
    def _decode(self, tokens: Tokens) -> Image.Image:
        """Run the VAE decoder on the latent grid; the image is the grid times the factor (the working size)."""
        import torch

        source = self.source
        if tokens.is_hard:
            raise ValueError(f"sd-vae cannot decode hard tokens (ids), got {tokens!r}; it decodes its own soft "
                             "latent tokens")
        if tokens.grid is None:
            raise ValueError(f"sd-vae can only decode tokens laid out on a grid (the latent grid), got {tokens!r}; "
                             "merged or pruned tokens have none")
        if tokens.dim != source.latent_channels:
            raise ValueError(f"sd-vae cannot decode {tokens.dim}-dim tokens: this VAE's latents have "
                             f"{source.latent_channels} channels ({source.where})")
        scaled = tokens.meta.get("scaled", self.config.scaled)
        rows, cols = tokens.grid
        vae = self.vae
        z = torch.from_numpy(np.ascontiguousarray(tokens.values, dtype=np.float32))
        z = z.reshape(rows, cols, -1).permute(2, 0, 1)[None].contiguous()
        if scaled:
            z = z / source.scaling_factor
            if source.shift_factor is not None:
                z = z + source.shift_factor
        with torch.inference_mode():
            x = vae.decode(self._place.inputs(z)).sample[0]
        return to_image((to_numpy(x.permute(1, 2, 0)) + 1.0) / 2.0)


@register_tokenizer(
    "sd-vae", kind="soft", decodable=True, config=SdVaeConfig,
    weights="yours: model= a diffusers AutoencoderKL folder (e.g. a Stable Diffusion pipeline's vae/); "
            "a hub id only when online",
    description="latent cells of a Stable Diffusion VAE (diffusers AutoencoderKL): (H/8)*(W/8) tokens of 4 dims "
                "for SD; decodes with the VAE decoder",
)
def create_sd_vae(**options: Any) -> SdVaeTokenizer:
    return SdVaeTokenizer(SdVaeConfig(**options))


register_path_handler("sd-vae", option="model", accepts=is_vae_folder,
                      holds="a diffusers AutoencoderKL folder (with config.json)")
