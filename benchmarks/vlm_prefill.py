"""What fewer visual tokens save inside a VLM: prefill time and KV cache of a LLaVA-1.5 model, patched by vistok.

A ``LlavaForConditionalGeneration`` with random weights at real sizes (``--size real``): the CLIP ViT-L/14-336
vision tower (1024 wide, 24 layers, 16 heads, MLP 4096, 336 px, patch 14: 576 patch tokens), LLaVA-1.5's
two-layer GELU projector, features from the second-to-last tower layer without CLS (``vision_feature_layer=-2``,
strategy ``default``), and a language model with Qwen2-0.5B's dimensions (896 wide, 24 layers, 14 heads, 2 KV
heads, MLP 4864, vocabulary 151936, tied embeddings). ``--size 7b`` swaps in Llama-2-7B's dimensions (4096 wide,
32 layers, 32 heads, MLP 11008, vocabulary 32064: LLaVA-1.5-7B; for a GPU), ``--size small`` tiny ones (a smoke
run in seconds; the tower keeps 336 px and patch 14, so the image still gives 576 tokens). Weights are random
(normal, std 0.02): time and memory do not depend on their values.

The prompt is LLaVA-1.5's layout: 35 text tokens, the image's 576 placeholders, 65 more text tokens (100 text
tokens, 676 positions); ``pixel_values`` are the bundled ``coffee.jpg`` through CLIP's own preprocessing.
Prefill is one forward with ``use_cache=True`` and ``logits_to_keep=1`` (as ``generate`` runs it) under
``torch.inference_mode()``: the time of the whole call (vision tower, reduction, language model) and of the
language model alone (hooks on ``model.model.language_model``), median of ``--repeats`` runs after a warm-up.
Every configuration runs in every round, in turn, so a slowdown of a shared machine hits them alike. The
unpatched model is the baseline, in the same run; each method (``vistok.vlm.patch(model, method, keep=K)``;
FastV with ``layer=2``) runs at 144 and 64 visual tokens (``--keeps``).

Ideal ratios come from :func:`vistok.budget.cost` with the model's own LM shape
(:meth:`LMConfig.from_transformers`): prefill FLOPs of the 676 positions over those of the 100 + K left (FastV:
its first ``layer`` layers still see all 676), and the same for KV-cache bytes. The ideal of the whole prefill
keeps the vision tower's measured time (unpatched prefill minus its LM time: no method shortens the tower) and
divides the LM's by its ideal ratio. Measured KV bytes are the
keys and values the returned cache holds (sum of their ``nbytes``); the prediction must equal them. Memory:
on a GPU the peak of ``torch.cuda.max_memory_allocated`` above what was allocated before the call; on CPU
the peak process RSS during the call above the RSS before it (sampled every 2 ms; the allocator keeps memory
it freed, so this understates). "within 15%" is yes when the LM speed-up and the KV saving are both at
least 85% of their ideal ratios and the KV bytes equal the prediction.

On CPU torch runs on ``--threads`` threads, 1 by default: on a shared 2-core machine every parallel operator
waits for its second thread to be scheduled, a few milliseconds each time, and a 24-layer LM runs about 500
operators per prefill, so with 2 threads a fixed ~3-4 s is added to every prefill (profiled: an RMSNorm's
``pow`` on 164x896 took 7 ms), twice the whole reduced LM, and the speed-ups shrink towards 1.

    python benchmarks/vlm_prefill.py --size small --repeats 1     # smoke run, seconds
    python benchmarks/vlm_prefill.py                              # --size real on CPU, about 5 minutes
    python benchmarks/vlm_prefill.py --size 7b --device cuda      # LLaVA-1.5-7B size, bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import table  # noqa: E402

import vistok.vlm  # noqa: E402
from vistok.budget.cost import LMConfig, cost  # noqa: E402

METHODS = ("pool", "visionzip", "fastv", "tome")
FASTV_LAYER = 2
TEXT_BEFORE, TEXT_AFTER = 35, 65  # LLaVA-1.5's system prompt + "USER: " before the image, the question after

CLIP_L_336 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                  image_size=336, patch_size=14, projection_dim=768)
SIZES: dict[str, dict[str, Any]] = {
    "small": dict(vision=dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                              image_size=336, patch_size=14, projection_dim=64),
                  text_class="Qwen2Config", image_token=1000,
                  text=dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=128, vocab_size=1024, tie_word_embeddings=True)),
    "real": dict(vision=CLIP_L_336, text_class="Qwen2Config", image_token=151646,  # Qwen2-0.5B's dimensions
                 text=dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                           intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                           max_position_embeddings=32768)),
    "7b": dict(vision=CLIP_L_336, text_class="LlamaConfig", image_token=32000,  # LLaVA-1.5-7B (Llama-2-7B LM)
               text=dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         intermediate_size=11008, vocab_size=32064, tie_word_embeddings=False,
                         max_position_embeddings=4096)),
}


# -- the model and its inputs -------------------------------------------------------------------------------

def build_model(size: str, device: str, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random-weight LLaVA-1.5-architecture model of ``size`` on ``device`` in ``dtype``, in eval mode."""
    import transformers
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers.initialization import no_init_weights

    spec = SIZES[size]
    text = getattr(transformers, spec["text_class"])(**spec["text"])
    config = LlavaConfig(vision_config=CLIPVisionConfig(**spec["vision"]), text_config=text,
                         image_token_index=spec["image_token"], projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         tie_word_embeddings=spec["text"]["tie_word_embeddings"])
    with no_init_weights(), torch.device(device):  # transformers' own init of 0.8-7B weights takes minutes
        model = LlavaForConditionalGeneration(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1 and "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    return model.to(dtype=dtype).eval()


def build_inputs(model: Any, device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` (text, 576 placeholders, text) and ``pixel_values`` of coffee.jpg, CLIP-preprocessed."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    from vistok.samples import sample_images

    vision = model.config.vision_config
    side = vision.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    image = Image.open(next(p for p in sample_images() if p.name == "coffee.jpg")).convert("RGB")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    image_id = model.config.image_token_id
    n_image = (side // vision.patch_size) ** 2
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(0, image_id, (TEXT_BEFORE + TEXT_AFTER,), generator=generator)
    ids = torch.cat([text[:TEXT_BEFORE], torch.full((n_image,), image_id), text[TEXT_BEFORE:]])[None]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "pixel_values": pixels.to(device, dtype)}


# -- one prefill --------------------------------------------------------------------------------------------

@dataclass
class Prefill:
    """What one prefill measured."""

    seconds: float
    lm_seconds: float
    lm_positions: int          # length of the sequence the language model received
    kv_lengths: list[int]      # positions each layer's cache holds
    kv_bytes: int
    peak_bytes: int


class _LMTimer:
    """Times ``model.model.language_model`` (forward pre-hook and hook) and records its input length."""

    def __init__(self, model: Any, sync: Any) -> None:
        self.sync = sync
        self.start = self.end = 0.0
        self.positions = 0
        lm = model.model.language_model
        self.hooks = [lm.register_forward_pre_hook(self._pre, with_kwargs=True), lm.register_forward_hook(self._post)]

    def _pre(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.sync()
        embeds = kwargs.get("inputs_embeds")
        self.positions = int(embeds.shape[1]) if embeds is not None else 0
        self.start = time.perf_counter()

    def _post(self, module: Any, args: tuple, output: Any) -> None:
        self.sync()
        self.end = time.perf_counter()


class _RSSPeak:
    """Peak resident set size of this process while the ``with`` block runs, sampled on a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.base = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> _RSSPeak:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def cache_bytes(cache: Any) -> tuple[int, list[int]]:
    """Bytes of the keys and values a transformers cache holds, and each layer's cached length."""
    total, lengths = 0, []
    for layer in cache.layers:
        total += layer.keys.nbytes + layer.values.nbytes
        lengths.append(int(layer.keys.shape[-2]))
    return total, lengths


def prefill(model: Any, inputs: dict[str, torch.Tensor], timer: _LMTimer) -> Prefill:
    """One forward with ``use_cache=True``; the cache is measured while it is still held."""
    cuda = inputs["input_ids"].is_cuda
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss = _RSSPeak() if not cuda else None
    with torch.inference_mode():
        if rss:
            rss.__enter__()
        start = time.perf_counter()
        out = model(**inputs, use_cache=True, logits_to_keep=1)
        timer.sync()
        seconds = time.perf_counter() - start
        if rss:
            rss.__exit__()
    peak = torch.cuda.max_memory_allocated() - base if cuda else rss.peak - rss.base
    kv, lengths = cache_bytes(out.cache if hasattr(out, "cache") else out.past_key_values)
    del out
    return Prefill(seconds, timer.end - timer.start, timer.positions, lengths, kv, peak)


# -- configurations and ideal ratios ------------------------------------------------------------------------

@dataclass
class Config:
    method: str            # "none" for the unpatched model
    keep: int              # visual tokens the LM keeps (the full count for "none")
    runs: list[Prefill] = field(default_factory=list)

    def patch(self, model: Any) -> Any:
        if self.method == "none":
            return None
        options = {"layer": FASTV_LAYER} if self.method == "fastv" else {}
        return vistok.vlm.patch(model, self.method, keep=self.keep, **options)

    def layer_positions(self, text: int, visual: int, layers: int) -> list[int]:
        """Positions each LM layer is expected to hold (FastV: all of them in its first layers)."""
        reduced = text + self.keep
        full = FASTV_LAYER if self.method == "fastv" else 0
        return [text + visual] * full + [reduced] * (layers - full)


def predicted(lm: LMConfig, positions: list[int], dtype: torch.dtype) -> tuple[int, int]:
    """(prefill FLOPs, KV-cache bytes) from :func:`vistok.budget.cost`, for per-layer sequence lengths."""
    flops = kv = 0
    for n in sorted(set(positions)):
        part = cost(n, dataclasses.replace(lm, layers=positions.count(n)), dtype=dtype)
        flops, kv = flops + part.prefill_flops, kv + part.kv_cache_bytes
    return flops, kv


def run(size: str, device: str, dtype: torch.dtype, repeats: int, warmup: int, keeps: Sequence[int],
        log: Any = print) -> tuple[list[list[str]], dict[str, Any]]:
    """Build, measure every configuration ``repeats`` times in turn; the table rows and run facts."""
    torch.manual_seed(0)
    begin = time.perf_counter()
    model = build_model(size, device, dtype)
    inputs = build_inputs(model, device, dtype)
    built = time.perf_counter() - begin
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timer = _LMTimer(model, sync)
    lm = LMConfig.from_transformers(model.config, name=f"{size} LM")
    visual = int((inputs["input_ids"] == model.config.image_token_id).sum())
    text = int(inputs["input_ids"].shape[1]) - visual
    configs = [Config("none", visual)] + [Config(m, k) for k in keeps for m in METHODS]
    log(f"built the {size} model in {built:.0f} s; {len(configs)} configurations, {warmup} warm-up + "
        f"{repeats} timed rounds")

    def measure(config: Config) -> Prefill:
        handle = config.patch(model)
        try:
            return prefill(model, inputs, timer)
        finally:
            if handle is not None:
                handle.unpatch()

    for _ in range(warmup):
        for config in configs:
            measure(config)
    for round_ in range(repeats):
        for config in configs:
            config.runs.append(measure(config))
        log(f"round {round_ + 1}/{repeats} done at {time.perf_counter() - begin:.0f} s")
    rows = table_rows(configs, lm, dtype, text, visual)
    facts = {"build_s": built, "vision_ms": 1e3 * (med(configs[0], "seconds") - med(configs[0], "lm_seconds")),
             "lm": lm, "text": text, "visual": visual}
    return rows, facts


def med(config: Config, name: str) -> float:
    return statistics.median(getattr(r, name) for r in config.runs)


def table_rows(configs: list[Config], lm: LMConfig, dtype: torch.dtype, text: int, visual: int) -> list[list[str]]:
    """One row per configuration, ratios against the first (unpatched) one."""
    base = configs[0]
    base_flops, base_kv = predicted(lm, base.layer_positions(text, visual, lm.layers), dtype)
    base_total, base_lm = med(base, "seconds"), med(base, "lm_seconds")
    rows = []
    for config in configs:
        layers = config.layer_positions(text, visual, lm.layers)
        flops, kv_pred = predicted(lm, layers, dtype)
        last = config.runs[-1]
        ideal, kv_ideal = base_flops / flops, base_kv / kv_pred
        ideal_total = base_total / (base_total - base_lm + base_lm / ideal)  # the tower's time does not shrink
        lm_speedup = base_lm / med(config, "lm_seconds")
        kv_saving = base.runs[-1].kv_bytes / last.kv_bytes
        exact = last.kv_bytes == kv_pred and last.kv_lengths == layers
        ok = exact and lm_speedup >= 0.85 * ideal and kv_saving >= 0.85 * kv_ideal
        positions = (f"{layers[0]}/{layers[-1]}" if layers[0] != layers[-1] else str(layers[0]))
        if last.kv_lengths != layers or last.lm_positions != layers[0]:
            positions += f" (measured {last.lm_positions}, cache {min(last.kv_lengths)}-{max(last.kv_lengths)})"
        rows.append([
            "unpatched" if config.method == "none" else config.method, str(config.keep), positions,
            f"{1e3 * med(config, 'seconds'):.0f}", f"{1e3 * med(config, 'lm_seconds'):.0f}",
            f"{base_total / med(config, 'seconds'):.2f}x / {ideal_total:.2f}x", f"{lm_speedup:.2f}x / {ideal:.2f}x",
            f"{lm_speedup / ideal:.0%}", f"{last.kv_bytes / 2**20:.2f}", f"{kv_pred / 2**20:.2f}",
            f"{kv_saving:.2f}x / {kv_ideal:.2f}x", f"{max(r.peak_bytes for r in config.runs) / 2**20:.0f}",
            "yes" if ok else ("no: KV differs" if not exact else "no"),
        ])
    return rows


HEADER = ["method", "visual", "LM positions", "prefill ms", "LM ms", "speed-up / ideal", "LM speed-up / ideal",
          "LM / ideal", "KV MiB", "KV predicted", "KV saving / ideal", "peak MiB", "within 15%"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--size", choices=list(SIZES), default="real")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (median kept); default 3 for --size real on CPU, else 5")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (every configuration)")
    parser.add_argument("--keeps", default="144,64", help="visual tokens kept, comma-separated")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; 0 keeps torch's choice); see the module docstring")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    try:
        keeps = [int(k) for k in args.keeps.split(",")]
    except ValueError:
        parser.error(f"--keeps takes comma-separated integers, got {args.keeps!r}")
    if args.size == "7b" and not args.device.startswith("cuda"):
        parser.error("--size 7b needs a GPU (--device cuda): 7B parameters in float32 need 28 GB and hours on CPU")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible; use --device cpu")
    if args.threads and not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    repeats = args.repeats or (3 if args.size == "real" and not gpu else 5)
    rows, facts = run(args.size, args.device, dtype, repeats, args.warmup, keeps,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    where = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()}, " \
                                                     f"{torch.get_num_threads()} torch threads"
    lm = facts["lm"]
    title = (f"Prefill of a LLaVA-1.5-architecture model, --size {args.size} ({lm.layers}-layer LM, hidden "
             f"{lm.hidden}, {lm.kv_heads} KV heads), {str(dtype).removeprefix('torch.')} on {where}; "
             f"{facts['text']} text + {facts['visual']} image tokens; median of {repeats}; vision tower "
             f"{facts['vision_ms']:.0f} ms of the unpatched prefill")
    print(table(title, HEADER, rows, args.markdown))


if __name__ == "__main__":
    main()
