"""Rate-distortion of the shipped learned tokenizers against JPEG, WebP and the `grid`/`patch` tokenizers.

For each held-out set (the Fashion-MNIST test set for ``fsq-fmnist``; the 64x64 tiles of the held-out sample
photos for ``fsq-natural64``) it reports PSNR and SSIM (scikit-image, mean over images) against bits per
pixel, in the same run:

* the learned tokenizer: ``tokens x log2(vocabulary) / pixels``, plus codebook usage, perplexity and
  encode/decode images/s;
* JPEG and WebP from Pillow at several qualities: the whole file's bytes x 8 / pixels (headers included,
  which is what storing one small image costs; for 28x28 images the header is most of the file);
* ``grid`` (k-means visual words) fitted on the training images at several cell sizes and vocabularies:
  ``cells x log2(vocab) / pixels``;
* ``patch`` (PCA) fitted on the training images, keeping ``dim`` components stored as float16:
  ``patches x dim x 16 / pixels``.

Grey Fashion-MNIST is coded as one channel everywhere (JPEG/WebP in mode "L"; grid/patch see replicated RGB
and are scored on one channel). rFID is not reported: Inception weights cannot be loaded offline.

    python benchmarks/learned_rd.py --markdown --plot docs/learned-rd.png      # ~4 minutes on 2 cores
    python benchmarks/learned_rd.py --quick                                     # 500 test images
"""

from __future__ import annotations

import argparse
import io
import math
import platform
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

import vistok
from vistok.learned.data import fashion_mnist, load_data
from vistok.learned.evaluate import evaluate, reconstruction_metrics
from vistok.tokenizers.grid import GridTokenizer
from vistok.tokenizers.patch import PatchConfig, PatchTokenizer

QUALITIES = (5, 10, 20, 30, 50, 70, 90)


def codec_points(images: list[np.ndarray], codec: str) -> list[dict]:
    """JPEG or WebP at each quality: bpp from the file size, PSNR/SSIM of the decoded image."""
    points = []
    for q in QUALITIES:
        bits, decoded = 0, []
        for a in images:
            im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a)
            buf = io.BytesIO()
            if codec == "JPEG":
                im.save(buf, "JPEG", quality=q, optimize=True)
            else:
                im.save(buf, "WEBP", quality=q, method=6)
            bits += 8 * buf.tell()
            back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(im.mode))
            decoded.append(back.reshape(a.shape))
        pixels = sum(a.shape[0] * a.shape[1] for a in images)
        points.append({"method": codec, "setting": f"q={q}", "bpp": bits / pixels,
                       **reconstruction_metrics(images, decoded)})
    return points


def _as_rgb(a: np.ndarray) -> np.ndarray:
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def _scored(a: np.ndarray, decoded: Image.Image) -> np.ndarray:
    out = np.asarray(decoded.convert("RGB"))
    return out[..., :1] if a.shape[2] == 1 else out


def grid_points(train: list[np.ndarray], images: list[np.ndarray], settings: Sequence[tuple[int, int]]) -> list[dict]:
    points = []
    for cell, vocab in settings:
        tok = GridTokenizer.fit([_as_rgb(a) for a in train], cell=cell, vocab=vocab, max_side=None, scales=(1.0,))
        decoded = [_scored(a, tok.decode(tok.encode(_as_rgb(a)))) for a in images]
        h, w = images[0].shape[:2]
        bpp = (h // cell) * (w // cell) * math.log2(vocab) / (h * w)
        points.append({"method": "grid", "setting": f"cell {cell}, vocab {vocab}", "bpp": bpp,
                       **reconstruction_metrics(images, decoded)})
    return points


def patch_points(train: list[np.ndarray], images: list[np.ndarray], patch: int, dims: Sequence[int]) -> list[dict]:
    full = PatchTokenizer.fit([_as_rgb(a) for a in train], patch=patch, max_side=None, scales=(1.0,))
    points = []
    for dim in dims:
        mean, components = full.pca
        tok = PatchTokenizer(PatchConfig(patch=patch, max_side=None, dim=dim), mean=mean, components=components)
        decoded = []
        for a in images:
            tokens = tok.encode(_as_rgb(a))
            tokens.values = tokens.values.astype(np.float16).astype(np.float32)  # stored as float16
            decoded.append(_scored(a, tok.decode(tokens)))
        h, w = images[0].shape[:2]
        bpp = (h // patch) * (w // patch) * dim * 16 / (h * w)
        points.append({"method": "patch", "setting": f"patch {patch}, dim {dim}, float16", "bpp": bpp,
                       **reconstruction_metrics(images, decoded)})
    return points


def learned_point(name: str, images: list[np.ndarray]) -> dict:
    result = evaluate(vistok.load(name), images)
    return {"method": name, "setting": f"vocab {result['vocab_size']}", "bpp": result["bits_per_pixel"],
            "psnr": result["psnr"], "ssim": result["ssim"], "usage": result["usage"],
            "perplexity": result["perplexity"], "encode": result["encode_images_per_s"],
            "decode": result["decode_images_per_s"]}


def table(title: str, points: list[dict], markdown: bool) -> str:
    rows = [(p["method"], p["setting"], f"{p['bpp']:.3f}", f"{p['psnr']:.2f}", f"{p['ssim']:.3f}") for p in points]
    header = ("method", "setting", "bits/pixel", "PSNR dB", "SSIM")
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([title, fmt.format(*header), *[fmt.format(*r) for r in rows]]) + "\n"


def at_same_rate(points: list[dict], learned: dict, codec: str) -> str:
    """The codec's PSNR interpolated at the learned tokenizer's bits per pixel (or why it cannot be)."""
    curve = sorted((p["bpp"], p["psnr"]) for p in points if p["method"] == codec)
    x = [c[0] for c in curve]
    if learned["bpp"] < x[0]:
        return f"{codec} cannot go as low as {learned['bpp']:.3f} bpp (its lowest is {x[0]:.3f} bpp, {curve[0][1]:.2f} dB)"
    if learned["bpp"] > x[-1]:
        return f"{codec} at its highest quality uses {x[-1]:.3f} bpp"
    psnr = float(np.interp(learned["bpp"], x, [c[1] for c in curve]))
    verdict = "beats" if learned["psnr"] > psnr else "loses to"
    return (f"{learned['method']} ({learned['psnr']:.2f} dB) {verdict} {codec} at the same {learned['bpp']:.3f} bpp "
            f"({psnr:.2f} dB)")


def run(name: str, model: str, train: list[np.ndarray], test: list[np.ndarray], grid: Sequence[tuple[int, int]],
        patch: int, dims: Sequence[int], markdown: bool) -> list[dict]:
    t0 = time.perf_counter()
    learned = learned_point(model, test)
    points = [learned, *codec_points(test, "JPEG"), *codec_points(test, "WEBP"),
              *grid_points(train, test, grid), *patch_points(train, test, patch, dims)]
    print(table(f"{name}: {len(test)} held-out images of {test[0].shape[1]}x{test[0].shape[0]}", points, markdown))
    print(f"{model}: codebook usage {learned['usage']:.1%}, perplexity {learned['perplexity']:.0f} of "
          f"{learned['setting'].split()[-1]}; encode {learned['encode']:.0f} images/s, decode "
          f"{learned['decode']:.0f} images/s (batch 128, CPU)")
    for codec in ("JPEG", "WEBP"):
        print("- " + at_same_rate(points, learned, codec))
    print(f"({time.perf_counter() - t0:.0f} s)\n")
    return points


def plot(results: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5))
    for ax, (name, points) in zip(np.atleast_1d(axes), results.items()):
        for method, style in (("JPEG", "o-"), ("WEBP", "s-"), ("grid", "^--"), ("patch", "v--")):
            curve = sorted((p["bpp"], p["psnr"]) for p in points if p["method"] == method)
            ax.plot(*zip(*curve), style, label=method if method != "WEBP" else "WebP", alpha=0.85)
        for p in points:
            if p["method"].startswith("fsq"):
                ax.plot(p["bpp"], p["psnr"], "r*", markersize=16, label=p["method"])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("bits per pixel (log scale)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quick", action="store_true", help="500 Fashion-MNIST test images instead of 10,000")
    parser.add_argument("--plot", help="write the rate-distortion chart (PNG) here")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}\n")
    rng = np.random.default_rng(0)
    fm_train = fashion_mnist("train")
    fm_fit = list(fm_train[rng.choice(len(fm_train), 2000, replace=False)])
    fm_test = list(fashion_mnist("test")[: 500 if args.quick else None])
    nat = load_data("samples-64", pool=2000, seed=0)
    results = {
        "Fashion-MNIST test": run("Fashion-MNIST test", "fsq-fmnist", fm_fit, fm_test,
                                  [(2, 256), (4, 1024), (7, 1024)], 7, [2, 4, 8, 16], args.markdown),
        "held-out photo tiles": run("held-out sample-photo tiles", "fsq-natural64", list(nat.train[:500]),
                                    list(nat.test), [(4, 1024), (8, 1024), (16, 256)], 8, [4, 8, 16, 32],
                                    args.markdown),
    }
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
