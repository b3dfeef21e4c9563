"""Qwen2-VL (Wang et al., 2024, arXiv:2409.12191) and Qwen2.5-VL (Bai et al., 2025, arXiv:2502.13923).

Where tokens are reduced: after the tower's patch merger, on the tokens the language model receives (one per
2x2 group of 14-pixel patches, ``grid = (h / 2, w / 2)`` per image from ``image_grid_thw``), one view per image.

Positions: Qwen's language model places visual tokens with 3-D M-RoPE positions (temporal, row, column).
The full ``(3, B, L)`` positions and ``rope_deltas`` are computed with the model's own ``get_rope_index`` on
the ORIGINAL input, then the columns of the kept tokens are selected: a kept token keeps its original
``(t, row, col)``, text after the image keeps its positions, and ``model.model.rope_deltas`` is raised by the
number of removed tokens, so decoding continues from the unpatched numbering. A merged token takes the
position of its representative: the member of its group nearest (Euclidean) to the merged vector (for a
selecting method, the kept token itself; for a 2x2 pool, one of its four tokens). The reduced tokens reach the LM sorted by those positions (raster
order, as the processor lays out an image).

Signals (the tower has no CLS token):
- ``keys``: the keys of the last tower block (before its rotary embedding, so they compare content), mean over
  heads, then mean over each 2x2 merge group.
- ``attention_received``: the softmax attention of the last tower block (with its rotary embedding, over the
  span that block attends: the whole image in both families' last block), mean over heads and over queries,
  summed over each 2x2 merge group (so an image's values sum to 1, like one softmax row). CLS-ranking methods
  use it only with ``patch(..., signal="attention_received")``.
Qwen2.5-VL runs most tower blocks on windows of patches reordered window by window; the signals are put back
in the order of the merger's output (the ``window_index`` of ``transformers.vision_utils``).
Videos in the same call pass through unreduced (their features are computed here, as the model would).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch

from vistok.vlm._base import Family, View, pad_token_id, register_family, shorten

__all__ = ["Qwen2VL", "representatives"]


class _Features(list):
    """The per-image features ``to_lm`` returns, carrying what ``finish`` needs to select positions:
    ``blocks`` ``(n_before, n_after)`` per image and ``rows`` the sorted representative index of each token."""

    blocks: list[tuple[int, int]]
    rows: list[torch.Tensor]


@contextlib.contextmanager
def _last_block_signals(visual: torch.nn.Module, store: dict[str, torch.Tensor],
                        signals: set[str]) -> Iterator[None]:
    """Record ``keys`` ``(P, head_dim)`` and/or ``attention_received`` ``(P,)`` of the tower's last block, per
    patch in the tower's own (for Qwen2.5-VL: window) order, during the next forward."""
    attention = visual.blocks[-1].attn
    rotate = sys.modules[type(attention).__module__].apply_rotary_pos_emb_vision

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        length = hidden.shape[0]
        q, k, _ = module.qkv(hidden).reshape(length, 3, module.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        if "keys" in signals:
            store["keys"] = k.float().mean(dim=1)
        if "attention_received" in signals:
            cos, sin = kwargs["position_embeddings"]
            q, k = rotate(q.float(), k.float(), cos, sin)
            bounds = kwargs["cu_seqlens"].tolist()
            received = torch.zeros(length, dtype=torch.float32, device=hidden.device)
            for start, end in zip(bounds[:-1], bounds[1:]):
                for head in range(module.num_heads):  # one (n, n) matrix at a time
                    probs = (q[start:end, head] @ k[start:end, head].T * module.scaling).softmax(dim=-1)
                    received[start:end] += probs.mean(dim=0)
            store["attention_received"] = received / module.num_heads

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _merge_order(visual: torch.nn.Module, grid_thw: torch.Tensor) -> torch.Tensor | None:
    """For a windowed tower (Qwen2.5-VL): ``window_index``, the original merge-group index at each position of
    the tower's sequence; ``None`` when the tower keeps the original order."""
    if not hasattr(visual, "window_size"):
        return None
    from transformers.vision_utils import get_vision_window_index

    index, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                       window_size=visual.window_size, patch_size=visual.patch_size)
    return index.to(grid_thw.device)


def _per_group(value: torch.Tensor, unit: int, order: torch.Tensor | None, how: str) -> torch.Tensor:
    """Per-patch values in tower order -> per merge group in the merger's output order."""
    grouped = value.reshape(value.shape[0] // unit, unit, *value.shape[1:])
    grouped = grouped.sum(dim=1) if how == "sum" else grouped.mean(dim=1)
    if order is None:
        return grouped
    out = torch.empty_like(grouped)
    out[order.to(grouped.device)] = grouped
    return out


def representatives(tokens: torch.Tensor, reduced: torch.Tensor, assign: torch.Tensor | None = None) -> torch.Tensor:
    """For each reduced token, the index of the input token whose position it takes: the member of its group
    (inputs with ``assign == j``) nearest (Euclidean) to it, which for a selected token is the token itself.
    Without ``assign``, the nearest input token, each used at most once (exact for selections)."""
    distance = torch.cdist(reduced.float()[None], tokens.float()[None])[0]  # (k, n)
    if assign is not None:
        outputs = torch.arange(reduced.shape[0], device=distance.device)[:, None]
        distance = distance.masked_fill(assign.to(distance.device)[None] != outputs, float("inf"))
        return distance.argmin(dim=1)
    chosen = torch.empty(reduced.shape[0], dtype=torch.long, device=distance.device)
    for row in range(reduced.shape[0]):
        index = int(distance[row].argmin())
        chosen[row] = index
        distance[:, index] = float("inf")
    return chosen


def _image_grid(grid_thw: torch.Tensor, merge: int) -> tuple[int, int]:
    t, h, w = (int(v) for v in grid_thw)
    return t * (h // merge), w // merge


@register_family
class Qwen2VL(Family):
    name = "qwen2-vl"
    label = "Qwen2-VL/Qwen2.5-VL"
    classes = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    cls_token = False
    pixel_keys = ("pixel_values",)
    drop_keys = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")

    def encode(self, model: Any, kwargs: dict[str, Any], signals: set[str]) -> list[View]:
        inner = model.model
        visual = inner.visual
        grid_thw = kwargs.get("image_grid_thw")
        if grid_thw is None:
            raise ValueError("Qwen2-VL inputs with pixel_values need image_grid_thw; pass the processor's "
                             "output unchanged")
        store: dict[str, torch.Tensor] = {}
        wanted = signals & {"keys", "attention_received"}
        capture = _last_block_signals(visual, store, wanted) if wanted else contextlib.nullcontext()
        with capture:
            out = inner.get_image_features(kwargs["pixel_values"], grid_thw)
        features = list(out.pooler_output)
        merge = visual.spatial_merge_size
        order = _merge_order(visual, grid_thw) if store else None
        per_image = [int(f.shape[0]) for f in features]
        pooling = {"keys": "mean", "attention_received": "sum"}
        split = {name: _per_group(value, merge * merge, order, pooling[name]).split(per_image)
                 for name, value in store.items()}
        return [View(tokens, _image_grid(grid_thw[i], merge), i,
                     **{name: parts[i] for name, parts in split.items()})
                for i, tokens in enumerate(features)]

    def to_lm(self, model: Any, views: list[View],
              reduced: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        features = _Features()
        features.blocks, features.rows = [], []
        for view, out in zip(views, reduced):
            n = int(view.tokens.shape[0])
            rows = (torch.arange(n, device=out.device) if out is view.tokens
                    else representatives(view.tokens, out, view.assign))
            rows, order = rows.sort()
            features.append(out[order])
            features.rows.append(rows)
            features.blocks.append((n, int(out.shape[0])))
        return features, list(features.blocks)

    def finish(self, model: Any, old: dict[str, Any], new: dict[str, Any], keep_mask: torch.Tensor,
               features: list[torch.Tensor]) -> dict[str, Any]:
        inner = model.model
        videos = old.get("pixel_values_videos")
        new = super().finish(model, old, new, keep_mask, features)
        if videos is not None:
            new["mm_encoder_outputs"]["video"] = inner.get_video_features(videos, old.get("video_grid_thw"))
        positions, deltas = self._full_positions(model, old)
        ids = old["input_ids"]
        placeholder = self.placeholder_id(model)
        moved = self._at_representatives(positions, ids == placeholder, features)
        short, _ = shorten({"input_ids": ids, "attention_mask": old.get("attention_mask"), "position_ids": moved},
                           placeholder, features.blocks, pad_token_id(model))
        new["position_ids"] = short["position_ids"]
        if deltas is not None:
            before = _real_lengths(old)
            after = _real_lengths(new)
            inner.rope_deltas = deltas + (before - after).view(-1, 1).to(deltas.device)
        return new

    def _full_positions(self, model: Any, old: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``(3, B, L)`` M-RoPE positions of the original input (the caller's own when given) and the
        model's ``rope_deltas`` for it."""
        given = old.get("position_ids")
        if given is not None:
            positions = given[-3:] if given.dim() == 3 else given[None].expand(3, -1, -1)
            return positions, None
        ids = old["input_ids"]
        config = model.config
        kinds = old.get("mm_token_type_ids")
        if kinds is None:  # what the processor writes: 1 on image placeholders, 2 on video ones
            kinds = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
        extra = {"second_per_grid_ts": old["second_per_grid_ts"]} if old.get("second_per_grid_ts") is not None else {}
        return model.model.get_rope_index(ids, mm_token_type_ids=kinds, image_grid_thw=old.get("image_grid_thw"),
                                          video_grid_thw=old.get("video_grid_thw"),
                                          attention_mask=old.get("attention_mask"), **extra)

    @staticmethod
    def _at_representatives(positions: torch.Tensor, is_placeholder: torch.Tensor,
                            features: _Features) -> torch.Tensor:
        """``positions`` with each image block's first ``n_after`` columns holding the positions of its
        representatives (the columns the generic shortening keeps)."""
        moved = positions.clone()
        columns = is_placeholder.flatten().nonzero().flatten()
        flat = positions.reshape(positions.shape[0], -1)
        out = moved.view(positions.shape[0], -1)
        start = 0
        for (before, after), rows in zip(features.blocks, features.rows):
            block = columns[start:start + before]
            out[:, block[:after]] = flat[:, block[rows.to(block.device)]]
            start += before
        return moved


def _real_lengths(kwargs: dict[str, Any]) -> torch.Tensor:
    """Tokens per row that are not padding."""
    mask = kwargs.get("attention_mask")
    ids = kwargs["input_ids"]
    if mask is None:
        return torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    return mask.sum(dim=1).long()
