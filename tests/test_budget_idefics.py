"""Idefics2, Idefics3 and SmolVLM counts against the real processors, built offline with the checkpoints'
parameters:

- idefics2-8b: Idefics2ImageProcessor (do_image_splitting true, shortest_edge 378, longest_edge 980,
  bilinear), Idefics2Processor image_seq_len 64;
- Idefics3-8B-Llama3: Idefics3ImageProcessor (longest_edge 1456, max_image_size 364, splitting on, Lanczos),
  Idefics3Processor image_seq_len 169;
- SmolVLM-Instruct: the Idefics3 classes with longest_edge 1536, max_image_size 384, image_seq_len 81;
- SmolVLM2-256M/500M-Video-Instruct: SmolVLMImageProcessor (longest_edge 2048, max_image_size 512),
  SmolVLMProcessor image_seq_len 64; SmolVLM2-2.2B-Instruct: 1536 / 384 / 81.

References: the size-only helpers on 200 hypothesis sizes (Idefics3 / SmolVLM ``get_number_of_image_patches``
for rows and columns, Idefics3Processor ``_get_num_multimodal_tokens`` for its reported total;
Idefics2's module-level ``get_resize_output_image_size`` for the resized size), and the full processors end
to end on fixed sizes (tiny, extreme aspect ratios, large), counting <image>, <fake_token_around_image>,
<global-img>, <row_r_col_c> and newline ids in input_ids. The tokenizer reads "\\n\\n" as one token, as
Llama 3's and SmolLM2's do.

The helper ``get_number_of_image_patches`` rounds the short side from the size *before*
``resize_for_vision_encoder``, so it disagrees with the real processor when longest_edge is not a multiple of
max_image_size (e.g. longest_edge 1000, max 364, a 1000x700 image: helper 2x3 tiles, processor 3x3). vistok
follows the processor; such options are checked end to end only.
"""

import json
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, helper_total, image_of, tiny_tokenizer
from vistok.budget import count, resolve_model

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SIZES = (st.tuples(st.integers(1, 8000), st.integers(1, 8000)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
         | st.tuples(st.integers(1, 40), st.integers(1, 8000)) | st.tuples(st.integers(1, 8000), st.integers(1, 40))
         | st.tuples(st.integers(300, 2500), st.integers(300, 2500)))
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ROW_COL = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
SPECIAL = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", "<video>", *ROW_COL]

# (name, processor kind, longest_edge, max_image_size, image_seq_len): the checkpoints' configs
IDEFICS3_LIKE = [
    ("idefics3-8b-llama3", "idefics3", 1456, 364, 169),
    ("smolvlm-instruct", "idefics3", 1536, 384, 81),
    ("smolvlm-500m-instruct", "idefics3", 2048, 512, 64),
    ("smolvlm2-2.2b-instruct", "smolvlm", 1536, 384, 81),
    ("smolvlm2-500m-video-instruct", "smolvlm", 2048, 512, 64),
]
# Sizes for the (slow, ~0.1-1 s) end-to-end runs: tiny, one tile, extreme, wide, tall, large.
FIXED = {
    "idefics3-8b-llama3": [(1, 1), (17, 40), (364, 364), (640, 480), (480, 640), (1000, 300), (1, 3000),
                           (3000, 1), (2000, 1500), (8000, 2000)],
    "smolvlm-instruct": [(1, 1), (700, 500), (3000, 20), (4032, 3024)],
    "smolvlm-500m-instruct": [(2, 2), (1024, 700)],
    "smolvlm2-2.2b-instruct": [(30, 10), (640, 480), (1500, 4000)],
    "smolvlm2-500m-video-instruct": [(1, 1), (640, 480), (512, 512), (2, 3000), (5000, 1000), (4032, 3024)],
}


def _tokenizer(merge_double_newline=True):
    """A tiny tokenizer that keeps newlines ("\\n\\n" as one token, as Llama 3 / SmolLM2, or as two)."""
    from tokenizers import Regex, pre_tokenizers

    tok = tiny_tokenizer(SPECIAL)
    newlines = r"\n\n|\n" if merge_double_newline else r"\n"
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(newlines), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
    ])
    return tok


def _build(kind, longest_edge, max_image_size, image_seq_len, tok=None, **image_kwargs):
    kwargs = dict(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": max_image_size},
                  do_image_splitting=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=1)
    kwargs.update(image_kwargs)
    tok = tok or _tokenizer()
    if kind == "idefics3":
        ip = transformers.Idefics3ImageProcessor(**kwargs)
        return transformers.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=image_seq_len)
    from transformers.models.smolvlm import processing_smolvlm

    if processing_smolvlm.num2words is None:  # only needed for video prompts; not a vistok dependency
        processing_smolvlm.num2words = str
    ip = transformers.SmolVLMImageProcessor(**kwargs)
    return transformers.SmolVLMProcessor(image_processor=ip, tokenizer=tok, image_seq_len=image_seq_len,
                                         video_processor=transformers.SmolVLMVideoProcessor())


@pytest.fixture(scope="module")
def processors():
    return {name: _build(kind, le, mx, seq) for name, kind, le, mx, seq in IDEFICS3_LIKE}


def _end_to_end(proc, width, height, **kwargs):
    """Counts of each kind of image id in input_ids for one real image (text: "describe <image> this")."""
    ids = proc(images=image_of(width, height), text="describe <image> this", return_tensors="np",
               **kwargs)["input_ids"][0]
    tok = proc.tokenizer
    n = {name: count_ids(ids, tok.convert_tokens_to_ids(t)) for name, t in [
        ("image", "<image>"), ("fake", "<fake_token_around_image>"), ("global", "<global-img>"),
        ("nl", "\n"), ("nl2", "\n\n")]}
    n["row_col"] = sum(count_ids(ids, tok.convert_tokens_to_ids(t)) for t in ROW_COL)
    n["total"] = len(ids) - 2
    return n


def _check(c, n):
    b = c.breakdown
    assert c.image_tokens == n["image"]
    assert c.total_positions == n["total"]
    assert b["row_col_tokens"] == n["row_col"] == b["tiles"]
    assert b["wrapper_tokens"] == n["fake"] + n["global"] + n["row_col"]
    assert b["newline_tokens"] == n["nl"] + n["nl2"]


# -- Idefics3 / SmolVLM ---------------------------------------------------------------------------------

@SETTINGS
@given(size=SIZES)
def test_idefics3_like_match_helpers(processors, size):
    width, height = size
    for name, _, _, _, seq in IDEFICS3_LIKE:
        proc = processors[name]
        patches, rows, cols = proc.image_processor.get_number_of_image_patches(height, width, {})
        c = count(size, model=name)
        assert c.breakdown["tile_grid"] == [cols, rows]
        assert c.image_tokens == max(patches, 1) * seq
        if hasattr(proc, "_get_num_multimodal_tokens"):  # Idefics3Processor
            assert helper_total(c) == proc._get_num_multimodal_tokens(image_sizes=[(height, width)])[
                "num_image_tokens"][0]


@SETTINGS
@given(size=SIZES)
def test_idefics3_unmerged_newlines_match_helper(size):
    proc = _unmerged_processor()
    expected = proc._get_num_multimodal_tokens(image_sizes=[size[::-1]])["num_image_tokens"][0]
    assert helper_total(count(size, model="idefics3-8b-llama3", merged_double_newline=False)) == expected


_UNMERGED = []


def _unmerged_processor():
    if not _UNMERGED:
        _UNMERGED.append(_build("idefics3", 1456, 364, 169, tok=_tokenizer(merge_double_newline=False)))
    return _UNMERGED[0]


@pytest.mark.parametrize("name,size", [(name, size) for name, sizes in FIXED.items() for size in sizes])
def test_idefics3_like_end_to_end(processors, name, size):
    _check(count(size, model=name), _end_to_end(processors[name], *size))


@pytest.mark.parametrize("options,size", [
    ({"longest_edge": 1000}, (1000, 700)),  # not a multiple of 364: the helper says 2x3, the processor 3x3
    ({"longest_edge": 1000}, (333, 1000)),
    ({"do_resize": False}, (800, 300)),
    ({"do_resize": False}, (100, 90)),
    ({"do_image_splitting": False}, (1600, 900)),
    ({"do_image_splitting": False}, (5, 5)),
])
def test_idefics3_options_end_to_end(options, size):
    image_kwargs = {"size": {"longest_edge": options["longest_edge"]}} if "longest_edge" in options else {}
    image_kwargs.update({k: v for k, v in options.items() if k != "longest_edge"})
    proc = _build("idefics3", 1456, 364, 169, **image_kwargs)
    _check(count(size, model="idefics3-8b-llama3", **options), _end_to_end(proc, *size))


def test_idefics3_merged_flag_end_to_end():
    proc = _build("idefics3", 1456, 364, 169, tok=_tokenizer(merge_double_newline=False))
    n = _end_to_end(proc, 640, 480)
    c = count((640, 480), model="idefics3-8b-llama3", merged_double_newline=False)
    assert c.total_positions == n["total"] and c.breakdown["newline_tokens"] == n["nl"] == 4  # 3 rows + 1


def test_idefics3_worked_examples():
    # 640x480 -> 1456x1092 -> 4 cols x 3 rows of 364 px, + global: 13 * 169 = 2197 <image>
    c = count((640, 480), model="idefics3-8b-llama3")
    assert (c.breakdown["tile_grid"], c.breakdown["resized"], c.image_tokens) == ([4, 3], [1456, 1092], 2197)
    # 12 fake + 12 row/col + 3 newline tokens (the last "\n\n" as one) + fake, <global-img>, fake
    assert c.total_positions == 2197 + 12 + 12 + 3 + 3
    assert count((300, 300), model="smolvlm2-500m").image_tokens == 17 * 64  # upscaled to 2048: 4x4 + global


# -- Idefics2 -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def idefics2():
    ip = transformers.Idefics2ImageProcessor(do_image_splitting=True, size={"shortest_edge": 378,
                                             "longest_edge": 980}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                             resample=2)
    tok = tiny_tokenizer(["<fake_token_around_image>", "<image>"])
    return transformers.Idefics2Processor(image_processor=ip, tokenizer=tok, image_seq_len=64)


@SETTINGS
@given(size=SIZES)
def test_idefics2_resize_matches_helper(size):
    from transformers.image_utils import SizeDict
    from transformers.models.idefics2.image_processing_idefics2 import get_resize_output_image_size

    width, height = size
    shape_only = torch.zeros(1, 1, 1, dtype=torch.uint8).expand(3, height, width)
    expected = get_resize_output_image_size(shape_only, SizeDict(shortest_edge=378, longest_edge=980))
    c = count(size, model="idefics2-8b", do_image_splitting=False)
    assert tuple(c.breakdown["resized"][::-1]) == tuple(expected)
    assert (c.image_tokens, c.total_positions) == (64, 66)
    if min(size) >= 2:
        c = count(size, model="idefics2-8b")  # the checkpoint splits: 4 quarters + the image
        assert (c.image_tokens, c.total_positions, c.breakdown["views"]) == (320, 326, 5)
    else:
        with pytest.raises(ValueError):
            count(size, model="idefics2-8b")


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("size", [(2, 2), (3, 40), (40, 3), (378, 378), (640, 480), (1000, 300), (2, 3000),
                                  (3000, 2), (4032, 3024), (8000, 2000)])
def test_idefics2_end_to_end(idefics2, size, split):
    idefics2.image_processor.do_image_splitting = split  # the processor reads it from the image processor
    try:
        out = idefics2(images=image_of(*size), text="describe <image> this", return_tensors="np")
    finally:
        idefics2.image_processor.do_image_splitting = True
    ids = out["input_ids"][0]
    c = count(size, model="idefics2-8b", do_image_splitting=split)
    tok = idefics2.tokenizer
    assert c.image_tokens == count_ids(ids, tok.convert_tokens_to_ids("<image>"))
    assert c.breakdown["wrapper_tokens"] == count_ids(ids, tok.convert_tokens_to_ids("<fake_token_around_image>"))
    assert c.total_positions == len(ids) - 2
    assert out["pixel_values"].shape[1] == c.breakdown["views"]
    if not split:
        assert tuple(out["pixel_values"].shape[-2:]) == tuple(c.breakdown["resized"][::-1])


def test_idefics2_splitting_needs_two_pixels(idefics2):
    for size in [(1, 500), (500, 1), (1, 1)]:
        with pytest.raises((ValueError, IndexError, RuntimeError, ZeroDivisionError)):  # the processor cuts 1-px sides into empty quarters and fails
            idefics2(images=image_of(*size), text="<image>", return_tensors="np")
        with pytest.raises(ValueError, match="2 px"):
            count(size, model="idefics2-8b")
        assert count(size, model="idefics2-8b", do_image_splitting=False).image_tokens == 64


# -- the table ------------------------------------------------------------------------------------------

TABLE = json.loads(resources.files("vistok.budget").joinpath("data/models-idefics.json").read_text())
ENTRIES = {name: spec for name, spec in TABLE.items() if not name.startswith("_")}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_table_names_resolve(name):
    spec = ENTRIES[name]
    for alias in (name, name.upper(), *spec["aliases"]):
        assert resolve_model(alias).name == name
    assert count((640, 480), model=name).family == spec["family"]
    for bad in [(0, 10), (10, -1), (10**7, 10)]:
        with pytest.raises(ValueError):
            count(bad, model=name)
