"""Opening an aligned folder written by :func:`vistok.align.train` as a ``clip``/``siglip`` tokenizer.

``vistok.load("siglip", model=OUT)`` (or ``vistok.load(OUT)``, or ``"clip"`` for a softmax-loss folder) gives an
:class:`AlignedTokenizer`: patch tokens from the image tower, the projected image ``embedding`` extra, and
``embed_text`` / ``similarity`` / ``zero_shot`` from the text tower and its head, with the same meaning as for a
real CLIP or SigLIP checkpoint (:class:`~vistok.tokenizers.clip.tokenizer.ContrastiveTokenizer`)."""

from __future__ import annotations

import json
from dataclasses import fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from vistok._device import Placement, to_numpy
from vistok.align.heads import Heads
from vistok.align.towers import ImageTower, TextTower
from vistok.align.train import CONFIG, FORMAT, WEIGHTS
from vistok.tokenizers.clip.config import ClipConfig, Family
from vistok.tokenizers.clip.tokenizer import ContrastiveTokenizer
from vistok.tokens import Tokens

__all__ = ["AlignedTokenizer", "is_aligned_folder", "read_config"]

#: ClipConfig options an aligned folder takes; the rest (preprocessing, backend) are fixed by its towers.
_OPTIONS = {"model", "batch_size", "device", "dtype"}


def is_aligned_folder(path: str | Path) -> bool:
    return (Path(path).expanduser() / CONFIG).is_file()


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder / CONFIG}: not a readable JSON file ({err})") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{folder / CONFIG}: not a vistok alignment (format {FORMAT!r} expected)")
    return config


class _Model:
    """What :class:`ContrastiveTokenizer` asks of a backend: texts -> embeddings, the scale and the bias."""

    def __init__(self, folder: Path, config: dict[str, Any], place: Placement) -> None:
        from safetensors.torch import load_file

        from vistok.weights.checkpoints import check_weights_file

        file = folder / WEIGHTS
        check_weights_file(file)
        state = {k: v.float() for k, v in load_file(str(file)).items()}
        self.heads = Heads(int(config["image_dim"]), int(config["text_dim"]), int(config["embed_dim"]),
                           str(config["head"]), 0.0, 0.0 if "logit_bias" in state else None)
        try:
            self.heads.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{file}: the heads do not fit {CONFIG} ({str(err).splitlines()[0]})") from err
        self.heads = place.model(self.heads.eval())
        self.place = place
        self.text_tower = TextTower(str(config["text_tower"]["name"]), place)

    def _text_ready(self) -> None:
        self.text_tower.features(["a"])

    def texts(self, texts: list[str]) -> Any:
        import torch

        return self.heads.text_head(self.place.inputs(torch.from_numpy(self.text_tower.features(texts))))

    def logit_scale_bias(self) -> tuple[Any, Any]:
        return self.heads.logit_scale, self.heads.logit_bias


class AlignedTokenizer(ContrastiveTokenizer):
    """A ``clip``/``siglip`` tokenizer over frozen vistok towers and trained heads (see the module docstring)."""

    def __init__(self, config: ClipConfig, family: Family) -> None:
        defaults = type(config)()
        changed = sorted(f.name for f in fields(config)
                         if f.name not in _OPTIONS and getattr(config, f.name) != getattr(defaults, f.name))
        if changed:
            raise ValueError(f"{config.model}: an aligned folder fixes its preprocessing and towers; "
                             f"{', '.join(changed)} cannot be set (options: {', '.join(sorted(_OPTIONS))})")
        super().__init__(config, family)
        self.folder = Path(str(config.model)).expanduser()
        self.settings = read_config(self.folder)
        trained = self.settings.get("family")
        if trained != family.hf_model_type:
            raise ValueError(f"{self.folder}: trained with the {'sigmoid' if trained == 'siglip' else 'softmax'} "
                             f"loss, so it is a {trained!r} model; open it with vistok.load({trained!r}, model=...)")
        tower = self.settings["image_tower"]
        self.tower = ImageTower(tower["name"], tower.get("size"), {**tower.get("options", {}), "batch_size":
                                config.batch_size, "device": config.device, "dtype": config.dtype})

    @cached_property
    def spec(self) -> Any:  # pragma: no cover - the aligned tokenizer answers from its tower instead
        raise AttributeError("an aligned folder has no checkpoint spec")

    @property
    def preprocessing(self) -> Any:
        tok = self.tower.tokenizer
        return tok.preprocess_config if hasattr(tok, "preprocess_config") else tok.preprocessing_for(224, 224)

    def grid(self, width: int, height: int) -> tuple[int, int]:
        tok = self.tower.tokenizer
        if hasattr(tok, "grid_size"):
            return tuple(tok.grid_size(width, height))  # type: ignore[return-value]
        w, h = tok.working_size(width, height)
        return h // tok.patch, w // tok.patch

    def count(self, width: int, height: int) -> int:
        return int(self.tower.tokenizer.count(width, height))

    def check(self) -> None:
        """Load the tower, heads and text tower now (``encode`` does it lazily); raises a clear error otherwise."""
        self.tower.tokenizer.check()
        self._loaded()._text_ready()

    def _loaded(self) -> Any:
        if self._model is None:
            self._model = _Model(self.folder, self.settings, self._place)  # type: ignore[assignment]
        return self._model

    def _encode_many(self, items: list[Any]) -> list[Tokens]:
        import torch

        tokens = self.tower.tokenizer.encode(list(items))
        model = self._loaded()
        pooled = model.place.inputs(torch.from_numpy(np.stack([self.tower.pool(t) for t in tokens])))
        with torch.inference_mode():
            embedding = to_numpy(model.heads.image_head(pooled))
        out = []
        for t, emb in zip(tokens, embedding):
            meta = {**t.meta, "tokenizer": self.name, "config": self._config_dict(), "model": str(self.folder),
                    "image_tower": self.settings["image_tower"], "tokens": f"{self.tower.name} tokens (frozen tower)"}
            t.extras["embedding"] = emb
            t.meta = meta
            out.append(t)
        return out

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(image_tower=self.settings["image_tower"], text_tower=self.settings["text_tower"],
                    metrics=self.settings.get("metrics", {}))
        return info

    def __repr__(self) -> str:
        tower, loss = self.settings["image_tower"], self.settings.get("settings", {}).get("loss", "?")
        size = f" @ {tower['size']} px" if tower.get("size") else ""
        return (f"{type(self).__name__}({self.name}: {tower['name']}{size} + {self.settings['text_tower']['name']}, "
                f"{loss} loss, {self.settings['embed_dim']}-d)")
