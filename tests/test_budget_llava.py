"""LLaVA-1.5 counts against the real LlavaProcessor, built offline with the checkpoint's parameters."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor_refs import count_ids, image_of, tiny_tokenizer
from vistok.budget import count

transformers = pytest.importorskip("transformers")

SIZES = st.tuples(st.integers(1, 4000), st.integers(1, 4000)) | st.tuples(st.integers(1, 40), st.integers(1, 3000)) \
    | st.tuples(st.integers(1, 3000), st.integers(1, 40))


@pytest.fixture(scope="module")
def llava_processor():
    ip = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                         resample=3)
    tok = tiny_tokenizer(["<image>"])
    proc = transformers.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                       vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                       image_token="<image>")
    return proc, tok.convert_tokens_to_ids("<image>")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=SIZES)
def test_llava_15_matches_processor(llava_processor, size):
    proc, image_id = llava_processor
    out = proc(images=image_of(*size), text="describe <image> this", return_tensors="np")
    assert count(size, model="llava-hf/llava-1.5-7b-hf").image_tokens == count_ids(out["input_ids"], image_id)
