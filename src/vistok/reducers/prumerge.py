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

Cosines are computed in float32. Keys come from ``vit``/``focus-vit-s14`` with ``keys=True``; without them
the token vectors stand in. Outputs are ordered by the input position of their kept token (the official code
orders them by attention), the extra token last.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, top_k

__all__ = ["prumerge", "prumerge_plus", "iqr_outliers", "uniform_samples", "NEIGHBOURS"]

#: The official code's neighbour count for each kept token (its inference path; its training path uses 16).
NEIGHBOURS = 32


def iqr_outliers(scores: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the scores above ``Q3 + 1.5 * IQR``."""
    q1, q3 = np.percentile(scores, [25, 75])
    return np.flatnonzero(scores > q3 + 1.5 * (q3 - q1))


def uniform_samples(n: int, m: int) -> np.ndarray:
    """PruMerge+'s spatial samples for ``m`` outliers of ``n`` tokens: every ``max(1, (n // m) // 3)``-th index
    of ``0..n-2`` (the official code steps ``int(int(1 / ratio) / 3)`` with ``ratio = m / n`` over
    ``arange(0, 575)`` for 576 patches: the last token is never sampled)."""
    return np.arange(0, max(n - 1, 1), max(1, (n // max(m, 1)) // 3))


def _unit_rows(m: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float32 (cosines only rank here; float32 halves the matmul)."""
    m = m if m.ndim == 2 else m[:, None]
    return (m / np.maximum(np.sqrt(np.einsum("ij,ij->i", m, m)), 1e-12)[:, None]).astype(np.float32)


def _attention(signals: dict[str, Any]) -> np.ndarray:
    scores = signals["cls_attention"]
    scores = scores.mean(axis=1) if scores.ndim == 2 else scores
    if (scores < 0).any():
        raise ValueError("prumerge weights tokens by their attention from CLS, which must be >= 0 (softmax "
                         "probabilities); got negative cls_attention")
    return scores


MERGES = ("official", "partition")


def _check(k: int | None, adaptive: Any, neighbours: Any, name: str, merge: Any = "official") -> None:
    if merge not in MERGES:
        raise ValueError(f"{name}: merge must be 'official' (the authors' update and extra token) or 'partition' "
                         f"(every input in one output, normalised update), got {merge!r}")
    if adaptive not in (None, False, True):
        raise ValueError(f"{name}: adaptive must be True or False, got {adaptive!r}")
    if k is None and not adaptive:
        raise ValueError(f"{name}: give keep=<count> or ratio=<fraction>, or adaptive=True for the IQR count")
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 0:
        raise ValueError(f"{name}: neighbours must be a whole number >= 0, got {neighbours!r}")


def _top_per_row(similarity: np.ndarray, count: int) -> np.ndarray:
    """``(K, P)`` mask of each row's ``count`` largest entries; among equal values the earlier columns win."""
    threshold = -np.partition(-similarity, count - 1, axis=1)[:, count - 1 : count]
    above = similarity > threshold
    ties = similarity == threshold
    room = count - above.sum(axis=1, keepdims=True)
    return above | (ties & (np.cumsum(ties, axis=1) <= room))


def _merge(x: np.ndarray, kept: np.ndarray, scores: np.ndarray, signals: dict[str, Any],
           neighbours: int) -> Reduction:
    """The merge step for the kept indices (any order): the assignment and the updated kept tokens."""
    n = len(scores)
    kept = np.unique(kept)
    k = len(kept)
    assign = np.full(n, -1, np.int64)
    assign[kept] = np.arange(k)
    pruned = np.setdiff1d(np.arange(n), kept)
    total = scores.sum()
    a = scores / total if total > 0 else np.zeros(n)
    neighbours = min(int(neighbours), len(pruned))
    values, norm = x[kept].copy(), np.ones(k)  # each kept token enters its update with weight 1
    if neighbours:
        unit = _unit_rows(signals.get("keys", x))
        similarity = unit[kept] @ unit[pruned].T  # (K, P) cosines of the keys
        chosen = _top_per_row(similarity, neighbours)
        taken = chosen.any(axis=0)
        best = np.argmax(np.where(chosen, similarity, -np.inf), axis=0)  # the most similar kept token choosing it
        joined, into = pruned[taken], best[taken]
        assign[joined] = into
        order = np.argsort(into, kind="stable")  # group the joined tokens by output for one reduceat
        joined, into = joined[order], into[order]
        outs, starts = np.unique(into, return_index=True)  # (every kept token took >= 1, so none is empty)
        rows = x[joined]
        rows *= a[joined, None]
        values[outs] += np.add.reduceat(rows, starts, axis=0)
        norm += np.bincount(into, weights=a[joined], minlength=k)
    return Reduction(assign, values=values / norm[:, None])


def _merge_official(x: np.ndarray, kept: np.ndarray, scores: np.ndarray, signals: dict[str, Any],
                    neighbours: int) -> Reduction:
    """The official merge for the kept indices: ``y_p + sum a_j y_j`` over each kept token's key-nearest other
    tokens, then the extra token ``sum a_j y_j`` over the pruned ones (when any), last."""
    n = len(scores)
    kept = np.unique(kept)
    k = len(kept)
    assign = np.full(n, k, np.int64)  # pruned tokens: the extra token
    assign[kept] = np.arange(k)
    pruned = np.setdiff1d(np.arange(n), kept)
    values = x[kept].copy()
    neighbours = min(int(neighbours), n - 1)
    if neighbours and k:
        unit = _unit_rows(signals.get("keys", x))
        similarity = unit[kept] @ unit.T  # (K, N) cosines of the keys
        similarity[np.arange(k), kept] = -np.inf  # a token is not its own neighbour
        chosen = _top_per_row(similarity, neighbours)
        values += (chosen * scores[None, :]) @ x
    if len(pruned):
        values = np.vstack([values, scores[pruned] @ x[pruned]])
    return Reduction(assign, values=values)


def _kept_count(k: int | None, merge: str) -> int | None:
    """Tokens to keep for ``k`` outputs: one fewer in the official merge, whose extra token is an output."""
    return None if k is None else (k - 1 if merge == "official" else k)


def _finish(x: np.ndarray, kept: np.ndarray, scores: np.ndarray, signals: dict[str, Any], neighbours: int,
            merge: str) -> Reduction:
    if merge == "official":
        return _merge_official(x, kept, scores, signals, neighbours)
    return _merge(x, kept, scores, signals, neighbours)


@register_method(
    "prumerge", description="keep the IQR outliers of CLS attention (or the top-K) and merge their key-nearest "
                            "pruned tokens into them, weighted by attention",
    paper="Shang et al., LLaVA-PruMerge, ICCV 2025 (arXiv 2403.15388)", needs=("cls_attention",),
    uses=("keys",), merges=True, averages=False, options=("neighbours", "merge"), sizing=("adaptive",),
)
def prumerge(x: np.ndarray, k: int | None, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator,
             adaptive: bool | None = None, neighbours: int = NEIGHBOURS, merge: str = "official") -> Reduction:
    """``keep=K``/``ratio=r``: the top ``K - 1`` by CLS attention (``K`` with ``merge="partition"``), then
    merge; ``adaptive=True``: the IQR outliers. ``merge``: ``"official"`` (default) or ``"partition"``."""
    _check(k, adaptive, neighbours, "prumerge", merge)
    scores = _attention(signals)
    k = _kept_count(k, merge)
    if adaptive:
        kept = iqr_outliers(scores)
        kept = kept if len(kept) else top_k(scores, 1)
    else:
        kept = top_k(scores, k)
    return _finish(x, kept, scores, signals, neighbours, merge)


@register_method(
    "prumerge+", description="prumerge plus spatially uniform tokens: IQR outliers of CLS attention, topped up "
                             "with evenly spaced tokens, then key-neighbour merging",
    paper="Shang et al., LLaVA-PruMerge (PruMerge+), ICCV 2025 (arXiv 2403.15388)", needs=("cls_attention",),
    uses=("keys",), merges=True, averages=False, options=("neighbours", "merge"), sizing=("adaptive",),
)
def prumerge_plus(x: np.ndarray, k: int | None, sizes: np.ndarray, signals: dict[str, Any],
                  rng: np.random.Generator, adaptive: bool | None = None, neighbours: int = NEIGHBOURS,
                  merge: str = "official") -> Reduction:
    """``keep=K``/``ratio=r``: ``K' = K - 1`` kept (``K`` with ``merge="partition"``): the outliers (the top
    ``K'`` of them at most), then ``K' - m`` tokens evenly spaced over the others; ``adaptive=True``: the
    outliers and every ``(N // m) // 3``-th token of ``0..N-2``."""
    _check(k, adaptive, neighbours, "prumerge+", merge)
    scores = _attention(signals)
    k = _kept_count(k, merge)
    n = len(scores)
    outliers = iqr_outliers(scores)
    if adaptive:
        outliers = outliers if len(outliers) else top_k(scores, 1)
        kept = np.union1d(outliers, uniform_samples(n, len(outliers)))
    elif len(outliers) >= k:
        kept = top_k(scores, k)
    else:
        rest = np.setdiff1d(np.arange(n), outliers)
        fill = k - len(outliers)
        kept = np.union1d(outliers, rest[np.floor((np.arange(fill) + 0.5) * len(rest) / fill).astype(np.int64)])
    return _finish(x, kept, scores, signals, neighbours, merge)
