"""Run the code examples of README.md and docs/*.md: shared by tests/test_docs.py and
scripts/refresh_doc_outputs.py.

A page's fenced blocks run in order, in one temporary folder, sharing one Python namespace:

- ```python blocks with ``>>>`` prompts run as doctests (ELLIPSIS, NORMALIZE_WHITESPACE); other ```python
  blocks are executed as they are;
- ```console blocks hold ``$ command`` lines (a trailing ``\\`` continues a command), each followed by the output
  it prints. The command runs in bash with the test environment's ``vistok`` and ``python`` first on PATH and
  ``COLUMNS=120``. Where an output is shown it must equal what the command prints, after whitespace is
  normalised; ``...`` stands for any text within a line, and a line of only ``...`` for any number of lines.
  A command that exits non-zero must show its output (the documented error). No output may hold a traceback;
- ```bash blocks are not run (they show commands in prose, such as installation).

An HTML comment right before a block changes that: ``<!-- no-compare -->`` runs the block but does not compare
outputs (timings); ``<!-- no-run: REASON -->`` does not run it (it needs something a test cannot have, such as
a download or your own checkpoint).
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = 120
FENCE = re.compile(r"^```([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(no-compare|no-run)(?::\s*(.*?))?\s*-->\s*$")
TIMEOUT_S = 900


def pages() -> list[Path]:
    """README.md, then every page under docs/, sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Block:
    """One fenced code block: its language, text, the line of its opening fence (1-based) and its marker."""

    lang: str
    text: str
    start: int  # line number of the opening fence
    end: int  # line number of the closing fence
    marker: str | None = None
    reason: str = ""


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page."""
    lines = text.split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        marker = reason = None
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (m := MARKER.match(lines[k].strip())):
            marker, reason = m.group(1), m.group(2) or ""
        found.append(Block(match.group(1), "\n".join(lines[i + 1 : j]), i + 1, j + 1, marker, reason or ""))
        i = j + 1
    return found


@dataclass
class Command:
    """One ``$ command`` of a console block with the output the page shows for it."""

    command: str
    shown: list[str] = field(default_factory=list)
    first_line: int = 0  # offset of the ``$`` line within the block


def commands(block: Block) -> list[Command]:
    """The commands of a console block, each with its shown output lines."""
    found: list[Command] = []
    lines = block.text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            parts = [line[2:]]
            first = i
            while parts[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                parts.append(lines[i])
            found.append(Command("\n".join(parts), first_line=first))
        elif found:
            found[-1].shown.append(line)
        i += 1
    for command in found:
        while command.shown and not command.shown[-1].strip():
            command.shown.pop()
    return found


def environment() -> dict[str, str]:
    """The environment commands run in: this interpreter's bin folder first on PATH, fixed width."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["COLUMNS"] = str(COLUMNS)
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    return env


def run_command(command: str, cwd: Path) -> tuple[int, str]:
    """Run a shell command as a reader would; its exit code and output (stdout and stderr interleaved)."""
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
    )
    return proc.returncode, proc.stdout.rstrip("\n")


def _norm(line: str) -> str:
    return " ".join(line.split())


def output_matches(shown: list[str], actual: str) -> bool:
    """True when the shown output matches the actual one: whitespace-normalised lines, blank lines ignored,
    ``...`` for any text within a line and a line of ``...`` for any number of lines."""
    want = [_norm(line) for line in shown if line.strip()]
    got = [_norm(line) for line in actual.split("\n") if line.strip()]
    pattern = []
    for line in want:
        if line == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(".*?".join(re.escape(part) for part in line.split("...")) + r"\n")
    return re.fullmatch("".join(pattern), "".join(line + "\n" for line in got), flags=re.S) is not None


@dataclass
class Failure:
    """One example that did not do what its page says."""

    page: str
    line: int
    what: str
    expected: str = ""
    actual: str = ""

    def __str__(self) -> str:
        text = f"{self.page}:{self.line}: {self.what}"
        if self.expected or self.actual:
            text += f"\n--- shown in the page\n{self.expected}\n--- printed now\n{self.actual}"
        return text


@dataclass
class CommandResult:
    """What a console command printed, for the refresh script."""

    block: Block
    command: Command
    code: int
    output: str


class PageRunner:
    """Runs one page's examples in order in ``workdir``; collects failures and console outputs."""

    def __init__(self, page: Path, workdir: Path):
        self.page = page
        self.name = page.relative_to(ROOT).as_posix()
        self.workdir = workdir
        self.namespace: dict[str, object] = {"__name__": "__doc_example__"}
        self.failures: list[Failure] = []
        self.results: list[CommandResult] = []
        self.doctests: list[tuple[Block, list[ExampleRecord]]] = []

    def run(self) -> list[Failure]:
        old = Path.cwd()
        os.chdir(self.workdir)
        try:
            for block in blocks(self.page.read_text()):
                if block.marker == "no-run":
                    if not block.reason:
                        self.failures.append(Failure(self.name, block.start, "<!-- no-run --> needs a reason"))
                    continue
                if block.lang == "python":
                    self._python(block)
                elif block.lang == "console":
                    self._console(block)
        finally:
            os.chdir(old)
        return self.failures

    def _python(self, block: Block) -> None:
        if ">>>" in block.text:
            self._doctest(block)
            return
        try:
            exec(compile(block.text, f"{self.name}:{block.start}", "exec"), self.namespace)  # noqa: S102
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its page and line
            self.failures.append(Failure(self.name, block.start, f"python block raised {type(exc).__name__}: {exc}"))

    def _doctest(self, block: Block) -> None:
        test = doctest.DocTestParser().get_doctest(block.text, self.namespace, self.name, self.name, block.start)
        runner = _RecordingRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, clear_globs=False)
        self.namespace = test.globs  # DocTest works on a copy: later blocks see what this one defined
        self.doctests.append((block, runner.records))
        for record in runner.records:
            if record.ok or (block.marker == "no-compare" and record.exception is None):
                continue
            line = block.start + 1 + record.example.lineno
            self.failures.append(
                Failure(self.name, line, record.example.source.strip(), record.example.want.rstrip(), record.got.rstrip())
            )

    def _console(self, block: Block) -> None:
        for command in commands(block):
            code, output = run_command(command.command, self.workdir)
            self.results.append(CommandResult(block, command, code, output))
            line = block.start + 1 + command.first_line
            compared = block.marker != "no-compare" and bool(command.shown)
            if "Traceback (most recent call last)" in output:
                self.failures.append(Failure(self.name, line, f"$ {command.command} printed a traceback", "", output))
            elif code != 0 and not compared:
                self.failures.append(Failure(self.name, line, f"$ {command.command} exited {code}", "", output))
            elif compared and not output_matches(command.shown, output):
                self.failures.append(Failure(self.name, line, f"$ {command.command}", "\n".join(command.shown), output))


def _short_traceback(got: str) -> str:
    """A traceback as a doctest shows it: the header, ``...`` and the exception lines; other output as it is."""
    header = "Traceback (most recent call last):"
    if header not in got:
        return got
    before, _, rest = got.partition(header)
    lines = rest.split("\n")
    last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=0)
    return before + header + "\n    ...\n" + "\n".join(lines[last_frame + 1 :])


@dataclass
class ExampleRecord:
    """One doctest example as run: what it printed, whether that matched, the exception line if it raised."""

    example: doctest.Example
    got: str
    ok: bool
    exception: str | None = None


class _RecordingRunner(doctest.DocTestRunner):
    """A doctest runner that records every example's output instead of printing a report."""

    def __init__(self, **kwargs):
        super().__init__(verbose=False, **kwargs)
        self.records: list[ExampleRecord] = []

    def report_start(self, out, test, example):
        pass

    def report_success(self, out, test, example, got):
        self.records.append(ExampleRecord(example, got, True))

    def report_failure(self, out, test, example, got):
        self.records.append(ExampleRecord(example, _short_traceback(got), False))

    def report_unexpected_exception(self, out, test, example, exc_info):
        kind, value, _ = exc_info
        text = "".join(traceback.format_exception_only(kind, value)).strip()
        got = "Traceback (most recent call last):\n    ...\n" + text
        self.records.append(ExampleRecord(example, got, False, text))
