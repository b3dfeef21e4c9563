"""Fast counting: the header parser against Pillow on many generated files, and counting that streams."""

import io
import struct
import zlib

import pytest
from PIL import Image, ImageOps, features

from vistok._headers import header_size
from vistok.images import ImageError, probe_size

SIZES = [(37, 23), (1, 300), (300, 1), (640, 480)]
XMP_NS = b"http://ns.adobe.com/xap/1.0/\x00"


def _exif(orientation=None, big_endian=False, description=None):
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if description is not None:
        exif[0x010E] = description
    data = exif.tobytes()
    if big_endian:  # rebuild the same IFD0 in Motorola order
        entries = [(0x0112, orientation)] if orientation is not None else []
        tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", len(entries))
        tiff += b"".join(struct.pack(">HHIHH", tag, 3, 1, value, 0) for tag, value in entries) + b"\x00" * 4
        data = b"Exif\x00\x00" + tiff
    return data


def _encode(im, fmt, **params):
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def _segment(marker, body):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def _after_soi(jpeg, *segments):
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_chunks(png):
    pos, chunks = 8, []
    while pos < len(png):
        length = struct.unpack(">I", png[pos:pos + 4])[0]
        chunks.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _png_from(chunks):
    return b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(k, d) for k, d in chunks)


def _cases():
    """(name, encoded bytes, parsed directly?) for many formats, modes and orientations."""
    cases = []
    for w, h in SIZES:
        rgb = Image.new("RGB", (w, h), (200, 30, 90))
        tag = f"{w}x{h}"
        jpeg = _encode(rgb, "JPEG")
        cases += [(f"jpeg {tag}", jpeg, True),
                  (f"progressive {tag}", _encode(rgb, "JPEG", progressive=True), True),
                  (f"cmyk {tag}", _encode(Image.new("CMYK", (w, h), (0, 50, 100, 20)), "JPEG"), True),
                  (f"grey {tag}", _encode(Image.new("L", (w, h), 99), "JPEG"), True)]
        for o in range(0, 10):
            cases.append((f"jpeg exif {o} {tag}", _encode(rgb, "JPEG", exif=_exif(o)), True))
            cases.append((f"webp exif {o} {tag}", _encode(rgb, "WEBP", exif=_exif(o)), True))
            cases.append((f"png exif {o} {tag}", _encode(rgb, "PNG", exif=_exif(o)), True))
        for o in (1, 6, 8):
            cases.append((f"jpeg big-endian exif {o} {tag}", _encode(rgb, "JPEG", exif=_exif(o, big_endian=True)), True))
            xmp = _segment(0xE1, XMP_NS + f'<x:xmpmeta><rdf:Description tiff:Orientation="{o}"/></x:xmpmeta>'.encode())
            cases.append((f"jpeg xmp {o} {tag}", _after_soi(jpeg, xmp), True))
            cases.append((f"jpeg exif without orientation + xmp {o} {tag}",
                          _after_soi(_encode(rgb, "JPEG", exif=_exif(description="x")), xmp), True))
            cases.append((f"jpeg exif 1 + xmp {o} {tag}", _after_soi(_encode(rgb, "JPEG", exif=_exif(1)), xmp), True))
            # a 40 KB comment before the EXIF block: the parser reads past its first 16 KB
            cases.append((f"jpeg far exif {o} {tag}",
                          _after_soi(_encode(rgb, "JPEG", exif=_exif(o)), _segment(0xFE, b"c" * 40000)), True))
            cases.append((f"jpeg big exif {o} {tag}", _encode(rgb, "JPEG", exif=_exif(o, description="d" * 50000)), True))
            cases.append((f"jpeg two exif blocks {o} {tag}",
                          _after_soi(_encode(rgb, "JPEG", exif=_exif(o)), _segment(0xE1, _exif(3))), False))
            cases.append((f"webp lossless exif {o} {tag}", _encode(rgb, "WEBP", lossless=True, exif=_exif(o)), True))
            cases.append((f"tiff exif {o} {tag}", _encode(rgb, "TIFF", exif=_exif(o)), False))
            png = _encode(rgb, "PNG", exif=_exif(o))
            chunks = _png_chunks(png)
            moved = [c for c in chunks if c[0] != b"eXIf"]
            moved.insert(-1, next(c for c in chunks if c[0] == b"eXIf"))
            cases.append((f"png trailing exif {o} {tag}", _png_from(moved), False))
            raw = "Raw profile type exif"
            info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
            info.add_text(raw, f"\nexif\n{len(_exif(o)[6:])}\n{_exif(o)[6:].hex()}")
            cases.append((f"png raw profile {o} {tag}", _encode(rgb, "PNG", pnginfo=info), False))
        cases += [
            (f"png rgba {tag}", _encode(Image.new("RGBA", (w, h), (1, 2, 3, 4)), "PNG"), True),
            (f"png 16-bit {tag}", _encode(Image.new("I;16", (w, h), 4000), "PNG"), True),
            (f"png palette {tag}", _encode(rgb.convert("P"), "PNG"), True),
            (f"png grey {tag}", _encode(Image.new("L", (w, h), 7), "PNG"), True),
            (f"png 1-bit {tag}", _encode(Image.new("1", (w, h), 1), "PNG"), True),
            (f"apng {tag}", _encode(rgb, "PNG", save_all=True, append_images=[Image.new("RGB", (w, h))]), True),
            (f"gif {tag}", _encode(rgb.convert("P"), "GIF"), True),
            (f"gif comment {tag}", _encode(rgb.convert("P"), "GIF", comment=b"hello"), True),
            (f"animated gif {tag}", _encode(rgb.convert("P"), "GIF", save_all=True,
                                            append_images=[Image.new("P", (w, h), 3)], loop=0), True),
            (f"webp {tag}", _encode(rgb, "WEBP"), True),
            (f"webp lossless {tag}", _encode(rgb, "WEBP", lossless=True), True),
            (f"webp alpha {tag}", _encode(Image.new("RGBA", (w, h), (1, 2, 3, 100)), "WEBP"), True),
            (f"webp animated {tag}", _encode(rgb, "WEBP", save_all=True, append_images=[Image.new("RGB", (w, h))]),
             False),
            (f"bmp 24 {tag}", _encode(rgb, "BMP"), True),
            (f"bmp 32 {tag}", _encode(Image.new("RGBA", (w, h), (1, 2, 3, 4)), "BMP"), None),
            (f"bmp 8 {tag}", _encode(rgb.convert("P"), "BMP"), False),
            (f"tiff {tag}", _encode(rgb, "TIFF"), False),
            (f"ppm {tag}", _encode(rgb, "PPM"), False),
        ]
        bmp = bytearray(_encode(rgb, "BMP"))
        bmp[22:26] = struct.pack("<i", -h)  # rows stored top-down
        cases.append((f"bmp top-down {tag}", bytes(bmp), True))
        # a GIF whose first frame reaches past its logical screen: Pillow enlarges the size
        gif = bytearray(_encode(rgb.convert("P"), "GIF"))
        gif[6:10] = struct.pack("<HH", max(1, w // 2), max(1, h // 2))
        cases.append((f"gif frame past screen {tag}", bytes(gif), True))
    return cases


CASES = _cases()


def _pillow_size(path):
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).size


@pytest.mark.parametrize(("name", "data", "direct"), CASES, ids=[c[0] for c in CASES])
def test_header_parser_matches_pillow(tmp_path, name, data, direct):
    path = tmp_path / "image"
    path.write_bytes(data)
    expected = _pillow_size(path)
    parsed = header_size(path)
    if direct is not None:
        assert (parsed is not None) == direct, name  # the fast path is taken where it should be
    if parsed is not None:
        assert parsed == expected, name
    assert header_size(data) == parsed
    assert probe_size(path) == expected == probe_size(data) == probe_size(str(path))


def test_broken_pngs_fall_back_to_pillow(tmp_path):
    png = _encode(Image.new("RGB", (30, 20)), "PNG")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # the IHDR CRC
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(bad_crc))
    assert header_size(path) is None
    with pytest.raises(ImageError, match="bad.png"):
        probe_size(path)
    chunks = _png_chunks(png)
    odd_name = _png_from([chunks[0], (b"ab!d", b"xyz"), *chunks[1:]])  # a valid CRC, a name Pillow refuses
    assert header_size(odd_name) is None
    with pytest.raises(ImageError):
        probe_size(odd_name)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP"])
def test_truncated_headers_fall_back_or_fail_clearly(tmp_path, fmt):
    data = _encode(Image.new("RGB", (64, 48), (9, 9, 9)), fmt, **({"exif": _exif(6)} if fmt == "JPEG" else {}))
    for cut in (1, 5, 12, 20, 40, 100):
        path = tmp_path / f"cut{cut}.{fmt.lower()}"
        path.write_bytes(data[:cut])
        parsed = header_size(path)
        try:
            expected = probe_size(path)
        except ImageError as err:
            assert parsed is None, (fmt, cut)
            assert str(path) in str(err)
        else:  # the header was complete: the size is the whole file's (pixel data is never read)
            assert parsed in (None, expected), (fmt, cut)
            assert expected == probe_size(data)


def test_not_images_and_odd_paths_go_to_pillow(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    assert header_size(tmp_path / "text.jpg") is None
    assert header_size(tmp_path) is None  # a folder
    assert header_size(tmp_path / "missing.jpg") is None
    assert header_size(b"") is None
    with pytest.raises(ImageError, match="text file"):
        probe_size(tmp_path / "text.jpg")
    with pytest.raises(ImageError, match="not found"):
        probe_size(tmp_path / "missing.jpg")


def test_twelve_bit_and_odd_jpegs_are_left_to_pillow():
    jpeg = bytearray(_encode(Image.new("RGB", (30, 20)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 4] = 12  # sample precision
    assert header_size(bytes(jpeg)) is None
    with pytest.raises(ImageError):
        probe_size(bytes(jpeg))


def test_decompression_bomb_limits_still_apply(tmp_path):
    gif = bytearray(_encode(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", 60000, 60000)  # 3.6 G pixels in the header
    path = tmp_path / "bomb.gif"
    path.write_bytes(bytes(gif))
    with pytest.raises(ImageError, match="bomb.gif.*pixels"):
        probe_size(path)
    assert features.check("webp")


# -- counting that streams ----------------------------------------------------------------------------

MODELS = ["qwen2-vl-7b", "llava-1.5-7b", "gpt-4o"]


def _tree(root):
    """A small folder tree: images with and without suffixes, a sub-folder, hidden and broken files."""
    shapes = [(64, 48), (48, 64), (300, 20), (640, 480), (64, 48)]
    (root / "sub").mkdir()
    (root / ".hidden").mkdir()
    for i, (w, h) in enumerate(shapes):
        (root / f"img{i}.jpg").write_bytes(_encode(Image.new("RGB", (w, h)), "JPEG", exif=_exif(6 if i == 1 else 1)))
    (root / "sub" / "deep.png").write_bytes(_encode(Image.new("RGB", (33, 77)), "PNG"))
    (root / "sub" / "nosuffix").write_bytes(_encode(Image.new("RGB", (90, 10)), "GIF"))
    (root / ".hidden" / "skip.jpg").write_bytes(_encode(Image.new("RGB", (5, 5)), "JPEG"))
    (root / ".skip.jpg").write_bytes(_encode(Image.new("RGB", (5, 5)), "JPEG"))
    (root / "notes.txt").write_text("not an image")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")


def test_stream_totals_match_per_image_counts(tmp_path):
    import numpy as np

    from vistok.budget import cost, count
    from vistok.budget.report import count_stream
    from vistok.images import find_images

    _tree(tmp_path)
    files = find_images([tmp_path])
    report = count_stream([tmp_path], MODELS, keep=2)
    good = [f for f in files if f.name != "broken.jpg"]
    assert report.images == len(good) == 7
    assert list(report.errors) == [str(tmp_path / "broken.jpg")]
    assert list(report.counts) == [str(f) for f in good[:2]]  # the first two kept in full, in find_images order
    for row, model in zip(report.summary(), MODELS):
        counts = [count(f, model=model) for f in good]
        tokens = [c.image_tokens for c in counts]
        assert row["model"] == count((1, 1), model=model).model
        assert row["total_tokens"] == sum(tokens) and row["max"] == max(tokens)
        assert row["p50"] == pytest.approx(np.percentile(tokens, 50)) and row["p95"] == pytest.approx(np.percentile(tokens, 95))
        expected_kv = None if model == "gpt-4o" else sum(cost(c).kv_cache_bytes for c in counts)
        assert row["total_kv_bytes"] == expected_kv
        assert report.tokens(row["model"]).tolist() == sorted(tokens)


def test_stream_consumes_a_generator_lazily():
    from vistok.budget.report import count_stream

    counted = []

    def sizes():
        for i in range(200):
            assert len(counted) == i  # item i is asked for only once items 0..i-1 are counted
            yield (100 + i % 7, 80)
        yield (0, 5)  # a bad size is an error, not a count
        yield "/no/such/file.jpg"

    report = count_stream(sizes(), ["llava-1.5-7b"], on_file=counted.append)
    assert report.images == 200 and report.summary()[0]["total_tokens"] == 200 * 576
    assert report.errors == {"(0, 5)": "image width must be positive, got 0", "/no/such/file.jpg": "no such file or directory"}
    assert report.counts == {}  # keep=0: nothing per image


def test_stream_memory_does_not_grow_with_the_images():
    import tracemalloc

    from vistok.budget.report import count_stream

    def peak(n):
        tracemalloc.start()
        count_stream(((100 + i % 50, 80 + i % 30) for i in range(n)), ["qwen2-vl-7b"])
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    small, large = peak(3_000), peak(30_000)
    assert large < small * 1.5 + 100_000, (small, large)


def test_walk_matches_find_images_and_streams_large_folders(tmp_path):
    from vistok.budget.report import iter_image_files
    from vistok.images import find_images

    _tree(tmp_path)
    assert list(iter_image_files(tmp_path)) == [str(p) for p in find_images([tmp_path])]
    assert list(iter_image_files(tmp_path, recursive=False)) == [str(p) for p in find_images([tmp_path], recursive=False)]
    big = tmp_path / "big"
    big.mkdir()
    for i in range(4200):  # more entries than are sorted in memory: same files, listing order
        (big / f"{i:05d}.jpg").touch()
    assert sorted(iter_image_files(big)) == sorted(str(p) for p in find_images([big]))


def test_stream_refuses_unknown_models_and_bad_options_before_reading():
    from vistok.budget.report import count_stream

    def never():
        raise AssertionError("read before the models were checked")
        yield

    with pytest.raises(KeyError, match="paligemma-672"):
        count_stream(never(), ["paligemma-672"])
    with pytest.raises(TypeError, match="max_tiles"):
        count_stream(never(), ["llava-1.5-7b"], options={"max_tiles": 3})
    with pytest.raises(ValueError, match="dtype"):
        count_stream(never(), ["llava-1.5-7b"], dtype="float13")


def test_cli_count_streams_the_folder(tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    import vistok.images
    from vistok.budget import count
    from vistok.cli import app

    jpeg = _encode(Image.new("RGB", (640, 480)), "JPEG")
    for i in range(60):
        (tmp_path / f"{i:02d}.jpg").write_bytes(jpeg)

    def listing(*args, **kwargs):
        raise AssertionError("the count command must not list the folder into memory")

    monkeypatch.setattr(vistok.images, "find_images", listing)
    result = CliRunner().invoke(app, ["count", str(tmp_path), "-m", "qwen2-vl-7b", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] is None  # over 50 images: the summary only
    assert data["summary"][0]["images"] == 60
    assert data["summary"][0]["total_tokens"] == 60 * count((640, 480), model="qwen2-vl-7b").image_tokens


def test_counting_reads_headers_so_large_scans_are_counted(tmp_path):
    """Only the header is read, so the 128-MP decoding guard does not stop a 12000x12000 scan being counted."""
    from vistok import count
    from vistok.budget.report import count_stream

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 12000, 12000, 8, 2, 0, 0, 0)
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))
    assert count(path, model="llava-1.5-7b").image_size == (12000, 12000)
    assert count(str(path), model="qwen2-vl-7b").image_tokens == 16384  # max_pixels 12,845,056 -> 3584x3584
    report = count_stream([tmp_path], ["qwen2-vl-7b"], keep=1)
    assert report.errors == {} and report.images == 1
    with pytest.raises(ImageError, match=r"scan\.png: image is 12000x12000 = 144,000,000 pixels"):
        probe_size(path)  # decoding paths keep the guard
