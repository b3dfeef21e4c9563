"""InternVL2 / 2.5 / 3 counts against the real InternVLProcessor + GotOcr2ImageProcessor, built offline with
the -hf checkpoints' parameters (preprocessor_config.json: 448x448, min_patches 1, max_patches 12,
crop_to_patches false, ImageNet mean/std; processor_config.json: image_seq_length 256; tokenizer extra
special tokens <img>, </img>, <IMG_CONTEXT>; see transformers' models/internvl/convert_internvl_weights_to_hf.py).

References: the processor's size-only helper ``_get_num_multimodal_tokens`` (GotOcr2's
``get_number_of_image_patches`` -> ``get_optimal_tiled_canvas``) on 200 hypothesis sizes with varying
min/max tiles, the full processor end to end on 200 moderate hypothesis sizes, and end to end on fixed sizes
chosen at the tie-break thresholds (exact aspect ratios with areas just below / above half the tiles' area),
extreme aspect ratios and large images.
"""

import json
from importlib import resources

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, helper_total, image_of, tiny_tokenizer
from vistok.budget import count, resolve_model

transformers = pytest.importorskip("transformers")
from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas  # noqa: E402

MODEL = "OpenGVLab/InternVL2_5-8B-MPO-hf"
SPECIAL = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
           "video_token": "<video>"}

SIZES = (st.tuples(st.integers(1, 8000), st.integers(1, 8000)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
         | st.tuples(st.integers(1, 40), st.integers(1, 8000)) | st.tuples(st.integers(1, 8000), st.integers(1, 40)))


@st.composite
def exact_grid_sizes(draw):
    """Sizes whose aspect ratio is exactly a tile grid's, where the tie-break on area decides."""
    cols, rows = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    scale = draw(st.integers(1, 400))
    return cols * scale, rows * scale


# Ratio 1: 1x1 / 2x2 / 3x3 tie, 2x2 needs area > 401408, 3x3 > 903168; ratio 2: 4x2 needs > 802816;
# ratio 3: 6x2 needs > 1204224. Then tiny, extreme and large sizes.
FIXED = [(633, 633), (634, 634), (950, 950), (951, 951), (1266, 633), (1268, 634), (633, 1266), (634, 1268),
         (1899, 633), (1902, 634), (672, 448), (500, 400), (1, 1), (2, 1), (1, 2), (3, 1), (40, 13), (448, 448),
         (1, 3000), (3000, 1), (12, 5000), (640, 480), (1000, 700), (1920, 1080), (4032, 3024), (8000, 8000)]


def _tokenizer():
    tok = tiny_tokenizer(SPECIAL.values())
    for attr, token in SPECIAL.items():
        setattr(tok, attr, token)
        setattr(tok, attr + "_id", tok.convert_tokens_to_ids(token))
    return tok


@pytest.fixture(scope="module")
def processor():
    ip = transformers.GotOcr2ImageProcessor(size={"height": 448, "width": 448}, min_patches=1, max_patches=12,
                                            crop_to_patches=False, image_mean=[0.485, 0.456, 0.406],
                                            image_std=[0.229, 0.224, 0.225], resample=3)
    return transformers.InternVLProcessor(image_processor=ip, tokenizer=_tokenizer(),
                                          video_processor=transformers.InternVLVideoProcessor(), image_seq_length=256)


def helper(proc, width, height, **kwargs):
    """(placeholders, num_image_tokens) from the size-only helper (see processor_refs.helper_total)."""
    data = proc._get_num_multimodal_tokens(image_sizes=[(height, width)], **kwargs)
    return data["num_image_patches"][0] * proc.image_seq_length, data["num_image_tokens"][0]


def end_to_end(proc, width, height, **kwargs):
    """(<IMG_CONTEXT>, <img>, </img>) counts in input_ids for one real image."""
    ids = proc(images=image_of(width, height), text="describe <IMG_CONTEXT> this", return_tensors="np",
               **kwargs)["input_ids"]
    tok = proc.tokenizer
    return tuple(count_ids(ids, i) for i in (tok.context_image_token_id, tok.start_image_token_id,
                                             tok.end_image_token_id))


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(size=SIZES | exact_grid_sizes())
@example(size=(634, 634)).via("ratio tie, area just over 2x2")
def test_default_matches_processor_helper(processor, size):
    counted = count(size, model=MODEL)
    assert (counted.image_tokens, helper_total(counted)) == helper(processor, *size), size


@SETTINGS
@given(size=SIZES | exact_grid_sizes(), min_patches=st.integers(1, 4), max_patches=st.integers(1, 24))
@example(size=(600, 480), min_patches=2, max_patches=2).via("1x2 / 2x1 tie: candidate order decides")
@example(size=(500, 400), min_patches=2, max_patches=2).via("same tie, area too small for the later grid")
def test_tile_bounds_match_processor_helper(processor, size, min_patches, max_patches):
    """The "max tiles" knob (max_patches) and min_patches; the grid is GotOcr2's own choice too."""
    counted = count(size, model=MODEL, min_patches=min_patches, max_patches=max_patches)
    expected = helper(processor, *size, min_patches=min_patches, max_patches=max_patches)
    assert (counted.image_tokens, helper_total(counted)) == expected, (size, min_patches, max_patches)
    grid = get_optimal_tiled_canvas((size[1], size[0]), (448, 448), min_patches, max_patches)
    assert counted.breakdown["tile_grid"] == list(grid)


MODERATE = (st.tuples(st.integers(1, 1500), st.integers(1, 1500)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
            | st.tuples(st.integers(1, 20), st.integers(1, 2000)) | st.tuples(st.integers(1, 2000), st.integers(1, 20)))


@SETTINGS
@given(size=MODERATE | exact_grid_sizes().filter(lambda s: max(s) <= 2000))
def test_end_to_end_hypothesis_sizes(processor, size):
    """200 sizes through the full processor (sides up to 2000 px, to keep the run short)."""
    contexts, starts, ends = end_to_end(processor, *size)
    counted = count(size, model=MODEL)
    assert (starts, ends) == (1, 1)
    assert (counted.image_tokens, counted.total_positions) == (contexts, contexts + 2), size


def test_end_to_end_fixed_sizes(processor):
    for width, height in FIXED:
        contexts, starts, ends = end_to_end(processor, width, height)
        counted = count((width, height), model=MODEL)
        assert counted.image_tokens == contexts == helper(processor, width, height)[0], (width, height)
        assert (starts, ends) == (1, 1) and counted.total_positions == contexts + 2
        b = counted.breakdown
        assert b["num_patches"] == b["tiles"] + b["thumbnail"] and contexts == 256 * b["num_patches"]


@pytest.mark.parametrize("options", [{"max_patches": 6}, {"max_patches": 1}, {"min_patches": 2, "max_patches": 9},
                                     {"crop_to_patches": False}])
def test_end_to_end_options(processor, options):
    for width, height in [(1, 1), (634, 634), (1268, 634), (500, 400), (3000, 1), (1000, 700), (1920, 1080)]:
        contexts, _, _ = end_to_end(processor, width, height, **options)
        assert count((width, height), model=MODEL, **options).image_tokens == contexts, (options, width, height)


def test_processor_tiles_by_default(processor):
    """The -hf preprocessor_config.json says crop_to_patches false, but InternVLProcessor turns it on."""
    assert processor.image_processor.crop_to_patches is False
    assert end_to_end(processor, 1000, 700)[0] == 7 * 256  # 3x2 tiles + thumbnail
    assert count((1000, 700), model=MODEL).breakdown["tile_grid"] == [3, 2]


def test_known_values():
    c = count((1000, 700), model="internvl2.5-8b")
    assert c.image_tokens == 1792 and c.total_positions == 1794
    assert c.breakdown["resized"] == [1344, 896] and c.breakdown["thumbnail"] is True
    assert count((448, 448), model="internvl2-8b").image_tokens == 256  # one tile, no thumbnail
    assert count((500, 400), model="internvl3-8b").image_tokens == 13 * 256  # 4x3 is the closest ratio
    assert count((1000, 700), model="internvl2.5-4b", max_patches=1).image_tokens == 256
    assert count((1000, 700), model="internvl2.5-4b", use_thumbnail=False).image_tokens == 6 * 256


# -- the model table --------------------------------------------------------------------------------

TABLE = json.loads(resources.files("vistok.budget").joinpath("data/models-internvl.json").read_text())


@pytest.mark.parametrize("name", [n for n in TABLE if not n.startswith("_")])
def test_models_resolve_by_name_and_aliases(name):
    spec = TABLE[name]
    for alias in (name, name.upper(), *spec["aliases"]):
        entry = resolve_model(alias)
        assert entry.name == name and entry.family == spec["family"]
    assert resolve_model(name + "-awq").name == name  # prefix fallback
    assert count((640, 480), model=name).image_tokens == 13 * 256
    for bad in [(0, 10), (10, 0), (-1, 5), (10**7, 10), (10, 10**7)]:
        with pytest.raises(ValueError):
            count(bad, model=name)
