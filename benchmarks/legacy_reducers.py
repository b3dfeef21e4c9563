"""The numpy reducers as they were before they moved to torch, read from git history, for side-by-side timing.

``load()`` copies ``src/vistok/reducers/*.py`` at :data:`COMMIT` (the last numpy version) out of the repository
into a temporary package ``vistok_numpy_reducers`` (its ``vistok.reducers`` imports renamed; ``Tokens`` and the
registry class still come from the installed vistok) and returns its ``reduce``. Nothing of it ships in the
package; it needs the git checkout.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The last commit whose reducers ran in numpy.
COMMIT = "dd66074"
NAME = "vistok_numpy_reducers"
ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


def load(commit: str = COMMIT) -> Callable[..., Any]:
    """The numpy-era ``reduce(tokens, method, keep=..., ratio=..., **signals)`` of ``commit``."""
    if NAME in sys.modules:
        return sys.modules[NAME].reduce
    folder = Path(tempfile.mkdtemp(prefix="vistok-numpy-")) / NAME
    folder.mkdir()
    for path in _git("ls-tree", "--name-only", f"{commit}:src/vistok/reducers").split():
        if path.endswith(".py") and path != "tome_patch.py":
            text = _git("show", f"{commit}:src/vistok/reducers/{path}")
            (folder / path).write_text(text.replace("vistok.reducers", NAME))
    sys.path.insert(0, str(folder.parent))
    module = importlib.import_module(NAME)
    return module.reduce
