"""Names -> tokenizers: a small searchable registry in the manner of timm's ``list_models`` and
tiktoken's ``get_encoding``. Built-in tokenizers register themselves when their module is imported; the
built-in modules are imported lazily, on the first lookup, so ``import vistok`` stays cheap.

What a tokenizer can do is declared when it registers (:class:`TokenizerInfo`: ``countable``, ``argument``,
``preprocessing``, ``zero_shot``, ``learned``, fixed settings), so callers read fields instead of probing
objects. Tokenizers that load from a path register a :class:`PathHandler`; this module imports no tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from vistok._options import check_options
from vistok._registry import Registry, import_modules

if TYPE_CHECKING:
    from vistok.tokenizers.base import Tokenizer

__all__ = ["TokenizerInfo", "PathHandler", "Registry", "register_tokenizer", "register_path_handler",
           "list_tokenizers", "tokenizer_info", "load", "import_modules"]

Kind = Literal["hard", "soft"]


def _fixed_settings(config_class: type) -> dict[str, Any]:
    """``ClassVar`` constants a config class declares: settings its tokenizer name pins (not options)."""
    out: dict[str, Any] = {}
    for klass in reversed(config_class.__mro__):
        for key, annotation in vars(klass).get("__annotations__", {}).items():
            if str(annotation).replace("typing.", "").startswith("ClassVar"):
                out[key] = getattr(config_class, key)
            else:
                out.pop(key, None)
    return out


@dataclass(frozen=True)
class TokenizerInfo:
    """What the registry knows about one tokenizer before anything is loaded.

    countable: ``count(w, h)`` gives ``len(encode(image))`` without weights (False for ``regions``, whose count
    depends on what is found). argument: the option that ``"name:value"`` sets (``regions:faces`` ->
    ``detector="faces"``). extra_options: options not in the config go to the tokenizer anyway (``regions``
    passes them to its detector). preprocessing: instances have ``preprocess_config``, a
    :class:`vistok.preprocess.Preprocess` (resize, centre crop, normalisation). zero_shot: instances have
    ``zero_shot(image, labels, template=...)``. learned: a model trained by ``vistok train`` (what
    ``vistok evaluate`` measures).
    """

    name: str
    kind: Kind
    decodable: bool
    weights: str
    description: str
    config_class: type
    factory: Callable[..., Tokenizer]
    countable: bool = True
    argument: str | None = None
    extra_options: bool = False
    preprocessing: bool = False
    zero_shot: bool = False
    learned: bool = False

    def config_fields(self) -> dict[str, Any]:
        """Config option names with their defaults."""
        return {f.name: f.default for f in fields(self.config_class)}

    @property
    def fixed(self) -> dict[str, Any]:
        """Settings this name pins, declared as ``ClassVar`` constants of its config (``focus-vit-s14`` fixes
        ``model``; ``vit`` fixes ``backend="torch"``); they are not options."""
        return _fixed_settings(self.config_class)


@dataclass(frozen=True)
class PathHandler:
    """How ``vistok.load(path)`` opens a path: when ``accepts(path)``, it loads ``tokenizer`` with
    ``option=path``. ``holds`` says what such a path holds, for the error when no handler accepts one."""

    tokenizer: str
    option: str
    accepts: Callable[[str], bool]
    holds: str


_tokenizers: Registry[TokenizerInfo] = Registry(
    "tokenizer", package="vistok.tokenizers", skip=("base",), hint="(see vistok.list_tokenizers())")
_paths: Registry[PathHandler] = Registry("path handler")  # filled by the tokenizer modules


def register_tokenizer(
    name: str, *, kind: Kind, decodable: bool, weights: str, description: str, config: type,
    countable: bool = True, argument: str | None = None, extra_options: bool = False, preprocessing: bool = False,
    zero_shot: bool = False, learned: bool = False,
) -> Callable[[Callable[..., Tokenizer]], Callable[..., Tokenizer]]:
    """Decorator for a factory ``f(**config) -> Tokenizer``; a name can be registered only once. The keyword
    flags declare capabilities (see :class:`TokenizerInfo`)."""
    if kind not in ("hard", "soft"):
        raise ValueError(f"kind must be 'hard' or 'soft', got {kind!r}")
    if argument is not None and argument not in {f.name for f in fields(config)}:
        raise ValueError(f"argument {argument!r} of tokenizer {name!r} is not an option of {config.__name__}")
    return _tokenizers.decorator(name, lambda factory: TokenizerInfo(
        name, kind, decodable, weights, description, config, factory, countable=countable, argument=argument,
        extra_options=extra_options, preprocessing=preprocessing, zero_shot=zero_shot, learned=learned))


def register_path_handler(tokenizer: str, *, option: str, accepts: Callable[[str], bool], holds: str) -> None:
    """Let ``vistok.load(path)`` open paths that ``accepts`` recognises with ``load(tokenizer, option=path)``.
    Handlers are asked in tokenizer-name order, whatever order their modules were imported in."""
    _paths.add(tokenizer, PathHandler(tokenizer, option, accepts, holds))


def list_tokenizers(pattern: str = "*", kind: Kind | None = None, **capabilities: Any) -> list[str]:
    """Sorted names matching a shell-style ``pattern`` (``"vit*"``), optionally only ``kind`` hard/soft and
    declared capabilities (``decodable=True``, ``countable=False``...)."""
    return _tokenizers.list(pattern, kind=kind, **capabilities)


def tokenizer_info(name: str) -> TokenizerInfo:
    """The registry entry for ``name``; an unknown name raises ``KeyError`` listing close matches."""
    return _tokenizers.get(name)


def _from_path(path: str) -> tuple[str, dict[str, str]] | None:
    """``(tokenizer, {option: path})`` from the first registered handler that accepts ``path``; a path that
    exists but none accepts is a ``KeyError`` naming what each handler would have taken."""
    if not os.path.exists(path):
        return None
    _tokenizers.ensure_loaded()  # the tokenizer modules register the handlers
    handlers = sorted(_paths.entries().values(), key=lambda h: h.tokenizer)
    for handler in handlers:
        if handler.accepts(path):
            return handler.tokenizer, {handler.option: path}
    holds = [h.holds for h in handlers]
    what = f"neither {holds[0]} nor {holds[1]}" if len(holds) == 2 else "none of: " + "; ".join(holds)
    raise KeyError(f"{path!r} is a path, but holds {what}; pass one of those, or a tokenizer name "
                   "(see vistok.list_tokenizers())")


def load(name: str | os.PathLike, **config: Any) -> Tokenizer:
    """Create the tokenizer ``name`` with config options, e.g. ``vistok.load("patch", dim=32)``. ``name`` may
    be ``"name:value"`` for a tokenizer that declares an ``argument`` (``"regions:faces"``), or a path that a
    registered handler opens (a folder written by ``vistok train``, a diffusers AutoencoderKL folder)."""
    name = os.fspath(name)
    info = _tokenizers.find(name)
    if info is None:
        base, colon, value = name.partition(":")
        base_info = _tokenizers.find(base) if colon else None
        if base_info is not None and base_info.argument is not None:
            if base_info.argument in config:
                raise TypeError(f"{name!r} already sets {base_info.argument}; pass it once")
            return load(base, **{base_info.argument: value}, **config)
        found = _from_path(name)
        if found is not None:
            return load(found[0], **{**found[1], **config})
        if base_info is not None:
            takes = [n for n, i in _tokenizers.entries().items() if i.argument is not None]
            raise KeyError(f"tokenizer {base!r} takes no ':{value}' argument; only {', '.join(sorted(takes))} "
                           "do (e.g. 'regions:faces')")
        info = tokenizer_info(name)
    _check_options(info, config)
    return info.factory(**config)


def _check_options(info: TokenizerInfo, config: dict[str, Any]) -> None:
    """``TypeError`` for an option the tokenizer does not have (or a setting its name fixes)."""
    known = info.config_fields()
    pinned = sorted(set(config) & set(info.fixed))
    if pinned:
        raise TypeError(f"tokenizer {info.name!r} fixes {', '.join(f'{k}={info.fixed[k]!r}' for k in pinned)}; "
                        f"it is not an option (options: {', '.join(known)})")
    unknown = sorted(set(config) - set(known))
    if unknown and not info.extra_options:
        raise TypeError(
            f"tokenizer {info.name!r} has no option {', '.join(map(repr, unknown))}; options: "
            + ", ".join(f"{k}={v!r}" for k, v in known.items())
        )
    check_options(f"tokenizer {info.name!r}", info.config_class, config)
