"""``vistok serve``: a local web page that draws any image's tokens, and the JSON API it uses.

    from vistok.serve import create_app, run
    app = create_app()   # a FastAPI app: the page at /, GET /api/options, POST /api/tokenize
    run(port=8000)       # serve it on http://127.0.0.1:8000 until Ctrl-C (what `vistok serve` does)

Needs the ``serve`` extra (``pip install 'vistok[serve]'``: FastAPI, uvicorn, python-multipart). The page is one
HTML file with its script and styles inline, so it works without a network. See docs/serve.md.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from vistok._sources import DEFAULT_MAX_PIXELS
from vistok.serve.api import DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MODELS, RequestError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MODELS", "RequestError", "ServeError", "background", "bind",
           "create_app", "run", "url_of"]

_MISSING = "vistok serve needs FastAPI, uvicorn and python-multipart ({}): pip install 'vistok[serve]'"


class ServeError(Exception):
    """The server cannot start: a missing package, an address that cannot be bound."""


def create_app(*, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               default_models: Sequence[str] = DEFAULT_MODELS) -> FastAPI:
    """The FastAPI application (see :func:`vistok.serve.app.create_app`); :class:`ServeError` naming the
    extra to install when FastAPI or python-multipart is missing."""
    from importlib.util import find_spec

    try:
        from vistok.serve.app import create_app as build
    except ImportError as exc:
        raise ServeError(_MISSING.format(exc)) from None
    if find_spec("python_multipart") is None and find_spec("multipart") is None:  # forms fail only on upload
        raise ServeError(_MISSING.format("No module named 'python_multipart'"))
    return build(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, default_models=default_models)


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); :class:`ServeError` when it is taken or
    the host is not an address of this machine."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc}; give --host an address of this machine") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = "pick another --port" if exc.errno in (98, 48, 10048) else "give --host an address of this machine"
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {hint}") from None
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's address for a socket from :func:`bind`."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run(host: str = "127.0.0.1", port: int = 8000, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        max_pixels: int | None = DEFAULT_MAX_PIXELS, open_browser: bool = False,
        on_listen: Callable[[str], Any] | None = None, log_level: str = "warning") -> None:
    """Serve the page on ``host:port`` until interrupted. ``on_listen(url)`` is called once the address is
    bound (``vistok serve`` prints it); ``open_browser`` opens the page in the default browser once the server
    answers."""
    app = create_app(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    try:
        import uvicorn
    except ImportError as exc:
        raise ServeError(_MISSING.format(exc)) from None
    sock = bind(host, port)
    url = url_of(sock)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    if on_listen is not None:
        on_listen(url)
    if open_browser:
        def opener() -> None:
            for _ in range(200):
                if server.started:
                    webbrowser.open(url)
                    return
                threading.Event().wait(0.05)

        threading.Thread(target=opener, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def background(host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0, **settings: Any) -> Iterator[str]:
    """The server running in a background thread for the ``with`` block, which gets the page's URL (port 0: a
    free port); stopped on leaving it. ``settings`` go to :func:`create_app`. For notebooks, scripts and tests."""
    app = create_app(**settings)
    try:
        import uvicorn
    except ImportError as exc:
        raise ServeError(_MISSING.format(exc)) from None
    sock = bind(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="vistok-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServeError(f"the server on {url_of(sock)} did not start within {timeout:g} s")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        sock.close()
