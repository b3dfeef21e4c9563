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
  ``N - P`` tokens are merged down to ``K - P``. By default (``split="sequence"``) the alternating A/B split
  runs over the whole sequence, protected tokens included, as the paper's code does with its CLS token
  (``bipartite_soft_matching`` in facebookresearch/ToMe: CLS sits at position 0 on side A and its score row is
  set to ``-inf``): a protected A token merges into nothing and a protected B token receives nothing, so CLS
  plus 4 patches at ``keep=3`` pairs patches 2 and 4 (A) with 1 and 3 (B). ``split="free"`` splits only the
  unprotected tokens (vistok's earlier rule: patches 1 and 3 on side A there), which always makes progress
  even when the protected tokens take every B position.
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


def bipartite_round(features: np.ndarray, r: int, fixed: np.ndarray | None = None) -> np.ndarray:
    """One bipartite soft matching step on ``(n, d)`` features (rows in order): ``(n,)`` the output token of
    each row, ``0..n-r-1``, numbered in the order of the tokens that remain (B tokens and unmerged A tokens).
    ``fixed`` ``(n,)`` bool: rows that neither merge (on side A) nor receive a merge (on side B), as ToMe's
    ``-inf`` score for its CLS token; ``r`` must not exceed the unfixed A rows."""
    n = len(features)
    features = np.asarray(features, np.float32)
    unit = features / np.maximum(np.sqrt(np.einsum("ij,ij->i", features, features)), 1e-12)[:, None]
    a, b = np.ascontiguousarray(unit[0::2]), np.ascontiguousarray(unit[1::2])
    scores = a @ b.T  # (|A|, |B|) cosine similarities
    if fixed is not None and fixed.any():
        scores[fixed[0::2]] = -np.inf
        scores[:, fixed[1::2]] = -np.inf
    partner = scores.argmax(axis=1)  # each A token's most similar B token
    best = scores[np.arange(len(a)), partner]
    merged = np.argsort(-best, kind="stable")[:r]  # the r strongest links (ties: earlier A token)
    keep = np.ones(n, bool)
    keep[2 * merged] = False
    position = np.cumsum(keep) - 1  # new index of each remaining token
    step = position.copy()
    step[2 * merged] = position[2 * partner[merged] + 1]
    return step


def _round_size(fixed: np.ndarray, excess: int, r: int | None) -> int:
    """Merges the next round can make: ``min(excess, r, unfixed A tokens)``, 0 when no unfixed B token is left."""
    if not (~fixed[1::2]).any():
        return 0
    return min(excess, int((~fixed[0::2]).sum()), r if r is not None else excess)


def _merge_rounds(weighted: np.ndarray, fixed: np.ndarray, target: int, r: int | None) -> tuple[np.ndarray, int]:
    """Rounds of bipartite matching over ``(n, d)`` size-weighted feature sums in reading order until ``target``
    unfixed tokens remain: ``(n,)`` the output of each row, numbered in reading order (by first row), and the
    output count. Raises when the split leaves no unfixed B token while merges are still due."""
    from scipy import sparse  # a scikit-learn dependency; imported here to keep `import vistok` light

    n = len(weighted)
    first = np.arange(n)
    assign = np.arange(n)
    while (excess := int((~fixed).sum()) - target) > 0:
        step_r = _round_size(fixed, excess, r)
        if step_r == 0:
            raise ValueError("tome: the protected tokens hold every B position of the alternating split, so nothing "
                             "can merge; pass split='free' to split only the unprotected tokens")
        step = bipartite_round(weighted, step_r, fixed)
        m = int(step.max()) + 1
        new_first = np.full(m, np.iinfo(np.int64).max)
        np.minimum.at(new_first, step, first)
        relabel = np.empty(m, np.int64)
        relabel[np.argsort(new_first, kind="stable")] = np.arange(m)  # back to reading order
        step = relabel[step]
        first = np.sort(new_first)
        assign = step[assign]
        new_fixed = np.zeros(m, bool)
        new_fixed[step[fixed]] = True
        fixed = new_fixed
        if int((~fixed).sum()) > target:  # group sums as a sparse product (np.add.at is ~30x slower here)
            member = sparse.csr_matrix((np.ones(len(step), np.float32), (step, np.arange(len(step)))),
                                       shape=(m, len(step)))
            weighted = np.asarray(member @ weighted)
    return assign, len(first)


@register_method(
    "tome", description="ToMe bipartite soft matching: merge the most similar tokens in rounds (size-weighted)",
    paper="Bolya et al., Token Merging: Your ViT but Faster, ICLR 2023", uses=("keys",), merges=True,
    options=("r", "protect", "split"),
)
def tome(x: np.ndarray, k: int, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator,
         r: int | None = None, protect: Any = None, split: str = "sequence") -> Reduction:
    """``r``: the most tokens one round merges (default: as many as a round allows, ``ceil(n/2)``).
    ``protect``: indices of tokens never merged (each stays its own output token). ``split``: ``"sequence"``
    (default, ToMe's code: the A/B alternation runs over every token, protected ones included) or ``"free"``
    (over the unprotected tokens only)."""
    n = len(sizes)
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1):
        raise ValueError(f"tome: r (merges per round) must be a whole number >= 1, got {r!r}")
    if split not in ("sequence", "free"):
        raise ValueError(f"tome: split must be 'sequence' (ToMe's alternation over every token) or 'free' (over "
                         f"the unprotected tokens only), got {split!r}")
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
    if split == "sequence" or n_fixed == 0:
        # every token in reading order, protected ones in place: outputs come numbered by first input already
        weighted = features.astype(np.float32) * sizes[:, None].astype(np.float32)
        assign, _ = _merge_rounds(weighted, fixed, k - n_fixed, r)
        return Reduction(assign)
    free = np.flatnonzero(~fixed)
    weighted = features[free].astype(np.float32) * sizes[free, None].astype(np.float32)
    assign, m = _merge_rounds(weighted, np.zeros(len(free), bool), k - n_fixed, r)
    first = np.full(m, np.iinfo(np.int64).max)
    np.minimum.at(first, assign, free)
    # protected tokens join as singletons; all outputs numbered by their smallest input index
    group_first = np.concatenate([first, np.flatnonzero(fixed)])
    token = np.empty(n, np.int64)
    token[free] = assign
    token[fixed] = m + np.arange(n_fixed)
    out_rank = np.empty(len(group_first), np.int64)
    out_rank[np.argsort(group_first, kind="stable")] = np.arange(len(group_first))
    return Reduction(out_rank[token])
