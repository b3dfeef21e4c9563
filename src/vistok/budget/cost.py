"""What image tokens cost inside the language model: KV-cache bytes and prefill FLOPs.

KV cache: every image position stores a key and a value per layer and KV head,
``2 * layers * kv_heads * head_dim * bytes`` per token (grouped-query attention shares KV heads; Ainslie
et al., "GQA", 2023). Cross-attention models (Llama 3.2 Vision) keep the vision states in their
cross-attention layers only. Prefill FLOPs follow the usual dense-transformer accounting (Kaplan et al.,
"Scaling Laws for Neural Language Models", 2020, section 2.1): ``2 * params`` per token for the linear
layers (Q, K, V, O projections and a gated MLP), plus ``4 * heads * head_dim`` per attended (query, key)
pair for scores and weighted values, causal, so ``n`` image tokens after ``t`` prompt tokens add
``n * t + n * (n + 1) / 2`` pairs per layer: the quadratic term. Sliding-window layers (Gemma 2/3) are
counted as full attention, so the numbers are upper bounds there.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

from vistok.budget.core import TokenCount

__all__ = ["LMConfig", "Cost", "cost", "lm_presets", "DTYPE_BYTES"]

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2,
               "fp8": 1, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class LMConfig:
    """The shape of a decoder-only language model (names as in its config.json)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    cross_attention_layers: int = 0
    name: str = "custom"
    source: str = ""

    def __post_init__(self) -> None:
        for label in ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate"):
            if int(getattr(self, label)) <= 0:
                raise ValueError(f"LM {label} must be positive, got {getattr(self, label)!r}")

    @classmethod
    def from_transformers(cls, config: Any, name: str | None = None) -> LMConfig:
        """The shape of the language model in a transformers config: a ``PretrainedConfig`` (a VLM's is read
        through ``get_text_config()``) or a ``config.json`` dict (its ``text_config``, when it has one).
        ``head_dim`` defaults to ``hidden_size // num_attention_heads`` and ``num_key_value_heads`` to the
        head count, as transformers does; Mllama's ``cross_attention_layers`` list is counted."""
        if isinstance(config, dict):
            text = config.get("text_config") or config
            get = text.get
        else:
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            get = functools.partial(getattr, text)
        missing = [k for k in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
                   if get(k, None) is None]
        if missing:
            what = "the config dict" if isinstance(config, dict) else type(text).__name__
            raise ValueError(f"{what} has no {missing[0]}: pass a decoder language model's config "
                             "(or a VLM config whose text config has num_hidden_layers, hidden_size, "
                             "num_attention_heads, intermediate_size)")
        heads = int(get("num_attention_heads", 0))
        return cls(layers=int(get("num_hidden_layers", 0)), hidden=int(get("hidden_size", 0)), heads=heads,
                   kv_heads=int(get("num_key_value_heads", None) or heads),
                   head_dim=int(get("head_dim", None) or int(get("hidden_size", 0)) // heads),
                   intermediate=int(get("intermediate_size", 0)),
                   cross_attention_layers=len(get("cross_attention_layers", None) or ()),
                   name=name or str(get("model_type", None) or "custom"), source="transformers config")

    @property
    def self_attention_layers(self) -> int:
        return self.layers - self.cross_attention_layers

    def linear_flops_per_token(self) -> int:
        """2 x the weights one token passes through in the self-attention layers (no embeddings)."""
        attn = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        return 2 * (attn + mlp) * self.self_attention_layers


_presets: dict[str, LMConfig] | None = None


def lm_presets() -> dict[str, LMConfig]:
    """The bundled LM presets (``data/lms.json``) by name."""
    global _presets
    if _presets is None:
        raw = json.loads(resources.files("vistok.budget").joinpath("data", "lms.json").read_text())
        _presets = {name: LMConfig(name=name, **spec) for name, spec in raw.items() if not name.startswith("_")}
    return _presets


def _lm(lm: str | LMConfig | dict[str, Any]) -> LMConfig:
    if isinstance(lm, LMConfig):
        return lm
    if isinstance(lm, dict):
        return LMConfig(**lm)
    presets = lm_presets()
    if lm not in presets:
        import difflib

        close = difflib.get_close_matches(lm, sorted(presets), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise KeyError(f"unknown LM preset {lm!r}; {hint}known: {', '.join(sorted(presets))}; or pass "
                       "lm=dict(layers=..., hidden=..., heads=..., kv_heads=..., head_dim=..., intermediate=...)")
    return presets[lm]


@dataclass(frozen=True)
class Cost:
    """Cost of one image's tokens in one LM."""

    lm: str
    dtype: str
    positions: int
    cross_attention_states: int
    kv_cache_bytes: int
    linear_flops: int
    attention_flops: int

    @property
    def prefill_flops(self) -> int:
        return self.linear_flops + self.attention_flops

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_flops": self.prefill_flops}


def cost(
    count: TokenCount | int,
    lm: str | LMConfig | dict[str, Any] | None = None,
    *,
    dtype: str | Any = "bfloat16",
    prompt_tokens: int = 0,
) -> Cost:
    """KV-cache bytes and prefill FLOPs that the image adds to ``lm``.

    ``count`` is a :class:`TokenCount` (its ``total_positions`` occupy the cache, wrappers included) or a
    plain number of positions. ``lm`` is a preset name (see :func:`lm_presets`), an :class:`LMConfig` or a
    dict of its fields; by default the LM of the counted model. ``prompt_tokens`` is the text before
    the image, which the image tokens attend to (the quadratic term grows with it). ``dtype`` is a name in
    :data:`DTYPE_BYTES` or a ``torch.dtype``; :meth:`LMConfig.from_transformers` reads ``lm`` from a loaded
    model's config, and the KV-cache bytes then equal what its ``DynamicCache`` holds after prefill.
    """
    dtype = str(dtype).removeprefix("torch.")  # torch.bfloat16 names the same dtype
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens}")
    cross_states = 0
    if isinstance(count, TokenCount):
        positions = count.total_positions
        cross_states = int(count.breakdown.get("cross_attention_states", 0))
        if lm is None:
            from vistok.budget.models import resolve_model

            lm = resolve_model(count.model).lm
            if lm is None:
                raise ValueError(f"{count.model} has no LM preset (a hosted model?); pass lm=...")
    else:
        positions = int(count)
        if lm is None:
            raise ValueError("pass lm=... (a preset name, LMConfig or dict) to cost a plain token count")
    if positions < 0:
        raise ValueError(f"token count must be >= 0, got {positions}")
    config = _lm(lm)
    if cross_states and not config.cross_attention_layers:
        raise ValueError(f"{count.model if isinstance(count, TokenCount) else 'this count'} feeds vision states to "
                         f"cross-attention layers, but LM {config.name!r} has none; use a *-vision-text preset")
    per_token_kv = 2 * config.kv_heads * config.head_dim * DTYPE_BYTES[dtype]
    kv = per_token_kv * (positions * config.self_attention_layers + cross_states * config.cross_attention_layers)
    n, t = positions, prompt_tokens
    pairs = n * t + n * (n + 1) // 2
    attention = 4 * config.heads * config.head_dim * pairs * config.self_attention_layers
    linear = config.linear_flops_per_token() * n
    if cross_states:
        # each text position attends to every vision state in each cross-attention layer; K/V projections
        # of the vision states: 2 * (2 * hidden * kv_heads * head_dim) per state and layer
        kv_proj = 2 * 2 * config.hidden * config.kv_heads * config.head_dim * cross_states
        attention += 4 * config.heads * config.head_dim * cross_states * (t + n) * config.cross_attention_layers
        linear += kv_proj * config.cross_attention_layers
    return Cost(config.name, dtype, positions, cross_states, int(kv), int(linear), int(attention))
