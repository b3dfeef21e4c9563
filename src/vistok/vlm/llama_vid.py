"""LLaMA-VID's two tokens per image or frame, trained in the small VLM of :mod:`vistok.vlm.small`.

Li, Wang and Jia, "LLaMA-VID: An Image is Worth 2 Tokens in Large Language Models" (ECCV 2024), represent
each image or video frame by a *context* token, the visual tokens weighted by their attention to the text
query, and a *content* token, the visual tokens pooled. What follows is written from the paper and from
``token_generation`` / ``vlm_attention`` in the authors' ``llamavid/model/llamavid_arch.py``
(github.com/dvlab-research/LLaMA-VID); no code is taken from it. What they do:

- the text query (M vectors) is projected to the visual width by a linear map (``vlm_att_projector``);
- keys are the visual tokens through a square linear map (``vlm_att_key_projector``); scores are
  ``query @ keys^T / sqrt(visual width)``, softmax over the visual tokens, one row per query vector;
- the context vector is ``softmax @ visual`` (the values are the raw visual tokens, not the keys) averaged
  over the query vectors, and the context token is that vector through a linear map to the LM's width
  (``vlm_att_val_projector``);
- the content token(s): with ``compress_type="mean"`` the mean of the visual tokens (our ``grid=1``); with
  ``"grid:g"`` average pooling of the square patch grid with kernel = stride = side // g, giving g x g
  tokens in row-major order; then the ordinary LLaVA projector (``mm_projector``, 2-layer GELU MLP);
- the order is ``[context, content...]`` per image; for a video every frame gets its two tokens with the same
  question, frames in order (``[ctx_1, content_1, ctx_2, content_2, ...]``), then the text.

Where vistok departs, and why:

- **The query.** The authors run the instruction text through a BERT-sized Q-Former (with learned query
  tokens) or a text-only BERT, cross-attending to the image, and average over its 32 output vectors. vistok
  has no text encoder, so the query is the question's own words: their embeddings from the language model's
  input table, through the linear map to the visual width. The average is over the question's words
  (padding masked out). The model therefore never sees the answer through the query: only the question's
  ids are used.
- **The key bias.** ``q . (W v + b)`` adds ``q . b`` to every score of a query word, which the softmax
  cancels, so the key map has no bias (same outputs, one useless parameter fewer), and the scores are
  computed as ``(q W) . v``: per word a ``D x D`` product instead of one per visual token.
- **Pooling.** ``torch.nn.functional.adaptive_avg_pool2d`` to ``grid`` rows x columns on the tower's patch
  grid (non-square grids and non-square ``grid`` allowed). Where ``grid`` divides the patch grid this equals
  the authors' ``avg_pool2d``; otherwise the adaptive windows cover every patch where theirs drop the rest.
- **Standardisation.** As in :mod:`vistok.vlm.small`, the tower's features enter standardised per channel
  (``mean``/``std`` buffers of :class:`ContextContent`, set from the training features and saved with the
  weights).
- ``context=False`` leaves the context token out: a query-blind pool of the same visual tokens, the
  ablation that tests what the context token adds.

The model (:class:`LlamaVidVLM`): the frozen focus-vit-s14 tower of :func:`vistok.vlm.small.build` (its
``vision_feature_layer`` tokens without CLS, 16 x 16 at 224 px), :class:`ContextContent`, and the same small
Llama LM and word-level tokenizer, fed ``[context, content]`` per image (per frame for a clip) then the
question, trained on the answer tokens alone. :func:`train_llama_vid` trains it on cached tower features;
:meth:`LlamaVidVLM.save` / :func:`load` write and read a folder (safetensors, JSON config, processor);
:func:`ask` answers greedily; :func:`evaluate` scores questions or clips per kind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vistok.vlm import small

__all__ = ["ContextContent", "LlamaVidVLM", "LlamaVidError", "build", "train_llama_vid", "load", "ask",
           "evaluate", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE = "llama_vid.json"
WEIGHTS_FILE = "model.safetensors"
KIND = "vistok-llama-vid"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm")


class LlamaVidError(ValueError):
    """A bad argument, input shape or folder (one line, names the input)."""


def _grid(grid: int | Sequence[int]) -> tuple[int, int]:
    pair = (grid, grid) if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)
    if len(pair) != 2 or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in pair):
        raise LlamaVidError(f"grid must be a positive integer or (rows, cols) of positive integers, got {grid!r}")
    return pair  # type: ignore[return-value]


# -- the two tokens ---------------------------------------------------------------------------------


class ContextContent(nn.Module):
    """LLaMA-VID's context and content tokens for a batch of images (or frames).

    ``forward(visual (B, N, Dv), query (B, L, Dq), query_mask (B, L) bool | None, grid_shape=(rows, cols))``
    returns ``tokens`` (B, 1 + gr * gc, lm_dim): the context token, then the ``grid`` content tokens in
    row-major order (the authors' order), and ``attention`` (B, N): the softmax weight each visual token got,
    averaged over the unmasked query words (each row sums to 1; ``None`` with ``context=False``).

    Parameters: ``query`` (Dq -> Dv, the text query to the visual width), ``key`` (Dv -> Dv, no bias),
    ``value`` (Dv -> lm_dim, the context token's projection), ``content`` (the LLaVA projector, Dv -> lm_dim:
    2-layer GELU MLP, or one linear map with ``projector="linear"``); buffers ``mean``/``std`` (Dv) standardise
    the visual tokens first.
    """

    def __init__(self, visual_dim: int, query_dim: int, lm_dim: int, *, grid: int | Sequence[int] = 1,
                 projector: str = "mlp", context: bool = True) -> None:
        super().__init__()
        for name, value in (("visual_dim", visual_dim), ("query_dim", query_dim), ("lm_dim", lm_dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LlamaVidError(f"{name} must be a positive integer, got {value!r}")
        if projector not in small.PROJECTORS:
            raise LlamaVidError(f"projector must be one of {', '.join(small.PROJECTORS)}, got {projector!r}")
        self.visual_dim, self.query_dim, self.lm_dim = visual_dim, query_dim, lm_dim
        self.grid = _grid(grid)
        self.projector = projector
        self.use_context = bool(context)
        self.query = nn.Linear(query_dim, visual_dim)
        self.key = nn.Linear(visual_dim, visual_dim, bias=False)
        self.value = nn.Linear(visual_dim, lm_dim)
        self.content = (nn.Sequential(nn.Linear(visual_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))
                        if projector == "mlp" else nn.Linear(visual_dim, lm_dim))
        self.register_buffer("mean", torch.zeros(visual_dim))
        self.register_buffer("std", torch.ones(visual_dim))

    @property
    def tokens_per_image(self) -> int:
        """Tokens each image (or frame) becomes: the context token (if any) and the content tokens."""
        return int(self.use_context) + self.grid[0] * self.grid[1]

    def _check(self, visual: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor | None,
               grid_shape: tuple[int, int] | None) -> tuple[int, int]:
        if visual.ndim != 3 or visual.shape[-1] != self.visual_dim:
            raise LlamaVidError(f"visual must be (batch, tokens, {self.visual_dim}), got {tuple(visual.shape)}")
        batch, n = visual.shape[:2]
        if query.ndim != 3 or query.shape[-1] != self.query_dim or query.shape[0] != batch:
            raise LlamaVidError(f"query must be ({batch}, words, {self.query_dim}) to match visual, got "
                                f"{tuple(query.shape)}")
        if query_mask is not None:
            if tuple(query_mask.shape) != tuple(query.shape[:2]):
                raise LlamaVidError(f"query_mask must be {tuple(query.shape[:2])} like query's first two "
                                    f"dimensions, got {tuple(query_mask.shape)}")
            if not bool(query_mask.bool().any(1).all()):
                raise LlamaVidError("query_mask leaves a row without words; every image needs at least one "
                                    "query word")
        if grid_shape is None:
            side = math.isqrt(n)
            if side * side != n:
                raise LlamaVidError(f"visual has {n} tokens, not a square grid; pass grid_shape=(rows, cols)")
            grid_shape = (side, side)
        rows, cols = (int(g) for g in grid_shape)
        if rows * cols != n:
            raise LlamaVidError(f"grid_shape {rows}x{cols} holds {rows * cols} tokens but visual has {n}; pass "
                                "the patch grid's rows and columns")
        if self.grid[0] > rows or self.grid[1] > cols:
            raise LlamaVidError(f"content grid {self.grid[0]}x{self.grid[1]} is finer than the patch grid "
                                f"{rows}x{cols}; use a smaller grid")
        return rows, cols

    def forward(self, visual: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor | None = None,
                grid_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows, cols = self._check(visual, query, query_mask, grid_shape)
        batch, n, dim = visual.shape
        v = (visual.to(self.mean.dtype) - self.mean) / self.std
        tokens = []
        attention = None
        if self.use_context:
            q = self.query(query.to(v.dtype)) @ self.key.weight         # (B, L, Dv): q W, so (q W) . v = q . (W v)
            weights = (q @ v.transpose(1, 2) / math.sqrt(dim)).softmax(-1)  # (B, L, N), softmax over visual tokens
            if query_mask is None:
                attention = weights.mean(1)
            else:
                m = query_mask.to(weights.dtype)
                attention = (weights * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            tokens.append(self.value(attention[:, None] @ v))            # (B, 1, lm_dim)
        pooled = nn.functional.adaptive_avg_pool2d(v.transpose(1, 2).reshape(batch, dim, rows, cols), self.grid)
        tokens.append(self.content(pooled.flatten(2).transpose(1, 2)))   # (B, gr * gc, lm_dim), row-major
        return torch.cat(tokens, 1), attention


# -- the model ------------------------------------------------------------------------------------


class LlamaVidVLM(nn.Module):
    """The frozen tower, :class:`ContextContent` and a Llama LM; laid out like LLaVA (``model.vision_tower``,
    ``model.language_model``, ``lm_head``, ``config.vision_feature_layer``) so :func:`vistok.vlm.small.tower_features`
    applies. ``processor`` holds the image processor and the tokenizer. Build one with :func:`build` or
    :func:`load`."""

    def __init__(self, config: Any, tower: nn.Module, language_model: nn.Module, lm_head: nn.Module,
                 context_content: ContextContent, processor: Any) -> None:
        super().__init__()
        self.config = config  # a LlavaConfig: vision_config, text_config, vision_feature_layer
        self.model = nn.Module()
        self.model.vision_tower = tower.requires_grad_(False)
        self.model.language_model = language_model
        self.model.context_content = context_content
        self.lm_head = lm_head
        self.processor = processor
        side = int(processor.image_processor.size["height"]) // int(config.vision_config.patch_size)
        self.grid_shape = (side, side)

    @property
    def context_content(self) -> ContextContent:
        return self.model.context_content

    @property
    def dtype(self) -> torch.dtype:
        """The tower's dtype (what :func:`vistok.vlm.small.tower_features` feeds it)."""
        return next(self.model.vision_tower.parameters()).dtype

    def features(self, images: Sequence[Any]) -> torch.Tensor:
        """The tower's tokens (n, N, Dv) for Pillow images, as cached for training."""
        pixels = self.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
        return small.tower_features(self, pixels)

    def visual_tokens(self, features: torch.Tensor, query_ids: torch.Tensor, query_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``features`` (B, F, N, Dv) of F frames (F = 1 for an image) and the question ids (B, L) ->
        the LM inputs (B, F * T, H) (per frame ``[context, content...]``, frames in order) and the
        context attention (B, F, N)."""
        batch, frames = features.shape[:2]
        words = self.model.language_model.get_input_embeddings()(query_ids)
        words = words.repeat_interleave(frames, 0)
        mask = None if query_mask is None else query_mask.bool().repeat_interleave(frames, 0)
        tokens, attention = self.context_content(features.flatten(0, 1), words, mask, self.grid_shape)
        tokens = tokens.reshape(batch, frames * tokens.shape[1], -1)
        return tokens, None if attention is None else attention.reshape(batch, frames, -1)

    def logits(self, features: torch.Tensor, query_ids: torch.Tensor, query_mask: torch.Tensor | None,
               text_ids: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits (B, F * T + Lt, vocab) for ``[visual tokens, text]`` (text right-padded)."""
        visual, _ = self.visual_tokens(features, query_ids, query_mask)
        embeds = torch.cat([visual, self.model.language_model.get_input_embeddings()(text_ids)], 1)
        mask = None
        if text_mask is not None:
            mask = torch.cat([torch.ones(visual.shape[:2], dtype=torch.long), text_mask.long()], 1)
        return self.lm_head(self.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``folder``: the weights (``model.safetensors``), ``llama_vid.json`` and the processor
        (tokenizer and image processor, ``save_pretrained``)."""
        from safetensors.torch import save_file

        out = Path(folder).expanduser()
        if out.exists() and not out.is_dir():
            raise LlamaVidError(f"{out}: exists and is not a folder; pass a folder for the model")
        out.mkdir(parents=True, exist_ok=True)
        cc = self.context_content
        config = {"kind": KIND, "llava_config": self.config.to_dict(), "grid": list(cc.grid),
                  "projector": cc.projector, "context": cc.use_context}
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        self.processor.save_pretrained(out)
        return out


def _assemble(config: Any, tower: nn.Module, language_model: nn.Module, lm_head: nn.Module, processor: Any, *,
              grid: int | Sequence[int], projector: str, context: bool) -> LlamaVidVLM:
    cc = ContextContent(int(config.vision_config.hidden_size), int(config.text_config.hidden_size),
                        int(config.text_config.hidden_size), grid=grid, projector=projector, context=context)
    return LlamaVidVLM(config, tower, language_model, lm_head, cc, processor).eval()


def build(tower: Any = "focus-vit-s14", *, grid: int | Sequence[int] = 1, projector: str = "mlp",
          context: bool = True, seed: int = 0, **model_options: Any) -> LlamaVidVLM:
    """A fresh :class:`LlamaVidVLM` from the parts of :func:`vistok.vlm.small.build` (its frozen tower, Llama LM,
    head and processor; ``model_options``: words, hidden, layers, heads, feature_layer, image_size ...) with a
    new :class:`ContextContent` (``grid`` content tokens, ``projector``, ``context``), all seeded by ``seed``."""
    grid = _grid(grid)
    if projector not in small.PROJECTORS:
        raise LlamaVidError(f"projector must be one of {', '.join(small.PROJECTORS)}, got {projector!r}")
    try:
        llava, processor = small.build(tower, seed=seed, **model_options)
    except small.TrainError as error:
        raise LlamaVidError(str(error)) from None
    side = int(processor.image_processor.size["height"]) // int(llava.config.vision_config.patch_size)
    if grid[0] > side or grid[1] > side:
        raise LlamaVidError(f"grid {grid[0]}x{grid[1]} is finer than the {side}x{side} patch grid; use a smaller "
                            "grid")
    torch.manual_seed(seed)
    return _assemble(llava.config, llava.model.vision_tower, llava.model.language_model, llava.lm_head, processor,
                     grid=grid, projector=projector, context=context)


def load(folder: str | os.PathLike) -> LlamaVidVLM:
    """The :class:`LlamaVidVLM` that :meth:`LlamaVidVLM.save` (or :func:`train_llama_vid`) wrote to ``folder``."""
    import transformers
    from safetensors.torch import load_file

    path = Path(folder).expanduser()
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise LlamaVidError(f"{path}: no {CONFIG_FILE} and {WEIGHTS_FILE}; pass a folder written by "
                            "train_llama_vid or LlamaVidVLM.save")
    saved = json.loads((path / CONFIG_FILE).read_text())
    if saved.get("kind") != KIND:
        raise LlamaVidError(f"{path / CONFIG_FILE}: not a vistok LLaMA-VID config; pass a folder written by "
                            "train_llama_vid")
    config = transformers.LlavaConfig.from_dict(saved["llava_config"])
    tower = transformers.Dinov2Model(config.vision_config)
    language_model = transformers.LlamaModel(config.text_config)
    text = config.text_config
    head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
    processor = transformers.LlavaProcessor.from_pretrained(path)
    model = _assemble(config, tower, language_model, head, processor, grid=saved["grid"],
                      projector=saved["projector"], context=saved["context"])
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    return model.eval()


# -- answering ------------------------------------------------------------------------------------


def _question_ids(model: LlamaVidVLM, question: str) -> list[int]:
    ids = model.processor.tokenizer(question, add_special_tokens=False)["input_ids"]
    if not ids:
        raise LlamaVidError(f"question {question!r} has no words; ask a question")
    return ids


@torch.no_grad()
def _greedy(model: LlamaVidVLM, features: torch.Tensor, prompts: list[list[int]], max_new: int = 4) -> list[str]:
    """Greedy answers for ``features`` (B, F, N, Dv) and question ids of one length each."""
    tokenizer = model.processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("</s>")
    query = torch.tensor(prompts)
    visual, _ = model.visual_tokens(features.float(), query)
    embed = model.model.language_model.get_input_embeddings()

    def next_logits(ids: torch.Tensor) -> torch.Tensor:
        hidden = model.model.language_model(inputs_embeds=torch.cat([visual, embed(ids)], 1)).last_hidden_state
        return model.lm_head(hidden[:, -1])

    new = small.greedy(next_logits, query, eos, max_new)
    return [tokenizer.decode(n, skip_special_tokens=True).strip() for n in new]


def _answers(model: LlamaVidVLM, features: Callable[[list[int]], torch.Tensor], questions: list[str],
             frames: list[int] | None = None, batch: int = 64) -> list[str]:
    """Answers for every question; ``features(indices)`` gives their (B, F, N, Dv) features; questions of one
    length (and frame count) are answered together."""
    prompts = [_question_ids(model, q) for q in questions]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((len(p), frames[i] if frames else 1), []).append(i)
    out = [""] * len(prompts)
    for rows in groups.values():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            for i, answer in zip(chunk, _greedy(model, features(chunk), [prompts[i] for i in chunk])):
                out[i] = answer
    return out


def _frames_of(item: Any) -> list[Any]:
    """An image, a sequence of frames, or a path to an image or video file -> Pillow frames."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return [item]
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if path.suffix.lower() in VIDEO_SUFFIXES:
            from vistok.vlm.video import read_frames

            return read_frames(path)
        if not path.is_file():
            raise LlamaVidError(f"{path}: no such image or video file; check the path")
        with Image.open(path) as image:
            return [image.convert("RGB")]
    if isinstance(item, Sequence) and item and all(isinstance(f, Image.Image) for f in item):
        return list(item)
    raise LlamaVidError(f"expected a Pillow image, a sequence of frames or a file path, got {type(item).__name__}")


@torch.no_grad()
def ask(model: LlamaVidVLM, image_or_frames: Any, question: str, *, max_new_tokens: int = 4) -> str:
    """The greedy answer of ``model`` to ``question`` about an image, a clip's frames (in order) or an image or
    video file (``.mp4``/``.mkv``/``.mov``/...: read with :func:`vistok.vlm.video.read_frames`)."""
    frames = _frames_of(image_or_frames)
    feats = model.features(frames)[None]
    return _greedy(model, feats, [_question_ids(model, question)], max_new_tokens)[0]


@torch.no_grad()
def context_attention(model: LlamaVidVLM, image_or_frames: Any, question: str) -> torch.Tensor:
    """The context token's attention over the patch grid for ``question``: (frames, rows, cols), each frame's
    weights summing to 1 (what ``vistok show`` draws)."""
    if not model.context_content.use_context:
        raise LlamaVidError("this model has no context token (trained with context=False); nothing to draw")
    frames = _frames_of(image_or_frames)
    feats = model.features(frames)[None]
    _, attention = model.visual_tokens(feats.float(), torch.tensor([_question_ids(model, question)]))
    return attention[0].reshape(len(frames), *model.grid_shape)


@torch.no_grad()
def evaluate(model: LlamaVidVLM, items: Iterable[Any]) -> dict[str, Any]:
    """Exact-match accuracy (:func:`vistok.vlm.small.score`, overall and per kind, plus ``"answers"``) on
    :class:`vistok.vlm.shapes.Question` items (``.image``) or :class:`vistok.vlm.video.Clip` items (``.frames``)."""
    items = list(items)
    frames = [_frames_of(getattr(q, "frames", None) or q.image) for q in items]
    feats = [model.features(f) for f in frames]
    answers = _answers(model, lambda rows: torch.stack([feats[i] for i in rows]), [q.question for q in items],
                       [len(f) for f in frames])
    result = small.score(answers, [q.answer for q in items], [q.kind for q in items])
    result["answers"] = answers
    return result


# -- data -----------------------------------------------------------------------------------------


def _cache_clips(model: LlamaVidVLM, split: str, n: int, seed: int, frames: int, folder: Path,
                 progress: Callable[[str, int, int], None] | None) -> dict[str, Any]:
    """``n`` clips of ``split`` (:func:`vistok.vlm.video.clips`), each written to a real H.264 file and read
    back frame by frame (:func:`~vistok.vlm.video.write_clip`, :func:`~vistok.vlm.video.read_frames`), and the
    tower's tokens of every frame: float16 memmap (n, frames, N, Dv) in ``folder`` plus a JSON of the texts;
    reused when the same split, counts and seed are there already."""
    from vistok.vlm.video import clips, read_frames, write_clip

    size = int(model.processor.image_processor.size["height"])
    layer = int(model.config.vision_feature_layer)
    name = f"clips-{split}-{n}x{frames}f-seed{seed}-size{size}-layer{layer}"
    meta_file, feat_file = folder / f"{name}.json", folder / f"{name}.npy"
    if meta_file.is_file() and feat_file.is_file():
        meta = json.loads(meta_file.read_text())
        meta["features"] = np.load(feat_file, mmap_mode="r")
        return meta
    folder.mkdir(parents=True, exist_ok=True)
    visual = model.grid_shape[0] * model.grid_shape[1]
    dim = int(model.config.vision_config.hidden_size)
    tmp = folder / f".{name}.npy.tmp"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, frames, visual, dim))
    meta: dict[str, Any] = {"questions": [], "answers": [], "kinds": [], "image": list(range(n)), "visual": visual,
                            "frames": frames}
    with tempfile.TemporaryDirectory() as scratch:
        for i, clip in enumerate(clips(n, seed=seed, split=split, frames=frames, size=size)):
            path = write_clip(clip.frames, Path(scratch) / "clip.mp4", fps=1)
            decoded = read_frames(path)
            if len(decoded) != frames:
                raise LlamaVidError(f"{split} clip {i}: wrote {frames} frames but read back {len(decoded)}")
            array[i] = model.features(decoded).float().numpy()
            for key, value in (("questions", clip.question), ("answers", clip.answer), ("kinds", clip.kind)):
                meta[key].append(value)
            if progress:
                progress(f"{split} clips", i + 1, n)
    array.flush()
    del array
    os.replace(tmp, feat_file)
    meta_file.write_text(json.dumps(meta))
    meta["features"] = np.load(feat_file, mmap_mode="r")
    return meta


def _encode(tokenizer: Any, data: dict[str, Any]) -> list[list[tuple[list[int], int]]]:
    """Per image (or clip), ``(question + answer + </s> ids, question length)`` for each of its questions."""
    eos = tokenizer.convert_tokens_to_ids("</s>")
    out: list[list[tuple[list[int], int]]] = [[] for _ in range(max(data["image"], default=-1) + 1)]
    for row, question, answer in zip(data["image"], data["questions"], data["answers"]):
        prompt = tokenizer(question, add_special_tokens=False)["input_ids"]
        out[row].append((prompt + tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos], len(prompt)))
    return out


def _batch(rows: list[tuple[list[int], int]], visual: int, pad: int) -> tuple[torch.Tensor, ...]:
    """Right-padded question ids and mask (the query), text ids and mask (question, answer, ``</s>``), and
    targets over ``[visual tokens, text]`` (-100 except where the next token is part of the answer)."""
    n_query = max(n for _, n in rows)
    width = max(len(seq) for seq, _ in rows)
    query = torch.full((len(rows), n_query), pad, dtype=torch.long)
    text = torch.full((len(rows), width), pad, dtype=torch.long)
    targets = torch.full((len(rows), visual + width), -100, dtype=torch.long)
    for r, (seq, n) in enumerate(rows):
        query[r, :n] = torch.tensor(seq[:n])
        text[r, :len(seq)] = torch.tensor(seq)
        targets[r, visual + n - 1:visual + len(seq) - 1] = torch.tensor(seq[n:])
    return query, query != pad, text, text != pad, targets


# -- training -------------------------------------------------------------------------------------


def _check_settings(**values: Any) -> None:
    for name, (value, low) in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise LlamaVidError(f"{name} must be an integer of at least {low}, got {value!r}")


def _trainable(model: LlamaVidVLM) -> dict[str, nn.Module]:
    return {"context_content": model.model.context_content, "language_model": model.model.language_model,
            "lm_head": model.lm_head}


def train_llama_vid(out_dir: str | os.PathLike, *, steps: int = 3000, batch_size: int = 16, seed: int = 0,
                    train_images: int = 4000, questions_per_image: int = 6, val_questions: int = 300,
                    lr: float = 3e-3, weight_decay: float = 0.01, warmup: int = 100, checkpoint_every: int = 200,
                    resume: bool = False, tower: Any = "focus-vit-s14", feature_batch: int = 32,
                    grid: int | Sequence[int] = 1, projector: str = "mlp", context: bool = True,
                    blind: bool = False, describe: bool = False, video: bool = False, frames: int = 8,
                    train_clips: int = 2000,
                    on_step: Callable[[int, float], None] | None = None,
                    progress: Callable[[str, int, int], None] | None = None, **model_options: Any) -> dict[str, Any]:
    """Train :class:`ContextContent` and the LM of :func:`build` (the tower stays frozen) and save the model
    into ``out_dir`` with ``metrics.json`` (val accuracy overall and per kind, :func:`vistok.vlm.small.score`).

    Images (default): ``train_images`` scenes with up to ``questions_per_image`` questions each
    (:func:`vistok.vlm.shapes.question_sets`), ``batch_size`` scenes a step, every question with its own
    context token; ``val_questions`` val questions. Video (``video=True``): ``train_clips`` clips of
    ``frames`` frames (:func:`vistok.vlm.video.clips`, through real video files), ``batch_size`` clips a step,
    ``val_questions`` val clips. Tower features are cached under ``out_dir/cache`` (the image caches are
    :mod:`vistok.vlm.small`'s, so a ``cache`` folder shared with ``vistok train-vlm`` is reused).
    ``blind=True`` gives every image the same zero features (the baseline that shows what the answers owe to
    the image); ``context=False`` drops the context token (a query-blind pool); ``describe=True`` adds a
    caption question per training scene (:func:`vistok.vlm.shapes.question_sets`).

    As :func:`vistok.vlm.small.train`: each step's batch is drawn by a generator seeded with ``seed`` and the
    step (nothing else is random, so runs repeat exactly); linear warm-up then cosine decay of ``lr``; a
    checkpoint every ``checkpoint_every`` steps that ``resume=True`` continues with the same result as an
    uninterrupted run; ``on_step(step, loss)`` after each step and ``progress(what, done, total)`` while
    caching. ``model_options``: hidden, layers, heads, feature_layer, image_size ... of
    :func:`vistok.vlm.small.build`. Returns the metrics.
    """
    out = Path(out_dir).expanduser()
    _check_settings(steps=(steps, 1), batch_size=(batch_size, 1), train_images=(train_images, 1),
                    questions_per_image=(questions_per_image, 1), val_questions=(val_questions, 0),
                    checkpoint_every=(checkpoint_every, 1), warmup=(warmup, 0), feature_batch=(feature_batch, 1),
                    frames=(frames, 2), train_clips=(train_clips, 1))
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise LlamaVidError(f"lr must be positive, got {lr!r}")
    if out.exists() and not out.is_dir():
        raise LlamaVidError(f"{out}: exists and is not a folder; pass a folder for the model")
    grid = _grid(grid)
    settings = {"steps": steps, "batch_size": batch_size, "seed": seed, "lr": lr, "weight_decay": weight_decay,
                "warmup": warmup, "grid": list(grid), "projector": projector, "context": context, "blind": blind,
                "video": video, **({"describe": True} if describe else {}),
                "tower": str(tower) if isinstance(tower, (str, os.PathLike)) else type(tower).__name__,
                **({"frames": frames, "train_clips": train_clips} if video else
                   {"train_images": train_images, "questions_per_image": questions_per_image}), **model_options}
    state = small.open_checkpoint(out, settings, resume, LlamaVidError)
    if video:
        from vistok.vlm.video import vocabulary

        model_options.setdefault("words", vocabulary())
    model = build(tower, grid=grid, projector=projector, context=context, seed=seed, **model_options)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    if video:
        data = _cache_clips(model, "train", train_clips, seed, frames, cache, progress)
        val = _cache_clips(model, "val", val_questions, seed + 1, frames, cache, progress) if val_questions else None
    else:
        extra = {"describe": True} if describe else {}  # a caption per scene (question_sets(describe=True))
        data = small._cache_questions(model, model.processor, "train", train_images, seed, cache, feature_batch,
                                      progress, True, questions_per_image, **extra)
        val = (small._cache_questions(model, model.processor, "val", val_questions, seed + 1, cache, feature_batch,
                                      progress, True) if val_questions else None)
    tokenizer = model.processor.tokenizer
    pad = int(tokenizer.pad_token_id)
    encoded = _encode(tokenizer, data)
    feats = torch.from_numpy(np.array(data["features"]))  # float16 in memory
    if feats.ndim == 3:
        feats = feats[:, None]  # images are clips of one frame
    cc = model.context_content
    if blind:
        feats = torch.zeros_like(feats[:1]).expand(len(feats), *feats.shape[1:])
    else:
        stats = feats[: min(len(feats), 2000)].float().flatten(0, 2)
        cc.mean.copy_(stats.mean(0))
        cc.std.copy_(stats.std(0).clamp_min(1e-3))
    parts = _trainable(model)
    params = [p for part in parts.values() for p in part.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses: list[float] = []
    start = 0
    if state is not None:
        for key, part in parts.items():
            part.load_state_dict(state["net"][key])
        optimizer.load_state_dict(state["optimizer"])
        losses, start = state["losses"], state["step"]
    visual_len = feats.shape[1] * cc.tokens_per_image
    model.train()
    for step in range(start, steps):
        picks = torch.randint(len(encoded), (batch_size,), generator=torch.Generator().manual_seed(
            seed * 1_000_003 + step)).tolist()
        rows = [(q, i) for i in picks for q in encoded[i]]
        query, query_mask, text, text_mask, targets = _batch([q for q, _ in rows], visual_len, pad)
        features = feats[[i for _, i in rows]].float()
        logits = model.logits(features, query, query_mask, text, text_mask)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        losses.append(small.optimizer_step(optimizer, params, loss, small._lr(step, steps, lr, warmup)))
        done = step + 1
        if done % checkpoint_every == 0 and done < steps:
            small.save_checkpoint(out, {"net": {k: p.state_dict() for k, p in parts.items()},
                                        "optimizer": optimizer.state_dict(), "step": done, "losses": losses,
                                        "settings": settings})
        if on_step:
            on_step(done, losses[-1])
    model.eval()
    metrics: dict[str, Any] = {"settings": settings, "tokens_per_image": cc.tokens_per_image,
                               "loss_first": losses[0] if losses else None,
                               "loss_last": float(np.mean(losses[-20:])) if losses else None, "losses": losses}
    if val is not None:
        val_feats = val["features"]

        def features(rows: list[int]) -> torch.Tensor:
            block = torch.from_numpy(np.asarray(val_feats[[val["image"][i] for i in rows]])).float()
            block = block[:, None] if block.ndim == 3 else block
            return torch.zeros_like(block) if blind else block

        answers = _answers(model, features, val["questions"])
        metrics["val"] = small.score(answers, val["answers"], val["kinds"])
        metrics["val"]["answers"] = answers
    if blind:  # the saved model must not see the image either: the content map gets constant input
        with torch.no_grad():
            cc.std.fill_(float("inf"))  # (x - mean) / inf = 0 for every image, as in training
    model.save(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / small.CHECKPOINT).unlink(missing_ok=True)
    return metrics
