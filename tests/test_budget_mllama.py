"""Llama 3.2 Vision counts against the real MllamaImageProcessor / MllamaProcessor, built offline with the
checkpoints' parameters (preprocessor_config.json: size 560x560, max_image_tiles 4, bilinear, CLIP mean/std;
the text holds one <|image|> token).

References: the real image processor on 200 hypothesis sizes (num_tiles and aspect_ratio_ids, i.e. the tile
grid it picks), with the resized size checked against the module's own ``get_image_size_fit_to_canvas``; then
the full processor end to end on fixed sizes (tiny, exactly one tile, just over one tile, extreme aspect
ratios, large), where the <|image|> ids, the cross-attention mask's tiles and the padded pixel tiles are read.
"""

import json
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, image_of, tiny_tokenizer
from vistok.budget import count, resolve_model

transformers = pytest.importorskip("transformers")
mllama_ip = pytest.importorskip("transformers.models.mllama.image_processing_mllama")

SIZES = (st.tuples(st.integers(1, 3000), st.integers(1, 3000)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
         | st.tuples(st.integers(1, 40), st.integers(1, 3000)) | st.tuples(st.integers(1, 3000), st.integers(1, 40))
         | st.tuples(st.integers(100, 2300), st.integers(100, 2300))
         | st.tuples(st.integers(1, 8000), st.integers(1, 8000)).filter(lambda s: s[0] * s[1] <= 16_000_000))
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# One tile exactly, one pixel over, 2x1 / 1x2 / 2x2 canvases exactly and just over, tiny, extreme, large.
FIXED = [(1, 1), (2, 1), (40, 3), (560, 560), (561, 560), (560, 561), (1120, 560), (1121, 560), (560, 1120),
         (1120, 1120), (1121, 1121), (2240, 560), (560, 2240), (640, 480), (1000, 300), (1, 3000), (3000, 1),
         (4032, 3024), (8000, 2000)]
MODELS = ["llama-3.2-11b-vision-instruct", "meta-llama/Llama-3.2-90B-Vision-Instruct"]


@pytest.fixture(scope="module")
def processor():
    ip = transformers.MllamaImageProcessor(size={"height": 560, "width": 560}, max_image_tiles=4, resample=2,
                                           image_mean=[0.48145466, 0.4578275, 0.40821073],
                                           image_std=[0.26862954, 0.26130258, 0.27577711])
    return transformers.MllamaProcessor(image_processor=ip, tokenizer=tiny_tokenizer(["<|image|>"]))


@SETTINGS
@given(size=SIZES)
def test_tiles_match_image_processor(processor, size):
    width, height = size
    out = processor.image_processor(images=image_of(width, height), return_tensors="np")
    for model in MODELS:
        c = count(size, model=model)
        b = c.breakdown
        assert c.image_tokens == c.total_positions == 1
        assert b["tiles"] == out["num_tiles"][0][0]
        assert b["aspect_ratio_id"] == out["aspect_ratio_ids"][0][0]
        cols, rows = b["tile_grid"]
        assert mllama_ip.get_optimal_tiled_canvas(height, width, 4, 560) == (rows * 560, cols * 560)
        assert tuple(b["resized"][::-1]) == mllama_ip.get_image_size_fit_to_canvas(height, width, rows * 560,
                                                                                  cols * 560, 560)
        assert b["cross_attention_states"] == b["tiles"] * 1601
        assert b["cross_attention_states_padded"] == 4 * 1601


@pytest.mark.parametrize("size", FIXED)
def test_end_to_end(processor, size):
    out = processor(images=image_of(*size), text="<|image|>describe this", return_tensors="np")
    c = count(size, model="llama-3.2-11b-vision-instruct")
    b = c.breakdown
    assert c.image_tokens == count_ids(out["input_ids"], processor.image_token_id) == 1
    # the encoder gets max_image_tiles tiles (padded); the mask lets the text see the used ones
    assert out["pixel_values"].shape == (1, 1, 4, 3, 560, 560)
    assert int(out["aspect_ratio_mask"].sum()) == b["tiles"]
    assert int(out["cross_attention_mask"][0, -1, 0].sum()) == b["tiles"]
    side = 560 // 14
    assert b["cross_attention_states"] == b["tiles"] * (side * side + 1)
    assert b["cross_attention_states_padded"] == out["pixel_values"].shape[2] * (side * side + 1)


def test_worked_examples():
    b = count((1000, 300), model="llama-3.2-11b-vision-instruct").breakdown
    assert (b["tile_grid"], b["resized"], b["cross_attention_states"]) == ([2, 1], [1000, 300], 3202)
    b = count((4032, 3024), model="llama-3.2-11b-vision-instruct").breakdown  # 4:3 -> 2x2, fit to 1120x840
    assert (b["tile_grid"], b["resized"], b["tiles"]) == ([2, 2], [1120, 840], 4)
    b = count((100, 100), model="llama-3.2-11b-vision-instruct", max_image_tiles=1).breakdown
    assert (b["tiles"], b["cross_attention_states_padded"]) == (1, 1601)


def test_other_tile_limits(processor):
    for max_tiles in (1, 2, 6, 9):
        for size in [(300, 2000), (2000, 1200), (700, 600), (5, 5)]:
            out = processor.image_processor(images=image_of(*size), max_image_tiles=max_tiles, return_tensors="np")
            b = count(size, family="mllama", max_image_tiles=max_tiles).breakdown
            assert (b["tiles"], b["aspect_ratio_id"]) == (out["num_tiles"][0][0], out["aspect_ratio_ids"][0][0])


# -- the table ------------------------------------------------------------------------------------------

TABLE = json.loads(resources.files("vistok.budget").joinpath("data/models-mllama.json").read_text())
ENTRIES = {name: spec for name, spec in TABLE.items() if not name.startswith("_")}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_table_names_resolve(name):
    spec = ENTRIES[name]
    for alias in (name, name.upper(), *spec["aliases"]):
        assert resolve_model(alias).name == name
    assert count((640, 480), model=name).family == "mllama"
    for bad in [(0, 10), (10, -1), (10**7, 10)]:
        with pytest.raises(ValueError):
            count(bad, model=name)
