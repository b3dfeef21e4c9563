"""Idefics2, Idefics3 and SmolVLM: fixed-length image blocks wrapped in ``<fake_token_around_image>``.

Idefics2 (transformers ``models/idefics2/processing_idefics2.py`` with ``image_processing_idefics2.py``): a
perceiver resampler turns every image into ``image_seq_len`` (64) latents, whatever its size. The processor
writes ``<fake_token_around_image> <image> x 64 <fake_token_around_image>``; with ``do_image_splitting`` the
image is cut into 4 quarters plus the whole image, five such blocks whose adjacent fake tokens are merged
(6 fake tokens, 320 image tokens). The pixels are resized so the long side is at most ``longest_edge`` and
each side at least ``shortest_edge``.

Idefics3 / SmolVLM (``models/idefics3/*`` and ``models/smolvlm/*``, the same image arithmetic): the image is
resized so its long side is exactly ``longest_edge`` (up or down; an odd short side is bumped to even, and
no side may pass 4096), then grown to multiples of ``max_image_size`` and cut into rows x cols square
tiles of that size, plus one global view of the whole image. Each tile and the global view become
``image_seq_len`` ``<image>`` tokens (pixel shuffle of the SigLIP patches: 169 for Idefics3-8B at 364 px,
81 for SmolVLM 2.2B at 384 px, 64 for the 256M/500M models at 512 px). The text is, per tile,
``<fake_token_around_image> <row_r_col_c> <image> x N``, a "\\n" after each row, then
``"\\n" <fake_token_around_image> <global-img> <image> x N <fake_token_around_image>``; an image that fits
in one tile gets only the global block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, register_family

_MAX_SIDE = 4096  # MAX_IMAGE_SIZE in image_processing_idefics3.py / image_processing_smolvlm.py


@dataclass(frozen=True)
class Idefics2Options:
    image_seq_len: int = 64
    do_image_splitting: bool = False
    shortest_edge: int = 378
    longest_edge: int = 980


def idefics2_resized(width: int, height: int, opts: Idefics2Options) -> tuple[int, int]:
    """(width, height) after ``get_resize_output_image_size`` in image_processing_idefics2.py."""
    aspect = width / height
    if width >= height and width > opts.longest_edge:
        width = opts.longest_edge
        height = int(width / aspect)
    elif height > width and height > opts.longest_edge:
        height = opts.longest_edge
        width = int(height * aspect)
    return max(width, opts.shortest_edge), max(height, opts.shortest_edge)


@register_family("idefics2", options=Idefics2Options, proof="processor",
                 source="transformers/models/idefics2/processing_idefics2.py + image_processing_idefics2.py")
def count_idefics2(width: int, height: int, opts: Idefics2Options) -> Counted:
    """``image_tokens``: the ``<image>`` tokens (``image_seq_len`` per view; 5 views with splitting).
    ``total_positions`` adds the ``<fake_token_around_image>`` tokens (views + 1). With splitting, a side
    of 1 px is refused: the processor would cut it into empty quarters and fail."""
    if opts.do_image_splitting and min(width, height) < 2:
        raise ValueError(f"Idefics2 image splitting cuts the image in quarters, which needs both sides >= 2 px "
                         f"(got {width}x{height}; a 1 px side has empty quarters whatever the aspect ratio); "
                         "pass do_image_splitting=False")
    views = 5 if opts.do_image_splitting else 1
    image_tokens = views * opts.image_seq_len
    fakes = views + 1
    return Counted(image_tokens, image_tokens + fakes, {
        "resized": list(idefics2_resized(width, height, opts)), "views": views,
        "crops": 4 if opts.do_image_splitting else 0, "tile_grid": [2, 2] if opts.do_image_splitting else None,
        "thumbnail": opts.do_image_splitting, "perceiver_latents": opts.image_seq_len,
        "wrapper_tokens": fakes, "cls_counted": False,
    })


@dataclass(frozen=True)
class Idefics3Options:
    longest_edge: int = 4 * 364
    max_image_size: int = 364
    image_seq_len: int = 169
    do_image_splitting: bool = True
    do_resize: bool = True
    # Whether the tokenizer reads the "\n\n" between the last tile row and the global view as one token
    # (Llama 3's and SmolLM2's byte-level BPE both do).
    merged_double_newline: bool = True


@dataclass(frozen=True)
class SmolVLMOptions(Idefics3Options):
    longest_edge: int = 4 * 512
    max_image_size: int = 512
    image_seq_len: int = 64


def _to_longest_edge(width: int, height: int, longest: int) -> tuple[int, int]:
    # _resize_output_size_rescale_to_max_len: long side := longest, short side truncated, then made even.
    aspect = width / height
    if width >= height:
        width = longest
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest
        width = int(height * aspect)
        width += width % 2
    return max(width, 1), max(height, 1)


def _below_max_side(width: int, height: int) -> tuple[int, int]:
    # _resize_output_size_scale_below_upper_bound with MAX_IMAGE_SIZE.
    aspect = width / height
    if width >= height and width > _MAX_SIDE:
        width = _MAX_SIDE
        height = int(width / aspect)
    elif height > width and height > _MAX_SIDE:
        height = _MAX_SIDE
        width = int(height * aspect)
    return max(width, 1), max(height, 1)


def _to_tile_multiples(width: int, height: int, tile: int) -> tuple[int, int]:
    # resize_for_vision_encoder: the long side rounded up to a multiple of the tile, the short side
    # recomputed from the aspect ratio (truncated) and rounded up too.
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect)
        width = math.ceil(width / tile) * tile
    return width, height


def idefics3_layout(width: int, height: int, opts: Idefics3Options) -> tuple[int, int, tuple[int, int]]:
    """(rows, cols, resized (w, h)) of the Idefics3 / SmolVLM image processor; (0, 0, ...) = global view only."""
    if opts.do_resize:
        width, height = _below_max_side(*_to_longest_edge(width, height, opts.longest_edge))
    tile = opts.max_image_size
    if not opts.do_image_splitting:
        return 0, 0, (tile, tile)
    width, height = _to_tile_multiples(width, height, tile)
    if height > tile or width > tile:
        return math.ceil(height / tile), math.ceil(width / tile), (width, height)
    return 0, 0, (width, height)


def count_idefics3_like(width: int, height: int, opts: Idefics3Options) -> Counted:
    """``image_tokens``: the ``<image>`` tokens, ``image_seq_len`` per tile and for the global view.
    ``total_positions`` adds ``<fake_token_around_image>`` (one per tile, two around the global view), the
    ``<row_r_col_c>`` tokens (one per tile), ``<global-img>``, and the newlines (one per row plus one before
    the global view, the last pair read as one "\\n\\n" token when ``merged_double_newline``)."""
    rows, cols, resized = idefics3_layout(width, height, opts)
    tiles = rows * cols
    image_tokens = (tiles + 1) * opts.image_seq_len
    if rows == 0 and cols == 0:
        newlines = 0
    else:
        newlines = rows + 1 - (1 if opts.merged_double_newline and rows > 0 else 0)
    wrappers = tiles + 2 + 1  # fake per tile, fake + fake around the global view, <global-img>
    row_col = tiles
    return Counted(image_tokens, image_tokens + wrappers + row_col + newlines, {
        "resized": list(resized), "tiles": tiles, "tile_grid": [cols, rows], "thumbnail": True,
        "tile_size": opts.max_image_size, "tokens_per_view": opts.image_seq_len,
        "wrapper_tokens": wrappers + row_col, "row_col_tokens": row_col, "newline_tokens": newlines,
        "cls_counted": False,
    })


register_family("idefics3", options=Idefics3Options, proof="processor",
                source="transformers/models/idefics3/processing_idefics3.py + image_processing_idefics3.py "
                       "(resize, resize_for_vision_encoder, split_images)")(count_idefics3_like)
register_family("smolvlm", options=SmolVLMOptions, proof="processor",
                source="transformers/models/smolvlm/processing_smolvlm.py + image_processing_smolvlm.py "
                       "(same arithmetic as Idefics3)")(count_idefics3_like)
