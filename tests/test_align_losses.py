"""The alignment losses: a hand-worked example, a brute-force loop over pairs, open_clip's own losses as the
independent reference, the chunked form against the full one (value and gradients), and bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vistok.align import recall_at, sigmoid_loss, sigmoid_loss_chunked, softmax_loss, zero_shot_accuracy
from vistok.align.sigmoid_loss import INIT_LOGIT_BIAS, INIT_LOGIT_SCALE
from vistok.align.softmax_loss import INIT_LOGIT_SCALE as CLIP_SCALE


def _pairs(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(torch.randn(n, d, generator=g), dim=-1))


def test_paper_initialisation():
    assert INIT_LOGIT_SCALE == pytest.approx(math.log(10)) and INIT_LOGIT_BIAS == -10.0
    assert CLIP_SCALE == pytest.approx(math.log(1 / 0.07))


def test_sigmoid_loss_hand_worked():
    # two pairs, orthogonal unit vectors: x0 = y0 = e0, x1 = y1 = e1; t' = 0 (scale 1), b = 0
    # positives: cos 1 -> -log sigmoid(1) each; negatives: cos 0 -> -log sigmoid(-0) = log 2 each; / n = 2
    x = torch.eye(2)
    expected = (2 * -math.log(1 / (1 + math.exp(-1))) + 2 * math.log(2)) / 2
    assert sigmoid_loss(x, x, torch.tensor(0.0), torch.tensor(0.0)).item() == pytest.approx(expected, rel=1e-6)


def test_sigmoid_loss_brute_force_and_open_clip():
    x, y = _pairs(7)
    t, b = torch.tensor(1.7), torch.tensor(-3.0)
    total = 0.0
    for i in range(7):
        for j in range(7):
            z = 1.0 if i == j else -1.0
            logit = math.exp(1.7) * float(x[i] @ y[j]) - 3.0
            total += math.log1p(math.exp(-z * logit))
    ours = sigmoid_loss(x, y, t, b).item()
    assert ours == pytest.approx(total / 7, rel=1e-5)
    from open_clip.loss import SigLipLoss

    assert ours == pytest.approx(SigLipLoss()(x, y, t.exp(), b).item(), rel=1e-6)


def test_softmax_loss_brute_force_and_open_clip():
    x, y = _pairs(6, seed=1)
    t = torch.tensor(2.0)
    logits = (x @ y.T * math.exp(2.0)).double().numpy()

    def ce(rows: np.ndarray) -> float:
        return float(np.mean([np.log(np.exp(r).sum()) - r[i] for i, r in enumerate(rows)]))

    ours = softmax_loss(x, y, t).item()
    assert ours == pytest.approx((ce(logits) + ce(logits.T)) / 2, rel=1e-5)
    from open_clip.loss import ClipLoss

    assert ours == pytest.approx(ClipLoss()(x, y, t.exp()).item(), rel=1e-6)


def test_softmax_loss_clips_the_scale_at_100():
    x, y = _pairs(4, seed=2)
    assert softmax_loss(x, y, torch.tensor(9.0)).item() == pytest.approx(
        softmax_loss(x, y, torch.tensor(math.log(100))).item())


@pytest.mark.parametrize("chunk", [1, 3, 5, 8, 50])
def test_chunked_sigmoid_equals_full(chunk):
    x, y = _pairs(8, seed=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    t = torch.tensor(INIT_LOGIT_SCALE, requires_grad=True)
    b = torch.tensor(INIT_LOGIT_BIAS, requires_grad=True)
    full = sigmoid_loss(x, y, t, b)
    grads = torch.autograd.grad(full, [x, y, t, b])
    part = sigmoid_loss_chunked(x, y, t, b, chunk)
    grads_chunked = torch.autograd.grad(part, [x, y, t, b])
    assert part.item() == pytest.approx(full.item(), rel=1e-6)
    for g, h in zip(grads, grads_chunked):
        assert torch.allclose(g, h, atol=1e-6)
    with torch.no_grad():
        assert sigmoid_loss_chunked(x, y, t, b, chunk).item() == pytest.approx(full.item(), rel=1e-6)


@pytest.mark.parametrize("call", [
    lambda x, y: sigmoid_loss(x, y[:3], torch.tensor(0.0), torch.tensor(0.0)),
    lambda x, y: sigmoid_loss(x[0], y[0], torch.tensor(0.0), torch.tensor(0.0)),
    lambda x, y: sigmoid_loss(x[:0], y[:0], torch.tensor(0.0), torch.tensor(0.0)),
    lambda x, y: softmax_loss(x, y[:, :4], torch.tensor(0.0)),
    lambda x, y: softmax_loss(x[:0], y[:0], torch.tensor(0.0)),
    lambda x, y: sigmoid_loss_chunked(x, y, torch.tensor(0.0), torch.tensor(0.0), 0),
    lambda x, y: sigmoid_loss_chunked(x, y, torch.tensor(0.0), torch.tensor(0.0), 2.5),
])
def test_losses_refuse_bad_shapes(call):
    x, y = _pairs(4)
    with pytest.raises(ValueError):
        call(x, y)


def test_zero_shot_accuracy_and_recall_by_hand():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert zero_shot_accuracy(images, classes, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # image 0 -> text 0 first; image 1: texts 1 and 2 tie (tie counts against: rank 1); image 2 -> text 0 first
    scores = recall_at(images, texts, ks=(1, 2))
    assert scores["i2t@1"] == pytest.approx(1 / 3)
    assert scores["i2t@2"] == pytest.approx(2 / 3)
    # with class-level matches: texts 1 and 2 both match image 1 and image 2 (class "b"), text 0 image 0
    matches = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 1]], bool)
    scores = recall_at(images, texts, ks=(1,), matches=matches)
    # image 2 ranks text 0 first (not a match): miss; text 2's best image is image 1 (a match): hit
    assert scores["i2t@1"] == pytest.approx(2 / 3) and scores["t2i@1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="matches must be"):
        recall_at(images, texts, matches=np.eye(2, dtype=bool))
    with pytest.raises(ValueError):
        zero_shot_accuracy(images[:0], classes, np.array([], int))
