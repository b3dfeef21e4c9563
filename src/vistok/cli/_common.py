"""What every command shares: the two consoles, option types, option parsing, progress and error reporting."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import Progress

# Wide tables when piped (Rich would otherwise fold them to 80 columns). Messages on stderr are never folded
# (soft wrap): a log or a pipe gets each error on one line, a terminal wraps it itself.
out = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the data as JSON on stdout instead of a table.")]


def error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr as one line, the message taken literally (no Rich markup)."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def print_json(data: Any) -> None:
    """``data`` as strict JSON on stdout (non-finite numbers as null; see vistok._json)."""
    from vistok._json import dumps

    sys.stdout.write(dumps(data, indent=2) + "\n")
    sys.stdout.flush()

TokenizerOpt = Annotated[str, typer.Option("--tokenizer", "-t", help="Tokenizer name (see `vistok list`).")]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option("--config", "-c", metavar="KEY=VALUE",
                 help="Tokenizer option, repeatable: -c dim=32 -c max_side=none. See `vistok list -v`."),
]
ReduceOpt = Annotated[
    list[str] | None,
    typer.Option("--reduce", "-r", metavar="METHOD:AMOUNT",
                 help="Shrink the tokens, repeatable (applied in order): tome:0.25 (a ratio), cls-attention:64 "
                      "(a count), pool:factor=2, visionzip:1/8,contextual=0.2. See `vistok reducers`."),
]
FollowOpt = Annotated[
    bool,
    typer.Option("--follow-symlinks",
                 help="If --out is a symbolic link, write the file it points to (without this, a link is refused)."),
]


def parse_config(items: list[str] | None, types: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["dim=32", "max_side=none", "codebook=cb.safetensors"]`` -> typed options. ``types`` (an option's
    declared type, see vistok._options.field_types) decides how each value is read: ``-c model=123`` stays
    text for a ``str`` option; without it, the first of None, true/false, int, float that reads the text."""
    from vistok._options import from_text

    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--config")
        key = key.strip().replace("-", "_")
        config[key] = from_text(raw, (types or {}).get(key))
    return config


def tokenizer_option_types(name: str) -> dict[str, Any]:
    """The declared type of each option of the tokenizer ``name`` (``"regions:faces"`` -> ``regions``'s);
    {} for a name that is not registered (a path, a typo: vistok.load reports it)."""
    from vistok._options import field_types
    from vistok.registry import tokenizer_info

    for candidate in (name, name.partition(":")[0]):
        try:
            return field_types(tokenizer_info(candidate).config_class)
        except (KeyError, TypeError, ValueError):
            continue
    return {}


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
        except ImportError as exc:  # a method that runs in torch, on a core install
            error(f"--reduce {spec}: {exc}")
            raise typer.Exit(1) from None
        except (KeyError, TypeError, ValueError) as exc:
            message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
            error(f"--reduce {spec}: {message}")
            raise typer.Exit(2) from None
    return items


def load_tokenizer(name: str, config: list[str] | None) -> Any:
    """The tokenizer ``name`` with ``-c`` options, checked; a bad name or option is a usage error (exit 2)."""
    import vistok

    try:
        tokenizer = vistok.load(name, **parse_config(config, tokenizer_option_types(name) if config else None))
        tokenizer.check()
        return tokenizer
    except (KeyError, TypeError, ValueError, FileNotFoundError, ImportError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        if isinstance(exc, ImportError):
            message = f"{name} needs the encoder packages ({exc}); install them: pip install 'vistok[encoders]'"
        error(f"{message}")
        raise typer.Exit(2) from None


def find_files(given: list[Path], *, check: bool = False) -> tuple[list[Path], dict[str, str]]:
    """The image files under ``given`` (files and folders) and, for inputs that are not, the reason; with
    ``check``, files whose header cannot be read are among the reasons (see vistok.images.gather_images)."""
    from vistok.images import gather_images

    return gather_images(given, check=check)


def gather_inputs(given: list[Path], out_file: Path | None = None, *,
                  follow_symlinks: bool = False) -> tuple[list[Path], dict[str, str], Path | None]:
    """Before any model loads: the readable images under ``given`` (headers read), the reasons for the
    others, and ``out_file`` checked against them (see :func:`check_out`). Exits 1 when no image is readable."""
    files, bad = find_files(given, check=True)
    target = check_out(out_file, [*files, *bad], follow_symlinks=follow_symlinks)
    if not files:
        if bad:
            error(f"no readable images: {len(bad)} input(s) cannot be used")
            for key, reason in bad.items():
                err.print(f"  {key}: {reason}", markup=False, highlight=False)
        else:
            error(f"no images found in {', '.join(map(str, given))}; vistok looks for "
                      "image files (.jpg, .png, .webp, ... or image data without a suffix)")
        raise typer.Exit(1)
    return files, bad, target


class _FolderSpelling(type(Path())):  # type: ignore[misc]
    """A path typed with a trailing separator (``out/``): the user named a folder, which ``Path`` forgets."""


def out_path(value: str | Path) -> Path:
    """Typer ``parser=`` for file outputs: keeps the fact that ``value`` ended with a separator."""
    text = os.fspath(value)
    return _FolderSpelling(text) if text.endswith(("/", os.sep)) else Path(text)


def check_out(out_file: Path | None, inputs: Any = (), *, follow_symlinks: bool = False,
              option: str = "--out") -> Path | None:
    """``--out`` (or ``option``) checked before the work starts (see vistok.outputs.check_output): the path
    to write, or None for None. A path vistok will not write is a usage error (exit 2) with one line."""
    from vistok.outputs import OutputError, check_output

    if out_file is None:
        return None
    if isinstance(out_file, _FolderSpelling):
        error(f"{option} {out_file}{os.sep}: ends with '{os.sep}', which names a folder; give the name of a file to "
              f"write in it, e.g. {out_file}{os.sep}NAME")
        raise typer.Exit(2)
    try:
        return check_output(out_file, inputs=inputs, follow_symlinks=follow_symlinks)
    except OutputError as exc:
        error(f"{option} {exc}")
        raise typer.Exit(2) from None


def write_out(target: Path, write: Any, inputs: Any = ()) -> None:
    """Write ``target`` (from :func:`check_out`) safely with ``write(tmp_path)``; a failure is one line, exit 1."""
    from vistok.outputs import OutputError, write_output

    try:
        write_output(target, write, inputs=inputs)
    except OutputError as exc:
        error(f"{exc}")
        raise typer.Exit(1) from None


def progress_bar(total: int, *, stats: bool = False, transient: bool = True) -> Progress:
    """A progress bar on stderr, hidden for a single item (and, when ``transient``, when stderr is not a terminal,
    where it would leave only an empty line); ``stats`` adds a ``task.fields["stats"]`` column."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if stats:
        columns.append(TextColumn("{task.fields[stats]}"))
    return Progress(*columns, console=err, transient=transient,
                    disable=total < 2 or (transient and not err.is_terminal))


def training_callbacks(bar: Progress, steps: int) -> tuple[Callable[[str, int, int], None],
                                                           Callable[[int, float], None]]:
    """``(progress, on_step)`` for a trainer: one bar per feature-caching stage, then a training bar with the loss."""
    tasks: dict[str, Any] = {}

    def on_features(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total, stats="")
        bar.update(tasks[what], completed=done)

    def on_step(step: int, loss: float) -> None:
        if "train" not in tasks:
            tasks["train"] = bar.add_task("training", total=steps, stats="", completed=step - 1)
        bar.update(tasks["train"], completed=step, stats=f"loss {loss:.3f}")

    return on_features, on_step


def warn_skipped(errors: dict[str, str]) -> None:
    """List unreadable inputs that were skipped, without failing the command (the work went on without them)."""
    if errors:
        err.print(f"[yellow]{len(errors)} unreadable input(s) skipped:[/yellow]")
        for key, reason in errors.items():
            err.print(f"  {key}: {reason}", markup=False, highlight=False)


def report_failures(errors: dict[str, str]) -> None:
    """List inputs that failed and exit 1 if there are any."""
    if errors:
        err.print(f"[red]{len(errors)} input(s) failed and were skipped:[/red]")
        for key, reason in errors.items():
            err.print(f"  {key}: {reason}", markup=False, highlight=False)
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
