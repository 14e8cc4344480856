"""Distribution metrics judged per instance: the unit of analysis is the host, not the request.

Requests from one instance share its hardware, neighbours and caches, so they are not
independent: with 3-5 instances per cohort and 2-5% instance-to-instance spread, a
per-request test sees a "significant" difference in most healthy canaries, and more
requests do not help (statistics.md section 6). Here each instance contributes one number,
the mean of its log samples (the mean of raw samples when some are not positive), and the
cohorts are compared with Welch's t test. With a single canary instance the canary is
compared with the baseline's spread between instances (a prediction interval for one more
instance), so one canary pod is still judged honestly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

from coalmine.analyzers.result import DetailValue, MetricResult, json_number

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from coalmine.config.models import MetricSpec

__all__ = ["MIN_SAMPLES_PER_INSTANCE", "InstanceMeans", "analyze_instances"]

ANALYZER = "instance_welch"

MIN_SAMPLES_PER_INSTANCE = 100
"""Instances with fewer samples are left out. Each look's test is valid however few samples
an instance has, but early looks on noisy means are nearly independent of each other, and
repeated looks then add up false alarms; once means rest on 100 samples, later looks barely
move. Measured A/A false rollbacks over 60 looks (with a critical errors metric): 2.0% at
5 instances per cohort and 3% spread, 2.75% at 3 instances and 5%; with a minimum of 10
samples they were 4.75% and 6.5% at 10 instances and 2%."""

_POWER_Z = float(special.ndtri(0.8))


@dataclass(frozen=True, slots=True)
class InstanceMeans:
    """One cohort's per-instance sample counts and means (on the log scale if ``log``)."""

    counts: NDArray[np.float64]
    means: NDArray[np.float64]
    log: bool

    @property
    def samples(self) -> int:
        """All samples of the cohort's instances."""
        return int(self.counts.sum())


def analyze_instances(
    spec: MetricSpec, baseline: InstanceMeans, canary: InstanceMeans, alpha: float
) -> MetricResult:
    """Judge a distribution metric with instances as the unit of analysis.

    Fails iff Welch's one-sided test (two-sided for ``either``) rejects at ``alpha`` and the
    relative change of the cohorts' typical instance lies beyond the tolerance. The
    relative change is ``exp(mean_c - mean_b) - 1`` on the log scale (a ratio of geometric
    means), ``(mean_c - mean_b) / |mean_b|`` otherwise. Measured when the detectable
    relative change (80% power) is within the tolerance.
    """
    b = baseline.means[baseline.counts >= MIN_SAMPLES_PER_INSTANCE]
    c = canary.means[canary.counts >= MIN_SAMPLES_PER_INSTANCE]
    sizes = (baseline.samples, canary.samples)
    detail: dict[str, DetailValue] = {
        "unit": "instance",
        "instances_baseline": int(b.size),
        "instances_canary": int(c.size),
        "n_baseline": sizes[0],
        "n_canary": sizes[1],
        "allowed_change": spec.tolerance,
        "direction": spec.direction,
    }
    if b.size < 2 or c.size < 1 or min(sizes) < spec.min_samples:
        reason = (
            f"{spec.name}: {b.size} baseline and {c.size} canary instances with at least"
            f" {MIN_SAMPLES_PER_INSTANCE} samples (2 and 1 needed), {min(sizes)} samples"
        )
        return _result(spec, "nodata", sizes, reason, detail, measured=False)

    log = baseline.log and canary.log
    mean_b, mean_c = float(b.mean()), float(c.mean())
    var_b = float(b.var(ddof=1))
    if c.size >= 2:
        var_c = float(c.var(ddof=1))
        se = math.sqrt(var_b / b.size + var_c / c.size)
        df = _welch_df(var_b, b.size, var_c, c.size)
    else:
        se = math.sqrt(var_b * (1.0 / b.size + 1.0))
        df = float(b.size - 1)
    diff = mean_c - mean_b
    t = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    direction = spec.direction
    if direction == "increase":
        p_value = float(special.stdtr(df, -t))
    elif direction == "decrease":
        p_value = float(special.stdtr(df, t))
    else:
        p_value = float(2 * special.stdtr(df, -abs(t)))

    def relative(delta: float) -> float:
        if log:
            return math.expm1(delta)
        return delta / abs(mean_b) if mean_b else (0.0 if delta == 0 else math.inf)

    tol = spec.tolerance
    rel = relative(diff)
    beyond = {"increase": rel > tol, "decrease": rel < -tol, "either": abs(rel) > tol}[direction]
    failed = p_value < alpha and beyond
    z_alpha = float(special.ndtri(1 - (alpha if direction != "either" else alpha / 2)))
    mde = abs(relative((z_alpha + _POWER_Z) * se))
    low, high = relative(diff - z_alpha * se), relative(diff + z_alpha * se)
    shown_within = {
        "increase": high <= tol,
        "decrease": low >= -tol,
        "either": -tol <= low and high <= tol,
    }[direction]
    # Every instance must count before promoting: one still below the minimum may be the
    # bad one.
    waiting = int(
        np.count_nonzero(baseline.counts < MIN_SAMPLES_PER_INSTANCE)
        + np.count_nonzero(canary.counts < MIN_SAMPLES_PER_INSTANCE)
    )
    measured = failed or (mde <= tol and shown_within and not waiting)
    detail.update(
        {
            "scale": "log" if log else "raw",
            "mean_baseline": mean_b,
            "mean_canary": mean_c,
            "relative_change": json_number(rel),
            "instance_spread": math.sqrt(var_b),
            "t": json_number(t),
            "df": df,
            "p_value": p_value,
            "test": "fixed",
            "mde": json_number(mde),
            "relative_low": json_number(low),
            "relative_high": json_number(high),
            "instances_waiting": waiting,
        }
    )
    state = "fail" if failed else "pass" if measured else "waiting" if waiting else "unshown"
    if state == "unshown" and mde > tol:
        state = "underpowered"
    reason = _describe(spec, state, rel, p_value, mde, (int(b.size), int(c.size)), waiting)
    return _result(spec, "fail" if failed else "pass", sizes, reason, detail, measured=measured)


def _describe(
    spec: MetricSpec,
    state: str,
    rel: float,
    p_value: float,
    mde: float,
    counted: tuple[int, int],
    waiting: int,
) -> str:
    """The reason phrase for one instance-level result."""
    sign = {"increase": "+", "decrease": "-", "either": "\u00b1"}[spec.direction]
    tol = f"{sign}{spec.tolerance:.0%}"
    head = f"{spec.name} {rel:+.1%} per instance ({counted[0]} vs {counted[1]} instances"
    if state == "fail":
        return f"{head}, p={p_value:.2g}), beyond {tol}"
    if state == "pass":
        return f"{head}), within {tol}"
    if state == "waiting":
        return f"{head}); {waiting} more instance(s) below {MIN_SAMPLES_PER_INSTANCE} samples"
    if state == "unshown":
        return f"{head}), not yet shown within {tol}"
    return (
        f"{spec.name} not measurable yet per instance ({counted[0]} vs {counted[1]} instances):"
        f" detectable change {mde:.0%} > allowed {spec.tolerance:.0%}"
    )


def _welch_df(var_b: float, n_b: int, var_c: float, n_c: int) -> float:
    a, b = var_b / n_b, var_c / n_c
    denominator = a * a / (n_b - 1) + b * b / (n_c - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else float(n_b + n_c - 2)


def _result(
    spec: MetricSpec,
    outcome: str,
    sizes: tuple[int, int],
    reason: str,
    detail: dict[str, DetailValue],
    *,
    measured: bool,
) -> MetricResult:
    return MetricResult(
        metric=spec.name,
        analyzer=ANALYZER,
        outcome=outcome,  # type: ignore[arg-type]
        critical=spec.critical,
        measured=measured,
        n_baseline=sizes[0],
        n_canary=sizes[1],
        reason=reason,
        detail=detail,
    )
