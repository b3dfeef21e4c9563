"""LLaVA-NeXT (Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge", 2024) and LLaVA-OneVision
(Li et al., "LLaVA-OneVision: Easy Visual Task Transfer", 2024) in transformers.

Both tile an image ("anyres"): the processor resizes the whole image to the tower's size (the *base* view) and
cuts the image, resized to the best of ``image_grid_pinpoints``, into a rows x cols grid of crops of the same
size. The tower encodes every view; the model then lays the crops out as one large grid, removes the rows or
columns that are padding (``unpad``), OneVision bilinearly shrinks that grid when it holds more than
``anyres_max_N`` crops' worth of tokens, and one ``image_newline`` vector ends every row. The LM sees
``base tokens + grid rows each followed by a newline``.

Reduction happens per view in the tower's feature space, before the projector (as VisionZip and PruMerge do on
LLaVA): the base view and each crop are reduced to ``K`` tokens on their own, with signals from the tower layer
the model selects features from (CLS attention and keys for LLaVA-NeXT's CLIP tower; OneVision's SigLIP tower has
no CLS, so CLS-ranked methods need ``signal="attention_received"``). Once a crop is reduced its grid is gone, so
the model's unpad/downsample/newline packing cannot apply. The packed layout the LM receives for an image is
instead:

    base view's K tokens, then each crop's K tokens in the model's crop order (row by row), and no newline;
    an image with a single view (OneVision's images in a multi-image prompt) gets its K tokens and then one
    ``image_newline``, exactly as the model packs such an image.

This follows the official VisionZip code for LLaVA-NeXT (dvlab-research/VisionZip, ``visionzip/llava_arch.py``):
for a tiled image it puts the base view's tokens first and then the crops' tokens with no ``image_newline`` (its
``restore_image_features_sorted`` builds a newline column and does not use it), and keeps the newline after a
single-view image. It differs in one point: inside the crops, the official code orders the kept tokens of all
crops by their position on the whole crop canvas (row by row across crops), then the crops' CLS tokens, then the
contextual (merged) tokens; that needs each output token's position, which merging methods do not have, so
vistok keeps each crop's reduced tokens together, in crop order, in the order the reducer returns them.

The placeholder block of an image is the whole image: ``n_before`` is the processor's count (base + unpadded
grid + newlines) and ``n_after`` is ``K * views`` (``+ 1`` for a single-view image). With every view kept whole
(``keep`` at least the tokens of a view) nothing is reduced and the model runs unchanged, with its own layout.
Videos (OneVision's ``pixel_values_videos``) are passed through unreduced.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from vistok.vlm._base import View, capture_attention, register_family, signals_from
from vistok.vlm.llava import Llava, projector_input, square_grid, tower_attention

__all__ = ["LlavaNext", "LlavaOnevision", "AnyresView"]


@dataclass
class AnyresView(View):
    """A :class:`View` of a tiled image: ``index`` 0 is the base view, 1.. the crops in the model's order;
    ``views`` how many views the image has; the base view also holds ``lm_features``, the model's own packed LM
    features of the whole image (its length is the processor's placeholder count for the image)."""

    index: int = 0
    views: int = 1
    lm_features: torch.Tensor | None = None


def _config_value(kwargs: dict[str, Any], config: Any, name: str) -> Any:
    value = kwargs.get(name)
    return getattr(config, name) if value is None else value


def _has_cls(tower: torch.nn.Module) -> bool:
    """Whether the tower prepends a CLS token (CLIP does, SigLIP does not)."""
    inner = getattr(tower, "vision_model", tower)
    return hasattr(getattr(inner, "embeddings", None), "class_embedding")


@register_family
class LlavaNext(Llava):
    name = "llava-next"
    label = "LLaVA-NeXT"
    classes = ("LlavaNextForConditionalGeneration",)
    drop_keys = ("pixel_values", "image_sizes")

    def view_counts(self, model: Any, kwargs: dict[str, Any]) -> list[int]:
        """How many views (base + crops) the model encodes for each image, as its ``get_image_features``."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = model.config
        return [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
                for size in kwargs["image_sizes"]]

    def feature_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Extra arguments the model's forward passes to ``get_image_features``."""
        return {}

    def encode(self, model: Any, kwargs: dict[str, Any], signals: set[str]) -> list[View]:
        inner, config = model.model, model.config
        if kwargs.get("image_sizes") is None:
            raise ValueError(f"{self.label} needs image_sizes with pixel_values (each image's crop grid depends on "
                             "it); pass the processor's outputs unchanged")
        layer = _config_value(kwargs, config, "vision_feature_layer")
        strategy = _config_value(kwargs, config, "vision_feature_select_strategy")
        store: dict[str, torch.Tensor] = {}
        capture = (capture_attention(tower_attention(inner.vision_tower, layer), store, signals) if signals
                   else contextlib.nullcontext())
        with capture, projector_input(inner.multi_modal_projector, store):
            out = inner.get_image_features(pixel_values=kwargs["pixel_values"], image_sizes=kwargs["image_sizes"],
                                           vision_feature_layer=layer, vision_feature_select_strategy=strategy,
                                           return_dict=True, **self.feature_kwargs(kwargs))
        features = store["features"]  # (all views of all images, n, D)
        n = features.shape[1]
        length = store["attention"].shape[-1] if "attention" in store else n + (strategy == "default")
        tokens = slice(length - n, length)
        cls_index = 0 if _has_cls(inner.vision_tower) else None
        views: list[View] = []
        row = 0
        for image, (count, packed) in enumerate(zip(self.view_counts(model, kwargs), out.pooler_output)):
            for index in range(count):
                views.append(AnyresView(features[row], square_grid(n), image,
                                        **signals_from(store, row, tokens, cls_index), index=index, views=count,
                                        lm_features=packed if index == 0 else None))
                row += 1
        return views

    def to_lm(self, model: Any, views: list[View],
              reduced: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        projector = model.model.multi_modal_projector
        newline = model.model.image_newline
        features: list[torch.Tensor] = []
        blocks: list[tuple[int, int]] = []
        start = 0
        while start < len(views):
            base = views[start]
            assert isinstance(base, AnyresView) and base.index == 0 and base.lm_features is not None
            group = range(start, start + base.views)
            if all(reduced[i] is views[i].tokens for i in group):  # kept whole: the model's own layout
                packed = base.lm_features
            else:
                packed = projector(torch.cat([reduced[i] for i in group])[None])[0]
                if base.views == 1:
                    packed = torch.cat([packed, newline[None].to(packed)])
            features.append(packed)
            blocks.append((int(base.lm_features.shape[0]), int(packed.shape[0])))
            start += base.views
        return features, blocks

    def unreduced_blocks(self, views: list[View]) -> list[tuple[int, int]]:
        return [(int(v.lm_features.shape[0]),) * 2 for v in views
                if isinstance(v, AnyresView) and v.lm_features is not None]

    def tokens_grid(self, views: list[View]) -> tuple[int, int] | None:
        return None  # the packed layout (base, unpadded grid with newlines) tiles no single grid


@register_family
class LlavaOnevision(LlavaNext):
    name = "llava-onevision"
    label = "LLaVA-OneVision"
    classes = ("LlavaOnevisionForConditionalGeneration",)
    cls_token = False
    drop_keys = ("pixel_values", "image_sizes", "batch_num_images")

    def view_counts(self, model: Any, kwargs: dict[str, Any]) -> list[int]:
        counts = super().view_counts(model, kwargs)
        per_sample = kwargs.get("batch_num_images")
        if per_sample is None:
            return counts
        tiled = [int(n) == 1 for n in per_sample for _ in range(int(n))]  # images of multi-image prompts: base only
        return [count if tile else 1 for count, tile in zip(counts, tiled)]

    def feature_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"batch_num_images": kwargs.get("batch_num_images")}

    def finish(self, model: Any, old: dict[str, Any], new: dict[str, Any], keep_mask: torch.Tensor,
               features: list[torch.Tensor]) -> dict[str, Any]:
        """As the base, and videos in the same call are encoded here (unreduced): the model takes either pixels or
        precomputed features, not both."""
        videos = new.pop("pixel_values_videos", None)
        new.pop("image_sizes_videos", None)
        new = super().finish(model, old, new, keep_mask, features)
        if videos is not None:
            config = model.config
            new["mm_encoder_outputs"]["video"] = model.model.get_video_features(
                videos, vision_feature_layer=_config_value(old, config, "vision_feature_layer"),
                vision_feature_select_strategy=_config_value(old, config, "vision_feature_select_strategy"),
                return_dict=True)
        return new
