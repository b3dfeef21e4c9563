"""``pool``: average neighbouring tokens into a coarser grid.

LLaVA-style 2x2 pooling of the patch grid (e.g. LLaVA-OneVision and LLaVA-NeXT-Video pool the vision
tokens 2x2 before the projector) and LLaMA-VID's ``grid:g`` content tokens (Li et al., "LLaMA-VID: An Image
is Worth 2 Tokens in Large Language Models", ECCV 2024), which average the patch grid down to ``g x g``.
Each output is the size-weighted mean of its bin. How ``factor=`` and ``grid=`` cut a grid they do not divide
follows the originals by default (``bins="windows"``): whole ``w x w`` windows at stride ``w``, as
``F.avg_pool2d(x, w)`` (floor mode) computes them, and the rows and columns past the last whole window are
dropped (their provenance is ``-1``):

* ``factor=f``: ``w = f`` (LLaVA-NeXT-Video's ``average`` 2x2 pooling is ``avg_pool2d(x, 2)``): a 27x27 grid
  gives 13x13, without row and column 27;
* ``grid=g``: ``w = side // g`` per side, as LLaMA-VID's ``grid:g`` code does (``grid_stride = cur_shape //
  grid_size`` then ``avg_pool2d(kernel_size=grid_stride, stride=grid_stride)``), so the output has
  ``side // w`` per side: ``grid=5`` on 24x24 pools 4x4 windows into **6x6**, and ``grid=5`` on 16x16 pools 3x3
  windows into 5x5, dropping row and column 16.

``bins="cover"`` (vistok's partition) puts every patch in exactly one output: ``factor=f`` makes
``ceil(rows/f) x ceil(cols/f)`` windows, the last row/column of them partial (as ``avg_pool2d`` with
``ceil_mode=True``; 27x27 gives 14x14, the count LLaVA-OneVision's bilinear 2x resize to ``ceil(27/2)`` also
gives), and ``grid=g`` makes exactly ``g x g`` bins as even as possible (boundaries ``round(i * rows / g)``).
``keep=K`` always makes an ``r x c = K`` grid of even bins.
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


def _windows(rows: int, cols: int, win_rows: int, win_cols: int) -> Reduction:
    """Whole ``win_rows x win_cols`` windows at their own stride (``F.avg_pool2d`` in floor mode); cells past
    the last whole window are dropped (``-1``)."""
    out_rows, out_cols = rows // win_rows, cols // win_cols
    row_bin, col_bin = np.arange(rows) // win_rows, np.arange(cols) // win_cols
    assign = row_bin[:, None] * out_cols + col_bin[None, :]
    assign[(row_bin[:, None] >= out_rows) | (col_bin[None, :] >= out_cols)] = -1
    return Reduction(assign.reshape(-1), grid=(int(out_rows), int(out_cols)))


@register_method(
    "pool", description="average pooling of the token grid to r x c bins (LLaVA-style 2x2, LLaMA-VID grid:g)",
    paper="Li et al., LLaMA-VID, ECCV 2024; LLaVA-OneVision 2x2 pooling", merges=True, needs_grid=True,
    sizing=("factor", "grid"), options=("bins",), layout=True,
)
def pool(n: int, k: int | None, token_grid: tuple[int, int], seed: int, factor: int | None = None, grid: Any = None,
         bins: str = "windows") -> Reduction:
    """``keep=K`` (an r x c = K grid near the input's aspect, bins as even as possible), ``factor=f`` (LLaVA's
    2x2 is ``factor=2``) or ``grid=g`` / ``grid=(r, c)`` (LLaMA-VID's ``grid:g``). ``bins``: ``"windows"``
    (default, the originals' ``avg_pool2d``: whole windows, leftover rows/columns dropped) or ``"cover"``
    (every patch in one bin: partial last windows for ``factor``, exactly ``g x g`` even bins for ``grid``)."""
    rows, cols = token_grid
    if bins not in ("windows", "cover"):
        raise ValueError(f"pool: bins must be 'windows' (avg_pool2d's whole windows, as LLaVA and LLaMA-VID) or "
                         f"'cover' (every patch in one bin), got {bins!r}")
    if factor is not None:
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
            raise ValueError(f"pool: factor must be a whole number >= 1, got {factor!r}")
        if bins == "windows":
            if factor > min(rows, cols):
                raise ValueError(f"pool: factor={factor} is larger than the {rows}x{cols} token grid, so no whole "
                                 f"window fits; use a factor <= {min(rows, cols)} or bins='cover'")
            return _windows(rows, cols, int(factor), int(factor))
        # stride-f windows, the last one partial (ceil mode), so no patch is dropped
        out_rows, out_cols = -(-rows // factor), -(-cols // factor)
        assign = ((np.arange(rows) // factor)[:, None] * out_cols + (np.arange(cols) // factor)[None, :]).reshape(-1)
        return Reduction(assign, grid=(int(out_rows), int(out_cols)))
    elif grid is not None:
        out_rows, out_cols = (grid, grid) if isinstance(grid, (int, np.integer)) else tuple(grid)
        if not (1 <= out_rows <= rows and 1 <= out_cols <= cols):
            raise ValueError(f"pool: grid {out_rows}x{out_cols} must fit inside the {rows}x{cols} token grid")
        if bins == "windows":  # LLaMA-VID: window side // g, as many whole windows as fit
            return _windows(rows, cols, rows // int(out_rows), cols // int(out_cols))
    else:
        out_rows, out_cols = output_grid(rows, cols, k)
    return Reduction(pool_grid(rows, cols, int(out_rows), int(out_cols)), grid=(int(out_rows), int(out_cols)))
