"""Fitting an image to a token budget: the largest aspect-preserving resize whose count is within budget,
the model option that gets there without touching the image, or reducing the tokens afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from vistok.budget.core import TokenCount, get_family
from vistok.budget.models import resolve_model

__all__ = ["Fit", "fit", "KNOBS"]

# Integer options that cap a model's token count when lowered, in the order they are tried. They are the
# checkpoints' own config names; a family exposes the ones its processor has.
KNOBS = ("max_pixels", "max_patches", "max_image_tiles", "num_crops", "max_slice_nums", "longest_edge",
         "max_num_crops", "pan_and_scan_max_num_crops")


@dataclass(frozen=True)
class Fit:
    """How to make one image cost at most ``budget`` tokens in one model.

    original: the count at the image's own size. resize: the largest aspect-preserving ``(w, h)`` within
    budget (None if no size fits: the model's count does not shrink with the image). option: a model
    option (e.g. ``{"max_pixels": 200704}``) and the count it gives, None if the model has no such knob or
    none fits. reduce_to: the budget, when the tokens could instead be kept and reduced later (see
    ``vistok.reduce``), with the fraction kept.
    """

    model: str
    budget: int
    original: TokenCount
    resize: tuple[int, int] | None = None
    resized: TokenCount | None = None
    option: dict[str, Any] | None = None
    option_count: TokenCount | None = None
    keep_fraction: float = 1.0
    notes: list[str] = field(default_factory=list)

    @property
    def fits_already(self) -> bool:
        return self.original.image_tokens <= self.budget


def _count(size: tuple[int, int], model: str, options: dict[str, Any]) -> TokenCount:
    from vistok.budget import count

    return count(size, model=model, **options)


def _largest_resize(width: int, height: int, model: str, budget: int, options: dict[str, Any]):
    """Scan long sides from the image's own down to 1 px; the first fit is the largest. A scan, not a
    bisection, because some rules (anyres tiling) are not monotone in size."""
    long_side, short_side = max(width, height), min(width, height)
    for side in range(long_side, 0, -1):
        other = max(1, round(short_side * side / long_side))
        size = (side, other) if width >= height else (other, side)
        try:
            counted = _count(size, model, options)
        except ValueError:  # e.g. an aspect ratio the model refuses at this size
            continue
        if counted.image_tokens <= budget:
            return size, counted
    return None, None


def _option_fit(size: tuple[int, int], model: str, budget: int, options: dict[str, Any]):
    entry = resolve_model(model)
    family = get_family(entry.family)
    current = family.make_options(**{**entry.options, **options})
    names = {f.name for f in fields(current)}
    for knob in KNOBS:
        value = getattr(current, knob, None) if knob in names else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            continue
        lo, hi, best = 1, value, None  # largest knob value within budget; counts grow with the knob
        while lo <= hi:
            mid = (lo + hi) // 2
            try:
                counted = _count(size, model, {**options, knob: mid})
            except (ValueError, TypeError):
                lo = mid + 1
                continue
            if counted.image_tokens <= budget:
                best, lo = (mid, counted), mid + 1
            else:
                hi = mid - 1
        if best is not None:
            return {knob: best[0]}, best[1]
    return None, None


def fit(image_or_size: Any, model: str, budget: int, **options: Any) -> Fit:
    """Ways to bring an image within ``budget`` image tokens in ``model``.

    ``options`` are model options as in :func:`vistok.budget.count`.
    """
    from vistok.budget import image_size_of

    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive number of tokens, got {budget!r}")
    width, height = image_size_of(image_or_size)
    original = _count((width, height), model, options)
    name = original.model
    notes: list[str] = []
    if original.image_tokens <= budget:
        return Fit(name, budget, original, (width, height), original, None, None, 1.0,
                   [f"already within budget: {original.image_tokens} <= {budget}"])
    size, resized = _largest_resize(width, height, name, budget, options)
    if size is None:
        notes.append(f"no resize brings {name} under {budget}: its count does not shrink below "
                     f"{_count((1, 1), name, options).image_tokens} with the image")
    elif max(size) < 64:
        notes.append(f"only a {size[0]}x{size[1]} image fits: the count hardly shrinks with the image in {name} "
                     "(it tiles or upsamples small images), so prefer the model option or reducing tokens")
    option, option_count = _option_fit((width, height), name, budget, options)
    keep = budget / original.image_tokens
    notes.append(f"or keep the size and reduce {original.image_tokens} tokens to {budget} ({keep:.0%}) after encoding")
    return Fit(name, budget, original, size, resized, option, option_count, keep, notes)
