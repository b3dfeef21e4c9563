"""PaliGemma 1/2 and Gemma 3: one fixed square view per image (Gemma 3 may add pan & scan crops).

PaliGemma (transformers ``models/paligemma/processing_paligemma.py`` with ``SiglipImageProcessor``): every
image is squashed to ``image_size x image_size`` (no crop, no aspect ratio kept) and becomes
``image_seq_length`` ``<image>`` tokens, one per SigLIP patch: (224/14)^2 = 256, (448/14)^2 = 1024,
(896/14)^2 = 4096. The processor writes all image tokens first, then ``<bos>`` and the prompt, then "\\n".

Gemma 3 (``models/gemma3/processing_gemma3.py`` with ``image_processing_gemma3.py``): each view is resized
to 896 x 896, the SigLIP encoder sees 64 x 64 patches which are average-pooled 4 x 4 into 256 soft tokens.
The processor replaces ``<start_of_image>`` in the text by
``"\\n\\n" <start_of_image> <image_soft_token> x 256 <end_of_image> "\\n\\n"``. With pan & scan on (off by
default), a wide or tall image also gets 2..``pan_and_scan_max_num_crops`` crops along its long side, each
one more such block, and the processor wraps them in a caption ("Here is the original image ... and here
are some crops to help you see better ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family

# Words of the caption Gemma3Processor writes around pan & scan crops: "Here is the original image" (5) and
# "and here are some crops to help you see better" (10). Counted as one Gemma token per word.
_PAN_AND_SCAN_CAPTION_WORDS = 15


@dataclass(frozen=True)
class PaliGemmaOptions:
    image_size: int = 224
    patch_size: int = 14
    image_seq_length: int = 256


@register_family("paligemma", options=PaliGemmaOptions, proof="processor",
                 source="transformers/models/paligemma/processing_paligemma.py + SiglipImageProcessor (square resize)")
def count_paligemma(width: int, height: int, opts: PaliGemmaOptions) -> Counted:
    """``image_tokens`` = ``total_positions`` = ``image_seq_length`` ``<image>`` tokens. Not counted: the one
    ``<bos>`` the processor puts after the last image of a prompt and the "\\n" it appends to the prompt
    (both once per prompt, not per image)."""
    side = opts.image_size // opts.patch_size
    tokens = opts.image_seq_length
    return Counted(tokens, tokens, {
        "resized": [opts.image_size, opts.image_size], "grid": [side, side], "patches": side * side,
        "cls_counted": False, "wrapper_tokens": 0,
    })


@dataclass(frozen=True)
class Gemma3Options:
    image_size: int = 896
    patch_size: int = 14
    image_seq_length: int = 256
    do_pan_and_scan: bool = False
    pan_and_scan_min_crop_size: int = 256
    pan_and_scan_max_num_crops: int = 4
    pan_and_scan_min_ratio_to_activate: float = 1.2


def pan_and_scan_grid(width: int, height: int, opts: Gemma3Options) -> tuple[int, int]:
    """(crops across, crops down) that Gemma 3's pan & scan cuts, or (0, 0) when it leaves the image whole.

    Same arithmetic as ``Gemma3ImageProcessor.pan_and_scan_batched``: the crop count along the long side is
    the aspect ratio rounded half up, at most ``long_side // min_crop_size``, clamped to
    [2, max_num_crops]; nothing is cut below ``min_ratio_to_activate`` or when a crop would be narrower than
    ``min_crop_size``.
    """
    if width >= height:
        if width / height < opts.pan_and_scan_min_ratio_to_activate:
            return 0, 0
        across = int(math.floor(width / height + 0.5))
        across = min(int(math.floor(width / opts.pan_and_scan_min_crop_size)), across)
        across = min(opts.pan_and_scan_max_num_crops, max(2, across))
        down = 1
    else:
        if height / width < opts.pan_and_scan_min_ratio_to_activate:
            return 0, 0
        down = int(math.floor(height / width + 0.5))
        down = min(int(math.floor(height / opts.pan_and_scan_min_crop_size)), down)
        down = min(opts.pan_and_scan_max_num_crops, max(2, down))
        across = 1
    crop_w = int(math.ceil(width / across))
    crop_h = int(math.ceil(height / down))
    if min(crop_w, crop_h) < opts.pan_and_scan_min_crop_size:
        return 0, 0
    return across, down


@register_family("gemma3", options=Gemma3Options, proof="processor",
                 source="transformers/models/gemma3/processing_gemma3.py + image_processing_gemma3.py "
                        "(896 px views, pan_and_scan_batched)")
def count_gemma3(width: int, height: int, opts: Gemma3Options) -> Counted:
    """``image_tokens``: the ``<image_soft_token>`` placeholders, ``image_seq_length`` per view (the image,
    plus each pan & scan crop). ``total_positions`` adds, per view, ``<start_of_image>``, ``<end_of_image>``
    and the two "\\n\\n" (one token each in Gemma's vocabulary, assuming the neighbouring prompt text does not
    itself end or start with a newline), and with crops the caption words (estimated as one token per word).
    """
    across, down = pan_and_scan_grid(width, height, opts) if opts.do_pan_and_scan else (0, 0)
    crops = across * down
    views = 1 + crops
    image_tokens = views * opts.image_seq_length
    caption = _PAN_AND_SCAN_CAPTION_WORDS if crops else 0
    side = opts.image_size // opts.patch_size
    pooled = math.isqrt(opts.image_seq_length)
    breakdown = {
        "resized": [opts.image_size, opts.image_size], "views": views, "crops": crops,
        "tile_grid": [across, down] if crops else None, "thumbnail": bool(crops),
        "patches": side * side, "grid": [pooled, pooled], "merge": side // pooled if pooled else None,
        "wrapper_tokens": 2 * views, "newline_tokens": 2 * views, "caption_tokens": caption,
        "caption_tokens_estimated": bool(crops),  # one token per caption word: not checked with Gemma's tokenizer
        "cls_counted": False,
    }
    return Counted(image_tokens, image_tokens + 4 * views + caption, breakdown)
