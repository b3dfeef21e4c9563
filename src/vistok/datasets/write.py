"""Tokenize a whole dataset into Parquet shards, resumably, with memory bounded by the batch.

Shard ``i`` holds the source's images ``i * shard_size`` up to the next shard's first, in source order, minus
the bad ones, which go to the quarantine (key and reason) instead of stopping the run. Each shard is written to a
temporary file one row group per batch and renamed when complete; ``manifest.json`` lists the finished shards with
their row counts and SHA-256 and is rewritten atomically after each one. A rerun with ``resume`` keeps the listed
shards and redoes the rest, so a kill loses at most the shards in flight and never duplicates a row.

Engines: ``local`` runs shards in this process, helped by ``workers - 1`` spawned processes; ``ray`` hands them to a
Ray Data ``map_batches`` actor pool (one tokenizer per actor; GPUs given to actors when asked) on a local instance
or a running cluster. Both run :func:`encode_shard`, so they write the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vistok.datasets.sources import Source, open_source

__all__ = ["tokenize_dataset", "encode_shard", "DatasetError", "MANIFEST", "FORMAT", "ENGINES", "Job"]

MANIFEST = "_manifest.json"
QUARANTINE = "_quarantine.jsonl"
FORMAT = "vistok-dataset/1"
ENGINES = ("local", "ray")
Progress = Callable[[int, int], None]


class DatasetError(ValueError):
    """A bad argument or an output folder that cannot be used (one line, names the input)."""


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to encode one shard on its own (picklable)."""

    source: str
    image_column: str | None
    tokenizer: str
    options: dict[str, Any]
    reduce: tuple[tuple[str, dict[str, Any]], ...]
    out: str
    shard_size: int
    batch_size: int


_WORKER: dict[str, Any] = {}


def _tokenizer_key(job: Job) -> str:
    return json.dumps([job.tokenizer, job.options], sort_keys=True, default=str)


def _source_key(job: Job) -> str:
    return f"{job.source}|{job.image_column}"


def _tokenizer(job: Job) -> Any:
    if _WORKER.get("key") != _tokenizer_key(job):
        import vistok

        _WORKER.update(key=_tokenizer_key(job), tokenizer=vistok.load(job.tokenizer, **job.options))
    return _WORKER["tokenizer"]


def _source(job: Job) -> Source:
    if _WORKER.get("source_key") != _source_key(job):
        _WORKER.update(source_key=_source_key(job), source=open_source(job.source, image_column=job.image_column))
    return _WORKER["source"]


def _share(job: Job, source: Source | None = None, tokenizer: Any = None) -> None:
    """Hand this process's already-opened source (and tokenizer) to :func:`encode_shard`, so that neither is opened
    twice: listing a large folder or loading an encoder again costs seconds."""
    if source is not None:
        _WORKER.update(source_key=_source_key(job), source=source)
    if tokenizer is not None:
        _WORKER.update(key=_tokenizer_key(job), tokenizer=tokenizer)


def _encode_batch(tokenizer: Any, payloads: list[Any], keys: list[str], reduce: Any,
                  names: list[str | None] | None = None
                  ) -> tuple[list[tuple[str, Any, tuple[int, int]]], list[dict[str, str]]]:
    """Encode a batch; when it fails as a whole, one by one, so that only the bad images are quarantined.
    ``names``: what the reasons call each image instead of ``<bytes: N B>`` (a folder's file paths)."""
    from vistok.images import ImageError, probe_size

    named = dict(zip(keys, names or [None] * len(keys)))

    def reason(key: str, err: Exception) -> dict[str, str]:
        if isinstance(err, ImageError) and named.get(key):
            err = ImageError(named[key], err.reason)
        return {"key": key, "reason": f"{type(err).__name__}: {err}"}

    good: list[tuple[str, Any, tuple[int, int]]] = []
    bad: list[dict[str, str]] = []
    ready = []
    for key, payload in zip(keys, payloads):
        if isinstance(payload, Exception):
            bad.append(reason(key, payload))
            continue
        try:
            ready.append((key, payload, probe_size(payload)))
        except Exception as err:  # noqa: BLE001 - any unreadable image is quarantined, never fatal
            bad.append(reason(key, err))

    def finish(tokens: Any) -> Any:
        import vistok

        for method, options in reduce:
            tokens = vistok.reduce(tokens, method, **options)
        return tokens

    try:
        encoded = tokenizer.encode([p for _, p, _ in ready]) if ready else []
        good = [(k, finish(t), s) for (k, _, s), t in zip(ready, encoded)]
    except Exception:  # noqa: BLE001 - retry one by one to find the bad ones
        good = []
        for key, payload, size in ready:
            try:
                good.append((key, finish(tokenizer.encode(payload)), size))
            except Exception as err:  # noqa: BLE001
                bad.append(reason(key, err))
    return good, bad


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def encode_shard(job: Job, index: int, progress: Progress | None = None) -> dict[str, Any]:
    """Encode shard ``index`` of ``job`` into ``OUT/shard-NNNNN.parquet``; returns its manifest entry."""
    import pyarrow.parquet as pq

    from vistok.datasets.rows import to_table

    source, tokenizer = _source(job), _tokenizer(job)
    start, stop = index * job.shard_size, min((index + 1) * job.shard_size, len(source))
    final = Path(job.out) / shard_name(index)
    tmp = final.with_name(f".{final.name}.tmp")
    writer = None
    rows, quarantined, dim = 0, [], None
    try:
        for first in range(start, stop, job.batch_size):
            indices = list(range(first, min(first + job.batch_size, stop)))
            keys = [source.keys[i] for i in indices]
            good, bad = _encode_batch(tokenizer, source.read(indices), keys, job.reduce,
                                      [source.name_of(i) for i in indices])
            quarantined.extend(bad)
            if good:
                table = to_table([k for k, _, _ in good], [t for _, t, _ in good], [s for _, _, s in good])
                dim = dim or (None if good[0][1].is_hard else int(good[0][1].values.shape[1]))
                if writer is None:
                    writer = pq.ParquetWriter(str(tmp), table.schema)
                writer.write_table(table.cast(writer.schema))
                rows += len(good)
            if progress:
                progress(len(indices), 0)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # every image in the shard was bad: an empty shard keeps the numbering whole
        final.unlink(missing_ok=True)
        return {"index": index, "file": None, "rows": 0, "sha256": None, "quarantine": quarantined,
                "first": start, "stop": stop}
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    os.replace(tmp, final)
    return {"index": index, "file": final.name, "rows": rows, "sha256": digest, "quarantine": quarantined,
            "first": start, "stop": stop, "dim": dim}


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, out / MANIFEST)
    lines = [json.dumps(q) for s in sorted(manifest["shards"], key=lambda s: s["index"]) for q in s["quarantine"]]
    (out / QUARANTINE).write_text("".join(line + "\n" for line in lines))


def _settings(job: Job, source: Source) -> dict[str, Any]:
    return {"source": source.describe(), "tokenizer": job.tokenizer, "options": job.options,
            "reduce": [list(step) for step in job.reduce], "shard_size": job.shard_size}


def _local(job: Job, pending: list[int], workers: int, done: Callable[[dict[str, Any]], None],
           progress: Progress | None) -> None:
    """Shards in this process, helped by ``workers - 1`` spawned processes; each of the ``workers`` gets
    ``cores // workers`` threads. This process starts at once instead of waiting for the helpers to import. Every
    helper is fed one shard at a time by a thread here, so the queue drains evenly and nobody idles at the end."""
    if workers == 1 or len(pending) == 1:
        for index in pending:
            done(encode_shard(job, index, progress))
        return
    import multiprocessing
    import threading
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    threads = worker_threads(workers)
    queue = deque(pending)
    lock = threading.Lock()  # guards the queue's end and done(), which rewrites the manifest
    failed: list[BaseException] = []

    def take(front: bool) -> int | None:
        with lock:
            if failed or not queue:
                return None
            return queue.popleft() if front else queue.pop()

    def record(entry: dict[str, Any]) -> None:
        with lock:
            done(entry)

    def feed(pool: ProcessPoolExecutor) -> None:
        try:
            while (index := take(front=False)) is not None:  # helpers from the back, this process from the front
                record(pool.submit(encode_shard, job, index).result())
        except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
            failed.append(err)

    helpers = min(workers - 1, len(pending) - 1)
    with _thread_limits(threads), ProcessPoolExecutor(
            helpers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(threads, job, _source(job).portable())) as pool:
        feeders = [threading.Thread(target=feed, args=(pool,), daemon=True) for _ in range(helpers)]
        for feeder in feeders:
            feeder.start()
        try:
            while (index := take(front=True)) is not None:
                record(encode_shard(job, index))
        except BaseException as err:
            failed.append(err)
        for feeder in feeders:
            feeder.join()
    if failed:
        raise failed[0]


def worker_threads(workers: int) -> int:
    """Each of ``workers`` processes' share of the cores (at least one thread), for both engines."""
    return max(1, (os.cpu_count() or 1) // workers)


@contextmanager
def _thread_limits(threads: int) -> Iterator[None]:
    """This process's BLAS and torch threads held to ``threads`` for a ``with`` block, then given back."""
    import numpy  # noqa: F401 - threadpoolctl limits only the BLAS libraries already loaded

    try:
        from threadpoolctl import threadpool_limits

        limits: Any = threadpool_limits(limits=threads)
    except ImportError:
        limits = None
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if limits is not None:
            limits.restore_original_limits()
        if torch is not None:
            torch.set_num_threads(before)


def _init_worker(threads: int, job: Job | None = None, source: Source | None = None) -> None:
    """Give each worker its share of the cores: torch threads and the BLAS pool (numpy's matmuls). Without this,
    every process spins a thread per core and two workers on two cores crawl. ``source``: the parent's listing."""
    if job is not None:
        _share(job, source)
    # torch reads these when it is first imported; importing it here would cost seconds for tokenizers without it
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    _WORKER["limits"] = _thread_limits(threads)  # entered for the worker's life, never exited
    _WORKER["limits"].__enter__()


def _ray(job: Job, pending: list[int], workers: int, gpus: float, done: Callable[[dict[str, Any]], None],
         address: str | None = None) -> None:
    try:
        import ray
    except ImportError as err:
        raise DatasetError("--engine ray needs Ray Data: pip install 'ray[data]'") from err
    import logging

    address = address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started and address:  # a running cluster (`ray start --head`, or a remote one): join it
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise DatasetError(f"ray address {address!r}: could not connect ({err}); start a cluster with "
                               "`ray start --head`, or leave --ray-address out to start a local one") from err
    elif started:
        ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # vistok's own bar counts the images
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        threads = worker_threads(workers)

        class ShardActor:  # one tokenizer per actor, loaded once
            def __init__(self) -> None:
                _init_worker(threads)

            def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
                entries = [encode_shard(job, int(i)) for i in batch["shard"]]
                return {"entry": [json.dumps(e) for e in entries]}

        data = ray.data.from_items([{"shard": i} for i in pending])
        results = data.map_batches(ShardActor, batch_size=1, concurrency=workers, num_gpus=gpus or None)
        for row in results.iter_rows():
            done(json.loads(row["entry"]))
    finally:
        if started:
            ray.shutdown()


def _check_steps(tokenizer: Any, steps: tuple[tuple[str, dict[str, Any]], ...], source: Source) -> None:
    """Apply the reduction steps to the first image that encodes, so that a bad method or option stops the run
    before any work instead of quarantining every image."""
    import vistok
    from vistok.reducers import method_info

    for method, _ in steps:
        method_info(method)
    if not steps:
        return
    for index in range(min(len(source), 8)):
        try:
            tokens = tokenizer.encode(source.read([index])[0])
        except Exception:  # noqa: BLE001 - a bad first image: try the next one
            continue
        for method, options in steps:
            try:
                tokens = vistok.reduce(tokens, method, **options)
            except (TypeError, ValueError, KeyError) as err:
                raise DatasetError(f"--reduce {method}: {err.args[0] if isinstance(err, KeyError) else err}") from err
        return


def tokenize_dataset(source: str | os.PathLike, out: str | os.PathLike, tokenizer: str, *,
                     options: dict[str, Any] | None = None, reduce: list[tuple[str, dict[str, Any]]] | None = None,
                     image_column: str | None = None, shard_size: int = 1000, batch_size: int = 32,
                     engine: str = "local", workers: int = 1, gpus: float = 0.0, ray_address: str | None = None,
                     resume: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Tokenize every image of ``source`` (see :func:`vistok.datasets.sources.open_source`) with ``tokenizer``
    (``vistok.load(tokenizer, **options)``, then each ``(method, options)`` step of ``reduce`` in order) into Parquet shards
    under ``out``; returns the manifest. ``progress(images_done, total)`` is called as shards finish.
    ``ray_address`` (or ``$RAY_ADDRESS``) joins a running Ray cluster; without it, ``engine="ray"`` starts a local
    one for the run. Every node must see ``source`` and ``out`` at the same paths (a shared file system)."""
    import vistok

    if engine not in ENGINES:
        raise DatasetError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size), ("workers", workers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DatasetError(f"{name} must be a positive integer, got {value!r}")
    try:
        src = open_source(source, image_column=image_column)
    except (FileNotFoundError, ValueError) as err:
        raise DatasetError(str(err)) from err
    if not len(src):
        raise DatasetError(f"{source}: no images found")
    options = dict(options or {})
    probe = vistok.load(tokenizer, **options)  # a bad name or option fails here, before any work
    steps = tuple((str(m), dict(o)) for m, o in (reduce or []))
    _check_steps(probe, steps, src)
    job = Job(str(source), src.column, tokenizer, options, steps, str(Path(out).expanduser()), shard_size,
              batch_size)
    out_dir = Path(job.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: exists and is not a folder; --out names the folder for the shards")
    settings = _settings(job, src)
    manifest_file = out_dir / MANIFEST
    if manifest_file.is_file():
        old = json.loads(manifest_file.read_text())
        if not resume and old.get("complete"):
            raise DatasetError(f"{out_dir}: already holds a finished dataset; pick a new --out")
        if not resume:
            raise DatasetError(f"{out_dir}: holds an unfinished run; pass resume (--resume) to continue it")
        if old.get("settings") != settings:
            raise DatasetError(f"{out_dir}: was started with other settings (source, tokenizer, options, reduce or "
                               "shard size); resume with the same ones, or use a new --out")
        manifest = old
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        info = getattr(probe, "describe", lambda: {})()
        manifest = {"format": FORMAT, "vistok": vistok.__version__, "settings": settings,
                    "tokenizer": tokenizer, "config": info.get("config", options), "kind": probe.kind,
                    "images": len(src), "shards": [], "complete": False}
    finished = {s["index"] for s in manifest["shards"]}
    count = (len(src) + shard_size - 1) // shard_size
    pending = [i for i in range(count) if i not in finished]
    total = len(src)
    seen = [sum(s["stop"] - s["first"] for s in manifest["shards"])]
    started = time.perf_counter()

    def done(entry: dict[str, Any]) -> None:
        manifest["shards"].append(entry)
        manifest["shards"].sort(key=lambda s: s["index"])
        if entry.get("dim"):
            manifest["dim"] = entry["dim"]
        _write_manifest(out_dir, manifest)
        seen[0] += entry["stop"] - entry["first"]
        if progress:
            progress(seen[0], total)

    if progress:
        progress(seen[0], total)
    _share(job, src, probe)
    try:
        if engine == "local":
            _local(job, pending, workers, done, None)
        else:
            _ray(job, pending, workers, gpus, done, ray_address)
    finally:
        _WORKER.clear()  # drop this process's source and tokenizer: an encoder can hold a lot of memory
    manifest["rows"] = sum(s["rows"] for s in manifest["shards"])
    manifest["quarantined"] = sum(len(s["quarantine"]) for s in manifest["shards"])
    manifest["complete"] = True
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    _write_manifest(out_dir, manifest)
    return manifest
