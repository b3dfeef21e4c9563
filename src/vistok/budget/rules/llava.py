"""The LLaVA family: LLaVA-1.5 (one fixed crop), LLaVA-NeXT / v1.6 and LLaVA-OneVision (both "anyres").

LLaVA-1.5 (transformers ``models/llava/processing_llava.py`` with ``CLIPImageProcessor``): the short side
is resized to ``crop_size`` and the centre ``crop_size x crop_size`` square is kept, so every image gives
``(crop_size // patch_size)^2`` patch features, plus ``num_additional_image_tokens`` (the CLS feature),
minus one when ``vision_feature_select_strategy == "default"`` (the model drops the first feature). At
336 px with 14 px patches and the checkpoints' ``num_additional_image_tokens=1``: 24 x 24 = 576 tokens
(Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023).

LLaVA-NeXT (transformers ``models/llava_next/processing_llava_next.py``, ``image_processing_llava_next.py``,
``image_processing_utils.select_best_resolution``; unpadding as in ``modeling_llava_next.unpad_image``):

1. The best resolution is picked from ``image_grid_pinpoints`` (pairs of (height, width), as in the
   checkpoint config): the candidate that keeps the most of the image's pixels once the image is scaled to
   fit inside it (the scaled size truncated with ``int()``, capped at the original pixel count), ties
   broken by the least wasted canvas, the first such candidate winning.
2. The image is fitted into that canvas and padded; the canvas is cut into ``crop_size`` tiles
   (``tile_grid``), and a base copy of the whole image is resized to ``crop_size``.
3. Each tile is a ``side x side`` feature map (``side = crop_size // patch_size``); the tiles' maps are
   stitched to ``(side * cols) x (side * rows)`` features and the rows or columns that cover the padding
   are removed ("unpadding", rounding the image's scaled extent with ``int(round(x, 7))``).
4. One ``image_newline`` feature ends every row of the unpadded map.
5. The base image adds ``side^2 + num_additional_image_tokens`` features, minus one with the "default"
   strategy (the CLS feature is dropped: 576 for the 336 px checkpoints).

LLaVA-OneVision (transformers ``models/llava_onevision/processing_llava_onevision.py``,
``image_processing_llava_onevision.py``, ``modeling_llava_onevision.pack_image_features``): the same anyres
scheme with 384 px tiles, 36 pinpoints (384 i, 384 j for i, j in 1..6), ``num_image_tokens = 729`` (27 x 27
SigLIP features, no CLS) per tile, and strategy "full". ``vision_aspect_ratio = "anyres_max_N"``: when the
unpadded map holds more than 1.1^2 N tiles' worth of features (``ratio = sqrt(h w / (N side^2)) > 1.1``),
it is resized (bilinear) to ``int(h // ratio) x int(w // ratio)`` features before the newlines are added.
A single image gets no newline after its base features; when a prompt holds several images
(``multi_image=True``; the processor's ``batch_num_images > 1``) each image is padded to a square, encoded
as the base view only and followed by one newline: 729 + 1 tokens.

For every LLaVA model the processor writes one ``<image>`` placeholder per position, newline positions
included, and no other wrapper tokens, so ``image_tokens == total_positions``. ``breakdown['newline_tokens']``
says how many of those positions hold the newline embedding rather than vision features.

Breakdown keys of the anyres families, all (width, height): ``best_resolution`` (the chosen pinpoint),
``resized`` (the image inside it before padding), ``tile_grid`` / ``tiles`` (high-resolution crops, the
base view not included), ``thumbnail`` (always True: the base view of the whole image), ``base_tokens``,
``grid`` (features per tile), ``unpadded_grid`` (stitched feature map after unpadding), ``feature_grid`` /
``feature_tokens`` (after OneVision's anyres_max downscale; equal to the unpadded grid otherwise),
``downscaled`` (OneVision), ``newline_tokens``, ``wrapper_tokens`` (0), ``cls_counted``.

Oddity kept from the processors: an extremely wide strip (e.g. 3000x1) unpads to zero feature rows and
gets only the base view (576 tokens in LLaVA-NeXT), while an extremely tall one (1x3000) unpads to zero
columns but keeps its 24 newline tokens (600).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family

__all__ = [
    "LlavaOptions", "LlavaNextOptions", "LlavaOnevisionOptions", "select_best_resolution",
    "count_llava", "count_llava_next", "count_llava_onevision",
]

_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
_ONEVISION_PINPOINTS = tuple((384 * i, 384 * j) for i in range(1, 7) for j in range(1, 7))


def _selected_base(patch_features: int, additional: int, strategy: str) -> int:
    """Base-view tokens as the LLaVA processors count them: patch features + extra (CLS) features, one
    fewer with the "default" strategy."""
    return patch_features + additional - (1 if strategy == "default" else 0)


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
    tokens = _selected_base(patches, opts.num_additional_image_tokens, opts.vision_feature_select_strategy)
    return Counted(tokens, tokens, {
        "resized": [opts.crop_size, opts.crop_size], "crop": "centre", "grid": [side, side],
        "patches": patches, "cls_counted": _cls_counted(opts),
    })


def _cls_counted(opts) -> bool:
    return opts.vision_feature_select_strategy != "default" and opts.num_additional_image_tokens > 0


def select_best_resolution(width: int, height: int, pinpoints) -> tuple[int, int]:
    """The anyres canvas for an image, as ``(height, width)`` from ``pinpoints`` (pairs of (height, width)).

    Same arithmetic as ``transformers.image_processing_utils.select_best_resolution``: the scale that fits
    the image in the candidate (a float), the scaled size truncated, its area capped at the image's own.
    """
    area = width * height
    best = None
    best_effective = best_wasted = 0
    for pair in pinpoints:
        cand_h, cand_w = pair
        scale_w, scale_h = cand_w / width, cand_h / height
        scale = scale_w if scale_w < scale_h else scale_h
        effective = int(width * scale) * int(height * scale)
        if effective > area:
            effective = area
        if effective > best_effective:
            best, best_effective, best_wasted = pair, effective, cand_w * cand_h - effective
        elif effective == best_effective and (best is None or cand_w * cand_h - effective < best_wasted):
            best, best_wasted = pair, cand_w * cand_h - effective
    if best is None:
        raise ValueError("image_grid_pinpoints must hold at least one (height, width) pair")
    return int(best[0]), int(best[1])


def _fitted_size(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[int, int]:
    """Size of the image inside its canvas before padding (``get_patch_output_size``), as (w, h)."""
    scale_w = canvas_w / width
    scale_h = canvas_h / height
    if scale_w < scale_h:
        return canvas_w, min(math.ceil(height * scale_w), canvas_h)
    return min(math.ceil(width * scale_h), canvas_w), canvas_h


def _anyres(width: int, height: int, pinpoints, tile: int, side: int) -> dict:
    """Canvas, tile grid and the unpadded feature grid (cols, rows) of the anyres scheme."""
    best_h, best_w = select_best_resolution(width, height, pinpoints)
    rows, cols = best_h // tile, best_w // tile
    feat_h, feat_w = side * rows, side * cols
    if width / height > feat_w / feat_h:
        kept = int(round(height * (feat_w / width), 7))
        feat_h -= (feat_h - kept) // 2 * 2
    else:
        kept = int(round(width * (feat_h / height), 7))
        feat_w -= (feat_w - kept) // 2 * 2
    return {"best": (best_w, best_h), "cols": cols, "rows": rows, "feat_w": feat_w, "feat_h": feat_h}


@dataclass(frozen=True)
class LlavaNextOptions:
    """``image_grid_pinpoints`` are (height, width) pairs, as in the checkpoint config."""

    image_grid_pinpoints: tuple = _NEXT_PINPOINTS
    crop_size: int = 336
    patch_size: int = 14
    vision_feature_select_strategy: str = "default"
    num_additional_image_tokens: int = 1


@register_family("llava-next", options=LlavaNextOptions, proof="processor",
                 source="transformers/models/llava_next/processing_llava_next.py (_get_number_of_features) + "
                        "image_processing_llava_next.py + image_processing_utils.select_best_resolution")
def count_llava_next(width: int, height: int, opts: LlavaNextOptions) -> Counted:
    side = opts.crop_size // opts.patch_size
    a = _anyres(width, height, opts.image_grid_pinpoints, opts.crop_size, side)
    base = _selected_base(side * side, opts.num_additional_image_tokens, opts.vision_feature_select_strategy)
    feat_w, feat_h = a["feat_w"], a["feat_h"]
    newlines = feat_h
    tokens = base + feat_w * feat_h + newlines
    best_w, best_h = a["best"]
    return Counted(tokens, tokens, {
        "best_resolution": [best_w, best_h], "resized": list(_fitted_size(width, height, best_w, best_h)),
        "tile_grid": [a["cols"], a["rows"]], "tiles": a["cols"] * a["rows"], "thumbnail": True,
        "base_tokens": base, "grid": [side, side], "unpadded_grid": [feat_w, feat_h],
        "feature_grid": [feat_w, feat_h], "feature_tokens": feat_w * feat_h, "newline_tokens": newlines,
        "wrapper_tokens": 0,
        "cls_counted": _cls_counted(opts),
    })


@dataclass(frozen=True)
class LlavaOnevisionOptions:
    """``size`` is the tile (and base view) side of the image processor; ``image_grid_pinpoints`` are
    (height, width) pairs; ``multi_image``: the image is one of several in the same prompt."""

    image_grid_pinpoints: tuple = _ONEVISION_PINPOINTS
    size: int = 384
    num_image_tokens: int = 729
    vision_feature_select_strategy: str = "full"
    vision_aspect_ratio: str = "anyres_max_9"
    multi_image: bool = False


def _max_tiles(vision_aspect_ratio: str) -> int:
    digits = vision_aspect_ratio.strip("anyres_max_")  # the processor's own parsing of "anyres_max_N"  # noqa: B005
    if not digits.isdigit():
        raise ValueError(f"vision_aspect_ratio must look like 'anyres_max_9', got {vision_aspect_ratio!r}")
    return int(digits)


@register_family("llava-onevision", options=LlavaOnevisionOptions, proof="processor",
                 source="transformers/models/llava_onevision/processing_llava_onevision.py (_get_number_of_features)"
                        " + image_processing_llava_onevision.py + modeling_llava_onevision.pack_image_features")
def count_llava_onevision(width: int, height: int, opts: LlavaOnevisionOptions) -> Counted:
    side = math.isqrt(opts.num_image_tokens)
    drop = 1 if opts.vision_feature_select_strategy == "default" else 0
    if opts.multi_image:
        tokens = opts.num_image_tokens + 1 - drop
        return Counted(tokens, tokens, {
            "resized": [opts.size, opts.size], "padded_to_square": True, "tiles": 0, "tile_grid": [0, 0],
            "thumbnail": True, "base_tokens": opts.num_image_tokens - drop, "grid": [side, side],
            "newline_tokens": 1, "wrapper_tokens": 0, "cls_counted": False,
        })
    max_tiles = _max_tiles(opts.vision_aspect_ratio)
    a = _anyres(width, height, opts.image_grid_pinpoints, opts.size, side)
    feat_w, feat_h = a["feat_w"], a["feat_h"]
    out_w, out_h = feat_w, feat_h
    ratio = math.sqrt(feat_h * feat_w / (max_tiles * side ** 2))
    downscaled = ratio > 1.1
    if downscaled:
        out_h, out_w = int(feat_h // ratio), int(feat_w // ratio)
    base = opts.num_image_tokens - drop
    newlines = out_h
    tokens = base + out_w * out_h + newlines
    best_w, best_h = a["best"]
    return Counted(tokens, tokens, {
        "best_resolution": [best_w, best_h], "resized": list(_fitted_size(width, height, best_w, best_h)),
        "tile_grid": [a["cols"], a["rows"]], "tiles": a["cols"] * a["rows"], "thumbnail": True,
        "base_tokens": base, "grid": [side, side], "unpadded_grid": [feat_w, feat_h],
        "downscaled": downscaled, "feature_grid": [out_w, out_h], "feature_tokens": out_w * out_h,
        "newline_tokens": newlines, "wrapper_tokens": 0, "cls_counted": False,
    })
