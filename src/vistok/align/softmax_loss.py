"""CLIP's symmetric softmax cross-entropy: Radford et al., "Learning Transferable Visual Models From Natural
Language Supervision", ICML 2021 (Figure 3's pseudocode).

Logits ``exp(t) * x_i . y_j`` for L2-normalised image and text embeddings; each image must pick its own text
among the batch's texts (a softmax over a row) and each text its own image (over a column); the loss is the mean
of the two cross-entropies. CLIP starts from a temperature of 0.07 (``t = log(1 / 0.07)``) and clips
``exp(t)`` at 100.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["softmax_loss", "INIT_LOGIT_SCALE", "MAX_LOGIT_SCALE"]

#: ``t`` at the start: a temperature of 0.07, as in the paper.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
#: CLIP clips the scale ``exp(t)`` at 100.
MAX_LOGIT_SCALE = math.log(100.0)


def softmax_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's loss for ``(n, d)`` L2-normalised ``images`` and ``texts`` (row ``i`` of each belong together) and the
    log-scale ``logit_scale`` (clipped at ``log 100``): a scalar."""
    if images.ndim != 2 or texts.ndim != 2 or images.shape != texts.shape:
        raise ValueError(f"images and texts must be (n, d) embeddings of the same shape, got {tuple(images.shape)} "
                         f"and {tuple(texts.shape)}")
    if images.shape[0] == 0:
        raise ValueError("the batch is empty")
    logits = images @ texts.T * logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    target = torch.arange(images.shape[0], device=images.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
