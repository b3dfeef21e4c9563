"""How good are the tokens as features? Fashion-MNIST k-NN accuracy, and focus-vit-s14 encode throughput.

Quality: each image's tokens are pooled into one vector (soft tokens: the mean over tokens; hard tokens: the
histogram of ids, which is the mean of their one-hot vectors) and a k-nearest-neighbour classifier (k=10,
cosine distance, majority vote; scikit-learn, brute force) labels the test images from the training images.
The split is a seeded random sample: ``--train`` images from Fashion-MNIST's training set and ``--test``
from its test set (``t10k``). Every tokenizer sees the same 28x28 images upscaled (bicubic) to
``--size`` pixels square; "raw pixels" is the 784 original grey levels. Fashion-MNIST (Xiao, Rasul and
Vollgraf, 2017; MIT) comes from the Debian package ``dataset-fashion-mnist``
(``apt-get install -y dataset-fashion-mnist``).

For focus-vit-s14 the table also sweeps the block (``layer``), with and without the final LayerNorm and
with the CLS vector instead of the mean patch token. The sweep runs the model once with
``output_hidden_states``; a check asserts that at the default layer it equals ``vistok.load(...).encode``.

Throughput: ``encode`` of 16 images (``--size`` square, one batch) with focus-vit-s14's two backends,
onnxruntime (the package's original graph) and PyTorch (transformers ``Dinov2Model``), both with the default
extras (saliency, CLS attention), and the bare model forward on ready pixels. Best of ``--repeats`` runs
after a warm-up.

    python benchmarks/bench_knn.py                 # 1000 train / 500 test at 224 px, about 6 minutes on 2 cores
    python benchmarks/bench_knn.py --quick         # 300 / 200, about 2 minutes
    python benchmarks/bench_knn.py --markdown      # the tables as Markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

import vistok
from vistok.compare import knn
from vistok.compare.knn import knn_accuracy, pooled, upscale  # noqa: F401 - other benchmarks import them from here

FOCUS = "focus-vit-s14"


def load_split(n_train: int, n_test: int, seed: int, validation: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`vistok.compare.knn.load_split`, exiting with its message when Fashion-MNIST is not installed."""
    try:
        return knn.load_split(n_train, n_test, seed, validation)
    except FileNotFoundError as error:
        sys.exit(str(error))


def features(name: str, images: Sequence[Image.Image], **options: object) -> np.ndarray:
    return knn.encode_pooled(vistok.load(name, **options), images)


def focus_sweep(images: Sequence[Image.Image], size: int) -> dict[str, np.ndarray]:
    """Pooled focus-vit-s14 features at every block from one forward pass per batch: mean patch token with and
    without the final LayerNorm, and the CLS vector (normed)."""
    import torch

    from vistok.preprocess import Preprocess, preprocess
    from vistok.weights import focus_vit

    model = focus_vit.build_backbone()
    pre = focus_vit.PREPROCESS
    cfg = Preprocess(size=(size, size), crop=None, resample="bicubic", rescale=pre["rescale"], mean=pre["mean"],
                     std=pre["std"])
    out: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, len(images), 16):
            hidden = model(preprocess(list(images[start:start + 16]), cfg), output_hidden_states=True).hidden_states
            for layer, h in enumerate(hidden):
                normed = model.layernorm(h)
                out.setdefault(f"mean.norm.{layer}", []).append(normed[:, 1:].mean(1).numpy())
                out.setdefault(f"mean.raw.{layer}", []).append(h[:, 1:].mean(1).numpy())
                out.setdefault(f"cls.norm.{layer}", []).append(normed[:, 0].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


# -- throughput ---------------------------------------------------------------------------------------

def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: loads weights, builds sessions
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def throughput(images: Sequence[Image.Image], size: int, repeats: int) -> list[tuple[str, float, float | None]]:
    """(label, images/s, max |torch - onnxruntime| of the tokens) for batch-16 runs."""
    import torch

    from vistok.weights import focus_vit

    batch = list(images[:16])
    rows: list[tuple[str, float, float | None]] = []
    toks = {b: vistok.load(FOCUS, backend=b) for b in ("onnxruntime", "torch")}
    results = {b: tok.encode(batch) for b, tok in toks.items()}
    diff = max(float(np.abs(a.values - b.values).max()) for a, b in zip(results["torch"], results["onnxruntime"]))
    for backend, tok in toks.items():
        seconds = best_time(lambda tok=tok: tok.encode(batch), repeats)
        rows.append((f"encode, {backend} (tokens + saliency + CLS attention)", len(batch) / seconds, diff))
    pixels = toks["torch"]._pixels(batch, (size, size))
    graph = focus_vit.OnnxFocus()
    seconds = best_time(lambda: graph.run(pixels.numpy(), ("final",)), repeats)
    rows.append(("model only, onnxruntime (whole graph, incl. saliency head)", len(batch) / seconds, None))
    seconds = best_time(lambda: graph.run(pixels.numpy(), ("hidden.12",)), repeats)
    rows.append(("model only, onnxruntime (12 blocks, no head)", len(batch) / seconds, None))
    model = focus_vit.build_backbone()

    def forward() -> object:
        with torch.inference_mode():
            return model(pixel_values=pixels)

    seconds = best_time(forward, repeats)
    rows.append(("model only, torch Dinov2Model (12 blocks, sdpa)", len(batch) / seconds, None))
    return rows


# -- report -------------------------------------------------------------------------------------------

def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([title, fmt.format(*header), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*r) for r in rows]) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=224, help="pixels the 28x28 images are upscaled to")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per throughput row (best is kept)")
    parser.add_argument("--quick", action="store_true", help="300 train / 200 test, 2 timed runs")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--validation", action="store_true",
                        help="evaluate on held-out training images instead of the test set (for choosing the layer)")
    parser.add_argument("--sweep-only", action="store_true", help="only the focus-vit-s14 layer sweep")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.repeats = 300, 200, 2

    x_train, y_train, x_test, y_test = load_split(args.train, args.test, args.seed, args.validation)
    images = upscale(np.concatenate([x_train, x_test]), args.size)
    n = len(x_train)
    rows: list[list[str]] = []
    notes: list[str] = []
    default: np.ndarray | None = None

    def add(label: str, feats: np.ndarray, seconds: float | None = None) -> float:
        acc = knn_accuracy(feats[:n], y_train, feats[n:], y_test, args.k)
        rows.append([label, f"{acc:.3f}", f"{feats.shape[1]}", "" if seconds is None else f"{seconds:.0f}"])
        return acc

    raw = np.concatenate([x_train, x_test]).reshape(n + len(x_test), -1).astype(np.float32) / 255
    add("raw pixels (28x28 grey levels)", raw)
    for name, label, options in [("grid", "grid (id histogram)", {}), ("patch", "patch (mean PCA token)", {}),
                                 ("efficientnet-lite0", "efficientnet-lite0 (mean token)", {}),
                                 (FOCUS, f"{FOCUS} default (mean token)", {"saliency": False, "attentions": False})]:
        if args.sweep_only:
            break
        if name not in vistok.list_tokenizers():
            notes.append(f"{name}: not registered in this vistok, skipped")
            continue
        start = time.perf_counter()
        try:
            feats = features(name, images, **options)
        except (FileNotFoundError, ValueError, ImportError) as err:
            notes.append(f"{name}: skipped ({err})")
            continue
        if name == FOCUS:
            default = feats
        add(label, feats, time.perf_counter() - start)

    sweep = focus_sweep(images, args.size)
    layer = vistok.load(FOCUS).layer
    if default is not None:
        gap = float(np.abs(sweep[f"mean.norm.{layer}"] - default).max())
        assert gap < 1e-4, f"sweep and tokenizer disagree at layer {layer}: {gap}"
        notes.append(f"sweep at layer {layer} (normed mean) equals the tokenizer's encode (max diff {gap:.1e})")
    sweep_rows = []
    layers = sorted({int(k.rsplit(".", 1)[1]) for k in sweep})
    for i in layers:
        accs = [knn_accuracy(sweep[f"{kind}.{i}"][:n], y_train, sweep[f"{kind}.{i}"][n:], y_test, args.k)
                for kind in ("mean.norm", "mean.raw", "cls.norm")]
        mark = " (default)" if i == layer else ""
        sweep_rows.append([f"{i}{mark}", *(f"{a:.3f}" for a in accs)])

    part = "validation (held-out training images)" if args.validation else "test"
    setup = (f"Fashion-MNIST, {args.train} train / {args.test} {part} (seeded sample, seed {args.seed}), images upscaled "
             f"to {args.size}x{args.size}, k={args.k}, cosine; {platform.machine()}, {os.cpu_count()} CPUs")
    if rows[1:]:
        print(table(f"k-NN accuracy ({setup})", ["features", "accuracy", "dim", "encode s"], rows, args.markdown))
    print(table(f"{FOCUS} by layer ({part}; hidden_states index; 0 = embeddings, 12 = last block)",
                ["layer", "mean token, normed", "mean token, raw", "CLS, normed"], sweep_rows, args.markdown))
    if not args.no_throughput:
        trows = throughput(images, args.size, args.repeats)
        print(table(f"{FOCUS} throughput, batch of 16 at {args.size}x{args.size} ({os.cpu_count()} CPUs, "
                    f"best of {args.repeats})", ["path", "images/s", "max |torch - ort| of tokens"],
                    [[label, f"{rate:.1f}", "" if d is None else f"{d:.1e}"] for label, rate, d in trows],
                    args.markdown))
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
