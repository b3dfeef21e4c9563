"""What names and classifies image inputs without importing numpy or Pillow: the error type, the suffixes
collected from folders, the size limit and the printable name of an input. Counting a folder needs only these
and :mod:`vistok._headers`, so ``vistok count`` starts without loading numpy or Pillow."""

from __future__ import annotations

import os
import re
import stat
import struct
import sys
from typing import Any

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageError", "source_name"]

DEFAULT_MAX_PIXELS: int = 128_000_000
"""Default limit on ``width * height`` (a guard against decompression bombs)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif",
        ".png", ".apng",
        ".gif",
        ".bmp", ".dib",
        ".webp",
        ".avif",
        ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm",
        ".tga", ".ico", ".qoi",
    }
)  # fmt: skip
"""Lower-case file suffixes that :func:`find_images` collects from folders (files without a suffix are
collected too when their first bytes are those of an image)."""


class ImageError(ValueError):
    """An input that cannot be used as an image.

    ``source`` is a short printable name of the input (see :func:`source_name`)
    and ``reason`` says what is wrong and, where possible, what to do.
    ``str(err)`` is ``f"{source}: {reason}"``.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (type(self), (self.source, self.reason))


ImageError.__module__ = "vistok.images"  # its public home, shown in tracebacks and used by pickle


def _is_torch_tensor(obj: object) -> bool:
    """True for torch tensors, detected without importing torch."""
    return type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def _is_path(obj: object) -> bool:
    return isinstance(obj, (str, os.PathLike))


def _is_bytes(obj: object) -> bool:
    return isinstance(obj, (bytes, bytearray, memoryview))


def source_name(src: object) -> str:
    """Return the short printable name of ``src`` used in error messages.

    A path gives the path itself; other inputs give a bracketed description
    such as ``'<bytes: 1234 B>'`` or ``'<numpy array (4, 5, 2) uint8>'``.
    Never raises.
    """
    try:
        if _is_path(src):
            return os.fsdecode(os.fspath(src))  # type: ignore[arg-type]
        if isinstance(src, memoryview):
            return f"<memoryview: {src.nbytes} B>"
        if isinstance(src, (bytes, bytearray)):
            return f"<{type(src).__name__}: {len(src)} B>"
        np = sys.modules.get("numpy")  # an array exists only once numpy is imported: never import it here
        if np is not None and isinstance(src, np.ndarray):
            return f"<numpy array {tuple(src.shape)} {src.dtype}>"
        if _is_torch_tensor(src):
            dtype = str(getattr(src, "dtype", "?")).removeprefix("torch.")
            return f"<torch tensor {tuple(src.shape)} {dtype}>"  # type: ignore[attr-defined]
        pil = sys.modules.get("PIL.Image")
        if pil is not None and isinstance(src, pil.Image):
            filename = getattr(src, "filename", None)
            if isinstance(filename, (str, bytes)) and filename:
                return os.fsdecode(filename)
            return f"<PIL image {src.mode} {src.width}x{src.height}>"
        if hasattr(src, "read"):
            name = getattr(src, "name", None)
            if isinstance(name, (str, bytes)) and name:
                return os.fsdecode(name)
            if isinstance(name, int):
                return f"<file descriptor {name}>"
            return f"<file object: {type(src).__name__}>"
        return f"<{type(src).__name__} object>"
    except Exception:  # a name must never hide the real error
        return f"<{type(src).__name__} object>"


def _looks_like_image(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) starts like an image format Pillow reads.

    Signatures from the format specifications: JPEG SOI ``FF D8 FF``, PNG's eight-byte signature,
    ``GIF87a``/``GIF89a``, BMP ``BM`` with a known DIB header size at byte 14, RIFF ``WEBP``, TIFF
    ``II*\\0``/``MM\\0*``, ISO-BMFF ``ftyp`` of AVIF, QOI ``qoif`` and PNM ``P1``-``P7``.
    """
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"qoif")):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return True
    if head[:2] == b"BM" and len(head) >= 18:
        return struct.unpack("<I", head[14:18])[0] in (12, 16, 40, 52, 56, 64, 108, 124)
    return re.match(rb"P[1-7]\s+(#|\d)", head) is not None


def _sniffed_image(path: str) -> bool:
    """A regular file without a suffix whose first bytes are an image's."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return _looks_like_image(f.read(32))
    except OSError:
        return False
