"""Aggregate run results per scenario and judge; print them side by side or as JSON.

Rates come with a Wilson 95% interval: false rollbacks in the A/A scenarios, false
promotions in the regression scenarios. Times to detect are over *all* runs of a
regression scenario, a run that was not rolled back counting as never detected, so a
median or p90 is ``>60`` when more than half or a tenth of the runs were missed (the
convention of statistics.md section 4). Quantiles are observed values (inverted CDF),
not interpolated. The oracle SPRT's column is filled in the error scenarios only, with
coalmine's median time to detect over the oracle's beside it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from support.quality.simulator import SCENARIOS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from support.quality.runner import RunResult

JUDGES = ("coalmine", "kayenta", "kayenta_any", "flagger", "oracle")
TITLES = {
    "coalmine": "coalmine",
    "kayenta": "Kayenta-style",
    "kayenta_any": "Kayenta, tolerance 0",
    "flagger": "Flagger-style",
    "oracle": "oracle SPRT",
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
    named: int = 0

    @property
    def rollback_rate(self) -> float:
        """Share of runs rolled back (false rollbacks in an A/A scenario)."""
        return self.rollbacks / self.runs if self.runs else math.nan

    @property
    def promote_rate(self) -> float:
        """Share of runs promoted (false promotions in a regression scenario)."""
        return self.promotes / self.runs if self.runs else math.nan

    def as_dict(self, regression: bool | None = None) -> dict[str, Any]:
        """JSON-friendly form (``inf`` minutes become ``None``).

        With ``regression`` given, the wrong calls are also named as such:
        ``false_promotion_*`` in a regression scenario, ``false_rollback_*`` in an A/A one.
        """

        def share(k: int) -> float | None:
            return _finite(k / self.runs) if self.runs else None

        out: dict[str, Any] = {
            "runs": self.runs,
            "rollback_rate": _finite(self.rollback_rate),
            "rollback_wilson95": list(self.rollback_ci),
            "promote_rate": share(self.promotes),
            "promote_wilson95": list(wilson(self.promotes, self.runs)),
            "promote_median_min": _finite(self.promote_p50_min),
            "inconclusive_rate": share(self.inconclusive),
            "detected_within_60min": share(self.detect_60),
            "detected_within_60min_wilson95": list(wilson(self.detect_60, self.runs)),
            "detected_within_30min": share(self.detect_30),
            "detected_within_30min_wilson95": list(wilson(self.detect_30, self.runs)),
            "detect_median_min": _finite(self.detect_p50_min),
            "detect_p90_min": _finite(self.detect_p90_min),
            "failed_metrics": self.failed_metrics,
            "rolled_back_naming_an_instance": self.named,
        }
        if regression is True:
            out["false_promotions"] = self.promotes
            out["false_promotion_rate"] = out["promote_rate"]
            out["false_promotion_wilson95"] = out["promote_wilson95"]
        elif regression is False:
            out["false_rollbacks"] = self.rollbacks
            out["false_rollback_rate"] = out["rollback_rate"]
            out["false_rollback_wilson95"] = out["rollback_wilson95"]
        return out


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def judge_stats(outcomes: Sequence[Any]) -> JudgeStats:
    """Aggregate one judge's outcomes (anything with ``decision``, ``time``, ``failed``).

    ``named`` counts the rollbacks whose outcome has a true ``named`` (coalmine's only).
    """
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
        named=sum(o.decision == "rollback" and bool(getattr(o, "named", False)) for o in outcomes),
    )


@dataclass(frozen=True, slots=True)
class ScenarioStats:
    """Every judge's record on one scenario, and coalmine's judging cost."""

    name: str
    description: str
    regression: bool
    judges: dict[str, JudgeStats]
    """Every judge that ran: the oracle SPRT only in the error scenarios."""
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
        judges={
            j: judge_stats(outcomes)
            for j in JUDGES
            if (outcomes := [getattr(r, j) for r in results if getattr(r, j) is not None])
        },
        look_ms_p50=float(np.percentile(costs, 50)) if len(costs) else math.nan,
        look_ms_p99=float(np.percentile(costs, 99)) if len(costs) else math.nan,
        observe_us_mean=observe_ms * 1e3 / messages if messages else math.nan,
        looks_mean=float(np.mean([r.coalmine.looks for r in results])) if results else math.nan,
        examples=examples,
    )


def _aa_target(stats: ScenarioStats) -> str:
    s = stats.judges["coalmine"]
    if s.rollback_ci[1] < 0.03:
        return "met"
    return "NOT MET" if s.rollback_rate > 0.02 else "not shown: needs more runs"


def _coalmine(check: Callable[[JudgeStats], bool]) -> Callable[[ScenarioStats], bool]:
    return lambda stats: check(stats.judges["coalmine"])


def oracle_ratio(stats: ScenarioStats, judge: str = "coalmine") -> float:
    """A judge's median time to detect over the oracle SPRT's (NaN without the oracle)."""
    oracle = stats.judges.get("oracle")
    if oracle is None or judge not in stats.judges:
        return math.nan
    mine, best = stats.judges[judge].detect_p50_min, oracle.detect_p50_min
    if math.isinf(best):
        return math.nan
    return mine / best if best > 0 else math.inf


_AT_MOST_5 = ("<= 5%", _coalmine(lambda s: s.rollback_rate <= 0.05))
_AA_2 = ("<= 2% (Wilson upper < 3%)", _aa_target)
_TAIL_30 = (">= 90% in 30 min", _coalmine(lambda s: s.detect_30 >= 0.90 * s.runs))
_PROMOTED_1 = ("<= 1% promoted", _coalmine(lambda s: s.promotes <= 0.01 * s.runs))

# Targets of statistics.md section 7 that one scenario can show, for coalmine's column.
_TARGETS: dict[str, tuple[str, Callable[[ScenarioStats], bool | str]]] = {
    "aa": _AA_2,
    "zeros-aa": _AA_2,
    "buckets-aa": _AA_2,
    "pareto-aa": _AA_2,
    "bimodal-aa": _AA_2,
    "aa-3i": _AT_MOST_5,
    "aa-5i": _AT_MOST_5,
    "aa-10i": _AT_MOST_5,
    "aa-3i-tol5": _AT_MOST_5,
    "aa-5i-tol5": _AT_MOST_5,
    "aa-10i-tol5": _AT_MOST_5,
    "err2x": (
        ">= 95% in 60 min, median <= 15",
        _coalmine(lambda s: s.detect_60 >= 0.95 * s.runs and s.detect_p50_min <= 15),
    ),
    "err2x-fixed": (
        ">= 95% in 60 min, median <= 1.2 x oracle SPRT's",
        lambda stats: (
            stats.judges["coalmine"].detect_60 >= 0.95 * stats.judges["coalmine"].runs
            and oracle_ratio(stats) <= 1.2
        ),
    ),
    "err2.5x": _PROMOTED_1,
    "err5x": ("median <= 3 min", _coalmine(lambda s: s.detect_p50_min <= 3)),
    "lat+10": (
        "median <= 10, >= 95% in 30 min",
        _coalmine(lambda s: s.detect_p50_min <= 10 and s.detect_30 >= 0.95 * s.runs),
    ),
    "lat+10-fixed": (
        ">= 95% in 30 min, median <= 10",
        _coalmine(lambda s: s.detect_30 >= 0.95 * s.runs and s.detect_p50_min <= 10),
    ),
    "lat+15": _PROMOTED_1,
    "tail": _TAIL_30,
    "tail1": _TAIL_30,
    "one-instance": _TAIL_30,
    "tail-fixed": _TAIL_30,
    "tail1-fixed": _TAIL_30,
    "one-instance-fixed": _TAIL_30,
    "zeros-x2-fixed": (
        ">= 95% in 30 min, none promoted",
        _coalmine(lambda s: s.detect_30 >= 0.95 * s.runs and s.promotes == 0),
    ),
    "zeros-x2": (
        ">= 95% in 30 min, none promoted",
        _coalmine(lambda s: s.detect_30 >= 0.95 * s.runs and s.promotes == 0),
    ),
}


def target(stats: ScenarioStats) -> tuple[str, str] | None:
    """coalmine's target on this scenario (statistics.md section 7) and how it stands."""
    entry = _TARGETS.get(stats.name)
    if entry is None:
        return None
    text, check = entry
    status = check(stats)
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


def _ratio(x: float) -> str:
    if math.isnan(x):
        return "-"
    return "inf" if math.isinf(x) else f"{x:.2f}"


def _rows(stats: ScenarioStats) -> list[tuple[str, list[str]]]:
    judges = stats.judges

    def cells(show: Callable[[JudgeStats], str], only: Sequence[str] = JUDGES) -> list[str]:
        return [show(judges[j]) if j in judges and j in only else "-" for j in JUDGES]

    deciding = ("coalmine", "kayenta", "kayenta_any", "flagger")  # the oracle never promotes
    rows: list[tuple[str, list[str]]] = []
    if stats.regression:
        rows.append(("detected <= 60 min [95% CI]", cells(lambda s: _rate_ci(s.detect_60, s.runs))))
        rows.append(("detected <= 30 min", cells(lambda s: _pct(s.detect_30 / s.runs))))
        rows.append(
            (
                "time to detect p50 / p90 min",
                cells(lambda s: f"{_min(s.detect_p50_min)} / {_min(s.detect_p90_min)}"),
            )
        )
        rows.append(
            ("false promotions [95% CI]", cells(lambda s: _rate_ci(s.promotes, s.runs), deciding))
        )
        if "oracle" in judges:
            ratios = [_ratio(oracle_ratio(stats, j)) if j in deciding else "-" for j in JUDGES]
            rows.append(("median / oracle SPRT median", ratios))
        if SCENARIOS[stats.name].bad_instances:
            c = judges["coalmine"]
            named = f"{c.rollbacks} caught, {c.named} named of {c.runs}"
            rows.append(("caught and named (instance)", [named] + ["-"] * (len(JUDGES) - 1)))
    else:
        rows.append(
            ("false rollbacks [95% CI]", cells(lambda s: _rate_ci(s.rollbacks, s.runs), deciding))
        )
        rows.append(
            (
                "promoted, median min",
                cells(lambda s: f"{_pct(s.promote_rate)}, {_min(s.promote_p50_min)}", deciding),
            )
        )
    rows.append(("inconclusive", cells(lambda s: _pct(s.inconclusive / s.runs), deciding)))
    rows.append(
        (
            "judge ms/look p50 / p99",
            [f"{stats.look_ms_p50:.2f} / {stats.look_ms_p99:.2f}"] + [""] * (len(JUDGES) - 1),
        )
    )
    return rows


def format_table(all_stats: Sequence[ScenarioStats]) -> str:
    """The plain-text table: one block per scenario, the judges side by side."""
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
        overrides = SCENARIOS[stats.name].overrides
        if overrides:
            lines.append(_line(("", f"profile: {' '.join(overrides)}"), widths))
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
        scenario = SCENARIOS[stats.name]
        out[stats.name] = {
            "description": stats.description,
            "regression": stats.regression,
            "shape": scenario.shape,
            "latency_per_minute": scenario.latency_per_minute,
            "daily_swing": scenario.daily_swing,
            "profile_overrides": list(scenario.overrides),
            "judges": {name: s.as_dict(stats.regression) for name, s in stats.judges.items()},
            "coalmine_over_oracle_median": _finite(oracle_ratio(stats)),
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
