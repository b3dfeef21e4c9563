"""vistok.datasets: every source kind gives the tokens vistok.load gives image by image; bad images are
quarantined; a killed run resumes to the same bytes; pyarrow and datasets read the shards; the local process
pool and Ray write the same shards as one process; and bad arguments fail before any work."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vistok
from vistok.cli import app
from vistok.datasets import DatasetError, collate, open_dataset, open_source, tokenize_dataset
from vistok.samples import sample_images


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The six sample photos, shrunk to 96 px (fast), plus a text file posing as an image."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for path in sample_images():
        image = Image.open(path).convert("RGB")
        image.thumbnail((96, 96))
        image.save(root / f"{path.stem}.png")
    (root / "broken.png").write_text("not an image")
    return root


def _expected(folder, name="grid", **options):
    tok = vistok.load(name, **options)
    return {p.name: tok.encode(p) for p in sorted(folder.glob("*.png")) if p.name != "broken.png"}


def _same(dataset, expected):
    assert sorted(dataset.keys) == sorted(expected)
    for key, tokens in expected.items():
        got = dataset.get(key)
        assert got.equals(tokens), key
        assert got.meta == tokens.meta


def test_folder_to_shards_equals_encoding_each_image(photos, tmp_path):
    manifest = tokenize_dataset(photos, tmp_path / "out", "grid", shard_size=3, batch_size=2)
    assert manifest["rows"] == 6 and manifest["quarantined"] == 1 and manifest["complete"]
    assert [s["index"] for s in manifest["shards"]] == [0, 1, 2]
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "_quarantine.jsonl").read_text().splitlines()]
    assert quarantine[0]["key"] == "broken.png" and "not an image" in quarantine[0]["reason"]
    import hashlib

    for shard in manifest["shards"]:
        assert hashlib.sha256((tmp_path / "out" / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    dataset = open_dataset(tmp_path / "out")
    _same(dataset, _expected(photos))
    assert len(dataset) == 6 and dataset[-1].equals(dataset[5])
    with pytest.raises(KeyError, match="quarantine"):
        dataset.get("broken.png")
    with pytest.raises(IndexError):
        dataset[6]
    # the shards are plain Parquet: pyarrow and Hugging Face datasets read them
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out")
    assert table.num_rows == 6 and "values" in table.column_names
    from datasets import load_dataset

    hf = load_dataset("parquet", data_files=str(tmp_path / "out" / "*.parquet"), split="train")
    row = hf[0]
    assert np.array_equal(np.asarray(row["values"]), dataset.get(row["key"]).values)


def test_soft_tokens_with_reduction_and_collate(photos, tmp_path):
    tokenize_dataset(photos, tmp_path / "soft", "patch", options={"dim": 12}, reduce=[("pool", {"factor": 2})],
                     shard_size=4)
    dataset = open_dataset(tmp_path / "soft")
    tok = vistok.load("patch", dim=12)
    for key in dataset.keys:
        expected = vistok.reduce(tok.encode(photos / key), "pool", factor=2)
        assert dataset.get(key).equals(expected)
    import torch
    from torch.utils.data import DataLoader

    assert isinstance(dataset, torch.utils.data.Dataset)
    batch = next(iter(DataLoader(dataset, batch_size=6, collate_fn=collate)))
    lengths = [len(t) for t in dataset]
    assert batch["values"].shape == (6, max(lengths), 12)
    assert batch["lengths"].tolist() == lengths and batch["attention_mask"].sum().item() == sum(lengths)
    short = int(np.argmin(lengths))
    assert not batch["values"][short, lengths[short]:].any()


def test_webdataset_parquet_and_hf_sources_give_the_same_tokens(photos, tmp_path):
    expected = _expected(photos)
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in [*sorted(expected), "broken.png"]:
            stem = name.rsplit(".", 1)[0]
            for member, data in ((f"{stem}.png", (photos / name).read_bytes()), (f"{stem}.txt", b"a caption")):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tokenize_dataset(tar_path, tmp_path / "from-tar", "grid")
    tarred = open_dataset(tmp_path / "from-tar")
    assert sorted(tarred.keys) == sorted(f"shard-000.tar/{k.rsplit('.', 1)[0]}" for k in expected)
    for key, tokens in expected.items():
        assert tarred.get(f"shard-000.tar/{key.rsplit('.', 1)[0]}").equals(tokens)

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [*sorted(expected), "broken.png"]
    pq.write_table(pa.table({"key": names, "image": [(photos / n).read_bytes() for n in names]}),
                   tmp_path / "images.parquet")
    tokenize_dataset(tmp_path / "images.parquet", tmp_path / "from-parquet", "grid")
    _same(open_dataset(tmp_path / "from-parquet"), expected)

    import datasets

    hf = datasets.Dataset.from_dict({"key": names, "picture": [str(photos / n) for n in names]})
    hf = hf.cast_column("picture", datasets.Image(decode=False))
    hf.save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DatasetError, match="no image column"):
        tokenize_dataset(tmp_path / "hf", tmp_path / "from-hf", "grid")
    manifest = tokenize_dataset(tmp_path / "hf", tmp_path / "from-hf", "grid", image_column="picture")
    assert manifest["quarantined"] == 1
    _same(open_dataset(tmp_path / "from-hf"), expected)


def test_a_killed_run_resumes_to_the_same_bytes(photos, tmp_path):
    whole = tokenize_dataset(photos, tmp_path / "whole", "grid", shard_size=2)

    def kill(done: int, total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(photos, tmp_path / "killed", "grid", shard_size=2, progress=kill)
    out = tmp_path / "killed"
    # what a kill mid-shard leaves: a half-written temporary file and a shard the manifest does not list
    (out / ".shard-00001.parquet.tmp").write_bytes(b"PAR1 half")
    (out / "shard-00002.parquet").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="unfinished run"):
        tokenize_dataset(photos, out, "grid", shard_size=2)
    with pytest.raises(DatasetError, match="other settings"):
        tokenize_dataset(photos, out, "grid", shard_size=3, resume=True)
    with pytest.raises(ValueError, match="has not finished"):
        open_dataset(out)
    resumed = tokenize_dataset(photos, out, "grid", shard_size=2, resume=True)
    assert [(s["file"], s["rows"], s["sha256"]) for s in resumed["shards"]] == \
        [(s["file"], s["rows"], s["sha256"]) for s in whole["shards"]]
    assert open_dataset(out).keys == open_dataset(tmp_path / "whole").keys
    with pytest.raises(DatasetError, match="already holds a finished dataset"):
        tokenize_dataset(photos, out, "grid", shard_size=2)


@pytest.mark.slow
def test_two_local_workers_write_the_same_shards(photos, tmp_path):
    one = tokenize_dataset(photos, tmp_path / "one", "grid", shard_size=2)
    two = tokenize_dataset(photos, tmp_path / "two", "grid", shard_size=2, workers=2)
    assert [s["sha256"] for s in two["shards"]] == [s["sha256"] for s in one["shards"]]


def test_more_workers_than_shards_and_this_process_helping(photos, tmp_path):
    """This process encodes shards itself while helpers take others from the back of the queue; with more workers
    than shards the surplus is never started. The rows equal a one-process run's, in shard order."""
    one = tokenize_dataset(photos, tmp_path / "one", "grid", shard_size=3)
    many = tokenize_dataset(photos, tmp_path / "many", "grid", shard_size=3, workers=5)
    assert len(one["shards"]) == 3
    assert [s["sha256"] for s in many["shards"]] == [s["sha256"] for s in one["shards"]]
    assert [s["index"] for s in many["shards"]] == [0, 1, 2]


def test_ray_address_without_a_cluster_says_what_to_do(photos, tmp_path):
    pytest.importorskip("ray")
    with pytest.raises(DatasetError, match="ray address 'auto': could not connect.*ray start --head"):
        tokenize_dataset(photos, tmp_path / "out", "grid", engine="ray", ray_address="auto")


@pytest.mark.slow
def test_ray_engine_writes_the_same_shards_as_local(photos, tmp_path):
    pytest.importorskip("ray")
    from vistok.datasets.write import _thread_limits, worker_threads

    # the local run computes with a Ray worker's share of the cores, since a float matmul split over another
    # number of threads may differ in the last bit
    with _thread_limits(worker_threads(2)):
        local = tokenize_dataset(photos, tmp_path / "local", "patch", shard_size=3)
    ray_run = tokenize_dataset(photos, tmp_path / "ray", "patch", shard_size=3, engine="ray", workers=2)
    assert [s["sha256"] for s in ray_run["shards"]] == [s["sha256"] for s in local["shards"]]
    assert ray_run["quarantined"] == 1


@pytest.mark.parametrize("call, error, message", [
    (lambda p, o: tokenize_dataset(p / "missing", o, "grid"), DatasetError, "no such file or folder"),
    (lambda p, o: tokenize_dataset(p, o, "grid", engine="spark"), DatasetError, "engine must be one of local, ray"),
    (lambda p, o: tokenize_dataset(p, o, "grid", shard_size=0), DatasetError, "shard_size must be a positive"),
    (lambda p, o: tokenize_dataset(p, o, "gird"), KeyError, "did you mean 'grid'"),
    (lambda p, o: tokenize_dataset(p, o, "grid", options={"cells": 3}), TypeError, "no option 'cells'"),
    (lambda p, o: tokenize_dataset(p, o, "grid", reduce=[("nope", {})]), KeyError, "nope"),
    (lambda p, o: tokenize_dataset(p, o, "patch", reduce=[("pool", {"factr": 2})]), DatasetError, "--reduce pool"),
])
def test_bad_arguments_fail_before_any_work(photos, tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(photos, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True


def test_bad_inputs_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        tokenize_dataset(tmp_path / "empty", tmp_path / "out", "grid")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        tokenize_dataset(sample_images()[0], tmp_path / "file", "grid")
    (tmp_path / "bad.tar").write_bytes(b"not a tar")
    with pytest.raises(DatasetError, match="not a readable tar file"):
        tokenize_dataset(tmp_path / "bad.tar", tmp_path / "out", "grid")
    with pytest.raises(FileNotFoundError, match="no _manifest.json"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        open_source(str(tmp_path / "*.jpg"))


def test_cli_tokenize_dataset(photos, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["tokenize-dataset", str(photos), "--out", str(out), "-t", "grid", "--shard-size",
                                 "4"])
    assert result.exit_code == 0, result.output
    assert "6 rows in 2 shard(s)" in result.output and "1 image(s) quarantined" in result.output
    again = runner.invoke(app, ["tokenize-dataset", str(photos), "--out", str(out)])
    assert again.exit_code == 2 and "already holds a finished dataset" in again.output
    bad = runner.invoke(app, ["tokenize-dataset", str(photos), "--out", str(tmp_path / "x"), "--engine", "spark"])
    assert bad.exit_code == 2 and "engine must be one of" in bad.output
    shutil.rmtree(out)


def test_count_over_datasets_matches_the_files(photos, tmp_path):
    from vistok.budget.report import count_files, count_stream
    from vistok.datasets.sources import count_inputs

    files = count_files([photos], ["llava-1.5-7b", "qwen2-vl-7b"])
    tokenize_dataset(photos, tmp_path / "tokens", "grid")
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(p.name for p in photos.glob("*.png"))
    pq.write_table(pa.table({"key": names, "image": [(photos / n).read_bytes() for n in names]}),
                   tmp_path / "images.parquet")
    for spec in (tmp_path / "tokens", tmp_path / "images.parquet"):
        total, items = count_inputs(spec)
        report = count_stream(items, ["llava-1.5-7b", "qwen2-vl-7b"], keep=None)
        assert report.summary() == files.summary()
        assert {k: {m: c.image_tokens for m, c in per.items()} for k, per in report.counts.items()} == \
            {k.rsplit("/", 1)[-1]: {m: c.image_tokens for m, c in per.items()} for k, per in files.counts.items()}
        assert total == (6 if spec.name == "tokens" else 7)
    assert "broken.png" in report.errors
    result = CliRunner().invoke(app, ["count", str(tmp_path / "tokens"), "-m", "qwen2-vl-7b", "--summary-only"])
    assert result.exit_code == 0 and "summary over 6 image(s)" in result.output


def test_too_many_token_sets_for_one_file_point_to_datasets(tmp_path, monkeypatch):
    import vistok.tokens as tokens_module

    tokens = vistok.load("grid").encode(sample_images()[0])
    monkeypatch.setattr(tokens_module, "MAX_HEADER_BYTES", 5_000)
    with pytest.raises(ValueError, match="too many for one Tokens file.*vistok tokenize-dataset"):
        tokens_module.save_tokens(tmp_path / "many.safetensors", [tokens] * 20)
    result = CliRunner().invoke(app, ["tokenize", str(sample_images()[0]), "--out", str(tmp_path / "t.parquet")])
    assert result.exit_code == 2 and "vistok tokenize-dataset" in result.output


def test_glob_sources_key_relative_to_the_fixed_part(photos):
    source = open_source(str(photos / "*.png"))
    assert sorted(source.keys) == sorted(p.name for p in photos.glob("*.png"))
    from vistok.datasets.sources import _glob_root

    assert _glob_root("data/*/x*.jpg") == Path("data")
    assert _glob_root("*.jpg") == Path(".")


def test_a_worker_gets_its_share_of_the_cores():
    """A pool worker's BLAS runs on its share of the cores, even though numpy is not imported before the limit."""
    import subprocess
    import sys

    code = ("from vistok.datasets.write import _init_worker; _init_worker(1); from threadpoolctl import "
            "threadpool_info; print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[1]"
