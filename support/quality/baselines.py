"""Reference judges, independent of coalmine, run on the same simulated traffic.

**Kayenta-style** (after Kayenta's NetflixACAJudge with its MannWhitneyClassifier, as
described in statistics.md section 1):

- A look every 60 s over the growing window (everything since the start); nothing
  corrects for the repeated looks, as in Kayenta.
- Inputs. ``errors``: per-minute error-rate points ``bad / total`` per cohort (Kayenta's
  time-series points; a minute without requests is a NaN point and removed,
  ``nanStrategy: remove``). ``latency``: by default the request latencies themselves
  (``--kayenta-latency requests``: every sample since the start, as a repeated
  Mann-Whitney on requests); ``--kayenta-latency minutes`` gives Kayenta's own input
  instead, one point per minute (the minute's mean latency, an ``avg(latency)`` query).
- Per metric: Mann-Whitney U with a two-sided 98% interval for the Hodges-Lehmann shift
  (canary - baseline). The interval is the inversion of the asymptotic, tie-corrected,
  continuity-corrected test, as R's ``wilcox.test(conf.int = TRUE)`` computes it, so
  "lower bound > c" is "``scipy.stats.mannwhitneyu(canary - c, baseline,
  alternative='greater', method='asymptotic')`` has p < 1%". The p-values are computed here
  with numpy and ``scipy.special.ndtr`` (equal to scipy's ``mannwhitneyu`` to 1e-12,
  checked in the tests) because scipy's per-call overhead would dominate the run; on
  whole-millisecond request latencies the Hodges-Lehmann estimate and U come exactly from
  the histogram of all pairwise differences (an FFT convolution of the two cohorts'
  value counts), never materialising the n x m differences.
- **High** when the interval's lower bound exceeds ``0.25 x |HL|`` (the classifier's
  ``tolerance``) and the mean ratio canary / baseline is at least ``allowedIncrease =
  1.0`` (any significant increase fails). Both metrics have direction ``increase``, so Low
  never fails. Fewer than 2 values per cohort, or every value tied: no verdict on the
  metric (not a failure).
- The harness runs this judge twice on every run: with Kayenta's classifier tolerance of
  0.25 (column "Kayenta-style"; ``--kayenta-tolerance`` changes it) and with tolerance 0
  (column "Kayenta, tolerance 0"), where any significant increase at the 98% level fails:
  a plain repeated Mann-Whitney test. The tolerance matters: it asks for roughly z > 3.1
  instead of z > 2.33 at each look, which is what keeps Kayenta's own false alarms low.
- Any High rolls back at that look: errors is critical (zero score), and a failing latency
  metric alone leaves a score of 50, below the marginal 75. Otherwise the canary is
  promoted at the end of its lifetime (default ``max_duration``, 60 min): Kayenta has no
  notion of "measured", so it cannot stop earlier and never says inconclusive.

**Flagger-style** (Flagger's built-in checks with its documented example thresholds):

- Every 60 s, on the last minute of canary traffic only: ``request-success-rate`` must be
  at least 99% (error rate <= 1%) and ``request-duration`` (the p99 latency of the minute,
  computed exactly from the samples rather than from histogram buckets) at most 500 ms,
  an absolute threshold. ``--flagger-latency x1.2`` switches to a relative check instead:
  canary p99 at most 1.2 x the baseline's p99 of the same minute.
- A minute with any failing check is one failed check; the canary is rolled back when
  the failed checks reach ``threshold = 5`` (they are not reset by passing checks) and
  promoted once ``min_duration`` (10 checks) has passed with fewer failures, like a
  Flagger analysis of 10 iterations. A minute without canary samples is not checked.

**Oracle SPRT** (error scenarios only): the sequential probability ratio test of the
canary's true error-rate ratio ``r1`` (the scenario's ``error_factor``, known to the
oracle) against 1, on the same 10 s request counts. In a step where the canary served a
share ``rho`` of both cohorts' requests, each bad event is the canary's with probability
``theta(r) = rho r / (rho r + 1 - rho)``; the step adds ``bad_c log(theta(r1) / theta(1))
+ bad_b log((1 - theta(r1)) / (1 - theta(1)))`` to the log likelihood ratio, which is
``bad_c log r1 - (bad_b + bad_c) log(1 + rho (r1 - 1))``. It rolls back at the end of the
first step where the ratio reaches ``1 / alpha`` (alpha: the profile's share per metric,
``Profile.metric_alpha``) and never promotes. Knowing ``r1`` makes it close to the fastest
a test with that false-rollback rate can be, a yardstick for the judges that do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import signal, special

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import NDArray

    from support.quality.simulator import MinuteData


@dataclass(frozen=True, slots=True)
class Outcome:
    """A judge's final decision on one run, when it was made, and what failed."""

    decision: str
    time: float
    failed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KayentaConfig:
    """The Kayenta-style judge's settings."""

    lifetime: float = 3600.0
    interval: float = 60.0
    confidence: float = 0.98
    tolerance: float = 0.25
    allowed_increase: float = 1.0
    latency: Literal["requests", "minutes"] = "requests"


@dataclass(frozen=True, slots=True)
class FlaggerConfig:
    """The Flagger-style judge's settings."""

    promote_after: float = 600.0
    interval: float = 60.0
    min_success_rate: float = 0.99
    max_p99_ms: float = 500.0
    relative_p99: float | None = None
    threshold: int = 5


def error_points(
    minutes: Sequence[MinuteData],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-minute error rates (baseline, canary); NaN where a minute had no requests."""

    def rate(bad: int, total: int) -> float:
        return bad / total if total else math.nan

    return (
        np.array([rate(m.baseline_bad, m.baseline_total) for m in minutes]),
        np.array([rate(m.canary_bad, m.canary_total) for m in minutes]),
    )


def latency_points(
    minutes: Sequence[MinuteData],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-minute mean latencies (baseline, canary); NaN where a minute had no samples."""

    def mean(x: NDArray[np.float64]) -> float:
        return float(x.mean()) if len(x) else math.nan

    return (
        np.array([mean(m.baseline_latency) for m in minutes]),
        np.array([mean(m.canary_latency) for m in minutes]),
    )


def mann_whitney_greater(x: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    """One-sided p-value that ``x`` tends to exceed ``y``; NaN when every value is tied.

    The asymptotic Mann-Whitney U test with tie-corrected variance and continuity
    correction: the number ``scipy.stats.mannwhitneyu(x, y, alternative="greater",
    method="asymptotic")`` gives, without its per-call overhead.
    """
    diff = x[:, None] - y[None, :]
    u = float(np.count_nonzero(diff > 0)) + 0.5 * float(np.count_nonzero(diff == 0))
    _, ties = np.unique(np.concatenate((x, y)), return_counts=True)
    return _u_p_value(u, len(x), len(y), ties)


def _u_p_value(u: float, n1: int, n2: int, ties: NDArray[np.int64]) -> float:
    n = n1 + n2
    t = ties.astype(np.float64)
    tie_term = float((t**3 - t).sum()) / (n * (n - 1))
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if variance <= 0:
        return math.nan
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return float(special.ndtr(-z))


def _high(mean_b: float, mean_c: float, p: float, config: KayentaConfig) -> bool:
    ratio = mean_c / mean_b if mean_b > 0 else (math.inf if mean_c > 0 else 1.0)
    return ratio >= config.allowed_increase and p < (1.0 - config.confidence) / 2.0


def points_shift_test(
    baseline: NDArray[np.float64], canary: NDArray[np.float64], tolerance: float
) -> tuple[float, float]:
    """Hodges-Lehmann shift (canary - baseline) and the p-value that it exceeds
    ``tolerance x |shift|``, i.e. that the interval's lower bound lies above that."""
    shift = float(np.median(np.subtract.outer(canary, baseline)))
    return shift, mann_whitney_greater(canary - tolerance * abs(shift), baseline)


def counts_shift_test(
    baseline: NDArray[np.int64], canary: NDArray[np.int64], tolerance: float
) -> tuple[float, float]:
    """``points_shift_test`` for whole-number samples given as value counts.

    ``baseline[v]`` is how many baseline samples equal ``v`` (0 <= v < len), the same
    length for both. Exact, in O(len log len) whatever the sample sizes.
    """
    n, m = int(baseline.sum()), int(canary.sum())
    size = len(baseline)
    # diff[i]: pairs with canary - baseline == i - (size - 1).
    diff = np.rint(signal.fftconvolve(canary.astype(np.float64), baseline[::-1].astype(np.float64)))
    cum = np.cumsum(diff)
    total = n * m
    lo = int(np.searchsorted(cum, (total - 1) // 2, side="right"))
    hi = int(np.searchsorted(cum, total // 2, side="right"))
    shift = (lo + hi) / 2.0 - (size - 1)  # the median of all pairwise differences
    cut = tolerance * abs(shift)
    above = math.floor(cut) + size  # first index with a difference > cut
    u = float(total - cum[above - 1])
    if cut == math.floor(cut):
        u += 0.5 * float(diff[int(cut) + size - 1])
        k = int(cut)  # canary - k is whole: values tie across the cohorts
        combined = np.zeros(size + k, dtype=np.int64)
        combined[k:] += baseline
        combined[:size] += canary
        ties = combined[combined > 0]
    else:
        ties = np.concatenate((baseline[baseline > 0], canary[canary > 0]))
    return shift, _u_p_value(u, m, n, ties)


def points_high(
    baseline: NDArray[np.float64], canary: NDArray[np.float64], config: KayentaConfig
) -> bool:
    """Kayenta's classification of two samples (points): significantly higher?"""
    b = baseline[~np.isnan(baseline)]
    c = canary[~np.isnan(canary)]
    if len(b) < 2 or len(c) < 2:
        return False
    _, p = points_shift_test(b, c, config.tolerance)
    return _high(float(b.mean()), float(c.mean()), p, config)  # NaN p compares False


def counts_high(
    baseline: NDArray[np.int64], canary: NDArray[np.int64], config: KayentaConfig
) -> bool:
    """The same classification for whole-number samples given as value counts."""
    n, m = int(baseline.sum()), int(canary.sum())
    if n < 2 or m < 2:
        return False
    values = np.arange(len(baseline), dtype=np.float64)
    _, p = counts_shift_test(baseline, canary, config.tolerance)
    # Whole-number sums, exact in floats (no BLAS dot: its threads would compete).
    mean_b, mean_c = float((values * baseline).sum()) / n, float((values * canary).sum()) / m
    return _high(mean_b, mean_c, p, config)


def kayenta_judge(minutes: Sequence[MinuteData], config: KayentaConfig) -> Outcome:
    """Judge a run as a Kayenta canary analysis with a look every ``interval``."""
    per = max(1, round(config.interval / 60.0))
    looks = min(len(minutes), round(config.lifetime / 60.0)) // per
    errors_b, errors_c = error_points(minutes)
    if config.latency == "minutes":
        points_b, points_c = latency_points(minutes)
    else:
        size = 1 + int(
            max(
                max(m.baseline_latency.max(initial=0), m.canary_latency.max(initial=0))
                for m in minutes
            )
        )
        # Every sample since the start, as value counts, brought up to date at each look.
        hist_b = np.zeros(size, dtype=np.int64)
        hist_c = np.zeros(size, dtype=np.int64)
    for look in range(1, looks + 1):
        upto = look * per
        failed = []
        if config.latency == "minutes":
            if points_high(points_b[:upto], points_c[:upto], config):
                failed.append("latency")
        else:
            for m in minutes[upto - per : upto]:
                hist_b += _counts(m.baseline_latency, size)
                hist_c += _counts(m.canary_latency, size)
            if counts_high(hist_b, hist_c, config):
                failed.append("latency")
        if points_high(errors_b[:upto], errors_c[:upto], config):
            failed.append("errors")
        if failed:
            return Outcome("rollback", upto * 60.0, tuple(failed))
    return Outcome("promote", looks * per * 60.0)


def _counts(values: NDArray[np.float64], size: int) -> NDArray[np.int64]:
    whole = values.astype(np.int64)
    if len(values) and not (np.array_equal(whole, values) and whole.min() >= 0):
        raise ValueError("request latencies must be whole, non-negative numbers")
    return np.bincount(whole, minlength=size)


def flagger_judge(minutes: Sequence[MinuteData], config: FlaggerConfig) -> Outcome:
    """Judge a run as a Flagger analysis: threshold checks on the last minute each time."""
    per = max(1, round(config.interval / 60.0))
    failures = 0
    failed_metrics: set[str] = set()
    checks = len(minutes) // per
    for check in range(1, checks + 1):
        window = minutes[(check - 1) * per : check * per]
        canary_total = sum(m.canary_total for m in window)
        canary_bad = sum(m.canary_bad for m in window)
        latency = np.concatenate([m.canary_latency for m in window])
        failing = []
        if canary_total and 1.0 - canary_bad / canary_total < config.min_success_rate:
            failing.append("errors")
        if len(latency):
            p99 = float(np.percentile(latency, 99))
            if config.relative_p99 is None:
                limit = config.max_p99_ms
            else:
                base = np.concatenate([m.baseline_latency for m in window])
                base_p99 = float(np.percentile(base, 99)) if len(base) else math.inf
                limit = config.relative_p99 * base_p99
            if p99 > limit:
                failing.append("latency")
        if failing:
            failures += 1
            failed_metrics.update(failing)
        now = check * per * 60.0
        if failures >= config.threshold:
            return Outcome("rollback", now, tuple(sorted(failed_metrics)))
        if now >= config.promote_after:
            return Outcome("promote", now)
    return Outcome("inconclusive", checks * per * 60.0)


def oracle_log_lr(
    baseline_total: NDArray[np.int64],
    baseline_bad: NDArray[np.int64],
    canary_total: NDArray[np.int64],
    canary_bad: NDArray[np.int64],
    ratio: float,
) -> NDArray[np.float64]:
    """The oracle SPRT's cumulative log likelihood ratio (``ratio`` against 1) per step.

    The arguments hold each step's counts, both cohorts' instances summed. A step without
    requests adds nothing, and neither does one where a single cohort served every
    request (its bad events are that cohort's under both hypotheses).
    """
    both = (baseline_total + canary_total).astype(np.float64)
    rho = np.divide(canary_total, both, out=np.zeros_like(both), where=both > 0)
    bad = (baseline_bad + canary_bad).astype(np.float64)
    step = canary_bad * math.log(ratio) - bad * np.log1p(rho * (ratio - 1.0))
    return np.cumsum(step)


def oracle_sprt(
    baseline_total: NDArray[np.int64],
    baseline_bad: NDArray[np.int64],
    canary_total: NDArray[np.int64],
    canary_bad: NDArray[np.int64],
    ratio: float,
    alpha: float,
    step: float,
) -> Outcome:
    """The oracle SPRT's decision: rollback at the end of the step where the likelihood
    ratio first reaches ``1 / alpha``, else inconclusive at the end of the last step."""
    llr = oracle_log_lr(baseline_total, baseline_bad, canary_total, canary_bad, ratio)
    crossed = np.flatnonzero(llr >= math.log(1.0 / alpha))
    if len(crossed):
        return Outcome("rollback", (int(crossed[0]) + 1) * step, ("errors",))
    return Outcome("inconclusive", len(llr) * step)
