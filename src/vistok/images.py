"""Open every image vistok sees: validate it, orient it and convert it to RGB.

This is the one place where inputs become pixels.  Everything else in vistok
receives plain 8-bit RGB :class:`PIL.Image.Image` objects from
:func:`open_image`, or a ``(width, height)`` from :func:`probe_size` when only
the size is needed (for example to count tokens for thousands of files).

Accepted inputs (:data:`ImageInput`)
    * a path (``str`` or :class:`os.PathLike`);
    * encoded image bytes (``bytes``, ``bytearray``, ``memoryview``);
    * a binary file object (``open(p, "rb")``, :class:`io.BytesIO`, ...);
      Pillow reads it from the start and it is left open;
    * a :class:`PIL.Image.Image`;
    * a :class:`numpy.ndarray` of shape ``(H, W)``, ``(H, W, 1)``,
      ``(H, W, 3)`` or ``(H, W, 4)``;
    * a ``torch.Tensor`` of shape ``(C, H, W)`` with ``C`` in 1, 3, 4, or
      ``(H, W)``.  torch is never imported by this module.

Pixel conversion rules (the same for files, PIL images and arrays)
    * ``uint8`` data is used as is.
    * 16-bit data (PIL modes ``I;16``, ``I;16B``, ... and ``uint16`` arrays)
      is scaled with ``round(v / 257)``, so 0..65535 maps exactly onto 0..255.
    * 32-bit integer data (PIL mode ``I``) is assumed to hold 16-bit values:
      it is clipped to 0..65535, then scaled like 16-bit data.  (Pillow opens
      some 16-bit files as mode ``I``, which is why this rule is used.)
    * Floating point data (PIL mode ``F``, float arrays and tensors) is
      assumed to lie in [0, 1]: it is clipped to [0, 1], multiplied by 255 and
      rounded (half to even).  NaN in an ``F`` file becomes 0; NaN in an array
      or tensor is an error.
    * Booleans and bilevel (mode ``1``) images become 0 / 255.
    * Grey levels are copied to R, G and B.
    * Palette (``P``), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` and ``RGBX``
      images use Pillow's ``convert("RGB")``.  For CMYK this is Pillow's
      profile-free formula ``R = round((255 - C) * (255 - K) / 255)`` (same
      for G with M and B with Y); embedded ICC profiles are ignored.
    * Transparency (an alpha channel, or a palette / colour-key
      ``transparency`` entry) is composited over ``background`` with
      *straight* (non-premultiplied) alpha::

          out = round(a * rgb + (1 - a) * background),   a = alpha / 255

      computed exactly in integers.  Fully opaque images are unchanged.

Files are decoded completely inside a ``with`` block, so no file handle stays
open, and truncated or corrupt data raises :class:`ImageError` (vistok never
sets Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES``).  EXIF orientation is
applied to images decoded from files.  The pixel limit ``max_pixels`` is
checked from the header before any pixel data is decoded.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from vistok._headers import header_size
from vistok._sources import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    _is_bytes,
    _is_path,
    _is_torch_tensor,
    _sniffed_image,
    source_name,
)

if TYPE_CHECKING:  # pragma: no cover - typing only, torch stays optional
    import torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageError",
    "ImageInput",
    "find_images",
    "gather_images",
    "open_image",
    "probe_size",
    "source_name",
]

ImageInput = Union[
    str,
    os.PathLike,
    bytes,
    bytearray,
    memoryview,
    BinaryIO,
    Image.Image,
    np.ndarray,
    "torch.Tensor",
]
"""Everything :func:`open_image` and :func:`probe_size` accept."""

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that displays the image upright
# (the same table as PIL.ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_KEPT_INFO = ("duration", "loop")
_MAX_TEXT_CHUNK = 16 * 1024 * 1024  # largest PNG metadata chunk probe_size inflates
_ACCEPTED_TYPES = (
    "a path, bytes, a binary file object, a PIL image, a numpy array or a torch tensor"
)
_ARRAY_HELP = (
    "accepted: shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) with dtype uint8, "
    "uint16, bool or float (values in [0, 1])"
)
_TENSOR_HELP = (
    "accepted: shape (C, H, W) with C = 1, 3 or 4, or (H, W), with dtype uint8, "
    "bool or float (values in [0, 1])"
)


# --------------------------------------------------------------------------
# Naming inputs


# --------------------------------------------------------------------------
# Argument checks


def _check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise TypeError(f"max_pixels must be a positive int or None, not {max_pixels!r}")
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive (or None to disable), not {max_pixels}")


def _check_background(background: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in background)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or any(not 0 <= v <= 255 for v in values):
        raise ValueError(f"background must be three ints in 0..255, not {background!r}")
    return values  # type: ignore[return-value]


def _check_draft_size(draft_size: tuple[int, int] | None) -> tuple[int, int] | None:
    if draft_size is None:
        return None
    try:
        w, h = (int(v) for v in draft_size)
    except (TypeError, ValueError):
        w = h = 0
    if w <= 0 or h <= 0:
        raise ValueError(f"draft_size must be two positive ints or None, not {draft_size!r}")
    return (w, h)


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    """Raise ImageError for zero-sized images and images over ``max_pixels``."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageError(name, f"invalid image dimensions {w}x{h}; width and height must be > 0")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            name,
            f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(a guard against decompression bombs); pass max_pixels=<larger number> "
            "to raise the limit, or max_pixels=None to disable it",
        )


# --------------------------------------------------------------------------
# Pillow error handling


def _sniff(src: object) -> bytes | None:
    """First bytes of a path / bytes / file input, or None when unreadable."""
    try:
        if _is_path(src):
            with open(os.fspath(src), "rb") as f:  # type: ignore[arg-type]
                return f.read(256)
        if _is_bytes(src):
            return bytes(memoryview(src)[:256])  # type: ignore[arg-type]
        if hasattr(src, "seek") and hasattr(src, "read"):
            pos = src.tell()  # type: ignore[attr-defined]
            try:
                src.seek(0)  # type: ignore[attr-defined]
                head = src.read(256)  # type: ignore[attr-defined]
            finally:
                src.seek(pos)  # type: ignore[attr-defined]
            return head if isinstance(head, bytes) else None
    except Exception:
        return None
    return None


def _unidentified_reason(src: object) -> str:
    """Explain why Pillow could not identify ``src`` as an image."""
    head = _sniff(src)
    if head is not None and not head:
        return "file is empty (0 bytes); re-download or re-export it"
    generic = "not a recognised image file (unknown format or corrupt header)"
    if head is None:
        return generic
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "this is an HTML page, not an image (a failed download?)"
    if start.startswith(b"<svg") or (start.startswith(b"<?xml") and b"<svg" in start):
        return "SVG is a vector format; rasterise it to PNG first"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim"):
        return "HEIC/HEIF needs a Pillow plugin (pip install pillow-heif, then register it)"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF is not supported by this Pillow build; convert it to PNG or JPEG"
    if start.startswith((b"{", b"[")) or all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "this is a text file, not an image (check the file's contents)"
    return generic + f"; it starts with {head[:8]!r}"


@contextlib.contextmanager
def _pillow_errors(src: object, name: str, max_pixels: int | None) -> Iterator[None]:
    """Turn every failure inside the block into an ImageError for ``name``.

    Pillow's own DecompressionBombWarning is silenced (vistok's ``max_pixels``
    decides); its hard DecompressionBombError is converted.  The global
    ``PIL.Image.MAX_IMAGE_PIXELS`` is never changed.
    """
    try:
        with warnings.catch_warnings():
            # catch_warnings is process-global; this filter only ignores
            # Pillow's bomb warning, so a leak between threads is harmless.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if max_pixels is not None and max_pixels <= pillow_limit:
            reason = (
                f"image is over {pillow_limit:,} pixels, over the limit of {max_pixels:,} "
                "(a guard against decompression bombs); pass max_pixels=<larger number> "
                "to raise the limit, or max_pixels=None to disable it"
            )
        else:
            reason = (
                f"Pillow refuses images over {pillow_limit:,} pixels ({e}); "
                "raise PIL.Image.MAX_IMAGE_PIXELS as well as max_pixels to open it"
            )
        raise ImageError(name, reason) from e
    except FileNotFoundError as e:
        reason = "file not found"
        if isinstance(src, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", src):
            reason += " (URLs are not downloaded; fetch the file first)"
        raise ImageError(name, reason) from e
    except IsADirectoryError as e:
        raise ImageError(
            name, "is a directory, not an image file (use find_images() to list its images)"
        ) from e
    except PermissionError as e:
        raise ImageError(name, "permission denied; check the file's permissions") from e
    except UnidentifiedImageError as e:
        raise ImageError(name, _unidentified_reason(src)) from e
    except MemoryError as e:
        raise ImageError(
            name, "not enough memory to decode this image (for JPEGs, draft_size helps)"
        ) from e
    except Exception as e:  # noqa: BLE001 - corrupt files raise all kinds of errors
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            reason = f"file is truncated ({detail}); re-download or re-export it"
        elif isinstance(e, ValueError) and "closed" in str(e).lower():
            reason = f"the file or image is closed ({detail}); pass an open one"
        else:
            reason = f"corrupt or unsupported image data ({detail})"
        raise ImageError(name, reason) from e


@contextlib.contextmanager
def _open_encoded(src: object, name: str, max_pixels: int | None) -> Iterator[ImageFile.ImageFile]:
    """Open a path / bytes / file input lazily (header only) and close it on exit."""
    if _is_bytes(src):
        view = memoryview(src)  # type: ignore[arg-type]
        if view.nbytes == 0:
            raise ImageError(name, "input is empty (0 bytes)")
        fp: Any = io.BytesIO(src if isinstance(src, bytes) else view.tobytes())
    elif _is_path(src):
        fp = os.fspath(src)  # type: ignore[arg-type]
        _check_regular(fp, name)
    elif isinstance(src, io.TextIOBase):
        raise ImageError(name, "file object is in text mode; open the file with mode 'rb'")
    elif hasattr(src, "read"):
        fp = src
    else:
        raise ImageError(name, f"unsupported input type {type(src).__name__}; pass {_ACCEPTED_TYPES}")
    with _pillow_errors(src, name, max_pixels):
        with Image.open(fp) as im:
            yield im


def _check_regular(path: str | bytes, name: str) -> None:
    """Refuse a FIFO, device or socket before opening it (reading a FIFO would wait for a writer forever).

    Missing files and folders pass: Pillow's open reports them with the usual messages."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        from vistok.outputs import file_kind

        raise ImageError(name, f"not a regular file ({file_kind(mode)}); vistok reads images only from regular files")


# --------------------------------------------------------------------------
# Orientation


def _orientation(im: Image.Image, extra_info: dict[str, Any] | None = None) -> int:
    """EXIF orientation (1..8) of ``im`` from its header metadata, without decoding.

    Uses the same sources as Pillow's ``getexif``: TIFF tags, ``info["exif"]``,
    the PNG "Raw profile type exif" text and XMP.  Broken metadata gives 1.
    """
    try:
        value = None
        tags = getattr(im, "tag_v2", None)
        if tags is not None:
            value = tags.get(_ORIENTATION_TAG)
        if value is None:
            info = dict(im.info)
            if extra_info:
                info.update(extra_info)
            if not any(k in info for k in ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")):
                return 1
            # A blank image parses the metadata with Pillow's own code, leaving
            # ``im`` (and its cached EXIF) untouched.
            holder = Image.new("1", (1, 1))
            holder.info = info
            value = holder.getexif().get(_ORIENTATION_TAG)
        orientation = int(value) if value is not None else 1
    except Exception:
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _png_trailing_info(fp: Any) -> dict[str, Any]:
    """Metadata chunks that follow the image data of a PNG.

    Pillow reads them only when the pixels are loaded; this walks the chunk
    headers and skips the data with ``seek`` instead, so nothing is decoded.
    """
    found: dict[str, Any] = {}
    if fp is None:
        return found
    try:
        start = fp.tell()
    except Exception:
        return found
    try:
        fp.seek(8)
        seen_idat = False
        while True:
            head = fp.read(8)
            if len(head) < 8:
                break
            length, ctype = struct.unpack(">I4s", head)
            if ctype == b"IEND" or (seen_idat and ctype == b"fcTL"):
                break
            if ctype == b"IDAT":
                seen_idat = True
            elif seen_idat and ctype in (b"eXIf", b"tEXt", b"zTXt", b"iTXt") and length <= _MAX_TEXT_CHUNK:
                data = fp.read(length)
                fp.seek(4, os.SEEK_CUR)
                _parse_png_text(ctype, data, found)
                continue
            fp.seek(length + 4, os.SEEK_CUR)
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            fp.seek(start)  # a caller's lazily opened image must stay loadable
    return found


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, _MAX_TEXT_CHUNK)
    if d.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def _parse_png_text(ctype: bytes, data: bytes, found: dict[str, Any]) -> None:
    """Store the orientation-relevant part of one PNG metadata chunk in ``found``."""
    if ctype == b"eXIf":
        found["exif"] = b"Exif\x00\x00" + data
        return
    key, _, rest = data.partition(b"\x00")
    if ctype == b"tEXt" and key == b"Raw profile type exif":
        found["Raw profile type exif"] = rest.decode("latin-1")
    elif ctype == b"zTXt" and key == b"Raw profile type exif":
        found["Raw profile type exif"] = _inflate(rest[1:]).decode("latin-1")
    elif ctype == b"iTXt" and key == b"XML:com.adobe.xmp" and len(rest) >= 2:
        compressed = rest[0]
        text = rest[2:].split(b"\x00", 2)[-1]  # skip language and translated key
        found["XML:com.adobe.xmp"] = (_inflate(text) if compressed else text).decode("utf-8", "replace")


def _upright_size(im: ImageFile.ImageFile) -> tuple[int, int]:
    """(width, height) of ``im`` after orientation, from header data only."""
    orientation = _orientation(im)
    if orientation == 1 and im.format == "PNG" and im.fp is not None and im.tile:
        # Pillow also applies metadata that follows the pixel data (read at load).
        orientation = _orientation(im, _png_trailing_info(im.fp))
    if orientation not in _SWAPS_AXES:
        return im.size
    tags = getattr(im, "tag_v2", None)
    if tags is not None and 256 in tags and 257 in tags:
        # TIFF: recent Pillow already reports (and, on load, produces) the
        # upright size, older versions the stored one; the raw width/length
        # tags give the same answer for both.
        return (int(tags[257]), int(tags[256]))
    return (im.size[1], im.size[0])


# --------------------------------------------------------------------------
# Pixel conversion


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """Straight-alpha composite of an (H, W, 4) uint8 array over ``background``.

    ``out = round((A * rgb + (255 - A) * bg) / 255)``, exact in integers.
    """
    alpha = rgba[..., 3:4]
    if alpha.size and int(alpha.min()) == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.uint16)
    bg = np.asarray(background, dtype=np.uint16)
    out = rgba[..., :3].astype(np.uint16) * a
    out += bg * (255 - a)
    out += 127
    out //= 255
    return out.astype(np.uint8)


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """Map 0..65535 onto 0..255 with round(v / 257)."""
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    """Clip to [0, 1], scale by 255 and round half to even."""
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")


def _pil_to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Convert a loaded PIL image of any supported mode to a new RGB image."""
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_sixteen_to_eight(np.asarray(im)))
    if mode == "I":
        return _gray_to_rgb(_sixteen_to_eight(np.clip(np.asarray(im), 0, 65535)))
    if mode == "F":
        return _gray_to_rgb(_float_to_eight(np.nan_to_num(np.asarray(im), nan=0.0)))
    if mode == "La":  # premultiplied grey + alpha: out = L + (255 - A) * bg / 255
        la = np.asarray(im).astype(np.uint16)
        inv = 255 - la[..., 1:2]
        out = (la[..., 0:1] * 255 + inv * np.asarray(background, np.uint16) + 127) // 255
        return Image.fromarray(np.minimum(out, 255).astype(np.uint8))
    has_alpha = (
        mode in _ALPHA_MODES
        or "transparency" in im.info
        or (mode == "P" and im.palette is not None and "A" in im.palette.mode)
    )
    if has_alpha:
        return Image.fromarray(_composite(np.asarray(im.convert("RGBA")), background))
    return im.convert("RGB")


def _finish(im: Image.Image, orientation: int, background: tuple[int, int, int]) -> Image.Image:
    """RGB copy of a loaded frame, turned upright, with only harmless info kept."""
    rgb = _pil_to_rgb(im, background)
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    rgb.info = {k: im.info[k] for k in _KEPT_INFO if k in im.info}
    return rgb


# --------------------------------------------------------------------------
# Arrays and tensors


def _array_hw(arr: np.ndarray, name: str) -> tuple[int, int]:
    """Validate an array's shape and dtype; return its (width, height)."""
    shape = arr.shape
    if arr.ndim == 4:
        raise ImageError(name, f"a 4-D array is a batch; pass one image at a time ({_ARRAY_HELP})")
    if not (arr.ndim == 2 or (arr.ndim == 3 and shape[2] in (1, 3, 4))):
        hint = ""
        if arr.ndim == 3 and shape[0] in (1, 3, 4):
            hint = "; channels-first data must be moved last: arr.transpose(1, 2, 0)"
        raise ImageError(name, f"unsupported array shape {shape}{hint} ({_ARRAY_HELP})")
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if not (kind == "b" or kind == "f" or (kind == "u" and size in (1, 2))):
        raise ImageError(
            name,
            f"unsupported array dtype {arr.dtype}; convert it, e.g. arr.astype(np.uint8) "
            f"({_ARRAY_HELP})",
        )
    return (int(shape[1]), int(shape[0]))


def _array_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    """Convert a validated array to uint8 following the module's rules."""
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "u" and size == 1:
        return arr
    if kind == "u":
        return _sixteen_to_eight(arr)
    if kind == "b":
        return arr.astype(np.uint8) * np.uint8(255)
    if np.isnan(arr).any():
        raise ImageError(name, "array contains NaN values; replace them, e.g. np.nan_to_num(arr)")
    return _float_to_eight(arr)


def _array_to_rgb(
    arr: np.ndarray, name: str, max_pixels: int | None, background: tuple[int, int, int]
) -> Image.Image:
    _check_pixels(_array_hw(arr, name), max_pixels, name)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    data = _array_to_uint8(arr, name)
    if data.ndim == 3 and data.shape[2] == 4:
        data = _composite(data, background)
    data = np.ascontiguousarray(data)
    if data.ndim == 2:
        return _gray_to_rgb(data)
    return Image.fromarray(data)


_TORCH_FLOATS = {"torch.float16", "torch.float32", "torch.float64", "torch.bfloat16"}
_TORCH_OK = _TORCH_FLOATS | {"torch.uint8", "torch.bool"}


def _tensor_shape(t: Any, name: str) -> tuple[int, ...]:
    """Validate a torch tensor's shape and dtype; return its shape."""
    shape = tuple(int(s) for s in t.shape)
    dtype = str(t.dtype)
    if len(shape) == 4:
        raise ImageError(
            name, f"a 4-D tensor {shape} is a batch; pass one image (C, H, W) or a list of images"
        )
    if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3, 4))):
        hint = ""
        if len(shape) == 3 and shape[2] in (1, 3, 4):
            hint = "; tensors are channels-first, use t.permute(2, 0, 1)"
        raise ImageError(name, f"unsupported tensor shape {shape}{hint} ({_TENSOR_HELP})")
    if dtype not in _TORCH_OK:
        raise ImageError(
            name, f"unsupported tensor dtype {dtype.removeprefix('torch.')} ({_TENSOR_HELP})"
        )
    return shape


def _tensor_to_array(t: Any, name: str) -> np.ndarray:
    """Validate a torch tensor and return it as an (H, W[, C]) numpy array.

    torch itself is not imported: every operation is a method of the tensor.
    """
    shape = _tensor_shape(t, name)
    try:
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            t = t.float()
        arr = t.resolve_conj().resolve_neg().numpy()
    except Exception as e:
        raise ImageError(name, f"cannot read the tensor's data ({type(e).__name__}: {e})") from e
    return arr if len(shape) == 2 else np.moveaxis(arr, 0, -1)


# --------------------------------------------------------------------------
# Public functions


def open_image(
    src: ImageInput,
    *,
    all_frames: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    draft_size: tuple[int, int] | None = None,
) -> Image.Image | list[Image.Image]:
    """Open, validate, orient and convert ``src`` to 8-bit RGB.

    Returns one RGB image (the first frame of an animation, or the current
    frame of a PIL image) or, with ``all_frames=True``, a list of RGB frames
    (a one-element list for still images and arrays).

    * ``max_pixels``: largest allowed ``width * height``; checked from the
      header before decoding (``None`` disables it).  Applies to every input.
    * ``background``: colour that transparent pixels are composited over with
      straight alpha, ``out = round(a * rgb + (1 - a) * background)``.
    * ``draft_size``: a speed hint for callers that will downscale anyway.
      A JPEG file is decoded by libjpeg at a reduced scale (1/2, 1/4 or 1/8)
      that stays at least ``draft_size`` in both directions (upright axes).
      Other formats, PIL inputs and ``all_frames=True`` ignore it.

    EXIF orientation is applied to images decoded from files (and to PIL
    images straight from ``Image.open``), not to in-memory images or arrays.
    The returned images are detached from any file and keep only the
    ``duration`` and ``loop`` entries of ``info``.

    Raises :class:`ImageError` for anything that cannot be used as an image.
    """
    _check_max_pixels(max_pixels)
    bg = _check_background(background)
    draft = _check_draft_size(draft_size)
    name = source_name(src)

    if _is_torch_tensor(src):
        frames = [_array_to_rgb(_tensor_to_array(src, name), name, max_pixels, bg)]
    elif isinstance(src, np.ndarray):
        frames = [_array_to_rgb(src, name, max_pixels, bg)]
    elif isinstance(src, Image.Image):
        frames = _from_pil(src, name, all_frames, max_pixels, bg)
    else:
        frames = _from_encoded(src, name, all_frames, max_pixels, bg, draft)
    return frames if all_frames else frames[0]


def _from_encoded(
    src: object,
    name: str,
    all_frames: bool,
    max_pixels: int | None,
    background: tuple[int, int, int],
    draft: tuple[int, int] | None,
) -> list[Image.Image]:
    with _open_encoded(src, name, max_pixels) as im:
        _check_pixels(im.size, max_pixels, name)
        if not all_frames:
            if draft is not None and im.format in ("JPEG", "MPO"):
                if _orientation(im) in _SWAPS_AXES:
                    draft = (draft[1], draft[0])
                im.draft("RGB", draft)
            im.load()
            return [_finish(im, _orientation(im), background)]
        frames = []
        for index in range(getattr(im, "n_frames", 1)):
            if index:
                im.seek(index)
                _check_pixels(im.size, max_pixels, name)
            im.load()
            frames.append(_finish(im, _orientation(im), background))
        return frames


def _from_pil(
    im: Image.Image,
    name: str,
    all_frames: bool,
    max_pixels: int | None,
    background: tuple[int, int, int],
) -> list[Image.Image]:
    from_file = isinstance(im, ImageFile.ImageFile)
    with _pillow_errors(im, name, max_pixels):
        _check_pixels(im.size, max_pixels, name)
        n_frames = getattr(im, "n_frames", 1) if all_frames else 1
        if n_frames <= 1:
            im.load()
            return [_finish(im, _orientation(im) if from_file else 1, background)]
        start = im.tell()
        frames = []
        try:
            for index in range(n_frames):
                im.seek(index)
                _check_pixels(im.size, max_pixels, name)
                im.load()
                frames.append(_finish(im, _orientation(im) if from_file else 1, background))
        finally:
            with contextlib.suppress(Exception):
                im.seek(start)
        return frames


def probe_size(src: ImageInput, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Return ``(width, height)`` exactly as :func:`open_image` would return it.

    For files only the header is read: the size and the EXIF orientation tag
    (orientations 5-8 swap width and height); pixel data is never decoded, so
    this is fast and works on files whose image data is truncated.  PIL
    images, arrays and tensors give their own size (arrays and tensors are
    validated like in :func:`open_image`).  Raises :class:`ImageError` like
    :func:`open_image` for missing, empty, non-image and over-limit inputs.
    JPEG, PNG, GIF, WebP and BMP headers of paths and bytes are parsed
    directly (:mod:`vistok._headers`, several times faster than Pillow's
    open); anything else, and every error, goes through Pillow.
    """
    _check_max_pixels(max_pixels)
    if isinstance(src, (str, os.PathLike, bytes, bytearray, memoryview)):
        size = header_size(src)
        if size is not None and (max_pixels is None or size[0] * size[1] <= max_pixels):
            return size
    name = source_name(src)
    if _is_torch_tensor(src):
        shape = _tensor_shape(src, name)
        size = (shape[-1], shape[-2])
    elif isinstance(src, np.ndarray):
        size = _array_hw(src, name)
    elif isinstance(src, Image.Image):
        size = _upright_size(src) if isinstance(src, ImageFile.ImageFile) else src.size
    else:
        with _open_encoded(src, name, max_pixels) as im:
            _check_pixels(im.size, max_pixels, name)
            size = _upright_size(im)
        return size
    _check_pixels(size, max_pixels, name)
    return size


def find_images(paths: Iterable[str | os.PathLike], *, recursive: bool = True) -> list[pathlib.Path]:
    """Expand files and folders into a list of image paths.

    A folder gives its files whose suffix (case-insensitive) is in
    :data:`IMAGE_EXTENSIONS`, and its files without a suffix whose first
    bytes are those of an image (JPEG, PNG, GIF, BMP, WebP, TIFF, AVIF, QOI,
    PNM), sorted, descending into sub-folders when ``recursive``; hidden
    files and folders (name starting with ``.``, such as macOS
    ``._IMG.jpg`` resource forks) are skipped and symlinked folders are not
    followed.  A file named explicitly is kept whatever its suffix.
    Arguments keep their order and a file listed twice appears once.  A
    missing path, or one that is not a regular file (a FIFO, device or
    socket), raises :class:`ImageError` naming it.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    result: list[pathlib.Path] = []
    seen: set[str] = set()

    def add(path: pathlib.Path) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            result.append(path)

    for item in paths:
        path = pathlib.Path(item)
        if path.is_dir():
            for found in _scan_folder(path, recursive):
                add(found)
        elif path.exists():
            _check_regular(os.fspath(path), source_name(item))
            add(path)
        else:
            raise ImageError(source_name(item), "no such file or directory")
    return result


def gather_images(
    paths: Iterable[str | os.PathLike], *, recursive: bool = True, check: bool = False
) -> tuple[list[pathlib.Path], dict[str, str]]:
    """The image files under ``paths`` and, for inputs that cannot be used, the reason; never raises.

    Like :func:`find_images`, but a bad argument is recorded in the returned ``{name: reason}`` instead of
    raising, and the others are kept. With ``check`` every file's header is read (:func:`probe_size`, no
    pixel limit) and files that are not readable images move to the reasons: a cheap check to run before
    a model is loaded, so that a command over bad inputs fails in a moment.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[pathlib.Path] = []
    bad: dict[str, str] = {}
    seen: set[str] = set()
    for item in paths:
        try:
            found = find_images([item], recursive=recursive)
        except ImageError as err:
            bad[err.source] = err.reason
            continue
        for path in found:
            key = os.path.normcase(os.path.abspath(path))
            if key in seen:
                continue
            seen.add(key)
            if check:
                try:
                    probe_size(path, max_pixels=None)
                except ImageError as err:
                    bad[str(path)] = err.reason
                    continue
            files.append(path)
    return files, bad


def _scan_folder(root: pathlib.Path, recursive: bool) -> list[pathlib.Path]:
    """Image files under ``root``: by suffix (even when not readable: opening them reports why), or
    suffix-less files whose first bytes are an image's."""
    found: list[pathlib.Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        base = pathlib.Path(folder)
        for file in files:
            if file.startswith("."):
                continue
            suffix = os.path.splitext(file)[1].lower()
            if suffix in IMAGE_EXTENSIONS or (not suffix and _sniffed_image(os.path.join(folder, file))):
                found.append(base / file)
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found
