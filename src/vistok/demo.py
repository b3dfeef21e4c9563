"""The main job on the bundled samples: tokenize, decode, measure and draw, written to one folder."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vistok.batch import tokenize_files
from vistok.metrics import psnr
from vistok.registry import load
from vistok.samples import sample_images
from vistok.viz import panel_strip, show, working_image

__all__ = ["DemoRow", "DemoReport", "run_demo"]

PATCH_DIMS = (8, 32, 128, 768)


@dataclass
class DemoRow:
    image: str
    size: tuple[int, int]
    grid_tokens: int
    grid_bits: float
    grid_psnr: float
    patch_tokens: int
    patch_psnr: dict[int, float]


@dataclass
class DemoReport:
    out_dir: Path
    rows: list[DemoRow] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


def run_demo(out_dir: str | os.PathLike = "vistok-demo", on_step: Callable[[str], None] | None = None) -> DemoReport:
    """Tokenize every bundled sample with ``grid`` and ``patch``; write token files, pictures and a summary.

    Files: ``grid.safetensors`` / ``patch.safetensors`` (all samples), ``<image>-grid.png`` and
    ``<image>-patch.png`` (grid | tokens as colours | decoded), ``<image>-patch-dims.png`` (decoded with
    8/32/128/768 principal components), and ``summary.json``.
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
    summary = out / "summary.json"
    summary.write_text(json.dumps([asdict(r) for r in report.rows], indent=2))
    report.files.append(summary)
    return report
