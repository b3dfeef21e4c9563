"""``visionzip``: the tokens CLS attends to most, plus a few tokens that summarise the rest.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models" (arXiv 2412.04467,
CVPR 2025). Of the ``K`` outputs:

1. **Dominant tokens** (``K - C`` of them): the top tokens by attention from CLS (``cls_attention`` ``(N,)``;
   an ``(N, H)`` signal is averaged over heads, which ranks like the official code's sum over heads).
2. **Contextual tokens** (``C`` of them): the remaining ``R`` tokens, in input order, are split into ``C``
   targets at every ``max(1, R // C)``-th position from the first (the official code's uniform choice) and the
   others; each other token joins the target whose key is most similar (cosine of the keys, as the official
   code normalises them; ties go to the earlier target). Each contextual token is, as in the official code
   (``contextual_tokens = target_hidden + aggregated_hidden`` in dvlab-research/VisionZip), its target **plus**
   the mean of the tokens that joined it (size-weighted, so merged tokens count for the patches they hold; a
   target nobody joined stays as it is): with target ``[1, 0]`` and joined ``[0, 2]``, ``[0, 4]`` it is
   ``[1, 3]``. ``contextual_merge="mean"`` gives instead the size-weighted mean of the target and the joined
   tokens (``[0.33, 2]`` there), which stays on the scale of the tokens (vistok's earlier rule).

``contextual`` sets ``C``: a fraction of ``K`` (rounded half up; default ``10/64``, from the 64-token setting
for LLaVA-1.5, 54 dominant + 10 contextual; the official code's defaults, 191 + 30 with CLS counted among the
dominant, give a similar share) or an int count. ``contextual=0`` is plain top-K by CLS attention.
Provenance: a contextual token stands for its target and every token that joined it (``source`` and
``sizes`` count them all), whichever value rule is used. Keys come from ``vit``/``focus-vit-s14`` with
``keys=True``; without them the token vectors stand in for the
keys (the official code uses the keys of its selection layer, averaged over heads; a ``(N, d)`` keys signal
is used whole, since the head count is not part of it). Output order: the dominant tokens in input order,
then the contextual tokens in the order of their targets (which is input order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, top_k, unit_rows
from vistok.reducers.prumerge import _rows, _split_kept

if TYPE_CHECKING:
    import torch

__all__ = ["visionzip", "contextual_count", "PAPER_CONTEXTUAL"]

#: The default share of contextual tokens: 10 of 64 (54 dominant + 10 contextual, LLaVA-1.5 at 64 tokens).
PAPER_CONTEXTUAL = 10 / 64


def contextual_count(k: int, contextual: float | int) -> int:
    """How many of ``k`` outputs are contextual: an int is a count, a float a fraction (rounded half up)."""
    if isinstance(contextual, bool) or not isinstance(contextual, (int, float, np.integer, np.floating)):
        raise ValueError(f"visionzip: contextual must be a count (int) or a fraction (float), got {contextual!r}")
    if isinstance(contextual, (int, np.integer)):
        if not 0 <= contextual <= k:
            raise ValueError(f"visionzip: contextual={contextual} tokens does not fit in the {k} kept")
        return int(contextual)
    if not 0.0 <= contextual <= 1.0:
        raise ValueError(f"visionzip: a contextual fraction must lie in [0, 1], got {contextual!r}")
    return int(np.floor(k * contextual + 0.5))


@register_method(
    "visionzip", description="dominant tokens by CLS attention + contextual tokens merged into uniform targets "
                             "by key similarity",
    paper="Yang et al., VisionZip, CVPR 2025 (arXiv 2412.04467)", needs=("cls_attention",), uses=("keys",),
    merges=True, keeps_order=False, averages=False, options=("contextual", "contextual_merge"),
)
def visionzip(x: torch.Tensor, k: int, sizes: torch.Tensor, signals: dict[str, Any], seed: int,
              contextual: float | int = PAPER_CONTEXTUAL, contextual_merge: str = "add") -> Reduction:
    """``contextual_merge``: ``"add"`` (default, the official code: target + mean of the joined tokens) or
    ``"mean"`` (the size-weighted mean of the target and the joined tokens)."""
    import torch

    if contextual_merge not in ("add", "mean"):
        raise ValueError(f"visionzip: contextual_merge must be 'add' (target + mean of the joined tokens, the "
                         f"official code) or 'mean' (mean of target and joined), got {contextual_merge!r}")
    b, n, d = x.shape
    c = contextual_count(k, contextual)
    scores = signals["cls_attention"]
    scores = scores.mean(dim=-1) if scores.ndim == 3 else scores
    dominant_mask = torch.zeros(b, n, dtype=torch.bool, device=x.device).scatter_(1, top_k(scores, k - c), True)
    dominant, rest = _split_kept(dominant_mask)  # ascending; rest: the remaining tokens in input order
    assign = torch.full((b, n), -1, dtype=torch.int64, device=x.device)
    assign.scatter_(1, dominant, torch.arange(k - c, device=x.device).expand_as(dominant))
    if c == 0:
        return Reduction(assign, values=_rows(x, dominant))
    r = rest.shape[1]
    is_target = torch.zeros(r, dtype=torch.bool, device=x.device)
    is_target[torch.arange(0, r, max(1, r // c), device=x.device)[:c]] = True
    targets, others = rest[:, is_target], rest[:, ~is_target]
    assign.scatter_(1, targets, (k - c + torch.arange(c, device=x.device)).expand_as(targets))
    group = torch.zeros(b, 0, dtype=torch.int64, device=x.device)
    if others.shape[1]:
        metric = signals.get("keys", x)
        similarity = unit_rows(_rows(metric, others) if metric.ndim == 3 else metric.gather(1, others)) @ \
            unit_rows(_rows(metric, targets) if metric.ndim == 3 else metric.gather(1, targets)).transpose(-1, -2)
        group = torch.argmax(similarity, dim=-1)  # (B, R - C): the most similar target, ties to the earlier
        assign.scatter_(1, others, k - c + group)
    return Reduction(assign, values=torch.cat([_rows(x, dominant), _contextual_values(
        x, sizes, targets, others, group, contextual_merge)], dim=1))


def _contextual_values(x: torch.Tensor, sizes: torch.Tensor, targets: torch.Tensor, others: torch.Tensor,
                       group: torch.Tensor, rule: str) -> torch.Tensor:
    """``(B, C, D)`` contextual tokens: target + size-weighted mean of the tokens that joined it (``"add"``), or
    the size-weighted mean of target and joined (``"mean"``); ``group`` ``(B, R - C)`` the target each of
    ``others`` joined."""
    import torch

    b, c = targets.shape
    d = x.shape[-1]
    w = sizes.gather(1, others)
    flat = (group + torch.arange(b, device=x.device)[:, None] * c).view(-1)
    sums = torch.zeros(b * c, d, dtype=x.dtype, device=x.device).index_add_(
        0, flat, (_rows(x, others) * w[..., None]).view(-1, d)).view(b, c, d)
    weight = torch.zeros(b * c, dtype=x.dtype, device=x.device).index_add_(0, flat, w.reshape(-1)).view(b, c)
    target = _rows(x, targets)
    if rule == "add":
        return target + sums / torch.where(weight > 0, weight, 1)[..., None]  # nobody joined: the target as it is
    own = sizes.gather(1, targets)
    return (sums + target * own[..., None]) / (weight + own)[..., None]
