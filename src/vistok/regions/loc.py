"""Boxes <-> PaliGemma location tokens.

PaliGemma (Beyer et al., "PaliGemma: A versatile 3B VLM for transfer", 2024; the format comes from big_vision's
PaliGemma detection task) writes a detected box as four tokens ``<locNNNN>`` in the order y0, x0, y1, x1,
each coordinate normalised by the image height or width and quantised to 1024 bins (0000..1023), followed by
the label; several detections are separated by ``" ; "``, e.g.
``"<loc0000><loc0000><loc0930><loc1012> wall ; <loc0722><loc0047><loc0895><loc0378> car"``.
A bin ``b`` decodes to ``b / 1024`` of the side, so encoding rounds ``coord / side * 1024`` to the nearest
bin (clipped to 0..1023): a round trip moves a coordinate by at most ``side / 2048`` (``side / 1024`` at
the far edge).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

__all__ = ["BINS", "to_loc_tokens", "from_loc_tokens"]

BINS = 1024
_DETECTION = re.compile(r"((?:<loc\d{4}>){4})\s*([^;<]*)")
_LOC = re.compile(r"<loc(\d{4})>")


def _size(image_size: tuple[int, int]) -> tuple[float, float]:
    w, h = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size must be positive (width, height), got {image_size}")
    return float(w), float(h)


def to_loc_tokens(boxes: np.ndarray | Sequence[Sequence[float]], image_size: tuple[int, int],
                  labels: Sequence[str] | None = None) -> str:
    """``(N, 4)`` x0, y0, x1, y1 source-pixel boxes of an image of ``image_size`` (width, height) -> one
    PaliGemma detection string (labels after each box when given)."""
    w, h = _size(image_size)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(labels)} labels for {len(boxes)} boxes")
    scale = np.array([h, w, h, w])
    yxyx = boxes[:, [1, 0, 3, 2]] / scale * BINS
    bins = np.clip(np.rint(yxyx), 0, BINS - 1).astype(int)
    parts = []
    for i, row in enumerate(bins):
        text = "".join(f"<loc{b:04d}>" for b in row)
        parts.append(f"{text} {labels[i]}" if labels is not None else text)
    return " ; ".join(parts)


def from_loc_tokens(text: str, image_size: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Parse a PaliGemma detection string: ``(N, 4)`` x0, y0, x1, y1 boxes in pixels of ``image_size`` and
    the N labels (empty strings where none was written). Text that holds no four-token group gives N = 0;
    a group whose bins are out of range raises ``ValueError``."""
    w, h = _size(image_size)
    boxes, labels = [], []
    for match in _DETECTION.finditer(text):
        bins = [int(b) for b in _LOC.findall(match.group(1))]
        if any(b >= BINS for b in bins):
            raise ValueError(f"location tokens must lie in <loc0000>..<loc{BINS - 1:04d}>, got {match.group(1)!r}")
        y0, x0, y1, x1 = (b / BINS for b in bins)
        boxes.append([x0 * w, y0 * h, x1 * w, y1 * h])
        labels.append(match.group(2).strip())
    return np.asarray(boxes, np.float64).reshape(-1, 4), labels
