"""Distribution metrics: Mann-Whitney U test and the Hodges-Lehmann shift.

A canary regresses a distribution metric (latency, payload size) when the rank-sum test
rejects "canary no worse than baseline" in the harmful direction *and* the Hodges-Lehmann
shift lies beyond the metric's tolerance (statistics.md sections 1b and 2). Everything here
is a pure function of arrays: the daemon calls it off the event loop, tests call it directly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import special

from coalmine.analyzers.effects import MeanChange, mean_change
from coalmine.analyzers.result import DetailValue, MetricResult, json_number
from coalmine.analyzers.sequential import TAIL_TAU, AucMixture, auc_log_e
from coalmine.analyzers.tails import MIN_TAIL_SAMPLES, TailChange, tail_changes, tail_tests
from coalmine.analyzers.tolerance import beyond, shown_within

if TYPE_CHECKING:
    from collections.abc import Iterable

    from numpy.typing import ArrayLike, NDArray

    from coalmine.analyzers.sequential import DistributionEvidence
    from coalmine.config.models import Direction, MetricSpec

__all__ = [
    "RankSumTest",
    "ShiftEstimate",
    "analyze_distribution",
    "hodges_lehmann",
    "rank_sum_test",
]

ANALYZER = "mann_whitney"

_MAX_ABS = 2.0**1000
"""Largest accepted magnitude: sums of three values and their rounding margins stay finite."""

_SAMPLE_MIN, _SAMPLE_MAX = 1 << 10, 1 << 14
"""Pivot sample sizes per selection round; a round keeps about 3 / sqrt(size) of the pairs."""

_KEPT_CUTS = 6
"""Coarse cuts kept to start later selections from: the interval ends lie near the median."""

_GRID_SIDE = 64
"""Evenly spaced order statistics per cohort whose pair sums give the first pivots."""

_WINDOW = 4096
"""Scale of a bracket, in pairs: pivots aim a quarter of it either side of a target, and
the pairs between two pivots are built and partitioned outright up to four times it (or
four times the rows, whichever is more: building is cheaper than another count)."""

_ROUNDS = 8
"""Counting rounds of the bracketing search before the sampling selection takes over."""

_EXACT_MAX = 2.0**49
"""Whole numbers up to this magnitude add and subtract exactly, half-integers included."""

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


@dataclass(frozen=True, slots=True)
class ShiftEstimate:
    """Hodges-Lehmann location shift of canary over baseline, with its interval.

    Attributes:
        estimate: median of all pairwise differences ``canary_i - baseline_j``.
        low: lower end of the distribution-free interval.
        high: upper end of the distribution-free interval.
        confidence: two-sided coverage the interval was built for.
    """

    estimate: float
    low: float
    high: float
    confidence: float


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


def hodges_lehmann(baseline: ArrayLike, canary: ArrayLike, confidence: float) -> ShiftEstimate:
    """Hodges-Lehmann shift and its distribution-free confidence interval.

    The shift is the median of the ``n * m`` differences ``canary_i - baseline_j``; the
    interval is ``[D_(k), D_(nm-k+1)]`` with
    ``k = floor(nm/2 - z_{1-a/2} sqrt(nm(n+m+1)/12))`` (at least 1), ``a = 1 - confidence``.
    The order statistics are exact (bit-identical to sorting all differences) but found by
    selection in X+Y, so memory stays O(n + m): materialising the differences would take
    860 MB at n = m = 1e4. All four order statistics are bracketed together between
    pivots of exactly counted rank (``_Brackets``), two rounds of ``searchsorted`` on
    realistic data; the sampling selection of ``_PairSums`` is the fallback.

    Args:
        baseline: baseline samples (1-D, finite, magnitude below 1e301).
        canary: canary samples (same constraints).
        confidence: two-sided coverage of the interval, in (0, 1).

    Raises:
        ValueError: a cohort is empty, not 1-D, not finite or too large, or ``confidence``
            is outside (0, 1).
    """
    b = _as_sample(baseline, "baseline")
    c = _as_sample(canary, "canary")
    _check_values(b, c)
    return _hodges_lehmann_sorted(np.sort(b), np.sort(c), confidence)


def analyze_distribution(
    spec: MetricSpec,
    baseline: NDArray[np.float64],
    canary: NDArray[np.float64],
    alpha: float,
    *,
    evidence: DistributionEvidence | None = None,
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

    Raises:
        ValueError: ``alpha`` is outside (0, 0.5).
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    b = _clean(spec, np.asarray(baseline, dtype=np.float64).reshape(-1))
    c = _clean(spec, np.asarray(canary, dtype=np.float64).reshape(-1))
    n_b, n_c = int(b.size), int(c.size)
    non_finite = int(np.count_nonzero(~np.isfinite(b)) + np.count_nonzero(~np.isfinite(c)))
    if non_finite:
        reason = f"{spec.name}: {non_finite} non-finite samples"
        return _unjudged(spec, "error", (n_b, n_c), reason, {"non_finite": non_finite})
    if max(np.abs(b).max(initial=0.0), np.abs(c).max(initial=0.0)) > _MAX_ABS:
        return _unjudged(spec, "error", (n_b, n_c), f"{spec.name}: samples beyond 1e301", {})
    short = [
        f"{n} {name} samples"
        for name, n in (("baseline", n_b), ("canary", n_c))
        if n < spec.min_samples
    ]
    if short:
        reason = f"{spec.name}: {' and '.join(short)} < min_samples {spec.min_samples}"
        return _unjudged(spec, "nodata", (n_b, n_c), reason, {"min_samples": spec.min_samples})
    return _judge(spec, np.sort(b), np.sort(c), alpha, evidence)


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
    """The evidence at this look points to a tail worse than tolerated (e-value above 1)."""


def _judge(
    spec: MetricSpec,
    b: NDArray[np.float64],
    c: NDArray[np.float64],
    alpha: float,
    evidence: DistributionEvidence | None,
) -> MetricResult:
    """The decision on sorted, finite, large-enough cohorts."""
    direction: Direction = spec.direction
    tol = spec.tolerance
    one_sided = direction != "either"
    quantiles = spec.tail_quantiles if one_sided else ()
    location_alpha = alpha * (1.0 - _TAIL_SHARE) if quantiles else alpha
    test, p_value, e_value = _location_test(spec, b, c, evidence)
    confidence = 1.0 - 2.0 * alpha if one_sided else 1.0 - alpha
    hl = _hodges_lehmann_sorted(_thin(b), _thin(c), confidence)
    median_b = _median_sorted(b)
    scale = abs(median_b) or float(np.abs(b).mean())
    rel, rel_low, rel_high = (_relative(v, scale) for v in (hl.estimate, hl.low, hl.high))
    mean = mean_change(b, c, alpha, tol)

    effect = _effect_measure(spec, b)
    significant = p_value < location_alpha
    location_fails = significant and beyond(
        direction, rel if effect == "shift" else mean.estimate, tol
    )
    tails = _tail_tests(
        spec, b, c, alpha * _TAIL_SHARE / max(1, len(quantiles)), evidence, quantiles
    )
    failed_tail = min((t for t in tails if t.failed), key=lambda t: t.p_value, default=None)
    failed = location_fails or failed_tail is not None

    alpha_z = alpha if one_sided else alpha / 2.0
    mde = _mde(b, c, scale, float(special.ndtri(1.0 - alpha_z)))
    # Promotion needs the change shown within tolerance, not merely detectable, by the
    # mean's confidence sequence (valid however often coalmine looks) and by the shift's
    # interval. A shift interval of zero width (heavy ties: zeros, buckets) is blind to
    # the change and is left to the mean.
    shift_blind = hl.low == hl.high and mean.scale != "constant"
    # Nor while a tail test's evidence leans towards a tail worse than tolerated: a tail
    # regression that has not yet reached its threshold must not be promoted past.
    leaning = [t.name for t in tails if t.leaning and not t.failed]
    measured = failed or (
        mde <= tol
        and shown_within(direction, mean.low, mean.high, tol)
        and (shift_blind or shown_within(direction, rel_low, rel_high, tol))
        and not leaning
    )
    if failed_tail is not None and not location_fails:
        effect = "tail"

    decisive = {
        "shift": rel,
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
        state = "pass" if measured else "underpowered" if mde > tol else "unshown"
    looks = _Looks(rel, rel_low, rel_high, confidence, p_value, mde, shift_blind, leaning)
    reason = _reason(spec, looks, mean, failed_tail, state=state)

    detail: dict[str, DetailValue] = {
        "n_baseline": test.n_baseline,
        "n_canary": test.n_canary,
        "median_baseline": median_b,
        "median_canary": _median_sorted(c),
        "shift": hl.estimate,
        "shift_low": hl.low,
        "shift_high": hl.high,
        "confidence": confidence,
        "relative_change": json_number(rel),
        "relative_low": json_number(rel_low),
        "relative_high": json_number(rel_high),
        "mean_baseline": mean.mean_baseline,
        "mean_canary": mean.mean_canary,
        "mean_change": json_number(mean.estimate),
        "mean_low": json_number(mean.low),
        "mean_high": json_number(mean.high),
        "effect": effect,
        "p_value": p_value,
        "test": "sequential" if e_value is not None else "fixed",
        "e_value": e_value,
        "null": spec.null,
        "unit": "request",
        "u": test.u,
        "auc": test.auc,
        "mde": json_number(mde),
        "allowed_change": tol,
        "direction": direction,
    }
    for tail in tails:
        t = tail.comparison
        detail[f"{tail.name}_baseline"] = _display_value(direction, t.baseline_quantile)
        detail[f"{tail.name}_canary"] = _display_value(direction, t.canary_quantile)
        detail[f"{tail.name}_tail_change"] = json_number(_display(direction, t.relative_change))
        detail[f"{tail.name}_p_value"] = tail.p_value
    if failed_tail is not None and not location_fails:
        detail["quantile"] = failed_tail.name
    return MetricResult(
        metric=spec.name,
        analyzer=ANALYZER,
        outcome="fail" if failed else "pass",
        critical=critical,
        measured=measured,
        n_baseline=test.n_baseline,
        n_canary=test.n_canary,
        reason=reason,
        detail=detail,
    )


@dataclass(frozen=True, slots=True)
class _Looks:
    """The numbers a distribution metric's reason phrase quotes."""

    rel: float
    rel_low: float
    rel_high: float
    confidence: float
    p_value: float
    mde: float
    shift_blind: bool
    leaning: list[str]


def _reason(
    spec: MetricSpec, looks: _Looks, mean: MeanChange, failed_tail: _Tail | None, *, state: str
) -> str:
    """One phrase: what moved and by how much, or why the metric is not shown yet."""
    direction = spec.direction
    tol = spec.tolerance
    rel, p_value = looks.rel, looks.p_value
    sign = {"increase": "+", "decrease": "-", "either": "\u00b1"}[direction]
    bound = f"{sign}{_num(tol * 100)}%"
    ci = f"{looks.confidence * 100:.3g}% CI {_pct(looks.rel_low)}..{_pct(looks.rel_high)}"
    mean_text = f"mean {_pct(mean.estimate)} (CS {_pct(mean.low)}..{_pct(mean.high)})"
    if state == "tail" and failed_tail is not None:
        t = failed_tail.comparison
        tail_bound = f"{sign}{_num(spec.tail_tolerance * 100)}%"
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
        shift_text = "shift blind to ties" if looks.shift_blind else f"{_pct(rel)} ({ci})"
        return f"{spec.name} {shift_text}; {mean_text}, within {bound}"
    if state == "underpowered":
        return (
            f"{spec.name} not measurable yet: detectable change {_num(looks.mde * 100)}%"
            f" > allowed {_num(tol * 100)}%"
        )
    watch = f"; {', '.join(looks.leaning)} tail leaning worse" if looks.leaning else ""
    return f"{spec.name} {_pct(rel)} ({ci}); {mean_text}{watch}, not yet shown within {bound}"


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
) -> list[_Tail]:
    """Each tail's test once it holds ``MIN_TAIL_SAMPLES`` pooled samples.

    A ``decrease`` metric's tails are its lowest values: the tests run on the negated
    cohorts, where they are the highest.
    """
    if not quantiles:
        return []
    tol = spec.tail_tolerance
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
        out.append(_Tail(name, changes[q], p_value, p_value < alpha, leaning=log_e > 0.0))
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


# --------------------------------------------------------------------- Hodges-Lehmann shift


def _hodges_lehmann_sorted(
    b: NDArray[np.float64], c: NDArray[np.float64], confidence: float
) -> ShiftEstimate:
    """Hodges-Lehmann on sorted cohorts (see ``hodges_lehmann``)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n, m = int(c.size), int(b.size)
    nm = n * m
    # c_i - b_j == c_i + (-b_j) exactly, so X+Y with -b ascending holds the very differences
    # a brute-force np.subtract.outer would compute. Addition commutes, so the smaller
    # cohort can index the rows: counting costs O(rows * log(columns)).
    neg_b = -b[::-1]
    pairs = _PairSums(c, neg_b) if n <= m else _PairSums(neg_b, c)
    z = float(special.ndtri(0.5 + confidence / 2.0))
    k = max(1, math.floor(nm / 2.0 - z * math.sqrt(nm * (n + m + 1) / 12.0)))
    k = min(k, (nm + 1) // 2)
    low_rank, high_rank = k, nm - k + 1
    mid_low, mid_high = (nm + 1) // 2, nm // 2 + 1  # the same rank when nm is odd
    found = pairs.order_statistics((low_rank, high_rank, mid_low, mid_high))
    low, high = found[low_rank], found[high_rank]
    estimate = (found[mid_low] + found[mid_high]) / 2.0 if nm % 2 == 0 else found[mid_low]
    return ShiftEstimate(estimate=estimate, low=low, high=high, confidence=confidence)


@dataclass(slots=True)
class _Window:
    """Per-row active column ranges ``[lo_i, hi_i)`` of a selection in X+Y.

    ``below`` counts the pairs left of the ranges: all of them rank before the target.
    """

    lo: NDArray[np.intp]
    hi: NDArray[np.intp]
    below: int

    def size(self) -> int:
        """Number of active pairs."""
        return int((self.hi - self.lo).sum())


class _PairSums:
    """Order statistics of the multiset {x_i + y_j} of two sorted arrays, without building it.

    ``order_statistics`` first tries ``_Brackets`` (all ranks at once, usually two counting
    rounds); if that gives up, each rank is found by the sampling selection below.

    Selection keeps, per row ``i``, an active column range ``[lo_i, hi_i)`` known to contain
    every pair that may still be the target. Each round samples active pairs, takes two
    sample quantiles that bracket the target's rank, and counts the pairs below each pivot
    with ``searchsorted`` (O(n log m)); the active set shrinks to a few percent per round, and
    once it is O(n + m) it is materialised and finished with ``np.partition``.

    Counting is exact for the *rounded* sums ``fl(x_i + y_j)``: rounding is monotone, so each
    row is still sorted, and ``searchsorted`` on ``fl(t - x_i)`` only brackets the boundary;
    the few ambiguous columns are settled by a bisection on the computed sums.

    The first cuts are kept: the interval ends lie close to the median, so a selection for
    one of them starts inside the window the median's first rounds left.
    """

    __slots__ = ("_cuts", "_limit", "_m", "_n", "_sample_size", "_x", "_y")

    def __init__(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> None:
        self._x = x
        self._y = y
        self._n = int(x.size)
        self._m = int(y.size)
        self._limit = max(self._n + self._m, 1 << 15)
        # Bigger samples mean fewer O(n log m) counting rounds but cost O(n + s log s).
        self._sample_size = min(_SAMPLE_MAX, max(_SAMPLE_MIN, (self._n + self._m) // 8))
        self._cuts: list[tuple[int, NDArray[np.intp]]] = []  # (pairs counted, per-row counts)

    def count(
        self,
        t: float,
        *,
        strict: bool,
        lo: NDArray[np.intp] | None = None,
        hi: NDArray[np.intp] | None = None,
    ) -> NDArray[np.intp]:
        """Per row, the number of columns with ``fl(x_i + y_j) <= t`` (``< t`` if strict).

        ``lo`` / ``hi`` are bounds known to hold; they only narrow the search among
        ambiguous columns (long runs of ties).
        """
        # Rows are handled in reverse so that the keys t - x_i ascend: searchsorted is
        # several times faster on sorted keys.
        x, y, m = self._x[::-1], self._y, self._m
        u = t - x
        margin = 4.0 * (np.spacing(np.abs(u)) + np.spacing(abs(t)))
        # Columns with y_j <= u_i - margin sum to < t; from u_i + margin on they sum to > t.
        # Only columns in between are ambiguous, and usually there are none.
        upper = u + margin
        found: NDArray[np.intp] = np.searchsorted(y, u - margin, side="right")
        rows = np.flatnonzero((found < m) & (y[np.minimum(found, m - 1)] < upper))
        if rows.size:
            left = found[rows]
            right: NDArray[np.intp] = np.searchsorted(y, upper[rows], side="left")
            if lo is not None:
                left = np.maximum(left, lo[::-1][rows])
            if hi is not None:
                right = np.minimum(right, hi[::-1][rows])
            found[rows] = self._bisect(x[rows], t, left, right, strict=strict)
        return found[::-1]

    def _bisect(
        self,
        x: NDArray[np.float64],
        t: float,
        left: NDArray[np.intp],
        right: NDArray[np.intp],
        *,
        strict: bool,
    ) -> NDArray[np.intp]:
        """Per row, the first column in ``[left, right)`` whose computed sum exceeds ``t``."""
        y, last = self._y, self._m - 1
        while True:
            open_ = left < right
            if not open_.any():
                return left
            mid = (left + right) // 2
            sums = x + y[np.minimum(mid, last)]
            inside = (sums < t) if strict else (sums <= t)
            left = np.where(open_ & inside, mid + 1, left)
            right = np.where(open_ & ~inside, mid, right)

    def order_statistics(self, ranks: Iterable[int]) -> dict[int, float]:
        """The sums of the given 1-based ranks, keyed by rank."""
        wanted = sorted(set(ranks))
        if self._n * self._m <= self._limit:  # small enough to build outright
            sums = np.add.outer(self._x, self._y).ravel()
            sums.partition([r - 1 for r in wanted])
            return {r: float(sums[r - 1]) for r in wanted}
        bracketed = _Brackets(self).search(wanted)
        if bracketed is not None:
            return bracketed
        return self.selected(wanted)

    def selected(self, wanted: list[int]) -> dict[int, float]:
        """The order statistics by sampling selection (``select``), one rank at a time."""
        found: dict[int, float] = {}
        # Central ranks first: their coarse cuts give the outer ranks a head start.
        middle = self._n * self._m + 1
        for rank in sorted(wanted, key=lambda r: abs(2 * r - middle)):
            previous = found.get(rank - 1)
            found[rank] = (
                self.select(rank) if previous is None else self.successor(previous, rank - 1)
            )
        return found

    def select(self, k: int) -> float:
        """The k-th smallest sum (1-based)."""
        n, m = self._n, self._m
        rng = np.random.default_rng([n, m, k])  # deterministic: same data, same work
        window = self._start(k)
        stalled = False
        while (active := window.size()) > self._limit:
            sample = self._sample(window, active, rng)
            s = sample.size
            q = (k - window.below) / active  # the target's quantile inside the active set
            centre = q * s
            if stalled:  # ties can keep a bracket from shrinking: cut at one value instead
                i_lo = i_hi = min(s - 1, max(0, round(centre)))
            else:
                half = 3.0 * math.sqrt(s * q * (1.0 - q)) + 2.0
                i_lo, i_hi = math.floor(centre - half), math.ceil(centre + half)
            t_lo = float(sample[i_lo]) if i_lo >= 0 else -math.inf
            t_hi = float(sample[i_hi]) if i_hi < s else math.inf
            if i_lo >= 0 and self._cut(window, k, t_lo, strict=True):
                continue  # target < t_lo
            if i_hi < s and not self._cut(window, k, t_hi, strict=False):
                continue  # target > t_hi
            if t_lo == t_hi:
                return t_lo  # fewer than k sums below it, at least k at or below it
            stalled = window.size() > active // 2
        return self._materialised(window, k - window.below)

    def _start(self, k: int) -> _Window:
        """The tightest window for rank k that earlier cuts allow."""
        window = _Window(np.zeros(self._n, dtype=np.intp), np.full(self._n, self._m, np.intp), 0)
        hi_total = self._n * self._m
        for total, counts in self._cuts:  # nested prefix sets: any two make a valid window
            if window.below < total < k:
                window.lo, window.below = counts, total
            elif k <= total < hi_total:
                window.hi, hi_total = counts, total
        return window

    def _cut(self, window: _Window, k: int, t: float, *, strict: bool) -> bool:
        """Narrow the window at pivot ``t``; True if the target is among the sums counted."""
        counts = self.count(t, strict=strict, lo=window.lo, hi=window.hi)
        total = int(counts.sum())
        if len(self._cuts) < _KEPT_CUTS:
            self._cuts.append((total, counts))
        if k <= total:
            window.hi = counts
            return True
        window.lo, window.below = counts, total
        return False

    def successor(self, value: float, k: int) -> float:
        """The (k+1)-th smallest sum, given that ``value`` is the k-th."""
        le = self.count(value, strict=False)
        if int(le.sum()) > k:
            return value
        rows = np.flatnonzero(le < self._m)
        return float(np.min(self._x[rows] + self._y[le[rows]]))

    def _sample(
        self, window: _Window, active: int, rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Sorted sums of active pairs drawn uniformly (with replacement)."""
        lo = window.lo
        width = window.hi - lo
        ends = np.cumsum(width)
        draws = rng.integers(0, active, size=self._sample_size)
        rows = np.searchsorted(ends, draws, side="right")
        cols = lo[rows] + (draws - (ends[rows] - width[rows]))
        return np.sort(self._x[rows] + self._y[cols])

    def window_sums(self, lo: NDArray[np.intp], hi: NDArray[np.intp]) -> NDArray[np.float64]:
        """The sums of the pairs in the per-row column ranges ``[lo_i, hi_i)``, unordered."""
        width = hi - lo
        rows = np.flatnonzero(width)
        width = width[rows]
        starts = np.cumsum(width) - width
        cols = np.arange(int(starts[-1] + width[-1])) - np.repeat(starts - lo[rows], width)
        sums: NDArray[np.float64] = self._x[np.repeat(rows, width)] + self._y[cols]
        return sums

    def _materialised(self, window: _Window, rank: int) -> float:
        """The rank-th smallest active sum, by building the (few) active pairs."""
        lo = window.lo
        width = window.hi - lo
        total = int(width.sum())
        rows = np.repeat(np.arange(self._n), width)
        starts = np.cumsum(width) - width
        cols = np.arange(total) - np.repeat(starts - lo, width)
        sums = self._x[rows] + self._y[cols]
        return float(np.partition(sums, rank - 1)[rank - 1])


class _Brackets:
    """Order statistics of X+Y by bracketing them between pivots of known rank.

    A first pivot per target comes from the sums of two grids of evenly spaced order
    statistics (``_GRID_SIDE`` per cohort), whose quantiles lie close to those of all the
    sums. Its exact count says how far off it is; the next pivots go that many pairs
    further at the local slope (value per pair: from the grid, then between the tightest
    pivots so far), a few thousand pairs either side of the target, which are then built
    and partitioned. All targets' new pivots are counted in one ``searchsorted``.

    A pivot ``t`` cuts row ``i`` at ``searchsorted(y, fl(t - x_i))``. When every value is a
    whole number of moderate size (latency in whole milliseconds), sums and differences
    are exact and pivots sit at half-integers: the cuts are exact, and a target between
    two pivots one apart is the whole number between them, however many pairs tie on
    it. Otherwise a cut may misplace pairs whose sum lies within a few ulps of ``t``
    (``_fuzz``): an answer is accepted only if it lies further than that from both its
    pivots, which makes it exact (every pair left of the lower cut is then smaller, every
    pair right of the upper cut larger). Ties that keep pivots from closing in are
    checked with exact counts (``_PairSums.count``); a pivot found among near-ties of an
    answer is replaced by pivots clear of them. A search that does not settle within
    ``_ROUNDS`` rounds returns None, and the caller falls back to the sampling selection.
    """

    __slots__ = (
        "_banned",
        "_cuts",
        "_exact",
        "_grid",
        "_pairs",
        "_per_cell",
        "_span",
        "_t",
        "_totals",
        "_x_abs",
    )

    def __init__(self, pairs: _PairSums) -> None:
        self._pairs = pairs
        x, y = pairs._x, pairs._y  # noqa: SLF001 - a helper of _PairSums
        n, m = pairs._n, pairs._m  # noqa: SLF001
        self._exact = _whole(x) and _whole(y)
        self._x_abs = max(abs(float(x[0])), abs(float(x[-1])))
        self._span = float(x[-1] - x[0]) + float(y[-1] - y[0])
        side = _GRID_SIDE if n + m <= 4 * _GRID_SIDE**2 else 2 * _GRID_SIDE
        self._grid = np.add.outer(_spaced(x, side), _spaced(y, side)).ravel()
        self._per_cell = n * m / self._grid.size
        # Pivots counted so far, ascending, per pivot its total and per-row cut. The ends
        # are just below the smallest sum (no pair at or below it) and just above the
        # largest (every pair): rounding is monotone, so those are fl(x_0 + y_0) and
        # fl(x_last + y_last), and the cuts there are known.
        self._t: list[float] = [
            self._below(float(x[0] + y[0])),
            self._above(float(x[-1] + y[-1])),
        ]
        self._totals: list[int] = [0, n * m]
        self._cuts: list[NDArray[np.intp]] = [
            np.zeros(n, dtype=np.intp),
            np.full(n, m, dtype=np.intp),
        ]
        self._banned: set[float] = set()  # pivots found among near-ties of an answer

    def search(self, wanted: list[int]) -> dict[int, float] | None:
        """The sums of the given ranks (ascending), or None to fall back."""
        groups = _rank_groups(wanted)
        # Only the grid cells the groups read need to be in place (cheaper than a sort).
        cells = {c for group in groups for c in self._cells(group)}
        self._grid.partition(sorted(cells))
        self._count([self._probe(group) for group in groups])
        found: dict[int, float] = {}
        windows: dict[tuple[int, ...], int] = {}
        for _ in range(_ROUNDS):
            pivots: list[float] = []
            for group in groups:
                if group[0] not in found:
                    values, more = self._step(group, windows)
                    found.update(values)
                    pivots += more
            if not pivots:
                return found if len(found) == len(wanted) else None
            self._count(pivots)
        return None

    def _step(
        self, group: tuple[int, ...], windows: dict[tuple[int, ...], int]
    ) -> tuple[dict[int, float], list[float]]:
        """One round for one group: its sums if settled, else the pivots to count next."""
        nm = self._totals[-1]
        limit = 4 * max(_WINDOW, self._pairs._n)  # noqa: SLF001 - building beats counting
        a, b = self._bracket(group)
        window = self._totals[b] - self._totals[a]
        stalled = windows.get(group, nm + 1) < 2 * window
        windows[group] = window
        if self._exact and self._t[b] - self._t[a] <= 1.0:
            return dict.fromkeys(group, self._t[a] + 0.5), []  # one whole number between
        if window <= limit:
            return self._settled(group, a, b)
        proposed = [] if stalled else self._next_pivots(group, a, b, stalled=False)
        if proposed:
            return {}, proposed
        # Not closing in: a tie, a cluster of near-ties, or a poor slope.
        if self._exact or not self._tied_near(group):
            return {}, self._next_pivots(group, a, b, stalled=True)
        tied, pivot = self._tie(group, a, b)
        if tied is not None:
            return tied, []
        if window <= 32 * limit:
            return self._settled(group, a, b)
        return {}, [pivot, *self._next_pivots(group, a, b, stalled=True)]

    def _settled(
        self, group: tuple[int, ...], a: int, b: int
    ) -> tuple[dict[int, float], list[float]]:
        """The group's sums from its window; or, too close to a pivot, pivots to replace it."""
        values = self._settle(group, a, b)
        if values is not None:
            return values, []
        return {}, self._unsettled(group, a, b)

    def _place(self, rank: float) -> float:
        """Where a rank among all the sums falls in the sorted grid (a cell index)."""
        return (rank - 0.5) / self._per_cell - 0.5

    def _cells(self, group: tuple[int, ...]) -> tuple[int, ...]:
        """Grid cells read for a group: its probe's two, and those of its slope and ties."""
        size = self._grid.size
        place = self._place(sum(group) / len(group))
        probe = min(max(math.floor(place), 0), size - 2)
        centre = min(max(round(self._place(group[0])), 1), size - 2)
        across = max(8, size // 100)
        start = min(max(centre - across // 2, 0), size - 1 - across)
        return probe, probe + 1, centre - 1, centre + 1, start, start + across

    def _probe(self, group: tuple[int, ...]) -> float:
        """The grid's estimate of the sum at the group's ranks, clear of grid values."""
        grid = self._grid
        place = self._place(sum(group) / len(group))
        i = self._cells(group)[0]
        frac = min(max(place - i, 0.0), 1.0)
        low, high = float(grid[i]), float(grid[i + 1])
        t = low + (high - low) * frac
        if self._exact:
            return math.floor(t) + 0.5
        return self._below(t) if t in {low, high} else t

    def _below(self, v: float) -> float:
        """A pivot just below the value ``v``, clear of pairs tied with it."""
        return math.ceil(v) - 0.5 if self._exact else v - self._nudge(v)

    def _above(self, v: float) -> float:
        """A pivot just above the value ``v``, clear of pairs tied with it."""
        return math.floor(v) + 0.5 if self._exact else v + self._nudge(v)

    def _nudge(self, v: float) -> float:
        """Far enough past ``v`` to clear its near-ties (sums a few ulps apart)."""
        return 16.0 * self._fuzz(v) + self._span * 2.0**-40

    def _count(self, pivots: list[float]) -> None:
        """Count the pairs at or below each new pivot (per row) and file them in order."""
        fresh = sorted({t for t in pivots if math.isfinite(t)} - set(self._t) - self._banned)
        if not fresh:
            return
        pairs = self._pairs
        x, y, n = pairs._x, pairs._y, pairs._n  # noqa: SLF001
        t = np.asarray(fresh)
        # Rows in reverse make each pivot's keys ascend: searchsorted runs faster on them.
        keys = (t[:, None] - x[None, ::-1]).ravel()
        cuts = np.searchsorted(y, keys, side="right").reshape(t.size, n)[:, ::-1]
        totals = cuts.sum(axis=1)
        for value, total, cut in zip(fresh, totals.tolist(), cuts, strict=True):
            at = bisect.bisect_left(self._t, value)
            self._t.insert(at, value)
            self._totals.insert(at, int(total))
            self._cuts.insert(at, cut)

    def _bracket(self, group: tuple[int, ...]) -> tuple[int, int]:
        """Indices of the tightest pivots with fewer pairs than the group's ranks, and enough."""
        a = bisect.bisect_left(self._totals, group[0]) - 1  # last total < lowest rank
        b = bisect.bisect_left(self._totals, group[-1])  # first total >= highest rank
        return a, b

    def _fuzz(self, t: float) -> float:
        """How far from ``t`` a pair may lie on the wrong side of its cut."""
        if self._exact:
            return 0.0
        return 4.0 * (float(np.spacing(abs(t) + self._x_abs) * 2.0) + float(np.spacing(abs(t))))

    def _window_values(self, group: tuple[int, ...], a: int, b: int) -> list[float]:
        """Build the pairs between pivots ``a`` and ``b``; the group's ranks among them."""
        below = self._totals[a]
        sums = self._pairs.window_sums(self._cuts[a], self._cuts[b])
        kth = [r - below - 1 for r in group]
        sums.partition(kth)
        return [float(sums[k]) for k in kth]

    def _settle(self, group: tuple[int, ...], a: int, b: int) -> dict[int, float] | None:
        """The group's ranks from the pairs between pivots ``a`` and ``b``, if certain."""
        values = self._window_values(group, a, b)
        low, high = self._t[a] + self._fuzz(self._t[a]), self._t[b] - self._fuzz(self._t[b])
        if all(low < v < high for v in values):
            return dict(zip(group, values, strict=True))
        return None  # too close to a pivot to be sure of its rank

    def _unsettled(self, group: tuple[int, ...], a: int, b: int) -> list[float]:
        """Drop a pivot that lies among near-ties of an answer; pivots clear of them."""
        values = self._window_values(group, a, b)
        t_b = self._t[b]
        if any(v >= t_b - self._fuzz(t_b) for v in values):
            self._drop(b)
        if any(v <= self._t[a] + self._fuzz(self._t[a]) for v in values):
            self._drop(a)
        return [p for v in values for p in (self._below(v), self._above(v))]

    def _drop(self, i: int) -> None:
        self._banned.add(self._t[i])
        del self._t[i], self._totals[i], self._cuts[i]

    def _tie(self, group: tuple[int, ...], a: int, b: int) -> tuple[dict[int, float] | None, float]:
        """Whether the group's ranks all fall on one (tied) sum inside the window.

        The candidate is the pair at the group's place in the window, taken row by row:
        when pivots stop closing in, most of the window is one tied value. Counting pairs
        below and at it exactly settles the question; if not, the pivot returned (just
        past the candidate, on the target's side) keeps its ties out of the window.
        """
        pairs = self._pairs
        lo, hi = self._cuts[a], self._cuts[b]
        width = hi - lo
        ends = np.cumsum(width)
        place = group[0] - self._totals[a] - 1  # 0-based within the window
        row = int(np.searchsorted(ends, place, side="right"))
        col = int(lo[row] + place - (ends[row] - width[row]))
        value = float(pairs._x[row] + pairs._y[col])  # noqa: SLF001
        below = int(pairs.count(value, strict=True).sum())
        at_or_below = int(pairs.count(value, strict=False).sum())
        if below < group[0] and group[-1] <= at_or_below:
            return dict.fromkeys(group, value), math.nan
        return None, self._above(value) if at_or_below < group[0] else self._below(value)

    def _next_pivots(self, group: tuple[int, ...], a: int, b: int, *, stalled: bool) -> list[float]:
        """Pivots a little either side of where the group's ranks should lie."""
        t_a, t_b = self._t[a], self._t[b]
        c_a, c_b = self._totals[a], self._totals[b]
        from_a = group[0] - c_a <= c_b - group[-1]  # the pivot nearer (in pairs)
        nm = self._totals[-1]
        inside = c_b - c_a
        if c_a > 0 and c_b < nm and inside <= nm // 8:
            # Interpolate between the pivots: over a small share of all the pairs the
            # count is near linear (its curvature error grows with the share) up to the
            # discreteness of the pairs.
            slope = (t_b - t_a) / inside  # value per pair
            margin = _WINDOW / 4.0 + 3.0 * math.sqrt(inside) + 2.0 * inside * inside / nm
        else:
            # Step from the nearer pivot at the grid's slope, half the step more for its
            # error.
            slope = self._grid_slope(group)
            margin = _WINDOW / 4.0 + min(group[0] - c_a, c_b - group[-1]) / 2.0
        if from_a:
            low_t = t_a + (group[0] - c_a) * slope
            high_t = t_a + (group[-1] - c_a) * slope
        else:
            low_t = t_b - (c_b - group[0]) * slope
            high_t = t_b - (c_b - group[-1]) * slope
        reach = margin * slope
        wanted = [self._below(low_t - reach), self._above(high_t + reach)]
        if self._exact:  # at least one whole number further than the pivot stepped from
            if from_a:
                wanted[1] = max(wanted[1], t_a + 1.0)
            else:
                wanted[0] = min(wanted[0], t_b - 1.0)
            if t_b - t_a <= 3.0:  # every whole number between: settled next round
                wanted = [t_a + i for i in range(1, int(t_b - t_a))]
        elif stalled:  # halve the interval as well
            wanted.append(self._above((t_a + t_b) / 2.0))
        return [t for t in wanted if t_a < t < t_b and t not in self._t]

    def _tied_near(self, group: tuple[int, ...]) -> bool:
        """Whether the grid shows (near-)ties around the group's ranks."""
        _, _, before, after, _, _ = self._cells(group)
        low, high = float(self._grid[before]), float(self._grid[after])
        return high - low <= self._nudge(low)

    def _grid_slope(self, group: tuple[int, ...]) -> float:
        """Value per pair near the group's ranks, from the grid (1% of its cells across)."""
        _, _, _, _, start, end = self._cells(group)
        return float(self._grid[end] - self._grid[start]) / ((end - start) * self._per_cell)


# ------------------------------------------------------------------------------- helpers


def _as_sample(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    return arr


def _check_values(b: NDArray[np.float64], c: NDArray[np.float64]) -> None:
    for arr in (b, c):
        if not np.isfinite(arr).all():
            raise ValueError("samples must be finite")
        if np.abs(arr).max() > _MAX_ABS:
            raise ValueError("sample magnitudes must stay below 1e301")


def _rank_groups(ranks: list[int]) -> list[tuple[int, ...]]:
    """Ascending ranks, grouped where they lie close enough to share one window."""
    groups: list[list[int]] = []
    for rank in ranks:
        if groups and rank - groups[-1][0] <= _WINDOW // 4:
            groups[-1].append(rank)
        else:
            groups.append([rank])
    return [tuple(group) for group in groups]


def _spaced(x: NDArray[np.float64], count: int) -> NDArray[np.float64]:
    """At most ``count`` evenly spaced order statistics of a sorted array (midpoints)."""
    if x.size <= count:
        return x
    return x[((np.arange(count) + 0.5) * (x.size / count)).astype(np.intp)]


def _whole(x: NDArray[np.float64]) -> bool:
    """True when every value is a whole number of magnitude at most ``_EXACT_MAX``."""
    return bool(max(-x[0], x[-1]) <= _EXACT_MAX and np.array_equal(x, np.floor(x)))


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
