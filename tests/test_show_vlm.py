"""``vistok show --vlm`` and its Python API: the visual tokens a patched small LLaVA's language model keeps
(checked against the patched model itself and against ``reduce_tensor`` on the tower's own features and
signals), a LLaMA-VID context token's attention as a heat map, and one-line CLI errors.

The models are built here with the real focus-vit-s14 tower (224 px, 16 x 16 = 256 visual tokens) and tiny
random language models, saved to a temporary folder and loaded back as ``vistok show --vlm`` loads them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from vistok import viz, vlm  # noqa: E402
from vistok.cli import app  # noqa: E402
from vistok.reducers import reduce_tensor  # noqa: E402
from vistok.reducers.core import method_info  # noqa: E402
from vistok.vlm import llama_vid, shapes, small  # noqa: E402
from vistok.vlm._base import family_of  # noqa: E402
from vistok.vlm.show import _crop_box, is_llama_vid, kept_tokens  # noqa: E402

KEEP = 64


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("show-vlm")
    model, processor = small.build(hidden=32, layers=2, heads=2, seed=1)
    model.save_pretrained(root / "llava")
    processor.save_pretrained(root / "llava")
    lvid = llama_vid.build(hidden=32, layers=1, heads=2, seed=2)
    with torch.no_grad():  # a sharper query-key map, so the attention has one clear peak
        lvid.context_content.key.weight.mul_(1000.0)
    lvid.save(root / "lvid")
    item = next(iter(shapes.questions(1, seed=5, split="test")))
    item.image.save(root / "scene.png")
    (root / "scene.txt").write_text(item.question)
    return {"root": root, "llava": root / "llava", "lvid": root / "lvid", "scene": root / "scene.png"}


@pytest.fixture(scope="module")
def llava(folders):
    return vlm.load(folders["llava"])


@pytest.fixture(scope="module")
def lvid(folders):
    return llama_vid.load(folders["lvid"])


@pytest.fixture(scope="module")
def scene(folders) -> tuple[Image.Image, str]:
    return Image.open(folders["scene"]).convert("RGB"), (folders["root"] / "scene.txt").read_text()


def _inputs(model, processor, image, text=None):
    prompt = vlm.run._prompt(processor, text, 1) if text else processor.image_token
    return dict(processor(images=image, text=prompt, return_tensors="pt"))


def _reference_assign(model, processor, image, method: str, keep: int) -> torch.Tensor:
    """The assignment reduce_tensor gives on the tower's own features and signals (as the patch calls it)."""
    info = method_info(method)
    wanted = {*info.needs, *info.uses} & {"cls_attention", "keys"}
    with torch.no_grad():
        (view,) = family_of(model).encode(model, _inputs(model, processor, image), wanted)
        signals = {name: getattr(view, name)[None] for name in wanted}
        return reduce_tensor(view.tokens[None], method, keep=keep, token_grid=view.grid, **signals).assign[0]


def _painted_kept(picture: Image.Image, panel: int, grid=(16, 16)) -> set[int]:
    """Patches drawn as kept in ``panel``: draw_groups blends kept patches half with a bright palette colour
    (a channel >= 0.55 * 236) and dims dropped ones to a quarter (every channel <= 64)."""
    x0, y0, x1, y1 = picture.info["panels"][panel]
    pixels = np.asarray(picture)
    rows, cols = grid
    kept = set()
    for r in range(rows):
        for c in range(cols):
            x = round(x0 + (c + 0.5) * (x1 - x0 + 1) / cols)
            y = round(y0 + (r + 0.5) * (y1 - y0 + 1) / rows)
            if pixels[y, x].max() > 97:
                kept.add(r * cols + c)
    return kept


@pytest.mark.parametrize("method", ["visionzip", "cls-attention", "tome"])
def test_painted_tokens_are_the_ones_the_patched_model_keeps(llava, scene, method):
    model, processor = llava
    image, _ = scene
    picture = viz.show_vlm(image, model, processor, method, keep=KEEP)
    tokens = picture.info["tokens"]
    assert len(tokens) == KEEP and tokens.base_grid == (16, 16) and len(tokens.source) == 256
    assert tokens.values.shape == (KEEP, model.config.text_config.hidden_size)   # what the LM receives
    # the assignment is reduce_tensor's on the tower's own features and CLS attention / keys
    reference = _reference_assign(model, processor, image, method, KEEP)
    assert np.array_equal(tokens.source, reference.numpy())
    # and the patched model feeds its LM exactly that many visual tokens
    with vlm.patch(model, method, keep=KEEP) as handle, torch.no_grad():
        model(**_inputs(model, processor, image))
        assert handle.stats == tokens.meta["stats"] == [{"image": 0, "views": 1, "before": 256, "after": KEEP}]
    # the picture paints the patches that feed a kept token and dims the others
    members = set(np.flatnonzero(tokens.source >= 0).tolist())
    assert _painted_kept(picture, 1) == members
    if not method_info(method).merges:  # a selection keeps KEEP patches, and they are reduce_tensor's
        assert members == set(np.flatnonzero(reference.numpy() >= 0).tolist()) and len(members) == KEEP
    assert picture.info["answers"] is None
    assert len(picture.info["panels"]) == (3 if "cls_attention" in method_info(method).needs else 2)


def test_question_gives_both_answers_and_the_reduced_prompt_length(llava, scene):
    model, processor = llava
    image, question = scene
    picture = viz.show_vlm(image, model, processor, "visionzip", keep=KEEP, question=question, max_new_tokens=3)
    full = vlm.ask(model, processor, image, question, max_new_tokens=3)
    reduced = vlm.ask(model, processor, image, question, method="visionzip", keep=KEEP, max_new_tokens=3)
    assert picture.info["answers"] == {"full": full.text, "reduced": reduced.text}
    assert reduced.positions == full.positions - 256 + KEEP
    assert picture.height == 320 + 26 + 2 * 19 + 16    # three caption lines under the image


def test_fastv_kept_tokens_follow_the_question(llava, scene):
    model, processor = llava
    image, question = scene
    tokens = kept_tokens(model, processor, image, "fastv", keep=32, layer=1, question=question)
    assert len(tokens) == 32 and int((tokens.source >= 0).sum()) == 32
    assert tokens.meta["stats"][0]["after"] == 32 and tokens.meta["layer"] == 1
    from vistok.vlm.fastv import attach_fastv

    inputs = _inputs(model, processor, image, question)
    with attach_fastv(model, keep=32, layer=1) as state, torch.no_grad():
        model(**inputs)
        kept = set(state.kept_positions[0].tolist())
    positions = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten().tolist()
    assert set(np.flatnonzero(tokens.source >= 0).tolist()) == {i for i, p in enumerate(positions) if p in kept}


def test_keep_at_least_all_tokens_keeps_every_patch(llava, scene):
    model, processor = llava
    tokens = kept_tokens(model, processor, scene[0], "visionzip", keep=300)
    assert np.array_equal(tokens.source, np.arange(256)) and len(tokens) == 256


def test_context_attention_heat_map_peaks_where_the_model_attends(lvid, scene):
    model = lvid
    question = scene[1]
    grey = Image.new("RGB", (224, 224), (128, 128, 128))
    attention = llama_vid.context_attention(model, grey, question).numpy()
    picture = viz.show_context_attention(grey, model, question)
    assert np.allclose(picture.info["attention"], attention)
    assert picture.info["peak"] == np.unravel_index(attention.argmax(), attention.shape)
    assert isinstance(picture.info["answer"], str)
    assert attention.max() > 4 / 256                   # a clear peak, not a flat map
    # on a flat grey image the brightest cell of the drawn heat map is the peak (the ramp brightens with value)
    x0, y0, x1, y1 = picture.info["panels"][1]
    side = y1 - y0 + 1                                   # the heat map is square; the colour bar is to its right
    pixels = np.asarray(picture).astype(np.float64) @ [0.299, 0.587, 0.114]
    centres = [[pixels[round(y0 + (r + 0.5) * side / 16), round(x0 + (c + 0.5) * side / 16)] for c in range(16)]
               for r in range(16)]
    assert (0, *np.unravel_index(int(np.argmax(centres)), (16, 16))) == picture.info["peak"]


def test_context_attention_over_frames_shares_one_scale(lvid, scene):
    model = lvid
    image, question = scene
    frames = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    picture = viz.show_context_attention(frames, model, question)
    assert picture.info["attention"].shape == (2, 16, 16)
    assert np.allclose(picture.info["attention"].sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert len(picture.info["panels"]) == 2              # one heat map per frame


def test_llama_vid_folder_is_detected(folders):
    assert is_llama_vid(folders["lvid"]) and not is_llama_vid(folders["llava"])
    assert not is_llama_vid(folders["root"] / "missing")


def test_crop_box_of_a_centre_cropping_processor():
    from transformers import CLIPImageProcessor

    clip = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert _crop_box(clip, (640, 480)) == pytest.approx([80.0, 0.0, 560.0, 480.0])
    assert _crop_box(None, (640, 480)) is None


# -- the command line -------------------------------------------------------------------------------


def run(*args: object, expect: int):
    result = CliRunner().invoke(app, ["show", *map(str, args)], env={"COLUMNS": "300"})
    assert result.exit_code == expect, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr
    return result


def test_cli_reduce_writes_the_same_png_as_the_api(folders, llava, tmp_path):
    out = tmp_path / "kept.png"
    result = run(folders["scene"], "--vlm", folders["llava"], "--reduce", "visionzip:64", "-o", out, expect=0)
    assert "64 of 256 visual tokens kept (visionzip)" in result.stdout
    model, processor = llava
    expected = viz.show_vlm(Image.open(folders["scene"]), model, processor, "visionzip", keep=64)
    with Image.open(out) as written:
        assert written.format == "PNG" and written.size == expected.size
        assert np.array_equal(np.asarray(written.convert("RGB")), np.asarray(expected))


def test_cli_context_attention_prints_the_answer(folders, lvid, scene, tmp_path):
    out = tmp_path / "context.png"
    question = scene[1]
    result = run(folders["scene"], "--vlm", folders["lvid"], "-q", question, "-o", out, expect=0)
    assert f"answer: {llama_vid.ask(lvid, scene[0], question)}" in result.stdout
    peak = np.unravel_index(llama_vid.context_attention(lvid, scene[0], question).numpy().argmax(), (1, 16, 16))
    assert f"peaks at patch row {peak[1]}, column {peak[2]} of 16x16" in result.stdout
    with Image.open(out) as written:
        assert written.format == "PNG" and written.height == 320 + 26 + 19 + 16


@pytest.mark.parametrize(("args", "code", "wanted"), [
    (["--vlm", "{root}/nothere", "-r", "visionzip:64"], 2, "nothere: no such model folder"),
    (["--vlm", "{llava}", "-q", "what?"], 2, "add --reduce METHOD:K"),
    (["--vlm", "{llava}", "-r", "nosuch:64"], 2, "unknown reduction method 'nosuch'"),
    (["--vlm", "{llava}", "-r", "visionzip:64", "-r", "tome:8"], 2, "one --reduce step"),
    (["--vlm", "{lvid}"], 2, "pass --question TEXT"),
    (["--vlm", "{lvid}", "-q", "what?", "-r", "tome:8"], 2, "--reduce does not apply"),
    (["-q", "what?"], 2, "--question needs --vlm MODEL"),
])
def test_cli_errors_are_one_line(folders, tmp_path, args, code, wanted):
    args = [a.format(root=folders["root"], llava=folders["llava"], lvid=folders["lvid"]) for a in args]
    out = tmp_path / "x.png"
    result = run(folders["scene"], *args, "-o", out, expect=code)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and wanted in lines[0], result.stderr
    assert not out.exists()


def test_cli_unreadable_image_is_one_line(folders, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    result = run(bad, "--vlm", folders["lvid"], "-q", "what?", "-o", tmp_path / "x.png", expect=1)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.png" in lines[0], result.stderr


def test_help_explains_both_modes():
    result = CliRunner().invoke(app, ["show", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.stdout.split())
    assert "--vlm" in text and "LLaMA-VID" in text and "--vlm shapes --reduce visionzip:64" in text


def test_cli_video_errors_are_one_line(folders, tmp_path):
    missing = tmp_path / "missing.mp4"
    result = run(missing, "--vlm", folders["lvid"], "-q", "what?", "-o", tmp_path / "x.png", expect=1)
    assert [line for line in result.stderr.splitlines() if line.strip()] == \
        [f"error: {missing}: no such video file; check the path"]
    clip = tmp_path / "clip.mp4"  # a video for a LLaVA model: not an image, refused before the model loads
    clip.write_bytes(b"\x00\x00\x00 ftypisom")
    result = run(clip, "--vlm", folders["llava"], "-r", "tome:8", "-o", tmp_path / "x.png", expect=1)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "clip.mp4" in lines[0], result.stderr
