"""Fewer visual tokens inside real transformers VLMs.

``vistok.vlm.patch(model, "visionzip", keep=64)`` makes one loaded VLM instance reduce every image (or every
crop, where the model tiles) to 64 visual tokens before its language model sees them; ``model.generate`` and a
plain forward keep working unchanged. ``vistok.vlm.patch(model, "fastv", layer=2, keep=64)`` prunes inside the
language model instead (FastV). ``vistok.vlm.visual_tokens(model, processor, image)`` returns the projected
visual tokens the language model receives, as :class:`vistok.Tokens`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vistok.vlm._base import Family, PatchHandle, View, family_of, supported_models

__all__ = ["patch", "visual_tokens", "supported_models", "PatchHandle"]

_SIGNAL_CHOICES = ("cls_attention", "attention_received")


def patch(model: Any, method: str, *, keep: int | None = None, ratio: float | None = None, seed: int = 0,
          signal: str = "cls_attention", **options: Any) -> PatchHandle:
    """Make ``model`` (one instance) feed its language model fewer visual tokens.

    ``method`` is any name in :func:`vistok.reduce_methods` (applied per image, or per crop/view where the model
    tiles, to the visual tokens before the language model) or ``"fastv"`` (inside the language model, after
    ``layer``). ``keep=K`` or ``ratio=r`` as in :func:`vistok.reduce`; a view with at most K tokens is left
    alone. Signals (CLS attention, keys) are captured from the model's own vision tower at the layer it takes
    features from. For towers without a CLS token, methods ranking by CLS attention need
    ``signal="attention_received"`` (the mean attention each token receives at that layer) or raise.
    ``options`` are the method's own (``factor=2`` for pool, ``layer=`` for fastv). Returns a
    :class:`PatchHandle`: ``.stats``, ``.unpatch()``, and a context manager.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a reduction method name, got {type(method).__name__}")
    if not hasattr(model, "config") or not isinstance(model, torch.nn.Module):
        raise TypeError(f"patch takes a loaded transformers VLM, got {type(model).__name__}")
    if method == "fastv":
        return _patch_fastv(model, keep=keep, ratio=ratio, **options)
    from vistok.reducers.core import SIGNAL_SOURCES, keep_count, method_info

    try:
        info = method_info(method)
    except KeyError as error:
        raise ValueError(f"{error.args[0]}, or fastv (inside the language model)") from None
    family = family_of(model)
    if signal not in _SIGNAL_CHOICES:
        raise ValueError(f"signal must be one of {', '.join(_SIGNAL_CHOICES)}, got {signal!r}")
    needs_cls = "cls_attention" in info.needs
    if needs_cls and not family.cls_token and signal != "attention_received":
        from vistok.reducers.core import list_methods

        working = [m for m in list_methods() if set(method_info(m).needs) <= {"keys"}]
        raise ValueError(f"{method} ranks tokens by the attention from a CLS token, and {family.label}'s vision "
                         f"tower has none; use one of {', '.join(working)} or fastv, or pass "
                         "signal='attention_received' to rank by the mean attention each token receives")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise TypeError(f"{method} takes no option {unknown[0]!r} (it takes: {', '.join(info.options) or 'none'})")
    for name in info.needs:
        if name not in ("cls_attention", "keys"):
            raise ValueError(f"{method} needs the {name!r} signal, which a VLM's vision tower does not give "
                             f"({SIGNAL_SOURCES.get(name, '')}); use a method that needs only attention or keys")
    sized = any(options.get(name) not in (None, False) for name in info.sizing)
    if not sized:
        keep_count(10**9, keep, ratio)  # validates the pair early (one of them, in range)

    def reduce_view(view: View) -> torch.Tensor:
        n = int(view.tokens.shape[0])
        k = None
        if not sized:
            k = keep_count(n, min(keep, n), None) if keep is not None else keep_count(n, None, ratio,
                                                                                      info.ratio_rounding)
            if k >= n:
                return view.tokens
        signals: dict[str, torch.Tensor] = {}
        for name in {*info.needs, *info.uses} & {"cls_attention", "keys"}:
            value = getattr(view, name)
            if name == "cls_attention" and (value is None or signal == "attention_received"):
                value = view.attention_received
            if value is not None:
                signals[name] = value
        values, view.assign = _reduce_tensor(view.tokens, method, k, seed, view.grid, signals, options)
        return values

    handle = PatchHandle(model, method, family, reduce_view)
    handle.install()
    return handle


def _reduce_tensor(tokens: torch.Tensor, method: str, k: int | None, seed: int, grid: tuple[int, int] | None,
                   signals: dict[str, torch.Tensor], options: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """The reduced ``(k, D)`` tokens and the assignment ``(n,)`` (output index of each input, -1 dropped)."""
    try:
        from vistok.reducers import reduce_tensor
    except ImportError:  # numpy edge
        from vistok import reduce
        from vistok.tokens import Tokens

        source = Tokens(values=tokens.detach().float().cpu().numpy(), grid=grid)
        out = reduce(source, method, keep=k, seed=seed,
                     **{n: v.detach().float().cpu().numpy() for n, v in signals.items()}, **options)
        assign = torch.from_numpy(np.asarray(out.source).reshape(-1).astype(np.int64)).to(tokens.device)
        return torch.from_numpy(np.ascontiguousarray(out.values)).to(tokens.device, tokens.dtype), assign
    result = reduce_tensor(tokens[None], method, keep=k, seed=seed, token_grid=grid,
                           **{n: v[None] for n, v in signals.items()}, **options)
    assign = getattr(result, "assign", None)
    return result.values[0], (assign[0] if assign is not None else None)


def _patch_fastv(model: Any, *, keep: int | None, ratio: float | None, **options: Any) -> PatchHandle:
    from vistok.vlm.fastv import attach_fastv

    if "_vistok_patch" in model.__dict__:
        raise ValueError(f"this {type(model).__name__} is already patched by vistok "
                         f"({model.__dict__['_vistok_patch'].method}); call .unpatch() on that handle first")
    handle = _FastVHandle(model, attach_fastv(model, keep=keep, ratio=ratio, **options))
    model.__dict__["_vistok_patch"] = handle
    return handle


class _FastVHandle(PatchHandle):
    """A :class:`PatchHandle` over FastV's state: its ``stats``, and ``unpatch`` detaches it."""

    def __init__(self, model: Any, state: Any) -> None:
        self._state = state
        super().__init__(model, "fastv", None, None)
        self._undo.append(state.detach)

    @property  # type: ignore[override]
    def stats(self) -> list[dict[str, int]]:
        return list(getattr(self._state, "stats", []))

    @stats.setter
    def stats(self, value: list[dict[str, int]]) -> None:
        pass


def visual_tokens(model: Any, processor: Any, image: Any, text: str | None = None) -> Any:
    """The projected visual tokens ``model``'s language model receives for ``image``, as :class:`vistok.Tokens`
    (soft tokens in the LM's embedding space; ``grid`` kept when the image is one view). ``text`` is the prompt
    given to ``processor`` (by default its image placeholder alone)."""
    from vistok.tokens import Tokens

    family = family_of(model)
    prompt = text if text is not None else family_prompt(processor)
    from vistok.vlm.run import on_model

    inputs = on_model(model, processor(images=image, text=prompt, return_tensors="pt"))
    with torch.no_grad():
        views = family.encode(model, inputs, set())
        features, blocks = family.to_lm(model, views, [v.tokens for v in views])
    values = features[0].detach().float().cpu().numpy()
    return Tokens(values=values, grid=family.tokens_grid([v for v in views if v.image == 0]),
                  meta={"tokenizer": f"vlm:{type(model).__name__}", "views": sum(v.image == 0 for v in views),
                        "lm_positions": int(blocks[0][0]) if blocks else len(values)})


def family_prompt(processor: Any) -> str:
    """The processor's image placeholder string (what a prompt holds once per image)."""
    token = getattr(processor, "image_token", None)
    if not isinstance(token, str):
        raise ValueError(f"{type(processor).__name__} has no image_token; pass text= with the image placeholder")
    return token


__all__ += ["Family", "View"]

from vistok.vlm.run import Answer, ask, load  # noqa: E402  (run imports patch from here lazily)

__all__ += ["Answer", "ask", "load"]
