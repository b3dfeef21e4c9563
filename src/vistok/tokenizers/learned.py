"""``learned``, ``fsq-fmnist``, ``fsq-natural64``: tokenizers trained with ``vistok train``.

A convolutional autoencoder whose bottleneck is a vector-quantize-pytorch quantizer (see
:mod:`vistok.learned.model`): ``encode`` gives ``h x w`` ids (``H/factor x W/factor``), ``decode`` turns ids,
also ids loaded from disk, back into an image. ``kl`` models give soft tokens (posterior means) instead.

The two shipped models (float16 safetensors inside the package, trained by the commands in the README):
``fsq-fmnist`` (Fashion-MNIST, 28x28 -> 7x7 ids, FSQ levels 8,5,5,5) and ``fsq-natural64`` (64x64 crops of
the offline sample photos -> 16x16 ids). Both are fully convolutional, so any image size works; it is scaled
so its longer side is at most ``max_side`` and each side is rounded to a multiple of the factor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from vistok._device import placement, to_numpy
from vistok.images import ImageInput
from vistok.registry import register_path_handler, register_tokenizer
from vistok.tokenizers.base import CellTokenizer, to_image
from vistok.tokens import Tokens

__all__ = ["LearnedConfig", "LearnedTokenizer", "is_learned_model", "SHIPPED"]

SHIPPED = {"fsq-fmnist": "fsq-fmnist.safetensors", "fsq-natural64": "fsq-natural64.safetensors"}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's "L" conversion


@dataclass
class LearnedConfig:
    """Options of ``learned``: path of a folder written by ``vistok train`` (or its model.safetensors);
    max_side: the longer image side is scaled down to at most this (None keeps the native size);
    quantizer: when set, refuse a file holding another quantizer; batch_size: images per forward pass;
    device, dtype: where the model runs (``"cpu"``, ``"cuda"``, ``"mps"``) and in which precision (``"float32"``,
    ``"float16"``, ``"bfloat16"``; half precision may change a few ids)."""

    path: str | None = None
    max_side: int | None = 256
    quantizer: str | None = None
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class FsqFmnistConfig:
    """Options of ``fsq-fmnist``: max_side (28, the size it was trained on), batch_size, device, dtype (as for
    :class:`LearnedConfig`)."""

    quantizer: ClassVar[str] = "fsq"  # fixed: the shipped file must hold an FSQ model
    max_side: int | None = 28
    batch_size: int = 256
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class FsqNatural64Config:
    """Options of ``fsq-natural64``: max_side (longer side; it was trained on 64x64 crops), batch_size, device,
    dtype (as for :class:`LearnedConfig`)."""

    quantizer: ClassVar[str] = "fsq"  # fixed: the shipped file must hold an FSQ model
    max_side: int | None = 256
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"


def _header(file: Path) -> dict[str, Any]:
    """The vistok record in a safetensors header (reads no tensors)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(file), framework="numpy") as handle:
            return json.loads((handle.metadata() or {}).get("vistok_weights", "null")) or {}
    except (SafetensorError, OSError, ValueError) as err:
        from vistok.weights.checkpoints import unreadable

        raise unreadable(file, err) from None


def is_learned_model(path: str | os.PathLike) -> bool:
    """True when ``path`` is a ``vistok train`` folder or a learned-tokenizer file. A model file that cannot be
    read counts when it sits in a training run (beside its metrics log), so that loading it says it is damaged
    instead of "not a model"."""
    from vistok.learned.train import METRICS_FILE, MODEL_FILE, WEIGHTS_KIND

    p = Path(path)
    file = p / MODEL_FILE if p.is_dir() else p
    if not file.is_file() or file.suffix != ".safetensors":
        return False
    try:
        return _header(file).get("kind") == WEIGHTS_KIND
    except ValueError:
        return file.name == MODEL_FILE and (file.parent / METRICS_FILE).is_file()


class LearnedTokenizer(CellTokenizer):
    """Image -> ``h x w`` ids (or kl latents) of a trained autoencoder; ``decode`` inverts it."""

    decodable = True

    def __init__(self, config: Any, name: str = "learned", file: Path | None = None) -> None:
        self.config = config
        self.name = name
        self._file = file
        self._place = placement(config.device, config.dtype)
        self._model: Any = None
        self._header: dict[str, Any] | None = None

    # -- what the file says, without loading weights ------------------------------------------
    @property
    def file(self) -> Path:
        if self._file is None:
            from vistok.learned.train import MODEL_FILE

            path = self.config.path  # only `learned` gets here: the shipped tokenizers are given their file
            if path is None:
                raise ValueError("the learned tokenizer needs path=FOLDER, a folder written by `vistok train` "
                                 "(or its model.safetensors); or use a shipped one: fsq-fmnist, fsq-natural64")
            p = Path(path)
            self._file = p / MODEL_FILE if p.is_dir() else p
            if not self._file.is_file():
                raise FileNotFoundError(f"no learned tokenizer at {os.fspath(path)!r}; pass a folder written by "
                                        f"`vistok train` (holding {MODEL_FILE}) or the file itself")
        return self._file

    @property
    def model_config(self) -> dict[str, Any]:
        if self._header is None:
            from vistok.learned.train import WEIGHTS_KIND

            header = _header(self.file)
            if header.get("kind") != WEIGHTS_KIND:
                raise ValueError(f"{self.file}: holds {header.get('kind') or 'no vistok'} weights, expected a "
                                 "learned tokenizer written by `vistok train`")
            self._header = header
        return self._header["config"]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "soft" if self.model_config["quantizer"] == "kl" else "hard"

    @property
    def cell(self) -> int:
        return int(self.model_config["factor"])

    @property
    def channels(self) -> int:
        return int(self.model_config["channels"])

    @property
    def vocab_size(self) -> int | None:
        return self.model.config.vocab_size

    # -- weights ------------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The :class:`~vistok.learned.model.Autoencoder`, loaded on first use."""
        if self._model is None:
            from vistok.learned.train import load_model

            model, _ = load_model(self.file, self.config.quantizer)
            self._model = self._place.model(model)
        return self._model

    def _load_weights(self) -> None:
        self.model  # noqa: B018 - loads and checks the weights

    # -- encode / decode ----------------------------------------------------------------------
    def prepare(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """Working-size ``(H, W, 3)`` float pixels in [0, 1] (grey models see BT.601 luma, replicated)."""
        pixels, original = super().prepare(image)
        if self.channels == 1:
            pixels = np.repeat((pixels @ _LUMA)[..., None], 3, axis=2)
        return pixels, original

    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list for a list (same-size images share a forward pass)."""
        import torch

        single = not isinstance(images, (list, tuple))
        prepared = [self.prepare(im) for im in ([images] if single else images)]
        results: list[Tokens | None] = [None] * len(prepared)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (pixels, _) in enumerate(prepared):
            by_shape.setdefault(pixels.shape, []).append(i)
        model, step = self.model, max(1, int(self.config.batch_size))
        for indices in by_shape.values():
            for start in range(0, len(indices), step):
                chunk = indices[start:start + step]
                x = torch.from_numpy(np.stack([prepared[i][0] for i in chunk])).permute(0, 3, 1, 2)
                x = x[:, :1] if self.channels == 1 else x
                values, grid = model.encode(self._place.inputs(x.contiguous()))
                for i, v in zip(chunk, to_numpy(values)):
                    results[i] = self._tokens(v, grid, prepared[i])
        return results[0] if single else results  # type: ignore[return-value]

    def _tokens(self, values: np.ndarray, grid: tuple[int, int], prepared: tuple[np.ndarray, tuple[int, int]]) -> Tokens:
        pixels, original = prepared
        meta = {"tokenizer": self.name, "config": self._config_dict(), "image_size": list(original),
                "working_size": [pixels.shape[1], pixels.shape[0]], "cell": self.cell,
                "quantizer": self.model.config.quantizer, "channels": self.channels}
        if self.vocab_size is not None:
            meta["vocab_size"] = self.vocab_size
            values = values.astype(np.int64)
        return Tokens.from_grid(values.astype(np.float32) if self.kind == "soft" else values, grid, meta=meta)

    def _decode(self, tokens: Tokens) -> Image.Image:
        """Ids (or kl latents) on their grid -> the RGB image at the working size used at encode time."""
        import torch

        quantizer = self.model.config.quantizer
        if tokens.grid is None:
            raise ValueError(f"{self.name} decodes tokens laid out on a grid; {tokens!r} has none (build them with "
                             "Tokens.from_grid(ids, (rows, cols)))")
        if quantizer == "kl":
            if tokens.is_hard or tokens.dim != self.model.config.latent_dim:
                raise ValueError(f"{self.name} (kl) decodes soft tokens of dim {self.model.config.latent_dim}, got {tokens!r}")
            values = torch.from_numpy(tokens.values.astype(np.float32))[None]
        else:
            if not tokens.is_hard:
                raise ValueError(f"{self.name} decodes hard ids, got soft tokens {tokens!r}")
            vocab = self.vocab_size
            if tokens.vocab_size is not None and tokens.vocab_size != vocab:
                raise ValueError(f"cannot decode: these ids come from a vocabulary of {tokens.vocab_size}, "
                                 f"{self.name} has {vocab}")
            if len(tokens) and (tokens.values.min() < 0 or tokens.values.max() >= vocab):
                raise ValueError(f"cannot decode: token ids must lie in [0, {vocab}), got "
                                 f"{tokens.values.min()}..{tokens.values.max()}")
            values = torch.from_numpy(tokens.values)[None]
        pixels = to_numpy(self.model.decode(self._place.inputs(values), tokens.grid)[0].permute(1, 2, 0))
        return to_image(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.model_config, "file": os.fspath(self.file)}


def _bundled(name: str) -> Path:
    from vistok.weights import bundled

    return bundled(SHIPPED[name])


@register_tokenizer(
    "learned", kind="hard", decodable=True, config=LearnedConfig, learned=True,
    weights="a folder written by `vistok train` (path=FOLDER); also vistok.load(FOLDER)",
    description="your trained VQ/FSQ/LFQ/RVQ autoencoder: h x w ids that decode back (kl models: soft latents)",
)
def create_learned(**options: Any) -> LearnedTokenizer:
    return LearnedTokenizer(LearnedConfig(**options))


@register_tokenizer(
    "fsq-fmnist", kind="hard", decodable=True, config=FsqFmnistConfig, learned=True,
    weights="bundled (trained on Fashion-MNIST with `vistok train`, float16, docs/learned.md has the command)",
    description="FSQ 8,5,5,5 autoencoder (1000 codes), factor 4: 28x28 grey -> 7x7 ids",
)
def create_fsq_fmnist(**options: Any) -> LearnedTokenizer:
    return LearnedTokenizer(FsqFmnistConfig(**options), "fsq-fmnist", _bundled("fsq-fmnist"))


@register_tokenizer(
    "fsq-natural64", kind="hard", decodable=True, config=FsqNatural64Config, learned=True,
    weights="bundled (trained on 64x64 crops of the offline sample photos, float16, docs/learned.md has the command)",
    description="FSQ autoencoder, factor 4, trained on photo crops: 64x64 -> 16x16 ids, any size",
)
def create_fsq_natural64(**options: Any) -> LearnedTokenizer:
    return LearnedTokenizer(FsqNatural64Config(**options), "fsq-natural64", _bundled("fsq-natural64"))


register_path_handler("learned", option="path", accepts=is_learned_model,
                      holds="a folder written by `vistok train` (with model.safetensors)")
