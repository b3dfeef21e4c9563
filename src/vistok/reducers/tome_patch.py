"""ToMe inside the model: merge ``r`` tokens in every transformer block, for one model instance.

Token Merging (Bolya, Fu, Dai, Zhang, Feichtenhofer and Hoffman, "Token Merging: Your ViT but Faster", ICLR
2023) as the paper runs it: in every block, after the attention and before the MLP, one step of bipartite
soft matching (see :mod:`vistok.reducers.tome`) merges ``r`` tokens, so the MLP and every later block work on
fewer tokens. Its parts, here:

* similarity: the block's keys (the key projection's output, averaged over heads), cosine;
* size-weighted averages: each token carries how many patches it stands for, a merge is the size-weighted
  mean and the sizes add up;
* proportional attention: ``softmax(Q K^T / sqrt(d) + log s)``, where ``s`` is the size of each key token, so a
  merged token gets the attention weight of the tokens it replaced. It is passed to the block's own
  attention as an additive mask, so the model's attention kernel (``sdpa`` or eager) does the work;
* protected tokens: the CLS token and any register tokens (the first ``1 + registers`` of the sequence) never
  merge. As in the paper's code (``bipartite_soft_matching`` in facebookresearch/ToMe), the whole sequence is
  split alternately into A (positions 0, 2, 4, ...) and B (1, 3, 5, ...), the protected tokens included: a
  protected A token's scores are ``-inf`` (it never merges; ToMe does this for CLS) and so are those toward a
  protected B token (it never receives a merge; ToMe does this for DeiT's distillation token). With CLS only,
  patches 2, 4, ... (sequence positions) are on side A. At most ``floor(n / 2)`` of the ``n`` patch tokens merge
  in one block (``r`` is capped there: :func:`merged_count`);
* the source map: :attr:`ToMeHandle.source` ``(B, P)`` says, after each forward, which output patch token
  (counted after the protected ones) each of the ``P`` input patches ended in; :attr:`ToMeHandle.size` the
  size of each. After a merge, the remaining tokens keep their relative order (a merged group sits where
  its B token was).

A block that merges nothing while no token has been merged yet (``r=0``, or the first blocks of a per-block
list starting with 0) runs its own, unchanged forward, so ``patch(model, 0)`` gives outputs identical to the
unpatched model.

Where this differs from the paper's code: the remaining tokens keep their order (there, the unmerged A tokens
come first, then B), register tokens are protected as well as CLS, timm keys are taken before any q/k-norm,
and it is written for inference (it has not been checked in training).

    handle = patch(model, 8)              # this instance only; handle.r may be changed later
    out = model(pixel_values=pixels)      # (B, 1 + n_left, C)
    handle.source, handle.sizes()         # which patches each output token stands for, and how many
    unpatch(model)                        # or: with patch(model, 8) as handle: ...

Scope: :func:`patch` changes one model instance and nothing else. It sets a ``forward`` attribute on that
model's block instances (never on their class) and a forward hook on each block's key projection;
:func:`unpatch` removes exactly those. Supported blocks, recognised by their parts: transformers
``Dinov2Layer``, ``Dinov2WithRegistersLayer`` and ``ViTLayer`` (``Dinov2Model``, ``Dinov2WithRegistersModel``,
``ViTModel``), and timm's ``Block`` with a fused-``qkv`` ``Attention`` (``VisionTransformer``). After merging,
the sequence no longer tiles the patch grid: anything that reshapes it to the grid (timm's
``forward_intermediates``) needs the source map.

Shapes: ``x`` ``(B, T, C)`` with ``T = protected + n``; sizes ``(B, n)``; source ``(B, P)`` int64.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["patch", "unpatch", "is_patched", "ToMeHandle", "merged_count", "bipartite_merge", "group_mean"]

_ATTR = "_vistok_tome"


def merged_count(n: int, r: int | Sequence[int], blocks: int) -> int:
    """Patch tokens left after ``blocks`` blocks from ``n``: each block merges ``min(r_i, floor(n_i / 2))``.
    Needs no model (a tokenizer's ``count`` uses it)."""
    r = _check_r(r)
    for i in range(blocks):
        n -= min(_r_at(r, i), n // 2)
    return n


def _r_at(r: int | Sequence[int], i: int) -> int:
    if isinstance(r, numbers.Integral):
        return int(r)
    return int(r[i]) if i < len(r) else 0  # a list shorter than the model: no merges after it


def _check_r(r: Any) -> int | list[int]:
    whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 0  # noqa: E731
    if whole(r):
        return int(r)
    if isinstance(r, (list, tuple)) and all(whole(v) for v in r):
        return [int(v) for v in r]
    raise ValueError(f"r must be a whole number >= 0 (tokens merged per block) or a list of them, got {r!r}")


def group_mean(x: Any, assign: Any, size: Any, k: int) -> tuple[Any, Any]:
    """Size-weighted means over groups, per image: ``x`` ``(B, n, C)``, ``assign`` ``(B, n)`` group ids in
    ``0..k-1``, ``size`` ``(B, n)`` weights (None: all 1) -> means ``(B, k, C)`` and summed sizes ``(B, k)``.
    The one weighted mean of ToMe (Bolya et al., ICLR 2023): merges here, and the keys the vit tokenizer
    reports for merged tokens."""
    import torch

    b, n, c = x.shape
    size = x.new_ones(b, n, dtype=torch.float32) if size is None else size
    total = size.new_zeros(b, k).scatter_add_(1, assign, size)
    rows = (assign + torch.arange(b, device=x.device)[:, None] * k).reshape(-1)  # one flat index_add_
    weighted = x * size[..., None].to(x.dtype)
    sums = x.new_zeros(b * k, c).index_add_(0, rows, weighted.reshape(-1, c)).view(b, k, c)
    return sums / total[..., None].to(x.dtype), total


def bipartite_merge(x: Any, metric: Any, size: Any, protected: int, r: int) -> tuple[Any, Any, Any]:
    """One ToMe step on a batch. ``x`` ``(B, T, C)``, ``metric`` ``(B, T, d)``, ``size`` ``(B, n)`` (or None:
    all ones) for the ``n = T - protected`` patch tokens. Returns the merged ``(B, T - r, C)``, the new sizes
    ``(B, n - r)`` and ``assign`` ``(B, n)``: the output patch token of each input patch token."""
    import torch

    b, t, _ = x.shape
    n = t - protected
    if not 0 <= r <= n // 2:
        raise ValueError(f"r={r} merges: at most floor({n} / 2) = {n // 2} of {n} tokens can merge in one step")
    # ToMe's split alternates over the whole sequence, protected tokens included (CLS at 0 is on side A); a
    # protected A token's row and a protected B token's column score -inf, so they neither merge nor receive
    unit = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = unit[:, 0::2] @ unit[:, 1::2].transpose(1, 2)  # (B, |A|, |B|) cosine
    scores[:, : (protected + 1) // 2] = float("-inf")  # protected A tokens: positions 0, 2, ... < protected
    scores[:, :, : protected // 2] = float("-inf")  # protected B tokens: positions 1, 3, ... < protected
    best, partner = scores.max(dim=-1)  # ties: the first maximum
    merged = torch.argsort(best, dim=-1, descending=True, stable=True)[:, :r]  # A indices with the top links
    keep = torch.ones(b, t, dtype=torch.bool, device=x.device)
    keep.scatter_(1, 2 * merged, False)
    position = keep.long().cumsum(1) - 1  # new index of each remaining token (relative order kept)
    target = 2 * partner.gather(1, merged) + 1  # the B token each merged A token joins
    # protected tokens stay first (never removed, nothing before them), so patch outputs start at `protected`
    assign = (position.scatter(1, 2 * merged, position.gather(1, target)) - protected)[:, protected:]
    merged_x, new_size = group_mean(x[:, protected:], assign, size, n - r)
    return torch.cat([x[:, :protected], merged_x], dim=1), new_size, assign


# -- the blocks ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    """How to run the two halves of one kind of block, and where its keys come from."""

    name: str
    parts: tuple[str, ...]
    mask_name: str
    attention: Callable[[Any, Any, Any, dict[str, Any]], Any]
    mlp: Callable[[Any, Any], Any]
    keys: Callable[[Any], tuple[Any, int, slice]]  # block -> (module whose output holds K, heads, K's columns)


def _dinov2_attention(block: Any, x: Any, mask: Any, kwargs: dict[str, Any]) -> Any:
    out, _ = block.attention(block.norm1(x), attention_mask=mask, **kwargs)
    return block.drop_path(block.layer_scale1(out)) + x


def _dinov2_mlp(block: Any, x: Any) -> Any:
    return block.drop_path(block.layer_scale2(block.mlp(block.norm2(x)))) + x


def _vit_attention(block: Any, x: Any, mask: Any, kwargs: dict[str, Any]) -> Any:
    out, _ = block.attention(block.layernorm_before(x), mask, **kwargs)
    return block.dropout(out) + x


def _vit_mlp(block: Any, x: Any) -> Any:
    return block.dropout(block.mlp(block.layernorm_after(x))) + x


def _hf_keys(block: Any) -> tuple[Any, int, slice]:
    return block.attention.k_proj, block.attention.num_attention_heads, slice(None)


def _timm_attention(block: Any, x: Any, mask: Any, kwargs: dict[str, Any]) -> Any:
    if kwargs.get("is_causal"):
        raise ValueError("ToMe merges tokens, which breaks a causal order; run the model without is_causal")
    return x + block.drop_path1(block.ls1(block.attn(block.norm1(x), attn_mask=mask)))


def _timm_mlp(block: Any, x: Any) -> Any:
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def _timm_keys(block: Any) -> tuple[Any, int, slice]:
    width = block.attn.qkv.out_features // 3
    return block.attn.qkv, block.attn.num_heads, slice(width, 2 * width)


_KINDS = (
    _Kind("dinov2", ("norm1", "attention", "layer_scale1", "drop_path", "norm2", "mlp", "layer_scale2"),
          "attention_mask", _dinov2_attention, _dinov2_mlp, _hf_keys),
    _Kind("vit", ("layernorm_before", "attention", "layernorm_after", "mlp", "dropout"),
          "attention_mask", _vit_attention, _vit_mlp, _hf_keys),
    _Kind("timm", ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2"),
          "attn_mask", _timm_attention, _timm_mlp, _timm_keys),
)


def _kind_of(block: Any) -> _Kind | None:
    for kind in _KINDS:
        if all(hasattr(block, part) for part in kind.parts):
            try:
                kind.keys(block)
            except AttributeError:
                continue
            return kind
    return None


def _find_blocks(model: Any) -> tuple[list[Any], _Kind]:
    from torch import nn

    for _, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module):
            kinds = {_kind_of(block) for block in module}
            if len(kinds) == 1 and None not in kinds:
                return list(module), kinds.pop()  # type: ignore[return-value]
    raise TypeError(f"no transformer blocks that ToMe can patch in {type(model).__name__}: supported are "
                    "transformers Dinov2Model / Dinov2WithRegistersModel / ViTModel and timm VisionTransformer "
                    "(Block with a fused-qkv Attention)")


def _protected_tokens(model: Any) -> int:
    """CLS plus register tokens at the start of the sequence (timm: ``num_prefix_tokens``)."""
    if hasattr(model, "num_prefix_tokens"):
        return int(model.num_prefix_tokens)
    config = getattr(model, "config", None)
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


# -- patch / unpatch -----------------------------------------------------------------------------------

class ToMeHandle:
    """The ToMe state of one patched model. ``r`` (per block, or a list) may be changed between forwards.

    After each forward: ``source`` ``(B, P)`` int64, the output patch token of each input patch; ``size``
    ``(B, n)`` float32, the patches each output patch token stands for (None when nothing merged).
    ``last_assign`` / ``last_size``: the most recent block's merge (``(B, n_before)``, None = no merge) and the
    sizes its attention saw (None = all ones), for extras computed from that block's attention or keys."""

    def __init__(self, model: Any, r: int | Sequence[int], protected: int, blocks: list[Any], kind: _Kind) -> None:
        self.model, self.protected, self.blocks, self.kind = model, protected, blocks, kind
        self.r = _check_r(r)
        self.source: Any = None
        self.size: Any = None
        self.last_assign: Any = None
        self.last_size: Any = None
        self._keys: Any = None
        self._saved: list[tuple[Any, bool, Any]] = []  # (block, had own forward, that forward)
        self._hooks: list[Any] = []

    def r_at(self, i: int) -> int:
        """Tokens block ``i`` is asked to merge (before the ``floor(n / 2)`` cap)."""
        return _r_at(self.r, i)

    def count(self, n: int, blocks: int | None = None) -> int:
        """Patch tokens left from ``n`` after the first ``blocks`` blocks (all by default)."""
        return merged_count(n, self.r, len(self.blocks) if blocks is None else blocks)

    def sizes(self) -> Any:
        """``(B, n)`` sizes of the current patch tokens (ones when nothing merged)."""
        import torch

        if self.size is not None:
            return self.size
        return torch.ones(self.source.shape, dtype=torch.float32, device=self.source.device)

    def __enter__(self) -> ToMeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        unpatch(self.model)

    def __repr__(self) -> str:
        return f"ToMeHandle(r={self.r!r}, blocks={len(self.blocks)} {self.kind.name}, protected={self.protected})"

    # -- the patched block ---------------------------------------------------------------------------
    def _forward(self, index: int, block: Any, original: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        kind = self.kind

        def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
            n = x.shape[1] - self.protected
            if index == 0:  # a new forward pass starts: every patch is its own token
                self.source = torch.arange(n, device=x.device).expand(x.shape[0], n).clone()
                self.size = None
            r = min(self.r_at(index), n // 2)
            self.last_size, self.last_assign = self.size, None
            if r == 0 and self.size is None:
                return original(x, *args, **kwargs)  # nothing merged yet, nothing to merge: unchanged
            mask = args[0] if args else kwargs.pop(kind.mask_name, None)
            if self.size is not None:  # proportional attention: + log(size) on each key
                bias = torch.cat([self.size.new_zeros(x.shape[0], self.protected), self.size.log()], dim=1)
                bias = bias.to(x.dtype)[:, None, None, :]
                if mask is None:
                    mask = bias
                elif mask.dtype == torch.bool:
                    mask = torch.where(mask, bias, float("-inf"))
                else:
                    mask = mask + bias
            self._keys = None
            x = kind.attention(block, x, mask, kwargs)
            if r:
                module, heads, columns = kind.keys(block)
                keys = self._keys[..., columns]
                metric = keys.reshape(*keys.shape[:2], heads, -1).mean(dim=2)  # keys averaged over heads
                x, self.size, assign = bipartite_merge(x, metric, self.size, self.protected, r)
                self.source = assign.gather(1, self.source)
                self.last_assign = assign
            self._keys = None
            return kind.mlp(block, x)

        return forward

    def _install(self) -> None:
        for index, block in enumerate(self.blocks):
            own = "forward" in vars(block)
            previous = vars(block).get("forward")
            original = previous if own else type(block).forward.__get__(block)
            self._saved.append((block, own, previous))
            block.forward = self._forward(index, block, original)
            module, _, _ = self.kind.keys(block)
            self._hooks.append(module.register_forward_hook(self._keep_keys))

    def _keep_keys(self, module: Any, args: Any, output: Any) -> None:
        self._keys = output

    def _remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        for block, own, previous in self._saved:
            if own:
                block.forward = previous
            else:
                del block.forward
        self._hooks, self._saved = [], []
        self.source = self.size = self.last_assign = self.last_size = self._keys = None


def patch(model: Any, r: int | Sequence[int] = 0, *, protected: int | None = None) -> ToMeHandle:
    """Make ``model`` merge ``r`` tokens in every block (a list: per block). Only this instance changes;
    :func:`unpatch` (or leaving ``with patch(...)``) restores it. ``protected``: leading tokens never merged
    (default: CLS + registers, timm's ``num_prefix_tokens``)."""
    if is_patched(model):
        raise ValueError("this model is already ToMe-patched; change handle.r, or unpatch(model) first")
    blocks, kind = _find_blocks(model)
    protected = _protected_tokens(model) if protected is None else protected
    if isinstance(protected, bool) or not isinstance(protected, int) or protected < 0:
        raise ValueError(f"protected must be a whole number >= 0 (leading tokens never merged), got {protected!r}")
    handle = ToMeHandle(model, r, protected, blocks, kind)
    handle._install()
    object.__setattr__(model, _ATTR, handle)
    return handle


def unpatch(model: Any) -> None:
    """Undo :func:`patch` on ``model``: its blocks run their own forward again, the key hooks are gone."""
    handle = vars(model).get(_ATTR)
    if handle is None:
        raise ValueError("this model is not ToMe-patched")
    handle._remove()
    object.__delattr__(model, _ATTR)


def is_patched(model: Any) -> bool:
    """Whether :func:`patch` is in effect on this model instance."""
    return _ATTR in vars(model)
