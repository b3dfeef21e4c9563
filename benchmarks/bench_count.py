"""How fast vistok counts a folder of images for VLMs, against Pillow's header-only open and a bare file
read in the same run (one core, best of several interleaved passes).

    python benchmarks/bench_count.py                       # 10,000 generated JPEGs, a quarter EXIF-rotated
    python benchmarks/bench_count.py --markdown            # the table in docs/benchmarks.md
    python benchmarks/bench_count.py --files 2000 --markdown

Rows: a bare read (open, read 64 KB, close: the ceiling for any header parser written in Python), Pillow's
``Image.open(path).size`` (header only, the peer: 1.0x), ``vistok.probe_size`` (size after EXIF
orientation), probe + ``vistok.count`` per image for one and three models, the streaming
``vistok.budget.report.count_stream`` over the folder (what ``vistok count`` runs), and decoding every image
as a script built on ``Image.open(...).convert()`` would. The last line streams a million ``(width, height)``
pairs through ``count_stream`` and reports its peak Python memory (tracemalloc).

Target: probe + count (one model) at least 1.7x Pillow's open, EXIF orientation honoured.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from PIL import Image

import vistok
from vistok.budget import count
from vistok.budget.report import count_stream
from vistok.images import probe_size

MODELS = ("qwen2-vl-7b", "internvl2.5-8b", "llava-v1.6-mistral-7b")

# Mixed sizes: phone photos, screenshots, thumbnails, scans, panoramas, tiny icons.
SHAPES = [(4032, 3024), (3024, 4032), (1920, 1080), (1280, 720), (800, 600), (640, 480), (512, 512),
          (256, 256), (64, 64), (2480, 3508), (6000, 1000), (300, 1200), (1024, 768), (150, 100)]


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def make_files(folder: Path, n: int, seed: int) -> list[Path]:
    """n JPEGs of mixed sizes, every fourth with an EXIF block saying orientation 6 (stored sideways), the
    others without EXIF: solid colours, since only the header matters. Reused when the folder holds them."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return existing[:n]
    rng = random.Random(seed)
    cache: dict[tuple[int, int, int], bytes] = {}
    paths = []
    for i in range(n):
        w, h = rng.choice(SHAPES)
        w, h = max(1, w + rng.randint(-w // 10, w // 10)), max(1, h + rng.randint(-h // 10, h // 10))
        w, h = w // 8 * 8 or 8, h // 8 * 8 or 8  # reuse encodings of equal sizes
        orientation = 6 if i % 4 == 3 else 1
        if (w, h, orientation) not in cache:
            buffer = io.BytesIO()
            extra = {"exif": _exif(orientation)} if orientation != 1 else {}
            Image.new("RGB", (w, h), (rng.randrange(256), 90, 160)).save(buffer, "JPEG", quality=80, **extra)
            cache[(w, h, orientation)] = buffer.getvalue()
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(cache[(w, h, orientation)])
        paths.append(path)
    return paths


def rates(runs: dict[str, tuple[Callable[[], None], int]], seconds: float) -> dict[str, float]:
    """Items per second of each ``run()`` (which handles ``items`` items), best of passes interleaved
    across the runs until ``seconds`` have passed (at least three each), so load spikes hit all alike."""
    best = dict.fromkeys(runs, 0.0)
    start, passes = time.perf_counter(), 0
    while passes < 3 or time.perf_counter() - start < seconds:
        for name, (run, items) in runs.items():
            t0 = time.perf_counter()
            run()
            best[name] = max(best[name], items / (time.perf_counter() - t0))
        passes += 1
    return best


def bare_read(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.read(fd, 65536)
    finally:
        os.close(fd)


def pillow_open(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def million(n: int) -> tuple[float, float]:
    """Seconds and peak traced MB to stream ``n`` sizes through count_stream for the benchmark's models."""
    rng = random.Random(1)
    shapes = [(w + rng.randint(-50, 50), h + rng.randint(-50, 50)) for w, h in SHAPES for _ in range(20)]
    tracemalloc.start()
    t0 = time.perf_counter()
    report = count_stream((shapes[i % len(shapes)] for i in range(n)), MODELS)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    assert report.images == n
    return seconds, peak


def startup(files: list[Path], runs: int = 11) -> list[tuple[str, float]]:
    """Median wall seconds of CLI runs, with a bare interpreter (the floor every command pays) as the peer."""
    vistok_bin = str(Path(sys.executable).with_name("vistok"))
    commands = {
        "python -c pass (peer: interpreter alone)": [sys.executable, "-c", "pass"],
        "vistok --help": [vistok_bin, "--help"],
        "vistok count ONE.jpg -m llava-1.5-7b": [vistok_bin, "count", str(files[0]), "-m", MODELS[0]],
        f"vistok count FOLDER ({len(files):,} files) -m 3 models --summary-only":
            [vistok_bin, "count", str(files[0].parent), *sum((["-m", m] for m in MODELS), []), "--summary-only"],
    }
    out = []
    for name, argv in commands.items():
        times = []
        for _ in range(runs if "FOLDER" not in name else 3):
            t0 = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times.append(time.perf_counter() - t0)
        out.append((name, statistics.median(times)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--decode-files", type=int, default=200, help="files timed for the decode row")
    parser.add_argument("--stream-sizes", type=int, default=1_000_000, help="sizes streamed for the memory line")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "vistok-bench-count-v3")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    t0 = time.perf_counter()
    files = make_files(args.data / str(args.files), args.files, args.seed)
    made = time.perf_counter() - t0
    folder = files[0].parent
    one = MODELS[:1]
    for model in MODELS:
        count((640, 480), model=model)  # load tables before timing
    count_stream([files[0]], MODELS)
    subset = files[: args.decode_files]

    def decode_and_count() -> None:
        for path in subset:
            with Image.open(path) as im:
                size = im.convert("RGB").size
            count(size, model=MODELS[0])

    runs = {
        "bare read (open, read 64 KB, close)": (lambda: [bare_read(p) for p in files], len(files)),
        "Pillow Image.open(path).size (peer)": (lambda: [pillow_open(p) for p in files], len(files)),
        "vistok.probe_size": (lambda: [probe_size(p) for p in files], len(files)),
        "probe_size + count, 1 model": (lambda: [count(probe_size(p), model=one[0]) for p in files], len(files)),
        "probe_size + count, 3 models": (lambda: [[count(s, model=m) for m in MODELS] for s in map(probe_size, files)],
                                         len(files)),
        "count_stream(folder), 1 model": (lambda: count_stream([folder], one), len(files)),
        "count_stream(folder), 3 models": (lambda: count_stream([folder], MODELS), len(files)),
        "decode + count, 1 model": (decode_and_count, len(subset)),
    }
    best = rates(runs, args.seconds)
    peer = best["Pillow Image.open(path).size (peer)"]
    rows = [(name, f"{best[name]:,.0f}", f"{best[name] / peer:.2f}x") for name in runs]
    header = ("what", "images/s (one core)", "vs Pillow open")
    target = best["probe_size + count, 1 model"] / peer
    print(f"vistok {vistok.__version__}, Python {platform.python_version()}, one core pinned; {len(files):,} JPEGs "
          f"({len(files) // 4:,} EXIF-rotated; {made:.1f}s to make), models: {', '.join(MODELS)}")
    if args.markdown:
        print("\n| " + " | ".join(header) + " |\n|---|---:|---:|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"\ntarget: probe + count (1 model) >= 1.7x Pillow's open -> {target:.2f}x, "
          f"{'met' if target >= 1.7 else 'NOT met'}")
    report = count_stream([folder], MODELS)
    print("tokens over the folder: " + ", ".join(f"{r['model']} {r['total_tokens']:,}" for r in report.summary()))
    print("\nCLI start-up (median wall seconds; goal: under 0.3 s)")
    timed = startup(files)
    floor = timed[0][1]
    for name, seconds in timed:
        print(f"  {name:<62} {seconds:6.3f} s  {seconds / floor:5.1f}x the interpreter")
    if args.stream_sizes:
        seconds, peak = million(args.stream_sizes)
        print(f"count_stream over {args.stream_sizes:,} sizes, 3 models: {seconds:.1f}s "
              f"({args.stream_sizes / seconds:,.0f}/s under tracemalloc), peak Python memory {peak:.1f} MB")


if __name__ == "__main__":
    main()
