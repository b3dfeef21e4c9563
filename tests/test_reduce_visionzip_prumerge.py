"""``visionzip``, ``prumerge`` and ``prumerge+``.

References: hand-worked examples on 8 tokens (numbers in the comments), and plain-Python re-derivations of
each algorithm (lists and ``math``, no numpy) compared on random small inputs; invariants with hypothesis;
the missing-signal and bad-option errors; a smoke test on real ``focus-vit-s14`` tokens with keys.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vistok
from vistok.reducers.core import method_info, reduce
from vistok.reducers.prumerge import iqr_outliers, uniform_samples
from vistok.reducers.visionzip import contextual_count
from vistok.tokens import Tokens

METHODS = ("visionzip", "prumerge", "prumerge+")
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tokens(x, grid=None, **extras) -> Tokens:
    extras = {key: np.asarray(value, np.float64) for key, value in extras.items()}
    return Tokens(np.asarray(x, np.float64), grid=grid, extras=extras)


def angles(degrees) -> np.ndarray:
    """2-D unit keys at the given angles: their cosine similarity is the cosine of the angle between them."""
    rad = np.radians(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def members(out: Tokens) -> list[list[int]]:
    """For a single reduction of ``n`` tokens: the input indices behind each output token."""
    return [np.flatnonzero(out.source == j).tolist() for j in range(len(out))]


# -- plain-Python references -----------------------------------------------------------------------------------


def cosine(u, v) -> float:
    nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
    return sum(a * b for a, b in zip(u, v)) / (max(nu, 1e-12) * max(nv, 1e-12))


def top(scores, k) -> list[int]:
    """The k highest scores, ties to the earlier index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def ref_visionzip(attention, keys, k, c) -> list[int]:
    """VisionZip's assignment, re-derived: top k - c by attention (input order), the rest split into c targets
    at every max(1, R // c)-th remaining position, each other token to its most key-similar target."""
    n = len(attention)
    dominant = sorted(top(attention, k - c))
    assign = [-1] * n
    for j, i in enumerate(dominant):
        assign[i] = j
    rest = [i for i in range(n) if i not in dominant]
    if c == 0:
        return assign
    step = max(1, len(rest) // c)
    targets = [rest[p] for p in range(0, len(rest), step)][:c]
    for j, t in enumerate(targets):
        assign[t] = k - c + j
    for i in rest:
        if i in targets:
            continue
        sims = [cosine(keys[i], keys[t]) for t in targets]
        assign[i] = k - c + sims.index(max(sims))  # first maximum: ties to the earlier target
    return assign


def ref_merge(x, attention, keys, kept, nb):
    """PruMerge's merge step, re-derived: each kept token picks its nb most key-similar pruned tokens; a pruned
    token picked by several goes to the most similar; y' = (y_p + sum a_j y_j) / (1 + sum a_j), a summing to 1."""
    n = len(attention)
    kept = sorted(kept)
    pruned = [i for i in range(n) if i not in kept]
    total = sum(attention)
    a = [v / total for v in attention]
    chosen_by = {j: [] for j in pruned}
    for p in kept:
        ranked = sorted(pruned, key=lambda j: (-cosine(keys[p], keys[j]), j))[:nb]
        for j in ranked:
            chosen_by[j].append(p)
    assign = [-1] * n
    for out, p in enumerate(kept):
        assign[p] = out
    for j, by in chosen_by.items():
        if by:
            best = max(by, key=lambda p: (cosine(keys[p], keys[j]), -p))
            assign[j] = kept.index(best)
    values = []
    for out, p in enumerate(kept):
        num = list(x[p])
        den = 1.0
        for j in pruned:
            if assign[j] == out:
                num = [u + a[j] * v for u, v in zip(num, x[j])]
                den += a[j]
        values.append([u / den for u in num])
    return assign, values


def ref_official(x, attention, keys, kept, nb):
    """The official PruMerge merge, re-derived: each kept token adds its nb most key-similar other tokens (kept
    or pruned; ties: the earlier) weighted by their attention, unnormalised; one extra token, the
    attention-weighted sum of the pruned tokens, comes last and stands for them."""
    n = len(attention)
    kept = sorted(kept)
    pruned = [i for i in range(n) if i not in kept]
    assign = [len(kept)] * n
    values = []
    for out, p in enumerate(kept):
        assign[p] = out
        near = sorted((j for j in range(n) if j != p), key=lambda j: (-cosine(keys[p], keys[j]), j))[:nb]
        values.append([v + sum(attention[j] * x[j][d] for j in near) for d, v in enumerate(x[p])])
    if pruned:
        values.append([sum(attention[j] * x[j][d] for j in pruned) for d in range(len(x[0]))])
    return assign, values


def ref_iqr(scores) -> list[int]:
    """Q3 + 1.5 IQR outliers, quartiles by linear interpolation between order statistics."""
    s = sorted(scores)

    def quantile(q):
        pos = q * (len(s) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (pos - lo) * (s[hi] - s[lo])

    q1, q3 = quantile(0.25), quantile(0.75)
    return [i for i, v in enumerate(scores) if v > q3 + 1.5 * (q3 - q1)]


# -- visionzip -------------------------------------------------------------------------------------------------


def test_visionzip_hand_worked():
    # dominant = top-2 attention: tokens 7 (0.35) and 1 (0.30), in input order [1, 7];
    # remaining [0, 2, 3, 4, 5, 6]: R = 6, C = 2, step 3 -> targets at positions 0 and 3: tokens 0 and 4;
    # keys at angles: token 0 at 0 deg, token 4 at 90 deg; 2 (5 deg) and 5 (30 deg) join 0, 3 (80) and 6 (100) join 4
    attention = [0.05, 0.30, 0.02, 0.20, 0.01, 0.04, 0.03, 0.35]
    keys = angles([0, 45, 5, 80, 90, 30, 100, 45])
    x = np.arange(16, dtype=np.float64).reshape(8, 2) ** 2
    out = reduce(tokens(x, cls_attention=attention, keys=keys), "visionzip", keep=4, contextual=2)
    assert members(out) == [[1], [7], [0, 2, 5], [3, 4, 6]]
    # the official code: each contextual token is its target plus the mean of the tokens that joined it
    np.testing.assert_allclose(out.values, [x[1], x[7], x[0] + x[[2, 5]].mean(0), x[4] + x[[3, 6]].mean(0)])
    assert out.sizes.tolist() == [1, 1, 3, 3]
    mean = reduce(tokens(x, cls_attention=attention, keys=keys), "visionzip", keep=4, contextual=2,
                  contextual_merge="mean")
    assert members(mean) == members(out) and mean.sizes.tolist() == [1, 1, 3, 3]
    np.testing.assert_allclose(mean.values, [x[1], x[7], x[[0, 2, 5]].mean(0), x[[3, 4, 6]].mean(0)])
    # the default split (10/64 contextual) gives 1 contextual token of 4: dominant 7, 1, 3 then all the rest
    out = reduce(tokens(x, cls_attention=attention, keys=keys), "visionzip", keep=4)
    assert members(out) == [[1], [3], [7], [0, 2, 4, 5, 6]]


def test_visionzip_contextual_token_is_target_plus_mean_of_joined():
    # x0 = [1, 0] is the one contextual target (the first remaining token), x1 = [0, 2] and x2 = [0, 4] join it;
    # x3 is the dominant token. Official: [1, 0] + mean([0, 2], [0, 4]) = [1, 3]; "mean": [0.33, 2].
    x = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 4.0], [5.0, 5.0]])
    t = tokens(x, cls_attention=[0.1, 0.2, 0.3, 0.9])
    out = reduce(t, "visionzip", keep=2, contextual=1)
    np.testing.assert_allclose(out.values, [[5, 5], [1, 3]])
    assert out.source.tolist() == [1, 1, 1, 0] and out.sizes.tolist() == [1, 3]
    np.testing.assert_allclose(reduce(t, "visionzip", keep=2, contextual=1, contextual_merge="mean").values,
                               [[5, 5], [1 / 3, 2]])
    # sizes weigh the joined tokens' mean: x2 standing for 3 patches -> [1, 0] + (2 + 3 * 4) / 4 in y
    sized = Tokens(x, source=np.array([0, 1, 2, 2, 2, 3]), base_grid=(1, 6), extras={"cls_attention":
                                                                                      np.array([.1, .2, .3, .9])})
    np.testing.assert_allclose(reduce(sized, "visionzip", keep=2, contextual=1).values, [[5, 5], [1, 3.5]])
    # a target that nothing joins stays as it is
    # keep 3 with 2 contextual: dominant 3; targets 0 and 1 (step 3 // 2 = 1); 2 joins 1, nothing joins 0
    alone = reduce(t, "visionzip", keep=3, contextual=2)
    assert members(alone) == [[3], [0], [1, 2]]
    np.testing.assert_allclose(alone.values, [[5, 5], [1, 0], [0, 6]])
    with pytest.raises(ValueError, match="contextual_merge must be 'add'"):
        reduce(t, "visionzip", keep=2, contextual=1, contextual_merge="sum")


def test_visionzip_paper_split():
    # LLaVA-1.5 at 64 tokens: 54 dominant + 10 contextual; the same share at 128 and 192 tokens
    assert [contextual_count(k, 10 / 64) for k in (64, 128, 192)] == [10, 20, 30]
    assert contextual_count(64, 0.0) == 0 and contextual_count(64, 7) == 7 and contextual_count(5, 1.0) == 5


@SETTINGS
@given(n=st.integers(6, 12), data=st.data())
def test_visionzip_matches_reference(n, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    k = data.draw(st.integers(1, n))
    c = data.draw(st.integers(0, k))
    x, keys, attention = rng.normal(size=(n, 3)), rng.normal(size=(n, 4)), rng.random(n)
    out = reduce(tokens(x, cls_attention=attention, keys=keys), "visionzip", keep=k, contextual=c)
    assert len(out) == k
    assert out.source.tolist() == ref_visionzip(attention.tolist(), keys.tolist(), k, c)
    groups = members(out)  # k - c dominant tokens alone, then the contextual groups in their targets' order
    rest = sorted(i for g in groups[k - c:] for i in g)
    targets = rest[::max(1, len(rest) // c)][:c] if c else []
    expected = [x[g].mean(0) for g in groups[:k - c]]
    for target, g in zip(targets, groups[k - c:]):
        joined = [i for i in g if i != target]
        expected.append(x[target] + (x[joined].mean(0) if joined else 0))
    np.testing.assert_allclose(out.values, expected)


def test_visionzip_signals():
    rng = np.random.default_rng(0)
    x, heads = rng.normal(size=(10, 3)), rng.random((10, 4))
    base = reduce(tokens(x, cls_attention=heads.mean(1), keys=x), "visionzip", keep=5, contextual=2)
    # (N, H) attention is averaged over heads; without keys the token vectors stand in for them
    same = reduce(tokens(x, cls_attention=heads), "visionzip", keep=5, contextual=2)
    assert same.source.tolist() == base.source.tolist() and np.array_equal(same.values, base.values)
    # contextual=0 is the top-K by CLS attention
    plain = reduce(tokens(x, cls_attention=heads.mean(1)), "visionzip", keep=5, contextual=0)
    top5 = reduce(tokens(x, cls_attention=heads.mean(1)), "cls-attention", keep=5)
    assert plain.source.tolist() == top5.source.tolist()
    for bad in (-1, 6, 1.5, "a", True):
        with pytest.raises(ValueError, match="contextual"):
            reduce(tokens(x, cls_attention=heads), "visionzip", keep=5, contextual=bad)


# -- prumerge / prumerge+ --------------------------------------------------------------------------------------

# 8 tokens whose attention sums to 1. Sorted: .01 .02 .03 .04 .05 .06 .29 .50; Q1 = .02 + .75 * .01 = .0275,
# Q3 = .06 + .25 * .23 = .1175, IQR = .09, bound = .1175 + .135 = .2525: the outliers are tokens 6 and 7.
ATTENTION = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.50, 0.29]
# keys at angles: kept 6 at 0 deg, kept 7 at 90 deg; pruned 0 at 10, 1 at 50, 2 at 80, 3 at 180, 4 at 200, 5 at 260
KEYS = angles([10, 50, 80, 180, 200, 260, 0, 90])
X = np.arange(24, dtype=np.float64).reshape(8, 3) % 7 + np.arange(8)[:, None]


def test_iqr_outliers_hand_worked():
    assert iqr_outliers(np.array(ATTENTION)).tolist() == [6, 7]
    assert uniform_samples(24, 2).tolist() == [0, 4, 8, 12, 16, 20]  # step (24 // 2) // 3 = 4
    assert uniform_samples(8, 2).tolist() == list(range(7))  # step (8 // 2) // 3 = 1; never the last token
    # the official code samples arange(0, 575, step) for 576 patches: index N - 1 is never a sample
    assert uniform_samples(25, 2).tolist() == [0, 4, 8, 12, 16, 20]  # step (25 // 2) // 3 = 4; not 24
    assert uniform_samples(576, 36)[-1] == 570  # step (576 // 36) // 3 = 5: 575 would be next


def test_prumerge_hand_worked():
    # adaptive: keep 6 and 7. With 2 neighbours, 6 picks pruned 0 (cos 10 deg) and 1 (cos 50); 7 picks 2 (cos 10)
    # and 1 (cos 40). Token 1 is nearer 7 (40 < 50 deg), so 6 gets {0}, 7 gets {1, 2}; 3, 4, 5 are dropped.
    t = tokens(X, cls_attention=ATTENTION, keys=KEYS)
    out = reduce(t, "prumerge", adaptive=True, neighbours=2, merge="partition")
    assert out.source.tolist() == [0, 1, 1, -1, -1, -1, 0, 1]
    assert out.sizes.tolist() == [2, 3]
    np.testing.assert_allclose(out.values, [(X[6] + 0.01 * X[0]) / 1.01, (X[7] + 0.02 * X[1] + 0.03 * X[2]) / 1.05])
    assert out.meta["reductions"][-1]["adaptive"] is True
    # keep=3: the top 3 by attention (6, 7 and the next, 5)
    out = reduce(t, "prumerge", keep=3, neighbours=2, merge="partition")
    assert out.source[[5, 6, 7]].tolist() == [0, 1, 2]
    # with no neighbours it is a plain selection of the kept tokens
    out = reduce(t, "prumerge", keep=3, neighbours=0, merge="partition")
    assert out.source.tolist() == [-1, -1, -1, -1, -1, 0, 1, 2]
    np.testing.assert_allclose(out.values, X[[5, 6, 7]])


def test_prumerge_official_hand_worked():
    # the official merge, adaptive: kept 6 (0 deg) and 7 (90 deg). Each adds its 2 key-nearest other tokens,
    # kept or pruned, weighted by attention, unnormalised: 6 takes 0 (10 deg) and 1 (50 deg); 7 takes 2 (10 deg)
    # and 1 (40 deg), so 1 feeds both. The extra token is the attention-weighted sum of the pruned 0..5.
    a = np.array(ATTENTION)
    t = tokens(X, cls_attention=ATTENTION, keys=KEYS)
    out = reduce(t, "prumerge", adaptive=True, neighbours=2)
    assert out.source.tolist() == [2, 2, 2, 2, 2, 2, 0, 1] and out.sizes.tolist() == [1, 1, 6]
    extra = a[:6] @ X[:6]
    np.testing.assert_allclose(out.values, [X[6] + 0.01 * X[0] + 0.02 * X[1], X[7] + 0.03 * X[2] + 0.02 * X[1],
                                            extra])
    # with every other token as a neighbour, a kept token absorbs the other kept one too
    out = reduce(t, "prumerge", adaptive=True, neighbours=7)
    np.testing.assert_allclose(out.values[:2], [X[6] + a @ X - a[6] * X[6], X[7] + a @ X - a[7] * X[7]])
    # keep=K counts the extra token: keep=3 keeps the top 2 (6, 7); keep=1 is the extra token alone
    assert reduce(t, "prumerge", keep=3, neighbours=0).source.tolist() == [2, 2, 2, 2, 2, 2, 0, 1]
    one = reduce(t, "prumerge", keep=1)
    assert one.source.tolist() == [0] * 8
    np.testing.assert_allclose(one.values, [a @ X])
    # PruMerge+ adds the same extra token: keep=4 keeps 3 (outliers 6, 7 and the middle of 0..5, token 3)
    plus = reduce(t, "prumerge+", keep=4, neighbours=0)
    assert plus.source.tolist() == [3, 3, 3, 0, 3, 3, 1, 2]
    np.testing.assert_allclose(plus.values, [X[3], X[6], X[7], a[[0, 1, 2, 4, 5]] @ X[[0, 1, 2, 4, 5]]])
    # nothing pruned (adaptive PruMerge+ sampled every token): no extra token
    assert len(reduce(t, "prumerge+", adaptive=True)) == 8
    with pytest.raises(ValueError, match="merge must be 'official'"):
        reduce(t, "prumerge", keep=3, merge="normalised")


def test_prumerge_plus_hand_worked():
    t = tokens(X, cls_attention=ATTENTION, keys=KEYS)
    # keep=4: outliers 6, 7, plus 2 evenly spaced over the others [0..5]: positions floor(1.5) = 1, floor(4.5) = 4
    out = reduce(t, "prumerge+", keep=4, neighbours=0, merge="partition")
    assert np.flatnonzero(out.source >= 0).tolist() == [1, 4, 6, 7]
    # keep=1 < 2 outliers: the top one
    assert np.flatnonzero(reduce(t, "prumerge+", keep=1, neighbours=0, merge="partition").source >= 0).tolist() == [6]
    # adaptive on 8 tokens with 2 outliers samples every token
    assert len(reduce(t, "prumerge+", adaptive=True)) == 8
    # adaptive on 24 tokens: outliers 5 and 17, samples 0, 4, 8, ..., 20
    attention = np.full(24, 0.01)
    attention[[5, 17]] = [0.3, 0.2]
    out = reduce(tokens(np.eye(24), cls_attention=attention), "prumerge+", adaptive=True, neighbours=0,
                 merge="partition")
    assert np.flatnonzero(out.source >= 0).tolist() == [0, 4, 5, 8, 12, 16, 17, 20]
    # 25 tokens: the same samples (the last token, 24, is never one), then the extra token for the rest
    attention = np.append(attention, 0.01)
    out = reduce(tokens(np.eye(25), cls_attention=attention), "prumerge+", adaptive=True, neighbours=0)
    assert (out.source < 8).nonzero()[0].tolist() == [0, 4, 5, 8, 12, 16, 17, 20] and out.source[24] == 8


def test_ties_go_to_the_earlier_token():
    # exact ties in the keys: visionzip's token 2 (key (1, 1)) is as near target 0 (1, 0) as target 3 (0, 1)
    keys = np.array([[1.0, 0], [5, 5], [1, 1], [0, 1], [0.2, 1]])
    x = np.arange(10, dtype=np.float64).reshape(5, 2)
    out = reduce(tokens(x, cls_attention=[0, 1, 0, 0, 0], keys=keys), "visionzip", keep=3, contextual=2)
    assert out.source.tolist() == [1, 0, 1, 2, 2]  # rest [0, 2, 3, 4], step 2: targets 0 and 3; 4 is nearer 3
    # prumerge: kept token 0 ranks pruned 1, 2, 3 (equal keys) by index, so 1 and 2 join it and 3 is dropped
    keys = np.array([[1.0, 0], [1, 1], [1, 1], [1, 1]])
    out = reduce(tokens(x[:4], cls_attention=[0.7, 0.1, 0.1, 0.1], keys=keys), "prumerge", keep=1, neighbours=2,
                 merge="partition")
    assert out.source.tolist() == [0, 0, 0, -1]
    # and a pruned token chosen by two kept tokens at equal similarity joins the earlier one
    keys = np.array([[1.0, 0], [0, 1], [1, 1], [-1, -1]])
    out = reduce(tokens(x[:4], cls_attention=[0.4, 0.4, 0.1, 0.1], keys=keys), "prumerge", keep=2, neighbours=1,
                 merge="partition")
    assert out.source.tolist() == [0, 1, 0, -1]


@SETTINGS
@given(n=st.integers(6, 12), method=st.sampled_from(["prumerge", "prumerge+"]),
       merge=st.sampled_from(["official", "partition"]), data=st.data())
def test_prumerge_matches_reference(n, method, merge, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    adaptive = data.draw(st.booleans())
    k = None if adaptive else data.draw(st.integers(2 if merge == "official" else 1, n))
    nb = data.draw(st.integers(0, n))
    x, keys = rng.normal(size=(n, 3)), rng.normal(size=(n, 4))
    attention = rng.random(n) ** 4  # skewed, so some tokens are IQR outliers
    size = {"adaptive": True} if adaptive else {"keep": k}
    out = reduce(tokens(x, cls_attention=attention, keys=keys), method, neighbours=nb, merge=merge, **size)
    # the kept set, re-derived (the official merge keeps one fewer: its extra token is the K-th output)
    k = k - 1 if k is not None and merge == "official" else k
    outliers = ref_iqr(attention.tolist())
    if adaptive:
        kept = outliers or top(attention.tolist(), 1)
        if method == "prumerge+":
            step = max(1, (n // len(kept)) // 3)
            kept = sorted(set(kept) | set(range(0, n - 1, step)))
    elif method == "prumerge" or len(outliers) >= k:
        kept = top(attention.tolist(), k)
    else:
        rest = [i for i in range(n) if i not in outliers]
        fill = k - len(outliers)
        kept = outliers + [rest[math.floor((i + 0.5) * len(rest) / fill)] for i in range(fill)]
    ref = ref_official if merge == "official" else ref_merge
    assign, values = ref(x.tolist(), attention.tolist(), keys.tolist(), kept, nb)
    assert out.source.tolist() == assign
    np.testing.assert_allclose(out.values, values, rtol=1e-9, atol=1e-12)


def test_prumerge_adaptive_and_options():
    t = tokens(X, cls_attention=ATTENTION, keys=KEYS)
    with pytest.raises(ValueError, match="not both"):
        reduce(t, "prumerge", keep=2, adaptive=True)
    with pytest.raises(ValueError, match="keep"):
        reduce(t, "prumerge")
    for method in ("prumerge", "prumerge+"):
        for bad in (-1, 1.5, True):
            with pytest.raises(ValueError, match="neighbours"):
                reduce(t, method, keep=2, neighbours=bad)
        with pytest.raises(ValueError, match=">= 0"):
            reduce(tokens(X, cls_attention=np.array(ATTENTION) - 0.1), method, keep=2)
    # no outlier at all (flat attention): the adaptive count falls back to the top token
    out = reduce(tokens(X, cls_attention=np.full(8, 0.125)), "prumerge", adaptive=True)
    assert len(out) == 2 and out.source.tolist() == [0] + [1] * 7  # and the extra token
    out = reduce(tokens(X, cls_attention=np.full(8, 0.125)), "prumerge", adaptive=True, merge="partition")
    assert len(out) == 1 and out.source[0] == 0
    # keys absent: the token vectors stand in; (N, H) attention is averaged over heads
    heads = np.stack([np.array(ATTENTION) * 0.5, np.array(ATTENTION) * 1.5], axis=1)
    a = reduce(tokens(X, cls_attention=heads), "prumerge+", keep=4, neighbours=2)
    b = reduce(tokens(X, cls_attention=ATTENTION, keys=X), "prumerge+", keep=4, neighbours=2)
    assert a.source.tolist() == b.source.tolist()
    np.testing.assert_allclose(a.values, b.values)


# -- all three: invariants and errors --------------------------------------------------------------------------


@SETTINGS
@given(rows=st.integers(2, 6), cols=st.integers(2, 6), method=st.sampled_from(METHODS), data=st.data())
def test_invariants_and_chaining(rows, cols, method, data):
    n = rows * cols
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.normal(size=(n, 5)).astype(np.float32)
    t = Tokens(x, grid=(rows, cols), extras={"cls_attention": rng.random(n) ** 3, "keys": rng.normal(size=(n, 4))})
    k1 = data.draw(st.integers(1, n))
    k2 = data.draw(st.integers(1, k1))
    first = reduce(t, method, keep=k1, seed=3)
    assert first.equals(reduce(t, method, keep=k1, seed=3))  # deterministic
    second = reduce(first, method, keep=k2)
    for out, k in ((first, k1), (second, k2)):
        assert len(out) == k
        assert out.sizes.sum() == (out.source >= 0).sum() <= n
        assert (out.sizes >= 1).all()  # every output stands for at least one base patch
        assert np.isfinite(out.values).all()
    if method == "visionzip":
        # with contextual_merge="mean", a merge of everything: each token is the mean of its base patches
        first = reduce(t, method, keep=k1, contextual_merge="mean")
        second = reduce(first, method, keep=k2, contextual_merge="mean")
        for out in (first, second):
            for j in range(len(out)):
                np.testing.assert_allclose(out.values[j], x[out.source == j].mean(0), rtol=1e-5, atol=1e-5)
        dominant = k1 - contextual_count(k1, 10 / 64)
        firsts = [np.flatnonzero(first.source == j)[0] for j in range(dominant)]
        assert firsts == sorted(firsts)  # dominant tokens keep the input order
    else:
        # the kept tokens (k1 - 1: the extra token is the last output) are those of the plain selection, in input
        # order; the extra token stands for every other token
        kept = np.flatnonzero(reduce(t, method, keep=k1 - 1, neighbours=0, merge="partition").source >= 0) \
            if k1 > 1 else np.array([], int)
        assert first.source[kept].tolist() == list(range(k1 - 1))
        assert (np.delete(first.source, kept) == k1 - 1).all() and first.sizes.sum() == n
        partition = reduce(t, method, keep=k1, merge="partition")
        kept = np.flatnonzero(reduce(t, method, keep=k1, neighbours=0, merge="partition").source >= 0)
        assert partition.source[kept].tolist() == list(range(k1))


@pytest.mark.parametrize("method", METHODS)
def test_missing_and_bad_signals(method):
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(ValueError, match="cls_attention"):
        reduce(tokens(x), method, keep=3)
    with pytest.raises(ValueError, match="cls_attention must have one entry per token"):
        reduce(tokens(x), method, keep=3, cls_attention=np.ones(5))
    with pytest.raises(ValueError, match="keys must have one entry per token"):
        reduce(tokens(x, cls_attention=np.ones(6)), method, keep=3, keys=np.ones((4, 2)))
    with pytest.raises(ValueError, match="hard ids"):
        reduce(Tokens(np.arange(6)), method, keep=3, cls_attention=np.ones(6))
    info = method_info(method)
    assert info.needs == ("cls_attention",) and info.uses == ("keys",) and info.merges


# -- real tokens -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def focus_tokens():
    return vistok.load("focus-vit-s14", keys=True).encode("src/vistok/samples/coffee.jpg")


def test_real_tokens(focus_tokens):
    t = focus_tokens
    n = len(t)
    outliers = iqr_outliers(t.extras["cls_attention"].astype(np.float64))
    for method in METHODS:
        out = reduce(t, method, ratio=0.25)
        assert len(out) == round(n / 4) and np.isfinite(out.values).all()
        assert out.values.shape[1] == t.values.shape[1] and out.sizes.sum() <= n
        again = reduce(out, method, ratio=0.5)  # the extras (attention, keys) were reduced along
        assert len(again) == round(len(out) / 2)
    assert reduce(t, "visionzip", ratio=0.25).sizes.sum() == n
    assert len(reduce(t, "prumerge", adaptive=True)) == len(outliers) + 1  # and the extra token
    plus = reduce(t, "prumerge+", adaptive=True)
    assert len(outliers) < len(plus) < n
