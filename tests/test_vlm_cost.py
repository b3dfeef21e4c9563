"""vistok.budget.cost against a real transformers VLM: the KV-cache bytes it predicts are the bytes the cache
returned by prefill holds, unpatched and patched; LMConfig read from a transformers config; the prefill
benchmark's smoke run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import vistok.vlm  # noqa: E402
from vistok.budget.cost import LMConfig, cost, lm_presets  # noqa: E402

IMAGE_ID = 200
TEXT_BEFORE, TEXT_AFTER = 5, 7
VISUAL = 16  # 32 px / patch 8 = 4x4 patches


def shape(lm: LMConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(lm).items() if k not in ("name", "source")}


@pytest.fixture(scope="module")
def llava_path(tmp_path_factory):
    """A tiny random LLaVA (CLIP tower, Qwen2 LM with grouped KV heads and a head_dim that is not
    hidden / heads), saved and loaded back as a checkpoint."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, Qwen2Config

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=128)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    path = tmp_path_factory.mktemp("tiny-llava-cost")
    LlavaForConditionalGeneration(config).eval().save_pretrained(path)
    return path


def load(path: Path, dtype: torch.dtype):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).eval()


def inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    text = torch.randint(0, IMAGE_ID, (TEXT_BEFORE + TEXT_AFTER,), generator=generator)
    ids = torch.cat([text[:TEXT_BEFORE], torch.full((VISUAL,), IMAGE_ID), text[TEXT_BEFORE:]])[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(1, 3, 32, 32, generator=generator).to(dtype)}


def held(model, dtype) -> tuple[int, list[int]]:
    """Bytes of keys and values in the cache prefill returns, and each layer's cached length."""
    with torch.no_grad():
        out = model(**inputs(dtype), use_cache=True)
    layers = out.cache.layers
    assert all(layer.keys.dtype == dtype for layer in layers)
    return sum(y.keys.nbytes + y.values.nbytes for y in layers), [int(y.keys.shape[-2]) for y in layers]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_predicted_kv_bytes_equal_the_unpatched_cache(llava_path, dtype):
    model = load(llava_path, dtype)
    lm = LMConfig.from_transformers(model.config)
    assert (lm.layers, lm.heads, lm.kv_heads, lm.head_dim, lm.hidden) == (4, 4, 2, 16, 48)
    nbytes, lengths = held(model, dtype)
    positions = TEXT_BEFORE + VISUAL + TEXT_AFTER
    assert lengths == [positions] * 4
    predicted = cost(positions, lm, dtype=str(dtype).removeprefix("torch.")).kv_cache_bytes
    assert predicted == nbytes == 2 * 4 * 2 * 16 * positions * (4 if dtype == torch.float32 else 2)
    assert cost(positions, lm, dtype=dtype).kv_cache_bytes == nbytes  # a torch.dtype names the same


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method, keep", [("pool", 4), ("stride", 8)])
def test_predicted_kv_bytes_equal_the_patched_cache(llava_path, dtype, method, keep):
    model = load(llava_path, dtype)
    lm = LMConfig.from_transformers(model.config)
    with vistok.vlm.patch(model, method, keep=keep) as handle:
        nbytes, lengths = held(model, dtype)
    assert handle.stats[0]["before"] == VISUAL and handle.stats[0]["after"] == keep
    positions = TEXT_BEFORE + VISUAL + TEXT_AFTER - (VISUAL - keep)
    assert lengths == [positions] * 4
    assert cost(positions, lm, dtype=dtype).kv_cache_bytes == nbytes
    assert nbytes < held(model, dtype)[0]  # unpatched again: the full cache


def test_predicted_kv_bytes_equal_the_fastv_cache(llava_path):
    """FastV keeps every position in its first ``layer`` layers: the cost is the sum over the two groups."""
    dtype = torch.float32
    model = load(llava_path, dtype)
    lm = LMConfig.from_transformers(model.config)
    with vistok.vlm.patch(model, "fastv", layer=2, keep=4):
        nbytes, lengths = held(model, dtype)
    full, reduced = TEXT_BEFORE + VISUAL + TEXT_AFTER, TEXT_BEFORE + 4 + TEXT_AFTER
    assert lengths == [full, full, reduced, reduced]
    predicted = (cost(full, dataclasses.replace(lm, layers=2), dtype=dtype).kv_cache_bytes
                 + cost(reduced, dataclasses.replace(lm, layers=2), dtype=dtype).kv_cache_bytes)
    assert predicted == nbytes


def test_lm_config_from_transformers_matches_the_presets():
    from transformers import LlamaConfig, Qwen2Config

    qwen = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864)
    assert shape(LMConfig.from_transformers(qwen)) == shape(lm_presets()["qwen2-0.5b"])
    assert LMConfig.from_transformers(qwen).name == "qwen2"
    llama = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008)
    assert shape(LMConfig.from_transformers(llama, name="vicuna")) == shape(lm_presets()["vicuna-7b"])
    # a config.json dict, the LM under text_config, Mllama's cross-attention layers counted
    mllama = {"model_type": "mllama", "text_config": {
        "num_hidden_layers": 40, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38]}}
    assert shape(LMConfig.from_transformers(mllama)) == shape(lm_presets()["llama3.2-11b-vision-text"])


def test_lm_config_from_transformers_refuses_a_config_without_an_lm():
    from transformers import PretrainedConfig

    with pytest.raises(ValueError, match="the config dict has no intermediate_size") as info:
        LMConfig.from_transformers({"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2})
    assert "intermediate_size" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="PreTrainedConfig has no num_hidden_layers"):
        LMConfig.from_transformers(PretrainedConfig())
    with pytest.raises(ValueError, match="heads must be positive"):
        LMConfig.from_transformers({"hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
                                    "intermediate_size": 16, "num_key_value_heads": -1})


def test_cost_takes_a_torch_dtype_and_refuses_an_unknown_one():
    lm = lm_presets()["qwen2-0.5b"]
    assert cost(10, lm, dtype=torch.float16).kv_cache_bytes == cost(10, lm, dtype="float16").kv_cache_bytes
    assert cost(10, lm, dtype=torch.float32).kv_cache_bytes == 2 * cost(10, lm, dtype="bf16").kv_cache_bytes
    with pytest.raises(ValueError, match="unknown dtype 'float64'"):
        cost(10, lm, dtype=torch.float64)


@pytest.mark.slow
def test_prefill_benchmark_smoke_run_prints_a_row_per_method():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vlm_prefill.py"
    result = subprocess.run([sys.executable, str(script), "--size", "small", "--repeats", "1", "--warmup", "0",
                             "--keeps", "64", "--device", "cpu", "--markdown"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    cells = [[c.strip() for c in row] for row in rows[1:]]  # after the header
    assert [(c[0], c[1]) for c in cells] == [("unpatched", "576"), ("pool", "64"), ("visionzip", "64"),
                                             ("fastv", "64"), ("tome", "64")]
    for c in cells:  # measured KV bytes equal the prediction in every row
        assert c[8] == c[9], c
    assert cells[1][2] == "164" and cells[3][2] == "676/164"  # 100 text + 64; FastV's first 2 layers see all
