"""``dpc-knn``: merge the tokens into K clusters found by density-peak clustering with k-nearest neighbours.

Density peaks (Rodriguez and Laio, "Clustering by fast search and find of density peaks", Science 2014):
a cluster centre is denser than its neighbours and far from any denser point. Each token ``i`` gets

- a local density, the k-nearest-neighbour form of Du, Ding and Jia ("Study on density peaks clustering
  based on k-nearest neighbors and principal component analysis", Knowledge-Based Systems 2016), as used
  for token clustering by TCFormer (Zeng et al., "Not All Tokens Are Equal: Human-centric Visual Analysis
  via Token Clustering Transformer", CVPR 2022): ``rho_i = exp(-mean_{j in kNN(i)} d(i, j)^2)``;
- its distance to the nearest denser token, ``delta_i = min_{j denser than i} d(i, j)``, and for the densest
  token its largest distance to any token;
- the score ``rho_i * delta_i``. The K best-scoring tokens are the centres; every other token joins its
  nearest centre, and each cluster becomes the size-weighted mean of its members. SparseVLM (Zhang et al.,
  "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference", ICML 2025)
  recycles pruned visual tokens this way.

Choices, where the papers leave room or their code differs:

- ``d`` is the Euclidean distance between token vectors divided by ``sqrt(D)`` (TCFormer and SparseVLM do
  the same), so it is a root-mean-square per-dimension difference. No other normalisation: the vectors'
  scale sets the balance between density and distance in the score (density weighs more for larger
  vectors), as in those implementations.
- ``neighbours`` (K of kNN, default 5 as in TCFormer) counts other tokens, not the token itself, as the
  formula reads. TCFormer's code takes the 5 smallest entries of the distance row, its own zero included,
  which is ``neighbours=4`` up to the factor 4/5 in the exponent; SparseVLM uses the cluster count.
- The score is ranked as ``log rho + log delta``: the same order, without ``exp`` underflowing to zero for
  every token when the vectors are large.
- Ties are broken by input order, not by the random noise the implementations add: of two equally dense
  tokens the earlier one counts as denser (so of two identical tokens only one can become a centre), equal
  scores go to the earlier token, and a token equally near two centres joins the earlier one. A centre
  always joins its own cluster.
- The density treats every token as one point, whatever its size; sizes weight only the merged means
  (TCFormer weights by a learned importance, SparseVLM uniformly).

Outputs are ordered by their centre's input index.

Shapes: ``x`` ``(N, D)``, ``d2`` ``(N, N)`` squared distances (before the ``1/D`` scaling), ``log_rho``,
``delta2``, ``log_score`` ``(N,)``, ``centres`` ``(K,)`` input indices, ascending.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, top_k

__all__ = ["dpc_knn", "dpc_knn_clusters"]


def squared_distances(x: np.ndarray) -> np.ndarray:
    """``(N, N)`` squared Euclidean distances between the rows of ``x``: exactly symmetric (ties between
    ``d(i, j)`` and ``d(j, i)``, such as two mutual nearest neighbours, stay ties), zeros on the diagonal."""
    sq = np.einsum("ij,ij->i", x, x)
    d2 = x @ x.T  # numpy computes x @ x.T as one symmetric product (BLAS syrk)
    d2 *= -2.0
    d2 += np.add.outer(sq, sq)  # sq_i + sq_j == sq_j + sq_i; adding sq_i, then sq_j, would break the symmetry
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def dpc_knn_clusters(x: np.ndarray, k: int, neighbours: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``(centres, assign)``: the ``k`` centres' input indices (ascending) and each token's cluster, the
    position of its centre in ``centres``."""
    n, dim = x.shape
    d2 = squared_distances(x)
    m = min(neighbours, n - 1)
    if m > 0:
        nearest = np.partition(d2, m, axis=1)[:, :m + 1]  # its own 0 and its m nearest others
        nearest.sort(axis=1)  # a fixed summation order: equal neighbourhoods give equal densities
        log_rho = -nearest.sum(axis=1) / (m * dim)
    else:
        log_rho = np.zeros(n)
    order = np.argsort(-log_rho, kind="stable")  # densest first; equal densities: earlier token first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    delta2 = np.where(rank[None, :] < rank[:, None], d2, np.inf).min(axis=1)
    delta2[order[0]] = d2[order[0]].max()
    with np.errstate(divide="ignore"):  # delta 0 (a duplicate of a denser token): score -inf
        log_score = log_rho + 0.5 * np.log(delta2 / dim)
    centres = np.sort(top_k(log_score, k))
    assign = np.argmin(d2[:, centres], axis=1)
    assign[centres] = np.arange(len(centres))
    return centres, assign


@register_method(
    "dpc-knn", description="merge into K density-peak clusters (kNN density; size-weighted means; no signal)",
    paper="Rodriguez & Laio, Science 2014; Du et al., 2016 (kNN density); Zeng et al., TCFormer, CVPR 2022; "
          "Zhang et al., SparseVLM, ICML 2025",
    merges=True, options=("neighbours",),
)
def dpc_knn(x: np.ndarray, k: int, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator,
            neighbours: int = 5) -> Reduction:
    """``neighbours``: how many nearest other tokens set a token's density (default 5)."""
    if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 1:
        raise ValueError(f"dpc-knn: neighbours must be a whole number >= 1, got {neighbours!r}")
    if not np.isfinite(x).all():
        raise ValueError("dpc-knn: the token vectors have NaN or infinite entries")
    _, assign = dpc_knn_clusters(x, k, int(neighbours))
    return Reduction(assign)
