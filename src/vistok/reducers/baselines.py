"""Baselines every token-reduction paper compares against: ``stride`` (keep tokens at a fixed spacing) and
``random`` (keep a uniformly random subset). Neither needs any signal; FastV (Chen et al., "An Image is Worth
1/2 Tokens After Layer 2", ECCV 2024) and VisionZip (Yang et al., 2024) report both."""

from __future__ import annotations

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method, select_layout

__all__ = ["stride", "random"]


@register_method("stride", description="keep K tokens evenly spaced in reading order (a baseline)",
                 paper="uniform-sampling baseline (e.g. FastV, ECCV 2024; VisionZip, 2024)", layout=True)
def stride(n: int, k: int, grid: Any, seed: int) -> Reduction:
    """Token ``floor((i + 1/2) * N / K)`` for ``i < K``: the centre of each of ``K`` equal runs."""
    return select_layout(n, np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64))


@register_method("random", description="keep a uniformly random K tokens, in order (a baseline; seeded)",
                 paper="random-selection baseline (e.g. FastV, ECCV 2024; VisionZip, 2024)", layout=True)
def random(n: int, k: int, grid: Any, seed: int) -> Reduction:
    """The same ``K`` of ``N`` for every image of a batch: ``numpy.random.default_rng(seed).choice``."""
    return select_layout(n, np.random.default_rng(seed).choice(n, size=k, replace=False))
