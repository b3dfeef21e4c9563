"""Llama 3.2 Vision: one ``<|image|>`` token in the text, the image itself reaches the LM by cross-attention.

Rule (transformers ``models/mllama/image_processing_mllama.py``, ``get_optimal_tiled_canvas`` and
``get_image_size_fit_to_canvas``, with ``processing_mllama.py``): the processor picks a canvas of
``rows x cols`` tiles of ``image_size`` px with ``rows * cols <= max_image_tiles``. For each canvas the scale
is the smaller of canvas_h / H and canvas_w / W; the smallest scale >= 1 wins (the least upscaling), or, if
every canvas would shrink the image, the largest scale < 1; ties go to the smallest canvas area, then to
the first arrangement in the order (1,1), (1,2), ... of ``get_all_supported_aspect_ratios``. The image is
resized to fit that canvas keeping its aspect ratio (no side below one tile unless the canvas is smaller),
padded, and cut into the tiles. Each used tile gives (image_size / patch_size)^2 + 1 (CLS) vision states:
(560/14)^2 + 1 = 1601; the batch is padded to ``max_image_tiles`` tiles, so the vision encoder runs on
``max_image_tiles * 1601`` states, of which the cross-attention mask lets the text see the used ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family


@dataclass(frozen=True)
class MllamaOptions:
    image_size: int = 560
    patch_size: int = 14
    max_image_tiles: int = 4


def tile_arrangements(max_image_tiles: int) -> list[tuple[int, int]]:
    """(rows, cols) tile arrangements in the order the image processor lists them (aspect_ratio_id - 1)."""
    return [(rows, cols) for rows in range(1, max_image_tiles + 1) for cols in range(1, max_image_tiles + 1)
            if rows * cols <= max_image_tiles]


def optimal_canvas(width: int, height: int, max_image_tiles: int, tile: int) -> tuple[int, int, int]:
    """(rows, cols, aspect_ratio_id) of the canvas the Mllama image processor picks for a W x H image."""
    candidates = []
    for index, (rows, cols) in enumerate(tile_arrangements(max_image_tiles)):
        scale_h = rows * tile / height
        scale_w = cols * tile / width
        candidates.append((scale_h if scale_w > scale_h else scale_w, rows * cols, index, rows, cols))
    upscales = [c[0] for c in candidates if c[0] >= 1]
    chosen = min(upscales) if upscales else max(c[0] for c in candidates)
    # Among the canvases with exactly that scale: the smallest area, then the first listed.
    _, _, index, rows, cols = min((c for c in candidates if c[0] == chosen), key=lambda c: (c[1], c[2]))
    return rows, cols, index + 1


def fit_to_canvas(width: int, height: int, canvas_w: int, canvas_h: int, tile: int) -> tuple[int, int]:
    """(width, height) the image is resized to inside its canvas (``get_image_size_fit_to_canvas``)."""
    target_w = min(max(width, tile), canvas_w)
    target_h = min(max(height, tile), canvas_h)
    scale_h = target_h / height
    scale_w = target_w / width
    if scale_w < scale_h:
        return target_w, min(math.floor(height * scale_w) or 1, target_h)
    return min(math.floor(width * scale_h) or 1, target_w), target_h


@register_family("mllama", options=MllamaOptions, proof="processor",
                 source="transformers/models/mllama/image_processing_mllama.py (get_optimal_tiled_canvas, "
                        "get_image_size_fit_to_canvas) + processing_mllama.py")
def count_mllama(width: int, height: int, opts: MllamaOptions) -> Counted:
    """``image_tokens`` = ``total_positions`` = 1: the single ``<|image|>`` token in input_ids (the processor
    moves leading image tokens before ``<bos>``; that ``<bos>`` is not counted). The vision side is in the
    breakdown: ``tiles`` used, ``tile_grid`` [cols, rows], ``cross_attention_states`` = tiles * 1601 (what the
    text attends to) and ``cross_attention_states_padded`` = max_image_tiles * 1601 (what the encoder runs)."""
    tile = opts.image_size
    rows, cols, aspect_ratio_id = optimal_canvas(width, height, opts.max_image_tiles, tile)
    resized = fit_to_canvas(width, height, cols * tile, rows * tile, tile)
    side = opts.image_size // opts.patch_size
    per_tile = side * side + 1
    tiles = rows * cols
    return Counted(1, 1, {
        "resized": list(resized), "padded": [cols * tile, rows * tile], "tiles": tiles,
        "tile_grid": [cols, rows], "aspect_ratio_id": aspect_ratio_id, "grid": [side, side],
        "patches": side * side, "cls_counted": True, "states_per_tile": per_tile,
        "cross_attention_states": tiles * per_tile,
        "cross_attention_states_padded": opts.max_image_tiles * per_tile,
    })
