"""The main job on the bundled samples: tokenize, decode, measure and draw, written to one folder."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vistok._json import dumps
from vistok.batch import tokenize_files
from vistok.budget.report import CountReport, count_files, histogram
from vistok.metrics import psnr
from vistok.registry import load
from vistok.samples import sample_images
from vistok.viz import panel_strip, show, working_image

__all__ = ["DemoRow", "EncoderRow", "LearnedRow", "DemoReport", "run_demo", "ENCODERS"]

PATCH_DIMS = (8, 32, 128, 768)
BUDGET_MODELS = ("llava-1.5-7b", "llava-v1.6-mistral-7b", "qwen2.5-vl-7b-instruct", "internvl2.5-8b",
                 "gemma-3-4b-it", "gpt-4o")


@dataclass
class DemoRow:
    image: str
    size: tuple[int, int]
    grid_tokens: int
    grid_bits: float
    grid_psnr: float
    patch_tokens: int
    patch_psnr: dict[int, float]


#: The two offline pretrained encoders the demo runs (when vistok[encoders] is installed).
ENCODERS = ("efficientnet-lite0", "focus-vit-s14")


@dataclass
class EncoderRow:
    image: str
    cnn_tokens: str
    top_label: str
    top_score: float
    vit_tokens: str
    salient_tokens: int
    vit_count: int


@dataclass
class LearnedRow:
    image: str
    tokenizer: str
    grid: str
    bits: float
    bits_per_pixel: float
    psnr: float


@dataclass
class DemoReport:
    out_dir: Path
    rows: list[DemoRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    budget: CountReport | None = None
    encoders: list[EncoderRow] = field(default_factory=list)
    encoders_skipped: str | None = None
    learned: list[LearnedRow] = field(default_factory=list)
    learned_skipped: str | None = None


def run_demo(out_dir: str | os.PathLike = "vistok-demo", on_step: Callable[[str], None] | None = None) -> DemoReport:
    """Tokenize every bundled sample with ``grid`` and ``patch``; write token files, pictures and a summary.

    Files: ``grid.safetensors`` / ``patch.safetensors`` (all samples), ``<image>-grid.png`` and
    ``<image>-patch.png`` (grid | tokens as colours | decoded), ``<image>-patch-dims.png`` (decoded with
    8/32/128/768 principal components), ``<image>-efficientnet-lite0.png`` and ``<image>-focus-vit-s14.png``
    (pretrained encoders' feature tokens, ImageNet top-1, saliency and attention from CLS; skipped with a note
    when the encoders are not installed), the samples' token counts in six VLMs with their KV cache
    (``budget-histogram.png``), and ``summary.json`` (strict JSON: an infinite PSNR, i.e. an exact
    reconstruction, is written as null).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = DemoReport(out.resolve())
    samples = sample_images()
    grid, patch = load("grid"), load("patch")
    grid_batch, patch_batch = tokenize_files(samples, grid), tokenize_files(samples, patch)
    for name, batch in (("grid", grid_batch), ("patch", patch_batch)):
        batch.save(out / f"{name}.safetensors")
        report.files.append(out / f"{name}.safetensors")
    for path in samples:
        key, stem = str(path), path.stem
        g, p = grid_batch.tokens[key], patch_batch.tokens[key]
        for name, tokenizer, tokens in (("grid", grid, g), ("patch", patch, p)):
            target = out / f"{stem}-{name}.png"
            show(path, tokenizer, tokens).save(target)
            report.files.append(target)
        grid_recon = grid.decode(g)
        reference = working_image(path, grid, grid_recon.size)
        sweep, scores = [reference], {}
        for dim in PATCH_DIMS:
            reduced = load("patch", dim=dim)
            recon = reduced.decode(reduced.encode(reference))
            scores[dim] = psnr(reference, recon)
            sweep.append(recon)
        titles = ["original (working size)"] + [f"{d} dims: {scores[d]:.1f} dB" for d in PATCH_DIMS]
        target = out / f"{stem}-patch-dims.png"
        panel_strip(sweep, titles, height=240).save(target)
        report.files.append(target)
        report.rows.append(DemoRow(
            image=path.name, size=tuple(g.image_size), grid_tokens=len(g), grid_bits=float(g.bits),
            grid_psnr=psnr(reference, grid_recon), patch_tokens=len(p), patch_psnr=scores,
        ))
        if on_step is not None:
            on_step(path.name)
    _run_encoders(samples, out, report)
    _run_learned(samples, out, report)
    report.budget = count_files(samples, BUDGET_MODELS)
    histogram(report.budget).save(out / "budget-histogram.png")
    report.files.append(out / "budget-histogram.png")
    summary = out / "summary.json"
    budget = {Path(f).name: {m: {"image_tokens": c.image_tokens, "total_positions": c.total_positions,
                                 "kv_cache_bytes": report.budget.kv_bytes[f][m]} for m, c in per.items()}
              for f, per in report.budget.counts.items()}
    summary.write_text(dumps({"tokenizers": [asdict(r) for r in report.rows],
                                   "encoders": [asdict(r) for r in report.encoders],
                                   "learned": [asdict(r) for r in report.learned], "budget": budget}, indent=2))
    report.files.append(summary)
    return report


def _run_encoders(samples: list[Path], out: Path, report: DemoReport) -> None:
    """Soft tokens of the two offline pretrained encoders, their pictures and a row per image."""
    try:
        cnn, vit = (load(name) for name in ENCODERS)
        for tok in (cnn, vit):
            tok.check()
    except (ImportError, FileNotFoundError) as exc:
        report.encoders_skipped = f"pretrained encoders skipped: {exc}"
        return
    cnn_tokens, vit_tokens = cnn.encode(list(samples)), vit.encode(list(samples))
    for path, c, v in zip(samples, cnn_tokens, vit_tokens):
        for tok, tokens in ((cnn, c), (vit, v)):
            target = out / f"{path.stem}-{tok.name}.png"
            show(path, tok, tokens).save(target)
            report.files.append(target)
        names = c.meta.get("label_names") or ["?"]
        report.encoders.append(EncoderRow(
            image=path.name, cnn_tokens=f"{c.grid[0]}x{c.grid[1]} x {c.dim}", top_label=names[0].split(",")[0],
            top_score=float(c.extras["scores"][0]), vit_tokens=f"{v.grid[0]}x{v.grid[1]} x {v.dim}",
            salient_tokens=int((v.extras["saliency"] > 0.5).sum()), vit_count=len(v),
        ))


def _run_learned(samples: list[Path], out: Path, report: DemoReport) -> None:
    """The shipped learned tokenizers: ids and their decoded picture (``<image>-fsq-natural64.png``: the image at
    its working size | decoded from 16x16-per-64px ids), and ``fsq-fmnist`` on the same images at 28 px."""
    try:
        tokenizers = [load(name) for name in ("fsq-natural64", "fsq-fmnist")]
        for tok in tokenizers:
            tok.check()
    except (ImportError, FileNotFoundError) as exc:
        report.learned_skipped = f"learned tokenizers skipped: {exc} (pip install 'vistok[learned]')"
        return
    for tok in tokenizers:
        for path, tokens in zip(samples, tok.encode(list(samples))):
            decoded = tok.decode(tokens)
            reference = working_image(path, tok, decoded.size)
            score = psnr(reference, decoded)
            w, h = decoded.size
            report.learned.append(LearnedRow(path.name, tok.name, f"{tokens.grid[0]}x{tokens.grid[1]}",
                                             float(tokens.bits), float(tokens.bits) / (w * h), score))
            target = out / f"{path.stem}-{tok.name}.png"
            panel_strip([reference, decoded], ["working size", f"{tok.name}: {len(tokens)} ids, {score:.1f} dB"],
                        height=240).save(target)
            report.files.append(target)
