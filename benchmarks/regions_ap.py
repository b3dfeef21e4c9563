"""How well do the region detectors find what is there? COCO-style AP of ``faces`` (haar, lbp) and ``text``.

Synthetic sets with known boxes (:mod:`vistok.regions.synthetic`), so the number is repeatable, catches
regressions and compares backends; it is not an accuracy on real photos:

* faces: ``--n`` composites (default 60; seeded) of the bundled sample photos that show no person, randomly
  cropped and scaled to a short side of 400-640 px, with 1-4 face crops from scikit-image's ``lfw_subset``
  (the first 100 of its 25x25 grey crops are faces) scaled (bicubic) to 40-200 px and pasted at random
  non-overlapping places, plus 0-2 of its non-face crops as distractors. GT box = the pasted square.
* text: ``--n`` images of 1-3 lines of 1-3 random words in Pillow's scalable default font, 16-64 px, dark on a
  light plate or light on a dark one, over the same photos. GT = one box per line, ``ImageDraw.textbbox``.

AP is pycocotools' ``COCOeval`` on boxes (AP over IoU .50:.95, AP50, AR with 100 detections per image), the
ground truth and detections built in memory, one category. Each detector runs with its defaults; detections
keep their scores (``faces`` haar: a logistic of the cascade's level weight; lbp: a function of box size
alone, overlapping duplicates suppressed at IoU 0.3; see ``vistok.regions.detectors.faces``). Latency is the
median (and 90th percentile) wall time of one ``detect`` per image, after a warm-up image that loads the model;
cv2, OpenMP and onnxruntime run on ``--threads`` threads (default 1: on a busy 2-core machine more threads
mostly wait). If the ``text`` detector cannot be loaded, its row is skipped with a note.

    python benchmarks/regions_ap.py              # 1.5 to 2 minutes on 2 cores (lbp takes 3/4)
    python benchmarks/regions_ap.py --n 20       # a quick look
    python benchmarks/regions_ap.py --markdown   # the table as Markdown
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, str(os.path.dirname(os.path.abspath(__file__))))
from bench_knn import table  # noqa: E402


def run(detector: Any, images: Sequence[Any]) -> tuple[list[list[Any]], list[float]]:
    """Detections per image and seconds per image (after one warm-up detect)."""
    detector.detect(images[0])
    found, seconds = [], []
    for image in images:
        start = time.perf_counter()
        found.append(detector.detect(image))
        seconds.append(time.perf_counter() - start)
    return found, seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="images per set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="cv2 / OpenMP / onnxruntime threads")
    parser.add_argument("--no-lbp", action="store_true", help="skip faces lbp (the slowest backend)")
    parser.add_argument("--no-text", action="store_true")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be >= 1")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # before scikit-image's OpenMP starts

    from vistok.regions.base import load_detector
    from vistok.regions.evaluate import coco_scores
    from vistok.regions.synthetic import face_composites, text_images

    try:
        import cv2

        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    started = time.perf_counter()
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
               f"{args.threads} thread(s)")
    notes: list[str] = ["synthetic sets (pasted LFW face crops, rendered text over sample photos): a repeatable "
                        "number for regressions and backend comparison, not accuracy on real photos"]
    sets = {"faces": face_composites(args.n, args.seed), "text": None}
    backends: list[tuple[str, str, str, dict[str, Any]]] = [("faces", "faces", "haar", {"method": "haar"})]
    if not args.no_lbp:
        backends.append(("faces", "faces", "lbp", {"method": "lbp"}))
    if not args.no_text:
        sets["text"] = text_images(args.n, args.seed)
        backends.append(("text", "text", "PP-OCRv4 det", {"threads": args.threads}))

    rows = []
    for set_name, detector_name, label, options in backends:
        images, truth = sets[set_name]
        try:
            detector = load_detector(detector_name, **options)
            if hasattr(detector, "check"):  # loads the model now: a missing file or package skips the row
                detector.check()
        except Exception as error:  # noqa: BLE001 - a missing backend skips its row, with the reason
            notes.append(f"{detector_name} skipped: {type(error).__name__}: {error}")
            continue
        try:
            found, seconds = run(detector, images)
        except ImportError as error:
            notes.append(f"{detector_name} skipped: {type(error).__name__}: {error}")
            continue
        scores = coco_scores(truth, [np.array([r.box for r in f], np.float64).reshape(-1, 4) for f in found],
                             [np.array([r.score for r in f], np.float64) for f in found], [im.size for im in images])
        ms = np.asarray(seconds) * 1e3
        rows.append([set_name, f"{detector_name} ({label})", f"{len(images)}", f"{sum(len(t) for t in truth)}",
                     f"{sum(len(f) for f in found)}", f"{scores['AP']:.3f}", f"{scores['AP50']:.3f}",
                     f"{scores['AR100']:.3f}", f"{np.median(ms):.0f}", f"{np.percentile(ms, 90):.0f}"])
    print(table(f"Region detectors on synthetic sets, COCO box AP (pycocotools; seed {args.seed}; {machine})",
                ["set", "detector", "images", "GT boxes", "detections", "AP .50:.95", "AP50", "AR100",
                 "median ms", "p90 ms"], rows, args.markdown))
    notes.append(f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
