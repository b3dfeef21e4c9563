"""Re-run the examples of README.md and docs/*.md and write what they print now into the pages, in place.

    .venv/bin/python scripts/refresh_doc_outputs.py                  # every page
    .venv/bin/python scripts/refresh_doc_outputs.py docs/budget.md   # some pages

Rewrites the output under each ``$ command`` of ```console blocks and the expected output of each ``>>>``
example of ```python blocks, where it no longer matches what runs now; outputs that still match (``...``
wildcards included) are kept as they are. Blocks marked ``<!-- no-run: ... -->`` are left alone; blocks marked
``<!-- no-compare -->`` are refreshed too (their output is real, only not compared by the tests). Where a new
output holds a value that changes from run to run or machine to machine (a temporary path, a timing), replace it
with ``...`` by hand. Read the diff before committing: a changed output may be a bug.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from doc_examples import ROOT, Block, PageRunner, commands, output_matches, pages  # noqa: E402


def _console_text(block: Block, outputs: dict[int, str]) -> str:
    """The block's text with each command's shown output replaced by what it printed."""
    lines = block.text.split("\n")
    parsed = commands(block)
    new: list[str] = []
    for index, command in enumerate(parsed):
        if index == 0:
            new.extend(lines[: command.first_line])
        command_lines = command.command.split("\n")
        new.append("$ " + command_lines[0])
        new.extend(command_lines[1:])
        output = outputs.get(command.first_line)
        if output is None:
            new.extend(command.shown)
        elif output:
            new.extend(line.rstrip() for line in output.split("\n"))
        if index < len(parsed) - 1:
            new.append("")
    return "\n".join(new)


def _doctest_text(block: Block, records) -> str:
    """The block's text with each ``>>>`` example's expected output replaced by what it printed."""
    lines = block.text.split("\n")
    out: list[str] = []
    cursor = 0
    for record in records:
        example = record.example
        source_lines = example.source.rstrip("\n").count("\n") + 1
        want_lines = example.want.rstrip("\n").count("\n") + 1 if example.want else 0
        start = example.lineno
        out.extend(lines[cursor:start + source_lines])
        indent = " " * example.indent
        got = (example.want if record.ok else record.got).rstrip("\n")
        out.extend(indent + line if line else line for line in got.split("\n") if got)
        cursor = start + source_lines + want_lines
    out.extend(lines[cursor:])
    return "\n".join(out)


def refresh(page: Path) -> bool:
    """Re-run one page and rewrite its outputs; True when the page changed."""
    with tempfile.TemporaryDirectory() as tmp:
        runner = PageRunner(page, Path(tmp))
        runner.run()
    text = page.read_text()
    lines = text.split("\n")
    replacements: dict[int, tuple[int, str]] = {}  # fence line -> (closing fence line, new block text)
    outputs: dict[int, dict[int, str]] = {}
    blocks_by_start: dict[int, Block] = {}
    for result in runner.results:
        blocks_by_start[result.block.start] = result.block
        if result.command.shown and output_matches(result.command.shown, result.output):
            continue  # still matches: keep the page's text, wildcards included
        outputs.setdefault(result.block.start, {})[result.command.first_line] = result.output
    for start, block in blocks_by_start.items():
        replacements[start] = (block.end, _console_text(block, outputs.get(start, {})))
    for block, records in runner.doctests:
        replacements[block.start] = (block.end, _doctest_text(block, records))
    for start in sorted(replacements, reverse=True):
        end, body = replacements[start]
        lines[start:end - 1] = body.split("\n")
    new = "\n".join(lines)
    if new != text:
        page.write_text(new)
    for failure in runner.failures:
        if "raised" in failure.what or "exited" in failure.what or "traceback" in failure.what:
            print(f"  still failing: {failure}".split("\n")[0])
    return new != text


def main(argv: list[str]) -> int:
    targets = [ROOT / a for a in argv] if argv else pages()
    for page in targets:
        changed = refresh(page)
        print(f"{page.relative_to(ROOT)}: {'updated' if changed else 'unchanged'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
