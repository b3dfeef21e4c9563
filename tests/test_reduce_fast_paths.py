"""The reducers' fast paths give what the plain formulas give: dpc-knn's nearest denser token from the kNN lists,
PruMerge's neighbour sums without a (K, N) product, group means by one index_add, and the finiteness check."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import vistok  # noqa: E402
from vistok.reducers import dpc_knn as dpc  # noqa: E402
from vistok.reducers.core import all_finite, group_mean  # noqa: E402


def _plain_nearest_denser(d2: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """The definition: min over tokens of a smaller density rank, ``inf`` for the densest."""
    b, n, _ = d2.shape
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n).expand(b, n))
    denser = rank[:, None, :] < rank[:, :, None]
    return torch.where(denser, d2, torch.inf).amin(dim=-1)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("neighbours,count_self", [(5, True), (2, True), (3, False), (1, False)])
def test_nearest_denser_from_knn_equals_whole_rows(seed: int, neighbours: int, count_self: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(2, 40, 3)).astype(np.float64)  # small integers: many ties and duplicates
    x[1, 5] = x[1, 7]
    d2 = dpc._squared(torch.from_numpy(x))
    nearest, m = dpc._knn(d2, neighbours, count_self)
    log_rho = dpc._log_density(d2, 3, neighbours, count_self, nearest, m)
    order = torch.sort(-log_rho, dim=-1, stable=True).indices
    expected = _plain_nearest_denser(d2, order)
    assert torch.equal(dpc._nearest_denser(d2, order, nearest), expected)
    assert torch.equal(dpc._nearest_denser(d2, order), expected)
    assert torch.isinf(expected.gather(1, order[:, :1])).all()  # the densest has no denser token


def test_prumerge_neighbour_sums_equal_the_dense_product() -> None:
    rng = np.random.default_rng(0)
    n, d = 30, 4
    x = rng.normal(size=(n, d))
    keys = rng.integers(0, 2, size=(n, 3)).astype(np.float64)  # ties among the cosines
    attention = rng.dirichlet(np.ones(n))
    tokens = vistok.Tokens.from_grid(x, (5, 6))
    out = vistok.reduce(tokens, "prumerge", keep=6, cls_attention=attention, keys=keys, neighbours=7)
    kept = np.sort(np.argsort(-attention, kind="stable")[:5])
    unit = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    expected = []
    for p in kept:
        sim = unit[p] @ unit.T  # kept or pruned tokens alike, not the token itself
        sim[p] = -np.inf
        order = np.argsort(-sim, kind="stable")[:7]  # ties: the earlier token
        expected.append(x[p] + attention[order] @ x[order])
    pruned = np.setdiff1d(np.arange(n), kept)
    expected.append(attention[pruned] @ x[pruned])
    np.testing.assert_allclose(out.values, np.array(expected), rtol=1e-12, atol=1e-12)


def test_group_mean_index_add_equals_weighted_means() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 9, 3)))
    assign = torch.tensor([[0, 1, -1, 0, 2, 2, 1, -1, 0], [2, 2, 1, 0, -1, 0, 1, 1, 2]])
    sizes = torch.from_numpy(rng.integers(1, 4, size=(2, 9)).astype(np.float64))
    got = group_mean(x, assign, 3, sizes)
    for b in range(2):
        for g in range(3):
            members = (assign[b] == g).numpy()
            w = sizes[b].numpy()[members]
            np.testing.assert_allclose(got[b, g].numpy(), (x[b].numpy()[members] * w[:, None]).sum(0) / w.sum())
    ones = group_mean(x, torch.tensor([[0, 0, 1, 1, 1, 2, 2, 2, 2]] * 2), 3, torch.ones(2, 9))
    np.testing.assert_allclose(ones[0, 2].numpy(), x[0, 5:].numpy().mean(0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_all_finite_finds_one_bad_entry(bad: float) -> None:
    t = torch.zeros(5, 7)
    assert all_finite(t) and all_finite(torch.zeros(0))
    t[3, 4] = bad
    assert not all_finite(t)
    with pytest.raises(ValueError, match="NaN or infinite"):
        vistok.reduce(vistok.Tokens.from_grid(t.numpy(), (5, 1)), "divprune", keep=2)
