"""``vistok compare``: tokenizers measured side by side, written as a Markdown and an HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vistok.cli._common import err, error, gather_inputs, progress_bar, warn_skipped
from vistok.compare import DEFAULT_TOKENIZERS


def compare_command(
    inputs: Annotated[list[Path], typer.Argument(metavar="IMAGES...", help="Image files or folders to measure on.")],
    tokenizers: Annotated[str, typer.Option("--tokenizers", "-t", help="Comma-separated tokenizer names; "
                                            "name:argument allowed (regions:text).")] = ",".join(DEFAULT_TOKENIZERS),
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for compare.md, compare.html, compare.json "
                                                              "and the plots.")] = Path("vistok-compare"),
    knn: Annotated[bool, typer.Option(help="Measure Fashion-MNIST k-NN accuracy, clean and perturbed, and the "
                                           "class information of one token (needs the dataset-fashion-mnist "
                                           "Debian package).")] = True,
    knn_train: Annotated[int, typer.Option(min=1, help="Fashion-MNIST training images for k-NN.")] = 300,
    knn_test: Annotated[int, typer.Option(min=1, help="Fashion-MNIST test images for k-NN.")] = 100,
    knn_size: Annotated[int, typer.Option(min=8, help="Pixels the 28x28 images are upscaled to.")] = 112,
    ap_images: Annotated[int, typer.Option(min=0, help="Synthetic images with known boxes for region AP (0: skip)."
                                           )] = 20,
    scenes: Annotated[int, typer.Option(min=0, help="Rendered shape scenes for the boundary measures (0: skip).")
                      ] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the samples drawn from the labelled sets.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Small labelled sets (100/50 k-NN images, 8 AP images, "
                                                        "12 scenes): a first look in about a minute.")] = False,
) -> None:
    """Measure tokenizers side by side on your images and on small labelled sets, and judge the common hard-vs-soft claims.

    Example: vistok compare photos/ -t grid,patch,fsq-natural64,focus-vit-s14,efficientnet-lite0,regions:text

    One row per tokenizer: tokens and bits per image, reconstruction PSNR/SSIM where it decodes, images/s, how
    much the tokens change under blur, noise, JPEG, rotation and crop, boundary recall of the token layout,
    Fashion-MNIST k-NN accuracy clean and perturbed, class information of one token, region AP, and edge
    fidelity on shape scenes. The hard-versus-soft claims of the image tokenization overview are printed with
    the numbers and a verdict. Unreadable images are skipped with a warning; a tokenizer that fails keeps its
    row with the error (exit 1).
    """
    import importlib.util

    missing = [m for m in ("skimage", "matplotlib", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        error(f"vistok compare needs {', '.join(missing)}: pip install 'vistok[compare]'")
        raise typer.Exit(1)
    from vistok.compare import Settings, compare

    names = [t.strip() for t in tokenizers.split(",") if t.strip()]
    if not names:
        error("--tokenizers is empty; give names such as grid,patch (see 'vistok list')")
        raise typer.Exit(2)
    if out_dir.exists() and not out_dir.is_dir():
        error(f"--out {out_dir}: is a file; give a folder for the report")
        raise typer.Exit(2)
    if quick:
        knn_train, knn_test, ap_images, scenes = min(knn_train, 100), min(knn_test, 50), min(ap_images, 8), \
            min(scenes, 12)
    settings = Settings(knn=knn, knn_train=knn_train, knn_test=knn_test, knn_size=knn_size, ap_images=ap_images,
                        scenes=scenes, seed=seed)
    from vistok.compare import STAGES
    from vistok.registry import tokenizer_info

    try:
        for name in names:
            tokenizer_info(name.split(":", 1)[0])
    except KeyError as exc:
        error(f"--tokenizers: {exc.args[0]}")
        raise typer.Exit(2) from None
    files, bad, _ = gather_inputs(inputs)
    warn_skipped(bad)
    with progress_bar(len(names) * len(STAGES)) as bar:
        task = bar.add_task("compare", total=len(names) * len(STAGES))
        result = compare(files, names, settings=settings,
                         on_step=lambda message: bar.update(task, advance=1, description=message))
    warn_skipped(result.skipped)
    paths = result.write(out_dir)
    from rich.table import Table

    table = Table(title="hard-vs-soft claims, measured here")
    for column in ("aspect", "measured", "verdict"):
        table.add_column(column, overflow="fold")
    for verdict in result.claims():
        table.add_row(verdict.aspect, verdict.measured, verdict.verdict)
    from rich.console import Console

    Console().print(table)
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    typer.echo(f"wrote {paths['markdown']}, {paths['html']} and {paths['json']}")
    failed = [r for r in result.rows if r.error]
    if failed:
        for row in failed:
            error(f"{row.tokenizer}: {row.error}")
        raise typer.Exit(1)
