"""The machinery behind :func:`vistok.vlm.patch`: model families, the shortening of image placeholder runs, and
the per-instance wrappers around ``forward`` and ``generate``.

A transformers VLM's processor writes ``n`` placeholder tokens per image (or per crop) and the model scatters
``n`` projected features into them. A patch computes the features itself, reduces each view to ``k`` tokens
with a vistok reducer, keeps the first ``k`` placeholders of each view's block and drops the others (from
``input_ids`` and every per-position tensor), and hands the reduced features to the model through its own
``mm_encoder_outputs`` argument. The language model then sees a shorter sequence, exactly as if the processor
had written ``k`` placeholders, so attention masks, positions, ``cache_position`` and the KV cache stay
consistent through ``generate``. Nothing is assigned to a class: ``forward`` and ``generate`` are wrapped as
attributes of the one instance and removed again by :meth:`PatchHandle.unpatch`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = ["View", "Family", "PatchHandle", "register_family", "family_of", "supported_models",
           "capture_attention", "shorten", "PER_POSITION_KEYS"]

#: Per-position inputs that are shortened together with ``input_ids`` (``(..., B, L)`` tensors).
PER_POSITION_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "labels",
                     "position_ids")
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "mm_token_type_ids": 0, "labels": -100, "position_ids": 1}


@dataclass
class View:
    """One set of visual tokens reduced on its own: an image, or one crop/tile of it.

    ``tokens`` ``(n, D)`` at the reduction point; ``grid`` ``(rows, cols)`` when they tile a grid row-major;
    ``image`` the batch-order index of the image; the signals, when captured: ``cls_attention`` ``(n,)`` (softmax
    attention from CLS, mean over heads), ``keys`` ``(n, d)`` (mean over heads), ``attention_received`` ``(n,)``
    (mean attention each token receives, for towers without CLS). ``assign`` ``(n,)`` long is set by the
    reduction: the output token each input went to (``-1`` dropped), for families that place outputs by their
    inputs (Qwen's M-RoPE positions)."""

    tokens: torch.Tensor
    grid: tuple[int, int] | None
    image: int
    cls_attention: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    attention_received: torch.Tensor | None = None
    assign: torch.Tensor | None = None


class Family:
    """How one family of transformers VLMs is reduced. Subclasses set the class attributes and implement
    :meth:`encode` and :meth:`to_lm`; :meth:`finish` adds ``mm_encoder_outputs`` by default."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    cls_token: ClassVar[bool] = True
    pixel_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)
    drop_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "image_sizes")

    def placeholder_id(self, model: Any) -> int:
        """The token id the processor writes once per visual feature."""
        config = model.config
        value = getattr(config, "image_token_id", None)
        return int(value if value is not None else config.image_token_index)

    def has_images(self, kwargs: dict[str, Any]) -> bool:
        return kwargs.get("input_ids") is not None and any(kwargs.get(k) is not None for k in self.pixel_keys)

    def encode(self, model: Any, kwargs: dict[str, Any], signals: set[str]) -> list[View]:
        """Run the model's vision path up to the reduction point; views in the order the model scatters them."""
        raise NotImplementedError

    def to_lm(self, model: Any, views: list[View],
              reduced: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Map reduced view tokens to what the LM receives: features per image (as ``mm_encoder_outputs``
        expects them) and ``(n_before, n_after)`` per placeholder block in scatter order."""
        raise NotImplementedError

    def finish(self, model: Any, old: dict[str, Any], new: dict[str, Any], keep_mask: torch.Tensor,
               features: list[torch.Tensor]) -> dict[str, Any]:
        """Drop the pixel inputs and hand the reduced features over as ``mm_encoder_outputs``."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        for key in self.drop_keys:
            new.pop(key, None)
        new["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return new

    def unreduced_blocks(self, views: list[View]) -> list[tuple[int, int]] | None:
        """``(n, n)`` per placeholder block when nothing is reduced, for ``stats`` where a block holds more LM
        positions than its views' tokens (LLaVA-NeXT's newlines); None: the views' token counts."""
        return None

    def tokens_grid(self, views: list[View]) -> tuple[int, int] | None:
        """The grid of one image's LM tokens for :func:`vistok.vlm.visual_tokens` (one view: its grid)."""
        return views[0].grid if len(views) == 1 else None


_families: dict[str, Family] = {}


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: make ``cls`` handle the model classes it names."""
    family = cls()
    for name in cls.classes:
        _families[name] = family
    return cls


def _load_families() -> None:
    import importlib
    import pkgutil

    import vistok.vlm as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name != "fastv":
            importlib.import_module(f"vistok.vlm.{info.name}")


def supported_models() -> list[str]:
    """The transformers model classes :func:`vistok.vlm.patch` supports."""
    _load_families()
    return sorted(_families)


def family_of(model: Any) -> Family:
    """The family handling ``model``'s class (or a parent class); a clear error listing the supported ones."""
    _load_families()
    for klass in type(model).__mro__:
        if klass.__name__ in _families:
            return _families[klass.__name__]
    raise ValueError(f"vistok.vlm does not support {type(model).__name__}; supported: "
                     f"{', '.join(supported_models())}")


# --- signals ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def capture_attention(attention: torch.nn.Module, store: dict[str, torch.Tensor],
                      signals: set[str]) -> Iterator[None]:
    """Record attention signals of one HF CLIP/SigLIP/DINOv2-style attention module (``q_proj``, ``k_proj``,
    ``head_dim``, ``scale`` or ``scaling``) during the next forward, into ``store`` as ``(B, T, ...)`` float32 tensors:
    ``attention`` (softmax probabilities averaged over heads, ``(B, T, T)``, computed here from q and k with the
    module's attention mask, so the module itself keeps SDPA) when ``cls_attention`` or ``attention_received``
    is asked for, ``keys`` ``(B, T, head_dim)`` (mean
    over heads) when ``keys`` is."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        batch, length = hidden.shape[:2]
        head_dim = module.head_dim
        keys = module.k_proj(hidden).view(batch, length, -1, head_dim).float()
        if "keys" in signals:
            store["keys"] = keys.mean(dim=2)
        if signals & {"cls_attention", "attention_received"}:
            queries = module.q_proj(hidden).view(batch, length, -1, head_dim).float()
            total = None
            scale = float(getattr(module, "scale", None) or getattr(module, "scaling", head_dim ** -0.5))
            for head in range(keys.shape[2]):  # one head at a time: (B, T, T) memory, not (B, H, T, T)
                scores = queries[:, :, head] @ keys[:, :, head].transpose(1, 2) * scale
                if mask is not None:
                    scores = (scores.masked_fill(~mask[:, 0], float("-inf")) if mask.dtype == torch.bool
                              else scores + mask[:, 0].float())
                probs = scores.softmax(dim=-1)
                total = probs if total is None else total + probs
            store["attention"] = total / keys.shape[2]

    handle = attention.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def signals_from(store: dict[str, torch.Tensor], row: int, tokens: slice, cls_index: int | None) -> dict[str, Any]:
    """Per-token signals of one batch row, for the tokens at ``tokens`` of the tower's sequence."""
    out: dict[str, Any] = {}
    if "attention" in store:
        probs = store["attention"][row]  # (T, T), mean over heads
        if cls_index is not None:
            out["cls_attention"] = probs[cls_index, tokens]
        out["attention_received"] = probs.mean(dim=0)[tokens]
    if "keys" in store:
        out["keys"] = store["keys"][row, tokens]
    return out


# --- shortening -----------------------------------------------------------------------------------------


def shorten(kwargs: dict[str, Any], placeholder: int, blocks: list[tuple[int, int]],
            pad_id: int) -> tuple[dict[str, Any], torch.Tensor]:
    """Keep the first ``n_after`` placeholders of each block of ``n_before`` (in scatter order: row by row,
    left to right) and drop the rest from every per-position input. Rows left shorter than the longest are
    padded on the side the input was padded on. Returns the new kwargs and the ``(B, L)`` keep mask."""
    input_ids = kwargs["input_ids"]
    is_placeholder = input_ids == placeholder
    positions = is_placeholder.flatten().nonzero().flatten()
    expected = sum(before for before, _ in blocks)
    if positions.numel() != expected:
        raise ValueError(f"the input holds {positions.numel()} image placeholder tokens, but the images give "
                         f"{expected} features; pass the processor's input_ids and pixel values unchanged")
    keep = torch.ones(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
    start = 0
    for before, after in blocks:
        keep[positions[start + after:start + before]] = False
        start += before
    keep = keep.view_as(input_ids)
    mask = kwargs.get("attention_mask")
    left = not (mask is not None and mask.dim() == 2 and bool((mask[:, -1] == 0).any()))
    if mask is not None and mask.shape == input_ids.shape and not bool(keep.sum(dim=1).eq(keep.shape[1]).all()):
        keep &= mask.bool()  # old padding goes too, so the re-padded batch is as narrow as its longest row
    new = dict(kwargs)
    lengths = keep.sum(dim=1)
    width = int(lengths.max())
    for key in PER_POSITION_KEYS:
        value = kwargs.get(key)
        if not isinstance(value, torch.Tensor) or value.shape[-2:] != input_ids.shape:
            continue
        fill = pad_id if key == "input_ids" else _PAD_VALUES[key]
        out = value.new_full((*value.shape[:-1], width), fill)
        for row in range(input_ids.shape[0]):
            kept = value[..., row, keep[row]]
            span = slice(width - kept.shape[-1], width) if left else slice(0, kept.shape[-1])
            out[..., row, span] = kept
        new[key] = out
    return new, keep


def pad_token_id(model: Any) -> int:
    """The pad id for re-padded rows (the LM's, else 0)."""
    # the LM's first: Idefics3/SmolVLM keep a top-level pad_token_id (128002) outside SmolVLM's vocabulary
    for config in (getattr(model.config, "text_config", None), model.config):
        value = getattr(config, "pad_token_id", None) if config is not None else None
        if value is not None:
            return int(value)
    return 0


# --- the handle -----------------------------------------------------------------------------------------


class PatchHandle:
    """What :func:`vistok.vlm.patch` returns: ``stats`` (one dict per image of the last call with images:
    ``image``, ``views``, ``before``, ``after`` = LM positions holding visual features), :meth:`unpatch`, and
    use as a context manager (unpatches on exit)."""

    def __init__(self, model: Any, method: str, family: Family | None, reduce_view: Any) -> None:
        self.model = model
        self.method = method
        self.family = family
        self.stats: list[dict[str, int]] = []
        self.calls = 0
        self._reduce_view = reduce_view
        self._undo: list[Any] = []
        self.active = True

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        state = "active" if self.active else "undone"
        return f"PatchHandle({type(self.model).__name__}, {self.method!r}, {state}, stats={self.stats})"

    def unpatch(self) -> None:
        """Restore the model exactly (idempotent)."""
        while self._undo:
            self._undo.pop()()
        self.active = False
        if getattr(self.model, "_vistok_patch", None) is self:
            del self.model.__dict__["_vistok_patch"]

    # -- wrapping --
    def install(self) -> None:
        model = self.model
        if "_vistok_patch" in model.__dict__:
            raise ValueError(f"this {type(model).__name__} is already patched by vistok "
                             f"({model.__dict__['_vistok_patch'].method}); call .unpatch() on that handle first")
        model.__dict__["_vistok_patch"] = self
        self._wrap("forward", self._forward)
        self._wrap("generate", self._generate)

    def _wrap(self, name: str, make: Any) -> None:
        model = self.model
        original = getattr(model, name)
        wrapper = functools.wraps(original)(make(original))
        model.__dict__[name] = wrapper

        def undo() -> None:
            if model.__dict__.get(name) is wrapper:
                del model.__dict__[name]

        self._undo.append(undo)

    def _forward(self, original: Any) -> Any:
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            kwargs = _named(signature, args, kwargs)
            if self.active and self.family is not None and self.family.has_images(kwargs):
                kwargs = self.prepare(kwargs)
            return original(**kwargs)

        return forward

    def _generate(self, original: Any) -> Any:
        signature = inspect.signature(original)

        def generate(*args: Any, **kwargs: Any) -> Any:
            kwargs = _named(signature, args, kwargs)
            if "inputs" in kwargs and "input_ids" not in kwargs:
                kwargs["input_ids"] = kwargs.pop("inputs")
            if not (self.active and self.family is not None and self.family.has_images(kwargs)):
                return original(**kwargs)
            prompt = kwargs["input_ids"]
            kwargs = self.prepare(kwargs)
            short = kwargs["input_ids"].shape[1]
            out = original(**kwargs)
            sequences = out if isinstance(out, torch.Tensor) else out.sequences
            rows = sequences.shape[0] // prompt.shape[0]
            full = torch.cat([prompt.repeat_interleave(rows, dim=0).to(sequences.device), sequences[:, short:]], 1)
            if isinstance(out, torch.Tensor):
                return full
            out.sequences = full
            return out

        return generate

    def prepare(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Reduce the images in one call's inputs; the shortened kwargs for the original method."""
        family, model = self.family, self.model
        assert family is not None
        signals = self._signals()
        views = family.encode(model, kwargs, signals)
        reduced = [self._reduce_view(view) for view in views]
        self.calls += 1
        if all(r is v.tokens for r, v in zip(reduced, views)):  # nothing to reduce: run the model untouched
            self._record(views, reduced, family.unreduced_blocks(views))
            return kwargs
        features, blocks = family.to_lm(model, views, reduced)
        new, keep = shorten(kwargs, family.placeholder_id(model), blocks, pad_token_id(model))
        self._record(views, reduced, blocks)
        return family.finish(model, kwargs, new, keep, features)

    def _signals(self) -> set[str]:
        from vistok.reducers.core import method_info

        info = method_info(self.method)
        wanted = {*info.needs, *info.uses} & {"cls_attention", "keys"}
        if "cls_attention" in wanted and not self.family.cls_token:
            wanted = (wanted - {"cls_attention"}) | {"attention_received"}
        return wanted

    def _record(self, views: list[View], reduced: list[torch.Tensor],
                blocks: list[tuple[int, int]] | None = None) -> None:
        per_image: dict[int, dict[str, int]] = {}
        for view, out in zip(views, reduced):
            entry = per_image.setdefault(view.image, {"image": view.image, "views": 0, "before": 0, "after": 0})
            entry["views"] += 1
            entry["before"] += int(view.tokens.shape[0])
            entry["after"] += int(out.shape[0])
        self.stats = [per_image[i] for i in sorted(per_image)]
        if blocks is not None and len(blocks) == len(self.stats):  # whole-image blocks count extra positions
            for entry, (before, after) in zip(self.stats, blocks):
                entry["before"], entry["after"] = before, after


def _named(signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Positional arguments turned into keywords, so inputs can be found by name."""
    if not args:
        return dict(kwargs)
    bound = signature.bind_partial(*args, **kwargs)
    named = dict(bound.arguments)
    extra = named.pop("kwargs", None)
    if isinstance(extra, dict):
        named.update(extra)
    return named
