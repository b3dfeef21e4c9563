"""Names -> tokenizers: a small searchable registry in the manner of timm's ``list_models`` and
tiktoken's ``get_encoding``. Built-in tokenizers register themselves when their module is imported; the
built-in modules are imported lazily, on the first lookup, so ``import vistok`` stays cheap.
"""

from __future__ import annotations

import difflib
import os
import fnmatch
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from vistok.tokenizers.base import Tokenizer

__all__ = ["TokenizerInfo", "register_tokenizer", "list_tokenizers", "tokenizer_info", "load"]

Kind = Literal["hard", "soft"]



@dataclass(frozen=True)
class TokenizerInfo:
    """What the registry knows about one tokenizer before anything is loaded."""

    name: str
    kind: Kind
    decodable: bool
    weights: str
    description: str
    config_class: type
    factory: Callable[..., Tokenizer]

    def config_fields(self) -> dict[str, Any]:
        """Config option names with their defaults."""
        return {f.name: f.default for f in fields(self.config_class)}


_registry: dict[str, TokenizerInfo] = {}
_lock = threading.RLock()
_builtins_loaded = False


def register_tokenizer(
    name: str, *, kind: Kind, decodable: bool, weights: str, description: str, config: type
) -> Callable[[Callable[..., Tokenizer]], Callable[..., Tokenizer]]:
    """Decorator for a factory ``f(**config) -> Tokenizer``; a name can be registered only once."""
    if kind not in ("hard", "soft"):
        raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}")

    def decorate(factory: Callable[..., Tokenizer]) -> Callable[..., Tokenizer]:
        with _lock:
            if name in _registry:
                raise ValueError(f"a tokenizer named {name!r} is already registered")
            _registry[name] = TokenizerInfo(name, kind, decodable, weights, description, config, factory)
        return factory

    return decorate


def import_modules(package: str, skip: tuple[str, ...] = ()) -> None:
    """Import every module of ``package`` (by name order) except ``skip``: each registers what it defines."""
    import pkgutil

    for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda m: m.name):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


def _ensure_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    with _lock:
        if not _builtins_loaded:
            # every module of vistok.tokenizers registers its tokenizers; `base` holds shared plumbing
            import_modules("vistok.tokenizers", skip=("base",))
            _builtins_loaded = True


def list_tokenizers(pattern: str = "*", kind: Kind | None = None) -> list[str]:
    """Sorted names matching a shell-style ``pattern`` (``"vit*"``), optionally only ``kind`` hard/soft."""
    _ensure_builtins()
    with _lock:
        return sorted(
            name for name, info in _registry.items()
            if fnmatch.fnmatchcase(name, pattern) and (kind is None or info.kind == kind)
        )


def tokenizer_info(name: str) -> TokenizerInfo:
    """The registry entry for ``name``; an unknown name raises ``KeyError`` listing close matches."""
    _ensure_builtins()
    with _lock:
        if name in _registry:
            return _registry[name]
        names = sorted(_registry)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
    raise KeyError(f"unknown tokenizer {name!r}; {hint}known: {', '.join(names)} (see vistok.list_tokenizers())")


def _path_loader(name: str) -> tuple[str, str] | None:
    """``(tokenizer, option)`` for a path that holds a model: a ``vistok train`` folder or file, or a diffusers
    AutoencoderKL folder."""
    if not os.path.exists(name):
        return None
    from vistok.tokenizers.learned import is_learned_model

    if is_learned_model(name):
        return "learned", "path"
    from vistok.tokenizers.sd_vae import is_vae_folder

    if is_vae_folder(name):
        return "sd-vae", "model"
    return None


def load(name: str | os.PathLike, **config: Any) -> Tokenizer:
    """Create the tokenizer ``name`` with config options, e.g. ``vistok.load("patch", dim=32)``. ``name`` may
    also be a path: a folder written by ``vistok train`` or a diffusers AutoencoderKL folder."""
    name = os.fspath(name)
    _ensure_builtins()
    with _lock:
        registered = name in _registry
    if not registered:
        base, colon, argument = name.partition(":")
        with _lock:
            info = _registry.get(base) if colon else None
        if info is not None and "detector" in info.config_fields():
            return load(base, detector=argument, **config)  # "regions:faces"
        found = _path_loader(name)
        if found is not None:
            return load(found[0], **{found[1]: name, **config})
        if os.path.exists(name):
            raise KeyError(f"{name!r} is a path, but holds neither a folder written by `vistok train` (with "
                           "model.safetensors) nor a diffusers AutoencoderKL folder (with config.json); pass one of "
                           "those, or a tokenizer name (see vistok.list_tokenizers())")
    info = tokenizer_info(name)
    known = info.config_fields()
    unknown = sorted(set(config) - set(known))
    if unknown and not getattr(info.config_class, "accepts_extra_options", False):
        raise TypeError(
            f"tokenizer {name!r} has no option {', '.join(map(repr, unknown))}; options: "
            + ", ".join(f"{k}={v!r}" for k, v in known.items())
        )
    return info.factory(**config)
