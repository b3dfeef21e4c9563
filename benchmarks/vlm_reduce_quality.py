"""Which visual-token reducers keep a VLM's answers right? Test accuracy of the small trained VLM per method and
budget, overall and per question kind, with the language model's prefill time.

The model is the small LLaVA of :mod:`vistok.vlm.small` (``--model shapes``: the one shipped with vistok, or a
folder written by ``vistok train-vlm``): a frozen focus-vit-s14 tower giving V visual tokens (the shipped
model: 64 at 112 px, patch 14), a projector and a small Llama LM. The questions are
``vistok.vlm.shapes.questions(N, seed=0, split="test")`` drawn at the model's image size (colour, shape,
count, relation, exists, text; kinds cycle, so each has N/6). Every answer is
``vistok.vlm.run.ask(model, processor, image, question, method=M, keep=K, max_new_tokens=4)``, the pipeline
``vistok.vlm.small.evaluate`` runs (processor, tower, :func:`vistok.vlm.patch`, ``generate``), scored by exact
match.

Budgets are fractions 1/b of the V visual tokens, ``keep = max(1, round(V / b))`` (for 64 tokens, 1/4: 16,
1/9: 7, 1/16: 4, 1/32: 2, 1/64: 1). 1/1 is the unpatched model, the peer of every row: accuracy is also shown
as a % of its accuracy, and prefill as its time over the row's ("speed-up"). Methods: every name in
``vistok.reduce_methods()`` plus FastV (inside the LM, after layer ``--fastv-layer``, default
``min(2, LM layers - 1)``: the shipped four-layer model prunes after layer 2). A method that cannot run on
this model (``patch`` raises ``ValueError``/``TypeError``: a signal the tower lacks, a required option) is
listed as skipped with its reason.

The frozen tower runs once per image: :class:`TowerCache` wraps the tower's ``forward`` on this one model
instance and serves its stored output when the same pixels come again with the same arguments (patches that
capture attention signals get the hooked attention layer re-run on its stored input, so the signals are the
ones the tower would give). Questions are the outer loop: each image's first, uncached, unpatched answer fills
the cache and must equal the cached unpatched answer (checked on every question; the test checks reduced
answers against ``small.evaluate``). Prefill is ``Answer.prefill_seconds`` (``generate()`` until the end of the
LM's first forward), median over questions; with the tower cached it is the reduction, the projector and the
LM prefill. The tower's own time per image is printed beside the table. The small model's LM is tiny (4
layers, 128 wide), so its prefill is mostly fixed per-call cost and a reduction's own work (capturing
attention signals, the reducer) can outweigh the positions it saves: these speed-ups are not a large LM's
(``vlm_prefill.py`` measures those).

    python benchmarks/vlm_reduce_quality.py                               # shipped model, 300 questions
    python benchmarks/vlm_reduce_quality.py --model runs/shapes-vlm --questions 60 --markdown
    python benchmarks/vlm_reduce_quality.py --methods visionzip,pool,fastv --budgets 1,9,64 \\
        --plot docs/vlm-reduce-quality.png --json vlm-reduce-quality.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_knn import table  # noqa: E402

import vistok  # noqa: E402
from vistok.vlm.shapes import KINDS, questions  # noqa: E402

BUDGETS = (1, 4, 9, 16, 64)
MAX_NEW_TOKENS = 4  # as vistok.vlm.small.evaluate: answers are one word and </s>
PAPER_NOTE = "VisionZip reports about 94% for LLaVA-1.5 at 64 of 576 tokens"


class BenchError(ValueError):
    """A bad option or model (one line that names it and says what to pass)."""


# -- the tower cache ------------------------------------------------------------------------------------------

def _hooked(module: torch.nn.Module) -> bool:
    """Whether ``module`` has forward (pre-)hooks other than transformers' own output recorders (installed on
    every layer at the first call, inactive unless a forward of the model is collecting outputs)."""
    hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
    return any(not getattr(hook, "__module__", "").startswith("transformers.") for hook in hooks)


@dataclass
class _Stored:
    pixels: torch.Tensor
    key: tuple
    hidden: tuple            # the tower's hidden_states, None except at the layers LLaVA selects
    kind: type               # the output class
    attention_call: tuple[tuple, dict, Any] | None  # (args, kwargs, output) of the signal layer's attention


class TowerCache:
    """Serve a LLaVA model's frozen vision tower output for pixels seen in the last call, instead of running it.

    Used as a context manager around the calls; it sets ``forward`` on the tower instance (removed on exit).
    A call hits when its pixels are equal (``torch.equal``) to the stored ones and its other arguments are the
    same; it then returns the stored ``hidden_states`` at the layer(s) the model selects
    (``vision_feature_layer``; the others, ``last_hidden_state`` and ``pooler_output`` are None: LLaVA reads
    only those). If the attention module of that layer has hooks (a patch capturing CLS attention or keys), it
    is called again with its stored input, its ``forward`` replaced for that call by one returning the stored
    output, so the hooks see the same call at no cost of the attention itself; hooks anywhere else in the tower
    force a real run (transformers' own output recorders excepted). ``runs``, ``hits`` and ``seconds`` (of each real run) count what happened."""

    def __init__(self, model: Any) -> None:
        from vistok.vlm.llava import tower_attention

        tower = getattr(getattr(model, "model", None), "vision_tower", None)
        if tower is None:
            raise BenchError(f"{type(model).__name__} has no model.vision_tower; pass a LLaVA model folder")
        self.tower = tower
        layer = model.config.vision_feature_layer
        self.layers = set(layer) if isinstance(layer, (list, tuple)) else {layer}
        try:
            self.attention: torch.nn.Module | None = tower_attention(tower, layer)
        except ValueError:
            self.attention = None
        self.others = [m for m in tower.modules() if m is not self.attention]
        self.stored: _Stored | None = None
        self.runs = self.hits = 0
        self.seconds: list[float] = []

    def __enter__(self) -> TowerCache:
        original = self.tower.forward
        self.tower.__dict__["forward"] = functools.wraps(original)(functools.partial(self._forward, original))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tower.__dict__.pop("forward", None)

    def _forward(self, original: Callable, pixel_values: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> Any:
        key = tuple(sorted((name, repr(value)) for name, value in kwargs.items()))
        stored = self.stored
        if (not args and stored is not None and stored.key == key and isinstance(pixel_values, torch.Tensor)
                and stored.pixels.shape == pixel_values.shape and torch.equal(stored.pixels, pixel_values)
                and not any(_hooked(m) for m in self.others)):
            if self.attention is not None and _hooked(self.attention) and stored.attention_call is not None:
                self._replay(*stored.attention_call)
            self.hits += 1
            return stored.kind(hidden_states=tuple(h.clone() if h is not None else None for h in stored.hidden))
        calls: list[tuple[tuple, dict, Any]] = []

        def record(module: torch.nn.Module, call_args: tuple, call_kwargs: dict, output: Any) -> None:
            calls.append((call_args, dict(call_kwargs), output))

        hook = (self.attention.register_forward_hook(record, with_kwargs=True) if self.attention is not None
                else None)
        start = time.perf_counter()
        try:
            out = original(pixel_values, *args, **kwargs)
        finally:
            if hook is not None:
                hook.remove()
        self.seconds.append(time.perf_counter() - start)
        self.runs += 1
        hidden = getattr(out, "hidden_states", None)
        if isinstance(pixel_values, torch.Tensor) and not args and hidden is not None and len(calls) <= 1:
            count = len(hidden)
            keep = {i % count for i in self.layers}
            self.stored = _Stored(pixel_values.clone(), key,
                                  tuple(h.clone() if i in keep else None for i, h in enumerate(hidden)),
                                  type(out), calls[0] if calls else None)
        else:
            self.stored = None
        return out

    def _replay(self, args: tuple, kwargs: dict, output: Any) -> None:
        """Call the signal layer's attention module as the tower did, its forward answering ``output``."""
        attention = self.attention
        attention.__dict__["forward"] = lambda *_, **__: output
        try:
            attention(*args, **kwargs)
        finally:
            del attention.__dict__["forward"]


# -- configurations -------------------------------------------------------------------------------------------

@dataclass
class Config:
    """One method at one budget (``method`` None: the unpatched model)."""

    method: str | None
    budget: int
    keep: int
    options: dict[str, Any] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    prefill: list[float] = field(default_factory=list)
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.method or "unpatched"


def check_methods(names: Sequence[str]) -> list[str]:
    """``names`` checked against ``vistok.reduce_methods()`` and ``fastv``; a one-line error names a bad one."""
    known = [*vistok.reduce_methods(), "fastv"]
    out: list[str] = []
    for name in names:
        if name not in known:
            raise BenchError(f"--methods: unknown method {name!r}; choose from {', '.join(known)}")
        if name not in out:
            out.append(name)
    if not out:
        raise BenchError(f"--methods: no method given; choose from {', '.join(known)}")
    return out


def check_budgets(budgets: Sequence[int]) -> list[int]:
    """Sorted distinct budgets, each a positive integer b (keep 1/b of the visual tokens)."""
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise BenchError(f"--budgets: each budget is a whole number b >= 1 (keep 1/b of the tokens), got {b!r}")
    return sorted(set(budgets))


def load_model(source: str) -> tuple[Any, Any]:
    """``(model, processor)``: ``"shapes"`` the small VLM shipped with vistok, else a model folder."""
    from vistok.vlm.run import load

    if source != "shapes" and not Path(source).expanduser().is_dir():
        raise BenchError(f"--model {source}: no such folder; pass a folder written by `vistok train-vlm` "
                         "(or 'shapes' for the model shipped with vistok)")
    try:
        return load(source)
    except (ValueError, OSError) as error:
        hint = "; pass --model FOLDER, a folder written by `vistok train-vlm`" if source == "shapes" else ""
        raise BenchError(f"--model {source}: {error}{hint}") from None


def visual_tokens(model: Any) -> int:
    """Visual tokens per image the processor writes (LLaVA's ``image_seq_length``)."""
    return int(model.config.image_seq_length)


def fastv_layer(model: Any, layer: int | None) -> int:
    """FastV's layer: ``layer`` if given, else 2 (the paper's K) capped to the LM's last layer but one."""
    if layer is not None:
        return layer
    return max(1, min(2, int(model.config.text_config.num_hidden_layers) - 1))


def configurations(model: Any, methods: Sequence[str], budgets: Sequence[int],
                   fastv: int | None = None) -> list[Config]:
    """The unpatched peer first, then every method at every budget b > 1 (``keep = round(N / b)``)."""
    n = visual_tokens(model)
    configs = [Config(None, 1, n)]
    for b in budgets:
        if b == 1:
            continue
        for method in methods:
            options = {"layer": fastv_layer(model, fastv)} if method == "fastv" else {}
            configs.append(Config(method, b, max(1, round(n / b)), options))
    return configs


# -- measuring ------------------------------------------------------------------------------------------------

def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def measure(model: Any, processor: Any, items: Sequence[Any], methods: Sequence[str],
            budgets: Sequence[int] = BUDGETS, *, fastv: int | None = None, progress: bool = False,
            ) -> dict[str, Any]:
    """Answer every question in every configuration; all numbers as a JSON-ready dict (see :func:`summary`)."""
    from vistok.vlm.run import ask
    from vistok.vlm.small import score

    methods = check_methods(methods)
    budgets = check_budgets(budgets)
    configs = configurations(model, methods, budgets, fastv)
    items = list(items)
    cold: list[str] = []
    bar = _progress(len(items) * len(configs), progress)
    begin = time.perf_counter()
    with bar, TowerCache(model) as cache:
        task = bar.add_task("answering", total=len(items) * len(configs))
        for i, q in enumerate(items):
            cold.append(ask(model, processor, q.image, q.question, max_new_tokens=MAX_NEW_TOKENS).text)
            for config in configs:
                bar.update(task, advance=1, description=f"{config.name} 1/{config.budget} q{i + 1}")
                if config.skipped:
                    continue
                try:
                    answer = ask(model, processor, q.image, q.question, method=config.method,
                                 keep=config.keep if config.method else None, max_new_tokens=MAX_NEW_TOKENS,
                                 **config.options)
                except (ValueError, TypeError) as error:
                    config.skipped = _first_line(error)
                    continue
                config.answers.append(answer.text)
                config.prefill.append(answer.prefill_seconds)
    seconds = time.perf_counter() - begin
    truth, kinds = [q.answer for q in items], [q.kind for q in items]
    order = [k for k in KINDS if k in kinds] + sorted(set(kinds) - set(KINDS))
    rows = []
    for config in configs:
        row: dict[str, Any] = {"method": config.name, "budget": config.budget, "keep": config.keep,
                               "options": config.options}
        if config.skipped:
            row["skipped"] = config.skipped
        else:
            row.update(score(config.answers, truth, kinds))
            row["answers"] = config.answers
            row["prefill_ms"] = 1e3 * statistics.median(config.prefill) if config.prefill else None
        rows.append(row)
    full = rows[0]
    return {"questions": len(items), "visual": visual_tokens(model), "methods": list(methods),
            "budgets": [b for b in budgets if b > 1], "kinds": order,
            "truth": truth, "question_kinds": kinds, "rows": rows,
            "cache_check": {"uncached_answers_equal_cached": cold == full.get("answers"),
                            "tower_runs": cache.runs, "tower_hits": cache.hits,
                            "tower_ms_per_image": 1e3 * statistics.median(cache.seconds) if cache.seconds else None},
            "seconds": seconds}


def _progress(total: int, enabled: bool) -> Any:
    from rich import progress as rp
    from rich.console import Console

    return rp.Progress(rp.TextColumn("{task.description:<28}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                       rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), console=Console(stderr=True),
                       transient=True, disable=not enabled or total < 2)


# -- the report -----------------------------------------------------------------------------------------------

def _share(value: float, of: float) -> float | None:
    return value / of if of > 0 else None


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Winners per budget, the best share of full accuracy at 1/9, and the kinds that fail first (added to
    ``result`` under ``"summary"`` and returned)."""
    rows = [r for r in result["rows"] if "skipped" not in r]
    full = result["rows"][0]
    winners = {}
    for b in result["budgets"]:
        ran = [r for r in rows if r["budget"] == b]
        if not ran:
            continue
        best = max(r["accuracy"] for r in ran)
        winners[str(b)] = {"methods": [r["method"] for r in ran if r["accuracy"] == best], "accuracy": best,
                           "of_full": _share(best, full["accuracy"]), "keep": ran[0]["keep"]}
    drops: dict[str, dict[str, float]] = {}
    for b in sorted(result["budgets"], reverse=True)[:2]:
        ran = [r for r in rows if r["budget"] == b]
        if ran:
            drops[str(b)] = {k: statistics.mean(full["per_kind"][k]["accuracy"] - r["per_kind"][k]["accuracy"]
                                                for r in ran) for k in full["per_kind"]}
    order = sorted(full["per_kind"], key=lambda k: tuple(-d[k] for d in drops.values()))
    result["summary"] = {"winners": winners, "best_at_9": winners.get("9"), "kind_drops": drops,
                         "fail_first": order if drops else []}
    return result["summary"]


def _pct(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{100 * value:.{digits}f}%"


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The long table: one row per configuration that ran, the unpatched peer first."""
    kinds = result["kinds"]
    full = result["rows"][0]
    header = ["method", "budget", "kept", "accuracy", "% of full", *kinds, "prefill ms", "speed-up"]
    out = []
    for r in result["rows"]:
        if "skipped" in r:
            continue
        speed = (f"{full['prefill_ms'] / r['prefill_ms']:.2f}x"
                 if r.get("prefill_ms") and full.get("prefill_ms") else "n/a")
        out.append([r["method"], f"1/{r['budget']}", str(r["keep"]), _pct(r["accuracy"], 1),
                    _pct(_share(r["accuracy"], full["accuracy"])),
                    *(_pct(r["per_kind"][k]["accuracy"]) for k in kinds),
                    f"{r['prefill_ms']:.1f}" if r.get("prefill_ms") is not None else "n/a", speed])
    return header, out


def grid_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The compact table: accuracy as % of full, one row per method, one column per budget."""
    full = result["rows"][0]
    cells = {(r["method"], r["budget"]): r for r in result["rows"][1:]}
    header = ["method", *(f"1/{b} ({cells_keep(result, b)})" for b in result["budgets"])]
    out = []
    for method in result["methods"]:
        row = [method]
        for b in result["budgets"]:
            r = cells.get((method, b))
            row.append("skipped" if r is None or "skipped" in r else _pct(_share(r["accuracy"], full["accuracy"])))
        out.append(row)
    return header, out


def cells_keep(result: dict[str, Any], budget: int) -> int:
    return max(1, round(result["visual"] / budget))


def report_lines(result: dict[str, Any]) -> list[str]:
    """The verdict lines under the tables."""
    s = result.get("summary") or summary(result)
    full = result["rows"][0]
    lines = []
    for b, w in s["winners"].items():
        lines.append(f"1/{b} ({w['keep']} of {result['visual']} tokens): best {', '.join(w['methods'])} "
                     f"{_pct(w['accuracy'], 1)} ({_pct(w['of_full'])} of full {_pct(full['accuracy'], 1)})")
    if s["best_at_9"]:
        w = s["best_at_9"]
        lines.append(f"best at 1/9 keeps {_pct(w['of_full'])} of full accuracy ({', '.join(w['methods'])}; "
                     f"{PAPER_NOTE})")
    if s["kind_drops"]:
        parts = []
        for b, drops in s["kind_drops"].items():
            ranked = sorted(drops, key=lambda k: -drops[k])
            parts.append(f"at 1/{b}: " + ", ".join(f"{k} {0.0 - 100 * drops[k]:+.0f}" for k in ranked))
        lines.append("kinds that fail first (mean change from full over the methods that ran, points): "
                     + "; ".join(parts))
    skipped: dict[str, list[tuple[int, str]]] = {}
    for r in result["rows"]:
        if "skipped" in r:
            skipped.setdefault(r["method"], []).append((r["budget"], r["skipped"]))
    for method, entries in skipped.items():
        reasons = {reason for _, reason in entries}
        where = ("every budget" if len(entries) == len(result["budgets"])
                 else ", ".join(f"1/{b}" for b, _ in entries))
        lines.append(f"skipped {method} ({where}): {'; '.join(sorted(reasons))}")
    p, n = full["accuracy"], result["questions"]
    per_kind = n / max(1, len(result["kinds"]))
    lines.append(f"binomial standard error of the unpatched accuracy: {100 * (p * (1 - p) / n) ** 0.5:.1f} points over "
                 f"{n} questions, {100 * (p * (1 - p) / per_kind) ** 0.5:.1f} over a kind's {per_kind:.0f}; differences "
                 "smaller than that are noise")
    check = result["cache_check"]
    tower = check["tower_ms_per_image"]
    lines.append(f"vision tower: {check['tower_runs']} runs for {result['questions']} images, {check['tower_hits']} "
                 f"cached calls; {tower:.0f} ms per image, not in the prefill column" if tower is not None
                 else "vision tower: no runs")
    lines.append("prefill: with a tiny LM, fixed per-call costs and the reduction's own work dominate; "
                 "vlm_prefill.py measures the speed-ups of a large LM")
    lines.append("cached tower gives the same unpatched answers as the uncached one: "
                 + ("yes" if check["uncached_answers_equal_cached"] else "NO"))
    return lines


def plot(result: dict[str, Any], path: str) -> None:
    """Accuracy against visual tokens kept (log x), one line per method, the unpatched model at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = result["rows"][0]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = plt.get_cmap("tab20").colors
    for i, method in enumerate(result["methods"]):
        points = sorted((r["keep"], r["accuracy"]) for r in result["rows"]
                        if r["method"] == method and "skipped" not in r)
        if not points:
            continue
        points.append((full["keep"], full["accuracy"]))
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="os^Dv<>ph*X"[i % 11], label=method,
                color=colours[(2 * i) % 20 if i < 10 else 2 * (i - 10) + 1])
    ax.axhline(100 * full["accuracy"], color="grey", linewidth=0.8, linestyle="--", label="all tokens")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["keep"] for r in result["rows"]})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"visual tokens kept (of {result['visual']})")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(f"small VLM on {result['questions']} shapes test questions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(path).expanduser(), dpi=110)
    plt.close(fig)


def render(result: dict[str, Any], model: str, markdown: bool) -> str:
    """Both tables and the verdict lines, as printed."""
    summary(result)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    title = (f"Small VLM ({model}) on {result['questions']} shapes test questions (seed 0): accuracy per method and "
             f"budget, keep = round({result['visual']} / b); peer: the unpatched model; prefill = median "
             f"Answer.prefill_seconds, tower cached; {machine}")
    header, rows = table_rows(result)
    text = table(title, header, rows, markdown) + "\n"
    header, rows = grid_rows(result)
    text += table("accuracy as % of the unpatched model's", header, rows, markdown) + "\n"
    return text + "\n".join(report_lines(result))


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes", help="'shapes' (shipped) or a folder written by vistok train-vlm")
    parser.add_argument("--questions", type=int, default=300, help="test questions (kinds cycle)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every reducer and fastv)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="b in 1/b of the visual tokens")
    parser.add_argument("--fastv-layer", type=int, default=None, help="default min(2, LM layers - 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine a second thread mostly waits)")
    parser.add_argument("--plot", default=None, help="write the accuracy-vs-tokens plot (PNG) here")
    parser.add_argument("--json", default=None, help="write every number (answers included) here")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        if args.questions < 1:
            raise BenchError(f"--questions must be at least 1, got {args.questions}")
        methods = check_methods([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
                                else [*vistok.reduce_methods(), "fastv"])
        budgets = check_budgets(_ints(args.budgets, "--budgets"))
        model, processor = load_model(args.model)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    size = int(processor.image_processor.size["height"])
    items = list(questions(args.questions, seed=0, split="test", size=size))
    result = measure(model, processor, items, methods, budgets, fastv=args.fastv_layer,
                     progress=not args.no_progress)
    result["model"] = args.model
    print(render(result, args.model, args.markdown))
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    result["total_seconds"] = time.perf_counter() - started
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    print(f"total {result['total_seconds']:.0f} s ({result['seconds']:.0f} s answering)")
    return result


if __name__ == "__main__":
    main()
