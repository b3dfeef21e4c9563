"""``vistok serve``: the local web page that draws any image's tokens (see vistok.serve)."""

from __future__ import annotations

from typing import Annotated

import typer

from vistok._sources import DEFAULT_MAX_PIXELS
from vistok.cli._common import err, error

DEFAULT_MAX_UPLOAD_MB = 32.0


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on. The default answers this machine only; 0.0.0.0 "
                                           "also answers the network (anyone who reaches it can upload).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload accepted, in MiB (413 above).")
                             ] = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest decoded image, width x height in pixels (a guard "
                                                         "against decompression bombs, as everywhere in vistok).")
                          ] = DEFAULT_MAX_PIXELS,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the page in the default browser.")
                            ] = False,
) -> None:
    """A local web page that draws any image's tokens and counts what they cost in VLMs.

    Drop, paste or choose an image; pick a tokenizer, a reducer and an amount, and VLMs. The page draws every
    token over the image (hover one for its id or norm, its patch and its group after reduction), shows the
    token count and KV-cache cost in each VLM, and the decoded image where the tokenizer decodes.

    Example: vistok serve --port 8000, then open http://127.0.0.1:8000/

    The page works offline (no files from other sites). Scripts can call its JSON API: GET /api/options and
    POST /api/tokenize (see docs/serve.md). Needs the serve extra: pip install 'vistok\\[serve]'. Ctrl-C stops it.
    """
    from vistok.serve import ServeError, run

    def listening(url: str) -> None:
        err.print(f"vistok serve: {url} (Ctrl-C to stop)", highlight=False, markup=False)

    try:
        run(host, port, max_upload_bytes=max(1, round(max_upload_mb * 1024 * 1024)), max_pixels=max_pixels,
            open_browser=open_browser, on_listen=listening)
    except ServeError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
