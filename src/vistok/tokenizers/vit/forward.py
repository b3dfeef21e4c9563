"""One forward pass of a ViT for the ``vit`` tokenizer: the chosen block's output (the rest of the model is
skipped unless the saliency head needs it), its CLS attention and keys computed from the block's own
query/key projections, ToMe merging, and focus-vit-s14's saliency head; or the same from the onnxruntime graph.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from vistok._device import to_numpy
from vistok.tokenizers.vit.checkpoint import model_lock

__all__ = ["Request", "forward_torch", "forward_onnx"]


@dataclass(frozen=True)
class Request:
    """What one pass must capture. ``layer``: the ``hidden_states`` index (0..layers); ``protected``: CLS plus
    register tokens (never merged); ``head``: focus-vit-s14's saliency head, or None."""

    layer: int
    norm: bool
    attentions: bool
    keys: bool
    tome_r: int
    protected: int
    head: Any = None


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the chosen block has run."""


def forward_torch(model: Any, pixels: Any, grid: tuple[int, int], req: Request) -> tuple[Any, ...]:
    """``(sequence (B, T, D), keys or None, saliency map (B, H, W) or None, attention (B, H, T) or None,
    merged (B, rows*cols) or None)`` as numpy arrays; call under ``torch.inference_mode()``."""
    import torch

    layer, protected = req.layer, req.protected
    blocks = _blocks(model)
    saliency = req.head is not None
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
    if req.attentions or req.keys:
        q_proj, k_proj = _qk(blocks[layer - 1])
        hooks.append(q_proj.register_forward_hook(keep("q", False)))
        hooks.append(k_proj.register_forward_hook(keep("k", False)))
    kwargs = {"interpolate_pos_encoding": True} if _takes(model, "interpolate_pos_encoding") else {}
    output = None
    with model_lock(model):
        try:
            if req.tome_r:  # patched for this pass only: the model is shared with other tokenizers
                from vistok.reducers.tome_patch import patch

                tome["handle"] = patch(model, req.tome_r, protected=protected)
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
    if req.norm:
        hidden = model.layernorm(hidden)
    assign, size = tome.get("assign"), tome.get("size")  # the chosen block's merge, the sizes it saw
    attn = _cls_attention(captured, model.config.num_attention_heads, protected, assign, size) \
        if req.attentions else None
    keys = None
    if req.keys:
        keys = captured["k"]
        if assign is not None:  # size-weighted mean over each merge
            from vistok.reducers.tome_patch import group_mean

            means, _ = group_mean(keys[:, protected:], assign, size, int(assign.max()) + 1)
            keys = torch.cat([keys[:, :protected], means], dim=1)
        keys = to_numpy(keys)
    sal_map = None
    if saliency:
        from vistok.weights.focus_vit import saliency_from_tokens

        final = output.last_hidden_state[:, protected:]  # per image, for the same reason as the attention
        if "final" in tome:  # the head needs the grid: each patch gets the final token it merged into
            final = final.gather(1, tome["final"][..., None].expand(-1, -1, final.shape[-1]))
        sal_map = np.concatenate([to_numpy(saliency_from_tokens(req.head, final[i:i + 1], grid,
                                                                 tuple(pixels.shape[2:]))) for i in range(len(final))])
    merged = to_numpy(tome["source"]) if "source" in tome else None
    return to_numpy(hidden), keys, sal_map, attn, merged


def _cls_attention(captured: dict[str, Any], heads: int, protected: int, assign: Any, size: Any) -> np.ndarray:
    """``(B, H, T)`` softmax attention from CLS, from the block's own query/key projections (in float32, whatever
    the model's dtype)."""
    import torch

    q, k = captured["q"].float(), captured["k"].float()
    b, t, d = k.shape
    q_cls = q[:, :1].reshape(b, 1, heads, d // heads).transpose(1, 2)  # (B, H, 1, dh)
    k_h = k.reshape(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, dh)
    # one image at a time: batched matmul kernels may round differently for other batch sizes, and a token must
    # not depend on which other images shared its batch
    rows = []
    for i in range(b):
        logits = (q_cls[i] @ k_h[i].transpose(-1, -2)) * (d // heads) ** -0.5  # (H, 1, T)
        if size is not None:  # ToMe's proportional attention, as the block ran it
            logits[..., protected:] += size[i].float().log()
        weights = torch.softmax(logits, dim=-1)[:, 0]
        if assign is not None:  # attention to a merged token: the sum over its members
            summed = weights.new_zeros(heads, int(assign[i].max()) + 1).index_add_(1, assign[i],
                                                                                  weights[:, protected:])
            weights = torch.cat([weights[:, :protected], summed], dim=1)
        rows.append(to_numpy(weights))
    return np.stack(rows)


def forward_onnx(onnx: Any, norm: Any, pixels: np.ndarray, req: Request, saliency: bool) -> tuple[Any, ...]:
    """The same as :func:`forward_torch` from focus-vit-s14's onnxruntime graph (no ToMe): ``norm`` is the
    final LayerNorm as a numpy function."""
    layer = req.layer
    names = [f"hidden.{layer}"]
    if req.attentions:
        names.append(f"attn.{layer}")
    if req.keys:
        names.append(f"keys.{layer}")
    if saliency:
        names.append("saliency")
    result = onnx.run(pixels, tuple(names))
    hidden = result[f"hidden.{layer}"]
    if req.norm:
        hidden = norm(hidden)
    attn = result[f"attn.{layer}"][:, :, 0] if req.attentions else None
    sal = result["saliency"][:, 0] if "saliency" in result else None
    return hidden, result.get(f"keys.{layer}"), sal, attn, None


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
    return argument in inspect.signature(model.forward).parameters
