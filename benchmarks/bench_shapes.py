"""How fast ``vistok.vlm.shapes`` makes questions, beside the image processor that consumes them.

Two sides run in the same process on one core (``torch.set_num_threads(1)``), per image size:

* ``shapes``: ``list(vistok.vlm.shapes.questions(n, size=s))``: scene layout, Pillow drawing, the question.
* ``processor``: transformers' ``BitImageProcessor`` (the DINOv2 processor a focus-vit-s14 LLaVA uses:
  shortest edge 224, centre crop 224, rescale, normalise) on the same ``n`` images, batched, to tensors.

The ratio ``shapes / processor`` says how many times faster the generator is than the step after it, so a
training loop that draws fresh questions every step is not held up by them. Rates are the best of
``--passes`` passes (the ``timeit`` convention), each pass after one warm-up.

    python benchmarks/bench_shapes.py             # about a minute on 2 shared cores
    python benchmarks/bench_shapes.py --n 200 --passes 2
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch
from transformers import BitImageProcessor

from vistok.vlm.shapes import KINDS, questions


def _generate(n: int, size: int, kinds: tuple[str, ...]) -> list:
    return list(questions(n, size=size, kinds=kinds))


def _best_rate(work, n: int, passes: int) -> float:
    work()
    best = min(_timed(work) for _ in range(passes))
    return n / best


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="questions per pass (default 300)")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    processor = BitImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    print(f"{'size':>5} {'kind':>9} {'shapes q/s':>11} {'processor img/s':>16} {'shapes / processor':>19}")
    for size in (224, 448):
        for kind in ("all", *KINDS):
            kinds = KINDS if kind == "all" else (kind,)
            images = [q.image for q in questions(args.n, size=size, kinds=kinds)]
            ours = _best_rate(partial(_generate, args.n, size, kinds), args.n, args.passes)
            peer = _best_rate(partial(processor, images=images, return_tensors="pt"), args.n, args.passes)
            print(f"{size:>5} {kind:>9} {ours:>11.0f} {peer:>16.0f} {ours / peer:>18.1f}x")


if __name__ == "__main__":
    main()
