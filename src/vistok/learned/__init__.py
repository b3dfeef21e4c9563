"""Learned tokenizers: train a VQ/FSQ/LFQ/RVQ/KL autoencoder on your images, encode to ids, decode back.

``train_tokenizer`` is what ``vistok train`` calls; the trained folder loads with ``vistok.load(folder)``.
Importing this package imports torch; ``vistok`` itself does not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["train_tokenizer"]


def train_tokenizer(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    quantizer: str = "fsq",
    size: int | None = None,
    pool: int = 20000,
    resume: bool = False,
    on_step: Callable[[int, dict[str, Any] | None], None] | None = None,
    stop_after: int | None = None,
    on_data: Callable[[Any], None] | None = None,
    command: str | None = None,
    **options: Any,
) -> Path:
    """Train a tokenizer on ``data`` (a folder, ``fashion-mnist`` or ``samples-64``) into the folder ``out``.

    ``options`` are fields of :class:`~vistok.learned.model.AutoencoderConfig` (``levels``, ``factor``,
    ``codebook_size``, ...) and :class:`~vistok.learned.train.TrainConfig` (``steps``, ``seed``, ...). The
    crop pool is drawn with the training seed; ``on_data(TrainingData)`` sees the data (and its unreadable
    inputs) before training starts. Returns the path of ``model.safetensors``."""
    from dataclasses import fields

    from vistok.learned.data import load_data
    from vistok.learned.model import AutoencoderConfig
    from vistok.learned.train import TrainConfig, train

    model_keys = {f.name for f in fields(AutoencoderConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - model_keys - train_keys - {"channels"})
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(unknown)}; model options: "
                        f"{', '.join(sorted(model_keys))}; training options: {', '.join(sorted(train_keys))}")
    train_config = TrainConfig(**{k: v for k, v in options.items() if k in train_keys})
    dataset = load_data(data, size=size, pool=pool, seed=train_config.seed, channels=options.get("channels"))
    if on_data is not None:
        on_data(dataset)
    model_options = {k: v for k, v in options.items() if k in model_keys}
    model_options.setdefault("channels", dataset.channels)
    model_config = AutoencoderConfig(quantizer=quantizer, **model_options)
    info = {"command": command, "image_size": list(dataset.size), "skipped": len(dataset.skipped)}
    return train(dataset, model_config, train_config, out, resume=resume, info=info, on_step=on_step,
                 stop_after=stop_after)
