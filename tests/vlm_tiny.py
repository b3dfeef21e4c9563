"""A tiny DINOv2 tower and LM sizes shared by the small-VLM and LLaMA-VID tests (random weights, 56 px)."""

from __future__ import annotations

import torch
import transformers

SIZE = 56  # 4 x 4 patches of 14 pixels: 16 visual tokens
TINY_LM = dict(hidden=32, layers=2, heads=2, image_size=SIZE)


def tiny_tower(seed: int = 0) -> transformers.Dinov2Model:
    torch.manual_seed(seed)
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                       intermediate_size=64, image_size=SIZE, patch_size=14)
    return transformers.Dinov2Model(config).eval()
