"""LiT-style alignment training (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text Tuning", CVPR 2022):
both towers are frozen, every image and caption is encoded once, and only the projection heads, the temperature
and (SigLIP) the bias are trained with the sigmoid loss (:mod:`.sigmoid_loss`) or CLIP's softmax loss
(:mod:`.softmax_loss`).

Each step draws ``batch_size`` images without replacement (a fresh seeded permutation per epoch) and one of each
image's captions at random; the features enter the heads standardised per channel, and at the end that affine map
is folded into the heads (:meth:`.heads.Heads.fold`), so the saved heads take the towers' raw features. The run is
seeded, checkpoints every ``checkpoint_every`` steps, and ``resume`` continues it to the same weights as an
uninterrupted run. The output folder (:data:`CONFIG`, :data:`WEIGHTS`) opens with ``vistok.load("siglip", model=OUT)``
(``"clip"`` for the softmax loss).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistok._training import CHECKPOINT, open_checkpoint, optimizer_step, save_checkpoint
from vistok.align.data import (
    CAPTION_STYLES,
    CLASSES,
    DATASET,
    HELD_OUT,
    NAMES,
    TEMPLATES,
    Pairs,
    class_captions,
    class_prompt,
    fashion_mnist_labels,
    load_pairs,
)
from vistok.align.evaluate import recall_at, zero_shot_accuracy
from vistok.align.heads import HEADS, Heads
from vistok.align.sigmoid_loss import INIT_LOGIT_BIAS, sigmoid_loss, sigmoid_loss_chunked
from vistok.align.sigmoid_loss import INIT_LOGIT_SCALE as SIGMOID_SCALE
from vistok.align.softmax_loss import INIT_LOGIT_SCALE as SOFTMAX_SCALE
from vistok.align.softmax_loss import softmax_loss
from vistok.align.towers import ImageTower, TextTower

__all__ = ["train", "export", "AlignError", "LOSSES", "CONFIG", "WEIGHTS", "FORMAT", "cached_image_features",
           "fashion_mnist_eval"]

LOSSES = ("sigmoid", "softmax")
CONFIG = "vistok_align.json"
WEIGHTS = "heads.safetensors"
FORMAT = "vistok-align/1"
ZERO_SHOT_TEMPLATE = "a photo of a {}."
Progress = Callable[[str, int, int], None]


class AlignError(ValueError):
    """A bad argument or an output folder that cannot be used (one line, names the input)."""


def _cache_root() -> Path:
    from vistok.weights.focus_vit import cache_dir

    return cache_dir() / "align"


def _tower_key(tower: ImageTower) -> str:
    return hashlib.sha256(json.dumps(tower.settings(), sort_keys=True).encode()).hexdigest()[:12]


def cached_image_features(tower: ImageTower, split: str, progress: Progress | None = None) -> np.ndarray:
    """``(N, D)`` float32 features of every Fashion-MNIST image of ``split``, computed once per tower setting and
    kept in the vistok cache (``$VISTOK_CACHE/align``)."""
    from vistok.learned.data import fashion_mnist

    file = _cache_root() / f"{DATASET}-{split}-{tower.name}-{_tower_key(tower)}.npy"
    if file.is_file():
        return np.load(file)
    images = fashion_mnist(split)
    rgb = [np.repeat(a, 3, axis=2) for a in images]
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        if progress:
            progress(f"{tower.name} features ({split})", done[0], len(rgb))

    features = tower.features(rgb, progress=step).astype(np.float32)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp.npy")
    np.save(tmp, features)
    os.replace(tmp, file)
    return features


def _file_features(tower: ImageTower, pairs: Pairs, out: Path, progress: Progress | None
                   ) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Features of a caption file's images, kept in ``out`` for resume; an image that fails to open is skipped and
    listed (path and reason), never the whole run."""
    from vistok.images import ImageError

    file = out / "image_features.npz"
    if file.is_file():
        saved = np.load(file, allow_pickle=False)
        skipped = json.loads((out / "skipped.json").read_text()) if (out / "skipped.json").is_file() else []
        return saved["features"], saved["kept"].tolist(), skipped
    rows: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[dict[str, str]] = []
    batch = 64
    for start in range(0, len(pairs), batch):
        index = list(range(start, min(start + batch, len(pairs))))
        try:
            rows.extend(tower.features([pairs.images[i] for i in index], batch=batch))
            kept.extend(index)
        except (ImageError, OSError, ValueError):
            for i in index:  # find the bad ones, keep the rest
                try:
                    rows.extend(tower.features([pairs.images[i]]))
                    kept.append(i)
                except (ImageError, OSError, ValueError) as err:
                    skipped.append({"image": str(pairs.images[i]), "reason": f"{type(err).__name__}: {err}"})
        if progress:
            progress(f"{tower.name} features", index[-1] + 1, len(pairs))
    if not kept:
        raise AlignError(f"{pairs.source}: none of the {len(pairs)} images could be read "
                         f"(first: {skipped[0]['image']}: {skipped[0]['reason']})")
    features = np.stack(rows).astype(np.float32)
    np.savez(file, features=features, kept=np.asarray(kept, np.int64))
    (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    return features, kept, skipped


def fashion_mnist_eval(heads: Heads, image_features: np.ndarray, labels: np.ndarray, text_tower: TextTower,
                       held_out: tuple[int, ...] = HELD_OUT, style: str = "names") -> dict[str, float]:
    """Scores on the Fashion-MNIST test set, with one prompt per class (:func:`vistok.align.data.class_prompt`:
    ``"a photo of a {name}, a {description}."``, or ``"a photo of a {name}."`` for the ``names`` style):

    - ``zero_shot``: accuracy over all ten classes; ``zero_shot_seen`` and ``zero_shot_held_out``: the same choice
      among all ten, on the seen and on the held-out classes' images (chance 10%);
    - ``held_out_pair``: held-out images choosing between the held-out classes only (chance 50%), and
      ``held_out_top3``: the share whose class is among the three best of ten (chance 30%);
    - ``zero_shot_names``, ``zero_shot_seen_names``, ``zero_shot_held_out_names``: the first three with the
      prompts of names alone, for the ``described`` style;
    - ``i2t@k``/``t2i@k``: retrieval between 1,000 test images and one seeded caption each (a random template and
      name of its class); a caption matches every image of its class."""
    with torch.no_grad():
        img = heads.image(torch.from_numpy(image_features).float()).numpy()
        prompts = [class_prompt(c, style, ZERO_SHOT_TEMPLATE) for c in range(len(CLASSES))]
        cls = heads.text(torch.from_numpy(text_tower.features(prompts)).float()).numpy()
        plain = [class_prompt(c, "names", ZERO_SHOT_TEMPLATE) for c in range(len(CLASSES))]
        cls_names = cls if style == "names" else heads.text(torch.from_numpy(text_tower.features(plain)).float()).numpy()
        rng = np.random.default_rng(0)
        first = labels[:1000]
        captions = [TEMPLATES[rng.integers(len(TEMPLATES))].format(NAMES[c][rng.integers(len(NAMES[c]))])
                    for c in first]
        texts = heads.text(torch.from_numpy(text_tower.features(captions)).float()).numpy()
    mask = np.isin(labels, held_out)
    pair = np.asarray(held_out)
    sim = img[mask] @ cls.T
    own = sim[np.arange(mask.sum()), labels[mask]]
    scores = {"zero_shot": zero_shot_accuracy(img, cls, labels),
              "zero_shot_seen": zero_shot_accuracy(img[~mask], cls, labels[~mask]),
              "zero_shot_held_out": zero_shot_accuracy(img[mask], cls, labels[mask]),
              "held_out_pair": float((pair[sim[:, pair].argmax(1)] == labels[mask]).mean()),
              "held_out_top3": float(((sim > own[:, None]).sum(1) < 3).mean())}
    if style != "names":
        scores.update({"zero_shot_names": zero_shot_accuracy(img, cls_names, labels),
                       "zero_shot_seen_names": zero_shot_accuracy(img[~mask], cls_names, labels[~mask]),
                       "zero_shot_held_out_names": zero_shot_accuracy(img[mask], cls_names, labels[mask])})
    scores.update(recall_at(img[:1000], texts, matches=first[:, None] == first[None, :]))
    return scores


def _training_features(data: str | os.PathLike, tower: ImageTower, out: Path, train_images: int | None, seed: int,
                       progress: Progress | None, style: str = "names", held_out: tuple[int, ...] = HELD_OUT
                       ) -> tuple[np.ndarray, list[list[str]], list[dict[str, str]]]:
    """``(image features, captions per image, skipped images)`` for training: Fashion-MNIST's from the feature cache
    (held-out classes dropped, a seeded subset when ``train_images`` is set), a caption file's computed here."""
    if str(data) == DATASET:
        labels = fashion_mnist_labels("train")
        index = np.flatnonzero(~np.isin(labels, held_out))
        if train_images is not None and train_images < len(index):
            index = np.sort(np.random.default_rng(seed).choice(index, train_images, replace=False))
        by_class = [class_captions(c, style) for c in range(len(CLASSES))]
        return cached_image_features(tower, "train", progress)[index], [by_class[c] for c in labels[index]], []
    pairs = load_pairs(data, limit=train_images, seed=seed)
    features, kept, skipped = _file_features(tower, pairs, out, progress)
    return features, [pairs.captions[i] for i in kept], skipped


def _spread(features: torch.Tensor) -> torch.Tensor:
    """Per-channel std, floored at a tenth of the mean std: a near-constant channel (a few hundred distinct captions
    leave some) would otherwise get a huge weight once the standardisation is folded into the head."""
    std = features.std(0) if len(features) > 1 else torch.ones(features.shape[1])
    return std.clamp(min=max(float(std.mean()) * 0.1, 1e-6))


def train(data: str | os.PathLike, out_dir: str | os.PathLike, *, image_tower: str = "efficientnet-lite0",
          text_tower: str = "minilm", loss: str = "sigmoid", image_size: int | None = None, embed_dim: int = 256,
          head: str = "linear", batch_size: int = 256, steps: int = 2000, lr: float = 1e-3,
          weight_decay: float = 1e-4, chunk: int | None = None, train_images: int | None = None, seed: int = 0,
          checkpoint_every: int = 500, resume: bool = False, progress: Progress | None = None,
          on_step: Callable[[int, float], None] | None = None, captions: str = "names",
          held_out: tuple[int, ...] = HELD_OUT) -> dict[str, Any]:
    """Train projection heads aligning ``image_tower`` and ``text_tower`` on ``data`` (``"fashion-mnist"``, or a
    caption CSV/JSONL file or folder: :mod:`vistok.align.data`) into the folder ``out_dir``; returns the metrics.

    ``loss``: ``"sigmoid"`` (SigLIP) or ``"softmax"`` (CLIP). ``chunk``: compute the sigmoid loss that many texts at
    a time. ``image_size``: the image tower's square input size (None: the tower's own). ``progress(what, done,
    total)`` reports feature caching; ``on_step(step, loss)`` runs after each step. ``captions``: for
    ``fashion-mnist``, ``"described"`` (names, and names with their class's description) or ``"names"``
    (:mod:`vistok.align.data`); a caption file's own captions are used as they are. ``held_out``: the
    Fashion-MNIST classes left out of training (default :data:`HELD_OUT`; more, for a validation of held-out
    transfer that never touches the test classes)."""
    if loss not in LOSSES:
        raise AlignError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if head not in HEADS:
        raise AlignError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("embed_dim", embed_dim),
                        ("checkpoint_every", checkpoint_every)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise AlignError(f"{name} must be a positive integer, got {value!r}")
    if batch_size < 2:
        raise AlignError(f"batch_size must be at least 2 (a contrastive loss needs negatives), got {batch_size}")
    if captions not in CAPTION_STYLES:
        raise AlignError(f"captions must be one of {', '.join(CAPTION_STYLES)}, got {captions!r}")
    if chunk is not None and loss != "sigmoid":
        raise AlignError("chunk applies to the sigmoid loss only")
    try:
        tower = ImageTower(image_tower, image_size)
        texts = TextTower(text_tower)
    except ValueError as err:
        raise AlignError(str(err)) from err
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise AlignError(f"{out}: exists and is not a folder; pass a folder to write the aligned model into")
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(data=str(data), image_tower=tower.settings(), text_tower=texts.settings(), loss=loss,
                         embed_dim=embed_dim, head=head, batch_size=batch_size, steps=steps, lr=lr,
                         weight_decay=weight_decay, chunk=chunk, train_images=train_images, seed=seed)
    if str(data) == DATASET and captions != "names":
        settings["captions"] = captions
    if str(data) == DATASET and tuple(held_out) != HELD_OUT:
        settings["held_out"] = [int(c) for c in held_out]
    state = open_checkpoint(out, settings, resume, AlignError)

    # -- features, computed once ------------------------------------------------------------------
    image_features, texts_of, skipped = _training_features(data, tower, out, train_images, seed, progress, captions,
                                                           tuple(held_out))
    if len(image_features) < batch_size:
        raise AlignError(f"{data}: {len(image_features)} usable images, fewer than one batch of {batch_size}; "
                         "pass a smaller batch size or more images")
    unique = sorted({c for group in texts_of for c in group})
    text_features = texts.features(unique)
    lookup = {c: i for i, c in enumerate(unique)}
    caption_ids = [torch.tensor([lookup[c] for c in group]) for group in texts_of]

    images_t = torch.from_numpy(image_features).float()
    texts_t = torch.from_numpy(text_features).float()
    i_mean, i_std = images_t.mean(0), _spread(images_t)
    t_mean, t_std = texts_t.mean(0), _spread(texts_t)
    images_n, texts_n = (images_t - i_mean) / i_std, (texts_t - t_mean) / t_std

    # -- the model and the run ----------------------------------------------------------------------
    torch.manual_seed(seed)
    heads = Heads(images_t.shape[1], texts_t.shape[1], embed_dim, head,
                  SIGMOID_SCALE if loss == "sigmoid" else SOFTMAX_SCALE,
                  INIT_LOGIT_BIAS if loss == "sigmoid" else None)
    params = [p for p in heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    step, losses, order, cursor = 0, [], torch.randperm(len(images_n), generator=generator), 0
    if state is not None:
        heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, losses, order, cursor = state["step"], list(state["losses"]), state["order"], state["cursor"]
    started = time.perf_counter()
    warmup = max(1, min(100, steps // 10))
    while step < steps:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(images_n), generator=generator), 0
        picked = order[cursor:cursor + batch_size]
        cursor += batch_size
        choice = torch.randint(0, 1 << 30, (batch_size,), generator=generator)
        text_rows = torch.stack([caption_ids[int(i)][int(c) % len(caption_ids[int(i)])]
                                 for i, c in zip(picked, choice)])
        x, y = heads.image(images_n[picked]), heads.text(texts_n[text_rows])
        if loss == "softmax":
            value = softmax_loss(x, y, heads.logit_scale)
        elif chunk:
            value = sigmoid_loss_chunked(x, y, heads.logit_scale, heads.logit_bias, chunk)
        else:
            value = sigmoid_loss(x, y, heads.logit_scale, heads.logit_bias)
        rate = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / steps))
        losses.append(optimizer_step(optimizer, params, value, float(rate)))
        step += 1
        if step % checkpoint_every == 0 and step < steps:
            save_checkpoint(out, {"settings": settings, "heads": heads.state_dict(), "optimizer": optimizer.state_dict(),
                                  "generator": generator.get_state(), "step": step, "losses": losses, "order": order,
                                  "cursor": cursor})
        if on_step:
            on_step(step, losses[-1])
    heads.fold(i_mean, i_std, t_mean, t_std)
    metrics: dict[str, Any] = {"loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])),
                               "train_images": len(images_n), "captions": len(unique), "skipped": len(skipped),
                               "seconds": round(time.perf_counter() - started, 1)}
    if str(data) == DATASET:
        test = cached_image_features(tower, "test", progress)
        metrics.update(fashion_mnist_eval(heads, test, fashion_mnist_labels("test"), texts, tuple(held_out), captions))
    save(heads, out, settings, metrics, image_dim=images_t.shape[1], text_dim=texts_t.shape[1])
    if (out / CHECKPOINT).is_file():
        (out / CHECKPOINT).unlink()
    return metrics


def save(heads: Heads, out: Path, settings: dict[str, Any], metrics: dict[str, Any], *, image_dim: int,
         text_dim: int, dtype: str = "float32") -> None:
    """Write the heads (``dtype`` float32 or float16) and :data:`CONFIG` into ``out``."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in heads.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    config = {"format": FORMAT, "family": "siglip" if settings["loss"] == "sigmoid" else "clip",
              "image_tower": settings["image_tower"], "text_tower": settings["text_tower"],
              "image_dim": image_dim, "text_dim": text_dim, "embed_dim": settings["embed_dim"],
              "head": settings["head"], "settings": settings, "metrics": metrics}
    (out / CONFIG).write_text(json.dumps(config, indent=1))



def export(folder: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a trained alignment into ``dest`` with float16 heads (how ``siglip-fmnist`` ships); returns ``dest``."""
    from safetensors.torch import load_file, save_file

    src, out = Path(folder).expanduser(), Path(dest).expanduser()
    if not (src / CONFIG).is_file():
        raise AlignError(f"{src}: no {CONFIG}; pass a folder written by vistok align")
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in load_file(str(src / WEIGHTS)).items()}, str(out / WEIGHTS))
    (out / CONFIG).write_text((src / CONFIG).read_text())
    return out
