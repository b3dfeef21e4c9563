"""Benchmark vistok's file path against the naive code a user would write instead.

Two tables, each comparing vistok with a named peer in the same run (ratio = vistok / peer, > 1 means
vistok is faster):

1. Encode: ``vistok.load(name).encode(path)`` for ``grid`` and ``patch`` against
   *naive PIL + sklearn*: ``PIL.Image.open(path).convert("RGB")`` (full decode), a bicubic resize to the
   same working size, the same cell cut, then the same math with the tokenizer's own weights
   (``sklearn.metrics.pairwise_distances_argmin`` against ``tok.codebook`` for grid, the PCA projection
   ``(x - mean) @ components.T`` with ``tok.pca`` for patch).  vistok asks libjpeg for a reduced-scale
   decode (JPEG draft) that is still at least the working size, so the pixels it resizes differ a little
   from the peer's; the table reports how many tokens agree, plus a control that feeds vistok the peer's
   fully decoded image (no draft) to show that the math itself matches.
2. Probe: ``vistok.probe_size(path)`` (header only) against a full decode
   ``PIL.Image.open(path).convert("RGB").size``.

Inputs: the six bundled samples, a 12-megapixel (4000x3000) photo-like JPEG and a set of mixed-size JPEGs,
all generated into a temporary folder from the bundled samples (no network, no extra packages).

Timing: ``time.perf_counter``; one warm-up pass of each side, then vistok and peer passes alternate
(so drift and turbo effects hit both) until each side has run for about ``--seconds`` and at least
3 passes; a pass repeats the file set often enough to last about 50 ms.  Reported rates come from the
fastest pass of each side (``--stat best``, the ``timeit`` convention: the least disturbed pass on a shared
machine) or from the median pass (``--stat median``).

    python benchmarks/bench_encode.py              # about 30 seconds on 2 cores
    python benchmarks/bench_encode.py --quick      # about 12 seconds, noisier
    python benchmarks/bench_encode.py --markdown   # Markdown tables for the README
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

import vistok
from vistok.samples import sample_images

BIG_SIZE = (4000, 3000)
BIG_SOURCE = "coffee.jpg"


# --------------------------------------------------------------------------------------------------
# Test data


def make_big_jpeg(folder: Path, seed: int) -> tuple[Path, str]:
    """A 12 MP photo-like JPEG: a bundled photo cropped to 4:3, bicubic-upscaled to 4000x3000, with mild
    Gaussian sensor-like noise (sigma 3 levels), saved at quality 90 with 4:2:0 chroma subsampling
    (what cameras and phones write).  Returns the path and a one-line description."""
    src = next(p for p in sample_images() if p.name == BIG_SOURCE)
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    aspect = BIG_SIZE[0] / BIG_SIZE[1]
    if w / h > aspect:
        cw, ch = round(h * aspect), h
    else:
        cw, ch = w, round(w / aspect)
    left, top = (w - cw) // 2, (h - ch) // 2
    big = rgb.crop((left, top, left + cw, top + ch)).resize(BIG_SIZE, Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    pixels = np.asarray(big, dtype=np.int16)
    noise = rng.normal(0.0, 3.0, size=pixels.shape).round().astype(np.int16)
    noisy = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    path = folder / "photo_12mp.jpg"
    Image.fromarray(noisy, "RGB").save(path, quality=90, subsampling="4:2:0")
    note = (f"{BIG_SOURCE} cropped to {cw}x{ch}, bicubic x{BIG_SIZE[0] / cw:.1f} upscale, "
            "Gaussian noise sigma 3, quality 90")
    return path, note


def make_mixed_jpegs(folder: Path, count: int, seed: int) -> list[Path]:
    """``count`` JPEGs from random crops of the samples, resized so the longer side is log-uniform in
    128..2048 px, saved at quality 75..95."""
    rng = np.random.default_rng(seed)
    sources = []
    for p in sample_images():
        with Image.open(p) as im:
            sources.append(im.convert("RGB"))
    out = folder / "mixed"
    out.mkdir()
    paths = []
    for i in range(count):
        im = sources[int(rng.integers(len(sources)))]
        w, h = im.size
        cw = max(16, int(w * rng.uniform(0.4, 1.0)))
        ch = max(16, int(h * rng.uniform(0.4, 1.0)))
        left, top = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
        crop = im.crop((left, top, left + cw, top + ch))
        longer = math.exp(rng.uniform(math.log(128), math.log(2048)))
        scale = longer / max(cw, ch)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        path = out / f"img_{i:04d}.jpg"
        crop.resize(size, Image.Resampling.BICUBIC).save(path, quality=int(rng.integers(75, 96)))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# The peer: what a user would write without vistok


def naive_cells(pixels: np.ndarray, cell: int) -> np.ndarray:
    """``(H, W, 3)`` -> ``(rows * cols, cell * cell * 3)``, cells in row-major order."""
    rows, cols = pixels.shape[0] // cell, pixels.shape[1] // cell
    blocks = pixels[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell, 3)
    return blocks.swapaxes(1, 2).reshape(rows * cols, cell * cell * 3)


def naive_pixels(image: str | os.PathLike | Image.Image, tok) -> np.ndarray:
    """Full decode with PIL, bicubic resize to the tokenizer's working size, floats in [0, 1]."""
    rgb = image.convert("RGB") if isinstance(image, Image.Image) else Image.open(image).convert("RGB")
    target = tok.working_size(*rgb.size)  # same working size as vistok (pure arithmetic)
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.float32) / 255.0


def make_naive_grid(tok) -> Callable[[object], np.ndarray]:
    from sklearn.metrics import pairwise_distances_argmin

    codebook = tok.codebook

    def encode(image) -> np.ndarray:
        cells = naive_cells(naive_pixels(image, tok), tok.cell)
        return pairwise_distances_argmin(cells, codebook)

    return encode


def make_naive_patch(tok) -> Callable[[object], np.ndarray]:
    mean, components = tok.pca

    def encode(image) -> np.ndarray:
        cells = naive_cells(naive_pixels(image, tok), tok.cell)
        return (cells - mean) @ components.T

    return encode


def full_decode_size(path: Path) -> tuple[int, int]:
    return Image.open(path).convert("RGB").size


# --------------------------------------------------------------------------------------------------
# Timing


@dataclass
class PairTiming:
    rate_a: float  # items per second (best or median pass)
    rate_b: float
    passes: int  # timed passes per side

    @property
    def ratio(self) -> float:
        return self.rate_a / self.rate_b


def _run_pass(fn: Callable[[object], object], items: Sequence[object], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        for item in items:
            fn(item)
    return time.perf_counter() - t0


def time_pair(fn_a: Callable[[object], object], fn_b: Callable[[object], object], items: Sequence[object],
              seconds: float, min_passes: int, stat: str = "best") -> PairTiming:
    """Items/s of ``fn_a`` and ``fn_b`` over ``items`` (fastest or median pass), passes alternating a, b, ..."""
    # Warm-up: loads weights, fills the OS file cache and Pillow's plugin registry; also calibrates how
    # many repetitions of the item set make a pass of at least ~50 ms, so timer resolution never matters.
    warm_a = _run_pass(fn_a, items, 1)
    warm_b = _run_pass(fn_b, items, 1)
    reps_a = max(1, math.ceil(0.05 / max(warm_a, 1e-9)))
    reps_b = max(1, math.ceil(0.05 / max(warm_b, 1e-9)))
    rates_a: list[float] = []
    rates_b: list[float] = []
    spent_a = spent_b = 0.0
    while len(rates_a) < min_passes or spent_a < seconds or spent_b < seconds:
        ta = _run_pass(fn_a, items, reps_a)
        tb = _run_pass(fn_b, items, reps_b)
        spent_a += ta
        spent_b += tb
        rates_a.append(reps_a * len(items) / ta)
        rates_b.append(reps_b * len(items) / tb)
        if len(rates_a) >= min_passes and spent_a + spent_b > 4 * seconds:  # one side is very slow
            break
    pick = max if stat == "best" else statistics.median
    return PairTiming(pick(rates_a), pick(rates_b), len(rates_a))


# --------------------------------------------------------------------------------------------------
# Agreement between vistok's tokens and the peer's


def agreement(tok_name: str, ours: list[np.ndarray], theirs: list[np.ndarray]) -> str:
    """Grid: share of token ids that are equal.  Patch: share of token vectors equal within 1e-4
    (a one-level change of one pixel moves a coordinate by up to 1/255 = 0.004) and the relative
    L2 difference of all vectors."""
    if any(a.shape != b.shape for a, b in zip(ours, theirs)):
        return "token grids differ in shape!"
    if tok_name == "grid":
        equal = sum(int((a == b).sum()) for a, b in zip(ours, theirs))
        total = sum(a.size for a in ours)
        return f"{equal / total:.1%} of {total} ids"
    equal = sum(int(np.all(np.abs(a - b) <= 1e-4, axis=1).sum()) for a, b in zip(ours, theirs))
    total = sum(len(a) for a in ours)
    diff = math.sqrt(sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(ours, theirs)))
    norm = math.sqrt(sum(float(np.sum(b.astype(np.float64) ** 2)) for b in theirs))
    return f"{equal / total:.1%} of {total} vectors, L2 diff {diff / norm:.2%}"


# --------------------------------------------------------------------------------------------------
# Output


class Report:
    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown
        self.console = None
        if not markdown:
            from rich.console import Console

            self.console = Console(width=max(120, min(200, _terminal_width())))

    def heading(self, text: str) -> None:
        if self.markdown:
            print(f"\n### {text}\n")
        else:
            self.console.print(f"\n[bold]{text}[/bold]")

    def text(self, text: str) -> None:
        if self.markdown:
            print(text)
        else:
            self.console.print(text, highlight=False, markup=False)

    def table(self, columns: list[str], rows: list[list[str]], right: set[int]) -> None:
        if self.markdown:
            print("| " + " | ".join(columns) + " |")
            print("|" + "|".join("---:" if i in right else "---" for i in range(len(columns))) + "|")
            for row in rows:
                print("| " + " | ".join(row) + " |")
            print()
            return
        from rich.table import Table

        table = Table(show_lines=False)
        for i, col in enumerate(columns):
            table.add_column(col, justify="right" if i in right else "left")
        for row in rows:
            table.add_row(*row)
        self.console.print(table)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 200


def _rate(x: float) -> str:
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def machine_info() -> list[tuple[str, str]]:
    import sklearn
    from PIL import features

    info = [
        ("cpu", f"{os.cpu_count()} logical cores ({platform.machine()}, {platform.processor() or 'n/a'})"),
        ("os", platform.platform()),
        ("python", sys.version.split()[0]),
        ("numpy", np.__version__),
        ("pillow", f"{PIL.__version__} (libjpeg {features.version('jpg')}, "
                   f"turbo: {'yes' if features.check_feature('libjpeg_turbo') else 'no'})"),
        ("scikit-learn", sklearn.__version__),
        ("vistok", vistok.__version__),
    ]
    try:
        from threadpoolctl import threadpool_info

        pools = [f"{p.get('internal_api')} x{p.get('num_threads')}" for p in threadpool_info()]
        if pools:
            info.append(("thread pools", ", ".join(pools)))
    except Exception:  # threadpoolctl comes with scikit-learn, but is not essential here
        pass
    return info


def _describe_set(paths: Sequence[Path]) -> str:
    mp = [w * h / 1e6 for w, h in (vistok.probe_size(p) for p in paths)]
    size = sum(p.stat().st_size for p in paths) / 1e6
    if len(paths) == 1:
        return f"1 file, {mp[0]:.1f} MP, {size:.1f} MB"
    return f"{len(paths)} files, {min(mp):.2f}-{max(mp):.1f} MP (median {statistics.median(mp):.2f}), {size:.1f} MB"


# --------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter run (fewer files, shorter timings)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed seconds per side per row (default 1.0, 0.25 with --quick)")
    parser.add_argument("--files", type=int, default=None,
                        help="mixed-size JPEGs to generate for the probe table (default 200, 60 with --quick)")
    parser.add_argument("--stat", choices=("best", "median"), default="best",
                        help="rate from the fastest pass (default) or the median pass of each side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.25 if args.quick else 1.0)
    n_files = args.files if args.files is not None else (60 if args.quick else 200)
    min_passes = 3
    start = time.perf_counter()
    out = Report(args.markdown)

    # sklearn and the BLAS are imported before the info so that the thread pools show up
    import sklearn.metrics  # noqa: F401

    out.heading("vistok encode / probe benchmark")
    info = machine_info()
    if args.markdown:
        for key, value in info:
            print(f"- {key}: {value}")
        print(f"- settings: {'--quick, ' if args.quick else ''}{seconds:g} s per side per row, "
              f"{args.stat} of >= {min_passes} alternating passes")
    else:
        for key, value in info:
            out.text(f"{key:>13}: {value}")
        out.text(f"{'settings':>13}: {'--quick, ' if args.quick else ''}{seconds:g} s per side per row, "
                 f"{args.stat} of >= {min_passes} alternating passes")

    samples = sample_images()
    with tempfile.TemporaryDirectory(prefix="vistok-bench-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        big, big_note = make_big_jpeg(folder, args.seed)
        mixed = make_mixed_jpegs(folder, n_files, args.seed) + [big]
        gen_s = time.perf_counter() - t0
        sets = {
            "samples": samples,
            f"12 MP JPEG ({BIG_SIZE[0]}x{BIG_SIZE[1]})": [big],
            "mixed JPEGs + 12 MP": mixed,
        }
        out.text("")
        for label, paths in sets.items():
            out.text(f"{'- ' if args.markdown else ''}{label}: {_describe_set(paths)}")
        out.text(f"{'- ' if args.markdown else ''}12 MP JPEG: {big_note}")
        out.text(f"{'- ' if args.markdown else ''}test data generated in {gen_s:.1f} s")

        # ---- 1. encode ---------------------------------------------------------------------------
        out.heading("Encode: vistok.load(name).encode(path) vs naive PIL full decode + sklearn (ratio = vistok / peer)")
        rows = []
        for name, make_peer in (("grid", make_naive_grid), ("patch", make_naive_patch)):
            tok = vistok.load(name)
            peer = make_peer(tok)

            def ours(path, tok=tok):
                return tok.encode(path).values

            for label in ("samples", f"12 MP JPEG ({BIG_SIZE[0]}x{BIG_SIZE[1]})"):
                paths = sets[label]
                timing = time_pair(ours, peer, paths, seconds, min_passes, args.stat)
                ours_vals = [ours(p) for p in paths]
                peer_vals = [peer(p) for p in paths]
                # Control: the peer's own fully decoded image fed to vistok (no draft) -> same math?
                control_vals = [tok.encode(Image.open(p).convert("RGB")).values for p in paths]
                rows.append([
                    name, label, _rate(timing.rate_a), _rate(timing.rate_b), f"{timing.ratio:.2f}x",
                    str(timing.passes),
                    agreement(name, ours_vals, peer_vals), agreement(name, control_vals, peer_vals),
                ])
        out.table(["tokenizer", "images", "vistok img/s", "peer img/s", "ratio", "passes",
                   "equal to peer", "control: no draft"], rows, right={2, 3, 4, 5})
        out.text("Peer: PIL.Image.open(p).convert('RGB'), bicubic resize to the same working size, same cell "
                 "cut; grid = sklearn pairwise_distances_argmin(cells, tok.codebook), patch = "
                 "(cells - mean) @ components.T with tok.pca.  'equal to peer': grid = share of token ids "
                 "that are equal; patch = share of token vectors equal within 1e-4 per coordinate, and the "
                 "relative L2 difference of all vectors.  Less than 100% comes from vistok's reduced-scale "
                 "JPEG decode (draft): its resize starts from different pixels, so patch vectors move a "
                 "little and grid ids flip where two codewords are nearly tied.  'control: no draft' feeds "
                 "vistok the peer's fully decoded image (not timed), which isolates the math from the decode.")

        # ---- 2. probe ----------------------------------------------------------------------------
        out.heading("Probe: vistok.probe_size(path) vs full decode PIL.Image.open(p).convert('RGB').size "
                    "(ratio = vistok / peer)")
        rows = []
        for label in ("samples", "mixed JPEGs + 12 MP"):
            paths = sets[label]
            timing = time_pair(vistok.probe_size, full_decode_size, paths, seconds, min_passes, args.stat)
            same = sum(vistok.probe_size(p) == full_decode_size(p) for p in paths)
            rows.append([label, str(len(paths)), _rate(timing.rate_a), _rate(timing.rate_b),
                         f"{timing.ratio:,.0f}x", str(timing.passes), f"{same}/{len(paths)}"])
        out.table(["files", "count", "vistok files/s", "peer files/s", "ratio", "passes", "sizes agree"],
                  rows, right={1, 2, 3, 4, 5, 6})
        out.text("probe_size reads only the header (and the EXIF orientation); the peer decodes every pixel. "
                 "Files are in the OS page cache after the warm-up, so this measures CPU, not disk.")

    out.text(f"\n{'_' if args.markdown else ''}total run time {time.perf_counter() - start:.0f} s"
             f"{'_' if args.markdown else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
