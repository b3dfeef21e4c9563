"""Load a local transformers VLM and ask it about images, with or without a visual-token reduction: what
``vistok vlm`` runs, and the measured effect (positions the language model saw, prefill time) of a patch."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["Answer", "load", "ask"]

_DTYPES = {"auto": "auto", "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class Answer:
    """One generation: the ``text`` and ``token_ids`` generated, ``positions`` the language model's prompt
    length (visual tokens included) with and without the reduction, ``stats`` per image (see
    :class:`vistok.vlm.PatchHandle`), and the seconds spent in prefill (vision included) and in all."""

    text: str
    token_ids: list[int]
    positions: int
    positions_unreduced: int
    stats: list[dict[str, int]] = field(default_factory=list)
    method: str | None = None
    prefill_seconds: float = 0.0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SHIPPED_NAME = "shapes"


def load(source: str | Path, *, dtype: str = "auto", device: str = "cpu") -> tuple[Any, Any]:
    """A transformers VLM and its processor from a local folder (``save_pretrained`` layout), or from a hub id
    (``org/name``) when it is in the local cache or the hub is reachable. The model must be one
    :func:`vistok.vlm.supported_models` lists. ``"shapes"`` is the small VLM shipped with vistok
    (:mod:`vistok.vlm.small`, trained on :mod:`vistok.vlm.shapes` questions)."""
    import transformers

    from vistok.hub import HUB_ID, from_cache_or_hub
    from vistok.vlm._base import family_of

    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    text = str(source)
    path = Path(text).expanduser()
    if text == SHIPPED_NAME and not path.exists():
        from vistok.vlm.small import shipped_folder

        path = shipped_folder()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{text}: no config.json in this folder; pass a folder written by save_pretrained")
        location, local = str(path), True
    elif HUB_ID.match(text) and not path.exists():
        location, local = text, False
    else:
        raise ValueError(f"{text}: no such model folder; pass a local folder written by save_pretrained "
                         "(config.json, weights, processor files) or a hub id like org/name")

    def fetch(cache_only: bool) -> tuple[Any, Any]:
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            location, dtype=_DTYPES[dtype], local_files_only=cache_only)
        processor = transformers.AutoProcessor.from_pretrained(location, local_files_only=cache_only)
        return model, processor

    if local:
        try:
            model, processor = fetch(True)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"{text}: cannot load a VLM and its processor from this folder ({err})") from None
    else:
        model, processor = from_cache_or_hub(
            fetch, lambda reason: ValueError(f"{text} is not in the local Hugging Face cache and the hub cannot "
                                             f"be used ({reason}); pass a local folder written by save_pretrained"))
    family_of(model)  # a clear error for classes vistok cannot patch
    return model.to(device).eval(), processor


def ask(model: Any, processor: Any, images: Any, prompt: str = "describe this image", *,
        method: str | None = None, keep: int | None = None, ratio: float | None = None,
        max_new_tokens: int = 32, **options: Any) -> Answer:
    """Greedy answer of ``model`` to ``prompt`` about ``images`` (one or a list, as the processor takes them),
    patched with ``method`` (``keep``/``ratio``/``options`` as :func:`vistok.vlm.patch`) for this call only.
    The prompt gets the processor's image placeholder once per image unless it already holds them; a
    processor with a chat template gets a user turn holding the images and the prompt."""
    from vistok.vlm import patch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    pictures = list(images) if isinstance(images, (list, tuple)) else [images]
    if not pictures:
        raise ValueError("ask needs at least one image")
    text = _prompt(processor, prompt, len(pictures))
    inputs = on_model(model, processor(images=pictures if len(pictures) > 1 else pictures[0], text=text,
                                       return_tensors="pt"))
    lm = model.model.language_model
    seen: list[tuple[int, float]] = []

    def record(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and not seen:
            seen.append((int(embeds.shape[1]), time.perf_counter()))

    hook = lm.register_forward_hook(record, with_kwargs=True)
    handle = patch(model, method, keep=keep, ratio=ratio, **options) if method else None
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        hook.remove()
        if handle is not None:
            handle.unpatch()
    elapsed = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    answer = processor.decode(new, skip_special_tokens=True) if hasattr(processor, "decode") else \
        processor.tokenizer.decode(new, skip_special_tokens=True)
    positions, prefill_end = seen[0] if seen else (int(inputs["input_ids"].shape[1]), start)
    return Answer(text=answer.strip(), token_ids=new, positions=positions,
                  positions_unreduced=int(inputs["input_ids"].shape[1]),
                  stats=handle.stats if handle is not None else [], method=method,
                  prefill_seconds=prefill_end - start, seconds=elapsed)


def on_model(model: Any, inputs: Any) -> dict[str, Any]:
    """A processor's outputs moved to ``model``'s device, floating tensors also to its dtype."""
    first = next(model.parameters())
    return {k: (v.to(first.device, first.dtype) if v.is_floating_point() else v.to(first.device))
            if isinstance(v, torch.Tensor) else v for k, v in dict(inputs).items()}


def _prompt(processor: Any, prompt: str, images: int) -> str:
    token = getattr(processor, "image_token", None)
    if getattr(processor, "chat_template", None):
        content = [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": prompt}]
        return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    if isinstance(token, str) and token in prompt:
        return prompt
    if not isinstance(token, str):
        raise ValueError(f"{type(processor).__name__} has no image_token; write the image placeholder into the "
                         "prompt yourself")
    return " ".join([token] * images + [prompt])
