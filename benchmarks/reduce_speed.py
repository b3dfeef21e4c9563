"""How fast is token reduction? The in-model ToMe patch's throughput and accuracy, and every reducer's latency.

ToMe in the model (:mod:`vistok.reducers.tome_patch`; Bolya et al., "Token Merging: Your ViT but Faster", ICLR
2023): ``focus-vit-s14`` (its default block 9, so 9 blocks run; saliency and CLS attention off) encodes
Fashion-MNIST images upscaled to 224 and to 448 pixels with ``tome_r`` in ``--r``: each block merges ``r``
tokens. Images/s is ``--batch`` over the median time of one ``encode`` of a batch (preprocessing included)
across the split's batches; the r values take turns batch by batch, so a slowdown of the shared machine hits
all of them alike, and the median drops the batches it hit hardest. Accuracy is
the same run's k-NN (k=10, cosine, as in ``bench_knn.py``) on each image's size-weighted mean token. The
ratios are against r=0 of the same run (the unpatched model: r=0 runs it unchanged). Goal: at least 1.5x
images/s for at most 2 points of accuracy. ToMe's r is per block and only 9 blocks run, so r=16 leaves 112 of
256 tokens at 224 (at best ~1.4x: the blocks before the last see more) and 880 of 1024 at 448; ``--extra-224``
and ``--extra-448`` add larger r values (marked "extra"). A 448 image costs about 6x a 224 one, so its split
is smaller (64 / 32 by default: a coarse accuracy, 3 points per test image). The goal column uses the ratios
as printed (2 decimals).

Reducer latency: every method in ``vistok.reduce_methods()`` on random tokens of ``D=1024`` (N=576 on a 24x24
grid, as CLIP ViT-L/14 at 336 px gives LLaVA; N=2880 on 48x60), keeping 1/4, with the signals each method
declares synthesised: ``cls_attention`` a softmax of random logits over CLS + N (the N patch entries),
``keys`` random ``(N, --key-dim)``, ``saliency`` uniform in [0, 1], ``query`` random ``(1024,)``. Keys are 64
wide by default: what ``vistok.vlm`` captures from LLaVA-1.5's tower (the keys of CLIP ViT-L/14's selection
layer averaged over its 16 heads of 64, as VisionZip's and ToMe's code average them).
``--key-dim 1024`` is the worst case, the full ``k_proj`` output that PruMerge's official code
(``token_prune_merge_advanced`` in 42Shawn/LLaVA-PruMerge) compares; keys feed prumerge, prumerge+, tome and
visionzip, the other methods do not use them. Median of
``--repeats`` runs after a warm-up of ``vistok.reduce`` (the whole call: signal checks, the torch method, the
rebuilt Tokens with provenance), of the numpy reducers as they were before the port to torch (read from git
history by ``legacy_reducers.py``, the named peer: "numpy" is its time, "vs numpy" the ratio), and of
``vistok.reducers.reduce_tensor`` on the same float32 tokens as a ``(1, N, D)`` tensor. BLAS and torch run on
``--threads`` threads (default 1: on a busy 2-core machine a second thread waits on the other process and makes
a 1 ms product take 30-70 ms). Goal: ``reduce()`` under 10 ms at N=576.

    python benchmarks/reduce_speed.py              # about 9 minutes on 2 cores
    python benchmarks/reduce_speed.py --quick      # smaller splits, about 4 minutes
    python benchmarks/reduce_speed.py --no-tome    # the latency table alone, under a minute
    python benchmarks/reduce_speed.py --markdown   # the tables as Markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import knn_accuracy, load_split, table, upscale  # noqa: E402

import vistok  # noqa: E402

FOCUS = "focus-vit-s14"


# -- ToMe in the model ------------------------------------------------------------------------------------

def pooled(tokens: vistok.Tokens) -> np.ndarray:
    """The size-weighted mean token: every patch counts once, merged or not."""
    sizes = tokens.sizes.astype(np.float64)
    return (tokens.values * sizes[:, None]).sum(0) / sizes.sum()


def tome_runs(size: int, rs: Sequence[int], n_train: int, n_test: int, batch: int, k: int, seed: int
              ) -> list[dict[str, object]]:
    """One row per r: tokens left, images/s, k-NN accuracy; the r values take turns on every batch."""
    from vistok.reducers.tome_patch import merged_count

    x_train, y_train, x_test, y_test = load_split(n_train, n_test, seed)
    images = upscale(np.concatenate([x_train, x_test]), size)
    toks = {r: vistok.load(FOCUS, size=size, saliency=False, attentions=False, tome_r=r, batch_size=batch)
            for r in rs}
    for tok in toks.values():  # warm-up: weights, kernels
        tok.encode(images[:batch])
    seconds: dict[int, list[float]] = {r: [] for r in rs}
    feats: dict[int, list[np.ndarray]] = {r: [] for r in rs}
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        for r, tok in toks.items():
            begin = time.perf_counter()
            tokens = tok.encode(chunk)
            seconds[r].append((time.perf_counter() - begin) / len(chunk))
            feats[r] += [pooled(t) for t in tokens]
    layer = toks[rs[0]].layer
    patches = (size // toks[rs[0]].patch) ** 2
    rows = []
    for r in rs:
        f = np.stack(feats[r])
        left = merged_count(patches, r, layer)
        rows.append({"size": size, "r": r, "tokens": left, "capped": left > patches - r * layer,
                     "rate": 1 / float(np.median(seconds[r])),
                     "acc": knn_accuracy(f[:n_train], y_train, f[n_train:], y_test, k)})
    return rows


# -- reducer latency --------------------------------------------------------------------------------------

def synthetic(n: int, grid: tuple[int, int], dim: int, seed: int, key_dim: int | None = None
              ) -> tuple[vistok.Tokens, dict[str, np.ndarray]]:
    """Random tokens ``(n, dim)`` on ``grid`` and every signal; keys ``(n, key_dim)`` (default ``dim``)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=n + 1)
    attention = np.exp(logits - logits.max())
    attention /= attention.sum()
    signals = {"cls_attention": attention[1:].astype(np.float32),
               "keys": rng.normal(size=(n, key_dim or dim)).astype(np.float32),
               "saliency": rng.uniform(size=n).astype(np.float32),
               "query": rng.normal(size=dim).astype(np.float32)}
    tokens = vistok.Tokens.from_grid(rng.normal(size=(n, dim)).astype(np.float32), grid,
                                     meta={"tokenizer": "synthetic"})
    return tokens, signals


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: lazy imports, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def latency(dim: int, repeats: int, seed: int, key_dim: int = 64
            ) -> tuple[list[str], dict[tuple[str, int], tuple[float, ...]]]:
    """Per (method, N): ms of ``vistok.reduce``, of the numpy-era ``reduce`` and of ``reduce_tensor``."""
    import torch
    from legacy_reducers import load

    from vistok.reducers import method_info, reduce_tensor

    numpy_reduce = load()
    methods = vistok.reduce_methods()
    out: dict[tuple[str, int], tuple[float, ...]] = {}
    for n, grid in ((576, (24, 24)), (2880, (48, 60))):
        tokens, all_signals = synthetic(n, grid, dim, seed, key_dim)
        x = torch.from_numpy(tokens.values)[None]
        for name in methods:
            info = method_info(name)
            signals = {s: all_signals[s] for s in (*info.needs, *info.uses) if s in all_signals}
            tensors = {s: torch.from_numpy(v)[None] for s, v in signals.items()}
            whole = median_ms(lambda: vistok.reduce(tokens, name, ratio=0.25, **signals), repeats)  # noqa: B023 (timed here)
            old = median_ms(lambda: numpy_reduce(tokens, name, ratio=0.25, **signals), repeats)  # noqa: B023
            batched = median_ms(lambda: reduce_tensor(x, name, ratio=0.25, token_grid=grid, **tensors), repeats)  # noqa: B023
            out[(name, n)] = (whole, old, batched)
    return methods, out


# -- report -----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--r", default="0,4,8,16", help="ToMe r values (tokens merged per block)")
    parser.add_argument("--extra-224", default="20,24", help="extra r values at 224 (empty: none)")
    parser.add_argument("--extra-448", default="64,96", help="extra r values at 448 (empty: none)")
    parser.add_argument("--train", type=int, default=400, help="training images at 224")
    parser.add_argument("--test", type=int, default=200, help="test images at 224")
    parser.add_argument("--train-448", type=int, default=64, help="training images at 448 (each costs ~6x)")
    parser.add_argument("--test-448", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per latency cell (median kept)")
    parser.add_argument("--dim", type=int, default=1024, help="token size for the latency table")
    parser.add_argument("--key-dim", type=int, default=64,
                        help="width of the keys signal (64: LLaVA-1.5's mean over heads; 1024: PruMerge's full keys)")
    parser.add_argument("--threads", type=int, default=1, help="BLAS and torch threads for the latency table")
    parser.add_argument("--quick", action="store_true", help="160/80 at 224, 32/16 at 448, 5 repeats")
    parser.add_argument("--no-tome", action="store_true", help="skip the in-model ToMe table")
    parser.add_argument("--no-latency", action="store_true", help="skip the reducer latency table")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.train, args.test, args.train_448, args.test_448, args.repeats = 160, 80, 32, 16, 5
    rs = [int(v) for v in args.r.split(",") if v.strip()]
    extra = {size: [int(v) for v in text.split(",") if v.strip() and int(v) not in rs]
             for size, text in ((224, args.extra_224), (448, args.extra_448))}
    started = time.perf_counter()
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    notes: list[str] = []

    if not args.no_tome:
        rows = []
        for size, n_train, n_test in ((224, args.train, args.test), (448, args.train_448, args.test_448)):
            values = rs + extra[size]
            for row in tome_runs(size, values, n_train, n_test, args.batch, args.k, args.seed):
                rows.append((row, n_train, n_test))
        out = []
        for row, n_train, n_test in rows:
            base = next(b for b, _, _ in rows if b["size"] == row["size"] and b["r"] == 0)
            speed, drop = row["rate"] / base["rate"], (base["acc"] - row["acc"]) * 100 + 0.0
            goal = "yes" if round(speed, 2) >= 1.5 and round(drop, 1) <= 2 else "no"
            label = f"{row['r']}{' extra' if row['r'] in extra[row['size']] else ''}"
            out.append([f"{row['size']}", f"{n_train} / {n_test}", f"{label}{' (capped)' if row['capped'] else ''}",
                        f"{row['tokens']}", f"{row['rate']:.1f}", f"{speed:.2f}x", f"{row['acc']:.3f}",
                        f"{0.0 - drop:+.1f}", "" if row["r"] == 0 else goal])
            if row["capped"]:
                notes.append(f"r={row['r']} at {row['size']}: capped, a block merges at most half of its tokens")
        print(table(f"ToMe inside {FOCUS} (block 9, batch {args.batch}; Fashion-MNIST k-NN k={args.k}, cosine, "
                    f"size-weighted mean token; {machine})",
                    ["px", "train / test", "r", "tokens", "images/s", "vs r=0", "k-NN acc", "points",
                     "goal (>=1.5x, <=2 pt)"], out, args.markdown))

    if not args.no_latency:
        import torch
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            with threadpool_limits(limits=args.threads):
                methods, cells = latency(args.dim, args.repeats, args.seed, args.key_dim)
        finally:
            torch.set_num_threads(threads)
        out = []
        for name in methods:
            (w576, o576, t576), (w2880, o2880, _) = cells[(name, 576)], cells[(name, 2880)]
            out.append([name, f"{w576:.1f}", f"{o576:.1f}", f"{o576 / w576:.1f}x", f"{t576:.1f}", f"{w2880:.1f}",
                        f"{o2880:.1f}", f"{o2880 / w2880:.1f}x", "yes" if w576 < 10 else "no"])
        print(table(f"Reducer latency, ms (median of {args.repeats}; D={args.dim}, keys {args.key_dim} wide, keep 1/4; "
                    f"{args.threads} BLAS/torch "
                    f"thread(s); numpy = the reducers before the port to torch; {machine})",
                    ["method", "576 reduce()", "576 numpy", "vs numpy", "576 reduce_tensor", "2880 reduce()",
                     "2880 numpy", "vs numpy", "< 10 ms at 576"], out, args.markdown))
    notes.append(f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
