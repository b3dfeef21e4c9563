"""``faces`` (Haar / MB-LBP cascades) and ``superpixels`` (SLIC / Felzenszwalb) detectors, and the synthetic sets
they are measured on: pasted LFW faces are found at their known boxes, Haar boxes equal OpenCV's, LBP boxes equal
scikit-image's, superpixel masks partition the source image and their labels equal scikit-image's."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

cv2 = pytest.importorskip("cv2")
pytest.importorskip("skimage")

from skimage import segmentation  # noqa: E402
from skimage.data import lbp_frontal_face_cascade_filename  # noqa: E402
from skimage.feature import Cascade  # noqa: E402

from vistok.regions.base import box_iou, detector_info, load_detector  # noqa: E402
from vistok.regions.detectors.faces import HAAR_FILE  # noqa: E402
from vistok.regions.synthetic import backgrounds, face_composites, lfw_crops, text_images  # noqa: E402
from vistok.samples import sample_images  # noqa: E402

cv2.setNumThreads(1)


@pytest.fixture(scope="module")
def composites():
    """8 photos of 320-400 px (short side) with 20 pasted LFW faces of 80-120 px (seed 0) and some non-faces."""
    return face_composites(8, 0, sizes=(80, 120), short=(320, 400))


def _boxes(regions) -> np.ndarray:
    return np.asarray([r.box for r in regions], np.float64).reshape(-1, 4)


def _recall(truth, found, iou=0.5):
    """Found faces (IoU >= iou with some detection) and detections matching no face, over the set."""
    hits = misses = 0
    for gt, regions in zip(truth, found):
        overlaps = box_iou(gt, _boxes(regions))
        if overlaps.size:
            hits += int((overlaps.max(1) >= iou).sum())
            misses += int((overlaps.max(0) < iou).sum())
    return hits, misses


def _big_face_image():
    """A 5000x4000 photo with three LFW faces pasted as 420-520 px squares at known places."""
    image = backgrounds()[1].resize((5000, 4000), Image.Resampling.BILINEAR)
    faces, _ = lfw_crops()
    truth = []
    for index, (x, y, side) in zip((3, 10, 42), ((400, 500, 420), (2200, 1800, 520), (3900, 600, 480))):
        image.paste(Image.fromarray(faces[index]).resize((side, side), Image.Resampling.BICUBIC).convert("RGB"), (x, y))
        truth.append((x, y, x + side, y + side))
    return image, np.asarray(truth, np.float64)


# -- synthetic sets --------------------------------------------------------------------------------------------

def test_synthetic_sets_are_deterministic_prefix_stable_and_inside_the_images():
    images, truth = face_composites(3, 7)
    again, truth_again = face_composites(2, 7)
    for a, b, ta, tb in zip(images, again, truth, truth_again):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(ta, tb)
    other, _ = face_composites(1, 8)
    assert not np.array_equal(np.asarray(other[0]), np.asarray(images[0]))
    for image, boxes in zip(images, truth):
        w, h = image.size
        assert 400 <= min(w, h) <= 640 and 1 <= len(boxes) <= 4
        side = boxes[:, 2] - boxes[:, 0]
        assert np.array_equal(side, boxes[:, 3] - boxes[:, 1]) and (side >= 40).all() and (side <= 200).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        overlaps = box_iou(boxes, boxes)
        assert np.allclose(overlaps, np.eye(len(boxes)))  # pasted faces never overlap
        x0, y0, x1, y1 = boxes[0].astype(int)  # the pasted crop is grey: R == G == B inside the box
        patch = np.asarray(image)[y0:y1, x0:x1].astype(int)
        assert (patch[..., 0] == patch[..., 1]).all() and (patch[..., 1] == patch[..., 2]).all()
    with pytest.raises(ValueError, match="n must be"):
        face_composites(-1)


def test_text_images_boxes_hold_the_ink():
    images, truth = text_images(4, 3)
    assert [len(t) for t in truth] == [len(t) for t in text_images(4, 3)[1]]
    for image, boxes in zip(images, truth):
        assert 1 <= len(boxes) <= 3
        array = np.asarray(image).astype(int)
        for x0, y0, x1, y1 in boxes.astype(int):
            assert x1 - x0 > 10 and y1 - y0 >= 8
            patch = array[y0:y1, x0:x1].sum(-1)
            assert patch.max() - patch.min() > 300  # ink and plate contrast inside every text box


# -- faces -----------------------------------------------------------------------------------------------------

def test_faces_registry_entry_and_labels():
    info = detector_info("faces")
    assert "Viola" in info.source and "Liao" in info.source
    for method in ("haar", "lbp"):
        detector = load_detector("faces", method=method)
        assert detector.name == "faces" and list(detector.labels) == ["face"]


def test_haar_finds_most_pasted_faces(composites):
    images, truth = composites
    found = [load_detector("faces").detect(image) for image in images]
    hits, false = _recall(truth, found)
    assert sum(len(t) for t in truth) == 20
    assert hits >= 17 and false <= 2, (hits, false)  # measured: 19 of 20, no false detection
    for regions in found:
        scores = [r.score for r in regions]
        assert all(0 < s < 1 for s in scores) and scores == sorted(scores, reverse=True)
        assert all(r.label == 0 and r.mask is None for r in regions)


def test_lbp_finds_most_pasted_faces(composites):
    images, truth = composites
    detector = load_detector("faces", method="lbp", min_size=64)  # faces are >= 80 px; smaller scales cost 10x
    found = [detector.detect(image) for image in images]
    hits, false = _recall(truth, found)
    assert hits >= 17 and false <= 2, (hits, false)  # measured: 19 of 20, no false detection
    for regions in found:
        for r in regions:  # score = 1 - exp(-side / 48) of the (square) box side
            side = r.box[2] - r.box[0]
            assert r.score == pytest.approx(1 - np.exp(-side / 48))


def test_haar_boxes_and_scores_equal_opencv_called_directly(composites):
    images, _ = composites
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_FILE)
    detector = load_detector("faces")
    total = 0
    for image in images:
        grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
        plain = np.asarray(cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20)))
        rects, _, weights = cascade.detectMultiScale3(grey, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20),
                                                      outputRejectLevels=True)
        rects, weights = np.asarray(rects).reshape(-1, 4), np.asarray(weights, np.float64).reshape(-1)
        expected = sorted(zip((1 / (1 + np.exp(-weights / 4))).tolist(),
                              [(x, y, x + w, y + h) for x, y, w, h in rects.tolist()]), key=lambda p: -p[0])
        regions = detector.detect(image)
        assert sorted(r.box for r in regions) == sorted((x, y, x + w, y + h) for x, y, w, h in plain.reshape(-1, 4))
        assert [r.box for r in regions] == [b for _, b in expected]
        np.testing.assert_allclose([r.score for r in regions], [s for s, _ in expected], rtol=1e-12)
        total += len(regions)
    assert total >= 17


def test_lbp_boxes_equal_scikit_image_called_directly(composites):
    image = composites[0][2]
    grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    direct = Cascade(lbp_frontal_face_cascade_filename()).detect_multi_scale(
        grey, scale_factor=1.1, step_ratio=1, min_size=(24, 24), max_size=grey.shape, min_neighbor_number=5)
    boxes = sorted((d["c"], d["r"], d["c"] + d["width"], d["r"] + d["height"]) for d in direct)
    raw = load_detector("faces", method="lbp", nms_iou=None).detect(image)  # min_size 20 -> the 24 px window
    assert len(direct) >= 2 and sorted(r.box for r in raw) == boxes
    # by default, greedy suppression: larger boxes first, drop any with IoU > 0.3 against a kept one
    kept: list[tuple[int, ...]] = []
    for box in sorted(boxes, key=lambda b: -(b[2] - b[0])):
        if all(box_iou(np.array([box]), np.array([k]))[0, 0] <= 0.3 for k in kept):
            kept.append(box)
    regions = load_detector("faces", method="lbp").detect(image)
    assert sorted(r.box for r in regions) == sorted(kept) and len(kept) < len(boxes)  # measured: 5 -> 3


@pytest.mark.parametrize("method", ["haar", "lbp"])
def test_blank_image_has_no_faces(method):
    for colour in ((128, 128, 128), (0, 0, 0)):
        assert load_detector("faces", method=method).detect(Image.new("RGB", (320, 240), colour)) == []


def test_huge_image_goes_through_max_side_and_boxes_come_back_in_source_pixels():
    image, truth = _big_face_image()
    haar = load_detector("faces")
    regions = haar.detect(image)
    boxes = _boxes(regions)
    assert (box_iou(truth, boxes).max(1) >= 0.5).all(), boxes
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 5000).all() and (boxes[:, [1, 3]] <= 4000).all()
    # the same as OpenCV on the image shrunk to 1024x819 (area), boxes scaled by 5000/1024 and 4000/819
    assert haar.working_size(image.size) == (1024, 819)
    small = cv2.cvtColor(cv2.resize(np.asarray(image), (1024, 819), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    rects = np.asarray(cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_FILE).detectMultiScale(
        small, 1.1, 5, minSize=(4, 4))).reshape(-1, 4).astype(np.float64)
    scale = np.array([5000 / 1024, 4000 / 819] * 2)
    expected = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1) * scale
    np.testing.assert_allclose(np.sort(boxes, 0), np.sort(expected, 0), rtol=1e-12)

    lbp = load_detector("faces", method="lbp", max_side=512, min_size=300)
    boxes = _boxes(lbp.detect(image))
    assert (box_iou(truth, boxes).max(1) >= 0.5).all(), boxes
    assert boxes[:, 2].max() > 4000 and boxes[:, 2].max() <= 5000  # in source pixels, not working ones


def test_faces_bad_options_and_inputs():
    with pytest.raises(ValueError, match="haar, lbp"):
        load_detector("faces", method="dnn")
    with pytest.raises(TypeError, match="min_neighbors"):
        load_detector("faces", neighbours=3)
    for bad in ({"min_size": 0}, {"scale_factor": 1.0}, {"min_neighbors": -1}, {"max_side": 8}, {"min_size": 2.5},
                {"max_side": True}, {"nms_iou": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            load_detector("faces", **bad)
    with pytest.raises(TypeError, match="PIL.Image"):
        load_detector("faces").detect(np.zeros((32, 32, 3), np.uint8))


def test_greyscale_and_rgba_inputs_are_converted(composites):
    image = composites[0][0]
    detector = load_detector("faces")
    expected = detector.detect(image)
    assert expected and [r.box for r in detector.detect(image.convert("RGBA"))] == [r.box for r in expected]


# -- superpixels -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def photo():
    return Image.open(sample_images()[2]).convert("RGB")  # coffee.jpg, 600x400


def _check_partition_and_boxes(regions, size):
    w, h = size
    masks = np.stack([r.mask for r in regions])
    assert masks.shape == (len(regions), h, w) and masks.dtype == bool
    assert (masks.sum(0) == 1).all()  # every source pixel in exactly one mask
    for r in regions:
        ys, xs = np.nonzero(r.mask)
        assert r.box == (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        assert r.label == 0 and r.score == 1.0


def _relabel_bijective(ours: np.ndarray, direct: np.ndarray) -> None:
    """``ours`` is ``direct`` renumbered: one-to-one segments, ids 0.. in row-major order of first pixels."""
    pairs = np.unique(np.stack([ours.ravel(), direct.ravel()], 1), axis=0)
    assert len(pairs) == len(np.unique(ours)) == len(np.unique(direct))
    _, first = np.unique(ours.ravel(), return_index=True)
    assert np.array_equal(np.unique(ours), np.arange(len(first))) and (np.diff(first) > 0).all()


@pytest.mark.parametrize("method", ["slic", "felzenszwalb"])
def test_superpixels_partition_the_source_image_and_equal_scikit_image(photo, method):
    detector = load_detector("superpixels", method=method)
    assert detector.name == "superpixels" and list(detector.labels) == ["region"]
    regions = detector.detect(photo)
    _check_partition_and_boxes(regions, photo.size)
    small = np.asarray(photo.resize((512, 341), Image.Resampling.BILINEAR))
    if method == "slic":
        direct = segmentation.slic(small, n_segments=64, compactness=10.0, start_label=0, channel_axis=-1)
        assert 40 <= len(regions) <= 80
    else:
        direct = segmentation.felzenszwalb(small, scale=100.0, sigma=0.8, min_size=50, channel_axis=-1)
    ours = detector.label_map(photo)
    assert ours.shape == (341, 512)
    _relabel_bijective(ours, direct)
    assert len(regions) == len(np.unique(direct))
    # the masks are the label map brought up to 600x400 with nearest neighbour: source pixel centre -> working pixel
    rows = [math.floor(Fraction(2 * y + 1, 2) * 341 / 400) for y in range(400)]
    cols = [math.floor(Fraction(2 * x + 1, 2) * 512 / 600) for x in range(600)]
    up = ours[np.ix_(rows, cols)]
    for k, r in enumerate(regions):
        assert np.array_equal(r.mask, up == k)
    assert [r.box for r in detector.detect(photo)] == [r.box for r in regions]  # deterministic


def test_superpixels_small_image_runs_at_source_size():
    image = Image.open(sample_images()[1]).convert("RGB").resize((160, 120))
    regions = load_detector("superpixels", n_segments=12, compactness=20.0).detect(image)
    _check_partition_and_boxes(regions, image.size)
    direct = segmentation.slic(np.asarray(image), n_segments=12, compactness=20.0, start_label=0, channel_axis=-1)
    _relabel_bijective(load_detector("superpixels", n_segments=12, compactness=20.0).label_map(image), direct)
    assert len(regions) == len(np.unique(direct))


def test_superpixels_large_image_masks_at_source_size():
    image = backgrounds()[2].resize((2400, 1800), Image.Resampling.BILINEAR)
    detector = load_detector("superpixels", n_segments=12, max_side=256)
    assert detector.working_size(image.size) == (256, 192)
    regions = detector.detect(image)
    _check_partition_and_boxes(regions, image.size)
    assert 6 <= len(regions) <= 20
    small = np.asarray(image.resize((256, 192), Image.Resampling.BILINEAR))
    _relabel_bijective(detector.label_map(image), segmentation.slic(small, n_segments=12, compactness=10.0,
                                                                      start_label=0, channel_axis=-1))


def test_superpixels_bad_options_and_inputs():
    with pytest.raises(ValueError, match="slic, felzenszwalb"):
        load_detector("superpixels", method="quickshift")
    with pytest.raises(TypeError, match="n_segments"):
        load_detector("superpixels", segments=10)
    for bad in ({"n_segments": 0}, {"compactness": 0}, {"scale": -1.0}, {"sigma": -0.5}, {"min_size": 1.5},
                {"max_side": 4}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            load_detector("superpixels", **bad)
    with pytest.raises(TypeError, match="PIL.Image"):
        load_detector("superpixels").detect("photo.jpg")
