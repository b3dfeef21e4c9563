"""Commands on what images cost in VLMs: count, fit, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from vistok.cli._common import err, human_bytes, out, parse_config, progress_bar, report_failures, yes

ModelConfigOpt = Annotated[
    Optional[list[str]],
    typer.Option("--config", "-c", metavar="KEY=VALUE", help="Model option, e.g. -c max_pixels=1003520."),
]


def shape_of(breakdown: dict[str, Any]) -> str:
    """How a model cut the image: ``"672x672, 5 tiles (2x2), +thumb"``."""
    parts = []
    if "resized" in breakdown:
        parts.append("{}x{}".format(*breakdown["resized"]))
    if breakdown.get("tiles"):
        grid = breakdown.get("tile_grid")
        parts.append(f"{breakdown['tiles']} tiles" + (" ({}x{})".format(*grid) if grid else ""))
    if breakdown.get("thumbnail"):
        parts.append("+thumb")
    if breakdown.get("cross_attention_states"):
        parts.append(f"{breakdown['cross_attention_states']} x-attn states")
    return ", ".join(parts)


def count_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (only headers are read).")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="VLM name, alias or hub id; repeatable.")],
    config: ModelConfigOpt = None,
    dtype: Annotated[str, typer.Option(help="KV-cache dtype for the memory column.")] = "bfloat16",
    per_image: Annotated[Optional[bool], typer.Option(
        "--per-image/--summary-only", help="Per-image rows (default: on for up to 50 images).")] = None,
    hist: Annotated[Optional[Path], typer.Option(help="Write a histogram of tokens per model to this PNG.")] = None,
) -> None:
    """How many tokens each image becomes in each model, and the KV cache it takes.

    Counts follow each model's own preprocessing (see `vistok models`). For several images a summary gives p50/p95/max tokens and the total KV cache. Unreadable files are reported and skipped (exit code 1).
    """
    from vistok.budget.models import resolve_model
    from vistok.budget.report import count_files, histogram
    from vistok.images import find_images

    try:
        names = [resolve_model(m).name for m in model]
    except KeyError as exc:
        err.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2) from None
    options = parse_config(config)
    total = sum(len(find_images([p])) if p.exists() else 1 for p in images)
    with progress_bar(total) as progress:
        task = progress.add_task("counting", total=total)
        try:
            report = count_files(images, names, options=options, dtype=dtype,
                                 on_file=lambda _: progress.advance(task))
        except (TypeError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    if per_image is None:
        per_image = len(report.counts) <= 50
    if per_image and report.counts:
        table = Table(title="image tokens per model")
        for column in ("image", "size", "model", "image tokens", "positions", "how", f"KV cache ({dtype})"):
            table.add_column(column, justify="left" if column in ("image", "model", "how") else "right",
                             overflow="fold")
        for key, per in report.counts.items():
            for name, counted in per.items():
                table.add_row(key, "{}x{}".format(*counted.image_size), name, f"{counted.image_tokens:,}",
                              f"{counted.total_positions:,}", shape_of(counted.breakdown),
                              human_bytes(report.kv_bytes[key][name]))
        out.print(table)
    if len(report.counts) > 1 or not per_image:
        table = Table(title=f"summary over {len(report.counts)} image(s)")
        for column in ("model", "images", "p50", "p95", "max", "mean", "total tokens", f"total KV ({dtype})"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in report.summary():
            table.add_row(row["model"], str(row["images"]), f"{row['p50']:,.0f}", f"{row['p95']:,.0f}",
                          f"{row['max']:,}", f"{row['mean']:,.1f}", f"{row['total_tokens']:,}",
                          human_bytes(row["total_kv_bytes"]))
        out.print(table)
    if hist is not None and report.counts:
        hist.parent.mkdir(parents=True, exist_ok=True)
        histogram(report).save(hist)
        out.print(f"wrote histogram to {hist}")
    report_failures(report.errors)


def fit_command(
    image: Annotated[Path, typer.Argument(help="The image to fit.")],
    model: Annotated[str, typer.Option("--model", "-m", help="VLM name, alias or hub id.")],
    budget: Annotated[int, typer.Option(help="Most image tokens allowed.")],
    config: ModelConfigOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the resized image here.")] = None,
) -> None:
    """Make an image fit a token budget: the largest resize, a model option, or reducing tokens later."""
    from PIL import Image

    from vistok.budget import fit
    from vistok.images import ImageError, open_image

    try:
        result = fit(image, model, budget, **parse_config(config))
    except KeyError as exc:
        err.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2) from None
    except ImageError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except (TypeError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    o = result.original
    table = Table(title=f"{image.name} in {result.model}, budget {budget:,} image tokens")
    for column in ("way", "size", "setting", "image tokens", "within budget"):
        table.add_column(column, justify="right" if column in ("image tokens",) else "left")
    table.add_row("as is", "{}x{}".format(*o.image_size), "-", f"{o.image_tokens:,}", yes(o.image_tokens <= budget))
    if not result.fits_already:
        if result.resize is not None and result.resized is not None:
            table.add_row("resize", "{}x{}".format(*result.resize), "aspect kept", f"{result.resized.image_tokens:,}",
                          yes(True))
        else:
            table.add_row("resize", "-", "no size fits", "-", yes(False))
        if result.option is not None and result.option_count is not None:
            setting = ", ".join(f"{k}={v}" for k, v in result.option.items())
            table.add_row("model option", "{}x{}".format(*o.image_size), setting,
                          f"{result.option_count.image_tokens:,}", yes(True))
        table.add_row("reduce later", "{}x{}".format(*o.image_size), f"keep {result.keep_fraction:.0%}",
                      f"{budget:,}", yes(True))
    out.print(table)
    for note in result.notes:
        out.print(f"- {note}")
    if out_file is not None:
        if result.resize is None:
            err.print("[red]error:[/red] no resize fits this budget, so there is no image to write")
            raise typer.Exit(1)
        resized = open_image(image).resize(result.resize, Image.Resampling.LANCZOS)
        out_file.parent.mkdir(parents=True, exist_ok=True)
        resized.save(out_file)
        out.print(f"wrote {out_file} ({result.resize[0]}x{result.resize[1]})")


def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style pattern, e.g. 'qwen*'.")] = "*",
) -> None:
    """List the VLMs vistok can count, with their family rule, LM preset and how the rule is proven."""
    from vistok.budget.core import get_family
    from vistok.budget.models import list_models, resolve_model

    table = Table(title="models for vistok count / fit")
    for column in ("model", "family", "LM", "proof", "rule source"):
        table.add_column(column, overflow="fold")
    for name in list_models(pattern):
        entry = resolve_model(name)
        family = get_family(entry.family)
        table.add_row(name, family.name, entry.lm or "-", family.proof, family.source)
    out.print(table)
