"""The FastAPI application of ``vistok serve``: the page at ``/`` and its JSON API under ``/api``."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from vistok._sources import DEFAULT_MAX_PIXELS
from vistok.serve.api import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MODELS,
    RequestError,
    TokenizerCache,
    options,
    tokenize,
)

__all__ = ["create_app"]

#: Room for the multipart headers and the form's text fields on top of the image itself.
FORM_OVERHEAD_BYTES = 64 * 1024


def _page() -> str:
    return resources.files("vistok.serve").joinpath("static", "index.html").read_text(encoding="utf-8")


def _too_large(limit: int) -> RequestError:
    return RequestError(f"the upload is over the server's limit of {limit:,} bytes; send a smaller image, or start "
                        "vistok serve with a larger --max-upload-mb", status=413)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as its declared length or the bytes read pass ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + FORM_OVERHEAD_BYTES:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request, body: bytes) -> Any:
    """The multipart form in ``body`` (already read and bounded)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise RequestError("send the image as multipart/form-data with the file in the field 'image' "
                           "(curl -F image=@photo.jpg -F tokenizer=grid ...)")
    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=16)
    except Exception as exc:  # a malformed body: multipart's own errors have no common public base
        raise RequestError(f"the multipart form cannot be read ({exc}); send it as curl -F or a browser "
                           "FormData does") from None


def create_app(*, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               default_models: Sequence[str] = DEFAULT_MODELS) -> FastAPI:
    """The ``vistok serve`` application: the page at ``/``, ``GET /api/options`` and ``POST /api/tokenize``.

    ``max_upload_bytes`` bounds an upload (413 above it) and ``max_pixels`` the decoded image (400 above it);
    ``default_models`` are the VLMs the page selects at first. Tokenizers load on first use and stay loaded.
    """
    if max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be at least 1, got {max_upload_bytes}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1 (or None for no limit), got {max_pixels}")
    app = FastAPI(title="vistok serve", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    cache = TokenizerCache()
    app.state.tokenizers = cache
    page = _page()

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/api/options")
    def get_options() -> dict[str, Any]:
        """The tokenizers, reducers and VLMs to choose from, the VLMs selected at first, and the limits."""
        return options(max_upload_bytes=max_upload_bytes, max_pixels=max_pixels, default_models=default_models)

    @app.post("/api/tokenize")
    async def post_tokenize(request: Request) -> dict[str, Any]:
        """Multipart form: ``image`` (the file), ``tokenizer``, optional ``reducer`` and ``amount``, ``models``
        (comma-separated VLM names). Returns the tokens with their rectangles, counts and costs."""
        form = await _form(request, await _body(request, max_upload_bytes))
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise RequestError("no image: send the file in the multipart field 'image'")
        data = await upload.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise _too_large(max_upload_bytes)
        if not data:
            raise RequestError("the image field is empty; send the image file's bytes")

        def text(name: str) -> str:
            value = form.get(name)
            return value.strip() if isinstance(value, str) else ""

        models = [m.strip() for m in text("models").split(",") if m.strip()]
        return await run_in_threadpool(tokenize, data, text("tokenizer") or "grid", reducer=text("reducer"),
                                       amount=text("amount"), models=models, max_pixels=max_pixels, cache=cache)

    return app
