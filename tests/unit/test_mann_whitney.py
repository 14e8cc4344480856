"""Mann-Whitney U and the distribution analyzer (the Hodges-Lehmann shift has its own)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from coalmine.analyzers.hodges_lehmann import hodges_lehmann
from coalmine.analyzers.mann_whitney import analyze_distribution, rank_sum_test
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


def test_a_tail_estimated_beyond_tolerance_blocks_promotion_before_its_test_leans() -> None:
    # Evenly spread lognormal quantiles, so only the canary's slowest 1% differs: 16% slower
    # is an estimate beyond the 10% tail tolerance on 20 samples, too few for the rank
    # statistic's evidence to lean either way.
    spec = MetricSpec(name="query_ms", quantiles=(0.99,), tail_allowed_change=0.1)

    def spread(n: int) -> np.ndarray:
        return 20 * np.exp(0.5 * stats.norm.ppf((np.arange(n) + 0.5) / n))

    same, slower = spread(2000), spread(2000)
    slower[-20:] *= 1.16
    healthy = analyze_distribution(spec, spread(6000), same, 0.05)
    assert healthy.outcome == "pass"
    assert healthy.measured
    regressed = analyze_distribution(spec, spread(6000), slower, 0.05)
    assert regressed.outcome == "pass"
    assert regressed.detail["p99_tail_change"] > 0.15
    assert regressed.detail["p99_p_value"] > 0.1
    assert not regressed.measured
    assert "p99 tail leaning worse" in regressed.reason
