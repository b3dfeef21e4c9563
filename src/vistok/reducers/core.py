"""The machinery behind :func:`vistok.reduce`: a registry of methods, the keep count, the signals a method
needs, and the rebuilding of ``Tokens`` with provenance after selecting or merging.

Every method answers one question: for each input token, which output token does it go to (an index in
``0..K-1``) or is it dropped (``-1``)? That *assignment* is all the provenance needs. The output values are
the size-weighted means of each group (ToMe's size-weighted averaging, Bolya et al., ICLR 2023), unless the
method computes its own. Sizes add up, so reductions chain: a token that already stands for 3 patches counts
3 times in the next merge.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vistok._registry import Registry
from vistok.tokens import Tokens

__all__ = [
    "Method", "Reduction", "register_method", "list_methods", "method_info", "reduce", "keep_count",
    "SIGNAL_SOURCES", "apply_assignment", "select", "top_k", "reduce_tensor", "TensorReduction",
]

#: Where each signal comes from, for the error raised when a method lacks one.
SIGNAL_SOURCES: dict[str, str] = {
    "cls_attention": "vit and focus-vit-s14 give it (focus-vit-s14 by default; vit with attentions=True), "
                     "or pass cls_attention=<(N,) array>",
    "keys": "vit and focus-vit-s14 give it with keys=True (vistok.load('focus-vit-s14', keys=True)), "
            "or pass keys=<(N, d) array>",
    "saliency": "focus-vit-s14 gives it (its saliency head, on by default), or pass saliency=<(N,) array>",
    "query": "a text embedding in the tokens' space, e.g. pass query=<(D,) array>",
}
#: Per-token extras that add up when tokens merge (attention mass); other per-token extras are averaged.
_SUMMED = {"cls_attention", "cls_attention_heads"}
#: Extras that describe the whole image, never one token, whatever their length.
_IMAGE_LEVEL = {"cls", "pooled", "embedding", "labels", "scores", "registers", "saliency_map"}


@dataclass
class Reduction:
    """What a method returns: ``assign`` ``(N,)`` int, the output token of each input (``-1`` = dropped),
    output ids ``0..K-1`` all used; optionally its own output ``values`` ``(K, D)``, and ``grid``
    ``(rows, cols)`` when the output tiles a regular grid (pooling)."""

    assign: np.ndarray
    values: np.ndarray | None = None
    grid: tuple[int, int] | None = None


@dataclass(frozen=True)
class Method:
    """A registered reducer. ``needs``: signals it cannot run without; ``uses``: optional ones.
    ``merges``: output tokens may stand for several inputs (else it only selects). ``keeps_order``: a
    selection keeps the input order. ``exact``: it always returns exactly the requested count.
    ``averages``: a merged token is the size-weighted mean of its group (False: the method computes its own
    output values, e.g. PruMerge's attention-weighted update). ``ratio_rounding``: how ``ratio=`` becomes a
    count, ``"nearest"`` (half up) or ``"up"`` (``ceil(N * ratio)``, as Chat-UniVi's DPC-KNN)."""

    name: str
    fn: Callable[..., Reduction]
    description: str
    paper: str
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()
    merges: bool = False
    keeps_order: bool = True
    exact: bool = True
    needs_grid: bool = False
    soft_only: bool = False
    options: tuple[str, ...] = field(default_factory=tuple)
    sizing: tuple[str, ...] = field(default_factory=tuple)
    averages: bool = True
    ratio_rounding: str = "nearest"


_methods: Registry[Method] = Registry("reduction method", package="vistok.reducers", skip=("core",),
                                     hint="(see vistok.reduce_methods())")


def register_method(name: str, *, description: str, paper: str, needs: Sequence[str] = (),
                    uses: Sequence[str] = (), merges: bool = False, keeps_order: bool = True, exact: bool = True,
                    needs_grid: bool = False, soft_only: bool = False, options: Sequence[str] = (),
                    sizing: Sequence[str] = (), averages: bool = True,
                    ratio_rounding: str = "nearest") -> Callable[[Callable[..., Reduction]], Callable[..., Reduction]]:
    """Decorator: register ``fn(x, k, sizes, signals, rng, **options) -> Reduction`` under ``name``.

    ``x`` is ``(N, D)`` float64 (``None`` for hard tokens), ``k`` the output count, ``sizes`` ``(N,)`` how many
    base patches each token already stands for, ``signals`` the arrays named in needs/uses that are present,
    plus ``"grid"`` ``(rows, cols)`` when the tokens tile a grid. ``sizing``: options that set the output
    count themselves (pool's ``factor``/``grid``); with one of them, ``k`` is None."""
    if ratio_rounding not in ("nearest", "up"):
        raise ValueError(f"ratio_rounding must be 'nearest' or 'up', got {ratio_rounding!r}")

    return _methods.decorator(name, lambda fn: Method(
        name, fn, description, paper, tuple(needs), tuple(uses), merges, keeps_order, exact, needs_grid,
        soft_only or merges, tuple(options) + tuple(sizing), tuple(sizing), averages, ratio_rounding))


def list_methods(pattern: str = "*", **filters: Any) -> list[str]:
    """Names of the reduction methods, sorted; ``pattern`` is a shell-style filter, ``filters`` compare
    :class:`Method` fields (``merges=True``)."""
    return _methods.list(pattern, **filters)


def method_info(name: str) -> Method:
    """The registered :class:`Method` (a clear error with close matches for unknown names)."""
    return _methods.get(name)


def keep_count(n: int, keep: int | None, ratio: float | None, rounding: str = "nearest") -> int:
    """The output count from ``keep`` (a count) or ``ratio`` (a fraction of ``n``, at least 1), rounded half up
    (``rounding="nearest"``) or up (``"up"``: ``math.ceil(n * ratio)``, the float product as Python computes it)."""
    if (keep is None) == (ratio is None):
        raise ValueError("give exactly one of keep=<count> or ratio=<fraction>")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= n:
            raise ValueError(f"keep must be a whole number in 1..{n} (the token count), got {keep!r}")
        return int(keep)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a fraction in (0, 1], got {ratio!r}")
    counted = math.ceil(n * ratio) if rounding == "up" else int(np.floor(n * ratio + 0.5))
    return max(1, min(n, counted))


def reduce(tokens: Tokens | Sequence[Tokens], method: str, *, keep: int | None = None, ratio: float | None = None,
           seed: int = 0, **signals_and_options: Any) -> Tokens | list[Tokens]:
    """Shrink ``tokens`` to ``keep`` tokens (or ``ratio`` of them) with a registered ``method``.

    Signals (``cls_attention``, ``keys``, ``saliency``, ``query``) are taken from keyword arguments first,
    then from ``tokens.extras``; a method that needs one that is missing raises a ``ValueError`` naming it and
    where to get it. Other keyword arguments are the method's options. The result keeps provenance
    (``source``/``base_grid``, so ``sizes`` says how many patches each token stands for) and records the step
    in ``meta["reductions"]``. A list of Tokens gives a list; results depend only on ``seed``.
    """
    if isinstance(tokens, (list, tuple)):
        return [reduce(t, method, keep=keep, ratio=ratio, seed=seed, **signals_and_options) for t in tokens]
    if not isinstance(tokens, Tokens):
        raise TypeError(f"reduce takes vistok.Tokens (or a list of them), got {type(tokens).__name__}")
    info = method_info(method)
    n = len(tokens)
    if n == 0:
        raise ValueError("cannot reduce an empty token set")
    signals: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in signals_and_options.items():
        if key in SIGNAL_SOURCES:
            signals[key] = value
        elif key in info.options:
            options[key] = value
        else:
            known = sorted({*info.needs, *info.uses, *info.options})
            raise TypeError(f"{method} takes no option {key!r} (it takes: {', '.join(known) or 'none'})")
    sized = [name for name in info.sizing if options.get(name) not in (None, False)]
    if sized and (keep is not None or ratio is not None):
        raise ValueError(f"{method}: give either keep/ratio or {sized[0]}=, not both")
    k = None if sized else keep_count(n, keep, ratio, info.ratio_rounding)
    for name in (*info.needs, *info.uses):
        if name not in signals and name in tokens.extras:
            signals[name] = tokens.extras[name]
    missing = [name for name in info.needs if name not in signals]
    if missing:
        name = missing[0]
        raise ValueError(f"{method} needs the {name!r} signal, which these tokens (from "
                         f"{tokens.meta.get('tokenizer', '?')}) do not carry: {SIGNAL_SOURCES[name]}; methods that "
                         f"need no attention: {', '.join(_attention_free())}")
    for name, value in list(signals.items()):
        signals[name] = _check_signal(name, value, n)
    if info.soft_only and tokens.is_hard:
        raise ValueError(f"{method} works on token vectors, and these tokens are hard ids; use a selecting method "
                         f"({', '.join(m for m in list_methods() if not _methods.get(m).soft_only)})")
    if info.needs_grid:
        if tokens.grid is None:
            raise ValueError(f"{method} works on a token grid, and these tokens have none (already reduced, or "
                             "regions); reduce grid tokens with it first, or use a method that needs no grid")
        signals["grid"] = tokens.grid
    elif tokens.grid is not None:
        signals["grid"] = tokens.grid
    sizes = np.maximum(tokens.sizes, 1) if tokens.sizes is not None else np.ones(n, np.int64)
    x = None if tokens.is_hard else tokens.values.astype(np.float64)
    result = info.fn(x, k, sizes.astype(np.float64), signals, np.random.default_rng(seed), **options)
    if result.values is not None and info.averages:
        raise AssertionError(f"{method} returns its own values: register it with averages=False")
    out = apply_assignment(tokens, result, k if info.exact else None)
    out.meta["reductions"] = [*tokens.meta.get("reductions", []),
                              {"method": method, "from": n, "to": len(out), "seed": seed,
                               **{k_: v for k_, v in options.items() if isinstance(v, (int, float, str, bool))}}]
    return out


def _attention_free() -> list[str]:
    return [m for m in list_methods() if not {"cls_attention", "keys"} & set(_methods.get(m).needs)]


def _check_signal(name: str, value: Any, n: int) -> np.ndarray:
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)
    if name == "query":
        if array.ndim != 1:
            raise ValueError(f"query must be one (D,) vector, got shape {array.shape}")
        return array
    if array.shape[:1] != (n,) or array.ndim > 2:
        raise ValueError(f"{name} must have one entry per token: ({n},) or ({n}, d), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or infinite entries")
    return array


def apply_assignment(tokens: Tokens, result: Reduction, expected: int | None) -> Tokens:
    """New ``Tokens`` from an assignment: size-weighted group means (or the method's values), summed sizes,
    the source map composed with the assignment, boxes as group unions, per-token extras reduced."""
    assign = np.asarray(result.assign, dtype=np.int64)
    n = len(tokens)
    if assign.shape != (n,):
        raise AssertionError(f"a method returned an assignment of shape {assign.shape} for {n} tokens")
    k = int(assign.max()) + 1 if (assign >= 0).any() else 0
    used = np.unique(assign[assign >= 0])
    if not np.array_equal(used, np.arange(k)):
        raise AssertionError("a method left output ids unused")
    if expected is not None and k != expected:
        raise AssertionError(f"a method returned {k} tokens, {expected} were requested")
    sizes = tokens.sizes if tokens.sizes is not None else np.ones(n, np.int64)
    weights = np.maximum(sizes, 1).astype(np.float64)  # a token with no patch (an included CLS) counts once
    members = np.bincount(assign[assign >= 0], minlength=k)
    single = bool((members == 1).all())  # a pure selection: gather rows instead of averaging
    first = _first_member(assign, k) if single or tokens.is_hard else None
    groups = _Groups(assign, k, weights)
    if result.values is not None:
        values = np.asarray(result.values, dtype=tokens.values.dtype)
    elif tokens.is_hard or single:
        values = tokens.values[first]
    else:
        values = groups.mean(tokens.values).astype(tokens.values.dtype)
    if tokens.source is not None:
        old = tokens.source
        source = np.where(old >= 0, assign[np.maximum(old, 0)], -1)
        base_grid = tokens.base_grid
    else:  # no provenance yet: the input tokens are the base
        source, base_grid = assign.copy(), (1, n)
    boxes = None
    if tokens.boxes is not None:
        boxes = np.zeros((k, 4), np.float32)
        boxes[:, :2], boxes[:, 2:] = np.inf, -np.inf
        np.minimum.at(boxes[:, 0], assign[assign >= 0], tokens.boxes[assign >= 0, 0])
        np.minimum.at(boxes[:, 1], assign[assign >= 0], tokens.boxes[assign >= 0, 1])
        np.maximum.at(boxes[:, 2], assign[assign >= 0], tokens.boxes[assign >= 0, 2])
        np.maximum.at(boxes[:, 3], assign[assign >= 0], tokens.boxes[assign >= 0, 3])
    extras = {}
    for key, value in tokens.extras.items():
        if single and key not in _IMAGE_LEVEL and value.ndim >= 1:
            if key.endswith("_heads") and value.ndim == 2 and value.shape[1] == n:
                extras[key] = value[:, first]
                continue
            if value.shape[0] == n:
                extras[key] = value[first]
                continue
        extras[key] = _reduce_extra(key, value, groups, n)
    meta = dict(tokens.meta)
    if result.grid is not None and result.grid[0] * result.grid[1] != k:
        raise AssertionError(f"a method gave grid {result.grid} for {k} tokens")
    return Tokens(values, grid=result.grid, boxes=boxes, source=source, base_grid=base_grid, extras=extras, meta=meta)


class _Groups:
    """Sums and size-weighted means over the output groups of an assignment, as sparse ``(k, N)`` one-hot
    products (scipy): one matrix build, then about 1 ms per ``576 x 1024`` array (``np.add.at``: ~10 ms)."""

    def __init__(self, assign: np.ndarray, k: int, weights: np.ndarray) -> None:
        from scipy.sparse import csr_matrix

        keep = np.flatnonzero(assign >= 0)
        shape = (k, len(assign))
        self.ones = csr_matrix((np.ones(len(keep)), (assign[keep], keep)), shape=shape)
        self.weighted = csr_matrix((weights[keep], (assign[keep], keep)), shape=shape)
        self.total = np.maximum(np.asarray(self.weighted.sum(axis=1)).reshape(-1), 1e-12)

    def sum(self, values: np.ndarray) -> np.ndarray:
        flat = np.asarray(values).reshape(len(values), -1)
        return np.asarray(self.ones @ flat).reshape(self.ones.shape[0], *np.shape(values)[1:])

    def mean(self, values: np.ndarray) -> np.ndarray:
        flat = np.asarray(values).reshape(len(values), -1)
        out = np.asarray(self.weighted @ flat) / self.total[:, None]
        return out.reshape(self.ones.shape[0], *np.shape(values)[1:])


def _first_member(assign: np.ndarray, k: int) -> np.ndarray:
    """``(k,)`` the smallest input index assigned to each output id."""
    first = np.full(k, len(assign), np.int64)
    keep = np.flatnonzero(assign >= 0)
    np.minimum.at(first, assign[keep], keep)
    return first


def _reduce_extra(key: str, value: np.ndarray, groups: _Groups, n: int) -> np.ndarray:
    if key in _IMAGE_LEVEL or value.ndim == 0:
        return value
    if key.endswith("_heads") and value.ndim == 2 and value.shape[1] == n:  # (H, N)
        return groups.sum(value.T.astype(np.float64)).T.astype(value.dtype)
    if value.shape[0] != n or not np.issubdtype(value.dtype, np.number):
        return value
    if key in _SUMMED:
        return groups.sum(value.astype(np.float64)).astype(value.dtype)
    return groups.mean(value).astype(value.dtype)


def select(n: int, kept: np.ndarray) -> Reduction:
    """A selection: the ``kept`` input indices stay, in input order; the rest are dropped."""
    kept = np.unique(np.asarray(kept, dtype=np.int64))
    assign = np.full(n, -1, np.int64)
    assign[kept] = np.arange(len(kept))
    return Reduction(assign)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores; ties go to the earlier token (a stable, deterministic order)."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]


@dataclass
class TensorReduction:
    """What :func:`reduce_tensor` returns: ``values`` ``(B, K, D)`` in the input's dtype and device, ``assign``
    ``(B, N)`` int64 (the output index of each input, ``-1`` = dropped), ``sizes`` ``(B, K)`` float (how many
    patches each output stands for)."""

    values: Any
    assign: Any
    sizes: Any


def reduce_tensor(x: Any, method: str, *, keep: int | None = None, ratio: float | None = None, seed: int = 0,
                  sizes: Any = None, grid: tuple[int, int] | None = None,
                  **signals_and_options: Any) -> TensorReduction:
    """:func:`reduce` on a torch batch ``x`` ``(B, N, D)`` (or ``(N, D)``, taken as ``B = 1``); signals as tensors
    with the batch first (``cls_attention`` ``(B, N)``, ``keys`` ``(B, N, d)``, ``saliency`` ``(B, N)``,
    ``query`` ``(B, D)`` or ``(D,)``); ``sizes`` ``(B, N)`` patches per token (default ones); ``grid`` shared."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"reduce_tensor takes a torch.Tensor (B, N, D), got {type(x).__name__}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"reduce_tensor: x must be (B, N, D) or (N, D), got shape {tuple(x.shape)}")
    b, n, _ = x.shape
    rows = []
    for i in range(b):
        row_signals = {}
        for key, value in signals_and_options.items():
            if key in SIGNAL_SOURCES and isinstance(value, torch.Tensor):
                value = value if (key == "query" and value.ndim == 1) else value[i]
                value = value.detach().float().cpu().numpy()
            row_signals[key] = value
        values = x[i].detach().float().cpu().numpy()
        if sizes is None:
            tokens = Tokens(values, grid=grid)
        else:
            row_sizes = np.asarray(sizes[i].detach().cpu().numpy() if hasattr(sizes, "detach") else sizes[i])
            source = np.repeat(np.arange(n), np.maximum(row_sizes.round().astype(np.int64), 1))
            tokens = Tokens(values, grid=grid, source=source, base_grid=(1, len(source)))
        out = reduce(tokens, method, keep=keep, ratio=ratio, seed=seed, **row_signals)
        if sizes is None:
            assign = out.source
        else:
            first = np.concatenate([[0], np.cumsum(np.maximum(row_sizes.round().astype(np.int64), 1))[:-1]])
            assign = out.source[first]
        rows.append((out.values, assign, out.sizes))
    if len({len(r[0]) for r in rows}) > 1:
        raise ValueError(f"{method} gave a different token count per image; call reduce_tensor per image")
    values = torch.stack([torch.from_numpy(np.ascontiguousarray(r[0])) for r in rows]).to(x.device, x.dtype)
    assign = torch.stack([torch.from_numpy(np.asarray(r[1], np.int64)) for r in rows]).to(x.device)
    out_sizes = torch.stack([torch.from_numpy(np.asarray(r[2], np.float32)) for r in rows]).to(x.device)
    return TensorReduction(values, assign, out_sizes)
