"""Images with captions for :func:`vistok.align.train`.

- ``fashion-mnist``: Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) with captions written from its class names:
  each class has a few everyday names and each caption puts one into one of :data:`TEMPLATES`. With the
  ``described`` caption style each name also appears followed by the class's description (:data:`DESCRIPTIONS`). The classes in
  :data:`HELD_OUT` never appear in training, neither their images nor their names, so zero-shot accuracy on them
  measures transfer through the text tower alone.
- a caption file: CSV with ``image`` and ``caption`` columns, or JSON Lines with those keys, one pair per row
  (an image may have several rows); image paths are relative to the file. A folder holding ``captions.csv`` or
  ``captions.jsonl`` is read the same way.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CLASSES", "NAMES", "TEMPLATES", "DESCRIPTIONS", "CAPTION_STYLES", "HELD_OUT", "Pairs", "class_captions",
           "class_prompt", "fashion_mnist_pairs", "read_captions",
           "load_pairs", "fashion_mnist_labels"]

#: Fashion-MNIST's ten classes, in label order, as its authors name them.
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
#: Everyday names for each class; the first is the one zero-shot prompts use.
NAMES: tuple[tuple[str, ...], ...] = (
    ("t-shirt", "tee", "top"),
    ("trousers", "pants", "pair of trousers"),
    ("pullover", "sweater", "jumper"),
    ("dress", "frock", "gown"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "open shoe", "summer sandal"),
    ("shirt", "blouse", "button-up shirt"),
    ("sneaker", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "short boot"),
)
#: Caption templates; ``{}`` is replaced by a class name.
TEMPLATES = ("a photo of a {}.", "a {}.", "a picture of a {}.", "a grey photo of a {}.", "a product photo of a {}.",
             "a small image of a {}.", "a low resolution photo of a {}.", "this is a {}.")
#: One short description per class, written from what each garment or shoe is (not from its images). Their words
#: are shared across classes (long-sleeved, collar, closed shoe, laces, ...), so a class never seen in training is
#: described in words that were: the idea of attribute-based zero-shot learning (Lampert, Nickisch and
#: Harmeling, CVPR 2009), here as text in the prompt, as in classification by description (Menon and Vondrick,
#: ICLR 2023).
DESCRIPTIONS = ("short-sleeved top without a collar", "long garment for both legs",
                "long-sleeved knitted top without buttons", "one-piece garment with a skirt",
                "long-sleeved outer jacket with buttons or a zip", "open shoe with straps",
                "long-sleeved top with a collar and buttons", "low closed sports shoe with laces",
                "carried bag with a handle", "closed shoe that covers the ankle")
#: ``names``: captions from class names alone; ``described``: those, and each name followed by its description.
CAPTION_STYLES = ("names", "described")
#: Label ids left out of training entirely: Pullover and Sneaker, chosen before any run because each has
#: neighbours that are seen (coat and shirt; sandal and ankle boot), so the text tower's knowledge must
#: place them.
HELD_OUT = (2, 7)
DATASET = "fashion-mnist"


def _check_style(style: str) -> None:
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style must be one of {', '.join(CAPTION_STYLES)}, got {style!r}")


def class_captions(label: int, style: str = "names") -> list[str]:
    """Every training caption of Fashion-MNIST class ``label``: each name in each template, and with
    ``described`` also each ``"{name}, a {description}"`` in each template."""
    _check_style(style)
    names = list(NAMES[label])
    if style == "described":
        names += [f"{name}, a {DESCRIPTIONS[label]}" for name in NAMES[label]]
    return [t.format(name) for name in names for t in TEMPLATES]


def class_prompt(label: int, style: str = "names", template: str = "a photo of a {}.") -> str:
    """The zero-shot prompt of class ``label``: its first name, followed by its description for ``described``."""
    _check_style(style)
    name = NAMES[label][0]
    return template.format(f"{name}, a {DESCRIPTIONS[label]}" if style == "described" else name)


@dataclass
class Pairs:
    """Images and their captions: ``images[i]`` (a path or an array) has the captions ``captions[i]``."""

    images: list[Any]
    captions: list[list[str]]
    labels: np.ndarray | None = None     # class ids, for named data sets
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)


def fashion_mnist_labels(split: str) -> np.ndarray:
    from vistok.learned.data import FASHION_MNIST, fashion_mnist, read_idx

    fashion_mnist(split)  # the clear error when the data set is missing
    name = {"train": "train-labels-idx1-ubyte.gz", "test": "t10k-labels-idx1-ubyte.gz"}[split]
    return read_idx(FASHION_MNIST / name).astype(np.int64)


def fashion_mnist_pairs(split: str = "train", *, limit: int | None = None, held_out: tuple[int, ...] = HELD_OUT,
                        seed: int = 0, style: str = "names") -> Pairs:
    """Fashion-MNIST images as ``(28, 28, 3)`` uint8 arrays with every caption of their class. For ``train``,
    the ``held_out`` classes are dropped and ``limit`` keeps a seeded random subset; ``test`` keeps every class."""
    from vistok.learned.data import fashion_mnist

    images = fashion_mnist(split)
    labels = fashion_mnist_labels(split)
    keep = np.arange(len(labels))
    if split == "train":
        keep = keep[~np.isin(labels, held_out)]
    if limit is not None and limit < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    captions = {c: class_captions(c, style) for c in range(len(CLASSES))}
    return Pairs([np.repeat(images[i], 3, axis=2) for i in keep], [captions[int(labels[i])] for i in keep],
                 labels[keep], source=f"{DATASET}/{split}")


def _rows(path: Path) -> list[tuple[int, Any, Any]]:
    """``(line, image, caption)`` per row of a CSV or JSON Lines caption file."""
    rows: list[tuple[int, Any, Any]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: the CSV needs 'image' and 'caption' columns, found {reader.fieldnames}")
            rows = [(n + 2, r.get("image"), r.get("caption")) for n, r in enumerate(reader)]
        elif path.suffix.lower() in (".jsonl", ".json"):
            for n, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except ValueError as err:
                    raise ValueError(f"{path}:{n}: not a JSON object ({err})") from err
                if not isinstance(item, dict):
                    raise ValueError(f"{path}:{n}: expected an object with 'image' and 'caption'")
                rows.append((n, item.get("image"), item.get("caption")))
        else:
            raise ValueError(f"{path}: unknown caption file type {path.suffix!r}; use .csv or .jsonl")
    return rows


def read_captions(path: str | Path) -> Pairs:
    """Pairs from a CSV (``image,caption``) or JSON Lines file, or a folder holding ``captions.csv``/``.jsonl``.
    A row without an image or a caption raises ValueError naming the file and line."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / n for n in ("captions.csv", "captions.jsonl") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no captions.csv or captions.jsonl in this folder; write one with an "
                                    "'image' and a 'caption' per row (image paths relative to the folder)")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such caption file or folder; pass a CSV/JSONL of image,caption rows, a "
                                f"folder holding captions.csv, or {DATASET!r}")
    try:
        rows = _rows(path)
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save the caption file as "
                         "UTF-8") from err
    order: dict[str, list[str]] = {}
    for line, image, caption in rows:
        if not isinstance(image, str) or not image.strip() or not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{path}:{line}: each row needs a non-empty 'image' and 'caption'")
        file = Path(image).expanduser()
        file = file if file.is_absolute() else path.parent / file
        order.setdefault(str(file), []).append(caption.strip())
    if not order:
        raise ValueError(f"{path}: no image,caption rows")
    return Pairs(list(order), list(order.values()), source=str(path))


def load_pairs(data: str | Path, *, limit: int | None = None, seed: int = 0) -> Pairs:
    """``fashion-mnist`` (its training split, held-out classes dropped) or a caption file or folder."""
    if str(data) == DATASET:
        return fashion_mnist_pairs("train", limit=limit, seed=seed)
    pairs = read_captions(data)
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = Pairs([pairs.images[i] for i in keep], [pairs.captions[i] for i in keep], source=pairs.source)
    return pairs
