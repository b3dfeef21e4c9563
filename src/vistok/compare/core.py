"""Measure tokenizers side by side on your images and on small labelled sets, one row per tokenizer.

On the images you give: tokens and bits per image, reconstruction PSNR/SSIM (tokenizers that decode), encode
throughput, how much the tokens change under five perturbations (:mod:`vistok.compare.perturb`), and boundary
recall/precision of the token layout against SLIC superpixel boundaries (Achanta et al., TPAMI 2012).
On labelled sets: k-NN accuracy on Fashion-MNIST, clean and under the same perturbations
(:mod:`vistok.compare.knn`); how much one token says about the image's class (adjusted mutual information,
a proxy for interpretability); region AP on the synthetic face and text sets of :mod:`vistok.regions.synthetic`;
and on rendered shape scenes with exact object masks (:func:`vistok.vlm.shapes.scene`), the layout's boundary
recall against the true object edges and the edge fidelity of the tokens (:func:`measures.edge_fidelity`).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok.compare import DEFAULT_TOKENIZERS, STAGES, measures
from vistok.compare.perturb import PERTURBATIONS, perturb
from vistok.tokens import Tokens

__all__ = ["Settings", "Row", "Comparison", "compare"]

#: PSNR is capped here: a lossless decode (infinite PSNR) reads as this many dB.
LOSSLESS_DB = 100.0
_BOUNDARY_SIDE = 256  # images are measured for boundaries at this longer side
_SUPERPIXELS = 100  # SLIC segments per image for the reference boundaries
_AMI_TOKENS = 16  # tokens sampled per training image for the class-information measure
_AMI_CLUSTERS = 256  # soft token vectors are clustered into this many words first


@dataclass(frozen=True)
class Settings:
    """How much of each labelled set to use; ``knn=False`` (or zero images) skips a measure."""

    knn: bool = True
    knn_train: int = 300
    knn_test: int = 100
    knn_size: int = 112
    k: int = 10
    ap_images: int = 20
    scenes: int = 40
    scene_size: int = 224
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("knn_train", "knn_test", "knn_size", "k", "ap_images", "scenes", "scene_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.knn and (self.knn_train < 1 or self.knn_test < 1 or self.k < 1 or self.knn_size < 8):
            raise ValueError("knn_train, knn_test and k must be at least 1, and knn_size at least 8, when knn is on")
        if self.scenes and self.scene_size < 48:
            raise ValueError(f"scene_size must be at least 48 (a 3x3 grid of shapes), got {self.scene_size}")


@dataclass
class Row:
    """Everything measured for one tokenizer; None where a measure does not apply or was skipped."""

    tokenizer: str
    kind: str = ""
    decodes: bool = False
    regions: bool = False
    tokens_per_image: float | None = None
    bits_per_image: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    images_per_s: float | None = None
    change: dict[str, float] = field(default_factory=dict)
    boundary_recall: float | None = None
    boundary_precision: float | None = None
    knn: float | None = None
    knn_under: dict[str, float] = field(default_factory=dict)
    class_ami: float | None = None
    region_ap: dict[str, float] | None = None
    scene_boundary_recall: float | None = None
    edge_fidelity: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def knn_drop(self) -> float | None:
        """Mean accuracy lost over the perturbations (clean minus perturbed), in points of accuracy (0..1)."""
        if self.knn is None or not self.knn_under:
            return None
        return float(self.knn - np.mean(list(self.knn_under.values())))


@dataclass
class Comparison:
    """The result of :func:`compare`: one :class:`Row` per tokenizer, the images measured, those skipped."""

    rows: list[Row]
    images: list[str]
    skipped: dict[str, str]
    settings: Settings
    machine: str
    notes: list[str] = field(default_factory=list)

    def claims(self) -> list[Any]:
        """The hard-versus-soft claims of the image tokenization overview, with what was measured here (:func:`vistok.compare.claims.judge`)."""
        from vistok.compare.claims import judge

        return judge(self.rows)

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "skipped": self.skipped, "settings": asdict(self.settings),
                "machine": self.machine, "notes": self.notes,
                "rows": [{**asdict(r), "knn_drop": r.knn_drop} for r in self.rows],
                "claims": [asdict(c) for c in self.claims()]}

    def to_markdown(self, plots: dict[str, str] | None = None) -> str:
        from vistok.compare.report import markdown

        return markdown(self, plots or {})

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``compare.md``, ``compare.html`` (self-contained), ``compare.json`` and the plots' PNGs to
        ``out_dir``; returns the paths by kind."""
        from vistok.compare.report import write

        return write(self, Path(out_dir))


# ------------------------------------------------------------------------------------------------- measuring

def _open_all(images: Sequence[Any]) -> tuple[list[Image.Image], list[str], dict[str, str]]:
    from vistok.images import ImageError, open_image

    opened, names, skipped = [], [], {}
    for item in images:
        name = str(item) if isinstance(item, (str, os.PathLike)) else f"image {len(names) + len(skipped)}"
        try:
            opened.append(open_image(item))
            names.append(name)
        except (ImageError, OSError, ValueError, TypeError) as exc:
            skipped[name] = str(exc)
    return opened, names, skipped


def _boundary_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = _BOUNDARY_SIDE / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _superpixel_edges(image: Image.Image) -> np.ndarray:
    """Boundaries of SLIC superpixels (scikit-image) of ``image`` at the boundary measuring size."""
    from skimage.segmentation import find_boundaries, slic

    small = np.asarray(image.resize(_boundary_size(image.size), Image.Resampling.BILINEAR))
    labels = slic(small, n_segments=_SUPERPIXELS, compactness=10, start_label=0)
    return find_boundaries(labels, mode="inner")


def _usable(tokenizer: Any, images: list[Image.Image], names: list[str], row: Row) -> list[int]:
    """Indices of the images ``tokenizer`` can encode; each one it refuses (an aspect ratio past its bound, an
    image too small for one token) is named in ``row.notes`` and left out of this row only."""
    from vistok.images import ImageError

    try:
        tokenizer.encode(images)
        return list(range(len(images)))
    except (ImageError, ValueError) as exc:
        if len(images) == 1:
            row.notes.append(f"skipped {names[0]}: {exc}")
            return []
    usable = []
    for i, (image, name) in enumerate(zip(images, names)):
        try:
            tokenizer.encode(image)
            usable.append(i)
        except (ImageError, ValueError) as exc:
            row.notes.append(f"skipped {name}: {exc}")
    return usable


def _timed_encode(tokenizer: Any, images: list[Image.Image]) -> tuple[list[Tokens], float]:
    """Tokens of ``images`` and images/s, the best of two runs (:func:`_usable` has warmed the tokenizer up)."""
    best, tokens = math.inf, []
    for _ in range(2):
        start = time.perf_counter()
        tokens = tokenizer.encode(images)
        best = min(best, time.perf_counter() - start)
    return tokens, len(images) / max(best, 1e-9)


def _measure_images(row: Row, tokenizer: Any, images: list[Image.Image], references: list[np.ndarray],
                    names: list[str]) -> None:
    from vistok.metrics import psnr, ssim
    from vistok.viz import working_image

    usable = _usable(tokenizer, images, names, row)
    if not usable:
        raise ValueError(f"it could encode none of the images ({row.notes[0] if row.notes else 'no reason given'})")
    images, references = [images[i] for i in usable], [references[i] for i in usable]
    tokens, row.images_per_s = _timed_encode(tokenizer, images)
    row.tokens_per_image = float(np.mean([len(t) for t in tokens]))
    row.bits_per_image = float(np.mean([measures.bits(t) for t in tokens]))
    if row.decodes:
        scores = []
        for image, t in zip(images, tokens):
            decoded = tokenizer.decode(t)
            reference = working_image(image, tokenizer, decoded.size)
            scores.append((psnr(reference, decoded), ssim(reference, decoded)))
        row.psnr = float(np.mean([min(p, LOSSLESS_DB) for p, _ in scores]))
        row.ssim = float(np.nanmean([s for _, s in scores]))
    recalls, precisions = [], []
    for image, t, reference in zip(images, tokens, references):
        layout = measures.layout_edges(t, _boundary_size(image.size))
        recall, precision = measures.boundary_scores(layout, reference)
        recalls.append(recall)
        precisions.append(precision)
    row.boundary_recall = _nanmean(recalls)
    row.boundary_precision = _nanmean(precisions)
    for name in PERTURBATIONS:
        changed = tokenizer.encode([perturb(image, name) for image in images])
        row.change[name] = float(np.mean([measures.agreement(a, b) for a, b in zip(tokens, changed)]))


def _nanmean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def _measure_knn(row: Row, tokenizer: Any, data: tuple[list[Image.Image], np.ndarray, list[Image.Image], np.ndarray],
                 settings: Settings) -> None:
    from vistok.compare.knn import encode_pooled, knn_accuracy

    train, y_train, test, y_test = data
    samples: list[tuple[np.ndarray, int]] = []
    rng = np.random.default_rng(settings.seed)
    labels = iter(y_train)

    def keep(tokens: Tokens) -> None:
        label = int(next(labels))
        pick = rng.choice(len(tokens), min(_AMI_TOKENS, len(tokens)), replace=False) if len(tokens) else []
        samples.append((tokens.values[pick], label))

    train_x = encode_pooled(tokenizer, train, keep=keep)
    row.knn = knn_accuracy(train_x, y_train, encode_pooled(tokenizer, test), y_test, settings.k)
    for name in PERTURBATIONS:
        changed = encode_pooled(tokenizer, [perturb(image, name) for image in test])
        row.knn_under[name] = knn_accuracy(train_x, y_train, changed, y_test, settings.k)
    row.class_ami = _class_information(samples, hard=row.kind == "hard", seed=settings.seed)


def _class_information(samples: list[tuple[np.ndarray, int]], *, hard: bool, seed: int) -> float | None:
    """Adjusted mutual information (scikit-learn) between a token's word and its image's class: hard tokens' ids,
    soft tokens' k-means cluster (``_AMI_CLUSTERS`` words, MiniBatchKMeans)."""
    from sklearn.metrics import adjusted_mutual_info_score

    values = [v for v, _ in samples if len(v)]
    if not values:
        return None
    labels = np.concatenate([np.full(len(v), y) for v, y in samples if len(v)])
    tokens = np.concatenate(values)
    if hard:
        words = tokens
    else:
        from sklearn.cluster import MiniBatchKMeans

        clusters = min(_AMI_CLUSTERS, len(tokens))
        words = MiniBatchKMeans(clusters, n_init=3, random_state=seed).fit_predict(tokens.astype(np.float32))
    return float(adjusted_mutual_info_score(labels, words))


def _measure_regions(row: Row, tokenizer: Any, detector: str, settings: Settings) -> None:
    from vistok.regions.evaluate import coco_scores
    from vistok.regions.synthetic import face_composites, text_images

    make = {"faces": face_composites, "text": text_images}.get(detector)
    if make is None:
        row.notes.append(f"no labelled set for the {detector} detector: region AP not measured")
        return
    images, truth = make(settings.ap_images, settings.seed)
    found = tokenizer.encode(list(images))
    scores = coco_scores(truth, [t.boxes for t in found],
                         [t.extras.get("scores", np.ones(len(t))) for t in found], [im.size for im in images])
    row.region_ap = {"set": detector, **scores}


def _scene_set(settings: Settings) -> tuple[list[Image.Image], list[np.ndarray], list[np.ndarray]]:
    """Shape scenes, their object masks (every pixel that is not background) and the masks' edges."""
    from skimage.segmentation import find_boundaries

    from vistok.vlm.shapes import BACKGROUND, scene

    images, masks, edges = [], [], []
    for index in range(settings.scenes):
        image, _ = scene(settings.seed * 100_000 + index, settings.scene_size, split="test")
        mask = np.any(np.asarray(image) != np.asarray(BACKGROUND, np.uint8), axis=2)
        images.append(image)
        masks.append(mask)
        edges.append(find_boundaries(mask, mode="inner"))
    return images, masks, edges


def _measure_scenes(row: Row, tokenizer: Any, scenes: tuple[list[Image.Image], list[np.ndarray], list[np.ndarray]]
                    ) -> None:
    images, masks, edges = scenes
    tokens = tokenizer.encode(images)
    recalls, parts = [], []
    for image, mask, edge, t in zip(images, masks, edges, tokens):
        recalls.append(measures.boundary_scores(measures.layout_edges(t, image.size), edge)[0])
        index = measures.token_index(t, image.size)
        if index is None:
            continue
        inside = index >= 0
        counts = np.bincount(index[inside], minlength=len(t))
        covered = np.bincount(index[inside], weights=mask[inside], minlength=len(t)) / np.maximum(counts, 1)
        mixed = (counts > 0) & (covered > 0.02) & (covered < 0.98)
        parts.append((t.values[mixed], covered[mixed]))
    row.scene_boundary_recall = _nanmean(recalls)
    if parts:
        half = max(1, len(parts) // 2)
        train = (np.concatenate([p[0] for p in parts[:half]]), np.concatenate([p[1] for p in parts[:half]]))
        test = (np.concatenate([p[0] for p in parts[half:]]), np.concatenate([p[1] for p in parts[half:]]))
        vocab = None
        if row.kind == "hard":
            vocab = max(int(tokens[0].vocab_size or 0), int(max(train[0].max(initial=0), test[0].max(initial=0))) + 1)
        fidelity = measures.edge_fidelity(train, test, vocab=vocab)
        row.edge_fidelity = None if math.isnan(fidelity) else fidelity


def _knn_data(settings: Settings) -> tuple[list[Image.Image], np.ndarray, list[Image.Image], np.ndarray]:
    from vistok.compare.knn import load_split, upscale

    x_train, y_train, x_test, y_test = load_split(settings.knn_train, settings.knn_test, settings.seed)
    return upscale(x_train, settings.knn_size), y_train, upscale(x_test, settings.knn_size), y_test


def _measure_tokenizer(name: str, images: list[Image.Image], names: list[str], references: list[np.ndarray],
                       knn_data: Any, scenes: list[Any], settings: Settings, on_step: Callable[[str], None] | None
                       ) -> Row:
    """One row; ``scenes`` is a one-element cache of the shape scenes, filled on first use."""
    from vistok.registry import load, tokenizer_info

    base = name.split(":", 1)[0]
    info = tokenizer_info(base)
    row = Row(name, kind=info.kind, decodes=info.decodable, regions=base == "regions")
    done = 0

    def step(stage: str) -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(f"{name}: {stage}")

    try:
        tokenizer = load(name)
        if hasattr(tokenizer, "check"):
            tokenizer.check()  # missing weights fail here, before any image is blamed
        step(STAGES[0])
        _measure_images(row, tokenizer, images, references, names)
        step(STAGES[1])
        if knn_data is not None and base != "regions":
            _measure_knn(row, tokenizer, knn_data, settings)
        step(STAGES[2])
        if base == "regions":
            if settings.ap_images:
                _measure_regions(row, tokenizer, tokenizer.config.detector, settings)
        elif settings.scenes:
            if not scenes:
                scenes.append(_scene_set(settings))
            _measure_scenes(row, tokenizer, scenes[0])
        step(STAGES[3])
    except Exception as exc:  # noqa: BLE001 - one tokenizer's failure (missing weights, a bug) keeps the others
        row.error = f"{type(exc).__name__}: {exc}"
        while done < len(STAGES):
            step("failed")
    return row


def compare(images: Sequence[Any], tokenizers: Sequence[str] = DEFAULT_TOKENIZERS, *,
            settings: Settings | None = None, on_step: Callable[[str], None] | None = None) -> Comparison:
    """Measure each of ``tokenizers`` (registry names, ``name:argument`` allowed) on ``images`` (paths, bytes,
    PIL images or arrays) and on the labelled sets of ``settings``.

    An image that cannot be read is skipped and named in ``Comparison.skipped``; a tokenizer that cannot be
    loaded or fails gets a row with its ``error`` and the others go on. ``on_step`` is called with a short
    description after each of the ``len(STAGES)`` stages of each tokenizer (for progress bars).
    """
    from vistok.registry import tokenizer_info

    settings = settings or Settings()
    if isinstance(tokenizers, str):
        tokenizers = [t for t in tokenizers.split(",") if t]
    if not tokenizers:
        raise ValueError("give at least one tokenizer, e.g. tokenizers=['grid', 'patch']")
    for name in tokenizers:
        tokenizer_info(name.split(":", 1)[0])  # an unknown name fails now, with close matches, before any work
    opened, names, skipped = _open_all(images)
    if not opened:
        detail = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no images were given"
        raise ValueError(f"no image could be read ({detail})")
    references = [_superpixel_edges(image) for image in opened]
    notes: list[str] = []
    knn_data = None
    if settings.knn:
        try:
            knn_data = _knn_data(settings)
        except FileNotFoundError as exc:
            notes.append(f"k-NN not measured: {exc}")
    rows = []
    scenes: list[Any] = []  # made once, on first use
    for name in tokenizers:
        rows.append(_measure_tokenizer(name, opened, names, references, knn_data, scenes, settings, on_step))
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    return Comparison(rows=rows, images=names, skipped=skipped, settings=settings, machine=machine, notes=notes)
