"""Counting many files for many models: the loop behind ``vistok count``, its summary and histogram."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vistok.budget.core import TokenCount
from vistok.images import ImageError, find_images, probe_size

__all__ = ["CountReport", "count_files", "histogram"]


@dataclass
class CountReport:
    """Counts per (file, model), the KV-cache bytes per count, and the files that could not be read."""

    models: list[str]
    counts: dict[str, dict[str, TokenCount]] = field(default_factory=dict)  # file -> model -> count
    kv_bytes: dict[str, dict[str, int | None]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def tokens(self, model: str) -> np.ndarray:
        return np.array([per[model].image_tokens for per in self.counts.values()], dtype=np.int64)

    def summary(self) -> list[dict[str, Any]]:
        """Per model: images, p50/p95/max/mean image tokens, total tokens and total KV cache."""
        rows = []
        for model in self.models:
            tokens = self.tokens(model)
            kv = [per[model] for per in self.kv_bytes.values()]
            rows.append({
                "model": model, "images": int(len(tokens)),
                "p50": float(np.percentile(tokens, 50)) if len(tokens) else 0.0,
                "p95": float(np.percentile(tokens, 95)) if len(tokens) else 0.0,
                "max": int(tokens.max()) if len(tokens) else 0,
                "mean": float(tokens.mean()) if len(tokens) else 0.0,
                "total_tokens": int(tokens.sum()),
                "total_kv_bytes": None if any(v is None for v in kv) else int(sum(kv)),  # type: ignore[arg-type]
            })
        return rows


def count_files(
    paths: Iterable[str | os.PathLike], models: Sequence[str], *, options: dict[str, Any] | None = None,
    dtype: str = "bfloat16", on_file: Callable[[str], None] | None = None,
) -> CountReport:
    """Count every image under ``paths`` for every model from header-only size probes. Unreadable files are
    recorded in ``errors`` and skipped, never counted as zero."""
    from vistok.budget import count
    from vistok.budget.cost import cost
    from vistok.budget.models import resolve_model

    entries = [resolve_model(m) for m in models]  # unknown names fail before any file is read
    report = CountReport([e.name for e in entries])
    has_lm = {e.name: e.lm is not None for e in entries}
    for given in paths:
        try:
            files = find_images([given])
        except ImageError as err:
            report.errors[str(given)] = err.reason
            continue
        for path in files:
            key = str(path)
            try:
                size = probe_size(path)
                per = {e.name: count(size, model=e.name, **(options or {})) for e in entries}
            except ImageError as err:
                report.errors[key] = err.reason
            except ValueError as err:
                report.errors[key] = str(err)
            else:
                report.counts[key] = per
                report.kv_bytes[key] = {
                    name: cost(c, dtype=dtype).kv_cache_bytes if has_lm[name] else None for name, c in per.items()
                }
            if on_file is not None:
                on_file(key)
    return report


def histogram(report: CountReport, width: int = 900, bar_height: int = 180) -> Any:
    """A PNG-ready PIL image: one histogram of image tokens per model, stacked, with p50/p95 marked."""
    from PIL import Image, ImageDraw

    from vistok.viz import _font

    font, small = _font(16), _font(12)
    pad, label_h = 50, 44
    panel_h = bar_height + label_h + 20
    canvas = Image.new("RGB", (width, panel_h * len(report.models) + 10), "white")
    draw = ImageDraw.Draw(canvas)
    for i, model in enumerate(report.models):
        tokens = report.tokens(model)
        top = i * panel_h + 20
        draw.text((pad, top - 16), f"{model}: {len(tokens)} images", fill="black", font=font)
        if not len(tokens):
            continue
        lo, hi = int(tokens.min()), int(tokens.max())
        if hi - lo < 20:  # a narrow spread still gets an axis around it
            lo, hi = max(0, lo - 10), hi + 10
        bins = max(1, min(40, hi - lo + 1))
        hist, edges = np.histogram(tokens, bins=bins, range=(lo, hi + 1))
        plot_w = width - 2 * pad
        bar_w = plot_w / bins
        for b, n in enumerate(hist):
            h = 0 if hist.max() == 0 else bar_height * n / hist.max()
            x0 = pad + b * bar_w
            draw.rectangle([x0 + 1, top + 8 + bar_height - h, x0 + bar_w - 1, top + 8 + bar_height],
                           fill=(70, 110, 190))
        for q, colour in ((50, (200, 60, 40)), (95, (230, 150, 30))):
            value = float(np.percentile(tokens, q))
            x = pad + (value - lo + 0.5) / max(hi + 1 - lo, 1) * plot_w  # centre of the value's bin
            draw.line([x, top + 8, x, top + 8 + bar_height], fill=colour, width=2)
            draw.text((x + 3, top + 8 + 14 * (q == 95)), f"p{q} {value:.0f}", fill=colour, font=small)
        axis_y = top + 8 + bar_height + 4
        draw.text((pad, axis_y), f"{lo}", fill="black", font=small)
        draw.text((width - pad - 40, axis_y), f"{hi}", fill="black", font=small)
        draw.text((width // 2 - 40, axis_y), "image tokens", fill="black", font=small)
    return canvas
