"""Mann-Whitney U, Hodges-Lehmann and the distribution analyzer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from coalmine.analyzers import mann_whitney
from coalmine.analyzers.mann_whitney import (
    _Brackets,
    _PairSums,
    analyze_distribution,
    hodges_lehmann,
    rank_sum_test,
)
from coalmine.analyzers.sequential import AucMixture, DistributionEvidence
from coalmine.config.models import MetricSpec

ALTERNATIVES = ("greater", "less", "two-sided")

# ------------------------------------------------------------------ rank-sum test vs scipy


def _cases(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Continuous, shifted, heavily tied (small integers) and unequal-sized cohorts."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        n_b, n_c = (int(v) for v in rng.integers(1, 400, size=2))
        match i % 4:
            case 0:
                b, c = rng.normal(size=n_b), rng.normal(0.3, size=n_c)
            case 1:
                b, c = rng.lognormal(0, 0.5, n_b), rng.lognormal(0, 0.5, n_c) * 1.1
            case 2:  # latency in whole ms: many ties across and within cohorts
                b, c = rng.poisson(20, n_b), rng.poisson(21, n_c)
            case _:
                b, c = rng.integers(0, 4, n_b), rng.integers(0, 4, n_c)
        cases.append((b.astype(np.float64), c.astype(np.float64)))
    return cases


@pytest.mark.parametrize(("baseline", "canary"), _cases(seed=1, count=240))
def test_rank_sum_matches_scipy(baseline: np.ndarray, canary: np.ndarray) -> None:
    result = rank_sum_test(baseline, canary)
    ours = dict(
        zip(ALTERNATIVES, (result.p_greater, result.p_less, result.p_two_sided), strict=True)
    )
    for alternative in ALTERNATIVES:
        ref = stats.mannwhitneyu(
            canary, baseline, method="asymptotic", use_continuity=True, alternative=alternative
        )
        assert result.u == ref.statistic  # scipy reports U of its first sample, the canary
        if math.isnan(ref.pvalue):  # scipy's answer when every value is tied
            assert ours[alternative] == 1.0
            continue
        # Same formula, same operations: agreement to 1e-9 relative (what the brief asks).
        assert ours[alternative] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert result.auc == pytest.approx(result.u / (baseline.size * canary.size), rel=1e-15)


def test_rank_sum_large_tied_samples_match_scipy() -> None:
    rng = np.random.default_rng(7)
    baseline = rng.poisson(30, 20_000).astype(float)
    canary = rng.poisson(30.2, 15_000).astype(float)
    result = rank_sum_test(baseline, canary)
    for alternative, ours in zip(
        ALTERNATIVES, (result.p_greater, result.p_less, result.p_two_sided), strict=True
    ):
        ref = stats.mannwhitneyu(canary, baseline, method="asymptotic", alternative=alternative)
        assert ours == pytest.approx(ref.pvalue, rel=1e-9)


def test_rank_sum_all_tied_has_no_evidence() -> None:
    result = rank_sum_test(np.full(30, 5.0), np.full(20, 5.0))
    assert (result.z, result.p_greater, result.p_less, result.p_two_sided) == (0, 1, 1, 1)
    assert result.u == 300.0  # every pair a tie: half of 30 * 20
    assert result.auc == 0.5


def test_rank_sum_direction_of_z() -> None:
    rng = np.random.default_rng(3)
    baseline = rng.normal(size=200)
    larger = rank_sum_test(baseline, baseline + 1.0)
    assert larger.z > 0
    assert larger.p_greater < 1e-6
    assert larger.p_less > 0.5


def test_rank_sum_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        rank_sum_test(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        rank_sum_test(np.array([1.0, np.nan]), np.array([1.0]))


# ------------------------------------------------------------- Hodges-Lehmann vs brute force


def _brute_force(
    baseline: np.ndarray, canary: np.ndarray, confidence: float
) -> tuple[float, float, float]:
    diffs = np.sort(np.subtract.outer(canary, baseline).ravel())
    nm, n, m = diffs.size, canary.size, baseline.size
    z = special.ndtri(0.5 + confidence / 2)
    k = max(1, math.floor(nm / 2 - z * math.sqrt(nm * (n + m + 1) / 12)))
    return float(np.median(diffs)), float(diffs[k - 1]), float(diffs[nm - k])


def _assert_exact(baseline: np.ndarray, canary: np.ndarray, confidence: float) -> None:
    shift = hodges_lehmann(baseline, canary, confidence)
    # Exact order statistics: equal to the brute-force sort bit for bit, no tolerance.
    assert (shift.estimate, shift.low, shift.high) == _brute_force(baseline, canary, confidence)
    assert shift.low <= shift.estimate <= shift.high
    assert shift.confidence == confidence


tied = st.integers(-5, 5).map(float)
spread = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
cohort = st.one_of(
    st.lists(tied, min_size=1, max_size=40), st.lists(spread, min_size=1, max_size=40)
)


@settings(max_examples=300, deadline=None)
@given(baseline=cohort, canary=cohort, confidence=st.floats(0.5, 0.995))
def test_hodges_lehmann_matches_brute_force(
    baseline: list[float], canary: list[float], confidence: float
) -> None:
    _assert_exact(np.array(baseline), np.array(canary), confidence)


@pytest.mark.parametrize("seed", range(8))
def test_hodges_lehmann_larger_samples_match_brute_force(seed: int) -> None:
    # n*m ~ 1e5 is beyond the "build outright" size, so the X+Y selection runs.
    rng = np.random.default_rng(seed)
    n_b, n_c = (int(v) for v in rng.integers(250, 400, size=2))
    match seed % 4:
        case 0:
            baseline, canary = rng.lognormal(0, 0.5, n_b), rng.lognormal(0.1, 0.5, n_c)
        case 1:
            baseline, canary = rng.poisson(20, n_b) * 1.0, rng.poisson(22, n_c) * 1.0
        case 2:  # large offset, tiny spread: sums round, the exact count must still hold
            baseline, canary = 1e9 + rng.normal(size=n_b), rng.normal(size=n_c) * 1e-3
        case _:
            baseline, canary = rng.integers(0, 2, n_b) * 1.0, rng.integers(0, 2, n_c) * 1.0
    _assert_exact(baseline, canary, 0.9)


@pytest.mark.parametrize("seed", range(4))
def test_selection_in_x_plus_y_is_exact(seed: int) -> None:
    # A tiny materialisation limit forces many selection rounds, including stalled
    # brackets on heavily tied sums.
    rng = np.random.default_rng(seed)
    x = np.sort(rng.integers(0, 3 + 50 * (seed % 2), 150) * 1.0)
    y = np.sort(rng.normal(size=120) if seed > 1 else rng.integers(0, 4, 120) * 1.0)
    pairs = _PairSums(x, y)
    pairs._limit = 10
    sums = np.sort(np.add.outer(x, y).ravel())
    ranks = [1, 2, sums.size // 2, sums.size - 1, sums.size, *rng.integers(1, sums.size, 6)]
    for rank in ranks:
        assert pairs.select(int(rank)) == sums[rank - 1]


def _cohorts(kind: str, rng: np.random.Generator, n_b: int, n_c: int) -> tuple[np.ndarray, ...]:
    """Data that takes each path of the bracketing search."""
    match kind:
        case "continuous":
            return rng.lognormal(0, 0.5, n_b), rng.lognormal(0.05, 0.5, n_c)
        case "whole_ms":  # exact arithmetic, heavy ties: pivots at half-integers
            b = np.rint(rng.lognormal(np.log(100), 0.5, n_b))
            return b, np.rint(rng.lognormal(np.log(104), 0.5, n_c))
        case "seconds":  # ms in seconds: near-ties a few ulps apart
            b = np.rint(rng.lognormal(np.log(100), 0.5, n_b)) / 1000
            return b, np.rint(rng.lognormal(np.log(100), 0.5, n_c)) / 1000
        case "zeros":  # exact ties at 0 among continuous values
            b, c = rng.normal(size=n_b), rng.normal(0.2, size=n_c)
            b[: n_b // 3] = 0.0
            c[: n_c // 3] = 0.0
            return b, c
        case "offset":  # large offset, tiny spread: the sums round
            return 1e9 + rng.normal(size=n_b), rng.normal(size=n_c) * 1e-3
        case "binary":
            return rng.integers(0, 2, n_b) * 1.0, rng.integers(0, 2, n_c) * 1.0
        case _:  # one value
            return np.full(n_b, 3.3), np.full(n_c, 3.3)


KINDS = ("continuous", "whole_ms", "seconds", "zeros", "offset", "binary", "constant")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", [(700, 900), (60, 1500), (1200, 400)])
def test_hodges_lehmann_by_bracketing_matches_brute_force(
    kind: str, sizes: tuple[int, int]
) -> None:
    # n*m of 2.4e4..6.3e5 pairs: beyond building outright (small ones) or not.
    rng = np.random.default_rng(sum(map(ord, kind)) + sizes[0])
    baseline, canary = _cohorts(kind, rng, *sizes)
    for confidence in (0.5, 0.9, 0.975):
        _assert_exact(baseline, canary, confidence)


@pytest.mark.parametrize("kind", KINDS)
def test_bracketing_search_is_exact_when_forced_through_many_rounds(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny windows and grids make every group refine its pivots over several rounds:
    # interpolation, stalls, tie checks and replaced pivots. An answer it gives is exact;
    # when it gives up (None), order_statistics falls back to the sampling selection.
    monkeypatch.setattr(mann_whitney, "_WINDOW", 8)
    monkeypatch.setattr(mann_whitney, "_GRID_SIDE", 4)
    monkeypatch.setattr(mann_whitney, "_ROUNDS", 60)
    rng = np.random.default_rng(len(kind))
    b, c = _cohorts(kind, rng, 300, 250)
    x, y = np.sort(c), -np.sort(b)[::-1]
    sums = np.sort(np.add.outer(x, y).ravel())
    ranks = sorted({1, 2, 40, sums.size // 2, sums.size // 2 + 1, sums.size - 7, sums.size})
    pairs = _PairSums(x, y)
    found = _Brackets(pairs).search(ranks)
    if found is not None:
        assert found == {r: float(sums[r - 1]) for r in ranks}
    pairs._limit = 10
    assert pairs.order_statistics(ranks) == {r: float(sums[r - 1]) for r in ranks}


@pytest.mark.parametrize("kind", ["continuous", "whole_ms", "zeros", "binary", "constant"])
def test_bracketing_settles_without_falling_back(kind: str) -> None:
    # The fast path must not quietly give up on ordinary data: the fallback is 3-10x
    # slower. (Near-ties a few ulps apart, "seconds", may fall back: exact either way.)
    rng = np.random.default_rng(11)
    for n_b, n_c in ((1500, 1500), (4096, 4096), (300, 3000)):
        b, c = _cohorts(kind, rng, n_b, n_c)
        x, y = np.sort(c), -np.sort(b)[::-1]
        if x.size > y.size:
            x, y = y, x
        nm = x.size * y.size
        ranks = [nm // 2 - nm // 40, (nm + 1) // 2, nm // 2 + 1, nm // 2 + nm // 40]
        assert _Brackets(_PairSums(x, y)).search(ranks) is not None


def test_hodges_lehmann_single_pair() -> None:
    shift = hodges_lehmann(np.array([2.0]), np.array([5.0]), 0.95)
    assert (shift.estimate, shift.low, shift.high) == (3.0, 3.0, 3.0)


def test_hodges_lehmann_rejects_bad_confidence() -> None:
    with pytest.raises(ValueError, match="confidence"):
        hodges_lehmann(np.ones(3), np.ones(3), 1.0)


def test_hodges_lehmann_never_forms_all_pairwise_differences() -> None:
    import tracemalloc  # noqa: PLC0415 - only this test traces allocations

    rng = np.random.default_rng(0)
    baseline, canary = rng.lognormal(0, 0.5, 10_000), rng.lognormal(0, 0.5, 10_000)
    tracemalloc.start()
    try:
        hodges_lehmann(baseline, canary, 0.9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # ~2.2 MB measured (a few arrays of n); the n*m = 1e8 differences would be 800 MB.
    # numpy reports its buffers to tracemalloc, so this catches an O(n*m) path without
    # reading a clock.
    assert peak < 32 * 2**20


# ---------------------------------------------------------------------- analyze_distribution

LATENCY = MetricSpec(name="latency_ms")  # increase is harmful, tolerance 10%, min 50


def _lognormal(seed: int, n: int, factor: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(np.log(100), 0.5, n) * factor


def test_large_regression_fails() -> None:
    result = analyze_distribution(LATENCY, _lognormal(1, 500), _lognormal(2, 500, 1.5), 0.05)
    assert result.outcome == "fail"
    assert result.measured
    assert result.analyzer == "mann_whitney"
    assert result.detail["relative_change"] > 0.3
    assert result.detail["p_value"] < 1e-10
    assert result.reason.startswith("latency_ms +")
    assert result.reason.endswith("beyond +10%")
    assert "90% CI" in result.reason


def test_same_distribution_passes_and_is_measured() -> None:
    result = analyze_distribution(LATENCY, _lognormal(3, 2000), _lognormal(4, 2000), 0.05)
    assert result.outcome == "pass"
    assert result.measured
    assert result.detail["mde"] <= 0.10
    assert "within +10%" in result.reason


def test_small_but_significant_change_within_tolerance_passes() -> None:
    # +3% is highly significant at n = 20000 but practically irrelevant at 10% tolerance.
    result = analyze_distribution(LATENCY, _lognormal(5, 20_000), _lognormal(6, 20_000, 1.03), 0.05)
    assert result.detail["p_value"] < 0.05
    assert result.outcome == "pass"
    assert result.measured
    assert 0.0 < result.detail["relative_change"] < 0.10


def test_too_few_samples_is_nodata() -> None:
    result = analyze_distribution(LATENCY, _lognormal(7, 500), _lognormal(8, 12), 0.05)
    assert result.outcome == "nodata"
    assert not result.measured
    assert result.reason == "latency_ms: 12 canary samples < min_samples 50"


def test_infinite_input_is_error() -> None:
    canary = _lognormal(9, 100)
    canary[3] = np.inf
    result = analyze_distribution(LATENCY, _lognormal(10, 100), canary, 0.05)
    assert result.outcome == "error"
    assert not result.measured


def test_nan_strategy_removes_or_replaces() -> None:
    canary = _lognormal(9, 100)
    canary[:5] = np.nan
    removed = analyze_distribution(LATENCY, _lognormal(10, 100), canary, 0.05)
    assert removed.n_canary == 95
    replace = LATENCY.model_copy(update={"nan_strategy": "replace"})
    replaced = analyze_distribution(replace, _lognormal(10, 100), canary, 0.05)
    assert replaced.n_canary == 100
    assert replaced.detail["median_canary"] < removed.detail["median_canary"]


def test_outlier_removal_drops_far_out_samples_only_when_asked() -> None:
    canary = _lognormal(9, 200)
    canary[:3] = 1e6
    kept = analyze_distribution(LATENCY, _lognormal(10, 200), canary, 0.05)
    assert kept.n_canary == 200
    trimmed_spec = LATENCY.model_copy(update={"remove_outliers": True})
    trimmed = analyze_distribution(trimmed_spec, _lognormal(10, 200), canary, 0.05)
    assert trimmed.n_canary <= 197


def test_sequential_evidence_accumulates_and_never_forgets() -> None:
    evidence = DistributionEvidence(AucMixture())
    base, slow = _lognormal(1, 400), 1.5 * _lognormal(2, 400)
    first = analyze_distribution(LATENCY, base, slow, 0.05, evidence=evidence)
    assert first.outcome == "fail"
    assert first.detail["test"] == "sequential"
    assert first.detail["e_value"] >= 20
    # The running maximum stands: a later, weaker look does not undo the rejection's e-value.
    analyze_distribution(LATENCY, base, _lognormal(3, 400), 0.05, evidence=evidence)
    assert evidence.location.p_value <= 0.05
    assert evidence.location.looks == 2


def test_tolerance_null_is_stricter_near_the_tolerance() -> None:
    # A clear +12% shift on a large sample: beyond 10% against "no change", but not
    # significantly beyond "worse by 10%".
    base, canary = _lognormal(4, 1500), 1.12 * _lognormal(5, 1500)
    plain = analyze_distribution(LATENCY, base, canary, 0.05)
    strict_spec = LATENCY.model_copy(update={"null": "tolerance"})
    strict = analyze_distribution(strict_spec, base, canary, 0.05)
    assert plain.outcome == "fail"
    assert strict.outcome == "pass"
    assert strict.detail["null"] == "tolerance"


def test_hodges_lehmann_is_thinned_above_the_cap_but_stays_close() -> None:
    base, canary = _lognormal(6, 20_000), 1.05 * _lognormal(7, 20_000)
    result = analyze_distribution(LATENCY, base, canary, 0.05)
    exact = hodges_lehmann(base, canary, result.detail["confidence"])
    # Thinning to 4096 order statistics moves the estimate by far less than the interval.
    assert abs(result.detail["shift"] - exact.estimate) < 0.25 * (exact.high - exact.low)
    assert result.detail["shift_high"] - result.detail["shift_low"] >= 0.95 * (
        exact.high - exact.low
    )


def test_underpowered_pass_is_not_measured() -> None:
    result = analyze_distribution(LATENCY, _lognormal(11, 60), _lognormal(12, 60), 0.05)
    assert result.outcome == "pass"
    assert not result.measured
    assert result.detail["mde"] > 0.10
    assert result.reason.startswith("latency_ms not measurable yet: detectable change")


@pytest.mark.parametrize(
    ("direction", "factor", "outcome"),
    [
        ("decrease", 0.6, "fail"),  # throughput down 40%: harmful
        ("decrease", 1.5, "pass"),  # throughput up: not a regression
        ("increase", 0.6, "pass"),  # latency down: not a regression
        ("either", 1.5, "fail"),
        ("either", 0.6, "fail"),
        ("either", 1.0, "pass"),
    ],
)
def test_directions(direction: str, factor: float, outcome: str) -> None:
    spec = MetricSpec(name="m", direction=direction)
    result = analyze_distribution(spec, _lognormal(13, 800), _lognormal(14, 800, factor), 0.05)
    assert result.outcome == outcome
    expected_confidence = 0.95 if direction == "either" else 0.90
    assert result.detail["confidence"] == pytest.approx(expected_confidence)


def test_detail_is_plain_json() -> None:
    result = analyze_distribution(LATENCY, _lognormal(15, 300), _lognormal(16, 300, 1.2), 0.05)
    json.dumps(dict(result.detail), allow_nan=False)
    assert all(type(v) in {int, float, str, bool, type(None)} for v in result.detail.values())
    assert {"shift", "shift_low", "shift_high", "u", "auc", "mde", "p_value"} <= set(result.detail)


def test_zero_median_baseline_uses_mean_absolute_scale() -> None:
    baseline = np.zeros(100)
    baseline[60:] = 10.0  # median 0, mean |x| = 4
    canary = baseline + 2.0
    result = analyze_distribution(LATENCY, baseline, canary, 0.05)
    assert result.detail["shift"] == 2.0
    assert result.detail["relative_change"] == pytest.approx(0.5)


def test_a_a_false_fail_rate_is_at_most_alpha() -> None:
    # 2000 single looks at identical distributions, 100 samples a side. With no tolerance
    # the one-sided test alone decides: its rate must be near alpha = 5%. The margin is 1.5
    # points (3 binomial standard errors at 2000 looks, sd = 0.49 points). The default 10%
    # tolerance only adds a condition, so it can never fail more often.
    rng = np.random.default_rng(20240601)
    strict = MetricSpec(name="latency_ms", allowed_change=0.0)
    looks = 2000
    fails_strict = fails_default = 0
    for _ in range(looks):
        baseline = rng.lognormal(np.log(100), 0.5, 100)
        canary = rng.lognormal(np.log(100), 0.5, 100)
        fails_strict += analyze_distribution(strict, baseline, canary, 0.05).outcome == "fail"
        fails_default += analyze_distribution(LATENCY, baseline, canary, 0.05).outcome == "fail"
    assert 0.035 <= fails_strict / looks <= 0.05 + 0.015
    assert fails_default / looks <= fails_strict / looks


def test_a_change_not_shown_within_tolerance_is_not_measured() -> None:
    # +8% on 500 samples a side: detectable (MDE below 10%) but the 90% interval reaches
    # past +10%, so the canary is not yet shown to be within tolerance: no promotion.
    base, canary = _lognormal(21, 500), 1.08 * _lognormal(22, 500)
    result = analyze_distribution(LATENCY, base, canary, 0.05)
    assert result.outcome == "pass"
    assert result.detail["mde"] <= 0.10
    assert result.detail["relative_high"] > 0.10
    assert not result.measured
    assert "not yet shown within +10%" in result.reason


def _mostly_zero(seed: int, n: int, share: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < share, 1 + rng.poisson(1, n), 0).astype(float)


@pytest.mark.parametrize("n", [4200, 42_000])
def test_a_mostly_zero_canary_that_is_clearly_worse_fails_on_its_mean(n: int) -> None:
    # 92% zeros against 70%: the median and the Hodges-Lehmann shift and interval are all
    # exactly 0, so a shift-only judge calls the change "within +10%". The mean is ~4x.
    base, canary = _mostly_zero(31, n, 0.08), _mostly_zero(32, n, 0.30)
    result = analyze_distribution(LATENCY, base, canary, 0.05)
    assert (result.detail["shift_low"], result.detail["shift_high"]) == (0.0, 0.0)
    assert result.outcome == "fail"
    assert result.detail["effect"] == "mean"
    assert result.detail["mean_change"] > 2.0
    assert result.reason.startswith("latency_ms mean +")


def test_a_degenerate_shift_interval_never_measures_a_metric() -> None:
    # Two healthy mostly-zero cohorts: the shift interval is [0, 0], which says nothing;
    # only the mean's confidence sequence may show the change within tolerance, and at
    # 500 samples a side it cannot (the mean of 10% non-zero counts is too noisy).
    result = analyze_distribution(
        LATENCY, _mostly_zero(33, 500, 0.1), _mostly_zero(34, 500, 0.1), 0.05
    )
    assert (result.detail["shift_low"], result.detail["shift_high"]) == (0.0, 0.0)
    assert result.outcome == "pass"
    assert not result.measured
    assert result.detail["mean_high"] > 0.10


def test_a_slower_tail_fails_and_names_the_quantile() -> None:
    # The slowest 10% of the canary's requests 1.5x slower: median unchanged.
    rng = np.random.default_rng(35)
    z = rng.standard_normal(3000)
    canary = 100 * np.exp(0.5 * z + np.where(z > 1.2815515655446004, math.log(1.5), 0.0))
    result = analyze_distribution(LATENCY, _lognormal(36, 3000), canary, 0.05)
    assert result.outcome == "fail"
    assert result.detail["effect"] == "tail"
    assert result.detail["quantile"] == "p90"
    assert result.reason.startswith("latency_ms p90 tail +")
    assert abs(result.detail["relative_change"]) < 0.05  # the shift does not see it


def test_a_failure_within_critical_change_is_not_critical() -> None:
    spec = LATENCY.model_copy(update={"critical": True, "critical_change": 1.0})
    moderate = analyze_distribution(spec, _lognormal(37, 800), _lognormal(38, 800, 1.5), 0.05)
    assert moderate.outcome == "fail"
    assert not moderate.critical
    severe = analyze_distribution(spec, _lognormal(37, 800), _lognormal(38, 800, 3.0), 0.05)
    assert severe.outcome == "fail"
    assert severe.critical
