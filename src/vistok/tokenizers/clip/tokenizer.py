"""The ``ContrastiveTokenizer`` class behind ``clip`` and ``siglip``: counts and patch tokens from the image
tower, and ``embed_text`` / ``similarity`` / ``zero_shot`` from the text tower."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from functools import cached_property
from typing import Any

import numpy as np

from vistok._device import placement, to_numpy
from vistok.images import ImageInput
from vistok.preprocess import Preprocess, batches, preprocess, sized_inputs
from vistok.tokenizers.clip.config import BACKENDS, SELECT, SIGLIP, ClipConfig, Family, Spec
from vistok.tokenizers.clip.hf_backend import HFModel, hf_spec
from vistok.tokenizers.clip.open_clip_backend import OpenClipModel, open_clip_spec
from vistok.tokens import Tokens

__all__ = ["ContrastiveTokenizer"]


class ContrastiveTokenizer:
    """Patch tokens and embeddings of a CLIP or SigLIP model; ``embed_text``, ``similarity`` and
    ``zero_shot`` use its text tower. Weights load on first use (or ``check()``)."""

    kind = "soft"
    decodable = False

    def __init__(self, config: ClipConfig, family: Family) -> None:
        if config.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {config.backend!r}")
        if not isinstance(config.batch_size, int) or config.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {config.batch_size!r}")
        if isinstance(config.layer, bool) or not isinstance(config.layer, (int, np.integer)):
            raise ValueError(f"layer must be an integer hidden_states index (-1 = the last layer, -2 = the one "
                             f"before, 0 = the embeddings), got {config.layer!r}")
        if config.select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(map(repr, SELECT))} ('default' drops the class "
                             f"token, 'full' keeps it as token 0), got {config.select!r}")
        config.layer = int(config.layer)  # a numpy integer too, so that the metadata stays JSON
        self._place = placement(config.device, config.dtype)
        self.config = config
        self.family = family
        self.name = family.name
        self._model: HFModel | OpenClipModel | None = None

    # -- what is known without weights ----------------------------------------------------------
    @cached_property
    def spec(self) -> Spec:
        """Paths, preprocessing and patch size, read from the checkpoint's config files (no weights)."""
        build = hf_spec if self.config.backend == "transformers" else open_clip_spec
        return build(self.config, self.family)

    @property
    def preprocessing(self) -> Preprocess:
        """The :class:`~vistok.preprocess.Preprocess` applied to every image."""
        return self.spec.preprocessing

    @cached_property
    def block(self) -> int | None:
        """``layer`` as an index in ``0..N`` into the ``N + 1`` hidden states (``N``: the last; None when the
        tower's depth is unknown and ``layer=-1``), checked against the checkpoint's config (no weights)."""
        layer, n = int(self.config.layer), self.spec.layers
        if n is None:
            if layer != -1:
                raise ValueError(f"layer={layer}: the number of layers of this image tower is unknown, so only "
                                 "layer=-1 (its final tokens) is supported")
            return None
        if not -(n + 1) <= layer <= n:
            raise ValueError(f"layer={layer} is out of range: the vision tower has {n} layers, so layer must lie in "
                             f"{-(n + 1)}..{n} (0 = the embeddings, -1 = the last layer)")
        index = layer % (n + 1)
        if index == 0 and self.config.backend == "open_clip":
            raise ValueError(f"layer={layer} (the embeddings, before the first block) is not supported by the "
                             f"open_clip backend, which returns block outputs only; use 1..{n} or {-n}..-1")
        return index

    def _full(self) -> bool:
        """Whether the class token is token 0 (``select='full'`` on a tower that has one)."""
        return self.config.select == "full" and self.spec.class_token

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, cols)`` of patch tokens for an image of this size."""
        for label, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        out_w, out_h = self.preprocessing.output_size(int(width), int(height))
        return out_h // self.spec.patch[0], out_w // self.spec.patch[1]

    def count(self, width: int, height: int) -> int:
        """Tokens for an image of this size: ``(H/p) * (W/p)`` patches of the preprocessed input, e.g.
        ``(224/16)^2 = 196``, plus the class token with ``select='full'`` (CLIP; with ``'default'`` it comes as
        the ``cls`` extra). Reads the checkpoint's config files, not its weights."""
        rows, cols = self.grid(width, height)
        _ = self.block  # checks the layer
        return rows * cols + self._full()

    def check(self) -> None:
        """Check the options, find and load the weights now (``encode`` does it lazily); raises a clear error
        otherwise."""
        _ = self.block
        self._loaded()

    def _loaded(self) -> HFModel | OpenClipModel:
        if self._model is None:
            cls = HFModel if self.config.backend == "transformers" else OpenClipModel
            self._model = cls(self.spec, self.family, self._place)
        return self._model

    # -- images ---------------------------------------------------------------------------------
    def encode(self, images: Any) -> Tokens | list[Tokens]:
        """Tokens for one image, or a list of Tokens for a list of images (run in batches of ``batch_size``).
        An image whose preprocessing would exceed the working-size bound (a 20000x1 strip resized to a shortest
        side of 224) raises :class:`~vistok.images.ImageError` before the weights load or anything is resized.

        values: patch tokens ``(rows*cols, D)`` of hidden state ``layer`` on the grid; extras: ``embedding``
        (the projected image embedding, as ``get_image_features`` / ``encode_image`` give it, not normalised)
        and ``cls`` (the class token at the same layer) where the model has one. With ``select='full'`` the
        class token is token 0 instead: ``(1 + rows*cols, D)`` with boxes (the class token's is the part of the
        image the model saw, each patch's its cell, in source pixels) and a source map over the grid.
        """
        if isinstance(images, (list, tuple)):
            return self._encode_many(list(images))
        return self._encode_many([images])[0]

    def _encode_many(self, items: list[ImageInput]) -> list[Tokens]:
        import torch

        ready, sizes = sized_inputs(items, self.preprocessing)  # sizes checked before the weights load
        block = self.block
        model = self._loaded()
        results: list[Tokens | None] = [None] * len(items)
        for _, chunk in batches(sizes, self.preprocessing.output_size, self.config.batch_size):
            pixels = preprocess([ready[i] for i in chunk], self.preprocessing)
            with torch.inference_mode():
                maps, cls, embedding = model.images(pixels, block)
            maps = to_numpy(maps)
            for j, i in enumerate(chunk):
                rows, cols, dim = maps.shape[1:]
                values = maps[j].reshape(rows * cols, dim)
                extras = {"embedding": to_numpy(embedding[j])}
                meta = self._meta(sizes[i], (pixels.shape[3], pixels.shape[2]))
                if cls is None or not self._full():
                    if cls is not None:
                        extras["cls"] = to_numpy(cls[j])
                    results[i] = Tokens.from_grid(np.ascontiguousarray(values), (rows, cols), extras=extras, meta=meta)
                    continue
                values = np.concatenate([to_numpy(cls[j])[None], values])
                results[i] = Tokens(values, boxes=self._boxes(sizes[i], (rows, cols)),
                                    source=np.arange(1, rows * cols + 1), base_grid=(rows, cols), extras=extras,
                                    meta=meta)
        return results  # type: ignore[return-value]

    def _boxes(self, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
        """``(1 + rows*cols, 4)`` boxes in source pixels for ``select='full'``: the part of the image the model
        saw (after the centre crop) for the class token, then each patch's cell, clipped to the image."""
        (w, h), (rows, cols), pp = size, grid, self.preprocessing
        rw, rh = pp.resized_size(w, h)
        ow, oh = pp.output_size(w, h)
        left, top = (rw - ow) // 2, (rh - oh) // 2  # the crop's offsets, as preprocess takes them
        ph, pw = self.spec.patch
        r, c = np.divmod(np.arange(rows * cols), cols)
        cells = np.stack([c * pw, r * ph, (c + 1) * pw, (r + 1) * ph], axis=1)
        boxes = np.concatenate([[[0, 0, cols * pw, rows * ph]], cells]) + np.array([left, top, left, top])
        boxes = boxes * np.array([w / rw, h / rh, w / rw, h / rh])
        return np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)

    def _meta(self, image_size: tuple[int, int], working: tuple[int, int]) -> dict[str, Any]:
        spec = self.spec
        return {
            "tokenizer": self.name,
            "config": self._config_dict(),
            "image_size": [int(image_size[0]), int(image_size[1])],
            "working_size": [int(working[0]), int(working[1])],
            "model": self.config.model,
            "model_path": str(spec.path),
            "backend": self.config.backend,
            "patch_size": list(spec.patch),
            "tokens": self._describe_tokens(),
        }

    def _describe_tokens(self) -> str:
        """What the tokens are: where they come from, the layer and the select used."""
        c, last = self.config, self.block == self.spec.layers
        if c.backend == "transformers":
            norm = "after post_layernorm" if self.family == SIGLIP else "before post_layernorm"
            where = (f"vision last_hidden_state ({norm})" if last else
                     f"vision hidden_states[{c.layer}], no final norm") + " (transformers)"
        else:
            where = ("visual.forward_intermediates last block, final norm applied" if last else
                     f"visual.forward_intermediates block {self.block} of {self.spec.layers}, no final norm") \
                + " (open_clip)"
        if not self.spec.class_token:
            kept = "patch tokens (the tower has no class token)"
        elif self._full():
            kept = "class token first, then the patch tokens"
        else:
            kept = "patch tokens, class token in extras['cls']"
        return f"{where}; layer={c.layer}, select={c.select!r}: {kept}"

    def _image_embedding(self, image: Any) -> Any:
        import torch

        if isinstance(image, Tokens):
            if "embedding" not in image.extras or image.meta.get("tokenizer") != self.name:
                raise ValueError(f"expected Tokens from the {self.name!r} tokenizer (with an 'embedding' extra), "
                                 f"got {image!r}")
            return torch.from_numpy(image.extras["embedding"]).float()[None]
        if isinstance(image, (list, tuple)):
            raise TypeError("similarity/zero_shot take one image; call them once per image")
        return torch.from_numpy(self.encode(image).extras["embedding"])[None]

    # -- text -----------------------------------------------------------------------------------
    def embed_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(T, E)`` projected text embeddings (as ``get_text_features`` / ``encode_text`` give them,
        not normalised), in the image embedding's space."""
        import torch

        items = [texts] if isinstance(texts, str) else list(texts)
        if not items or not all(isinstance(t, str) for t in items):
            raise ValueError("embed_text needs a non-empty list of strings")
        model = self._loaded()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(items), 64):
                parts.append(model.texts(items[start:start + 64]).float().cpu())
        return torch.cat(parts).numpy()

    def similarity(self, image: Any, texts: str | Sequence[str]) -> np.ndarray:
        """``(T,)`` the model's logits for one image against each text: ``exp(t) * cos(image, text)``,
        plus the learnt bias ``b`` for SigLIP; the same numbers as the model's ``logits_per_image``.
        ``image`` is an image or Tokens from this tokenizer (its ``embedding`` extra is reused)."""
        import torch

        image_emb = self._image_embedding(image)
        text_emb = torch.from_numpy(self.embed_text(texts))
        scale, bias = self._loaded().logit_scale_bias()
        image_emb = image_emb / image_emb.norm(p=2, dim=-1, keepdim=True)
        text_emb = text_emb / text_emb.norm(p=2, dim=-1, keepdim=True)
        with torch.inference_mode():
            logits = (text_emb @ image_emb.T)[:, 0] * scale.detach().float().cpu().exp()
            if bias is not None:
                logits = logits + bias.detach().float().cpu()
        return logits.reshape(-1).numpy()

    def zero_shot(self, image: Any, labels: Sequence[str],
                  template: str = "a photo of a {}.") -> list[tuple[str, float]]:
        """Zero-shot classification: ``[(label, probability)]``, most probable first. The texts are
        ``template.format(label)``. CLIP: a softmax over the labels (they sum to 1). SigLIP: an independent
        sigmoid per label, as in Zhai et al. 2023 (they need not sum to 1)."""
        labels = list(labels)
        if not labels:
            raise ValueError("zero_shot needs at least one label")
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}' where the label goes, got {template!r}")
        logits = self.similarity(image, [template.format(label) for label in labels]).astype(np.float64)
        if self.family.probabilities == "softmax":
            shifted = np.exp(logits - logits.max())
            probs = shifted / shifted.sum()
        else:
            probs = 1.0 / (1.0 + np.exp(-logits))
        order = sorted(range(len(labels)), key=lambda i: -probs[i])
        return [(labels[i], float(probs[i])) for i in order]

    # -- the rest of the protocol ---------------------------------------------------------------
    def decode(self, tokens: Tokens) -> Any:
        raise NotImplementedError(f"{self.name} tokens are encoder features and do not decode to an image")

    def _config_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.config).items()}

    def describe(self) -> dict[str, Any]:
        """Name, kind and config, for listings and file metadata."""
        return {"name": self.name, "kind": self.kind, "decodable": self.decodable, "config": self._config_dict(),
                "probabilities": self.family.probabilities}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self._config_dict().items() if v is not None)
        return f"{type(self).__name__}({self.name}: {options})"
