"""Which visual tokens a patched VLM's language model keeps, for drawing (``vistok show --vlm``).

:func:`kept_tokens` runs the model's own patch code path once on one image: :func:`vistok.vlm.patch` is
applied, and its :meth:`~vistok.vlm.PatchHandle.prepare` encodes the image (signals from the model's own
vision tower), reduces it with the reducer the patch uses and shortens the prompt; the assignment the reducer
returned for the image is recorded on the way. ``fastv`` (pruning inside the language model, by the attention
of the prompt's last token) is run through a prefill forward instead, and its kept image positions are read
back. Either way the result is exactly the set the language model sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vistok.tokens import Tokens

__all__ = ["kept_tokens", "is_llama_vid", "ShowError"]


class ShowError(ValueError):
    """A model or image that cannot be drawn (one line, names the input)."""


def is_llama_vid(folder: Any) -> bool:
    """Whether ``folder`` holds a LLaMA-VID model written by :mod:`vistok.vlm.llama_vid` (its ``llama_vid.json``)."""
    from pathlib import Path

    from vistok.vlm.llama_vid import CONFIG_FILE

    try:
        return (Path(str(folder)).expanduser() / CONFIG_FILE).is_file()
    except OSError:
        return False


def _inputs(model: Any, processor: Any, image: Any, question: str | None) -> dict[str, Any]:
    from vistok.vlm import family_prompt
    from vistok.vlm.run import _prompt, on_model

    text = _prompt(processor, question, 1) if question else family_prompt(processor)
    return on_model(model, processor(images=image, text=text, return_tensors="pt"))


def kept_tokens(model: Any, processor: Any, image: Any, method: str, *, keep: int | None = None,
                ratio: float | None = None, question: str | None = None, seed: int = 0,
                signal: str = "cls_attention", **options: Any) -> Tokens:
    """The visual tokens ``model``'s language model receives for ``image`` once patched with ``method``
    (``keep``/``ratio``/``seed``/``signal``/``options`` as :func:`vistok.vlm.patch`, which is what runs).

    Returns :class:`vistok.Tokens`: ``values`` the kept tokens in the LM's embedding space (for ``fastv``, the
    projected tokens it keeps after its layer; the earlier layers see them all), ``source`` over the tower's patch grid (``base_grid``):
    the kept token each patch went to, ``-1`` dropped. ``meta``: ``method``, ``stats`` (the patch's),
    ``image_size``, ``crop_box`` (where the processor centre-crops) and, when the reducer ranked by it,
    ``patch_signal`` (the per-patch attention from the tower's CLS token, or received attention, as a list).
    ``question`` is the prompt (it matters only to ``fastv``, which ranks by the prompt's last token)."""
    from vistok.images import open_image

    picture = open_image(image)
    inputs = _inputs(model, processor, picture, question)
    if method == "fastv":
        tokens = _fastv_tokens(model, processor, picture, inputs, keep=keep, ratio=ratio, **options)
    else:
        tokens = _reducer_tokens(model, inputs, method, keep=keep, ratio=ratio, seed=seed, signal=signal,
                                 **options)
    tokens.meta.update(method=method, image_size=list(picture.size))
    box = _crop_box(getattr(processor, "image_processor", None), picture.size)
    if box is not None:
        tokens.meta["crop_box"] = box
    return tokens


def _reducer_tokens(model: Any, inputs: dict[str, Any], method: str, **settings: Any) -> Tokens:
    from vistok.vlm import patch

    handle = patch(model, method, **settings)
    recorded: list[tuple[Any, torch.Tensor]] = []
    reduce_view = handle._reduce_view  # the patch's own per-view reduction; record what it returns

    def record(view: Any) -> torch.Tensor:
        out = reduce_view(view)
        recorded.append((view, out))
        return out

    handle._reduce_view = record
    try:
        with torch.no_grad():
            handle.prepare(inputs)
            views = [view for view, _ in recorded]
            _one_view(handle.family, views)
            features, _ = handle.family.to_lm(model, views, [out for _, out in recorded])
    finally:
        handle.unpatch()
    view, out = recorded[0]
    n = int(view.tokens.shape[0])
    assign = view.assign if out is not view.tokens else None
    source = np.arange(n) if assign is None else assign.detach().cpu().numpy().astype(np.int64)
    meta: dict[str, Any] = {"stats": list(handle.stats), "tokenizer": f"vlm:{type(model).__name__}"}
    signal = view.cls_attention if view.cls_attention is not None else view.attention_received
    if signal is not None:
        meta["patch_signal"] = [float(v) for v in signal.detach().float().cpu()]
        meta["signal"] = "cls_attention" if view.cls_attention is not None else "attention_received"
    return Tokens(features[0].detach().float().cpu().numpy(), source=source, base_grid=view.grid, meta=meta)


def _one_view(family: Any, views: list[Any]) -> None:
    if len(views) != 1 or views[0].grid is None:
        raise ShowError(f"show draws one grid of visual tokens per image, and {family.label} gives "
                        f"{len(views)} view(s) for this image; use a LLaVA-1.5-style model (one view per image)")


def _fastv_tokens(model: Any, processor: Any, picture: Any, inputs: dict[str, Any], *, keep: int | None,
                  ratio: float | None, **options: Any) -> Tokens:
    from vistok.vlm import visual_tokens
    from vistok.vlm._base import family_of
    from vistok.vlm.fastv import attach_fastv

    family = family_of(model)
    full = visual_tokens(model, processor, picture)
    if full.grid is None:
        raise ShowError(f"show draws one grid of visual tokens per image, and {family.label} tiles this image into "
                        f"{full.meta['views']} views; use a LLaVA-1.5-style model (one view per image)")
    placeholder = family.placeholder_id(model)
    state = attach_fastv(model, keep=keep, ratio=ratio, **options)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        state.detach()
    positions = (inputs["input_ids"][0] == placeholder).nonzero().flatten().tolist()
    if len(positions) != len(full):
        raise ShowError(f"the prompt holds {len(positions)} image placeholders for {len(full)} visual tokens; "
                        "show draws one image per prompt")
    kept_positions = state.kept_positions
    kept = set(kept_positions[0].tolist()) if kept_positions is not None else set(positions)
    source = np.full(len(full), -1, np.int64)
    index = [i for i, p in enumerate(positions) if p in kept]
    source[index] = np.arange(len(index))
    stats = list(state.stats) or [{"image": 0, "views": 1, "before": len(full), "after": len(full)}]
    meta = {"stats": stats, "tokenizer": full.meta["tokenizer"], "layer": stats[0].get("layer")}
    return Tokens(full.values[index], source=source, base_grid=full.grid, meta=meta)


def _crop_box(image_processor: Any, size: tuple[int, int]) -> list[float] | None:
    """The part of an image of ``size`` (width, height) a CLIP-style processor keeps when it resizes (the
    shortest edge, or to height x width) and then centre-crops, in source pixels; None when it does not crop."""
    if image_processor is None or not getattr(image_processor, "do_center_crop", False):
        return None
    crop = getattr(image_processor, "crop_size", None) or {}
    resize = getattr(image_processor, "size", None) or {}
    width, height = size
    if "shortest_edge" in resize:
        sx = sy = resize["shortest_edge"] / min(width, height)
    elif "height" in resize and "width" in resize:
        sx, sy = resize["width"] / width, resize["height"] / height
    else:
        return None
    cw, ch = crop.get("width"), crop.get("height")
    if not cw or not ch:
        return None
    rw, rh = round(width * sx), round(height * sy)
    left, top = max(0, (rw - cw) // 2), max(0, (rh - ch) // 2)
    return [left / sx, top / sy, min(rw, left + cw) / sx, min(rh, top + ch) / sy]
