#!/usr/bin/env bash
# Build the vistok wheel, install it into a clean virtual environment with only its core dependencies (no torch),
# and run each command there (scripts/smoke_wheel.py). This is what `pip install vistok` gives a user; the
# editable install that `make test` uses reads data files from the source tree and cannot catch a file missing
# from the wheel. Exits non-zero on the first broken step. About 2 minutes on 2 cores.
#
# usage: scripts/smoke_wheel.sh            (PYTHON=python3.12 scripts/smoke_wheel.sh to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vistok-smoke.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '%s\n' "wheel smoke: $*"; }
quiet() {  # run a setup step, show its output only when it fails
    if ! "$@" >"$WORK/step.log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$WORK/step.log" | tail -40
        log "FAILED: $*"
        exit 1
    fi
}

log "building the wheel from a copy of the tree"
mkdir "$WORK/tree"
cp pyproject.toml README.md "$WORK/tree/"
(cd "$ROOT" && tar --exclude='__pycache__' --exclude='*.egg-info' -cf - src) | tar -xf - -C "$WORK/tree"
quiet "$PYTHON" -m venv "$WORK/venv"
VENV_PY=$WORK/venv/bin/python
# with build isolation, as pip does for a user: setuptools comes from the package index
quiet "$VENV_PY" -m pip wheel --no-deps -w "$WORK/dist" "$WORK/tree"
WHEEL=$(ls "$WORK"/dist/vistok-*.whl)
log "built $(basename "$WHEEL")"

log "installing it with its core dependencies into a clean virtual environment"
quiet "$VENV_PY" -m pip install "$WHEEL"
if "$VENV_PY" -c "import torch" 2>/dev/null; then
    log "FAILED: torch is installed in the clean environment; the core install must not need it"
    exit 1
fi

mkdir "$WORK/run"
cd "$WORK/run"   # away from the checkout, so that nothing imports vistok from src/
"$VENV_PY" "$ROOT/scripts/smoke_wheel.py"
