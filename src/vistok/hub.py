"""Whether the Hugging Face hub can be used right now: one quick check shared by every loader, so that a hub
id on an offline machine fails at once with a clear message instead of hanging in a download."""

from __future__ import annotations

import os

__all__ = ["offline_reason"]

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
