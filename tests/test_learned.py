"""Learned tokenizers: every quantizer trains, saves, loads, encodes to the ids vector-quantize-pytorch gives,
decodes (also from ids on disk), resumes exactly, and refuses bad input with a clear error."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.learned import train_tokenizer
from vistok.learned.evaluate import evaluate, held_out_images
from vistok.learned.model import QUANTIZERS, AutoencoderConfig
from vistok.learned.train import METRICS_FILE, CodebookCollapseWarning, TrainConfig, _log, load_model
from vistok.samples import sample_images
from vistok.weights import bundled, read_weights, write_weights

TINY = dict(width=4, blocks=1, latent_dim=8, codebook_size=16, levels=[5, 3, 3], num_quantizers=2,
            steps=4, batch_size=8, log_every=2, checkpoint_every=2, size=16, pool=64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three small photos and one unreadable file."""
    root = tmp_path_factory.mktemp("images")
    for i, path in enumerate(sample_images()[:3]):
        Image.open(path).convert("RGB").resize((64, 48)).save(root / f"{i}.png")
    (root / "broken.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """One tiny trained folder per quantizer."""
    root = tmp_path_factory.mktemp("runs")
    return {q: train_tokenizer(folder, root / q, quantizer=q, **TINY).parent for q in QUANTIZERS}


def _pixels(image, channels=3):
    array = np.asarray(Image.open(image).convert("RGB"), np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None, :channels]


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_trained_folder_loads_and_encodes_like_the_quantizer_called_directly(quantizer, trained, folder):
    tok = vistok.load(trained[quantizer])
    assert tok.name == "learned" and tok.kind == ("soft" if quantizer == "kl" else "hard")
    tokens = tok.encode(folder / "0.png")
    assert tokens.grid == (12, 16) and tokens.meta["working_size"] == [64, 48]
    model = tok.model
    with torch.no_grad():
        h = model.encoder(_pixels(folder / "0.png") * 2 - 1).flatten(2).transpose(1, 2)
        if quantizer == "kl":
            expected = h[..., : model.config.latent_dim]
            np.testing.assert_allclose(tokens.values, expected[0].numpy(), atol=1e-6)
            return
        out = model.bottleneck.quantizer(h)
    ids = out[1].long()
    if quantizer == "rvq":  # two codebooks packed by mixed radix, level 0 lowest
        ids = ids[..., 0] + model.config.codebook_size * ids[..., 1]
    np.testing.assert_array_equal(tokens.values, ids[0].numpy())
    assert tokens.vocab_size == {"fsq": 45, "vq": 16, "lfq": 16, "rvq": 256}[quantizer]
    assert tokens.values.min() >= 0 and tokens.values.max() < tokens.vocab_size


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_decode_from_ids_on_disk_equals_the_model(quantizer, trained, folder, tmp_path):
    tok = vistok.load(trained[quantizer])
    tokens = tok.encode(folder / "1.png")
    image = tok.decode(tokens)
    assert image.size == (64, 48) and image.mode == "RGB"
    with torch.no_grad():  # the full forward pass reconstructs the same picture
        reference = tok.model(_pixels(folder / "1.png"))["reconstruction"] if quantizer != "kl" else None
    if reference is not None:
        expected = (reference[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        assert np.abs(np.asarray(image).astype(int) - expected.astype(int)).max() <= 1
    # only the ids and the grid, saved with numpy and rebuilt: the same picture
    np.save(tmp_path / "ids.npy", tokens.values)
    again = vistok.Tokens.from_grid(np.load(tmp_path / "ids.npy"), tokens.grid)
    assert np.array_equal(np.asarray(tok.decode(again)), np.asarray(image))


def test_rvq_ids_unpack_to_the_per_level_codes(trained):
    model = vistok.load(trained["rvq"]).model
    codes = torch.tensor([[0, 0], [3, 1], [15, 15]])
    assert model.bottleneck.pack(codes).tolist() == [0, 3 + 16, 255]
    assert torch.equal(model.bottleneck.unpack(model.bottleneck.pack(codes)), codes)


def test_unreadable_files_are_skipped_and_reported(trained):
    for run in trained.values():
        lines = (run / "skipped.txt").read_text().splitlines()
        assert len(lines) == 1 and lines[0].split("\t")[0].endswith("broken.jpg") and "not an image" in lines[0]


@pytest.mark.parametrize("threshold", [0.0, 2.0])
def test_vq_revives_dead_codes_through_the_library(threshold):
    from vistok.learned.model import Autoencoder

    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig(quantizer="vq", width=4, latent_dim=8, codebook_size=16,
                                          kmeans_init=False, dead_code_threshold=threshold)).train()
    codebook = model.bottleneck.quantizer._codebook
    with torch.no_grad():
        codebook.embed[0, 8:] = 1e3          # half the codes far from any encoder output: never chosen
        codebook.embed_avg[0, 8:] = 1e3
    model(torch.rand(4, 3, 16, 16))
    far = codebook.embed[0, 8:].abs().amax(dim=1)
    if threshold:  # replaced by encoder outputs of the batch
        assert (far < 100).all()
    else:
        assert (far > 100).all()


@pytest.mark.parametrize("quantizer", ["vq", "fsq", "kl"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(quantizer, folder, tmp_path):
    options = dict(TINY, steps=6, log_every=1, checkpoint_every=3)
    whole = train_tokenizer(folder, tmp_path / "whole", quantizer=quantizer, **options)
    train_tokenizer(folder, tmp_path / "killed", quantizer=quantizer, stop_after=4, **options)  # killed after step 4
    (tmp_path / "killed" / METRICS_FILE).open("a").write('{"step": 5, "partial": true}\n')  # a line past the checkpoint
    resumed = train_tokenizer(folder, tmp_path / "killed", quantizer=quantizer, resume=True, **options)
    a, _ = read_weights(whole, "learned-tokenizer")
    b, _ = read_weights(resumed, "learned-tokenizer")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / METRICS_FILE).read_text() == (tmp_path / "killed" / METRICS_FILE).read_text()
    assert len((tmp_path / "whole" / METRICS_FILE).read_text().splitlines()) == 6


def test_same_seed_same_model_other_seed_other_model(folder, tmp_path):
    a = read_weights(train_tokenizer(folder, tmp_path / "a", **TINY), "learned-tokenizer")[0]
    b = read_weights(train_tokenizer(folder, tmp_path / "b", **TINY), "learned-tokenizer")[0]
    c = read_weights(train_tokenizer(folder, tmp_path / "c", **dict(TINY, seed=1)), "learned-tokenizer")[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_metrics_log_has_loss_psnr_usage_and_perplexity(trained):
    records = [json.loads(line) for line in (trained["fsq"] / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert r["psnr"] == pytest.approx(10 * math.log10(1 / r["mse"]))
        assert 0 < r["usage"] <= 1 and 1 <= r["perplexity"] <= 45
    assert "usage" not in json.loads((trained["kl"] / METRICS_FILE).read_text().splitlines()[0])


def test_collapse_warns_and_is_logged(tmp_path):
    config = TrainConfig(steps=10, log_every=1)
    collapsed = {"loss": 1.0, "mse": 0.5, "n": 1, "counts": [np.bincount([3] * 500, minlength=256)]}
    with pytest.warns(CodebookCollapseWarning, match="1 of|0.4% of 256 codes"):
        record = _log(collapsed, 1, config, [256], tmp_path / "m.jsonl")
    assert record["collapse"] is True and record["usage"] == pytest.approx(1 / 256)
    healthy = {"loss": 1.0, "mse": 0.5, "n": 1, "counts": [np.bincount(np.arange(500) % 256, minlength=256)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _log(healthy, 2, config, [256], tmp_path / "m.jsonl")["collapse"] is False


def test_evaluate_reports_library_psnr_ssim_and_exact_bits(trained, folder):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    tok = vistok.load(trained["fsq"])
    images, skipped = held_out_images(folder, 3)
    assert len(images) == 3 and len(skipped) == 1 and "broken.jpg" in skipped[0][0]
    result = evaluate(tok, images)
    recon = result["reconstructions"]
    assert result["psnr"] == pytest.approx(np.mean([peak_signal_noise_ratio(a, b, data_range=255)
                                                    for a, b in zip(images, recon)]))
    assert result["ssim"] == pytest.approx(np.mean([structural_similarity(a, b, data_range=255, channel_axis=2)
                                                    for a, b in zip(images, recon)]))
    assert result["bits_per_pixel"] == pytest.approx(12 * 16 * math.log2(45) / (48 * 64))
    assert result["tokens"] == 3 * 12 * 16 and 0 < result["usage"] <= 1
    assert np.array_equal(recon[0], np.asarray(tok.decode(tok.encode(folder / "0.png"))))


# -- bad input ---------------------------------------------------------------------------------------

def test_decode_rejects_ids_outside_the_vocabulary_and_foreign_tokens(trained):
    tok = vistok.load(trained["fsq"])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 45\), got 0..45"):
        tok.decode(vistok.Tokens.from_grid(np.array([0, 45]), (1, 2)))
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode(vistok.Tokens.from_grid(np.array([-1, 2]), (1, 2)))
    with pytest.raises(ValueError, match="vocabulary of 512"):
        tok.decode(vistok.Tokens.from_grid(np.array([1, 2]), (1, 2), meta={"vocab_size": 512}))
    with pytest.raises(ValueError, match="grid"):
        tok.decode(vistok.Tokens(np.array([1, 2])))
    with pytest.raises(ValueError, match="soft"):
        tok.decode(vistok.Tokens.from_grid(np.zeros((2, 3), np.float32), (1, 2)))
    with pytest.raises(ValueError, match="grid .* holds 6 tokens"):
        vistok.Tokens.from_grid(np.array([1, 2]), (2, 3))
    kl = vistok.load(trained["kl"])
    with pytest.raises(ValueError, match="dim 8"):
        kl.decode(vistok.Tokens.from_grid(np.zeros((2, 3), np.float32), (1, 2)))


def test_loading_another_quantizer_or_version_fails_clearly(trained, tmp_path):
    arrays, info = read_weights(trained["fsq"] / "model.safetensors", "learned-tokenizer")
    with pytest.raises(ValueError, match="holds a 'fsq' tokenizer, not 'vq'"):
        vistok.load(trained["fsq"], quantizer="vq").check()
    write_weights(tmp_path / "swapped.safetensors", arrays, {**info, "config": {**info["config"], "quantizer": "vq"}})
    with pytest.raises(ValueError, match="weights do not match a 'vq' tokenizer.*different quantizer or version"):
        load_model(tmp_path / "swapped.safetensors")
    write_weights(tmp_path / "future.safetensors", arrays, {**info, "format": 99})
    with pytest.raises(ValueError, match="format 99.*upgrade vistok"):
        load_model(tmp_path / "future.safetensors")
    write_weights(tmp_path / "odd.safetensors", arrays, {**info, "config": {**info["config"], "colour": 1}})
    with pytest.raises(ValueError, match="does not fit this vistok version"):
        load_model(tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match="holds grid-codebook weights"):
        vistok.load("learned", path=str(bundled("grid-default.safetensors"))).check()
    with pytest.raises(FileNotFoundError, match="vistok train"):
        vistok.load("learned", path=str(tmp_path / "nowhere")).check()
    with pytest.raises(ValueError, match="path=FOLDER"):
        vistok.load("learned").count(64, 64)


def test_training_refuses_to_overwrite_and_to_resume_with_other_options(trained, folder, tmp_path):
    with pytest.raises(FileExistsError, match="--resume"):
        train_tokenizer(folder, trained["fsq"], **TINY)
    with pytest.raises(ValueError, match="different settings \\(levels\\)"):
        train_tokenizer(folder, trained["fsq"], resume=True, **dict(TINY, levels=[3, 3, 3]))
    with pytest.raises(TypeError, match="unknown training option.*colour"):
        train_tokenizer(folder, tmp_path / "x", colour=1)
    with pytest.raises(ValueError, match="unknown quantizer 'pq'"):
        train_tokenizer(folder, tmp_path / "x", quantizer="pq", **TINY)
    with pytest.raises(ValueError, match="levels must each be at least 3"):
        AutoencoderConfig(levels=[8, 2])
    with pytest.raises(ValueError, match="factor must be 4, 8 or 16"):
        AutoencoderConfig(factor=2)
    with pytest.raises(ValueError, match="power-of-2"):
        AutoencoderConfig(quantizer="lfq", codebook_size=1000)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no readable images.*1 unreadable"):
        train_tokenizer(empty, tmp_path / "y", **TINY)
    with pytest.raises(FileNotFoundError, match="fashion-mnist, samples-64"):
        train_tokenizer(tmp_path / "missing", tmp_path / "z", **TINY)


# -- command line ------------------------------------------------------------------------------------

def test_cli_train_resume_and_eval_recon(folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", str(folder), "-t", "fsq", "--levels", "5,3,3", "--width", "4", "--steps", "4",
            "--batch-size", "8", "--size", "16", "--pool", "64", "--log-every", "2", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output and "model.safetensors" in result.output
    python = train_tokenizer(folder, tmp_path / "py", quantizer="fsq", levels=[5, 3, 3], width=4, steps=4,
                             batch_size=8, size=16, pool=64, log_every=2)
    a, b = read_weights(out / "model.safetensors", "learned-tokenizer")[0], read_weights(python, "learned-tokenizer")[0]
    assert all(np.array_equal(a[k], b[k]) for k in a)  # the CLI and Python train the same model
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    result = runner.invoke(app, ["eval-recon", str(out), str(folder)])
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output and "bits per pixel" in result.output and "broken.jpg" in result.output
    as_json = runner.invoke(app, ["eval-recon", str(out), str(folder), "--json"])
    assert as_json.exit_code == 0, as_json.output
    numbers = json.loads(as_json.stdout)  # --json prints the numbers on stdout; skipped files go to stderr
    assert "broken.jpg" in as_json.stderr
    direct = evaluate(vistok.load(out), held_out_images(folder, 3)[0])
    assert numbers["psnr"] == pytest.approx(direct["psnr"]) and numbers["usage"] == pytest.approx(direct["usage"])
    bad = runner.invoke(app, ["train", str(folder), "--levels", "8,x", "--out", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "8,5,5,5" in bad.output
    assert runner.invoke(app, ["eval-recon", "grid", str(folder)]).exit_code == 2


def test_cli_tokenize_takes_a_trained_folder(trained, folder):
    result = CliRunner().invoke(app, ["tokenize", str(folder / "0.png"), "-t", str(trained["fsq"])])
    assert result.exit_code == 0, result.output
    assert "12x16" in result.output or "192" in result.output


# -- the shipped models ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["fsq-fmnist", "fsq-natural64"])
def test_shipped_models_are_small_and_record_their_training_command(name):
    from vistok.tokenizers.learned import SHIPPED

    path = bundled(SHIPPED[name])
    assert path.stat().st_size <= 5 * 2**20
    _, info = read_weights(path, "learned-tokenizer")
    assert info["config"]["quantizer"] == "fsq" and info["training"]["command"].startswith("vistok train ")
    assert info["training"]["step"] == info["training"]["steps"]  # a finished run, not a checkpoint


def test_fsq_fmnist_meets_its_goals_on_the_fashion_mnist_test_set():
    from vistok.learned.data import fashion_mnist

    tok = vistok.load("fsq-fmnist")
    assert tok.count(28, 28) == 49 and tok.encode(Image.new("L", (28, 28))).grid == (7, 7)
    result = evaluate(tok, list(fashion_mnist("test")))
    assert result["images"] == 10000 and result["vocab_size"] == 1000
    assert result["psnr"] >= 23.0 and result["usage"] >= 0.95
    assert result["bits_per_pixel"] == pytest.approx(49 * math.log2(1000) / 784)


def test_fsq_natural64_reconstructs_held_out_photos():
    tok = vistok.load("fsq-natural64")
    images, _ = held_out_images("samples-64", 3)
    assert len(images) == 64 and tok.encode(Image.fromarray(images[0])).grid == (16, 16)
    result = evaluate(tok, images)
    assert result["psnr"] >= 22.0 and result["usage"] >= 0.5


def test_codebooks_too_large_to_build_are_refused_before_allocating():
    with pytest.raises(ValueError, match=r"fsq levels \[100000, 100000, 100000\] give 1,000,000,000,000,000 codes, "
                                         r"over the 1,048,576"):
        AutoencoderConfig(levels=[100000, 100000, 100000])
    with pytest.raises(ValueError, match=r"codebook_size 1,000,000,000,000 is over the 1,048,576 codes"):
        AutoencoderConfig(quantizer="vq", codebook_size=10**12)
    assert AutoencoderConfig(levels=[8, 8, 8, 8, 8, 8]).vocab_size == 262144  # large but buildable
    assert AutoencoderConfig(quantizer="kl", codebook_size=10**12).vocab_size is None  # kl has no codebook
