"""``yolo`` (Ultralytics ONNX exports) and ``torchvision`` (local-weight torchvision detectors) backends.

yolo: on the real YOLOv8n export that nudenet ships (AGPL, used here as test data only, never imported), vistok's
detections equal onnxruntime run directly with a letterbox, decode and torchvision NMS written here
independently; synthetic constant-output graphs pin the letterbox mapping, the YOLOv5 layout and the errors.
torchvision: random-init models saved to disk and loaded through vistok give exactly what the model itself gives.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from vistok.regions.base import Region, load_detector
from vistok.regions.detectors.torchvision_detector import ARCHS
from vistok.samples import sample_images

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ yolo helpers
def _nudenet_graph() -> Path | None:
    spec = importlib.util.find_spec("nudenet")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "320n.onnx"
    return path if path.is_file() else None


NUDENET = _nudenet_graph()
needs_nudenet = pytest.mark.skipif(NUDENET is None, reason="nudenet's 320n.onnx (a YOLOv8n export) is not installed; "
                                   "`pip install --no-deps nudenet==3.4.2` provides it")


def _graph(path: Path, output: np.ndarray | None = None, *, input_shape=(1, 3, 320, 320), meta=None,
           nodes=None, outputs=None) -> Path:
    """An ONNX file with one image input whose output is the constant ``output`` (or the given nodes)."""
    if nodes is None:
        nodes = [helper.make_node("Constant", [], ["out"], value=numpy_helper.from_array(np.asarray(output, np.float32)))]
        outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(np.shape(output)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
                              outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if meta:
        helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _v8(rows: list[tuple[float, ...]]) -> np.ndarray:
    """(1, 4 + nc, N) from rows (cx, cy, w, h, score_0, ..., score_nc-1)."""
    return np.asarray(rows, np.float32).T[None]


def _boxes(regions: list[Region]) -> np.ndarray:
    return np.asarray([r.box for r in regions], np.float64).reshape(-1, 4)


# ------------------------------------------------------------------------------------------------ yolo: real graph
def _reference(path: Path, image: Image.Image, conf: float, iou: float, max_det: int) -> list[tuple]:
    """onnxruntime called directly; letterbox, decode and NMS written out here, NMS by torchvision."""
    import cv2

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    side = 320
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    gain = min(side / w, side / h)
    nw, nh = int(round(w * gain)), int(round(h * gain))
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[...] = 114
    x_off, y_off = int((side - nw) / 2), int((side - nh) / 2)
    canvas[y_off:y_off + nh, x_off:x_off + nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    blob = np.ascontiguousarray(np.moveaxis(canvas, -1, 0)[None], np.float32) * np.float32(1 / 255)
    pred = torch.from_numpy(session.run(None, {"images": blob / 1.0})[0][0]).double()  # (4 + nc, N)
    score, label = pred[4:].max(0)
    sel = score > conf
    cx, cy, bw, bh = pred[:4, sel]
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    keep = torchvision.ops.batched_nms(xyxy, score[sel], label[sel], iou)[:max_det]
    found = []
    for k in keep.tolist():
        x0, y0, x1, y1 = xyxy[k].tolist()
        box = ((x0 - x_off) * w / nw, (y0 - y_off) * h / nh, (x1 - x_off) * w / nw, (y1 - y_off) * h / nh)
        box = (min(max(box[0], 0), w), min(max(box[1], 0), h), min(max(box[2], 0), w), min(max(box[3], 0), h))
        if box[2] > box[0] and box[3] > box[1]:
            found.append((box, int(label[sel][k]), float(score[sel][k])))
    return found


@needs_nudenet
def test_nudenet_graph_shapes_and_metadata():
    session = ort.InferenceSession(str(NUDENET), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1] == 3 and not isinstance(inp.shape[2], int) and not isinstance(inp.shape[3], int)
    assert out.shape[1] == 22 and not isinstance(out.shape[2], int)  # 4 box values + 18 classes, dynamic boxes
    probe = session.run(None, {inp.name: np.zeros((1, 3, 320, 320), np.float32)})[0]
    assert probe.shape == (1, 22, 40 * 40 + 20 * 20 + 10 * 10)  # strides 8, 16, 32
    det = load_detector("yolo", model=NUDENET, threads=1).check()
    assert det.input_size == (320, 320)  # dynamic input: the exporter's imgsz metadata
    assert len(det.labels) == 18 and det.labels[1] == "FACE_FEMALE" and det.labels[17] == "BUTTOCKS_COVERED"
    assert load_detector("yolo", model=NUDENET, size=256).input_size == (256, 256)


@needs_nudenet
@pytest.mark.parametrize("conf, iou", [(0.25, 0.45), (0.02, 0.3)])
def test_nudenet_detections_equal_onnxruntime_with_reference_postprocessing(conf, iou):
    det = load_detector("yolo", model=NUDENET, conf=conf, iou=iou, max_det=50, threads=1)
    total = 0
    for path in sample_images():
        image = Image.open(path).convert("RGB")
        got = det.detect(image)
        expected = _reference(NUDENET, image, conf, iou, 50)
        assert [r.label for r in got] == [e[1] for e in expected], path.name
        # x / 255 here and x * (1 / 255) there, and thread counts, differ in the last float32 bits
        np.testing.assert_allclose([r.score for r in got], [e[2] for e in expected], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_boxes(got), np.asarray([e[0] for e in expected]).reshape(-1, 4), atol=1e-3)
        w, h = image.size
        assert all(0 <= r.box[0] < r.box[2] <= w and 0 <= r.box[1] < r.box[3] <= h for r in got)
        total += len(got)
    assert total >= (2 if conf == 0.25 else 10)
    if conf == 0.25:  # the astronaut's face is found where it is
        (face,) = det.detect(Image.open(sample_images()[0]).convert("RGB"))
        assert det.labels[face.label] == "FACE_FEMALE" and face.score > 0.7
        assert np.allclose(face.box, (174, 83, 274, 180), atol=3)


# ------------------------------------------------------------------------------------------------ yolo: synthetic
@pytest.fixture
def v8_graph(tmp_path):
    rows = [
        (160, 160, 64, 32, 0.0, 0.9, 0.0),     # dog, kept
        (164, 160, 64, 32, 0.0, 0.8, 0.0),     # dog, IoU 0.88 with the first: suppressed
        (164, 160, 64, 32, 0.7, 0.0, 0.0),     # cat on the same spot: other class, kept
        (40, 230, 40, 40, 0.0, 0.0, 0.6),      # bird reaching into the bottom padding: clipped
        (160, 20, 40, 20, 0.0, 0.0, 0.95),     # wholly in the top padding: clips to nothing, dropped
        (250, 200, 20, 20, 0.2, 0.1, 0.24),    # below conf 0.25
    ]
    return _graph(tmp_path / "v8.onnx", _v8(rows), meta={"names": "{0: 'cat', 1: 'dog', 2: 'bird'}", "task": "detect"})


def test_letterbox_mapping_wide_image(v8_graph):
    det = load_detector("yolo", model=v8_graph)
    assert det.labels == ["cat", "dog", "bird"] and det.input_size == (320, 320)
    image = Image.new("RGB", (640, 320))  # scale 0.5 -> 320 x 160, 80 grey rows above and below
    got = det.detect(image)
    assert [(det.labels[r.label], r.score) for r in got] == [("dog", pytest.approx(0.9)), ("cat", pytest.approx(0.7)),
                                                            ("bird", pytest.approx(0.6))]
    np.testing.assert_allclose(_boxes(got), [[256, 128, 384, 192],    # (128, 144, 192, 176) input
                                             [264, 128, 392, 192],
                                             [40, 260, 120, 320]])  # y (250 - 80) / 0.5 = 340, clipped
    assert all(isinstance(r, Region) and r.mask is None for r in got)


def test_letterbox_mapping_tall_image_and_uneven_padding(v8_graph):
    det = load_detector("yolo", model=v8_graph, iou=0.95)  # loose NMS: both dogs kept
    image = Image.new("RGB", (213, 640))  # scale 0.5 -> 106.5 -> 106 x 320 (sx = 106 / 213), pad left 107
    got = det.detect(image)
    sx = 106 / 213
    dog = ((128 - 107) / sx, 144 / 0.5, (192 - 107) / sx, 176 / 0.5)
    assert [det.labels[r.label] for r in got] == ["bird", "dog", "dog", "cat"]  # bird (0.95) is inside now
    np.testing.assert_allclose(got[1].box, dog)
    np.testing.assert_allclose(got[0].box, (max(0.0, (140 - 107) / sx), 20, (180 - 107) / sx, 60))
    assert got[0].score == pytest.approx(0.95)


def test_non_square_static_input_and_max_det(tmp_path):
    # input 256 high x 320 wide; a 400 x 400 image scales by 0.64 to 256 x 256, 32 grey columns each side
    out = _v8([(32 + 64, 64, 64, 64, 0.5), (32 + 192, 192, 32, 64, 0.8), (160, 128, 320, 256, 0.3)]
              + [(10, 10, 5, 5, 0.0)] * 5)  # more boxes than the 5 values per box, as in every real export
    det = load_detector("yolo", model=_graph(tmp_path / "rect.onnx", out, input_shape=(1, 3, 256, 320)))
    assert det.input_size == (256, 256 + 64) and det.labels == ["class 0"]
    got = det.detect(Image.new("RGB", (400, 400)))
    np.testing.assert_allclose(_boxes(got), [[(208 - 32) / 0.64, 160 / 0.64, (240 - 32) / 0.64, 224 / 0.64],
                                             [(64 - 32) / 0.64, 32 / 0.64, (128 - 32) / 0.64, 96 / 0.64],
                                             [0, 0, 400, 400]])  # the whole input, clipped to the image
    assert [r.score for r in got] == pytest.approx([0.8, 0.5, 0.3])
    assert len(load_detector("yolo", model=det.model, max_det=2, iou=1.0).detect(Image.new("RGB", (400, 400)))) == 2
    assert load_detector("yolo", model=det.model, conf=0.8).detect(Image.new("RGB", (400, 400))) == []


def test_yolov5_layout_multiplies_objectness(tmp_path):
    rows = np.asarray([(160, 160, 100, 50, 0.5, 0.2, 0.9),   # score 0.45 (class 1)
                       (100, 100, 20, 20, 0.9, 0.1, 0.2),    # 0.18: below conf
                       (300, 300, 20, 40, 1.0, 0.6, 0.3)],   # 0.6 (class 0)
                      np.float32)[None]  # (1, N, 5 + nc)
    det = load_detector("yolo", model=_graph(tmp_path / "v5.onnx", rows), labels=["a", "b"])
    assert det.graph.layout == "v5" and det.labels == ["a", "b"]
    got = det.detect(Image.new("RGB", (320, 320)))
    assert [(r.label, round(r.score, 6)) for r in got] == [(0, 0.6), (1, 0.45)]
    np.testing.assert_allclose(_boxes(got), [[290, 280, 310, 320], [110, 135, 210, 185]])


def test_dynamic_output_layout_found_by_running_once(tmp_path):
    # (1, h, w) from a channel mean: both output axes dynamic, so the layout needs one run to be seen
    nodes = [helper.make_node("ReduceMean", ["images"], ["out"], axes=[1], keepdims=0)]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "h", "w"])]
    path = _graph(tmp_path / "dyn.onnx", input_shape=("b", 3, "h", "w"), nodes=nodes, outputs=outputs,
                  meta={"stride": "32"})
    wide = load_detector("yolo", model=path, size=(64, 96)).check()
    assert wide.graph.layout == "v8" and len(wide.labels) == 60 and wide.labels[-1] == "class 59"
    tall = load_detector("yolo", model=path, size=(96, 64)).check()
    assert tall.graph.layout == "v5" and len(tall.labels) == 59
    meta = _graph(tmp_path / "dyn-meta.onnx", input_shape=("b", 3, "h", "w"), nodes=nodes, outputs=outputs,
                  meta={"imgsz": "[64, 96]"})
    assert load_detector("yolo", model=meta).input_size == (64, 96)  # the exporter's imgsz when size is not given
    with pytest.raises(ValueError, match="multiple of its stride 32"):
        load_detector("yolo", model=path, size=100).check()


@pytest.mark.parametrize("shape", [(1, 7), (1, 2, 3, 4), (2, 10, 100), (1, 4, 100)])
def test_unsupported_output_shape_is_refused(tmp_path, shape):
    det = load_detector("yolo", model=_graph(tmp_path / "bad.onnx", np.zeros(shape, np.float32)))
    text = "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
    with pytest.raises(ValueError, match=r"output shape " + text.replace("(", r"\(").replace(")", r"\)")) as err:
        det.check()
    assert "(1, 4 + classes, boxes)" in str(err.value) and "(1, boxes, 5 + classes)" in str(err.value)


def test_yolo_refuses_bad_graphs_and_options(tmp_path, v8_graph):
    with pytest.raises(ValueError, match="model=PATH of an Ultralytics ONNX export"):
        load_detector("yolo")
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        load_detector("yolo", model=tmp_path / "nowhere.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(ValueError, match="could not be opened as an ONNX graph"):
        load_detector("yolo", model=tmp_path / "junk.onnx").check()
    with pytest.raises(TypeError, match="unknown option.*'confidence'.*valid: model, labels, conf"):
        load_detector("yolo", model=v8_graph, confidence=0.3)
    with pytest.raises(ValueError, match="conf is a number in"):
        load_detector("yolo", model=v8_graph, conf=2)
    with pytest.raises(ValueError, match="does not fit 2 classes"):
        load_detector("yolo", model=v8_graph, labels=["a", "b"]).check()
    with pytest.raises(ValueError, match="fixed 320x320"):
        load_detector("yolo", model=v8_graph, size=640).check()
    seg = _graph(tmp_path / "seg.onnx", np.zeros((1, 39, 100), np.float32), meta={"task": "segment"})
    with pytest.raises(ValueError, match="'segment' export; only detect"):
        load_detector("yolo", model=seg).check()
    two = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(np.zeros((1, 6, 10), np.float32)))
           for n in ("a", "b")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 6, 10]) for n in ("a", "b")]
    with pytest.raises(ValueError, match="has 2 outputs"):
        load_detector("yolo", model=_graph(tmp_path / "two.onnx", nodes=two, outputs=outs)).check()
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        load_detector("yolo", model=v8_graph).detect(np.zeros((8, 8, 3), np.uint8))


# ------------------------------------------------------------------------------------------------ torchvision
IMAGE = Image.open(sample_images()[0]).convert("RGB").resize((200, 150))


def _save(model: torch.nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def _random_model(arch: str, num_classes: int = 91) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models.detection, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    with torch.no_grad():  # random class biases: classes differ in score, so a threshold keeps some boxes
        for name, p in model.named_parameters():
            if any(k in name for k in ("box_predictor.cls_score", "head.classification_head")) and p.ndim == 1:
                p.copy_(torch.randn(p.shape) * 2)
    return model.eval()


def _direct(model: torch.nn.Module, image: Image.Image, threshold: float, max_side: int) -> dict:
    """The model called directly, with the same score threshold and maximum side vistok sets."""
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = threshold
    else:
        model.score_thresh = threshold
    model.transform.max_size = min(model.transform.max_size, max_side)
    x = torchvision.transforms.functional.to_tensor(image)
    with torch.no_grad():
        return model([x])[0]


def _assert_same(regions: list[Region], out: dict, threshold: float) -> None:
    keep = out["scores"] >= threshold
    assert len(regions) == int(keep.sum()) > 0
    np.testing.assert_allclose(_boxes(regions), out["boxes"][keep].double().numpy(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose([r.score for r in regions], out["scores"][keep].double().numpy(), rtol=1e-6)
    assert [r.label for r in regions] == out["labels"][keep].tolist()
    if "masks" in out:
        for r, m in zip(regions, out["masks"][keep]):
            assert r.mask.dtype == bool and r.mask.shape == (150, 200)
            np.testing.assert_array_equal(r.mask, (m[0] > 0.5).numpy())
    else:
        assert all(r.mask is None for r in regions)
    assert all(0 <= r.box[0] <= r.box[2] <= 200 and 0 <= r.box[1] <= r.box[3] <= 150 for r in regions)


@pytest.mark.parametrize("arch, threshold", [("fasterrcnn_mobilenet_v3_large_320_fpn", 0.2),
                                             ("ssdlite320_mobilenet_v3_large", 0.5),
                                             ("maskrcnn_resnet50_fpn", 0.93)])
def test_torchvision_regions_equal_the_model_called_directly(arch, threshold, tmp_path):
    model = _random_model(arch)
    det = load_detector("torchvision", arch=arch, weights=_save(model, tmp_path / "w.pth"), score_threshold=threshold,
                        max_side=160)
    regions = det.detect(IMAGE)
    _assert_same(regions, _direct(model, IMAGE, threshold, 160), threshold)
    assert det.model.transform.max_size == 160 or arch.startswith("ssd")
    coco = getattr(torchvision.models.detection, ARCHS[arch]).COCO_V1.meta["categories"]
    assert det.labels == coco and det.labels[1] == "person" and len(det.labels) == 91


def test_torchvision_checkpoint_forms_labels_and_published_retinanet(tmp_path):
    from safetensors.torch import save_file

    model = _random_model("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=4)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    out = _direct(model, IMAGE, 0.3, 1333)
    for file in ("ckpt.pth", "w.safetensors"):
        det = load_detector("torchvision", arch="fasterrcnn_mobilenet_v3_large_320_fpn", weights=tmp_path / file,
                            num_classes=4, score_threshold=0.3)
        _assert_same(det.detect(IMAGE), out, 0.3)
        assert det.labels == ["class 0", "class 1", "class 2", "class 3"]
    named = load_detector("torchvision", arch="fasterrcnn_mobilenet_v3_large_320_fpn", weights=tmp_path / file,
                          num_classes=4, labels=["bg", "a", "b", "c"])
    assert named.labels == ["bg", "a", "b", "c"]
    # torchvision's published retinanet_resnet50_fpn COCO file runs with eps=0 batch norms; another name keeps 1e-5
    retina = _random_model("retinanet_resnet50_fpn")
    published = _save(retina, tmp_path / "retinanet_resnet50_fpn_coco-eeacb38b.pth")
    (tmp_path / "mine.pth").symlink_to(published)
    det = load_detector("torchvision", arch="retinanet_resnet50_fpn", weights=published, max_side=128,
                        score_threshold=0.999).check()
    assert {m.eps for m in det.model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.0}
    other = load_detector("torchvision", arch="retinanet_resnet50_fpn", weights=tmp_path / "mine.pth").check()
    assert {m.eps for m in other.model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-5}
    for m in retina.backbone.body.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 0.0
    _assert_same(det.detect(IMAGE), _direct(retina, IMAGE, 0.999, 128), 0.999)


def test_torchvision_refuses_bad_weights_and_options(tmp_path):
    ssd = _save(_random_model("ssdlite320_mobilenet_v3_large"), tmp_path / "ssd.pth")
    with pytest.raises(ValueError, match=r"do not fit 'fasterrcnn_mobilenet_v3_large_320_fpn'.*\d+ missing keys "
                                         r"\(.*\d+ unexpected keys .*Pass arch="):
        load_detector("torchvision", arch="fasterrcnn_mobilenet_v3_large_320_fpn", weights=ssd).check()
    with pytest.raises(ValueError, match=r"num_classes=5: \d+ shape mismatches \(file vs model: head"):
        load_detector("torchvision", arch="ssdlite320_mobilenet_v3_large", weights=ssd, num_classes=5).check()
    with pytest.raises(ValueError, match="unknown arch 'yolov8'; supported: fasterrcnn_resnet50_fpn, .*"
                                         "ssdlite320_mobilenet_v3_large"):
        load_detector("torchvision", arch="yolov8", weights=ssd)
    with pytest.raises(ValueError, match="needs weights=PATH of a torchvision state_dict"):
        load_detector("torchvision")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_detector("torchvision", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="could not be read as a torch state_dict"):
        load_detector("torchvision", weights=tmp_path / "junk.pth").check()
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds no state_dict"):
        load_detector("torchvision", weights=tmp_path / "empty.pth").check()
    with pytest.raises(ValueError, match="labels is a list of 91 class names"):
        load_detector("torchvision", weights=ssd, labels=["a", "b"])
    with pytest.raises(ValueError, match="score_threshold is a number in"):
        load_detector("torchvision", weights=ssd, score_threshold=1.5)
    with pytest.raises(TypeError, match="unknown option.*'min_size'.*valid: arch, weights"):
        load_detector("torchvision", weights=ssd, min_size=600)
