"""What every command shares: the two consoles, option types, option parsing, progress and error reporting."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Wide tables when piped (Rich would otherwise fold them to 80 columns).
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True)

TokenizerOpt = Annotated[str, typer.Option("--tokenizer", "-t", help="Tokenizer name (see `vistok list`).")]
ConfigOpt = Annotated[
    Optional[list[str]],
    typer.Option("--config", "-c", metavar="KEY=VALUE",
                 help="Tokenizer option, repeatable: -c dim=32 -c max_side=none. See `vistok list -v`."),
]
ReduceOpt = Annotated[
    Optional[list[str]],
    typer.Option("--reduce", "-r", metavar="METHOD:AMOUNT",
                 help="Shrink the tokens, repeatable (applied in order): tome:0.25 (a ratio), cls-attention:64 "
                      "(a count), pool:factor=2, visionzip:1/8,contextual=0.2. See `vistok reducers`."),
]


def parse_config(items: list[str] | None) -> dict[str, Any]:
    """``["dim=32", "max_side=none", "codebook=cb.safetensors"]`` -> typed options (int, float, None, str)."""
    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        value: Any = raw
        if raw.lower() in ("none", "null"):
            value = None
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for cast in (int, float):
                try:
                    value = cast(raw)
                    break
                except ValueError:
                    pass
        config[key.strip().replace("-", "_")] = value
    return config


def parse_reduce(spec: str) -> tuple[str, dict[str, Any]]:
    """``"tome:0.25"`` -> ``("tome", {"ratio": 0.25})``; ``"cls-attention:64"`` -> ``keep=64``; ``"x:1/8"`` ->
    ``ratio=0.125``; ``key=value`` items after commas are the method's options (typed as in ``-c``)."""
    method, _, rest = spec.partition(":")
    method = method.strip()
    if not method:
        raise typer.BadParameter(f"expected METHOD:AMOUNT, got {spec!r}", param_hint="--reduce")
    options: dict[str, Any] = {}
    for part in [p.strip() for p in rest.split(",") if p.strip()]:
        if "=" in part:
            options.update(parse_config([part]))
            continue
        num, slash, den = part.partition("/")
        try:
            amount = float(num) / float(den) if slash else float(num)
        except ValueError:
            raise typer.BadParameter(f"{part!r} in {spec!r} is not a count, a ratio or key=value",
                                     param_hint="--reduce") from None
        if slash or not float(num).is_integer() or amount < 1:
            options["ratio"] = amount
        else:
            options["keep"] = int(amount)
    return method, options


def reduce_all(items: dict[str, Any], specs: list[str] | None) -> dict[str, Any]:
    """Apply each ``--reduce`` step to every token set; a step that cannot apply is a usage error (exit 2)."""
    import vistok

    for spec in specs or []:
        method, options = parse_reduce(spec)
        try:
            items = {key: vistok.reduce(tokens, method, **options) for key, tokens in items.items()}
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            err.print(f"[red]error:[/red] --reduce {spec}: {message}")
            raise typer.Exit(2) from None
    return items


def load_tokenizer(name: str, config: list[str] | None) -> Any:
    """The tokenizer ``name`` with ``-c`` options, checked; a bad name or option is a usage error (exit 2)."""
    import vistok

    try:
        tokenizer = vistok.load(name, **parse_config(config))
        tokenizer.check()
        return tokenizer
    except (KeyError, TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        if isinstance(exc, ImportError):
            message = f"{name} needs the encoder packages ({exc}); install them: pip install 'vistok[encoders]'"
        err.print(f"[red]error:[/red] {message}")
        raise typer.Exit(2) from None


def find_files(given: list[Path]) -> tuple[list[Path], dict[str, str]]:
    """The image files under ``given`` (files and folders) and, for inputs that are not, the reason."""
    from vistok.images import ImageError, find_images

    files: list[Path] = []
    bad: dict[str, str] = {}
    for item in given:
        try:
            files += find_images([item])
        except ImageError as exc:
            bad[str(item)] = exc.reason
    return files, bad


def progress_bar(total: int) -> Progress:
    """A transient progress bar on stderr, hidden for a single item."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True, disable=total < 2)


def warn_skipped(errors: dict[str, str]) -> None:
    """List unreadable inputs that were skipped, without failing the command (the work went on without them)."""
    if errors:
        err.print(f"[yellow]{len(errors)} unreadable input(s) skipped:[/yellow]")
        for key, reason in errors.items():
            err.print(f"  {key}: {reason}")


def report_failures(errors: dict[str, str]) -> None:
    """List inputs that failed and exit 1 if there are any."""
    if errors:
        err.print(f"[red]{len(errors)} input(s) failed and were skipped:[/red]")
        for key, reason in errors.items():
            err.print(f"  {key}: {reason}")
        raise typer.Exit(1)


def yes(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; ``None`` -> ``"-"``."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"
