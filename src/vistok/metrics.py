"""Measures of what tokens keep: reconstruction fidelity and codebook use."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["psnr", "codebook_usage"]


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64)


def psnr(reference: Image.Image | np.ndarray, test: Image.Image | np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``; ``inf`` for identical images."""
    a, b = _pixels(reference), _pixels(test)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def codebook_usage(ids: np.ndarray, vocab_size: int) -> dict[str, float]:
    """How much of a codebook a set of ids uses: the fraction of words seen and the perplexity
    ``exp(entropy)`` of their frequencies (equal to ``vocab_size`` for perfectly uniform use)."""
    counts = np.bincount(np.asarray(ids, np.int64).ravel(), minlength=vocab_size).astype(np.float64)
    if counts.sum() == 0:
        return {"used": 0.0, "perplexity": 0.0}
    p = counts[counts > 0] / counts.sum()
    return {"used": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum()))}
