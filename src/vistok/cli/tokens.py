"""Commands on tokens: list, tokenize, inspect, show, reducers, classify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from vistok.cli._common import (
    ConfigOpt,
    ReduceOpt,
    TokenizerOpt,
    err,
    find_files,
    load_tokenizer,
    out,
    progress_bar,
    reduce_all,
    report_failures,
)


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

    tok = load_tokenizer(tokenizer, config)
    total = sum(len(find_images([p])) if p.exists() else 1 for p in images)
    with progress_bar(total) as progress:
        task = progress.add_task(f"tokenizing with {tokenizer}", total=total)
        result = tokenize_files(images, tok, on_file=lambda _: progress.advance(task))
    result.tokens = reduce_all(result.tokens, reduce)
    table = tokens_table(f"{tokenizer}: {len(result.tokens)} image(s)", result.tokens)
    out.print(table)
    if out_file is not None and result.tokens:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        result.save(out_file)
        out.print(f"wrote {len(result.tokens)} token set(s) to {out_file}")
    report_failures(result.errors)


def tokens_table(title: str, items: dict[str, Any]) -> Table:
    """One row per token set: image, size, tokens, grid, vocabulary, bits and tensor shape."""
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


def inspect(file: Annotated[Path, typer.Argument(help="A tokens file written by `vistok tokenize --out`.")]) -> None:
    """Summarise a tokens file: what each image became."""
    from vistok.tokens import load_tokens

    try:
        items = load_tokens(file)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    names = sorted({t.meta.get("tokenizer", "?") for t in items.values()})
    out.print(tokens_table(f"{file}: {len(items)} token set(s) from {', '.join(names)}", items))


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

    tok = load_tokenizer(tokenizer, config)
    try:
        tokens = tok.encode(image)
        tokens = reduce_all({"image": tokens}, reduce)["image"] if reduce else tokens
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
    from vistok.registry import tokenizer_info

    tok = load_tokenizer(tokenizer, config)
    zero_shot = tok.zero_shot if tokenizer_info(tok.name).zero_shot else None
    wanted = [label.strip() for label in (labels or "").split(",") if label.strip()]
    if zero_shot is not None and not wanted:
        err.print(f"[red]error:[/red] {tokenizer} classifies zero-shot: give the labels, e.g. --labels 'cat,dog'")
        raise typer.Exit(2)
    if zero_shot is None and wanted:
        err.print(f"[red]error:[/red] {tokenizer} has a fixed label set; --labels needs clip or siglip")
        raise typer.Exit(2)
    files, bad = find_files(images)
    table = Table(title=f"{tokenizer}: top {top}" + (f" of {len(wanted)} labels" if wanted else ""))
    table.add_column("image")
    table.add_column("labels (probability)")
    with progress_bar(len(files)) as progress:
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
    report_failures(bad)
