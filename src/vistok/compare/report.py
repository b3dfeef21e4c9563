"""A comparison as Markdown, as one self-contained HTML page (plots embedded) and as JSON."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistok.compare.perturb import PERTURBATIONS

__all__ = ["tables", "markdown", "to_html", "plots", "write"]

Table = tuple[str, str, list[str], list[list[str]]]  # title, caption, header, rows


def _num(value: float | None, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value * scale:,.{digits}f}{suffix}"


def _db(value: float | None) -> str:
    from vistok.compare.core import LOSSLESS_DB

    return "lossless" if value is not None and value >= LOSSLESS_DB else _num(value)


def _pct(value: float | None) -> str:
    return _num(value, 1, 100.0, "%")


def tables(comparison: Any) -> list[Table]:
    """The report's tables, shared by the Markdown and the HTML."""
    rows = [r for r in comparison.rows if r.error is None]
    names = list(PERTURBATIONS)
    size = ("Size, fidelity and speed", f"On your {len(comparison.images)} image(s). Bits: hard ids N log2(vocab) "
            "(+64 per region box), soft vectors N x D x 16 (float16). PSNR/SSIM of the decoded image against the "
            "image as the tokenizer saw it. Boundary recall/precision: the token layout's edges against SLIC "
            "superpixel boundaries, within 2 px at 256 px.",
            ["tokenizer", "kind", "tokens/image", "kbit/image", "PSNR (dB)", "SSIM", "images/s", "boundary recall",
             "boundary precision"],
            [[r.tokenizer, r.kind, _num(r.tokens_per_image), _num(r.bits_per_image, 1, 1e-3), _db(r.psnr),
              _num(r.ssim, 3), _num(r.images_per_s), _pct(r.boundary_recall), _pct(r.boundary_precision)]
             for r in rows])
    change = ("How much the tokens change", "On your images: hard tokens, the share of positions whose id is "
              "unchanged; soft tokens, the mean cosine similarity at the same position; regions, the F1 of matched "
              "boxes (IoU >= 0.5). 100% = unchanged.",
              ["tokenizer", "kind", *names],
              [[r.tokenizer, r.kind, *[_pct(r.change.get(n)) for n in names]] for r in rows])
    knn_rows = [r for r in rows if r.knn is not None]
    s = comparison.settings
    knn = ("Fashion-MNIST k-NN accuracy, clean and perturbed",
           f"{s.knn_train} training and {s.knn_test} test images upscaled to {s.knn_size} px, each image's tokens "
           f"pooled (mean vector, or id histogram), k={s.k} cosine neighbours; the test images perturbed.",
           ["tokenizer", "kind", "clean", *names, "mean drop"],
           [[r.tokenizer, r.kind, _pct(r.knn), *[_pct(r.knn_under.get(n)) for n in names],
             _num(r.knn_drop, 1, 100.0, " pts")] for r in knn_rows])
    labelled = ("Interpretability, regions and boundaries",
                "Class information: adjusted mutual information between one token's word (hard: its id; soft: its "
                "k-means cluster of 256) and its image's Fashion-MNIST class. Region AP: COCO AP (IoU .50:.95) and "
                f"AP50 on {s.ap_images} synthetic images with known boxes. On {s.scenes} rendered shape scenes "
                "with exact object masks: boundary recall of the layout against the object edges, and edge "
                "fidelity, the R^2 of predicting from a token how much of its cell an object covers, on cells an "
                "edge crosses (ridge regression, held-out scenes).",
                ["tokenizer", "kind", "class information (AMI)", "region AP", "AP50", "scene boundary recall",
                 "edge fidelity (R^2)"],
                [[r.tokenizer, r.kind, _num(r.class_ami, 3),
                  _pct(r.region_ap["AP"]) if r.region_ap else "-", _pct(r.region_ap["AP50"]) if r.region_ap else "-",
                  _pct(r.scene_boundary_recall), _num(r.edge_fidelity, 3)] for r in rows])
    claims = ("Hard-versus-soft claims, measured",
              "Best hard tokenizer against best soft tokenizer on each measure.",
              ["aspect", "hard tokens (claim)", "soft tokens (claim)", "measured here", "verdict"],
              [[v.aspect, v.hard, v.soft, v.measured, v.verdict] for v in comparison.claims()])
    return [size, change, knn, labelled, claims]


def _notes(comparison: Any) -> list[str]:
    notes = list(comparison.notes)
    notes += [f"{r.tokenizer} failed: {r.error}" for r in comparison.rows if r.error]
    notes += [f"{r.tokenizer}: {n}" for r in comparison.rows for n in r.notes]
    notes += [f"skipped {name}: {why}" for name, why in comparison.skipped.items()]
    return notes


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(comparison: Any, plots: dict[str, str]) -> str:
    """The report as Markdown; ``plots`` maps a caption to an image path relative to the report."""
    lines = ["# Tokenizers compared", "",
             f"{len(comparison.images)} image(s): {', '.join(Path(n).name for n in comparison.images)}. "
             f"Machine: {comparison.machine}.", ""]
    for title, caption, header, rows in tables(comparison):
        lines += [f"## {title}", "", caption, "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        lines.append("")
    for caption, path in plots.items():
        lines += [f"![{caption}]({path})", ""]
    notes = _notes(comparison)
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


_CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:78em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}p.caption{color:#555;max-width:60em}
td.holds{background:#e3f6e3}td.does-not-hold{background:#fbe4e4}td.partly{background:#fdf3d8}img{max-width:100%}"""


def to_html(comparison: Any, images: dict[str, bytes]) -> str:
    """One HTML page with no outside references; ``images`` maps a caption to PNG bytes, embedded as data URLs."""
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>vistok compare</title>",
           f"<style>{_CSS}</style></head><body><h1>Tokenizers compared</h1>",
           f"<p>{len(comparison.images)} image(s): {html.escape(', '.join(Path(n).name for n in comparison.images))}."
           f" Machine: {html.escape(comparison.machine)}.</p>"]
    for title, caption, header, rows in tables(comparison):
        out.append(f"<h2>{html.escape(title)}</h2><p class='caption'>{html.escape(caption)}</p><table><tr>")
        out += [f"<th>{html.escape(h)}</th>" for h in header]
        out.append("</tr>")
        for row in rows:
            cells = []
            for head, cell in zip(header, row):
                css = f" class='{cell.replace(' ', '-')}'" if head == "verdict" else ""
                cells.append(f"<td{css}>{html.escape(cell)}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    for caption, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        out.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
                   f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    notes = _notes(comparison)
    if notes:
        out.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _scatter(axis: Any, rows: Sequence[Any], y: str, label: str, scale: float = 1.0) -> None:
    colours = {"hard": "tab:orange", "soft": "tab:blue"}
    for kind in ("hard", "soft"):
        points = [(r.bits_per_image / 1000, getattr(r, y) * scale, r.tokenizer) for r in rows
                  if r.kind == kind and getattr(r, y) is not None and r.bits_per_image]
        if points:
            axis.scatter([p[0] for p in points], [p[1] for p in points], color=colours[kind], label=kind)
        for x, value, name in points:
            axis.annotate(name, (x, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("kbit per image (log)")
    axis.set_ylabel(label)
    axis.grid(alpha=0.3)
    if axis.collections:
        axis.legend(fontsize=8)


def plots(comparison: Any) -> dict[str, bytes]:
    """PNG plots: size against fidelity and accuracy; how tokens and accuracy move under perturbations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in comparison.rows if r.error is None]
    out: dict[str, bytes] = {}
    if rows:
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        _scatter(axes[0], rows, "psnr", "reconstruction PSNR (dB)")
        _scatter(axes[1], rows, "knn", "Fashion-MNIST k-NN accuracy (%)", 100.0)
        figure.suptitle("Size against detail kept")
        out["size against detail kept"] = _png(figure)
        plt.close(figure)
        names = list(PERTURBATIONS)
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            xs = [j + i * width for j in range(len(names))]
            axes[0].bar(xs, [100 * r.change.get(n, math.nan) for n in names], width, label=r.tokenizer)
            if r.knn is not None:
                axes[1].bar(xs, [100 * (r.knn - r.knn_under.get(n, math.nan)) for n in names], width,
                            label=r.tokenizer)
        for axis, label in ((axes[0], "tokens unchanged (%, your images)"),
                            (axes[1], "k-NN accuracy lost (points)")):
            axis.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
            axis.set_ylabel(label)
            axis.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7)
        figure.suptitle("Robustness")
        out["robustness"] = _png(figure)
        plt.close(figure)
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None, so the JSON is standard."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write(comparison: Any, out_dir: Path) -> dict[str, Path]:
    """``compare.md``, ``compare.html``, ``compare.json`` and ``compare-*.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = plots(comparison)
    paths: dict[str, Path] = {}
    relative = {}
    for caption, data in pictures.items():
        path = out_dir / f"compare-{caption.split()[0]}.png"
        path.write_bytes(data)
        paths[f"plot:{caption}"] = path
        relative[caption] = path.name
    paths["markdown"] = out_dir / "compare.md"
    paths["markdown"].write_text(markdown(comparison, relative))
    paths["html"] = out_dir / "compare.html"
    paths["html"].write_text(to_html(comparison, pictures))
    paths["json"] = out_dir / "compare.json"
    paths["json"].write_text(json.dumps(_finite(comparison.as_dict()), indent=1))
    return paths
