"""The ``fit`` command: make images fit a VLM token budget (resize, a model option, or reduce later)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vistok.cli._common import (
    FollowOpt,
    JsonOpt,
    check_out,
    err,
    error,
    find_files,
    out,
    print_json,
    progress_bar,
    report_failures,
    write_out,
    yes,
)
from vistok.cli.budget import ModelConfigOpt, model_options, no_images, resolve_models


def fit_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (only headers are read).")],
    model: Annotated[str, typer.Option("--model", "-m", help="VLM name, alias or hub id.")],
    budget: Annotated[int, typer.Option(help="Most image tokens allowed.", min=1)],
    config: ModelConfigOpt = None,
    out_file: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the resized image here (several images: into this folder).")] = None,
    follow_symlinks: FollowOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Make images fit a token budget: the largest resize, a model option, or reducing tokens later.

    One image gets a table of the ways; several (or a folder) get one row per image. Unreadable files are
    reported and skipped (exit code 1).
    """
    from vistok.budget import fit
    from vistok.images import ImageError

    name = resolve_models([model])[0]
    options = model_options([name], config)
    files, bad = find_files(images)
    if not files and not bad:
        no_images(images)
    single = len(images) == 1 and not images[0].is_dir() and len(files) == 1
    targets = fit_targets(files, images, out_file, single, follow_symlinks)
    results: dict[str, Any] = {}
    with progress_bar(len(files)) as progress:
        task = progress.add_task(f"fitting to {name}", total=len(files))
        for path in files:
            try:
                results[str(path)] = fit(path, name, budget, **options)
            except ImageError as exc:
                bad[str(path)] = exc.reason
            except (TypeError, ValueError) as exc:
                bad[str(path)] = str(exc)
            progress.advance(task)
    if as_json:
        print_json({"model": name, "budget": budget, "options": options,
                    "images": [fit_record(key, result) for key, result in results.items()], "failed": bad})
    elif single and results:
        key, result = next(iter(results.items()))
        out.print(ways_table(Path(key).name, result, budget))
        for note in result.notes:
            out.print(f"- {note}", highlight=False)
    elif results:
        out.print(fits_table(results, name, budget))
    if targets:
        write_resized(results, targets, single, as_json)
    report_failures(bad)


def fit_targets(files: list[Path], given: list[Path], out_file: Path | None, single: bool,
                follow_symlinks: bool) -> dict[str, Path]:
    """Where ``--out`` puts each resized image: the file itself for one image, else ``OUT/<path under the
    folder given>``; each target checked before any work (see check_out)."""
    if out_file is None:
        return {}
    if single:
        return {str(files[0]): check_out(out_file, files, follow_symlinks=follow_symlinks)}  # type: ignore[dict-item]
    targets: dict[str, Path] = {}
    for path in files:
        root = next((g for g in given if g.is_dir() and path.is_relative_to(g)), None)
        relative = path.relative_to(root) if root is not None else Path(path.name)
        target = out_file / relative
        if str(target) in {str(t) for t in targets.values()}:
            error(f"--out {out_file}: two inputs would both be written to {target}; fit them separately")
            raise typer.Exit(2)
        targets[str(path)] = check_out(target, files, follow_symlinks=follow_symlinks)  # type: ignore[assignment]
    return targets


def write_resized(results: dict[str, Any], targets: dict[str, Path], single: bool, as_json: bool) -> None:
    """Write each image resized to its fit (aspect kept); one that no size fits is an error (exit 1)."""
    from PIL import Image

    from vistok.images import open_image

    say = err if as_json else out
    unfit = [key for key, result in results.items() if result.resize is None and key in targets]
    for key, result in results.items():
        if result.resize is None or key not in targets:
            continue
        target = targets[key]
        resized = open_image(key).resize(result.resize, Image.Resampling.LANCZOS)
        known = target.suffix.lower() in Image.registered_extensions()
        write_out(target, lambda tmp, im=resized, k=known: im.save(tmp, format=None if k else "PNG"), inputs=[key])
        say.print(f"wrote {target} ({result.resize[0]}x{result.resize[1]})", highlight=False)
    if unfit:
        what = "this budget" if single else f"this budget for {', '.join(unfit)}"
        error(f"no resize fits {what}, so there is no image to write")
        raise typer.Exit(1)


def ways_table(title: str, result: Any, budget: int) -> Table:
    """One image: as is, the resize, the model option and reducing later, each with its tokens."""
    o = result.original
    table = Table(title=f"{title} in {result.model}, budget {budget:,} image tokens")
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
    return table


def fits_table(results: dict[str, Any], model: str, budget: int) -> Table:
    """Several images: one row each with its tokens as is, the resize that fits and the fraction to keep."""
    table = Table(title=f"{len(results)} image(s) in {model}, budget {budget:,} image tokens")
    for column in ("image", "size", "image tokens", "within budget", "resize to", "tokens after resize",
                   "model option", "reduce: keep"):
        table.add_column(column, justify="left" if column in ("image", "within budget", "model option") else "right",
                         overflow="fold")
    for key, result in results.items():
        o = result.original
        fits = result.fits_already
        resize = "-" if fits else ("no size fits" if result.resize is None else "{}x{}".format(*result.resize))
        after = "-" if fits or result.resized is None else f"{result.resized.image_tokens:,}"
        option = "-" if fits or result.option is None else ", ".join(f"{k}={v}" for k, v in result.option.items())
        table.add_row(key, "{}x{}".format(*o.image_size), f"{o.image_tokens:,}", yes(fits), resize, after, option,
                      "-" if fits else f"{result.keep_fraction:.0%}")
    return table


def fit_record(image: str, result: Any) -> dict[str, Any]:
    """One image's fit as plain data for --json."""
    return {"image": image, "size": result.original.image_size, "image_tokens": result.original.image_tokens,
            "fits_already": result.fits_already, "resize": result.resize,
            "resized_tokens": result.resized.image_tokens if result.resized is not None else None,
            "option": result.option,
            "option_tokens": result.option_count.image_tokens if result.option_count is not None else None,
            "keep_fraction": result.keep_fraction, "notes": result.notes}
