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
* batches: every image of a batch follows the same schedule; with protected tokens and ``split="sequence"``
  the images are matched one at a time (their protected tokens can land on different sides after a round).
* ties: the earlier token wins (``argmax``'s first maximum, a stable sort of the link scores), so the result
  depends on the inputs only; the seed is not used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, unit_rows

if TYPE_CHECKING:
    import torch

__all__ = ["tome", "bipartite_round", "merge_schedule"]


def merge_schedule(n: int, k: int, r: int | None = None) -> list[int]:
    """Merges per round to go from ``n`` to ``k`` tokens: ``min(n_t - k, ceil(n_t / 2), r)`` each round."""
    steps = []
    while n > k:
        step = min(n - k, (n + 1) // 2, r if r is not None else n)
        steps.append(step)
        n -= step
    return steps


def bipartite_round(features: torch.Tensor, r: int, fixed: torch.Tensor | None = None) -> torch.Tensor:
    """One bipartite soft matching step on ``(B, n, d)`` features (rows in order): ``(B, n)`` the output token
    of each row, ``0..n-r-1``, numbered in the order of the tokens that remain (B tokens and unmerged A tokens).
    ``fixed`` ``(B, n)`` bool: rows that neither merge (on side A) nor receive a merge (on side B), as ToMe's
    ``-inf`` score for its CLS token; ``r`` must not exceed the unfixed A rows."""
    import torch

    b, n, _ = features.shape
    unit = unit_rows(features)
    scores = unit[:, 0::2] @ unit[:, 1::2].transpose(-1, -2)  # (B, |A|, |B|) cosine similarities
    if fixed is not None and bool(fixed.any()):
        scores = scores.masked_fill(fixed[:, 0::2, None] | fixed[:, None, 1::2], -torch.inf)
    best = scores.amax(dim=-1)
    partner = torch.argmax(scores, dim=-1)  # each A token's most similar B token (the first maximum)
    merged = torch.sort(-best, dim=-1, stable=True).indices[:, :r]  # the r strongest links (ties: earlier A)
    keep = torch.ones(b, n, dtype=torch.bool, device=features.device).scatter_(1, 2 * merged, False)
    position = torch.cumsum(keep, dim=-1) - 1  # new index of each remaining token
    into = position.gather(1, 2 * partner.gather(1, merged) + 1)
    return position.scatter(1, 2 * merged, into)


def _round_size(fixed: torch.Tensor, excess: int, r: int | None) -> int:
    """Merges the next round can make: ``min(excess, r, unfixed A tokens)``, 0 when no unfixed B token is left
    (``fixed`` ``(n,)``: one row)."""
    if not bool((~fixed[1::2]).any()):
        return 0
    return min(excess, int((~fixed[0::2]).sum()), r if r is not None else excess)


def _merge_rounds(weighted: torch.Tensor, fixed: torch.Tensor, target: int, r: int | None) -> tuple[torch.Tensor, int]:
    """Rounds of bipartite matching over ``(B, n, d)`` size-weighted feature sums in reading order until
    ``target`` unfixed tokens remain: ``(B, n)`` the output of each row, numbered in reading order (by first
    row), and the output count. ``fixed`` ``(B, n)`` must put the same number of unfixed tokens on each side in
    every row (no fixed tokens, or one row). Raises when the split leaves no unfixed B token while merges are
    still due."""
    import torch

    b, n, d = weighted.shape
    device = weighted.device
    first = torch.arange(n, device=device).expand(b, n)
    assign = first.clone()
    m = n
    while (excess := int((~fixed[0]).sum()) - target) > 0:
        step_r = _round_size(fixed[0], excess, r)
        if step_r == 0:
            raise ValueError("tome: the protected tokens hold every B position of the alternating split, so nothing "
                             "can merge; pass split='free' to split only the unprotected tokens")
        step = bipartite_round(weighted, step_r, fixed)
        m -= step_r
        new_first = torch.full((b, m), n, dtype=torch.int64, device=device).scatter_reduce_(
            1, step, first, reduce="amin")
        first, order = torch.sort(new_first, dim=-1, stable=True)  # back to reading order
        relabel = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=device).expand(b, m))
        step = relabel.gather(1, step)
        assign = step.gather(1, assign)
        fixed = torch.zeros(b, m, dtype=torch.int8, device=device).scatter_reduce_(
            1, step, fixed.to(torch.int8), reduce="amax").bool()
        if int((~fixed[0]).sum()) > target:  # group sums for the next round: whole rows into the flattened batch
            flat = (step + torch.arange(b, device=device)[:, None] * m).reshape(-1)
            weighted = torch.zeros(b * m, d, dtype=weighted.dtype, device=device).index_add_(
                0, flat, weighted.reshape(-1, d)).view(b, m, d)
    return assign, m


@register_method(
    "tome", description="ToMe bipartite soft matching: merge the most similar tokens in rounds (size-weighted)",
    paper="Bolya et al., Token Merging: Your ViT but Faster, ICLR 2023", uses=("keys",), merges=True,
    options=("r", "protect", "split"),
)
def tome(x: torch.Tensor, k: int, sizes: torch.Tensor, signals: dict[str, Any], seed: int,
         r: int | None = None, protect: Any = None, split: str = "sequence") -> Reduction:
    """``r``: the most tokens one round merges (default: as many as a round allows, ``ceil(n/2)``).
    ``protect``: indices of tokens never merged (each stays its own output token). ``split``: ``"sequence"``
    (default, ToMe's code: the A/B alternation runs over every token, protected ones included) or ``"free"``
    (over the unprotected tokens only)."""
    import torch

    b, n = sizes.shape
    if r is not None and (isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1):
        raise ValueError(f"tome: r (merges per round) must be a whole number >= 1, got {r!r}")
    if split not in ("sequence", "free"):
        raise ValueError(f"tome: split must be 'sequence' (ToMe's alternation over every token) or 'free' (over "
                         f"the unprotected tokens only), got {split!r}")
    fixed = np.zeros(n, bool)
    if protect is not None:
        index = np.asarray(protect.cpu() if isinstance(protect, torch.Tensor) else protect).reshape(-1)
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
    if features.ndim != 3:
        raise ValueError(f"tome: the similarity features must be (N, d), got shape {tuple(features.shape[1:])}")
    weighted = features.float()  # scores in float32, as ToMe
    if not bool((sizes == 1).all()):
        weighted = weighted * sizes.float()[..., None]
    if split == "sequence" or n_fixed == 0:
        # every token in reading order, protected ones in place: outputs come numbered by first input already
        mask = torch.from_numpy(fixed).to(sizes.device)
        if n_fixed and b > 1:  # the protected tokens' sides can differ per image after a round
            return Reduction(torch.cat([_merge_rounds(weighted[i:i + 1], mask[None], k - n_fixed, r)[0]
                                        for i in range(b)]))
        return Reduction(_merge_rounds(weighted, mask.expand(b, n), k - n_fixed, r)[0])
    free = torch.from_numpy(np.flatnonzero(~fixed)).to(sizes.device)
    part = weighted[:, free]
    assign, m = _merge_rounds(part, torch.zeros(b, len(free), dtype=torch.bool, device=sizes.device),
                              k - n_fixed, r)
    first = torch.full((b, m), n, dtype=torch.int64, device=sizes.device).scatter_reduce_(
        1, assign, free.expand(b, -1), reduce="amin")
    # protected tokens join as singletons; all outputs numbered by their smallest input index
    protected = torch.from_numpy(np.flatnonzero(fixed)).to(sizes.device)
    group_first = torch.cat([first, protected.expand(b, -1)], dim=1)
    token = torch.empty(b, n, dtype=torch.int64, device=sizes.device)
    token[:, free] = assign
    token[:, protected] = m + torch.arange(n_fixed, device=sizes.device)
    order = torch.sort(group_first, dim=-1, stable=True).indices
    out_rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=sizes.device)
                                                .expand_as(order))
    return Reduction(out_rank.gather(1, token))
