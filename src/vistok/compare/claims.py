"""The hard-versus-soft table of the image tokenization overview, each row beside what was measured.

A claim is judged on the tokenizers that were measured: the best hard tokenizer against the best soft one on
the row's measure ("best" is the highest, or the lowest where smaller is better). A row holds when the soft
(or hard) side wins as the claim says, does not hold when the other side wins, and is "partly" when a row has
two measures that disagree. Without a hard and a soft tokenizer measured on it, a row is "not measured".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Claim", "Verdict", "CLAIMS", "judge"]


@dataclass(frozen=True)
class Measure:
    label: str
    value: Callable[[Any], float | None]
    higher_is_better: bool = True
    unit: str = ""


@dataclass(frozen=True)
class Claim:
    """One row of the overview's table: what it says of hard and of soft tokens, the side it favours, and how vistok
    measures it."""

    aspect: str
    hard: str
    soft: str
    favours: str  # "hard" or "soft"
    measures: tuple[Measure, ...]


@dataclass(frozen=True)
class Verdict:
    aspect: str
    hard: str
    soft: str
    measured: str
    verdict: str


def _fmt(value: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * value:.1f}%"
    if unit == "bits":
        return f"{value / 1000:,.1f} kbit"
    if unit == "dB":
        from vistok.compare.core import LOSSLESS_DB

        return "lossless" if value >= LOSSLESS_DB else f"{value:.1f} dB"
    if unit == "img/s":
        return f"{value:,.1f} img/s"
    return f"{value:.3f}"


CLAIMS: tuple[Claim, ...] = (
    Claim("Interpretability", "High", "Moderate to low", "hard", (
        Measure("class information of one token (AMI)", lambda r: r.class_ami),)),
    Claim("Detail preservation", "May lose fine details", "Preserves subtle features", "soft", (
        Measure("reconstruction PSNR", lambda r: r.psnr, unit="dB"),
        Measure("Fashion-MNIST k-NN accuracy", lambda r: r.knn, unit="%"))),
    Claim("Computational efficiency", "Generally more efficient", "Can be more intensive", "hard", (
        Measure("bits per image (whole-image tokenizers)", lambda r: None if r.regions else r.bits_per_image, higher_is_better=False, unit="bits"),
        Measure("encode throughput", lambda r: r.images_per_s, unit="img/s"))),
    Claim("Boundary handling", "Struggles with ambiguous boundaries", "Better with complex boundaries", "soft", (
        Measure("edge fidelity on shape scenes (R^2)", lambda r: r.edge_fidelity),)),
)


def _best(rows: Sequence[Any], kind: str, measure: Measure) -> tuple[float, str] | None:
    values = [(measure.value(r), r.tokenizer) for r in rows if r.kind == kind and r.error is None]
    values = [(v, name) for v, name in values if v is not None]
    if not values:
        return None
    return max(values) if measure.higher_is_better else min(values)


def judge(rows: Sequence[Any]) -> list[Verdict]:
    """A :class:`Verdict` per claim in :data:`CLAIMS` from the measured ``rows``."""
    verdicts = []
    for claim in CLAIMS:
        wins, said = [], []
        for measure in claim.measures:
            hard, soft = _best(rows, "hard", measure), _best(rows, "soft", measure)
            if hard is None or soft is None:
                said.append(f"{measure.label}: not measured for both kinds")
                continue
            better_hard = hard[0] > soft[0] if measure.higher_is_better else hard[0] < soft[0]
            wins.append(("hard" if better_hard else "soft") == claim.favours)
            said.append(f"{measure.label}: best hard {_fmt(hard[0], measure.unit)} ({hard[1]}), best soft "
                        f"{_fmt(soft[0], measure.unit)} ({soft[1]})")
        if not wins:
            verdict = "not measured"
        elif all(wins):
            verdict = "holds"
        elif any(wins):
            verdict = "partly"
        else:
            verdict = "does not hold"
        verdicts.append(Verdict(claim.aspect, claim.hard, claim.soft, "; ".join(said), verdict))
    return verdicts
