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
from coalmine.analyzers.tolerance import beyond, shown_within

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray

    from coalmine.config.models import MetricSpec

__all__ = ["MIN_SAMPLES_PER_INSTANCE", "InstanceEvidence", "InstanceMeans", "analyze_instances"]

ANALYZER = "instance_welch"

MIN_SAMPLES_PER_INSTANCE = 100
"""Instances with fewer samples are left out. Each look's test is valid however few samples
an instance has, but early looks on noisy means are nearly independent of each other, and
repeated looks then add up false alarms; once means rest on 100 samples, later looks barely
move. Measured A/A false rollbacks over 60 looks (with a critical errors metric): 2.0% at
5 instances per cohort and 3% spread, 2.75% at 3 instances and 5%; with a minimum of 10
samples they are 4.75% and 6.5% at 10 instances and 2%."""

_POWER_Z = float(special.ndtri(0.8))

_STAGE_GROWTH = 2.0
"""A new stage begins when the smallest instance's samples have doubled."""

_OUTLIER_SHARE = 0.75
"""Share of the metric's budget that the outlier test gets when the canary has two or more
instances; the cohorts' comparison keeps the rest."""


@dataclass(frozen=True, slots=True)
class InstanceMeans:
    """One cohort's per-instance sample counts and means (on the log scale if ``log``)."""

    counts: NDArray[np.float64]
    means: NDArray[np.float64]
    log: bool
    names: tuple[str, ...] = ()

    @property
    def samples(self) -> int:
        """All samples of the cohort's instances."""
        return int(self.counts.sum())

    def name(self, index: int) -> str:
        """The ``index``-th instance's name (its position when names are not known)."""
        return self.names[index] if index < len(self.names) else f"#{index}"


@dataclass(frozen=True, slots=True)
class _Stage:
    """What the tests decided at one stage; later looks in the stage repeat it."""

    mean_b: float
    mean_c: float
    se: float
    df: float
    p_value: float
    failed: bool
    low: float
    high: float
    mde: float
    outlier: _Outlier | None


@dataclass(frozen=True, slots=True)
class _Outlier:
    """The canary instance furthest above the baseline's instances, and its test."""

    name: str
    change: float
    t: float
    p_value: float
    failed: bool


@dataclass(slots=True)
class InstanceEvidence:
    """The staged tests of one instance-level metric, kept across looks.

    Repeating a fixed-sample test at every look raises false alarms (looks early on, when
    instance means still move, are nearly independent). So the tests run once per **stage**:
    stage ``j`` begins when every instance (but stragglers) has ``100 x 2^j`` samples, and
    spends ``alpha / ((j + 1)(j + 2))`` of the budget (these add up to ``alpha``); the looks
    within a stage repeat its decision. By the union bound the chance of any false alarm
    over all stages stays within ``alpha``, and the intervals a promotion rests on are
    simultaneous over the stages, so false promotions are controlled too.
    """

    stage: int = -1
    last: _Stage | None = None

    def decide(
        self, counts: NDArray[np.float64], alpha: float, test: Callable[[float], _Stage]
    ) -> _Stage | None:
        """The decision of the stage these sample counts fall in (None before the first).

        ``test`` runs the tests at a given level; it is called once when a stage begins.
        """
        stage = _stage(counts)
        if stage > self.stage:
            spent = alpha / ((stage + 1) * (stage + 2))
            self.stage, self.last = stage, test(spent)
        return self.last


@dataclass(frozen=True, slots=True)
class _Counted:
    """The instances a look counts: those with at least ``MIN_SAMPLES_PER_INSTANCE``."""

    b: NDArray[np.float64]
    """The counted baseline instances' means."""
    c: NDArray[np.float64]
    """The counted canary instances' means."""
    names: list[str]
    """The counted canary instances' names."""
    waiting: int
    """Instances of either cohort still below the minimum."""
    sizes: tuple[int, int]
    """All samples of each cohort, counted instances or not."""
    log: bool
    """The means are of logs (every sample of both cohorts positive)."""

    @classmethod
    def of(cls, baseline: InstanceMeans, canary: InstanceMeans) -> _Counted:
        """Pick the instances with enough samples out of both cohorts."""
        kept_b = baseline.counts >= MIN_SAMPLES_PER_INSTANCE
        kept_c = canary.counts >= MIN_SAMPLES_PER_INSTANCE
        return cls(
            b=baseline.means[kept_b],
            c=canary.means[kept_c],
            names=[canary.name(int(i)) for i in np.flatnonzero(kept_c)],
            waiting=int(np.count_nonzero(~kept_b) + np.count_nonzero(~kept_c)),
            sizes=(baseline.samples, canary.samples),
            log=baseline.log and canary.log,
        )


def analyze_instances(
    spec: MetricSpec,
    baseline: InstanceMeans,
    canary: InstanceMeans,
    alpha: float,
    *,
    evidence: InstanceEvidence | None = None,
) -> MetricResult:
    """Judge a distribution metric with instances as the unit of analysis.

    Two tests share ``alpha``: Welch's test of the cohorts' typical instance (one-sided, two-
    sided for ``either``), and an **outlier test** of each canary instance against the
    spread between instances (a prediction interval: a t test with the spread pooled from
    the baseline's instances and the other canary instances, Bonferroni over the canary's
    instances), so that a single slow host is caught and named. Each fails when it rejects
    and its relative change lies beyond the tolerance. The relative change is
    ``exp(mean_c - mean_b) - 1`` on the log scale (a ratio of geometric means),
    ``(mean_c - mean_b) / |mean_b|`` otherwise. Measured when the detectable relative
    change (80% power) and the interval's harmful end are within the tolerance.

    With ``spec.test == "sequential"`` and an ``evidence`` state the tests are staged
    (:class:`InstanceEvidence`); otherwise they run at every call at ``alpha``.
    """
    counted = _Counted.of(baseline, canary)
    b, c, sizes = counted.b, counted.c, counted.sizes
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

    def test(level: float) -> _Stage:
        return _test(spec, b, c, counted.names, level, log=counted.log)

    if spec.test == "sequential" and evidence is not None:
        decided = evidence.decide(np.concatenate((baseline.counts, canary.counts)), alpha, test)
        if decided is None:
            reason = (
                f"{spec.name}: waiting for every instance to reach"
                f" {MIN_SAMPLES_PER_INSTANCE} samples before the first test"
            )
            return _result(spec, "nodata", sizes, reason, detail, measured=False)
        detail["stage"] = evidence.stage
    else:
        decided = test(alpha)
    return _judged(spec, counted, decided, detail)


def _judged(
    spec: MetricSpec, counted: _Counted, decided: _Stage, detail: dict[str, DetailValue]
) -> MetricResult:
    """The result of a decided look: outcome, measured, the numbers and the reason."""
    log, b = counted.log, counted.b

    def relative(delta: float) -> float:
        return _relative(delta, decided.mean_b, log=log)

    tol = spec.tolerance
    rel = relative(decided.mean_c - decided.mean_b)
    outlier = decided.outlier
    failed = decided.failed or (outlier is not None and outlier.failed)
    shown = shown_within(spec.direction, decided.low, decided.high, tol)
    # Every instance must count before promoting: one still below the minimum may be the
    # bad one.
    waiting = counted.waiting
    measured = failed or (decided.mde <= tol and shown and not waiting)
    detail.update(
        {
            "scale": "log" if log else "raw",
            "mean_baseline": decided.mean_b,
            "mean_canary": decided.mean_c,
            "relative_change": json_number(rel),
            "instance_spread": math.sqrt(_mean_var(b)[1]),
            "t": json_number((decided.mean_c - decided.mean_b) / decided.se)
            if decided.se > 0
            else 0.0,
            "df": decided.df,
            "p_value": decided.p_value,
            "test": "staged" if "stage" in detail else "fixed",
            "mde": json_number(decided.mde),
            "relative_low": json_number(decided.low),
            "relative_high": json_number(decided.high),
            "instances_waiting": waiting,
        }
    )
    if outlier is not None:
        detail["outlier"] = outlier.name
        detail["outlier_change"] = json_number(outlier.change)
        detail["outlier_p_value"] = outlier.p_value
        if outlier.failed and not decided.failed:
            detail["instance"] = outlier.name
    state = "fail" if decided.failed else "outlier" if failed else "pass" if measured else ""
    if not state:
        state = "waiting" if waiting else "underpowered" if decided.mde > tol else "unshown"
    counts = (int(b.size), int(counted.c.size))
    reason = _describe(spec, state, rel, decided, counts, waiting)
    return _result(
        spec, "fail" if failed else "pass", counted.sizes, reason, detail, measured=measured
    )


def _stage(counts: NDArray[np.float64]) -> int:
    """The stage a look falls in (-1: not yet), from the instances' sample counts.

    Stages count the smallest instance's samples, leaving out stragglers with less than a
    quarter of the median instance's (an idle pod must not hold every test back).
    """
    ordered = sorted(counts.tolist())  # a few instances: cheaper than np.median's wrappers
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    smallest = next(count for count in ordered if count >= 0.25 * median)
    if smallest < MIN_SAMPLES_PER_INSTANCE:
        return -1
    return int(math.log(smallest / MIN_SAMPLES_PER_INSTANCE) / math.log(_STAGE_GROWTH) + 1e-9)


def _mean_var(values: NDArray[np.float64]) -> tuple[float, float]:
    """Mean and sample variance (nan for one value) of a few instance means.

    Through the ufuncs: ``ndarray.mean`` and ``var`` cost more in their Python wrappers
    than in the arithmetic, at every look.
    """
    count = values.size
    mean = float(np.add.reduce(values)) / count
    deviation = values - mean
    ss = float(np.add.reduce(deviation * deviation))
    return mean, (ss / (count - 1) if count > 1 else math.nan)


def _relative(delta: float, mean_b: float, *, log: bool) -> float:
    if log:
        return math.expm1(delta)
    return delta / abs(mean_b) if mean_b else (0.0 if delta == 0 else math.inf)


def _test(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    names: list[str],
    alpha: float,
    *,
    log: bool,
) -> _Stage:
    """Both tests at level ``alpha`` (half each when the canary has instances to single out)."""
    outlier_alpha = alpha * _OUTLIER_SHARE if c.size >= 2 else 0.0
    cohort_alpha = alpha - outlier_alpha
    (mean_b, var_b), (mean_c, var_c) = _mean_var(b), _mean_var(c)
    if c.size >= 2:
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
    tol = spec.tolerance
    rel = _relative(diff, mean_b, log=log)
    side = cohort_alpha if direction != "either" else cohort_alpha / 2
    z_alpha = float(special.ndtri(1 - side))
    t_alpha = float(special.stdtrit(df, 1 - side))
    return _Stage(
        mean_b=mean_b,
        mean_c=mean_c,
        se=se,
        df=df,
        p_value=p_value,
        failed=p_value < cohort_alpha and beyond(direction, rel, tol),
        low=_relative(diff - t_alpha * se, mean_b, log=log),
        high=_relative(diff + t_alpha * se, mean_b, log=log),
        mde=abs(_relative((z_alpha + _POWER_Z) * se, mean_b, log=log)),
        outlier=_outlier(spec, b, c, names, outlier_alpha, log=log) if outlier_alpha else None,
    )


def _outlier(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    names: list[str],
    alpha: float,
    *,
    log: bool,
) -> _Outlier:
    """The canary instance most beyond the baseline's instances, tested at ``alpha``.

    For instance ``i`` the spread between instances is pooled from the baseline's
    instances (around their mean) and the other canary instances (around theirs), with
    ``(k_b - 1) + (k_c - 2)`` degrees of freedom; ``(m_i - mean_b) / (s sqrt(1 + 1/k_b))``
    is then Student's t under "instance i is like the others". Bonferroni over the canary's
    instances; one-sided in the harmful direction (``either``: both sides).
    """
    direction = spec.direction
    k_b, k_c = b.size, c.size
    mean_b = _mean_var(b)[0]
    base = b - mean_b
    deviation = c - _mean_var(c)[0]
    # Each instance's others around their own mean: all of them less its share.
    others_ss = np.maximum(float(deviation @ deviation) - deviation**2 * (k_c / (k_c - 1)), 0.0)
    df = (k_b - 1) + (k_c - 2)
    s = np.sqrt((float(base @ base) + others_ss) / df)
    diff = c - mean_b
    with np.errstate(divide="ignore", invalid="ignore"):
        sure = np.where(diff == 0, 0.0, np.copysign(np.inf, diff))  # no spread at all
        t = np.where(s > 0, diff / (s * math.sqrt(1.0 + 1.0 / k_b)), sure)
    harm = np.abs(t) if direction == "either" else (-t if direction == "decrease" else t)
    sides = 2 if direction == "either" else 1
    p_values = np.minimum(1.0, special.stdtr(df, -harm) * sides * k_c)
    changes = [_relative(float(d), mean_b, log=log) for d in diff]
    failed = [
        bool(p < alpha) and beyond(direction, change, spec.tolerance)
        for p, change in zip(p_values, changes, strict=True)
    ]
    # The first failed instance with the smallest p; with none failed, the smallest p.
    pool = [i for i in range(k_c) if failed[i]] or range(k_c)
    i = min(pool, key=lambda j: float(p_values[j]))
    return _Outlier(names[i], changes[i], float(t[i]), float(p_values[i]), failed[i])


def _describe(
    spec: MetricSpec,
    state: str,
    rel: float,
    decided: _Stage,
    counted: tuple[int, int],
    waiting: int,
) -> str:
    """The reason phrase for one instance-level result."""
    sign = {"increase": "+", "decrease": "-", "either": "\u00b1"}[spec.direction]
    tol = f"{sign}{spec.tolerance:.0%}"
    head = f"{spec.name} {rel:+.1%} per instance ({counted[0]} vs {counted[1]} instances"
    outlier = decided.outlier
    if state == "outlier" and outlier is not None:
        return (
            f"{spec.name} instance {outlier.name} {outlier.change:+.1%} against the"
            f" baseline's {counted[0]} instances (p={outlier.p_value:.2g}), beyond {tol}"
        )
    if state == "fail":
        return f"{head}, p={decided.p_value:.2g}), beyond {tol}"
    if state == "pass":
        return f"{head}), within {tol}"
    if state == "waiting":
        return f"{head}); {waiting} more instance(s) below {MIN_SAMPLES_PER_INSTANCE} samples"
    if state == "unshown":
        return f"{head}), not yet shown within {tol}"
    return (
        f"{spec.name} not measurable yet per instance ({counted[0]} vs {counted[1]} instances):"
        f" detectable change {decided.mde:.0%} > allowed {spec.tolerance:.0%}"
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
