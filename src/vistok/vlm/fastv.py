"""FastV inside a VLM's language model: drop visual tokens after layer ``K`` by the attention they receive.

FastV (Chen, Zhao, Liu, Li, Zhou, Lin and Chang, "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play
Inference Acceleration for Large Vision-Language Models", ECCV 2024; code: github.com/pkunlp-icler/FastV) as
the authors' LLaVA code runs it:

* layers ``0 .. K-1`` of the language model see every token;
* the attention of layer ``K-1`` (the last full layer), averaged over heads, from the last prompt token to
  each image token ranks the image tokens;
* the top ``keep`` image tokens (or ``round(ratio * N)``) are kept, in their original order, together with
  every text token; layers ``K ..`` run on that shorter sequence with the kept tokens' *original* position
  ids (rotary ``cos``/``sin`` taken at those positions) and the causal/padding mask restricted to them;
* ranking happens once, at prefill. During ``generate`` the layers ``>= K`` hold fewer cached positions
  than the layers ``< K``; a new token's position id continues the original numbering, and the masks of the
  shorter layers are restricted to the positions they hold.

Only layer ``K-1``'s attention from one query row is needed: it is computed here from that layer's own
``q_proj``/``k_proj`` (and ``q_norm``/``k_norm``, rotary embedding, scaling and logit soft-capping where the
model has them) in a forward pre-hook, in float32, so every layer keeps its own attention kernel
(SDPA/flash) and the model's config is not touched.

Where this differs from the authors' code: their ``K``, system-prompt length and image length are
constants for LLaVA-1.5 (one 576-token image at a fixed offset); here image positions are
``input_ids == image_token_id`` and every contiguous run of image tokens (one image, or one crop where the
processor separates crops with text tokens) keeps ``keep`` tokens. Batches work when every row holds the
same image-token runs (left padding included). Their ratio ``R`` is the share *dropped*; ``ratio=`` here is
the share kept, as in :func:`vistok.reduce`.

    state = attach_fastv(model, layer=2, keep=64)   # one model instance; hooks only, no class is changed
    out = model.generate(**inputs, max_new_tokens=20)
    state.stats                                     # per image: tokens before/after
    state.detach()

A plain forward returns logits for the kept positions only (``state.kept_positions`` holds their original
indices, ``(B, L')``). Scope: language models built like Llama/Qwen2/Mistral/Gemma decoders
(``model.model.language_model.layers``, each with ``self_attn.q_proj``/``k_proj``), a dynamic KV cache
(``DynamicCache``, the ``generate`` default), full or sliding-window attention in the layers ``>= K``
(sliding-window layers only while the whole sequence fits in the window: a longer one is refused, since a
shortened layer would slide over different tokens), and the ``sdpa``, ``eager`` or flash attention
implementations (flex attention's block masks cannot be shortened). Tested on LLaVA with Llama and Qwen2
language models; Qwen2-VL, PaliGemma and Gemma 3 language models follow the same layer interface.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["attach_fastv", "FastVState"]

_ATTR = "_vistok_fastv"


@dataclass(eq=False)
class _Call:
    """What the hooks need during one forward of the VLM."""
    mode: str                                   # "prefill" or "decode"
    runs: list[list[tuple[int, int, int]]] = field(default_factory=list)  # per row: (start, n, kept)
    last: torch.Tensor | None = None            # (B,) index of the last prompt token per row
    scores: torch.Tensor | None = None          # (B, L) float32 attention of the last token, layer K-1
    kept: torch.Tensor | None = None            # (B, L') positions kept for the layers >= K
    length: int = 0                             # prompt length L (decode: the prefill's)
    total: int = 0                              # decode: positions in the full numbering, new ones included
    padding: torch.Tensor | None = None         # decode: the (B, total) 2-D attention mask, if given
    new: int = 0                                # decode: new positions in this forward
    memo: dict[int, tuple[Any, Any]] = field(default_factory=dict)  # id(input) -> (input, shortened)


@dataclass(eq=False)
class FastVState:
    """FastV attached to one model instance. ``stats``: one dict per image run of the last prefill,
    ``{"image", "row", "views", "before", "after", "layer"}``; ``kept_positions``: ``(B, L')`` original positions
    the layers ``>= layer`` ran on; ``attention``: ``(B, L)`` float32 attention of the last prompt token in layer
    ``layer - 1``, mean over heads (the ranking). :meth:`detach` removes every hook and restores the model."""
    layer: int
    keep: int | None
    ratio: float | None
    image_token_id: int
    stats: list[dict[str, int]] = field(default_factory=list)
    kept_positions: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    _model: Any = field(default=None, repr=False)
    _hooks: list[Any] = field(default_factory=list, repr=False)
    _caches: Any = field(default_factory=weakref.WeakKeyDictionary, repr=False)
    _call: _Call | None = field(default=None, repr=False)
    _window: int | None = field(default=None, repr=False)
    _labels: Any = field(default=None, repr=False)
    _pruned: bool = field(default=False, repr=False)

    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def detach(self) -> None:
        """Remove the hooks; the model then computes exactly what it did before :func:`attach_fastv`."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._call = None
        model = self._model
        if model is not None and model.__dict__.get(_ATTR) is self:
            delattr(model, _ATTR)
        self._model = None

    def __enter__(self) -> FastVState:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()


# -- public entry ------------------------------------------------------------------------------------------

def attach_fastv(model: Any, *, layer: int = 2, keep: int | None = None, ratio: float | None = None,
                 image_token_id: int | None = None) -> FastVState:
    """Run FastV in ``model``'s language model: after ``layer`` layers, keep ``keep`` image tokens per image
    (or ``ratio`` of them) by the attention the last prompt token gives them in layer ``layer - 1``.

    ``model`` is a ``*ForConditionalGeneration`` VLM whose language model is ``model.model.language_model``.
    ``image_token_id`` defaults to ``model.config.image_token_id``. Only this instance changes (forward
    hooks); :meth:`FastVState.detach` undoes it."""
    vlm, lm = _language_model(model)
    layers = lm.layers
    n_layers = len(layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < n_layers:
        raise ValueError(f"fastv: layer must be a whole number in 1..{n_layers - 1} (the language model has "
                         f"{n_layers} layers; tokens are dropped before that layer), got {layer!r}")
    _check_size(keep, ratio)
    token_id = _image_token_id(model, image_token_id)
    window = _check_layers(lm, layer)
    if getattr(model, _ATTR, None) is not None:
        raise ValueError("fastv: this model already has FastV attached; call .detach() on its state first")

    state = FastVState(layer=layer, keep=keep, ratio=ratio, image_token_id=token_id, _model=model, _window=window)
    state._hooks.append(model.register_forward_pre_hook(_labels_hook(state), with_kwargs=True))
    state._hooks.append(model.register_forward_hook(_loss_hook(state)))
    state._hooks.append(vlm.register_forward_pre_hook(_call_hook(state, lm), with_kwargs=True))
    state._hooks.append(vlm.register_forward_hook(_end_hook(state), always_call=True))
    state._hooks.append(layers[layer - 1].self_attn.register_forward_pre_hook(_rank_hook(state), with_kwargs=True))
    for i in range(layer, n_layers):
        state._hooks.append(layers[i].register_forward_pre_hook(_layer_hook(state, lm, first=i == layer),
                                                                with_kwargs=True))
    setattr(model, _ATTR, state)
    return state


# -- checks ------------------------------------------------------------------------------------------------

def _language_model(model: Any) -> tuple[Any, Any]:
    vlm = getattr(model, "model", None)
    lm = getattr(vlm, "language_model", None)
    if lm is None or not hasattr(lm, "layers"):
        raise ValueError(f"fastv: {type(model).__name__} has no model.model.language_model.layers; FastV needs a "
                         "transformers *ForConditionalGeneration VLM with a decoder language model")
    return vlm, lm


def _check_size(keep: Any, ratio: Any) -> None:
    if (keep is None) == (ratio is None):
        raise ValueError("fastv: give exactly one of keep=<image tokens kept per image> or ratio=<fraction kept>")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ValueError(f"fastv: keep must be a whole number of image tokens >= 1, got {keep!r}")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1):
        raise ValueError(f"fastv: ratio must be a fraction in (0, 1] (the share of image tokens kept), got {ratio!r}")


def _image_token_id(model: Any, given: int | None) -> int:
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int):
            raise ValueError(f"fastv: image_token_id must be a token id (int), got {given!r}")
        return given
    config = model.config
    found = getattr(config, "image_token_id", None)
    if found is None:
        found = getattr(config, "image_token_index", None)
    if found is None:
        raise ValueError(f"fastv: {type(model).__name__}'s config has no image_token_id; pass image_token_id=")
    return int(found)


def _check_layers(lm: Any, layer: int) -> int | None:
    attn = lm.layers[layer - 1].self_attn
    if not all(hasattr(attn, name) for name in ("q_proj", "k_proj", "head_dim", "scaling")):
        raise ValueError(f"fastv: {type(attn).__name__} has no q_proj/k_proj/head_dim/scaling; FastV supports "
                         "Llama/Qwen2/Mistral/Gemma-style attention")
    impl = lm.config._attn_implementation
    if impl == "flex_attention":
        raise ValueError("fastv: flex_attention masks cannot be shortened; load the model with "
                         "attn_implementation='sdpa', 'eager' or a flash attention")
    return _sliding_window(lm.config, len(lm.layers), layer)


def _sliding_window(config: Any, n_layers: int, layer: int) -> int | None:
    """The sliding window of the layers ``>= layer`` if any of them slides (they are then shortened only while
    the sequence fits in it), else None."""
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None)
    if kinds is None:
        kinds = ["sliding_attention" if window is not None else "full_attention"] * n_layers
    later = set(kinds[layer:])
    if later - {"full_attention", "sliding_attention"}:
        odd = sorted(later - {"full_attention", "sliding_attention"})
        raise ValueError(f"fastv: the language model has {odd[0]} layers after layer {layer}; FastV supports "
                         "full and sliding-window attention there")
    return int(window) if "sliding_attention" in later else None


# -- hooks -------------------------------------------------------------------------------------------------

def _call_hook(state: FastVState, lm: Any):
    """Pre-hook on the VLM's base model: decide what this forward is (prefill with images, decode step on a
    cache FastV shortened, or something it leaves alone) from the ``input_ids`` the language model gets."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        state._call = None
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
        if state._window is not None and ids is not None and past + ids.shape[-1] > state._window:
            raise ValueError(f"fastv: the sequence reaches {past + ids.shape[-1]} positions, more than the sliding "
                             f"window ({state._window}) of the layers after layer {state.layer}; FastV shortens "
                             "sliding-window layers only while the whole sequence fits in their window")
        if past:  # a later forward on a cache: FastV ranked at prefill; these tokens are all kept
            info = _cache_info(state, cache)
            if info is not None:
                mask = kwargs.get("attention_mask")
                padding = mask if mask is not None and mask.dim() == 2 else None
                new = ids.shape[-1] if ids is not None else kwargs["inputs_embeds"].shape[1]
                state._call = _Call("decode", kept=info[0], length=info[1], total=past + new, padding=padding,
                                    new=new)
            return
        if ids is None:
            raise ValueError("fastv: the forward got no input_ids; FastV finds image tokens in input_ids "
                             "(pass input_ids, not inputs_embeds)")
        _check_cache(cache, state.layer)
        state._call = _plan(state, ids, kwargs.get("attention_mask"))

    return hook


def _labels_hook(state: FastVState):
    """Pre-hook on the VLM: hold ``labels`` back, since the logits of a pruned forward cover the kept
    positions only; :func:`_loss_hook` computes the loss once those are known."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        state._labels, state._pruned = kwargs.get("labels"), False
        if state._labels is None:
            return None
        kwargs["labels"] = None
        return args, kwargs

    return hook


def _loss_hook(state: FastVState):
    """Post-hook on the VLM: the causal-LM loss of the logits it returned. After pruning, the logit at kept
    position ``p`` is scored against the label of position ``p + 1`` (the token that follows in the input,
    whether or not it was kept)."""

    def hook(module: Any, args: tuple, output: Any) -> Any:
        labels, state._labels = state._labels, None
        if labels is None:
            return None
        import torch

        logits = output["logits"] if not isinstance(output, tuple) else output[0]
        vocab = module.config.get_text_config().vocab_size
        kept = state.kept_positions
        if state._pruned and kept is not None and logits.shape[1] == kept.shape[1]:
            following = torch.nn.functional.pad(labels, (0, 1), value=-100)
            target = torch.gather(following.to(kept.device), 1, kept + 1)
            loss = module.loss_function(logits=logits, labels=None, vocab_size=vocab, shift_labels=target)
        else:
            loss = module.loss_function(logits=logits, labels=labels, vocab_size=vocab)
        if isinstance(output, tuple):
            return (loss, *output)
        output["loss"] = loss
        return output

    return hook


def _end_hook(state: FastVState):
    def hook(module: Any, args: tuple, output: Any) -> None:
        state._call = None

    return hook


def _rank_hook(state: FastVState):
    """Pre-hook on layer K-1's attention: the attention its last prompt token gives every position."""

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        call = state._call
        if call is None or call.mode != "prefill":
            return
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        call.scores = last_token_attention(module, hidden, kwargs["position_embeddings"],
                                           kwargs.get("attention_mask"), call.last)

    return hook


def _layer_hook(state: FastVState, lm: Any, *, first: bool):
    """Pre-hook on the layers >= K: at layer K in prefill, select the kept positions and shorten the hidden
    states; on every such layer, restrict the mask, rotary cos/sin and position ids to the kept positions."""

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        call = state._call
        if call is None:
            return None
        if call.mode == "prefill" and first:
            _select(state, call)
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if cache is not None:
                _remember_cache(state, cache, call.kept, call.length)
            if args:
                args = (_take(args[0], call.kept, 1, 0), *args[1:])
            else:
                kwargs["hidden_states"] = _take(kwargs["hidden_states"], call.kept, 1, 0)
        flash = "flash" in str(lm.config._attn_implementation)
        _shorten(kwargs, call, flash)
        return args, kwargs

    return hook


# -- the pieces --------------------------------------------------------------------------------------------

def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    import torch

    zero = torch.zeros(1, dtype=torch.int8, device=row.device)
    edges = torch.diff(torch.cat([zero, row.to(torch.int8), zero]))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    ends = torch.nonzero(edges == -1).flatten().tolist()
    return [(s, e - s) for s, e in zip(starts, ends)]


def _plan(state: FastVState, ids: torch.Tensor, attention_mask: Any) -> _Call:
    """Image runs per row with their kept counts, checked to give one shortened length for the batch."""
    import torch

    from vistok.reducers.core import keep_count

    image = ids == state.image_token_id
    counts = image.sum(-1).tolist()
    if not any(counts):
        raise ValueError(f"fastv: no image tokens (id {state.image_token_id}) in input_ids; FastV drops image "
                         "tokens, so run it on prompts that hold an image (or detach it for text-only prompts)")
    if len(set(counts)) > 1:
        raise ValueError(f"fastv: the rows of the batch hold different numbers of image tokens {counts}; FastV "
                         "keeps one sequence length per batch: give every row the same images (same count and "
                         "sizes) or run the rows separately")
    runs, image_no = [], 0
    for b in range(ids.shape[0]):
        row_runs = []
        for start, n in _runs(image[b]):
            if state.keep is not None and state.keep > n:
                raise ValueError(f"fastv: keep={state.keep} is more than the {n} image tokens of image "
                                 f"{image_no} (row {b}); give keep <= {n} or ratio=")
            row_runs.append((start, n, keep_count(n, state.keep, state.ratio)))
            image_no += 1
        runs.append(row_runs)
    kept = {sum(k for _, _, k in r) for r in runs}
    if len(kept) > 1:
        raise ValueError("fastv: the rows of the batch would keep different numbers of image tokens; give every "
                         "row the same images (same count and sizes) or run the rows separately")
    length = ids.shape[1]
    last = torch.full((ids.shape[0],), length - 1, dtype=torch.long, device=ids.device)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        real = attention_mask.to(ids.device).bool()
        positions = torch.arange(length, device=ids.device).expand_as(real)
        last = torch.where(real, positions, -1).amax(-1).clamp_min(0)
    return _Call("prefill", runs=runs, last=last, length=length)


def last_token_attention(attn: Any, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                         mask: Any, last: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` float32 attention from the query at ``last[b]`` to every key of row ``b``, averaged over
    heads, as the attention module ``attn`` computes it (eager path: ``softmax(q k^T * scaling + mask)``).
    ``hidden``: the module's input ``(B, L, D)``; ``mask``: the mask it gets (4-D, a 2-D padding mask or None)."""
    import torch

    batch, length, _ = hidden.shape
    rows = torch.arange(batch, device=hidden.device)
    last = last.to(hidden.device)
    head_dim = attn.head_dim
    q = attn.q_proj(hidden[rows, last][:, None]).view(batch, 1, -1, head_dim)
    k = attn.k_proj(hidden).view(batch, length, -1, head_dim)
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    cos, sin = position_embeddings
    k, _ = rotate(k, k, cos, sin)
    q, _ = rotate(q, q, _take(cos, last[:, None], -2, -3), _take(sin, last[:, None], -2, -3))
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scaling  # (B, H, 1, L)
    softcap = getattr(attn, "attn_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    future = torch.arange(length, device=hidden.device)[None] > last[:, None]  # (B, L)
    logits = logits.masked_fill(future[:, None, None], float("-inf"))
    if isinstance(mask, torch.Tensor) and mask.dim() == 4:
        row = mask.expand(batch, -1, -1, -1)[rows, :, last][:, :, None]  # (B, 1|H, 1, kv)
        row = row[..., -length:]
        logits = logits.masked_fill(~row, float("-inf")) if row.dtype == torch.bool else logits + row.float()
    elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
        logits = logits.masked_fill(~mask[:, -length:].bool()[:, None, None], float("-inf"))
    return logits.softmax(-1).mean(1)[:, 0]


def _select(state: FastVState, call: _Call) -> None:
    """The kept positions ``(B, L')``: every text token, and per image run its top-k by attention, in order."""
    import torch

    scores = call.scores
    if scores is None:
        raise RuntimeError("fastv: layer K-1's attention was not computed before layer K (unexpected layer order)")
    batch = scores.shape[0]
    keep = torch.ones(batch, call.length, dtype=torch.bool, device=scores.device)
    stats, image_no = [], 0
    for b, row_runs in enumerate(call.runs):
        for start, n, k in row_runs:
            keep[b, start:start + n] = False
            top = torch.topk(scores[b, start:start + n], k).indices + start
            keep[b, top] = True
            stats.append({"image": image_no, "row": b, "views": 1, "before": n, "after": k, "layer": state.layer})
            image_no += 1
    positions = torch.arange(call.length, device=scores.device).expand(batch, -1)
    call.kept = positions[keep].view(batch, -1)
    state.stats, state._pruned, state.attention = stats, True, scores
    state.kept_positions = call.kept


def _take(t: torch.Tensor, idx: torch.Tensor, dim: int, batch_dim: int) -> torch.Tensor:
    """``t`` at positions ``idx`` ``(B, n)`` along ``dim``, per row of ``batch_dim`` (size 1 or B there)."""
    import torch

    dim, batch_dim = dim % t.dim(), batch_dim % t.dim()
    shape = list(t.shape)
    shape[batch_dim] = idx.shape[0]
    t = t.expand(shape)
    view = [1] * t.dim()
    view[batch_dim], view[dim] = idx.shape
    shape[dim] = idx.shape[1]
    return torch.gather(t, dim, idx.to(t.device).view(view).expand(shape))


def _shorten(kwargs: dict, call: _Call, flash: bool) -> None:
    """Restrict the layer's mask, rotary cos/sin and position ids to the positions it holds."""
    import torch

    def once(value: Any, make) -> Any:
        hit = call.memo.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        out = make(value)
        call.memo[id(value)] = (value, out)
        return out

    kept = call.kept
    mask = kwargs.get("attention_mask")
    if call.mode == "decode":
        if mask is not None or call.padding is not None:
            kwargs["attention_mask"] = once(mask, lambda m: _decode_mask(m, call, flash))
        return
    if isinstance(mask, torch.Tensor):
        kwargs["attention_mask"] = once(mask, lambda m: _prefill_mask(m, call))
    if call.mode == "prefill":
        pos = kwargs.get("position_embeddings")
        if isinstance(pos, tuple):
            kwargs["position_embeddings"] = once(pos, lambda p: tuple(_take(x, kept, -2, -3) for x in p))
        ids = kwargs.get("position_ids")
        if isinstance(ids, torch.Tensor):
            kwargs["position_ids"] = None if flash else once(ids, lambda p: _take(p, kept, -1, -2))


def _prefill_mask(mask: torch.Tensor, call: _Call) -> torch.Tensor:
    """The prefill mask (sized for the whole prompt: every cache is empty) at the kept queries and keys."""
    if mask.dim() == 2:  # flash: a (B, L) padding mask
        return _take(mask, call.kept, 1, 0)
    return _take(_take(mask, call.kept, 2, 0), call.kept, 3, 0)


def _decode_mask(mask: torch.Tensor | None, call: _Call, flash: bool) -> torch.Tensor | None:
    """The mask of a shortened layer for new tokens, rebuilt from the 2-D padding mask: the keys it holds are
    the kept prompt positions followed by every later position, and a query sees the keys up to its own
    position. (The model sizes its decode masks from the cache of the first layer of each kind, which may be
    a shortened one, so its mask is not reused.) Its format follows ``mask``: 2-D for flash, else 4-D, bool or
    additive in the mask's dtype."""
    import torch

    kept = call.kept
    batch, device = kept.shape[0], kept.device
    later = torch.arange(call.length, call.total, device=device).expand(batch, -1)
    keys = torch.cat([kept, later], dim=1)                                     # (B, kv') original positions
    padding = call.padding
    if padding is None:
        padding = torch.ones(batch, call.total, dtype=torch.bool, device=device)
    allowed = torch.gather(padding.to(device).bool(), 1, keys)               # (B, kv')
    if flash or (mask is not None and mask.dim() == 2):
        return allowed.to(mask.dtype) if mask is not None else allowed.long()
    queries = torch.arange(call.total - call.new, call.total, device=device)
    allowed = allowed[:, None, None, :] & (keys[:, None, None, :] <= queries[None, None, :, None])
    if mask is None or mask.dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=mask.dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(mask.dtype).min)


# -- the KV cache ------------------------------------------------------------------------------------------

def _check_cache(cache: Any, layer: int) -> None:
    if cache is None or not hasattr(cache, "layers"):
        return
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    kinds = (DynamicLayer, DynamicSlidingWindowLayer)
    odd = [i for i, lay in enumerate(cache.layers) if i >= layer and type(lay) not in kinds]
    if odd:
        raise ValueError(f"fastv: the KV cache's layer {odd[0]} is a {type(cache.layers[odd[0]]).__name__}; FastV "
                         "shortens the cache of the layers after the pruning layer and needs a DynamicCache "
                         "(the generate default) with full-attention layers there")


def _remember_cache(state: FastVState, cache: Any, kept: torch.Tensor, length: int) -> None:
    try:
        state._caches[cache] = (kept, length)
    except TypeError:  # not weak-referenceable: keep only the latest
        state._caches = {id(cache): (cache, kept, length)}


def _cache_info(state: FastVState, cache: Any) -> tuple[torch.Tensor, int] | None:
    if isinstance(state._caches, weakref.WeakKeyDictionary):
        return state._caches.get(cache)
    hit = state._caches.get(id(cache))
    return (hit[1], hit[2]) if hit is not None and hit[0] is cache else None
