"""The model table: names and aliases -> (family rule, option overrides, LM preset).

The table lives in data files (``data/models-*.json``, one per group of families) so that adding a
checkpoint is a data change. Lookup follows tiktoken's ``encoding_for_model``: exact name or alias
(case-insensitive, with or without the hub organisation), then the longest known name that the query
starts with (so ``qwen2-vl-7b-instruct-awq`` finds ``qwen2-vl-7b-instruct``), then a ``KeyError`` that
lists close matches.
"""

from __future__ import annotations

import difflib
import importlib
import json
import pkgutil
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = ["ModelEntry", "load_rules", "model_table", "resolve_model", "list_models"]

_lock = threading.RLock()
_rules_loaded = False
_table: dict[str, ModelEntry] | None = None
_aliases: dict[str, str] = {}


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
    global _rules_loaded
    if _rules_loaded:
        return
    with _lock:
        if _rules_loaded:
            return
        import vistok.budget.rules as package

        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _rules_loaded = True


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
        table: dict[str, ModelEntry] = {}
        aliases: dict[str, str] = {}
        folder = resources.files("vistok.budget").joinpath("data")
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if not (item.name.startswith("models-") and item.name.endswith(".json")):
                continue
            for name, spec in json.loads(item.read_text()).items():
                if name.startswith("_"):
                    continue
                if _key(name) in table:
                    raise ValueError(f"model {name!r} is defined twice (second time in {item.name})")
                entry = ModelEntry(
                    name=name, family=spec["family"], options=spec.get("options", {}), lm=spec.get("lm"),
                    aliases=tuple(spec.get("aliases", ())), config_source=spec.get("config_source", ""),
                    notes=spec.get("notes", ""),
                )
                table[_key(name)] = entry
                for alias in (name, *entry.aliases):
                    for form in {_key(alias), _key(alias).rsplit("/", 1)[-1]}:
                        if aliases.get(form, _key(name)) != _key(name):
                            raise ValueError(f"alias {alias!r} points to both {aliases[form]!r} and {name!r}")
                        aliases[form] = _key(name)
        _aliases.clear()
        _aliases.update(aliases)
        _table = table
        return table


def resolve_model(name: str) -> ModelEntry:
    """The table entry for a model name, alias, hub id or a name that starts with a known one."""
    table = model_table()
    query = _key(name)
    for form in (query, query.rsplit("/", 1)[-1]):
        if form in _aliases:
            return table[_aliases[form]]
    prefixes = [a for form in {query, query.rsplit("/", 1)[-1]} for a in _aliases if form.startswith(a)]
    if prefixes:
        return table[_aliases[max(prefixes, key=len)]]
    close = difflib.get_close_matches(query.rsplit("/", 1)[-1], sorted(_aliases), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    raise KeyError(f"unknown model {name!r}{hint} (vistok.budget.list_models() lists them all; "
                   "pass family=... to count with a family rule directly)")


def list_models(pattern: str = "*") -> list[str]:
    """Canonical model names matching a shell-style pattern."""
    import fnmatch

    return sorted(e.name for e in model_table().values() if fnmatch.fnmatchcase(_key(e.name), _key(pattern)))
