"""The pairwise sigmoid loss of SigLIP: Zhai, Mustafa, Kolesnikov and Beyer, "Sigmoid Loss for Language Image
Pre-Training", ICCV 2023 (Algorithm 1).

For a batch of ``n`` image embeddings ``x`` and text embeddings ``y`` (both L2-normalised), every image-text pair
is a binary problem: ``z_ij = 1`` on the diagonal (the pair that belongs together), ``-1`` elsewhere, with logits
``exp(t') * x_i . y_j + b``. The loss is ``-sum_ij log sigmoid(z_ij * logit_ij) / n``: summed over all ``n^2``
pairs and divided by the batch size, not by the number of pairs. The paper starts from ``t' = log 10`` and
``b = -10``, so that the many negatives do not dominate the first steps.

:func:`sigmoid_loss_chunked` computes the same number a block of texts at a time, the way the paper's
multi-device scheme passes the texts around the devices and sums each device's block: no ``n x n`` matrix is
held, and each block is recomputed in the backward pass (activation checkpointing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["sigmoid_loss", "sigmoid_loss_chunked", "INIT_LOGIT_SCALE", "INIT_LOGIT_BIAS"]

#: ``t'`` at the start (the temperature is ``exp(t')``, so 10), and the bias ``b``, as in the paper.
INIT_LOGIT_SCALE = math.log(10.0)
INIT_LOGIT_BIAS = -10.0


def _check(images: torch.Tensor, texts: torch.Tensor) -> None:
    if images.ndim != 2 or texts.ndim != 2 or images.shape != texts.shape:
        raise ValueError(f"images and texts must be (n, d) embeddings of the same shape, got {tuple(images.shape)} "
                         f"and {tuple(texts.shape)}")
    if images.shape[0] == 0:
        raise ValueError("the batch is empty")


def _block(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
           offset: int) -> torch.Tensor:
    """Sum of ``-log sigmoid(z * logit)`` over all images against the texts ``offset .. offset + len(texts)``."""
    logits = images @ texts.T * logit_scale.exp() + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(offset, offset + texts.shape[0], device=logits.device)
    rows = rows[rows < images.shape[0]]
    labels[rows, rows - offset] = 1.0
    return -F.logsigmoid(labels * logits).sum()


def sigmoid_loss(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor,
                 logit_bias: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss for ``(n, d)`` L2-normalised ``images`` and ``texts`` (row ``i`` of each belong together),
    the log-temperature ``logit_scale`` (``t'``) and the bias ``logit_bias`` (``b``): a scalar."""
    _check(images, texts)
    return _block(images, texts, logit_scale, logit_bias, 0) / images.shape[0]


def sigmoid_loss_chunked(images: torch.Tensor, texts: torch.Tensor, logit_scale: torch.Tensor,
                         logit_bias: torch.Tensor, chunk: int) -> torch.Tensor:
    """:func:`sigmoid_loss` computed ``chunk`` texts at a time: the same value and gradients, with memory for an
    ``n x chunk`` block instead of ``n x n``."""
    _check(images, texts)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    total = images.new_zeros(())
    for start in range(0, texts.shape[0], chunk):
        part = texts[start:start + chunk]
        if torch.is_grad_enabled():
            total = total + checkpoint(_block, images, part, logit_scale, logit_bias, start, use_reentrant=False)
        else:
            total = total + _block(images, part, logit_scale, logit_bias, start)
    return total / images.shape[0]
