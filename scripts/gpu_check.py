"""Check every tokenizer that runs a torch model on a CUDA GPU: ``device="cuda"`` in float32, float16 and
bfloat16 against the CPU float32 tokens of the bundled sample images, with timings.

``python scripts/gpu_check.py`` (from the repository root; ``--model clip=/path`` gives a real checkpoint). Those that
need a checkpoint (clip, siglip, vit, sd-vae) get the tests' tiny random ones from ``tests/tiny_models.py``,
built in a temporary folder; ``learned`` opens the bundled fsq-natural64 file. Without CUDA it says so and
exits 0. Columns: ``max_abs`` and ``rel`` (mean |diff| / mean |cpu|) over all images, the worst image; for ids,
``agree`` is the share of ids equal to the CPU's; ``load_s`` and ``encode_ms`` per image (after one warm-up).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import vistok
from vistok.samples import sample_images

DTYPES = ("float32", "float16", "bfloat16")


def _model_options(names: list[str], given: dict[str, str], root: Path) -> dict[str, dict[str, Any]]:
    """Load options per tokenizer: ``--model`` ones, else a tiny test checkpoint where one is needed."""
    from vistok.weights import bundled

    options: dict[str, dict[str, Any]] = {name: {"model": path} for name, path in given.items()}
    options.setdefault("learned", {"path": str(bundled("fsq-natural64.safetensors"))})
    needed = [n for n in ("clip", "siglip", "vit", "sd-vae") if n in names and n not in options]
    if needed:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tiny_models import tiny_dinov2_folder, tiny_hf_folder, tiny_vae_folder

        build = {"clip": lambda: tiny_hf_folder(root / "clip", "clip"),
                 "siglip": lambda: tiny_hf_folder(root / "siglip", "siglip"),
                 "vit": lambda: tiny_dinov2_folder(root / "vit", registers=2),
                 "sd-vae": lambda: tiny_vae_folder(root / "sd-vae")}
        for name in needed:
            options[name] = {"model": str(build[name]())}
    return options


def _compare(reference: list[Any], tokens: list[Any]) -> str:
    """The worst image's difference from the CPU float32 tokens, as table cells."""
    if reference[0].is_hard:
        agree = min(float((a.values == b.values).mean()) for a, b in zip(reference, tokens))
        return f"{'-':>9} {'-':>8} {agree:>6.3f}"
    max_abs = max(float(np.abs(a.values - b.values).max()) for a, b in zip(reference, tokens))
    rel = max(float(np.abs(a.values - b.values).mean() / max(np.abs(a.values).mean(), 1e-12))
              for a, b in zip(reference, tokens))
    return f"{max_abs:>9.2e} {rel:>8.2e} {'-':>6}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="tokenizers to check (default: every one with a device option)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="checkpoint for NAME")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("CUDA is not available here (torch.cuda.is_available() is False): nothing to check.")
        return 0
    names = args.names or [n for n in vistok.list_tokenizers() if "device" in vistok.tokenizer_info(n).config_fields()]
    images = sample_images()
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {len(images)} sample images")
    print(f"{'tokenizer':<20} {'dtype':<9} {'max_abs':>9} {'rel':>8} {'agree':>6} {'load_s':>7} {'encode_ms':>10}")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        options = _model_options(names, dict(m.split("=", 1) for m in args.model), Path(tmp))
        for name in names:
            base = options.get(name, {})
            reference = vistok.load(name, **base).encode(images)
            for dtype in DTYPES:
                try:
                    start = time.perf_counter()
                    tok = vistok.load(name, **base, device="cuda", dtype=dtype)
                    tok.encode(images[:1])  # loads the weights; the first CUDA pass also picks its kernels
                    loaded = time.perf_counter() - start
                    start = time.perf_counter()
                    tokens = tok.encode(images)
                    per_image = (time.perf_counter() - start) / len(images) * 1000
                    print(f"{name:<20} {dtype:<9} {_compare(reference, tokens)} {loaded:>7.2f} {per_image:>10.1f}")
                except Exception as err:  # noqa: BLE001 - one line per failure, then the next
                    failures += 1
                    print(f"{name:<20} {dtype:<9} FAILED {type(err).__name__}: {str(err).splitlines()[0][:150]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
