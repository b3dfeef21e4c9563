"""MiniCPM-V 2.6: a downscaled source image plus up to 9 slices, 64 resampler queries each.

The processor ships as remote code on the hub. Rule from openbmb/MiniCPM-V-2_6 ``image_processing_minicpmv.py``
(``MiniCPMVImageProcessor.get_sliced_grid``, ``find_best_resize``, ``get_refine_size``,
``get_slice_image_placeholder``, ``get_grid_placeholder``) and ``processing_minicpmv.py``:

1. ``multiple = min(ceil(width * height / scale_resolution**2), max_slice_nums)``. If ``multiple <= 1`` (or
   ``slice_mode`` is off) the image is not sliced: only the source image, resized to about
   ``scale_resolution**2`` pixels (upscaled too) with sides rounded to multiples of ``patch_size``.
2. Otherwise the candidate slice counts are ``multiple - 1, multiple, multiple + 1`` (skipping 1 and counts
   above ``max_slice_nums``); every factorisation ``cols x rows`` of each is a candidate grid, in that order
   (count ascending, then cols ascending), and the first grid with the smallest
   ``|log(width / height) - log(cols / rows)|`` wins (strict ``<``, so ties keep the earlier grid).
3. The source image (downscaled only) and each slice go through the resampler, which always returns
   ``image_feature_size`` (64) query tokens, whatever the slice's pixel size.

The text for one image is ``[<image_id>i</image_id>] <image> <unk>*64 </image>`` followed, when sliced, by
``rows`` lines of ``cols`` ``<slice> <unk>*64 </slice>`` joined by ``"\\n"``.

``image_tokens`` counts the ``<unk>`` placeholders the model fills with features: ``64 * (1 + cols * rows)``.
``total_positions`` adds ``<image>``/``</image>`` (2), ``<slice>``/``</slice>`` (2 per slice), one newline
token between slice rows (``rows - 1``) and, with ``use_image_id`` (on for 2.6), the image id tag counted as
3 tokens: ``<image_id>``, one digit (the first ten images of a prompt, ids 0-9; Qwen2's tokenizer splits
numbers into single digits) and ``</image_id>``. The prompt's own newline after the image is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family


@dataclass(frozen=True)
class MiniCPMVOptions:
    scale_resolution: int = 448
    max_slice_nums: int = 9
    patch_size: int = 14
    image_feature_size: int = 64  # resampler query_num
    slice_mode: bool = True
    use_image_id: bool = True


def _ensure_divide(length: float, unit: int) -> int:
    return max(round(length / unit) * unit, unit)


def _best_resize(width: float, height: float, scale_resolution: int, patch_size: int,
                 allow_upscale: bool) -> tuple[int, int]:
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        r = width / height
        height = int(scale_resolution / math.sqrt(r))
        width = int(height * r)
    return _ensure_divide(width, patch_size), _ensure_divide(height, patch_size)


def sliced_grid(width: int, height: int, scale_resolution: int = 448, max_slice_nums: int = 9) -> list[int] | None:
    """``[cols, rows]`` of the slice grid MiniCPM-V picks for an image, or None when it is not sliced."""
    log_ratio = math.log(width / height)
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    best, best_error = [1, 1], math.inf
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > max_slice_nums:
            continue
        for cols in range(1, n + 1):
            if n % cols:
                continue
            error = abs(log_ratio - math.log(cols / (n // cols)))
            if error < best_error:
                best, best_error = [cols, n // cols], error
    return best


@register_family(
    "minicpm-v", options=MiniCPMVOptions, proof="documentation",
    source="openbmb/MiniCPM-V-2_6 image_processing_minicpmv.py (get_sliced_grid, find_best_resize, "
           "get_refine_size, get_slice_image_placeholder) + processing_minicpmv.py; remote code on the hub",
)
def count_minicpmv(width: int, height: int, opts: MiniCPMVOptions) -> Counted:
    sr, ps, q = opts.scale_resolution, opts.patch_size, opts.image_feature_size
    grid = sliced_grid(width, height, sr, opts.max_slice_nums) if opts.slice_mode else None
    breakdown: dict = {}
    if grid is None:
        cols = rows = 0
        if opts.slice_mode:
            breakdown["resized"] = list(_best_resize(width, height, sr, ps, allow_upscale=True))
        else:
            breakdown["resized"] = [width, height]  # slice_mode off: the image goes in as it is
    else:
        cols, rows = grid
        breakdown["resized"] = list(_best_resize(width, height, sr, ps, allow_upscale=False))
        refine_w = _ensure_divide(width, cols)
        refine_h = _ensure_divide(height, rows)
        slice_w, slice_h = _best_resize(refine_w / cols, refine_h / rows, sr, ps, allow_upscale=True)
        breakdown["slice_size"] = [slice_w, slice_h]
        breakdown["refined"] = [slice_w * cols, slice_h * rows]
    slices = cols * rows
    image_tokens = q * (1 + slices)
    id_tokens = 3 if opts.use_image_id else 0
    slice_wrappers = 2 * slices
    newlines = rows - 1 if rows else 0
    wrappers = 2 + slice_wrappers + id_tokens
    breakdown.update({
        "tiles": slices,
        "tile_grid": [cols, rows],
        "thumbnail": True,
        "tokens_per_tile": q,
        "newline_tokens": newlines,
        "wrapper_tokens": wrappers,
        "image_id_tokens": id_tokens,
    })
    return Counted(image_tokens, image_tokens + wrappers + newlines, breakdown)
