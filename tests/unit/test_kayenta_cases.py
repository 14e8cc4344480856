"""Kayenta's own judge test cases, run through coalmine: how often the two agree.

``tests/data/kayenta_cases.json`` holds the numbers and expected results of Kayenta's
``ClassifierSuite`` and ``ScorerSuite`` (``kayenta/kayenta-judge`` in spinnaker/spinnaker; the
file's ``source`` names the paths and commits). Kayenta's settings map onto coalmine's:

- **Test level.** Kayenta calls a metric High when the lower end of a two-sided ``confLevel``
  interval for the canary-minus-baseline shift lies above ``tolerance x |estimate|``, and Low
  symmetrically: each side is a one-sided test at ``(1 - confLevel) / 2``, whatever the
  direction. coalmine's ``either`` is two-sided at ``alpha`` with a ``1 - alpha`` interval,
  its one-sided directions test at ``alpha`` with a ``1 - 2 alpha`` interval. So
  ``alpha = 1 - confLevel`` for ``either`` and ``(1 - confLevel) / 2`` otherwise: the same
  rejection level per side and the same interval coverage. ``test = "fixed"``: Kayenta judges
  one window once. ``tolerance`` (the fraction of the estimate the interval must clear) has
  no coalmine counterpart and is not mapped.
- **Effect size.** Kayenta's mean ratio must also reach ``allowedIncrease`` (High) or fall to
  ``allowedDecrease`` (Low); coalmine's relative change must lie beyond ``allowed_change``.
  ``allowedIncrease = 1.1`` is ``allowed_change = 0.1``, Kayenta's default 1.0 is 0.0. coalmine
  has one symmetric tolerance, so ``either`` takes the larger of the two sides (here the two
  are equal, or one is Kayenta's default 1.0, i.e. unset). The CLES measure (a probability)
  has no relative-change counterpart: those cases run with ``allowed_change = 0``.
- **Critical.** A critical Kayenta metric is a critical coalmine metric, and Kayenta's
  critical effect size (``criticalIncrease`` - 1, or 1 - ``criticalDecrease``) is its
  ``critical_change``. Kayenta's scorer also fails a
  canary whose critical metric has no data, so a critical metric is ``must_have_data`` too.
- **Data handling.** ``nanStrategy`` is ``nan_strategy``, outlier removal ``remove_outliers``,
  and ``min_samples = 1`` (Kayenta judges any non-empty sample).
- **Outcomes.** High or Low in a direction the metric watches is coalmine's ``fail`` (with
  the canary on the same side: the U statistic's AUC above or below 1/2), Pass is ``pass``, a
  High or Low the direction ignores is ``pass``, Nodata is ``nodata``. Where the Scala test
  asserts the critical flag, coalmine's must match it (a passing metric is never critical).
- **Scores.** Kayenta's groups and weights become the profile's ``groups``, each metric a spec
  in its group; the score is ``judge()``'s, i.e. ``judge.score()`` zeroed by a critical
  failure, as Kayenta's scorer does. Kayenta rounds to two decimals, so coalmine's is too.

Cases where coalmine deliberately differs are listed in ``DELIBERATE`` with the reason; every
other case must agree, every listed case must still disagree (so the list cannot go stale),
and the agreement over all cases must reach ``MIN_AGREEMENT``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coalmine.analyzers.mann_whitney import analyze_distribution
from coalmine.analyzers.result import MetricResult, Outcome
from coalmine.config.models import Direction, MetricSpec, Profile
from coalmine.judge import judge

CASES_FILE = Path(__file__).resolve().parent.parent / "data" / "kayenta_cases.json"

MIN_AGREEMENT = 0.95

JUDGE_CONF_LEVEL = 0.98
"""Kayenta's judge (NetflixACAJudge) runs its classifier at 98%: the level used for the
MeanInequalityClassifier cases, which have none."""

DELIBERATE: dict[str, str] = {
    "Mann-Whitney Missing Experiment Data with NaN Replacement": (
        "Kayenta passes a metric with no data at all when nanStrategy is replace (missing data"
        " read as zeros); coalmine's nan_strategy 'replace' turns NaN samples into 0, and a"
        " cohort without any sample stays nodata: coalmine does not judge data it has not seen"
    ),
    "Weighted Sum Group Scorer: Single group Nodata": (
        "Kayenta scores 0 when 50% or more of the metrics are Nodata; coalmine keeps nodata"
        " apart from failures: with no metric passed or failed there is no score (None) and the"
        " canary ends inconclusive (never promoted) instead of failed"
    ),
}

_OUTCOMES: dict[str, Outcome] = {
    "Pass": "pass",
    "High": "fail",
    "Low": "fail",
    "Nodata": "nodata",
    "NodataFailMetric": "nodata",
    "Error": "error",
}


@dataclass(frozen=True, slots=True)
class Comparison:
    """One case: whether coalmine agrees with Kayenta, and what each said."""

    agrees: bool
    kayenta: str
    coalmine: str


def _load() -> dict[str, Any]:
    with CASES_FILE.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


# ------------------------------------------------------------------------------ classifier


_NO_EFFECT_SIZE = {"measure": "meanRatio", "allowedIncrease": 1.0, "allowedDecrease": 1.0}
"""Kayenta's defaults, for the MeanInequalityClassifier cases (no effect size)."""


def _alpha(direction: Direction, conf_level: float) -> float:
    return 1.0 - conf_level if direction == "either" else (1.0 - conf_level) / 2.0


def _allowed_change(direction: Direction, effect: dict[str, Any]) -> float:
    if effect["measure"] == "cles":
        return 0.0
    increase = max(float(effect["allowedIncrease"]) - 1.0, 0.0)
    decrease = max(1.0 - float(effect["allowedDecrease"]), 0.0)
    return {"increase": increase, "decrease": decrease, "either": max(increase, decrease)}[
        direction
    ]


def _critical_change(direction: Direction, effect: dict[str, Any]) -> float | None:
    """Kayenta's critical effect size (``criticalIncrease`` / ``criticalDecrease``)."""
    if effect["measure"] == "cles" or "criticalIncrease" not in effect:
        return None
    increase = max(float(effect["criticalIncrease"]) - 1.0, 0.0)
    decrease = max(1.0 - float(effect["criticalDecrease"]), 0.0)
    return {"increase": increase, "decrease": decrease, "either": max(increase, decrease)}[
        direction
    ]


def _spec(case: dict[str, Any]) -> MetricSpec:
    settings = case["settings"]
    direction: Direction = case["direction"]
    effect = settings.get("effectSize", _NO_EFFECT_SIZE)
    return MetricSpec(
        name="kayenta-metric",
        kind="distribution",
        direction=direction,
        allowed_change=_allowed_change(direction, effect),
        test="fixed",
        min_samples=1,
        nan_strategy=settings["nanStrategy"],
        remove_outliers=settings["outliers"]["strategy"] == "remove",
        critical=settings["critical"],
        critical_change=_critical_change(direction, effect),
        must_have_data=settings["mustHaveData"] or settings["critical"],
    )


def _expected_outcome(case: dict[str, Any]) -> tuple[Outcome, int]:
    """coalmine's outcome for Kayenta's classification, and the side of a failure."""
    label = case["expected"]["classification"]
    watched = {"High": ("increase", "either"), "Low": ("decrease", "either")}
    if label in watched:
        if case["direction"] not in watched[label]:
            return "pass", 0
        return "fail", 1 if label == "High" else -1
    return _OUTCOMES[label], 0


def _describe(result: MetricResult) -> str:
    keys = ("p_value", "relative_change", "shift", "shift_low", "shift_high", "mean_change")
    numbers = ", ".join(f"{k}={result.detail[k]}" for k in keys if k in result.detail)
    return f"{result.outcome} critical={result.critical} ({numbers}): {result.reason}"


def _classify(case: dict[str, Any]) -> Comparison:
    direction: Direction = case["direction"]
    conf_level = case["settings"].get("confLevel", JUDGE_CONF_LEVEL)
    result = analyze_distribution(
        _spec(case),
        np.asarray(case["control"], dtype=np.float64),
        np.asarray(case["experiment"], dtype=np.float64),
        _alpha(direction, conf_level),
        evidence=None,
    )
    expected = case["expected"]
    outcome, side = _expected_outcome(case)
    agrees = result.outcome == outcome
    if agrees and side:
        auc = result.detail.get("auc")
        agrees = isinstance(auc, float) and (auc - 0.5) * side > 0
    if expected["critical"] is not None:
        critical = result.critical and result.outcome != "pass"
        agrees = agrees and critical == expected["critical"]
    if expected.get("reason") == "non-empty":
        agrees = agrees and bool(result.reason)
    kayenta = f"{expected['classification']} critical={expected['critical']}"
    return Comparison(agrees, kayenta, _describe(result))


# ---------------------------------------------------------------------------------- scorer


def _score(case: dict[str, Any]) -> Comparison:
    weights: dict[str, float] = case["groupWeights"]
    metrics = case["metrics"]
    groups = {group for m in metrics for group in m["groups"]}
    # Kayenta gives groups without a weight an equal share of what is left of 100, coalmine
    # weighs them 1: the same only when every group, or none, is weighted.
    assert not weights or set(weights) == groups
    assert all(len(m["groups"]) == 1 for m in metrics)  # one group per coalmine metric
    profile = Profile(
        groups=weights,
        metrics=tuple(
            MetricSpec(
                name=m["name"],
                group=m["groups"][0],
                critical=m["critical"],
                must_have_data=m["critical"] or m["classification"] == "NodataFailMetric",
            )
            for m in metrics
        ),
    )
    results = [
        MetricResult(
            metric=m["name"],
            analyzer="kayenta",
            outcome=_OUTCOMES[m["classification"]],
            critical=m["critical"],
            measured=True,
            n_baseline=0,
            n_canary=0,
            reason=f"{m['name']} {m['classification']}",
        )
        for m in metrics
    ]
    judgement = judge(profile, results, elapsed=profile.max_duration, at_end=True)
    expected = float(case["expected_score"])
    got = None if judgement.score is None else round(judgement.score, 2)
    return Comparison(got == expected, f"score {expected:g}", f"score {got} ({judgement.summary})")


# ----------------------------------------------------------------------------------- tests


@functools.cache
def _comparisons() -> dict[str, Comparison]:
    data = _load()
    found = {case["name"]: _classify(case) for case in data["classifier_cases"]}
    found |= {case["name"]: _score(case) for case in data["scorer_cases"]}
    return found


def _names() -> list[str]:
    data = _load()
    return [case["name"] for key in ("classifier_cases", "scorer_cases") for case in data[key]]


def test_all_cases_are_there() -> None:
    data = _load()
    assert len(data["classifier_cases"]) == 37
    assert len(data["scorer_cases"]) == 13
    assert len(set(_names())) == 50
    assert set(DELIBERATE) <= set(_names())


@pytest.mark.parametrize("name", _names())
def test_case(name: str) -> None:
    found = _comparisons()[name]
    if name in DELIBERATE:
        assert not found.agrees, (
            f"{name} now agrees (Kayenta {found.kayenta}, coalmine {found.coalmine}):"
            " drop it from DELIBERATE"
        )
    else:
        assert found.agrees, f"Kayenta {found.kayenta}, coalmine {found.coalmine}"


def test_agreement() -> None:
    found = _comparisons()
    agreeing = sum(c.agrees for c in found.values())
    share = agreeing / len(found)
    disagreeing = sorted(name for name, c in found.items() if not c.agrees)
    assert share >= MIN_AGREEMENT, (
        f"coalmine agrees with Kayenta on {agreeing} of {len(found)} cases ({share:.1%});"
        f" disagreeing: {disagreeing}"
    )
