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
