"""Pixtral-12B and Mistral-Small-3.1 (Mistral3): one token per (merged) patch, a break token per row.

Rule (transformers ``models/pixtral/image_processing_pixtral.py`` ``get_resize_output_image_size`` and
``models/pixtral/processing_pixtral.py`` ``PixtralProcessor.replace_image_token``; Mistral3 checkpoints use the
same two classes with ``spatial_merge_size=2``):

1. If either side exceeds ``longest_edge``, both sides are divided by
   ``ratio = max(height / longest_edge, width / longest_edge)`` and truncated (``math.floor``; the float
   division is reproduced as is, since ``x / (x / 1024)`` is not always exactly 1024).
2. Each side is then rounded *up* to a multiple of the token stride ``patch_size * spatial_merge_size``
   (16 px for Pixtral-12B, 14 * 2 = 28 px for Mistral-Small-3.1, whose vision tower merges 2x2 patches).
3. The text gets ``cols = width / stride`` ``[IMG]`` tokens per row, each row followed by ``[IMG_BREAK]``,
   and the very last ``[IMG_BREAK]`` replaced by ``[IMG_END]``.

``image_tokens`` counts the ``[IMG]`` placeholders only (``rows * cols``, the positions filled by image
features). ``total_positions`` adds the ``rows - 1`` ``[IMG_BREAK]`` tokens and the one ``[IMG_END]``:
``rows * (cols + 1)``, which is also what ``PixtralProcessor._get_num_multimodal_tokens`` reports.

An image whose short side truncates to 0 px in step 1 (e.g. 1 x 1025 for Pixtral-12B, any 1-px-wide
image longer than ``longest_edge``) cannot be processed: the real processor raises while resizing to a zero
side. vistok raises ``ValueError`` for those sizes too rather than invent a count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, ceil_div, register_family


@dataclass(frozen=True)
class PixtralOptions:
    longest_edge: int = 1024  # PixtralImageProcessor size={"longest_edge": ...}
    patch_size: int = 16  # PixtralProcessor patch_size (vision tower patch)
    spatial_merge_size: int = 1  # PixtralProcessor spatial_merge_size (Mistral3: 2)


@register_family(
    "pixtral", options=PixtralOptions, proof="processor",
    source="transformers/models/pixtral/image_processing_pixtral.py (get_resize_output_image_size) + "
           "processing_pixtral.py (PixtralProcessor.replace_image_token); Mistral3 uses the same classes",
)
def count_pixtral(width: int, height: int, opts: PixtralOptions) -> Counted:
    limit = opts.longest_edge
    w, h = width, height
    ratio = max(h / limit, w / limit)
    if ratio > 1:
        h = math.floor(h / ratio)
        w = math.floor(w / ratio)
        if w == 0 or h == 0:
            raise ValueError(
                f"a {width}x{height} image cannot be processed by this model: scaled to fit "
                f"longest_edge={limit} its short side becomes 0 px (the processor fails on it too)")
    stride = opts.patch_size * opts.spatial_merge_size
    cols = ceil_div(w, stride)
    rows = ceil_div(h, stride)
    image_tokens = rows * cols
    merge = opts.spatial_merge_size
    return Counted(image_tokens, rows * (cols + 1), {
        "resized": [cols * stride, rows * stride],
        "grid": [cols, rows],
        "patches": image_tokens * merge * merge,
        "merge": merge,
        "break_tokens": rows - 1,
        "end_tokens": 1,
        "wrapper_tokens": rows,
    })
