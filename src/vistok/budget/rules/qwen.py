"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: native resolution, rounded to whole merged patches.

Rule (transformers 5.23 ``models/qwen2_vl/image_processing_qwen2_vl.py``: ``smart_resize`` and
``Qwen2VLImageProcessor``, which the auto mapping also gives Qwen2.5-VL and Qwen3-VL; token expansion in
``models/qwen2_vl/processing_qwen2_vl.py``, ``models/qwen2_5_vl/processing_qwen2_5_vl.py`` and
``models/qwen3_vl/processing_qwen3_vl.py``):

* ``factor = patch_size * merge_size`` (28 for Qwen2/2.5-VL, 32 for Qwen3-VL).
* Both sides are rounded to the nearest multiple of ``factor`` with Python's ``round`` (half to even, so a
  side of 42 px becomes 56 and one of 70 px becomes 56 too).
* If that area exceeds ``max_pixels``, the image is scaled by ``beta = sqrt(h * w / max_pixels)`` and each
  side *floored* to a multiple of ``factor`` (at least ``factor``); if it is below ``min_pixels``, scaled by
  ``beta = sqrt(min_pixels / (h * w))`` and each side *ceiled* to a multiple of ``factor``.
* An image whose long side is more than 200 times its short side is refused (``ValueError``).
* The resized image is cut into ``patch_size`` patches (``grid = resized // patch_size``) and every
  ``merge_size x merge_size`` block of patches becomes one token:
  ``image_tokens = grid_w * grid_h / merge_size**2``.

``image_tokens`` counts the ``<|image_pad|>`` placeholders; ``total_positions`` adds the
``<|vision_start|>`` and ``<|vision_end|>`` tokens that the models' chat templates put around every image
(``<|vision_start|><|image_pad|><|vision_end|>``, expanded by the processor), so it is
``image_tokens + 2``.

Options are the image processors' own keyword names. ``min_pixels`` / ``max_pixels`` are what the
preprocessor configs call ``size["shortest_edge"]`` / ``size["longest_edge"]`` (areas in pixels, despite
those names). Lowering ``max_pixels`` is the usual way to cap the tokens: at most about
``max_pixels / factor**2`` of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family

_SOURCE = ("transformers/models/qwen2_vl/image_processing_qwen2_vl.py (smart_resize, Qwen2VLImageProcessor) + "
           "models/{qwen2_vl,qwen2_5_vl,qwen3_vl}/processing_*.py (image_grid_thw.prod() // merge_size**2)")

_MAX_ASPECT = 200


@dataclass(frozen=True)
class Qwen2VLOptions:
    """Qwen2-VL / Qwen2.5-VL checkpoints' preprocessor_config.json: min_pixels 56*56, max_pixels
    3584*3584 (= 12845056), patch_size 14, merge_size 2."""

    min_pixels: int = 3136
    max_pixels: int = 12845056
    patch_size: int = 14
    merge_size: int = 2

    def __post_init__(self) -> None:
        _check_pixels(self)


@dataclass(frozen=True)
class Qwen3VLOptions:
    """Qwen3-VL checkpoints' preprocessor_config.json: size {shortest_edge: 65536, longest_edge: 16777216}
    (min / max pixels), patch_size 16, merge_size 2."""

    min_pixels: int = 65536
    max_pixels: int = 16777216
    patch_size: int = 16
    merge_size: int = 2

    def __post_init__(self) -> None:
        _check_pixels(self)


def _check_pixels(opts: Qwen2VLOptions | Qwen3VLOptions) -> None:
    """``max_pixels`` divides an area, so it must be positive; ``min_pixels`` must not be negative. (A
    ``min_pixels`` above ``max_pixels`` is allowed: the processor's ``smart_resize`` then applies the cap.)"""
    if opts.max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {opts.max_pixels}")
    if opts.min_pixels < 0:
        raise ValueError(f"min_pixels must be at least 0, got {opts.min_pixels}")


def qwen_resize(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` after Qwen's ``smart_resize``; same float operations in the same order, so the
    rounding (``round`` half to even, ``floor`` / ``ceil`` of the scaled sides) matches exactly."""
    long_side, short_side = max(width, height), min(width, height)
    ratio = long_side / short_side
    if ratio > _MAX_ASPECT:
        raise ValueError(f"Qwen-VL refuses images whose aspect ratio exceeds {_MAX_ASPECT}:1 "
                         f"({width}x{height} has {ratio:g}:1); pad or crop it first")
    new_h = round(height / factor) * factor
    new_w = round(width / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_w, new_h


def _count(width: int, height: int, opts: Qwen2VLOptions | Qwen3VLOptions) -> Counted:
    patch, merge = opts.patch_size, opts.merge_size
    if patch < 1 or merge < 1:
        raise ValueError(f"patch_size and merge_size must be positive, got {patch} and {merge}")
    new_w, new_h = qwen_resize(width, height, patch * merge, opts.min_pixels, opts.max_pixels)
    cols, rows = new_w // patch, new_h // patch
    patches = cols * rows
    tokens = patches // (merge * merge)
    return Counted(tokens, tokens + 2, {
        "resized": [new_w, new_h], "grid": [cols, rows], "patches": patches, "merge": merge,
        "merged_grid": [cols // merge, rows // merge], "wrapper_tokens": 2, "cls_counted": False,
    })


@register_family("qwen2-vl", options=Qwen2VLOptions, proof="processor", source=_SOURCE)
def count_qwen2_vl(width: int, height: int, opts: Qwen2VLOptions) -> Counted:
    """Qwen2-VL and Qwen2.5-VL (same image processor and defaults). ``image_tokens``: ``<|image_pad|>``
    placeholders; ``total_positions``: plus ``<|vision_start|>`` and ``<|vision_end|>``."""
    return _count(width, height, opts)


@register_family("qwen3-vl", options=Qwen3VLOptions, proof="processor", source=_SOURCE)
def count_qwen3_vl(width: int, height: int, opts: Qwen3VLOptions) -> Counted:
    """Qwen3-VL: the same rule with 16 px patches (factor 32) and larger pixel bounds. ``image_tokens``:
    ``<|image_pad|>`` placeholders; ``total_positions``: plus ``<|vision_start|>`` and ``<|vision_end|>``."""
    return _count(width, height, opts)
