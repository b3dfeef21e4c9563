"""SigLIP's sigmoid loss against CLIP's softmax loss, trained LiT-style on frozen towers with ``vistok align``.

Data: Fashion-MNIST with captions from its class names (:mod:`vistok.align.data`); Pullover and Sneaker are held
out of training entirely. Towers: EfficientNet-Lite0 pooled features at ``--image-size`` (64 by default: the
28x28 images gain little from more) and all-MiniLM-L6-v2, both frozen; their features are computed once and
cached. Every row is one run of :func:`vistok.align.train`, the code behind ``vistok align``.

1. The recipe (``--batch-size``, ``--steps``), once per loss: zero-shot accuracy on the 10,000 test images over
   all ten classes (prompt ``"a photo of a {name}."``), on the eight seen classes' images and on the two held-out
   classes' images (still choosing among all ten; chance is 10%); the held-out images choosing between the two
   held-out names only (chance 50%) and how often their class is among the best three of ten (chance 30%); and
   image->text / text->image recall@1/@5 between 1,000 test images and one caption each (a caption matches every
   image of its class). :func:`vistok.align.train.fashion_mnist_eval` computes them all.
2. The batch-size sweep (``--sweep``): each batch size sees the same number of image-caption pairs
   (``--pairs``), so smaller batches take more steps, at the same learning rate; zero-shot accuracy per loss and
   the sigmoid/softmax ratio, the peer in the same run. Zhai et al. (2023, Figure 2) report sigmoid ahead at
   small batches and the two meeting as the batch grows.

    python benchmarks/align.py --markdown --plot docs/align-batch.png
    python benchmarks/align.py --sweep 16,64,256 --pairs 100000    # quicker
    python benchmarks/align.py --from-json align.json --markdown --plot docs/align-batch.png   # redraw
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import table  # noqa: E402

from vistok.align import LOSSES, train  # noqa: E402


def run(loss: str, batch_size: int, steps: int, args: argparse.Namespace, seed: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        metrics = train("fashion-mnist", out, loss=loss, image_size=args.image_size, batch_size=batch_size,
                        steps=steps, lr=args.lr, embed_dim=args.embed_dim, head=args.head, seed=seed)
        metrics["wall"] = time.perf_counter() - started
    return metrics


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def ratio(a: float, b: float) -> str:
    """``a / b``, or n/a when both are under 1% (a ratio of two near-zero scores says nothing)."""
    return "n/a" if max(a, b) < 0.01 else f"{a / max(b, 1e-9):.2f}x"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="the recipe's batch size (part 1)")
    parser.add_argument("--steps", type=int, default=2000, help="the recipe's steps (part 1)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--head", default="linear")
    parser.add_argument("--sweep", default="16,32,64,128,256,512,1024", help="batch sizes ('' to skip)")
    parser.add_argument("--pairs", type=int, default=256_000, help="image-caption pairs each sweep run sees")
    parser.add_argument("--seeds", type=int, default=1, help="sweep runs per cell (mean reported)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--plot", type=Path, help="write the sweep plot here (PNG)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--from-json", type=Path, help="print the tables and draw the plot from an earlier --json")
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        settings = argparse.Namespace(**{**report["settings"], "markdown": args.markdown, "plot": args.plot})
    else:
        report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        report["recipe"] = {loss: run(loss, args.batch_size, args.steps, args) for loss in LOSSES}
        sizes = [int(b) for b in args.sweep.split(",") if b.strip()]
        report["sweep"] = {loss: {str(b): [run(loss, b, max(1, args.pairs // b), args, seed=s)
                                           for s in range(args.seeds)] for b in sizes} for loss in LOSSES}
        settings = args
    show(report, settings)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


def show(report: dict[str, Any], args: argparse.Namespace) -> None:
    """The two tables and (``args.plot``) the sweep plot from a report."""
    recipe = report["recipe"]
    keys = ("zero_shot", "zero_shot_seen", "zero_shot_held_out", "held_out_pair", "held_out_top3", "i2t@1", "i2t@5",
            "t2i@1", "t2i@5")
    rows = [[loss, *(pct(m[k]) for k in keys), f"{m['wall']:.0f} s"] for loss, m in recipe.items()]
    rows.append(["ratio sigmoid/softmax", *(ratio(recipe["sigmoid"][k], recipe["softmax"][k]) for k in keys), ""])
    print(table(f"Fashion-MNIST test, batch {args.batch_size}, {args.steps} steps, EfficientNet-Lite0 @ "
                f"{args.image_size} px + MiniLM, {args.head} heads",
                ["loss", "zero-shot 10 (chance 10%)", "seen 8", "held-out 2", "held-out pair (chance 50%)",
                 "held-out top-3 (chance 30%)", "i2t@1", "i2t@5", "t2i@1", "t2i@5", "train"], rows, args.markdown))
    sweep = report.get("sweep") or {}
    sizes = sorted({int(b) for cells in sweep.values() for b in cells})
    if not sizes:
        return

    def mean(loss: str, batch: int, key: str) -> float:
        runs = sweep[loss][str(batch)]
        return sum(m[key] for m in runs) / len(runs)

    rows = []
    for batch in sizes:
        sig, soft = mean("sigmoid", batch, "zero_shot"), mean("softmax", batch, "zero_shot")
        rows.append([str(batch), str(max(1, args.pairs // batch)), pct(sig), pct(soft), ratio(sig, soft),
                     pct(mean("sigmoid", batch, "zero_shot_seen")), pct(mean("softmax", batch, "zero_shot_seen")),
                     pct(mean("sigmoid", batch, "zero_shot_held_out")),
                     pct(mean("softmax", batch, "zero_shot_held_out"))])
    print(table(f"Batch-size sweep: {args.pairs:,} pairs per run, lr {args.lr}, zero-shot (mean of {args.seeds} "
                f"seed{'s' if args.seeds > 1 else ''})",
                ["batch", "steps", "sigmoid, all 10", "softmax, all 10", "ratio", "sigmoid, seen 8", "softmax, seen 8",
                 "sigmoid, held-out 2", "softmax, held-out 2"], rows, args.markdown))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for loss, style, colour in (("sigmoid", "o-", "tab:blue"), ("softmax", "s--", "tab:orange")):
            axes[0].plot(sizes, [100 * mean(loss, b, "zero_shot") for b in sizes], style, color=colour, label=loss)
            axes[1].plot(sizes, [100 * mean(loss, b, "zero_shot_held_out") for b in sizes], style, color=colour,
                         label=loss)
        axes[0].set_title("all 10 classes")
        axes[1].set_title("the 2 held-out classes (chance 10%)")
        axes[1].axhline(10, color="grey", lw=0.8, ls=":")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel(f"batch size ({args.pairs:,} pairs per run)")
            ax.set_ylabel("zero-shot accuracy (%)")
            ax.legend(fontsize=8)
        fig.suptitle("SigLIP's sigmoid vs CLIP's softmax loss: LiT heads on EfficientNet-Lite0 + MiniLM, Fashion-MNIST",
                     fontsize=10)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
