"""Ratio metrics (errors, 5xx, slow requests): SLO burn rate of the canary.

Two exact tests guard a ratio metric (statistics.md section 5), each at ``alpha / 2``
(Bonferroni):

* absolute: is the canary's bad-event ratio significantly above the fast-burn level
  ``fast_burn * (1 - objective)``? A canary burning its budget that fast must stop; being a
  test, not a threshold, it ignores one error in a small cohort. It is not applied while the
  baseline burns at that level too: a shared outage is not the canary's fault, and only the
  relative test can then fail the canary;
* relative: conditional on the bad events of both cohorts, is the canary's rate more than
  ``1 + allowed_change`` times the baseline's? This catches regressions far below the
  fast-burn level, compares against the same period (not a before/after), and stays exact
  whatever the traffic split.

It runs on every message of a critical metric, so it only calls scalar special functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scipy import special

from coalmine.analyzers.result import DetailValue, MetricResult, Outcome

if TYPE_CHECKING:
    from coalmine.config.models import MetricSpec

__all__ = ["analyze_ratio"]

ANALYZER = "burn_rate"

_UNSEEN = (1.0, math.inf)
"""Rate ratio when the baseline has no bad events: 1 if the canary has none either."""


def analyze_ratio(
    spec: MetricSpec,
    baseline_good: int,
    baseline_total: int,
    canary_good: int,
    canary_total: int,
    alpha: float,
) -> MetricResult:
    """Judge one ratio metric from the good and total event counts of both cohorts.

    Fails iff either test rejects at ``alpha / 2``: the exact binomial test of the canary's
    bad count against ``p0 = min(1, fast_burn * budget)``, or the conditional binomial test
    of the canary/baseline rate ratio against ``r0 = 1 + tolerance`` (which also needs the
    observed ratio above ``r0``). Given ``K`` bad events in total, each is the canary's with
    probability ``theta = rho r / (rho r + 1 - rho)``, ``rho`` the canary's share of events.

    The metric is *measured* when the one-sided ``1 - alpha`` Clopper-Pearson upper bound of
    the canary's bad ratio is within the budget, or the matching upper bound of the rate
    ratio (from the bound on ``theta``) is within ``r0``; a failing metric is measured.

    Args:
        spec: the metric's profile entry (needs ``objective``).
        baseline_good: good events in the baseline.
        baseline_total: all events in the baseline.
        canary_good: good events in the canary.
        canary_total: all events in the canary.
        alpha: overall significance level, in (0, 0.5).

    Raises:
        ValueError: ``spec`` has no objective or ``alpha`` is outside (0, 0.5).
    """
    if spec.objective is None:
        raise ValueError(f"{spec.name}: a ratio metric needs an objective")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    # int() also turns numpy counts into plain ints, which the detail must hold.
    counts = (int(baseline_good), int(baseline_total), int(canary_good), int(canary_total))
    baseline_good, baseline_total, canary_good, canary_total = counts
    if any(n < 0 for n in counts) or baseline_good > baseline_total or canary_good > canary_total:
        reason = f"{spec.name}: inconsistent counts (good must lie within 0..total)"
        return _result(spec, "error", counts, measured=False, reason=reason)
    if canary_total == 0:
        reason = f"{spec.name}: no canary events yet"
        return _result(spec, "nodata", counts, measured=False, reason=reason)

    # 1 - 0.999 is 0.0010000000000000009 in binary; 12 significant digits give back 0.001.
    budget = float(f"{1.0 - spec.objective:.12g}")
    tol = spec.tolerance
    bad_b = baseline_total - baseline_good
    bad_c = canary_total - canary_good
    ratio_c = bad_c / canary_total
    ratio_b = bad_b / baseline_total if baseline_total else None

    # Absolute guard: P[X >= bad_c], X ~ Binom(canary_total, p0).
    fast_level = min(1.0, spec.fast_burn * budget)
    p_absolute = _binom_at_least(bad_c, canary_total, fast_level)
    shared_outage = ratio_b is not None and ratio_b >= fast_level
    absolute_fails = p_absolute < alpha / 2.0 and not shared_outage
    canary_upper = _clopper_pearson_upper(bad_c, canary_total, alpha)
    relative = (
        _RelativeTest.run(bad_c, canary_total, bad_b, baseline_total, 1.0 + tol, alpha)
        if baseline_total
        else None
    )
    relative_fails = relative is not None and relative.fails
    failed = absolute_fails or relative_fails
    measured = (
        failed
        or canary_upper <= budget
        or (relative is not None and relative.ratio_upper <= relative.r0)
    )

    burn_c = ratio_c / budget
    tails: list[str] = []
    if absolute_fails:
        tails.append(f"above the {spec.fast_burn:g}x fast-burn guard")
    elif shared_outage:
        tails.append(f"baseline burns at {spec.fast_burn:g}x too (shared outage)")
    if relative is not None and relative.fails:
        tails.append(relative.describe())
    if not measured:
        tails.append(f"not measurable yet: error ratio could be {canary_upper:.2%}")
    reason = _reason(spec.name, ratio_c, ratio_b, budget, tails)

    detail: dict[str, DetailValue] = {
        "bad_ratio_baseline": ratio_b,
        "bad_ratio_canary": ratio_c,
        "burn_baseline": None if ratio_b is None else ratio_b / budget,
        "burn_canary": burn_c,
        "objective": spec.objective,
        "budget": budget,
        "fast_burn": spec.fast_burn,
        "p_absolute": p_absolute,
        "shared_outage": shared_outage,
        "p_relative": None if relative is None else relative.p_value,
        "rate_ratio": None if relative is None else _json(relative.ratio),
        "rate_ratio_upper": None if relative is None else _json(relative.ratio_upper),
        "bad_ratio_canary_upper": canary_upper,
        "allowed_change": tol,
    }
    outcome: Outcome = "fail" if failed else "pass"
    return _result(spec, outcome, counts, measured=measured, reason=reason, extra=detail)


def _reason(
    name: str, ratio_c: float, ratio_b: float | None, budget: float, tails: list[str]
) -> str:
    burn_c = ratio_c / budget
    if ratio_b is None:
        head = f"{name}: canary error ratio {ratio_c:.2%} (burn {burn_c:.1f}x)"
    else:
        head = (
            f"{name}: canary error ratio {ratio_c:.2%} vs baseline {ratio_b:.2%}"
            f" (burn {burn_c:.1f}x vs {ratio_b / budget:.1f}x)"
        )
    return head + (", " + "; ".join(tails) if tails else "")


@dataclass(frozen=True, slots=True)
class _RelativeTest:
    """Canary against baseline, conditional on the bad events of both.

    Given ``K`` bad events, each is the canary's with probability
    ``theta(r) = rho r / (rho r + 1 - rho)``, ``rho`` the canary's share of all events and
    ``r`` the canary/baseline rate ratio, so the test is exact for any traffic split.
    """

    p_value: float
    ratio: float
    ratio_upper: float
    r0: float
    fails: bool

    @classmethod
    def run(
        cls, bad_c: int, total_c: int, bad_b: int, total_b: int, r0: float, alpha: float
    ) -> _RelativeTest:
        """Test H0: rate ratio <= r0 at ``alpha / 2``; bound the ratio at ``1 - alpha``."""
        rho = total_c / (total_c + total_b)
        theta0 = rho * r0 / (rho * r0 + 1.0 - rho)
        bad = bad_c + bad_b
        p_value = _binom_at_least(bad_c, bad, theta0)
        ratio = (bad_c / total_c) / (bad_b / total_b) if bad_b else _UNSEEN[bad_c > 0]
        theta_upper = _clopper_pearson_upper(bad_c, bad, alpha)
        ratio_upper = (
            theta_upper * (1.0 - rho) / (rho * (1.0 - theta_upper))
            if theta_upper < 1.0
            else math.inf
        )
        fails = p_value < alpha / 2.0 and ratio > r0
        return cls(p_value, ratio, ratio_upper, r0, fails)

    def describe(self) -> str:
        """How far beyond the allowed ratio the canary is."""
        if math.isinf(self.ratio):
            return f"errors while the baseline has none, beyond {self.r0:g}x"
        return f"{self.ratio:.1f}x the baseline, beyond {self.r0:g}x"


def _result(
    spec: MetricSpec,
    outcome: Outcome,
    counts: tuple[int, int, int, int],
    *,
    measured: bool,
    reason: str,
    extra: dict[str, DetailValue] | None = None,
) -> MetricResult:
    """The result, with both cohorts' counts leading the detail."""
    baseline_good, baseline_total, canary_good, canary_total = counts
    detail: dict[str, DetailValue] = {
        "baseline_good": baseline_good,
        "baseline_total": baseline_total,
        "baseline_bad": baseline_total - baseline_good,
        "canary_good": canary_good,
        "canary_total": canary_total,
        "canary_bad": canary_total - canary_good,
        **(extra or {}),
    }
    return MetricResult(
        metric=spec.name,
        analyzer=ANALYZER,
        outcome=outcome,
        critical=spec.critical,
        measured=measured,
        n_baseline=baseline_total,
        n_canary=canary_total,
        reason=reason,
        detail=detail,
    )


def _binom_at_least(k: int, n: int, p: float) -> float:
    """``P[X >= k]`` for ``X ~ Binom(n, p)``: the regularised incomplete beta ``I_p(k, n-k+1)``."""
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    return float(special.betainc(k, n - k + 1, p))


def _clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` upper confidence bound of a binomial proportion (1 if n = 0)."""
    if k >= n:
        return 1.0
    return float(special.betaincinv(k + 1, n - k, 1.0 - alpha))


def _json(x: float) -> DetailValue:
    """Detail values must survive JSON: NaN becomes None, infinities become strings."""
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x
