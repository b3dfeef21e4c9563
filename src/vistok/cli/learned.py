"""Commands that learn weights: train, eval-recon, fit-codebook, fit-patch."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vistok.cli._common import (
    FollowOpt,
    JsonOpt,
    err,
    error,
    escape,
    gather_inputs,
    load_tokenizer,
    out,
    out_path,
    print_json,
    progress_bar,
    report_failures,
    warn_skipped,
)


def parse_levels(text: str | None) -> list[int] | None:
    """``"8,5,5,5"`` -> ``[8, 5, 5, 5]``."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers like 8,5,5,5, got {text!r}",
                                 param_hint="--levels") from None


def train_command(
    data: Annotated[str, typer.Argument(help="An image folder, or a named offline data set: fashion-mnist, samples-64.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the model, checkpoints and metrics.")],
    quantizer: Annotated[str, typer.Option("--tokenizer", "-t", help="Bottleneck: vq, fsq, lfq, rvq (hard ids) or kl (soft).")] = "fsq",
    levels: Annotated[str | None, typer.Option(help="fsq levels per dimension, e.g. 8,5,5,5 (vocabulary = product).")] = None,
    factor: Annotated[int, typer.Option(help="Downsampling: 4, 8 or 16 (a 64x64 image -> 16x16, 8x8 or 4x4 ids).")] = 4,
    codebook_size: Annotated[int, typer.Option(help="vq/rvq/lfq codebook size (a power of 2 for lfq).")] = 1024,
    codebook_dim: Annotated[int | None, typer.Option(help="vq: look codes up in this lower dimension.")] = None,
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
    size: Annotated[int | None, typer.Option(help="Crop side for folders and samples-64 (default 64).")] = None,
    pool: Annotated[int, typer.Option(help="Random crops drawn once from folders/samples-64.")] = 20000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 500,
    log_every: Annotated[int, typer.Option(help="Steps per metrics line in metrics.jsonl.")] = 50,
    half: Annotated[bool, typer.Option("--half", help="Save the model in float16 (half the file size).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
) -> None:
    """Train a learned tokenizer (conv autoencoder + a vector-quantize-pytorch quantizer).

    Example: vistok train fashion-mnist -t fsq --levels 8,5,5,5 --factor 4 --out fsq-fmnist

    Writes OUT/model.safetensors (load it with vistok.load("OUT") or -t OUT), OUT/checkpoint.safetensors and
    OUT/metrics.jsonl. Ctrl-C or a kill loses at most --checkpoint-every steps: rerun with --resume.
    """
    import shlex
    import warnings

    try:
        from vistok.learned import train_tokenizer
        from vistok.learned.train import CodebookCollapseWarning
    except ImportError as exc:
        error(f"vistok train needs the learned-tokenizer packages ({exc}); install them: pip install 'vistok[learned]'")
        raise typer.Exit(2) from None

    options: dict[str, Any] = dict(
        factor=factor, codebook_size=codebook_size, codebook_dim=codebook_dim, latent_dim=latent_dim, cosine=cosine,
        kmeans_init=kmeans_init, dead_code_threshold=dead_code_threshold, num_quantizers=num_quantizers, width=width,
        blocks=blocks, steps=steps, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
        log_every=log_every, weights_dtype="float16" if half else "float32")
    if levels is not None:
        options["levels"] = parse_levels(levels)
    command = "vistok train " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else None

    def on_data(dataset: Any) -> None:
        err.print(f"training on {dataset.name}: {len(dataset.train)} images of {dataset.size[1]}x{dataset.size[0]}"
                  + (f", {len(dataset.test)} held out" if dataset.test is not None else ""), highlight=False)
        warn_skipped(dict(dataset.skipped))
        if batch_size > len(dataset.train):  # batches are drawn with replacement: more would only repeat images
            error(f"--batch-size {batch_size} is more than the {len(dataset.train)} training images of "
                  f"{dataset.name}; use at most {len(dataset.train)}")
            raise typer.Exit(2)

    progress = progress_bar(steps + 1, stats=True, transient=False)
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
        warnings.showwarning = lambda message, *a, **k: err.print(f"[yellow]warning:[/yellow] {escape(str(message))}")
        try:
            with progress:
                path = train_tokenizer(data, out_dir, quantizer=quantizer, size=size, pool=pool, resume=resume,
                                       on_step=on_step, on_data=on_data, command=command, **options)
        except (ValueError, FileNotFoundError, FileExistsError, TypeError) as exc:
            error(f"{exc}")
            raise typer.Exit(2) from None
    out.print(f"wrote {path} (metrics in {out_dir / 'metrics.jsonl'}); use it with: vistok tokenize IMAGES -t {out_dir}")


def eval_recon(
    model: Annotated[str, typer.Argument(help="A learned tokenizer: fsq-fmnist, fsq-natural64, or a `vistok train` folder.")],
    data: Annotated[str, typer.Argument(help="Held-out images: fashion-mnist / samples-64 (their test splits), or a folder.")],
    limit: Annotated[int, typer.Option(help="Evaluate on the first N images only (0 = all).")] = 0,
    max_side: Annotated[int, typer.Option(help="Folders: scale images down so the longer side is at most this.")] = 256,
    as_json: JsonOpt = False,
) -> None:
    """Reconstruction quality of a learned tokenizer on held-out images.

    Reports PSNR and SSIM (scikit-image, mean over images), bits per pixel of the ids, codebook usage and
    perplexity, and encode/decode images per second. rFID is not reported: it needs Inception weights that
    cannot be loaded offline. With --json the numbers are printed as JSON (save them with > FILE).
    """
    from vistok.learned.evaluate import evaluate, held_out_images
    from vistok.registry import tokenizer_info

    tokenizer = load_tokenizer(model, None)
    if not tokenizer_info(tokenizer.name).learned:
        error(f"{model} is not a learned tokenizer; pass fsq-fmnist, fsq-natural64 or a "
                  "folder written by `vistok train`")
        raise typer.Exit(2)
    try:
        images, skipped = held_out_images(data, tokenizer.channels, max_side=max_side or None)
    except (ValueError, FileNotFoundError) as exc:
        error(f"{exc}")
        raise typer.Exit(2) from None
    if limit:
        images = images[:limit]
    if not images:
        error(f"no readable images in {data}")
        report_failures(dict(skipped))
        raise typer.Exit(1)
    with progress_bar(len(images)) as progress:
        task = progress.add_task("encode + decode", total=len(images))
        try:
            result = evaluate(tokenizer, images, on_batch=lambda n: progress.advance(task, n))
        except ValueError as exc:
            error(f"{exc}")
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
    if as_json:
        print_json({"model": model, "data": data, **result})
    else:
        out.print(table)
    warn_skipped(dict(skipped))


def fit_weights(kind: str, images: list[Path], fit: Callable[[list[Any], Callable[[int, int], None]], Any],
                out_file: Path, follow_symlinks: bool = False) -> None:
    """Read the images under ``images``, fit ``kind`` on them and save its weights to ``out_file``. ``fit(images,
    on_step)`` may report its progress with ``on_step(done, total)``."""
    from vistok.images import ImageError, open_image
    from vistok.outputs import OutputError

    files, bad, target = gather_inputs(images, out_file, follow_symlinks=follow_symlinks)
    good = []
    with progress_bar(len(files)) as progress:
        task = progress.add_task(f"reading images for {kind}", total=len(files))
        for path in files:
            try:
                good.append((str(path), open_image(path)))
            except ImageError as exc:
                bad[str(path)] = exc.reason
            progress.advance(task)
    if not good:
        error("no readable images to fit on")
        report_failures(bad)
        raise typer.Exit(1)
    with progress_bar(2) as progress:  # shown even for one image: the fit itself takes the time
        task = progress.add_task(f"fitting {kind} on {len(good)} image(s)", total=None)
        try:
            fitted = fit([image for _, image in good],
                         lambda done, total: progress.update(task, completed=done, total=total))
        except ValueError as exc:
            error(f"{exc}")
            raise typer.Exit(2) from None
    try:
        fitted.save_weights(target, sources=[name for name, _ in good])
    except OutputError as exc:
        error(f"{exc}")
        raise typer.Exit(1) from None
    out.print(f"wrote {out_file}: {kind} fitted on {len(good)} image(s)")
    report_failures(bad)


def fit_codebook(
    images: Annotated[list[Path], typer.Argument(help="Training images and/or folders.")],
    cells: Annotated[int, typer.Option("--cells", "--cell", help="Cell side in pixels (16 -> 16x16-pixel cells).")] = 16,
    vocab: Annotated[int, typer.Option(help="Number of visual words (k-means clusters).")] = 512,
    max_side: Annotated[int, typer.Option(help="Longer image side before cutting (0 keeps native size).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed for k-means.")] = 0,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Codebook file to write.", parser=out_path, metavar="FILE")] = Path("codebook.safetensors"),
    follow_symlinks: FollowOpt = False,
) -> None:
    """Learn a visual-word codebook for `grid` by mini-batch k-means over cell pixels (stops once the words settle).

    Use it with: vistok tokenize IMAGES -t grid -c codebook=codebook.safetensors -c cell=CELLS
    """
    from vistok.tokenizers.grid import GridTokenizer

    fit_weights("grid codebook", images, lambda ims, on_step: GridTokenizer.fit(
        ims, cell=cells, vocab=vocab, max_side=max_side or None, seed=seed, on_step=on_step), out_file,
        follow_symlinks)


def fit_patch(
    images: Annotated[list[Path], typer.Argument(help="Training images and/or folders.")],
    patch: Annotated[int, typer.Option(help="Patch side in pixels.")] = 16,
    max_side: Annotated[int, typer.Option(help="Longer image side before cutting (0 keeps native size).")] = 256,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PCA weights file to write.", parser=out_path, metavar="FILE")] = Path("patch.safetensors"),
    follow_symlinks: FollowOpt = False,
) -> None:
    """Fit the linear patch embedding of `patch` by PCA over patch pixels.

    Use it with: vistok tokenize IMAGES -t patch -c weights=patch.safetensors -c patch=PATCH -c dim=64
    """
    from vistok.tokenizers.patch import PatchTokenizer

    fit_weights("patch PCA", images, lambda ims, _: PatchTokenizer.fit(ims, patch=patch, max_side=max_side or None),
                out_file, follow_symlinks)
