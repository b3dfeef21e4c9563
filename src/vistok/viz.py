"""Drawing tokens over images: the cell grid, the tokens as colours, and the reconstruction beside the
original. Everything returns PIL images so it can be saved, shown in a notebook or composed further."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vistok.images import ImageInput, open_image
from vistok.tokens import Tokens

__all__ = ["token_colors", "draw_grid", "draw_groups", "paint_tokens", "heatmap", "show", "panel_strip",
           "working_image", "HEAT_EXTRAS"]

_GOLDEN = 0.618033988749895
#: Per-token scalar extras that ``show`` draws as heat maps, with their captions.
HEAT_EXTRAS = {"saliency": "saliency", "cls_attention": "attention from CLS"}
# a dark-to-bright ramp (black, indigo, red, orange, pale yellow) for heat maps: brighter = larger
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float64)


def token_colors(tokens: Tokens) -> np.ndarray:
    """One RGB colour (uint8 ``(N, 3)``) per token.

    Hard ids get a fixed colour per id (hue by golden-ratio stepping, so nearby ids differ), the same in
    every image. Soft vectors are projected on their own first three principal components and scaled to
    [0, 1] per axis, so tokens that look alike to the model get alike colours.
    """
    if tokens.is_hard:
        ids = tokens.values
        hues = (ids * _GOLDEN) % 1.0
        light = 0.45 + 0.2 * ((ids * 7) % 3) / 2
        rgb = [colorsys.hls_to_rgb(h, l, 0.75) for h, l in zip(hues, light)]
        return (np.asarray(rgb, dtype=np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)
    x = tokens.values.astype(np.float64)
    x = x - x.mean(axis=0)
    if len(x) < 2:
        return np.full((len(x), 3), 128, np.uint8)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:3].T
    if proj.shape[1] < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - proj.shape[1])))
    lo, hi = np.percentile(proj, 2, axis=0), np.percentile(proj, 98, axis=0)
    return (np.clip((proj - lo) / np.maximum(hi - lo, 1e-9), 0, 1) * 255).round().astype(np.uint8)


def _cell_boxes(tokens: Tokens, size: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` boxes of grid cells (or the token boxes) in the pixel frame of an image of ``size``."""
    if tokens.boxes is not None:
        source = tokens.image_size or size
        return tokens.boxes * np.array([size[0] / source[0], size[1] / source[1]] * 2, np.float32)
    if tokens.grid is None:
        raise ValueError(f"cannot draw tokens without a grid or boxes: {tokens!r}")
    rows, cols = tokens.grid
    x0, y0, x1, y1 = _covered(tokens, size)
    xs, ys = np.linspace(x0, x1, cols + 1), np.linspace(y0, y1, rows + 1)
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([xs[c], ys[r], xs[c + 1], ys[r + 1]], axis=1)


def _covered(tokens: Tokens, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of an image of ``size`` that a token grid covers: all of it, or the centre crop the encoder
    saw (``meta["crop_box"]`` in source pixels)."""
    box, source = tokens.meta.get("crop_box"), tokens.image_size
    if box is None or source is None:
        return 0.0, 0.0, float(size[0]), float(size[1])
    sx, sy = size[0] / source[0], size[1] / source[1]
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def _reduced(tokens: Tokens) -> bool:
    """Tokens laid out only by their source map (a reduced set of grid tokens)."""
    return tokens.grid is None and tokens.boxes is None and tokens.source is not None and tokens.base_grid is not None


def _token_at(tokens: Tokens, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` index of the token each pixel belongs to through the source map: ``-1`` for dropped
    patches, ``-2`` outside the part of the image the encoder saw (a centre crop)."""
    rows, cols = tokens.base_grid
    x0, y0, x1, y1 = _covered(tokens, size)
    ys = np.floor((np.arange(size[1]) + 0.5 - y0) * rows / max(y1 - y0, 1e-9)).astype(np.int64)
    xs = np.floor((np.arange(size[0]) + 0.5 - x0) * cols / max(x1 - x0, 1e-9)).astype(np.int64)
    inside = ((ys >= 0) & (ys < rows))[:, None] & ((xs >= 0) & (xs < cols))[None, :]
    index = tokens.source.reshape(rows, cols)[np.clip(ys, 0, rows - 1)][:, np.clip(xs, 0, cols - 1)]
    return np.where(inside, index, -2)


def _group_edges(index: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels on the border between two different tokens."""
    edge = np.zeros(index.shape, bool)
    edge[:, 1:] |= index[:, 1:] != index[:, :-1]
    edge[1:, :] |= index[1:, :] != index[:-1, :]
    return edge


def draw_groups(image: Image.Image, tokens: Tokens) -> Image.Image:
    """A reduced token set over the image: each token's group of patches in its own colour (kept tokens are
    groups of one), outlined; dropped patches dimmed."""
    base = np.asarray(image.convert("RGB"), np.float64)
    index = _token_at(tokens, (base.shape[1], base.shape[0]))
    ids = np.arange(len(tokens))
    hues = (ids * _GOLDEN) % 1.0
    palette = np.asarray([colorsys.hls_to_rgb(h, 0.5, 0.85) for h in hues]).reshape(-1, 3) * 255
    out = base.copy()
    member = index >= 0
    out[member] = 0.45 * base[member] + 0.55 * palette[index[member]]
    out[index == -1] *= 0.25
    out[_group_edges(index)] = 255
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")


def draw_grid(image: Image.Image, tokens: Tokens, color: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The image with each token's cell (or box) outlined; a reduced set is drawn by :func:`draw_groups`."""
    if _reduced(tokens):
        return draw_groups(image, tokens)
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for x0, y0, x1, y1 in _cell_boxes(tokens, out.size):
        draw.rectangle([x0, y0, x1, y1], outline=color, width=1)
    return out


def paint_tokens(tokens: Tokens, size: tuple[int, int]) -> Image.Image:
    """A picture of the tokens alone: each cell filled with its token's colour (see :func:`token_colors`)."""
    colors = token_colors(tokens)
    if _reduced(tokens):
        index = _token_at(tokens, size)
        painted = np.zeros((size[1], size[0], 3), np.uint8)
        painted[index >= 0] = colors[index[index >= 0]]
        return Image.fromarray(painted, "RGB")
    if tokens.grid is not None and tokens.boxes is None:
        rows, cols = tokens.grid
        small = Image.fromarray(colors.reshape(rows, cols, 3), "RGB")
        return small.resize(size, Image.Resampling.NEAREST)
    canvas = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for (x0, y0, x1, y1), rgb in zip(_cell_boxes(tokens, size), colors):
        draw.rectangle([x0, y0, x1, y1], fill=tuple(int(v) for v in rgb))
    return canvas


def heatmap(image: Image.Image, tokens: Tokens, values: np.ndarray | str, alpha: float = 0.6) -> Image.Image:
    """The image with one number per token (an extra's name, e.g. ``"saliency"``, or an ``(N,)`` array) drawn
    over it as a heat map: min-max scaled, bright = high, smoothed across cells, blended with ``alpha``."""
    name = values if isinstance(values, str) else "values"
    if isinstance(values, str):
        if values not in tokens.extras:
            raise ValueError(f"the tokens have no {values!r} extra (they have {sorted(tokens.extras) or 'none'})")
        values = tokens.extras[values]
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) != len(tokens):
        raise ValueError(f"{name} has {len(values)} numbers for {len(tokens)} tokens; give one per token")
    base = image.convert("RGB")
    span = values.max() - values.min() if len(values) else 0.0
    scaled = (values - values.min()) / span if span > 0 else np.zeros_like(values)
    heat = np.zeros((base.height, base.width), np.float32)
    if _reduced(tokens):
        index = _token_at(tokens, base.size)
        heat[index >= 0] = scaled[index[index >= 0]]
    elif tokens.grid is not None and tokens.boxes is None:
        x0, y0, x1, y1 = (round(v) for v in _covered(tokens, base.size))
        cells = Image.fromarray(scaled.reshape(tokens.grid).astype(np.float32), "F")
        heat[y0:y1, x0:x1] = np.asarray(cells.resize((max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.BILINEAR))
    else:  # boxes: paint them in order (a whole-image CLS box first, then the cells over it)
        for (bx0, by0, bx1, by1), v in zip(_cell_boxes(tokens, base.size), scaled):
            heat[round(by0):round(by1), round(bx0):round(bx1)] = v
    position = np.clip(heat, 0, 1) * (len(_RAMP) - 1)
    low = np.minimum(position.astype(int), len(_RAMP) - 2)
    colour = _RAMP[low] + (_RAMP[low + 1] - _RAMP[low]) * (position - low)[..., None]
    blended = (1 - alpha) * np.asarray(base, np.float64) + alpha * colour
    return Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), "RGB")


def panel_strip(panels: Sequence[Image.Image], titles: Sequence[str], height: int = 320,
                gap: int = 8) -> Image.Image:
    """Panels side by side at a common height, each with a caption underneath, on a white background."""
    resized = [p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.LANCZOS)
               for p in panels]
    font = _font(15)
    caption = 26
    width = sum(p.width for p in resized) + gap * (len(resized) + 1)
    strip = Image.new("RGB", (width, height + caption + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x = gap
    for panel, title in zip(resized, titles):
        strip.paste(panel, (x, gap))
        draw.text((x, height + gap + 4), title, fill=(20, 20, 20), font=font)
        x += panel.width + gap
    return strip


def show(image: ImageInput, tokenizer: Any, tokens: Tokens | None = None, height: int = 320) -> Image.Image:
    """Original with the token grid | tokens as colours | reconstruction (when the tokenizer decodes) | a heat map
    of each per-token extra in :data:`HEAT_EXTRAS` the tokens carry (saliency, attention from CLS).

    ``tokens`` defaults to ``tokenizer.encode(image)``. Captions give the token count, layout and, for a
    reconstruction, its PSNR against the original at the tokenizer's working size.
    """
    from vistok.metrics import psnr

    original = open_image(image)
    tokens = tokens if tokens is not None else tokenizer.encode(original)
    if "loc_tokens" in tokens.meta:
        return _show_regions(original, tokens, height)
    layout = f"{tokens.grid[0]}x{tokens.grid[1]}" if tokens.grid else "boxes"
    steps = tokens.meta.get("reductions")
    if steps:
        patches = len(tokens.source) if tokens.source is not None else steps[0]["from"]
        layout = f"{' then '.join(step['method'] for step in steps)} from {patches}" + (
            f", grid {layout}" if tokens.grid else "")
    kind = f"vocab {tokens.vocab_size}" if tokens.is_hard else f"dim {tokens.dim}"
    panels = [draw_grid(original, tokens), paint_tokens(tokens, original.size)]
    titles = [f"{original.width}x{original.height}: {len(tokens)} tokens ({layout})", f"{tokenizer.name} tokens, {kind}"]
    names, scores = tokens.meta.get("label_names"), tokens.extras.get("scores")
    if names and scores is not None and len(scores):
        titles[1] += f"; top-1 {names[0].split(',')[0]} {float(scores[0]):.2f}"
    for key, caption in HEAT_EXTRAS.items():
        extra = tokens.extras.get(key)
        if extra is not None and extra.ndim == 1 and len(extra) == len(tokens):
            layer = tokens.meta.get("layer")
            panels.append(heatmap(original, tokens, key))
            titles.append(f"{caption} (block {layer})" if key == "cls_attention" and layer is not None else caption)
    if tokenizer.decodable and not steps:
        recon = tokenizer.decode(tokens)
        reference = working_image(image, tokenizer, recon.size)
        panels.append(recon)
        titles.append(f"decoded, PSNR {psnr(reference, recon):.1f} dB")
    return panel_strip(panels, titles, height=height)


def draw_regions(image: Image.Image, tokens: Tokens) -> Image.Image:
    """Region tokens over the image: masks tinted, boxes outlined, "label score" written at each box."""
    out = np.asarray(image.convert("RGB"), np.float64).copy()
    palette = token_colors(Tokens(np.arange(len(tokens), dtype=np.int64), meta={"vocab_size": max(len(tokens), 1)}))
    masks = tokens.extras.get("masks")
    if masks is not None and masks.shape[1:] == out.shape[:2]:
        for mask, rgb in zip(masks, palette):
            out[mask] = 0.55 * out[mask] + 0.45 * rgb
    picture = Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    font = _font(max(12, picture.width // 60))
    names = tokens.meta.get("labels") or []
    scores = tokens.extras.get("scores")
    for i, ((x0, y0, x1, y1), rgb) in enumerate(zip(tokens.boxes if tokens.boxes is not None else [], palette)):
        colour = tuple(int(v) for v in rgb)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(2, picture.width // 300))
        label = int(tokens.values[i])
        text = names[label] if 0 <= label < len(names) else f"class {label}"
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        box = draw.textbbox((x0 + 2, y0 + 2), text, font=font)
        draw.rectangle(box, fill=colour)
        draw.text((x0 + 2, y0 + 2), text, fill=(0, 0, 0) if sum(colour) > 380 else (255, 255, 255), font=font)
    return picture


def _show_regions(original: Image.Image, tokens: Tokens, height: int) -> Image.Image:
    detector = tokens.meta.get("detector", "regions")
    title = f"{original.width}x{original.height}: {len(tokens)} region token(s) from {detector}"
    return panel_strip([original, draw_regions(original, tokens)], [f"{original.width}x{original.height}", title],
                       height=height)


def working_image(image: ImageInput, tokenizer: Any, size: tuple[int, int]) -> Image.Image:
    """The image as the tokenizer saw it, for fair PSNR: a decodable tokenizer's own ``prepare`` (every decodable
    tokenizer has one), else the image resized to ``size``."""
    if tokenizer.decodable:
        from vistok.tokenizers.base import to_image

        return to_image(tokenizer.prepare(image)[0])
    return open_image(image).resize(size, Image.Resampling.BICUBIC)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()
