"""How fast and how good is `vistok fit-codebook`? The new default against the settings it replaced.

Both fit a ``--vocab``-word grid codebook (16x16-pixel cells, longer side 256, scales 1 and 2 plus mirrors:
what ``vistok fit-codebook`` does) on the same cells of vistok's 6 bundled sample photos, in the same run:

* *old*: scikit-learn ``MiniBatchKMeans(batch_size=4096, n_init=3, max_iter=200).fit`` on the float32 cells,
  the settings ``GridTokenizer.fit`` used before. Its k-means++ seeding runs three times on float32 input,
  which scikit-learn upcasts to float64 in small chunks: that is where its minutes go.
* *new*: ``GridTokenizer.fit`` with its default :class:`~vistok.tokenizers.grid.KMeansSettings`: one
  k-means++ seeding in float64 on 4,096 cells, then ``partial_fit`` mini-batches of 4,096 cells for at most
  20 epochs, stopping once an epoch moves the words by less than ``tol`` (1e-4 of the sample's variance).

Quality is measured twice. *MSD* is the mean squared distance from a cell (768 values in [0, 1]) to its
nearest word, on the training cells and on held-out cells. *PSNR* is the grid tokenizer's encode -> decode
round trip on held-out photos (scikit-image's photos that are not among the training samples): 10 log10(1 /
MSE) per image against the working-size image, averaged. Ratios are new / old (time: old / new, so above 1
means the new default is faster).

    python benchmarks/bench_fit_codebook.py             # vocab 512: 16 min on 2 busy cores, mostly the old fit
    python benchmarks/bench_fit_codebook.py --vocab 128 # a quicker run
    python benchmarks/bench_fit_codebook.py --markdown  # the table as Markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from vistok.samples import sample_images
from vistok.tokenizers.grid import GridConfig, GridTokenizer, KMeansSettings

# scikit-image photos that are not vistok's bundled samples (astronaut, chelsea/cat, coffee, hubble, rocket)
HELD_OUT = ("camera", "coins", "immunohistochemistry", "retina", "stereo_motorcycle", "page", "brick", "clock")


def held_out_photos() -> list[Image.Image]:
    import skimage.data

    photos = []
    for name in HELD_OUT:
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array
        photos.append(Image.fromarray(np.ascontiguousarray(array)).convert("RGB"))
    return photos


def mean_squared_distance(cells: np.ndarray, codebook: np.ndarray) -> float:
    """Mean over cells of the squared Euclidean distance to the nearest word."""
    tok = GridTokenizer(GridConfig(), codebook=codebook)
    ids = tok.nearest(cells)
    return float(((cells - codebook[ids]) ** 2).sum(axis=1).mean())


def round_trip_psnr(codebook: np.ndarray, photos: list[Image.Image]) -> float:
    """Mean PSNR (dB) of grid encode -> decode against the working-size image."""
    tok = GridTokenizer(GridConfig(), codebook=codebook)
    values = []
    for photo in photos:
        pixels, _ = tok.prepare(photo)
        decoded = np.asarray(tok.decode(tok.encode(photo)), np.float64) / 255.0
        values.append(10 * np.log10(1.0 / float(((decoded - pixels) ** 2).mean())))
    return float(np.mean(values))


def fit_old(cells: np.ndarray, vocab: int, seed: int) -> tuple[np.ndarray, str]:
    from sklearn.cluster import MiniBatchKMeans

    kmeans = MiniBatchKMeans(n_clusters=vocab, batch_size=4096, n_init=3, max_iter=200, random_state=seed,
                             compute_labels=False).fit(cells)
    return kmeans.cluster_centers_.astype(np.float32), f"{kmeans.n_steps_} steps"


def fit_new(cells: np.ndarray, vocab: int, seed: int) -> tuple[np.ndarray, str]:
    from vistok.tokenizers.grid import fit_kmeans

    steps: list[tuple[int, int]] = []
    codebook = fit_kmeans(cells, vocab, KMeansSettings(), seed=seed, on_step=lambda d, t: steps.append((d, t)))
    done = [d for d, _ in steps]  # an early stop ends with a jump to (total, total)
    real = done[-2] if len(done) > 1 and done[-1] > done[-2] + 1 else done[-1]
    return codebook, f"{real} of {steps[-1][1]} steps"


def measure(name: str, fit: Callable[[np.ndarray, int, int], tuple[np.ndarray, str]], cells: np.ndarray,
            held_cells: np.ndarray, photos: list[Image.Image], vocab: int, seed: int) -> dict[str, object]:
    start = time.perf_counter()
    codebook, steps = fit(cells, vocab, seed)
    seconds = time.perf_counter() - start
    return {"name": name, "seconds": seconds, "steps": steps, "train": mean_squared_distance(cells, codebook),
            "held": mean_squared_distance(held_cells, codebook), "psnr": round_trip_psnr(codebook, photos)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=512, help="words in the codebook (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()

    sampler = GridTokenizer(GridConfig())
    cells = sampler.sample_cells(sample_images(), (1.0, 2.0))  # exactly what GridTokenizer.fit clusters
    photos = held_out_photos()
    held_cells = np.concatenate([sampler.cells(sampler.prepare(p)[0])[0] for p in photos])
    print(f"{len(sample_images())} training photos -> {len(cells):,} cells of {cells.shape[1]} values; "
          f"{len(photos)} held-out photos -> {len(held_cells):,} cells; vocab {args.vocab}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    new = measure("new default", fit_new, cells, held_cells, photos, args.vocab, args.seed)
    old = measure("old (peer)", fit_old, cells, held_cells, photos, args.vocab, args.seed)

    header = ["settings", "fit (s)", "k-means steps", "train MSD", "held-out MSD", "held-out PSNR (dB)"]
    rows = [[r["name"], f"{r['seconds']:.1f}", r["steps"], f"{r['train']:.3f}", f"{r['held']:.3f}",
             f"{r['psnr']:.2f}"] for r in (old, new)]
    rows.append(["new vs old", f"{old['seconds'] / new['seconds']:.1f}x faster", "",
                 f"{new['train'] / old['train']:.3f}x", f"{new['held'] / old['held']:.3f}x",
                 f"{new['psnr'] - old['psnr']:+.2f} dB"])
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
