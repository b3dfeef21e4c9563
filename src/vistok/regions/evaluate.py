"""COCO-style average precision of region boxes against known ones (pycocotools' ``COCOeval``, bbox, one category)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

__all__ = ["coco_scores"]


def _xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def coco_scores(truth: Sequence[np.ndarray], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """AP (IoU .50:.95), AP50 and AR@100 of detections against ground truth, one category.

    Per image: ``truth[i]`` ``(k, 4)`` and ``boxes[i]`` ``(m, 4)`` as x0, y0, x1, y1 in pixels, ``scores[i]``
    ``(m,)``; ``sizes[i]`` is (width, height). No detection at all scores 0.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": int(w), "height": int(h)} for i, (w, h) in enumerate(sizes)]
    pairs = [(i, box) for i, image_boxes in enumerate(truth) for box in np.asarray(image_boxes).reshape(-1, 4)]
    # ids from 1: COCOeval marks a detection matched by the id of its ground truth, so an id of 0 reads unmatched
    annotations = [{"id": k + 1, "image_id": i + 1, "category_id": 1, "bbox": _xywh(box),
                    "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": 0}
                   for k, (i, box) in enumerate(pairs)]
    results = [{"image_id": i + 1, "category_id": 1, "bbox": _xywh(box), "score": float(score)}
               for i, (image_boxes, image_scores) in enumerate(zip(boxes, scores))
               for box, score in zip(np.asarray(image_boxes).reshape(-1, 4), np.asarray(image_scores).reshape(-1))]
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AR100": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AR100": float(stats[8])}
