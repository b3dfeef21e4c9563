"""Tokenizers measured side by side: the seed's hard-versus-soft table with numbers.

    from vistok.compare import compare
    result = compare(["cat.jpg"], ["grid", "patch", "focus-vit-s14"])
    result.write("report/")          # compare.md, compare.html (self-contained), compare.json, plots
    for verdict in result.claims():  # each claim of the seed, the measured numbers and whether it holds here
        print(verdict.aspect, verdict.verdict)

The command is ``vistok compare IMAGES --tokenizers ...``.
"""

from __future__ import annotations

from vistok.compare.core import DEFAULT_TOKENIZERS, Comparison, Row, Settings, compare

__all__ = ["compare", "Comparison", "Row", "Settings", "DEFAULT_TOKENIZERS"]
