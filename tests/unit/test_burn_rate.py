"""The burn-rate analyzer for ratio metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from coalmine.analyzers.burn_rate import BurnWindow, RatioEvidence, analyze_ratio, ratio_fails
from coalmine.config.models import MetricSpec

REQUESTS = MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True)
ALPHA = 0.05


def _judge(bad_b: int, total_b: int, bad_c: int, total_c: int, spec: MetricSpec = REQUESTS):
    return analyze_ratio(spec, total_b - bad_b, total_b, total_c - bad_c, total_c, ALPHA)


@pytest.mark.parametrize("seed", range(6))
def test_p_values_match_scipy_binomtest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(50):
        total_b, total_c = (int(v) for v in rng.integers(1, 50_000, size=2))
        bad_b = int(rng.binomial(total_b, 0.002))
        bad_c = int(rng.binomial(total_c, rng.choice([0.001, 0.005, 0.02])))
        detail = _judge(bad_b, total_b, bad_c, total_c).detail
        p0 = 14.4 * 0.001
        ref_abs = stats.binomtest(bad_c, total_c, p0, alternative="greater").pvalue
        rho = total_c / (total_c + total_b)
        theta0 = rho * 1.5 / (rho * 1.5 + 1 - rho)
        k = bad_b + bad_c
        ref_rel = stats.binomtest(bad_c, k, theta0, alternative="greater").pvalue if k else 1.0
        # Both are the same regularised incomplete beta; 1e-9 relative leaves room for
        # scipy's own summation order.
        assert detail["p_absolute"] == pytest.approx(ref_abs, rel=1e-9, abs=1e-300)
        assert detail["p_relative"] == pytest.approx(ref_rel, rel=1e-9, abs=1e-300)


def test_upper_bounds_are_clopper_pearson() -> None:
    detail = _judge(bad_b=40, total_b=20_000, bad_c=30, total_c=10_000).detail
    # A one-sided 95% bound is the upper end of the two-sided 90% exact interval.
    ci = stats.binomtest(30, 10_000).proportion_ci(confidence_level=0.90, method="exact")
    assert detail["bad_ratio_canary_upper"] == pytest.approx(ci.high, rel=1e-9)
    theta = stats.binomtest(30, 70).proportion_ci(confidence_level=0.90, method="exact").high
    rho = 10_000 / 30_000
    expected = theta * (1 - rho) / (rho * (1 - theta))
    assert detail["rate_ratio_upper"] == pytest.approx(expected, rel=1e-9)


def test_five_percent_errors_against_a_healthy_baseline_fails_critical() -> None:
    result = _judge(bad_b=10, total_b=10_000, bad_c=50, total_c=1_000)
    assert result.outcome == "fail"
    assert result.critical
    assert result.measured
    assert result.analyzer == "burn_rate"
    assert result.detail["p_absolute"] < ALPHA / 2
    assert result.detail["p_relative"] < ALPHA / 2
    assert result.reason == (
        "requests: canary error ratio 5.00% vs baseline 0.10% (burn 50.0x vs 1.0x), "
        "above the 14.4x fast-burn guard; 50.0x the baseline, beyond 1.5x"
    )


def test_relative_regression_below_the_fast_burn_level_fails() -> None:
    # 0.5% errors is burn 5x: below the 14.4x guard, but 5x the baseline.
    result = _judge(bad_b=100, total_b=100_000, bad_c=100, total_c=20_000)
    assert result.outcome == "fail"
    assert result.detail["p_absolute"] > ALPHA / 2
    assert "5.0x the baseline, beyond 1.5x" in result.reason
    assert "fast-burn" not in result.reason


def test_equal_ratios_pass_and_are_measured() -> None:
    result = _judge(bad_b=200, total_b=200_000, bad_c=200, total_c=200_000)
    assert result.outcome == "pass"
    assert result.measured  # the rate ratio's upper bound is below 1.5
    assert result.detail["rate_ratio"] == 1.0
    assert result.detail["rate_ratio_upper"] < 1.5


def test_one_error_in_a_small_canary_does_not_fail() -> None:
    # statistics.md section 5: a raw ratio check would fire here (1% = burn 10x).
    result = _judge(bad_b=10, total_b=10_000, bad_c=1, total_c=100)
    assert result.outcome == "pass"
    assert not result.measured
    assert "not measurable yet" in result.reason


def test_guard_needs_the_documented_error_counts() -> None:
    # statistics.md section 5, burn 14.4 at a 99.9% objective (p0 = 1.44%): 2 of 10, 5 of
    # 100, 22 of 1000 errors are significant one-sided at 0.05. The fixed-mode guard gets
    # an eighth of alpha (the relative test gets the rest) = 0.00625, which moves the
    # thresholds to 3 of 10, 6 of 100, 26 of 1000 (exact binomial tails, checked with
    # scipy). Without a baseline only the guard can fail.
    for bad, total in ((3, 10), (6, 100), (26, 1000)):
        assert _judge(0, 0, bad - 1, total).outcome == "pass"
        failed = _judge(0, 0, bad, total)
        assert failed.outcome == "fail"
        assert failed.reason.endswith("above the 14.4x fast-burn guard")


def test_measured_from_the_budget_alone() -> None:
    # No errors: the 95% upper bound is about 3/n, within 0.1% only from n ~ 3000 on.
    assert _judge(0, 0, 0, 5_000).measured
    assert not _judge(0, 0, 0, 1_000).measured
    result = _judge(0, 0, 0, 5_000)
    assert result.detail["rate_ratio"] is None
    assert result.detail["p_relative"] is None
    assert result.detail["bad_ratio_baseline"] is None


def test_no_canary_traffic_is_nodata() -> None:
    result = _judge(bad_b=3, total_b=1_000, bad_c=0, total_c=0)
    assert result.outcome == "nodata"
    assert not result.measured


def test_inconsistent_counts_are_an_error() -> None:
    result = analyze_ratio(REQUESTS, 10, 5, 1, 1, ALPHA)
    assert result.outcome == "error"


def test_baseline_without_errors_reports_an_infinite_ratio_as_json() -> None:
    result = _judge(bad_b=0, total_b=50_000, bad_c=40, total_c=50_000)
    assert result.outcome == "fail"
    assert result.detail["rate_ratio"] == "inf"
    json.dumps(dict(result.detail), allow_nan=False)
    assert all(type(v) in {int, float, str, bool, type(None)} for v in result.detail.values())


def test_numpy_counts_give_plain_detail() -> None:
    counts = np.array([9_990, 10_000, 980, 1_000], dtype=np.int64)
    result = analyze_ratio(REQUESTS, *counts, ALPHA)
    assert all(type(v) in {int, float, str, bool, type(None)} for v in result.detail.values())
    assert type(result.n_canary) is int


def test_allowed_change_sets_the_relative_threshold() -> None:
    loose = MetricSpec(name="requests", kind="ratio", objective=0.999, allowed_change=4.0)
    # 3x the baseline: a regression at the default 1.5x, tolerated at 5x.
    assert _judge(100, 100_000, 300, 100_000).outcome == "fail"
    assert _judge(100, 100_000, 300, 100_000, spec=loose).outcome == "pass"


def test_shared_outage_is_not_blamed_on_the_canary():
    spec = MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True)
    # Both cohorts at 5% errors, far above the 1.44% fast-burn level: only the relative
    # test may fail the canary, and the canary is no worse than its baseline.
    shared = analyze_ratio(spec, 95_000, 100_000, 9_500, 10_000, 0.05)
    assert shared.outcome == "pass"
    assert shared.detail["shared_outage"] is True
    assert "shared outage" in shared.reason
    # The same canary against a healthy baseline fails on the absolute guard.
    alone = analyze_ratio(spec, 99_990, 100_000, 9_500, 10_000, 0.05)
    assert alone.outcome == "fail"
    assert alone.detail["shared_outage"] is False


@pytest.mark.parametrize("mode", ["sequential", "fixed"])
def test_ratio_fails_decides_as_analyze_ratio_does(mode: str) -> None:
    # Two identical evidence states, one read by each function after every message: the
    # answers and the e-values they leave behind must agree at every step.
    spec = MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True, test=mode)
    rng = np.random.default_rng(11)
    fails = 0
    for run in range(40):
        canary_ratio = float(rng.choice([0.0005, 0.001, 0.003, 0.01, 0.03]))
        quick, full = RatioEvidence.for_spec(spec), RatioEvidence.for_spec(spec)
        counts = [0, 0, 0, 0]  # baseline good, total, canary good, total
        for step in range(60):
            at = 10.0 * (step + 1)
            for canary in (False, True):
                total = int(rng.poisson(400))
                bad = int(rng.binomial(total, canary_ratio if canary else 0.001))
                for evidence in (quick, full):
                    if canary:
                        evidence.observe(at, bad, total, 0, 0)
                    else:
                        evidence.observe(at, 0, 0, bad, total)
                offset = 2 if canary else 0
                counts[offset] += total - bad
                counts[offset + 1] += total
            window = BurnWindow(now=at, duration=1800.0, elapsed=at, canary_share=0.5)
            answer = ratio_fails(spec, *counts, ALPHA, evidence=quick, window=window)
            result = analyze_ratio(spec, *counts, ALPHA, evidence=full, window=window)
            assert answer == (result.outcome == "fail"), (run, step, counts)
            for guard in ("fast", "slow", "past"):  # a guard not yet evaluated reads as 0
                assert quick.guard_max_log_e.get(guard, 0.0) == full.guard_max_log_e.get(guard, 0.0)
            assert quick.rate.max_log_e == full.rate.max_log_e
            fails += answer
    assert fails > 100  # both answers were exercised
    assert not ratio_fails(spec, 10, 10, 0, 0, ALPHA)  # no canary traffic: nodata
    assert not ratio_fails(spec, 10, 5, 1, 1, ALPHA)  # inconsistent counts: an error
