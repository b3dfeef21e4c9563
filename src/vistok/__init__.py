"""vistok: turn images into the tokens vision and multimodal models consume.

This module is the public API::

    import vistok
    tok = vistok.load("grid")                  # a tokenizer by name
    tokens = tok.encode("cat.jpg")             # -> vistok.Tokens
    vistok.list_tokenizers("p*", kind="soft")  # search the registry
    vistok.count("cat.jpg", model="qwen2-vl-7b")  # what the image costs in a VLM (header only)
    vistok.reduce(tokens, "tome", ratio=0.25)  # shrink the tokens, provenance kept
    vistok.vlm.patch(model, "visionzip", keep=64)  # a transformers VLM feeds its LM 64 tokens per image
    vistok.open_dataset("tokens/")             # a whole dataset tokenized by `vistok tokenize-dataset`
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vistok.budget import cost, count, fit
    from vistok.datasets import open_dataset, tokenize_dataset
    from vistok.images import ImageError, open_image, probe_size
    from vistok.reducers import list_methods as reduce_methods
    from vistok.reducers import reduce
    from vistok.registry import list_tokenizers, load, tokenizer_info
    from vistok.tokens import Tokens, load_tokens, save_tokens

# Public name -> (module, attribute), imported on first use (PEP 562) so that `import vistok` and the
# `vistok` command start without loading numpy, Pillow or torch.
_LAZY = {
    "cost": ("vistok.budget", "cost"), "count": ("vistok.budget", "count"), "fit": ("vistok.budget", "fit"),
    "ImageError": ("vistok.images", "ImageError"), "open_image": ("vistok.images", "open_image"),
    "probe_size": ("vistok.images", "probe_size"),
    "reduce_methods": ("vistok.reducers", "list_methods"), "reduce": ("vistok.reducers", "reduce"),
    "list_tokenizers": ("vistok.registry", "list_tokenizers"), "load": ("vistok.registry", "load"),
    "tokenizer_info": ("vistok.registry", "tokenizer_info"),
    "Tokens": ("vistok.tokens", "Tokens"), "load_tokens": ("vistok.tokens", "load_tokens"),
    "save_tokens": ("vistok.tokens", "save_tokens"),
    "open_dataset": ("vistok.datasets", "open_dataset"), "tokenize_dataset": ("vistok.datasets", "tokenize_dataset"),
}


#: Subpackages reachable as attributes without importing them first (they load torch).
_SUBMODULES = {"vlm", "align", "datasets", "compare", "serve"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"vistok.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'vistok' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


__version__ = "0.2.0.dev0"

__all__ = [
    "ImageError",
    "open_dataset",
    "tokenize_dataset",
    "cost",
    "count",
    "fit",
    "Tokens",
    "list_tokenizers",
    "load",
    "load_tokens",
    "open_image",
    "probe_size",
    "reduce",
    "reduce_methods",
    "save_tokens",
    "tokenizer_info",
]
