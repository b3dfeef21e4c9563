"""The machinery behind :func:`vistok.reduce`: a registry of methods, the keep count, the signals a method
needs, the rebuilding of ``Tokens`` with provenance after selecting or merging, and :func:`reduce_tensor`, the
same methods on batched torch tensors ``(B, N, D)`` (as inside a model).

Every method answers one question: for each input token, which output token does it go to (an index in
``0..K-1``) or is it dropped (``-1``)? That *assignment* is all the provenance needs. The output values are
the size-weighted means of each group (ToMe's size-weighted averaging, Bolya et al., ICLR 2023), unless the
method computes its own. Sizes add up, so reductions chain: a token that already stands for 3 patches counts
3 times in the next merge.

Every method is written once, in torch, batched: :func:`reduce_tensor` calls it on the caller's device and dtype
(scores in float32 for half precision), and :func:`reduce` is the numpy edge that hands it one ``Tokens`` as a
batch of one and rebuilds ``Tokens`` from the assignment. Methods whose assignment depends on the layout only
(``pool``, ``stride``, ``random``) are index arithmetic in numpy and run without torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vistok._registry import Registry
from vistok.tokens import Tokens

if TYPE_CHECKING:
    import torch

__all__ = [
    "Method", "Reduction", "register_method", "list_methods", "method_info", "reduce", "keep_count",
    "SIGNAL_SOURCES", "apply_assignment", "select", "top_k", "reduce_tensor", "TensorReduction", "select_layout",
    "group_mean", "unit_rows", "symmetric", "gram", "all_finite",
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
    """What a method returns: ``assign`` the output token of each input (``-1`` = dropped), output ids
    ``0..K-1`` all used, as a ``(B, N)`` int64 tensor (a layout method: one ``(N,)`` numpy array for every row);
    optionally its own output ``values`` ``(B, K, D)``, and ``grid`` ``(rows, cols)`` when the output tiles a
    regular grid (pooling)."""

    assign: Any
    values: Any = None
    grid: tuple[int, int] | None = None


@dataclass
class TensorReduction:
    """What :func:`reduce_tensor` returns: ``values`` ``(B, K, D)`` in the input's dtype and on its device,
    ``assign`` ``(B, N)`` int64 (the output index of each input, ``-1`` = dropped) and ``sizes`` ``(B, K)`` float
    (how many patches each output stands for: the sum of its members' input sizes)."""

    values: torch.Tensor
    assign: torch.Tensor
    sizes: torch.Tensor


@dataclass(frozen=True)
class Method:
    """A registered reducer. ``needs``: signals it cannot run without; ``uses``: optional ones.
    ``merges``: output tokens may stand for several inputs (else it only selects). ``keeps_order``: a
    selection keeps the input order. ``exact``: it always returns exactly the requested count.
    ``averages``: a merged token is the size-weighted mean of its group (False: the method computes its own
    output values, e.g. PruMerge's attention-weighted update). ``ratio_rounding``: how ``ratio=`` becomes a
    count, ``"nearest"`` (half up) or ``"up"`` (``ceil(N * ratio)``, as Chat-UniVi's DPC-KNN). ``layout``: the
    assignment depends only on the count, the token grid, the seed and the options (no values, no signals)."""

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
    layout: bool = False


_methods: Registry[Method] = Registry("reduction method", package="vistok.reducers", skip=("core",),
                                     hint="(see vistok.reduce_methods())")


def register_method(name: str, *, description: str, paper: str, needs: Sequence[str] = (),
                    uses: Sequence[str] = (), merges: bool = False, keeps_order: bool = True, exact: bool = True,
                    needs_grid: bool = False, soft_only: bool = False, options: Sequence[str] = (),
                    sizing: Sequence[str] = (), averages: bool = True, ratio_rounding: str = "nearest",
                    layout: bool = False) -> Callable[[Callable[..., Reduction]], Callable[..., Reduction]]:
    """Decorator: register a method under ``name``.

    ``fn(x, k, sizes, signals, seed, **options) -> Reduction`` works on a torch batch: ``x`` ``(B, N, D)``
    float32 or float64 (``None`` for hard tokens), ``k`` the output count, ``sizes`` ``(B, N)`` how many base
    patches each token already stands for, ``signals`` the tensors named in needs/uses that are present, batch
    first (``cls_attention`` ``(B, N)`` or ``(B, N, H)``, ``keys`` ``(B, N, d)``, ``query`` ``(B, D)``), plus
    ``"grid"`` ``(rows, cols)`` when the tokens tile a grid. With ``layout=True`` it is
    ``fn(n, k, grid, seed, **options)`` and returns one ``(N,)`` numpy assignment for every row (no torch
    needed). ``sizing``: options that set the output count themselves (pool's ``factor``/``grid``); with one of
    them, ``k`` is None."""
    if ratio_rounding not in ("nearest", "up"):
        raise ValueError(f"ratio_rounding must be 'nearest' or 'up', got {ratio_rounding!r}")

    return _methods.decorator(name, lambda fn: Method(
        name, fn, description, paper, tuple(needs), tuple(uses), merges, keeps_order, exact, needs_grid,
        soft_only or merges, tuple(options) + tuple(sizing), tuple(sizing), averages, ratio_rounding, layout))


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


def _split(info: Method, n: int, keep: int | None, ratio: float | None,
           signals_and_options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """The one place that checks a call: ``(signals, options, k)`` from the keyword arguments."""
    method = info.name
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
    return signals, options, k


def _missing(info: Method, signals: dict[str, Any], where: str) -> None:
    missing = [name for name in info.needs if name not in signals]
    if missing:
        name = missing[0]
        raise ValueError(f"{info.name} needs the {name!r} signal, which {where} do not carry: {SIGNAL_SOURCES[name]}; "
                         f"methods that need no attention: {', '.join(_attention_free())}")


def _torch() -> Any:
    try:
        import torch
    except ImportError as error:  # the core install: only the layout methods run
        raise ImportError("this reduction method runs in torch, which is not installed: pip install 'vistok[torch]' "
                          "(pool, stride and random run without it)") from error
    return torch


def reduce(tokens: Tokens | Sequence[Tokens], method: str, *, keep: int | None = None, ratio: float | None = None,
           seed: int = 0, **signals_and_options: Any) -> Tokens | list[Tokens]:
    """Shrink ``tokens`` to ``keep`` tokens (or ``ratio`` of them) with a registered ``method``.

    Signals (``cls_attention``, ``keys``, ``saliency``, ``query``) are taken from keyword arguments first,
    then from ``tokens.extras``; a method that needs one that is missing raises a ``ValueError`` naming it and
    where to get it. Other keyword arguments are the method's options. The result keeps provenance
    (``source``/``base_grid``, so ``sizes`` says how many patches each token stands for) and records the step
    in ``meta["reductions"]``. A list of Tokens gives a list; results depend only on ``seed``. Scores are
    computed in the tokens' precision (float64 tokens in float64, others in float32), by the same torch code
    as :func:`reduce_tensor`.
    """
    if isinstance(tokens, (list, tuple)):
        return [reduce(t, method, keep=keep, ratio=ratio, seed=seed, **signals_and_options) for t in tokens]
    if not isinstance(tokens, Tokens):
        raise TypeError(f"reduce takes vistok.Tokens (or a list of them), got {type(tokens).__name__}")
    info = method_info(method)
    n = len(tokens)
    signals, options, k = _split(info, n, keep, ratio, signals_and_options)
    for name in (*info.needs, *info.uses):
        if name not in signals and name in tokens.extras:
            signals[name] = tokens.extras[name]
    _missing(info, signals, f"these tokens (from {tokens.meta.get('tokenizer', '?')})")
    for name, value in list(signals.items()):
        signals[name] = _check_signal(name, value, n)
    if info.soft_only and tokens.is_hard:
        raise ValueError(f"{method} works on token vectors, and these tokens are hard ids; use a selecting method "
                         f"({', '.join(m for m in list_methods() if not _methods.get(m).soft_only)})")
    if info.needs_grid and tokens.grid is None:
        raise ValueError(f"{method} works on a token grid, and these tokens have none (already reduced, or "
                         "regions); reduce grid tokens with it first, or use a method that needs no grid")
    sizes = tokens.sizes
    sizes = np.maximum(sizes, 1) if sizes is not None else np.ones(n, np.int64)
    torch = None
    if info.layout:
        result = info.fn(n, k, tokens.grid, seed, **options)
    else:
        torch = _torch()
        result = _run_one(info, tokens, k, sizes, signals, seed, options)
    if result.values is not None and info.averages:
        raise AssertionError(f"{method} returns its own values: register it with averages=False")
    out = apply_assignment(tokens, result, k if info.exact else None, torch)
    out.meta["reductions"] = [*tokens.meta.get("reductions", []),
                              {"method": method, "from": n, "to": len(out), "seed": seed,
                               **{k_: v for k_, v in options.items() if isinstance(v, (int, float, str, bool))}}]
    return out


def _run_one(info: Method, tokens: Tokens, k: int | None, sizes: np.ndarray, signals: dict[str, np.ndarray],
             seed: int, options: dict[str, Any]) -> Reduction:
    """A torch method on one ``Tokens`` as a batch of one; the result back in numpy."""
    torch = _torch()
    x = None
    if not tokens.is_hard:
        values = tokens.values
        x = torch.from_numpy(values if values.dtype in (np.float32, np.float64) else values.astype(np.float32))[None]
    dtype = x.dtype if x is not None else torch.float64
    given: dict[str, Any] = {name: torch.from_numpy(value).to(dtype)[None] for name, value in signals.items()}
    if tokens.grid is not None:
        given["grid"] = tokens.grid
    weights = torch.from_numpy(sizes.astype(np.float64)).to(dtype)[None]
    with torch.no_grad():
        result = info.fn(x, k, weights, given, seed, **options)
    return Reduction(result.assign[0].numpy(), None if result.values is None else result.values[0].numpy(),
                     result.grid)


def _attention_free() -> list[str]:
    return [m for m in list_methods() if not {"cls_attention", "keys"} & set(_methods.get(m).needs)]


def _check_signal(name: str, value: Any, n: int) -> np.ndarray:
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    if array.dtype not in (np.float32, np.float64):  # float32 stays as it is: the scores rank the same
        array = array.astype(np.float64)
    if name == "query":
        if array.ndim != 1:
            raise ValueError(f"query must be one (D,) vector, got shape {array.shape}")
        return array
    if array.shape[:1] != (n,) or array.ndim > 2:
        raise ValueError(f"{name} must have one entry per token: ({n},) or ({n}, d), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or infinite entries")
    return array


def apply_assignment(tokens: Tokens, result: Reduction, expected: int | None, torch: Any = None) -> Tokens:
    """New ``Tokens`` from an assignment: size-weighted group means (or the method's values), summed sizes,
    the source map composed with the assignment, boxes as group unions, per-token extras reduced (group sums
    through ``torch`` when it is given)."""
    assign = np.asarray(result.assign, dtype=np.int64)
    n = len(tokens)
    if assign.shape != (n,):
        raise AssertionError(f"a method returned an assignment of shape {assign.shape} for {n} tokens")
    kept_in = assign >= 0
    k = int(assign.max()) + 1 if kept_in.any() else 0
    members = np.bincount(assign[kept_in], minlength=k)
    if not (members > 0).all():
        raise AssertionError("a method left output ids unused")
    if expected is not None and k != expected:
        raise AssertionError(f"a method returned {k} tokens, {expected} were requested")
    sizes = tokens.sizes if tokens.sizes is not None else np.ones(n, np.int64)
    weights = np.maximum(sizes, 1).astype(np.float64)  # a token with no patch (an included CLS) counts once
    single = bool((members == 1).all())  # a pure selection: gather rows instead of averaging
    first = _first_member(assign, k) if single or tokens.is_hard else None
    groups = _LazyGroups(assign, k, weights, torch)
    if result.values is not None:
        values = np.asarray(result.values, dtype=tokens.values.dtype)
    elif tokens.is_hard or single:
        values = tokens.values[first]
    elif torch is not None and tokens.values.dtype == np.float32:  # float32 sums, as reduce_tensor computes them
        values = group_mean(torch.from_numpy(tokens.values)[None], torch.from_numpy(assign)[None], k,
                            torch.from_numpy(weights)[None])[0].numpy()
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
    """Sums and size-weighted means over the output groups of an assignment, in float64: the members sorted by
    output, then one sum over a ``(K, m, D)`` view when every group has ``m`` members (pooling), else
    differences of a running sum (``np.add.reduceat`` and sparse products take several ms per ``576 x 1024``
    array; this about one)."""

    def __init__(self, assign: np.ndarray, k: int, weights: np.ndarray, torch: Any = None) -> None:
        keep = np.flatnonzero(assign >= 0)
        self.k, self.torch = k, torch
        self.order = keep[np.argsort(assign[keep], kind="stable")]  # members by output, then input order
        counts = np.bincount(assign[keep], minlength=k)
        self.ends = np.cumsum(counts)
        self.uniform = int(counts[0]) if k and (counts == counts[0]).all() else 0
        self.weights = weights[self.order]
        self.unweighted = bool((self.weights == 1).all())

    @functools.cached_property
    def total(self) -> np.ndarray:
        """``(k,)`` the summed weights of each group (only means need them)."""
        return np.maximum(self._sum(self.weights[:, None])[:, 0], 1e-12)

    def _sum(self, rows: np.ndarray) -> np.ndarray:
        """``(k, F)`` float64 sums of the sorted member rows ``(M, F)`` of each group."""
        if self.uniform:
            return rows.reshape(self.k, self.uniform, -1).sum(axis=1, dtype=np.float64)
        if self.torch is not None:  # torch's index_add (when the method ran in torch anyway): ~1 ms here
            torch = self.torch
            index = torch.from_numpy(np.repeat(np.arange(self.k), np.diff(self.ends, prepend=0)))
            out = torch.zeros(self.k, rows.shape[1], dtype=torch.float64)
            return out.index_add_(0, index, torch.from_numpy(np.ascontiguousarray(rows)).double()).numpy()
        out = np.zeros((self.k, rows.shape[1]))
        if len(rows):
            running = np.cumsum(rows, axis=0, dtype=np.float64)
            present = self.ends > 0
            out[present] = running[self.ends[present] - 1]
            out[1:] -= np.where((self.ends[:-1] > 0)[:, None], running[np.maximum(self.ends[:-1] - 1, 0)], 0.0)
        return out

    def sum(self, values: np.ndarray) -> np.ndarray:
        flat = np.asarray(values).reshape(len(values), -1)[self.order]
        return self._sum(flat).reshape(self.k, *np.shape(values)[1:])

    def mean(self, values: np.ndarray) -> np.ndarray:
        flat = np.asarray(values).reshape(len(values), -1)[self.order]
        if not self.unweighted:
            flat = flat * self.weights[:, None]
        return (self._sum(flat) / self.total[:, None]).reshape(self.k, *np.shape(values)[1:])


class _LazyGroups:
    """:class:`_Groups`, built on first use (a float32 mean without extras never needs it)."""

    def __init__(self, *args: Any) -> None:
        self._args = args

    @functools.cached_property
    def _groups(self) -> _Groups:
        return _Groups(*self._args)

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._groups.sum(values)

    def mean(self, values: np.ndarray) -> np.ndarray:
        return self._groups.mean(values)


def _first_member(assign: np.ndarray, k: int) -> np.ndarray:
    """``(k,)`` the smallest input index assigned to each output id."""
    first = np.full(k, len(assign), np.int64)
    keep = np.flatnonzero(assign >= 0)
    np.minimum.at(first, assign[keep], keep)
    return first


def _reduce_extra(key: str, value: np.ndarray, groups: _Groups | _LazyGroups, n: int) -> np.ndarray:
    if key in _IMAGE_LEVEL or value.ndim == 0:
        return value
    if key.endswith("_heads") and value.ndim == 2 and value.shape[1] == n:  # (H, N)
        return groups.sum(value.T.astype(np.float64)).T.astype(value.dtype)
    if value.shape[0] != n or not np.issubdtype(value.dtype, np.number):
        return value
    if key in _SUMMED:
        return groups.sum(value.astype(np.float64)).astype(value.dtype)
    return groups.mean(value).astype(value.dtype)


def select_layout(n: int, kept: np.ndarray) -> Reduction:
    """A selection from indices alone (a layout method): the ``kept`` inputs stay, in input order."""
    kept = np.unique(np.asarray(kept, dtype=np.int64))
    assign = np.full(n, -1, np.int64)
    assign[kept] = np.arange(len(kept))
    return Reduction(assign)


# -- torch helpers shared by the methods ---------------------------------------------------------------------

def select(n: int, kept: torch.Tensor) -> Reduction:
    """A batched selection: the ``kept`` ``(B, K)`` input indices stay, in input order; the rest are dropped."""
    import torch

    kept = torch.sort(kept, dim=-1).values
    assign = torch.full((kept.shape[0], n), -1, dtype=torch.int64, device=kept.device)
    order = torch.arange(kept.shape[1], device=kept.device).expand_as(kept)
    return Reduction(assign.scatter_(1, kept, order))


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(..., k)`` indices of the ``k`` largest scores along the last axis; ties go to the earlier token (a
    stable sort, so the order is deterministic)."""
    import torch

    return torch.sort(-scores, dim=-1, stable=True).indices[..., :k]


def unit_rows(m: torch.Tensor) -> torch.Tensor:
    """``(B, N, d)`` rows scaled to unit length (a ``(B, N)`` signal is taken as ``d = 1``), in float32: cosines
    only rank here, and float32 halves the product."""
    import torch

    m = m if m.ndim == 3 else m[..., None]
    m = m.float() if m.dtype not in (torch.float32, torch.float64) else m
    return (m / torch.sqrt((m * m).sum(-1, keepdim=True)).clamp_min(1e-12)).float()


def gram(y: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` products ``y @ y.T`` of each ``y`` ``(B, N, D)``, exactly symmetric. On the CPU numpy's
    symmetric product (BLAS ``syrk``) computes half the entries, on the same memory; elsewhere a matmul whose
    lower triangle is copied from the upper one."""
    import torch

    if y.device.type == "cpu" and y.dtype in (torch.float32, torch.float64) and not y.requires_grad:
        rows = y.numpy()
        if len(rows) == 1:  # no stacking copy for one image
            return torch.from_numpy(rows[0] @ rows[0].T)[None]
        return torch.from_numpy(np.stack([row @ row.T for row in rows]))
    return symmetric(torch.matmul(y, y.transpose(-1, -2)))


def symmetric(m: torch.Tensor) -> torch.Tensor:
    """``(B, N, N)`` with the lower triangle copied from the upper one: a product ``y @ y.T`` made exactly
    symmetric (BLAS may round ``d(i, j)`` and ``d(j, i)`` differently; numpy's symmetric product does not)."""
    import torch

    upper = torch.triu(m)
    return upper + torch.triu(m, 1).transpose(-1, -2)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite: its largest and smallest entries are (a NaN makes both NaN), two
    reductions without the ``(..)`` boolean temporary of ``isfinite(t).all()`` (about 1.4 ms at 576 x 1024)."""
    import torch

    if t.numel() == 0:
        return True
    if not t.is_floating_point():
        return True
    return bool(torch.isfinite(t.amax())) and bool(torch.isfinite(t.amin()))


def group_mean(x: torch.Tensor, assign: torch.Tensor, k: int, sizes: torch.Tensor) -> torch.Tensor:
    """``(B, k, D)`` size-weighted mean of the rows of ``x`` ``(B, N, D)`` in each output group of ``assign``
    ``(B, N)`` (``-1`` rows left out), computed in ``x``'s dtype (one ``index_add`` over the flattened batch;
    rows of weight 1 are added as they are, which is the same sum)."""
    import torch

    b, n, d = x.shape
    kept = assign >= 0
    every = bool(kept.all())
    flat = assign + torch.arange(b, device=x.device)[:, None] * k
    w = sizes.to(x.dtype)
    rows = x if bool((w == 1).all()) else x * w[..., None]
    rows, w = rows.reshape(b * n, d), w.reshape(-1)
    if every:
        flat = flat.reshape(-1)
    else:
        flat, rows, w = flat[kept], rows[kept.reshape(-1)], w[kept.reshape(-1)]
    sums = torch.zeros(b * k, d, dtype=x.dtype, device=x.device).index_add_(0, flat, rows)
    total = torch.zeros(b * k, dtype=x.dtype, device=x.device).index_add_(0, flat, w)
    return (sums / total.clamp_min(1e-12)[:, None]).view(b, k, d)


def group_sizes(assign: torch.Tensor, k: int, sizes: torch.Tensor) -> torch.Tensor:
    """``(B, k)`` the summed ``sizes`` of each output group."""
    import torch

    out = torch.zeros(assign.shape[0], k + 1, dtype=sizes.dtype, device=sizes.device)
    return out.scatter_add_(1, torch.where(assign >= 0, assign, k), sizes)[:, :k]


# -- reduce_tensor -------------------------------------------------------------------------------------------

_SIGNAL_RANKS = {"cls_attention": (2, 3), "saliency": (2, 3), "keys": (2, 3)}


def _tensor_signal(torch: Any, name: str, value: Any, b: int, n: int, device: Any, dtype: Any) -> torch.Tensor:
    """One signal for :func:`reduce_tensor`: batch first, checked, in the compute dtype on ``x``'s device."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value, np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}") from error
    value = value.detach().to(device=device, dtype=dtype)
    if name == "query":
        if value.ndim == 1:
            value = value.expand(b, -1)
        if value.ndim != 2 or value.shape[0] != b:
            raise ValueError(f"query must be (B, D) = ({b}, D) or one (D,) vector, got shape {tuple(value.shape)}")
        return value
    if value.ndim not in _SIGNAL_RANKS.get(name, (2, 3)) or tuple(value.shape[:2]) != (b, n):
        shape = "(B, N, d)" if name == "keys" else "(B, N)"
        raise ValueError(f"{name} must have one entry per token, {shape} with (B, N) = ({b}, {n}), got shape "
                         f"{tuple(value.shape)}")
    if not all_finite(value):
        raise ValueError(f"{name} has NaN or infinite entries")
    return value


def reduce_tensor(x: torch.Tensor, method: str, *, keep: int | None = None, ratio: float | None = None, seed: int = 0,
                  sizes: torch.Tensor | None = None, token_grid: tuple[int, int] | None = None,
                  **signals_and_options: Any) -> TensorReduction:
    """:func:`reduce` on a torch batch ``x`` ``(B, N, D)`` (or ``(N, D)``, taken as ``B = 1``; the result keeps
    the batch axis), on ``x``'s device and in its dtype (scores in float32 for float16/bfloat16 inputs).

    Signals are tensors with the batch first: ``cls_attention`` ``(B, N)`` (or ``(B, N, H)``, averaged over
    heads), ``keys`` ``(B, N, d)``, ``saliency`` ``(B, N)``, ``query`` ``(B, D)`` or ``(D,)``. ``sizes`` ``(B, N)``:
    how many patches each token stands for (default ones); ``token_grid`` ``(rows, cols)``: the token grid, shared by
    the batch. Options and ``keep``/``ratio`` as in :func:`reduce` (same checks and messages). Row ``i`` of the
    result equals :func:`reduce` on row ``i`` alone. A method whose count depends on the image (``prumerge``
    with ``adaptive=True``) takes one image at a time.
    """
    torch = _torch()
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"reduce_tensor takes a torch.Tensor (B, N, D) or (N, D), got {type(x).__name__}")
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"reduce_tensor: x must be float token vectors (B, N, D) or (N, D), got shape "
                         f"{tuple(x.shape)} and dtype {x.dtype}")
    info = method_info(method)
    b, n, _ = x.shape
    signals, options, k = _split(info, n, keep, ratio, signals_and_options)
    _missing(info, signals, "the arguments")
    if info.needs_grid and token_grid is None:
        raise ValueError(f"{method} works on a token grid: pass token_grid=(rows, cols)")
    if token_grid is not None and (len(token_grid) != 2 or int(token_grid[0]) * int(token_grid[1]) != n):
        raise ValueError(f"token_grid {tuple(token_grid)} does not hold the {n} tokens of x")
    x = x.detach()
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    xc = x.to(dtype)
    if sizes is None:
        weights = torch.ones(b, n, dtype=dtype, device=x.device)
    else:
        weights = _tensor_signal(torch, "sizes", sizes, b, n, x.device, dtype)
        if weights.ndim != 2:
            raise ValueError(f"sizes must be (B, N) = ({b}, {n}), got shape {tuple(weights.shape)}")
        weights = weights.clamp_min(1)
    given = {name: _tensor_signal(torch, name, value, b, n, x.device, dtype) for name, value in signals.items()}
    if token_grid is not None:
        given["grid"] = (int(token_grid[0]), int(token_grid[1]))
    with torch.no_grad():
        if info.layout:
            result = info.fn(n, k, given.get("grid"), seed, **options)
            assign = torch.from_numpy(np.asarray(result.assign, np.int64)).to(x.device).expand(b, n).clone()
        else:
            result = info.fn(xc, k, weights, given, seed, **options)
            assign = result.assign
        count = assign.amax(dim=1) + 1
        if bool((count != count[0]).any()):
            raise ValueError(f"{method} gave a different token count per image ({count.tolist()}); call "
                             "reduce_tensor with one image at a time")
        out_k = int(count[0])
        if result.values is not None:
            values = result.values.to(x.dtype)
        elif not info.merges:  # a selection: the kept rows as they are
            kept = torch.sort(torch.where(assign >= 0, torch.arange(n, device=x.device), n), dim=1).values
            values = x.gather(1, kept[:, :out_k, None].expand(-1, -1, x.shape[2]))
        else:
            values = group_mean(xc, assign, out_k, weights).to(x.dtype)
        out_sizes = group_sizes(assign, out_k, weights.to(torch.float32))
    return TensorReduction(values, assign, out_sizes)
