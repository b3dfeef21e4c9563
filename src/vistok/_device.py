"""Where a tokenizer's torch model runs and in which precision: the ``device=`` and ``dtype=`` options.

Every tokenizer that runs a torch model takes ``device`` (a torch device string: ``"cpu"``, ``"cuda"``,
``"cuda:1"``, ``"mps"``) and ``dtype`` (``"float32"``, ``"float16"``, ``"bfloat16"``). :func:`placement` checks
both once, when the tokenizer is created, with a one-line ``ValueError`` that names the option and says what to
pass instead; the :class:`Placement` it returns moves a model and its inputs there, and :func:`to_numpy` brings
outputs back as float32 numpy, so Tokens stay float32 whatever the model ran in.

Half precision is for GPUs. On the CPU every built-in model runs in both half types (tested with torch 2.x), but
float16 convolutions there are many times slower than float32 (seconds per image for the CNNs and VAEs), so
bfloat16 is the one to use there. A model that fails in a dtype raises torch's own error on the first ``encode``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DTYPES", "Placement", "placement", "to_numpy"]

DTYPES = ("float32", "float16", "bfloat16")
_EXAMPLES = "'cpu', 'cuda', 'cuda:1' or 'mps'"


def _check_device(device: Any) -> None:
    """``ValueError`` for a malformed device string or one this machine does not have."""
    if not isinstance(device, str):
        raise ValueError(f"device={device!r}: pass a torch device string, {_EXAMPLES}")
    if device == "cpu":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a torch device string; use {_EXAMPLES}") from None
    kind, index = parsed.type, parsed.index
    if kind == "cpu":
        return
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: torch.cuda.is_available() is False on this machine (no CUDA GPU "
                             "or a CPU-only torch); use device='cpu'")
        count = torch.cuda.device_count()
        if index is not None and index >= count:
            raise ValueError(f"device={device!r}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}; "
                             "pick one of those")
        return
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r}: torch.backends.mps.is_available() is False on this machine (no "
                             "Apple GPU, or a torch built without MPS); use device='cpu'")
        return
    raise ValueError(f"device={device!r}: vistok runs its models on cpu, cuda or mps devices; use {_EXAMPLES}")


@dataclass(frozen=True)
class Placement:
    """A checked ``(device, dtype)`` pair (build it with :func:`placement`)."""

    device: str = "cpu"
    dtype: str = "float32"

    @property
    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    def model(self, module: Any) -> Any:
        """``module`` moved (in place, as ``nn.Module.to`` does) to the device and dtype."""
        if self.device == "cpu" and self.dtype == "float32":
            return module
        return module.to(device=self.torch_device, dtype=self.torch_dtype)

    def inputs(self, tensor: Any) -> Any:
        """A float tensor on the device in the dtype; other tensors (ids, masks) only moved to the device."""
        if tensor.is_floating_point():
            return tensor.to(device=self.torch_device, dtype=self.torch_dtype)
        return tensor.to(self.torch_device)


def placement(device: Any = "cpu", dtype: Any = "float32") -> Placement:
    """The checked :class:`Placement` for the ``device`` and ``dtype`` options; a one-line ``ValueError`` naming
    the option otherwise."""
    _check_device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not a precision vistok runs models in; use one of "
                         f"{', '.join(map(repr, DTYPES))}")
    return Placement(device, dtype)


def to_numpy(tensor: Any) -> np.ndarray:
    """A model output as numpy on the CPU: float tensors as float32, others (ids) in their own type."""
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()
