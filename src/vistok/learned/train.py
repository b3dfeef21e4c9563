"""Training a learned tokenizer: seeded, resumable, logged, and watched for codebook collapse.

Reproducibility: the batch of step ``s`` and every random draw inside it (k-means init, dead-code
replacement, the VAE's posterior sample) come from generators seeded with ``(seed, s)``, and the learning
rate is a pure function of ``s``. A checkpoint therefore needs only the weights, the optimizer state and the
step (no random-generator state), and ``resume`` after a kill gives the same weights and log as an
uninterrupted run.

Files in the output folder: ``model.safetensors`` (the tokenizer, loadable with ``vistok.load(folder)``),
``checkpoint.safetensors`` (resume state: model and Adam tensors, with the step, settings and Adam's
hyper-parameters as JSON in its header; no pickle, so a planted file cannot run code), ``metrics.jsonl`` (one
JSON object per logged step) and ``skipped.txt`` (inputs that could not be read). Runs of vistok 0.1 kept
their resume state in a pickle, ``checkpoint.pt``; it is never loaded.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistok.learned.data import TrainingData
from vistok.learned.model import Autoencoder, AutoencoderConfig
from vistok.weights import read_weights, write_weights

__all__ = ["TrainConfig", "CodebookCollapseWarning", "CheckpointError", "train", "save_model", "load_model",
           "usage_stats", "save_checkpoint", "load_checkpoint", "MODEL_FILE", "CHECKPOINT_FILE", "METRICS_FILE",
           "WEIGHTS_KIND", "FORMAT"]

MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE = "model.safetensors", "checkpoint.safetensors", "metrics.jsonl"
PICKLE_CHECKPOINT = "checkpoint.pt"  # vistok 0.1's resume state; never unpickled
WEIGHTS_KIND = "learned-tokenizer"
FORMAT = 1
_CHECKPOINT_KEY = "vistok_checkpoint"
_CANNOT_RESUME = "this run cannot resume: start anew with another --out, or delete the folder {folder} and train again"


class CodebookCollapseWarning(UserWarning):
    """Too few codes are in use: the tokenizer wastes its vocabulary."""


class CheckpointError(ValueError):
    """A training run's resume state cannot be used (damaged, foreign or from an older vistok)."""


@dataclass
class TrainConfig:
    """steps, batch_size, lr (Adam; linear warm-up over ``warmup`` steps, then cosine decay to 10%), seed,
    log_every (metrics window), checkpoint_every (rounded up to a multiple of log_every), collapse_threshold
    (warn when a window uses fewer than this fraction of the codes it could have used), weights_dtype of the
    saved model ("float32" or "float16", half the size)."""

    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    collapse_threshold: float = 0.1
    weights_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.weights_dtype not in ("float32", "float16"):
            raise ValueError(f"weights_dtype must be float32 or float16, got {self.weights_dtype!r}")
        self.checkpoint_every = math.ceil(self.checkpoint_every / self.log_every) * self.log_every

    def learning_rate(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.warmup))
        return self.lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * step / self.steps)))


def usage_stats(counts: np.ndarray) -> tuple[float, float]:
    """Fraction of codes used and perplexity ``exp(entropy)`` of a ``(K,)`` count vector."""
    total = counts.sum()
    if total == 0:
        return 0.0, 0.0
    p = counts[counts > 0] / total
    return float((counts > 0).mean()), float(np.exp(-(p * np.log(p)).sum()))


# -- model files ------------------------------------------------------------------------------------

def save_model(model: Autoencoder, path: str | os.PathLike, info: dict[str, Any], dtype: str = "float32") -> Path:
    """Write weights and config as safetensors (``kind`` = ``learned-tokenizer``, ``format`` = ``FORMAT``)."""
    arrays = {}
    for key, value in model.state_dict().items():
        array = value.detach().cpu().numpy()
        arrays[key] = array.astype(dtype) if array.dtype == np.float32 else array
    write_weights(path, arrays, {"kind": WEIGHTS_KIND, "format": FORMAT, "config": model.config.to_dict(), **info})
    return Path(path)


def model_file(path: str | os.PathLike) -> Path:
    """The model file of a training folder, or ``path`` itself when it is a file."""
    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def load_model(path: str | os.PathLike, quantizer: str | None = None) -> tuple[Autoencoder, dict[str, Any]]:
    """A trained tokenizer from a file or training folder; ``quantizer`` checks which one it must be."""
    file = model_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no learned tokenizer at {os.fspath(path)!r}; pass a folder written by "
                                f"`vistok train` (holding {MODEL_FILE}) or the file itself")
    arrays, info = read_weights(file, WEIGHTS_KIND)
    if int(info.get("format", 0)) > FORMAT:
        raise ValueError(f"{file}: written in learned-tokenizer format {info['format']}, this vistok reads up to "
                         f"{FORMAT}; upgrade vistok to load it")
    try:
        config = AutoencoderConfig(**info["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{file}: its config does not fit this vistok version ({err})") from err
    if quantizer is not None and config.quantizer != quantizer:
        raise ValueError(f"{file} holds a {config.quantizer!r} tokenizer, not {quantizer!r}")
    model = Autoencoder(config)
    state = model.state_dict()
    missing, unexpected = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
    # scalar buffers (a quantizer's "initted" flag) may come back from safetensors as shape (1,)
    wrong = sorted(k for k in set(state) & set(arrays) if state[k].numel() != np.asarray(arrays[k]).size
                   or (state[k].dim() > 0 and tuple(state[k].shape) != arrays[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for label, keys in
                            (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys)
        raise ValueError(f"{file}: weights do not match a {config.quantizer!r} tokenizer of this vistok version "
                         f"({details}); it was written by a different quantizer or version")
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(state[k].dtype).reshape(state[k].shape)
                           for k, v in arrays.items()})
    return model.eval(), info


# -- training ---------------------------------------------------------------------------------------

def _batch(data: TrainingData, config: TrainConfig, step: int) -> torch.Tensor:
    rng = np.random.default_rng([config.seed, step])
    picked = data.train[rng.integers(0, len(data.train), config.batch_size)]
    pixels = torch.from_numpy(picked).permute(0, 3, 1, 2).float().div_(255.0)
    return pixels.contiguous(memory_format=torch.channels_last)  # faster CPU convolutions


def _window() -> dict[str, Any]:
    return {"loss": 0.0, "mse": 0.0, "n": 0, "counts": None}


def train(
    data: TrainingData,
    model_config: AutoencoderConfig,
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    info: dict[str, Any] | None = None,
    on_step: Callable[[int, dict[str, Any] | None], None] | None = None,
    stop_after: int | None = None,
) -> Path:
    """Train and write ``out``/model.safetensors; returns its path. ``on_step(step, record)`` is called after
    every step (``record`` is the metrics dict on logged steps); ``stop_after`` ends the run early at that
    step, after its checkpoint (for tests that simulate a kill)."""
    out = Path(out)
    ckpt_path, metrics_path = out / CHECKPOINT_FILE, out / METRICS_FILE
    if model_config.channels != data.channels:
        raise ValueError(f"the data has {data.channels} channel(s) but the model expects {model_config.channels}")
    if config.batch_size > len(data.train):  # batches are drawn with replacement: more would only repeat images
        raise ValueError(f"batch_size {config.batch_size} is more than the {len(data.train)} training images of "
                         f"{data.name}; use at most {len(data.train)}")
    settings = {"model": model_config.to_dict(), "train": asdict(config), "data": data.name}
    torch.manual_seed(config.seed)
    model = Autoencoder(model_config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    start = 0
    pickled = out / PICKLE_CHECKPOINT
    if (ckpt_path.exists() or pickled.exists()) and not resume:
        raise FileExistsError(f"{out} already holds a training run; pass --resume to continue it, or choose "
                              "another --out")
    if resume and not ckpt_path.exists() and pickled.exists():
        raise CheckpointError(f"{pickled} is a pickle checkpoint (vistok 0.1), which vistok does not load: a pickle "
                              f"can run code; {_CANNOT_RESUME.format(folder=out)}")
    if resume and ckpt_path.exists():
        settings = json.loads(json.dumps(settings))  # as the checkpoint's JSON holds them
        start = load_checkpoint(ckpt_path, model, optimizer, settings)
        _truncate_log(metrics_path, start)
    elif metrics_path.exists():
        metrics_path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if data.skipped:
        (out / "skipped.txt").write_text("".join(f"{src}\t{why}\n" for src, why in data.skipped))
    sizes = model_config.codebook_sizes
    window = _window()
    model.train()
    for step in range(start, config.steps):
        torch.manual_seed(config.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(step)
        x = _batch(data, config, step)
        result = model(x)
        mse = torch.mean((result["reconstruction"] - x) ** 2)
        loss = mse + result["aux"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window["loss"] += loss.item()
        window["mse"] += mse.item()
        window["n"] += 1
        if result["codes"] is not None:
            codes = result["codes"].reshape(-1, len(sizes)).numpy()
            counts = [np.bincount(codes[:, q], minlength=k) for q, k in enumerate(sizes)]
            window["counts"] = counts if window["counts"] is None else [a + b for a, b in zip(window["counts"], counts)]
        record = None
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            record = _log(window, done, config, sizes, metrics_path)
            window = _window()
        if done % config.checkpoint_every == 0 or done == config.steps or done == stop_after:
            _checkpoint(model, optimizer, done, settings, ckpt_path, out, info, config)
        if on_step is not None:
            on_step(done, record)
        if done == stop_after:
            break
    return out / MODEL_FILE


def _log(window: dict[str, Any], step: int, config: TrainConfig, sizes: list[int], path: Path) -> dict[str, Any]:
    mse = window["mse"] / window["n"]
    record: dict[str, Any] = {"step": step, "lr": config.learning_rate(step - 1), "loss": window["loss"] / window["n"],
                              "mse": mse, "psnr": 10 * math.log10(1.0 / max(mse, 1e-12))}
    if window["counts"] is not None:
        stats = [usage_stats(c) for c in window["counts"]]
        record["usage"] = float(np.mean([s[0] for s in stats]))
        record["perplexity"] = float(np.mean([s[1] for s in stats]))
        seen = int(window["counts"][0].sum())
        reachable = min(1.0, seen / sizes[0])
        record["collapse"] = record["usage"] < config.collapse_threshold * reachable
        if record["collapse"]:
            warnings.warn(
                f"step {step}: codebook collapse: {record['usage']:.1%} of {sizes[0]} codes used in the last "
                f"{window['n']} steps (perplexity {record['perplexity']:.1f}); for vq/rvq raise "
                "--dead-code-threshold, use --kmeans-init or --cosine, or a lower --codebook-dim",
                CodebookCollapseWarning, stacklevel=3)
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return record


def _truncate_log(path: Path, step: int) -> None:
    """Keep the metrics lines up to ``step`` (the checkpoint's). A last line cut short by a kill is dropped;
    any other line that is not a JSON record with a step is an error naming the file and line."""
    if not path.exists():
        return
    text = path.read_text()
    lines = text.splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record_step = json.loads(line)["step"]
            if not isinstance(record_step, int):
                raise TypeError("its step is not an integer")
        except (ValueError, KeyError, TypeError) as err:
            if number == len(lines) and not text.endswith("\n"):
                break  # the write of this line was interrupted: it lies past the checkpoint
            reason = (f"not JSON: {err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError)
                      else "no step" if isinstance(err, KeyError) else "no step" if "indices" in str(err) else str(err))
            raise ValueError(f"{path} line {number} is not a metrics record ({reason}); fix or delete that line, "
                             "then resume") from None
        if record_step <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    settings: dict[str, Any]) -> None:
    """Write the resume state as safetensors: tensors ``model.<name>`` and ``optimizer.<param>.<name>``, and a
    JSON header record with the step, the settings and the optimizer's non-tensor state. The file is written
    beside ``path`` and renamed, so a kill during the write leaves the previous checkpoint intact."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    extra: dict[str, dict[str, Any]] = {}
    for param, entries in opt["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{param}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                extra.setdefault(str(param), {})[name] = value
    record = {"format": FORMAT, "step": step, "settings": settings, "param_groups": opt["param_groups"],
              "state": extra}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, os.fspath(tmp), metadata={_CHECKPOINT_KEY: json.dumps(record)})
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    settings: dict[str, Any]) -> int:
    """Load :func:`save_checkpoint`'s file into ``model`` and ``optimizer``; returns its step. Raises
    :class:`CheckpointError` (one line naming the file) when it is damaged, foreign or from other settings."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    cannot = _CANNOT_RESUME.format(folder=path.parent)
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {})[_CHECKPOINT_KEY])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        reason = "no vistok checkpoint record" if isinstance(err, KeyError) else " ".join(str(err).split())
        raise CheckpointError(f"{path} is truncated or corrupt ({reason}); {cannot}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("settings") != settings:
        saved = record.get("settings") if isinstance(record, dict) else None
        saved = saved if isinstance(saved, dict) else {}
        diff = sorted(k for part in ("model", "train") for k in settings[part]
                      if not isinstance(saved.get(part), dict) or saved[part].get(k) != settings[part][k])
        raise CheckpointError(f"{path} was written with different settings ({', '.join(diff) or 'format/data'}); "
                              "resume with the same options, or start a new run in another --out")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Any]] = {int(p): dict(e) for p, e in record["state"].items()}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, param, name = key.split(".", 2)
                state.setdefault(int(param), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
        return int(record["step"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{path} does not fit the model it was written for ({reason}); {cannot}") from None


def _checkpoint(model: Autoencoder, optimizer: torch.optim.Optimizer, step: int, settings: dict[str, Any],
                path: Path, out: Path, info: dict[str, Any] | None, config: TrainConfig) -> None:
    save_checkpoint(path, model, optimizer, step, settings)
    model.eval()
    save_model(model, out / MODEL_FILE, {"training": {**(info or {}), "step": step, "data": settings["data"],
                                                      "seed": config.seed, "steps": config.steps}},
               config.weights_dtype)
    model.train()
