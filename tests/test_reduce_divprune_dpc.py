"""``divprune`` and ``dpc-knn`` against plain-Python re-derivations of their papers' algorithms, with ties,
invariants, bad inputs and a run on real focus-vit-s14 tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vistok
from vistok.reducers.divprune import cosine_distances, divprune_order
from vistok.reducers.dpc_knn import dpc_knn_clusters, squared_distances
from vistok.samples import sample_images

# -- brute-force references: lists and loops, straight from the papers ---------------------------------


def divprune_reference(x: list[list[float]], k: int) -> list[int]:
    """DivPrune's greedy max-min selection (Alvar et al., CVPR 2025), in picking order. Ties: earlier token."""
    n = len(x)

    def distance(i: int, j: int) -> float:
        if i == j:
            return 0.0
        a, b = x[i], x[j]
        na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
        if na == 0 or nb == 0:
            return 1.0
        return 1.0 - sum(u * v for u, v in zip(a, b)) / (na * nb)

    best, first = -1.0, 0
    for i in range(n):
        nearest = min((distance(i, j) for j in range(n) if j != i), default=math.inf)
        if nearest > best:
            best, first = nearest, i
    picked = [first]
    while len(picked) < k:
        best, choice = -math.inf, -1
        for i in range(n):
            if i in picked:
                continue
            gap = min(distance(i, j) for j in picked)
            if gap > best:
                best, choice = gap, i
        picked.append(choice)
    return picked


def dpc_reference(x: list[list[float]], k: int, neighbours: int = 5, count_self: bool = True) -> list[int]:
    """Density peaks with kNN density (Rodriguez & Laio 2014; Du et al. 2016; TCFormer's 1/sqrt(D) scale):
    each token's cluster, clusters numbered by their centre's input index. ``count_self``: the token's own 0
    is one of its k nearest (Chat-UniVi's topk). The densest token's delta: the largest distance of all. Ties:
    earlier token."""
    n, dim = len(x), len(x[0])
    d2 = [[sum((u - v) ** 2 for u, v in zip(x[i], x[j])) for j in range(n)] for i in range(n)]
    m = min(neighbours, n if count_self else n - 1)
    rho = []
    for i in range(n):
        row = sorted(d2[i]) if count_self else sorted(d2[i][j] for j in range(n) if j != i)
        rho.append(math.exp(-(sum(row[:m]) / (m * dim))) if m else 1.0)

    def denser(j: int, i: int) -> bool:
        return rho[j] > rho[i] or (rho[j] == rho[i] and j < i)

    delta = []
    for i in range(n):
        higher = [math.sqrt(d2[i][j] / dim) for j in range(n) if denser(j, i)]
        delta.append(min(higher) if higher else math.sqrt(max(map(max, d2)) / dim))
    score = [rho[i] * delta[i] for i in range(n)]
    centres = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:k])
    assign = []
    for i in range(n):
        if i in centres:
            assign.append(centres.index(i))
            continue
        best = min(d2[i][c] for c in centres)
        assign.append(next(c for c, centre in enumerate(centres) if d2[i][centre] == best))
    return assign


def tokens_of(x: np.ndarray) -> vistok.Tokens:
    """Tokens in one row, so the source map starts as the identity."""
    return vistok.Tokens.from_grid(np.asarray(x, np.float64), (1, len(x)), meta={"tokenizer": "test"})


def kept_indices(out: vistok.Tokens) -> list[int]:
    """The input index behind each output token of a selection, in output order."""
    return [int(np.flatnonzero(out.source == t)[0]) for t in range(len(out))]


def exact_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Vectors whose unit vectors and cosines are exact in floating point (axes and (+-1,+-1,+-1,+-1), times
    whole numbers), drawn with repeats: many exact ties and duplicates."""
    pool = [np.eye(4)[i] * s for i in range(4) for s in (1, -1)]
    pool += [np.array([1, -1, 1, -1.0]), np.ones(4), np.array([1, 1, -1, -1.0]), -np.ones(4)]
    choice = rng.integers(0, len(pool), n)
    return np.stack([pool[c] for c in choice]) * rng.integers(1, 4, n)[:, None]


vectors = st.integers(6, 15).flatmap(lambda n: st.tuples(
    st.integers(0, 2**32 - 1), st.just(n), st.integers(1, n), st.integers(2, 8)))


# -- divprune -----------------------------------------------------------------------------------------

def test_divprune_by_hand():
    # angles 0, 10, 90 and 180 degrees: nearest-neighbour distances 1-cos10, 1-cos10, 1-cos80, 1 -> start at
    # 180; then 0 (distance 2), then 90 (distance 1 from both), then 10
    rad = np.radians([0.0, 10.0, 90.0, 180.0])
    x = np.stack([np.cos(rad), np.sin(rad)], axis=1)
    assert divprune_order(x, 4).tolist() == [3, 0, 2, 1]
    assert kept_indices(vistok.reduce(tokens_of(x), "divprune", keep=2)) == [0, 3]
    assert kept_indices(vistok.reduce(tokens_of(x), "divprune", keep=3)) == [0, 2, 3]


@settings(max_examples=30, deadline=None)
@given(vectors)
def test_divprune_matches_the_reference(case):
    seed, n, k, dim = case
    x = np.random.default_rng(seed).normal(size=(n, dim))
    expected = divprune_reference(x.tolist(), k)
    assert divprune_order(x, k).tolist() == expected
    out = vistok.reduce(tokens_of(x), "divprune", keep=k)
    assert kept_indices(out) == sorted(expected)  # input order
    np.testing.assert_array_equal(out.values, x[sorted(expected)])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(6, 15))
def test_divprune_ties_and_duplicates_match_the_reference(seed, n):
    x = exact_directions(np.random.default_rng(seed), n)
    expected = divprune_reference(x.tolist(), n)
    order = divprune_order(x, n)
    assert order.tolist() == expected and sorted(expected) == list(range(n))  # each token once


def test_divprune_identical_and_zero_tokens():
    same = np.ones((5, 3))
    assert divprune_order(same, 5).tolist() == [0, 1, 2, 3, 4]  # all tied: input order, never a repeat
    x = np.array([[1.0, 0], [0.9, 0.1], [0, 0], [1.0, 0.05]])
    # the zero vector is at distance 1 from everything: farther from its neighbours than any other token
    assert divprune_order(x, 4)[0] == 2
    assert divprune_order(x, 4).tolist() == divprune_reference(x.tolist(), 4)


@settings(max_examples=20, deadline=None)
@given(vectors, st.lists(st.integers(-3, 3), min_size=15, max_size=15))
def test_divprune_ignores_vector_lengths(case, exponents):
    seed, n, k, dim = case
    x = np.random.default_rng(seed).normal(size=(n, dim))
    scaled = x * np.exp2(exponents[:n])[:, None]  # powers of two: the unit vectors stay bit-identical
    assert divprune_order(scaled, k).tolist() == divprune_order(x, k).tolist()


# -- dpc-knn ------------------------------------------------------------------------------------------

def test_dpc_knn_by_hand():
    # two tight pairs and one far point on a line; one neighbour besides itself: density exp(-d_nn^2)
    # (count_self=False, neighbours=1), or exp(-d_nn^2 / 2) (Chat-UniVi's k = 2, its own 0 included): same order
    x = np.array([[0.0], [0.1], [5.0], [5.2], [20.0]])
    # rho: e^-0.01 (0, 1), e^-0.04 (2, 3), e^-219 (4); token 0 is densest (tie -> earlier)
    # delta: 0 -> 20 (its farthest), 1 -> 0.1, 2 -> 4.9, 3 -> 0.2, 4 -> 14.8 (to 3)
    # score: 0: 19.8, 2: 4.7, 3: 0.19, 1: 0.099, 4: ~1e-97
    assert vistok.reduce(tokens_of(x), "dpc-knn", keep=1, neighbours=1, count_self=False).sizes.tolist() == [5]
    for options in ({"neighbours": 1, "count_self": False}, {"neighbours": 2}):
        out = vistok.reduce(tokens_of(x), "dpc-knn", keep=2, **options)
        assert out.source.tolist() == [0, 0, 1, 1, 1]  # 20 is nearer 5.0 than 0.0
        np.testing.assert_allclose(out.values[:, 0], [0.05, 30.2 / 3])
    centres, assign = dpc_knn_clusters(x, 3, neighbours=1, count_self=False)
    assert centres.tolist() == [0, 2, 3] and assign.tolist() == [0, 0, 1, 2, 2]
    assert dpc_knn_clusters(x, 3, neighbours=2)[1].tolist() == [0, 0, 1, 2, 2]


@settings(max_examples=30, deadline=None)
@given(vectors, st.integers(1, 7))
def test_dpc_knn_matches_the_reference(case, neighbours):
    seed, n, k, dim = case
    x = np.random.default_rng(seed).normal(size=(n, dim))
    expected = dpc_reference(x.tolist(), k, neighbours)
    centres, assign = dpc_knn_clusters(x, k, neighbours)
    assert assign.tolist() == expected
    out = vistok.reduce(tokens_of(x), "dpc-knn", keep=k, neighbours=neighbours)
    assert out.source.tolist() == expected
    means = np.stack([x[np.array(expected) == c].mean(0) for c in range(k)])
    np.testing.assert_allclose(out.values, means, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(vectors, st.integers(1, 6), st.integers(-5, 5))
def test_dpc_knn_ties_match_the_reference(case, neighbours, shift):
    # whole-number coordinates in a small range: equal densities, equal scores and duplicate tokens are
    # common, and every squared distance is exact, so the tie rules are compared exactly
    seed, n, k, dim = case
    x = np.random.default_rng(seed).integers(0, 3, size=(n, min(dim, 3))).astype(np.float64)
    expected = dpc_reference(x.tolist(), k, neighbours)
    assert dpc_knn_clusters(x, k, neighbours)[1].tolist() == expected
    assert dpc_knn_clusters(x + shift, k, neighbours)[1].tolist() == expected  # distances only


def chat_univi_dpc(x: np.ndarray, k: int, knn: int) -> list[int]:
    """Chat-UniVi's ``cluster_dpc_knn`` (and TCFormer's) formulas, brute force: d = |x_i - x_j| / sqrt(D);
    density exp(-mean of the knn smallest d^2 of the row, its own 0 included); delta the distance to the
    nearest denser token, the largest distance of all for the densest; centres the top k by delta * density;
    every token to its nearest centre, a centre to itself. The cluster of each token, numbered by centre;
    None when densities tie (there the original's noise decides)."""
    n, dim = x.shape
    d = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j])) / dim) for j in range(n)] for i in range(n)]
    density = [math.exp(-sum(v * v for v in sorted(row)[:knn]) / knn) for row in d]
    if len(set(density)) < n:  # tied densities: Chat-UniVi's random noise decides (two mutual nearest
        return None            # neighbours always tie at knn = 2)
    top = max(map(max, d))
    delta = [min([d[i][j] for j in range(n) if density[j] > density[i]] or [top]) for i in range(n)]
    score = [delta[i] * density[i] for i in range(n)]
    centres = sorted(range(n), key=lambda i: -score[i])[:k]
    return [centres.index(i) if i in centres else min(range(k), key=lambda c: d[i][centres[c]]) for i in range(n)]


def same_partition(a, b) -> bool:
    return len(a) == len(b) and all((a[i] == a[j]) == (b[i] == b[j]) for i in range(len(a)) for j in range(len(a)))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(6, 40), st.sampled_from([1, 2, 4, 16]))
def test_dpc_knn_default_is_chat_univi(seed, n, dim):
    # random tokens, no ties: the default (k = 5 with its own 0, or CTM's min(3, max(K // 2, 1)) below 5
    # clusters) gives Chat-UniVi's partition, for every K
    x = np.random.default_rng(seed).normal(size=(n, dim))
    for k in sorted({1, 2, 4, 5, n // 4, n // 2, n - 1} - {0}):
        knn = 5 if k >= 5 else min(3, max(k // 2, 1))
        if knn == 1:  # every density is exp(0) = 1: Chat-UniVi's noise alone picks the centres
            continue
        expected = chat_univi_dpc(x, k, knn)
        if expected is not None:
            out = vistok.reduce(tokens_of(x), "dpc-knn", keep=k)
            assert same_partition(out.source.tolist(), expected), k
    # vistok's earlier rule, 4 other tokens, reproduces it on x * sqrt(4/5)
    k = max(1, n // 4)
    if k >= 5:
        old = vistok.reduce(tokens_of(x * math.sqrt(4 / 5)), "dpc-knn", keep=k, neighbours=4, count_self=False)
        assert same_partition(old.source.tolist(), chat_univi_dpc(x, k, 5))


def test_dpc_knn_density_counts_the_token_itself():
    from vistok.reducers.dpc_knn import knn_log_density

    x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]])
    d2 = squared_distances(x)
    # token 0, k = 3: Chat-UniVi's three smallest of its row are 0, 1, 9 (itself included): mean 10 / 3;
    # three other tokens: 1, 9, 49, mean 59 / 3
    assert knn_log_density(d2, 1, 3)[0] == pytest.approx(-10 / 3)
    assert knn_log_density(d2, 1, 3, count_self=False)[0] == pytest.approx(-59 / 3)
    assert (knn_log_density(d2, 1, 1) == 0).all()  # only itself: every density exp(0)


def test_dpc_knn_noise_is_seeded():
    # ties everywhere (k = 1: every density 1): without noise the earlier tokens win; Chat-UniVi's jitter,
    # drawn from the seed, picks other centres, the same ones for the same seed
    x = np.random.default_rng(0).normal(size=(30, 3))
    plain = vistok.reduce(tokens_of(x), "dpc-knn", keep=6, neighbours=1)
    jitter = [vistok.reduce(tokens_of(x), "dpc-knn", keep=6, neighbours=1, noise=1e-6, seed=s) for s in (1, 1, 2)]
    sources = [t.source.tolist() for t in (plain, *jitter)]
    assert sources[1] == sources[2] and sources[1] != sources[3] and sources[0] != sources[1]
    # on distinct densities far above 1e-6 the jitter changes nothing
    jittered = vistok.reduce(tokens_of(x), "dpc-knn", keep=6, noise=1e-6, seed=3)
    assert jittered.source.tolist() == vistok.reduce(tokens_of(x), "dpc-knn", keep=6).source.tolist()
    for bad in (-1e-6, "a", True, float("inf")):
        with pytest.raises(ValueError, match="noise"):
            vistok.reduce(tokens_of(x), "dpc-knn", keep=6, noise=bad)
    with pytest.raises(ValueError, match="count_self"):
        vistok.reduce(tokens_of(x), "dpc-knn", keep=6, count_self="yes")


def test_dpc_knn_duplicates_give_one_centre():
    x = np.array([[0.0, 0], [0, 0], [0, 0], [3, 3], [3, 3], [9, 0]])
    centres, assign = dpc_knn_clusters(x, 3, neighbours=2)
    assert centres.tolist() == [0, 3, 5] and assign.tolist() == [0, 0, 0, 1, 1, 2]
    assert assign.tolist() == dpc_reference(x.tolist(), 3, 2)


def test_dpc_knn_large_vectors_do_not_underflow():
    # exp(-mean d^2) is 0.0 for every token (d^2 >= 2500), so rho * delta ties everywhere and would keep the
    # first tokens; ranked in log space, 1000 (densest, tie -> earlier) and 1050 (nearest denser 50 away,
    # tied with 1100) are the centres
    x = np.array([[0.0], [1000], [1050], [1100], [3000]])
    centres, assign = dpc_knn_clusters(x, 2, neighbours=1, count_self=False)
    assert centres.tolist() == [1, 2] and assign.tolist() == [0, 0, 1, 1, 1]
    assert dpc_knn_clusters(x, 2, neighbours=2)[1].tolist() == [0, 0, 1, 1, 1]  # Chat-UniVi's k = 2: the same


@settings(max_examples=30, deadline=None)
@given(vectors, st.integers(1, 7))
def test_dpc_knn_invariants(case, neighbours):
    seed, n, k, dim = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    centres, assign = dpc_knn_clusters(x, k, neighbours)
    assert len(centres) == k and np.all(np.diff(centres) > 0)  # k distinct centres, ordered by index
    assert assign[centres].tolist() == list(range(k))  # a centre leads its own cluster
    d2 = ((x[:, None] - x[None, centres]) ** 2).sum(-1)
    np.testing.assert_allclose(d2[np.arange(n), assign], d2.min(1), rtol=1e-9, atol=1e-12)  # nearest centre
    tokens = tokens_of(x)
    out = vistok.reduce(tokens, "dpc-knn", keep=k, neighbours=neighbours, seed=seed % 7)
    assert len(out) == k and out.sizes.sum() == n
    again = vistok.reduce(tokens, "dpc-knn", keep=k, neighbours=neighbours)  # the seed plays no part
    assert np.array_equal(out.values, again.values) and np.array_equal(out.source, again.source)


# -- both: chaining, real tokens, bad inputs ----------------------------------------------------------

def assert_means_of_base_tokens(base: vistok.Tokens, out: vistok.Tokens) -> None:
    """Every reduced token is the plain mean of the base tokens (size 1 each) whose patches it covers."""
    assert (out.source >= 0).sum() == out.sizes.sum()
    for token in range(len(out)):
        members = np.flatnonzero(out.source == token)
        assert len(members) == out.sizes[token] >= 1
        np.testing.assert_allclose(out.values[token], base.values[members].astype(np.float64).mean(0),
                                   rtol=1e-5, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["divprune", "dpc-knn"]), st.sampled_from(["divprune", "dpc-knn"]))
def test_chained_reductions_keep_provenance(seed, first, second):
    rng = np.random.default_rng(seed)
    base = vistok.Tokens.from_grid(rng.normal(size=(48, 6)).astype(np.float32), (6, 8))
    middle = vistok.reduce(base, first, keep=20)
    out = vistok.reduce(middle, second, keep=7)
    assert len(out) == 7 and out.values.dtype == np.float32
    assert_means_of_base_tokens(base, out)
    if second == "dpc-knn":  # a merge loses no patch
        assert out.sizes.sum() == middle.sizes.sum() == (48 if first == "dpc-knn" else 20)
    else:  # a selection passes tokens through unchanged, in order
        kept = [int(np.unique(middle.source[out.source == t])[0]) for t in range(7)]
        assert kept == sorted(kept) and out.sizes.tolist() == middle.sizes[kept].tolist()
        np.testing.assert_array_equal(out.values, middle.values[kept])


@pytest.fixture(scope="module")
def real():
    return vistok.load("focus-vit-s14", keys=True).encode(sample_images()[2])


def test_real_tokens(real):
    n = len(real)
    for method in ("divprune", "dpc-knn"):
        for ratio in (0.25, 1 / 16):
            out = vistok.reduce(real, method, ratio=ratio)
            assert len(out) == round(n * ratio) and out.dim == real.dim
            assert out.meta["reductions"][-1] == {"method": method, "from": n, "to": len(out), "seed": 0}
            assert_means_of_base_tokens(real, out)
    kept = vistok.reduce(real, "divprune", ratio=0.25)
    assert kept.sizes.max() == 1 and kept.sizes.sum() == len(kept)
    merged = vistok.reduce(real, "dpc-knn", ratio=0.25)
    assert merged.sizes.sum() == n and merged.extras["cls_attention"].sum() == pytest.approx(
        real.extras["cls_attention"].sum(), rel=1e-5)
    # diversity: the kept tokens' closest pair is farther apart than for evenly spaced tokens
    def closest_pair(v):
        y = v / np.linalg.norm(v, axis=1, keepdims=True)
        d = 1 - y @ y.T
        np.fill_diagonal(d, np.inf)
        return d.min()
    assert closest_pair(kept.values) > closest_pair(vistok.reduce(real, "stride", ratio=0.25).values)


@pytest.mark.parametrize("shape", [(7, 2), (200, 37), (600, 5)])
def test_distance_matrices_are_exactly_symmetric(shape):
    # the tie rules rely on d(i, j) == d(j, i) to the bit (two mutual nearest neighbours are equally dense)
    x = np.random.default_rng(1).normal(size=shape) * 3 + 1
    for d in (cosine_distances(x), squared_distances(x)):
        assert np.array_equal(d, d.T) and not d.diagonal().any() and d.min() >= 0


def test_bad_inputs():
    tokens = tokens_of(np.random.default_rng(0).normal(size=(10, 4)))
    ids = vistok.Tokens.from_grid(np.arange(10) % 3, (1, 10))
    for method in ("divprune", "dpc-knn"):
        with pytest.raises(ValueError, match="hard ids"):
            vistok.reduce(ids, method, keep=3)
        with pytest.raises(ValueError, match="NaN"):
            vistok.reduce(tokens_of(np.where(np.eye(10, 4) > 0, np.nan, 1.0)), method, keep=3)
        with pytest.raises(ValueError, match=r"1\.\.10"):
            vistok.reduce(tokens, method, keep=11)
    with pytest.raises(TypeError, match="divprune takes no option 'neighbours'"):
        vistok.reduce(tokens, "divprune", keep=3, neighbours=3)
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="neighbours must be a whole number"):
            vistok.reduce(tokens, "dpc-knn", keep=3, neighbours=bad)
    # more neighbours than tokens: all the others count; one token: it is its own centre
    assert len(vistok.reduce(tokens, "dpc-knn", keep=4, neighbours=50)) == 4
    single = tokens_of(np.ones((1, 4)))
    for method in ("divprune", "dpc-knn"):
        assert len(vistok.reduce(single, method, keep=1)) == 1


def test_dpc_knn_cluster_count_from_a_ratio_rounds_up_as_chat_univi():
    # Chat-UniVi: cluster_num = max(math.ceil(N * ratio), 1); every other method rounds half up
    from vistok.reducers import keep_count, method_info

    rng = np.random.default_rng(0)
    tokens = vistok.Tokens(rng.normal(size=(30, 4)).astype(np.float32), grid=(5, 6))
    assert len(vistok.reduce(tokens, "dpc-knn", ratio=0.21)) == 7  # 6.3 -> 7 (half up would give 6)
    assert len(vistok.reduce(tokens, "random", ratio=0.21)) == 6
    assert len(vistok.reduce(tokens, "dpc-knn", ratio=0.5)) == 15
    assert method_info("dpc-knn").ratio_rounding == "up" and method_info("tome").ratio_rounding == "nearest"
    assert keep_count(100, None, 0.07, "up") == 8  # 100 * 0.07 == 7.000000000000001 in floats, as in Python
    assert keep_count(576, None, 0.25, "up") == 144
    with pytest.raises(ValueError, match="ratio_rounding"):
        vistok.reducers.register_method("x-bad", description="-", paper="-", ratio_rounding="down")
