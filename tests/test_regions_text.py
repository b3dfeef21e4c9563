"""The ``text`` detector: DB post-processing on PP-OCRv4's det ONNX finds lines rendered by Pillow at known boxes
(on white and over a photo), its probability map is onnxruntime's on the same tensor, the unclip matches a
hand-computed offset, thresholds act monotonically, huge and tiny images map back to source pixels, and bad
models, options and inputs fail clearly."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vistok.regions import base
from vistok.regions.base import Region, box_iou
from vistok.regions.detectors import text
from vistok.regions.detectors.text import TextDetector, TextRegion, create_text, unclip_rectangle, working_size
from vistok.samples import sample_images

ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")
try:
    MODEL = text.packaged_model()
except ImportError:  # pragma: no cover - the wheel is a test dependency
    MODEL = None
needs_model = pytest.mark.skipif(MODEL is None, reason=text.PIP_MODEL)

LINES = [("Hello world", 36), ("Region tokens 2024", 26), ("The quick brown fox", 20), ("jumps over the lazy dog", 16),
         ("VISTOK", 44), ("Invoice total: $41.07", 24)]


def render(size=(640, 480), lines=LINES, photo=None, fg="black", bg="white", x=30, gap=26):
    """A page with one text line per entry, its Pillow ink boxes (x0, y0, x1, y1) the ground truth; over a photo
    each line sits on a light box 8 px wider than the ink."""
    image = Image.new("RGB", size, bg) if photo is None else Image.open(photo).convert("RGB").resize(size)
    draw, boxes, y = ImageDraw.Draw(image), [], 16
    for i, (line, points) in enumerate(lines):
        font = ImageFont.load_default(points)
        at = (x + 29 * (i % 3), y)
        box = draw.textbbox(at, line, font=font)
        if photo is not None:
            draw.rectangle((box[0] - 8, box[1] - 8, box[2] + 8, box[3] + 8), fill=(245, 244, 236))
        draw.text(at, line, font=font, fill=fg)
        boxes.append(box)
        y = box[3] + gap
    return image, np.asarray(boxes, np.float64)


@pytest.fixture(scope="module")
def detector():
    if MODEL is None:
        pytest.skip(text.PIP_MODEL)
    return TextDetector(threads=2).check()


@pytest.fixture(scope="module")
def page():
    return render()


def matched(regions, truth):
    boxes = np.asarray([r.box for r in regions], np.float64).reshape(-1, 4)
    return box_iou(truth, boxes)


@needs_model
@pytest.mark.parametrize("where", ["white", "photo", "colour"])
def test_every_rendered_line_is_found_once_with_a_tight_box(detector, page, where):
    image, truth = {"white": lambda: page, "photo": lambda: render(photo=sample_images()[0]),
                    "colour": lambda: render(fg=(190, 20, 20), bg=(225, 235, 255))}[where]()
    regions = detector.detect(image)
    iou = matched(regions, truth)
    assert iou.max(1).min() >= 0.6 and iou.max(1).mean() >= 0.75  # measured: min 0.68-0.74, mean 0.84-0.87
    lines = iou.max(0) >= 0.5
    assert sorted(iou.argmax(0)[lines]) == list(range(len(truth)))  # one box per line, none spanning two
    # on white nothing else; the astronaut photo gives one 11 x 6 px false positive (score 0.92) on the suit
    assert (~lines).sum() <= (where == "photo")
    assert all(isinstance(r, TextRegion) and r.label == 0 and 0.5 <= r.score <= 1 for r in regions)
    assert [r.box[1] for r in regions] == sorted(r.box[1] for r in regions)  # reading order
    for r in regions:  # the box is the clipped bounding box of the rotated rectangle
        x0, y0 = np.clip(r.quad.min(0), 0, image.size)
        x1, y1 = np.clip(r.quad.max(0), 0, image.size)
        np.testing.assert_allclose(r.box, (x0, y0, x1, y1), rtol=0, atol=1e-9)


@needs_model
def test_blank_and_tiny_images_give_nothing(detector):
    for size, colour in [((320, 240), "white"), ((200, 100), (90, 90, 90)), ((1, 1), "white"), ((20, 10), "black")]:
        assert detector.detect(Image.new("RGB", size, colour)) == []


@needs_model
def test_tiny_image_is_enlarged_to_32_and_boxes_stay_inside(detector):
    assert working_size(20, 10, 960) == (32, 16, 32, 32)
    image = Image.new("RGB", (28, 12), "white")  # 'Hi' at 10 pt: found after enlarging to 32 x 14
    ImageDraw.Draw(image).text((3, 1), "Hi", font=ImageFont.load_default(10), fill="black")
    tensor, content = detector.preprocess(image)
    assert tensor.shape == (1, 3, 32, 32) and content == (32, 14)
    for region in detector.detect(image):
        assert 0 <= region.box[0] < region.box[2] <= 28 and 0 <= region.box[1] < region.box[3] <= 12


def test_working_size_scales_down_only_and_pads_to_multiples_of_32():
    assert working_size(800, 600, 960) == (800, 600, 800, 608)
    assert working_size(6000, 4000, 960) == (960, 640, 960, 640)
    assert working_size(400, 5000, 960) == (77, 960, 96, 960)
    assert working_size(1000, 1000, 1000) == (1000, 1000, 1024, 1024)
    assert working_size(33, 17, 960) == (33, 17, 64, 32)


@needs_model
def test_preprocess_is_bgr_imagenet_normalised_and_zero_padded(detector, page):
    image = page[0].crop((0, 0, 300, 200))
    tensor, content = detector.preprocess(image)
    assert tensor.dtype == np.float32 and tensor.shape == (1, 3, 224, 320) and content == (300, 200)
    rgb = np.asarray(image, np.float64) / 255
    for c, (channel, mean, std) in enumerate(zip((2, 1, 0), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        np.testing.assert_allclose(tensor[0, c, :200, :300], (rgb[..., channel] - mean) / std, atol=1e-5)
    assert not tensor[0, :, 200:].any() and not tensor[0, :, :, 300:].any()


@needs_model
def test_probability_map_is_onnxruntime_on_the_same_tensor(detector, page):
    tensor, _ = detector.preprocess(page[0])
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: tensor})[0][0, 0]
    got = detector.probability_map(page[0])
    assert got.shape == tensor.shape[2:] == (480, 640)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal(detector.probability_map(tensor), got)
    with pytest.raises(ValueError, match="1 x 3 x H x W"):
        detector.probability_map(tensor[0])
    inside = np.zeros(got.shape, bool)
    for x0, y0, x1, y1 in page[1].astype(int):
        inside[y0:y1, x0:x1] = True
    assert got[inside].mean() > 0.35 and got[~inside].max() < 0.3 * got.max()  # text lights up, paper does not


def test_unclip_moves_each_side_out_by_area_times_ratio_over_perimeter():
    # 40 x 10: A = 400, L = 100, D = 400 * 1.6 / 100 = 6.4
    assert unclip_rectangle(((5.0, 7.0), (40.0, 10.0), 30.0), 1.6) == ((5.0, 7.0), (52.8, 22.8), 30.0)
    assert unclip_rectangle(((0.0, 0.0), (0.0, 0.0), 0.0), 1.6) == ((0.0, 0.0), (0.0, 0.0), 0.0)
    assert unclip_rectangle(((1.0, 2.0), (8.0, 8.0), 0.0), 0.0)[1] == (8.0, 8.0)


def test_post_processing_of_a_known_kernel():
    # pixels x 10..49, y 20..29 at 0.9: the rectangle through their centres is 39 x 9 centred at (30, 25);
    # D = 39 * 9 * 1.6 / (2 * 48) = 5.85, so the box is 50.7 x 20.7
    probability = np.zeros((64, 96), np.float32)
    probability[20:30, 10:50] = 0.9
    (quad, score), = TextDetector().boxes(probability)
    assert score == pytest.approx(0.9)
    np.testing.assert_allclose(quad.min(0), (30 - 25.35, 25 - 10.35), atol=1e-4)
    np.testing.assert_allclose(quad.max(0), (30 + 25.35, 25 + 10.35), atol=1e-4)
    # a rotated kernel keeps its angle and grows by 2D on each side
    probability = np.zeros((200, 200), np.float32)
    corners = cv2.boxPoints(((100, 100), (120, 24), 20)).round().astype(np.int32)
    cv2.fillPoly(probability, [corners], 0.8)
    (quad, score), = TextDetector(unclip_ratio=2.0).boxes(probability)
    contour = cv2.findContours((probability > 0.3).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0][0]
    (_, (w, h), _) = cv2.minAreaRect(contour)
    d = w * h * 2.0 / (2 * (w + h))
    sides = sorted(np.linalg.norm(quad - np.roll(quad, 1, 0), axis=1))
    np.testing.assert_allclose(sides, sorted([w + 2 * d, w + 2 * d, h + 2 * d, h + 2 * d]), rtol=1e-5)
    edge = quad[1] - quad[0] if np.linalg.norm(quad[1] - quad[0]) > 100 else quad[2] - quad[1]
    assert np.degrees(np.arctan2(edge[1], edge[0])) % 180 == pytest.approx(20, abs=1.5)
    assert score == pytest.approx(0.8)


def blobs():
    """Four Gaussian blobs peaking at 0.4, 0.6, 0.8 and 0.95."""
    yy, xx = np.mgrid[:120, :400]
    probability = np.zeros((120, 400), np.float32)
    for i, peak in enumerate((0.4, 0.6, 0.8, 0.95)):
        probability = np.maximum(probability, peak * np.exp(-((xx - 50 - 100 * i) ** 2 / 800 + (yy - 60) ** 2 / 200)))
    return probability


def test_thresholds_are_monotonic():
    probability = blobs()
    counts, areas = [], []
    for box_threshold in (0.2, 0.35, 0.5, 0.7, 0.9):
        found = TextDetector(box_threshold=box_threshold, score_threshold=0).boxes(probability)
        counts.append(len(found))
        areas.append(sorted(cv2.contourArea(q.astype(np.float32)) for q, _ in found)[-1])
    assert counts == [4, 4, 3, 2, 1]  # a blob appears only while its peak exceeds box_threshold
    assert areas == sorted(areas, reverse=True)  # and every kernel shrinks as the threshold rises
    scores = [s for _, s in TextDetector(box_threshold=0.2, score_threshold=0).boxes(probability)]
    kept = [len(TextDetector(box_threshold=0.2, score_threshold=t).boxes(probability)) for t in (0, 0.3, 0.5, 0.7, 1)]
    assert kept == [sum(s >= t for s in scores) for t in (0, 0.3, 0.5, 0.7, 1)]
    assert kept == sorted(kept, reverse=True) and kept[0] == 4 and kept[-1] == 0
    assert len(TextDetector(box_threshold=0.2, score_threshold=0, max_candidates=2).boxes(probability)) == 2
    assert TextDetector(box_threshold=0.2, score_threshold=0, min_size=100).boxes(probability) == []


@needs_model
def test_thresholds_on_a_real_page(detector, page):
    quad_area = lambda r: cv2.contourArea(r.quad.astype(np.float32))  # noqa: E731
    runs = [detector.detect(page[0])] + [TextDetector(box_threshold=t, threads=2).detect(page[0]) for t in (0.7, 0.99)]
    assert [len(run) for run in runs] == [6, 6, 6]
    for loose, strict in zip(runs, runs[1:]):  # a higher binarisation threshold: each line's box shrinks in place
        assert all(quad_area(b) <= quad_area(a) for a, b in zip(loose, strict))
        assert sum(map(quad_area, strict)) < sum(map(quad_area, loose))  # measured 30514 -> 28868 -> 28202
        assert box_iou(np.array([r.box for r in loose]), np.array([r.box for r in strict])).diagonal().min() > 0.8
    assert TextDetector(score_threshold=1.0, threads=2).detect(page[0]) == []


@needs_model
def test_huge_image_is_scaled_and_boxes_come_back_in_source_pixels(detector):
    image = Image.new("RGB", (6000, 4000), "white")
    draw, truth = ImageDraw.Draw(image), []
    for line, points, at in [("Gigapixel headline", 260, (300, 400)), ("second line of text", 180, (2500, 1800)),
                             ("corner", 150, (4800, 3600))]:
        font = ImageFont.load_default(points)
        draw.text(at, line, font=font, fill="black")
        truth.append(draw.textbbox(at, line, font=font))
    assert detector.preprocess(image)[0].shape == (1, 3, 640, 960)
    regions = detector.detect(image)
    assert len(regions) == 3
    assert matched(regions, np.asarray(truth, float)).max(1).min() >= 0.5  # measured 0.95, 0.80, 0.58
    assert max(r.box[2] for r in regions) > 5200 and max(r.box[3] for r in regions) > 3700
    # a tall strip scales each axis by its own rounding
    strip = Image.new("RGB", (400, 5000), "white")
    font = ImageFont.load_default(60)
    ImageDraw.Draw(strip).text((20, 3000), "narrow", font=font, fill="black")
    truth = ImageDraw.Draw(strip).textbbox((20, 3000), "narrow", font=font)
    found = detector.detect(strip)
    assert len(found) == 1 and matched(found, np.asarray([truth], float))[0, 0] >= 0.6  # measured 0.66


@needs_model
def test_rotated_line_keeps_its_angle_in_the_quad(detector):
    image = Image.new("RGB", (700, 300), "white")
    ImageDraw.Draw(image).text((60, 120), "Rotated text line here", font=ImageFont.load_default(40), fill="black")
    rotated = image.rotate(15, expand=True, fillcolor="white", resample=Image.Resampling.BICUBIC)
    (region,) = detector.detect(rotated)
    (_, (w, h), angle) = cv2.minAreaRect(region.quad.astype(np.float32))
    tilt = angle if w > h else angle - 90  # the long side's angle
    assert abs(abs(tilt) - 15) < 2 and max(w, h) > 330 and 25 < min(w, h) < 50  # measured 377 x 35 at -14.6


@needs_model
def test_other_image_modes_are_converted(detector, page):
    expected = [r.box for r in detector.detect(page[0])]
    assert [r.box for r in detector.detect(page[0].convert("RGBA"))] == expected
    grey = [r.box for r in detector.detect(page[0].convert("L"))]
    assert len(grey) == len(expected) and box_iou(np.array(grey), np.array(expected)).diagonal().min() > 0.95
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        detector.detect(np.asarray(page[0]))


@needs_model
def test_registry_and_options():
    detector = base.load_detector("text", max_side=640, threads=1)
    assert isinstance(detector, TextDetector) and isinstance(detector, base.Detector)
    assert detector.name == "text" and detector.labels == ["text"] and detector.max_side == 640
    assert "Differentiable Binarization" in base.detector_info("text").source
    with pytest.raises(TypeError, match="no option 'thresh'.*box_threshold=0.3"):
        create_text(thresh=0.5)
    for bad in [dict(max_side=16), dict(max_side=960.0), dict(box_threshold=1.5), dict(score_threshold=-0.1),
                dict(unclip_ratio=-1), dict(min_size=-1), dict(max_candidates=0), dict(threads=0)]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            create_text(**bad)


def test_model_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx.*does not exist"):
        create_text(model=tmp_path / "nowhere.onnx")
    with pytest.raises(ValueError, match="is a folder"):
        create_text(model=tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not a protobuf")
    detector = create_text(model=junk)  # loading is lazy
    with pytest.raises(ValueError, match="junk.onnx.*not a loadable ONNX model"):
        detector.check()
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps rapidocr-onnxruntime==1.4.4"):
        TextDetector().check()


@needs_model
def test_packaged_model_is_found_without_importing_rapidocr():
    was_imported = "rapidocr_onnxruntime" in sys.modules
    path = text.packaged_model()
    assert path.name == "ch_PP-OCRv4_det_infer.onnx" and path.is_file()
    assert ("rapidocr_onnxruntime" in sys.modules) == was_imported


def test_text_region_is_a_region():
    region = TextRegion((1.0, 2.0, 3.0, 4.0), 0, 0.9, None, np.zeros((4, 2)))
    assert isinstance(region, Region) and region.quad.shape == (4, 2)
