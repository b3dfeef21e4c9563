"""How fast vistok counts a folder of images for several VLMs: header-only probe + count, against
decoding every image to learn its size (what a script built on PIL.Image.open(...).convert() does).

    python benchmarks/bench_count.py                 # 10,000 generated JPEGs, 3 models, one core
    python benchmarks/bench_count.py --files 2000 --markdown

Target (issue 3): at least 5,000 images/s on one core for probe + count.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from PIL import Image

import vistok
from vistok.budget import count
from vistok.images import probe_size

MODELS = ("qwen2-vl-7b", "internvl2.5-8b", "llava-v1.6-mistral-7b")

# Mixed sizes: phone photos, screenshots, thumbnails, scans, panoramas, tiny icons.
SHAPES = [(4032, 3024), (3024, 4032), (1920, 1080), (1280, 720), (800, 600), (640, 480), (512, 512),
          (256, 256), (64, 64), (2480, 3508), (6000, 1000), (300, 1200), (1024, 768), (150, 100)]


def make_files(folder: Path, n: int, seed: int) -> list[Path]:
    """n JPEGs of mixed sizes (solid colours with a little jitter in size: the header is what matters)."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return existing[:n]
    rng = random.Random(seed)
    cache: dict[tuple[int, int], bytes] = {}
    paths = []
    for i in range(n):
        w, h = rng.choice(SHAPES)
        w, h = max(1, w + rng.randint(-w // 10, w // 10)), max(1, h + rng.randint(-h // 10, h // 10))
        w, h = w // 8 * 8 or 8, h // 8 * 8 or 8  # reuse encodings of equal sizes
        if (w, h) not in cache:
            import io

            buffer = io.BytesIO()
            Image.new("RGB", (w, h), (rng.randrange(256), 90, 160)).save(buffer, "JPEG", quality=80)
            cache[(w, h)] = buffer.getvalue()
        path = folder / f"img{i:05d}.jpg"
        path.write_bytes(cache[(w, h)])
        paths.append(path)
    return paths


def rate(fn, items, seconds: float) -> tuple[float, int]:
    """Items per second of fn over items, repeated until `seconds` have passed (best pass)."""
    best, passes, start = 0.0, 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        best = max(best, len(items) / (time.perf_counter() - t0))
        passes += 1
    return best, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--decode-files", type=int, default=300, help="files timed for the decode peer")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "vistok-bench-count")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    t0 = time.perf_counter()
    files = make_files(args.data / str(args.files), args.files, args.seed)
    made = time.perf_counter() - t0
    for model in MODELS:
        count((640, 480), model=model)  # load tables before timing

    def probe_and_count(path: Path) -> None:
        size = probe_size(path)
        for model in MODELS:
            count(size, model=model)

    def decode_and_count(path: Path) -> None:
        with Image.open(path) as im:
            size = im.convert("RGB").size
        for model in MODELS:
            count(size, model=model)

    sizes = [probe_size(p) for p in files]
    vistok_rate, vistok_passes = rate(probe_and_count, files, args.seconds)
    count_rate, _ = rate(lambda s: [count(s, model=m) for m in MODELS], sizes, args.seconds)
    probe_rate, _ = rate(probe_size, files, args.seconds)
    subset = files[: args.decode_files]
    decode_rate, decode_passes = rate(decode_and_count, subset, args.seconds)
    tokens = {m: sum(count(s, model=m).image_tokens for s in sizes) for m in MODELS}

    rows = [
        ("probe + count (vistok)", f"{len(files):,}", f"{vistok_rate:,.0f}", f"{vistok_rate / decode_rate:.0f}x",
         str(vistok_passes)),
        ("decode + count (peer)", f"{len(subset):,}", f"{decode_rate:,.0f}", "1x", str(decode_passes)),
        ("probe only", f"{len(files):,}", f"{probe_rate:,.0f}", "", ""),
        ("count only (3 models, from sizes)", f"{len(files):,}", f"{count_rate:,.0f}", "", ""),
    ]
    header = ("what", "files", "images/s (one core)", "vs decode", "passes")
    print(f"vistok {vistok.__version__}, Python {platform.python_version()}, one core pinned; "
          f"{len(files):,} JPEGs ({made:.1f}s to make), models: {', '.join(MODELS)}")
    print(f"target: >= 5,000 images/s for probe + count -> {'met' if vistok_rate >= 5000 else 'NOT met'}")
    if args.markdown:
        print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print("\ntokens over the folder: " + ", ".join(f"{m} {t:,}" for m, t in tokens.items()))


if __name__ == "__main__":
    main()
