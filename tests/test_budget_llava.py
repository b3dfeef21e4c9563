"""LLaVA-family counts (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision) against the real transformers processors,
built offline with each checkpoint's parameters.

Two references, as the runtime budget allows: the processor's own size-only helper
(``_get_num_multimodal_tokens``, the same method the processor uses to size the placeholder run) on 200
hypothesis sizes per family, and the full processor end-to-end (real image in, placeholder ids counted in
``input_ids``) on a fixed list of sizes that includes tiny, extreme-aspect and very large images. The fixed
sizes also check that helper and end-to-end agree, and that nothing but placeholders is added (LLaVA
processors add no wrapper tokens, so ``total_positions == image_tokens``).
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, image_of, tiny_tokenizer
from vistok.budget import count, list_models, resolve_model
from vistok.budget.models import model_table

transformers = pytest.importorskip("transformers")

NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]

SIZES = (
    st.tuples(st.integers(1, 8000), st.integers(1, 8000))
    | st.tuples(st.integers(1, 40), st.integers(1, 40))
    | st.tuples(st.integers(1, 40), st.integers(1, 8000))
    | st.tuples(st.integers(1, 8000), st.integers(1, 40))
    | st.tuples(st.integers(300, 2400), st.integers(300, 2400))
)
# End-to-end sizes: tiny, extreme aspect, pinpoint edges, odd sizes, very large.
FIXED = [
    (1, 1), (2, 3), (7, 40), (40, 1), (1, 3000), (3000, 1), (13, 7999), (7999, 13), (336, 336), (337, 335),
    (384, 384), (640, 480), (480, 640), (672, 336), (1008, 336), (1000, 333), (1023, 769), (1920, 1080),
    (1080, 1920), (2304, 2304), (2305, 767), (4000, 3000), (800, 6000), (8000, 4500), (8000, 8000),
]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXT = "describe <image> this"


def _helper(proc, size):
    width, height = size
    return proc._get_num_multimodal_tokens(image_sizes=[(height, width)])["num_image_tokens"][0]


def _end_to_end(proc, image_id, size):
    """(placeholder ids, positions the image added to input_ids) for one image of ``size``."""
    with_image = proc(images=image_of(*size), text=TEXT, return_tensors="np")["input_ids"]
    text_only = proc.tokenizer(TEXT.replace("<image>", ""), return_tensors="np")["input_ids"]
    return count_ids(with_image, image_id), with_image.shape[-1] - text_only.shape[-1]


# ---------------------------------------------------------------------------------------------- LLaVA-1.5

@pytest.fixture(scope="module")
def llava_processor():
    ip = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                         resample=3)
    tok = tiny_tokenizer(["<image>"])
    proc = transformers.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       image_token="<image>")
    return proc, tok.convert_tokens_to_ids("<image>")


@SETTINGS
@given(size=SIZES)
def test_llava_15_matches_helper(llava_processor, size):
    proc, _ = llava_processor
    assert count(size, model="llava-hf/llava-1.5-7b-hf").image_tokens == _helper(proc, size)


@pytest.mark.parametrize("size", FIXED)
def test_llava_15_end_to_end(llava_processor, size):
    proc, image_id = llava_processor
    placeholders, positions = _end_to_end(proc, image_id, size)
    got = count(size, model="llava-1.5-13b")
    assert got.image_tokens == placeholders == _helper(proc, size) == 576
    assert got.total_positions == positions


# --------------------------------------------------------------------------------------------- LLaVA-NeXT

def _next_processor(pinpoints=NEXT_PINPOINTS, strategy="default", additional=1):
    ip = transformers.LlavaNextImageProcessor(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=pinpoints,
        resample=3, do_pad=True)
    tok = tiny_tokenizer(["<image>"])
    proc = transformers.LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                           vision_feature_select_strategy=strategy,
                                           num_additional_image_tokens=additional, image_token="<image>")
    return proc, tok.convert_tokens_to_ids("<image>")


@pytest.fixture(scope="module")
def next_processor():
    return _next_processor()


@SETTINGS
@given(size=SIZES)
def test_llava_next_matches_helper(next_processor, size):
    proc, _ = next_processor
    assert count(size, model="llava-hf/llava-v1.6-mistral-7b-hf").image_tokens == _helper(proc, size)


@pytest.mark.parametrize("size", FIXED)
def test_llava_next_end_to_end(next_processor, size):
    proc, image_id = next_processor
    placeholders, positions = _end_to_end(proc, image_id, size)
    got = count(size, model="llava-v1.6-vicuna-7b")
    assert got.image_tokens == placeholders == _helper(proc, size)
    assert got.total_positions == positions == placeholders
    b = got.breakdown
    assert b["base_tokens"] + b["feature_tokens"] + b["newline_tokens"] == got.image_tokens
    assert b["newline_tokens"] == b["feature_grid"][1]
    # the tiles the image processor really made: base view + one per grid cell
    pixel_values = proc.image_processor(image_of(*size), return_tensors="np")["pixel_values"]
    assert pixel_values.shape[1] == 1 + b["tiles"] == 1 + b["tile_grid"][0] * b["tile_grid"][1]


_WIDER_PINPOINTS = NEXT_PINPOINTS + [[672, 1008], [1008, 1008], [1008, 672]]


@pytest.fixture(scope="module")
def next_variants():
    return {"wider": _next_processor(_WIDER_PINPOINTS), "full": _next_processor(strategy="full")}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=SIZES)
def test_llava_next_options_match_helper(next_variants, size):
    wider = count(size, family="llava-next", image_grid_pinpoints=_WIDER_PINPOINTS)
    assert wider.image_tokens == _helper(next_variants["wider"][0], size)
    full = count(size, family="llava-next", vision_feature_select_strategy="full")
    assert full.image_tokens == _helper(next_variants["full"][0], size)
    assert full.breakdown["cls_counted"] and full.breakdown["base_tokens"] == 577


def test_llava_next_checkpoints_share_one_rule():
    for name in ("llava-v1.6-mistral-7b", "llava-v1.6-vicuna-7b", "llava-v1.6-vicuna-13b", "llava-v1.6-34b",
                 "llama3-llava-next-8b"):
        assert count((1000, 600), model=name).image_tokens == count((1000, 600), family="llava-next").image_tokens


def test_llava_next_worked_example():
    # 640x480 -> canvas 672x672 (2x2 tiles, 48x48 features); the image fills 672x504, i.e. 36 of 48 rows
    got = count((640, 480), model="llava-next")
    assert got.breakdown["best_resolution"] == [672, 672] and got.breakdown["resized"] == [672, 504]
    assert got.breakdown["feature_grid"] == [48, 36]
    assert got.image_tokens == 576 + 48 * 36 + 36 == 2340


# ---------------------------------------------------------------------------------------- LLaVA-OneVision

def _onevision_processor(aspect="anyres_max_9"):
    ip = transformers.LlavaOnevisionImageProcessor(
        size={"height": 384, "width": 384}, image_grid_pinpoints=ONEVISION_PINPOINTS, resample=3, do_pad=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    vp = transformers.LlavaOnevisionVideoProcessor()
    tok = tiny_tokenizer(["<image>", "<video>"])
    proc = transformers.LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=vp,
                                                num_image_tokens=729, vision_feature_select_strategy="full",
                                                vision_aspect_ratio=aspect, image_token="<image>",
                                                video_token="<video>")
    return proc, tok.convert_tokens_to_ids("<image>")


@pytest.fixture(scope="module")
def onevision_processor():
    return _onevision_processor()


@SETTINGS
@given(size=SIZES)
def test_llava_onevision_matches_helper(onevision_processor, size):
    proc, _ = onevision_processor
    assert count(size, model="llava-hf/llava-onevision-qwen2-7b-ov-hf").image_tokens == _helper(proc, size)


@pytest.mark.parametrize("size", FIXED)
def test_llava_onevision_end_to_end(onevision_processor, size):
    proc, image_id = onevision_processor
    placeholders, positions = _end_to_end(proc, image_id, size)
    got = count(size, model="llava-onevision-qwen2-0.5b")
    assert got.image_tokens == placeholders == _helper(proc, size)
    assert got.total_positions == positions == placeholders
    b = got.breakdown
    assert b["base_tokens"] + b["feature_tokens"] + b["newline_tokens"] == got.image_tokens
    pixel_values = proc.image_processor(image_of(*size), return_tensors="np")["pixel_values"]
    assert pixel_values.shape[1] == 1 + b["tiles"]


@pytest.fixture(scope="module")
def onevision_max4():
    return _onevision_processor("anyres_max_4")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=SIZES)
def test_llava_onevision_aspect_option_matches_helper(onevision_max4, size):
    got = count(size, model="llava-onevision-qwen2-72b", vision_aspect_ratio="anyres_max_4")
    assert got.image_tokens == _helper(onevision_max4[0], size)


@pytest.mark.parametrize("sizes", [[(100, 200), (3000, 20)], [(1, 1), (8000, 4500), (640, 480)]])
def test_llava_onevision_multi_image_end_to_end(onevision_processor, sizes):
    """Several images in one prompt: no tiling, 729 base features + 1 newline each."""
    proc, image_id = onevision_processor
    text = "describe " + " ".join(["<image>"] * len(sizes)) + " this"
    ids = proc(images=[[image_of(*s) for s in sizes]], text=text, return_tensors="np")["input_ids"]
    counts = [count(s, model="llava-onevision", multi_image=True) for s in sizes]
    assert all(c.image_tokens == c.total_positions == 730 for c in counts)
    assert count_ids(ids, image_id) == sum(c.image_tokens for c in counts)


def test_llava_onevision_worked_example():
    # 8000x8000 -> 6x6 tiles, 162x162 features: more than 9 tiles' worth (ratio 2 > 1.1), so 81x81
    got = count((8000, 8000), model="llava-onevision")
    assert got.breakdown["tile_grid"] == [6, 6] and got.breakdown["unpadded_grid"] == [162, 162]
    assert got.breakdown["downscaled"] and got.breakdown["feature_grid"] == [81, 81]
    assert got.image_tokens == 729 + 81 * 81 + 81 == 7371


# ------------------------------------------------------------------------------------------ model table

LLAVA_MODELS = [e for e in model_table().values() if e.family in ("llava", "llava-next", "llava-onevision")]


def test_table_has_the_checkpoints():
    names = {e.name for e in LLAVA_MODELS}
    assert {"llava-1.5-7b", "llava-1.5-13b", "llava-v1.6-mistral-7b", "llava-v1.6-vicuna-7b",
            "llava-v1.6-vicuna-13b", "llama3-llava-next-8b", "llava-onevision-qwen2-0.5b",
            "llava-onevision-qwen2-7b", "llava-onevision-qwen2-72b"} <= names
    assert set(list_models("llava-onevision*")) >= {"llava-onevision-qwen2-0.5b", "llava-onevision-qwen2-72b"}


@pytest.mark.parametrize("entry", LLAVA_MODELS, ids=lambda e: e.name)
def test_every_name_and_alias_resolves(entry):
    for name in (entry.name, *entry.aliases, entry.name.upper()):
        assert resolve_model(name).name == entry.name
    got = count((1234, 567), model=entry.name)
    assert got.family == entry.family and got.image_tokens == got.total_positions > 0
    json.dumps(got.breakdown)
    json.dumps(got.options)


def test_prefix_fallback_finds_variants():
    assert resolve_model("llava-onevision-qwen2-7b-si-hf").name == "llava-onevision-qwen2-7b"
    assert resolve_model("llava-v1.6-mistral-7b-hf-awq").name == "llava-v1.6-mistral-7b"


@pytest.mark.parametrize("model", ["llava-1.5-7b", "llava-next", "llava-onevision"])
@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 10), (10, -1), (10**7, 10), (10, 10**7)])
def test_bad_sizes_raise(model, size):
    with pytest.raises(ValueError):
        count(size, model=model)


def test_bad_options_raise():
    with pytest.raises(TypeError):
        count((100, 100), model="llava-next", max_tiles=4)
    with pytest.raises(ValueError):
        count((100, 100), model="llava-onevision", vision_aspect_ratio="anyres")
    with pytest.raises(ValueError):
        count((100, 100), model="llava-next", image_grid_pinpoints=[])
