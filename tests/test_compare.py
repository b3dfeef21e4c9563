"""vistok compare: the measures on hand-worked examples, the claims' verdicts, a small end-to-end run, the CLI."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.compare import Row, Settings, compare, measures
from vistok.compare.claims import CLAIMS, judge
from vistok.compare.knn import knn_accuracy, pooled
from vistok.compare.perturb import PERTURBATIONS, perturb
from vistok.regions.evaluate import coco_scores
from vistok.samples import sample_images
from vistok.tokens import Tokens

SAMPLES = sample_images()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(SAMPLES[1]).convert("RGB")


# -- perturbations ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_perturbations_keep_the_size_change_pixels_and_repeat(photo: Image.Image, name: str):
    a, b = perturb(photo, name), perturb(photo, name)
    assert a.size == photo.size and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    diff = np.abs(np.asarray(a, np.int16) - np.asarray(photo, np.int16))
    assert 0.5 < diff.mean() < 40  # changed, but the picture is still the same picture


def test_unknown_perturbation_names_the_known_ones(photo: Image.Image):
    with pytest.raises(ValueError, match="blur, noise, jpeg, rotate, crop"):
        perturb(photo, "shear")


# -- bits and agreement -------------------------------------------------------------------------------------

def test_bits_of_hard_soft_and_region_tokens():
    grid = Tokens.from_grid(np.arange(256) % 1024, (16, 16), meta={"vocab_size": 1024})
    assert measures.bits(grid) == 256 * 10
    soft = Tokens(np.zeros((10, 8), np.float32))
    assert measures.bits(soft) == 10 * 8 * 16
    regions = Tokens(np.array([0, 1, 2]), boxes=np.zeros((3, 4)), meta={"vocab_size": 4})
    assert measures.bits(regions) == 3 * 2 + 3 * 64


def test_agreement_of_ids_vectors_and_boxes():
    a = Tokens.from_grid(np.array([1, 2, 3, 4]), (2, 2))
    assert measures.agreement(a, a) == 1.0
    assert measures.agreement(a, Tokens.from_grid(np.array([1, 2, 0, 4]), (2, 2))) == 0.75
    # another count: histogram overlap, {1,2,3,4} against {1,1,2} -> min(1/4, 2/3) + min(1/4, 1/3) = 0.5
    assert measures.agreement(a, Tokens(np.array([1, 1, 2]))) == pytest.approx(0.5)
    x = Tokens(np.array([[1.0, 0.0], [0.0, 2.0]]))
    assert measures.agreement(x, x) == pytest.approx(1.0)
    assert measures.agreement(x, Tokens(np.array([[0.0, 3.0], [5.0, 0.0]]))) == pytest.approx(0.0)
    assert measures.agreement(x, Tokens(np.array([[1.0, -1.0], [1.0, 0.0]]))) == pytest.approx(
        (1 / math.sqrt(2) + 0.0) / 2)


def test_box_f1_matches_each_box_once_with_its_label():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    a = Tokens(np.array([0, 0]), boxes=boxes)
    assert measures.box_f1(a, a) == 1.0
    moved = Tokens(np.array([0, 0]), boxes=boxes + np.array([1, 0, 1, 0]) * [[0], [50]])  # second box moved away
    assert measures.box_f1(a, moved) == pytest.approx(0.5)  # one of two matched on each side: F1 = 2*1/4
    relabelled = Tokens(np.array([1, 1]), boxes=boxes)
    assert measures.box_f1(a, relabelled) == 0.0
    empty = Tokens(np.zeros(0, np.int64), boxes=np.zeros((0, 4)))
    assert measures.box_f1(empty, empty) == 1.0 and measures.box_f1(a, empty) == 0.0


# -- layouts and boundaries --------------------------------------------------------------------------------

def _brute_recall(layout: np.ndarray, reference: np.ndarray, tolerance: float) -> float:
    ly, lx = np.nonzero(layout)
    ry, rx = np.nonzero(reference)
    distances = np.sqrt((ry[:, None] - ly[None, :]) ** 2 + (rx[:, None] - lx[None, :]) ** 2).min(axis=1)
    return float((distances <= tolerance).mean())


def test_layout_edges_of_a_grid_and_of_merged_cells():
    tokens = Tokens.from_grid(np.arange(4), (2, 2), meta={"image_size": [8, 8]})
    edges = measures.layout_edges(tokens, (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[:, 4] = expected[4, :] = True
    assert np.array_equal(edges, expected)
    merged = Tokens(np.arange(3), source=np.array([0, 0, 1, 2]), base_grid=(2, 2))  # top two cells are one token
    edges = measures.layout_edges(merged, (8, 8))
    assert not edges[:4, 4].any() and edges[4:, 4].all() and edges[4, :].all()


def test_layout_edges_of_boxes_are_their_outlines():
    tokens = Tokens(np.array([0]), boxes=np.array([[2, 2, 6, 5]]), meta={"image_size": [10, 10]})
    edges = measures.layout_edges(tokens, (10, 10))
    assert edges.sum() == 2 * 4 + 2 * 3 - 4  # a 4 x 3 outline
    assert edges[2, 2] and edges[4, 5] and not edges[3, 3]


def test_boundary_scores_equal_a_brute_force_count():
    tokens = Tokens.from_grid(np.arange(16), (4, 4))
    layout = measures.layout_edges(tokens, (32, 32))
    rng = np.random.default_rng(0)
    reference = rng.random((32, 32)) < 0.05
    for tolerance in (0.0, 1.0, 2.0, 3.5):
        recall, precision = measures.boundary_scores(layout, reference, tolerance)
        assert recall == pytest.approx(_brute_recall(layout, reference, tolerance))
        assert precision == pytest.approx(_brute_recall(reference, layout, tolerance))
    columns = measures.layout_edges(Tokens.from_grid(np.arange(4), (1, 4)), (32, 32))  # x = 8, 16, 24
    line = np.zeros((32, 32), bool)
    line[:, 1] = True  # 7 px from the first layout column
    assert measures.boundary_scores(columns, line, 2.0) == (0.0, 0.0)
    assert measures.boundary_scores(columns, line, 7.0) == (1.0, pytest.approx(1 / 3))
    assert math.isnan(measures.boundary_scores(layout, np.zeros((32, 32), bool))[0])
    with pytest.raises(ValueError, match="differ in shape"):
        measures.boundary_scores(layout, line[:8])


def test_edge_fidelity_reads_coverage_from_informative_tokens_only():
    rng = np.random.default_rng(0)
    covered = rng.uniform(0.05, 0.95, 400)
    informative = np.c_[covered, rng.normal(size=(400, 5))]  # coverage is the first dimension
    noise = rng.normal(size=(400, 6))
    split = lambda x: ((x[:200], covered[:200]), (x[200:], covered[200:]))  # noqa: E731
    assert measures.edge_fidelity(*split(informative)) > 0.99
    assert measures.edge_fidelity(*split(noise)) < 0.05
    ids = np.minimum((covered * 10).astype(np.int64), 9)  # hard: coverage quantised into 10 words
    r2 = measures.edge_fidelity(*split(ids), vocab=10)
    assert 0.9 < r2 < 0.999  # quantising loses a little
    assert math.isnan(measures.edge_fidelity((noise[:1], covered[:1]), (noise, covered)))


# -- k-NN, AP ----------------------------------------------------------------------------------------------

def test_knn_accuracy_equals_a_brute_force_vote():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(60, 5)), rng.normal(size=(25, 5))
    y_train, y_test = rng.integers(0, 3, 60), rng.integers(0, 3, 25)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    nearest = np.argsort(-(unit(test) @ unit(train).T), axis=1, kind="stable")[:, :5]
    votes = np.array([np.bincount(y_train[row], minlength=3).argmax() for row in nearest])
    assert knn_accuracy(train, y_train, test, y_test, k=5) == pytest.approx(float((votes == y_test).mean()))


def test_pooled_is_the_id_histogram_or_the_mean_vector():
    assert pooled(Tokens(np.array([0, 2, 2, 3])), vocab=5).tolist() == [0.25, 0.0, 0.5, 0.25, 0.0]
    assert pooled(Tokens(np.array([[1.0, 2.0], [3.0, 4.0]]))).tolist() == [2.0, 3.0]


def test_coco_scores_of_perfect_missing_and_shifted_boxes():
    truth = [np.array([[10, 10, 50, 50]], np.float64), np.array([[0, 0, 20, 40]], np.float64)]
    sizes = [(100, 100), (100, 100)]
    perfect = coco_scores(truth, truth, [np.ones(1), np.ones(1)], sizes)
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    none = coco_scores(truth, [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, sizes)
    assert none == {"AP": 0.0, "AP50": 0.0, "AR100": 0.0}
    # IoU of a 40x40 box shifted by 10 px: 30*40 / (2*1600 - 1200) = 0.6, matched at .50-.60 only: AP50 1, AP ~0.2
    shifted = coco_scores(truth[:1], [truth[0] + [10, 0, 10, 0]], [np.ones(1)], sizes[:1])
    assert shifted["AP50"] == pytest.approx(1.0) and shifted["AP"] == pytest.approx(0.3, abs=0.11)


# -- claims ------------------------------------------------------------------------------------------------

def _row(name: str, kind: str, **values: float) -> Row:
    return Row(name, kind=kind, **values)


def test_claims_hold_fail_split_or_go_unmeasured():
    rows = [_row("h", "hard", class_ami=0.3, psnr=20.0, knn=0.9, bits_per_image=100.0, images_per_s=10.0,
                 edge_fidelity=0.5),
            _row("s", "soft", class_ami=0.1, psnr=30.0, knn=0.5, bits_per_image=1000.0, images_per_s=50.0)]
    verdicts = {v.aspect: v for v in judge(rows)}
    assert [c.aspect for c in CLAIMS] == list(verdicts)
    assert verdicts["Interpretability"].verdict == "holds"  # hard 0.3 > soft 0.1, as the claim says
    assert verdicts["Detail preservation"].verdict == "partly"  # soft wins PSNR, hard wins k-NN
    assert verdicts["Computational efficiency"].verdict == "partly"  # hard smaller, soft faster
    assert verdicts["Boundary handling"].verdict == "not measured"  # no soft edge fidelity
    assert "best hard 20.0 dB (h), best soft 30.0 dB (s)" in verdicts["Detail preservation"].measured
    rows[1].class_ami = 0.5
    rows.append(_row("regions:x", "hard", bits_per_image=1.0))
    rows[-1].regions = True
    verdicts = {v.aspect: v for v in judge(rows)}
    assert verdicts["Interpretability"].verdict == "does not hold"
    assert "best hard 0.1 kbit (h)" in verdicts["Computational efficiency"].measured  # region tokens left out
    rows[0].error = "broken"
    assert {v.verdict for v in judge(rows)} == {"not measured"}  # failed rows do not count


# -- end to end --------------------------------------------------------------------------------------------

SMALL = Settings(knn_train=40, knn_test=20, knn_size=56, ap_images=4, scenes=6)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory):
    bad = tmp_path_factory.mktemp("bad") / "notes.jpg"
    bad.write_text("not an image")
    steps: list[str] = []
    result = compare([SAMPLES[1], bad, SAMPLES[2]], ["grid", "patch", "regions:text", "clip"], settings=SMALL,
                     on_step=steps.append)
    return result, steps, str(bad)


def test_compare_measures_what_the_tokenizers_do(small_run):
    result, steps, bad = small_run
    assert result.images == [str(SAMPLES[1]), str(SAMPLES[2])]
    assert list(result.skipped) == [bad] and "image" in result.skipped[bad]
    rows = {r.tokenizer: r for r in result.rows}
    grid, patch = vistok.load("grid"), vistok.load("patch")
    images = [Image.open(p).convert("RGB") for p in SAMPLES[1:3]]
    tokens = grid.encode(images)
    assert rows["grid"].tokens_per_image == pytest.approx(np.mean([len(t) for t in tokens]))
    assert rows["grid"].bits_per_image == pytest.approx(np.mean([len(t) * math.log2(grid.vocab_size) for t in tokens]))
    from vistok.metrics import psnr
    from vistok.viz import working_image

    expected = np.mean([psnr(working_image(im, grid, grid.decode(t).size), grid.decode(t))
                        for im, t in zip(images, tokens)])
    assert rows["grid"].psnr == pytest.approx(expected)
    assert rows["patch"].psnr == 100.0 and rows["patch"].ssim == pytest.approx(1.0)  # all components: lossless
    assert rows["patch"].bits_per_image == pytest.approx(np.mean([len(t) * 768 * 16 for t in patch.encode(images)]))
    for row in (rows["grid"], rows["patch"]):
        assert set(row.change) == set(PERTURBATIONS) and all(0 <= v <= 1.0 + 1e-9 for v in row.change.values())
        assert row.change["rotate"] < row.change["noise"]  # moving the content changes tokens more than noise
        assert 0 <= row.knn <= 1 and set(row.knn_under) == set(PERTURBATIONS)
        assert 0 < row.boundary_recall <= 1 and 0 < row.boundary_precision <= 1
        assert row.edge_fidelity is not None and row.scene_boundary_recall is not None
        assert row.class_ami is not None and row.region_ap is None
    assert rows["grid"].boundary_recall == pytest.approx(rows["patch"].boundary_recall)  # the same 16 px cells
    text = rows["regions:text"]
    assert text.region_ap["set"] == "text" and 0.3 < text.region_ap["AP50"] <= 1.0
    assert text.knn is None and text.edge_fidelity is None and text.psnr is None
    assert rows["clip"].error is not None and "model" in rows["clip"].error  # needs model=PATH; the others went on
    assert len(steps) == 4 * 4 and steps[-1] == "clip: failed"


def test_compare_writes_markdown_html_and_json(small_run, tmp_path: Path):
    result = small_run[0]
    paths = result.write(tmp_path / "report")
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "| grid | hard |" in md and "## Hard-versus-soft claims, measured" in md
    assert "clip failed:" in md and "skipped" in md
    for verdict in result.claims():
        assert verdict.aspect in md and verdict.aspect in page
    assert not re.search(r"(src|href)=['\"]?https?:", page)  # self-contained: works offline
    assert page.count("data:image/png;base64,") == 2
    data = json.loads(paths["json"].read_text())  # standard JSON: no NaN
    assert [r["tokenizer"] for r in data["rows"]] == ["grid", "patch", "regions:text", "clip"]
    assert data["rows"][0]["tokens_per_image"] == result.rows[0].tokens_per_image
    for key, path in paths.items():
        if key.startswith("plot:"):
            assert Image.open(path).size[0] > 400


def test_an_image_one_tokenizer_refuses_is_left_out_of_that_row_only(tmp_path: Path):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.full((4, 3000, 3), 90, np.uint8)).save(strip)  # 750:1, past efficientnet-lite0's bound
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(one)
    result = compare([SAMPLES[1], strip, one], ["grid", "efficientnet-lite0"],
                     settings=Settings(knn=False, ap_images=0, scenes=0))
    grid, cnn = result.rows
    assert grid.error is None and cnn.error is None and result.skipped == {}
    assert cnn.notes == [f"skipped {strip}: " + cnn.notes[0].split(": ", 1)[1]] and "aspect ratio" in cnn.notes[0]
    expected = np.mean([len(vistok.load("efficientnet-lite0").encode(p)) for p in (SAMPLES[1], one)])
    assert cnn.tokens_per_image == pytest.approx(expected)
    assert grid.tokens_per_image == pytest.approx(np.mean([len(vistok.load("grid").encode(p))
                                                           for p in (SAMPLES[1], strip, one)]))
    assert "efficientnet-lite0: skipped" in result.to_markdown()


def test_compare_refuses_bad_arguments_before_any_work(tmp_path: Path):
    with pytest.raises(KeyError, match="did you mean"):
        compare([SAMPLES[0]], ["gird"])
    with pytest.raises(ValueError, match="at least one tokenizer"):
        compare([SAMPLES[0]], [])
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="no image could be read"):
        compare([bad], ["grid"])
    with pytest.raises(ValueError, match="knn_train"):
        Settings(knn_train=-1)
    with pytest.raises(ValueError, match="knn_size at least 8"):
        Settings(knn_size=4)
    with pytest.raises(ValueError, match="scene_size must be at least 48"):
        Settings(scene_size=20)
    assert Settings(knn=False, knn_size=0, scenes=0, scene_size=0).knn_size == 0  # off: nothing to check


# -- CLI ---------------------------------------------------------------------------------------------------

def test_cli_writes_the_report_and_prints_the_verdicts(tmp_path: Path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("no")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["compare", str(SAMPLES[2]), str(bad), "-t", "grid,patch", "--no-knn",
                                      "--ap-images", "0", "--scenes", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "Boundary handling" in result.output
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.html", "compare.json", "compare-size.png",
                                               "compare-robustness.png"}
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert rows[0]["knn"] is None and rows[0]["edge_fidelity"] is not None


@pytest.mark.parametrize(("args", "message"), [
    (["-t", "grid,nope"], "unknown tokenizer"),
    (["-t", " , "], "--tokenizers is empty"),
])
def test_cli_usage_errors(args: list[str], message: str, tmp_path: Path):
    result = CliRunner().invoke(app, ["compare", str(SAMPLES[0]), *args, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.output


def test_cli_out_must_be_a_folder_and_failures_exit_1(tmp_path: Path):
    file = tmp_path / "file"
    file.write_text("")
    result = CliRunner().invoke(app, ["compare", str(SAMPLES[0]), "-t", "grid", "-o", str(file)])
    assert result.exit_code == 2 and "is a file" in result.output
    result = CliRunner().invoke(app, ["compare", str(SAMPLES[0]), "-t", "grid,clip", "--no-knn", "--ap-images", "0",
                                      "--scenes", "0", "-o", str(tmp_path / "r")])
    assert result.exit_code == 1 and "clip:" in result.output
    assert (tmp_path / "r" / "compare.md").is_file()  # the report is still written
