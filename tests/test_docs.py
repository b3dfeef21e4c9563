"""Every code example in README.md and docs/*.md runs, and prints what the page shows (see doc_examples.py).

When a command's output changed on purpose, refresh the pages with `.venv/bin/python scripts/refresh_doc_outputs.py`
and read the diff.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from doc_examples import ROOT, Block, PageRunner, blocks, commands, output_matches, pages

# pages whose examples train, encode with pretrained models or run the demo: minutes, not seconds
FAST_PAGES = {"docs/architecture.md", "docs/benchmarks.md"}


def _page_param(page: Path):
    name = page.relative_to(ROOT).as_posix()
    marks = () if name in FAST_PAGES else (pytest.mark.slow,)
    return pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in pages()])
def test_page_examples_run_and_print_what_the_page_shows(page: Path, tmp_path: Path):
    failures = PageRunner(page, tmp_path).run()
    if failures:
        pytest.fail(
            f"{len(failures)} example(s) in {page.name} differ from what they do now; if the change is intended, "
            "run `.venv/bin/python scripts/refresh_doc_outputs.py` and check the diff\n\n"
            + "\n\n".join(map(str, failures)),
            pytrace=False,
        )


def test_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12_000
    for command in ("make demo", "make test"):
        assert command in readme
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", readme))
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert on_disk - linked == set(), "pages in docs/ that the README does not link"


def test_relative_links_point_to_files():
    broken = []
    for page in [*pages(), ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken


@pytest.mark.parametrize("page", [*pages(), ROOT / "CONTRIBUTING.md"], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pages_speak_to_users(page: Path):
    """No words that only mean something to whoever wrote the code: issue numbers, 'the issue', 'seeds'."""
    text = page.read_text()
    for pattern in (r"\bthe issue\b", r"\bissue #?\d+", r"#\d{1,4}\b", r"\bseeds'"):
        assert not re.search(pattern, text, flags=re.I), f"{page.name}: {pattern!r}"


def test_every_example_block_has_a_known_kind():
    """python and console blocks run, bash blocks are prose; anything else would silently never run."""
    for page in pages():
        for block in blocks(page.read_text()):
            assert block.lang in {"python", "console", "bash", "text", "toml"}, f"{page.name}:{block.start}"
            if block.lang == "console":
                assert block.text.startswith("$ "), f"{page.name}:{block.start}: a console block starts with '$ '"


def test_output_matching_rules():
    assert output_matches(["a  b", "", "c"], "a b\nc\n")
    assert output_matches(["wrote ... files to ..."], "wrote 46 files to /tmp/x")
    assert output_matches(["first", "...", "last"], "first\nx\ny\nlast")
    assert output_matches(["first", "...", "last"], "first\nlast")
    assert not output_matches(["first", "last"], "first\nmiddle\nlast")
    assert not output_matches(["176"], "177")


def test_blocks_markers_and_commands_are_parsed():
    text = (
        "intro\n\n<!-- no-compare -->\n```console\n$ vistok a \\\n    --b\nout 1\n\n$ vistok c\n```\n"
        "<!-- no-run: needs a download -->\n```bash\nmake demo\n```\n"
    )
    first, second = blocks(text)
    assert (first.lang, first.marker, first.start) == ("console", "no-compare", 4)
    assert (second.lang, second.marker, second.reason) == ("bash", "no-run", "needs a download")
    parsed = commands(first)
    assert [c.command for c in parsed] == ["vistok a \\\n    --b", "vistok c"]
    assert parsed[0].shown == ["out 1"] and parsed[1].shown == []
    assert isinstance(first, Block)


def test_python_m_vistok_samples_copies_the_samples(tmp_path: Path):
    import subprocess
    import sys

    from vistok.samples import sample_images

    proc = subprocess.run([sys.executable, "-m", "vistok.samples", "photos"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == [p.name for p in sample_images()]
    assert (tmp_path / "photos" / "chelsea.jpg").read_bytes() == sample_images()[1].read_bytes()
    (tmp_path / "file").write_text("x")
    bad = subprocess.run([sys.executable, "-m", "vistok.samples", "file"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "file exists and is not a folder" in bad.stderr
