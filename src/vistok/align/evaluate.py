"""Scores of an alignment on embeddings: zero-shot classification accuracy (CLIP's protocol: an image takes the
class whose prompt embedding it is most similar to) and image-to-text / text-to-image retrieval recall@k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["zero_shot_accuracy", "recall_at"]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def zero_shot_accuracy(images: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``images`` ``(N, E)`` whose most similar row of ``classes`` ``(C, E)`` is their label. Softmax and
    sigmoid give the same ranking (both are monotone in the cosine), so this holds for CLIP and SigLIP."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no images to score")
    predicted = (_normalise(images) @ _normalise(classes).T).argmax(1)
    return float((predicted == labels).mean())


def recall_at(images: np.ndarray, texts: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k both ways for ``N`` matching pairs (row ``i`` of each): the share of images whose own text is among
    their ``k`` most similar texts (``i2t@k``), and of texts whose own image is (``t2i@k``). Ties count against."""
    sim = _normalise(images) @ _normalise(texts).T
    own = np.diag(sim)
    # rank of the own pair: how many others score strictly higher, plus the ties other than itself
    i2t = (sim > own[:, None]).sum(1) + (sim == own[:, None]).sum(1) - 1
    t2i = (sim > own[None, :]).sum(0) + (sim == own[None, :]).sum(0) - 1
    out = {}
    for k in ks:
        out[f"i2t@{k}"] = float((i2t < k).mean())
        out[f"t2i@{k}"] = float((t2i < k).mean())
    return out
