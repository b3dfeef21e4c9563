"""``prumerge`` and ``prumerge+``: keep the tokens CLS attends to unusually much, and fold their
key-neighbours into them.

Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models" (arXiv
2403.15388, ICCV 2025).

1. **Prune.** Attention from CLS ``a`` (``cls_attention`` ``(N,)``; ``(N, H)`` is averaged over heads) is
   sparse, and the tokens worth keeping are its outliers by the interquartile-range rule:
   ``a > Q3 + 1.5 * (Q3 - Q1)`` (quartiles with linear interpolation, as ``np.percentile``). Their count ``m``
   adapts to the image. **PruMerge+** adds spatially uniform tokens, as its official code does
   (``token_prune_merge_advanced_plus`` in 42Shawn/LLaVA-PruMerge): every ``max(1, (N // m) // 3)``-th index of
   ``arange(0, N - 1)`` (the official code samples ``arange(0, 575, step)`` for its 576 patches, so the last
   patch is never a sample), which is about three uniform tokens per outlier.
2. **Merge** (``merge="official"``, the default, as the official code's inference path). Each kept token
   ``p`` takes its ``neighbours`` (default 32, the official ``k``) most key-similar other tokens, kept or
   pruned (cosine of the keys, as the official code normalises them; ties: the earlier token), and becomes
   ``y'_p = y_p + sum_j a_j y_j`` over them, with ``a`` the CLS attention as given (the official code uses the
   softmax row, unnormalised). One more token is appended after the kept ones: the attention-weighted sum of
   every pruned token, ``sum_{j pruned} a_j y_j`` (the official ``extra_one_token``, in both PruMerge and
   PruMerge+). Provenance: each kept token stands for itself and the extra token for all pruned tokens (its
   sum runs over exactly them); the neighbours a kept token absorbs are not recorded, since they may be
   kept tokens or feed several outputs.

   ``merge="partition"`` (vistok's earlier rule, so that every input maps to one output): neighbours are
   searched among the pruned tokens only; a pruned token chosen by several kept tokens joins the most similar
   of them (ties: the earlier), one chosen by none is dropped; ``a`` is normalised to sum to 1 and the update
   is divided by its total weight, ``y'_p = (y_p + sum_j a_j y_j) / (1 + sum_j a_j)``, so outputs stay on the
   scale of the tokens; there is no extra token.

**Keep count.** With ``keep=``/``ratio=`` the output count is exact (``K``), the extra token included in the
default merge (so ``K - 1`` tokens are kept): ``prumerge`` keeps the top ones by CLS attention (all the IQR
outliers and the next-highest tokens when there is room for them, the top outliers otherwise);
``prumerge+`` keeps the outliers (the top ones if there are too many) and fills the rest with tokens evenly
spaced in reading order over the tokens that are not outliers. With ``adaptive=True`` (and no keep/ratio)
the IQR rule sets the count, as in the paper (at least one token: the top one, when no token is an outlier),
plus the extra token when any token was pruned.

Cosines are computed in float32 (float64 for float64 tokens). Batched: with ``keep``/``ratio`` every image of a
batch keeps the same count; ``adaptive=True`` takes one image at a time. Keys come from ``vit``/``focus-vit-s14`` with ``keys=True``; without them
the token vectors stand in. Outputs are ordered by the input position of their kept token (the official code
orders them by attention), the extra token last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, top_k, unit_rows
from vistok.reducers.divprune import _as_batch

if TYPE_CHECKING:
    import torch

__all__ = ["prumerge", "prumerge_plus", "iqr_outliers", "uniform_samples", "NEIGHBOURS"]

#: The official code's neighbour count for each kept token (its inference path; its training path uses 16).
NEIGHBOURS = 32
MERGES = ("official", "partition")


def _quantile(sorted_scores: torch.Tensor, q: float) -> torch.Tensor:
    """``(B,)`` the ``q`` quantile of each sorted row, linear interpolation computed as ``np.percentile`` does
    (``a + (b - a) t``, or ``b - (b - a)(1 - t)`` for ``t >= 1/2``)."""
    n = sorted_scores.shape[-1]
    position = q * (n - 1)
    low = int(np.floor(position))
    t = position - low
    a, b = sorted_scores[..., low], sorted_scores[..., min(low + 1, n - 1)]
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def _outlier_mask(scores: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` the scores above ``Q3 + 1.5 * IQR`` of their row."""
    import torch

    ordered = torch.sort(scores, dim=-1).values
    q1, q3 = _quantile(ordered, 0.25), _quantile(ordered, 0.75)
    return scores > (q3 + 1.5 * (q3 - q1))[..., None]


def iqr_outliers(scores: Any) -> np.ndarray:
    """Indices (ascending) of the scores ``(N,)`` above ``Q3 + 1.5 * IQR``."""
    batch, _ = _as_batch(np.asarray(scores, np.float64)[:, None])
    return np.flatnonzero(_outlier_mask(batch[..., 0])[0].numpy())


def uniform_samples(n: int, m: int) -> np.ndarray:
    """PruMerge+'s spatial samples for ``m`` outliers of ``n`` tokens: every ``max(1, (n // m) // 3)``-th index
    of ``0..n-2`` (the official code steps ``int(int(1 / ratio) / 3)`` with ``ratio = m / n`` over
    ``arange(0, 575)`` for 576 patches: the last token is never sampled)."""
    return np.arange(0, max(n - 1, 1), max(1, (n // max(m, 1)) // 3))


def _attention(signals: dict[str, Any]) -> torch.Tensor:
    scores = signals["cls_attention"]
    scores = scores.mean(dim=-1) if scores.ndim == 3 else scores
    if bool((scores < 0).any()):
        raise ValueError("prumerge weights tokens by their attention from CLS, which must be >= 0 (softmax "
                         "probabilities); got negative cls_attention")
    return scores


def _check(k: int | None, adaptive: Any, neighbours: Any, name: str, merge: Any, batch: int) -> None:
    if merge not in MERGES:
        raise ValueError(f"{name}: merge must be 'official' (the authors' update and extra token) or 'partition' "
                         f"(every input in one output, normalised update), got {merge!r}")
    if adaptive not in (None, False, True):
        raise ValueError(f"{name}: adaptive must be True or False, got {adaptive!r}")
    if k is None and not adaptive:
        raise ValueError(f"{name}: give keep=<count> or ratio=<fraction>, or adaptive=True for the IQR count")
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 0:
        raise ValueError(f"{name}: neighbours must be a whole number >= 0, got {neighbours!r}")
    if adaptive and batch > 1:
        raise ValueError(f"{name}: adaptive=True keeps a different count per image; reduce a batch of {batch} one "
                         "image at a time, or give keep=/ratio= for one count")


def _top_per_row(similarity: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, K, P)`` mask of each row's ``count`` largest entries; among equal values the earlier columns win."""
    import torch

    p = similarity.shape[-1]
    if similarity.device.type == "cpu":  # numpy's partition finds the count-th largest in half topk's time
        part = np.partition(similarity.detach().numpy(), p - count, axis=-1)
        threshold = torch.from_numpy(part[..., p - count : p - count + 1])
    else:
        threshold = torch.topk(similarity, count, dim=-1).values[..., count - 1 : count]
    above = similarity > threshold
    ties = similarity == threshold
    room = count - above.sum(dim=-1, keepdim=True)
    return above | (ties & (torch.cumsum(ties, dim=-1) <= room))


def _rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[b, index[b]]`` for ``t`` ``(B, N, ...)`` and ``index`` ``(B, M)``."""
    import torch

    if t.ndim == 2:
        return t.gather(1, index)
    b, n = t.shape[:2]  # rows of the flattened batch: index_select copies whole rows, gather goes entry by entry
    flat = (index + torch.arange(b, device=index.device)[:, None] * n).reshape(-1)
    return t.reshape(b * n, *t.shape[2:]).index_select(0, flat).view(*index.shape, *t.shape[2:])


def _split_kept(kept_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, pruned)`` ``(B, K)`` and ``(B, N - K)`` ascending indices from a mask with K per row."""
    import torch

    b, n = kept_mask.shape
    order = torch.sort(kept_mask.to(torch.int8), dim=-1, descending=True, stable=True).indices
    k = int(kept_mask[0].sum())
    return order[:, :k], order[:, k:]


def _merge(x: torch.Tensor, kept_mask: torch.Tensor, scores: torch.Tensor, signals: dict[str, Any],
           neighbours: int) -> Reduction:
    """The partition merge: the assignment and the updated kept tokens."""
    import torch

    b, n, d = x.shape
    kept, pruned = _split_kept(kept_mask)
    k = kept.shape[1]
    arange_k = torch.arange(k, device=x.device).expand(b, k)
    assign = torch.full((b, n), -1, dtype=torch.int64, device=x.device).scatter_(1, kept, arange_k)
    total = scores.sum(-1, keepdim=True)
    a = torch.where(total > 0, scores / torch.where(total > 0, total, 1), 0)
    neighbours = min(int(neighbours), pruned.shape[1])
    values, norm = _rows(x, kept).clone(), torch.ones(b, k, dtype=x.dtype, device=x.device)
    if neighbours:
        unit = unit_rows(signals.get("keys", x))
        similarity = _rows(unit, kept) @ _rows(unit, pruned).transpose(-1, -2)  # (B, K, P) cosines of the keys
        chosen = _top_per_row(similarity, neighbours)
        taken = chosen.any(dim=1)
        best = torch.argmax(torch.where(chosen, similarity, -torch.inf), dim=1)  # the most similar kept token
        weight = _rows(a, pruned) * taken
        flat = best + torch.arange(b, device=x.device)[:, None] * k
        values = values.view(b * k, d).index_add_(0, flat.view(-1), (_rows(x, pruned) * weight[..., None])
                                                  .view(-1, d)).view(b, k, d)
        norm = norm.view(-1).index_add_(0, flat.view(-1), weight.view(-1)).view(b, k)
        assign.scatter_(1, pruned, torch.where(taken, best, -1))
    return Reduction(assign, values=values / norm[..., None])


def _merge_official(x: torch.Tensor, kept_mask: torch.Tensor, scores: torch.Tensor, signals: dict[str, Any],
                    neighbours: int) -> Reduction:
    """The official merge: ``y_p + sum a_j y_j`` over each kept token's key-nearest other tokens, then the extra
    token ``sum a_j y_j`` over the pruned ones (when any), last."""
    import torch
    import torch.nn.functional as F

    b, n, d = x.shape
    kept, pruned = _split_kept(kept_mask)
    k = kept.shape[1]
    arange_k = torch.arange(k, device=x.device).expand(b, k)
    assign = torch.full((b, n), k, dtype=torch.int64, device=x.device).scatter_(1, kept, arange_k)  # pruned: extra
    values = _rows(x, kept)
    neighbours = min(int(neighbours), n - 1)
    if neighbours and k:
        unit = unit_rows(signals.get("keys", x))
        similarity = _rows(unit, kept) @ unit.transpose(-1, -2)  # (B, K, N) cosines of the keys
        similarity.scatter_(2, kept[..., None], -torch.inf)  # a token is not its own neighbour
        chosen = _top_per_row(similarity, neighbours)  # `neighbours` per row (none where a cosine is NaN)
        picked = chosen.nonzero()[:, 2]  # their columns, row by row, ascending
        if picked.shape[0] == b * k * neighbours:  # sum_j a_j y_j over the picked rows alone
            flat = (picked.view(b, k, neighbours) + torch.arange(b, device=x.device)[:, None, None] * n).view(b * k, -1)
            values = values + F.embedding_bag(flat, x.reshape(b * n, d), per_sample_weights=scores.reshape(-1)[flat],
                                              mode="sum").view(b, k, d)
        else:
            values = values + (chosen.to(x.dtype) * scores[:, None, :]) @ x
    if pruned.shape[1]:
        extra = (scores * ~kept_mask)[:, None, :] @ x
        values = torch.cat([values, extra], dim=1)
    return Reduction(assign, values=values)


def _finish(x: torch.Tensor, kept_mask: torch.Tensor, scores: torch.Tensor, signals: dict[str, Any],
            neighbours: int, merge: str) -> Reduction:
    if merge == "official":
        return _merge_official(x, kept_mask, scores, signals, neighbours)
    return _merge(x, kept_mask, scores, signals, neighbours)


def _kept_count(k: int | None, merge: str) -> int | None:
    """Tokens to keep for ``k`` outputs: one fewer in the official merge, whose extra token is an output."""
    return None if k is None else (k - 1 if merge == "official" else k)


def _mask(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, index, True)


@register_method(
    "prumerge", description="keep the IQR outliers of CLS attention (or the top-K) and merge their key-nearest "
                            "pruned tokens into them, weighted by attention",
    paper="Shang et al., LLaVA-PruMerge, ICCV 2025 (arXiv 2403.15388)", needs=("cls_attention",),
    uses=("keys",), merges=True, averages=False, options=("neighbours", "merge"), sizing=("adaptive",),
)
def prumerge(x: torch.Tensor, k: int | None, sizes: torch.Tensor, signals: dict[str, Any], seed: int,
             adaptive: bool | None = None, neighbours: int = NEIGHBOURS, merge: str = "official") -> Reduction:
    """``keep=K``/``ratio=r``: the top ``K - 1`` by CLS attention (``K`` with ``merge="partition"``), then
    merge; ``adaptive=True``: the IQR outliers. ``merge``: ``"official"`` (default) or ``"partition"``."""
    _check(k, adaptive, neighbours, "prumerge", merge, x.shape[0])
    scores = _attention(signals)
    k = _kept_count(k, merge)
    if adaptive:
        kept = _outlier_mask(scores)
        if not bool(kept.any()):
            kept = _mask(scores, top_k(scores, 1))
    else:
        kept = _mask(scores, top_k(scores, k))
    return _finish(x, kept, scores, signals, neighbours, merge)


def _evenly_over_rest(outliers: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, N)`` mask: each row's outliers plus ``k - m`` tokens evenly spaced over its other tokens, the
    ``floor((i + 1/2) * R / (k - m))``-th of the ``R = N - m`` (rows with ``m < k``)."""
    import torch

    b, n = outliers.shape
    m = outliers.sum(-1, keepdim=True)  # (B, 1)
    rest, fill = (n - m).to(torch.float64), (k - m).clamp_min(1).to(torch.float64)
    i = torch.arange(k, device=outliers.device, dtype=torch.float64)
    picks = torch.floor((i + 0.5) * rest / fill).to(torch.int64)
    picks = torch.where(i[None, :] < (k - m), picks, n)  # beyond the fill: a slot past the end
    chosen_rank = torch.zeros(b, n + 1, dtype=torch.bool, device=outliers.device).scatter_(1, picks, True)[:, :n]
    rank = torch.cumsum(~outliers, dim=-1) - 1  # each non-outlier's place among the others
    return outliers | (~outliers & chosen_rank.gather(1, rank.clamp_min(0)))


@register_method(
    "prumerge+", description="prumerge plus spatially uniform tokens: IQR outliers of CLS attention, topped up "
                             "with evenly spaced tokens, then key-neighbour merging",
    paper="Shang et al., LLaVA-PruMerge (PruMerge+), ICCV 2025 (arXiv 2403.15388)", needs=("cls_attention",),
    uses=("keys",), merges=True, averages=False, options=("neighbours", "merge"), sizing=("adaptive",),
)
def prumerge_plus(x: torch.Tensor, k: int | None, sizes: torch.Tensor, signals: dict[str, Any], seed: int,
                  adaptive: bool | None = None, neighbours: int = NEIGHBOURS, merge: str = "official") -> Reduction:
    """``keep=K``/``ratio=r``: ``K' = K - 1`` kept (``K`` with ``merge="partition"``): the outliers (the top
    ``K'`` of them at most), then ``K' - m`` tokens evenly spaced over the others; ``adaptive=True``: the
    outliers and every ``(N // m) // 3``-th token of ``0..N-2``."""
    import torch

    _check(k, adaptive, neighbours, "prumerge+", merge, x.shape[0])
    scores = _attention(signals)
    k = _kept_count(k, merge)
    n = scores.shape[-1]
    outliers = _outlier_mask(scores)
    if adaptive:
        if not bool(outliers.any()):
            outliers = _mask(scores, top_k(scores, 1))
        samples = torch.from_numpy(uniform_samples(n, int(outliers.sum()))).to(scores.device)
        kept = outliers.scatter(1, samples[None], True)
    else:
        many = outliers.sum(-1, keepdim=True) >= k
        kept = torch.where(many, _mask(scores, top_k(scores, k)), _evenly_over_rest(outliers & ~many, k))
    return _finish(x, kept, scores, signals, neighbours, merge)
