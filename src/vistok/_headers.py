"""Upright image sizes read straight from JPEG, PNG, GIF, WebP and BMP headers, for counting large folders.

:func:`header_size` reads the first 16 KB of a file (more only when a header runs past it), parses the
size and the EXIF orientation (orientations 5-8 swap width and height) the way Pillow does for
``PIL.ImageOps.exif_transpose(Image.open(path)).size``, and answers ``None`` for anything it does not
parse exactly: other formats, unusual or broken headers (12-bit JPEG, multiple EXIF blocks, PNG text
metadata that may hold an orientation, animated WebP...). :func:`vistok.images.probe_size` then asks Pillow,
so the answer and the error messages are the same either way; only the speed differs.

Formats followed (byte layouts from the specifications, checked against Pillow in the tests):

- JPEG: ITU-T T.81 (1992), annex B (markers and segment lengths; SOFn frame header: precision, height,
  width, components); EXIF orientation from CIPA DC-008 (Exif 2.3), APP1 ``Exif\\0\\0`` + TIFF 6.0 IFD0
  tag 0x0112; XMP from the APP1 ``http://ns.adobe.com/xap/1.0/`` packet (``tiff:Orientation``), used
  only when EXIF has no orientation, as Pillow does.
- PNG: ISO/IEC 15948 (IHDR, chunk layout, CRC-32); eXIf chunk (PNG 3rd edition).
- GIF: GIF89a specification (logical screen descriptor, extension and image blocks); like Pillow, a first
  frame reaching past the logical screen enlarges the size.
- WebP: RIFF container ("WebP Container Specification", Google): VP8 (RFC 6386 frame header), VP8L
  (lossless bitstream spec, 14-bit sizes) and VP8X (24-bit canvas size, EXIF and XMP chunks).
- BMP: BITMAPINFOHEADER (40 bytes) and later, uncompressed 24- and 32-bit.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zlib
from collections.abc import Callable

__all__ = ["header_size"]

_PILLOW_MAX_IMAGE_PIXELS = 1024 * 1024 * 1024 // 4 // 3  # PIL.Image.MAX_IMAGE_PIXELS as Pillow sets it
_HEAD = 16384  # bytes read first; most headers end well within it
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)  # a FIFO must not block
_SWAPS_AXES = frozenset({5, 6, 7, 8})
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # the pattern Pillow's getexif uses
_XMP_NS = b"http://ns.adobe.com/xap/1.0/\x00"
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_LENGTH_SEGMENTS = frozenset({*range(0xE0, 0xF0), 0xDB, 0xC4, 0xDD, 0xFE, 0xCC})  # APPn, DQT, DHT, DRI, COM, DAC
_MAX_CHUNK = 16 * 1024 * 1024  # larger PNG chunks before the image data are left to Pillow
_PNG_MODES = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_ORIENTATION_TEXT = (b"Raw profile type exif\x00", b"XML:com.adobe.xmp\x00")
_U16BE = struct.Struct(">H").unpack_from
_U32BE = struct.Struct(">I").unpack_from
_U16LE = struct.Struct("<H").unpack_from
_U32LE = struct.Struct("<I").unpack_from
_ABSENT = -1  # no orientation tag

Getter = Callable[[int, int], bytes]


def header_size(src: object) -> tuple[int, int] | None:
    """``(width, height)`` after EXIF orientation, from the header of a file path or encoded bytes;
    ``None`` when the header is not one parsed here (the caller asks Pillow)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        return _parse(data, lambda offset, n: data[offset:offset + n])
    try:
        fd = os.open(src, _OPEN_FLAGS)  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return None
    try:
        head = os.read(fd, _HEAD)

        def get(offset: int, n: int) -> bytes:
            if offset + n <= len(head):
                return head[offset:offset + n]
            return os.pread(fd, n, offset)

        return _parse(head, get)
    except (OSError, ValueError, struct.error, IndexError):
        return None
    finally:
        os.close(fd)


def _parse(head: bytes, get: Getter) -> tuple[int, int] | None:
    if head[:3] == b"\xff\xd8\xff":
        size = _jpeg(head, get)
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        size = _png(head, get)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        size = _gif(head, get)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp(head, get)
    elif head[:2] == b"BM":
        size = _bmp(head)
    else:
        return None
    if size is None:
        return None
    w, h = size
    pil = sys.modules.get("PIL.Image")  # a changed limit needs Pillow imported; its default otherwise
    bomb = pil.MAX_IMAGE_PIXELS if pil is not None else _PILLOW_MAX_IMAGE_PIXELS
    if w <= 0 or h <= 0 or (bomb and w * h > 2 * bomb):
        return None  # Pillow's own checks give the error
    return size


def _upright(w: int, h: int, orientation: int) -> tuple[int, int]:
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


def _orientation(get: Getter, exif: tuple[int, int] | None, xmp: tuple[int, int] | None) -> int | None:
    """EXIF orientation from an EXIF block and/or an XMP packet (``(offset, length)`` each) as Pillow's
    ``getexif`` reads it: EXIF first, XMP only without an EXIF orientation; values outside 1..8 mean 1.
    ``None``: the EXIF block is not one parsed here."""
    value = _ABSENT
    if exif is not None:
        value = _tiff_orientation(get, *exif)
        if value is None:
            return None
    if value == _ABSENT and xmp is not None:
        packet = get(*xmp)
        if len(packet) != xmp[1]:
            return None
        found = _XMP_ORIENTATION.search(packet)
        value = int(found[2]) if found else _ABSENT
    return value if 1 <= value <= 8 else 1


def _tiff_orientation(get: Getter, base: int, length: int) -> int | None:
    """Tag 0x0112 of IFD0 in the TIFF structure at ``base`` (TIFF 6.0, section 2): the value, ``_ABSENT``
    without the tag, ``None`` for anything unusual (the caller falls back to Pillow)."""
    head = get(base, 8)
    if len(head) < 8 or length < 8:
        return None
    if head[:4] == b"II*\x00":
        u16, u32 = _U16LE, _U32LE
    elif head[:4] == b"MM\x00*":
        u16, u32 = _U16BE, _U32BE
    else:
        return None
    ifd = u32(head, 4)[0]
    if ifd < 8 or ifd + 2 > length:
        return None
    count = u16(get(base + ifd, 2))[0]
    if ifd + 2 + 12 * count > length:
        return None
    entries = get(base + ifd + 2, 12 * count)
    if len(entries) != 12 * count:
        return None
    value = _ABSENT
    for at in range(0, 12 * count, 12):
        if u16(entries, at)[0] == 0x0112:
            if value != _ABSENT or u16(entries, at + 2)[0] != 3 or u32(entries, at + 4)[0] != 1:
                return None  # a repeated tag, or not one SHORT
            value = u16(entries, at + 8)[0]
    return value


def _jpeg(head: bytes, get: Getter) -> tuple[int, int] | None:
    """Walk the segments up to the start of scan, as Pillow's JPEG plugin does."""
    pos, size, exif, xmp, n_exif, end = 2, None, None, None, 0, len(head) - 4
    while True:
        if pos <= end:  # the common case: the marker lies in the first read
            lead, marker, length = head[pos], head[pos + 1], (head[pos + 2] << 8) | head[pos + 3]
        else:
            seg = get(pos, 4)
            if len(seg) < 2:
                return None
            lead, marker = seg[0], seg[1]
            length = (seg[2] << 8) | seg[3] if len(seg) == 4 else -1
        if lead != 0xFF:
            return None
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            break
        if length < 2:
            return None
        if marker in _SOF:
            frame = get(pos + 4, 6)
            if len(frame) < 6 or frame[0] != 8 or frame[5] not in (1, 3, 4):
                return None  # Pillow refuses other precisions and component counts
            size = ((frame[3] << 8) | frame[4], (frame[1] << 8) | frame[2])
        elif marker == 0xE1:
            start = get(pos + 4, min(length - 2, len(_XMP_NS)))
            if start[:6] == b"Exif\x00\x00":
                n_exif += 1
                exif = (pos + 10, length - 8)
            elif start == _XMP_NS:
                xmp = (pos + 4 + len(_XMP_NS), length - 2 - len(_XMP_NS))
        elif marker not in _LENGTH_SEGMENTS:
            return None
        pos += 2 + length
    if size is None or n_exif > 1:
        return None
    orientation = _orientation(get, exif, xmp)
    return None if orientation is None else _upright(*size, orientation)


def _png(head: bytes, get: Getter) -> tuple[int, int] | None:
    """IHDR, then every chunk up to the image data (CRCs checked, as Pillow does); metadata that could hold
    an orientation is parsed when it is an eXIf chunk before the image data, else left to Pillow."""
    if head[12:16] != b"IHDR" or _U32BE(head, 8)[0] != 13:
        return None
    w, h = _U32BE(head, 16)[0], _U32BE(head, 20)[0]
    depth, colour, compression, filtering = head[24], head[25], head[26], head[27]
    if depth not in _PNG_MODES.get(colour, ()) or compression or filtering or head[28] > 1:
        return None
    pos, exif, seen_data = 8, None, False
    while True:
        chunk = get(pos, 8)
        if len(chunk) < 8:
            return None  # no IEND: truncated
        length, kind = _U32BE(chunk)[0], chunk[4:]
        if kind == b"IEND" or (seen_data and kind == b"fcTL"):
            break
        if kind == b"IDAT":
            seen_data = True
        elif kind in (b"eXIf", b"tEXt", b"zTXt", b"iTXt"):
            if seen_data:
                return None  # metadata after the image data: Pillow reads it at load
            if kind == b"eXIf":
                if exif is not None:
                    return None
                exif = (pos + 8, length)
            elif any(get(pos + 8, len(key)) == key for key in _PNG_ORIENTATION_TEXT):
                return None
        if not seen_data:
            if not kind.isalpha() or length > _MAX_CHUNK:
                return None  # Pillow refuses a broken chunk name; a huge chunk is left to it too
            body = get(pos + 4, length + 8)  # type, data, CRC
            if len(body) != length + 8 or zlib.crc32(body[:-4]) != _U32BE(body, length + 4)[0]:
                return None
        pos += 12 + length
    if exif is not None and get(exif[0], 6) == b"Exif\x00\x00":
        exif = (exif[0] + 6, exif[1] - 6)
    orientation = _orientation(get, exif, None)
    return None if orientation is None else _upright(w, h, orientation)


def _gif(head: bytes, get: Getter) -> tuple[int, int] | None:
    """Logical screen size, enlarged by a first frame that reaches past it (as Pillow does)."""
    if len(head) < 13:
        return None
    w, h, flags = _U16LE(head, 6)[0], _U16LE(head, 8)[0], head[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while True:
        kind = get(pos, 1)
        if kind == b",":
            frame = get(pos + 1, 8)
            if len(frame) < 8:
                return None
            x1, y1 = _U16LE(frame, 0)[0] + _U16LE(frame, 4)[0], _U16LE(frame, 2)[0] + _U16LE(frame, 6)[0]
            return max(w, x1), max(h, y1)
        if kind != b"!":
            return None  # trailer or junk before any frame: Pillow decides
        pos += 2  # introducer and label, then data sub-blocks up to a zero length
        while True:
            block = get(pos, 1)
            if not block:
                return None
            pos += 1 + block[0]
            if not block[0]:
                break


def _webp(head: bytes, get: Getter) -> tuple[int, int] | None:
    """Still WebP: VP8 or VP8L size, or the VP8X canvas with its EXIF/XMP chunks; animations go to Pillow."""
    if len(head) < 30:
        return None
    kind = head[12:16]
    if kind == b"VP8 ":
        if head[23:26] != b"\x9d\x01\x2a":
            return None
        return _U16LE(head, 26)[0] & 0x3FFF, _U16LE(head, 28)[0] & 0x3FFF
    if kind == b"VP8L":
        if head[20] != 0x2F:
            return None
        bits = _U32LE(head, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind != b"VP8X" or head[20] & 0x02:  # not a still image
        return None
    w = int.from_bytes(head[24:27], "little") + 1
    h = int.from_bytes(head[27:30], "little") + 1
    end = min(8 + _U32LE(head, 4)[0], 1 << 32)
    pos, exif, xmp = 12, None, None
    while pos + 8 <= end:
        chunk = get(pos, 8)
        if len(chunk) < 8:
            return None
        name, length = chunk[:4], _U32LE(chunk, 4)[0]
        if name in (b"EXIF", b"XMP "):
            if (exif if name == b"EXIF" else xmp) is not None:
                return None
            if name == b"EXIF":
                exif = (pos + 8, length)
            else:
                xmp = (pos + 8, length)
        pos += 8 + length + (length & 1)
    if exif is not None and get(exif[0], 6) == b"Exif\x00\x00":
        exif = (exif[0] + 6, exif[1] - 6)
    orientation = _orientation(get, exif, xmp)
    return None if orientation is None else _upright(w, h, orientation)


def _bmp(head: bytes) -> tuple[int, int] | None:
    """Uncompressed 24/32-bit BMP with a BITMAPINFOHEADER or later; rows stored top-down have a negative
    height (read as Pillow does, from the sign byte)."""
    if len(head) < 54 or _U32LE(head, 14)[0] not in (40, 52, 56, 64, 108, 124):
        return None
    bits, compression = _U16LE(head, 28)[0], _U32LE(head, 30)[0]
    if bits not in (24, 32) or compression != 0:
        return None
    w, h = _U32LE(head, 18)[0], _U32LE(head, 22)[0]
    if head[25] == 0xFF:
        h = 2**32 - h
    return w, h
