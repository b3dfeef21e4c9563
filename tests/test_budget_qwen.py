"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL counts against the real processors, built offline.

References: the processors' size-only helper ``_get_num_multimodal_tokens`` (which runs the image
processor's ``get_number_of_image_patches``, i.e. ``smart_resize``) on 200 hypothesis sizes per family, and
the full processors end to end (real images, placeholders counted in ``input_ids``) on fixed sizes chosen to
hit tiny images, Python's round-half-to-even, the min/max pixel branches and extreme aspect ratios.

The ``<|vision_start|>`` / ``<|vision_end|>`` wrappers come from the models' chat templates, not from the
processors; ``CHAT_TEMPLATE`` below is the image branch of the official Qwen2-VL / Qwen2.5-VL / Qwen3-VL
templates (``<|vision_start|><|image_pad|><|vision_end|>`` per image; chat_template.json of
Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen3-VL-8B-Instruct).
"""

import json
from importlib import resources

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, image_of, tiny_tokenizer
from vistok.budget import count, resolve_model

transformers = pytest.importorskip("transformers")
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize  # noqa: E402

SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
)
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this"}]}]

# Side lengths: any up to 8000, tiny, and one tiny side against a long one (many beyond 200:1, refused).
SIZES = (st.tuples(st.integers(1, 8000), st.integers(1, 8000)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
         | st.tuples(st.integers(1, 40), st.integers(1, 8000)) | st.tuples(st.integers(1, 8000), st.integers(1, 40)))

# End-to-end sizes: tiny; exact halves of 28 / 32 (round half to even: 42, 70, 98, 126 / 48, 80, 112, 144);
# the min-pixels branch; up to 200:1 and just past it; ordinary photos; over max_pixels (both families).
FIXED = [(1, 1), (1, 2), (2, 1), (3, 1), (1, 3), (13, 40), (40, 13), (27, 29), (42, 70), (70, 1400), (126, 98),
         (144, 1200), (1200, 144), (80, 48), (1, 200), (200, 1), (5, 1000), (1000, 5), (3000, 40), (224, 224),
         (640, 480), (1000, 700), (1023, 767), (1920, 1080), (4200, 3200), (6000, 3000)]
REFUSED = [(1, 201), (201, 1), (3, 601), (601, 3), (40, 8001)]


def _tokenizer():
    return tiny_tokenizer(SPECIAL)


def _qwen2_image_processor(**overrides):
    params = dict(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2)
    return transformers.Qwen2VLImageProcessor(**{**params, **overrides})


def _qwen3_image_processor(**overrides):
    size = {"shortest_edge": overrides.pop("min_pixels", 65536), "longest_edge": overrides.pop("max_pixels", 16777216)}
    return transformers.Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, temporal_patch_size=2,
                                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], **overrides)


def build(kind: str, **overrides):
    """The processor of Qwen2-VL ("qwen2"), Qwen2.5-VL ("qwen2.5") or Qwen3-VL ("qwen3") with the
    checkpoints' preprocessor_config.json values (overridable, e.g. a lower max_pixels)."""
    tok = _tokenizer()
    if kind == "qwen3":
        return transformers.Qwen3VLProcessor(image_processor=_qwen3_image_processor(**overrides), tokenizer=tok,
                                             video_processor=transformers.Qwen3VLVideoProcessor(),
                                             chat_template=CHAT_TEMPLATE)
    cls = transformers.Qwen2VLProcessor if kind == "qwen2" else transformers.Qwen2_5_VLProcessor
    return cls(image_processor=_qwen2_image_processor(**overrides), tokenizer=tok,
               video_processor=transformers.Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


MODEL_OF = {"qwen2": "Qwen/Qwen2-VL-7B-Instruct", "qwen2.5": "Qwen/Qwen2.5-VL-7B-Instruct",
            "qwen3": "Qwen/Qwen3-VL-8B-Instruct"}


@pytest.fixture(scope="module")
def processors():
    return {kind: build(kind) for kind in MODEL_OF}


def helper_tokens(proc, width, height, **kwargs):
    return proc._get_num_multimodal_tokens(image_sizes=[(height, width)], **kwargs)["num_image_tokens"][0]


def end_to_end(proc, width, height):
    """(image placeholders, vision_start, vision_end) in the processor's input_ids for one real image."""
    text = proc.apply_chat_template(MESSAGES, tokenize=False)
    ids = proc(images=image_of(width, height), text=text, return_tensors="np")["input_ids"]
    tok = proc.tokenizer
    return tuple(count_ids(ids, tok.convert_tokens_to_ids(t)) for t in ("<|image_pad|>", "<|vision_start|>",
                                                                         "<|vision_end|>"))


def _check_against_helper(proc, model, width, height, **options):
    try:
        expected = helper_tokens(proc, width, height, **options)
    except ValueError as err:
        assert "aspect ratio" in str(err)
        with pytest.raises(ValueError, match="aspect ratio"):
            count((width, height), model=model, **options)
        return
    counted = count((width, height), model=model, **options)
    assert counted.image_tokens == expected, (width, height, options)
    assert counted.total_positions == expected + 2
    factor = counted.options["patch_size"] * counted.options["merge_size"]
    resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=counted.options["min_pixels"],
                                        max_pixels=counted.options["max_pixels"])
    assert counted.breakdown["resized"] == [resized_w, resized_h]


# -- 200 sizes per family against the processor's size helper ---------------------------------------

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(size=SIZES)
@example(size=(42, 70)).via("round half to even")
@example(size=(1, 1)).via("min pixels")
def test_qwen2_vl_matches_processor_helper(processors, size):
    _check_against_helper(processors["qwen2"], "qwen2-vl-7b-instruct", *size)


@SETTINGS
@given(size=SIZES)
@example(size=(6000, 5000)).via("max pixels")
def test_qwen25_vl_matches_processor_helper(processors, size):
    _check_against_helper(processors["qwen2.5"], "qwen2.5-vl-7b-instruct", *size)


@SETTINGS
@given(size=SIZES)
@example(size=(144, 1200)).via("round half to even, factor 32")
@example(size=(8000, 8000)).via("max pixels")
def test_qwen3_vl_matches_processor_helper(processors, size):
    _check_against_helper(processors["qwen3"], "qwen3-vl-8b-instruct", *size)


@SETTINGS
@given(size=SIZES, max_pixels=st.integers(1, 20_000_000), min_pixels=st.integers(1, 600_000))
def test_pixel_bounds_match_processor_helper(processors, size, max_pixels, min_pixels):
    """The knob users turn: lower max_pixels (and min_pixels), for both patch sizes."""
    for kind, model in (("qwen2", "qwen2-vl-2b-instruct"), ("qwen3", "qwen3-vl-4b-instruct")):
        _check_against_helper(processors[kind], model, *size, max_pixels=max_pixels, min_pixels=min_pixels)


@settings(max_examples=200, deadline=None)
@given(short=st.integers(1, 4000), delta=st.integers(-3, 3), tall=st.booleans())
def test_aspect_ratio_refusal_matches_smart_resize(short, delta, tall):
    """Both refuse exactly the same sizes around 200:1 (long = 200 * short + delta)."""
    long = 200 * short + delta
    if long < 1 or long > 1_000_000:
        return
    width, height = (short, long) if tall else (long, short)
    for factor, model in ((28, "qwen2-vl-7b-instruct"), (32, "qwen3-vl-8b-instruct")):
        try:
            smart_resize(height, width, factor=factor, min_pixels=3136, max_pixels=12845056)
            refused = False
        except ValueError:
            refused = True
        if refused:
            with pytest.raises(ValueError, match="aspect ratio"):
                count((width, height), model=model)
        else:
            assert count((width, height), model=model).image_tokens >= 1
        assert refused == (long > 200 * short)


# -- the full processors, end to end ----------------------------------------------------------------

MODERATE = (st.tuples(st.integers(1, 2000), st.integers(1, 2000)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
            | st.tuples(st.integers(1, 12), st.integers(1, 2400)) | st.tuples(st.integers(1, 2400), st.integers(1, 12)))


@SETTINGS
@given(size=MODERATE, kind=st.sampled_from(list(MODEL_OF)))
def test_end_to_end_hypothesis_sizes(processors, size, kind):
    """200 more sizes through the full processors (sides up to 2400 px, to keep the run short)."""
    proc, model = processors[kind], MODEL_OF[kind]
    try:
        pads, starts, ends = end_to_end(proc, *size)
    except ValueError as err:
        assert "aspect ratio" in str(err)
        with pytest.raises(ValueError, match="aspect ratio"):
            count(size, model=model)
        return
    counted = count(size, model=model)
    assert (counted.image_tokens, counted.total_positions) == (pads, pads + starts + ends), (kind, size)


@pytest.mark.parametrize("kind", list(MODEL_OF))
def test_end_to_end_fixed_sizes(processors, kind):
    proc, model = processors[kind], MODEL_OF[kind]
    for width, height in FIXED:
        pads, starts, ends = end_to_end(proc, width, height)
        counted = count((width, height), model=model)
        assert counted.image_tokens == pads == helper_tokens(proc, width, height), (kind, width, height)
        assert (starts, ends) == (1, 1)
        assert counted.total_positions == pads + starts + ends
        resized_w, resized_h = counted.breakdown["resized"]
        patch = 14 if kind != "qwen3" else 16
        assert counted.breakdown["grid"] == [resized_w // patch, resized_h // patch]


@pytest.mark.parametrize("kind", list(MODEL_OF))
def test_end_to_end_refuses_extreme_aspect(processors, kind):
    for width, height in REFUSED:
        with pytest.raises(ValueError, match="aspect ratio"):
            end_to_end(processors[kind], width, height)
        with pytest.raises(ValueError, match="aspect ratio"):
            count((width, height), model=MODEL_OF[kind])


@pytest.mark.parametrize("kind, max_pixels", [("qwen2", 200704), ("qwen2.5", 401408), ("qwen3", 262144)])
def test_end_to_end_lowered_max_pixels(kind, max_pixels):
    proc = build(kind, max_pixels=max_pixels)
    for width, height in [(1, 1), (70, 1400), (640, 480), (1000, 700), (1920, 1080), (3000, 40), (4200, 3200)]:
        pads, _, _ = end_to_end(proc, width, height)
        assert count((width, height), model=MODEL_OF[kind], max_pixels=max_pixels).image_tokens == pads
        assert pads <= max_pixels // (28 * 28 if kind != "qwen3" else 32 * 32)


# -- the model table --------------------------------------------------------------------------------

TABLE = json.loads(resources.files("vistok.budget").joinpath("data/models-qwen.json").read_text())


@pytest.mark.parametrize("name", [n for n in TABLE if not n.startswith("_")])
def test_models_resolve_by_name_and_aliases(name):
    spec = TABLE[name]
    for alias in (name, name.upper(), *spec["aliases"]):
        entry = resolve_model(alias)
        assert entry.name == name and entry.family == spec["family"]
    assert resolve_model(name + "-awq").name == name  # prefix fallback
    assert count((640, 480), model=name).family == spec["family"]
    for bad in [(0, 10), (10, 0), (-1, 5), (10**7, 10), (10, 10**7)]:
        with pytest.raises(ValueError):
            count(bad, model=name)


def test_known_values():
    # 1000x700: 1008x700 -> 72x50 patches -> 900 tokens (Qwen2/2.5-VL); 992x704 -> 62x44 -> 682 (Qwen3-VL)
    assert count((1000, 700), model="qwen2-vl").image_tokens == 900
    assert count((1000, 700), model="qwen3-vl").image_tokens == 682
    c = count((1000, 700), model="qwen2.5-vl-7b")
    assert c.breakdown["resized"] == [1008, 700] and c.breakdown["grid"] == [72, 50] and c.total_positions == 902
    assert count((1, 1), model="qwen2-vl").image_tokens == 4  # min_pixels 56x56
    assert count((8000, 8000), model="qwen2-vl").image_tokens == 16384  # 3584x3584 = max_pixels
