"""One registry class for every "name -> entry" table in vistok: tokenizers, reduction methods, VLM budget
families and models, region detectors, path handlers.

A :class:`Registry` maps names to entries. It is thread-safe; it imports its built-in modules lazily, on the
first lookup (each module registers what it defines, so ``import vistok`` stays cheap); a duplicate name is an
error; ``list(pattern, **filters)`` searches with shell-style wildcards (timm's ``list_models``); an unknown
name raises ``KeyError`` naming the close matches (tiktoken's ``get_encoding``). Optional aliases and a key
normaliser (case-insensitive names) serve the VLM model table.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "import_modules"]

T = TypeVar("T")


def import_modules(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every module of ``package`` (by name order) except ``skip``: each registers what it defines."""
    for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda m: m.name):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


def _same(key: str) -> str:
    return key


class Registry(Generic[T]):
    """Names -> entries of one kind (``what``, e.g. ``"tokenizer"``, used in messages).

    package / skip: the modules of ``package`` (all but ``skip``) are imported on the first lookup.
    hint: appended to the unknown-name error, e.g. ``"(see vistok.list_tokenizers())"``.
    normalize: maps a name to its key (``str.lower`` for case-insensitive names); the entry keeps its name.
    """

    def __init__(self, what: str, *, package: str | None = None, skip: tuple[str, ...] = (), hint: str = "",
                 normalize: Callable[[str], str] = _same) -> None:
        self.what = what
        self._package, self._skip, self._hint = package, skip, hint
        self._normalize = normalize
        self._entries: dict[str, T] = {}
        self._names: dict[str, str] = {}  # key -> the name as registered
        self._aliases: dict[str, str] = {}  # alias key -> entry key
        self._lock = threading.RLock()  # guards the tables
        self._load_lock = threading.RLock()  # held while importing: a module importing itself elsewhere can still add
        self._loaded = package is None
        self._loading = False

    # -- registering -------------------------------------------------------------------------------
    def add(self, name: str, entry: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``entry`` under ``name`` (and ``aliases``); a name or alias already taken is a
        ``ValueError``. Returns ``entry``."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")
        key = self._normalize(name)
        forms = {self._normalize(a): a for a in aliases if self._normalize(a) != key}
        with self._lock:
            if key in self._entries or key in self._aliases:
                raise ValueError(f"a {self.what} named {name!r} is already registered")
            taken = [a for form, a in forms.items() if form in self._entries or form in self._aliases]
            if taken:
                other = self._names[self._aliases.get(self._normalize(taken[0]), self._normalize(taken[0]))]
                raise ValueError(f"{self.what} alias {taken[0]!r} of {name!r} already names {other!r}")
            self._entries[key] = entry
            self._names[key] = name
            for form in forms:
                self._aliases[form] = key
        return entry

    def remove(self, name: str) -> T:
        """Unregister ``name`` (and its aliases) and return its entry; ``KeyError`` if it is not registered."""
        key = self._normalize(name)
        with self._lock:
            if key not in self._entries:
                raise KeyError(self.unknown(name))
            self._aliases = {a: k for a, k in self._aliases.items() if k != key}
            del self._names[key]
            return self._entries.pop(key)

    def decorator(self, name: str, make: Callable[[Any], T]) -> Callable[[Any], Any]:
        """A decorator that registers ``make(obj)`` under ``name`` and returns ``obj`` unchanged."""

        def decorate(obj: Any) -> Any:
            self.add(name, make(obj))
            return obj

        return decorate

    # -- looking up --------------------------------------------------------------------------------
    def ensure_loaded(self) -> None:
        """Import the built-in modules once per process (later calls cost nothing)."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded or self._loading:  # _loading: a module being imported looks something up
                return
            self._loading = True
            try:
                import_modules(self._package, self._skip)  # type: ignore[arg-type]
                self._loaded = True
            finally:
                self._loading = False

    def find(self, name: str) -> T | None:
        """The entry for ``name`` or one of its aliases, else None (no error)."""
        if not self._loaded:
            self.ensure_loaded()
        key = self._normalize(name)
        # no lock: writers replace or extend the dicts under the lock, and one dict read is atomic
        return self._entries.get(self._aliases.get(key, key))

    def get(self, name: str) -> T:
        """The entry for ``name`` (or an alias); an unknown name raises ``KeyError`` listing close matches."""
        entry = self.find(name)
        if entry is None:
            raise KeyError(self.unknown(name))
        return entry

    def unknown(self, name: str, known: list[str] | None = None) -> str:
        """The message for an unknown ``name``: close matches (names and aliases), then what is known."""
        with self._lock:
            names = sorted(self._names.values()) if known is None else known
            candidates = [*self._names.values(), *self._aliases]
        close = difflib.get_close_matches(self._normalize(name), sorted(set(candidates)), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        tail = f" {self._hint}" if self._hint else ""
        return f"unknown {self.what} {name!r}; {hint}known: {', '.join(names)}{tail}"

    def list(self, pattern: str = "*", **filters: Any) -> list[str]:
        """Sorted names matching the shell-style ``pattern`` whose entries have every attribute in ``filters``
        equal to the given value (a filter of None matches everything): ``list("vit*", kind="soft")``."""
        self.ensure_loaded()
        wanted = {k: v for k, v in filters.items() if v is not None}
        pattern = self._normalize(pattern)
        with self._lock:
            items = list(self._entries.items())
        for k in wanted:
            if any(not hasattr(entry, k) for _, entry in items):
                raise TypeError(f"{self.what}s cannot be filtered by {k!r}")
        return sorted(
            self._names[key] for key, entry in items
            if fnmatch.fnmatchcase(key, pattern) and all(getattr(entry, k) == v for k, v in wanted.items())
        )

    def entries(self) -> dict[str, T]:
        """A copy of ``name -> entry`` in registration order."""
        self.ensure_loaded()
        with self._lock:
            return {self._names[k]: e for k, e in self._entries.items()}

    def aliases(self) -> dict[str, str]:
        """A copy of ``alias key -> registered name``."""
        self.ensure_loaded()
        with self._lock:
            return {a: self._names[k] for a, k in self._aliases.items()}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def __len__(self) -> int:
        return len(self.entries())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {len(self._entries)} entries{'' if self._loaded else ', not loaded'})"
