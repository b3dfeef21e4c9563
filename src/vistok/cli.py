"""The ``vistok`` command: a thin layer over the same functions a Python user calls."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    name="vistok",
    help="Turn images into the tokens vision and multimodal models consume: tokenize, draw, fit and inspect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide tables when piped (Rich would otherwise fold them to 80 columns).
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)

TokenizerOpt = Annotated[str, typer.Option("--tokenizer", "-t", help="Tokenizer name (see `vistok list`).")]
ConfigOpt = Annotated[
    Optional[list[str]],
    typer.Option("--config", "-c", metavar="KEY=VALUE",
                 help="Tokenizer option, repeatable: -c dim=32 -c max_side=none. See `vistok list -v`."),
]


def parse_config(items: list[str] | None) -> dict[str, Any]:
    """``["dim=32", "max_side=none", "codebook=cb.safetensors"]`` -> typed options (int, float, None, str)."""
    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        value: Any = raw
        if raw.lower() in ("none", "null"):
            value = None
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        config[key.strip().replace("-", "_")] = value
    return config


def _tokenizer(name: str, config: list[str] | None) -> Any:
    import vistok

    try:
        tokenizer = vistok.load(name, **parse_config(config))
        tokenizer.check()
        return tokenizer
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        err.print(f"[red]error:[/red] {message}")
        raise typer.Exit(2) from None


def _progress(total: int) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=total < 2)


@app.command("list")
def list_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style name pattern, e.g. 'p*'.")] = "*",
    kind: Annotated[Optional[str], typer.Option(help="Only 'hard' (ids) or 'soft' (vectors).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show each tokenizer's options.")] = False,
) -> None:
    """List the registered tokenizers: kind, whether they decode, and where their weights come from."""
    import vistok

    if kind not in (None, "hard", "soft"):
        raise typer.BadParameter("kind must be 'hard' or 'soft'", param_hint="--kind")
    table = Table(title="vistok tokenizers")
    for column in ("name", "kind", "decodes", "weights", "what it does"):
        table.add_column(column, overflow="fold")
    if verbose:
        table.add_column("options (defaults)", overflow="fold")
    for name in vistok.list_tokenizers(pattern, kind=kind):  # type: ignore[arg-type]
        info = vistok.tokenizer_info(name)
        row = [name, info.kind, "yes" if info.decodable else "no", info.weights, info.description]
        if verbose:
            row.append(", ".join(f"{k}={v!r}" for k, v in info.config_fields().items()))
        table.add_row(*row)
    out.print(table)


@app.command()
def tokenize(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    tokenizer: TokenizerOpt = "grid",
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write all tokens to this .safetensors file.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Tokenize images and print tokens per image, vocabulary, bits and shape.

    Bad files are reported and skipped; the others are still tokenized and saved. Exit code 1 if any failed.
    """
    from vistok.batch import tokenize_files
    from vistok.images import find_images

    tok = _tokenizer(tokenizer, config)
    total = sum(len(find_images([p])) if p.exists() else 1 for p in images)
    with _progress(total) as progress:
        task = progress.add_task(f"tokenizing with {tokenizer}", total=total)
        result = tokenize_files(images, tok, on_file=lambda _: progress.advance(task))
    table = _tokens_table(f"{tokenizer}: {len(result.tokens)} image(s)", result.tokens)
    out.print(table)
    if out_file is not None and result.tokens:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        result.save(out_file)
        out.print(f"wrote {len(result.tokens)} token set(s) to {out_file}")
    _report_failures(result.errors)


def _tokens_table(title: str, items: dict[str, Any]) -> Table:
    table = Table(title=title)
    for column in ("image", "size", "tokens", "grid", "vocab", "bits/image", "shape"):
        table.add_column(column, justify="left" if column == "image" else "right",
                         overflow="fold" if column == "image" else "ellipsis")
    for key, tokens in items.items():
        size = tokens.image_size
        table.add_row(
            key, f"{size[0]}x{size[1]}" if size else "-", str(len(tokens)),
            f"{tokens.grid[0]}x{tokens.grid[1]}" if tokens.grid else "-",
            str(tokens.vocab_size) if tokens.is_hard else "-",
            f"{tokens.bits:,.0f}" if tokens.bits is not None else "-",
            "x".join(map(str, tokens.values.shape)) + f" {tokens.values.dtype}",
        )
    return table


@app.command()
def inspect(file: Annotated[Path, typer.Argument(help="A tokens file written by `vistok tokenize --out`.")]) -> None:
    """Summarise a tokens file: what each image became."""
    from vistok.tokens import load_tokens

    try:
        items = load_tokens(file)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    names = sorted({t.meta.get("tokenizer", "?") for t in items.values()})
    out.print(_tokens_table(f"{file}: {len(items)} token set(s) from {', '.join(names)}", items))


def _report_failures(errors: dict[str, str]) -> None:
    if errors:
        err.print(f"[red]{len(errors)} input(s) failed and were skipped:[/red]")
        for key, reason in errors.items():
            err.print(f"  {key}: {reason}")
        raise typer.Exit(1)


@app.command()
def show(
    image: Annotated[Path, typer.Argument(help="The image to draw.")],
    tokenizer: TokenizerOpt = "grid",
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("tokens.png"),
    config: ConfigOpt = None,
) -> None:
    """Draw the tokens over an image: the grid, the tokens as colours, and the reconstruction beside it."""
    from vistok.images import ImageError
    from vistok.viz import show as draw

    tok = _tokenizer(tokenizer, config)
    try:
        picture = draw(image, tok)
    except ImageError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out_file.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_file)
    out.print(f"wrote {out_file} ({picture.width}x{picture.height})")


def _fit(kind: str, images: list[Path], fit: Any, out_file: Path) -> None:
    from vistok.images import ImageError, find_images, open_image

    files, bad = [], {}
    for given in images:
        try:
            files += find_images([given])
        except ImageError as exc:
            bad[str(given)] = exc.reason
    good = []
    with _progress(len(files)) as progress:
        task = progress.add_task(f"reading images for {kind}", total=len(files))
        for path in files:
            try:
                good.append((str(path), open_image(path)))
            except ImageError as exc:
                bad[str(path)] = exc.reason
            progress.advance(task)
    if not good:
        err.print("[red]error:[/red] no readable images to fit on")
        _report_failures(bad)
        raise typer.Exit(1)
    with err.status(f"fitting {kind} on {len(good)} image(s)"):
        try:
            fitted = fit([image for _, image in good])
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    fitted.save_weights(out_file, sources=[name for name, _ in good])
    out.print(f"wrote {out_file}: {kind} fitted on {len(good)} image(s)")
    _report_failures(bad)


@app.command("fit-codebook")
def fit_codebook(
    images: Annotated[list[Path], typer.Argument(help="Training images and/or folders.")],
    cells: Annotated[int, typer.Option("--cells", "--cell", help="Cell side in pixels (16 -> 16x16-pixel cells).")] = 16,
    vocab: Annotated[int, typer.Option(help="Number of visual words (k-means clusters).")] = 512,
    max_side: Annotated[int, typer.Option(help="Longer image side before cutting (0 keeps native size).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed for k-means.")] = 0,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Codebook file to write.")] = Path("codebook.safetensors"),
) -> None:
    """Learn a visual-word codebook for `grid` by k-means over cell pixels.

    Use it with: vistok tokenize IMAGES -t grid -c codebook=codebook.safetensors -c cell=CELLS
    """
    from vistok.tokenizers.grid import GridTokenizer

    _fit("grid codebook", images, lambda ims: GridTokenizer.fit(
        ims, cell=cells, vocab=vocab, max_side=max_side or None, seed=seed), out_file)


@app.command("fit-patch")
def fit_patch(
    images: Annotated[list[Path], typer.Argument(help="Training images and/or folders.")],
    patch: Annotated[int, typer.Option(help="Patch side in pixels.")] = 16,
    max_side: Annotated[int, typer.Option(help="Longer image side before cutting (0 keeps native size).")] = 256,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PCA weights file to write.")] = Path("patch.safetensors"),
) -> None:
    """Fit the linear patch embedding of `patch` by PCA over patch pixels.

    Use it with: vistok tokenize IMAGES -t patch -c weights=patch.safetensors -c patch=PATCH -c dim=64
    """
    from vistok.tokenizers.patch import PatchTokenizer

    _fit("patch PCA", images, lambda ims: PatchTokenizer.fit(ims, patch=patch, max_side=max_side or None), out_file)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs.")] = Path("vistok-demo"),
) -> None:
    """The main job on the bundled sample images: tokenize, decode, measure and draw.

    Writes token files, PNGs (grid | tokens | decoded) and summary.json to a folder and prints where.
    """
    from vistok.demo import PATCH_DIMS, run_demo
    from vistok.samples import sample_images

    total = len(sample_images())
    with _progress(total) as progress:
        task = progress.add_task("demo", total=total)
        report = run_demo(out_dir, on_step=lambda _: progress.advance(task))
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
                      *[_db(row.patch_psnr[d]) for d in PATCH_DIMS])
    out.print(table)
    out.print(f"PSNR in dB against the image at the tokenizer's working size ({'inf'} = exact).")
    out.print(f"wrote {len(report.files)} files to [bold]{report.out_dir}[/bold]")


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
