"""The small trainable VLM (vistok.vlm.small): built from a tiny random DINOv2 tower and a tiny Llama, trained
a few steps on cached tower features, saved as an ordinary transformers folder and loaded back."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vistok import vlm  # noqa: E402
from vistok.vlm import small  # noqa: E402
from vistok.vlm.run import ask, load  # noqa: E402
from vistok.vlm.shapes import questions  # noqa: E402
from vlm_tiny import SIZE, TINY_LM, tiny_tower  # noqa: E402


def run(folder: Path, **options):
    settings = dict(steps=20, batch_size=8, seed=0, train_images=32, val_questions=16, lr=1e-2, warmup=3,
                    checkpoint_every=10, tower=tiny_tower(), **TINY_LM)
    settings.update(options)
    return small.train(folder, **settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small-vlm")
    metrics = run(folder)
    return folder, metrics


def test_training_lowers_the_loss_and_writes_metrics(trained):
    folder, metrics = trained
    losses = metrics["losses"]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.7 * losses[0]
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["val"]["questions"] == 16
    assert sum(k["questions"] for k in saved["val"]["per_kind"].values()) == 16
    assert 0.0 <= saved["val"]["accuracy"] <= 1.0
    assert not (folder / small.CHECKPOINT).exists()           # the finished run leaves no checkpoint
    assert len(list((folder / "cache").glob("*.npy"))) == 2    # train and val features, float16
    assert np.load(next((folder / "cache").glob("train-*.npy")), mmap_mode="r").dtype == np.float16


def test_saved_folder_loads_and_answers_like_training_evaluation(trained):
    folder, metrics = trained
    model = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    items = list(questions(16, seed=1, split="val", size=SIZE))
    inputs = processor(images=items[0].image, text=vlm.run._prompt(processor, items[0].question, 1),
                       return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == small.prompt_ids(processor, items[0].question, 16)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    result = small.evaluate(model, processor, items)
    # the full pipeline (float32 tower) agrees with the evaluation on cached float16 features
    agree = np.mean([a == b for a, b in zip(result["answers"], metrics["val"]["answers"])])
    assert agree >= 0.9
    model2, processor2 = load(folder)
    assert ask(model2, processor2, items[0].image, items[0].question, max_new_tokens=4).text == \
        result["answers"][0]


def test_cached_path_equals_the_model_forward_and_folding_is_exact():
    model, processor = small.build(tiny_tower(), words=["what", "colour", "red"], seed=3, **TINY_LM)
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, SIZE, SIZE)
    ids = torch.tensor([small.prompt_ids(processor, "what colour", 16)] * 2)
    with torch.no_grad():
        full = model(input_ids=ids, pixel_values=pixels).logits
        feats = small.tower_features(model, pixels)
        plain = small._Trainable(model, torch.zeros(32), torch.ones(32))
        torch.testing.assert_close(plain.logits(feats, ids, torch.ones_like(ids), model.config.image_token_id), full)
        mean, std = torch.randn(32), torch.rand(32) + 0.5
        scaled = small._Trainable(model, mean, std).logits(feats, ids, torch.ones_like(ids),
                                                           model.config.image_token_id)
        small._fold_standardisation(model, mean, std)
        torch.testing.assert_close(model(input_ids=ids, pixel_values=pixels).logits, scaled, atol=1e-4, rtol=1e-4)


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    options = dict(steps=6, checkpoint_every=3, val_questions=0, train_images=16, batch_size=4)
    whole = run(tmp_path / "whole", **options)

    def kill(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", on_step=kill, **options)
    assert (tmp_path / "cut" / small.CHECKPOINT).is_file()
    with pytest.raises(small.TrainError, match="resume"):
        run(tmp_path / "cut", **options)
    with pytest.raises(small.TrainError, match="other settings.*steps"):
        run(tmp_path / "cut", resume=True, **{**options, "steps": 7})
    resumed = run(tmp_path / "cut", resume=True, **options)
    assert resumed["losses"] == whole["losses"]
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_patch_reduces_the_trained_model(trained):
    folder, _ = trained
    model, processor = load(folder)
    item = next(questions(1, seed=5, split="val", size=SIZE))
    inputs = processor(images=item.image, text=f"<image> {item.question}", return_tensors="pt")
    with torch.no_grad(), vlm.patch(model, "pool", keep=4) as handle:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert handle.stats == [{"image": 0, "views": 1, "before": 16, "after": 4}]
    assert out.shape[1] >= inputs["input_ids"].shape[1] + 1
    answer = ask(model, processor, item.image, item.question, method="cls-attention", keep=4)
    assert answer.stats == [{"image": 0, "views": 1, "before": 16, "after": 4}]


def test_vistok_vlm_command_runs_the_trained_folder(trained, tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app

    folder, _ = trained
    item = next(questions(1, seed=5, split="val", size=SIZE))
    item.image.save(tmp_path / "scene.png")
    model, processor = load(folder)
    expected = ask(model, processor, item.image, item.question, method="pool", keep=4, max_new_tokens=4)
    result = CliRunner().invoke(app, ["vlm", str(folder), str(tmp_path / "scene.png"), "-p", item.question,
                                      "-r", "pool:4", "-n", "4", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)["runs"][0]
    assert answer["text"] == expected.text
    assert answer["stats"] == [{"image": 0, "views": 1, "before": 16, "after": 4}]


def test_blind_model_ignores_the_image(tmp_path):
    metrics = run(tmp_path, blind=True, steps=10, val_questions=8)
    assert not list((tmp_path / "cache").glob("*.npy"))        # no tower features needed
    assert np.mean(metrics["losses"][-3:]) < metrics["losses"][0]
    model, processor = load(tmp_path)
    a, b = list(questions(2, seed=7, split="val", size=SIZE))
    with torch.no_grad():
        logits = [model(**processor(images=img, text=f"<image> {a.question}", return_tensors="pt")).logits
                  for img in (a.image, b.image)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    assert [ask(model, processor, q.image, q.question, max_new_tokens=4).text for q in questions(
        8, seed=1, split="val", size=SIZE)] == metrics["val"]["answers"]


def test_linear_projector_option():
    model, _ = small.build(tiny_tower(), words=["a"], projector="linear", **TINY_LM)
    assert model.config.projector_hidden_act == "linear"
    x = torch.randn(3, 32)
    projector = model.model.multi_modal_projector
    with torch.no_grad():  # one affine map: f(a x + b y) = a f(x) + b f(y) for a + b = 1
        torch.testing.assert_close(projector(0.3 * x + 0.7 * x.flip(0)),
                                   0.3 * projector(x) + 0.7 * projector(x.flip(0)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"steps": 0}, "steps must be an integer of at least 1"),
    ({"projector": "conv"}, "projector must be one of mlp, linear"),
    ({"image_size": 50}, "multiple of the tower's patch size 14"),
    ({"feature_layer": 0}, "feature_layer must select"),
    ({"resume": True}, "no checkpoint.pt to resume from"),
    ({"tower": "/nonexistent/tower"}, "not a DINOv2 checkpoint folder"),
])
def test_bad_arguments(tmp_path, options, message):
    with pytest.raises(small.TrainError, match=message):
        run(tmp_path / "out", **options)


def test_cli_help_bad_argument_and_a_tiny_run(tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train-vlm", "--help"])
    assert result.exit_code == 0 and "--resume" in result.output and "--steps" in result.output
    tower = tmp_path / "tower"
    tiny_tower().save_pretrained(tower)
    result = runner.invoke(app, ["train-vlm", str(tmp_path / "a"), "--tower", str(tower), "--projector", "conv"])
    assert result.exit_code == 2
    assert "projector must be one of mlp, linear" in result.output
    assert "Traceback" not in result.output
    args = ["train-vlm", str(tmp_path / "b"), "--tower", str(tower), "--steps", "3", "--batch-size", "4",
            "--train-images", "8", "--val-questions", "4", "--hidden", "32", "--layers", "1", "--heads", "2",
            "--image-size", str(SIZE)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "val accuracy" in result.output
    assert (tmp_path / "b" / "model.safetensors").is_file()
    assert (tmp_path / "b" / "metrics.json").is_file()
    # options left out take the shipped recipe (small.RECIPE), as small.train() does
    result = runner.invoke(app, ["train-vlm", str(tmp_path / "c"), "--tower", str(tower), "--steps", "1",
                                 "--batch-size", "2", "--train-images", "2", "--val-questions", "0", "--hidden", "32",
                                 "--heads", "2"])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "c" / "metrics.json").read_text())["settings"]
    assert settings["image_size"] == small.RECIPE["image_size"] == 112
    assert settings["layers"] == small.RECIPE["layers"]
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["image_seq_length"] == 64 and config["text_config"]["num_hidden_layers"] == settings["layers"]


def test_train_vlm_without_torch_says_what_to_install(tmp_path):
    """As after `pip install vistok` (no torch): one line naming the extra, exit 2, no traceback."""
    import subprocess
    import sys

    block = ("import sys; sys.modules['torch'] = None; from vistok.cli import main; "
             "sys.argv = ['vistok', *sys.argv[1:]]; main()")
    proc = subprocess.run([sys.executable, "-c", block, "train-vlm", "out", "--steps", "1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pip install 'vistok[vlm]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("question_first", [False, True])
def test_a_batch_of_questions_equals_each_question_alone(question_first):
    """_pack embeds the image once for all its questions when the image comes first (a 4-D mask keeps the
    questions apart), one row per question otherwise; either way the loss must equal the mean over the
    questions run one by one as the prompt ask() feeds, token for token."""
    model, proc = small.build(tiny_tower(), question_first=question_first, **TINY_LM)
    image_id, pad = model.config.image_token_id, proc.tokenizer.pad_token_id
    data = small._cache_questions(model, proc, "train", 3, 0, Path("unused"), 3, None, False, 6, True)
    groups = small._encode(proc, data)
    assert [len(g) for g in groups] == [data["image"].count(i) for i in range(3)] and len(groups[0]) > 3
    visual = data["visual"]
    batch = small._pack(groups, visual, image_id, pad)
    assert len(batch["ids"]) == (len(data["image"]) if question_first else 3)
    first = groups[0][0][0]
    assert first.count(image_id) == visual
    assert (first.index(image_id) > 0) == question_first  # "what ... ? <image>" or "<image> what ... ?"
    torch.manual_seed(1)
    feats = torch.randn(3, visual, 32)
    net = small._Trainable(model, torch.zeros(32), torch.ones(32)).eval()
    packed = small._loss(net, feats, batch, image_id)
    total, count = 0.0, 0
    for row, group in enumerate(groups):
        for seq, n_prompt in group:
            ids = torch.tensor([seq])
            logits = net.logits(feats[row:row + 1], ids, torch.ones_like(ids), image_id)[0]
            answer = torch.tensor(seq[n_prompt:])
            total += torch.nn.functional.cross_entropy(logits[n_prompt - 1:len(seq) - 1], answer,
                                                       reduction="sum").item()
            count += len(answer)
    assert packed.item() == pytest.approx(total / count, rel=1e-5)
    q = next(iter(questions(1, seed=0)))
    inputs = proc(images=q.image, text=vlm.run._prompt(proc, q.question, 1), return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == small.prompt_ids(proc, q.question, visual)  # what ask() feeds


def test_export_then_shipped_folder_rebuilds_the_same_model(tmp_path, monkeypatch):
    """export() keeps every weight but the tower's in float16; shipped_folder() puts the real focus-vit-s14
    tower back and writes an ordinary folder that from_pretrained and vistok.vlm.load open."""
    monkeypatch.setenv("VISTOK_CACHE", str(tmp_path / "cache"))
    model, proc = small.build(**TINY_LM)
    model.save_pretrained(tmp_path / "trained")
    proc.save_pretrained(tmp_path / "trained")
    metrics = {"settings": {"steps": 2}, "loss_first": 4.0, "loss_last": 1.0, "losses": [4.0, 1.0],
               "val": {"accuracy": 0.5, "questions": 2, "per_kind": {}, "answers": ["red", "no"]}}
    (tmp_path / "trained" / "metrics.json").write_text(json.dumps(metrics))
    small.export(tmp_path / "trained", tmp_path / "ship")
    shipped = json.loads((tmp_path / "ship" / "metrics.json").read_text())  # the summary, not every loss
    assert shipped == {"settings": {"steps": 2}, "loss_first": 4.0, "loss_last": 1.0,
                       "val": {"accuracy": 0.5, "questions": 2, "per_kind": {}}}
    size = sum(f.stat().st_size for f in (tmp_path / "ship").iterdir())
    assert size < 200_000  # the 21 M-parameter tower is not in it
    folder = small.shipped_folder(tmp_path / "ship")
    assert folder.parent == tmp_path / "cache" and small.shipped_folder(tmp_path / "ship") == folder
    again, proc2 = vlm.load(folder)
    rounded = {name: value if name.startswith("model.vision_tower.") else value.half().float()
               for name, value in model.state_dict().items()}
    for name, value in again.state_dict().items():
        torch.testing.assert_close(value, rounded[name], atol=0, rtol=0, msg=name)
    model.load_state_dict(rounded)
    q = next(iter(questions(1, seed=2, split="test")))
    assert vlm.ask(again, proc2, q.image, q.question, max_new_tokens=3).token_ids == \
        vlm.ask(model, proc, q.image, q.question, max_new_tokens=3).token_ids
    with pytest.raises(FileNotFoundError, match="no weights.safetensors"):
        small.shipped_folder(tmp_path / "nothing")


def test_cli_llama_vid_tokens_train_and_bad_combinations(tmp_path):
    from typer.testing import CliRunner

    from vistok.cli import app

    tower = tmp_path / "tower"
    tiny_tower().save_pretrained(tower)
    runner = CliRunner()
    for args, message in ((["--grid", "2"], "--grid needs --tokens llama-vid"),
                          (["--video"], "--video needs --tokens llama-vid"),
                          (["--tokens", "few"], "--tokens must be full or llama-vid"),
                          (["--tokens", "llama-vid", "--grid", "1x0"], "--grid must be G or RxC"),
                          (["--tokens", "llama-vid", "--question-first"], "--question-first applies"),
                          (["--tokens", "llama-vid", "--loss-weighting", "sqrt-span"], "--loss-weighting applies"),
                          (["--loss-weighting", "equal", "--tower", str(tower)],
                           "loss_weighting must be one of token, sqrt-span")):
        result = runner.invoke(app, ["train-vlm", str(tmp_path / "x"), *args])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    args = ["train-vlm", str(tmp_path / "two"), "--tokens", "llama-vid", "--tower", str(tower), "--steps", "3",
            "--batch-size", "2", "--train-images", "6", "--val-questions", "4", "--hidden", "32", "--layers", "1",
            "--heads", "2", "--image-size", str(SIZE), "--grid", "1x2", "--no-context"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["val"]["questions"] == 4 and metrics["tokens_per_image"] == 2  # two pooled halves
    assert metrics["settings"]["grid"] == [1, 2] and metrics["settings"]["context"] is False


def test_shipped_model_answers_held_out_test_questions(tmp_path, monkeypatch):
    """vistok.vlm.load("shapes"): the packaged weights plus the focus-vit-s14 tower, an ordinary folder that
    answers test questions (held-out colour-shape pairs included) far above the blind model."""
    monkeypatch.setenv("VISTOK_CACHE", str(tmp_path))
    shipped = json.loads((small.SHIPPED / "metrics.json").read_text())
    assert shipped["settings"]["train_images"] == 16000 and not shipped["settings"]["blind"]
    assert {k: shipped["settings"][k] for k in small.RECIPE} == small.RECIPE  # the recipe train-vlm defaults to
    default_weighting = inspect.signature(small.train).parameters["loss_weighting"].default
    assert shipped["settings"].get("loss_weighting", "token") == default_weighting == "sqrt-span"
    model, processor = vlm.load("shapes")
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert transformers.AutoProcessor.from_pretrained(small.shipped_folder()).tokenizer.vocab_size == \
        processor.tokenizer.vocab_size
    items = list(questions(60, seed=0, split="test", size=small.RECIPE["image_size"]))
    result = small.evaluate(model, processor, items)
    assert result["accuracy"] >= 0.75  # 0.87 when shipped; the blind model gets 0.25 of 300 questions of this split
    assert result["per_kind"]["shape"]["accuracy"] >= 0.9 and result["per_kind"]["text"]["accuracy"] >= 0.5
    with vlm.patch(model, "pool", factor=2) as handle:
        vlm.ask(model, processor, items[0].image, items[0].question)
    assert handle.stats == [{"image": 0, "views": 1, "before": 64, "after": 16}]


def test_span_weights_on_a_hand_worked_row():
    """Two answers in one row (``cat </s>`` and a 4-token caption), a prompt between them, padding after: every
    token of an n-token answer weighs 1/sqrt(n) with sqrt-span, 1 with token, 0 off the answers."""
    t = torch.tensor([[-100, 7, 2, -100, -100, 5, 6, 8, 2, -100],
                      [3, 2, -100, -100, -100, -100, -100, -100, -100, 9]])
    token = small.span_weights(t, "token")
    assert token.tolist() == [[0, 1, 1, 0, 0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]]
    w = small.span_weights(t, "sqrt-span")
    half, root2 = 0.5, 2 ** -0.5
    expected = [[0, root2, root2, 0, 0, half, half, half, half, 0], [root2, root2, 0, 0, 0, 0, 0, 0, 0, 1.0]]
    assert torch.allclose(w, torch.tensor(expected))
    with pytest.raises(ValueError, match="token, sqrt-span"):
        small.span_weights(t, "equal")


def test_weighted_loss_is_the_weighted_mean_of_token_losses():
    """The sqrt-span loss equals a brute-force weighted mean over the packed batch; token weighting equals
    ``cross_entropy``'s plain mean."""
    torch.manual_seed(0)
    targets = torch.tensor([[-100, 4, 2, -100, 5, 6, 7, 2]])
    logits = torch.randn(1, 8, 12)

    class Net:
        def logits(self, *args):
            return logits

    batch = {"image": torch.tensor([0]), "ids": None, "mask": None, "positions": None, "targets": targets}
    features = torch.zeros(1, 1, 1)
    logp = torch.log_softmax(logits[0], -1)
    terms = [(-logp[i, int(c)]).item() for i, c in enumerate(targets[0]) if c != -100]
    weights = [2 ** -0.5] * 2 + [0.5] * 4
    brute = sum(w * x for w, x in zip(weights, terms)) / sum(weights)
    assert small._loss(Net(), features, batch, 0, "sqrt-span").item() == pytest.approx(brute, rel=1e-6)
    assert small._loss(Net(), features, batch, 0).item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_sqrt_span_training_runs_and_is_recorded(tmp_path):
    metrics = run(tmp_path / "w", loss_weighting="sqrt-span", steps=4, val_questions=4)
    assert metrics["settings"]["loss_weighting"] == "sqrt-span"
    assert np.isfinite(metrics["loss_last"])
    with pytest.raises(small.TrainError, match="loss_weighting must be one of token, sqrt-span"):
        run(tmp_path / "bad", loss_weighting="equal")
