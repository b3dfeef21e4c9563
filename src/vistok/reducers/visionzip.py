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

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, top_k

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


def _unit_rows(m: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, in float32 (cosines only rank here; float32 halves the matmul)."""
    m = m if m.ndim == 2 else m[:, None]
    return (m / np.maximum(np.sqrt(np.einsum("ij,ij->i", m, m)), 1e-12)[:, None]).astype(np.float32)


@register_method(
    "visionzip", description="dominant tokens by CLS attention + contextual tokens merged into uniform targets "
                             "by key similarity",
    paper="Yang et al., VisionZip, CVPR 2025 (arXiv 2412.04467)", needs=("cls_attention",), uses=("keys",),
    merges=True, keeps_order=False, averages=False, options=("contextual", "contextual_merge"),
)
def visionzip(x: np.ndarray, k: int, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator,
              contextual: float | int = PAPER_CONTEXTUAL, contextual_merge: str = "add") -> Reduction:
    """``contextual_merge``: ``"add"`` (default, the official code: target + mean of the joined tokens) or
    ``"mean"`` (the size-weighted mean of the target and the joined tokens)."""
    if contextual_merge not in ("add", "mean"):
        raise ValueError(f"visionzip: contextual_merge must be 'add' (target + mean of the joined tokens, the "
                         f"official code) or 'mean' (mean of target and joined), got {contextual_merge!r}")
    n = len(sizes)
    c = contextual_count(k, contextual)
    scores = signals["cls_attention"]
    scores = scores.mean(axis=1) if scores.ndim == 2 else scores
    dominant = np.sort(top_k(scores, k - c))
    assign = np.full(n, -1, np.int64)
    assign[dominant] = np.arange(k - c)
    if c == 0:
        return Reduction(assign, values=x[dominant])
    rest = np.setdiff1d(np.arange(n), dominant)  # the remaining tokens, in input order
    r = len(rest)
    is_target = np.zeros(r, bool)
    is_target[np.arange(0, r, max(1, r // c))[:c]] = True
    targets, others = rest[is_target], rest[~is_target]
    assign[targets] = k - c + np.arange(c)
    if len(others):
        metric = signals.get("keys", x)
        similarity = _unit_rows(metric[others]) @ _unit_rows(metric[targets]).T  # (R - C, C) cosines of the keys
        assign[others] = k - c + np.argmax(similarity, axis=1)
    return Reduction(assign, values=np.vstack([x[dominant], _contextual_values(x, sizes, assign, targets, k - c,
                                                                               contextual_merge)]))


def _contextual_values(x: np.ndarray, sizes: np.ndarray, assign: np.ndarray, targets: np.ndarray, start: int,
                       rule: str) -> np.ndarray:
    """``(C, D)`` contextual tokens: target + size-weighted mean of the joined tokens (``"add"``), or the
    size-weighted mean of target and joined (``"mean"``). Outputs ``start..start+C-1`` are the targets'."""
    c = len(targets)
    group = assign - start
    joined = np.flatnonzero(group >= 0)
    joined = joined[~np.isin(joined, targets)]
    from scipy.sparse import csr_matrix  # a scikit-learn dependency (np.add.at is ~10x slower here)

    member = csr_matrix((sizes[joined], (group[joined], joined)), shape=(c, len(x)))
    sums = np.asarray(member @ x)
    weight = np.bincount(group[joined], weights=sizes[joined], minlength=c)
    if rule == "add":
        return x[targets] + sums / np.maximum(weight, 1e-300)[:, None] * (weight > 0)[:, None]
    return (sums + x[targets] * sizes[targets, None]) / (weight + sizes[targets])[:, None]
