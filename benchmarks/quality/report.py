"""Aggregate run results per scenario and judge; print them side by side or as JSON.

Rates come with a Wilson 95% interval. Times to detect are over *all* runs of a
regression scenario, a run that was not rolled back counting as never detected, so a
median or p90 is ``>60`` when more than half or a tenth of the runs were missed (the
convention of statistics.md section 4). Quantiles are observed values (inverted CDF),
not interpolated.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.quality.simulator import SCENARIOS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from benchmarks.quality.runner import RunResult

JUDGES = ("coalmine", "kayenta", "kayenta_any", "flagger")
TITLES = {
    "coalmine": "coalmine",
    "kayenta": "Kayenta-style",
    "kayenta_any": "Kayenta, tolerance 0",
    "flagger": "Flagger-style",
}
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def quantile(values: Sequence[float], q: float) -> float:
    """An observed value at quantile ``q`` (inverted CDF); ``inf`` entries allowed."""
    if not len(values):
        return math.nan
    return float(np.quantile(np.asarray(values, dtype=np.float64), q, method="inverted_cdf"))


@dataclass(frozen=True, slots=True)
class JudgeStats:
    """One judge's record on one scenario."""

    runs: int
    rollbacks: int
    promotes: int
    inconclusive: int
    rollback_ci: tuple[float, float]
    detect_60: int
    detect_30: int
    detect_p50_min: float
    detect_p90_min: float
    promote_p50_min: float
    failed_metrics: dict[str, int]

    @property
    def rollback_rate(self) -> float:
        """Share of runs rolled back (false rollbacks in an A/A scenario)."""
        return self.rollbacks / self.runs if self.runs else math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``inf`` minutes become ``None``)."""
        out: dict[str, Any] = {
            "runs": self.runs,
            "rollback_rate": _finite(self.rollback_rate),
            "rollback_wilson95": list(self.rollback_ci),
            "promote_rate": _finite(self.promotes / self.runs) if self.runs else None,
            "promote_median_min": _finite(self.promote_p50_min),
            "inconclusive_rate": _finite(self.inconclusive / self.runs) if self.runs else None,
            "detected_within_60min": _finite(self.detect_60 / self.runs) if self.runs else None,
            "detected_within_60min_wilson95": list(wilson(self.detect_60, self.runs)),
            "detected_within_30min": _finite(self.detect_30 / self.runs) if self.runs else None,
            "detect_median_min": _finite(self.detect_p50_min),
            "detect_p90_min": _finite(self.detect_p90_min),
            "failed_metrics": self.failed_metrics,
        }
        return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def judge_stats(outcomes: Sequence[Any]) -> JudgeStats:
    """Aggregate one judge's outcomes (anything with ``decision``, ``time``, ``failed``)."""
    n = len(outcomes)
    decisions = Counter(o.decision for o in outcomes)
    detect = [o.time / 60.0 if o.decision == "rollback" else math.inf for o in outcomes]
    promoted = [o.time / 60.0 for o in outcomes if o.decision == "promote"]
    failed = Counter(m for o in outcomes if o.decision == "rollback" for m in o.failed)
    return JudgeStats(
        runs=n,
        rollbacks=decisions["rollback"],
        promotes=decisions["promote"],
        inconclusive=n - decisions["rollback"] - decisions["promote"],
        rollback_ci=wilson(decisions["rollback"], n),
        detect_60=sum(t <= 60.0 for t in detect),
        detect_30=sum(t <= 30.0 for t in detect),
        detect_p50_min=quantile(detect, 0.5),
        detect_p90_min=quantile(detect, 0.9),
        promote_p50_min=quantile(promoted, 0.5),
        failed_metrics=dict(sorted(failed.items())),
    )


@dataclass(frozen=True, slots=True)
class ScenarioStats:
    """Every judge's record on one scenario, and coalmine's judging cost."""

    name: str
    description: str
    regression: bool
    judges: dict[str, JudgeStats]
    look_ms_p50: float
    look_ms_p99: float
    observe_us_mean: float
    looks_mean: float
    examples: tuple[str, ...]


def scenario_stats(name: str, results: Sequence[RunResult]) -> ScenarioStats:
    """Aggregate the runs of one scenario."""
    scenario = SCENARIOS[name]
    looks = [r.coalmine.look_ms for r in results if r.coalmine.look_ms]
    costs = np.concatenate(looks) if looks else np.empty(0)
    observe_ms = sum(r.coalmine.observe_ms for r in results)
    messages = sum(r.coalmine.messages for r in results)
    # Examples of coalmine's wrong calls, for whoever tunes the judge.
    wrong = "promote" if scenario.regression else "rollback"
    examples = tuple(
        f"run {r.index}: {r.coalmine.decision} at {r.coalmine.time / 60:.1f} min: "
        + r.coalmine.summary
        for r in sorted(results, key=lambda r: r.index)
        if r.coalmine.decision == wrong
    )[:3]
    return ScenarioStats(
        name=name,
        description=scenario.description,
        regression=scenario.regression,
        judges={j: judge_stats([getattr(r, j) for r in results]) for j in JUDGES},
        look_ms_p50=float(np.percentile(costs, 50)) if len(costs) else math.nan,
        look_ms_p99=float(np.percentile(costs, 99)) if len(costs) else math.nan,
        observe_us_mean=observe_ms * 1e3 / messages if messages else math.nan,
        looks_mean=float(np.mean([r.coalmine.looks for r in results])) if results else math.nan,
        examples=examples,
    )


def _aa_target(s: JudgeStats) -> str:
    if s.rollback_ci[1] < 0.03:
        return "met"
    return "NOT MET" if s.rollback_rate > 0.02 else "not shown: needs more runs"


# Targets of statistics.md section 7 that one scenario can show, for coalmine's column.
_TARGETS: dict[str, tuple[str, Callable[[JudgeStats], bool | str]]] = {
    "aa": ("<= 2% (Wilson upper < 3%)", _aa_target),
    "aa-3i": ("<= 5%", lambda s: s.rollback_rate <= 0.05),
    "aa-5i": ("<= 5%", lambda s: s.rollback_rate <= 0.05),
    "aa-10i": ("<= 5%", lambda s: s.rollback_rate <= 0.05),
    "err2x": (
        ">= 95% in 60 min, median <= 15",
        lambda s: s.detect_60 >= 0.95 * s.runs and s.detect_p50_min <= 15,
    ),
    "err5x": ("median <= 3 min", lambda s: s.detect_p50_min <= 3),
    "lat+10": (
        "median <= 10, >= 95% in 30 min",
        lambda s: s.detect_p50_min <= 10 and s.detect_30 >= 0.95 * s.runs,
    ),
}


def target(stats: ScenarioStats) -> tuple[str, str] | None:
    """coalmine's target on this scenario (statistics.md section 7) and how it stands."""
    entry = _TARGETS.get(stats.name)
    if entry is None:
        return None
    text, check = entry
    status = check(stats.judges["coalmine"])
    if isinstance(status, bool):
        status = "met" if status else "NOT MET"
    return text, status


def _pct(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:.1f}%"


def _min(x: float) -> str:
    if math.isnan(x):
        return "-"
    return ">60" if math.isinf(x) else f"{x:.1f}"


def _rate_ci(k: int, n: int) -> str:
    lo, hi = wilson(k, n)
    return f"{_pct(k / n)} [{_pct(lo)}-{_pct(hi)}]" if n else "-"


def _rows(stats: ScenarioStats) -> list[tuple[str, list[str]]]:
    j = [stats.judges[name] for name in JUDGES]
    rows: list[tuple[str, list[str]]] = []
    if stats.regression:
        rows.append(
            (
                "detected <= 60 min [95% CI]",
                [_rate_ci(s.detect_60, s.runs) for s in j],
            )
        )
        times = [f"{_min(s.detect_p50_min)} / {_min(s.detect_p90_min)}" for s in j]
        rows.append(("time to detect p50 / p90 min", times))
        rows.append(("promoted (missed)", [_pct(s.promotes / s.runs) for s in j]))
    else:
        rows.append(
            (
                "false rollbacks [95% CI]",
                [_rate_ci(s.rollbacks, s.runs) for s in j],
            )
        )
        rows.append(
            (
                "promoted, median min",
                [f"{_pct(s.promotes / s.runs)}, {_min(s.promote_p50_min)}" for s in j],
            )
        )
    rows.append(("inconclusive", [_pct(s.inconclusive / s.runs) for s in j]))
    rows.append(
        (
            "judge ms/look p50 / p99",
            [f"{stats.look_ms_p50:.2f} / {stats.look_ms_p99:.2f}"] + [""] * (len(JUDGES) - 1),
        )
    )
    return rows


def format_table(all_stats: Sequence[ScenarioStats]) -> str:
    """The plain-text table: one block per scenario, the three judges side by side."""
    widths = (18, 30, *(22 for _ in JUDGES))
    head = ("scenario", "measure", *(TITLES[j] for j in JUDGES))
    lines = [_line(head, widths), _line(tuple("-" * w for w in widths), widths)]
    for stats in all_stats:
        runs = stats.judges["coalmine"].runs
        first = True
        for label, cells in _rows(stats):
            name = f"{stats.name} ({runs})" if first else ""
            lines.append(_line((name, label, *cells), widths))
            first = False
        aim = target(stats)
        lines.append(_line(("", stats.description), widths))
        if aim is not None:
            text, status = aim
            lines.append(_line(("", f"target: {text}", status), widths))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = (*cells, *("" for _ in range(len(widths) - len(cells))))
    return "  ".join(cell.ljust(width) for cell, width in zip(padded, widths, strict=True)).rstrip()


def as_json(all_stats: Sequence[ScenarioStats]) -> dict[str, Any]:
    """The report as a JSON-friendly mapping."""
    out: dict[str, Any] = {}
    for stats in all_stats:
        aim = target(stats)
        out[stats.name] = {
            "description": stats.description,
            "regression": stats.regression,
            "judges": {name: s.as_dict() for name, s in stats.judges.items()},
            "coalmine_cost": {
                "look_ms_p50": _finite(stats.look_ms_p50),
                "look_ms_p99": _finite(stats.look_ms_p99),
                "observe_us_per_message": _finite(stats.observe_us_mean),
                "looks_per_run": _finite(stats.looks_mean),
            },
            "target": None if aim is None else {"goal": aim[0], "status": aim[1]},
            "coalmine_wrong_examples": list(stats.examples),
        }
    return out
