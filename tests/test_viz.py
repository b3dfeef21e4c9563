"""Pictures: heat maps on an absolute scale with a colour bar, histograms with axes on one shared scale,
region labels readable."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vistok.budget.report import count_stream, histogram
from vistok.tokens import Tokens
from vistok.viz import count_histogram, draw_regions, heatmap, nice_ticks, ramp_color, with_colorbar


def _grid_tokens(values, grid=(4, 6), size=(240, 160)):
    n = grid[0] * grid[1]
    return Tokens.from_grid(np.zeros((n, 8), np.float32), grid, meta={"image_size": list(size)},
                            extras={"saliency": np.asarray(values, np.float32).reshape(n)})


def _bar_pixel(picture, value):
    """The colour bar's pixel for ``value``, from the bar's stored geometry."""
    x0, top, x1, bottom = picture.info["colorbar"]["box"]
    low, high = picture.info["colorbar"]["range"]
    y = round(bottom - (value - low) / (high - low) * (bottom - top))
    return np.asarray(picture)[y, (x0 + x1) // 2].astype(int)


def test_a_flat_map_is_drawn_at_its_own_value_on_the_colour_bar():
    image = Image.new("RGB", (240, 160), (128, 128, 128))
    tokens = _grid_tokens(np.full(24, 0.35))
    heat = heatmap(image, tokens, "saliency", alpha=1.0)
    assert heat.info["heat_range"] == (0.0, 1.0)
    pixels = np.asarray(heat).reshape(-1, 3).astype(int)
    assert (np.abs(pixels - ramp_color(0.35).round()).max(axis=1) <= 1).all()  # every pixel is 0.35's colour
    pictured = with_colorbar(heat, 0.0, 1.0)
    assert pictured.width > heat.width and pictured.height == heat.height
    assert np.abs(_bar_pixel(pictured, 0.35) - pixels[0]).max() <= 6  # the bar at 0.35 shows that colour
    assert np.abs(_bar_pixel(pictured, 1.0) - pixels[0]).max() > 100  # and the bar's top is far brighter


def test_a_narrow_range_is_not_stretched_to_bright_blobs():
    """Hubble's saliency lies in 0.34..0.36: on the absolute scale it stays one dim colour."""
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (240, 160), (0, 0, 0))
    heat = np.asarray(heatmap(image, _grid_tokens(rng.uniform(0.34, 0.36, 24)), "saliency", alpha=1.0), np.float64)
    spread = np.abs(heat - ramp_color(0.35)).max()
    assert spread < 12, spread  # min-max scaling painted these from black to pale yellow (spread ~ 250)
    assert heat.sum(axis=2).max() < ramp_color(0.6).sum()


def test_heat_scale_options():
    image = Image.new("RGB", (240, 160))
    values = np.linspace(0, 0.05, 24)  # attention-like: small numbers
    auto = heatmap(image, _grid_tokens(values), values, alpha=1.0, vmax=None)
    assert auto.info["heat_range"] == (0.0, pytest.approx(0.05))
    assert np.asarray(auto).sum(axis=2).max() >= ramp_color(0.97).sum() - 3  # its largest value is bright
    with pytest.raises(ValueError, match="NaN"):
        heatmap(image, _grid_tokens(values), np.full(24, np.nan))
    with pytest.raises(ValueError, match="vmax"):
        heatmap(image, _grid_tokens(values), values, vmin=0.5, vmax=0.5)


def _report():
    sizes = [(336, 336)] * 3 + [(1024, 768), (4032, 3024), (640, 480), (200, 3000)]
    return count_stream(sizes, ["llava-1.5-7b", "qwen2-vl-7b", "internvl2.5-8b"])


def test_histogram_has_axes_and_one_shared_scale():
    report = _report()
    picture = histogram(report)
    layout = picture.info["layout"]
    panels = layout["panels"]
    assert [p["model"] for p in panels] == report.models
    assert len({tuple(p["plot"][0::2]) for p in panels}) == 1  # same horizontal extent
    assert len({tuple((t[0], round(t[1])) for t in p["x_ticks"]) for p in panels}) == 1  # same token axis
    assert len({tuple(t[0] for t in p["y_ticks"]) for p in panels}) == 1  # same image-count axis
    ticks = [t[0] for t in panels[0]["x_ticks"]]
    assert len(ticks) >= 4 and ticks == sorted(ticks)
    lo, hi = layout["x_range"]
    all_tokens = [v for m in report.models for v in report.distribution(m)]
    assert lo <= min(all_tokens) and hi > max(all_tokens)  # every panel spans every model's counts
    pixels = np.asarray(picture.convert("L"), np.int64)
    for panel in panels:
        x0, top, x1, bottom = (round(v) for v in panel["plot"])
        assert pixels[bottom, x0 + 10:x1 - 10].max() < 100  # the token axis is a dark line
        assert pixels[top + 5:bottom - 5, x0].max() < 100  # the count axis too
        for _, x, label in panel["x_ticks"]:
            assert label and pixels[bottom + 8:bottom + 20, round(x) - 6:round(x) + 6].min() < 128  # label drawn
        for _, y, label in panel["y_ticks"]:
            assert label and pixels[round(y) - 5:round(y) + 5, x0 - 30:x0 - 8].min() < 128


def test_histogram_of_one_value_and_nice_ticks():
    picture = count_histogram({"m": Counter({576: 10})})
    lo, hi = picture.info["layout"]["x_range"]
    assert lo <= 576 < hi and hi - lo >= 20
    assert nice_ticks(0, 1, 6) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(144, 2928, 6) == [500.0, 1000.0, 1500.0, 2000.0, 2500.0]
    assert nice_ticks(576, 577, 6, integer=True) == [576.0, 577.0]


def test_region_labels_are_sized_to_the_image_and_contrast():
    image = Image.new("RGB", (640, 480), (200, 200, 200))
    tokens = Tokens(np.array([0, 1]), boxes=np.array([[100, 150, 300, 400], [400, 0, 600, 200]], np.float32),
                    extras={"scores": np.array([0.9, 0.5])}, meta={"labels": ["cat", "dog"], "image_size": [640, 480]})
    picture = draw_regions(image, tokens)
    labels = picture.info["labels"]
    assert len(labels) == 2
    (x0, y0, x1, y1), (a0, b0, a1, b1) = labels
    assert y1 <= 150 and x0 == 100  # above its box when there is room
    assert b0 >= 0 and a0 == 400  # inside the box at the top edge
    assert y1 - y0 >= 480 / 30  # the font grows with the image
    for box in labels:
        patch = np.asarray(picture.crop((box[0], box[1], box[2] + 1, box[3] + 1)).convert("L"), np.int64)
        assert patch.max() - patch.min() > 120  # text on a filled box of contrasting brightness
    small = draw_regions(image.resize((160, 120)), Tokens(tokens.values, boxes=tokens.boxes / 4,
                                                          extras=tokens.extras, meta=tokens.meta))
    assert small.info["labels"][0][3] - small.info["labels"][0][1] >= 11  # never below a readable size
