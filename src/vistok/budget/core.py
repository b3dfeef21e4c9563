"""What a model makes of one image: the :class:`TokenCount` every family rule returns, and the
registry of family rules that the model table (``data/models-*.json``) points into."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

from vistok._options import check_options
from vistok._registry import Registry

__all__ = ["TokenCount", "Counted", "Family", "register_family", "get_family", "all_families", "check_size", "ceil_div"]


@dataclass(frozen=True)
class TokenCount:
    """Tokens one image becomes in one model.

    image_tokens: the placeholder tokens the model's processor puts in the text for this image, i.e. the
        positions filled with image features (for cross-attention models such as Llama 3.2 Vision, the
        single ``<|image|>`` token; the vision states go to ``breakdown['cross_attention_states']``).
    total_positions: every sequence position the image occupies, wrapper tokens included (image start/end,
        row breaks, tile separators, newline tokens...).
    breakdown: how the count arises: resized size, tiles and their grid, patches, merges, newline/break
        tokens, thumbnail, wrappers, whether a CLS token is counted. Keys are documented per family.
    source: the file or document the rule follows.
    """

    model: str
    family: str
    image_size: tuple[int, int]
    image_tokens: int
    total_positions: int
    breakdown: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def __int__(self) -> int:
        return self.image_tokens

    @property
    def wrapper_tokens(self) -> int:
        """Positions that are not image features (total minus placeholders)."""
        return self.total_positions - self.image_tokens


class Counted(NamedTuple):
    """What a family rule returns; :func:`vistok.budget.count` adds model name, options and source."""

    image_tokens: int
    total_positions: int
    breakdown: dict[str, Any]


@dataclass(frozen=True)
class Family:
    """One preprocessing rule shared by a family of checkpoints, with its option dataclass."""

    name: str
    options: type
    count: Callable[[int, int, Any], Counted]
    source: str
    proof: str  # "processor" (tested against the HF processor) or "documentation" (worked examples)

    def make_options(self, **overrides: Any) -> Any:
        known = {f.name for f in fields(self.options)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            defaults = ", ".join(f"{f.name}={f.default!r}" for f in fields(self.options))
            raise TypeError(f"{self.name} has no option {', '.join(map(repr, unknown))}; options: {defaults}")
        check_options(self.name, self.options, overrides)
        return replace(self.options(), **overrides)


_families: Registry[Family] = Registry("budget family", package="vistok.budget.rules",
                                      hint="(or count with model=...: vistok.budget.list_models())")


def register_family(name: str, *, options: type, source: str, proof: str) -> Callable[[Callable], Callable]:
    """Decorator for ``rule(width, height, options) -> Counted``. ``source`` cites the preprocessing file or
    document the rule follows; ``proof`` says what the tests compare it with."""
    if proof not in ("processor", "documentation"):
        raise ValueError(f"proof must be 'processor' or 'documentation', got {proof!r}")

    return _families.decorator(name, lambda rule: Family(name, options, rule, source, proof))


def get_family(name: str) -> Family:
    """The family rule ``name``; an unknown name raises ``KeyError`` listing close matches."""
    return _families.get(name)


def all_families() -> dict[str, Family]:
    """Every family rule by name (the rule modules are imported on first use)."""
    return _families.entries()


def check_size(width: Any, height: Any, limit: int = 1_000_000) -> tuple[int, int]:
    """Validate an image size: positive integers no larger than ``limit`` per side (ValueError otherwise)."""
    if type(width) is int and type(height) is int and 0 < width <= limit and 0 < height <= limit:
        return width, height
    for label, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) and not (
            isinstance(value, float) and value.is_integer()
        ):
            raise ValueError(f"image {label} must be a whole number of pixels, got {value!r}")
        if value <= 0:
            raise ValueError(f"image {label} must be positive, got {value!r}")
        if value > limit:
            raise ValueError(f"image {label} {value!r} is absurd (more than {limit:,} pixels per side)")
    return int(width), int(height)


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of a / b for positive integers."""
    return -(-a // b)

