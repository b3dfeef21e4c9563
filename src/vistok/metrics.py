"""Measures of what tokens keep: reconstruction fidelity and codebook use."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["psnr", "ssim", "codebook_usage"]


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)


def psnr(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``; ``inf`` for identical images."""
    a, b = _pixels(reference), _pixels(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def ssim(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray, peak: float = 255.0) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) over colour channels, scikit-image's
    ``structural_similarity`` with a 7-pixel window (smaller for images under 7 pixels on a side; NaN under 3)."""
    from skimage.metrics import structural_similarity

    a, b = _pixels(reference), _pixels(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    win = min(7, *[s if s % 2 else s - 1 for s in a.shape[:2]])
    if win < 3:
        return math.nan
    return float(structural_similarity(a, b, data_range=peak, channel_axis=2 if a.ndim == 3 else None, win_size=win))


def codebook_usage(ids: np.ndarray, vocab_size: int) -> dict[str, float]:
    """How much of a codebook a set of ids uses: the fraction of words seen and the perplexity
    ``exp(entropy)`` of their frequencies (equal to ``vocab_size`` for perfectly uniform use)."""
    counts = np.bincount(np.asarray(ids, np.int64).ravel(), minlength=vocab_size).astype(np.float64)
    if counts.sum() == 0:
        return {"used": 0.0, "perplexity": 0.0}
    p = counts[counts > 0] / counts.sum()
    return {"used": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum()))}
