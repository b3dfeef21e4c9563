"""A small VLM built from real parts and trained here on a CPU: LLaVA (Liu et al., "Visual Instruction Tuning",
NeurIPS 2023) with the focus-vit-s14 weights as its frozen vision tower, LLaVA's 2-layer GELU projector (or
PaliGemma's single linear map), and a small Llama language model trained from scratch with a word-level
tokenizer for the questions of :mod:`vistok.vlm.shapes`.

The result is an ordinary transformers folder: ``LlavaForConditionalGeneration.from_pretrained(folder)`` and
``AutoProcessor.from_pretrained(folder)`` load it, :func:`vistok.vlm.run.load` and ``vistok vlm`` run it, and
:func:`vistok.vlm.patch` reduces its visual tokens.

Training is made cheap by running the frozen tower once: the features LLaVA selects (``hidden_states[layer]``
without CLS) are cached in float16 under ``OUT/cache/``, and only the projector and the language model are
trained on them, with teacher forcing on ``<image> x N, question -> answer </s>`` and the loss on the answer
tokens alone. The features enter the projector standardised per channel (mean and std over the training
images); at the end that affine map is folded into the projector's first linear layer, so the saved model
takes the tower's raw features exactly as LLaVA does.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistok._training import CHECKPOINT, open_checkpoint, optimizer_step, save_checkpoint

__all__ = ["build", "train", "evaluate", "prompt_ids", "SPECIALS", "IMAGE_TOKEN"]

IMAGE_TOKEN = "<image>"
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", IMAGE_TOKEN]
PUNCTUATION = ["?", ".", ",", "'", "-"]
PROJECTORS = {"mlp": "gelu", "linear": "linear"}
#: Chat template writing each user text, then the images: "question ? <image>".
QUESTION_FIRST = ("{%- for message in messages -%}{%- for part in message['content'] if part['type'] == 'text' -%}"
                  "{{ part['text'] }} {% endfor -%}{%- for part in message['content'] if part['type'] == 'image' -%}"
                  "<image>{%- endfor -%}{%- endfor -%}")


class TrainError(ValueError):
    """A bad argument or a training folder that cannot be used (one line, names the input)."""


# -- building -------------------------------------------------------------------------------------

def make_tokenizer(words: Iterable[str]) -> Any:
    """A word-level fast tokenizer: the special tokens, ``words`` and punctuation, lower-cased, split on
    whitespace and punctuation; unknown words become ``<unk>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {name: i for i, name in enumerate(SPECIALS)}
    for word in [*PUNCTUATION, *sorted({w.lower() for w in words})]:
        for piece in pre_tokenizers.Whitespace().pre_tokenize_str(word):
            vocab.setdefault(piece[0], len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, no space before punctuation
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>", model_max_length=4096)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


def _tower(tower: Any) -> tuple[Any, dict[str, Any], bool]:
    """``(Dinov2Model, preprocessing, is_focus)`` from ``"focus-vit-s14"``, a checkpoint folder or a model."""
    import transformers

    from vistok.weights import focus_vit

    focus_pre = {"mean": list(focus_vit.PREPROCESS["mean"]), "std": list(focus_vit.PREPROCESS["std"]),
                 "rescale": focus_vit.PREPROCESS["rescale"]}
    if isinstance(tower, str) and tower == focus_vit.NAME:
        return focus_vit.build_backbone(), focus_pre, True
    if isinstance(tower, (str, os.PathLike)):
        path = Path(tower).expanduser()
        if not (path / "config.json").is_file():
            raise TrainError(f"{tower}: not a DINOv2 checkpoint folder (no config.json); pass a folder written by "
                             f"save_pretrained or '{focus_vit.NAME}'")
        tower = transformers.AutoModel.from_pretrained(path)
    if getattr(getattr(tower, "config", None), "model_type", None) != "dinov2":
        raise TrainError(f"the vision tower must be a DINOv2 model (Dinov2Model), got {type(tower).__name__}")
    return tower, focus_pre, False


def build(tower: Any = "focus-vit-s14", *, words: Iterable[str] | None = None, hidden: int = 128, layers: int = 2,
          heads: int = 4, kv_heads: int | None = None, intermediate: int | None = None, projector: str = "mlp",
          feature_layer: int | None = None, image_size: int = 224, question_first: bool = False, seed: int = 0
          ) -> tuple[Any, Any]:
    """A fresh ``(LlavaForConditionalGeneration, LlavaProcessor)``: ``tower`` (``"focus-vit-s14"``, a DINOv2
    folder or a ``Dinov2Model``) frozen as the vision tower, a ``projector`` (``"mlp"``: LLaVA's 2-layer GELU;
    ``"linear"``: one linear map as PaliGemma, written as LLaVA's projector with an identity activation) and a
    Llama LM of ``hidden``/``layers``/``heads`` with random weights (``seed``). ``words`` is the vocabulary
    (default :func:`vistok.vlm.shapes.vocabulary`). ``feature_layer`` is the tower's ``hidden_states`` index
    LLaVA takes (default: 9 for focus-vit-s14, its best layer for k-NN; -1 otherwise). Images are resized to
    ``image_size`` square: ``(image_size // 14) ** 2`` visual tokens (256 at 224 px). ``question_first``
    gives the processor a chat template that writes the question before the image (``"what colour is the
    square ? <image>"``), so every visual token sees the question in the LM (early fusion); the default puts
    the image first, as LLaVA-1.5's prompt does, which lets training embed each image once for all of its
    questions (about six times cheaper per question)."""
    import transformers

    if projector not in PROJECTORS:
        raise TrainError(f"projector must be one of {', '.join(PROJECTORS)}, got {projector!r}")
    if hidden % heads:
        raise TrainError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    vision, pre, focus = _tower(tower)
    patch = int(vision.config.patch_size)
    if image_size < patch or image_size % patch:
        raise TrainError(f"image_size must be a positive multiple of the tower's patch size {patch}, got {image_size}")
    if words is None:
        from vistok.vlm.shapes import vocabulary

        words = vocabulary()
    tokenizer = make_tokenizer(words)
    layer = feature_layer if feature_layer is not None else (9 if focus else -1)
    depth = int(vision.config.num_hidden_layers)
    if not -depth - 1 <= layer <= depth or layer % (depth + 1) == 0:
        raise TrainError(f"feature_layer must select one of the tower's {depth} blocks (1..{depth} or -1..-{depth}), "
                         f"got {layer}")
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    text = transformers.LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate or 4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, vocab_size=len(tokenizer),
        max_position_embeddings=max(512, 2 * (image_size // patch) ** 2), pad_token_id=ids["<pad>"],
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], tie_word_embeddings=False)
    config = transformers.LlavaConfig(
        vision_config=vision.config.to_dict(), text_config=text, image_token_index=ids[IMAGE_TOKEN],
        projector_hidden_act=PROJECTORS[projector], vision_feature_select_strategy="default",
        vision_feature_layer=layer, image_seq_length=(image_size // patch) ** 2)
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.vision_tower.requires_grad_(False)
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["<pad>"]
    model.generation_config.bos_token_id = ids["<s>"]
    image_processor = transformers.BitImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=3, do_center_crop=False,
        do_rescale=True, rescale_factor=pre["rescale"], do_normalize=True, image_mean=pre["mean"],
        image_std=pre["std"], do_convert_rgb=True)
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                            image_token=IMAGE_TOKEN,
                                            chat_template=QUESTION_FIRST if question_first else None)
    return model.eval(), processor


def prompt_ids(processor: Any, question: str, visual: int) -> list[int]:
    """The token ids ``processor`` writes for ``question`` and one image of ``visual`` tokens, in the order its
    chat template gives (the prompt :func:`vistok.vlm.run.ask` builds), without running the image processor."""
    from vistok.vlm.run import _prompt

    tokenizer = processor.tokenizer
    before, _, after = _prompt(processor, question, 1).partition(IMAGE_TOKEN)
    image = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    words = [tokenizer(part, add_special_tokens=False)["input_ids"] if part.strip() else [] for part in (before, after)]
    return words[0] + [image] * visual + words[1]


# -- features -------------------------------------------------------------------------------------

@torch.no_grad()
def tower_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """What LLaVA's projector receives for ``pixel_values``: ``hidden_states[vision_feature_layer]`` of the
    tower without CLS, computed with only the blocks needed."""
    tower = model.model.vision_tower
    layer = int(model.config.vision_feature_layer)
    blocks = tower.encoder.layer
    depth = len(blocks)
    index = layer % (depth + 1)
    tower.encoder.layer = blocks[:index]
    try:
        hidden = tower(pixel_values, output_hidden_states=True).hidden_states[index]
    finally:
        tower.encoder.layer = blocks
    return hidden[:, 1:]


def _cache_questions(model: Any, processor: Any, split: str, n: int, seed: int, folder: Path, batch: int,
                     progress: Callable[[str, int, int], None] | None, features: bool = True,
                     per_image: int = 1, describe: bool = False) -> dict[str, Any]:
    """``n`` images of ``split`` with up to ``per_image`` questions each, plus a caption with ``describe``
    (:func:`vistok.vlm.shapes.question_sets`), and the images' tower features, computed once into ``folder``
    (a float16 .npy, one row per image) and reused by any run on the same images. Returns per-question lists
    (``"image"`` is each question's row) and ``"features"`` (a read-only memmap; None without ``features``)."""
    from vistok.vlm.shapes import question_sets

    size = int(processor.image_processor.size["height"])
    visual = (size // int(model.config.vision_config.patch_size)) ** 2
    sets = list(question_sets(n, seed=seed, split=split, size=size, per_image=per_image, describe=describe))
    flat = [(row, q) for row, group in enumerate(sets) for q in group]
    meta: dict[str, Any] = {"questions": [q.question for _, q in flat], "answers": [q.answer for _, q in flat],
                            "kinds": [q.kind for _, q in flat], "image": [row for row, _ in flat],
                            "visual": visual, "features": None}
    if not features:
        return meta
    name = f"{split}-{n}-seed{seed}-size{size}-layer{int(model.config.vision_feature_layer)}.npy"
    feat_file = folder / name
    if not feat_file.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        dim = int(model.config.vision_config.hidden_size)
        tmp = folder / f".{name}.tmp"
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(sets), visual, dim))
        for start in range(0, len(sets), batch):
            chunk = [group[0].image for group in sets[start:start + batch]]
            pixels = processor.image_processor(chunk, return_tensors="pt")["pixel_values"]
            array[start:start + len(chunk)] = tower_features(model, pixels.to(model.dtype)).float().numpy()
            if progress:
                progress(f"{split} features", start + len(chunk), len(sets))
        array.flush()
        del array
        os.replace(tmp, feat_file)
    meta["features"] = np.load(feat_file, mmap_mode="r")
    return meta


# -- the training step ----------------------------------------------------------------------------

class _Trainable(torch.nn.Module):
    """Projector + LM of a LLaVA model, fed standardised cached features (``mean``/``std`` per channel)."""

    def __init__(self, model: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.projector = model.model.multi_modal_projector
        self.lm = model.model.language_model
        self.head = model.lm_head
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def logits(self, features: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, image_id: int,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.lm.get_input_embeddings()(ids)
        visual = self.projector((features.float() - self.mean) / self.std)
        image = ids == image_id
        image &= image.cumsum(1) <= visual.shape[1]  # a generated placeholder stays text, as in generate()
        image = image.unsqueeze(-1)
        embeds = embeds.masked_scatter(image, visual.to(embeds.dtype))
        hidden = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        return self.head(hidden)


def _encode(processor: Any, data: dict[str, Any]) -> list[list[tuple[list[int], int]]]:
    """Per image, ``(ids, n_prompt)`` for each of its questions: the prompt (:func:`prompt_ids`), then the
    answer and ``</s>``."""
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("</s>")
    images: list[list[tuple[list[int], int]]] = [[] for _ in range(max(data["image"], default=-1) + 1)]
    for row, question, answer in zip(data["image"], data["questions"], data["answers"]):
        prompt = prompt_ids(processor, question, data["visual"])
        images[row].append((prompt + tokenizer(answer, add_special_tokens=False)["input_ids"] + [eos], len(prompt)))
    return images


def _pack(groups: list[list[tuple[list[int], int]]], visual: int, image_id: int, pad: int) -> dict[str, torch.Tensor]:
    """A training batch of the questions of some images: ids, positions, attention mask, targets (the next
    token where it is part of an answer, else -100) and ``image`` (each row's image in ``groups``).

    When every prompt starts with the image (LLaVA's order), one row per image holds the image once and then
    each of its questions: a 4-D additive mask lets a question see the image and itself (causally) but no
    other question, and positions restart after the image for each question, so each question is computed
    exactly as the single sequence ``<image> x N, question, answer`` that :func:`vistok.vlm.run.ask` feeds.
    Otherwise (the question first) each question is its own right-padded row."""
    shared = all(seq[:visual] == [image_id] * visual for group in groups for seq, _ in group)
    if not shared:
        flat = [(seq, n_prompt, g) for g, group in enumerate(groups) for seq, n_prompt in group]
        width = max(len(seq) for seq, _, _ in flat)
        ids = torch.full((len(flat), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        targets = torch.full_like(ids, -100)
        for r, (seq, n_prompt, _) in enumerate(flat):
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
            targets[r, n_prompt - 1:len(seq) - 1] = torch.tensor(seq[n_prompt:])
        return {"ids": ids, "positions": None, "mask": mask, "targets": targets,
                "image": torch.tensor([g for _, _, g in flat])}
    width = visual + max(sum(len(seq) - visual for seq, _ in group) for group in groups)
    rows = len(groups)
    ids = torch.full((rows, width), pad, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # 0: image, k: question k, -1: padding
    targets = torch.full((rows, width), -100, dtype=torch.long)
    for r, group in enumerate(groups):
        ids[r, :visual] = image_id
        positions[r, :visual] = torch.arange(visual)
        segment[r, :visual] = 0
        at = visual
        for k, (seq, n_prompt) in enumerate(group, start=1):
            text, n_text = seq[visual:], n_prompt - visual
            end = at + len(text)
            ids[r, at:end] = torch.tensor(text)
            positions[r, at:end] = torch.arange(visual, visual + len(text))
            segment[r, at:end] = k
            targets[r, at + n_text - 1:end - 1] = torch.tensor(text[n_text:])
            at = end
    order = torch.arange(width)
    causal = order[None, :, None] >= order[None, None, :]
    same = (segment[:, None, :] == 0) | (segment[:, None, :] == segment[:, :, None])
    allowed = causal & same & (segment[:, None, :] >= 0)
    mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return {"ids": ids, "positions": positions, "mask": mask[:, None], "targets": targets,
            "image": torch.arange(rows)}


#: How the loss weighs answer tokens: ``"token"``, every target token the same (the caption's ~25 tokens then carry
#: most of each image's gradient); ``"sqrt-span"``, each token ``1 / sqrt(n)`` where ``n`` is the length of the
#: answer it belongs to (its words and ``</s>``), so a one-word answer weighs more against the caption without
#: every question counting as much as the whole caption.
LOSS_WEIGHTINGS = ("token", "sqrt-span")


def span_weights(targets: torch.Tensor, weighting: str = "token") -> torch.Tensor:
    """Per-target weights for :data:`LOSS_WEIGHTINGS`; 0 where ``targets`` is -100. An answer's span is a run of
    consecutive targets (prompts between answers are -100, so runs never join)."""
    valid = targets != -100
    if weighting == "token":
        return valid.float()
    if weighting != "sqrt-span":
        raise ValueError(f"loss weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {weighting!r}")
    starts = valid & ~torch.nn.functional.pad(valid[:, :-1], (1, 0), value=False)  # first token of each run
    run = starts.flatten().cumsum(0).reshape(targets.shape) * valid  # run number per valid token, 0 elsewhere
    counts = torch.bincount(run.flatten(), minlength=int(run.max()) + 1).double()
    return torch.where(valid, counts[run].clamp_min(1).pow(-0.5), 0.0).float()


def _loss(net: _Trainable, features: torch.Tensor, batch: dict[str, torch.Tensor], image_id: int,
          weighting: str = "token") -> torch.Tensor:
    logits = net.logits(features[batch["image"]], batch["ids"], batch["mask"], image_id, batch["positions"])
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                                               ignore_index=-100, reduction="none")
    weights = span_weights(batch["targets"], weighting).flatten()
    return (losses * weights).sum() / weights.sum()


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


@torch.no_grad()
def _fold_standardisation(model: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
    """``linear_1((x - mean) / std)`` == ``linear_1'(x)``: the standardisation moved into the weights."""
    linear = model.model.multi_modal_projector.linear_1
    weight = linear.weight / std
    linear.bias -= weight @ mean
    linear.weight.copy_(weight)


# -- evaluation -----------------------------------------------------------------------------------

@torch.no_grad()
def _answers_from_features(net: _Trainable, processor: Any, data: dict[str, Any], image_id: int,
                           batch: int = 64, max_new: int = 4) -> list[str]:
    """Greedy answers from cached features (questions of equal prompt length batched together)."""
    tokenizer = processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("</s>")
    prompts = [prompt_ids(processor, q, data["visual"]) for q in data["questions"]]
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    answers: list[str] = [""] * len(prompts)
    for rows in by_length.values():
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            ids = torch.tensor([prompts[i] for i in chunk])
            feats = (torch.from_numpy(np.asarray(data["features"][[data["image"][i] for i in chunk]]))
                     if data["features"] is not None
                     else net.mean.expand(len(chunk), data["visual"], -1))
            new = greedy(lambda x, f=feats: net.logits(f, x, torch.ones_like(x), image_id)[:, -1], ids, eos, max_new)
            for r, i in enumerate(chunk):
                answers[i] = tokenizer.decode(new[r], skip_special_tokens=True).strip()
    return answers


def greedy(next_logits: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor, eos: int, max_new: int
           ) -> list[list[int]]:
    """Greedy decoding: ``next_logits(ids)`` gives (B, vocab) for the next token; returns each row's new tokens
    up to ``</s>`` (not included), at most ``max_new``."""
    done = torch.zeros(len(ids), dtype=torch.bool)
    new: list[list[int]] = [[] for _ in range(len(ids))]
    for _ in range(max_new):
        nxt = next_logits(ids).argmax(-1)
        for r, token in enumerate(nxt.tolist()):
            if not done[r] and token != eos:
                new[r].append(token)
        done |= nxt == eos
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
    return new


def score(answers: list[str], truth: list[str], kinds: list[str]) -> dict[str, Any]:
    """Exact-match accuracy overall and per kind (case and surrounding spaces ignored)."""
    right = [a.strip().lower() == t.strip().lower() for a, t in zip(answers, truth)]
    total, hits = Counter(kinds), Counter(k for k, r in zip(kinds, right) if r)
    return {"accuracy": sum(right) / max(1, len(right)), "questions": len(right),
            "per_kind": {k: {"accuracy": hits[k] / total[k], "questions": total[k]} for k in sorted(total)}}


def evaluate(model: Any, processor: Any, items: Iterable[Any], *, method: str | None = None, **options: Any
             ) -> dict[str, Any]:
    """Exact-match accuracy of ``model`` on ``items`` (:class:`vistok.vlm.shapes.Question`) through the full
    pipeline (:func:`vistok.vlm.run.ask`: processor, tower, projector, LM), optionally reduced by ``method``
    (as :func:`vistok.vlm.patch`)."""
    from vistok.vlm.run import ask

    items = list(items)
    answers = [ask(model, processor, q.image, q.question, method=method, max_new_tokens=4, **options).text
               for q in items]
    result = score(answers, [q.answer for q in items], [q.kind for q in items])
    result["answers"] = answers
    return result


# -- training -------------------------------------------------------------------------------------

#: The shipped model's options for :func:`build` where :func:`train` is not given them: 112 px images (64
#: visual tokens, so the tower caches 16,000 images in about 6 minutes on 2 cores) and a four-layer LM.
RECIPE: dict[str, Any] = {"image_size": 112, "layers": 4}


def train(out_dir: str | os.PathLike, *, steps: int = 2500, batch_size: int = 32, seed: int = 0,
          train_images: int = 16000, questions_per_image: int = 6, describe: bool = True,
          val_questions: int = 300, lr: float = 3e-3,
          weight_decay: float = 0.01, warmup: int = 100, checkpoint_every: int = 200, resume: bool = False,
          tower: Any = "focus-vit-s14", loss_weighting: str = "sqrt-span",
          feature_batch: int = 32, blind: bool = False, on_step: Callable[[int, float], None] | None = None,
          progress: Callable[[str, int, int], None] | None = None, **model_options: Any) -> dict[str, Any]:
    """Train the projector and language model of :func:`build` (``model_options``: hidden, layers, heads,
    projector, feature_layer, image_size, question_first ...; :data:`RECIPE` fills those not given) on
    ``train_images`` images of :mod:`vistok.vlm.shapes` with up to ``questions_per_image`` questions each (and a caption with ``describe``)
    for ``steps`` steps of ``batch_size``, then save the model and processor into ``out_dir`` and evaluate
    on ``val_questions`` of the val split (``metrics.json``). ``blind=True`` trains the same model without the
    image (every image enters as the same constant tokens; the saved projector ignores its input): the
    baseline that shows how much the answers owe to the image. Features are cached in ``out_dir/cache``; a
    checkpoint (weights, optimizer, step) is written every ``checkpoint_every`` steps and ``resume=True``
    continues from it, giving the same result as an uninterrupted run (each step's batch is drawn by a
    generator seeded with ``seed`` and the step number, and nothing else is random). ``loss_weighting``: one of
    :data:`LOSS_WEIGHTINGS` (``"sqrt-span"`` lifts count and relation answers). ``on_step(step, loss)`` is called
    after each step; ``progress(what, done, total)`` reports feature caching. Returns the metrics."""
    out = Path(out_dir).expanduser()
    model_options = {**RECIPE, **model_options}
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("train_images", train_images, 1),
                             ("questions_per_image", questions_per_image, 1),
                             ("val_questions", val_questions, 0), ("checkpoint_every", checkpoint_every, 1),
                             ("warmup", warmup, 0), ("feature_batch", feature_batch, 1)):
        if not isinstance(value, int) or value < low:
            raise TrainError(f"{name} must be an integer of at least {low}, got {value!r}")
    if not lr > 0:
        raise TrainError(f"lr must be positive, got {lr!r}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise TrainError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {loss_weighting!r}")
    if out.exists() and not out.is_dir():
        raise TrainError(f"{out}: exists and is not a folder; pass a folder for the model")
    settings = {"steps": steps, "batch_size": batch_size, "seed": seed, "train_images": train_images,
                "questions_per_image": questions_per_image, "describe": describe,
                "lr": lr, "weight_decay": weight_decay, "warmup": warmup, "blind": blind,
                "tower": str(tower) if isinstance(tower, (str, os.PathLike)) else type(tower).__name__,
                **({"loss_weighting": loss_weighting} if loss_weighting != "token" else {}), **model_options}
    state = open_checkpoint(out, settings, resume, TrainError)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build(tower, seed=seed, **model_options)
    image_id = int(model.config.image_token_id)
    pad = int(processor.tokenizer.pad_token_id)
    cache = out / "cache"
    data = _cache_questions(model, processor, "train", train_images, seed, cache, feature_batch, progress,
                            not blind, questions_per_image, describe)
    val = (_cache_questions(model, processor, "val", val_questions, seed + 1, cache, feature_batch, progress,
                            not blind) if val_questions else None)
    encoded = _encode(processor, data)
    # in memory, float16: 3000 images of 256 x 384 are 0.6 GB
    feats = torch.from_numpy(np.array(data["features"])) if not blind else None
    dim = int(model.config.vision_config.hidden_size)
    if blind:
        mean, std = torch.zeros(dim), torch.ones(dim)
    else:
        stats = feats[: min(len(feats), 2000)].float().flatten(0, 1)
        mean, std = stats.mean(0), stats.std(0).clamp_min(1e-3)
    net = _Trainable(model, mean, std)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses: list[float] = []
    start = 0
    if state is not None:
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        losses, start = state["losses"], state["step"]
    net.train()
    for step in range(start, steps):
        rows = torch.randint(len(encoded), (batch_size,), generator=torch.Generator().manual_seed(
            seed * 1_000_003 + step)).tolist()
        batch = _pack([encoded[r] for r in rows], data["visual"], image_id, pad)
        features = torch.zeros(batch_size, data["visual"], dim) if feats is None else feats[rows].float()
        loss = _loss(net, features, batch, image_id, loss_weighting)
        losses.append(optimizer_step(optimizer, params, loss, _lr(step, steps, lr, warmup)))
        done = step + 1
        if done % checkpoint_every == 0 and done < steps:
            save_checkpoint(out, {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "step": done,
                                  "losses": losses, "settings": settings})
        if on_step:
            on_step(done, losses[-1])
    net.eval()
    metrics: dict[str, Any] = {"settings": settings, "loss_first": losses[0] if losses else None,
                               "loss_last": float(np.mean(losses[-20:])) if losses else None,
                               "losses": losses}
    if val is not None:
        answers = _answers_from_features(net, processor, val, image_id)
        metrics["val"] = score(answers, val["answers"], val["kinds"])
        metrics["val"]["answers"] = answers
    if blind:  # the projector's output no longer depends on the image: what it gave every image in training
        with torch.no_grad():
            model.model.multi_modal_projector.linear_1.weight.zero_()
    else:
        _fold_standardisation(model, mean, std)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / CHECKPOINT).unlink(missing_ok=True)
    return metrics


# -- the shipped model ----------------------------------------------------------------------------

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "shapes-vlm"
_TOWER_PREFIX = "model.vision_tower."
_PROCESSOR_FILES = ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def export(folder: str | os.PathLike, dest: str | os.PathLike = SHIPPED) -> Path:
    """Write the small form of a trained folder into ``dest``: its configs, processor files and every weight
    but the focus-vit-s14 tower's, in float16 (about 1 MB for the default model). :func:`shipped_folder`
    rebuilds the full folder from it and the focus-vit-s14 weights."""
    import safetensors.torch
    import transformers

    source, dest = Path(folder).expanduser(), Path(dest).expanduser()
    model = transformers.LlavaForConditionalGeneration.from_pretrained(source)
    if not getattr(model.config.vision_config, "model_type", None) == "dinov2":
        raise TrainError(f"{source}: not a small VLM with a DINOv2 tower")
    dest.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.startswith(_TOWER_PREFIX)}
    safetensors.torch.save_file(state, dest / "weights.safetensors")
    for name in ("config.json", "generation_config.json", *_PROCESSOR_FILES):
        if (source / name).is_file():
            (dest / name).write_bytes((source / name).read_bytes())
    if (source / "metrics.json").is_file():  # the summary: settings, first and last loss, val scores
        metrics = json.loads((source / "metrics.json").read_text())
        metrics.pop("losses", None)
        if isinstance(metrics.get("val"), dict):
            metrics["val"].pop("answers", None)
        (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return dest


def shipped_folder(source: str | os.PathLike = SHIPPED) -> Path:
    """The shipped small VLM as an ordinary transformers folder (``from_pretrained`` loads it), built once
    into the vistok cache (``$VISTOK_CACHE``) from the packaged weights and the focus-vit-s14 tower."""
    import hashlib

    import safetensors.torch
    import transformers

    from vistok.weights import focus_vit

    source = Path(source)
    weights = source / "weights.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{source}: no weights.safetensors; this vistok install has no shipped small VLM")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    target = focus_vit.cache_dir() / f"shapes-vlm-{digest}"
    if (target / "model.safetensors").is_file():
        return target
    config = transformers.AutoConfig.from_pretrained(source)
    model = transformers.LlavaForConditionalGeneration(config)
    state = {k: v.float() for k, v in safetensors.torch.load_file(weights).items()}
    state.update({_TOWER_PREFIX + k: v for k, v in focus_vit.build_backbone().state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: the shipped weights do not fit the model (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    for name in ("generation_config.json", "metrics.json", *_PROCESSOR_FILES):
        if (source / name).is_file():
            (tmp / name).write_bytes((source / name).read_bytes())
    if target.exists():  # another process finished first
        return target
    os.replace(tmp, target)
    return target
