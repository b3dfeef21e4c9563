"""Options typed by their dataclass fields: check a value against its field's type, or read one from text.

Tokenizer configs and budget-rule options are dataclasses; their field annotations say what each option
takes. :func:`check_options` gives one clear ``TypeError`` for a value of the wrong type (instead of a
``'<' not supported`` from deep inside), and :func:`from_text` reads ``KEY=VALUE`` text (the CLI's ``-c``)
as the type the field declares, so ``-c model=123`` stays the text ``"123"`` for a ``str`` field.
"""

from __future__ import annotations

import numbers
import os
import types
import typing
from typing import Any, Union

_NONE_WORDS = ("none", "null")
_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def field_types(cls: type) -> dict[str, Any]:
    """Each dataclass field's resolved annotation (``ClassVar`` constants left out); {} when unresolvable."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 -- an annotation we cannot resolve is simply not checked
        return {}
    return {name: hint for name, hint in hints.items() if typing.get_origin(hint) is not typing.ClassVar}


def _members(hint: Any) -> tuple[Any, ...]:
    """``int | None`` -> ``(int, NoneType)``; ``int`` -> ``(int,)``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; None when the hint is not one this module understands."""
    origin = typing.get_origin(hint) or hint
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is bool:
        return isinstance(value, (bool, numbers.Integral)) and value in (0, 1)
    if origin is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is str:
        return isinstance(value, (str, os.PathLike))
    if origin in (tuple, list):
        return isinstance(value, (tuple, list))
    if origin is dict:
        return isinstance(value, dict)
    return None


_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "none",
          tuple: "a tuple", list: "a list", dict: "a mapping"}


def describe(hint: Any) -> str:
    """``int | None`` -> ``"an integer or none"``."""
    words = [_WORDS.get(typing.get_origin(m) or m, getattr(m, "__name__", str(m))) for m in _members(hint)]
    return " or ".join(dict.fromkeys(words))


def check_options(owner: str, cls: type, values: dict[str, Any]) -> None:
    """``TypeError`` naming the option, the value given and the type expected, for the first value in
    ``values`` that does not fit its field of the dataclass ``cls``; unknown names and types pass."""
    hints = field_types(cls)
    for name, value in values.items():
        if name not in hints:
            continue
        fits = [_matches(value, member) for member in _members(hints[name])]
        if any(fits) or None in fits:
            continue
        raise TypeError(f"{owner}: option {name} takes {describe(hints[name])}, got {value!r}")


def from_text(raw: str, hint: Any = None) -> Any:
    """``KEY=VALUE`` text as the value the field type ``hint`` takes: ``"none"`` -> None where allowed,
    ``"true"`` -> True, ``"12"`` -> 12, ``"0.5"`` -> 0.5, else the text. Without a hint (or for a type this
    module does not know), the first of None, bool, int, float that reads the text, else the text. Text that
    fits no member of ``hint`` is returned as it is, for :func:`check_options` to report."""
    members = _members(hint) if hint is not None else (type(None), bool, int, float, str)
    lowered = raw.strip().lower()
    known = [m for m in members if _matches(None, m) is not None or m is Any]
    if len(known) < len(members) or Any in members:  # a type we cannot read text for: guess
        members = (type(None), bool, int, float, str)
    order = {type(None): 0, bool: 1, int: 2, float: 3, str: 5}  # text last: "none" and "12" read as such
    for member in sorted(members, key=lambda m: order.get(typing.get_origin(m) or m, 4)):
        origin = typing.get_origin(member) or member
        if origin is type(None) and lowered in _NONE_WORDS:
            return None
        if origin is bool and lowered in _BOOL_WORDS and (lowered in ("true", "false") or hint is not None):
            return _BOOL_WORDS[lowered]
        if origin is int:
            try:
                return int(raw)
            except ValueError:
                pass
        if origin is float:
            try:
                return float(raw)
            except ValueError:
                pass
        if origin is str:
            return raw
    return raw
