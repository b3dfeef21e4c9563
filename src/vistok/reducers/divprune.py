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

Shapes (batched, as :func:`vistok.reducers.reduce_tensor` runs it): ``x`` ``(B, N, D)`` token vectors, ``y`` the
same scaled to unit length, ``dist`` ``(B, N, N)``, ``gap`` ``(B, N)`` each token's distance to the nearest
selected token (``-inf`` once selected). On the CPU the greedy loop (K steps of ``O(N)`` work) runs on the same
memory through numpy, whose per-call cost is a fraction of torch's at this size.

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

from typing import TYPE_CHECKING, Any

import numpy as np

from vistok.reducers.core import Reduction, all_finite, gram, register_method, select

if TYPE_CHECKING:
    import torch

__all__ = ["divprune", "divprune_order", "cosine_distances"]


def _as_batch(x: Any) -> tuple[Any, bool]:
    """``(B, N, D)`` tensor from an ``(N, D)`` numpy array or tensor (float64 for numpy), and whether it was numpy."""
    import torch

    if isinstance(x, torch.Tensor):
        return (x[None] if x.ndim == 2 else x), False
    return torch.from_numpy(np.asarray(x, np.float64))[None], True


def _distances(x: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` ``1 - cos`` between the rows of each ``x`` ``(B, N, D)`` (zero on the diagonal, exactly
    symmetric); a zero row counts as orthogonal to every other row."""
    import torch

    norms = torch.linalg.vector_norm(x, dim=-1)
    y = x / torch.where(norms > 0, norms, 1.0)[..., None]
    dist = gram(y)
    dist = dist.neg_().add_(1.0).clamp_min_(0.0)  # 1 - cos in place (-c + 1 == 1 - c exactly); rounding can
    # push 1 - cos of near-parallel tokens just below 0
    zero = norms == 0
    if bool(zero.any()):  # a zero vector: cos 0 with every other token, another zero vector included
        dist = dist.masked_fill(zero[:, None, :] | zero[:, :, None], 1.0)
    dist.diagonal(dim1=-2, dim2=-1).zero_()
    return dist


def cosine_distances(x: Any) -> Any:
    """``(N, N)`` ``1 - cos`` between the rows of ``x`` ``(N, D)`` (numpy in, numpy out; a tensor gives a tensor)."""
    batch, numpy_in = _as_batch(x)
    dist = _distances(batch)
    return dist[0].numpy() if numpy_in else (dist[0] if x.ndim == 2 else dist)


def _order(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, k)`` the tokens DivPrune picks from each ``x`` ``(B, N, D)``, in the order it picks them."""
    import torch

    b, n, _ = x.shape
    dist = _distances(x)
    diagonal = dist.diagonal(dim1=-2, dim2=-1)
    diagonal.fill_(float("inf"))  # step 1: each token's nearest *other* token
    nearest = dist.amin(dim=-1)
    diagonal.zero_()
    first = torch.argmax(nearest, dim=-1)  # first maximum: ties go to the earlier token
    steps = min(k, n)
    if dist.device.type == "cpu":
        picked = np.stack([_greedy(dist[i].numpy(), int(first[i]), steps) for i in range(b)])
        return torch.from_numpy(picked)
    rows = torch.arange(b, device=x.device)
    picked = torch.empty(b, steps, dtype=torch.int64, device=x.device)
    picked[:, 0] = first
    gap = dist[rows, first].clone()
    gap[rows, first] = -float("inf")
    for step in range(1, steps):
        i = torch.argmax(gap, dim=-1)
        picked[:, step] = i
        torch.minimum(gap, dist[rows, i], out=gap)
        gap[rows, i] = -float("inf")
    return picked


def _greedy(dist: np.ndarray, first: int, steps: int) -> np.ndarray:
    """Step 2 on one ``(N, N)`` distance matrix: the farthest token from the selected set, ``steps - 1`` times."""
    picked = np.empty(steps, np.int64)
    picked[0] = first
    gap = dist[first].copy()
    gap[first] = -np.inf
    for step in range(1, steps):
        i = int(np.argmax(gap))
        picked[step] = i
        np.minimum(gap, dist[i], out=gap)
        gap[i] = -np.inf
    return picked


def divprune_order(x: Any, k: int) -> Any:
    """The first ``k`` tokens DivPrune picks from ``x`` ``(N, D)``, in the order it picks them (``(k,)`` int64;
    numpy in, numpy out, computed in float64; a ``(B, N, D)`` tensor gives ``(B, k)``)."""
    batch, numpy_in = _as_batch(x)
    order = _order(batch, k)
    return order[0].cpu().numpy() if numpy_in else (order[0] if x.ndim == 2 else order)


@register_method(
    "divprune", description="keep K mutually diverse tokens: greedy max-min cosine distance (no signal needed)",
    paper="Alvar et al., DivPrune, CVPR 2025", soft_only=True,
)
def divprune(x: torch.Tensor, k: int, sizes: torch.Tensor, signals: dict[str, Any], seed: int) -> Reduction:
    if not all_finite(x):
        raise ValueError("divprune: the token vectors have NaN or infinite entries")
    return select(x.shape[1], _order(x, k))
