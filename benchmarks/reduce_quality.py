"""How much do the token reducers lose? Fashion-MNIST k-NN accuracy and pooled-feature error per method and keep
ratio, on focus-vit-s14 and efficientnet-lite0 tokens.

Every image is encoded once (focus-vit-s14 with keys, CLS attention and saliency; efficientnet-lite0's 7x7
feature map), then reduced with every registered method (``vistok.reduce_methods()``) at each keep ratio in
{1/16, 1/8, 1/4, 1/2}; methods that need a signal the encoder does not give are skipped and listed. Each
reduced set is pooled into one vector two ways:

* ``size-weighted`` (the issue's metric): the mean of the kept tokens weighted by how many patches each
  stands for. For a method that merges every token into size-weighted averages (pool, ToMe, ...) this equals
  the full mean exactly, so such methods score 100% here by construction.
* ``unweighted``: each kept token counts once, as a language model sees them; this separates the methods
  that merge everything.

A k-nearest-neighbour classifier (k=10, cosine, scikit-learn brute force) labels the test images from the
training images, both reduced the same way. Reported: accuracy as a fraction of the full-token accuracy
(same pooling), and the relative L2 error of the pooled vector against the full-token pooled vector (mean
over test images). Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) comes from the Debian package
``dataset-fashion-mnist``; the images are upscaled to 224x224 (focus-vit-s14: 16x16 = 256 tokens).

    python benchmarks/reduce_quality.py --markdown            # 1000 train / 500 test, ~6 minutes on 2 cores
    python benchmarks/reduce_quality.py --quick               # 300 / 200
    python benchmarks/reduce_quality.py --plot docs/reduce-quality.png
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

import vistok
from vistok.reducers import method_info

sys.path.insert(0, str(Path(__file__).parent))
from bench_knn import knn_accuracy, load_split, table, upscale  # noqa: E402

RATIOS = (Fraction(1, 16), Fraction(1, 8), Fraction(1, 4), Fraction(1, 2))
ENCODERS = {"focus-vit-s14": {"keys": True}, "efficientnet-lite0": {}}


def encode_all(name: str, options: dict, images: Sequence) -> list[vistok.Tokens]:
    tok = vistok.load(name, **options)
    out: list[vistok.Tokens] = []
    for start in range(0, len(images), 32):
        out += tok.encode(list(images[start:start + 32]))
    return out


def pool(tokens: vistok.Tokens, weighted: bool) -> np.ndarray:
    x = tokens.values.astype(np.float64)
    if not weighted or tokens.sizes is None:
        return x.mean(0)
    w = np.maximum(tokens.sizes, 1).astype(np.float64)
    return (w[:, None] * x).sum(0) / w.sum()


def run(args: argparse.Namespace) -> tuple[list[list[str]], list[str], dict]:
    x_train, y_train, x_test, y_test = load_split(args.train, args.test, args.seed)
    images = upscale(np.concatenate([x_train, x_test]), args.size)
    n = len(x_train)
    rows: list[list[str]] = []
    notes: list[str] = []
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for encoder, options in ENCODERS.items():
        start = time.perf_counter()
        tokens = encode_all(encoder, options, images)
        notes.append(f"{encoder}: encoded {len(tokens)} images in {time.perf_counter() - start:.0f} s, "
                     f"{len(tokens[0])} tokens each")
        full = {w: np.stack([pool(t, w) for t in tokens]) for w in (True, False)}
        base = {w: knn_accuracy(full[w][:n], y_train, full[w][n:], y_test, args.k) for w in (True, False)}
        rows.append([encoder, "all tokens", f"{len(tokens[0])}", f"{base[True]:.3f}", "1.000", "0", "1.000", "0", ""])
        for method in vistok.reduce_methods():
            info = method_info(method)
            missing = [s for s in info.needs if s not in tokens[0].extras]
            if missing:
                notes.append(f"{encoder}: {method} skipped (needs {', '.join(missing)})")
                continue
            for ratio in RATIOS:
                started = time.perf_counter()
                try:
                    reduced = vistok.reduce(tokens, method, ratio=float(ratio))
                except ValueError as err:
                    notes.append(f"{encoder}: {method} at {ratio} not possible ({err})")
                    continue
                seconds = (time.perf_counter() - started) / len(tokens)
                cells = []
                for weighted in (True, False):
                    feats = np.stack([pool(t, weighted) for t in reduced])
                    acc = knn_accuracy(feats[:n], y_train, feats[n:], y_test, args.k)
                    ref = full[weighted][n:]
                    err = np.linalg.norm(feats[n:] - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
                    cells += [f"{acc / base[weighted]:.3f}", f"{err.mean():.3f}"]
                    curves.setdefault((encoder, method, weighted), []).append(
                        (float(np.mean([len(t) for t in reduced])) / len(tokens[0]), acc / base[weighted]))
                kept = np.mean([len(t) for t in reduced])
                rows.append([encoder, method, f"{ratio} ({kept:.0f})", f"{base[True]:.3f}", *cells,
                             f"{seconds * 1e3:.2f}"])
    return rows, notes, curves


def winners(rows: list[list[str]]) -> list[list[str]]:
    """Per encoder and ratio: the best method by unweighted and by size-weighted accuracy fraction."""
    out = []
    for encoder in ENCODERS:
        for ratio in RATIOS:
            cand = [r for r in rows if r[0] == encoder and r[2].startswith(f"{ratio} ")]
            if not cand:
                continue
            best_u = max(cand, key=lambda r: float(r[6]))
            best_w = max(cand, key=lambda r: float(r[4]))
            out.append([encoder, str(ratio), f"{best_u[1]} ({best_u[6]})", f"{best_w[1]} ({best_w[4]})"])
    return out


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(ENCODERS)
    fig, axes = plt.subplots(1, len(encoders), figsize=(6 * len(encoders), 4.2), squeeze=False)
    for ax, encoder in zip(axes[0], encoders):
        methods = sorted({m for (e, m, w) in curves if e == encoder})
        colours = plt.get_cmap("tab20").colors
        for i, method in enumerate(methods):
            points = sorted(curves[(encoder, method, False)])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="os^Dv<>ph*X"[i % 11], label=method,
                    color=colours[(2 * i) % 20 if i < 10 else 2 * (i - 10) + 1])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fraction of tokens kept")
        ax.set_ylabel("k-NN accuracy / full-token accuracy (unweighted mean)")
        ax.set_title(f"{encoder}: Fashion-MNIST k-NN")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 train / 200 test")
    parser.add_argument("--plot", default=None, help="write the accuracy-vs-tokens plot (PNG) here")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test = 300, 200
    rows, notes, curves = run(args)
    setup = (f"Fashion-MNIST {args.train} train / {args.test} test (seed {args.seed}), {args.size}x{args.size}, "
             f"k={args.k} cosine; {platform.machine()}, {os.cpu_count()} CPUs")
    print(table(f"token reduction quality ({setup}); accuracy as a fraction of all tokens",
                ["encoder", "method", "ratio (tokens)", "full acc", "acc, size-weighted", "pooled err",
                 "acc, unweighted", "pooled err", "ms/image"], rows, args.markdown))
    print(table("best method per ratio", ["encoder", "ratio", "unweighted", "size-weighted"], winners(rows),
                args.markdown))
    for note in notes:
        print(f"note: {note}")
    if args.plot:
        plot(curves, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
