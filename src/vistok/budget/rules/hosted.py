"""Hosted APIs (OpenAI, Anthropic, Google): the image token counts their documentation gives.

These are billing counts from public documentation, not processor code, so every family here has
``proof="documentation"`` and is tested on the documents' worked examples. For all of them
``image_tokens == total_positions``: the providers report one number per image, with no wrapper tokens.
Where a document leaves a rounding step open, the docstring says what vistok does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vistok.budget.core import Counted, ceil_div, register_family

_OPENAI_VISION = "https://platform.openai.com/docs/guides/images-vision#calculating-costs"
_ANTHROPIC_VISION = "https://platform.claude.com/docs/en/build-with-claude/vision"
_GEMINI_TOKENS = "https://ai.google.dev/gemini-api/docs/tokens"
_GEMINI_MEDIA_RESOLUTION = "https://ai.google.dev/gemini-api/docs/media-resolution"


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


# --- OpenAI: 512-px tiles (GPT-4o, GPT-4.1, GPT-4.5, GPT-4o-mini, o1, o3, GPT-5, computer-use-preview) ------

@dataclass(frozen=True)
class OpenAITileOptions:
    detail: str = "high"  # "low", "high" or "auto" (counted as "high", the most it can cost)
    base_tokens: int = 85
    tile_tokens: int = 170
    max_side: int = 2048
    short_side: int = 768
    tile_size: int = 512


@register_family("openai-tile", options=OpenAITileOptions, proof="documentation",
                 source=f"{_OPENAI_VISION} (tile-based models: base tokens + tile tokens per 512-px tile)")
def count_openai_tile(width: int, height: int, opts: OpenAITileOptions) -> Counted:
    """OpenAI's tile rule. ``detail="low"``: ``base_tokens`` whatever the size. ``"high"``: scale to fit in
    ``max_side x max_side`` (only down), then scale so the shortest side is ``short_side`` (only down; small
    images are not enlarged), count ``tile_size`` tiles covering the result,
    ``tokens = base_tokens + tile_tokens * tiles``. The document does not say how scaled sides are rounded;
    vistok rounds each resize to the nearest pixel (halves up), which reproduces billed counts at tile
    boundaries (2049 x 513 gives two tile rows, 2050 x 513 one). ``"auto"`` lets the API choose; it is
    counted as ``"high"``, an upper bound. Per-model base/tile tokens are in the model table (GPT-4o 85/170,
    GPT-4o-mini 2833/5667, o1/o3 75/150...)."""
    if opts.detail not in ("low", "high", "auto"):
        raise ValueError(f"detail must be 'low', 'high' or 'auto', got {opts.detail!r}")
    if opts.detail == "low":
        return Counted(opts.base_tokens, opts.base_tokens, {"detail": "low", "tiles": 0})
    rw, rh = width, height
    if max(rw, rh) > opts.max_side:
        s = opts.max_side / max(rw, rh)
        rw, rh = max(1, _round_half_up(rw * s)), max(1, _round_half_up(rh * s))
    if min(rw, rh) > opts.short_side:
        s = opts.short_side / min(rw, rh)
        rw, rh = max(1, _round_half_up(rw * s)), max(1, _round_half_up(rh * s))
    cols, rows = ceil_div(rw, opts.tile_size), ceil_div(rh, opts.tile_size)
    tokens = opts.base_tokens + opts.tile_tokens * cols * rows
    return Counted(tokens, tokens, {
        "detail": "high", "resized": [rw, rh], "tiles": cols * rows, "tile_grid": [cols, rows],
        "base_tokens": opts.base_tokens, "tile_tokens": opts.tile_tokens,
    })


# --- OpenAI: 32-px patches with a multiplier (GPT-4.1-mini/nano, o4-mini, GPT-5-mini/nano) -------------------

@dataclass(frozen=True)
class OpenAIPatchOptions:
    multiplier: float = 1.0
    patch_size: int = 32
    max_patches: int = 1536


@register_family("openai-patch", options=OpenAIPatchOptions, proof="documentation",
                 source=f"{_OPENAI_VISION} (patch-based models: 32-px patches, 1536 cap, per-model multiplier)")
def count_openai_patch(width: int, height: int, opts: OpenAIPatchOptions) -> Counted:
    """OpenAI's patch rule, as the document writes it:

    * ``raw = ceil(w / 32) * ceil(h / 32)``; if ``raw <= 1536`` those are the patches;
    * otherwise ``r = sqrt(32**2 * 1536 / (w * h))``, then
      ``r *= min(floor(w * r / 32) / (w * r / 32), floor(h * r / 32) / (h * r / 32))`` so one side fits a whole
      number of patches; the resized sides are truncated to pixels and
      ``patches = ceil(w' / 32) * ceil(h' / 32)``, capped at 1536;
    * ``image_tokens = patches * multiplier`` (gpt-4.1-mini 1.62, gpt-4.1-nano 2.46, o4-mini 1.72...), rounded
      to the nearest token, halves up (the document gives no rounding; nearest matches reported usage).

    For an image so thin that ``floor(side * r / 32)`` is 0 (e.g. 1 x 49153), the formula as written collapses
    that side to 0 px; vistok then keeps it at one patch, never enlarges, and scales the other side down to fit
    (1 x 49153 -> 1 x 1536 patches).
    """
    p, cap = opts.patch_size, opts.max_patches
    raw = ceil_div(width, p) * ceil_div(height, p)
    breakdown: dict = {"raw_patches": raw}
    if raw <= cap:
        rw, rh = width, height
        cols, rows = ceil_div(width, p), ceil_div(height, p)
    else:
        r = math.sqrt(p * p * cap / (width * height))
        fw, fh = width * r / p, height * r / p
        if fw < 1 or fh < 1:  # the formula would give a side of 0 px: keep it at one patch, never enlarge
            r = min(r, 1.0)
            fw, fh = width * r / p, height * r / p
            r *= min(max(1, math.floor(fw)) / fw, max(1, math.floor(fh)) / fh)
        else:
            r *= min(math.floor(fw) / fw, math.floor(fh) / fh)
        rw, rh = max(1, int(width * r)), max(1, int(height * r))
        cols, rows = ceil_div(rw, p), ceil_div(rh, p)
    patches = min(cols * rows, cap)
    quantum = round(opts.multiplier * 10000)  # multiplier in 1/10000ths: exact decimal product, no float drift
    tokens = (patches * quantum + 5000) // 10000
    breakdown.update({"resized": [rw, rh], "grid": [cols, rows], "patches": patches, "multiplier": opts.multiplier})
    return Counted(tokens, tokens, breakdown)


# --- Anthropic Claude: 28-px patches (current documentation) ------------------------------------------------

@dataclass(frozen=True)
class AnthropicOptions:
    max_long_edge: int = 1568  # 2576 on the high-resolution tier (Claude Opus 4.7 and later)
    max_visual_tokens: int = 1568  # 4784 on the high-resolution tier
    patch_size: int = 28


def _claude_fits(w: int, h: int, opts: AnthropicOptions) -> bool:
    p = opts.patch_size
    cw, ch = ceil_div(w, p), ceil_div(h, p)
    return cw * p <= opts.max_long_edge and ch * p <= opts.max_long_edge and cw * ch <= opts.max_visual_tokens


def _claude_resize(w: int, h: int, opts: AnthropicOptions) -> tuple[int, int]:
    if _claude_fits(w, h, opts):
        return w, h
    if h > w:
        rh, rw = _claude_resize(h, w, opts)
        return rw, rh
    aspect = h / w
    lo, hi, best = 1, min(w, opts.max_long_edge), 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if _claude_fits(mid, max(1, round(mid * aspect)), opts):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best, max(1, round(best * aspect))


@register_family("anthropic", options=AnthropicOptions, proof="documentation",
                 source=f"{_ANTHROPIC_VISION} and .../vision-coordinates (28-px patches, resize to the model's "
                        "native resolution)")
def count_anthropic(width: int, height: int, opts: AnthropicOptions) -> Counted:
    """Claude, per Anthropic's current vision documentation: an image costs
    ``ceil(width / 28) * ceil(height / 28)`` visual tokens (images are padded on the bottom and right to a
    multiple of 28 px). An image above the model's native resolution is first resized to the largest
    aspect-preserving size whose padded sides are within ``max_long_edge`` and whose patch count is within
    ``max_visual_tokens`` (1568 px / 1568 tokens; 2576 px / 4784 tokens on the high-resolution tier): the long
    side is the largest integer that fits, the short side ``round(long * aspect)``, found by binary search. (The
    page publishes a reference resize; vistok follows it as described in teamchong/pxpipe#27, which checks it
    on the page's worked table, e.g. 1928 x 1928 -> 1521 standard / 4761 high-res, 1568 x 728 -> 1456.) So
    1092 x 1092 (39 x 39 patches) is the largest square that is not resized, and every image larger than the
    limits costs at most 1568 tokens on the standard tier.

    The earlier edition of the page gave ``tokens ~= width * height / 750`` (e.g. ~1590 for 1092 x 1092, where
    the patch count is 1521), an approximation of the same grid (28 * 28 = 784 px per token); the sizes in its
    table of images that are not resized (1092 x 1092, 951 x 1268, 896 x 1344, 819 x 1456, 784 x 1568) all fit
    the patch rule's limits unresized."""
    rw, rh = _claude_resize(width, height, opts)
    p = opts.patch_size
    cols, rows = ceil_div(rw, p), ceil_div(rh, p)
    tokens = cols * rows
    return Counted(tokens, tokens, {"resized": [rw, rh], "padded": [cols * p, rows * p], "grid": [cols, rows],
                                    "patches": tokens})


# --- Google Gemini ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeminiOptions:
    small_side: int = 384
    tile_size: int = 768
    tokens_per_tile: int = 258


@register_family("gemini", options=GeminiOptions, proof="documentation",
                 source=f"{_GEMINI_TOKENS} (Gemini 2.x: 258 tokens per image up to 384 px, else per 768x768 tile)")
def count_gemini(width: int, height: int, opts: GeminiOptions) -> Counted:
    """Gemini 2.0/2.5 as the token-counting guide states it: an image with both sides at most 384 px counts as
    258 tokens; a larger image is "cropped and scaled as needed into tiles of 768x768 pixels, each counted as
    258 tokens". The guide gives no tile arithmetic beyond that; vistok counts the 768-px tiles that cover the
    image, ``ceil(width / 768) * ceil(height / 768)``. ``media_resolution`` (Gemini 2.5) is not modelled."""
    if width <= opts.small_side and height <= opts.small_side:
        return Counted(opts.tokens_per_tile, opts.tokens_per_tile, {"tiles": 1, "tile_grid": [1, 1], "small": True})
    cols, rows = ceil_div(width, opts.tile_size), ceil_div(height, opts.tile_size)
    tokens = cols * rows * opts.tokens_per_tile
    return Counted(tokens, tokens, {"tiles": cols * rows, "tile_grid": [cols, rows], "small": False})


_GEMINI3_LEVELS = {"low": 280, "medium": 560, "high": 1120, "ultra_high": 2240}


@dataclass(frozen=True)
class Gemini3Options:
    media_resolution: str = "high"  # low / medium / high / ultra_high; images default to high


@register_family("gemini-3", options=Gemini3Options, proof="documentation",
                 source=f"{_GEMINI_MEDIA_RESOLUTION} (Gemini 3: media_resolution sets the token budget per image)")
def count_gemini3(width: int, height: int, opts: Gemini3Options) -> Counted:
    """Gemini 3: the image's ``media_resolution`` sets the maximum tokens it is given, whatever its size:
    low 280, medium 560, high 1120 (the default for images), ultra_high 2240. The documentation states these as
    maxima, so the count is an upper bound (``breakdown['upper_bound']``)."""
    level = opts.media_resolution.lower().removeprefix("media_resolution_")
    try:
        tokens = _GEMINI3_LEVELS[level]
    except KeyError:
        raise ValueError(f"media_resolution must be one of {', '.join(_GEMINI3_LEVELS)}, "
                         f"got {opts.media_resolution!r}") from None
    return Counted(tokens, tokens, {"media_resolution": level, "upper_bound": True})
