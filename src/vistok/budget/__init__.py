"""The visual-token budget: how many tokens an image becomes in a given VLM, what they cost, and how to
make an image fit a budget.

    >>> from vistok.budget import count
    >>> count((336, 336), model="llava-1.5-7b").image_tokens
    576
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from vistok.budget.core import TokenCount, check_size, get_family
from vistok.budget.models import list_models, resolve_model

__all__ = ["count", "cost", "fit", "list_models", "resolve_model", "lm_presets", "TokenCount", "Cost", "Fit",
           "LMConfig", "image_size_of"]


def image_size_of(image_or_size: Any) -> tuple[int, int]:
    """``(width, height)`` from a size pair, or from an image's header (never decoding it)."""
    if isinstance(image_or_size, Sequence) and not isinstance(image_or_size, (str, bytes, bytearray)):
        if len(image_or_size) != 2:
            raise ValueError(f"a size is (width, height), got {image_or_size!r}")
        return check_size(*image_or_size)
    from vistok.images import probe_size

    return check_size(*probe_size(image_or_size))


def count(image_or_size: Any, model: str | None = None, *, family: str | None = None, **options: Any) -> TokenCount:
    """Tokens an image becomes in ``model`` (a name, alias or hub id; see :func:`list_models`).

    ``image_or_size`` is ``(width, height)`` or anything :func:`vistok.probe_size` reads (only the header
    is read). ``options`` override the checkpoint's preprocessing options, e.g. ``max_pixels`` for Qwen
    or ``max_patches`` (max tiles) for InternVL. ``family=`` counts with a family rule directly, without a model entry.
    """
    if (model is None) == (family is None):
        raise TypeError("pass exactly one of model=... or family=...")
    width, height = image_size_of(image_or_size)
    if model is not None:
        entry = resolve_model(model)
        name, rule = entry.name, get_family(entry.family)
        merged = {**entry.options, **options}
    else:
        name, rule, merged = str(family), get_family(str(family)), options
    opts = rule.make_options(**merged)
    counted = rule.count(width, height, opts)
    return TokenCount(
        model=name, family=rule.name, image_size=(width, height), image_tokens=int(counted.image_tokens),
        total_positions=int(counted.total_positions), breakdown=dict(counted.breakdown),
        options={f.name: getattr(opts, f.name) for f in fields(opts)}, source=rule.source,
    )


from vistok.budget.cost import Cost, LMConfig, cost, lm_presets  # noqa: E402
from vistok.budget.fit import Fit, fit  # noqa: E402
