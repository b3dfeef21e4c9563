"""The model table: names and aliases -> (family rule, option overrides, LM preset).

The table lives in data files (``data/models-*.json``, one per group of families) so that adding a
checkpoint is a data change. Lookup: exact name or alias (case-insensitive, with or without the hub
organisation), then a match by the name's words that never crosses a variant changing the count
(``qwen2-vl-7b-instruct-awq`` is ``qwen2-vl-7b-instruct``, ``paligemma-448`` is ``paligemma-3b-pt-448``;
see :mod:`vistok.budget.names`), then a ``KeyError`` that lists close matches.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from vistok._registry import Registry
from vistok.budget.names import NameIndex

__all__ = ["ModelEntry", "load_rules", "model_table", "resolve_model", "list_models"]

_lock = threading.RLock()
_models: Registry[ModelEntry] | None = None  # built from the data files on first use
_table: dict[str, ModelEntry] | None = None
_index: NameIndex | None = None  # the table's names by their words, for names it does not hold verbatim
_aliases: dict[str, str] = {}  # every name and alias form (lower case, with and without organisation) -> table key


@dataclass(frozen=True)
class ModelEntry:
    """One checkpoint (or hosted model): which family rule counts it, with which options, on which LM."""

    name: str
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    lm: str | None = None
    aliases: tuple[str, ...] = ()
    config_source: str = ""
    notes: str = ""


def load_rules() -> None:
    """Import every module in :mod:`vistok.budget.rules` (each registers its family)."""
    from vistok.budget.core import _families

    _families.ensure_loaded()


def _key(name: str) -> str:
    return name.strip().lower()


def model_table() -> dict[str, ModelEntry]:
    """Every known model by canonical name (read once from ``data/models-*.json``)."""
    global _table
    if _table is not None:
        return _table
    with _lock:
        if _table is not None:
            return _table
        global _models
        models: Registry[ModelEntry] = Registry("model", normalize=_key)
        folder = resources.files("vistok.budget").joinpath("data")
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if not (item.name.startswith("models-") and item.name.endswith(".json")):
                continue
            for name, spec in json.loads(item.read_text()).items():
                if name.startswith("_"):
                    continue
                entry = ModelEntry(
                    name=name, family=spec["family"], options=spec.get("options", {}), lm=spec.get("lm"),
                    aliases=tuple(spec.get("aliases", ())), config_source=spec.get("config_source", ""),
                    notes=spec.get("notes", ""),
                )
                forms = tuple(form for alias in (name, *entry.aliases) for form in (alias, alias.rsplit("/", 1)[-1]))
                try:
                    models.add(name, entry, aliases=forms)
                except ValueError as exc:
                    raise ValueError(f"{item.name}: {exc}") from None
        table = {_key(name): entry for name, entry in models.entries().items()}
        _aliases.clear()
        _aliases.update({key: key for key in table})
        _aliases.update({form: _key(name) for form, name in models.aliases().items()})
        _models, _table = models, table
        return table


def resolve_model(name: str) -> ModelEntry:
    """The table entry for a model name, alias or hub id; a name the table does not hold verbatim resolves
    only when its words pick out entries that all count alike (:mod:`vistok.budget.names`), else ``KeyError``."""
    if not isinstance(name, str):
        raise TypeError(f"a model name is a string, got {type(name).__name__}")
    table = model_table()
    query = _key(name)
    for form in (query, query.rsplit("/", 1)[-1]):
        if form in _aliases:
            return table[_aliases[form]]
    return _match(query)


@functools.lru_cache(maxsize=1024)
def _match(query: str) -> ModelEntry:
    global _index
    if _index is None:
        _index = NameIndex(model_table().values())
    return _index.match(query, _aliases)


def list_models(pattern: str = "*") -> list[str]:
    """Canonical model names matching a shell-style pattern."""
    model_table()
    assert _models is not None
    return _models.list(pattern)
