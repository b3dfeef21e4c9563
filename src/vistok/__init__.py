"""vistok: turn images into the tokens vision and multimodal models consume.

This module is the public API::

    import vistok
    tok = vistok.load("grid")                  # a tokenizer by name
    tokens = tok.encode("cat.jpg")             # -> vistok.Tokens
    vistok.list_tokenizers("p*", kind="soft")  # search the registry
    vistok.count("cat.jpg", model="qwen2-vl-7b")  # what the image costs in a VLM (header only)
    vistok.reduce(tokens, "tome", ratio=0.25)  # shrink the tokens, provenance kept
"""

from vistok.budget import cost, count, fit
from vistok.images import ImageError, open_image, probe_size
from vistok.reducers import list_methods as reduce_methods
from vistok.reducers import reduce
from vistok.registry import list_tokenizers, load, tokenizer_info
from vistok.tokens import Tokens, load_tokens, save_tokens

__version__ = "0.1.0"

__all__ = [
    "ImageError",
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
