"""``divprune``: keep the K most mutually different tokens (greedy max-min diversity).

Alvar, Singh, Akbari and Zhang, "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
Models", CVPR 2025 (arXiv:2503.02175; code at github.com/vbdi/divprune). The paper casts pruning as the
Max-Min Diversity Problem: among the subsets of K tokens, find the one whose closest pair is farthest apart,
with the cosine distance ``d(i, j) = 1 - cos(x_i, x_j)`` between token embeddings, and solves it greedily
(as its code does):

1. start from the token farthest from its own nearest neighbour, ``argmax_i min_{j != i} d(i, j)``;
2. repeat K - 1 times: add the unselected token whose distance to the closest selected token is largest.

Step 2 keeps one vector, each token's distance to the selected set, and lowers it with the new token's row
of the distance matrix: ``O(N^2 D)`` for the matrix (which step 1 needs in full) and ``O(N)`` per step.

Shapes: ``x`` ``(N, D)`` token vectors, ``y`` ``(N, D)`` the same scaled to unit length, ``dist`` ``(N, N)``,
``gap`` ``(N,)`` each token's distance to the nearest selected token (``-inf`` once selected).

It needs no signal: only the token vectors (the paper uses the visual tokens the LLM receives). Sizes play
no part (it selects; nothing is averaged). Where it differs from the authors' code, on purpose:

- ties (equal distances) go to the earlier token, as ``argmax`` does there, and an already selected token
  is never picked again (their loop could pick one twice when all remaining tokens duplicate selected ones);
- step 1 leaves each token's zero distance to itself out exactly rather than taking the second-smallest
  entry of its column; the two agree unless rounding makes a self-distance the larger one;
- a zero vector has no direction: it is taken as orthogonal to every other token (distance 1), not NaN.

Kept tokens stay in their input order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, select

__all__ = ["divprune", "divprune_order"]


def cosine_distances(x: np.ndarray) -> np.ndarray:
    """``(N, N)`` ``1 - cos`` between the rows of ``x`` (zero on the diagonal); a zero row counts as
    orthogonal to every other row."""
    norms = np.linalg.norm(x, axis=1)
    y = x / np.where(norms > 0, norms, 1.0)[:, None]
    dist = y @ y.T
    np.subtract(1.0, dist, out=dist)
    np.maximum(dist, 0.0, out=dist)  # rounding can push 1 - cos of near-parallel tokens just below 0
    if (norms == 0).any():  # a zero vector: cos 0 with every other token, another zero vector included
        dist[:, norms == 0] = 1.0
        dist[norms == 0, :] = 1.0
    np.fill_diagonal(dist, 0.0)
    return dist


def divprune_order(x: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` tokens DivPrune picks, in the order it picks them (``(k,)`` int64)."""
    n = len(x)
    dist = cosine_distances(x)
    np.fill_diagonal(dist, np.inf)  # step 1: each token's nearest *other* token
    nearest = dist.min(axis=1)
    np.fill_diagonal(dist, 0.0)
    picked = np.empty(k, np.int64)
    picked[0] = int(np.argmax(nearest))  # first maximum: ties go to the earlier token
    gap = dist[picked[0]].copy()
    gap[picked[0]] = -np.inf
    for step in range(1, min(k, n)):
        i = int(np.argmax(gap))
        picked[step] = i
        np.minimum(gap, dist[i], out=gap)
        gap[i] = -np.inf
    return picked


@register_method(
    "divprune", description="keep K mutually diverse tokens: greedy max-min cosine distance (no signal needed)",
    paper="Alvar et al., DivPrune, CVPR 2025", soft_only=True,
)
def divprune(x: np.ndarray, k: int, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator) -> Reduction:
    if not np.isfinite(x).all():
        raise ValueError("divprune: the token vectors have NaN or infinite entries")
    return select(len(x), divprune_order(x, k))
