"""The trainable part of an alignment: a projection head per tower, the log-temperature and (for the sigmoid
loss) the bias. A head is a linear map (LiT's choice for the locked tower) or a two-layer GELU MLP."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Heads", "HEADS", "head"]

HEADS = ("linear", "mlp")


def head(kind: str, inputs: int, outputs: int) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Linear(inputs, outputs))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(inputs, outputs * 2), nn.GELU(), nn.Linear(outputs * 2, outputs))
    raise ValueError(f"head must be one of {', '.join(HEADS)}, got {kind!r}")


class Heads(nn.Module):
    """``image(x)``/``text(y)`` give L2-normalised embeddings; ``logit_scale`` is ``t'`` (the scale is its exp)."""

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int, kind: str, scale: float,
                 bias: float | None) -> None:
        super().__init__()
        self.image_head = head(kind, image_dim, embed_dim)
        self.text_head = head(kind, text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(bias))) if bias is not None else None

    def image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features), dim=-1)

    def text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features), dim=-1)

    def fold(self, image_mean: torch.Tensor, image_std: torch.Tensor, text_mean: torch.Tensor,
             text_std: torch.Tensor) -> None:
        """Fold the standardisation ``(x - mean) / std`` into each head's first linear layer, so the heads take the
        towers' raw features: ``W (x - m) / s + b = (W / s) x + (b - W (m / s))``."""
        with torch.no_grad():
            for layer, mean, std in ((self.image_head[0], image_mean, image_std),
                                     (self.text_head[0], text_mean, text_std)):
                weight = layer.weight / std
                layer.bias -= weight @ mean
                layer.weight.copy_(weight)
