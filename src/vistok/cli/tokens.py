"""Commands on tokens: list, tokenize, inspect, show, reducers, classify."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vistok.cli._common import (
    ConfigOpt,
    FollowOpt,
    JsonOpt,
    ReduceOpt,
    TokenizerOpt,
    check_out,
    err,
    error,
    gather_inputs,
    load_tokenizer,
    out,
    out_path,
    parse_reduce,
    print_json,
    progress_bar,
    reduce_all,
    report_failures,
    write_out,
)


def list_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style name pattern, e.g. 'p*'.")] = "*",
    kind: Annotated[str | None, typer.Option(help="Only 'hard' (ids) or 'soft' (vectors).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show each tokenizer's options.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the registered tokenizers: kind, whether they decode, and where their weights come from."""
    import vistok

    if kind not in (None, "hard", "soft"):
        raise typer.BadParameter("kind must be 'hard' or 'soft'", param_hint="--kind")
    if as_json:
        infos = [vistok.tokenizer_info(name) for name in vistok.list_tokenizers(pattern, kind=kind)]  # type: ignore[arg-type]
        print_json([{"name": i.name, "kind": i.kind, "decodes": i.decodable, "weights": i.weights,
                     "description": i.description, "options": i.config_fields()} for i in infos])
        return
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
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write all tokens to this .safetensors file.", parser=out_path, metavar="FILE")] = None,
    config: ConfigOpt = None,
    reduce: ReduceOpt = None,
    follow_symlinks: FollowOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Tokenize images and print tokens per image, vocabulary, bits and shape.

    With --reduce the tokens are shrunk before they are shown and saved (provenance kept).
    Bad files are reported and skipped; the others are still tokenized and saved. Exit code 1 if any failed.
    """
    from vistok.batch import tokenize_files
    from vistok.tokens import save_tokens

    if out_file is not None and out_file.suffix.lower() in (".parquet", ".arrow", ".jsonl", ".tar"):
        error(f"--out {out_file}: vistok tokenize writes one safetensors Tokens file; for Parquet shards of a whole "
              f"dataset run `vistok tokenize-dataset INPUT -t {tokenizer} --out FOLDER`")
        raise typer.Exit(2)
    files, bad, target = gather_inputs(images, out_file, follow_symlinks=follow_symlinks)
    tok = load_tokenizer(tokenizer, config)
    with progress_bar(len(files)) as progress:
        task = progress.add_task(f"tokenizing with {tokenizer}", total=len(files))
        result = tokenize_files(files, tok, on_file=lambda _: progress.advance(task))
    result.tokens = reduce_all(result.tokens, reduce)
    if not as_json:
        out.print(tokens_table(f"{tokenizer}: {len(result.tokens)} image(s)", result.tokens))
    if target is not None and result.tokens:
        write_out(target, lambda tmp: save_tokens(tmp, result.tokens), inputs=[*files, *bad])
        (err if as_json else out).print(f"wrote {len(result.tokens)} token set(s) to {out_file}", highlight=False)
    if as_json:
        print_json({"tokenizer": tokenizer, "images": tokens_records(result.tokens),
                    "out": out_file if target is not None and result.tokens else None,
                    "failed": {**bad, **result.errors}})
    report_failures({**bad, **result.errors})


def tokens_records(items: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of :func:`tokens_table` as plain data for --json."""
    return [{"image": key, "size": tokens.image_size, "tokens": len(tokens),
             "reduced_from": (tokens.meta.get("reductions") or [{}])[0].get("from"),
             "reductions": [step["method"] for step in tokens.meta.get("reductions") or []],
             "grid": tokens.grid, "vocab": tokens.vocab_size if tokens.is_hard else None, "bits": tokens.bits,
             "shape": list(tokens.values.shape), "dtype": str(tokens.values.dtype),
             "tokenizer": tokens.meta.get("tokenizer")} for key, tokens in items.items()]


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


def inspect(
    file: Annotated[Path, typer.Argument(help="A tokens file written by `vistok tokenize --out`.")],
    as_json: JsonOpt = False,
) -> None:
    """Summarise a tokens file: what each image became."""
    from vistok.tokens import load_tokens

    try:
        items = load_tokens(file)
    except (OSError, ValueError) as exc:
        error(f"{exc}")
        raise typer.Exit(1) from None
    names = sorted({t.meta.get("tokenizer", "?") for t in items.values()})
    if as_json:
        print_json({"file": file, "tokenizers": names, "images": tokens_records(items)})
        return
    out.print(tokens_table(f"{file}: {len(items)} token set(s) from {', '.join(names)}", items))


def show(
    image: Annotated[Path, typer.Argument(help="The image to draw (with --vlm and a LLaMA-VID model, also a video).")],
    tokenizer: TokenizerOpt = "grid",
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.", parser=out_path, metavar="FILE")] = Path("tokens.png"),
    config: ConfigOpt = None,
    reduce: ReduceOpt = None,
    vlm: Annotated[str | None, typer.Option(
        "--vlm", metavar="MODEL",
        help="Draw what a VLM's language model sees instead of -t's tokens: a LLaVA folder (or 'shapes', the "
             "small VLM shipped with vistok) with --reduce METHOD:K, or a LLaMA-VID folder with --question.")] = None,
    question: Annotated[str | None, typer.Option(
        "--question", "-q", help="With --vlm: the question the LLaMA-VID context token attends for, or the "
                                 "question a LLaVA model answers with and without the reduction.")] = None,
    follow_symlinks: FollowOpt = False,
) -> None:
    """Draw the tokens over an image: the grid, the tokens as colours, the reconstruction (decodable
    tokenizers) and heat maps of saliency and attention from CLS (focus-vit-s14, vit). Region tokens
    (-t regions:faces, regions:text, ...) are drawn as boxes with labels and scores, and printed as
    PaliGemma location tokens.

    With --reduce, the kept tokens and merged groups are painted over the patches they cover, one colour each.

    With --vlm MODEL the picture shows a VLM's visual tokens (-t and -c are not used). A LLaVA model with
    --reduce METHOD:K: the tokens its language model keeps once vistok.vlm.patch reduces them (the patch's own
    selection, fastv included), "K of 256 visual tokens kept", and the tower's attention from CLS when the
    method ranks by it; with --question, its answers with all tokens and with K are printed. A LLaMA-VID
    folder (one holding llama_vid.json) with --question: the context token's attention over the image for that
    question, and the model's answer. Examples:

    vistok show scene.png --vlm shapes --reduce visionzip:64 -q "what colour is the star ?" -o kept.png

    vistok show scene.png --vlm runs/llama-vid -q "what colour is the star ?" -o context.png
    """
    from PIL import Image

    from vistok.images import ImageError, probe_size
    from vistok.viz import show as draw

    target = check_out(out_file, [image], follow_symlinks=follow_symlinks)
    if question is not None and vlm is None:
        error("--question needs --vlm MODEL: a LLaMA-VID folder (its context token's attention) or a LLaVA "
              "folder with --reduce METHOD:K (its answers)")
        raise typer.Exit(2)
    if not (vlm is not None and _is_video_for_llama_vid(image, vlm)):
        try:
            probe_size(image, max_pixels=None)  # a bad file fails now, before the model loads
        except ImageError as exc:
            error(f"{exc}")
            raise typer.Exit(1) from None
    if vlm is not None:
        picture, lines = _draw_vlm(image, vlm, reduce, question)
    else:
        tok = load_tokenizer(tokenizer, config)
        try:
            tokens = tok.encode(image)
            tokens = reduce_all({"image": tokens}, reduce)["image"] if reduce else tokens
            picture = draw(image, tok, tokens)
        except ImageError as exc:
            error(f"{exc}")
            raise typer.Exit(1) from None
        lines = []
        if "loc_tokens" in tokens.meta:  # region tokens: the boxes as PaliGemma writes them
            lines = [f"{len(tokens)} region(s) as PaliGemma location tokens (y0 x0 y1 x1, 1024 bins):",
                     tokens.meta["loc_tokens"] or "(none)"]
    known = target.suffix.lower() in Image.registered_extensions()  # type: ignore[union-attr]
    write_out(target, lambda tmp: picture.save(tmp, format=None if known else "PNG"), inputs=[image])  # type: ignore[arg-type]
    out.print(f"wrote {out_file} ({picture.width}x{picture.height})")
    for line in lines:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


def _is_video_for_llama_vid(path: Path, model: str) -> bool:
    """A video file given to a LLaMA-VID model (which reads it frame by frame; nothing else takes video)."""
    try:
        from vistok.vlm.llama_vid import VIDEO_SUFFIXES
        from vistok.vlm.show import is_llama_vid
    except ImportError:
        return False
    return path.suffix.lower() in VIDEO_SUFFIXES and is_llama_vid(model)


def _draw_vlm(image: Path, model: str, reduce: list[str] | None, question: str | None) -> tuple[Any, list[str]]:
    """``vistok show --vlm``: the picture and the lines to print; one-line errors (exit 2 for a bad model or
    option, 1 for an image that cannot be read)."""
    from vistok.images import ImageError

    try:
        from vistok.viz import show_context_attention, show_vlm
        from vistok.vlm import llama_vid
        from vistok.vlm.run import load
        from vistok.vlm.show import is_llama_vid
    except ImportError as exc:
        error(f"--vlm needs torch and transformers ({exc}): pip install 'vistok[vlm]'")
        raise typer.Exit(1) from None
    try:
        if is_llama_vid(model):
            if reduce:
                raise ValueError(f"{model} is a LLaMA-VID model (2 tokens per image); --reduce does not apply: "
                                 "drop it to draw the context token's attention")
            if not question:
                raise ValueError(f"{model} is a LLaMA-VID model: pass --question TEXT to draw its context token's "
                                 "attention for that question")
            frames: Any = image
            if image.suffix.lower() in llama_vid.VIDEO_SUFFIXES:
                from vistok.vlm.video import read_frames

                try:
                    frames = read_frames(image)
                except (OSError, ValueError) as exc:
                    error(str(exc))
                    raise typer.Exit(1) from None
            picture = show_context_attention(frames, llama_vid.load(model), question)
            attention = picture.info["attention"]
            frame, row, col = picture.info["peak"]
            where = f"frame {frame + 1}, " if attention.shape[0] > 1 else ""
            return picture, [f"answer: {picture.info['answer']}",
                             f"the context token's attention peaks at {where}patch row {row}, column {col} of "
                             f"{attention.shape[1]}x{attention.shape[2]}, counted from 0 at the top left "
                             f"(weight {float(attention.max()):.3f})"]
        if not reduce:
            raise ValueError(f"--vlm {model} draws a reduction: add --reduce METHOD:K (e.g. visionzip:64); for "
                             "a context token's attention pass a LLaMA-VID folder with --question")
        if len(reduce) > 1:
            raise ValueError(f"--vlm takes one --reduce step (the model is patched with one method), got "
                             f"{len(reduce)}: {' '.join(reduce)}")
        method, options = parse_reduce(reduce[0])
        if method != "fastv":  # a typo fails before the model loads
            from vistok.reducers.core import method_info

            try:
                method_info(method)
            except KeyError as exc:
                raise ValueError(f"{exc.args[0]}, or fastv (inside the language model)") from None
        vlm, processor = load(model)
        picture = show_vlm(image, vlm, processor, method, question=question, **options)
    except ImageError as exc:
        error(f"{exc}")
        raise typer.Exit(1) from None
    except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
        error(exc.args[0] if isinstance(exc, KeyError) else str(exc))
        raise typer.Exit(2) from None
    tokens = picture.info["tokens"]
    lines = [f"{len(tokens)} of {len(tokens.source)} visual tokens kept ({method})"]
    answers = picture.info["answers"]
    if answers is not None:
        lines += [f"answer with all {len(tokens.source)} visual tokens: {answers['full']}",
                  f"answer with {len(tokens)} ({reduce[0]}): {answers['reduced']}"]
    return picture, lines


def reducers_command(as_json: JsonOpt = False) -> None:
    """List the token-reduction methods for --reduce and vistok.reduce: what each needs and its paper."""
    from vistok.reducers import list_methods, method_info

    if as_json:
        infos = [method_info(name) for name in list_methods()]
        print_json([{"method": name, "kind": "merge" if i.merges else "select", "needs": list(i.needs),
                     "uses": list(i.uses), "options": list(i.options), "description": i.description,
                     "source": i.paper} for name, i in zip(list_methods(), infos)])
        return

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
    labels: Annotated[str | None, typer.Option(
        "--labels", "-l", help="Comma-separated labels for zero-shot clip/siglip: 'cat,dog,rocket'.")] = None,
    template: Annotated[str, typer.Option(help="Text for each label ({} = the label), clip/siglip only.")] = "a photo of a {}.",
    top: Annotated[int, typer.Option(help="How many labels to print per image.", min=1)] = 3,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Label images: ImageNet classes from a CNN's head, or zero-shot over your labels with CLIP/SigLIP.

    CLIP probabilities are a softmax over the labels; SigLIP's are independent sigmoids (they need not sum
    to 1). Bad files are reported and skipped. Exit code 1 if any failed.
    """
    from vistok.images import ImageError
    from vistok.registry import tokenizer_info

    files, bad, _ = gather_inputs(images)
    tok = load_tokenizer(tokenizer, config)
    zero_shot = tok.zero_shot if tokenizer_info(tok.name).zero_shot else None
    wanted = [label.strip() for label in (labels or "").split(",") if label.strip()]
    if zero_shot is not None and not wanted:
        error(f"{tokenizer} classifies zero-shot: give the labels, e.g. --labels 'cat,dog'")
        raise typer.Exit(2)
    if zero_shot is None and wanted:
        error(f"{tokenizer} has a fixed label set; --labels needs clip or siglip")
        raise typer.Exit(2)
    table = Table(title=f"{tokenizer}: top {top}" + (f" of {len(wanted)} labels" if wanted else ""))
    table.add_column("image")
    table.add_column("labels (probability)")
    records = []
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
                        error(f"{tokenizer} gives no labels (a headless model); use one "
                              "with a classifier head, or clip/siglip with --labels")
                        raise typer.Exit(2)
                    ranked = list(zip(names, map(float, scores)))[:top]
                table.add_row(str(path), ", ".join(f"{name.split(',')[0]} ({p:.3f})" for name, p in ranked))
                records.append({"image": str(path), "labels": [{"label": name, "probability": float(p)}
                                                               for name, p in ranked]})
            except ImageError as exc:
                bad[str(path)] = exc.reason
            except (OSError, ValueError) as exc:
                bad[str(path)] = f"{type(exc).__name__}: {exc}"
            progress.advance(task)
    if as_json:
        print_json({"tokenizer": tokenizer, "top": top, "images": records, "failed": bad})
    else:
        out.print(table)
    report_failures(bad)
