"""``dpc-knn``: merge the tokens into K clusters found by density-peak clustering with k-nearest neighbours.

Density peaks (Rodriguez and Laio, "Clustering by fast search and find of density peaks", Science 2014):
a cluster centre is denser than its neighbours and far from any denser point. Each token ``i`` gets

- a local density, the k-nearest-neighbour form of Du, Ding and Jia ("Study on density peaks clustering
  based on k-nearest neighbors and principal component analysis", Knowledge-Based Systems 2016), as used
  for token clustering by TCFormer (Zeng et al., "Not All Tokens Are Equal: Human-centric Visual Analysis
  via Token Clustering Transformer", CVPR 2022) and Chat-UniVi (Jin et al., CVPR 2024, ``cluster_dpc_knn``):
  ``rho_i = exp(-mean_{j in kNN(i)} d(i, j)^2)``;
- its distance to the nearest denser token, ``delta_i = min_{j denser than i} d(i, j)``, and for the densest
  token the largest distance between any two tokens (the implementations' ``dist_matrix.max()``);
- the score ``rho_i * delta_i``. The K best-scoring tokens are the centres; every other token joins its
  nearest centre, and each cluster becomes the size-weighted mean of its members. SparseVLM (Zhang et al.,
  "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference", ICML 2025)
  recycles pruned visual tokens this way.

Choices, where the papers leave room or their code differs:

- ``d`` is the Euclidean distance between token vectors divided by ``sqrt(D)`` (TCFormer and SparseVLM do
  the same), so it is a root-mean-square per-dimension difference. No other normalisation: the vectors'
  scale sets the balance between density and distance in the score (density weighs more for larger
  vectors), as in those implementations.
- ``neighbours`` (k of kNN) and ``count_self``: by default (``count_self=True``) the kNN are the ``k``
  smallest entries of the token's distance row, its own zero included, as Chat-UniVi's and TCFormer's code
  take them (``torch.topk(dist_matrix, k, largest=False)``): with ``k = 5`` the mean runs over four
  neighbours and a zero. ``count_self=False`` takes ``k`` other tokens, as Du et al.'s formula reads
  (vistok's earlier rule; ``count_self=False, neighbours=4`` on ``x * sqrt(4/5)`` gives the default's
  partition of ``x``). ``neighbours=None`` (default) is Chat-UniVi's ``CTM`` choice: ``k = 5``, or
  ``min(3, max(K // 2, 1))`` when ``5 > K`` clusters; a number is used as given. SparseVLM uses the cluster
  count.
- The cluster count: ``keep=K`` is used as given; ``ratio=r`` gives ``math.ceil(N * r)``, rounded up as
  Chat-UniVi's ``cluster_num`` is (the other methods round half up).
- The score is ranked as ``log rho + log delta``: the same order, without ``exp`` underflowing to zero for
  every token when the vectors are large.
- Ties are broken by input order, not by the random noise the implementations add (Chat-UniVi and TCFormer
  add ``torch.rand(...) * 1e-6`` to every density, so their partition can change from run to run where
  densities tie or fall below about ``1e-6``): of two equally dense tokens the earlier one counts as denser
  (so of two identical tokens only one can become a centre), equal scores go to the earlier token, and a
  token equally near two centres joins the earlier one (the implementations: the centre with the higher
  score). A centre always joins its own cluster. ``noise=1e-6`` adds their jitter, uniform in
  ``[0, noise)``, drawn from the ``seed`` of :func:`vistok.reduce` (so a seed gives one result).
- The density treats every token as one point, whatever its size; sizes weight only the merged means
  (TCFormer weights by a learned importance, SparseVLM uniformly).

Outputs are ordered by their centre's input index.

Shapes (batched, as :func:`vistok.reducers.reduce_tensor` runs it): ``x`` ``(B, N, D)``, ``d2`` ``(B, N, N)``
squared distances (before the ``1/D`` scaling), ``log_rho``, ``delta2``, ``log_score`` ``(B, N)``, ``centres``
``(B, K)`` input indices, ascending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vistok.reducers.core import Reduction, gram, register_method, top_k
from vistok.reducers.divprune import _as_batch

if TYPE_CHECKING:
    import torch

__all__ = ["dpc_knn", "dpc_knn_clusters", "squared_distances", "knn_log_density"]


def _squared(x: torch.Tensor, check: bool = False) -> torch.Tensor:
    """``(B, N, N)`` squared Euclidean distances between the rows of each ``x`` ``(B, N, D)``: exactly symmetric
    (ties between ``d(i, j)`` and ``d(j, i)``, such as two mutual nearest neighbours, stay ties), zeros on the
    diagonal. ``check``: raise when a vector has a NaN or infinite entry (its squared norm is not finite)."""
    import torch

    g = gram(x)
    sq = g.diagonal(dim1=-2, dim2=-1).clone()  # |x_i|^2 from the same product: identical rows give exactly 0
    if check and not bool(torch.isfinite(sq).all()):
        raise ValueError("dpc-knn: the token vectors have NaN or infinite entries (or entries too large to square)")
    # sq_i + sq_j == sq_j + sq_i, so the sum stays symmetric; -2 g is exact, so one add with alpha=-2 rounds once
    d2 = torch.add(sq[:, :, None] + sq[:, None, :], g, alpha=-2.0, out=g)  # over g: one (N, N) buffer fewer
    d2.clamp_min_(0.0)
    d2.diagonal(dim1=-2, dim2=-1).zero_()
    return d2


def squared_distances(x: Any) -> Any:
    """``(N, N)`` squared distances between the rows of ``x`` ``(N, D)`` (numpy in, numpy out, in float64)."""
    batch, numpy_in = _as_batch(x)
    d2 = _squared(batch)
    return d2[0].numpy() if numpy_in else (d2[0] if x.ndim == 2 else d2)


def _knn(d2: torch.Tensor, neighbours: int, count_self: bool) -> tuple[Any, int]:
    """Each row's smallest squared distances (``torch.topk``'s values and indices, ascending; its own 0 among them
    with ``count_self``) and ``m``, how many the mean runs over; ``None`` when the density is constant."""
    import torch

    n = d2.shape[-1]
    m = min(neighbours, n) if count_self else min(neighbours, n - 1)
    if m <= 0 or (count_self and m == 1):
        return None, m
    others = m - 1 if count_self else m  # nearest tokens besides itself (its 0 adds nothing to the sum)
    return torch.topk(d2, others + 1, dim=-1, largest=False, sorted=True), m  # its own 0 and the others


def _log_density(d2: torch.Tensor, dim: int, neighbours: int, count_self: bool = True, nearest: Any = None,
                 m: int = 0) -> torch.Tensor:
    """``(B, N)`` ``log rho = -mean(d^2) / dim`` over each row's ``neighbours`` smallest squared distances
    (``nearest``, ``m``: :func:`_knn`'s answer, when the caller has it)."""
    import torch

    if nearest is None and not m:
        nearest, m = _knn(d2, neighbours, count_self)
    if nearest is None:
        return torch.zeros(d2.shape[:-1], dtype=d2.dtype, device=d2.device)
    return -nearest.values.sum(-1) / (m * dim)  # sorted: equal neighbourhoods give equal densities


def knn_log_density(d2: Any, dim: int, neighbours: int, count_self: bool = True) -> Any:
    """``(N,)`` ``log rho = -mean(d^2) / dim`` over each row's ``neighbours`` smallest squared distances ``d2``:
    the token's own 0 among them (``count_self``, Chat-UniVi's ``topk``), or ``neighbours`` other tokens."""
    batch, numpy_in = _as_batch(d2)
    out = _log_density(batch, dim, neighbours, count_self)
    return out[0].numpy() if numpy_in else (out[0] if d2.ndim == 2 else out)


def _nearest_denser(d2: torch.Tensor, order: torch.Tensor, nearest: Any = None) -> torch.Tensor:
    """``(B, N)`` each token's smallest squared distance to a denser one (``inf`` for the densest, which the caller
    sets). A token with a denser one among its nearest (``nearest``, :func:`_knn`'s answer) has it there: every
    other token is at least as far as those. The rest (local density peaks, a few) search their whole row of
    ``d2``; without ``nearest`` every row does, in density order: the row of the token ranked ``r`` holds the
    denser tokens in its first ``r`` columns, so one add of a constant ``inf`` upper triangle and a row minimum
    find it."""
    import torch

    b, n, _ = d2.shape
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=d2.device).expand(b, n))
    if nearest is not None:
        values, index = nearest
        denser = rank.gather(1, index.reshape(b, -1)).view(index.shape) < rank[..., None]
        found = torch.where(denser, values, torch.inf).amin(dim=-1)
        rows = torch.isinf(found).nonzero()  # (P, 2): image, token
        if len(rows):
            image, token = rows[:, 0], rows[:, 1]
            whole = d2.reshape(b * n, n).index_select(0, image * n + token)
            closer = rank.index_select(0, image) < rank[image, token][:, None]
            found[image, token] = torch.where(closer, whole, torch.inf).amin(dim=-1)
        return found
    flat = (order + torch.arange(b, device=d2.device)[:, None] * n).reshape(-1)
    rows = d2.reshape(b * n, n).index_select(0, flat).view(b, n, n)
    ranked = rows.index_select(2, order[0]) if b == 1 else rows.gather(2, order[:, None, :].expand(b, n, n))
    by_rank = (ranked + _upper_inf(n, d2.dtype, d2.device)).amin(dim=-1)
    return torch.empty_like(by_rank).scatter_(1, order, by_rank)


_UPPER: dict[tuple[int, Any, Any], torch.Tensor] = {}


def _upper_inf(n: int, dtype: Any, device: Any) -> torch.Tensor:
    """``(N, N)`` ``inf`` on and above the diagonal, ``0`` below (kept for the last few sizes)."""
    import torch

    key = (n, dtype, str(device))
    if key not in _UPPER:
        if len(_UPPER) > 8:
            _UPPER.clear()
        _UPPER[key] = torch.triu(torch.full((n, n), torch.inf, dtype=dtype, device=device))
    return _UPPER[key]


def _clusters(x: torch.Tensor, k: int, neighbours: int, count_self: bool, noise: float,
              rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centres, assign)`` ``(B, K)`` and ``(B, N)`` for a batch ``x`` ``(B, N, D)``."""
    import torch

    b, n, dim = x.shape
    d2 = _squared(x, check=True)
    nearest, m = _knn(d2, neighbours, count_self)
    log_rho = _log_density(d2, dim, neighbours, count_self, nearest, m)
    if noise > 0:  # rho + u, in log space: log(exp(log_rho) + u); the same draw for every row
        u = torch.from_numpy((rng if rng is not None else np.random.default_rng(0)).random(n) * noise)
        log_rho = torch.logaddexp(log_rho, torch.log(u.to(log_rho)))
    order = torch.sort(-log_rho, dim=-1, stable=True).indices  # densest first; equal densities: earlier first
    delta2 = _nearest_denser(d2, order, nearest)
    delta2.scatter_(1, order[:, :1], d2.amax(dim=(-2, -1))[:, None])
    log_score = log_rho + 0.5 * torch.log(delta2 / dim)  # delta 0 (a duplicate of a denser token): -inf
    centres = torch.sort(top_k(log_score, k), dim=-1).values
    near = d2.gather(2, centres[:, None, :].expand(b, n, centres.shape[1]))
    assign = torch.argmin(near, dim=-1)  # first minimum: the earlier centre
    assign.scatter_(1, centres, torch.arange(centres.shape[1], device=x.device).expand_as(centres))
    return centres, assign


def dpc_knn_clusters(x: Any, k: int, neighbours: int = 5, count_self: bool = True, noise: float = 0.0,
                     rng: np.random.Generator | None = None) -> tuple[Any, Any]:
    """``(centres, assign)``: the ``k`` centres' input indices (ascending) and each token's cluster, the
    position of its centre in ``centres``. ``noise``: uniform ``[0, noise)`` added to each density (``rng``).
    ``x`` ``(N, D)`` numpy gives numpy (in float64); a tensor gives tensors."""
    batch, numpy_in = _as_batch(x)
    centres, assign = _clusters(batch, k, neighbours, count_self, noise, rng)
    if numpy_in:
        return centres[0].numpy(), assign[0].numpy()
    return (centres[0], assign[0]) if x.ndim == 2 else (centres, assign)


@register_method(
    "dpc-knn", description="merge into K density-peak clusters (kNN density; size-weighted means; no signal)",
    paper="Rodriguez & Laio, Science 2014; Du et al., 2016 (kNN density); Zeng et al., TCFormer, CVPR 2022; "
          "Zhang et al., SparseVLM, ICML 2025",
    merges=True, options=("neighbours", "count_self", "noise"), ratio_rounding="up",
)
def dpc_knn(x: torch.Tensor, k: int, sizes: torch.Tensor, signals: dict[str, Any], seed: int,
            neighbours: int | None = None, count_self: bool = True, noise: float = 0.0) -> Reduction:
    """``neighbours``: the k of kNN (default: Chat-UniVi's 5, or ``min(3, max(K // 2, 1))`` below 5
    clusters); ``count_self``: the token's own zero distance is one of them (default, as Chat-UniVi);
    ``noise``: Chat-UniVi's density jitter (``1e-6`` there; default 0, ties by input order; drawn from ``seed``,
    the same for every image of a batch)."""

    if neighbours is None:
        neighbours = 5 if k >= 5 else min(3, max(k // 2, 1))
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 1:
        raise ValueError(f"dpc-knn: neighbours must be a whole number >= 1, got {neighbours!r}")
    if count_self not in (True, False):
        raise ValueError(f"dpc-knn: count_self must be True or False, got {count_self!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < np.inf:
        raise ValueError(f"dpc-knn: noise must be a number >= 0 (Chat-UniVi adds 1e-6), got {noise!r}")
    _, assign = _clusters(x, k, int(neighbours), bool(count_self), float(noise), np.random.default_rng(seed))
    return Reduction(assign)
