"""Tiny randomly initialised checkpoints, built and saved in the layouts real checkpoints use.

Shared by the encoder tests and the registry-wide tests (``conftest.py``): vistok's real loading code runs
on them, and the tests compare its outputs with the wrapped library called directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "photo", "of", "cat", "dog", "rocket", "cup", "coffee", "the", "an", "astronaut", "."]
TEXTS = ["a photo of a cat .", "a photo of a dog .", "the rocket", "a cup of coffee ."]
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=2, eos_token_id=3)

OPEN_CLIP_VIT = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}
# SigLIP as open_clip ships it: a timm image tower with attention-pool ("map") head, a logit bias
OPEN_CLIP_SIGLIP = {
    "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
    "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last"},
}
SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                     "resize_mode": "squash"}


# -- tiny checkpoints ------------------------------------------------------------------------------

def tiny_text_tokenizer():
    """A WordLevel fast tokenizer that adds <s> ... </s>, as CLIP's does; ids match TEXT's special ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>", model_max_length=16)


def tiny_hf_folder(folder: Path, kind: str, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` or ``SiglipModel`` with its image processor and text tokenizer."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(seed)
    text = dict(TEXT, vocab_size=len(WORDS) + 4)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=24))
        processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=VISION))
        processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    with torch.no_grad():   # a non-zero logit bias, so that the test sees it used
        if hasattr(model, "logit_bias"):
            model.logit_bias.fill_(-1.5)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tiny_text_tokenizer().save_pretrained(folder)
    return folder


def tiny_open_clip_model(model_cfg: dict, seed: int = 0):
    cfg = dict(model_cfg)
    cls = _open_clip().CustomTextCLIP if cfg.pop("custom_text", False) else _open_clip().CLIP
    torch.manual_seed(seed)
    return cls(**cfg).eval()


def tiny_open_clip_folder(folder: Path, model_cfg: dict, preprocess_cfg: dict | None = None) -> Path:
    """The hub layout of open_clip models: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_open_clip_model(model_cfg)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return folder


def _open_clip():
    import open_clip

    return open_clip


DINOV2 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, patch_size=8,
              image_size=32, layerscale_value=1.0)


def tiny_dinov2_folder(folder: Path, registers: int = 0, seed: int = 0, size: int = 48) -> Path:
    """A tiny random ``Dinov2Model`` (or ``Dinov2WithRegistersModel``) with a ``BitImageProcessor`` (shortest
    edge ``size``, centre crop ``size``), as DINOv2 checkpoints on the hub ship."""
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**DINOV2, num_register_tokens=registers))
    else:
        model = Dinov2Model(Dinov2Config(**DINOV2))
    model.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                      do_center_crop=True, resample=3, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


# A diffusers AutoencoderKL with two levels (downsampling factor 2) and 4 latent channels. No mid-block
# attention: at the registry-wide tests' 512-pixel working sizes it would attend over 65k latent cells.
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                sample_size=32, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, mid_block_add_attention=False)


def tiny_vae_folder(folder: Path, seed: int = 0, steps: int = 200) -> Path:
    """Save a tiny ``diffusers.AutoencoderKL`` trained for a few seconds to reconstruct the bundled samples.

    A random VAE decodes noise, which would leave the registry-wide "decode resembles the image" check
    meaningless; ``steps`` Adam steps (seeded, one CPU thread, ~5-8 s) on crops of the sample images at the
    sd-vae tokenizer's default working size bring whole-image reconstructions to about 17-20 dB PSNR. The
    crops cycle through 16, 32 and 64 pixels (8192 pixels a step) so that the group norms see statistics of
    small and large areas alike, as they will on whole images."""
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from vistok.samples import sample_images
    from vistok.tokenizers.base import cell_layout

    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE)
    factor = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
    images = []
    for path in sample_images():
        rgb = Image.open(path).convert("RGB")
        rgb = rgb.resize(cell_layout(*rgb.size, factor, 512), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(rgb, np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    rng = torch.Generator().manual_seed(seed)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=rng))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only add overhead (and stall on a busy machine)
    try:
        optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        vae.train()
        for step in range(steps):
            side = (16, 32, 64)[step % 3]
            crops = []
            for _ in range(8192 // (side * side)):
                image = images[pick(len(images))]
                top, left = pick(image.shape[1] - side + 1), pick(image.shape[2] - side + 1)
                crops.append(image[:, top:top + side, left:left + side])
            batch = torch.stack(crops)
            loss = torch.nn.functional.mse_loss(vae.decode(vae.encode(batch).latent_dist.mean).sample, batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    vae.eval().save_pretrained(folder)
    return folder
