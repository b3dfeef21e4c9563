"""Strict JSON for what vistok writes (``summary.json``, ``--json``): no ``Infinity`` or ``NaN`` tokens.

Python's ``json`` writes ``float("inf")`` as ``Infinity``, which is not JSON (RFC 8259, section 6) and which
strict readers (``jq``, JavaScript's ``JSON.parse``) reject. Here a non-finite float becomes ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: non-finite floats -> None, paths -> str, tuples/sets -> lists,
    dataclasses -> dicts, numpy scalars and arrays -> Python numbers and lists, mapping keys -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return json_safe(value.tolist())
    return str(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_safe` ``(value)``; ``allow_nan=False`` proves no ``Infinity`` slips out."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
