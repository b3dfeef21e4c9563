"""The regions tokenizer: location tokens, tokens from detections, embeddings, the saliency backend, show."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.regions.base import Region, box_iou, list_detectors, load_detector, nms
from vistok.regions.loc import from_loc_tokens, to_loc_tokens
from vistok.samples import sample_images
from vistok.tokenizers.regions import RegionsConfig, RegionsTokenizer, visible_region

# -- PaliGemma location tokens -----------------------------------------------------------------------


def test_loc_tokens_follow_paligemmas_order_and_bins():
    # a 1000 x 500 image: x is divided by 1000, y by 500, written y0 x0 y1 x1 in 1024 bins
    text = to_loc_tokens([[100, 50, 600, 500]], (1000, 500), ["cat"])
    assert text == "<loc0102><loc0102><loc1023><loc0614> cat"
    assert to_loc_tokens(np.zeros((0, 4)), (10, 10)) == ""
    two = to_loc_tokens([[0, 0, 10, 10], [5, 5, 10, 10]], (10, 10), ["a", "b b"])
    assert two == "<loc0000><loc0000><loc1023><loc1023> a ; <loc0512><loc0512><loc1023><loc1023> b b"


def test_loc_tokens_parse_a_paligemma_answer():
    answer = "<loc0000><loc0000><loc0930><loc1012> wall ; <loc0722><loc0047><loc0895><loc0378> car"
    boxes, labels = from_loc_tokens(answer, (1024, 2048))
    assert labels == ["wall", "car"]
    np.testing.assert_allclose(boxes, [[0, 0, 1012, 1860], [47, 1444, 378, 1790]])
    assert from_loc_tokens("no boxes here", (10, 10))[0].shape == (0, 4)
    with pytest.raises(ValueError, match="positive"):
        from_loc_tokens(answer, (0, 10))
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        to_loc_tokens([[0, 0, 1, 1]], (10, 10), ["a", "b"])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.lists(st.floats(0, 1), min_size=4, max_size=4))
def test_loc_tokens_round_trip_within_half_a_bin(w, h, fractions):
    fx0, fx1 = sorted(fractions[:2])
    fy0, fy1 = sorted(fractions[2:])
    box = np.array([[fx0 * w, fy0 * h, fx1 * w, fy1 * h]])
    back, _ = from_loc_tokens(to_loc_tokens(box, (w, h)), (w, h))
    tolerance = np.array([w, h, w, h]) / 1024  # half a bin, a whole bin at the clipped far edge
    assert (np.abs(back - box) <= tolerance + 1e-9).all()


# -- registry and helpers ----------------------------------------------------------------------------

def test_every_backend_is_registered():
    assert {"saliency", "faces", "text", "superpixels", "yolo", "torchvision"} <= set(list_detectors())
    with pytest.raises(KeyError, match="did you mean 'faces'"):
        load_detector("facez")


def test_backends_offer_the_detector_protocol_check_included():
    from vistok.regions.base import Detector
    from vistok.regions.detectors.torchvision_detector import TorchvisionDetector
    from vistok.regions.detectors.yolo import YoloDetector

    for name in ("faces", "saliency", "superpixels", "text"):  # the ones that need no file of yours
        assert isinstance(load_detector(name), Detector), name
    assert all(callable(cls.check) and callable(cls.detect) for cls in (TorchvisionDetector, YoloDetector))
    vistok.load("regions:superpixels").check()  # RegionsTokenizer.check calls the detector's check


def test_nms_and_iou_against_brute_force():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 80, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (40, 2))], axis=1)
    scores = rng.uniform(0, 1, 40)
    import torch
    from torchvision.ops import box_iou as tv_iou
    from torchvision.ops import nms as tv_nms

    np.testing.assert_allclose(box_iou(boxes, boxes), tv_iou(torch.tensor(boxes), torch.tensor(boxes)).numpy(), atol=1e-12)
    for threshold in (0.1, 0.5, 0.9):
        expected = tv_nms(torch.tensor(boxes), torch.tensor(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)


class _FakeDetector:
    name, labels = "fake", ["cat", "dog"]

    def __init__(self, regions):
        self.regions = regions

    def detect(self, image):
        return list(self.regions)


def _regions_with(regions, **options) -> RegionsTokenizer:
    tok = RegionsTokenizer(RegionsConfig(**options))
    tok._detector = _FakeDetector(regions)
    return tok


def test_tokens_from_detections():
    mask = np.zeros((40, 60), bool)
    mask[5:20, 10:30] = True
    found = [Region((10, 5, 30, 20), 1, 0.4, mask), Region((-5, 30, 70, 45), 0, 0.9, np.ones((40, 60), bool))]
    tokens = _regions_with(found).encode(Image.new("RGB", (60, 40)))
    assert tokens.is_hard and tokens.values.tolist() == [0, 1]  # highest score first
    np.testing.assert_array_equal(tokens.boxes, [[0, 30, 60, 40], [10, 5, 30, 20]])  # clipped to the image
    np.testing.assert_allclose(tokens.extras["boxes_norm"], tokens.boxes / [60, 40, 60, 40])
    np.testing.assert_allclose(tokens.extras["scores"], [0.9, 0.4])
    assert tokens.extras["masks"].shape == (2, 40, 60) and tokens.extras["masks"][1].sum() == 300
    assert tokens.meta["labels"] == ["cat", "dog"] and tokens.vocab_size == 2
    assert tokens.meta["loc_tokens"] == to_loc_tokens(tokens.boxes, (60, 40), ["cat", "dog"])
    assert len(_regions_with(found, max_regions=1).encode(Image.new("RGB", (60, 40)))) == 1
    assert "masks" not in _regions_with(found, masks=False).encode(Image.new("RGB", (60, 40))).extras


def test_no_detections_is_a_valid_empty_tokens(tmp_path):
    tokens = _regions_with([]).encode(Image.new("RGB", (30, 20)))
    assert len(tokens) == 0 and tokens.boxes.shape == (0, 4) and tokens.meta["loc_tokens"] == ""
    tokens.save(tmp_path / "empty.safetensors")
    assert vistok.Tokens.load(tmp_path / "empty.safetensors").equals(tokens)


class _RampTokenizer:
    """A soft tokenizer whose feature at grid cell (r, c) is (c, r): RoI Align of a linear map is exact. It
    stands in for a registered one that declares preprocessing (cnn) or not (patch)."""

    kind = "soft"

    def __init__(self, grid, preprocess=None):
        self.grid = grid
        self.name = "patch" if preprocess is None else "cnn"
        self.preprocess_config = preprocess

    def encode(self, image):
        rows, cols = self.grid
        r, c = np.mgrid[0:rows, 0:cols]
        values = np.stack([c.ravel(), r.ravel()], axis=1).astype(np.float32)
        return vistok.Tokens.from_grid(values, self.grid)


@pytest.mark.parametrize("crop", [False, True])
def test_roi_embeddings_map_boxes_onto_the_grid(crop):
    from vistok.preprocess import Preprocess

    boxes = [(20, 10, 60, 30), (25, 0, 45, 20)]  # inside the part of the image the grid covers
    tok = _regions_with([Region(b) for b in boxes])
    preprocess = Preprocess(size=40, crop=40) if crop else None  # 80x40 -> 80x40 -> centre 40x40 (x 20..60)
    tok._embedder = _RampTokenizer((8, 8), preprocess)
    emb = tok.encode(Image.new("RGB", (80, 40))).extras["embeddings"]
    # grid coordinates of each box; the mean of a linear map over the box is its value at the centre,
    # and cell i's centre sits at i + 0.5 (aligned RoI Align)
    x_range, y_range = ((20, 60), (0, 40)) if crop else ((0, 80), (0, 40))
    for (x0, y0, x1, y1), e in zip(boxes, emb):  # scores tie: the detector's order is kept
        gx = ((x0 + x1) / 2 - x_range[0]) / (x_range[1] - x_range[0]) * 8 - 0.5
        gy = ((y0 + y1) / 2 - y_range[0]) / (y_range[1] - y_range[0]) * 8 - 0.5
        np.testing.assert_allclose(e, [gx, gy], atol=1e-5)


def test_visible_region_of_the_real_encoders():
    cnn = vistok.load("efficientnet-lite0")
    # shortest side to 256, centre crop 224: a 512x256 image shows x in [144, 368) at scale 1
    np.testing.assert_allclose(visible_region(cnn, (512, 256)), (144, 16, 368, 240))
    assert visible_region(vistok.load("focus-vit-s14"), (512, 256)) == (0, 0, 512, 256)


def test_crop_embeddings_equal_encoding_the_crop():
    image = Image.open(sample_images()[0]).convert("RGB")
    tok = _regions_with([Region((100, 50, 300, 250))], embed="focus-vit-s14", embed_mode="crop")
    emb = tok.encode(image).extras["embeddings"]
    expected = vistok.load("focus-vit-s14").encode(image.crop((100, 50, 300, 250))).values.mean(axis=0)
    np.testing.assert_allclose(emb[0], expected, rtol=1e-4, atol=1e-4)


def test_roi_embeddings_of_a_real_encoder_match_roi_align_called_directly():
    import torch
    from torchvision.ops import roi_align

    image = Image.open(sample_images()[0]).convert("RGB")  # 512x512
    tok = _regions_with([Region((64, 128, 320, 384))], embed="focus-vit-s14")
    emb = tok.encode(image).extras["embeddings"]
    full = vistok.load("focus-vit-s14").encode(image)
    rows, cols = full.grid
    feature = torch.from_numpy(full.values).T.reshape(1, -1, rows, cols)
    box = torch.tensor([[0, 64 / 512 * cols, 128 / 512 * rows, 320 / 512 * cols, 384 / 512 * rows]], dtype=torch.float32)
    expected = roi_align(feature, box, (2, 2), 1.0, 2, True).mean(dim=(2, 3))[0].numpy()
    np.testing.assert_allclose(emb[0], expected, rtol=1e-5, atol=1e-5)


def test_option_errors():
    with pytest.raises(KeyError, match="unknown detector 'nope'"):
        vistok.load("regions:nope")
    with pytest.raises(ValueError, match="embed_mode"):
        vistok.load("regions", embed_mode="grid")
    with pytest.raises(ValueError, match="soft tokenizer"):
        vistok.load("regions", embed="grid").encode(Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match="threshold"):
        vistok.load("regions:saliency", threshold=2.0).check()


# -- the saliency backend ----------------------------------------------------------------------------

def test_saliency_regions_are_the_components_of_the_thresholded_map():
    from scipy import ndimage

    image = Image.open(sample_images()[0]).convert("RGB")
    detector = load_detector("saliency")
    heat = detector.saliency_map(image)
    assert heat.shape == (image.height, image.width) and 0 <= heat.min() and heat.max() <= 1
    regions = detector.detect(image)
    labelled, _ = ndimage.label(heat > 0.5, structure=np.ones((3, 3)))
    assert regions and all(r.mask is not None for r in regions)
    for r in regions:  # each mask is one whole component and its box is the mask's bounding box (brute force)
        ids = np.unique(labelled[r.mask])
        assert len(ids) == 1 and ids[0] > 0 and (labelled == ids[0]).sum() == r.mask.sum()
        ys, xs = np.nonzero(r.mask)
        assert r.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert r.score == pytest.approx(heat[r.mask].mean(), rel=1e-5)


# -- the command line ---------------------------------------------------------------------------------

def test_cli_show_draws_regions_and_prints_location_tokens(tmp_path):
    out = tmp_path / "regions.png"
    result = CliRunner().invoke(app, ["show", str(sample_images()[0]), "-t", "regions:saliency", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "<loc" in result.output and "salient object" in result.output
    assert Image.open(out).size[0] > 600
    tokens = CliRunner().invoke(app, ["tokenize", str(sample_images()[0]), "-t", "regions:saliency"])
    assert tokens.exit_code == 0, tokens.output
