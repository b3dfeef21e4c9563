"""Greedy non-maximum suppression for the region detectors: ``torchvision.ops.batched_nms`` when torchvision is
installed (compiled; several times faster than the numpy loop at 1,000 boxes), a numpy loop otherwise.

Semantics (both paths, the same kept indices): boxes are ``x0, y0, x1, y1``; boxes are visited by decreasing
score, ties by index; a box is dropped when its IoU with a kept box of the same label is above ``iou``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nms", "batched_nms"]

_ops: object | None = None  # torchvision.ops, False when torchvision is missing


def _torchvision_ops() -> object | None:
    global _ops
    if _ops is None:
        try:
            import torchvision.ops as ops
        except ImportError:
            ops = False
        _ops = ops
    return _ops or None


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first (torchvision's ``nms`` semantics)."""
    return batched_nms(boxes, scores, np.zeros(len(scores), np.int64), iou)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression within each label, highest score first."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"nms: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels; give one each")
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")  # visiting order: score, then index
    ops = _torchvision_ops() if len(boxes) > 1 else None
    if ops is None:
        return order[_greedy(boxes[order], labels[order], iou)]
    import torch

    # strictly decreasing stand-in scores: torchvision's own sort then visits boxes in exactly `order`
    rank = torch.arange(len(order), 0, -1, dtype=torch.float64)
    kept = ops.batched_nms(torch.from_numpy(boxes[order]), rank,  # type: ignore[attr-defined]
                           torch.from_numpy(np.unique(labels[order], return_inverse=True)[1].astype(np.int64)),
                           float(iou))
    return order[kept.numpy()]


def _greedy(boxes: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """Positions kept when visiting ``boxes`` in the given order (numpy; used without torchvision)."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(boxes), bool)
    keep = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(alive[i + 1:]) + i + 1
        rest = rest[labels[rest] == labels[i]]
        if not len(rest):
            continue
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        overlap = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        alive[rest[overlap > iou]] = False
    return np.asarray(keep, np.int64)
