"""Run each vistok command in an environment where vistok is installed from its wheel with the core dependencies
only (numpy, Pillow, scikit-learn, safetensors, Typer, Rich; no torch). Called by scripts/smoke_wheel.sh from an
empty working folder.

Core commands must work. Commands that need an extra (torch, OpenCV, ...) must exit non-zero with one line that
says what to install. No command may print a traceback. Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import vistok
from vistok.samples import sample_images

VISTOK = str(Path(sys.executable).with_name("vistok"))
SAMPLE = str(next(p for p in sample_images() if p.name == "chelsea.jpg"))  # 451x300
SAMPLES = str(Path(SAMPLE).parent)


@dataclass
class Check:
    """One command: its arguments, whether it must succeed, text its output must contain, files it must write."""

    args: list[str]
    ok: bool = True
    contains: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    json: bool = False


def needs_extra(*args: str) -> Check:
    """A command that needs an optional dependency: a clean non-zero exit naming the pip extra to install."""
    return Check(list(args), ok=False, contains=["pip install", "vistok["])


def small_folder() -> str:
    """Three small PNGs cut from the samples, for the fitting commands (fast on any machine)."""
    from PIL import Image

    folder = Path("small")
    folder.mkdir(exist_ok=True)
    for path in sample_images()[:3]:
        Image.open(path).convert("RGB").resize((96, 64)).save(folder / f"{path.stem}.png")
    return str(folder)


def checks(small: str) -> list[Check]:
    return [
        Check(["--version"], contains=[vistok.__version__]),
        Check(["-h"], contains=["tokenize", "count"]),
        Check(["list"], contains=["grid", "patch", "efficientnet-lite0"]),
        Check(["list", "--json"], json=True),
        Check(["models"], contains=["qwen2-vl-7b-instruct", "llava-1.5-7b"]),
        Check(["models", "--json"], json=True),
        Check(["reducers"], contains=["tome", "visionzip"]),
        Check(["count", SAMPLE, "-m", "qwen2-vl-7b", "-m", "paligemma-3b-pt-448"], contains=["176", "1,024"]),
        Check(["count", SAMPLES, "-m", "qwen2.5-vl-7b", "--summary-only"], contains=["2,633"]),
        Check(["count", SAMPLE, "-m", "gpt-4o", "--json"], json=True),
        Check(["fit", SAMPLE, "-m", "qwen2-vl-7b", "--budget", "100", "--out", "fit.jpg"], writes=["fit.jpg"]),
        Check(["fit", SAMPLES, "-m", "qwen2-vl-7b", "--budget", "256", "--out", "fitted"],
              writes=["fitted/chelsea.jpg", "fitted/hubble.jpg"]),
        Check(["tokenize", SAMPLE, "-t", "grid", "--out", "grid.safetensors"], contains=["176"],
              writes=["grid.safetensors"]),
        Check(["tokenize", SAMPLE, "-t", "patch", "-c", "dim=32", "-r", "pool:factor=2", "--out", "patch.safetensors"],
              contains=["5x8", "40x32"], writes=["patch.safetensors"]),
        Check(["inspect", "grid.safetensors"], contains=["chelsea.jpg", "176"]),
        Check(["show", SAMPLE, "-t", "grid", "-o", "show.png"], writes=["show.png"]),
        Check(["fit-codebook", small, "--cells", "16", "--vocab", "8", "--out", "cb.safetensors"],
              writes=["cb.safetensors"]),
        Check(["tokenize", small, "-t", "grid", "-c", "codebook=cb.safetensors"], contains=["3 image"]),
        Check(["fit-patch", small, "--patch", "8", "--out", "pca.safetensors"], writes=["pca.safetensors"]),
        Check(["tokenize", "missing.jpg", "-t", "grid"], ok=False, contains=["missing.jpg"]),
        Check(["count", SAMPLE, "-m", "no-such-model"], ok=False, contains=["no-such-model"]),
        needs_extra("tokenize", SAMPLE, "-t", "efficientnet-lite0"),
        needs_extra("tokenize", SAMPLE, "-t", "patch", "-r", "tome:0.25"),
        needs_extra("vlm", "some-vlm-folder", SAMPLE, "-r", "visionzip:64"),
        needs_extra("show", SAMPLE, "-t", "focus-vit-s14", "-o", "vit.png"),
        needs_extra("classify", SAMPLE),
        needs_extra("tokenize", SAMPLE, "-t", "fsq-natural64"),
        needs_extra("train", "samples-64", "-t", "fsq", "--steps", "1", "--out", "run"),
        needs_extra("eval-recon", "fsq-fmnist", "samples-64"),
        needs_extra("tokenize", SAMPLE, "-t", "regions:faces"),
        needs_extra("compare", SAMPLE, "-t", "grid"),
        needs_extra("serve", "--port", "0"),
    ]


def run(check: Check) -> str | None:
    """Run one check; None when it passed, else what went wrong."""
    try:
        proc = subprocess.run(
            [VISTOK, *check.args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return "timed out after 300 s"
    output = proc.stdout + proc.stderr
    problems = []
    if "Traceback" in output:
        problems.append("printed a traceback")
    if check.ok and proc.returncode != 0:
        problems.append(f"exit {proc.returncode}, expected 0")
    if not check.ok and proc.returncode == 0:
        problems.append("exit 0, expected an error")
    if not check.ok and proc.returncode != 0 and len(proc.stderr.strip().splitlines()) > 3:
        problems.append("the error is not one short message")
    problems += [f"output lacks {text!r}" for text in check.contains if text not in output]
    problems += [f"did not write {name}" for name in check.writes if not Path(name).is_file()]
    if check.json:
        try:
            json.loads(proc.stdout)
        except ValueError as exc:
            problems.append(f"stdout is not JSON ({exc})")
    if not problems:
        return None
    return "; ".join(problems) + "\n" + "\n".join("    | " + line for line in output.strip().splitlines()[-12:])


def python_api() -> str | None:
    """The library itself, from the wheel: count from a header, tokenize, save and load."""
    try:
        if "site-packages" not in vistok.__file__:
            return f"vistok imported from {vistok.__file__}, not from the installed wheel"
        assert vistok.count(SAMPLE, model="qwen2-vl-7b").image_tokens == 176
        assert vistok.count((448, 448), model="paligemma-3b-pt-448").image_tokens == 1024
        tokens = vistok.load("grid").encode(SAMPLE)
        vistok.save_tokens("api.safetensors", {"cat": tokens})
        assert vistok.load_tokens("api.safetensors")["cat"].equals(tokens)
    except Exception as exc:  # noqa: BLE001 - report whatever broke
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> int:
    small = small_folder()
    problem = python_api()
    results: list[tuple[str, str | None]] = [("python API", problem)]
    print(f"  {'ok  ' if problem is None else 'FAIL'} python API" + (f": {problem}" if problem else ""), flush=True)
    for check in checks(small):
        start = time.perf_counter()
        problem = run(check)
        name = "vistok " + " ".join(check.args).replace(SAMPLES, "SAMPLES")
        results.append((name, problem))
        print(f"  {'ok  ' if problem is None else 'FAIL'} {name} ({time.perf_counter() - start:.1f} s)", flush=True)
        if problem:
            print("       " + problem, flush=True)
    failed = [name for name, problem in results if problem]
    summary = f"wheel smoke: {len(results) - len(failed)} of {len(results)} checks ok"
    print(summary + (f", {len(failed)} failed: " + "; ".join(failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
