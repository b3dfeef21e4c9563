"""Tokenizers measured side by side: the common hard-versus-soft table with numbers.

    from vistok.compare import compare
    result = compare(["cat.jpg"], ["grid", "patch", "focus-vit-s14"])
    result.write("report/")          # compare.md, compare.html (self-contained), compare.json, plots
    for verdict in result.claims():  # each claim of the seed, the measured numbers and whether it holds here
        print(verdict.aspect, verdict.verdict)

The command is ``vistok compare IMAGES --tokenizers ...``. Importing this package loads nothing heavy; the
names below import numpy and the measures on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vistok.compare.core import Comparison, Row, Settings, compare

__all__ = ["compare", "Comparison", "Row", "Settings", "DEFAULT_TOKENIZERS", "STAGES"]

#: What ``vistok compare`` measures when no ``--tokenizers`` are given: hard and soft, decoders and encoders, regions.
DEFAULT_TOKENIZERS = ("grid", "patch", "fsq-natural64", "focus-vit-s14", "efficientnet-lite0", "regions:text")
#: The stages of each tokenizer's measurement, one progress step each.
STAGES = ("load", "your images", "Fashion-MNIST k-NN", "regions and scenes")


def __getattr__(name: str) -> Any:
    if name in {"compare", "Comparison", "Row", "Settings"}:
        return getattr(importlib.import_module("vistok.compare.core"), name)
    raise AttributeError(f"module 'vistok.compare' has no attribute {name!r}")
