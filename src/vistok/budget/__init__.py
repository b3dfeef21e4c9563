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

from vistok.budget.core import Family, TokenCount, check_size, get_family
from vistok.budget.models import list_models, resolve_model

__all__ = ["count", "cost", "fit", "list_models", "resolve_model", "lm_presets", "TokenCount", "Cost", "Fit",
           "LMConfig", "image_size_of"]


def image_size_of(image_or_size: Any) -> tuple[int, int]:
    """``(width, height)`` from a size pair, or from an image's header (never decoding it)."""
    if type(image_or_size) is tuple and len(image_or_size) == 2:
        return check_size(*image_or_size)
    if isinstance(image_or_size, Sequence) and not isinstance(image_or_size, (str, bytes, bytearray)):
        if len(image_or_size) != 2:
            raise ValueError(f"a size is (width, height), got {image_or_size!r}")
        return check_size(*image_or_size)
    from vistok.images import probe_size

    return check_size(*probe_size(image_or_size, max_pixels=None))  # a header is read, nothing decoded


def count(image_or_size: Any, model: str | None = None, *, family: str | None = None, **options: Any) -> TokenCount:
    """Tokens an image becomes in ``model`` (a name, alias or hub id; see :func:`list_models`).

    ``image_or_size`` is ``(width, height)`` or anything :func:`vistok.probe_size` reads (only the header
    is read). ``options`` override the checkpoint's preprocessing options, e.g. ``max_pixels`` for Qwen
    or ``max_patches`` (max tiles) for InternVL. ``family=`` counts with a family rule directly, without a model entry.
    """
    if (model is None) == (family is None):
        raise TypeError("pass exactly one of model=... or family=...")
    width, height = image_size_of(image_or_size)
    name, rule, opts, chosen = _prepare(model, family, options)
    counted = rule.count(width, height, opts)
    return TokenCount(
        model=name, family=rule.name, image_size=(width, height), image_tokens=int(counted.image_tokens),
        total_positions=int(counted.total_positions), breakdown=dict(counted.breakdown), options=dict(chosen),
        source=rule.source,
    )


_prepared: dict[tuple[Any, ...], tuple[str, Family, Any, dict[str, Any]]] = {}


def _prepare(model: str | None, family: str | None, options: dict[str, Any]) -> tuple[str, Family, Any, dict[str, Any]]:
    """``(model name, family rule, options object, options as a dict)`` for a count, built and checked once per
    distinct ``(model, family, options)`` and then reused, so counting a folder resolves and validates once."""
    key: tuple[Any, ...] | None = (model, family)
    if options:
        try:
            key = (model, family, *sorted((k, type(v), v) for k, v in options.items()))
            hash(key)
        except TypeError:  # an unhashable option value: prepare it every time
            key = None
    if key is not None and key in _prepared:
        return _prepared[key]
    if model is not None:
        entry = resolve_model(model)
        name, rule = entry.name, get_family(entry.family)
        merged = {**entry.options, **options}
    else:
        name, rule, merged = str(family), get_family(str(family)), options
    opts = rule.make_options(**merged)
    prepared = (name, rule, opts, {f.name: getattr(opts, f.name) for f in fields(opts)})
    if key is not None:
        if len(_prepared) >= 4096:
            _prepared.clear()
        _prepared[key] = prepared
    return prepared

from vistok.budget.cost import Cost, LMConfig, cost, lm_presets  # noqa: E402
from vistok.budget.fit import Fit, fit  # noqa: E402
