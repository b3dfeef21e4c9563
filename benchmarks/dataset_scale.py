"""Tokenizing a whole dataset: throughput with 1 and 2 local worker processes and with Ray, peak memory as the
dataset grows, and a kill at a random point followed by a resume.

The data: ``--images`` small PNGs (``--size`` pixels, seeded noise and shapes) written once under ``--work``, one
in ``--bad-every`` replaced by a broken file, so the quarantine is exercised too. Every run is
``vistok tokenize-dataset`` (``vistok.datasets.tokenize_dataset``) in a fresh process, timed from the outside;
peak memory is the largest resident set of that process and its workers (``getrusage(RUSAGE_CHILDREN)`` read by a
fresh wrapper process per run).

1. Throughput: ``--workers 1`` against ``--workers 2`` (the peer: one process), and ``--engine ray --workers 2``
   against ``--engine local --workers 2``, images per second, as ratios; Ray twice: starting its own local
   instance, and joining one already running (``ray start --head``, as on a cluster). One process already spreads numpy's
   matmuls over every core, so a second row holds one process to one core (``taskset -c 0``): the share each of
   two workers gets, and the fair base for how the engine scales.
2. Memory: the same one-process run on the first tenth of the images and on all of them; bounded memory means the
   two peaks agree.
3. Kill and resume: a one-process run killed (SIGKILL) at a seeded random moment, then ``--resume``; its shards
   must equal an uninterrupted run's, byte for byte (their SHA-256 in the manifests), with no row lost or repeated.

    python benchmarks/dataset_scale.py --markdown                  # 50,000 images, grid tokens
    python benchmarks/dataset_scale.py --images 5000 --tokenizer patch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import table  # noqa: E402


def make_images(folder: Path, count: int, size: int, bad_every: int, seed: int = 0) -> None:
    from PIL import Image, ImageDraw

    marker = folder / f".complete-{count}-{size}-{bad_every}"
    if marker.is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        if bad_every and i % bad_every == bad_every - 1:
            (sub / f"{i:06d}.png").write_bytes(b"broken " + bytes(rng.integers(0, 255, 32, dtype=np.uint8)))
            continue
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8) // 4 + 96
        image = Image.fromarray(pixels)
        x, y = rng.integers(0, size // 2, 2)
        ImageDraw.Draw(image).ellipse((int(x), int(y), int(x) + size // 2, int(y) + size // 2),
                                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(sub / f"{i:06d}.png")
    marker.write_text("ok")


_MEASURE = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")


def run(source: Path, out: Path, args: argparse.Namespace, *extra: str, kill_after: float | None = None,
        prefix: Sequence[str] = ()) -> dict[str, float]:
    """One ``vistok tokenize-dataset`` process: wall seconds and peak resident memory (MB) of it and its workers,
    read by a fresh wrapper process (``ru_maxrss`` of its children), so each run's peak is its own."""
    command = [*prefix, sys.executable, "-m", "vistok", "tokenize-dataset", str(source), "--out", str(out), "-t",
               args.tokenizer, "--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size), *extra]
    started = time.perf_counter()
    if kill_after is not None:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            process.kill()
        process.wait()
        return {"seconds": time.perf_counter() - started, "killed": process.returncode != 0}
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_kb / 1024}


@contextlib.contextmanager
def ray_cluster(joined: bool) -> Iterator[None]:
    """For ``joined``: a Ray cluster already up (``ray start --head``, started and stopped around the run, outside
    its time), as Ray is used when one machine is not enough."""
    ray = Path(sys.executable).with_name("ray")
    if not joined:
        yield
        return
    subprocess.run([str(ray), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
                    "--disable-usage-stats"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        subprocess.run([str(ray), "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shards(out: Path) -> list[tuple[str, int, str]]:
    manifest = json.loads((out / "_manifest.json").read_text())
    return [(s["file"], s["rows"], s["sha256"]) for s in manifest["shards"]]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bad-every", type=int, default=500, help="one broken file in this many")
    parser.add_argument("--tokenizer", default="grid")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vistok-dataset-scale"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    source = args.work / "images"
    started = time.perf_counter()
    make_images(source, args.images, args.size, args.bad_every, args.seed)
    print(f"{args.images:,} images of {args.size}x{args.size} ready in {time.perf_counter() - started:.0f} s "
          f"(one in {args.bad_every} broken); {os.cpu_count()} CPUs")
    outs = args.work / "runs"
    shutil.rmtree(outs, ignore_errors=True)
    outs.mkdir()

    tiny = args.work / "tiny"  # the same command on 64 images: what each engine costs before its first shard
    make_images(tiny, 64, args.size, 0, args.seed)
    engines = [("local, 1 process (peer)", (), ()),
               ("local, 1 process on 1 core (taskset)", (), ("taskset", "-c", "0")),
               ("local, 2 processes", ("--workers", "2"), ()),
               ("ray, 2 actors, local instance started by the run", ("--engine", "ray", "--workers", "2"), ()),
               ("ray, 2 actors, joining a running cluster",
                ("--engine", "ray", "--workers", "2", "--ray-address", "auto"), ())]
    if not shutil.which("taskset"):
        engines.pop(1)
    if args.skip_ray:
        engines = engines[:-2]
    timed: dict[str, dict[str, Any]] = {}
    for i, (name, extra, prefix) in enumerate(engines):
        with ray_cluster(joined="running cluster" in name):
            timed[name] = run(source, outs / f"run-{i}", args, *extra, prefix=prefix)
            timed[name]["startup"] = run(tiny, outs / f"tiny-{i}", args, *extra, prefix=prefix)["seconds"]
        timed[name]["out"] = outs / f"run-{i}"
    good = json.loads((timed[engines[0][0]]["out"] / "_manifest.json").read_text())["rows"]
    one, two = timed[engines[0][0]], timed["local, 2 processes"]
    core = timed.get("local, 1 process on 1 core (taskset)")
    rows = []
    for name, t in timed.items():
        rate, steady = good / t["seconds"], good / max(t["seconds"] - t["startup"], 1e-9)
        rows.append([name, f"{t['seconds']:.1f}", f"{rate:.0f}", f"{t['startup']:.1f}", f"{steady:.0f}",
                     f"{one['seconds'] / t['seconds']:.2f}x",
                     f"{core['seconds'] / t['seconds']:.2f}x" if core else "-",
                     f"{(two['seconds'] - two['startup']) / (t['seconds'] - t['startup']):.2f}x"])
    print(table(f"Throughput, {args.tokenizer} tokens, {good:,} good images (wall time of the whole command; start-up: "
                "the same command on 64 images)",
                ["engine", "wall (s)", "images/s", "start-up (s)", "images/s after start-up", "over 1 process",
                 "over 1 core", "after start-up, over local 2"], rows, args.markdown))
    same = all(shards(t["out"]) == shards(one["out"]) for t in timed.values())
    print(f"all engines wrote byte-identical shards: {same}\n")

    small_source = args.work / "small"
    make_images(small_source, args.images // 10, args.size, args.bad_every, args.seed)  # the same first tenth
    small = run(small_source, outs / "small", args)
    small_rows = json.loads((outs / "small" / "_manifest.json").read_text())["rows"] + \
        json.loads((outs / "small" / "_manifest.json").read_text())["quarantined"]
    print(table("Peak memory of one process", ["images", "peak RSS (MB)"],
                [[f"{small_rows:,}", f"{small['peak_mb']:.0f}"], [f"{args.images:,}", f"{one['peak_mb']:.0f}"]],
                args.markdown))
    print(f"ratio {one['peak_mb'] / small['peak_mb']:.2f}x for {args.images / small_rows:.0f}x the images\n")

    rng = random.Random(args.seed)
    moment = rng.uniform(0.2, 0.8) * one["seconds"]
    killed = run(source, outs / "killed", args, kill_after=moment)
    partial = len(shards(outs / "killed")) if (outs / "killed" / "_manifest.json").is_file() else 0
    resumed = run(source, outs / "killed", args, "--resume")
    equal = shards(outs / "killed") == shards(one["out"])
    total_rows = sum(r for _, r, _ in shards(outs / "killed"))
    print(table("Kill and resume", ["killed after", "shards done at the kill", "resume took", "rows", "equal to an "
                                    "uninterrupted run"],
                [[f"{killed['seconds']:.1f} s", str(partial), f"{resumed['seconds']:.1f} s", f"{total_rows:,}",
                  str(equal)]], args.markdown))


if __name__ == "__main__":
    main()
