"""InternVL2, InternVL2.5 and InternVL3: dynamic tiling into 448 px tiles, 256 tokens per tile.

Rule (transformers 5.23 ``models/got_ocr2/image_processing_got_ocr2.py``: ``get_all_supported_aspect_ratios``,
``get_optimal_tiled_canvas``, ``GotOcr2ImageProcessor.crop_image_to_patches``; token expansion in
``models/internvl/processing_internvl.py``, which is also the original models' ``dynamic_preprocess`` /
``find_closest_aspect_ratio`` from their remote code):

* Candidate grids are every ``cols x rows`` with ``min_patches <= cols * rows <= max_patches``, ordered by
  tile count; within one count, by ``cols`` then ``rows`` (the order the processor builds them in).
* The chosen grid is the one whose ``cols / rows`` is closest to the image's ``width / height``. On an exact
  tie with the best so far, a later candidate (more tiles) replaces it only if the image's area exceeds half
  the area the candidate's tiles would cover (``w * h > 0.5 * tile_size**2 * cols * rows``): small images
  are not blown up onto many tiles. If no grid qualifies the grid is 1 x 1.
* The image is resized to ``cols * tile_size x rows * tile_size`` and cut into those tiles; when there is
  more than one tile, a thumbnail (the whole image at ``tile_size``) is added.
* Every tile (thumbnail included) gives ``image_seq_length`` tokens (256: 32 x 32 ViT patches of 14 px,
  pixel-shuffled by 0.5 per side).

With ``crop_to_patches=False`` the image is just resized to one tile. Note that the InternVL processor turns
``crop_to_patches`` on by default, although the -hf checkpoints' preprocessor_config.json stores ``false``.

``max_patches`` is the "max tiles" knob (``max_dynamic_patch`` in the original configs): lowering it caps
the count at ``(max_patches + 1) * 256``. ``use_thumbnail`` is the original configs' switch (always on in
the transformers processor).

``image_tokens`` counts the ``<IMG_CONTEXT>`` placeholders; ``total_positions`` adds the ``<img>`` and
``</img>`` tokens the processor puts around them (``image_tokens + 2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vistok.budget.core import Counted, register_family


@dataclass(frozen=True)
class InternVLOptions:
    """InternVL checkpoints: tiles of 448 px, 1 to 12 of them, a thumbnail, 256 tokens per tile
    (GotOcr2ImageProcessor min_patches / max_patches, InternVLProcessor image_seq_length)."""

    min_patches: int = 1
    max_patches: int = 12
    crop_to_patches: bool = True
    tile_size: int = 448
    image_seq_length: int = 256
    use_thumbnail: bool = True


@lru_cache(maxsize=64)
def candidate_grids(min_patches: int, max_patches: int) -> tuple[tuple[int, int, float], ...]:
    """``(cols, rows, cols / rows)`` for each allowed grid, in the processor's order (tile count, then
    cols, then rows)."""
    grids = [(c, r) for c in range(1, max_patches + 1) for r in range(1, max_patches + 1)
             if min_patches <= c * r <= max_patches]
    grids.sort(key=lambda g: g[0] * g[1])  # stable: keeps cols-then-rows order within one count
    return tuple((c, r, c / r) for c, r in grids)


def choose_grid(width: int, height: int, opts: InternVLOptions) -> tuple[int, int]:
    """``(cols, rows)`` of tiles: closest aspect ratio, ties to more tiles while the image is big enough."""
    aspect = width / height
    area = width * height
    half_tile = 0.5 * opts.tile_size * opts.tile_size
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows, grid_aspect in candidate_grids(opts.min_patches, opts.max_patches):
        diff = abs(aspect - grid_aspect)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > half_tile * cols * rows:
            best = (cols, rows)
    return best


@register_family("internvl", options=InternVLOptions, proof="processor",
                 source="transformers/models/got_ocr2/image_processing_got_ocr2.py (get_optimal_tiled_canvas, "
                        "crop_image_to_patches) + models/internvl/processing_internvl.py")
def count_internvl(width: int, height: int, opts: InternVLOptions) -> Counted:
    """``image_tokens``: ``<IMG_CONTEXT>`` placeholders, ``image_seq_length`` per tile and thumbnail;
    ``total_positions``: plus ``<img>`` and ``</img>``."""
    if opts.tile_size < 1 or opts.image_seq_length < 1:
        raise ValueError(f"tile_size and image_seq_length must be positive, got {opts.tile_size} "
                         f"and {opts.image_seq_length}")
    if opts.crop_to_patches:
        cols, rows = choose_grid(width, height, opts)
    else:
        cols, rows = 1, 1
    tiles = cols * rows
    thumbnail = bool(opts.use_thumbnail) and tiles != 1
    num_patches = tiles + thumbnail
    tokens = num_patches * opts.image_seq_length
    return Counted(tokens, tokens + 2, {
        "resized": [cols * opts.tile_size, rows * opts.tile_size], "tiles": tiles, "tile_grid": [cols, rows],
        "thumbnail": thumbnail, "num_patches": num_patches, "tokens_per_tile": opts.image_seq_length,
        "wrapper_tokens": 2, "cls_counted": False,
    })
