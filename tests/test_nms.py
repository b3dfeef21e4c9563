"""Region NMS: torchvision's batched_nms (or the numpy fallback) keeps exactly what the greedy loop kept."""

import numpy as np
import pytest

import vistok.regions.nms as nms_module
from vistok.regions.base import box_iou
from vistok.regions.nms import batched_nms, nms


def greedy_reference(boxes, scores, iou):
    """The hand-written NMS the detectors used before: visit by score (stable), drop overlaps > iou."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    boxes = np.asarray(boxes, np.float64)
    while len(order):
        i = int(order[0])
        keep.append(i)
        if len(order) == 1:
            break
        overlaps = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][overlaps <= iou]
    return np.asarray(keep, np.int64)


def class_wise_reference(boxes, scores, labels, iou):
    """The old YOLO decode: greedy NMS per class, then all kept boxes by score (ties by index)."""
    kept = [np.flatnonzero(labels == c)[greedy_reference(boxes[labels == c], scores[labels == c], iou)]
            for c in np.unique(labels)]
    idx = np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    return idx[np.argsort(-scores[idx], kind="stable")]


def _random(seed, n, ties=False):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 80, (n, 2))], axis=1)
    scores = rng.integers(0, 5, n) / 4 if ties else rng.uniform(0, 1, n)
    return boxes, scores, rng.integers(0, 4, n)


@pytest.fixture(params=["torchvision", "numpy"])
def backend(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(nms_module, "_ops", False)  # as without torchvision
    else:
        pytest.importorskip("torchvision")
        monkeypatch.setattr(nms_module, "_ops", None)
    return request.param


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou", [0.0, 0.3, 0.5, 0.9])
def test_same_kept_indices_as_the_greedy_loop(backend, seed, iou):
    for n, ties in ((1, False), (7, False), (300, False), (300, True)):
        boxes, scores, labels = _random(seed, n, ties)
        np.testing.assert_array_equal(nms(boxes, scores, iou), greedy_reference(boxes, scores, iou))
        np.testing.assert_array_equal(batched_nms(boxes, scores, labels, iou),
                                      class_wise_reference(boxes, scores, labels, iou))


def test_uses_torchvision_when_installed(monkeypatch):
    pytest.importorskip("torchvision")
    import torchvision.ops

    calls = []
    real = torchvision.ops.batched_nms
    monkeypatch.setattr(nms_module, "_ops", None)
    monkeypatch.setattr(torchvision.ops, "batched_nms", lambda *a: calls.append(1) or real(*a))
    boxes, scores, labels = _random(0, 50)
    batched_nms(boxes, scores, labels, 0.5)
    assert calls == [1]


def test_empty_and_mismatched_inputs(backend):
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="3 boxes, 2 scores"):
        batched_nms(np.zeros((3, 4)), np.zeros(2), np.zeros(3), 0.5)
