"""The ``demo`` command: the main job on the bundled sample images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vistok.cli._common import (
    JsonOpt,
    db,
    err,
    escape,
    human_bytes,
    out,
    print_json,
    progress_bar,
)


def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs.")] = Path("vistok-demo"),
    as_json: JsonOpt = False,
) -> None:
    """The main job on the bundled sample images: tokenize, decode, measure and draw.

    Writes token files, PNGs (grid | tokens | decoded) and summary.json to a folder and prints where.
    """
    from vistok.demo import PATCH_DIMS, run_demo
    from vistok.samples import sample_images

    total = len(sample_images())
    with progress_bar(total) as progress:
        task = progress.add_task("demo", total=total)
        report = run_demo(out_dir, on_step=lambda _: progress.advance(task))
    if as_json:  # summary.json (strict JSON) and where everything went
        import json

        summary = json.loads((report.out_dir / "summary.json").read_text())
        print_json({**summary, "out_dir": report.out_dir, "files": report.files,
                    "notes": [n for n in (report.encoders_skipped, report.learned_skipped) if n]})
        return
    table = Table(title="vistok demo: grid (hard) and patch (soft) tokens of the bundled samples")
    table.add_column("image")
    table.add_column("size", justify="right")
    table.add_column("grid tokens", justify="right")
    table.add_column("grid bits", justify="right")
    table.add_column("grid PSNR", justify="right")
    table.add_column("patch tokens", justify="right")
    for dim in PATCH_DIMS:
        table.add_column(f"PSNR {dim}d", justify="right")
    for row in report.rows:
        table.add_row(row.image, f"{row.size[0]}x{row.size[1]}", str(row.grid_tokens), f"{row.grid_bits:,.0f}",
                      f"{row.grid_psnr:.1f}", str(row.patch_tokens),
                      *[db(row.patch_psnr[d]) for d in PATCH_DIMS])
    out.print(table)
    out.print(f"PSNR in dB against the image at the tokenizer's working size ({'inf'} = exact).")
    if report.encoders:
        enc = Table(title="pretrained encoders (offline weights): soft tokens, ImageNet top-1, salient tokens")
        for column in ("image", "efficientnet-lite0 tokens", "top-1 (score)", "focus-vit-s14 tokens",
                       "salient (>0.5)"):
            enc.add_column(column, justify="left" if column in ("image", "top-1 (score)") else "right")
        for row in report.encoders:
            enc.add_row(row.image, row.cnn_tokens, f"{row.top_label} ({row.top_score:.2f})", row.vit_tokens,
                        f"{row.salient_tokens} of {row.vit_count}")
        out.print(enc)
    elif report.encoders_skipped:
        err.print(f"[yellow]note:[/yellow] {escape(report.encoders_skipped)}")
    if report.learned:
        learned = Table(title="learned tokenizers (shipped): ids -> decoded picture")
        for column in ("image", "tokenizer", "ids", "bits", "bits/pixel", "PSNR"):
            learned.add_column(column, justify="left" if column in ("image", "tokenizer") else "right")
        for row in report.learned:
            learned.add_row(row.image, row.tokenizer, row.grid, f"{row.bits:,.0f}", f"{row.bits_per_pixel:.3f}",
                            f"{row.psnr:.1f}")
        out.print(learned)
        out.print("fsq-natural64 never saw camera, chelsea or coffee (held out); the other samples were among its "
                  "training photos. fsq-fmnist was trained on 28x28 clothing: these photos are outside its domain.")
    elif report.learned_skipped:
        err.print(f"[yellow]note:[/yellow] {escape(report.learned_skipped)}")
    if report.budget is not None:
        budget = Table(title="what the same images cost in VLMs: image tokens (KV cache, bf16)")
        budget.add_column("image")
        for model in report.budget.models:
            budget.add_column(model, justify="right")
        for key, per in report.budget.counts.items():
            budget.add_row(Path(key).name, *[f"{per[m].image_tokens:,} ({human_bytes(report.budget.kv_bytes[key][m])})"
                                             for m in report.budget.models])
        out.print(budget)
    out.print(f"wrote {len(report.files)} files to [bold]{report.out_dir}[/bold]")
