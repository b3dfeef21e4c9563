"""Phi-3(.5)-vision and MiniCPM-V 2.6: remote-code processors, so worked examples from their own files.

Phi-3.5-vision: ``image_processing_phi3_v.py`` in microsoft/Phi-3.5-vision-instruct (and
microsoft/Phi-3-vision-128k-instruct) on the Hugging Face hub:
https://huggingface.co/microsoft/Phi-3.5-vision-instruct/blob/main/image_processing_phi3_v.py
(``calc_hd_transform_size`` + ``calc_num_image_tokens_from_image_size``:
``(h//336 * w//336 + 1) * 144 + 1 + (h//336 + 1) * 12`` on the padded HD size). The examples below are worked
by hand from that file, step by step in the comments.

MiniCPM-V 2.6: ``image_processing_minicpmv.py`` in openbmb/MiniCPM-V-2_6:
https://huggingface.co/openbmb/MiniCPM-V-2_6/blob/main/image_processing_minicpmv.py
(``get_sliced_grid``; 64 query tokens for the source image and for each slice). The model card
(https://huggingface.co/openbmb/MiniCPM-V-2_6) states that a 1.8-megapixel image such as 1344 x 1344 becomes
640 tokens. The slice-grid choice is also checked on 200 sizes against transformers' own port of the same
OpenBMB slicing code (``MiniCPMV4_6ImageProcessor.get_sliced_grid``), an independent implementation.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vistok.budget import count, resolve_model
from vistok.budget.rules.minicpm import sliced_grid

PHI = "microsoft/Phi-3.5-vision-instruct"  # num_crops 4
PHI3 = "microsoft/Phi-3-vision-128k-instruct"  # num_crops 16
MINICPM = "openbmb/MiniCPM-V-2_6"


# ---------------------------------------------------------------- Phi-3(.5)-vision, worked from the file

@pytest.mark.parametrize("model, size, tokens, grid, resized, padded", [
    # 336 x 336, num_crops 4: ratio 1; scale 2 (2 * ceil(2/1) = 4 <= 4, 3 * 3 = 9 > 4) -> 672 x 672, 2 x 2 crops;
    # (4 + 1) * 144 + 1 + (2 + 1) * 12 = 757
    (PHI, (336, 336), 757, [2, 2], [672, 672], [672, 672]),
    # any size of that aspect gives the same: small images are upscaled to the HD grid
    (PHI, (50, 50), 757, [2, 2], [672, 672], [672, 672]),
    # 1000 x 500, num_crops 4: ratio 2; scale 2 (2 * ceil(1) = 2, 3 * ceil(1.5) = 6 > 4) -> 672 x 336,
    # padded 672 x 336: 2 cols x 1 row; (2 + 1) * 144 + 1 + (1 + 1) * 12 = 457
    (PHI, (1000, 500), 457, [2, 1], [672, 336], [672, 336]),
    # 500 x 1000: transposed, same crops as 1 col x 2 rows, but newlines follow rows: 3 * 144 + 1 + 3 * 12 = 469
    (PHI, (500, 1000), 469, [1, 2], [336, 672], [336, 672]),
    # 1920 x 1080, num_crops 4: ratio 1.777; scale 2 (2 * ceil(1.125) = 4; 3 * ceil(1.69) = 6 > 4) -> 672 x
    # int(672 / 1.777) = 378, padded to 672: 2 x 2 crops -> 757
    (PHI, (1920, 1080), 757, [2, 2], [672, 378], [672, 672]),
    # 336 x 336, num_crops 16: scale 4 (4 * 4 = 16) -> 1344 x 1344, 4 x 4: 17 * 144 + 1 + 5 * 12 = 2509
    (PHI3, (336, 336), 2509, [4, 4], [1344, 1344], [1344, 1344]),
    # 1000 x 500, num_crops 16: scale 5 (5 * ceil(2.5) = 15 <= 16, 6 * 3 = 18) -> 1680 x 840, padded
    # to 1680 x 1008: 5 x 3 crops; 16 * 144 + 1 + 4 * 12 = 2353
    (PHI3, (1000, 500), 2353, [5, 3], [1680, 840], [1680, 1008]),
    # 1300 x 876 (ratio 1.484), num_crops 16: scale 4 (4 * ceil(2.70) = 12; 5 * ceil(3.37) = 20) -> 1344 x 905,
    # padded 1344 x 1008: 4 x 3 crops; 13 * 144 + 1 + 4 * 12 = 1921 (and 757 with num_crops 4: the counts vLLM's
    # tests/models/multimodal/processing/test_phi3v.py expects for its landscape test photo at num_crops 16 / 4)
    (PHI3, (1300, 876), 1921, [4, 3], [1344, 905], [1344, 1008]),
    (PHI, (1300, 876), 757, [2, 2], [672, 452], [672, 672]),
    # 4000 x 100 (ratio 40), num_crops 4: scale 4 (4 * ceil(0.1) = 4) -> 1344 x int(1344 / 40) = 33, padded
    # 1344 x 336: 4 x 1 crops; 5 * 144 + 1 + 2 * 12 = 745
    (PHI, (4000, 100), 745, [4, 1], [1344, 33], [1344, 336]),
])
def test_phi_worked_examples(model, size, tokens, grid, resized, padded):
    c = count(size, model=model)
    assert c.image_tokens == tokens and c.total_positions == tokens
    assert c.breakdown["tile_grid"] == grid and c.breakdown["tiles"] == grid[0] * grid[1]
    assert c.breakdown["resized"] == resized and c.breakdown["padded"] == padded
    # split: every crop 144 features, 12 newlines per crop row, the global image 144 + 12, one separator
    cols, rows = grid
    assert c.breakdown["newline_tokens"] == 12 * (rows + 1) and c.breakdown["separator_tokens"] == 1


def test_phi_num_crops_option():
    assert count((336, 336), model=PHI, num_crops=16).image_tokens == 2509
    assert count((336, 336), model=PHI, num_crops=1).image_tokens == (1 + 1) * 144 + 1 + 2 * 12  # 1 crop
    # beyond num_crops * 336 : 1 the short side resizes to 0 px; the processor cannot do that either
    with pytest.raises(ValueError, match="0 px"):
        count((3000, 1), model=PHI)
    with pytest.raises(ValueError, match="0 px"):
        count((1, 3000), model=PHI)
    assert count((1344, 1), model=PHI).breakdown["tile_grid"] == [4, 1]  # 1344 / 1344 = 1 px: still fine


@settings(max_examples=200, deadline=None)
@given(size=st.tuples(st.integers(1, 8000), st.integers(1, 8000)), num_crops=st.sampled_from([1, 4, 9, 16]))
def test_phi_invariants(size, num_crops):
    try:
        c = count(size, model=PHI, num_crops=num_crops)
    except ValueError:
        long_side, short_side = max(size), min(size)
        assert long_side / short_side > 336  # only extreme aspect ratios are refused
        return
    cols, rows = c.breakdown["tile_grid"]
    assert 1 <= cols * rows <= num_crops
    assert c.image_tokens == (cols * rows + 1) * 144 + 1 + (rows + 1) * 12
    pw, ph = c.breakdown["padded"]
    assert pw == 336 * cols and ph == 336 * rows


# ---------------------------------------------------------------- MiniCPM-V 2.6

@pytest.mark.parametrize("size, grid, tokens, total", [
    # model card: 1344 x 1344 (1.8 MP) -> 640 tokens. 1344^2 / 448^2 = 9 slices: candidates 8 and 9 (10 > 9);
    # 3 x 3 matches log(1) exactly. (1 + 9) * 64 = 640; + <image></image> 2 + 9 * <slice></slice> 18 + 2
    # newlines between the 3 rows + <image_id>0</image_id> 3 = 665
    ((1344, 1344), [3, 3], 640, 665),
    # 448 x 448: one 448^2 -> multiple 1, not sliced: 64 tokens, + 2 wrappers + 3 id tokens
    ((448, 448), None, 64, 69),
    ((30, 20), None, 64, 69),
    # 1000 x 500: 500000 / 200704 -> multiple 3; candidates 2, 3, 4; [2, 1] (cols, rows) has error 0
    ((1000, 500), [2, 1], 192, 192 + 2 + 4 + 3),
    # 500 x 1000: [1, 2]; one newline between the two rows
    ((500, 1000), [1, 2], 192, 192 + 2 + 4 + 1 + 3),
    # 2000 x 1000: 2e6 / 200704 = 9.96 -> min(10, 9) = 9: candidates 8, 9; [4, 2] matches log(2) exactly
    ((2000, 1000), [4, 2], 576, 576 + 2 + 16 + 1 + 3),
    # 1920 x 1080: 2073600 / 200704 = 10.3 -> 9: 8 -> [4, 2] error |log(1.78) - log(2)| = 0.118,
    # 9 -> [3, 3] error 0.575: [4, 2]
    ((1920, 1080), [4, 2], 576, 598),
])
def test_minicpm_worked_examples(size, grid, tokens, total):
    c = count(size, model=MINICPM)
    assert (c.image_tokens, c.total_positions) == (tokens, total)
    if grid is None:
        assert c.breakdown["tiles"] == 0
    else:
        assert c.breakdown["tile_grid"] == grid and c.breakdown["tiles"] == grid[0] * grid[1]
    assert sliced_grid(*size) == grid


def test_minicpm_resize_details():
    # not sliced: upscaled to about 448^2 with sides rounded to multiples of 14
    assert count((100, 100), model=MINICPM).breakdown["resized"] == [448, 448]
    # sliced 1344 x 1344: the source image is downscaled to 448 x 448, each slice 448 x 448
    b = count((1344, 1344), model=MINICPM).breakdown
    assert b["resized"] == [448, 448] and b["slice_size"] == [448, 448] and b["refined"] == [1344, 1344]


def test_minicpm_options():
    # without the image id tag (the model card's video setting) and with fewer slices
    c = count((1344, 1344), model=MINICPM, use_image_id=False)
    assert c.total_positions == 662
    c = count((1344, 1344), model=MINICPM, max_slice_nums=2)
    # candidates 1 (skipped) and 2: [1, 2] and [2, 1] tie on a square; the first found (1 col, 2 rows) stays
    assert c.breakdown["tile_grid"] == [1, 2] and c.image_tokens == 192
    c = count((4000, 3000), model=MINICPM, slice_mode=False)
    assert (c.image_tokens, c.total_positions) == (64, 69) and c.breakdown["resized"] == [4000, 3000]


@settings(max_examples=200, deadline=None)
@given(size=st.tuples(st.integers(1, 8000), st.integers(1, 8000))
       | st.tuples(st.integers(1, 40), st.integers(1, 8000)) | st.tuples(st.integers(1, 8000), st.integers(1, 40)))
def test_minicpm_grid_matches_transformers_port(size):
    ported = pytest.importorskip("transformers.models.minicpmv4_6.image_processing_minicpmv4_6")
    width, height = size
    ref = ported.MiniCPMV4_6ImageProcessor().get_sliced_grid((height, width), 9, 448)  # [rows, cols] or None
    ours = sliced_grid(width, height)
    assert ours == (None if ref is None else [ref[1], ref[0]])
    c = count(size, model=MINICPM)
    slices = 0 if ours is None else ours[0] * ours[1]
    assert c.image_tokens == 64 * (1 + slices) and c.image_tokens <= 640


# ---------------------------------------------------------------- table and errors

def test_models_resolve():
    cases = {
        "phi-3.5-vision-instruct": ("phi3-v", "phi3-mini", {"num_crops": 4}),
        "phi-3-vision-128k-instruct": ("phi3-v", "phi3-mini", {"num_crops": 16}),
        "minicpm-v-2.6": ("minicpm-v", "qwen2-7b", {"max_slice_nums": 9}),
    }
    for name, (family, lm, options) in cases.items():
        entry = resolve_model(name)
        assert entry.family == family and entry.lm == lm
        assert options.items() <= entry.options.items()
        for alias in entry.aliases:
            assert resolve_model(alias).name == name
    assert resolve_model("microsoft/Phi-3.5-vision-instruct").name == "phi-3.5-vision-instruct"
    assert resolve_model("openbmb/MiniCPM-V-2_6").name == "minicpm-v-2.6"


@pytest.mark.parametrize("model", [PHI, PHI3, MINICPM])
@pytest.mark.parametrize("bad", [(0, 10), (10, 0), (-3, 10), (10, -3), (10**7, 10), (10, 10**7)])
def test_bad_sizes(model, bad):
    with pytest.raises(ValueError):
        count(bad, model=model)
