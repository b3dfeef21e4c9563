"""``vistok train-vlm``: train the small VLM (focus-vit-s14 tower, projector, small Llama) on shapes questions."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vistok.cli._common import err, error, out, progress_bar, training_callbacks


def train_vlm_command(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Folder for the model, processor, feature cache, "
                                                                "checkpoint and metrics.json.")],
    steps: Annotated[int | None, typer.Option(min=1, help="Training steps. [default: 2500; llama-vid: 3000]")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per step (each with its questions). "
                                                               "[default: 32; llama-vid: 16]")] = None,
    seed: Annotated[int, typer.Option(help="Seed: same seed and options give the same model.")] = 0,
    train_images: Annotated[int | None, typer.Option(min=1, help="Training images (their tower features are "
                                                                 "computed once and cached in OUT/cache). "
                                                                 "[default: 16000; llama-vid: 4000]")] = None,
    questions_per_image: Annotated[int, typer.Option(min=1, help="Questions asked of each training image (one "
                                                                 "per kind, at most 6).")] = 6,
    describe: Annotated[bool, typer.Option(help="Also train on a caption of each image (every object in reading "
                                                "order), as LLaVA's first stage does; it teaches the model where "
                                                "things are.")] = True,
    loss_weighting: Annotated[str | None, typer.Option(help="sqrt-span: each answer or caption token weighs "
                                                            "1/sqrt(length of its answer), so one-word answers are "
                                                            "not drowned by the caption; token: every token the "
                                                            "same. [default: sqrt-span]")] = None,
    val_questions: Annotated[int, typer.Option(min=0, help="Validation questions scored at the end.")] = 300,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up, then cosine decay).")] = 3e-3,
    warmup: Annotated[int, typer.Option(min=0, help="Warm-up steps.")] = 100,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 200,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its last checkpoint.")] = False,
    blind: Annotated[bool, typer.Option("--blind", help="Train without the image (a constant in its place): the "
                                                        "baseline that shows what the answers owe to the image.")] = False,
    tower: Annotated[str, typer.Option(help="Vision tower: focus-vit-s14 or a DINOv2 checkpoint folder.")] =
    "focus-vit-s14",
    projector: Annotated[str, typer.Option(help="mlp (LLaVA's 2-layer GELU) or linear (PaliGemma's).")] = "mlp",
    hidden: Annotated[int, typer.Option(min=8, help="Language model width.")] = 128,
    layers: Annotated[int | None, typer.Option(min=1, help="Language model layers. [default: 4; llama-vid: 2]")
                      ] = None,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = 4,
    feature_layer: Annotated[int | None, typer.Option(help="Tower hidden_states index fed to the projector "
                                                           "(default 9 for focus-vit-s14, else -1).")] = None,
    question_first: Annotated[bool, typer.Option("--question-first", help="Write the question before the image "
                                                  "(early fusion; each question then needs its own pass over the "
                                                  "image, about six times the training cost).")] = False,
    image_size: Annotated[int | None, typer.Option(min=14, help="Image side in pixels ((side/14)^2 visual "
                                                                "tokens). [default: 112; llama-vid: 224]")] = None,
    tokens: Annotated[str, typer.Option(help="full: every visual token through the projector (LLaVA); llama-vid: "
                                             "one context and one content token per image or frame (LLaMA-VID).")
                      ] = "full",
    grid: Annotated[str, typer.Option(help="llama-vid: content tokens, G (G x G) or RxC (1x2: left and right "
                                           "halves).")] = "1",
    context: Annotated[bool, typer.Option(help="llama-vid: keep the question-guided context token (--no-context: "
                                               "content tokens alone, a query-blind pool).")] = True,
    video: Annotated[bool, typer.Option("--video", help="llama-vid: train on clips of moving shapes (real video "
                                                        "files) with temporal questions.")] = False,
    frames: Annotated[int, typer.Option(min=2, help="--video: frames per clip.")] = 8,
    train_clips: Annotated[int, typer.Option(min=1, help="--video: training clips.")] = 2000,
) -> None:
    """Train the small VLM: frozen focus-vit-s14 tower, projector and a small Llama, on vistok.vlm.shapes questions.

    Example: vistok train-vlm shapes-vlm --seed 0

    Writes an ordinary transformers folder (LlavaForConditionalGeneration + processor) that `vistok vlm OUT
    image.png -p "question"` runs, plus OUT/metrics.json (val accuracy per kind). Ctrl-C or a kill loses at
    most --checkpoint-every steps: rerun with --resume.

    With --tokens llama-vid: two tokens per image (vistok.vlm.llama_vid), e.g.
    vistok train-vlm shapes-2tok --tokens llama-vid, or --video for clips at two tokens per frame.
    """
    if tokens not in ("full", "llama-vid"):
        error(f"--tokens must be full or llama-vid, got {tokens!r}")
        raise typer.Exit(2)
    two = tokens == "llama-vid"
    parts = grid.lower().split("x")
    if len(parts) > 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        error(f"--grid must be G or RxC with positive integers (2, 1x2), got {grid!r}")
        raise typer.Exit(2)
    cells = (int(parts[0]), int(parts[-1]))
    used = [flag for flag, on in (("--grid", cells != (1, 1)), ("--no-context", not context), ("--video", video))
            if on and not two]
    if used:
        error(f"{used[0]} needs --tokens llama-vid")
        raise typer.Exit(2)
    if two and question_first:
        error("--question-first applies to --tokens full only")
        raise typer.Exit(2)
    if two and loss_weighting is not None:
        error("--loss-weighting applies to --tokens full only")
        raise typer.Exit(2)
    try:
        if two:
            from vistok.vlm.llama_vid import LlamaVidError as TrainError
            from vistok.vlm.llama_vid import train_llama_vid as train
        else:
            from vistok.vlm.small import TrainError, train
    except ImportError as exc:
        error(f"vistok train-vlm needs torch and transformers ({exc}): pip install 'vistok[vlm]'")
        raise typer.Exit(2) from None

    options: dict[str, Any] = dict(
        seed=seed, questions_per_image=questions_per_image, describe=describe, val_questions=val_questions,
        lr=lr, warmup=warmup, checkpoint_every=checkpoint_every, resume=resume, blind=blind, tower=tower,
        projector=projector, hidden=hidden, heads=heads)
    given = dict(steps=steps, batch_size=batch_size, train_images=train_images, layers=layers, image_size=image_size)
    options.update({name: value for name, value in given.items() if value is not None})  # else the trainer's default
    total = steps or inspect.signature(train).parameters["steps"].default
    if two:
        options.update(grid=cells, context=context, video=video, frames=frames, train_clips=train_clips)
    else:
        options["question_first"] = question_first
        if loss_weighting is not None:
            options["loss_weighting"] = loss_weighting
    if feature_layer is not None:
        options["feature_layer"] = feature_layer
    with progress_bar(total + 1, stats=True, transient=False) as bar:
        on_features, on_step = training_callbacks(bar, total)

        try:
            metrics = train(out_dir, on_step=on_step, progress=on_features, **options)
        except (TrainError, FileNotFoundError) as exc:
            error(str(exc))
            raise typer.Exit(2) from None
    val = metrics.get("val")
    err.print(f"saved to {out_dir}; loss {metrics['loss_first']:.3f} -> {metrics['loss_last']:.3f}", highlight=False)
    if val:
        table = Table("kind", "questions", "val accuracy")
        for kind, row in val["per_kind"].items():
            table.add_row(kind, str(row["questions"]), f"{row['accuracy']:.3f}")
        table.add_row("all", str(val["questions"]), f"{val['accuracy']:.3f}")
        out.print(table)
