"""``reduce_tensor``: every registered reducer on torch batches equals ``vistok.reduce`` row by row."""

from __future__ import annotations

import numpy as np
import pytest

import vistok
from vistok.reducers import TensorReduction, method_info, reduce_tensor

torch = pytest.importorskip("torch")

N, D, GRID, KEEP = 36, 8, (6, 6), 9


def inputs(seed: int, batch: int = 1, dtype=torch.float64) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, N, D, generator=g, dtype=torch.float64)
    signals = {"cls_attention": torch.softmax(torch.randn(batch, N, generator=g, dtype=torch.float64) * 2, -1),
               "keys": torch.randn(batch, N, 5, generator=g, dtype=torch.float64),
               "saliency": torch.rand(batch, N, generator=g, dtype=torch.float64),
               "query": torch.randn(batch, D, generator=g, dtype=torch.float64)}
    return x.to(dtype), {k: v.to(dtype) for k, v in signals.items()}


def wanted(method: str, signals: dict) -> dict:
    info = method_info(method)
    return {s: v for s, v in signals.items() if s in (*info.needs, *info.uses)}


def count(method: str) -> dict:
    return {"factor": 2} if method == "pool" else {"keep": KEEP}


@pytest.mark.parametrize("method", vistok.reduce_methods())
def test_reduce_tensor_equals_reduce(method):
    for seed in range(3):
        x, signals = inputs(seed)
        given = wanted(method, signals)
        out = reduce_tensor(x, method, token_grid=GRID, **count(method), **given)
        ref = vistok.reduce(vistok.Tokens.from_grid(x[0].numpy(), GRID), method, **count(method),
                            **{k: v[0].numpy() for k, v in given.items()})
        assert isinstance(out, TensorReduction)
        assert out.values.dtype == torch.float64 and out.values.shape == (1, len(ref), D)
        np.testing.assert_array_equal(out.assign[0].numpy(), ref.source)
        np.testing.assert_allclose(out.values[0].numpy(), ref.values, rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(out.sizes[0].numpy(), ref.sizes)


@pytest.mark.parametrize("method", vistok.reduce_methods())
def test_a_batch_equals_one_call_per_row(method):
    x, signals = inputs(7, batch=3, dtype=torch.float32)
    given = wanted(method, signals)
    sizes = torch.randint(1, 4, (3, N)).float()
    out = reduce_tensor(x, method, token_grid=GRID, sizes=sizes, **count(method), **given)
    for i in range(3):
        row = {k: v[i:i + 1] for k, v in given.items()}
        one = reduce_tensor(x[i:i + 1], method, token_grid=GRID, sizes=sizes[i:i + 1], **count(method), **row)
        assert torch.equal(out.assign[i], one.assign[0])
        torch.testing.assert_close(out.values[i], one.values[0])
        torch.testing.assert_close(out.sizes[i], one.sizes[0])
    kept = out.assign[0] >= 0
    assert out.sizes[0].sum() == sizes[0][kept].sum()  # sizes add up over the members


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", vistok.reduce_methods())
def test_half_precision_keeps_its_dtype_and_stays_close(method, dtype):
    x, signals = inputs(3, batch=2, dtype=torch.float32)
    x = x.to(dtype).float()  # the same numbers in both runs, so the choices agree
    given = wanted(method, signals)
    full = reduce_tensor(x, method, token_grid=GRID, **count(method), **given)
    half = reduce_tensor(x.to(dtype), method, token_grid=GRID, **count(method), **{k: v.to(dtype) for k, v in given.items()})
    assert half.values.dtype == dtype and half.assign.dtype == torch.int64
    assert half.values.shape == full.values.shape
    if torch.equal(half.assign, full.assign):  # rounding of half-precision signals may flip a near tie
        torch.testing.assert_close(half.values.float(), full.values, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("method", vistok.reduce_methods())
def test_an_n_by_d_input_is_a_batch_of_one(method):
    x, signals = inputs(5, dtype=torch.float32)
    given = wanted(method, signals)
    out = reduce_tensor(x[0], method, token_grid=GRID, **count(method), **given)
    ref = reduce_tensor(x, method, token_grid=GRID, **count(method), **given)
    assert out.values.ndim == 3 and torch.equal(out.assign, ref.assign)
    torch.testing.assert_close(out.values, ref.values)


def test_float32_tokens_through_reduce_match_reduce_tensor():
    x, signals = inputs(11, dtype=torch.float32)
    out = reduce_tensor(x, "divprune", keep=KEEP)
    ref = vistok.reduce(vistok.Tokens.from_grid(x[0].numpy(), GRID), "divprune", keep=KEEP)
    assert ref.values.dtype == np.float32
    np.testing.assert_array_equal(out.assign[0].numpy(), ref.source)


def test_bad_inputs_give_clear_errors():
    x, signals = inputs(0, batch=2)
    with pytest.raises(TypeError, match="torch.Tensor"):
        reduce_tensor(x.numpy(), "stride", keep=3)
    with pytest.raises(ValueError, match="float token vectors"):
        reduce_tensor(torch.ones(2, 3, 4, 5), "stride", keep=3)
    with pytest.raises(ValueError, match=r"keep must be a whole number in 1\.\.36"):
        reduce_tensor(x, "stride", keep=N + 1)
    with pytest.raises(ValueError, match="give exactly one of keep"):
        reduce_tensor(x, "stride")
    with pytest.raises(ValueError, match=r"cls_attention must have one entry per token, \(B, N\) with \(B, N\) = "
                                         r"\(2, 36\), got shape \(2, 35\)"):
        reduce_tensor(x, "visionzip", keep=4, cls_attention=signals["cls_attention"][:, :35])
    with pytest.raises(ValueError, match=r"keys must have one entry per token, \(B, N, d\)"):
        reduce_tensor(x, "tome", keep=4, keys=signals["keys"][:1])
    with pytest.raises(ValueError, match="needs the 'cls_attention' signal"):
        reduce_tensor(x, "prumerge", keep=4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        reduce_tensor(x, "cls-attention", keep=4, cls_attention=torch.full((2, N), float("nan")))
    with pytest.raises(TypeError, match="takes no option 'bogus'"):
        reduce_tensor(x, "tome", keep=4, bogus=1)
    with pytest.raises(ValueError, match="works on a token grid: pass token_grid"):
        reduce_tensor(x, "pool", keep=4)
    with pytest.raises(ValueError, match=r"token_grid \(5, 5\) does not hold the 36 tokens"):
        reduce_tensor(x, "pool", keep=4, token_grid=(5, 5))
    with pytest.raises(ValueError, match=r"sizes must have one entry per token, \(B, N\) with \(B, N\) = \(2, 36\)"):
        reduce_tensor(x, "tome", keep=4, sizes=torch.ones(2, 35))


def test_adaptive_prumerge_takes_one_image_at_a_time():
    x, signals = inputs(1, batch=2)
    with pytest.raises(ValueError, match="adaptive=True keeps a different count per image; reduce a batch of 2"):
        reduce_tensor(x, "prumerge+", adaptive=True, cls_attention=signals["cls_attention"])
    one = reduce_tensor(x[:1], "prumerge+", adaptive=True, cls_attention=signals["cls_attention"][:1])
    ref = vistok.reduce(vistok.Tokens.from_grid(x[0].numpy(), GRID), "prumerge+", adaptive=True,
                        cls_attention=signals["cls_attention"][0].numpy())
    np.testing.assert_array_equal(one.assign[0].numpy(), ref.source)


def test_tome_with_a_protected_token_batches_row_by_row():
    x, _ = inputs(4, batch=3)
    out = reduce_tensor(x, "tome", keep=6, protect=[0])
    for i in range(3):
        assert torch.equal(out.assign[i], reduce_tensor(x[i], "tome", keep=6, protect=[0]).assign[0])
    assert (out.assign[:, 0] == 0).all() and (out.sizes[:, 0] == 1).all()  # the protected token stays alone


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", vistok.reduce_methods())
def test_on_cuda_the_result_stays_there_and_equals_the_cpu(method):
    x, signals = inputs(9, batch=2, dtype=torch.float32)
    given = wanted(method, signals)
    cpu = reduce_tensor(x, method, token_grid=GRID, **count(method), **given)
    gpu = reduce_tensor(x.cuda(), method, token_grid=GRID, **count(method), **{k: v.cuda() for k, v in given.items()})
    assert gpu.values.device.type == "cuda" and gpu.assign.device.type == "cuda"
    assert torch.equal(gpu.assign.cpu(), cpu.assign)
    torch.testing.assert_close(gpu.values.cpu(), cpu.values, rtol=1e-4, atol=1e-5)
    half = reduce_tensor(x.cuda().half(), method, token_grid=GRID, **count(method),
                         **{k: v.cuda().half() for k, v in given.items()})
    assert half.values.dtype == torch.float16 and half.values.device.type == "cuda"


def test_pool_grid_option_is_llama_vids_not_the_token_grid():
    """pool's grid=g (LLaMA-VID's g x g output) passes through reduce_tensor beside the token grid."""
    x = torch.arange(36 * 2, dtype=torch.float64).reshape(1, 36, 2)
    out = reduce_tensor(x, "pool", token_grid=(6, 6), grid=2)
    ref = vistok.reduce(vistok.Tokens.from_grid(x[0].numpy(), (6, 6)), "pool", grid=2)
    assert out.values.shape == (1, 4, 2)
    np.testing.assert_allclose(out.values[0].numpy(), ref.values)
