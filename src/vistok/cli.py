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
    help="Turn images into the tokens vision and multimodal models consume: tokenize, draw, classify, shrink (--reduce), count what they cost in VLMs.",
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


ReduceOpt = Annotated[
    Optional[list[str]],
    typer.Option("--reduce", "-r", metavar="METHOD:AMOUNT",
                 help="Shrink the tokens, repeatable (applied in order): tome:0.25 (a ratio), cls-attention:64 "
                      "(a count), pool:factor=2, visionzip:1/8,contextual=0.2. See `vistok reducers`."),
]


def parse_reduce(spec: str) -> tuple[str, dict[str, Any]]:
    """``"tome:0.25"`` -> ``("tome", {"ratio": 0.25})``; ``"cls-attention:64"`` -> ``keep=64``; ``"x:1/8"`` ->
    ``ratio=0.125``; ``key=value`` items after commas are the method's options (typed as in ``-c``)."""
    method, _, rest = spec.partition(":")
    method = method.strip()
    if not method:
        raise typer.BadParameter(f"expected METHOD:AMOUNT, got {spec!r}", param_hint="--reduce")
    options: dict[str, Any] = {}
    for part in [p.strip() for p in rest.split(",") if p.strip()]:
        if "=" in part:
            options.update(parse_config([part]))
            continue
        num, slash, den = part.partition("/")
        try:
            amount = float(num) / float(den) if slash else float(num)
        except ValueError:
            raise typer.BadParameter(f"{part!r} in {spec!r} is not a count, a ratio or key=value",
                                     param_hint="--reduce") from None
        if slash or not float(num).is_integer() or amount < 1:
            options["ratio"] = amount
        else:
            options["keep"] = int(amount)
    return method, options


def _reduce_all(items: dict[str, Any], specs: list[str] | None) -> dict[str, Any]:
    """Apply each ``--reduce`` step to every token set; a step that cannot apply is a usage error (exit 2)."""
    import vistok

    for spec in specs or []:
        method, options = parse_reduce(spec)
        try:
            items = {key: vistok.reduce(tokens, method, **options) for key, tokens in items.items()}
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            err.print(f"[red]error:[/red] --reduce {spec}: {message}")
            raise typer.Exit(2) from None
    return items


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
    except (KeyError, TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        if isinstance(exc, ImportError):
            message = f"{name} needs the encoder packages ({exc}); install them: pip install 'vistok[encoders]'"
        err.print(f"[red]error:[/red] {message}")
        raise typer.Exit(2) from None


def _find_files(given: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """The image files under ``given`` (files and folders) and, for inputs that are not, the reason."""
    from vistok.images import ImageError, find_images

    files: list[Path] = []
    bad: dict[str, str] = {}
    for item in given:
        try:
            files += find_images([item])
        except ImageError as exc:
            bad[str(item)] = exc.reason
    return files, bad


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
    reduce: ReduceOpt = None,
) -> None:
    """Tokenize images and print tokens per image, vocabulary, bits and shape.

    With --reduce the tokens are shrunk before they are shown and saved (provenance kept).
    Bad files are reported and skipped; the others are still tokenized and saved. Exit code 1 if any failed.
    """
    from vistok.batch import tokenize_files
    from vistok.images import find_images

    tok = _tokenizer(tokenizer, config)
    total = sum(len(find_images([p])) if p.exists() else 1 for p in images)
    with _progress(total) as progress:
        task = progress.add_task(f"tokenizing with {tokenizer}", total=total)
        result = tokenize_files(images, tok, on_file=lambda _: progress.advance(task))
    result.tokens = _reduce_all(result.tokens, reduce)
    table = _tokens_table(f"{tokenizer}: {len(result.tokens)} image(s)", result.tokens)
    out.print(table)
    if out_file is not None and result.tokens:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        result.save(out_file)
        out.print(f"wrote {len(result.tokens)} token set(s) to {out_file}")
    _report_failures(result.errors)


def _tokens_table(title: str, items: dict[str, Any]) -> Table:
    table = Table(title=title)
    reduced = any(tokens.meta.get("reductions") for tokens in items.values())
    columns = ["image", "size", "tokens", *(["reduced from"] if reduced else []), "grid", "vocab", "bits/image",
               "shape"]
    for column in columns:
        table.add_column(column, justify="left" if column == "image" else "right",
                         overflow="fold" if column == "image" else "ellipsis")
    for key, tokens in items.items():
        size = tokens.image_size
        steps = tokens.meta.get("reductions") or []
        origin = [f"{steps[0]['from']} ({', '.join(s['method'] for s in steps)})" if steps else "-"] if reduced else []
        table.add_row(
            key, f"{size[0]}x{size[1]}" if size else "-", str(len(tokens)), *origin,
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


def _warn_skipped(errors: dict[str, str]) -> None:
    """List unreadable inputs that were skipped, without failing the command (the work went on without them)."""
    if errors:
        err.print(f"[yellow]{len(errors)} unreadable input(s) skipped:[/yellow]")
        for key, reason in errors.items():
            err.print(f"  {key}: {reason}")


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
    reduce: ReduceOpt = None,
) -> None:
    """Draw the tokens over an image: the grid, the tokens as colours, the reconstruction (decodable
    tokenizers) and heat maps of saliency and attention from CLS (focus-vit-s14, vit). Region tokens
    (-t regions:faces, regions:text, ...) are drawn as boxes with labels and scores, and printed as
    PaliGemma location tokens.

    With --reduce, the kept tokens and merged groups are painted over the patches they cover, one colour each.
    """
    from vistok.images import ImageError
    from vistok.viz import show as draw

    tok = _tokenizer(tokenizer, config)
    try:
        tokens = tok.encode(image)
        tokens = _reduce_all({"image": tokens}, reduce)["image"] if reduce else tokens
        picture = draw(image, tok, tokens)
    except ImageError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    out_file.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out_file)
    out.print(f"wrote {out_file} ({picture.width}x{picture.height})")
    if "loc_tokens" in tokens.meta:  # region tokens: the boxes as PaliGemma writes them
        out.print(f"{len(tokens)} region(s) as PaliGemma location tokens (y0 x0 y1 x1, 1024 bins):", highlight=False)
        out.print(tokens.meta["loc_tokens"] or "(none)", highlight=False, markup=False, soft_wrap=True)


@app.command("reducers")
def reducers_command() -> None:
    """List the token-reduction methods for --reduce and vistok.reduce: what each needs and its paper."""
    from vistok.reducers import list_methods, method_info

    table = Table(title="vistok token reducers")
    for column in ("method", "kind", "needs", "options", "what it does", "source"):
        table.add_column(column)
    for name in list_methods():
        info = method_info(name)
        needs = ", ".join(info.needs) or "nothing"
        if info.uses:
            needs += f" (uses {', '.join(info.uses)})"
        table.add_row(name, "merge" if info.merges else "select", needs, ", ".join(info.options) or "-",
                      info.description, info.paper)
    out.print(table)


@app.command()
def classify(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")],
    tokenizer: Annotated[str, typer.Option(
        "--tokenizer", "-t", help="A classifier: efficientnet-lite0 / cnn (ImageNet head), or clip / siglip "
                                  "(zero-shot over --labels; pass the checkpoint with -c model=PATH).")] = "efficientnet-lite0",
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", help="Comma-separated labels for zero-shot clip/siglip: 'cat,dog,rocket'.")] = None,
    template: Annotated[str, typer.Option(help="Text for each label ({} = the label), clip/siglip only.")] = "a photo of a {}.",
    top: Annotated[int, typer.Option(help="How many labels to print per image.", min=1)] = 3,
    config: ConfigOpt = None,
) -> None:
    """Label images: ImageNet classes from a CNN's head, or zero-shot over your labels with CLIP/SigLIP.

    CLIP probabilities are a softmax over the labels; SigLIP's are independent sigmoids (they need not sum
    to 1). Bad files are reported and skipped. Exit code 1 if any failed.
    """
    from vistok.images import ImageError

    tok = _tokenizer(tokenizer, config)
    zero_shot = getattr(tok, "zero_shot", None)
    wanted = [label.strip() for label in (labels or "").split(",") if label.strip()]
    if zero_shot is not None and not wanted:
        err.print(f"[red]error:[/red] {tokenizer} classifies zero-shot: give the labels, e.g. --labels 'cat,dog'")
        raise typer.Exit(2)
    if zero_shot is None and wanted:
        err.print(f"[red]error:[/red] {tokenizer} has a fixed label set; --labels needs clip or siglip")
        raise typer.Exit(2)
    files, bad = _find_files(images)
    table = Table(title=f"{tokenizer}: top {top}" + (f" of {len(wanted)} labels" if wanted else ""))
    table.add_column("image")
    table.add_column("labels (probability)")
    with _progress(len(files)) as progress:
        task = progress.add_task(f"classifying with {tokenizer}", total=len(files))
        for path in files:
            try:
                if zero_shot is not None:
                    ranked = zero_shot(path, wanted, template=template)[:top]
                else:
                    tokens = tok.encode(path)
                    names, scores = tokens.meta.get("label_names"), tokens.extras.get("scores")
                    if not names or scores is None:
                        err.print(f"[red]error:[/red] {tokenizer} gives no labels (a headless model); use one "
                                  "with a classifier head, or clip/siglip with --labels")
                        raise typer.Exit(2)
                    ranked = list(zip(names, map(float, scores)))[:top]
                table.add_row(str(path), ", ".join(f"{name.split(',')[0]} ({p:.3f})" for name, p in ranked))
            except ImageError as exc:
                bad[str(path)] = exc.reason
            except (OSError, ValueError) as exc:
                bad[str(path)] = f"{type(exc).__name__}: {exc}"
            progress.advance(task)
    out.print(table)
    _report_failures(bad)


def _fit(kind: str, images: list[Path], fit: Any, out_file: Path) -> None:
    from vistok.images import ImageError, open_image

    files, bad = _find_files(images)
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
        err.print(f"[yellow]note:[/yellow] {report.encoders_skipped}")
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
        err.print(f"[yellow]note:[/yellow] {report.learned_skipped}")
    if report.budget is not None:
        budget = Table(title="what the same images cost in VLMs: image tokens (KV cache, bf16)")
        budget.add_column("image")
        for model in report.budget.models:
            budget.add_column(model, justify="right")
        for key, per in report.budget.counts.items():
            budget.add_row(Path(key).name, *[f"{per[m].image_tokens:,} ({_bytes(report.budget.kv_bytes[key][m])})"
                                             for m in report.budget.models])
        out.print(budget)
    out.print(f"wrote {len(report.files)} files to [bold]{report.out_dir}[/bold]")


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _shape_of(breakdown: dict[str, Any]) -> str:
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


@app.command("count")
def count_command(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders (only headers are read).")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="VLM name, alias or hub id; repeatable.")],
    config: Annotated[Optional[list[str]], typer.Option(
        "--config", "-c", metavar="KEY=VALUE", help="Model option, e.g. -c max_pixels=1003520.")] = None,
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
    with _progress(total) as progress:
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
                              f"{counted.total_positions:,}", _shape_of(counted.breakdown),
                              _bytes(report.kv_bytes[key][name]))
        out.print(table)
    if len(report.counts) > 1 or not per_image:
        table = Table(title=f"summary over {len(report.counts)} image(s)")
        for column in ("model", "images", "p50", "p95", "max", "mean", "total tokens", f"total KV ({dtype})"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for row in report.summary():
            table.add_row(row["model"], str(row["images"]), f"{row['p50']:,.0f}", f"{row['p95']:,.0f}",
                          f"{row['max']:,}", f"{row['mean']:,.1f}", f"{row['total_tokens']:,}",
                          _bytes(row["total_kv_bytes"]))
        out.print(table)
    if hist is not None and report.counts:
        hist.parent.mkdir(parents=True, exist_ok=True)
        histogram(report).save(hist)
        out.print(f"wrote histogram to {hist}")
    _report_failures(report.errors)


@app.command("fit")
def fit_command(
    image: Annotated[Path, typer.Argument(help="The image to fit.")],
    model: Annotated[str, typer.Option("--model", "-m", help="VLM name, alias or hub id.")],
    budget: Annotated[int, typer.Option(help="Most image tokens allowed.")],
    config: Annotated[Optional[list[str]], typer.Option(
        "--config", "-c", metavar="KEY=VALUE", help="Model option, e.g. -c max_pixels=1003520.")] = None,
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
    table.add_row("as is", "{}x{}".format(*o.image_size), "-", f"{o.image_tokens:,}", _yes(o.image_tokens <= budget))
    if not result.fits_already:
        if result.resize is not None and result.resized is not None:
            table.add_row("resize", "{}x{}".format(*result.resize), "aspect kept", f"{result.resized.image_tokens:,}",
                          _yes(True))
        else:
            table.add_row("resize", "-", "no size fits", "-", _yes(False))
        if result.option is not None and result.option_count is not None:
            setting = ", ".join(f"{k}={v}" for k, v in result.option.items())
            table.add_row("model option", "{}x{}".format(*o.image_size), setting,
                          f"{result.option_count.image_tokens:,}", _yes(True))
        table.add_row("reduce later", "{}x{}".format(*o.image_size), f"keep {result.keep_fraction:.0%}",
                      f"{budget:,}", _yes(True))
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


def _yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


@app.command("models")
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


def _levels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 8,5,5,5, got {text!r}",
                                 param_hint="--levels") from None


@app.command("train")
def train_command(
    data: Annotated[str, typer.Argument(help="An image folder, or a named offline data set: fashion-mnist, samples-64.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model, checkpoints and metrics.")],
    quantizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Bottleneck: vq, fsq, lfq, rvq (hard ids) or kl (soft).")] = "fsq",
    levels: Annotated[Optional[str], typer.Option(help="fsq levels per dimension, e.g. 8,5,5,5 (vocabulary = product).")] = None,
    factor: Annotated[int, typer.Option(help="Downsampling: 4, 8 or 16 (a 64x64 image -> 16x16, 8x8 or 4x4 ids).")] = 4,
    codebook_size: Annotated[int, typer.Option(help="vq/rvq/lfq codebook size (a power of 2 for lfq).")] = 1024,
    codebook_dim: Annotated[Optional[int], typer.Option(help="vq: look codes up in this lower dimension.")] = None,
    latent_dim: Annotated[int, typer.Option(help="Size of the quantized vector (fsq: number of levels).")] = 16,
    cosine: Annotated[bool, typer.Option(help="vq: cosine-similarity codes.")] = False,
    kmeans_init: Annotated[bool, typer.Option(help="vq/rvq: initialise codebooks by k-means on the first batch.")] = True,
    dead_code_threshold: Annotated[float, typer.Option(help="vq/rvq: revive codes whose EMA use falls below this.")] = 2.0,
    num_quantizers: Annotated[int, typer.Option(help="rvq: number of residual codebooks.")] = 4,
    width: Annotated[int, typer.Option(help="Channels of the first conv stage (doubles per downsampling, at most 4x).")] = 32,
    blocks: Annotated[int, typer.Option(help="Residual blocks at the lowest resolution.")] = 1,
    steps: Annotated[int, typer.Option(help="Training steps.")] = 2000,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak Adam learning rate (warm-up, then cosine decay).")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed: same seed and options give the same model.")] = 0,
    size: Annotated[Optional[int], typer.Option(help="Crop side for folders and samples-64 (default 64).")] = None,
    pool: Annotated[int, typer.Option(help="Random crops drawn once from folders/samples-64.")] = 20000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    log_every: Annotated[int, typer.Option(help="Steps per metrics line in metrics.jsonl.")] = 50,
    half: Annotated[bool, typer.Option("--half", help="Save the model in float16 (half the file size).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Train a learned tokenizer (conv autoencoder + a vector-quantize-pytorch quantizer).

    Example: vistok train fashion-mnist -t fsq --levels 8,5,5,5 --factor 4 --out fsq-fmnist

    Writes OUT/model.safetensors (load it with vistok.load("OUT") or -t OUT), OUT/checkpoint.pt and
    OUT/metrics.jsonl. Ctrl-C or a kill loses at most --checkpoint-every steps: rerun with --resume.
    """
    import shlex
    import warnings

    from vistok.learned import train_tokenizer
    from vistok.learned.train import CodebookCollapseWarning

    options: dict[str, Any] = dict(
        factor=factor, codebook_size=codebook_size, codebook_dim=codebook_dim, latent_dim=latent_dim, cosine=cosine,
        kmeans_init=kmeans_init, dead_code_threshold=dead_code_threshold, num_quantizers=num_quantizers, width=width,
        blocks=blocks, steps=steps, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
        log_every=log_every, weights_dtype="float16" if half else "float32")
    if levels is not None:
        options["levels"] = _levels(levels)
    command = "vistok train " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None

    def on_data(dataset: Any) -> None:
        err.print(f"training on {dataset.name}: {len(dataset.train)} images of {dataset.size[1]}x{dataset.size[0]}"
                  + (f", {len(dataset.test)} held out" if dataset.test is not None else ""))
        _warn_skipped(dict(dataset.skipped))

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[stats]}"), console=err, transient=False)
    task = None

    def on_step(step: int, record: dict[str, Any] | None) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("training", total=steps, completed=step - 1, stats="")
        stats = None
        if record is not None:
            stats = f"loss {record['loss']:.4f}  PSNR {record['psnr']:.2f} dB"
            if "usage" in record:
                stats += f"  usage {record['usage']:.0%}  perplexity {record['perplexity']:.0f}"
        progress.update(task, completed=step, **({"stats": stats} if stats else {}))

    with warnings.catch_warnings():
        warnings.simplefilter("always", CodebookCollapseWarning)
        warnings.showwarning = lambda message, *a, **k: err.print(f"[yellow]warning:[/yellow] {message}")
        try:
            with progress:
                path = train_tokenizer(data, out_dir, quantizer=quantizer, size=size, pool=pool, resume=resume,
                                       on_step=on_step, on_data=on_data, command=command, **options)
        except (ValueError, FileNotFoundError, FileExistsError, TypeError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    out.print(f"wrote {path} (metrics in {out_dir / 'metrics.jsonl'}); use it with: vistok tokenize IMAGES -t {out_dir}")


@app.command("eval-recon")
def eval_recon(
    model: Annotated[str, typer.Argument(help="A learned tokenizer: fsq-fmnist, fsq-natural64, or a `vistok train` folder.")],
    data: Annotated[str, typer.Argument(help="Held-out images: fashion-mnist / samples-64 (their test splits), or a folder.")],
    limit: Annotated[int, typer.Option(help="Evaluate on the first N images only (0 = all).")] = 0,
    max_side: Annotated[int, typer.Option(help="Folders: scale images down so the longer side is at most this.")] = 256,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the numbers to this JSON file.")] = None,
) -> None:
    """Reconstruction quality of a learned tokenizer on held-out images.

    Reports PSNR and SSIM (scikit-image, mean over images), bits per pixel of the ids, codebook usage and
    perplexity, and encode/decode images per second. rFID is not reported: it needs Inception weights that
    cannot be loaded offline.
    """
    import json

    from vistok.learned.evaluate import evaluate, held_out_images

    tokenizer = _tokenizer(model, None)
    if not hasattr(tokenizer, "model") or not hasattr(tokenizer.model, "bottleneck"):
        err.print(f"[red]error:[/red] {model} is not a learned tokenizer; pass fsq-fmnist, fsq-natural64 or a "
                  "folder written by `vistok train`")
        raise typer.Exit(2)
    try:
        images, skipped = held_out_images(data, tokenizer.channels, max_side=max_side or None)
    except (ValueError, FileNotFoundError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if limit:
        images = images[:limit]
    if not images:
        err.print(f"[red]error:[/red] no readable images in {data}")
        _report_failures(dict(skipped))
        raise typer.Exit(1)
    with _progress(len(images)) as progress:
        task = progress.add_task("encode + decode", total=len(images))
        try:
            result = evaluate(tokenizer, images, on_batch=lambda n: progress.advance(task, n))
        except ValueError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    result.pop("reconstructions")
    table = Table(title=f"{model} on {data} ({result['images']} held-out images)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("PSNR (dB)", f"{result['psnr']:.2f}"), ("SSIM", f"{result['ssim']:.4f}")]
    if result.get("bits_per_pixel") is not None:
        rows += [("bits per pixel", f"{result['bits_per_pixel']:.4f}"), ("vocabulary", str(result["vocab_size"])),
                 ("codebook usage", f"{result['usage']:.1%}"), ("perplexity", f"{result['perplexity']:.1f}")]
    rows += [("encode images/s", f"{result['encode_images_per_s']:.0f}"),
             ("decode images/s", f"{result['decode_images_per_s']:.0f}")]
    for row in rows:
        table.add_row(*row)
    out.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps({"model": model, "data": data, **result}, indent=2))
    _warn_skipped(dict(skipped))


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
