"""One preprocessing path for every encoder: open, resize, centre-crop, rescale and normalise a batch.

The steps follow the usual CLIP/ViT image processors (for example Hugging Face's ``CLIPImageProcessor``):
the shortest edge is resized to ``size`` (the long edge becomes ``int(size * long / short)``), the result
is centre-cropped, then every value becomes ``(x * rescale - mean) / std``.  Every number comes from the
encoder's config, never from its name.

How it is made fast (issue 4, "Fast preprocessing"; Hugging Face's slow processor decodes every pixel
and works on one core, transformers issue #13991):

1. **Reduced-scale JPEG decoding.**  A JPEG given as a path, bytes or a seekable file is probed first
   (header only, :func:`vistok.images.probe_size`) and then decoded by libjpeg at 1/2, 1/4 or 1/8 scale
   through Pillow's ``Image.draft``, when the decoded image still has at least *twice* the resized size in
   both directions.  libjpeg's scaled inverse DCT (IJG libjpeg's ``scale_num / scale_denom``, kept by
   libjpeg-turbo) turns each 8x8 block into a 4x4, 2x2 or 1x1 block, so a 12-megapixel photo becomes
   1000x750 without the full-size inverse DCT, chroma upsampling and colour conversion.  That scaling acts like a
   small box prefilter; the factor of two keeps it well inside the resize filter's footprint: on 12 MP photos the
   output then differs from a full decode by about 0.25 grey levels on average (about 0.8 when decoding straight down
   to the resized size).  When a dimension is not a multiple of the scale, the last decoded pixel covers
   a partial block; the resize then reads exactly the source area (Pillow's ``box``), so nothing is
   stretched.  ``Preprocess(draft=False)`` decodes every pixel.
2. **Threads.**  Each image is decoded, resized, cropped and normalised in a shared thread pool.  libjpeg,
   the resize kernels and numpy's arithmetic all run without the GIL, so the threads run in parallel.
3. **Fast resizing.**  Bilinear and bicubic resizes run on uint8 data in torch
   (``interpolate(..., antialias=True)``), whose CPU kernels follow Pillow's filters (cubic a = -0.5,
   support widened by the scale factor when shrinking).  Measured against Pillow they differ by at most
   one level when shrinking (two, rarely, when enlarging) and run about 8x faster (a 1000x750 to
   298x224 bicubic shrink: 0.7 ms against 5.5 ms with Pillow 13, torch 2.14, one thread).  Nearest and
   lanczos use Pillow.
4. **Light normalisation.**  Normalisation is one fused ``x * (rescale / std) - mean / std`` per image into
   float32 (no float64 pass, unlike the slow processor); the images are stacked once into the
   ``(B, 3, H, W)`` tensor.

Inputs that are not JPEG files (PNG, PIL images, arrays, tensors) are decoded in full and match the slow
processor within rounding of the resize (mean difference under 0.01 levels).  The accuracy is tested in
``tests/test_preprocess.py`` against ``CLIPImageProcessorPil``; ``benchmarks/bench_preprocess.py`` measures
speed and difference on 12 MP and 640x480 JPEGs.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vistok.images import ImageError, ImageInput, _open_encoded, _orientation, open_image, probe_size, source_name

__all__ = ["Preprocess", "preprocess", "sized_inputs", "batches", "resample_name", "MAX_WORKING_PIXELS",
           "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

MAX_WORKING_PIXELS = 1 << 24
"""Default bound on the pixels preprocessing may hold for one image at any step (the resized image before its
crop, and the tensor the model sees): 16.8 megapixels, 4096 x 4096, about 50 MB as uint8 and 200 MB as float32.
A 20000x1 strip resized to a shortest side of 256 would otherwise become 5,120,000x256 (1.3 gigapixels, about
4 GB before the crop); such an image is refused, on its own, before anything is decoded or allocated."""

_DRAFT_MARGIN = 2.0
"""A JPEG is decoded at reduced scale only while the result keeps this multiple of the resized size."""

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
"""The resample names vistok takes, and Pillow's filter for each: the one resample table."""


def resample_name(value: object) -> str | None:
    """The resample name for a name (any case) or a Pillow filter number (as Hugging Face image processor
    configs store it: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic); None for anything else."""
    if isinstance(value, str):
        return value.lower() if value.lower() in _RESAMPLE else None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return next((name for name, mode in _RESAMPLE.items() if int(mode) == int(value)), None)
    return None


def _size_pair(value: Any, field: str) -> int | tuple[int, int] | None:
    """Validate ``size`` / ``crop``: None, a positive int, or ``(height, width)`` of positive ints."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"{field} must be positive, got {value}")
        return int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        if min(value) <= 0:
            raise ValueError(f"{field} must be positive, got {tuple(value)}")
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{field} must be None, a positive int or (height, width) of positive ints, got {value!r}")


def _triple(value: Any, field: str, *, positive: bool) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{field} must be three finite numbers (one per RGB channel), got {value!r}")
    if positive and min(values) <= 0:
        raise ValueError(f"{field} must be positive, got {values}")
    return values  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocess:
    """How an encoder wants its pixels.

    size: an int resizes the shortest edge to it (aspect kept); ``(height, width)`` resizes exactly;
    None keeps the image's size. crop: centre crop to ``(height, width)`` (an int means a square), or None;
    a crop larger than the resized image is padded with zeros (black), as the CLIP processors do.
    resample: nearest, bilinear, bicubic or lanczos. rescale: multiplies the 0..255 values (1/255 gives
    0..1). mean / std: per-channel normalisation after rescaling. draft: decode JPEG files at a reduced
    scale when that still covers the resized size (much faster on large photos; False decodes every pixel).
    max_pixels: the most pixels one image may reach at any step (:data:`MAX_WORKING_PIXELS`; None: no bound);
    :meth:`check_size` refuses the others.
    """

    size: int | tuple[int, int] | None = 224
    crop: int | tuple[int, int] | None = 224
    resample: str = "bicubic"
    rescale: float = 1 / 255
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    draft: bool = True
    max_pixels: int | None = MAX_WORKING_PIXELS

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(_RESAMPLE)}, got {self.resample!r}")
        # lists (as read from JSON configs) become tuples, so the config stays hashable and comparable
        object.__setattr__(self, "size", _size_pair(self.size, "size"))
        object.__setattr__(self, "crop", _size_pair(self.crop, "crop"))
        rescale = self.rescale
        if isinstance(rescale, bool) or not isinstance(rescale, (int, float, np.floating, np.integer)) \
                or not math.isfinite(rescale) or rescale <= 0:
            raise ValueError(f"rescale must be a positive finite number (1/255 gives 0..1), got {rescale!r}")
        object.__setattr__(self, "rescale", float(rescale))
        object.__setattr__(self, "mean", _triple(self.mean, "mean", positive=False))
        object.__setattr__(self, "std", _triple(self.std, "std", positive=True))
        if not isinstance(self.draft, bool):
            raise ValueError(f"draft must be True or False, got {self.draft!r}")
        limit = self.max_pixels
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0):
            raise ValueError(f"max_pixels must be a positive int or None, got {limit!r}")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` after the resize step."""
        if self.size is None:
            return width, height
        if isinstance(self.size, int):
            # the shorter side becomes exactly `size`, the other int(size * long / short): the formula of
            # transformers' get_resize_output_image_size and torchvision's Resize (computed the same way,
            # so no float rounding can move it by one)
            if width <= height:
                return self.size, int(self.size * height / width)
            return int(self.size * width / height), self.size
        return self.size[1], self.size[0]

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the tensor for an image of this size."""
        if self.crop is None:
            return self.resized_size(width, height)
        crop_h, crop_w = (self.crop, self.crop) if isinstance(self.crop, int) else self.crop
        return crop_w, crop_h

    def working_pixels(self, width: int, height: int) -> int:
        """The most pixels an image of this size reaches at any step: the resized image or the output."""
        rw, rh = self.resized_size(width, height)
        ow, oh = self.output_size(width, height)
        return max(rw * rh, ow * oh)

    def check_size(self, width: int, height: int, name: str = "image") -> None:
        """Raise :class:`~vistok.images.ImageError` (naming ``name``) when an image of this size would exceed
        ``max_pixels`` at some step; computed from the size alone, before anything is decoded or allocated."""
        if self.max_pixels is None or self.working_pixels(width, height) <= self.max_pixels:
            return
        rw, rh = self.resized_size(width, height)
        ow, oh = self.output_size(width, height)
        worst = f"{rw}x{rh}" if rw * rh >= ow * oh else f"{ow}x{oh}"
        ratio = max(width, height) / min(width, height)
        raise ImageError(name, (
            f"a {width}x{height} image (aspect ratio {ratio:,.0f}:1) would be resized to {worst} = "
            f"{self.working_pixels(width, height):,} pixels, over this encoder's bound of {self.max_pixels:,}; "
            "crop it to a less extreme shape or a smaller size first, or pass a smaller size="))


# --------------------------------------------------------------------------------------------------
# One image: decode (reduced scale for JPEG files), resize, crop -> (3, H, W) uint8


def _draftable(image: object) -> bool:
    """Inputs that open_image decodes itself and can therefore decode at reduced scale."""
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        return True
    seekable = getattr(image, "seekable", None)
    return hasattr(image, "read") and callable(seekable) and bool(seekable())


def _decode_scale(full: tuple[int, int], decoded: tuple[int, int]) -> int:
    """The libjpeg scale denominator s (1, 2, 4 or 8): decoded == ceil(full / s)."""
    for s in (1, 2, 4, 8):
        if decoded == (-(-full[0] // s), -(-full[1] // s)):
            return s
    raise RuntimeError(f"unexpected decoded size {decoded} for an image of size {full}")  # pragma: no cover


# EXIF orientation -> whether the upright image's (x, y) axes start at the stored image's far edge, where
# libjpeg's partial last block lies (2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 and 8 rotate by 90
# one way or the other, 7 transverse; the transposes are those of vistok.images).
_PARTIAL_BLOCK_FIRST = {1: (False, False), 2: (True, False), 3: (True, True), 4: (False, True),
                        5: (False, False), 6: (True, False), 7: (True, True), 8: (False, True)}


def _source_box(image: ImageInput, full: tuple[int, int], decoded: tuple[int, int], scale: int) -> tuple:
    """The area of a reduced-scale decode that holds the source image, in decoded pixels.

    A dimension that is not a multiple of ``scale`` ends in a partial block: its last decoded pixel stands
    for fewer than ``scale`` source pixels.  The source then spans ``full / scale`` decoded pixels, starting
    at 0 or, where the EXIF orientation turned that axis around, at ``decoded - full / scale``.
    """
    with _open_encoded(image, source_name(image), None) as im:
        first_x, first_y = _PARTIAL_BLOCK_FIRST[_orientation(im)]
    w, h = full[0] / scale, full[1] / scale
    x0 = decoded[0] - w if first_x else 0.0
    y0 = decoded[1] - h if first_y else 0.0
    return (x0, y0, x0 + w, y0 + h)


def _pixels(rgb: Image.Image) -> Any:
    """An RGB image as a ``(3, H, W)`` uint8 torch tensor (a channels-last view of one writable copy)."""
    import torch

    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


def _resize(rgb: Image.Image, target: tuple[int, int], cfg: Preprocess, box: tuple[float, ...] | None) -> Any:
    """Resize ``rgb`` (the area ``box`` of it, if given) to ``target`` = (width, height): ``(3, h, w)`` uint8.

    Bilinear and bicubic run in torch on uint8 data (see the module docstring); nearest, lanczos and a
    fractional source box use Pillow itself.
    """
    if rgb.size == target and box is None:
        return _pixels(rgb)
    if box is None and cfg.resample in ("bilinear", "bicubic"):
        import torch.nn.functional as F

        x = _pixels(rgb).unsqueeze(0)
        try:
            return F.interpolate(x, size=(target[1], target[0]), mode=cfg.resample, antialias=True)[0]
        except (RuntimeError, NotImplementedError):  # pragma: no cover - a torch without uint8 kernels
            pass
    return _pixels(rgb.resize(target, _RESAMPLE[cfg.resample], box=box))


def _crop(x: Any, width: int, height: int) -> Any:
    """Centre crop of a ``(3, H, W)`` tensor, zero-padded where the crop is larger (offsets as Pillow's)."""
    import torch

    left, top = (x.shape[2] - width) // 2, (x.shape[1] - height) // 2
    if left >= 0 and top >= 0:
        return x[:, top:top + height, left:left + width]
    out = torch.zeros((3, height, width), dtype=x.dtype)
    src_l, src_t = max(0, left), max(0, top)
    dst_l, dst_t = max(0, -left), max(0, -top)
    w, h = min(width - dst_l, x.shape[2] - src_l), min(height - dst_t, x.shape[1] - src_t)
    out[:, dst_t:dst_t + h, dst_l:dst_l + w] = x[:, src_t:src_t + h, src_l:src_l + w]
    return out


def _one(image: ImageInput, cfg: Preprocess) -> Any:
    """Decode, resize and crop one image: a ``(3, H, W)`` uint8 tensor."""
    full = None
    draft = None
    if cfg.draft and _draftable(image):
        full = probe_size(image)
        cfg.check_size(*full, source_name(image))
        w, h = cfg.resized_size(*full)
        # see the module docstring for why the decoded image keeps twice the resized size
        draft = (math.ceil(w * _DRAFT_MARGIN), math.ceil(h * _DRAFT_MARGIN))
    rgb = open_image(image, draft_size=draft)
    if full is None:
        full = rgb.size
        cfg.check_size(*full, source_name(image))
    target = cfg.resized_size(*full)
    box = None
    if rgb.size != full:
        scale = _decode_scale(full, rgb.size)
        if full[0] % scale or full[1] % scale:
            # a partial last block: resize exactly the area that holds the source image
            box = _source_box(image, full, rgb.size, scale)
    x = _resize(rgb, target, cfg, box)
    if cfg.crop is None:
        return x
    return _crop(x, *cfg.output_size(*full))


# --------------------------------------------------------------------------------------------------
# The batch


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool per thread count, so a call does not pay for starting threads."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="vistok-preprocess")
        return pool


def _default_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def preprocess(images: Sequence[ImageInput] | ImageInput, cfg: Preprocess, *, threads: int | None = None) -> Any:
    """A ``(B, 3, H, W)`` float32 torch tensor for a list of images (one image gives B = 1).

    ``threads``: decoding threads (default: the usable cores, at most 8); 1 works in the calling thread.
    The result does not depend on it.  All images must come out the same size (use a crop or an exact
    size for mixed inputs).  Bad inputs raise :class:`vistok.images.ImageError` naming the input.
    """
    import torch

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ValueError("no images given")
    if threads is None:
        threads = _default_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    threads = min(threads, len(items))
    std = np.asarray(cfg.std, dtype=np.float64)
    gain = (cfg.rescale / std).astype(np.float32).reshape(3, 1, 1)
    bias = (-np.asarray(cfg.mean, dtype=np.float64) / std).astype(np.float32).reshape(3, 1, 1)

    def work(image: ImageInput) -> np.ndarray:
        # normalise here, in the worker: numpy releases the GIL, and torch's own intra-op threads are
        # not started for these small arrays (on a busy machine they can cost more than they save)
        pixels = _one(image, cfg).numpy()
        out = np.multiply(pixels, gain, dtype=np.float32)
        return np.add(out, bias, out=out)

    if threads > 1:
        arrays = list(_pool(threads).map(work, items))
    else:
        arrays = [work(im) for im in items]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        sizes = sorted({f"{s[2]}x{s[1]}" for s in shapes})
        raise ValueError(f"images came out in different sizes ({', '.join(sizes)}); set crop=... or an exact "
                         "size=(height, width) to batch images of different shapes")
    return torch.from_numpy(np.stack(arrays))


def sized_inputs(items: Sequence[ImageInput], plan: Preprocess | Callable[[int, int], Preprocess] | None = None,
                 ) -> tuple[list[ImageInput], list[tuple[int, int]]]:
    """Each input ready for :func:`preprocess`, and its ``(width, height)``. Files are only probed (header),
    so that :func:`preprocess` can still decode them at reduced scale; other inputs are opened once here.

    ``plan``: the :class:`Preprocess` the encoder will apply (or a function of ``(width, height)`` giving it);
    each input's size is then checked against its bound (:meth:`Preprocess.check_size`) here, before any model
    is loaded or pixel resized, and the first one over it raises :class:`~vistok.images.ImageError` naming it."""
    ready: list[ImageInput] = []
    sizes: list[tuple[int, int]] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            size = probe_size(item)
            ready.append(item)
        else:
            rgb = open_image(item)
            size = rgb.size
            ready.append(rgb)
        if plan is not None:
            cfg = plan if isinstance(plan, Preprocess) else plan(*size)
            cfg.check_size(*size, source_name(item))
        sizes.append(size)
    return ready, sizes


def batches(sizes: Sequence[tuple[int, int]], working: Any, batch_size: int) -> list[tuple[Any, list[int]]]:
    """``[(working size, indices)]``: the inputs grouped by ``working(width, height)`` (one tensor shape per
    batch), in input order within a group, cut into chunks of at most ``batch_size``."""
    groups: dict[Any, list[int]] = {}
    for index, size in enumerate(sizes):
        groups.setdefault(working(*size), []).append(index)
    step = max(1, int(batch_size))
    return [(key, members[start:start + step]) for key, members in groups.items()
            for start in range(0, len(members), step)]
