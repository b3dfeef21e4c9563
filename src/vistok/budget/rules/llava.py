"""LLaVA-1.5: one fixed-size crop, one token per ViT patch.

Rule (transformers ``models/llava/processing_llava.py`` with ``CLIPImageProcessor``): the short side is
resized to ``crop_size`` and the centre ``crop_size x crop_size`` square is kept, so every image gives
``(crop_size / patch_size)^2`` patch features; with ``vision_feature_select_strategy="default"`` the CLS
feature is dropped, with ``"full"`` it is kept (``num_additional_image_tokens``). LLaVA-1.5 at 336 px with
14 px patches: 24 x 24 = 576 tokens (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023).
"""

from __future__ import annotations

from dataclasses import dataclass

from vistok.budget.core import Counted, register_family


@dataclass(frozen=True)
class LlavaOptions:
    crop_size: int = 336
    patch_size: int = 14
    vision_feature_select_strategy: str = "default"
    num_additional_image_tokens: int = 1


@register_family("llava", options=LlavaOptions, proof="processor",
                 source="transformers/models/llava/processing_llava.py + CLIPImageProcessor (resize, centre crop)")
def count_llava(width: int, height: int, opts: LlavaOptions) -> Counted:
    side = opts.crop_size // opts.patch_size
    patches = side * side
    cls = opts.vision_feature_select_strategy == "full"
    tokens = patches + (opts.num_additional_image_tokens if cls else 0)
    return Counted(tokens, tokens, {
        "resized": [opts.crop_size, opts.crop_size], "crop": "centre", "grid": [side, side],
        "patches": patches, "cls_counted": cls,
    })
