"""Phi-3-vision / Phi-3.5-vision: HD transform into 336-px crops plus a global image, 144 tokens per crop.

The processor ships as remote code on the hub, not in transformers. Rule from Microsoft's
``image_processing_phi3_v.py`` (microsoft/Phi-3.5-vision-instruct and microsoft/Phi-3-vision-128k-instruct on
the Hugging Face hub: ``calc_hd_transform_size``, ``calc_padded_size`` and
``Phi3VImageProcessor.calc_num_image_tokens_from_image_size``, which the file's ``preprocess`` agrees with):

1. Work in landscape: if width < height the two sides are swapped (and swapped back at the end).
   ``ratio = width / height``.
2. ``scale`` is the largest integer with ``scale * ceil(scale / ratio) <= num_crops``: the crop columns.
3. The image is resized to ``new_w = scale * 336`` and ``new_h = int(new_w / ratio)`` (truncated), then the
   height is padded (white, centred) up to ``ceil(new_h / 336) * 336``.
4. That padded image is cut into ``rows x cols`` crops of 336 px, plus one global 336 x 336 image.

Each 336-px CLIP crop gives 24 x 24 patches, pooled 2x2 to 12 x 12 = 144 features. The image embedding then
lays out, for ``rows x cols`` crops: ``rows * 12`` lines of ``cols * 12`` features each ended by a learned
newline (``sub_GN``), one separator (``glb_GN``), and the global image's 12 lines of 12 features + newline:

    num_img_tokens = (rows * cols + 1) * 144 + 1 + (rows + 1) * 12

The processor puts exactly ``num_img_tokens`` placeholder ids (``-image_index``) in ``input_ids`` and the
model fills all of them with image embeddings, the newline/separator ones included. So ``image_tokens`` and
``total_positions`` are both ``num_img_tokens``; the breakdown splits out the newline and separator
positions. An image whose padded height (in landscape) would be 0 px, i.e. ``int(new_w / ratio) == 0`` for
aspect ratios beyond ``num_crops * 336 : 1``, cannot be resized by the real processor; vistok raises
``ValueError`` for it (the file's size-only helper would report 157 tokens, a global image alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family

_CROP = 336
_PER_CROP = 144  # (336 / 14 / 2) ** 2
_LINE = 12  # features per crop side after 2x2 pooling


@dataclass(frozen=True)
class Phi3VOptions:
    num_crops: int = 4  # preprocessor_config.json: Phi-3.5-vision 4, Phi-3-vision-128k 16
    num_img_tokens: int = 144  # features per 336-px crop (preprocessor_config.json num_img_tokens)


@register_family(
    "phi3-v", options=Phi3VOptions, proof="documentation",
    source="microsoft/Phi-3.5-vision-instruct image_processing_phi3_v.py (calc_hd_transform_size, "
           "calc_padded_size, Phi3VImageProcessor.calc_num_image_tokens_from_image_size); remote code on the hub",
)
def count_phi3v(width: int, height: int, opts: Phi3VOptions) -> Counted:
    if opts.num_crops < 1:
        raise ValueError(f"num_crops must be at least 1, got {opts.num_crops}")
    transposed = width < height
    long_side, short_side = (height, width) if transposed else (width, height)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= opts.num_crops:
        scale += 1
    scale -= 1
    new_long = scale * _CROP
    new_short = int(new_long / ratio)
    if new_short == 0:
        raise ValueError(
            f"a {width}x{height} image cannot be processed by Phi-3-vision with num_crops={opts.num_crops}: its "
            f"short side would be resized to 0 px (the processor fails on it too)")
    padded_short = math.ceil(new_short / _CROP) * _CROP
    crops_long, crops_short = new_long // _CROP, padded_short // _CROP
    cols, rows = (crops_short, crops_long) if transposed else (crops_long, crops_short)
    resized = [new_short, new_long] if transposed else [new_long, new_short]
    padded = [padded_short, new_long] if transposed else [new_long, padded_short]

    per_crop = opts.num_img_tokens
    line = math.isqrt(per_crop)
    sub_features = rows * cols * per_crop
    sub_newlines = rows * line
    global_features, global_newlines, separator = per_crop, line, 1
    tokens = sub_features + sub_newlines + separator + global_features + global_newlines
    return Counted(tokens, tokens, {
        "resized": resized,
        "padded": padded,
        "tiles": rows * cols,
        "tile_grid": [cols, rows],
        "thumbnail": True,
        "features_per_tile": per_crop,
        "newline_tokens": sub_newlines + global_newlines,
        "separator_tokens": separator,
        "wrapper_tokens": 0,
    })
