"""The built wheel: every data file under src/vistok ships, the version has one source, the package is typed.

The editable install that the rest of the suite runs on reads data files from the source tree, so it cannot
see a file missing from the wheel; this test builds the wheel from a copy of the tree and looks inside.
`scripts/smoke_wheel.sh` (run by CI) goes further: it installs that wheel into a clean virtual environment and
runs each command there.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import vistok

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vistok"


def _data_files() -> set[str]:
    """Every file under src/vistok that is not Python source or a build/cache artefact, as wheel paths."""
    skip_dirs = {"__pycache__"}
    files = set()
    for path in PACKAGE.rglob("*"):
        if not path.is_file() or skip_dirs & set(path.parts) or path.suffix in {".py", ".pyc", ".pyo"}:
            continue
        files.add("vistok/" + path.relative_to(PACKAGE).as_posix())
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (without build isolation, so offline) from a copy of pyproject.toml, README.md and src/."""
    work = tmp_path_factory.mktemp("wheel-build")
    shutil.copy(ROOT / "pyproject.toml", work)
    shutil.copy(ROOT / "README.md", work)
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = work / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("vistok-*.whl")
    return built


def test_wheel_ships_every_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _data_files()
    # the files count() and the default tokenizers cannot work without
    assert "vistok/budget/data/models-qwen.json" in expected
    assert "vistok/weights/grid-default.safetensors" in expected
    assert "vistok/py.typed" in expected
    missing = sorted(expected - names)
    assert not missing, f"data files missing from the wheel (add them to [tool.setuptools.package-data]): {missing}"


def test_wheel_version_is_the_package_version(wheel):
    assert wheel.name.startswith(f"vistok-{vistok.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        lines = z.read(metadata).decode().splitlines()
    assert f"Version: {vistok.__version__}" in lines


def test_one_version_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "the version lives in src/vistok/__init__.py only"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "vistok.__version__"}


def test_changelog_names_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    release = vistok.__version__.split(".dev")[0]
    assert f"## {release}" in changelog


def test_ci_runs_the_readme_test_command_and_the_wheel_smoke_test():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "\nmake test\n" in ci
    assert "scripts/smoke_wheel.sh" in ci


BLOCK_TORCH = "import sys; sys.modules['torch'] = None; from vistok.cli import main; sys.argv = ['vistok', *sys.argv[1:]]; main()"


@pytest.mark.parametrize("args, extra", [
    (["train", "samples-64", "-t", "fsq", "--steps", "1", "--out", "run"], "vistok[learned]"),
    (["tokenize", "{sample}", "-t", "efficientnet-lite0"], "vistok[encoders]"),
    (["eval-recon", "fsq-fmnist", "samples-64"], "vistok["),
])
def test_commands_that_need_torch_say_what_to_install_when_it_is_missing(args, extra, tmp_path):
    """As after `pip install vistok` (no torch): one line naming the pip extra, exit 2, no traceback."""
    from vistok.samples import sample_images

    argv = [a.format(sample=sample_images()[0]) for a in args]
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"pip install '{extra}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
