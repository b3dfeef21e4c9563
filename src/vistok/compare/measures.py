"""Per-image measures of tokens: their size in bits, how much they change under a perturbation, and how well
their layout follows edges.

* :func:`bits` -- hard ids: ``N * log2(vocab)`` (the ids as a fixed-length code), plus 64 bits per box (four
  float16 coordinates) for region tokens; soft vectors: ``N * D * 16`` (float16, the precision a VLM's language
  model consumes them in).
* :func:`agreement` -- hard tokens on the same layout: the fraction of positions whose id is unchanged; soft
  tokens on the same layout: the mean cosine similarity of tokens at the same position; region tokens: the F1
  of boxes matched one to one (greedy by IoU, IoU >= 0.5, same label).
* :func:`layout_edges` -- the pixels where one token's area meets another's: grid cell borders (through the
  ``source`` map, so merged tokens count as one area and a centre crop's border counts), or box outlines.
* :func:`boundary_scores` -- boundary recall (the fraction of reference edge pixels within ``tolerance`` px of a
  layout edge) and boundary precision (the converse), the standard superpixel benchmark measures (Neubert and
  Protzel, "Superpixel Benchmark and Comparison", 2012).
* :func:`edge_fidelity` -- how well the tokens themselves say how much of their cell an object covers, on
  cells an object edge crosses: R^2 on held-out cells of a ridge regression from the token (soft: its vector;
  hard: its one-hot id) to the covered fraction. This tests the claim that soft tokens represent ambiguous
  boundaries better than hard ones.
"""

from __future__ import annotations

import math

import numpy as np

from vistok.tokens import Tokens

__all__ = ["bits", "agreement", "box_f1", "layout_edges", "token_index", "boundary_scores", "edge_fidelity"]


def bits(tokens: Tokens) -> float:
    """Size of ``tokens`` in bits (see the module docstring)."""
    if tokens.is_hard:
        vocab = tokens.vocab_size or (int(tokens.values.max(initial=0)) + 1)
        size = len(tokens) * math.log2(max(vocab, 2))
        return size + (64 * len(tokens) if tokens.boxes is not None else 0)
    return float(len(tokens) * tokens.values.shape[1] * 16)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of x0, y0, x1, y1 boxes."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def box_f1(a: Tokens, b: Tokens, threshold: float = 0.5) -> float:
    """F1 of region tokens ``b`` against ``a``: pairs matched greedily by IoU (highest first), each box at most
    once, a pair counting when IoU >= ``threshold`` and the labels agree. Two empty sets agree fully (1.0)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    if len(a) == 0 or len(b) == 0:
        return 0.0
    iou = _iou(a.boxes.astype(np.float64), b.boxes.astype(np.float64))
    iou[a.values[:, None] != b.values[None, :]] = 0.0
    matched = 0
    while True:
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[i, j] < threshold:
            break
        matched += 1
        iou[i, :], iou[:, j] = -1.0, -1.0
    return 2.0 * matched / (len(a) + len(b))


def agreement(a: Tokens, b: Tokens) -> float:
    """How much ``b`` (tokens of a changed image) agrees with ``a`` (see the module docstring). Tokens whose
    layouts differ (another count) are compared by their pooled vector (soft) or id histogram overlap (hard)."""
    if a.boxes is not None or b.boxes is not None:
        return box_f1(a, b)
    if a.is_hard != b.is_hard:
        raise ValueError("cannot compare hard tokens with soft ones")
    if a.is_hard:
        if len(a) == len(b):
            return float(np.mean(a.values == b.values)) if len(a) else 1.0
        size = int(max(a.values.max(initial=0), b.values.max(initial=0))) + 1
        ha = np.bincount(a.values, minlength=size) / max(len(a), 1)
        hb = np.bincount(b.values, minlength=size) / max(len(b), 1)
        return float(np.minimum(ha, hb).sum())
    x, y = a.values.astype(np.float64), b.values.astype(np.float64)
    if len(x) != len(y):
        x, y = x.mean(axis=0, keepdims=True), y.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    cosine = np.einsum("nd,nd->n", x, y) / np.maximum(norms, 1e-12)
    return float(np.mean(cosine))


def token_index(tokens: Tokens, size: tuple[int, int]) -> np.ndarray | None:
    """``(H, W)`` index of the token each pixel of an image of ``size`` belongs to (``-1``: a dropped patch,
    ``-2``: outside the part the encoder saw); None for tokens without a grid layout (regions)."""
    from vistok.viz import _token_at

    if tokens.source is None or tokens.base_grid is None:
        return None
    return _token_at(tokens, size)


def layout_edges(tokens: Tokens, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: where the tokens' areas meet (cell borders through ``source``, or box outlines), drawn
    on an image of ``size`` = (width, height)."""
    from vistok.viz import _group_edges

    width, height = size
    index = token_index(tokens, size)
    if index is not None:
        return _group_edges(index)
    edge = np.zeros((height, width), bool)
    if tokens.boxes is None or not len(tokens):
        return edge
    source = tokens.image_size or size
    scale = np.array([width / source[0], height / source[1]] * 2)
    for x0, y0, x1, y1 in np.rint(tokens.boxes * scale).astype(np.int64):
        x0, x1 = np.clip([x0, x1 - 1], 0, width - 1)
        y0, y1 = np.clip([y0, y1 - 1], 0, height - 1)
        edge[y0:y1 + 1, [x0, x1]] = True
        edge[[y0, y1], x0:x1 + 1] = True
    return edge


def boundary_scores(layout: np.ndarray, reference: np.ndarray, tolerance: float = 2.0) -> tuple[float, float]:
    """(recall, precision) of ``layout`` edges against ``reference`` edges (same-shape bool maps): a pixel
    counts when the other map has an edge within ``tolerance`` px (Euclidean). NaN where a map has no edge."""
    from scipy.ndimage import distance_transform_edt

    if layout.shape != reference.shape:
        raise ValueError(f"edge maps differ in shape: {layout.shape} vs {reference.shape}")

    def near(edges: np.ndarray) -> np.ndarray:
        return distance_transform_edt(~edges) <= tolerance if edges.any() else np.zeros(edges.shape, bool)

    recall = float(near(layout)[reference].mean()) if reference.any() else math.nan
    precision = float(near(reference)[layout].mean()) if layout.any() else math.nan
    return recall, precision


def edge_fidelity(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], *,
                  vocab: int | None = None) -> float:
    """R^2 on ``test`` of a ridge regression fitted on ``train``; each is ``(features, covered fraction)``.

    Soft features are centred and divided by their root-mean-square (from ``train``); hard tokens pass ``(N,)`` ids and ``vocab``
    and become one-hot rows. The ridge penalty is chosen from 1e-3..1e4 by leave-one-out error on ``train``
    (scikit-learn ``RidgeCV``), so wide vectors are not favoured or punished by a fixed penalty. NaN with fewer
    than two rows on a side.
    """
    from scipy import sparse
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    (x_train, y_train), (x_test, y_test) = train, test
    if len(y_train) < 2 or len(y_test) < 2:
        return math.nan
    if vocab is None:
        x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
        mean = x_train.mean(axis=0)
        scale = float(np.sqrt(np.mean((x_train - mean) ** 2))) + 1e-12  # one scale for all dims: dead ones stay small
        x_train, x_test = (x_train - mean) / scale, (x_test - mean) / scale
    else:
        def one_hot(ids: np.ndarray) -> sparse.csr_matrix:
            ids = np.asarray(ids, np.int64)
            return sparse.csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), vocab))

        x_train, x_test = one_hot(x_train), one_hot(x_test)
    model = RidgeCV(alphas=np.logspace(-3, 4, 8)).fit(x_train, y_train)
    return float(r2_score(y_test, model.predict(x_test)))
