"""The Hugging Face hub for every loader: whether it can be used right now (one quick check, so that a hub id
on an offline machine fails at once with a clear message instead of hanging in a download), and the one lookup
order: the local cache, then the hub when reachable, else the loader's offline error."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import TypeVar

__all__ = ["HUB_ID", "offline_reason", "from_cache_or_hub"]

T = TypeVar("T")

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""What a Hugging Face hub repository id looks like (``org/name``)."""

_TRUE = {"1", "ON", "YES", "TRUE"}


def offline_reason() -> str | None:
    """Why the hub cannot be used, or None when it looks reachable. ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` set means offline; behind a proxy the download itself decides; otherwise a TCP
    connection to the hub (``HF_ENDPOINT``) is tried with a 3 s timeout."""
    for flag in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(flag, "").strip().upper() in _TRUE:
            return f"{flag} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return f"{host} is not reachable (offline)"
    return None


def from_cache_or_hub(fetch: Callable[[bool], T], offline_error: Callable[[str], Exception],
                      download_error: Callable[[Exception], Exception] | None = None) -> T:
    """The one hub lookup of every loader: ``fetch(True)`` reads the local Hugging Face cache only; when that
    fails, ``offline_error(reason)`` is raised if the hub cannot be used (:func:`offline_reason`), else
    ``fetch(False)`` downloads; its errors become ``download_error(err)`` (None: raised as they are)."""
    try:
        return fetch(True)
    except Exception:  # noqa: BLE001 - not in the cache (or not a valid id): the hub decides below
        pass
    reason = offline_reason()
    if reason is not None:
        raise offline_error(reason) from None
    try:
        return fetch(False)
    except Exception as err:  # noqa: BLE001 - the caller words it
        if download_error is None:
            raise
        raise download_error(err) from err
