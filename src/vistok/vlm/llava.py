"""LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", CVPR 2024) in transformers.

Tokens are reduced in the vision tower's feature space, before the projector, as VisionZip and PruMerge do in
their LLaVA code: the features the model selects (``vision_feature_layer``, CLS dropped under the "default"
strategy) are captured at the projector's input, reduced per image, then projected. Signals come from the
attention of the tower layer whose output is selected (layer 22 of 24 for LLaVA-1.5's ``-2``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from vistok.vlm._base import Family, View, capture_attention, register_family, signals_from

__all__ = ["Llava", "tower_attention", "projector_input"]


def tower_attention(tower: torch.nn.Module, feature_layer: int | list[int]) -> torch.nn.Module:
    """The attention module of the tower layer whose output is ``hidden_states[feature_layer]`` (the last one of
    a list) in an HF CLIP, SigLIP or DINOv2 vision model (any whose layers hold a ``q_proj``/``k_proj`` attention
    as ``self_attn`` or ``attention``)."""
    inner = getattr(tower, "vision_model", tower)
    encoder = getattr(inner, "encoder", None)
    layers = getattr(encoder, "layers", None) or getattr(encoder, "layer", None)
    attentions = [getattr(layer, "self_attn", None) or getattr(layer, "attention", None) for layer in layers or []]
    if not attentions or not all(hasattr(a, "q_proj") and hasattr(a, "k_proj") for a in attentions):
        raise ValueError(f"attention signals need a CLIP, SigLIP or DINOv2 vision tower, and this model has "
                         f"{type(tower).__name__}; use a method that needs no attention (pool, random, stride, "
                         "divprune, dpc-knn, tome) or fastv")
    layer = feature_layer[-1] if isinstance(feature_layer, (list, tuple)) else feature_layer
    index = layer % (len(attentions) + 1) - 1
    if index < 0:
        raise ValueError("the model takes features from the patch embeddings, where no attention exists; use a "
                         "method that needs no attention")
    return attentions[index]


@contextlib.contextmanager
def projector_input(projector: torch.nn.Module, store: dict[str, torch.Tensor]):
    """Record the input of ``projector`` (the selected vision features) during the next forward."""

    def hook(module: torch.nn.Module, args: tuple) -> None:
        store["features"] = args[0]

    handle = projector.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def square_grid(n: int) -> tuple[int, int] | None:
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


@register_family
class Llava(Family):
    name = "llava"
    label = "LLaVA"
    classes = ("LlavaForConditionalGeneration",)

    def encode(self, model: Any, kwargs: dict[str, Any], signals: set[str]) -> list[View]:
        inner = model.model
        config = model.config
        layer = kwargs.get("vision_feature_layer") or config.vision_feature_layer
        strategy = kwargs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        store: dict[str, torch.Tensor] = {}
        capture = (capture_attention(tower_attention(inner.vision_tower, layer), store, signals) if signals
                   else contextlib.nullcontext())
        extra = {"image_sizes": kwargs["image_sizes"]} if kwargs.get("image_sizes") is not None else {}
        with capture, projector_input(inner.multi_modal_projector, store):
            inner.get_image_features(pixel_values=kwargs["pixel_values"], vision_feature_layer=layer,
                                     vision_feature_select_strategy=strategy, **extra)
        features = store["features"]
        batch, n = features.shape[:2]
        length = store["attention"].shape[-1] if "attention" in store else n + (strategy == "default")
        tokens = slice(length - n, length)
        return [View(features[row], square_grid(n), row, **signals_from(store, row, tokens, 0))
                for row in range(batch)]

    def to_lm(self, model: Any, views: list[View],
              reduced: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        projector = model.model.multi_modal_projector
        features = [projector(tokens[None])[0] for tokens in reduced]
        return features, [(int(v.tokens.shape[0]), int(r.shape[0])) for v, r in zip(views, reduced)]
