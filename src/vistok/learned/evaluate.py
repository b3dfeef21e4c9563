"""Reconstruction quality of a learned tokenizer on held-out images.

PSNR and SSIM are scikit-image's (``skimage.metrics``; SSIM after Wang et al., "Image Quality Assessment:
From Error Visibility to Structural Similarity", IEEE TIP 2004), computed per image on the 8-bit
reconstruction a user gets and averaged. Bits per pixel are those of the ids:
``tokens x log2(vocabulary) / pixels`` (pixels = H x W, whatever the channels). Usage is the fraction of
codes that occur at least once over the whole set, perplexity ``exp(entropy)`` of their frequencies (both
averaged over the codebooks of rvq). rFID is not reported: it needs Inception weights, which cannot be
loaded offline.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["held_out_images", "reconstruction_metrics", "evaluate"]


def held_out_images(data: str | os.PathLike, channels: int, size: int | None = None,
                    max_side: int | None = None) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """``uint8 (H, W, C)`` images to evaluate on: a named data set's test split, or every readable image of a
    folder (or file), scaled so its longer side is at most ``max_side``. Also returns unreadable inputs."""
    from vistok.learned.data import DATASETS, load_data

    name = os.fspath(data)
    if name in DATASETS:
        test = load_data(name, size=size, pool=1).test
        assert test is not None
        return list(test), []
    from PIL import Image

    from vistok.images import find_images, open_image

    images, skipped = [], []
    for path in find_images([name]):
        try:
            im = open_image(path)
        except Exception as err:  # noqa: BLE001 - reported, never fatal
            skipped.append((os.fspath(path), getattr(err, "reason", str(err))))
            continue
        if max_side and max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BICUBIC)
        im = im.convert("L" if channels == 1 else "RGB")
        images.append(np.asarray(im).reshape(im.height, im.width, channels))
    return images, skipped


def reconstruction_metrics(originals: list[np.ndarray], reconstructions: list[np.ndarray]) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM of uint8 reconstructions against their originals (scikit-image)."""
    from skimage.metrics import peak_signal_noise_ratio

    from vistok.metrics import ssim

    psnrs, ssims = [], []
    for a, b in zip(originals, reconstructions):
        if a.shape != b.shape:
            raise ValueError(f"reconstruction has shape {b.shape}, original {a.shape}")
        mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
        psnrs.append(100.0 if mse == 0 else peak_signal_noise_ratio(a, b, data_range=255))
        ssims.append(ssim(a, b))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.nanmean(ssims))}


def _crop(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    if h == 0 or w == 0:
        raise ValueError(f"an image of {image.shape[1]}x{image.shape[0]} is smaller than one token ({factor} px)")
    return image[:h, :w]


def evaluate(tokenizer: Any, images: list[np.ndarray], *, batch_size: int = 128,
             on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Encode and decode ``images`` (uint8 ``(H, W, C)``, cropped to multiples of the factor) with a learned
    tokenizer's model; returns PSNR, SSIM, bits per pixel, usage, perplexity and images/s."""
    import torch

    from vistok.learned.train import usage_stats

    model = tokenizer.model
    config = model.config
    images = [_crop(im, config.factor) for im in images]
    if images and images[0].shape[2] != config.channels:
        raise ValueError(f"the images have {images[0].shape[2]} channel(s), the model expects {config.channels}")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    recon: list[np.ndarray | None] = [None] * len(images)
    ids_all, bits, pixels = [], 0.0, 0
    t_encode = t_decode = 0.0
    with torch.inference_mode():
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                x = torch.from_numpy(np.stack([images[i] for i in chunk])).permute(0, 3, 1, 2).float().div_(255)
                t0 = time.perf_counter()
                tokens, grid = model.encode(x)
                t1 = time.perf_counter()
                y = model.decode(tokens, grid)
                t_decode += time.perf_counter() - t1
                t_encode += t1 - t0
                out = (y * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
                for i, r in zip(chunk, out):
                    recon[i] = r
                pixels += x.shape[0] * x.shape[2] * x.shape[3]
                if config.vocab_size is not None:
                    bits += tokens.numel() * math.log2(config.vocab_size)
                    ids_all.append(tokens.reshape(-1))
                if on_batch is not None:
                    on_batch(len(chunk))
    result: dict[str, Any] = {"images": len(images), **reconstruction_metrics(images, recon)}  # type: ignore[arg-type]
    result["encode_images_per_s"] = len(images) / max(t_encode, 1e-9)
    result["decode_images_per_s"] = len(images) / max(t_decode, 1e-9)
    if config.vocab_size is not None:
        ids = torch.cat(ids_all)
        codes = model.bottleneck.unpack(ids) if config.quantizer == "rvq" else ids[:, None]
        stats = [usage_stats(np.bincount(codes[:, q].numpy(), minlength=k))
                 for q, k in enumerate(config.codebook_sizes)]
        result.update(bits_per_pixel=bits / pixels, vocab_size=config.vocab_size, tokens=int(ids.numel()),
                      usage=float(np.mean([s[0] for s in stats])), perplexity=float(np.mean([s[1] for s in stats])))
    else:
        result.update(bits_per_pixel=None, latent_dim=config.latent_dim)
    result["reconstructions"] = recon
    return result
