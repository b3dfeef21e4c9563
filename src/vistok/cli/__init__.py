"""The ``vistok`` command: a thin layer over the same functions a Python user calls.

One module per group of commands, registered here in the order ``vistok --help`` lists them:
``tokens`` (list, tokenize, inspect, show, reducers, classify), ``learned`` (fit-codebook, fit-patch,
train, eval-recon), ``demo``, ``budget`` (count, models), ``fit``, ``vlm``; ``_common`` holds what they share.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vistok.cli import align, budget, compare, dataset, demo, fit, learned, serve, tokens, train_vlm, vlm
from vistok.cli._common import parse_config, parse_reduce

app = typer.Typer(
    name="vistok",
    help="Turn images into the tokens vision and multimodal models consume: tokenize, draw, classify, shrink (--reduce), count what they cost in VLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from vistok import __version__

        typer.echo(f"vistok {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


app.command("list")(tokens.list_command)
app.command()(tokens.tokenize)
app.command()(tokens.inspect)
app.command()(tokens.show)
app.command("reducers")(tokens.reducers_command)
app.command()(tokens.classify)
app.command("fit-codebook")(learned.fit_codebook)
app.command("fit-patch")(learned.fit_patch)
app.command()(demo.demo)
app.command("count")(budget.count_command)
app.command("fit")(fit.fit_command)
app.command("models")(budget.models_command)
app.command("train")(learned.train_command)
app.command("eval-recon")(learned.eval_recon)
app.command("vlm")(vlm.vlm_command)
app.command("train-vlm")(train_vlm.train_vlm_command)
app.command("align")(align.align_command)
app.command("tokenize-dataset")(dataset.tokenize_dataset_command)
app.command("compare")(compare.compare_command)
app.command("serve")(serve.serve_command)


def main() -> None:
    """Entry point of the ``vistok`` console script and ``python -m vistok``. A usage error (a missing value, an
    option of the wrong form) is one ``error:`` line naming the command's help, like vistok's own errors,
    rather than Typer's boxed panel."""
    import sys

    from vistok.cli._common import error

    # Typer re-exports BadParameter and Abort only; its usage and base errors are BadParameter's ancestors
    usage_error, click_error = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                                for name in ("UsageError", "ClickException"))
    try:
        code = app(standalone_mode=False)
    except usage_error as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "vistok"
        error(f"{exc.format_message()} (see '{where} -h')")
        sys.exit(exc.exit_code)
    except click_error as exc:
        error(exc.format_message())
        sys.exit(exc.exit_code)
    except typer.Abort:
        error("aborted")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main", "parse_config", "parse_reduce"]
