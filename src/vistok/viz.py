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

__all__ = ["token_colors", "draw_grid", "draw_groups", "paint_tokens", "heatmap", "with_colorbar", "ramp_color",
           "show", "show_vlm", "show_context_attention", "panel_strip", "working_image", "draw_regions",
           "count_histogram", "nice_ticks", "HEAT_EXTRAS", "HEAT_SCALES"]

_GOLDEN = 0.618033988749895
#: Per-token scalar extras that ``show`` draws as heat maps, with their captions.
HEAT_EXTRAS = {"saliency": "saliency", "cls_attention": "attention from CLS"}
#: The value range each heat map is drawn on: saliency is a probability (0..1, the same colours in every image);
#: attention from CLS sums to 1 over the tokens, so it is drawn from 0 to its largest value (``None``).
HEAT_SCALES: dict[str, tuple[float, float | None]] = {"saliency": (0.0, 1.0), "cls_attention": (0.0, None)}
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
        rgb = [colorsys.hls_to_rgb(h, lightness, 0.75) for h, lightness in zip(hues, light)]
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


def ramp_color(values: np.ndarray | float) -> np.ndarray:
    """The heat-map colour (float RGB, 0..255) of values in [0, 1]: dark = 0, bright = 1 (clipped)."""
    position = np.clip(np.asarray(values, np.float64), 0, 1) * (len(_RAMP) - 1)
    low = np.minimum(position.astype(int), len(_RAMP) - 2)
    return _RAMP[low] + (_RAMP[low + 1] - _RAMP[low]) * (position - low)[..., None]


def _scale(values: np.ndarray, vmin: float, vmax: float | None) -> tuple[float, float]:
    """The value range to draw: ``vmax=None`` is the largest value (at least a hair above ``vmin``)."""
    top = float(values.max()) if vmax is None and len(values) else (1.0 if vmax is None else float(vmax))
    if not np.isfinite(top) or top <= vmin:
        top = vmin + (abs(vmin) or 1.0) * 1e-6 if vmax is None else top
    if top <= vmin:
        raise ValueError(f"heat map range: vmax ({vmax}) must be above vmin ({vmin})")
    return float(vmin), top


def heatmap(image: Image.Image, tokens: Tokens, values: np.ndarray | str, alpha: float = 0.6, *,
            vmin: float = 0.0, vmax: float | None = 1.0) -> Image.Image:
    """The image with one number per token (an extra's name, e.g. ``"saliency"``, or an ``(N,)`` array) drawn
    over it as a heat map on a fixed scale: ``vmin`` is dark, ``vmax`` bright (``None``: the largest value),
    values outside clipped; smoothed across cells, blended with ``alpha``. A fixed scale keeps a flat saliency
    of 0.35 looking like 0.35 (:func:`with_colorbar` adds the scale beside it). The range used is stored in
    ``result.info["heat_range"]``."""
    name = values if isinstance(values, str) else "values"
    if isinstance(values, str):
        if values not in tokens.extras:
            raise ValueError(f"the tokens have no {values!r} extra (they have {sorted(tokens.extras) or 'none'})")
        values = tokens.extras[values]
    values = np.asarray(values, np.float64).reshape(-1)
    if len(values) != len(tokens):
        raise ValueError(f"{name} has {len(values)} numbers for {len(tokens)} tokens; give one per token")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite numbers; a heat map needs finite values")
    low, high = _scale(values, vmin, vmax)
    base = image.convert("RGB")
    scaled = np.clip((values - low) / (high - low), 0, 1)
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
    blended = (1 - alpha) * np.asarray(base, np.float64) + alpha * ramp_color(heat)
    out = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), "RGB")
    out.info["heat_range"] = (low, high)
    return out


def with_colorbar(picture: Image.Image, vmin: float = 0.0, vmax: float = 1.0, label: str = "") -> Image.Image:
    """``picture`` with a vertical colour bar on its right: the heat-map ramp from ``vmin`` (bottom) to ``vmax``
    (top), with tick labels sized to the picture. ``result.info["colorbar"]`` holds the bar's pixel box and
    range, so a value's colour can be looked up: ``y = bottom - (v - vmin) / (vmax - vmin) * (bottom - top)``."""
    height = picture.height
    font_px = max(10, round(height / 22))
    font = _font(font_px)
    bar_w = max(8, round(height / 24))
    pad = max(4, font_px // 2)
    ticks = nice_ticks(vmin, vmax, 5)
    labels = [_tick_label(t, ticks) for t in ticks]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textbbox((0, 0), t, font=font)[2] for t in labels)
    top, bottom = pad + font_px // 2, height - pad - font_px // 2
    width = picture.width + pad + bar_w + pad // 2 + text_w + pad
    out = Image.new("RGB", (width, height), (255, 255, 255))
    out.paste(picture.convert("RGB"), (0, 0))
    x0 = picture.width + pad
    fractions = np.linspace(1, 0, max(1, bottom - top + 1))  # top row = vmax
    column = ramp_color(fractions).round().clip(0, 255).astype(np.uint8)
    out.paste(Image.fromarray(np.repeat(column[:, None, :], bar_w, axis=1), "RGB"), (x0, top))
    draw = ImageDraw.Draw(out)
    draw.rectangle([x0 - 1, top - 1, x0 + bar_w, bottom + 1], outline=(40, 40, 40))
    for tick, text in zip(ticks, labels):
        y = bottom - (tick - vmin) / (vmax - vmin) * (bottom - top)
        draw.line([x0 + bar_w, y, x0 + bar_w + pad // 2, y], fill=(40, 40, 40))
        draw.text((x0 + bar_w + pad // 2 + 2, y), text, fill=(20, 20, 20), font=font, anchor="lm")
    if label:
        draw.text((x0, 1), label, fill=(20, 20, 20), font=_font(max(9, font_px - 2)))
    out.info["colorbar"] = {"box": (x0, top, x0 + bar_w - 1, bottom), "range": (vmin, vmax)}
    return out


def nice_ticks(low: float, high: float, count: int = 6, *, integer: bool = False) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten; whole steps when
    ``integer``) within ``[low, high]``."""
    if not high > low:
        return [float(low)]
    power = 10.0 ** np.floor(np.log10((high - low) / max(1, count - 1)))
    steps = [m * power * scale for scale in (0.1, 1, 10) for m in (1, 2, 2.5, 5)]
    steps = [st for st in steps if not integer or (st >= 1 and float(st).is_integer())] or [1.0]
    step = min(steps, key=lambda st: (abs((high - low) / st + 1 - count), -st))
    first = np.ceil(low / step - 1e-9) * step
    ticks = [float(first + i * step) for i in range(int(np.floor((high - first) / step + 1e-9)) + 1)]
    return [round(t, 12) + 0.0 for t in ticks] or [float(low)]


def _tick_label(value: float, ticks: Sequence[float]) -> str:
    """A tick's text: whole numbers with thousands separators, else as many decimals as the step needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if float(value).is_integer() and float(step).is_integer():
        return f"{int(value):,}"
    exponent = int(np.floor(np.log10(step)))
    decimals = max(0, -exponent) + (1 if round(step / 10.0**exponent, 6) == 2.5 else 0)
    return f"{value:.{decimals}f}"


def panel_strip(panels: Sequence[Image.Image], titles: Sequence[str], height: int = 320,
                gap: int = 8) -> Image.Image:
    """Panels side by side at a common height, each with a caption underneath (``\n`` starts another line),
    on a white background. ``result.info["panels"]`` holds each panel's ``(x0, y0, x1, y1)`` pixel box."""
    resized = [p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.LANCZOS)
               for p in panels]
    font = _font(15)
    caption = 26 + _LINE * (max([t.count("\n") for t in titles] + [0]))
    width = sum(p.width for p in resized) + gap * (len(resized) + 1)
    strip = Image.new("RGB", (width, height + caption + 2 * gap), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    x = gap
    boxes = []
    for panel, title in zip(resized, titles):
        strip.paste(panel, (x, gap))
        boxes.append((x, gap, x + panel.width - 1, gap + height - 1))
        draw.multiline_text((x, height + gap + 4), title, fill=(20, 20, 20), font=font, spacing=_LINE - 15)
        x += panel.width + gap
    strip.info["panels"] = boxes
    return strip


_LINE = 19  # caption line pitch in panel_strip (15 px text)


def count_histogram(distributions: dict[str, dict[int, int]], marks: dict[str, dict[str, float]] | None = None,
                    width: int = 900, panel_height: int = 170) -> Image.Image:
    """Histograms of image tokens, one panel per model, stacked, on one shared scale: the same token axis
    (ticks and bins) and the same image-count axis in every panel, so models compare at a glance.

    ``distributions``: model -> {image tokens: number of images}; ``marks``: model -> {"p50": value, ...}
    drawn as labelled vertical lines. ``result.info["layout"]`` holds each panel's plot box and its tick
    positions and labels."""
    marks = marks or {}
    font, small = _font(15), _font(12)
    left, right, title_h, ticks_h, gap = 74, 24, 26, 20, 14
    plot_w = width - left - right
    values = [v for dist in distributions.values() for v, n in dist.items() if n]
    lo, hi = (min(values), max(values)) if values else (0, 1)
    if hi - lo < 20:  # a narrow spread still gets a readable axis around it
        lo, hi = max(0, lo - 10), hi + 10
    wanted = (hi + 1 - lo) / 40  # about 40 bins of a round width, starting at a multiple of it
    bin_w = next(int(m * 10**e) for e in range(12) for m in (1, 2, 5) if m * 10**e >= wanted)
    lo = lo // bin_w * bin_w
    bins = -(-(hi + 1 - lo) // bin_w)
    x_end = lo + bins * bin_w  # bins cover [lo, x_end): bin k holds lo + k*bin_w .. lo + (k+1)*bin_w - 1
    counts = {}
    for model, dist in distributions.items():
        hist = np.zeros(bins, np.int64)
        for value, n in dist.items():
            hist[(value - lo) // bin_w] += n
        counts[model] = hist
    y_max = max([int(h.max()) for h in counts.values()] + [1])
    y_ticks = nice_ticks(0, y_max, 4, integer=True)
    y_top = max(y_max, y_ticks[-1])
    x_ticks = nice_ticks(lo, x_end, 7, integer=True)
    panel_h = title_h + panel_height + ticks_h + gap
    height = panel_h * max(1, len(distributions)) + 30
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    layout: dict[str, Any] = {"x_range": (lo, x_end), "y_max": y_top, "panels": []}

    def x_of(value: float) -> float:
        return left + (value - lo) / (x_end - lo) * plot_w

    for i, (model, hist) in enumerate(counts.items()):
        top = i * panel_h + title_h
        bottom = top + panel_height
        total = int(hist.sum())
        text = f"{model}: {total:,} image{'s' if total != 1 else ''}"
        draw.text((left, top - title_h + 4), text, fill="black", font=font)
        for tick in y_ticks:  # grid lines and the count axis
            y = bottom - tick / y_top * panel_height
            draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
            draw.line([left - 5, y, left, y], fill=(40, 40, 40))
            draw.text((left - 8, y), _tick_label(tick, y_ticks), fill=(40, 40, 40), font=small, anchor="rm")
        for b, n in enumerate(hist):
            if n:
                x0, x1 = x_of(lo + b * bin_w), x_of(lo + (b + 1) * bin_w)
                draw.rectangle([x0 + 1, bottom - n / y_top * panel_height, max(x0 + 1, x1 - 1), bottom],
                               fill=(70, 110, 190))
        for (name, value), colour in zip(sorted(marks.get(model, {}).items()), ((200, 60, 40), (230, 140, 20))):
            x = x_of(value + 0.5)  # the middle of the value's pixel span
            draw.line([x, top, x, bottom], fill=colour, width=2)
            label = f"{name} {value:,.0f}"
            box = draw.textbbox((0, 0), label, font=small)
            tx = x + 4 if x + 4 + box[2] < left + plot_w else x - 4 - box[2]
            ty = top + 2 + 16 * (name != "p50")
            draw.text((tx, ty), label, fill=colour, font=small, stroke_width=2, stroke_fill="white")
        draw.line([left, top, left, bottom], fill=(40, 40, 40))  # axes
        draw.line([left, bottom, left + plot_w, bottom], fill=(40, 40, 40))
        ticks = []
        for tick in x_ticks:
            x = x_of(tick)
            draw.line([x, bottom, x, bottom + 5], fill=(40, 40, 40))
            draw.text((x, bottom + 6), _tick_label(tick, x_ticks), fill=(40, 40, 40), font=small, anchor="mt")
            ticks.append((tick, x, _tick_label(tick, x_ticks)))
        layout["panels"].append({"model": model, "plot": (left, top, left + plot_w, bottom), "x_ticks": ticks,
                                 "y_ticks": [(t, bottom - t / y_top * panel_height, _tick_label(t, y_ticks))
                                             for t in y_ticks]})
    draw.text((left + plot_w / 2, height - 8), "image tokens per image (bins of "
              f"{bin_w:,} token{'s' if bin_w > 1 else ''}; same scale in every panel)", fill="black", font=small,
              anchor="mb")
    axis = Image.new("RGB", (140, 16), "white")
    ImageDraw.Draw(axis).text((70, 8), "images", fill="black", font=small, anchor="mm")
    canvas.paste(axis.rotate(90, expand=True), (4, title_h + panel_height // 2 - 70))
    canvas.info["layout"] = layout
    return canvas


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
            low, high = HEAT_SCALES.get(key, (0.0, None))
            heat = heatmap(original, tokens, key, vmin=low, vmax=high)
            panels.append(with_colorbar(heat, *heat.info["heat_range"]))
            titles.append(f"{caption} (block {layer})" if key == "cls_attention" and layer is not None else caption)
    if tokenizer.decodable and not steps:
        recon = tokenizer.decode(tokens)
        reference = working_image(image, tokenizer, recon.size)
        panels.append(recon)
        titles.append(f"decoded, PSNR {psnr(reference, recon):.1f} dB")
    return panel_strip(panels, titles, height=height)


def show_vlm(image: ImageInput, model: Any, processor: Any, method: str, *, keep: int | None = None,
             ratio: float | None = None, question: str | None = None, height: int = 320, max_new_tokens: int = 8,
             **options: Any) -> Image.Image:
    """What a VLM's language model sees of ``image`` after :func:`vistok.vlm.patch` with ``method``: the image |
    the visual tokens it keeps painted over their patches (merged groups one colour each, outlined; dropped
    patches dimmed), captioned "K of N visual tokens kept (method)" | the tower's attention from CLS the
    reducer ranked by, when it used one. The kept set is the patch's own (see
    :func:`vistok.vlm.show.kept_tokens`; ``keep``/``ratio``/``options`` as :func:`vistok.vlm.patch`).

    With ``question``, the model's greedy answers without and with the reduction (:func:`vistok.vlm.ask`) are
    written under the image and stored in ``result.info["answers"]`` (``{"full", "reduced"}``); the question is
    also the prompt ``fastv`` ranks by. ``result.info["tokens"]`` holds the kept :class:`~vistok.Tokens`
    (``source``: the kept token of each patch, ``-1`` dropped)."""
    from vistok.vlm.show import kept_tokens

    original = open_image(image)
    tokens = kept_tokens(model, processor, original, method, keep=keep, ratio=ratio, question=question, **options)
    total = len(tokens.source)
    panels = [original, draw_groups(original, tokens)]
    titles = [f"{original.width}x{original.height}", f"{len(tokens)} of {total} visual tokens kept ({method})"]
    signal = tokens.meta.get("patch_signal")
    if signal is not None:
        meta = {key: tokens.meta[key] for key in ("image_size", "crop_box") if key in tokens.meta}
        cells = Tokens(np.zeros((total, 1), np.float32), grid=tokens.base_grid, meta=meta)
        heat = heatmap(original, cells, np.asarray(signal), vmin=0.0, vmax=None)
        panels.append(with_colorbar(heat, *heat.info["heat_range"]))
        titles.append("attention from CLS" if tokens.meta.get("signal") == "cls_attention"
                      else "attention received")
    answers = None
    if question is not None:
        from vistok.vlm import ask

        settings = dict(keep=keep, ratio=ratio, max_new_tokens=max_new_tokens, **options)
        answers = {"full": ask(model, processor, original, question, max_new_tokens=max_new_tokens).text,
                   "reduced": ask(model, processor, original, question, method=method, **settings).text}
        width = round(original.width * height / original.height)
        titles[0] = "\n".join([_fit(f"Q: {question}", width), _fit(f"all {total}: {answers['full']}", width),
                               _fit(f"{len(tokens)} kept: {answers['reduced']}", width)])
    picture = panel_strip(panels, titles, height=height)
    picture.info.update(tokens=tokens, answers=answers)
    return picture


def show_context_attention(image_or_frames: Any, model: Any, question: str, *, height: int = 320) -> Image.Image:
    """Where a LLaMA-VID model's context token looks for ``question`` (:func:`vistok.vlm.llama_vid.context_attention`):
    the image with the question and the model's answer under it | the context token's attention over the patch
    grid as a heat map (0 to the largest weight, with its colour bar). A clip (a sequence of frames or a video
    file) gets one heat map per frame, on one scale. ``result.info``: ``attention`` ``(frames, rows, cols)``
    (each frame summing to 1), ``peak`` ``(frame, row, col)`` of the largest weight, ``answer``."""
    from vistok.vlm import llama_vid

    frames = llama_vid._frames_of(image_or_frames)
    attention = llama_vid.context_attention(model, frames, question).detach().float().cpu().numpy()
    answer = llama_vid.ask(model, frames, question)
    rows, cols = attention.shape[1:]
    top = float(attention.max())
    panels: list[Image.Image] = []
    titles: list[str] = []
    width = round(frames[0].width * height / frames[0].height)
    if len(frames) == 1:
        panels.append(frames[0])
        titles.append("\n".join([_fit(f"Q: {question}", width), _fit(f"A: {answer}", width)]))
    for i, (frame, weights) in enumerate(zip(frames, attention)):
        cells = Tokens(np.zeros((rows * cols, 1), np.float32), grid=(rows, cols))
        heat = heatmap(frame, cells, weights.reshape(-1), vmin=0.0, vmax=top)
        panels.append(with_colorbar(heat, *heat.info["heat_range"]) if i == len(frames) - 1 else heat)
        title = "context token's attention" if len(frames) == 1 else f"frame {i + 1}"
        if len(frames) > 1 and i == 0:
            title = "\n".join([_fit(f"Q: {question}", width), _fit(f"A: {answer}", width), title])
        titles.append(title)
    peak = np.unravel_index(int(attention.argmax()), attention.shape)
    picture = panel_strip(panels, titles, height=height)
    picture.info.update(attention=attention, peak=tuple(int(v) for v in peak), answer=answer)
    return picture


def _fit(text: str, width: int, size: int = 15) -> str:
    """``text`` cut (with an ellipsis) to fit ``width`` pixels in the caption font."""
    font = _font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    if probe.textlength(text, font=font) <= width:
        return text
    while text and probe.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def draw_regions(image: Image.Image, tokens: Tokens) -> Image.Image:
    """Region tokens over the image: masks tinted, boxes outlined, "label score" written at each box on a filled
    box in the region's colour, in black or white (whichever contrasts more), in a font sized to the image
    (about 1/24 of its shorter side, so it stays readable when the picture is shown small). The label boxes
    are stored in ``result.info["labels"]``."""
    out = np.asarray(image.convert("RGB"), np.float64).copy()
    palette = token_colors(Tokens(np.arange(len(tokens), dtype=np.int64), meta={"vocab_size": max(len(tokens), 1)}))
    masks = tokens.extras.get("masks")
    if masks is not None and masks.shape[1:] == out.shape[:2]:
        for mask, rgb in zip(masks, palette):
            out[mask] = 0.55 * out[mask] + 0.45 * rgb
    picture = Image.fromarray(out.round().clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    font_px = max(11, round(min(picture.size) / 24))
    font = _font(font_px)
    pad = max(2, font_px // 5)
    line = max(2, round(min(picture.size) / 250))
    names = tokens.meta.get("labels") or []
    scores = tokens.extras.get("scores")
    placed = []
    for i, ((x0, y0, x1, y1), rgb) in enumerate(zip(tokens.boxes if tokens.boxes is not None else [], palette)):
        colour = tuple(int(v) for v in rgb)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        label = int(tokens.values[i])
        text = names[label] if 0 <= label < len(names) else f"class {label}"
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * pad, bottom - top + 2 * pad
        bx = min(max(0, x0), max(0, picture.width - w))
        by = y0 - h if y0 - h >= 0 else min(max(0, y0), max(0, picture.height - h))  # above the box when it fits
        draw.rectangle([bx, by, bx + w - 1, by + h - 1], fill=colour)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255, 255, 255)
        draw.text((bx + pad - left, by + pad - top), text, fill=ink, font=font)
        placed.append((int(bx), int(by), int(bx + w - 1), int(by + h - 1)))
    picture.info["labels"] = placed
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
