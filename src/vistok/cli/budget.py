"""Commands on what images cost in VLMs: count and models (fit is in ``vistok.cli.fit``)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vistok.cli._common import (
    JsonOpt,
    check_out,
    err,
    error,
    human_bytes,
    out,
    out_path,
    parse_config,
    print_json,
    progress_bar,
    report_failures,
    write_out,
)

ModelConfigOpt = Annotated[
    list[str] | None,
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


def model_option_types(names: list[str]) -> dict[str, Any]:
    """The declared type of each option of these models' family rules (for reading ``-c`` text)."""
    from vistok._options import field_types
    from vistok.budget.core import get_family
    from vistok.budget.models import resolve_model

    types: dict[str, Any] = {}
    for name in names:
        types = {**field_types(get_family(resolve_model(name).family).options), **types}
    return types


def model_options(names: list[str], config: list[str] | None) -> dict[str, Any]:
    """``-c`` options read as the models' rules declare them and checked against every model before any
    image is read; an unknown option or a bad value is one line and exit 2."""
    from vistok.budget.core import get_family
    from vistok.budget.models import resolve_model

    options = parse_config(config, model_option_types(names) if config else None)
    for name in names:
        entry = resolve_model(name)
        try:
            get_family(entry.family).make_options(**{**entry.options, **options})
        except (TypeError, ValueError) as exc:
            error(f"{exc}")
            raise typer.Exit(2) from None
    return options


def resolve_models(models: list[str]) -> list[str]:
    """Canonical model names; an unknown one is one line (with suggestions) and exit 2."""
    from vistok.budget.models import resolve_model

    try:
        return [resolve_model(m).name for m in models]
    except KeyError as exc:
        error(f"{exc.args[0]}")
        raise typer.Exit(2) from None


def no_images(given: list[Path]) -> None:
    """Exit 1 with one line: nothing under ``given`` is an image."""
    error(f"no images found in {', '.join(map(str, given))}; vistok looks for image files (.jpg, .png, .webp, ...)")
    raise typer.Exit(1)


def _inputs(paths: list[Path]) -> tuple[Any, int]:
    """The items to count and how many there are: image files and folders as given, datasets expanded."""
    from vistok.budget.report import iter_image_files

    parts: list[Any] = []
    total = 0
    for path in paths:
        try:
            from vistok.datasets.sources import count_inputs, is_dataset
        except ImportError:  # no pyarrow: plain files and folders only
            is_dataset = None  # type: ignore[assignment]
        if is_dataset is not None and is_dataset(path):
            try:
                n, items = count_inputs(path)
            except (FileNotFoundError, ValueError) as exc:
                error(str(exc))
                raise typer.Exit(2) from None
            parts.append(items)
            total += n
        else:
            parts.append([path])
            total += sum(1 for _ in iter_image_files(path)) if path.is_dir() else 1
    return itertools.chain.from_iterable(parts), total


def count_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (only headers are read).")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="VLM name, alias or hub id; repeatable.")],
    config: ModelConfigOpt = None,
    dtype: Annotated[str, typer.Option(help="KV-cache dtype for the memory column.")] = "bfloat16",
    per_image: Annotated[bool | None, typer.Option(
        "--per-image/--summary-only", help="Per-image rows (default: on for up to 50 images).")] = None,
    hist: Annotated[Path | None, typer.Option(help="Write a histogram of tokens per model to this PNG.", parser=out_path,
                                                   metavar="FILE")] = None,
    as_json: JsonOpt = False,
) -> None:
    """How many tokens each image becomes in each model, and the KV cache it takes.

    Counts follow each model's own preprocessing (see `vistok models`). For several images a summary gives p50/p95/max tokens and the total KV cache. Unreadable files are reported and skipped (exit code 1).
    """
    from vistok.budget.report import count_stream, histogram

    names = resolve_models(model)
    hist_target = check_out(hist, images, option="--hist")
    options = model_options(names, config)
    # folders are walked twice (a count for the progress bar, then the counting), never held in memory; a
    # dataset (WebDataset tars, Parquet, a datasets folder, a vistok tokens dataset) is read a chunk at a time
    inputs, total = _inputs(images)
    done = 0
    with progress_bar(total) as progress:
        task = progress.add_task("counting", total=total)

        def advance(_: str) -> None:
            nonlocal done
            done += 1
            if done % 256 == 0 or done == total:
                progress.update(task, completed=done)

        try:
            report = count_stream(inputs, names, options=options, dtype=dtype, on_file=advance,
                                  keep=51 if per_image is None else None if per_image else 0)
        except (TypeError, ValueError) as exc:
            error(f"{exc}")
            raise typer.Exit(2) from None
    if not report.images and not report.errors:
        no_images(images)
    if per_image is None:
        per_image = report.images <= 50
    if as_json:
        rows = [{"image": key, "size": counted.image_size, "model": name, "image_tokens": counted.image_tokens,
                 "positions": counted.total_positions, "breakdown": counted.breakdown,
                 "kv_cache_bytes": report.kv_bytes[key][name]}
                for key, per in report.counts.items() for name, counted in per.items()] if per_image else None
        print_json({"models": names, "dtype": dtype, "options": options, "images": rows,
                    "summary": report.summary(), "failed": report.errors})
    if per_image and report.counts and not as_json:
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
    if (report.images > 1 or not per_image) and not as_json:
        table = Table(title=f"summary over {report.images:,} image(s)")
        for column in ("model", "images", "p50", "p95", "max", "mean", "total tokens", f"total KV ({dtype})"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in report.summary():
            table.add_row(row["model"], str(row["images"]), f"{row['p50']:,.0f}", f"{row['p95']:,.0f}",
                          f"{row['max']:,}", f"{row['mean']:,.1f}", f"{row['total_tokens']:,}",
                          human_bytes(row["total_kv_bytes"]))
        out.print(table)
    if hist is not None and report.images:
        picture = histogram(report)
        write_out(hist_target, lambda tmp: picture.save(tmp, format="PNG"), inputs=images)
        (err if as_json else out).print(f"wrote histogram to {hist}", highlight=False)
    report_failures(report.errors)


def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style pattern, e.g. 'qwen*'.")] = "*",
    as_json: JsonOpt = False,
) -> None:
    """List the VLMs vistok can count, with their family rule, LM preset and how the rule is proven."""
    from vistok.budget.core import get_family
    from vistok.budget.models import list_models, resolve_model

    table = Table(title="models for vistok count / fit")
    for column in ("model", "family", "LM", "proof", "rule source"):
        table.add_column(column, overflow="fold")
    records = []
    for name in list_models(pattern):
        entry = resolve_model(name)
        family = get_family(entry.family)
        table.add_row(name, family.name, entry.lm or "-", family.proof, family.source)
        records.append({"model": name, "family": family.name, "lm": entry.lm, "options": entry.options,
                        "proof": family.proof, "source": family.source})
    if as_json:
        print_json(records)
    else:
        out.print(table)
