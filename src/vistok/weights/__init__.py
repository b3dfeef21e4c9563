"""Where weights come from: files that ship inside the package, or a local path the user gives.

vistok never downloads at run time; a missing file raises an error that says what to pass instead.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bundled", "read_weights", "write_weights", "state_dict_mismatch"]


def bundled(filename: str) -> Path:
    """Path of a weights file shipped inside the ``vistok.weights`` package."""
    path = Path(str(resources.files(__name__).joinpath(filename)))
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled weights {filename!r} are missing from this vistok install ({path}); reinstall vistok, "
            "or fit your own with the vistok fit-* commands and pass the file's path"
        )
    return path


def write_weights(path: str | os.PathLike, arrays: dict[str, np.ndarray], info: dict[str, Any], *,
                  inputs: Any = (), follow_symlinks: bool = False) -> None:
    """Save arrays plus a JSON ``info`` record (kind, config, provenance) as safetensors, written safely
    (:func:`vistok.outputs.write_output`: never over one of ``inputs``, a link, a folder or a device)."""
    from safetensors.numpy import save_file

    from vistok.outputs import write_output

    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    write_output(path, lambda tmp: save_file(tensors, tmp, metadata={"vistok_weights": json.dumps(info)}),
                 inputs=inputs, follow_symlinks=follow_symlinks)


def read_weights(path: str | os.PathLike, expected_kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a file written by :func:`write_weights`, checking that it holds ``expected_kind`` weights."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist; pass the path of a file written by vistok")
    try:
        with safe_open(path, framework="numpy") as handle:
            info = json.loads((handle.metadata() or {}).get("vistok_weights", "null"))
            arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        from vistok.weights.checkpoints import unreadable

        raise unreadable(path, err) from None
    if not isinstance(info, dict) or info.get("kind") != expected_kind:
        found = info.get("kind") if isinstance(info, dict) else None
        raise ValueError(f"{path}: holds {found or 'no vistok'} weights, expected {expected_kind!r} weights")
    return arrays, info


def state_dict_mismatch(expected: dict[str, Any], state: dict[str, Any], side: str = "checkpoint") -> str | None:
    """What keeps ``state`` from loading strictly into a model whose state_dict is ``expected``: counts and the
    first names of missing, unexpected and mis-shaped tensors, or None when it fits. ``num_batches_tracked``
    counters may be missing (PyTorch fills them itself); ``side`` names the file in the shape list."""

    def some(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f", ... ({len(items) - 6} more)" if len(items) > 6 else "")

    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k].shape))
    parts = [f"{len(missing)} missing keys ({some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({some(unexpected)})" if unexpected else "",
             f"{len(shapes)} shape mismatches ({side} vs model: {some(shapes)})" if shapes else ""]
    return "; ".join(p for p in parts if p) or None
