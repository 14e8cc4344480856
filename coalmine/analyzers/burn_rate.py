"""Ratio metrics (errors, 5xx, slow requests): SLO burn rate of the canary.

Two kinds of test guard a ratio metric (statistics.md section 5), sharing its ``alpha``
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

A critical metric is also checked on its canary messages between judgements, so this only
calls scalar special functions.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scipy import special

from coalmine.analyzers.result import DetailValue, MetricResult, Outcome, json_number
from coalmine.analyzers.sequential import RateRatioEProcess, binomial_guard_log_e

if TYPE_CHECKING:
    from coalmine.analyzers.base import CohortData, Look
    from coalmine.config.models import MetricSpec

__all__ = [
    "BurnWindow",
    "RatioAnalyzer",
    "RatioEvidence",
    "analyze_ratio",
    "error_budget",
    "ratio_fails",
]

ANALYZER = "burn_rate"

RELATIVE_SHARE = 0.875
"""Share of a ratio metric's alpha given to the test against the baseline; the burn-rate
rules share the rest. Regressions relative to the baseline are the common case; a burn
fast enough to page is usually so clear that a smaller share costs it little time."""

_UNSEEN = (1.0, math.inf)
"""Rate ratio when the baseline has no bad events: 1 if the canary has none either."""


@dataclass(slots=True)
class RatioEvidence:
    """What a ratio metric remembers between looks (sequential test and burn windows).

    ``observe`` takes each message's counts with its event time; the analyzer reads the
    rate-ratio e-process, the running maximum of each guard's e-value and the cumulative
    counts at past times (for the burn-rate windows).
    """

    rate: RateRatioEProcess
    guard_max_log_e: dict[str, float] = field(default_factory=dict)
    past: bool = False
    """The baseline is a reference window before the change: see :func:`_relative_e_fails`."""
    times: list[float] = field(default_factory=list)
    cumulative: list[tuple[int, int, int, int]] = field(default_factory=list)

    @classmethod
    def for_spec(cls, spec: MetricSpec) -> RatioEvidence:
        """Evidence against "no change", or against the tolerance when ``null`` says so."""
        r0 = 1.0 + spec.tolerance if spec.null == "tolerance" else 1.0
        return cls(rate=RateRatioEProcess(r0=r0))

    def observe(self, time: float, bad_c: int, total_c: int, bad_b: int, total_b: int) -> None:
        """Add one message's counts (one cohort's are zero) at event time ``time``."""
        self.rate.add(bad_c, total_c, bad_b, total_b)
        last = self.cumulative[-1] if self.cumulative else (0, 0, 0, 0)
        now = (last[0] + bad_c, last[1] + total_c, last[2] + bad_b, last[3] + total_b)
        if self.times and time <= self.times[-1]:
            self.cumulative[-1] = now  # same or earlier time: fold into the latest point
        else:
            self.times.append(time)
            self.cumulative.append(now)

    def window(self, since: float) -> tuple[int, int, int, int]:
        """Counts (bad_c, total_c, bad_b, total_b) observed after event time ``since``."""
        if not self.cumulative:
            return (0, 0, 0, 0)
        index = bisect.bisect_right(self.times, since) - 1
        start = self.cumulative[index] if index >= 0 else (0, 0, 0, 0)
        end = self.cumulative[-1]
        return (end[0] - start[0], end[1] - start[1], end[2] - start[2], end[3] - start[3])


@dataclass(frozen=True, slots=True)
class BurnWindow:
    """Where a look stands in the canary's life, for the burn-rate windows and budget.

    Attributes:
        now: event time of the look.
        duration: the canary's planned length (``max_duration``): the burn-rate windows
            are scaled to it as the SRE workbook's 1 h / 6 h windows are to 30 days.
        elapsed: event time since the deployment started.
        canary_share: fraction of the service's traffic the canary gets, if announced.
        period: the SLO period the error budget belongs to.
    """

    now: float
    duration: float
    elapsed: float
    canary_share: float | None = None
    period: float = 30 * 86400.0


def analyze_ratio(  # noqa: PLR0913 - two cohorts' counts are the natural inputs
    spec: MetricSpec,
    baseline_good: int,
    baseline_total: int,
    canary_good: int,
    canary_total: int,
    alpha: float,
    *,
    evidence: RatioEvidence | None = None,
    window: BurnWindow | None = None,
) -> MetricResult:
    """Judge one ratio metric from the good and total event counts of both cohorts.

    Two questions; the first gets ``RELATIVE_SHARE`` (7/8) of ``alpha``, the burn-rate
    rules share the rest:

    * **relative**: is the canary's bad-event rate more than the baseline's? Sequentially
      (``spec.test == "sequential"`` and an ``evidence`` state kept across looks) by the
      rate-ratio e-process; otherwise by the exact conditional binomial test of
      ``r <= 1 + tolerance``. A failure also needs the observed ratio beyond
      ``1 + tolerance``.
    * **absolute** (burn rate): is the canary burning its error budget at a paging rate?
      Two multiwindow rules scaled to the canary's ``duration`` (the SRE workbook's 1 h/5 min
      at ``fast_burn`` and 6 h/30 min at ``slow_burn``, over 30 days, become
      ``duration/6`` and ``duration`` long windows with short windows 1/12 of those). A rule
      fires when the canary's bad ratio is significantly above ``factor x budget`` (an
      e-value sequentially, the exact binomial test otherwise) and the burn rate over both
      of its windows is at least ``factor``. Not while the baseline burns at that rate too
      (a shared outage). The fixed mode checks only the fast rule, over all data.

    The metric is *measured* when the one-sided ``1 - alpha`` Clopper-Pearson upper bound of
    the canary's bad ratio is within the budget, or the matching upper bound of the rate
    ratio is within ``1 + tolerance``; a failing metric is measured.

    Args:
        spec: the metric's profile entry (needs ``objective``).
        baseline_good: good events in the baseline.
        baseline_total: all events in the baseline.
        canary_good: good events in the canary.
        canary_total: all events in the canary.
        alpha: overall significance level, in (0, 0.5).
        evidence: the metric's sequential state, kept across looks.
        window: the look's place in the canary's life (burn windows, budget spent).

    Raises:
        ValueError: ``spec`` has no objective or ``alpha`` is outside (0, 0.5).
    """
    counts = _checked_counts(spec, alpha, baseline_good, baseline_total, canary_good, canary_total)
    unusable = _unusable(spec, counts)
    if unusable is not None:
        return _result(spec, unusable[0], counts, measured=False, reason=unusable[1])
    sequential = spec.test == "sequential" and evidence is not None
    found = _gather(spec, counts, alpha, evidence if sequential else None, window)
    outcome: Outcome = "fail" if found.failed else "pass"
    reason, detail = _explain(spec, found), _detail(spec, found, window)
    return _result(spec, outcome, counts, measured=found.measured, reason=reason, extra=detail)


@dataclass(frozen=True, slots=True)
class _Findings:
    """Both questions' answers at one look, and the numbers a verdict quotes."""

    counts: tuple[int, int, int, int]
    alpha: float
    budget: float
    relative: _RelativeTest | None
    """The exact conditional test (None while the baseline has no events): its bound."""
    relative_fails: bool
    relative_p: float | None
    rules: list[_BurnRule]
    canary_upper: float
    """Upper confidence bound of the canary's bad-event ratio."""
    evidence: RatioEvidence | None
    """The sequential state, when the questions were asked sequentially."""

    @property
    def fired(self) -> list[_BurnRule]:
        """The burn-rate rules that fire."""
        return [rule for rule in self.rules if rule.fires]

    @property
    def failed(self) -> bool:
        """Either question fails the canary."""
        return bool(self.fired) or self.relative_fails

    @property
    def measured(self) -> bool:
        """Failed, or shown within the budget or within the allowed rate ratio."""
        relative = self.relative
        return (
            self.failed
            or self.canary_upper <= self.budget
            or (relative is not None and relative.ratio_upper <= relative.r0)
        )

    @property
    def shared_outage(self) -> bool:
        """The baseline burns at a rule's rate too."""
        return any(rule.shared_outage for rule in self.rules)

    @property
    def ratios(self) -> tuple[float, float | None]:
        """Bad-event ratios of the canary and of the baseline (None without events)."""
        baseline_good, baseline_total, canary_good, canary_total = self.counts
        ratio_b = (baseline_total - baseline_good) / baseline_total if baseline_total else None
        return (canary_total - canary_good) / canary_total, ratio_b


def _gather(
    spec: MetricSpec,
    counts: tuple[int, int, int, int],
    alpha: float,
    evidence: RatioEvidence | None,
    window: BurnWindow | None,
) -> _Findings:
    """Ask both questions; sequentially (updating ``evidence``) when it is given."""
    baseline_good, baseline_total, canary_good, canary_total = counts
    bad_b = baseline_total - baseline_good
    bad_c = canary_total - canary_good
    relative = (
        _RelativeTest.run(bad_c, canary_total, bad_b, baseline_total, 1.0 + spec.tolerance, alpha)
        if baseline_total
        else None
    )
    relative_p: float | None
    if evidence is not None:
        relative_fails = _relative_e_fails(spec, counts, alpha, evidence)
        relative_p = evidence.rate.p_value
    else:
        relative_p = None if relative is None else relative.p_value
        relative_fails = relative is not None and relative.fails
    budget = error_budget(spec)
    return _Findings(
        counts=counts,
        alpha=alpha,
        budget=budget,
        relative=relative,
        relative_fails=relative_fails,
        relative_p=relative_p,
        rules=_burn_rules(spec, budget, counts, alpha, evidence, window),
        canary_upper=_clopper_pearson_upper(bad_c, canary_total, alpha),
        evidence=evidence,
    )


def _explain(spec: MetricSpec, found: _Findings) -> str:
    """The reason phrase: the ratios, then what failed or why it is not measured yet."""
    tails: list[str] = [rule.describe() for rule in found.fired]
    if not found.fired and found.shared_outage:
        tails.append(f"baseline burns at {spec.fast_burn:g}x too (shared outage)")
    if found.relative_fails and found.relative is not None:
        tails.append(found.relative.describe())
    if not found.measured:
        tails.append(f"not measurable yet: error ratio could be {found.canary_upper:.2%}")
    ratio_c, ratio_b = found.ratios
    return _reason(spec.name, ratio_c, ratio_b, found.budget, tails)


def _detail(
    spec: MetricSpec, found: _Findings, window: BurnWindow | None
) -> dict[str, DetailValue]:
    """The numbers behind the outcome, after both cohorts' counts."""
    baseline_good, baseline_total, canary_good, canary_total = found.counts
    budget, relative, evidence = found.budget, found.relative, found.evidence
    ratio_c, ratio_b = found.ratios
    burn_c = ratio_c / budget
    burn_b = None if ratio_b is None else ratio_b / budget
    detectable = _detectable_ratio(
        canary_total - canary_good,
        canary_total,
        baseline_total - baseline_good,
        baseline_total,
        budget,
        found.alpha,
    )
    return {
        "bad_ratio_baseline": ratio_b,
        "bad_ratio_canary": ratio_c,
        "burn_baseline": burn_b,
        "burn_canary": burn_c,
        "objective": spec.objective,
        "budget": budget,
        "test": "fixed" if evidence is None else "sequential",
        "null": spec.null,
        "p_relative": found.relative_p,
        "e_relative": None if evidence is None else _e(evidence.rate.max_log_e),
        "rate_ratio": None if relative is None else json_number(relative.ratio),
        "rate_ratio_upper": None if relative is None else json_number(relative.ratio_upper),
        "detectable_ratio": json_number(detectable),
        "bad_ratio_canary_upper": found.canary_upper,
        "within_budget": found.canary_upper <= budget,
        "allowed_change": spec.tolerance,
        "shared_outage": found.shared_outage,
        "p_absolute": min(rule.p_value for rule in found.rules),
        **{key: value for rule in found.rules for key, value in rule.detail().items()},
        **_budget_spent(burn_c, burn_b, window),
    }


def ratio_fails(  # noqa: PLR0913 - analyze_ratio's arguments
    spec: MetricSpec,
    baseline_good: int,
    baseline_total: int,
    canary_good: int,
    canary_total: int,
    alpha: float,
    *,
    evidence: RatioEvidence | None = None,
    window: BurnWindow | None = None,
) -> bool:
    """Would :func:`analyze_ratio` fail the metric on these counts?

    The same decision (and the same updates of ``evidence``) without the verdict's detail:
    what a critical metric's check between two judgements needs.
    """
    counts = _checked_counts(spec, alpha, baseline_good, baseline_total, canary_good, canary_total)
    baseline_good, baseline_total, canary_good, canary_total = counts
    if _unusable(spec, counts) is not None:
        return False
    sequential = spec.test == "sequential" and evidence is not None
    if sequential and evidence is not None:
        relative_fails = _relative_e_fails(spec, counts, alpha, evidence)
    else:
        relative_fails = (
            baseline_total > 0
            and _RelativeTest.run(
                canary_total - canary_good,
                canary_total,
                baseline_total - baseline_good,
                baseline_total,
                1.0 + spec.tolerance,
                alpha,
            ).fails
        )
    budget = error_budget(spec)
    if (
        sequential
        and evidence is not None
        and window is not None
        and not _guards_may_fire(spec, budget, counts, alpha, evidence)
    ):
        return relative_fails
    rules = _burn_rules(spec, budget, counts, alpha, evidence if sequential else None, window)
    return relative_fails or any(rule.fires for rule in rules)


def _guards_may_fire(
    spec: MetricSpec,
    budget: float,
    counts: tuple[int, int, int, int],
    alpha: float,
    evidence: RatioEvidence,
) -> bool:
    """Could a sequential burn-rate rule fire now? False only when none can.

    A rule fires only when its guard's running maximum reaches the threshold. At or below
    its level the canary's ratio gives an e-value below 1, which cannot raise the maximum;
    so with every ratio there and every maximum below the threshold, none fires.
    """
    bad_c, canary_total = counts[3] - counts[2], counts[3]
    plan = _plan(spec, sequential=True)
    threshold = _guard_threshold(len(plan), alpha)
    return any(
        bad_c > _guard_level(factor, budget) * canary_total
        or evidence.guard_max_log_e.get(name, 0.0) >= threshold
        for name, factor, _ in plan
    )


def _plan(spec: MetricSpec, *, sequential: bool) -> list[tuple[str, float, float]]:
    """The burn-rate rules: name, burn factor, and the divisor of the long window (of max_duration).

    The slow rule runs only with the sequential guards.
    """
    plan = [("fast", spec.fast_burn, 6.0)]
    if sequential:
        plan.append(("slow", spec.slow_burn, 1.0))
    return plan


def _guard_level(factor: float, budget: float) -> float:
    """The bad-event ratio a rule's guard tests against: ``factor`` times the budget."""
    return min(1.0, factor * budget)


def _guard_threshold(rules: int, alpha: float) -> float:
    """The log e-value a guard must reach: the burn rules share the non-relative alpha."""
    return math.log(rules / ((1.0 - RELATIVE_SHARE) * alpha))


def _checked_counts(
    spec: MetricSpec,
    alpha: float,
    baseline_good: int,
    baseline_total: int,
    canary_good: int,
    canary_total: int,
) -> tuple[int, int, int, int]:
    """The counts as plain ints (numpy counts too: the detail must hold ints).

    Raises:
        ValueError: ``spec`` has no objective or ``alpha`` is outside (0, 0.5).
    """
    if spec.objective is None:
        raise ValueError(f"{spec.name}: a ratio metric needs an objective")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    return int(baseline_good), int(baseline_total), int(canary_good), int(canary_total)


def _unusable(spec: MetricSpec, counts: tuple[int, int, int, int]) -> tuple[Outcome, str] | None:
    """Why the counts cannot be judged (``error`` or ``nodata``, and the reason), if so."""
    baseline_good, baseline_total, canary_good, canary_total = counts
    if any(n < 0 for n in counts) or baseline_good > baseline_total or canary_good > canary_total:
        return "error", f"{spec.name}: inconsistent counts (good must lie within 0..total)"
    if canary_total == 0:
        return "nodata", f"{spec.name}: no canary events yet"
    return None


def error_budget(spec: MetricSpec) -> float:
    """The error budget, ``1 - objective`` (an objective is checked before)."""
    objective = spec.objective if spec.objective is not None else 1.0
    # 1 - 0.999 is 0.0010000000000000009 in binary; 12 significant digits give back 0.001.
    return float(f"{1.0 - objective:.12g}")


def _relative_e_fails(
    spec: MetricSpec, counts: tuple[int, int, int, int], alpha: float, evidence: RatioEvidence
) -> bool:
    """Does the canary fail the sequential relative question?

    The rate-ratio e-process (brought up to date here) beyond its share of ``alpha``, and
    the observed ratio beyond the tolerance.
    """
    baseline_good, baseline_total, canary_good, canary_total = counts
    evidence.rate.update()
    if not baseline_total:
        return False
    bad_b = baseline_total - baseline_good
    bad_c = canary_total - canary_good
    if evidence.past:
        max_log_e = _past_log_e(spec, counts, alpha, evidence)
    else:
        max_log_e = evidence.rate.max_log_e
    return max_log_e >= math.log(1.0 / (RELATIVE_SHARE * alpha)) and (
        _rate_ratio(bad_c, canary_total, bad_b, baseline_total) > 1.0 + spec.tolerance
    )


def _past_log_e(
    spec: MetricSpec, counts: tuple[int, int, int, int], alpha: float, evidence: RatioEvidence
) -> float:
    """Evidence that the canary's rate is beyond the tolerance of a reference window's.

    The rate-ratio e-process conditions on each batch's split between the cohorts, and a
    reference window before the change shares no batch with the canary. Instead the
    reference's rate is bounded from above (Clopper-Pearson at half the relative share of
    ``alpha``) and the canary's cumulative counts are tested against ``1 + tolerance``
    times that bound by the binomial mixture, its running maximum kept: by the union bound,
    a false alarm at most the relative share. Returns the e-value on the same scale as
    the other test's (already doubled, so both compare with ``1 / (share x alpha)``).
    """
    baseline_good, baseline_total, canary_good, canary_total = counts
    half = RELATIVE_SHARE * alpha / 2.0
    level = (1.0 + spec.tolerance) * _clopper_pearson_upper(
        baseline_total - baseline_good, baseline_total, half
    )
    log_e = binomial_guard_log_e(canary_total - canary_good, canary_total, min(level, 0.5))
    best = max(evidence.guard_max_log_e.get("past", 0.0), log_e - math.log(2.0))
    evidence.guard_max_log_e["past"] = best
    return best


def _rate_ratio(bad_c: int, total_c: int, bad_b: int, total_b: int) -> float:
    """The canary's bad-event rate over the baseline's (1 or inf when the baseline has none)."""
    return (bad_c / total_c) / (bad_b / total_b) if bad_b else _UNSEEN[bad_c > 0]


@dataclass(frozen=True, slots=True)
class _BurnRule:
    """One multiwindow burn-rate rule at one look."""

    name: str
    factor: float
    long_window: float | None
    burn_long: float
    burn_short: float
    p_value: float
    significant: bool
    shared_outage: bool

    @property
    def fires(self) -> bool:
        return (
            self.significant
            and self.burn_long >= self.factor
            and self.burn_short >= self.factor
            and not self.shared_outage
        )

    def describe(self) -> str:
        return f"above the {self.factor:g}x {self.name}-burn guard"

    def detail(self) -> dict[str, DetailValue]:
        return {
            f"{self.name}_burn": self.factor,
            f"{self.name}_burn_long": self.burn_long,
            f"{self.name}_burn_short": self.burn_short,
            f"{self.name}_window": self.long_window,
            f"p_{self.name}_burn": self.p_value,
        }


def _burn_rules(
    spec: MetricSpec,
    budget: float,
    counts: tuple[int, int, int, int],
    alpha: float,
    evidence: RatioEvidence | None,
    window: BurnWindow | None,
) -> list[_BurnRule]:
    baseline_good, baseline_total, canary_good, canary_total = counts
    bad_c, bad_b = canary_total - canary_good, baseline_total - baseline_good
    plan = _plan(spec, sequential=evidence is not None)
    rules = []
    for name, factor, divisor in plan:
        level = _guard_level(factor, budget)
        long_window = None if window is None else window.duration / divisor
        if evidence is not None and window is not None and long_window is not None:
            long = evidence.window(window.now - long_window)
            short = evidence.window(window.now - long_window / 12.0)
            # At or below the level the guard's e-value is below 1 (every alternative it
            # mixes lies above the observed ratio): it cannot raise the running maximum.
            above = bad_c > level * canary_total
            log_e = binomial_guard_log_e(bad_c, canary_total, level) if above else 0.0
            best = max(evidence.guard_max_log_e.get(name, 0.0), log_e)
            evidence.guard_max_log_e[name] = best
            p_value = min(1.0, math.exp(-best))
            significant = best >= _guard_threshold(len(plan), alpha)
        else:
            long = short = (bad_c, canary_total, bad_b, baseline_total)
            p_value = _binom_at_least(bad_c, canary_total, level)
            significant = p_value < (1.0 - RELATIVE_SHARE) * alpha
        rules.append(
            _BurnRule(
                name=name,
                factor=factor,
                long_window=long_window,
                burn_long=_burn(long[0], long[1], budget),
                burn_short=_burn(short[0], short[1], budget),
                p_value=p_value,
                significant=significant,
                shared_outage=long[3] > 0 and long[2] / long[3] >= level,
            )
        )
    return rules


def _burn(bad: int, total: int, budget: float) -> float:
    return bad / total / budget if total else 0.0


def _budget_spent(
    burn_c: float, burn_b: float | None, window: BurnWindow | None
) -> dict[str, DetailValue]:
    """Error budget (fraction of the period's) the canary spent, and its excess over baseline."""
    if window is None or window.canary_share is None:
        return {"budget_spent": None, "budget_excess": None}
    scale = window.canary_share * window.elapsed / window.period
    excess = None if burn_b is None else (burn_c - burn_b) * scale
    return {"budget_spent": burn_c * scale, "budget_excess": excess}


def _detectable_ratio(
    bad_c: int, total_c: int, bad_b: int, total_b: int, budget: float, alpha: float
) -> float:
    """Rate ratio detectable at 80% power with this traffic (normal approximation on log r)."""
    if total_c == 0 or total_b == 0:
        return math.inf
    pooled = (bad_c + bad_b) / (total_c + total_b) or budget
    expected_c, expected_b = pooled * total_c, pooled * total_b
    z = float(special.ndtri(1.0 - alpha / 2.0)) + float(special.ndtri(0.8))
    return math.exp(z * math.sqrt(1.0 / expected_c + 1.0 / expected_b))


def _e(log_e: float) -> float:
    return math.exp(min(log_e, 700.0))


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
        """Test H0: rate ratio <= r0 at its share of ``alpha``; bound the ratio at ``1 - alpha``."""
        rho = total_c / (total_c + total_b)
        theta0 = rho * r0 / (rho * r0 + 1.0 - rho)
        bad = bad_c + bad_b
        p_value = _binom_at_least(bad_c, bad, theta0)
        ratio = _rate_ratio(bad_c, total_c, bad_b, total_b)
        theta_upper = _clopper_pearson_upper(bad_c, bad, alpha)
        ratio_upper = (
            theta_upper * (1.0 - rho) / (rho * (1.0 - theta_upper))
            if theta_upper < 1.0
            else math.inf
        )
        fails = p_value < RELATIVE_SHARE * alpha and ratio > r0
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


class RatioAnalyzer:
    """The analyzer of ratio metrics (``coalmine.analyzers.base.Analyzer``).

    ``analyze_ratio`` on both cohorts' counts, with the metric's ``RatioEvidence`` kept from
    look to look.
    """

    __slots__ = ("_burn_level", "_evidence", "spec")

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self._evidence: RatioEvidence | None = None
        self._burn_level = (
            min(spec.slow_burn, spec.fast_burn) * error_budget(spec) if spec.critical else None
        )

    @property
    def evidence(self) -> RatioEvidence:
        """The e-process and the burn windows' counts (made on first use)."""
        if self._evidence is None:
            self._evidence = RatioEvidence.for_spec(self.spec)
        return self._evidence

    def urgent(self, good: int, total: int) -> bool:
        """Does a message of this critical metric burn the budget fast on its own?

        At the slow-burn rate or faster, on its own counts. Every canary message with bad
        events is checked between judgements; these are taken first. At 0.1% errors out of
        a 99.9% objective almost every canary message brings a bad event, and a priority
        for all would be a priority for none.
        """
        level = self._burn_level
        return level is not None and total - good > total * level

    def observe(
        self, time: float, canary: bool, good: int, total: int, _stored: CohortData
    ) -> bool:
        """Add the message's counts to the evidence; is a critical metric's check due?

        When the canary message brings bad events. One with none cannot raise the evidence
        (the rate-ratio e-process and the burn-rate guard rise only with canary bad
        events), so only the e-process's batch is closed, as a check would, to keep its
        batches what they were; the judgements see everything.
        """
        bad = total - good
        evidence = self.evidence
        if canary:
            evidence.observe(time, bad, total, 0, 0)
        else:
            evidence.observe(time, 0, 0, bad, total)
        if not (canary and self.spec.critical):
            return False
        if bad > 0:
            return True
        if self.spec.test == "sequential":
            evidence.rate.update()
        return False

    def analyze(self, baseline: CohortData, canary: CohortData, look: Look) -> MetricResult:
        """``analyze_ratio`` on the cohorts' counts."""
        self.evidence.past = look.past
        return analyze_ratio(
            self.spec,
            baseline.good,
            baseline.total,
            canary.good,
            canary.total,
            look.alpha,
            evidence=self.evidence,
            window=look.window,
        )

    def fails(self, baseline: CohortData, canary: CohortData, look: Look) -> bool:
        """``ratio_fails`` on the cohorts' counts: the decision without the detail."""
        self.evidence.past = look.past
        return ratio_fails(
            self.spec,
            baseline.good,
            baseline.total,
            canary.good,
            canary.total,
            look.alpha,
            evidence=self.evidence,
            window=look.window,
        )
