"""Distribution metrics per request: Mann-Whitney U test and the Hodges-Lehmann shift.

A canary regresses a distribution metric (latency, payload size) when the rank-sum test
rejects "canary no worse than baseline" in the harmful direction *and* the Hodges-Lehmann
shift lies beyond the metric's tolerance (statistics.md sections 1b and 2). Everything here
is a pure function of the arrays and of the sequential evidence passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import special

from coalmine.analyzers.drift import narrowed, widened
from coalmine.analyzers.effects import MeanChange, mean_change
from coalmine.analyzers.hodges_lehmann import (
    MAX_MAGNITUDE,
    ShiftEstimate,
    hodges_lehmann_sorted,
)
from coalmine.analyzers.result import DetailValue, MetricResult, json_number
from coalmine.analyzers.sequential import TAIL_TAU, AucMixture, auc_log_e
from coalmine.analyzers.tails import MIN_TAIL_SAMPLES, TailChange, tail_changes, tail_tests
from coalmine.analyzers.tolerance import beyond, shown_within

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, NDArray

    from coalmine.analyzers.sequential import DistributionEvidence
    from coalmine.config.models import Direction, MetricSpec

__all__ = ["RankSumTest", "analyze_distribution", "rank_sum_test"]

ANALYZER = "mann_whitney"

_POWER_Z = float(special.ndtri(0.8))
"""z_{0.8}: the minimum detectable effect is quoted at 80% power."""

_IQR_TO_SIGMA = 1.349
"""IQR of a normal distribution in units of its standard deviation."""

_OUTLIER_FENCE = 3.0
"""Tukey's far-out fences (Kayenta's factor), used when ``remove_outliers`` is on."""

HL_MAX_SAMPLES = 4096
"""Above this many samples per cohort, the Hodges-Lehmann shift and interval are computed
on evenly spaced order statistics of that many (a thinned but same-shaped cohort): the
interval is then slightly wider than the full data's, never narrower, and a look stays
within a few milliseconds at 1e5 samples."""


@dataclass(frozen=True, slots=True)
class RankSumTest:
    """The asymptotic Mann-Whitney U test of canary against baseline.

    Attributes:
        u: U statistic of the canary: pairs with canary > baseline plus half the ties.
        auc: ``u / (n_baseline * n_canary)``, P(canary > baseline) + P(tie) / 2.
        z: standardised ``u``, continuity-corrected towards zero; positive when the canary
            tends to be larger.
        p_greater: one-sided p-value for "canary stochastically larger".
        p_less: one-sided p-value for "canary stochastically smaller".
        p_two_sided: two-sided p-value.
        n_baseline: baseline sample size.
        n_canary: canary sample size.
        variance: tie-corrected variance of ``u`` under "no difference".
    """

    u: float
    auc: float
    z: float
    p_greater: float
    p_less: float
    p_two_sided: float
    n_baseline: int
    n_canary: int
    variance: float = 0.0


def rank_sum_test(baseline: ArrayLike, canary: ArrayLike) -> RankSumTest:
    """Asymptotic Mann-Whitney U test with tie-corrected variance and continuity correction.

    Matches ``scipy.stats.mannwhitneyu(canary, baseline, method="asymptotic")`` for every
    alternative, at a fraction of its cost: two sorts and two ``searchsorted`` calls. When
    every value is tied the variance is zero; the test then has no evidence (p = 1, z = 0).

    Args:
        baseline: baseline samples (1-D, finite).
        canary: canary samples (1-D, finite).

    Raises:
        ValueError: a cohort is empty, not one-dimensional or not finite.
    """
    b = _as_sample(baseline, "baseline")
    c = _as_sample(canary, "canary")
    if not (np.isfinite(b).all() and np.isfinite(c).all()):
        raise ValueError("samples must be finite")
    return _rank_sum_sorted(np.sort(b), np.sort(c))


def analyze_distribution(
    spec: MetricSpec,
    baseline: NDArray[np.float64],
    canary: NDArray[np.float64],
    alpha: float,
    *,
    evidence: DistributionEvidence | None = None,
    drift: float = 0.0,
) -> MetricResult:
    """Judge one distribution metric: fail, pass, or not enough data.

    Fails iff the test in the harmful direction rejects at ``alpha`` and the relative
    Hodges-Lehmann shift lies beyond ``spec.tolerance`` in that direction: significance
    alone would fail canaries for harmless 1% changes once samples are large.

    With ``spec.test == "sequential"`` and an ``evidence`` state (kept by the caller
    across looks, updated here), the test is the anytime-valid mixture SPRT on the AUC:
    it may be checked at every look without inflating false alarms. Otherwise it is the
    fixed-sample U test (Kayenta's behaviour). With ``spec.null == "tolerance"`` the
    baseline is scaled by ``1 +/- tolerance`` first, so the test asks "worse by more than
    the tolerance" (stricter near the tolerance, slower to detect).

    ``nan_strategy`` removes NaN samples or replaces them with 0; ``remove_outliers`` drops
    samples beyond Tukey's far-out fences (3 x IQR) of their own cohort, as Kayenta can.

    Relative change is the shift over ``|median(baseline)|``. When that median is 0 the
    mean absolute baseline value is the scale; when that is 0 too, the relative change is 0
    for a zero shift and +/-inf otherwise.

    The metric is *measured* (strong enough to promote on) when the minimum detectable
    relative effect is within tolerance and the interval's harmful end is within it too
    (the change is shown to be tolerable, not merely detectable). The MDE is a normal
    approximation at 80% power,
    ``(z_{1-a'} + z_{0.8}) * s * sqrt(1/n + 1/m) * sqrt(pi/3) / scale``, where ``s`` pools the
    robust scales (IQR / 1.349) of both cohorts (standard deviation if both IQRs are 0),
    ``sqrt(pi/3)`` is the U test's efficiency loss against the t test on normal data, and
    ``a'`` is ``alpha`` (one-sided) or ``alpha / 2`` (``either``). It is a planning figure,
    not a guarantee. A failing metric is always measured.

    Args:
        spec: the metric's profile entry (direction, allowed change, min_samples).
        baseline: baseline samples.
        canary: canary samples.
        alpha: significance level of the test, in (0, 0.5).
        evidence: the metric's sequential state, kept across looks (sequential test).
        drift: a past baseline's between-interval uncertainty on the log scale
            (:mod:`coalmine.analyzers.drift`): the tolerance is widened by it to fail and
            narrowed by it to promote; 0 (a cohort beside the canary): neither.

    Raises:
        ValueError: ``alpha`` is outside (0, 0.5).
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    b = _clean(spec, np.asarray(baseline, dtype=np.float64).reshape(-1))
    c = _clean(spec, np.asarray(canary, dtype=np.float64).reshape(-1))
    unusable = _unusable(spec, b, c)
    if unusable is not None:
        return unusable
    return _judge(spec, np.sort(b), np.sort(c), alpha, evidence, _Bounds.of(spec, alpha, drift))


def _unusable(
    spec: MetricSpec, b: NDArray[np.float64], c: NDArray[np.float64]
) -> MetricResult | None:
    """The ``error`` or ``nodata`` result when the cleaned cohorts cannot be judged."""
    n_b, n_c = int(b.size), int(c.size)
    non_finite = int(np.count_nonzero(~np.isfinite(b)) + np.count_nonzero(~np.isfinite(c)))
    if non_finite:
        reason = f"{spec.name}: {non_finite} non-finite samples"
        return _unjudged(spec, "error", (n_b, n_c), reason, {"non_finite": non_finite})
    if max(np.abs(b).max(initial=0.0), np.abs(c).max(initial=0.0)) > MAX_MAGNITUDE:
        return _unjudged(spec, "error", (n_b, n_c), f"{spec.name}: samples beyond 1e301", {})
    short = [
        f"{n} {name} samples"
        for name, n in (("baseline", n_b), ("canary", n_c))
        if n < spec.min_samples
    ]
    if short:
        reason = f"{spec.name}: {' and '.join(short)} < min_samples {spec.min_samples}"
        return _unjudged(spec, "nodata", (n_b, n_c), reason, {"min_samples": spec.min_samples})
    return None


def _clean(spec: MetricSpec, x: NDArray[np.float64]) -> NDArray[np.float64]:
    nan = np.isnan(x)
    if nan.any():
        x = x[~nan] if spec.nan_strategy == "remove" else np.where(nan, 0.0, x)
    if spec.remove_outliers and x.size >= 4 and np.isfinite(x).all():
        q1, q3 = np.quantile(x, [0.25, 0.75])
        fence = _OUTLIER_FENCE * (q3 - q1)
        x = x[(x >= q1 - fence) & (x <= q3 + fence)]
    return x


def _thin(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Evenly spaced order statistics of a sorted cohort, at most ``HL_MAX_SAMPLES``."""
    if x.size <= HL_MAX_SAMPLES:
        return x
    positions = (np.arange(HL_MAX_SAMPLES) + 0.5) * (x.size / HL_MAX_SAMPLES)
    return x[positions.astype(np.intp)]


def _unjudged(
    spec: MetricSpec,
    outcome: Literal["nodata", "error"],
    sizes: tuple[int, int],
    reason: str,
    extra: dict[str, DetailValue],
) -> MetricResult:
    """A result that is neither pass nor fail: the data cannot be judged (yet)."""
    n_b, n_c = sizes
    return MetricResult(
        metric=spec.name,
        analyzer=ANALYZER,
        outcome=outcome,
        critical=spec.critical,
        measured=False,
        n_baseline=n_b,
        n_canary=n_c,
        reason=reason,
        detail={"n_baseline": n_b, "n_canary": n_c, **extra},
    )


@dataclass(frozen=True, slots=True)
class _Bounds:
    """The changes that fail and that may promote.

    The tolerances; with a past baseline's between-interval ``drift``
    (:mod:`coalmine.analyzers.drift`), each widened to fail and narrowed to promote, since
    that drift adds uncertainty both ways.
    """

    fail: float
    promote: float
    tail_fail: float
    tail_promote: float
    drift: float

    @classmethod
    def of(cls, spec: MetricSpec, alpha: float, drift: float) -> _Bounds:
        tol, tail = spec.tolerance, spec.tail_tolerance
        if drift <= 0.0 or spec.direction == "either":
            return cls(tol, tol, tail, tail, 0.0)
        return cls(
            widened(tol, drift, alpha),
            narrowed(tol, drift, alpha),
            widened(tail, drift, alpha),
            narrowed(tail, drift, alpha),
            drift,
        )


_TAIL_SHARE = 0.25
"""Share of a metric's false-alarm budget that its tail tests get, split evenly between
them; the rank test on the whole distribution keeps the rest."""


@dataclass(frozen=True, slots=True)
class _Tail:
    """One tail test's outcome at this look."""

    name: str
    comparison: TailChange
    p_value: float
    failed: bool
    leaning: bool
    """The evidence at this look points to a tail worse than tolerated: an e-value above 1,
    or the tail mean's change beyond the tolerance."""


def _judge(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    alpha: float,
    evidence: DistributionEvidence | None,
    bounds: _Bounds,
) -> MetricResult:
    """The decision on sorted, finite, large-enough cohorts."""
    found = _gather(spec, b, c, alpha, evidence, bounds)
    decision = _decide(spec, found)
    return MetricResult(
        metric=spec.name,
        analyzer=ANALYZER,
        outcome="fail" if decision.failed else "pass",
        critical=decision.critical,
        measured=decision.measured,
        n_baseline=found.test.n_baseline,
        n_canary=found.test.n_canary,
        reason=_reason(spec, found, decision) + _drift_note(spec, found, decision),
        detail=_detail(spec, found, decision),
    )


@dataclass(frozen=True, slots=True)
class _Findings:
    """What the tests and estimates say at one look, before anything is decided."""

    test: RankSumTest
    p_value: float
    e_value: float | None
    location_alpha: float
    """The rank test's share of ``alpha`` (the tail tests have the rest)."""
    confidence: float
    shift: ShiftEstimate
    median_baseline: float
    median_canary: float
    rel: float
    rel_low: float
    rel_high: float
    mean: MeanChange
    effect: str
    """``shift`` or ``mean``: the measure a change of the whole distribution is judged by."""
    tails: list[_Tail]
    bounds: _Bounds
    mde: float


def _gather(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    alpha: float,
    evidence: DistributionEvidence | None,
    bounds: _Bounds,
) -> _Findings:
    """Run the tests (updating ``evidence``) and the estimates on sorted cohorts."""
    one_sided = spec.direction != "either"
    quantiles = spec.tail_quantiles if one_sided else ()
    test, p_value, e_value = _location_test(spec, b, c, evidence)
    confidence = 1.0 - 2.0 * alpha if one_sided else 1.0 - alpha
    hl = hodges_lehmann_sorted(_thin(b), _thin(c), confidence)
    median_b = _median_sorted(b)
    scale = abs(median_b) or float(np.abs(b).mean())
    rel, rel_low, rel_high = (_relative(v, scale) for v in (hl.estimate, hl.low, hl.high))
    mean = mean_change(b, c, alpha, spec.tolerance)
    effect = _effect_measure(spec, b)
    tail_alpha = alpha * _TAIL_SHARE / max(1, len(quantiles))
    tails = _tail_tests(spec, b, c, tail_alpha, evidence, quantiles, bounds)
    alpha_z = alpha if one_sided else alpha / 2.0
    return _Findings(
        test=test,
        p_value=p_value,
        e_value=e_value,
        location_alpha=alpha * (1.0 - _TAIL_SHARE) if quantiles else alpha,
        confidence=confidence,
        shift=hl,
        median_baseline=median_b,
        median_canary=_median_sorted(c),
        rel=rel,
        rel_low=rel_low,
        rel_high=rel_high,
        mean=mean,
        effect=effect,
        tails=tails,
        bounds=bounds,
        mde=_mde(b, c, scale, float(special.ndtri(1.0 - alpha_z))),
    )


@dataclass(frozen=True, slots=True)
class _Decision:
    """What the findings decide, and what the decision rests on."""

    failed: bool
    measured: bool
    critical: bool
    location_fails: bool
    failed_tail: _Tail | None
    """The failing tail test with the smallest p-value, if any."""
    effect: str
    """``shift``, ``mean`` or ``tail``: the measure the outcome rests on."""
    state: str
    """The reason's case: ``fail``, ``mean``, ``tail``, ``pass``, ``underpowered``, ``unshown``."""
    shift_blind: bool
    leaning: list[str]


def _decide(spec: MetricSpec, found: _Findings) -> _Decision:
    """Fail, pass and measured from the findings, as ``analyze_distribution`` describes."""
    direction: Direction = spec.direction
    tol = found.bounds.promote
    effect = found.effect
    mean = found.mean
    significant = found.p_value < found.location_alpha
    change = found.rel if effect == "shift" else mean.estimate
    location_fails = significant and beyond(direction, change, found.bounds.fail)
    failed_tail = min((t for t in found.tails if t.failed), key=lambda t: t.p_value, default=None)
    failed = location_fails or failed_tail is not None
    # Promotion needs the change shown within tolerance, not merely detectable, by the
    # mean's confidence sequence (valid however often coalmine looks) and by the shift's
    # interval. A shift interval of zero width (heavy ties: zeros, buckets) is blind to
    # the change and is left to the mean.
    shift_blind = found.shift.low == found.shift.high and mean.scale != "constant"
    # Nor while a tail test's evidence leans towards a tail worse than tolerated: a tail
    # regression that has not yet reached its threshold must not be promoted past.
    leaning = [t.name for t in found.tails if t.leaning and not t.failed]
    measured = failed or (
        found.mde <= tol
        and shown_within(direction, mean.low, mean.high, tol)
        and (shift_blind or shown_within(direction, found.rel_low, found.rel_high, tol))
        and not leaning
    )
    if failed_tail is not None and not location_fails:
        effect = "tail"
    decisive = {
        "shift": found.rel,
        "mean": mean.estimate,
        "tail": _display(direction, failed_tail.comparison.relative_change) if failed_tail else 0,
    }[effect]
    critical = spec.critical and (
        spec.critical_change is None
        or not failed
        or beyond(direction, decisive, spec.critical_change)
    )
    if failed:
        state = {"tail": "tail", "mean": "mean", "shift": "fail"}[effect]
    else:
        state = "pass" if measured else "underpowered" if found.mde > tol else "unshown"
    return _Decision(
        failed, measured, critical, location_fails, failed_tail, effect, state, shift_blind, leaning
    )


def _detail(spec: MetricSpec, found: _Findings, decision: _Decision) -> dict[str, DetailValue]:
    """The numbers behind the outcome, as the verdict carries them."""
    direction = spec.direction
    test, hl, mean = found.test, found.shift, found.mean
    detail: dict[str, DetailValue] = {
        "n_baseline": test.n_baseline,
        "n_canary": test.n_canary,
        "median_baseline": found.median_baseline,
        "median_canary": found.median_canary,
        "shift": hl.estimate,
        "shift_low": hl.low,
        "shift_high": hl.high,
        "confidence": found.confidence,
        "relative_change": json_number(found.rel),
        "relative_low": json_number(found.rel_low),
        "relative_high": json_number(found.rel_high),
        "mean_baseline": mean.mean_baseline,
        "mean_canary": mean.mean_canary,
        "mean_change": json_number(mean.estimate),
        "mean_low": json_number(mean.low),
        "mean_high": json_number(mean.high),
        "effect": decision.effect,
        "p_value": found.p_value,
        "test": "sequential" if found.e_value is not None else "fixed",
        "e_value": found.e_value,
        "null": spec.null,
        "unit": "request",
        "u": test.u,
        "auc": test.auc,
        "mde": json_number(found.mde),
        "allowed_change": spec.tolerance,
        "direction": direction,
    }
    if found.bounds.drift > 0.0:
        detail["drift"] = found.bounds.drift
        detail["allowed_change_to_fail"] = found.bounds.fail
        detail["allowed_change_to_promote"] = found.bounds.promote
    for tail in found.tails:
        t = tail.comparison
        detail[f"{tail.name}_baseline"] = _display_value(direction, t.baseline_quantile)
        detail[f"{tail.name}_canary"] = _display_value(direction, t.canary_quantile)
        detail[f"{tail.name}_tail_change"] = json_number(_display(direction, t.relative_change))
        detail[f"{tail.name}_p_value"] = tail.p_value
    if decision.failed_tail is not None and not decision.location_fails:
        detail["quantile"] = decision.failed_tail.name
    return detail


def _reason(spec: MetricSpec, found: _Findings, decision: _Decision) -> str:
    """One phrase: what moved and by how much, or why the metric is not shown yet."""
    direction = spec.direction
    failing = state_fails(decision.state)
    tol = found.bounds.fail if failing else found.bounds.promote
    rel, p_value, mean, state = found.rel, found.p_value, found.mean, decision.state
    sign = {"increase": "+", "decrease": "-", "either": "\u00b1"}[direction]
    bound = f"{sign}{_num(tol * 100)}%"
    ci = f"{found.confidence * 100:.3g}% CI {_pct(found.rel_low)}..{_pct(found.rel_high)}"
    mean_text = f"mean {_pct(mean.estimate)} (CS {_pct(mean.low)}..{_pct(mean.high)})"
    failed_tail = decision.failed_tail
    if state == "tail" and failed_tail is not None:
        t = failed_tail.comparison
        tail_bound = f"{sign}{_num(found.bounds.tail_fail * 100)}%"
        return (
            f"{spec.name} {failed_tail.name} tail {_pct(_display(direction, t.relative_change))}"
            f" (mean of the {_share(t.quantile)} {_extreme(direction)}:"
            f" {_num(_display_value(direction, t.baseline_tail_mean))} ->"
            f" {_num(_display_value(direction, t.canary_tail_mean))}),"
            f" {_format_p(failed_tail.p_value)}, beyond {tail_bound}"
        )
    if state == "mean":
        return (
            f"{spec.name} mean {_pct(mean.estimate)} ({_num(mean.mean_baseline)} ->"
            f" {_num(mean.mean_canary)}; shift {_pct(rel)}), {_format_p(p_value)}, beyond {bound}"
        )
    if state == "fail":
        return f"{spec.name} {_pct(rel)} ({ci}, {_format_p(p_value)}), beyond {bound}"
    if state == "pass":
        shift_text = "shift blind to ties" if decision.shift_blind else f"{_pct(rel)} ({ci})"
        return f"{spec.name} {shift_text}; {mean_text}, within {bound}"
    if state == "underpowered":
        return (
            f"{spec.name} not measurable yet: detectable change {_num(found.mde * 100)}%"
            f" > allowed {_num(tol * 100)}%"
        )
    watch = f"; {', '.join(decision.leaning)} tail leaning worse" if decision.leaning else ""
    return f"{spec.name} {_pct(rel)} ({ci}); {mean_text}{watch}, not yet shown within {bound}"


def _drift_note(spec: MetricSpec, found: _Findings, decision: _Decision) -> str:
    """What the past baseline's variation between intervals did to the tolerance, if any."""
    bounds = found.bounds
    if bounds.drift <= 0.0:
        return ""
    moved = "widened" if state_fails(decision.state) else "narrowed"
    return (
        f" (tolerance {moved} from {_num(spec.tolerance * 100)}%: the reference varies"
        f" {_num(bounds.drift * 100)}% between intervals)"
    )


_TIED_SHARE = 0.25
"""``effect = "auto"`` measures by the mean when one value holds this share of the baseline."""


def _effect_measure(spec: MetricSpec, b: NDArray[np.float64]) -> str:
    """``shift`` or ``mean``: the measure a regression of this metric is judged by."""
    if spec.effect != "auto":
        return spec.effect
    _, lengths = _runs(b)
    return "mean" if int(lengths.max()) >= _TIED_SHARE * b.size else "shift"


def _location_test(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    evidence: DistributionEvidence | None,
) -> tuple[RankSumTest, float, float | None]:
    """The rank test on the whole distribution: its U test, p-value and e-value."""
    direction = spec.direction
    tested_b = b
    if spec.null == "tolerance":
        tol = spec.tolerance
        tested_b = b * (1.0 + tol) if direction == "increase" else b * (1.0 - tol)
        if tested_b.size and tested_b[0] > tested_b[-1]:  # scaling by a negative factor
            tested_b = tested_b[::-1]
    test = _rank_sum_sorted(tested_b, c)
    if spec.test == "sequential" and evidence is not None:
        sign = -1.0 if direction == "decrease" else 1.0
        evidence.location.update(
            test.auc,
            test.variance,
            test.n_baseline,
            test.n_canary,
            sign,
            one_sided=direction != "either",
        )
        e_value = math.exp(min(evidence.location.max_log_e, 700.0))
        return test, evidence.location.p_value, e_value
    fixed_p = {
        "increase": test.p_greater,
        "decrease": test.p_less,
        "either": test.p_two_sided,
    }[direction]
    return test, fixed_p, None


def _tail_tests(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    alpha: float,
    evidence: DistributionEvidence | None,
    quantiles: tuple[float, ...],
    bounds: _Bounds,
) -> list[_Tail]:
    """Each tail's test once it holds ``MIN_TAIL_SAMPLES`` pooled samples.

    A ``decrease`` metric's tails are its lowest values: the tests run on the negated
    cohorts, where they are the highest.
    """
    if not quantiles:
        return []
    tol = bounds.tail_fail
    if spec.direction == "decrease":
        b, c = -b[::-1], -c[::-1]
    # The test asks "is the canary's tail worse than the baseline's made worse by the
    # tolerance": a rejection is practically significant by itself, where a point estimate
    # of a tail mean (a few dozen samples) would be a noisy gate. Shifting each value by
    # tol x |value| keeps the order and moves negative values the harmful way too.
    tested = b + tol * np.abs(b)
    changes = {t.quantile: t for t in tail_changes(b, c, quantiles)}
    out = []
    for test in tail_tests(tested, c, quantiles):
        q = test.quantile
        if test.tail_samples < MIN_TAIL_SAMPLES or test.variance <= 0.0:
            continue
        tau = TAIL_TAU * (1.0 - q)
        if spec.test == "sequential" and evidence is not None:
            mixture = evidence.tails.get(q)
            if mixture is None:
                mixture = evidence.tails[q] = AucMixture(tau=tau)
            log_e = mixture.observe(test.effect, test.variance, one_sided=True)
            p_value = mixture.p_value
        else:
            log_e = auc_log_e(test.effect, test.variance, tau, one_sided=True)
            p_value = float(special.ndtr(-test.z))
        name = _quantile_name(spec.direction, q)
        # Leaning: the evidence favours a tail worse than tolerated, or the tail mean's
        # estimate is beyond the tolerance (a few dozen canary samples can leave the
        # e-value under 1 while the estimate shows the regression).
        leaning = log_e > 0.0 or changes[q].relative_change > bounds.tail_promote
        out.append(_Tail(name, changes[q], p_value, p_value < alpha, leaning=leaning))
    return out


def _quantile_name(direction: Direction, q: float) -> str:
    """``p99`` for the upper 1% of an increase metric, ``p1`` for the lowest of a decrease."""
    level = (1.0 - q if direction == "decrease" else q) * 100
    return f"p{level:.4g}"


def _share(q: float) -> str:
    return f"{(1.0 - q) * 100:.3g}%"


def _extreme(direction: Direction) -> str:
    return "lowest" if direction == "decrease" else "highest"


def _display(direction: Direction, change: float) -> float:
    """A tail's relative change on the metric's own scale (tests of a decrease run negated)."""
    return -change if direction == "decrease" else change


def _display_value(direction: Direction, value: float) -> float:
    return -value if direction == "decrease" else value


# --------------------------------------------------------------------------- rank-sum test


def _rank_sum_sorted(b: NDArray[np.float64], c: NDArray[np.float64]) -> RankSumTest:
    """U test on sorted cohorts; the pooled tie term comes from run lengths, not a merge."""
    n_b, n_c = int(b.size), int(c.size)
    below = np.searchsorted(b, c, side="left")  # baseline values < c_i
    below_eq = np.searchsorted(b, c, side="right")  # baseline values <= c_i
    u = (int(below.sum()) + int(below_eq.sum())) / 2.0

    # Tie groups of the pooled sample: runs in each cohort, plus the cross term
    # (t_b + t_c)^3 - t_b^3 - t_c^3 = 3 t_b t_c (t_b + t_c) for values present in both.
    c_starts, c_runs = _runs(c)
    _, b_runs = _runs(b)
    shared = (below_eq - below)[c_starts].astype(np.float64)
    tc = c_runs.astype(np.float64)
    tb = b_runs.astype(np.float64)
    tie_term = float(
        np.sum(tb**3 - tb) + np.sum(tc**3 - tc) + np.sum(3.0 * tc * shared * (tc + shared))
    )

    nm = n_b * n_c
    total = n_b + n_c
    mu = nm / 2.0
    variance = nm / 12.0 * ((total + 1) - tie_term / (total * (total - 1)))
    all_tied = b[0] == b[-1] == c[0] == c[-1]  # rounding could leave a tiny variance
    sigma = math.sqrt(variance) if variance > 0.0 and not all_tied else 0.0
    if sigma == 0.0:
        z = 0.0
        p_greater = p_less = p_two = 1.0
    else:
        u_other = nm - u
        z = math.copysign(max(abs(u - mu) - 0.5, 0.0), u - mu) / sigma
        p_greater = float(special.ndtr(-(u - mu - 0.5) / sigma))
        p_less = float(special.ndtr(-(u_other - mu - 0.5) / sigma))
        p_two = min(1.0, 2.0 * float(special.ndtr(-(max(u, u_other) - mu - 0.5) / sigma)))
    return RankSumTest(
        u=u,
        auc=u / nm,
        z=z,
        p_greater=p_greater,
        p_less=p_less,
        p_two_sided=p_two,
        n_baseline=n_b,
        n_canary=n_c,
        variance=sigma * sigma,
    )


def _runs(x: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Start indices and lengths of the runs of equal values in a sorted array."""
    starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
    lengths = np.diff(np.append(starts, x.size))
    return starts, lengths


# ------------------------------------------------------------------------------- helpers


def _as_sample(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def _median_sorted(x: NDArray[np.float64]) -> float:
    half = x.size // 2
    if x.size % 2:
        return float(x[half])
    return float((x[half - 1] + x[half]) / 2.0)


def _relative(value: float, scale: float) -> float:
    if scale > 0.0:
        return value / scale
    return 0.0 if value == 0.0 else math.copysign(math.inf, value)


def _mde(b: NDArray[np.float64], c: NDArray[np.float64], scale: float, z_alpha: float) -> float:
    """Minimum detectable relative shift at 80% power (normal approximation)."""
    n_b, n_c = b.size, c.size
    spread_b = _robust_sd(b)
    spread_c = _robust_sd(c)
    if spread_b == 0.0 and spread_c == 0.0:
        spread_b, spread_c = float(np.std(b, ddof=1)), float(np.std(c, ddof=1))
    dof = n_b + n_c - 2
    pooled = math.sqrt(((n_b - 1) * spread_b**2 + (n_c - 1) * spread_c**2) / dof) if dof else 0.0
    shift = (z_alpha + _POWER_Z) * pooled * math.sqrt(1 / n_b + 1 / n_c) * math.sqrt(math.pi / 3)
    return _relative(shift, scale) if shift else 0.0


def _robust_sd(x: NDArray[np.float64]) -> float:
    if x.size < 2:
        return 0.0
    return (_quantile_sorted(x, 0.75) - _quantile_sorted(x, 0.25)) / _IQR_TO_SIGMA


def _quantile_sorted(x: NDArray[np.float64], q: float) -> float:
    """``np.quantile``'s default (linear) rule on an already sorted array."""
    pos = q * (x.size - 1)
    low = math.floor(pos)
    high = min(low + 1, x.size - 1)
    return float(x[low] + (x[high] - x[low]) * (pos - low))


def _num(x: float) -> str:
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def _format_p(p: float) -> str:
    return "p<1e-99" if p < 1e-99 else f"p={p:.1g}"


def state_fails(state: str) -> bool:
    """Is a reason's case one of a failing metric?"""
    return state in ("fail", "mean", "tail")
