"""``vistok vlm``: ask a local transformers VLM about images, with fewer visual tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from vistok.cli._common import JsonOpt, error, out, parse_reduce, print_json


def vlm_command(
    model: Annotated[str, typer.Argument(help="A VLM folder written by save_pretrained (model + processor), or a "
                                              "hub id (org/name) already in the local cache.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, one per image placeholder in the prompt.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to ask; the image placeholders are added "
                                                               "unless the prompt holds them.")] =
    "describe this image",
    reduce: Annotated[str | None, typer.Option(
        "--reduce", "-r", metavar="METHOD:AMOUNT",
        help="Visual tokens to keep per image (or crop), e.g. visionzip:64, pool:1/4, tome:0.25, or "
             "fastv:64,layer=2 (inside the LM). See `vistok reducers`.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also run the unreduced model and show both.")] = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to generate.")] = 32,
    dtype: Annotated[str, typer.Option(help="auto, float32, float16 or bfloat16.")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps ...")] = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Ask a transformers VLM about images with fewer visual tokens (-r visionzip:64); shows tokens, positions, time.

    Supported: LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, PaliGemma, Gemma 3, Idefics3, SmolVLM.
    """
    from vistok.images import ImageError, open_image

    try:
        from vistok.vlm.run import ask, load
    except ImportError as exc:
        error(f"vistok vlm needs torch and transformers ({exc}): pip install 'vistok[vlm]'")
        raise typer.Exit(1) from None

    method, options = parse_reduce(reduce) if reduce else (None, {})
    if method is None and compare:
        error("--compare needs --reduce METHOD:AMOUNT (it compares the reduced run with the unreduced one)")
        raise typer.Exit(2)
    pictures = []
    for path in images:
        try:
            pictures.append(open_image(path))
        except ImageError as exc:
            error(f"{exc}")
            raise typer.Exit(1) from None
    try:
        vlm, processor = load(model, dtype=dtype, device=device)
        runs = ([None] if compare else []) + [method]
        answers = [ask(vlm, processor, pictures, prompt, method=m, max_new_tokens=max_new_tokens,
                       **(options if m else {})) for m in runs]
    except (KeyError, TypeError, ValueError) as exc:
        error(exc.args[0] if isinstance(exc, KeyError) else str(exc))
        raise typer.Exit(2) from None
    if as_json:
        print_json({"model": model, "prompt": prompt, "runs": [a.as_dict() for a in answers]})
        return
    table = Table("method", "visual tokens", "LM positions", "prefill s", "answer")
    for answer in answers:
        before = sum(s["before"] for s in answer.stats) if answer.stats else None
        after = sum(s["after"] for s in answer.stats) if answer.stats else None
        visual = f"{before} -> {after}" if before is not None else "all"
        table.add_row(answer.method or "none", visual, str(answer.positions), f"{answer.prefill_seconds:.2f}",
                      escape(answer.text))
    out.print(table)
