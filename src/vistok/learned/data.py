"""Training and held-out data for learned tokenizers: an image folder or a named offline data set.

- ``fashion-mnist``: Xiao, Rasul & Vollgraf, "Fashion-MNIST", 2017 (MIT), from the Debian package
  ``dataset-fashion-mnist``; 60,000 training and 10,000 test (``t10k``) 28x28 grey images.
- ``samples-64``: random 64x64 crops (random scale and mirror) of the offline sample photos (vistok's
  bundled samples plus scikit-image's), with whole photos held out: the test set is the non-overlapping 64x64
  tiles of the held-out photos, each scaled so its shorter side is 256 pixels.
- a folder: random crops of every readable image in it; unreadable files are skipped and reported.

Everything is ``uint8`` ``(N, H, W, C)`` numpy; crops are drawn once from a seeded generator into a pool so
that training batches are cheap and a run is reproducible.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DATASETS", "FASHION_MNIST", "TrainingData", "load_data", "read_idx", "sample_photos"]

FASHION_MNIST = Path(os.environ.get("VISTOK_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
DATASETS = ("fashion-mnist", "samples-64")

# scikit-image photos that ship inside the package (no download); grey ones are used as RGB
_SKIMAGE_PHOTOS = ("brick", "camera", "clock", "coins", "grass", "gravel", "immunohistochemistry", "moon",
                   "page", "retina", "stereo_motorcycle", "text")
HELD_OUT_PHOTOS = ("camera", "chelsea", "coffee")


@dataclass
class TrainingData:
    """``train`` pool and optional held-out ``test`` images, ``(N, H, W, C)`` uint8; ``skipped`` lists
    ``(source, reason)`` for inputs that could not be read."""

    name: str
    train: np.ndarray
    test: np.ndarray | None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.train.shape[-1])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.train.shape[1]), int(self.train.shape[2])


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format: big-endian magic, dimension sizes, then uint8 data), gzipped."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str) -> np.ndarray:
    """``(N, 28, 28, 1)`` uint8 images of the ``train`` or ``test`` split."""
    name = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}[split]
    path = FASHION_MNIST / name
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {FASHION_MNIST}; install it with `apt-get install -y dataset-fashion-mnist` "
            "(or set VISTOK_FASHION_MNIST to a folder holding the four idx .gz files)")
    return read_idx(path)[..., None].copy()


def sample_photos() -> dict[str, Image.Image]:
    """The offline sample photos by name: vistok's bundled samples, plus scikit-image's when it is installed."""
    from vistok.images import open_image
    from vistok.samples import sample_images

    photos = {p.stem: open_image(p) for p in sample_images()}
    try:
        import skimage.data
    except ImportError:
        return photos
    for name in _SKIMAGE_PHOTOS:
        try:
            array = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo that needs a download is simply not used
            continue
        array = array[0] if isinstance(array, tuple) else array
        photos[name] = open_image(np.ascontiguousarray(array))
    return dict(sorted(photos.items()))


def random_crops(images: list[Image.Image], count: int, size: int, seed: int, channels: int = 3,
                 on_image: Callable[[], None] | None = None) -> np.ndarray:
    """``count`` square crops resized to ``size``: each from a random image, with a random side between
    ``size`` and the image's shorter side (at most ``4 * size``), a random position and a random mirror."""
    rng = np.random.default_rng(seed)
    mode = "L" if channels == 1 else "RGB"
    images = [im.convert(mode) for im in images]
    out = np.empty((count, size, size, channels), np.uint8)
    which = rng.integers(0, len(images), count)
    for i, k in enumerate(which):
        im = images[k]
        w, h = im.size
        side = int(rng.integers(min(size, w, h), min(w, h, 4 * size) + 1))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop).reshape(size, size, channels)
        if on_image is not None and i % 1000 == 0:
            on_image()
    return out


def tiles(image: Image.Image, size: int, short_side: int = 256) -> np.ndarray:
    """Non-overlapping ``size x size`` tiles of ``image`` scaled so its shorter side is ``short_side``."""
    w, h = image.size
    scale = short_side / min(w, h)
    im = image.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                     Image.Resampling.BICUBIC)
    a = np.asarray(im)
    rows, cols = a.shape[0] // size, a.shape[1] // size
    a = a[: rows * size, : cols * size].reshape(rows, size, cols, size, 3).transpose(0, 2, 1, 3, 4)
    return a.reshape(rows * cols, size, size, 3)


def load_data(source: str | os.PathLike, *, size: int | None = None, pool: int = 20000, seed: int = 0,
              channels: int | None = None) -> TrainingData:
    """Training data from a named data set (``DATASETS``) or an image folder (random ``size`` crops)."""
    name = os.fspath(source)
    if name == "fashion-mnist":
        if size not in (None, 28):
            raise ValueError(f"fashion-mnist images are 28x28; got --size {size}")
        return TrainingData(name, fashion_mnist("train"), fashion_mnist("test"))
    if name == "samples-64":
        size = size or 64
        photos = sample_photos()
        train = [im for n, im in photos.items() if n not in HELD_OUT_PHOTOS]
        test = np.concatenate([tiles(photos[n], size) for n in HELD_OUT_PHOTOS if n in photos])
        return TrainingData(name, random_crops(train, pool, size, seed), test)
    return _folder(Path(name), size or 64, pool, seed, channels or 3)


def _folder(folder: Path, size: int, pool: int, seed: int, channels: int) -> TrainingData:
    from vistok.images import find_images, open_image

    if not folder.exists():
        raise FileNotFoundError(
            f"training data {os.fspath(folder)!r} is neither an image folder nor a named data set; pass a folder "
            f"of images or one of: {', '.join(DATASETS)}")
    images, skipped = [], []
    for path in find_images([folder]):
        try:
            images.append(open_image(path))
        except Exception as err:  # noqa: BLE001 - one bad file never stops training; it is reported
            skipped.append((os.fspath(path), getattr(err, "reason", str(err))))
    if not images:
        raise ValueError(f"no readable images in {os.fspath(folder)!r} ({len(skipped)} unreadable); "
                         "pass a folder of JPEG/PNG/WebP images")
    return TrainingData(os.fspath(folder), random_crops(images, pool, size, seed, channels), None, skipped)
