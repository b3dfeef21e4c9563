"""Idefics3 and SmolVLM: reduce each crop and the global image to ``K`` tokens after the connector.

The image processor splits a large image into ``rows x cols`` crops of ``max_image_size`` plus one global image
resized to that size; every such frame goes through the SigLIP tower, the connector's pixel shuffle
(``scale_factor`` s: each ``s x s`` block of patches becomes one token) and a linear map into the LM's space,
giving ``image_seq_len`` tokens per frame. The processor writes, per crop, ``<fake_token_around_image>
<row_i_col_j>`` followed by ``image_seq_len`` ``<image>`` placeholders, and for the global image
``<fake_token_around_image><global-img>`` + placeholders + ``<fake_token_around_image>``.

The reduction point is the connector's output (the tokens the LM receives). Each frame is one view with the
connector's grid (``side/s x side/s``); its placeholder block keeps its first ``K`` placeholders, so the row/col
markers, ``<global-img>`` and the fake-token wrappers stay where the processor put them. Padding frames (all-zero
pixel values, used to pad samples with fewer frames in a batch) are dropped exactly as the model drops them.

Signals (the tower is SigLIP: no CLS token), both taken from the last tower layer, whose output the connector
receives: ``attention_received`` (opt-in substitute for ``cls_attention``) is the attention each patch receives,
mean over heads and over the real (unpadded) query patches, summed over the ``s x s`` patches that the pixel
shuffle gathers into one connector token (so it stays a distribution over the frame's tokens); ``keys`` are the
patch keys (mean over heads) of those ``s x s`` patches concatenated in the pixel-shuffle order, exactly as the
connector concatenates their features (``(n, s*s*head_dim)``).
"""

from __future__ import annotations

from typing import Any

import torch

from vistok.vlm._base import Family, View, capture_attention, register_family

__all__ = ["Idefics3Family"]


@register_family
class Idefics3Family(Family):
    """Idefics3 and SmolVLM (SigLIP tower, pixel-shuffle connector, image splitting into crops + global)."""

    name = "idefics3"
    label = "Idefics3 / SmolVLM"
    classes = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")
    cls_token = False
    pixel_keys = ("pixel_values",)
    drop_keys = ("pixel_values", "pixel_attention_mask")

    def encode(self, model: Any, kwargs: dict[str, Any], signals: set[str]) -> list[View]:
        inner = model.model
        pixel_values = kwargs["pixel_values"]
        batch, frames = pixel_values.shape[:2]
        real = _real_frames(pixel_values)
        store: dict[str, torch.Tensor] = {}
        attention = inner.vision_model.encoder.layers[-1].self_attn
        with capture_attention(attention, store, signals):
            out = inner.get_image_features(pixel_values, kwargs.get("pixel_attention_mask"), return_dict=True)
        per_frame = torch.cat(list(out.pooler_output), dim=0)
        n_frames = int(real.sum())
        tokens = per_frame.view(n_frames, -1, per_frame.shape[-1])
        side = round(tokens.shape[1] ** 0.5)
        grid = (side, side)
        extra = _frame_signals(inner, store, _patch_mask(inner, kwargs, real), signals)
        images = _image_of_frames(kwargs["input_ids"], self.placeholder_id(model), tokens.shape[1],
                                  real.view(batch, frames).sum(dim=1).tolist())
        return [View(tokens=tokens[f], grid=grid, image=images[f],
                     **{key: value[f] for key, value in extra.items()}) for f in range(n_frames)]

    def to_lm(self, model: Any, views: list[View],
              reduced: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        per_image: dict[int, list[torch.Tensor]] = {}
        for view, out in zip(views, reduced):
            per_image.setdefault(view.image, []).append(out)
        features = [torch.cat(per_image[i], dim=0) for i in sorted(per_image)]
        blocks = [(int(view.tokens.shape[0]), int(out.shape[0])) for view, out in zip(views, reduced)]
        return features, blocks


def _real_frames(pixel_values: torch.Tensor) -> torch.Tensor:
    """``(B*F,)`` bool: the frames the model encodes (padding frames are all zeros), as ``get_image_features``
    decides it (SmolVLM keeps the first frame when all are padding; that never carries placeholders here)."""
    flat = pixel_values.flatten(0, 1).flatten(1)
    return (flat != 0).any(dim=1)


def _patch_mask(inner: Any, kwargs: dict[str, Any], real: torch.Tensor) -> torch.Tensor | None:
    """``(F, T)`` bool: the patches of each real frame that hold image pixels (the tower's own mask)."""
    mask = kwargs.get("pixel_attention_mask")
    if mask is None:
        return None
    mask = mask.flatten(0, 1)[real]
    size = inner.config.vision_config.patch_size
    blocks = mask.unfold(1, size, size).unfold(2, size, size)
    return (blocks.sum(dim=(-1, -2)) > 0).flatten(1)


def _shuffle(inner: Any, values: torch.Tensor) -> torch.Tensor:
    """``(F, T, c)`` per-patch values gathered like the connector's pixel shuffle: ``(F, T/s^2, s^2*c)``."""
    connector = inner.connector
    return connector.pixel_shuffle(values, connector.scale_factor)


def _frame_signals(inner: Any, store: dict[str, torch.Tensor], valid: torch.Tensor | None,
                   signals: set[str]) -> dict[str, torch.Tensor]:
    """Per-frame signals at the connector's tokens: ``attention_received`` ``(F, n)``, ``keys`` ``(F, n, s*s*d)``."""
    out: dict[str, torch.Tensor] = {}
    if "attention" in store and signals & {"attention_received", "cls_attention"}:
        probs = store["attention"]  # (F, T queries, T keys), mean over heads
        if valid is not None:  # the tower masks padded patches: renormalise over real keys, average real queries
            keys_ok = valid[:, None, :].to(probs.dtype)
            probs = probs * keys_ok / (probs * keys_ok).sum(dim=-1, keepdim=True)
            rows = valid.to(probs.dtype)
            received = (probs * rows[:, :, None]).sum(dim=1) / rows.sum(dim=1, keepdim=True)
        else:
            received = probs.mean(dim=1)
        out["attention_received"] = _shuffle(inner, received[..., None]).sum(dim=-1)
    if "keys" in store and "keys" in signals:
        out["keys"] = _shuffle(inner, store["keys"])
    return out


def _image_of_frames(input_ids: torch.Tensor, placeholder: int, per_frame: int,
                     real_per_row: list[int]) -> list[int]:
    """The batch-order image index of each real frame, read from the placeholder runs in ``input_ids``.

    Every image ends with its global frame, whose run follows the ``<global-img>`` token; that token is the
    one before the last run of every row, and a run after it closes an image."""
    images: list[int] = []
    image = 0
    for row, n_real in enumerate(real_per_row):
        ids = input_ids[row]
        is_ph = ids == placeholder
        starts = (is_ph & ~torch.cat([is_ph.new_zeros(1), is_ph[:-1]])).nonzero().flatten().tolist()
        if int(is_ph.sum()) != n_real * per_frame or len(starts) != n_real:
            raise ValueError(f"row {row} of input_ids holds {int(is_ph.sum())} image placeholders in {len(starts)} "
                             f"runs, but its pixel_values give {n_real} frames of {per_frame} tokens; pass the "
                             "processor's input_ids and pixel values unchanged")
        if not starts:
            continue
        marker = int(ids[starts[-1] - 1]) if starts[-1] > 0 else None
        for start in starts:
            images.append(image)
            if start == 0 or int(ids[start - 1]) == marker:
                image += 1
    return images
