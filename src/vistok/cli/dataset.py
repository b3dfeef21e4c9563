"""``vistok tokenize-dataset``: a whole dataset to sharded Parquet tokens, resumable, local or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vistok.cli._common import (
    ConfigOpt,
    ReduceOpt,
    TokenizerOpt,
    err,
    error,
    parse_config,
    parse_reduce,
    tokenizer_option_types,
)


def tokenize_dataset_command(
    source: Annotated[str, typer.Argument(metavar="INPUT", help="A folder or glob of images, WebDataset .tar files, "
                                          "a Parquet table with an image column, or a datasets.save_to_disk "
                                          "folder.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the Parquet shards, _manifest.json and "
                                                              "_quarantine.jsonl.")],
    tokenizer: TokenizerOpt = "grid",
    config: ConfigOpt = None,
    reduce: ReduceOpt = None,
    image_column: Annotated[str | None, typer.Option(help="Parquet/datasets input: the column holding the images "
                                                          "(default: image, img, jpg or png).")] = None,
    shard_size: Annotated[int, typer.Option(min=1, help="Input images per shard (the unit of resume).")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per encode call (bounds the memory).")] = 32,
    engine: Annotated[str, typer.Option(help="local (this machine, --workers processes) or ray (Ray Data actors).")
                      ] = "local",
    workers: Annotated[int, typer.Option(min=1, help="Processes (local: this one and N-1 helpers, each with "
                                                     "cores/N threads) or actors (ray), each with its own "
                                                     "tokenizer.")] = 1,
    gpus: Annotated[float, typer.Option(min=0, help="ray: GPUs per actor (0: none).")] = 0.0,
    ray_address: Annotated[str | None, typer.Option(envvar="RAY_ADDRESS", help="ray: join this running cluster "
                                                    "(e.g. 'auto' after `ray start --head`) instead of starting a "
                                                    "local one for the run.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out: finished shards are kept, the "
                                              "rest redone.")] = False,
) -> None:
    """Tokenize a whole dataset into Parquet shards (one row per image) with a manifest.

    Example: vistok tokenize-dataset photos/ -t focus-vit-s14 -r visionzip:64 --out photo-tokens --workers 2

    Bad images go to OUT/_quarantine.jsonl and never stop the run; memory is bounded by the batch. Read the result
    with vistok.open_dataset(OUT), pyarrow.parquet.read_table(OUT) or datasets.load_dataset("parquet",
    data_files="OUT/*.parquet"). After Ctrl-C or a kill, rerun with --resume.
    """
    try:
        from vistok.datasets import DatasetError, tokenize_dataset
    except ImportError as exc:
        error(f"vistok tokenize-dataset needs pyarrow ({exc}): pip install 'vistok[datasets]'")
        raise typer.Exit(2) from None
    options = parse_config(config, tokenizer_option_types(tokenizer) if config else None)
    steps = [parse_reduce(spec) for spec in reduce or []]
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("images"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    bar = Progress(*columns, console=err, transient=False)
    first: list[int] = []

    def progress(done: int, total: int) -> None:  # the bar starts with the work, after the checks
        if not first:
            first.append(done)
            bar.add_task("images", total=total, rate="")
            bar.start()
        elapsed = bar.tasks[0].elapsed or 0.0
        rate = f"{(done - first[0]) / elapsed:.1f} img/s" if elapsed > 0 and done > first[0] else ""
        bar.update(bar.task_ids[0], completed=done, total=total, rate=rate)

    try:
        manifest = tokenize_dataset(source, out_dir, tokenizer, options=options, reduce=steps,
                                    image_column=image_column, shard_size=shard_size, batch_size=batch_size,
                                    engine=engine, workers=workers, gpus=gpus, ray_address=ray_address,
                                    resume=resume, progress=progress)
    except (DatasetError, KeyError, TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        bar.stop()
        error(exc.args[0] if isinstance(exc, KeyError) else str(exc))
        raise typer.Exit(2) from None
    bar.stop()
    err.print(f"{manifest['rows']} rows in {sum(1 for s in manifest['shards'] if s['file'])} shard(s) under "
              f"{out_dir}; {manifest['quarantined']} image(s) quarantined"
              + (f" (see {out_dir}/_quarantine.jsonl)" if manifest["quarantined"] else ""), highlight=False)
