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


def recall_at(images: np.ndarray, texts: np.ndarray, ks: Sequence[int] = (1, 5),
              matches: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k both ways for ``N`` images and ``N`` texts: the share of images with a matching text among their
    ``k`` most similar texts (``i2t@k``), and of texts with a matching image among theirs (``t2i@k``). ``matches``
    ``(N, N)`` says which image-text pairs match (default: only row ``i`` with row ``i``; with captions written
    from class names, every caption of the image's class matches). Ties are broken against the match."""
    sim = _normalise(images) @ _normalise(texts).T
    n = sim.shape[0]
    good = np.eye(n, dtype=bool) if matches is None else np.asarray(matches, bool)
    if good.shape != sim.shape:
        raise ValueError(f"matches must be {sim.shape}, got {good.shape}")
    out = {}
    for k in ks:
        for name, scores, hits in (("i2t", sim, good), ("t2i", sim.T, good.T)):
            # the best match's rank: items scoring strictly higher, plus every tie that is not a match
            best = np.where(hits, scores, -np.inf).max(1)
            rank = (scores > best[:, None]).sum(1) + ((scores == best[:, None]) & ~hits).sum(1)
            out[f"{name}@{k}"] = float((rank < k).mean())
    return out
