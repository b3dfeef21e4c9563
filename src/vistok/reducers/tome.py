"""``tome``: bipartite soft matching, standalone on any soft tokens.

Token Merging (Bolya, Fu, Dai, Zhang, Feichtenhofer and Hoffman, "Token Merging: Your ViT but Faster", ICLR
2023) merges similar tokens instead of dropping them. One step of its *bipartite soft matching*:

1. split the tokens alternately into two sets, A (positions 0, 2, 4, ...) and B (1, 3, 5, ...);
2. link every A token to its most similar B token (cosine similarity of the features);
3. keep the ``r`` links with the highest similarity, and merge each of those A tokens into its B token;
   several A tokens may join the same B token;
4. a merged token is the size-weighted mean of its members, and its size is the sum of theirs, so a token
   that already stands for 3 patches counts 3 times.

The paper merges ``r`` tokens in every block of a ViT (:mod:`vistok.reducers.tome_patch` does that inside the
model). Here, on finished tokens, the step is repeated in *rounds* until exactly ``K`` tokens remain. One round
can merge at most ``|A| = ceil(n / 2)`` tokens (every A token into B); the schedule merges
``r_t = min(n_t - K, ceil(n_t / 2), r)`` in round ``t``, so by default (``r=None``) as many as one round allows:
``K = N/4`` takes 2 rounds, ``N/16`` takes 4. A smaller ``r=`` gives more, gentler rounds (each re-matches after
the previous merges, closer to the in-model schedule) at the cost of speed.

Features and choices that differ from the in-model form, which are this module's own:

* similarity: the ``keys`` signal when present (the paper's choice, from the same block as the tokens; ``vit``
  and ``focus-vit-s14`` give it with ``keys=True``), else the token vectors. The features of a merged token are
  the size-weighted mean of its members' features (inside a ViT the next block recomputes them; here there
  is no next block). Scores are computed in float32.
* order: the tokens are kept in reading order (sorted by the smallest input index in each group), before
  every round (so the alternating A/B split pairs up neighbours, as the paper's alternating split intends)
  and in the output.
* protected tokens: the paper never merges the CLS token. Patch tokens here have no CLS (``vit`` keeps it in
  ``extras["cls"]`` by default); with ``cls="include"`` or any other tokens to leave alone, pass
  ``protect=[indices]``: those tokens take part in no match and each stays its own output token, so the other
  ``N - P`` tokens are merged down to ``K - P``.
* ties: the earlier token wins (``argmax``'s first maximum, a stable sort of the link scores), so the result
  depends on the inputs only; the seed is not used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method

__all__ = ["tome", "bipartite_round", "merge_schedule"]


def merge_schedule(n: int, k: int, r: int | None = None) -> list[int]:
    """Merges per round to go from ``n`` to ``k`` tokens: ``min(n_t - k, ceil(n_t / 2), r)`` each round."""
    steps = []
    while n > k:
        step = min(n - k, (n + 1) // 2, r if r is not None else n)
        steps.append(step)
        n -= step
    return steps


def bipartite_round(features: np.ndarray, r: int) -> np.ndarray:
    """One bipartite soft matching step on ``(n, d)`` features (rows in order): ``(n,)`` the output token of
    each row, ``0..n-r-1``, numbered in the order of the tokens that remain (B tokens and unmerged A tokens)."""
    n = len(features)
    features = np.asarray(features, np.float32)
    unit = features / np.maximum(np.sqrt(np.einsum("ij,ij->i", features, features)), 1e-12)[:, None]
    a, b = np.ascontiguousarray(unit[0::2]), np.ascontiguousarray(unit[1::2])
    scores = a @ b.T  # (|A|, |B|) cosine similarities
    partner = scores.argmax(axis=1)  # each A token's most similar B token
    best = scores[np.arange(len(a)), partner]
    merged = np.argsort(-best, kind="stable")[:r]  # the r strongest links (ties: earlier A token)
    keep = np.ones(n, bool)
    keep[2 * merged] = False
    position = np.cumsum(keep) - 1  # new index of each remaining token
    step = position.copy()
    step[2 * merged] = position[2 * partner[merged] + 1]
    return step


@register_method(
    "tome", description="ToMe bipartite soft matching: merge the most similar tokens in rounds (size-weighted)",
    paper="Bolya et al., Token Merging: Your ViT but Faster, ICLR 2023", uses=("keys",), merges=True,
    options=("r", "protect"),
)
def tome(x: np.ndarray, k: int, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator,
         r: int | None = None, protect: Any = None) -> Reduction:
    """``r``: the most tokens one round merges (default: as many as a round allows, ``ceil(n/2)``).
    ``protect``: indices of tokens never merged (each stays its own output token)."""
    from scipy import sparse  # a scikit-learn dependency; imported here to keep `import vistok` light

    n = len(sizes)
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1):
        raise ValueError(f"tome: r (merges per round) must be a whole number >= 1, got {r!r}")
    fixed = np.zeros(n, bool)
    if protect is not None:
        index = np.asarray(protect).reshape(-1)
        if index.size and (not np.issubdtype(index.dtype, np.integer) or index.min() < -n or index.max() >= n):
            raise ValueError(f"tome: protect must hold token indices in 0..{n - 1}, got {protect!r}")
        fixed[index] = True
    n_fixed = int(fixed.sum())
    if k < n_fixed + (n_fixed < n):
        raise ValueError(f"tome: cannot keep {k} tokens with {n_fixed} protected ones and {n - n_fixed} to merge "
                         f"into at least one; keep at least {n_fixed + (n_fixed < n)}")
    features = signals.get("keys")
    if features is None:
        features = x
    if features.ndim != 2:
        raise ValueError(f"tome: the similarity features must be (N, d), got shape {features.shape}")
    free = np.flatnonzero(~fixed)
    # current tokens, in reading order: the size-weighted sums of their features (float32: only their
    # direction matters) and the first input index of each
    weighted = features[free].astype(np.float32) * sizes[free, None].astype(np.float32)
    first = free.copy()
    assign = np.arange(len(free))  # each free input -> its current token
    schedule = merge_schedule(len(free), k - n_fixed, r)
    for t, step_r in enumerate(schedule):
        step = bipartite_round(weighted, step_r)
        m = int(step.max()) + 1
        new_first = np.full(m, np.iinfo(np.int64).max)
        np.minimum.at(new_first, step, first)
        relabel = np.empty(m, np.int64)
        relabel[np.argsort(new_first, kind="stable")] = np.arange(m)  # back to reading order
        step = relabel[step]
        first = np.sort(new_first)
        assign = step[assign]
        if t + 1 < len(schedule):  # group sums as a sparse product (np.add.at is ~30x slower here)
            member = sparse.csr_matrix((np.ones(len(step), np.float32), (step, np.arange(len(step)))),
                                       shape=(m, len(step)))
            weighted = np.asarray(member @ weighted)
    # protected tokens join as singletons; all outputs numbered by their smallest input index
    group_first = np.concatenate([first, np.flatnonzero(fixed)])
    token = np.empty(n, np.int64)
    token[free] = assign
    token[fixed] = len(first) + np.arange(n_fixed)
    out_rank = np.empty(len(group_first), np.int64)
    out_rank[np.argsort(group_first, kind="stable")] = np.arange(len(group_first))
    return Reduction(out_rank[token])
