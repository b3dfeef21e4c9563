"""Files of a training run and of a grid codebook: resume state without pickle, one-line errors for damaged
files and impossible settings, and the k-means fit's progress, early stop and results."""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.learned import train_tokenizer
from vistok.learned.train import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from vistok.samples import sample_images
from vistok.tokenizers.grid import GridTokenizer, KMeansSettings, fit_kmeans
from vistok.weights import read_weights

TINY = dict(quantizer="fsq", width=4, levels=[5, 3, 3], steps=4, batch_size=8, log_every=1, checkpoint_every=2,
            size=16, pool=64)
CLI_TINY = ["-t", "fsq", "--levels", "5,3,3", "--width", "4", "--steps", "4", "--batch-size", "8", "--size", "16",
            "--pool", "64", "--log-every", "1", "--checkpoint-every", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for i, path in enumerate(sample_images()[:2]):
        Image.open(path).convert("RGB").resize((64, 48)).save(root / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def killed(folder, tmp_path_factory):
    """A run stopped after step 2 (its checkpoint), to be copied and damaged by each test."""
    out = tmp_path_factory.mktemp("runs") / "killed"
    train_tokenizer(folder, out, stop_after=2, **TINY)
    return out


def _copy(run, to):
    to.mkdir()
    for name in os.listdir(run):
        (to / name).write_bytes((run / name).read_bytes())
    return to


def _one_line(text):
    return " ".join(text.split())


class _Planted:
    """Unpickling this makes a folder: proof that the loader ran code from the file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# -- resume state ------------------------------------------------------------------------------------

def test_checkpoint_is_safetensors_with_a_json_record(killed):
    from safetensors import safe_open

    with safe_open(str(killed / CHECKPOINT_FILE), framework="pt") as handle:
        record = json.loads(handle.metadata()["vistok_checkpoint"])
        keys = set(handle.keys())
    assert record["step"] == 2 and record["format"] == 1 and record["settings"]["train"]["steps"] == 4
    assert record["param_groups"][0]["betas"] == [0.9, 0.999]
    assert any(k.startswith("model.encoder.") for k in keys) and any(k.endswith(".exp_avg_sq") for k in keys)
    assert not (killed / "checkpoint.pt").exists()


def test_save_and_load_checkpoint_restore_model_and_adam_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    settings = {"model": {"a": 1}, "train": {"b": [1, 2]}, "data": "x"}
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, 3, settings)
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    assert load_checkpoint(tmp_path / "c.safetensors", model2, optimizer2, settings) == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert s2["param_groups"][0]["lr"] == 0.01 and tuple(s2["param_groups"][0]["betas"]) == (0.9, 0.999)
    for p in s1["state"]:
        assert s1["state"][p].keys() == s2["state"][p].keys()
        assert all(torch.equal(s1["state"][p][k], s2["state"][p][k]) for k in s1["state"][p])
    with pytest.raises(CheckpointError, match=r"different settings \(b\)"):
        load_checkpoint(tmp_path / "c.safetensors", model2, optimizer2, {**settings, "train": {"b": [1]}})
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_checkpoint(tmp_path / "c.safetensors", torch.nn.Linear(3, 4), optimizer2, settings)


@pytest.mark.parametrize("where", ["checkpoint.pt", CHECKPOINT_FILE])
def test_resume_never_runs_a_planted_pickle(where, killed, folder, tmp_path):
    run = _copy(killed, tmp_path / "run")
    (run / CHECKPOINT_FILE).unlink()
    marker = tmp_path / "pwned"
    torch.save({"model": _Planted(str(marker))}, run / where)
    with pytest.raises(CheckpointError, match=re.escape(str(run / where))) as caught:
        train_tokenizer(folder, run, resume=True, **TINY)
    assert "cannot resume" in str(caught.value) and "--out" in str(caught.value)
    assert not marker.exists()
    result = CliRunner().invoke(app, ["train", str(folder), *CLI_TINY, "--out", str(run), "--resume"])
    assert result.exit_code == 2 and not marker.exists()
    assert "Traceback" not in result.output and "cannot resume" in _one_line(result.output)
    with pytest.raises(FileExistsError, match="--resume"):  # an old run still counts as a run
        train_tokenizer(folder, run, **TINY)


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_a_damaged_checkpoint_is_one_clear_line(damage, killed, folder, tmp_path):
    run = _copy(killed, tmp_path / "run")
    path = run / CHECKPOINT_FILE
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "foreign": b""}[damage])
    if damage == "foreign":  # a valid safetensors file that is not a vistok checkpoint
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    expected = "no vistok checkpoint record" if damage == "foreign" else "truncated or corrupt"
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is truncated or corrupt.*cannot resume"):
        train_tokenizer(folder, run, resume=True, **TINY)
    result = CliRunner().invoke(app, ["train", str(folder), *CLI_TINY, "--out", str(run), "--resume"])
    text = _one_line(result.output)
    assert result.exit_code == 2, result.output
    assert "Aborted" not in text and "Traceback" not in text and expected in text and CHECKPOINT_FILE in text


def test_resume_drops_a_metrics_line_cut_short_and_names_a_broken_one(killed, folder, tmp_path):
    whole = train_tokenizer(folder, tmp_path / "whole", **TINY).parent
    cut = _copy(killed, tmp_path / "cut")
    with (cut / METRICS_FILE).open("a") as handle:
        handle.write('{"step": 3, "lo')  # a kill in the middle of writing the line of step 3
    train_tokenizer(folder, cut, resume=True, **TINY)
    assert (cut / METRICS_FILE).read_text() == (whole / METRICS_FILE).read_text()
    a, b = (read_weights(run / MODEL_FILE, "learned-tokenizer")[0] for run in (whole, cut))
    assert all(np.array_equal(a[k], b[k]) for k in a)

    broken = _copy(killed, tmp_path / "broken")
    lines = (broken / METRICS_FILE).read_text().splitlines()
    (broken / METRICS_FILE).write_text("\n".join([lines[0], '{"step": 2, bad', *lines[1:]]) + "\n")
    path = re.escape(str(broken / METRICS_FILE))
    with pytest.raises(ValueError, match=f"{path} line 2 is not a metrics record \\(not JSON: .*column 13\\)"):
        train_tokenizer(folder, broken, resume=True, **TINY)
    (broken / METRICS_FILE).write_text("\n".join([lines[0], '["no step"]', *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=f"{path} line 2 is not a metrics record \\(no step\\)"):
        train_tokenizer(folder, broken, resume=True, **TINY)
    result = CliRunner().invoke(app, ["train", str(folder), *CLI_TINY, "--out", str(broken), "--resume"])
    assert result.exit_code == 2 and "line 2 is not a metrics record" in _one_line(result.output)


def test_a_batch_larger_than_the_data_is_refused_before_allocating(folder, tmp_path):
    with pytest.raises(ValueError, match="batch_size 100000000 is more than the 64 training images .*use at most 64"):
        train_tokenizer(folder, tmp_path / "big", **dict(TINY, batch_size=100_000_000))
    assert not (tmp_path / "big").exists()
    args = [("100000000" if a == "8" else a) for a in CLI_TINY]  # 8 is the batch size
    result = CliRunner().invoke(app, ["train", str(folder), *args, "--out", str(tmp_path / "big")])
    assert result.exit_code == 2 and "use at most 64" in _one_line(result.output)
    assert "Traceback" not in result.output
    train_tokenizer(folder, tmp_path / "full", **dict(TINY, batch_size=64, steps=1))  # the whole pool is fine


def test_a_truncated_model_file_is_reported_as_damaged_not_missing(killed, tmp_path):
    run = _copy(killed, tmp_path / "run")
    data = (run / MODEL_FILE).read_bytes()
    (run / MODEL_FILE).write_bytes(data[: len(data) // 2])
    message = f"{re.escape(str(run / MODEL_FILE))}: truncated safetensors file"
    with pytest.raises(ValueError, match=message):
        vistok.load(run).check()
    with pytest.raises(ValueError, match=message):
        vistok.load(run / MODEL_FILE).check()
    result = CliRunner().invoke(app, ["tokenize", str(sample_images()[0]), "-t", str(run)])
    assert result.exit_code != 0 and "truncated safetensors file" in _one_line(result.output)
    assert "neither" not in result.output and "Traceback" not in result.output


# -- grid codebook -----------------------------------------------------------------------------------

def _blobs(centres, per, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.01 * rng.standard_normal((per, centres.shape[1])) for c in centres]).astype(np.float32)


def test_fit_kmeans_finds_separated_clusters_and_reports_each_step():
    centres = np.random.default_rng(1).uniform(0, 1, (8, 12))
    data = _blobs(centres, 250)
    steps = []
    book = fit_kmeans(data, 8, KMeansSettings(batch_size=500, max_epochs=5, tol=0.0), seed=0,
                      on_step=lambda done, total: steps.append((done, total)))
    assert book.shape == (8, 12) and book.dtype == np.float32
    nearest = np.sqrt(((centres[:, None] - book[None]) ** 2).sum(-1)).min(axis=1)
    assert nearest.max() < 0.01  # every true centre has a word next to it
    assert steps == [(i, 20) for i in range(1, 21)]  # 4 batches per epoch, 5 epochs, no early stop
    again = fit_kmeans(data, 8, KMeansSettings(batch_size=500, max_epochs=5, tol=0.0), seed=0)
    assert np.array_equal(book, again)


def test_fit_kmeans_stops_early_subsamples_and_checks_its_settings():
    data = _blobs(np.eye(4, 6), 300)
    steps = []
    fit_kmeans(data, 4, KMeansSettings(batch_size=400, max_epochs=50, tol=1e-3),
               on_step=lambda d, t: steps.append((d, t)))
    assert steps[-1] == (150, 150) and len(steps) < 150 and steps[-2][0] < 150  # stopped, then said "done"
    steps.clear()
    fit_kmeans(data, 4, KMeansSettings(batch_size=100, max_epochs=1, tol=0.0, max_cells=200),
               on_step=lambda d, t: steps.append((d, t)))
    assert steps[-1] == (2, 2)  # 200 of the 1,200 cells: two batches of 100
    for bad in (dict(batch_size=0), dict(max_epochs=0), dict(max_cells=-1), dict(tol=-1.0), dict(tol=float("nan"))):
        with pytest.raises(ValueError, match="k-means"):
            KMeansSettings(**bad)


def test_grid_fit_reports_progress_and_gives_a_working_codebook(tmp_path):
    images = [Image.open(p).convert("RGB") for p in sample_images()[:2]]
    steps = []
    tok = GridTokenizer.fit(images, cell=16, vocab=32, max_side=64, scales=(1.0,), seed=0,
                            on_step=lambda d, t: steps.append((d, t)))
    assert tok.codebook.shape == (32, 768) and steps and steps[-1][0] == steps[-1][1]
    tokens = tok.encode(images[0])
    assert tokens.values.max() < 32 and tok.decode(tokens).size == (16 * tokens.grid[1], 16 * tokens.grid[0])
    tok.save_weights(tmp_path / "book.safetensors")
    loaded = vistok.load("grid", codebook=str(tmp_path / "book.safetensors"), max_side=64)
    assert np.array_equal(loaded.codebook, tok.codebook)
    with pytest.raises(ValueError, match="at least vocab=4096 cells"):
        GridTokenizer.fit(images, vocab=4096, max_side=64)


def test_the_shipped_grid_codebook_still_loads():
    tok = vistok.load("grid")
    assert tok.codebook.shape == (1024, 768) and tok.encode(Image.new("RGB", (64, 32))).grid == (2, 4)


def test_cli_fit_codebook_writes_a_loadable_codebook(tmp_path):
    for i, path in enumerate(sample_images()[:2]):
        Image.open(path).convert("RGB").resize((96, 64)).save(tmp_path / f"{i}.png")
    out = tmp_path / "book.safetensors"
    result = CliRunner().invoke(app, ["fit-codebook", str(tmp_path), "--vocab", "16", "--max-side", "64",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert vistok.load("grid", codebook=str(out)).vocab_size == 16
