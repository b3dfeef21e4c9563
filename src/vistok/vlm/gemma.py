"""PaliGemma 1/2 (Beyer et al., "PaliGemma: A versatile 3B VLM for transfer", 2024) and Gemma 3 (Gemma Team,
"Gemma 3 Technical Report", 2025) in transformers.

Both put a SigLIP tower before a Gemma language model. Tokens are reduced where the language model receives
them, after the projector:

- PaliGemma projects every SigLIP patch with one linear layer (16x16 = 256 tokens at 224 px, 1024 at 448,
  4096 at 896). A linear map commutes with selection and with weighted means, so reducing after it gives the
  tokens a reduction before it would, projected.
- Gemma 3 average-pools the 64x64 SigLIP patches of an 896-px image 4x4 to a 16x16 grid, then applies an
  RMSNorm and a linear map; the 256 pooled tokens (one ``<image_soft_token>`` each) are the ones reduced, on
  their 16x16 grid. With pan & scan each crop is its own view (and its own entry in ``handle.stats``: the
  processor does not tell the model which crops came from which image).

SigLIP has no CLS token, so methods that rank by CLS attention need ``signal="attention_received"``: the mean
attention each patch receives (softmax over keys, mean over heads and queries) in the tower's last layer,
whose output both models take. Keys (ToMe, VisionZip's merge) are that layer's keys, mean over heads. For
Gemma 3 both signals are pooled on the projector's grid: attention summed over each 4x4 window (it stays a
distribution over the tokens), keys averaged.

Both models attend bidirectionally among image tokens (PaliGemma: over the whole prefix, ``token_type_ids``
0; Gemma 3: within each image's run of ``token_type_ids`` 1). ``token_type_ids`` is shortened with
``input_ids``, so the kept image tokens stay one bidirectional block and generated tokens stay causal.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from vistok.vlm._base import Family, View, capture_attention, register_family, signals_from
from vistok.vlm.llava import square_grid, tower_attention

__all__ = ["PaliGemma", "Gemma3"]


class _SiglipFamily(Family):
    """A SigLIP tower whose last layer's output is projected per image into the LM's placeholders."""

    cls_token = False
    pixel_keys = ("pixel_values",)
    drop_keys = ("pixel_values",)

    def encode(self, model: Any, kwargs: dict[str, Any], signals: set[str]) -> list[View]:
        inner = model.model
        store: dict[str, torch.Tensor] = {}
        capture = (capture_attention(tower_attention(inner.vision_tower, -1), store, signals) if signals
                   else contextlib.nullcontext())
        with capture:
            features = inner.get_image_features(pixel_values=kwargs["pixel_values"]).pooler_output
        views = []
        for index in range(features.shape[0]):
            found = signals_from(store, index, slice(None), None)
            views.append(View(features[index], square_grid(features.shape[1]), index,
                              **self.pool_signals(model, found)))
        return views

    def pool_signals(self, model: Any, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Signals of the tower's patches brought onto the LM's tokens (identity: one token per patch)."""
        return found

    def to_lm(self, model: Any, views: list[View],
              reduced: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        return list(reduced), [(int(v.tokens.shape[0]), int(r.shape[0])) for v, r in zip(views, reduced)]

    def finish(self, model: Any, old: dict[str, Any], new: dict[str, Any], keep_mask: torch.Tensor,
               features: list[torch.Tensor]) -> dict[str, Any]:
        """The models scatter ``pooler_output`` (one tensor) into the placeholders in order: all views' kept
        features, concatenated."""
        new = super().finish(model, old, new, keep_mask, features)
        new["mm_encoder_outputs"]["image"].pooler_output = torch.cat(features, dim=0)[None]
        return new


@register_family
class PaliGemma(_SiglipFamily):
    name = "paligemma"
    label = "PaliGemma"
    classes = ("PaliGemmaForConditionalGeneration",)


@register_family
class Gemma3(_SiglipFamily):
    name = "gemma3"
    label = "Gemma 3"
    classes = ("Gemma3ForConditionalGeneration",)

    def pool_signals(self, model: Any, found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pool per-patch signals with the projector's window: attention summed, keys averaged."""
        projector = model.model.multi_modal_projector
        side, kernel = projector.patches_per_image, projector.kernel_size
        out = {}
        for name, value in found.items():
            grid = value.reshape(side, side, -1).permute(2, 0, 1)[None]  # (1, C, side, side)
            pooled = torch.nn.functional.avg_pool2d(grid, kernel, kernel)[0].flatten(1).T  # (tokens, C)
            out[name] = pooled[:, 0] * kernel * kernel if value.dim() == 1 else pooled
        return out
