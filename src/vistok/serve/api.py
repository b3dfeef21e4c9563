"""What the page's JSON API computes, without the web layer: the choices it offers, and one uploaded image
tokenized, optionally reduced, laid out as rectangles in the image's pixels and counted in VLMs.

Every problem a request can cause is a :class:`RequestError` with an HTTP status and a message that names the
problem and what to do about it; the web layer (:mod:`vistok.serve.app`) turns it into ``{"detail": ...}``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vistok._sources import DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MODELS", "PREVIEW_SIDE", "RequestError", "TokenizerCache",
           "options", "tokenize"]

#: Largest upload the server takes unless told otherwise (``vistok serve --max-upload-mb``).
DEFAULT_MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: The VLMs the page selects until the user picks others: one per common way of turning an image into tokens
#: (a fixed square crop, native resolution, a fixed low resolution).
DEFAULT_MODELS = ("llava-1.5-7b", "qwen2-vl-7b-instruct", "paligemma-3b-pt-224")
#: The longest side of the preview image the page draws the tokens over.
PREVIEW_SIDE = 1024


class RequestError(Exception):
    """A request that cannot be served as sent: ``status`` (400, 413) and a message for the user."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokenizer: Any = None


class TokenizerCache:
    """Tokenizers loaded on first use and kept, one per name. Loading and using one tokenizer is serialised
    (a request waits for another's encode of the same tokenizer); different tokenizers run side by side."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """The tokenizer ``name`` (loaded now if it is not yet), held for the ``with`` block."""
        with self._lock:
            slot = self._slots.setdefault(name, _Slot())
        with slot.lock:
            if slot.tokenizer is None:
                slot.tokenizer = _load(name)
            yield slot.tokenizer

    def loaded(self) -> list[str]:
        """Names of the tokenizers loaded so far."""
        with self._lock:
            return sorted(name for name, slot in self._slots.items() if slot.tokenizer is not None)


def _load(name: str) -> Any:
    import vistok

    base = name.partition(":")[0]
    if base not in vistok.list_tokenizers():  # names only: a page must not make the server open its own files
        try:
            vistok.tokenizer_info(base)
        except KeyError as exc:
            raise RequestError(f"{exc.args[0]}; pick one of the names GET /api/options lists") from None
    try:
        tokenizer = vistok.load(name)
        tokenizer.check()
        return tokenizer
    except KeyError as exc:
        raise RequestError(f"{exc.args[0]}; pick one of the names GET /api/options lists") from None
    except ImportError as exc:
        raise RequestError(f"tokenizer {name!r} needs packages this server lacks ({exc}); install them where the "
                           "server runs (pip install 'vistok[encoders]' or 'vistok[regions]') and restart it, or "
                           "pick another tokenizer") from None
    except (TypeError, ValueError, OSError, RuntimeError) as exc:
        raise RequestError(f"tokenizer {name!r} cannot be loaded here: {exc}; pick another tokenizer") from None


def options(*, max_upload_bytes: int, max_pixels: int | None,
            default_models: Sequence[str] = DEFAULT_MODELS) -> dict[str, Any]:
    """What ``GET /api/options`` returns: the tokenizers, reducers and VLMs to choose from, and the limits."""
    import vistok
    from vistok.budget import list_models
    from vistok.reducers.core import method_info
    from vistok.regions.base import list_detectors

    tokenizers = []
    for name in vistok.list_tokenizers():
        info = vistok.tokenizer_info(name)
        entry = {"name": name, "kind": info.kind, "decodes": info.decodable, "countable": info.countable,
                 "weights": info.weights, "description": info.description}
        if info.argument == "detector":  # regions: one entry per detector, as `vistok show -t regions:faces`
            tokenizers.extend({**entry, "name": f"{name}:{d}"} for d in list_detectors())
        else:
            tokenizers.append(entry)
    reducers = []
    for name in vistok.reduce_methods():
        m = method_info(name)
        reducers.append({"name": name, "description": m.description, "soft_only": m.soft_only,
                         "needs": list(m.needs), "merges": m.merges, "sizing": list(m.sizing)})
    return {"tokenizers": tokenizers, "reducers": reducers, "models": list_models(),
            "default_models": list(default_models),
            "limits": {"max_upload_bytes": int(max_upload_bytes), "max_pixels": max_pixels}}


def parse_amount(reducer: str, amount: str) -> dict[str, Any]:
    """The reducer's keyword arguments from the amount text, read as ``--reduce METHOD:AMOUNT`` reads it: a
    whole number from 1 up is a count (``keep``), anything else a ratio (``0.25``, ``1/8``); ``key=value`` items
    after commas are the method's options (``factor=2`` for pool)."""
    import typer

    from vistok.cli._common import parse_reduce

    try:
        _, parsed = parse_reduce(f"{reducer}:{amount}")
    except typer.BadParameter as exc:
        raise RequestError(f"amount {amount!r}: {exc.message}; give a ratio (0.25, 1/8), a token count (64) or "
                           "key=value options (factor=2)") from None
    return parsed


def _open(data: bytes, max_pixels: int | None) -> Any:
    from vistok.images import ImageError, open_image

    try:
        return open_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        text = str(exc).removeprefix(f"<bytes: {len(data)} B>: ")
        if "over the limit" in text:
            raise RequestError(f"the image is too large: {text.split(' (')[0]}; send a smaller image, or start "
                               "vistok serve with a larger --max-pixels") from None
        raise RequestError(f"the upload is not an image vistok can read: {text}; send a PNG, JPEG, WebP, GIF, BMP "
                           "or TIFF file") from None


def _check_models(models: Sequence[str]) -> list[str]:
    from vistok.budget import resolve_model

    names = []
    for model in models:
        try:
            names.append(resolve_model(model).name)
        except KeyError as exc:
            raise RequestError(f"{exc.args[0]}; GET /api/options lists the models") from None
    return names


def _check_reducer(name: str, amount: str) -> tuple[Any, dict[str, Any]]:
    from vistok.reducers.core import method_info

    try:
        info = method_info(name)
    except KeyError as exc:
        raise RequestError(f"{exc.args[0]}; pick one of the reducers GET /api/options lists") from None
    if not amount.strip():
        sizes = f" or {', '.join(f'{s}=...' for s in info.sizing)}" if info.sizing else ""
        raise RequestError(f"reducer {name!r} needs an amount: a ratio (0.25, 1/8) or a token count (64){sizes}")
    return info, parse_amount(name, amount)


def _data_url(image: Any, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def _preview(image: Any) -> str:
    """The image as the server opened it (upright RGB), at most :data:`PREVIEW_SIDE` on its long side."""
    scale = PREVIEW_SIDE / max(image.size)
    if scale < 1:
        from PIL import Image

        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
    return _data_url(image, "JPEG")


def token_layout(tokens: Any, size: tuple[int, int]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One entry per token (index, id or norm, colour, the rectangles it covers in the pixels of an image of
    ``size``, its patch and group of base patches) and the layout they come from (``base_grid`` and the
    ``covered`` part of the image, or ``boxes``)."""
    import numpy as np

    from vistok.viz import _covered, token_colors

    n = len(tokens)
    colors = ["#{:02x}{:02x}{:02x}".format(*map(int, rgb)) for rgb in token_colors(tokens)] if n else []
    if tokens.is_hard:
        values: list[dict[str, Any]] = [{"id": int(v)} for v in tokens.values]
    else:
        norms = np.linalg.norm(tokens.values.astype(np.float64), axis=1)
        values = [{"norm": round(float(v), 4)} for v in norms]
    entries = [{"index": i, **values[i], "color": colors[i]} for i in range(n)]
    if tokens.boxes is not None:
        scale = tokens.image_size or size
        sx, sy = size[0] / scale[0], size[1] / scale[1]
        for entry, (x0, y0, x1, y1) in zip(entries, tokens.boxes.tolist()):
            box = [round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)]
            entry.update(cells=[box], box=box, patch=None, group=None)
        return entries, {"kind": "boxes"}
    if tokens.source is not None and tokens.base_grid is not None:
        grid, source = tokens.base_grid, tokens.source
    elif tokens.grid is not None:
        grid, source = tokens.grid, np.arange(n)
    else:
        raise RequestError(f"the tokens have neither a grid nor boxes, so they cannot be drawn ({tokens!r})")
    rows, cols = grid
    x0, y0, x1, y1 = _covered(tokens, size)
    xs = np.round(np.linspace(x0, x1, cols + 1), 2).tolist()
    ys = np.round(np.linspace(y0, y1, rows + 1), 2).tolist()
    order = np.argsort(source, kind="stable")
    kept = order[source[order] >= 0]
    members = np.split(kept, np.cumsum(np.bincount(source[kept], minlength=n))[:-1]) if n else []
    for entry, patches in zip(entries, members):
        cells_rc = [divmod(int(p), cols) for p in patches]
        cells = [[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r, c in cells_rc]
        box = [min(c[0] for c in cells), min(c[1] for c in cells), max(c[2] for c in cells),
               max(c[3] for c in cells)] if cells else None
        entry.update(cells=cells, box=box, patch=list(cells_rc[0]) if cells_rc else None,
                     group=[list(rc) for rc in cells_rc])
    layout = {"kind": "grid", "base_grid": [rows, cols], "covered": [round(v, 2) for v in (x0, y0, x1, y1)],
              "dropped_patches": int((source < 0).sum())}
    return entries, layout


def _reduced_count(image_tokens: int, info: Any, amount: dict[str, Any]) -> int | None:
    """What ``keep``/``ratio`` leaves of ``image_tokens`` visual tokens (None for a sizing option like pool's
    ``factor``, whose result depends on the model's own grid)."""
    from vistok.reducers.core import keep_count

    keep, ratio = amount.get("keep"), amount.get("ratio")
    if keep is None and ratio is None:
        return None
    return keep_count(image_tokens, min(int(keep), image_tokens) if keep is not None else None, ratio,
                      info.ratio_rounding)


def _model_rows(size: tuple[int, int], models: Sequence[str], info: Any, amount: dict[str, Any]) -> list[dict]:
    import vistok
    from vistok.budget.models import resolve_model

    rows = []
    for model in models:
        entry = resolve_model(model)
        lm = entry.lm

        def kv(c: Any, lm: str | None = lm) -> int | None:
            return vistok.cost(c).kv_cache_bytes if lm is not None else None

        try:
            counted = vistok.count(size, model=model)
            row: dict[str, Any] = {"model": counted.model, "family": counted.family, "lm": lm,
                                   "image_tokens": counted.image_tokens, "total_positions": counted.total_positions,
                                   "kv_cache_bytes": kv(counted), "reduced": None, "error": None}
        except ValueError as exc:  # a model that refuses this image (Qwen-VL past 200:1): said in its row
            rows.append({"model": entry.name, "family": entry.family, "lm": lm, "image_tokens": None, "total_positions": None,
                         "kv_cache_bytes": None, "reduced": None, "error": str(exc)})
            continue
        crossed = int(counted.breakdown.get("cross_attention_states", 0))
        k = _reduced_count(counted.image_tokens, info, amount) if info is not None and not crossed else None
        if k is not None:
            smaller = replace(counted, image_tokens=k, total_positions=counted.total_positions - counted.image_tokens + k)
            row["reduced"] = {"method": info.name, "image_tokens": k, "total_positions": smaller.total_positions,
                              "kv_cache_bytes": kv(smaller)}
        rows.append(row)
    return rows


def tokenize(data: bytes, tokenizer: str, *, reducer: str = "", amount: str = "", models: Sequence[str] = (),
             max_pixels: int | None = DEFAULT_MAX_PIXELS, cache: TokenizerCache | None = None,
             preview: bool = True) -> dict[str, Any]:
    """What ``POST /api/tokenize`` returns for the image bytes ``data`` (see docs/serve.md for the fields)."""
    import vistok
    from vistok.images import ImageError

    image = _open(data, max_pixels)
    names = _check_models(models)
    info, reduce_args = _check_reducer(reducer, amount) if reducer else (None, {})
    if not tokenizer:
        raise RequestError("no tokenizer given; pick one of the names GET /api/options lists")
    cache = cache if cache is not None else TokenizerCache()
    with cache.use(tokenizer) as tok:
        try:
            tokens = tok.encode(image)
            decoded = tok.decode(tokens) if tok.decodable else None
        except ImageError as exc:
            raise RequestError(f"{tokenizer} cannot use this image: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise RequestError(f"{tokenizer} cannot tokenize this image: {exc}") from None
        kind = "hard" if tokens.is_hard else "soft"
    reduced = tokens
    if info is not None:
        try:
            reduced = vistok.reduce(tokens, info.name, **reduce_args)
        except ImportError as exc:
            raise RequestError(f"reducer {info.name!r}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            raise RequestError(f"reducer {info.name!r} cannot reduce {tokenizer} tokens: {message}") from None
    entries, layout = token_layout(reduced, image.size)
    return {
        "image": {"width": image.width, "height": image.height},
        "tokenizer": {"name": tokenizer, "kind": kind, "decodes": decoded is not None},
        "reduction": None if info is None else {"method": info.name, "amount": amount, "options": reduce_args,
                                                "from": len(tokens), "to": len(reduced)},
        "count": {"tokens": len(reduced), "before_reduction": len(tokens)},
        "grid": list(reduced.grid) if reduced.grid is not None else None,
        "layout": layout,
        "tokens": entries,
        "models": _model_rows(image.size, names, info, reduce_args),
        "decoded": _data_url(decoded, "PNG") if decoded is not None else None,
        "preview": _preview(image) if preview else None,
    }
