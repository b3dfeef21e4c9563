"""``pool``: average neighbouring tokens into a coarser grid.

LLaVA-style 2x2 pooling of the patch grid (e.g. LLaVA-OneVision and LLaVA-NeXT-Video pool the vision
tokens 2x2 before the projector) and LLaMA-VID's ``grid:g`` content tokens (Li et al., "LLaMA-VID: An Image
is Worth 2 Tokens in Large Language Models", ECCV 2024), which average the patch grid down to ``g x g``.
Bins are a partition of the grid (boundaries ``round(i * rows / g_rows)``), so every patch lands in exactly
one output token and provenance stays exact; each output is the size-weighted mean of its bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vistok.reducers.core import Reduction, register_method

__all__ = ["pool_grid", "output_grid", "pool"]


def output_grid(rows: int, cols: int, k: int) -> tuple[int, int]:
    """The ``(r, c)`` with ``r * c == k``, ``r <= rows``, ``c <= cols``, closest to the input's aspect ratio
    (log-ratio distance). Raises when no such grid exists."""
    best: tuple[float, tuple[int, int]] | None = None
    for r in range(1, min(rows, k) + 1):
        if k % r == 0 and k // r <= cols:
            c = k // r
            distance = abs(np.log((c / r) / (cols / rows)))
            if best is None or distance < best[0] - 1e-12:
                best = (distance, (r, c))
    if best is None:
        raise ValueError(f"pool cannot make {k} tokens from a {rows}x{cols} grid: no r x c = {k} fits; pick a keep "
                         f"count that factors (e.g. {max(1, rows // 2) * max(1, cols // 2)}), or pass factor= or grid=")
    return best[1]


def pool_grid(rows: int, cols: int, out_rows: int, out_cols: int) -> np.ndarray:
    """``(rows * cols,)`` output index of each input cell for non-overlapping bins."""
    row_bin = np.searchsorted(np.round(np.linspace(0, rows, out_rows + 1))[1:], np.arange(rows), side="right")
    col_bin = np.searchsorted(np.round(np.linspace(0, cols, out_cols + 1))[1:], np.arange(cols), side="right")
    return (row_bin[:, None] * out_cols + col_bin[None, :]).reshape(-1)


@register_method(
    "pool", description="average pooling of the token grid to r x c bins (LLaVA-style 2x2, LLaMA-VID grid:g)",
    paper="Li et al., LLaMA-VID, ECCV 2024; LLaVA-OneVision 2x2 pooling", merges=True, needs_grid=True,
    sizing=("factor", "grid"),
)
def pool(x: np.ndarray, k: int | None, sizes: np.ndarray, signals: dict[str, Any], rng: np.random.Generator,
         factor: int | None = None, grid: Any = None) -> Reduction:
    """``keep=K`` (an r x c = K grid near the input's aspect, bins as even as possible), ``factor=f`` (f x f
    windows, ``ceil(rows/f) x ceil(cols/f)`` of them, the last row/column of windows partial; LLaVA's 2x2 is
    ``factor=2``) or ``grid=g`` / ``grid=(r, c)`` (LLaMA-VID's ``grid:g``, even bins)."""
    rows, cols = signals["grid"]
    if factor is not None:
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
            raise ValueError(f"pool: factor must be a whole number >= 1, got {factor!r}")
        # stride-f windows, the last one partial (ceil mode), so no patch is dropped
        out_rows, out_cols = -(-rows // factor), -(-cols // factor)
        assign = ((np.arange(rows) // factor)[:, None] * out_cols + (np.arange(cols) // factor)[None, :]).reshape(-1)
        return Reduction(assign, grid=(int(out_rows), int(out_cols)))
    elif grid is not None:
        out_rows, out_cols = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)
        if not (1 <= out_rows <= rows and 1 <= out_cols <= cols):
            raise ValueError(f"pool: grid {out_rows}x{out_cols} must fit inside the {rows}x{cols} token grid")
    else:
        out_rows, out_cols = output_grid(rows, cols, k)
    return Reduction(pool_grid(rows, cols, int(out_rows), int(out_cols)), grid=(int(out_rows), int(out_cols)))
