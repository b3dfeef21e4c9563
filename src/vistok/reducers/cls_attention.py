"""``cls-attention``: keep the K tokens the CLS token attends to most.

The [CLS] attention ranking behind EViT (Liang et al., "Not All Patches are What You Need", ICLR 2022),
the "dominant tokens" of VisionZip (Yang et al., 2024) and FasterVLM (Zhang et al., "[CLS] Attention is All
You Need for Training-Free Visual Token Pruning", 2024). Needs ``cls_attention`` ``(N,)`` (``vit`` and
``focus-vit-s14`` give it); kept tokens stay in their input order.
"""

from __future__ import annotations

from typing import Any

from vistok.reducers.core import Reduction, register_method, select, top_k

__all__ = ["cls_attention"]


@register_method("cls-attention", description="keep the top-K tokens by attention from CLS",
                 paper="Liang et al., EViT, ICLR 2022; Zhang et al., FasterVLM, 2024", needs=("cls_attention",))
def cls_attention(x: Any, k: int, sizes: Any, signals: dict[str, Any], seed: int) -> Reduction:
    scores = signals["cls_attention"]
    scores = scores.mean(dim=-1) if scores.ndim == 3 else scores  # (B, N, heads) -> mean over heads
    return select(sizes.shape[1], top_k(scores, k))
