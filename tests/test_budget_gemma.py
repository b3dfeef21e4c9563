"""PaliGemma 1/2 and Gemma 3 counts against the real processors, built offline with the checkpoints' parameters.

PaliGemma: SiglipImageProcessor (size R x R, bicubic, mean/std 0.5, image_seq_length 256 / 1024 / 4096 for
R = 224 / 448 / 896) inside PaliGemmaProcessor. Gemma 3: Gemma3ImageProcessor (896 x 896, bilinear, mean/std
0.5, pan & scan options null in preprocessor_config.json) inside Gemma3Processor (image_seq_length 256),
whose own defaults are do_pan_and_scan False, min crop 256, max 4 crops, min ratio 1.2.

References: the processors' size-only helpers on 200 hypothesis sizes (``_get_num_multimodal_tokens``; for
pan & scan, which that helper ignores, the image processor's own ``pan_and_scan_batched`` run on a zero-stride
tensor of the image's shape), and the full processors end to end on fixed sizes (tiny, at the pan & scan
thresholds, extreme aspect ratios, large), counting placeholder and wrapper ids in input_ids. The tokenizer
keeps "\\n\\n" as one token, as Gemma's does.
"""

import json
from importlib import resources

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, image_of, tiny_tokenizer
from vistok.budget import count, resolve_model

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

SIZES = (st.tuples(st.integers(1, 8000), st.integers(1, 8000)) | st.tuples(st.integers(1, 40), st.integers(1, 40))
         | st.tuples(st.integers(1, 40), st.integers(1, 8000)) | st.tuples(st.integers(1, 8000), st.integers(1, 40))
         | st.tuples(st.integers(200, 1500), st.integers(200, 1500)))
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Pan & scan edges: ratio exactly 1.2 (599x500 just below), crops narrower than 256 (500x400), ratio 2.5 rounds
# half up to 3 crops (1250x500), the 4-crop cap, long sides below 2 * 256; then tiny, extreme and large.
FIXED = [(1, 1), (2, 3), (17, 40), (40, 17), (224, 224), (600, 500), (599, 500), (500, 600), (500, 400),
         (1250, 500), (500, 1250), (511, 300), (513, 300), (640, 480), (1024, 768), (1, 3000), (3000, 1),
         (2000, 500), (3000, 400), (400, 3000), (4032, 3024), (8000, 1500)]

GEMMA3_WORDS = ["Here", "is", "the", "original", "image", "and", "here", "are", "some", "crops", "to", "help",
                "you", "see", "better"]


def _keep_newlines(tok):
    """Read "\\n\\n" (and a lone "\\n") as tokens instead of dropping them as whitespace."""
    from tokenizers import Regex, pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\n\n|\n"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"[^\S\n]+"), behavior="removed"),
    ])
    return tok


# -- PaliGemma ------------------------------------------------------------------------------------------

PALIGEMMA = {224: ["paligemma-3b-pt-224", "google/paligemma2-3b-pt-224", "paligemma2-10b-pt-224"],
             448: ["paligemma-3b-pt-448", "google/paligemma2-3b-pt-448", "paligemma2-10b-pt-448"],
             896: ["paligemma-3b-pt-896", "google/paligemma2-3b-pt-896"]}
SEQ = {224: 256, 448: 1024, 896: 4096}


@pytest.fixture(scope="module")
def paligemma():
    procs = {}
    for side, seq in SEQ.items():
        ip = transformers.SiglipImageProcessor(size={"height": side, "width": side}, image_seq_length=seq,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3)
        procs[side] = transformers.PaliGemmaProcessor(image_processor=ip, tokenizer=tiny_tokenizer(["<image>"]))
    return procs


@SETTINGS
@given(size=SIZES)
def test_paligemma_matches_helper(paligemma, size):
    for side, models in PALIGEMMA.items():
        expected = paligemma[side]._get_num_multimodal_tokens(image_sizes=[size[::-1]])["num_image_tokens"][0]
        for model in models:
            c = count(size, model=model)
            assert c.image_tokens == c.total_positions == expected == SEQ[side]
            assert c.breakdown["resized"] == [side, side]


@pytest.mark.parametrize("size", FIXED)
def test_paligemma_224_end_to_end(paligemma, size):
    proc = paligemma[224]
    out = proc(images=image_of(*size), text="<image>describe this", return_tensors="np")
    ids = out["input_ids"][0]
    assert out["pixel_values"].shape[-2:] == (224, 224)
    image_id, bos_id = proc.image_token_id, proc.tokenizer.bos_token_id
    c = count(size, model="paligemma-3b-pt-224")
    assert c.image_tokens == c.total_positions == count_ids(ids, image_id)
    # the image block comes first, then the one <bos> of the prompt (not counted as an image position)
    assert list(ids[:c.total_positions]) == [image_id] * c.total_positions and ids[c.total_positions] == bos_id


@pytest.mark.parametrize("side", [448, 896])
@pytest.mark.parametrize("size", [(1, 1), (3000, 7), (640, 480), (4032, 3024)])
def test_paligemma_hi_res_end_to_end(paligemma, side, size):
    proc = paligemma[side]
    ids = proc(images=image_of(*size), text="<image>describe", return_tensors="np")["input_ids"]
    for model in PALIGEMMA[side]:
        assert count(size, model=model).image_tokens == count_ids(ids, proc.image_token_id)


# -- Gemma 3 --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gemma3():
    tok = _keep_newlines(tiny_tokenizer(["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
                                        extra_words=GEMMA3_WORDS))
    tok._set_model_specific_special_tokens({"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                            "image_token": "<image_soft_token>"})
    ip = transformers.Gemma3ImageProcessor(size={"height": 896, "width": 896}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=2, do_pan_and_scan=None,
                                           pan_and_scan_min_crop_size=None, pan_and_scan_max_num_crops=None,
                                           pan_and_scan_min_ratio_to_activate=None)
    return transformers.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=256)


def _crops_by_processor(proc, width, height, min_crop=256, max_crops=4, min_ratio=1.2):
    """Crops the image processor's own pan & scan cuts from a W x H image (zero-stride tensor: no pixels)."""
    shape_only = torch.zeros(1, 1, 1, 1, dtype=torch.uint8).expand(1, 3, height, width)
    return len(proc.image_processor.pan_and_scan_batched(shape_only, min_crop, max_crops, min_ratio))


@SETTINGS
@given(size=SIZES)
def test_gemma3_matches_helpers(gemma3, size):
    helper = gemma3._get_num_multimodal_tokens(image_sizes=[size[::-1]])["num_image_tokens"][0]
    for model in ("gemma-3-4b-it", "gemma-3-12b-it", "google/gemma-3-27b-it"):
        off = count(size, model=model)
        assert off.image_tokens == helper == 256 and off.total_positions == 260
        on = count(size, model=model, do_pan_and_scan=True)
        crops = _crops_by_processor(gemma3, *size)
        assert on.breakdown["crops"] == crops
        assert on.image_tokens == 256 * (1 + crops)


@SETTINGS
@given(size=SIZES, min_crop=st.integers(16, 600), max_crops=st.integers(2, 9),
       min_ratio=st.floats(1.0, 4.0, allow_nan=False))
def test_gemma3_pan_and_scan_options(gemma3, size, min_crop, max_crops, min_ratio):
    c = count(size, family="gemma3", do_pan_and_scan=True, pan_and_scan_min_crop_size=min_crop,
              pan_and_scan_max_num_crops=max_crops, pan_and_scan_min_ratio_to_activate=min_ratio)
    assert c.breakdown["crops"] == _crops_by_processor(gemma3, *size, min_crop, max_crops, min_ratio)


@pytest.mark.parametrize("pan_and_scan", [False, True])
@pytest.mark.parametrize("size", FIXED)
def test_gemma3_end_to_end(gemma3, size, pan_and_scan):
    out = gemma3(images=image_of(*size), text="describe <start_of_image> this", do_pan_and_scan=pan_and_scan,
                 return_tensors="np")
    ids = list(out["input_ids"][0])
    tok = gemma3.tokenizer
    c = count(size, model="gemma-3-4b-it", do_pan_and_scan=pan_and_scan)
    views = c.breakdown["views"]
    assert len(out["pixel_values"]) == views
    assert c.image_tokens == count_ids(ids, tok.image_token_id)
    assert c.breakdown["wrapper_tokens"] == count_ids(ids, tok.boi_token_id) + count_ids(ids, tok.eoi_token_id)
    assert c.breakdown["newline_tokens"] == count_ids(ids, tok.convert_tokens_to_ids("\n\n"))
    assert c.total_positions == len(ids) - 2  # all but "describe" and "this"


def test_gemma3_pan_and_scan_examples():
    # 2:1 -> 2 crops of 1000x1000; 3000x400 -> ratio 7.5 capped at 4 crops; 500x400 -> crops < 256 px wide
    assert count((2000, 1000), model="gemma-3-4b-it", do_pan_and_scan=True).breakdown["tile_grid"] == [2, 1]
    assert count((400, 3000), model="gemma-3-4b-it", do_pan_and_scan=True).breakdown["tile_grid"] == [1, 4]
    assert count((3000, 400), model="gemma-3-4b-it", do_pan_and_scan=True).image_tokens == 5 * 256
    assert count((500, 400), model="gemma-3-4b-it", do_pan_and_scan=True).image_tokens == 256


# -- the table ------------------------------------------------------------------------------------------

TABLE = json.loads(resources.files("vistok.budget").joinpath("data/models-gemma.json").read_text())
ENTRIES = {name: spec for name, spec in TABLE.items() if not name.startswith("_")}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_table_names_resolve(name):
    spec = ENTRIES[name]
    for alias in (name, name.upper(), *spec["aliases"]):
        assert resolve_model(alias).name == name
    c = count((640, 480), model=name)
    assert c.family == spec["family"] and c.image_tokens >= 256
    for bad in [(0, 10), (10, -1), (10**7, 10)]:
        with pytest.raises(ValueError):
            count(bad, model=name)
