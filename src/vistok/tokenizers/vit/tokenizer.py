"""The ``ViTTokenizer`` class: options, working sizes and counts, loading, and encoding into ``Tokens``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, ClassVar

import numpy as np

from vistok._device import placement
from vistok.preprocess import Preprocess, batches, preprocess, sized_inputs
from vistok.tokenizers.vit.checkpoint import Source, cached, describe_source, focus_norm, load_transformers
from vistok.tokenizers.vit.config import BACKENDS, FOCUS_LAYER, RESIZE_MODES, FocusViTConfig, ViTConfig
from vistok.tokenizers.vit.forward import Request, forward_onnx, forward_torch
from vistok.tokens import Tokens

__all__ = ["ViTTokenizer"]


class ViTTokenizer:
    """Patch tokens of a ViT / DINOv2 block (see :mod:`vistok.tokenizers.vit`)."""

    kind: ClassVar[str] = "soft"
    decodable: ClassVar[bool] = False

    def __init__(self, config: ViTConfig | FocusViTConfig | None = None, name: str = "vit") -> None:
        self.config = config if config is not None else ViTConfig()
        self.name = name
        c = self.config
        if c.cls not in ("separate", "include"):
            raise ValueError(f"cls must be 'separate' or 'include', got {c.cls!r}")
        if c.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {c.resize!r}")
        if c.size is not None and (not isinstance(c.size, int) or c.size <= 0):
            raise ValueError(f"size must be a positive integer, got {c.size!r}")
        if not isinstance(c.batch_size, int) or c.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {c.batch_size!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {self.backend!r}")
        if isinstance(c.tome_r, bool) or not isinstance(c.tome_r, int) or c.tome_r < 0:
            raise ValueError(f"tome_r must be a whole number >= 0 (tokens ToMe merges per block), got {c.tome_r!r}")
        if c.tome_r and self.backend == "onnxruntime":
            raise ValueError("tome_r patches the PyTorch model; the onnxruntime graph is fixed (use backend='torch')")
        self._place = placement(c.device, c.dtype)
        if self.backend == "onnxruntime" and (c.device, c.dtype) != ("cpu", "float32"):
            raise ValueError(f"backend='onnxruntime' runs on the CPU in float32 only, got device={c.device!r}, "
                             f"dtype={c.dtype!r}; use backend='torch' for other devices and precisions")
        self._source_info: Source | None = None
        self._model: Any = None
        self._head: Any = None
        self._onnx: Any = None

    # -- the checkpoint --------------------------------------------------------------------------
    @property
    def model_ref(self) -> str:
        return self.config.model

    @property
    def backend(self) -> str:
        return self.config.backend

    @property
    def source(self) -> Source:
        """The checkpoint's architecture facts and preprocessing, read without loading weights."""
        if self._source_info is None:
            self._source_info = describe_source(self.model_ref)
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
                f"{self.source.ref} gives no {key!r} for preprocessing (no preprocessor_config.json, or a value "
                f"vistok does not know); pass it: vistok.load({self.name!r}, model=..., {key}=...)"
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

    def preprocessing_for(self, width: int, height: int) -> Preprocess:
        """The :class:`~vistok.preprocess.Preprocess` applied to an image of this size (its geometry depends on
        the working size; its bound, :meth:`Preprocess.check_size`, refuses extreme shapes in ``crop`` mode)."""
        work = self.working_size(width, height)
        if self.config.resize == "crop":
            geometry: dict[str, Any] = {"size": self._preprocess_value("size"), "crop": (work[1], work[0])}
        else:
            geometry = {"size": (work[1], work[0]), "crop": None}
        return Preprocess(**geometry, resample=self._preprocess_value("resample"),
                          rescale=float(self._preprocess_value("rescale")),
                          mean=tuple(self._preprocess_value("mean")), std=tuple(self._preprocess_value("std")))

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
        place = self._place
        where = (place.device, place.dtype)  # one shared model per source, device and dtype
        if src.kind == "focus":
            from vistok.weights import focus_vit

            if self.backend == "onnxruntime":
                if self._onnx is None:
                    self._onnx = cached(("focus-onnx",), focus_vit.OnnxFocus)
                    self._norm = cached(("focus-norm",), lambda: focus_norm(focus_vit))
                return
            if self._model is None:
                self._model = cached(("focus", *where), lambda: place.model(focus_vit.build_backbone()))
            if saliency and self._head is None:
                self._head = cached(("focus-head", *where), lambda: place.model(focus_vit.build_saliency_head()))
            return
        if self._model is None:
            self._model = cached((src.kind, src.ref, *where), lambda: place.model(load_transformers(src)))

    # -- encoding --------------------------------------------------------------------------------
    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list (run in batches of ``batch_size`` per working
        size). An image whose preprocessing would exceed the working-size bound raises
        :class:`~vistok.images.ImageError` before anything is loaded or resized."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        _ = self.layer  # validates before any work
        prepared, sizes = sized_inputs(items, self.preprocessing_for)
        self._load()
        out: list[Tokens | None] = [None] * len(items)
        for work, chunk in batches(sizes, self.working_size, self.config.batch_size):
            cfg = self.preprocessing_for(*sizes[chunk[0]])
            pixels = preprocess([prepared[i] for i in chunk], cfg)
            for i, tokens in zip(chunk, self._run(pixels)):
                tokens.meta.update(self._meta(sizes[i], work))
                if tokens.boxes is not None:  # unit boxes -> source pixels
                    tokens.boxes = tokens.boxes * np.array([*sizes[i], *sizes[i]], np.float32)
                out[i] = tokens
        return out[0] if single else out  # type: ignore[return-value]

    def _run(self, pixels: Any) -> list[Tokens]:
        """Forward one batch ``(B, 3, H, W)`` and cut the result into per-image ``Tokens``."""
        import torch

        rows, cols = pixels.shape[2] // self.patch, pixels.shape[3] // self.patch
        saliency = self._wants_saliency()
        req = Request(self.layer, self.config.norm, self.config.attentions, self.config.keys, self.config.tome_r,
                      1 + self.source.registers, self._head if saliency else None)
        if self._onnx is not None:
            seq, keys, sal_map, attn, merged = forward_onnx(self._onnx, self._norm, pixels.numpy(), req, saliency)
        else:
            with torch.inference_mode():
                seq, keys, sal_map, attn, merged = forward_torch(self._model, self._place.inputs(pixels), (rows, cols),
                                                                 req)
        r = self.source.registers
        include = self.config.cls == "include"
        keep = np.r_[0, np.arange(1 + r, seq.shape[1])] if include else np.arange(1 + r, seq.shape[1])
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
                extras.update(self._saliency(sal_map[b], (rows, cols), None if merged is None else merged[b]))
            values = np.ascontiguousarray(seq[b][keep], dtype=np.float32)
            results.append(self._layout(values, (rows, cols), extras, None if merged is None else merged[b]))
        return results

    def _saliency(self, sal_map: np.ndarray, grid: tuple[int, int], merged: np.ndarray | None) -> dict[str, Any]:
        """The ``saliency`` extra (the map's mean per token) and, on request, the full ``saliency_map``."""
        (rows, cols), p = grid, self.patch
        per_patch = sal_map.reshape(rows, p, cols, p).mean(axis=(1, 3)).reshape(-1)
        if merged is not None:  # the mean over each merged token's patches
            per_patch = np.bincount(merged, per_patch) / np.bincount(merged)
        include = self.config.cls == "include"
        out = {"saliency": (np.r_[sal_map.mean(), per_patch] if include else per_patch).astype(np.float32)}
        if self.config.saliency_map:
            out["saliency_map"] = sal_map.astype(np.float32)
        return out

    def _layout(self, values: np.ndarray, grid: tuple[int, int], extras: dict[str, np.ndarray],
                merged: np.ndarray | None = None) -> Tokens:
        include = self.config.cls == "include"
        rows, cols = grid
        r, c = np.divmod(np.arange(rows * cols), cols)
        whole = [[0.0, 0.0, 1.0, 1.0]]  # CLS: the whole image
        if merged is not None:  # ToMe tokens: no grid, the source map says which patches each stands for
            if not include:
                return Tokens(values, source=merged, base_grid=grid, extras=extras)
            boxes = np.tile(np.array([[np.inf, np.inf, -np.inf, -np.inf]]), (len(values) - 1, 1))
            for column, edge, combine in ((0, c / cols, np.minimum), (1, r / rows, np.minimum),
                                          (2, (c + 1) / cols, np.maximum), (3, (r + 1) / rows, np.maximum)):
                combine.at(boxes[:, column], merged, edge)
            boxes = np.concatenate([whole, boxes]).astype(np.float32)
            return Tokens(values, boxes=boxes, source=merged + 1, base_grid=grid, extras=extras)
        if not include:
            return Tokens.from_grid(values, grid, extras=extras)
        # CLS first, then the patches with their cells as boxes, as fractions of the image (encode scales them
        # to source pixels)
        boxes = np.concatenate([whole, np.stack([c / cols, r / rows, (c + 1) / cols, (r + 1) / rows], axis=1)])
        return Tokens(values, boxes=boxes.astype(np.float32), source=np.arange(1, rows * cols + 1), base_grid=grid,
                      extras=extras)

    # -- description -----------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self.config)))

    def _meta(self, image_size: tuple[int, int], work: tuple[int, int]) -> dict[str, Any]:
        return {
            "tokenizer": self.name, "config": self._config_dict(), "image_size": list(image_size),
            "working_size": list(work), "model": self.source.ref, "model_type": self.source.model_type,
            "patch": self.patch, "layer": self.layer, "backend": self.backend,
        }

    def describe(self) -> dict[str, Any]:
        """Name, kind and config, for listings and file metadata."""
        return {"name": self.name, "kind": self.kind, "decodable": self.decodable, "config": self._config_dict()}

    def decode(self, tokens: Tokens | Sequence[Tokens]) -> Any:
        raise NotImplementedError(f"{self.name} tokens are encoder features and do not decode to an image; "
                                  "use a decodable tokenizer (vistok list) for reconstructions")

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._config_dict().items())
        return f"{type(self).__name__}({options})"
