"""``clip`` and ``siglip``: patch tokens, image embeddings and text embeddings from contrastive
image-text models, loaded from a local folder or file (a Hugging Face hub id only when the hub is reachable).

CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021)
trains an image and a text encoder so that matching pairs have a high cosine similarity; the logits are
``exp(t) * cos`` and class probabilities a softmax over the labels. SigLIP (Zhai et al., "Sigmoid Loss
for Language Image Pre-Training", ICCV 2023) replaces the softmax by a per-pair sigmoid with a learnt
bias, ``sigmoid(exp(t) * cos + b)``, so each label gets an independent probability.

Two backends load the weights:

- ``transformers``: a folder written by ``CLIPModel``/``SiglipModel.save_pretrained`` (``config.json``,
  ``model.safetensors``, ``preprocessor_config.json`` and the text tokenizer files), as on the hub.
- ``open_clip`` (OpenCLIP, Ilharco et al. 2021; Cherti et al., CVPR 2023): a folder holding
  ``open_clip_config.json`` and ``open_clip_model.safetensors`` (the hub layout), or one checkpoint file
  (``.safetensors``/``.pt``/``.bin``) plus ``open_clip_arch``: a built-in open_clip architecture name
  (``open_clip.list_models()``) or a JSON file with the model config.

Preprocessing is read from the checkpoint (``preprocessor_config.json``; open_clip's preprocess config
and the image tower's input size), never from the model's name; each field can be overridden.

Shapes: pixels ``(B, 3, H, W)``; patch tokens ``(rows * cols, D)`` row-major over the ``(H/p, W/p)`` grid;
``cls`` ``(D,)``; ``embedding`` ``(E,)``; ``embed_text`` ``(T, E)``; ``similarity`` ``(T,)``.

The code: :mod:`.config` (options, finding the checkpoint), :mod:`.hf_backend`, :mod:`.open_clip_backend`
(reading each layout's configs and weights), :mod:`.tokenizer` (encoding, text, zero-shot). A weights file that
is cut short or damaged is named in a one-line error (:mod:`vistok.weights.checkpoints`); an image whose
preprocessing would exceed :data:`vistok.preprocess.MAX_WORKING_PIXELS` is refused on its own.

What the patch tokens are, exactly (each library's own definition, so the tests can compare to it), with the
default ``layer=-1``:

- transformers: ``last_hidden_state`` of the vision tower without its first (class) token. For CLIP
  that is the last encoder layer *before* ``post_layernorm``; for SigLIP it is *after* ``post_layernorm``
  (SigLIP has no class token).
- open_clip: ``visual.forward_intermediates(indices=1, normalize_intermediates=True)``, the last block's
  tokens after the tower's final norm: the same tokens ``visual.output_tokens = True`` returns for
  open_clip ViTs (what open_clip issue #458 asked for), and also available for timm image towers.

``layer=k`` (any other ``hidden_states`` index) gives the raw hidden state after layer ``k`` instead, with no
final norm (open_clip: ``forward_intermediates(indices=[k - 1])``; the embeddings, ``k = 0``, only with
transformers), and ``select="full"`` keeps the class token as token 0: together they give exactly what LLaVA's
projector receives (``hidden_states[vision_feature_layer]``, ``vision_feature_select_strategy``), while the
default gives PaliGemma's (``last_hidden_state``). See :class:`~vistok.tokenizers.clip.config.ClipConfig`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vistok.registry import register_tokenizer
from vistok.tokenizers.clip.config import CLIP, SIGLIP, ClipConfig, Family, SiglipConfig
from vistok.tokenizers.clip.tokenizer import ContrastiveTokenizer

__all__ = ["ClipConfig", "SiglipConfig", "ContrastiveTokenizer"]


@register_tokenizer(
    "clip", kind="soft", decodable=False, config=ClipConfig, zero_shot=True,
    weights="yours (model=PATH): a transformers CLIPModel folder or an open_clip checkpoint; hub ids when online",
    description="CLIP ViT patch tokens + CLS + image embedding; text embeddings, logits, zero-shot (softmax)",
)
def create_clip(**options: Any) -> ContrastiveTokenizer:
    return _create(ClipConfig(**options), CLIP)


@register_tokenizer(
    "siglip", kind="soft", decodable=False, config=SiglipConfig, zero_shot=True,
    weights="yours (model=PATH): a transformers SiglipModel folder or an open_clip SigLIP checkpoint; "
            "hub ids when online",
    description="SigLIP ViT patch tokens + pooled image embedding; text embeddings, logits, zero-shot (sigmoid)",
)
def create_siglip(**options: Any) -> ContrastiveTokenizer:
    return _create(SiglipConfig(**options), SIGLIP)


def _create(config: ClipConfig, family: Family) -> ContrastiveTokenizer:
    """A checkpoint's tokenizer, or :class:`vistok.align.model.AlignedTokenizer` for a ``vistok align`` folder."""
    if config.model is not None and (Path(config.model).expanduser() / "vistok_align.json").is_file():
        from vistok.align.model import AlignedTokenizer

        return AlignedTokenizer(config, family)
    return ContrastiveTokenizer(config, family)
