"""Tests for vistok.images: inputs, orientation, modes, frames, errors, probing."""

from __future__ import annotations

import gc
import io
import os
import pickle
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from vistok.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    find_images,
    gather_images,
    open_image,
    probe_size,
    source_name,
)

torch = pytest.importorskip("torch")

H, W = 5, 7
RNG = np.random.default_rng(1234)
PICTURE = RNG.integers(0, 256, size=(H, W, 3), dtype=np.uint8)  # asymmetric, 7 wide x 5 high
GRAY = RNG.integers(0, 256, size=(H, W), dtype=np.uint8)


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def pixels(im: Image.Image) -> np.ndarray:
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    return np.asarray(im)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, payload) chunks."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        chunks.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for ctype, payload in chunks:
        crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
        out.append(struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc))
    return b"".join(out)


def png_with_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims width x height (valid CRC, no big data)."""
    chunks = png_chunks(png_bytes(Image.fromarray(PICTURE)))
    ctype, ihdr = chunks[0]
    assert ctype == b"IHDR"
    chunks[0] = (ctype, struct.pack(">II", width, height) + ihdr[8:])
    return png_join(chunks)


def exif_with(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# --------------------------------------------------------------------------
# Every input type gives the same pixels


def test_all_input_types_agree(tmp_path: Path) -> None:
    data = png_bytes(Image.fromarray(PICTURE))
    path = write(tmp_path / "pic.png", data)
    inputs = {
        "str path": str(path),
        "Path": path,
        "bytes": data,
        "bytearray": bytearray(data),
        "memoryview": memoryview(data),
        "BytesIO": io.BytesIO(data),
        "PIL": Image.fromarray(PICTURE),
        "PIL from file": Image.open(io.BytesIO(data)),
        "numpy uint8": PICTURE,
        "numpy uint16": PICTURE.astype(np.uint16) * 257,
        "numpy float32": PICTURE.astype(np.float32) / 255,
        "numpy float64": PICTURE / 255.0,
        "numpy non-contiguous": np.asfortranarray(PICTURE),
        "numpy RGBA opaque": np.dstack([PICTURE, np.full((H, W), 255, np.uint8)]),
        "torch uint8": torch.from_numpy(PICTURE).permute(2, 0, 1),
        "torch float": torch.from_numpy(PICTURE).permute(2, 0, 1).float() / 255,
        "torch float requires_grad": (torch.from_numpy(PICTURE).permute(2, 0, 1).double() / 255).requires_grad_(),
    }
    for label, src in inputs.items():
        im = open_image(src)
        assert pixels(im).tolist() == PICTURE.tolist(), label
        assert probe_size(src) == (W, H), label
    with open(path, "rb") as f:
        f.read(10)  # position does not matter
        assert pixels(open_image(f)).tolist() == PICTURE.tolist()
        assert not f.closed  # caller's file object is left open


def test_gray_and_bool_inputs_agree(tmp_path: Path) -> None:
    expected = np.repeat(GRAY[..., None], 3, axis=2)
    path = write(tmp_path / "gray.png", png_bytes(Image.fromarray(GRAY)))
    for src in (
        path,
        GRAY,
        GRAY[..., None],
        GRAY.astype(np.uint16) * 257,
        GRAY.astype(np.float32) / 255,
        torch.from_numpy(GRAY),
        torch.from_numpy(GRAY)[None],
        torch.from_numpy(GRAY).float() / 255,
    ):
        assert pixels(open_image(src)).tolist() == expected.tolist(), source_name(src)

    mask = GRAY > 128
    expected = np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2)
    for src in (mask, torch.from_numpy(mask), Image.fromarray(mask)):
        assert pixels(open_image(src)).tolist() == expected.tolist(), source_name(src)


def test_array_value_rules() -> None:
    u16 = np.array([[0, 128, 129, 257, 40000, 65535]], dtype=np.uint16)
    assert pixels(open_image(u16))[0, :, 0].tolist() == [0, 0, 1, 1, 156, 255]
    assert pixels(open_image(u16.astype(">u2")))[0, :, 0].tolist() == [0, 0, 1, 1, 156, 255]
    floats = np.array([[-0.5, 0.0, 0.25, 0.2, 1.0, 7.0]], dtype=np.float32)
    assert pixels(open_image(floats))[0, :, 0].tolist() == [0, 0, 64, 51, 255, 255]
    rgba = np.array([[[10, 200, 30, 128], [1, 2, 3, 0]]], dtype=np.uint8)
    assert pixels(open_image(rgba)).tolist() == [[[132, 227, 142], [255, 255, 255]]]
    assert pixels(open_image(rgba, background=(0, 0, 0))).tolist() == [[[5, 100, 15], [0, 0, 0]]]
    t = torch.tensor(rgba).permute(2, 0, 1)
    assert pixels(open_image(t, background=(0, 0, 0))).tolist() == [[[5, 100, 15], [0, 0, 0]]]
    assert pixels(open_image(torch.zeros(3, 2, 2, dtype=torch.bfloat16) + 1)).min() == 255


def test_returns_independent_copies() -> None:
    src = Image.fromarray(PICTURE)
    out = open_image(src)
    assert out is not src
    out.putpixel((0, 0), (1, 2, 3))
    assert src.getpixel((0, 0)) == tuple(PICTURE[0, 0])
    arr = PICTURE.copy()
    out = open_image(arr)
    arr[0, 0] = 0
    assert pixels(out)[0, 0].tolist() == PICTURE[0, 0].tolist()


# --------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_exif_orientation_6(tmp_path: Path, fmt: str) -> None:
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(Image.fromarray(PICTURE), fmt, exif=exif_with(6), **kw)
    path = write(tmp_path / f"rot6.{fmt.lower()}", data)
    im = open_image(path)
    assert im.size == (H, W)  # swapped
    # orientation 6: the stored picture must be turned 90 degrees clockwise
    assert pixels(im).tolist() == np.rot90(PICTURE, k=-1).tolist()
    assert probe_size(path) == (H, W)
    assert probe_size(data) == (H, W)
    with Image.open(path) as lazy:  # a PIL image straight from Image.open
        assert probe_size(lazy) == (H, W)
        assert pixels(open_image(lazy)).tolist() == np.rot90(PICTURE, k=-1).tolist()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_exif_transpose(orientation: int) -> None:
    data = png_bytes(Image.fromarray(PICTURE), exif=exif_with(orientation))
    with Image.open(io.BytesIO(data)) as ref_im:
        expected = np.asarray(ImageOps.exif_transpose(ref_im).convert("RGB"))
    im = open_image(data)
    assert pixels(im).tolist() == expected.tolist()
    assert probe_size(data) == im.size
    assert (im.size == (H, W)) == (orientation >= 5)
    assert 0x0112 not in Image.Exif()  # sanity: fresh Exif is empty
    # the returned image carries no stale orientation metadata
    assert "exif" not in im.info


def test_orientation_in_png_chunk_after_image_data() -> None:
    chunks = png_chunks(png_bytes(Image.fromarray(PICTURE), exif=exif_with(8)))
    exif = [c for c in chunks if c[0] == b"eXIf"]
    rest = [c for c in chunks if c[0] != b"eXIf"]
    assert exif and rest[-1][0] == b"IEND"
    data = png_join(rest[:-1] + exif + rest[-1:])  # eXIf moved after IDAT
    assert data.index(b"eXIf") > data.index(b"IDAT")
    im = open_image(data)
    assert pixels(im).tolist() == np.rot90(PICTURE, k=1).tolist()
    assert probe_size(data) == (H, W) == im.size


def test_probe_then_open_same_lazy_png() -> None:
    data = png_bytes(Image.fromarray(np.tile(PICTURE, (40, 40, 1))))
    with Image.open(io.BytesIO(data)) as lazy:
        assert probe_size(lazy) == (40 * W, 40 * H)
        assert pixels(open_image(lazy)).tolist() == np.tile(PICTURE, (40, 40, 1)).tolist()


def test_orientation_not_applied_to_in_memory_images() -> None:
    im = Image.fromarray(PICTURE)
    im.info["exif"] = exif_with(6).tobytes()
    assert open_image(im).size == (W, H)
    assert probe_size(im) == (W, H)


# --------------------------------------------------------------------------
# Mode conversions (exact values)


def _roundtrip(im: Image.Image, fmt: str, tmp_path: Path, **kw) -> Path:
    path = tmp_path / f"mode_{im.mode.replace(';', '_')}.{fmt.lower()}"
    im.save(path, fmt, **kw)
    return path


def test_mode_L_and_1(tmp_path: Path) -> None:
    im = Image.new("L", (2, 1), 77)
    for src in (im, _roundtrip(im, "PNG", tmp_path)):
        assert pixels(open_image(src)).tolist() == [[[77, 77, 77]] * 2]
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert bilevel.mode == "1"
    for src in (bilevel, _roundtrip(bilevel, "PNG", tmp_path)):
        assert pixels(open_image(src)).tolist() == [[[255, 255, 255], [0, 0, 0]]]


def test_mode_LA(tmp_path: Path) -> None:
    im = Image.new("LA", (1, 1), (200, 100))
    path = _roundtrip(im, "PNG", tmp_path)
    with Image.open(path) as check:
        assert check.mode == "LA"
    for src in (im, path):
        # 100/255 * 200 + 155/255 * 255 = 233.43
        assert pixels(open_image(src)).tolist() == [[[233, 233, 233]]]
        # over (10, 20, 30): 78.43 + 155/255 * bg = 84.51, 90.59, 96.67
        assert pixels(open_image(src, background=(10, 20, 30))).tolist() == [[[85, 91, 97]]]


def test_mode_RGBA(tmp_path: Path) -> None:
    im = Image.new("RGBA", (2, 1), (10, 200, 30, 128))
    im.putpixel((1, 0), (9, 9, 9, 255))
    path = _roundtrip(im, "PNG", tmp_path)
    for src in (im, path):
        assert pixels(open_image(src)).tolist() == [[[132, 227, 142], [9, 9, 9]]]
        assert pixels(open_image(src, background=(0, 0, 0))).tolist() == [[[5, 100, 15], [9, 9, 9]]]


def test_mode_P_with_and_without_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    for x in range(3):
        im.putpixel((x, 0), x)
    assert pixels(open_image(im)).tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
    im.info["transparency"] = 1
    path = _roundtrip(im, "PNG", tmp_path, transparency=1)
    gif = _roundtrip(im, "GIF", tmp_path, transparency=1)
    for src in (im, path, gif):
        assert pixels(open_image(src, background=(7, 8, 9))).tolist() == [
            [[255, 0, 0], [7, 8, 9], [0, 0, 255]]
        ], src


def test_rgb_with_colour_key_transparency(tmp_path: Path) -> None:
    im = Image.new("RGB", (2, 1), (1, 2, 3))
    im.putpixel((1, 0), (50, 60, 70))
    path = _roundtrip(im, "PNG", tmp_path, transparency=(1, 2, 3))
    assert pixels(open_image(path, background=(0, 0, 0))).tolist() == [[[0, 0, 0], [50, 60, 70]]]


def test_mode_CMYK(tmp_path: Path) -> None:
    im = Image.new("CMYK", (2, 1), (10, 20, 30, 40))
    im.putpixel((1, 0), (0, 255, 0, 0))
    path = _roundtrip(im, "TIFF", tmp_path)
    for src in (im, path):
        # R = (255 - C) * (255 - K) / 255, likewise G with M and B with Y
        assert pixels(open_image(src)).tolist() == [[[207, 198, 190], [255, 0, 255]]]


def test_mode_YCbCr() -> None:
    im = Image.new("YCbCr", (1, 1), (100, 100, 200))
    assert pixels(open_image(im)).tolist() == [[list(im.convert("RGB").getpixel((0, 0)))]]


def test_mode_I16(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 257, 40000, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    big = Image.frombytes("I;16B", (6, 1), values.astype(">u2").tobytes())
    path = _roundtrip(im, "PNG", tmp_path)
    for src in (im, big, path):
        out = pixels(open_image(src))
        assert out[0, :, 0].tolist() == [0, 0, 1, 1, 156, 255], source_name(src)
        assert (out[..., 0] == out[..., 2]).all()


def test_mode_I(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[-5, 0, 257, 40000, 65535, 70000]], dtype=np.int32))
    assert im.mode == "I"
    for src in (im, _roundtrip(im, "TIFF", tmp_path)):
        assert pixels(open_image(src))[0, :, 1].tolist() == [0, 0, 1, 156, 255, 255]


def test_mode_F(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[-0.5, 0.0, 0.25, 0.2, 1.0, 3.0, np.nan]], dtype=np.float32))
    assert im.mode == "F"
    for src in (im, _roundtrip(im, "TIFF", tmp_path)):
        assert pixels(open_image(src))[0, :, 0].tolist() == [0, 0, 64, 51, 255, 255, 0]


# --------------------------------------------------------------------------
# Animation


def _animated_gif(tmp_path: Path) -> Path:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (4, 3), c) for c in colours]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0)
    return path


def test_animated_gif(tmp_path: Path) -> None:
    path = _animated_gif(tmp_path)
    first = open_image(path)
    assert isinstance(first, Image.Image)
    assert pixels(first)[0, 0].tolist() == [255, 0, 0]
    frames = open_image(path, all_frames=True)
    assert isinstance(frames, list) and len(frames) == 3
    assert [pixels(f)[1, 2].tolist() for f in frames] == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert all(f.size == (4, 3) for f in frames)
    assert frames[1].info.get("duration") == 80
    with Image.open(path) as lazy:
        assert len(open_image(lazy, all_frames=True)) == 3
        assert lazy.tell() == 0  # the caller's frame position is restored
    assert open_image(PICTURE, all_frames=True)[0].size == (W, H)


# --------------------------------------------------------------------------
# Bad inputs


def _bad_corpus(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    jpeg = encode(Image.fromarray(np.tile(PICTURE, (20, 20, 1))), "JPEG")
    png = png_bytes(Image.fromarray(np.tile(PICTURE, (20, 20, 1))))
    bad = tmp_path / "bad"
    bad.mkdir()
    return {
        "empty": (write(bad / "empty.png", b""), "empty"),
        "truncated jpeg": (write(bad / "cut.jpg", jpeg[: len(jpeg) // 2]), "truncated"),
        "truncated png": (write(bad / "cut.png", png[: len(png) // 2]), "truncated"),
        "corrupt": (write(bad / "noise.png", RNG.integers(0, 256, 500, np.uint8).tobytes()), "not a recognised image"),
        "text": (write(bad / "notes.jpg", b"hello, this is not a picture\n"), "text file"),
        "html": (write(bad / "page.jpg", b"<!DOCTYPE html><html><body>404</body></html>"), "HTML"),
        "missing": (bad / "missing.png", "not found"),
        "directory": (bad, "directory"),
        "bomb": (write(bad / "bomb.png", png_with_size(100_000, 100_000)), "max_pixels="),
        "bomb under pillow limit": (write(bad / "bomb2.png", png_with_size(12_000, 12_000)), "max_pixels="),
    }


def test_bad_corpus_raises_clear_errors(tmp_path: Path) -> None:
    for label, (path, reason) in _bad_corpus(tmp_path).items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no DecompressionBombWarning either
            with pytest.raises(ImageError) as info:
                open_image(path)
        err = info.value
        assert isinstance(err, ValueError)
        assert err.source == str(path), label
        assert path.name in str(err), label
        assert reason.lower() in err.reason.lower(), (label, err.reason)
        assert str(err) == f"{path}: {err.reason}"


def test_probe_size_errors_match(tmp_path: Path) -> None:
    for label, (path, reason) in _bad_corpus(tmp_path).items():
        if label.startswith("truncated"):
            continue  # header intact: probing succeeds, see test below
        with pytest.raises(ImageError) as info:
            probe_size(path)
        assert path.name in str(info.value) and reason.lower() in info.value.reason.lower(), label


def test_bad_bytes_and_file_objects() -> None:
    jpeg = encode(Image.fromarray(PICTURE), "JPEG")
    for src in (jpeg[:-40], io.BytesIO(jpeg[:-40])):
        with pytest.raises(ImageError, match="truncated"):
            open_image(src)
    with pytest.raises(ImageError, match=r"^<bytes: 0 B>: input is empty"):
        open_image(b"")
    with pytest.raises(ImageError, match=r"^<memoryview: 0 B>: input is empty"):
        probe_size(memoryview(b""))
    with pytest.raises(ImageError, match="empty"):
        open_image(io.BytesIO())
    with pytest.raises(ImageError, match=r"text file"):
        probe_size(b"just some words")
    with pytest.raises(ImageError, match="'rb'"):
        open_image(io.StringIO("abc"))
    with pytest.raises(ImageError, match="unsupported input type"):
        open_image(12345)  # type: ignore[arg-type]


def test_bomb_with_limit_disabled_still_refused_without_allocating() -> None:
    # 10^10 pixels is beyond Pillow's own hard limit, which is converted too.
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):
        open_image(png_with_size(100_000, 100_000), max_pixels=None)
    assert Image.MAX_IMAGE_PIXELS == 1024 * 1024 * 1024 // 4 // 3  # global untouched


def test_pixel_limit_on_small_real_image(tmp_path: Path) -> None:
    path = write(tmp_path / "small.png", png_bytes(Image.fromarray(PICTURE)))
    for src in (path, PICTURE, Image.fromarray(PICTURE), torch.from_numpy(PICTURE).permute(2, 0, 1)):
        with pytest.raises(ImageError, match=r"max_pixels=None"):
            open_image(src, max_pixels=W * H - 1)
        with pytest.raises(ImageError, match=r"over the limit of 34"):
            probe_size(src, max_pixels=W * H - 1)
        assert open_image(src, max_pixels=W * H).size == (W, H)
        assert probe_size(src, max_pixels=W * H) == (W, H)
    assert open_image(path, max_pixels=None).size == (W, H)
    assert DEFAULT_MAX_PIXELS == 128_000_000
    with pytest.raises(ValueError):
        open_image(path, max_pixels=0)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 5, 2), np.uint8),
        np.zeros((4, 5, 5), np.uint8),
        np.zeros((3, 4, 5), np.uint8),
        np.zeros((2, 4, 5, 3), np.uint8),
        np.zeros(5, np.uint8),
        np.zeros((), np.uint8),
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((4, 0), np.uint8),
        np.zeros((4, 5), np.int64),
        np.zeros((4, 5), np.int8),
        np.zeros((4, 5), np.uint32),
        np.zeros((4, 5), np.complex64),
        np.zeros((4, 5), object),
        np.full((4, 5), np.nan, np.float32),
    ],
    ids=lambda a: f"{a.shape}-{a.dtype}",
)
def test_bad_arrays(array: np.ndarray) -> None:
    with pytest.raises(ImageError) as info:
        open_image(array)
    assert info.value.source == f"<numpy array {array.shape} {array.dtype}>"
    if array.dtype.kind != "f":  # probing checks shape and dtype, not values
        with pytest.raises(ImageError):
            probe_size(array)


def test_bad_array_messages() -> None:
    with pytest.raises(ImageError, match=r"^<numpy array \(4, 5, 2\) uint8>: .*accepted") as info:
        open_image(np.zeros((4, 5, 2), np.uint8))
    assert info.value.source == "<numpy array (4, 5, 2) uint8>"
    with pytest.raises(ImageError, match=r"astype\(np.uint8\)"):
        open_image(np.zeros((4, 5), np.int64))
    with pytest.raises(ImageError, match=r"transpose\(1, 2, 0\)"):
        open_image(np.zeros((3, 8, 9), np.uint8))
    with pytest.raises(ImageError, match="dimensions 5x0"):
        open_image(np.zeros((0, 5), np.uint8))


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (lambda: torch.zeros(2, 3, 4, 5, dtype=torch.uint8), "batch.*list"),
        (lambda: torch.zeros(8, 9, 3, dtype=torch.uint8), r"permute\(2, 0, 1\)"),
        (lambda: torch.zeros(2, 4, 5), "shape"),
        (lambda: torch.zeros(5), "shape"),
        (lambda: torch.zeros(3, 4, 5, dtype=torch.int64), "dtype int64"),
        (lambda: torch.zeros(3, 0, 5), "dimensions"),
        (lambda: torch.full((3, 4, 5), float("nan")), "NaN"),
        (lambda: torch.zeros(3, 4, 5, device="meta"), "cannot read"),
    ],
)
def test_bad_tensors(tensor, match: str) -> None:
    t = tensor()
    with pytest.raises(ImageError, match=match) as info:
        open_image(t)
    assert info.value.source.startswith("<torch tensor (")


# --------------------------------------------------------------------------
# probe_size


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [("PNG", {}), ("JPEG", {}), ("GIF", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {}), ("PPM", {}), ("TIFF", {"compression": "tiff_lzw"})],
)
def test_probe_size_matches_decoded_size(tmp_path: Path, fmt: str, kw: dict) -> None:
    im = Image.fromarray(np.tile(PICTURE, (3, 5, 1)))  # 35 x 15
    path = write(tmp_path / f"x.{fmt.lower()}", encode(im, fmt, **kw))
    assert probe_size(path) == open_image(path).size == (35, 15)


def test_probe_size_reads_header_only(tmp_path: Path) -> None:
    jpeg = encode(Image.fromarray(np.tile(PICTURE, (40, 40, 1))), "JPEG", exif=exif_with(6))
    sos = jpeg.index(b"\xff\xda")
    (seg_len,) = struct.unpack(">H", jpeg[sos + 2 : sos + 4])
    header_only = jpeg[: sos + 2 + seg_len]  # cut right after the start-of-scan header
    path = write(tmp_path / "header_only.jpg", header_only)
    assert probe_size(path) == (40 * H, 40 * W)  # orientation 6 swaps
    with pytest.raises(ImageError, match="truncated"):
        open_image(path)


def test_probe_size_over_limit_without_decoding() -> None:
    header = png_with_size(12_000, 12_000)  # over our default, under Pillow's hard limit
    with pytest.raises(ImageError, match="12000x12000"):
        probe_size(header)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning is silenced
        assert probe_size(header, max_pixels=144_000_000) == (12_000, 12_000)
        assert probe_size(header, max_pixels=None) == (12_000, 12_000)
    with pytest.raises(ImageError, match="max_pixels="):
        probe_size(png_with_size(100_000, 100_000))


# --------------------------------------------------------------------------
# draft_size


def test_draft_size_jpeg_and_png(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1500, 0:2000]
    big = np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8)
    jpg = write(tmp_path / "big.jpg", encode(Image.fromarray(big), "JPEG", quality=70))
    im = open_image(jpg, draft_size=(250, 250))
    assert 250 <= im.width < 2000 and 250 <= im.height < 1500
    assert open_image(jpg).size == (2000, 1500)
    assert probe_size(jpg) == (2000, 1500)  # probing ignores drafting

    # orientation 6: the requested size is in upright axes
    rot = write(tmp_path / "rot.jpg", encode(Image.fromarray(big), "JPEG", quality=70, exif=exif_with(6)))
    im = open_image(rot, draft_size=(400, 250))
    assert im.width >= 400 and im.height >= 250 and im.height < 2000

    small = np.tile(PICTURE, (60, 60, 1))  # 420 x 300
    png = write(tmp_path / "x.png", png_bytes(Image.fromarray(small), compress_level=1))
    assert pixels(open_image(png, draft_size=(50, 50))).tolist() == small.tolist()
    with pytest.raises(ValueError):
        open_image(png, draft_size=(0, 10))


# --------------------------------------------------------------------------
# find_images


def test_find_images(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for rel in ["b.PNG", "a.jpg", "notes.txt", "sub/c.gif", "sub/deep/d.webp", "sub/z.tiff", ".hidden/e.jpg", "._f.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    found = find_images([root])
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a.jpg",
        "b.PNG",
        "sub/c.gif",
        "sub/deep/d.webp",
        "sub/z.tiff",
    ]
    assert all(isinstance(p, Path) for p in found)
    flat = find_images([str(root)], recursive=False)
    assert [p.name for p in flat] == ["a.jpg", "b.PNG"]
    explicit = find_images([root / "notes.txt", root / "sub"])
    assert [p.name for p in explicit] == ["notes.txt", "c.gif", "d.webp", "z.tiff"]
    assert [p.name for p in find_images([root / "a.jpg", root, root / "a.jpg"], recursive=False)] == ["a.jpg", "b.PNG"]
    with pytest.raises(ImageError, match="nope.jpg"):
        find_images([root, root / "nope.jpg"])
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def _sample_bytes(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (10, 20, 30)).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM"])
def test_find_images_sniffs_files_without_a_suffix(tmp_path: Path, fmt: str) -> None:
    (tmp_path / "photo").write_bytes(_sample_bytes(fmt))
    (tmp_path / "a.jpg").write_bytes(_sample_bytes("JPEG"))
    (tmp_path / "README").write_text("P5 is not an image here\n BM too")
    (tmp_path / "Makefile").write_bytes(b"BM" + b"\x00" * 30)
    (tmp_path / "photo.jpg_original").write_bytes(_sample_bytes("JPEG"))  # a backup: its suffix says what it is
    assert [p.name for p in find_images([tmp_path])] == ["a.jpg", "photo"]
    assert probe_size(tmp_path / "photo") == (5, 3)


def test_fifo_input_is_refused_not_waited_on(tmp_path: Path, deadline: None) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"pipe\.jpg: not a regular file \(a named pipe \(FIFO\)\)"):
        find_images([fifo])
    with pytest.raises(ImageError, match=r"not a regular file \(a named pipe"):
        open_image(fifo)  # would block forever waiting for a writer
    with pytest.raises(ImageError, match=r"not a regular file \(a named pipe"):
        probe_size(str(fifo))


def test_folder_lists_unusable_image_entries_so_they_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_sample_bytes("PNG"))
    os.mkfifo(tmp_path / "b.png")
    (tmp_path / "c.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(tmp_path / "pipe")  # no suffix: not sniffed (that would block), not listed
    assert [p.name for p in find_images([tmp_path])] == ["a.png", "b.png", "c.png"]
    files, bad = gather_images([tmp_path], check=True)
    assert [p.name for p in files] == ["a.png"]
    assert bad == {str(tmp_path / "b.png"): "not a regular file (a named pipe (FIFO)); vistok reads images only "
                                            "from regular files",
                   str(tmp_path / "c.png"): "file not found"}


def test_gather_images_never_raises_and_checks_headers(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(_sample_bytes("PNG"))
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    args = [tmp_path / "good.png", tmp_path / "missing.png", tmp_path, tmp_path / "good.png"]
    files, bad = gather_images(args)
    assert [p.name for p in files] == ["good.png", "empty.jpg", "text.png"]  # listed once, not checked
    assert bad == {str(tmp_path / "missing.png"): "no such file or directory"}
    files, bad = gather_images(args, check=True)
    assert [p.name for p in files] == ["good.png"]
    assert bad[str(tmp_path / "text.png")].startswith("this is a text file")
    assert bad[str(tmp_path / "empty.jpg")].startswith("file is empty")
    assert gather_images(tmp_path / "good.png", check=True) == ([tmp_path / "good.png"], {})


# --------------------------------------------------------------------------
# Misc: names, errors, resources, imports


def test_source_name() -> None:
    assert source_name("a/b.png") == "a/b.png"
    assert source_name(Path("a") / "b.png") == os.path.join("a", "b.png")
    assert source_name(b"x" * 1234) == "<bytes: 1234 B>"
    assert source_name(np.zeros((4, 5, 2), np.uint8)) == "<numpy array (4, 5, 2) uint8>"
    assert source_name(torch.zeros(3, 4, 5)) == "<torch tensor (3, 4, 5) float32>"
    assert source_name(Image.new("RGB", (3, 2))) == "<PIL image RGB 3x2>"
    assert source_name(io.BytesIO()) == "<file object: BytesIO>"
    assert source_name(object()) == "<object object>"


def test_image_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ImageError("x.png", "file is empty")))
    assert (err.source, err.reason, str(err)) == ("x.png", "file is empty", "x.png: file is empty")


def test_no_leaked_file_handles(tmp_path: Path) -> None:
    good = write(tmp_path / "g.png", png_bytes(Image.fromarray(PICTURE)))
    anim = _animated_gif(tmp_path)
    corpus = [p for p, _ in _bad_corpus(tmp_path).values()]
    fd_dir = "/proc/self/fd"
    before = len(os.listdir(fd_dir)) if os.path.isdir(fd_dir) else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            open_image(good)
            probe_size(good)
            open_image(anim, all_frames=True)
            probe_size(anim)
            for path in corpus:
                with pytest.raises(ImageError):
                    open_image(path)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    if before is not None:
        assert len(os.listdir(fd_dir)) == before


def test_torch_not_imported_by_module() -> None:
    code = "import sys, vistok.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
