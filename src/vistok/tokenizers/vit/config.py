"""Options of the ``vit`` and ``focus-vit-s14`` tokenizers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["ViTConfig", "FocusViTConfig", "FOCUS", "FOCUS_LAYER", "RESIZE_MODES", "BACKENDS"]

FOCUS = "focus-vit-s14"
#: Default layer of focus-vit-s14, chosen by measurement: the best block for Fashion-MNIST k-NN on held-out
#: training images (``benchmarks/bench_knn.py --validation --seed 1``: block 9 0.730, block 8 0.718, last 0.658)
#: and again on the test split (0.770 / 0.734 / 0.606). The last blocks were fine-tuned for saliency and are
#: weaker generic features.
FOCUS_LAYER = 9
RESIZE_MODES = ("fit", "crop", "square")
BACKENDS = ("torch", "onnxruntime")


@dataclass
class _Options:
    layer: int | None = None
    norm: bool = True
    cls: str = "separate"
    attentions: bool = False
    keys: bool = False
    resize: str = "fit"
    size: int | None = None
    resample: str | None = None
    rescale: float | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    batch_size: int = 16
    tome_r: int = 0
    device: str = "cpu"
    dtype: str = "float32"


@dataclass
class ViTConfig(_Options):
    """Options of the ``vit`` tokenizer.

    model: a local transformers checkpoint folder (ViT, DINOv2, DINOv2 with registers), a Hugging Face hub id
    (only when the hub is reachable or the id is already in the local HF cache), or ``"focus-vit-s14"`` (the
    offline default). layer: ``hidden_states`` index (0 = embeddings, -1 = last); None = the checkpoint's
    default (the last block; focus-vit-s14: :data:`FOCUS_LAYER`). norm: apply the final LayerNorm.
    cls: ``"separate"`` (extra ``cls``) or ``"include"`` (token 0). attentions / keys: add
    ``cls_attention`` (+ ``cls_attention_heads``) / ``keys`` extras. saliency / saliency_map: focus-vit-s14's
    saliency per token / at full resolution.
    resize: ``"fit"`` scales the longer side to ``size`` (up or down) keeping the aspect ratio, each side rounded
    to a whole number of patches; ``"crop"`` resizes the shorter side to ``size`` and centre-crops a square;
    ``"square"`` resizes to ``size x size``. size, resample, rescale, mean, std: None takes them from the
    checkpoint (``preprocessor_config.json``). batch_size: images per forward pass. tome_r: ToMe merges per
    block (0 = off; see :mod:`vistok.tokenizers.vit`). device, dtype: where the model runs (``"cpu"``, ``"cuda"``,
    ``"cuda:1"``, ``"mps"``) and in which precision (``"float32"``, ``"float16"``, ``"bfloat16"``); tokens and
    extras are float32 either way (see :mod:`vistok._device`).
    """

    model: str = FOCUS
    saliency: bool = False
    saliency_map: bool = False
    backend: ClassVar[str] = "torch"  # fixed: vit always runs the transformers model


@dataclass
class FocusViTConfig(_Options):
    """Options of ``focus-vit-s14``: those of :class:`ViTConfig` (the weights are fixed) with CLS attention and
    saliency on by default, plus backend: ``"torch"`` (transformers ``Dinov2Model``) or ``"onnxruntime"`` (the
    package's original graph; same numbers to ~1e-5; it runs on the CPU in float32 only)."""

    model: ClassVar[str] = FOCUS  # fixed: the weights are focus-vit-s14's (vit loads other checkpoints)
    attentions: bool = True
    saliency: bool = True
    saliency_map: bool = False
    backend: str = "torch"
