"""Synthetic detection sets with known boxes, for tests and ``benchmarks/regions_ap.py``.

* :func:`face_composites`: face crops from scikit-image's ``lfw_subset`` (Labeled Faces in the Wild, Huang et al.
  2007; the first 100 of its 200 25x25 grey crops are faces, the rest non-faces) scaled up and pasted into the
  bundled sample photos that show no person, with some non-face crops pasted as distractors.
* :func:`text_images`: lines of random words rendered with Pillow's scalable default font on a contrasting
  plate over the same photos; one box per line (``ImageDraw.textbbox``).

These are synthetic sets: they give a repeatable number that catches regressions and compares backends, not an
accuracy on real photos. Image ``i`` depends only on ``(seed, i)``, so ``f(n, seed)[:k] == f(k, seed)``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["face_composites", "text_images", "backgrounds", "lfw_crops", "WORDS"]

#: Bundled samples with no person in them: a pasted face is then the only face (astronaut and grace_hopper
#: show real faces that would count as unlabelled detections).
BACKGROUNDS = ("chelsea.jpg", "coffee.jpg", "hubble.jpg", "rocket.jpg")

WORDS = ("token", "vision", "image", "model", "region", "detect", "street", "coffee", "rocket", "open", "exit",
         "north", "market", "garden", "station", "river", "house", "music", "paper", "window", "orange",
         "silver", "planet", "number", "yellow", "bridge", "summer", "winter", "police", "hotel", "parking",
         "museum", "school", "library", "airport", "sale", "price", "menu", "bakery", "pharmacy", "2024", "42",
         "km", "route", "east", "west", "gate", "level", "stop", "closed")


@lru_cache(maxsize=1)
def backgrounds() -> tuple[Image.Image, ...]:
    """The person-free bundled sample photos, RGB."""
    from vistok.samples import sample_images

    by_name = {p.name: p for p in sample_images()}
    return tuple(Image.open(by_name[name]).convert("RGB") for name in BACKGROUNDS)


@lru_cache(maxsize=1)
def lfw_crops() -> tuple[np.ndarray, np.ndarray]:
    """``(faces, non_faces)``: two ``(100, 25, 25)`` uint8 arrays from ``skimage.data.lfw_subset()``."""
    from skimage.data import lfw_subset

    crops = np.round(lfw_subset() * 255).astype(np.uint8)
    return crops[:100], crops[100:]


def _background(rng: np.random.Generator, short: tuple[int, int]) -> Image.Image:
    """A random sample photo, randomly cropped (at least half of each side) and scaled to a short side in
    ``short``."""
    photos = backgrounds()
    photo = photos[int(rng.integers(len(photos)))]
    w, h = photo.size
    cw, ch = int(rng.integers(w // 2, w + 1)), int(rng.integers(h // 2, h + 1))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    side = int(rng.integers(short[0], short[1] + 1))
    scale = side / min(cw, ch)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return photo.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.Resampling.BILINEAR)


def _place(rng: np.random.Generator, size: tuple[int, int], w: int, h: int, taken: list[tuple[int, ...]],
           gap: int, tries: int = 200) -> tuple[int, int, int, int] | None:
    """A random ``w`` x ``h`` box inside ``size`` at least ``gap`` pixels from every box in ``taken``."""
    W, H = size
    if w > W or h > H:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
        if all(x + w + gap <= a or c + gap <= x or y + h + gap <= b or d + gap <= y
               for a, b, c, d in taken):
            return x, y, x + w, y + h
    return None


def face_composites(n: int, seed: int = 0, *, sizes: tuple[int, int] = (40, 200), faces: tuple[int, int] = (1, 4),
                    distractors: tuple[int, int] = (0, 2), short: tuple[int, int] = (400, 640)
                    ) -> tuple[list[Image.Image], list[np.ndarray]]:
    """``n`` RGB images with ``faces`` (min, max) LFW face crops each, scaled (bicubic) to a random side in
    ``sizes`` and pasted at random non-overlapping places, plus ``distractors`` non-face crops. Returns the images
    and, per image, a ``(k, 4)`` float array of x0, y0, x1, y1 face boxes (the pasted squares)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    face_crops, other_crops = lfw_crops()
    images, boxes = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        canvas = _background(rng, short)
        taken: list[tuple[int, ...]] = []
        truth = []
        for kind, (lo, hi) in (("face", faces), ("other", distractors)):
            crops = face_crops if kind == "face" else other_crops
            for _ in range(int(rng.integers(lo, hi + 1))):
                side = int(rng.integers(sizes[0], min(sizes[1], *canvas.size) + 1))
                box = _place(rng, canvas.size, side, side, taken, gap=side // 4)
                if box is None:
                    continue
                crop = Image.fromarray(crops[int(rng.integers(len(crops)))]).resize(
                    (side, side), Image.Resampling.BICUBIC).convert("RGB")
                canvas.paste(crop, box[:2])
                taken.append(box)
                if kind == "face":
                    truth.append(box)
        images.append(canvas)
        boxes.append(np.asarray(truth, np.float64).reshape(-1, 4))
    return images, boxes


def text_images(n: int, seed: int = 0, *, sizes: tuple[int, int] = (16, 64), lines: tuple[int, int] = (1, 3),
                words: tuple[int, int] = (1, 3), short: tuple[int, int] = (400, 640)
                ) -> tuple[list[Image.Image], list[np.ndarray]]:
    """``n`` RGB images with ``lines`` (min, max) lines of ``words`` random words each, in Pillow's scalable
    default font at a random size in ``sizes`` pixels, dark on a light plate or light on a dark one (a random
    colour), at random non-overlapping places. Returns the images and, per image, a ``(k, 4)`` float array with
    one box per line: the rendered text's ``ImageDraw.textbbox``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    images, boxes = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        canvas = _background(rng, short)
        draw = ImageDraw.Draw(canvas)
        taken: list[tuple[int, ...]] = []
        truth = []
        for _ in range(int(rng.integers(lines[0], lines[1] + 1))):
            size = int(rng.integers(sizes[0], sizes[1] + 1))
            font: Any = ImageFont.load_default(size)
            count = int(rng.integers(words[0], words[1] + 1))
            text = " ".join(WORDS[int(j)] for j in rng.integers(0, len(WORDS), count))
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            pad = max(4, size // 4)
            plate = _place(rng, canvas.size, x1 - x0 + 2 * pad, y1 - y0 + 2 * pad, taken, gap=size // 2)
            if plate is None:
                continue
            light = bool(rng.integers(2))
            tone = rng.integers(0, 60, 3)
            ink = tuple(int(v) for v in (tone if light else 255 - tone))
            paper = tuple(int(v) for v in (255 - rng.integers(0, 40, 3) if light else rng.integers(0, 40, 3)))
            draw.rectangle(plate, fill=paper)
            origin = (plate[0] + pad - x0, plate[1] + pad - y0)
            draw.text(origin, text, fill=ink, font=font)
            taken.append(plate)
            truth.append(draw.textbbox(origin, text, font=font))
        images.append(canvas)
        boxes.append(np.asarray(truth, np.float64).reshape(-1, 4))
    return images, boxes
