"""Resumable training loops shared by :mod:`vistok.vlm.small`, :mod:`vistok.vlm.llama_vid` and :mod:`vistok.align`:
a checkpoint in the output folder (``torch.save`` of tensors, numbers and strings only, read back with
``weights_only=True`` so no pickled code runs), refused when the settings differ, and written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT", "open_checkpoint", "optimizer_step", "save_checkpoint"]

CHECKPOINT = "checkpoint.pt"


class _TrainingError(ValueError):
    """The default error type of :func:`open_checkpoint`."""


def open_checkpoint(out: Path, settings: dict[str, Any], resume: bool, error: type[Exception] = _TrainingError
                    ) -> dict[str, Any] | None:
    """The checkpoint in ``out`` to resume from (``resume``), or None for a fresh run. Raises ``error`` (one
    line) when resuming without a checkpoint or with other ``settings``, or starting over an earlier run's."""
    ckpt_file = out / CHECKPOINT
    if not resume:
        if ckpt_file.is_file():
            raise error(f"{out}: holds a checkpoint of an earlier run; pass resume to continue it, or use a new "
                        "folder")
        return None
    if not ckpt_file.is_file():
        raise error(f"{out}: no {CHECKPOINT} to resume from; run without resume to start")
    state = torch.load(ckpt_file, weights_only=True)  # tensors, numbers, strings: no pickle code runs
    if state["settings"] != settings:
        changed = sorted(k for k in set(settings) | set(state["settings"])
                         if settings.get(k) != state["settings"].get(k))
        raise error(f"{out}: the checkpoint was made with other settings ({', '.join(changed)}); resume with the "
                    "same options, or train into a new folder")
    return state


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], loss: torch.Tensor, lr: float
                   ) -> float:
    """One AdamW step at ``lr`` with the gradient norm clipped to 1; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    return loss.item()


def save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``out/checkpoint.pt`` atomically (a kill leaves the previous one whole)."""
    tmp = out / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT)
