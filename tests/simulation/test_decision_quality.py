"""Decision quality of coalmine's real judge on simulated canaries: a fast, seeded subset.

The full measurement is ``python benchmarks/decision_quality.py`` (2000 runs per A/A
scenario, 300 per regression). These tests drive the same harness (a real ``Deployment``
fed ``MetricEvent`` objects at production cadence) on a few hundred seeded runs, so they
are deterministic; each bound is the target of statistics.md section 7 plus the sampling
noise of that many runs, stated where it is used. A failure means the judge missed the
target on these runs, not that the test is flaky: do not loosen a bound to make it pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from support.quality.baselines import (
    counts_shift_test,
    mann_whitney_greater,
    points_shift_test,
)
from support.quality.report import judge_stats, wilson
from support.quality.runner import Options, RunResult, build_profile, run_all, run_one
from support.quality.simulator import SCENARIOS, simulate

SEED = 20261127
AA_RUNS = 300
REGRESSION_RUNS = 50


def runs_of(scenario: str, runs: int) -> list[RunResult]:
    return run_all({scenario: runs}, Options(seed=SEED), processes=2, progress=False)[scenario]


@pytest.fixture(scope="module")
def aa() -> list[RunResult]:
    return runs_of("aa", AA_RUNS)


# --- the harness itself ---------------------------------------------------------------


def test_mann_whitney_p_value_equals_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, m = rng.integers(2, 120, size=2)
        x = np.rint(rng.lognormal(3.0, 0.5, n))  # whole numbers: ties within and across
        y = np.rint(rng.lognormal(3.0, 0.5, m)) + rng.choice([0.0, 0.5])
        expected = stats.mannwhitneyu(x, y, alternative="greater", method="asymptotic").pvalue
        assert mann_whitney_greater(x, y) == pytest.approx(expected, abs=1e-12)


def test_histogram_shift_test_equals_pairwise_differences() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        n, m = rng.integers(2, 300, size=2)
        factor = rng.choice([1.0, 1.1, 1.3])
        b = np.rint(rng.lognormal(np.log(60), 0.5, n))
        c = np.rint(rng.lognormal(np.log(60 * factor), 0.5, m))
        size = int(max(b.max(), c.max())) + 1
        hb = np.bincount(b.astype(np.int64), minlength=size)
        hc = np.bincount(c.astype(np.int64), minlength=size)
        for tolerance in (0.0, 0.25):
            shift, p = counts_shift_test(hb, hc, tolerance)
            assert shift == np.median(np.subtract.outer(c, b))
            moved = c - tolerance * abs(shift)
            expected = stats.mannwhitneyu(moved, b, alternative="greater").pvalue
            assert p == pytest.approx(expected, abs=1e-12)
            assert points_shift_test(b, c, tolerance) == pytest.approx((shift, p), abs=1e-12)


def test_simulated_traffic_is_reproducible_and_at_cadence() -> None:
    one = simulate(SCENARIOS["aa-5i"], 7, 600.0)
    again = simulate(SCENARIOS["aa-5i"], 7, 600.0)
    assert one.steps == 60
    assert np.array_equal(one.canary.latency, again.canary.latency)
    assert np.array_equal(one.baseline.total, again.baseline.total)
    assert not np.array_equal(simulate(SCENARIOS["aa-5i"], 8, 600.0).canary.total, one.canary.total)
    assert np.array_equal(one.canary.latency, np.rint(one.canary.latency))  # whole ms: ties
    messages = list(one.messages("latency_ms", "errors"))
    times = [m.time for m in messages]
    assert times == sorted(times)
    assert {m.instance for m in messages} == {f"i{i}" for i in range(5)}
    ratio = [m for m in messages if m.values is None]
    assert len(ratio) == 60 * 2 * 5  # one count message per step, cohort and instance
    assert all(len(m.values) for m in messages if m.values is not None)


def test_scenarios_change_what_they_say() -> None:
    def share(name: str) -> float:
        run = simulate(SCENARIOS[name], 3, 3600.0)
        return run.canary.total.sum() / (run.canary.total.sum() + run.baseline.total.sum())

    assert share("aa") == pytest.approx(0.5, abs=0.01)
    assert share("aa-split") == pytest.approx(0.4, abs=0.01)
    errors = simulate(SCENARIOS["err5x"], 3, 3600.0)
    rate_b = errors.baseline.bad.sum() / errors.baseline.total.sum()
    rate_c = errors.canary.bad.sum() / errors.canary.total.sum()
    assert rate_b == pytest.approx(0.001, rel=0.3)  # ~72 errors: +-12% sd
    assert rate_c / rate_b == pytest.approx(5.0, rel=0.3)
    tail = simulate(SCENARIOS["tail"], 3, 3600.0)
    b, c = tail.baseline.latency, tail.canary.latency
    assert np.median(c) / np.median(b) == pytest.approx(1.0, abs=0.05)
    assert np.percentile(c, 97) / np.percentile(b, 97) == pytest.approx(1.5, abs=0.1)


def test_profile_overrides() -> None:
    profile = build_profile(["min_duration=5m", "latency_ms.allowed_change=0.2"])
    assert profile.min_duration == 300
    spec = profile.metric("latency_ms")
    assert spec is not None
    assert spec.allowed_change == 0.2
    errors = profile.metric("errors")
    assert errors is not None
    assert errors.critical
    with pytest.raises(ValueError, match="not one of"):
        build_profile(["nosuch.critical=true"])
    with pytest.raises(ValueError, match="extra"):
        build_profile(["latency_ms.no_such_option=1"])


def test_a_run_replays_to_the_same_verdict() -> None:
    first = run_one("err5x", 3, Options(seed=SEED))
    second = run_one("err5x", 3, Options(seed=SEED))
    assert (first.coalmine.decision, first.coalmine.time) == (
        second.coalmine.decision,
        second.coalmine.time,
    )
    assert first.kayenta == second.kayenta
    assert first.flagger == second.flagger


# --- coalmine's decisions ---------------------------------------------------------------


def test_aa_false_rollbacks_consistent_with_the_2_percent_target(aa: list[RunResult]) -> None:
    # Target: <= 2% false rollbacks per canary. 300 runs cannot show "Wilson upper < 3%"
    # (that needs ~2000, the full harness); they can show the rate is not above it. The
    # bound: Wilson 95% upper < 6.5% passes 11 or fewer rollbacks of 300. A judge whose
    # true rate is exactly 2% has 11 or fewer with probability 98.1% (so an unlucky seed
    # fails it 1.9% of the time); one at 7% passes with probability 0.5%, one at 5% 11%.
    rollbacks = sum(r.coalmine.decision == "rollback" for r in aa)
    low, high = wilson(rollbacks, len(aa))
    assert high < 0.065, (
        f"{rollbacks}/{len(aa)} false rollbacks (Wilson 95% {low:.1%}-{high:.1%}); e.g. "
        + "; ".join(r.coalmine.summary for r in aa if r.coalmine.decision == "rollback")[:600]
    )


def test_kayenta_style_rolls_back_more_healthy_canaries(aa: list[RunResult]) -> None:
    # Same 300 A/A runs. "Kayenta-style" here is repeated Mann-Whitney in which any
    # significant increase fails (classifier tolerance 0): ~12% false rollbacks in 600-run
    # measurements. (Kayenta's own tolerance of 0.25 x |HL| is stricter: about 1% on a
    # single instance, more with instance spread; the harness reports both.)
    coalmine = sum(r.coalmine.decision == "rollback" for r in aa)
    kayenta = sum(r.kayenta_any.decision == "rollback" for r in aa)
    assert kayenta > coalmine, (kayenta, coalmine)
    # And by a clear margin: the difference is beyond the noise of 300 paired runs
    # (~sqrt(kayenta + coalmine) discordant runs).
    assert kayenta - coalmine > 2 * math.sqrt(kayenta + coalmine)


def test_5x_errors_rolled_back_within_minutes() -> None:
    # Target: median <= 3 min. 50 runs estimate the median within about +-0.3 min (the
    # middle half of detection times spans ~2 min), so the bound is 3.5 min. ">= 95% of
    # runs" allows at most 2 misses of 50.
    runs = runs_of("err5x", REGRESSION_RUNS)
    s = judge_stats([r.coalmine for r in runs])
    assert s.detect_60 >= 0.95 * len(runs), s
    assert s.detect_p50_min <= 3.5, s
    assert all(r.coalmine.failed == ("errors",) for r in runs if r.coalmine.decision == "rollback")


def test_20_percent_latency_detected() -> None:
    # No target in section 7; +10% has "median <= 10 min", so +20% must do at least that.
    runs = runs_of("lat+20", REGRESSION_RUNS)
    s = judge_stats([r.coalmine for r in runs])
    assert s.detect_60 >= 0.95 * len(runs), s
    assert s.detect_p50_min <= 10, s
    assert s.promotes == 0, s


def test_10_percent_latency_is_caught_with_a_tolerance_below_it() -> None:
    # Target: median <= 10 min and >= 95% within 30 min. With the default allowed_change
    # of 10%, a +10% canary sits exactly at the tolerance and is a regression only about
    # half the time, by definition; a team that must catch +10% sets a smaller tolerance
    # (5% here). The default prior (centred on an AUC shift of 0.04) does the rest.
    # Measured on these 50 seeded runs (the daily swing): all caught within 60 min, 46
    # (92%) within 30, median 10 min; centred on 0, the prior needs 11.3.
    runs = run_all(
        {"lat+10": REGRESSION_RUNS},
        Options(seed=SEED, overrides=("latency_ms.allowed_change=0.05",)),
        processes=2,
        progress=False,
    )["lat+10"]
    s = judge_stats([r.coalmine for r in runs])
    times = sorted(r.coalmine.time / 60 for r in runs if r.coalmine.decision == "rollback")
    detail = f"{s}; detection minutes {times}"
    assert s.detect_60 == len(runs), detail
    assert s.detect_30 >= 0.90 * len(runs), detail
    assert s.detect_p50_min <= 10, detail


# --- real metric shapes (issue: never promote a canary that is clearly worse) -------------
#
# Bounds below are the targets of statistics.md section 7 less the sampling noise of the
# runs used: with n runs a rate at the target p passes "at least k of n" with probability
# stated per test; the measured rates on these seeds are in the comments.


def test_mostly_zero_metric_aa_false_rollbacks() -> None:
    # Target <= 2%. As for the plain A/A test: Wilson 95% upper < 6.5% (11 or fewer of 300)
    # passes a judge at exactly 2% with probability 98.1%. Measured on this seed: 8 of 300.
    runs = runs_of("zeros-aa", AA_RUNS)
    rollbacks = sum(r.coalmine.decision == "rollback" for r in runs)
    assert wilson(rollbacks, len(runs))[1] < 0.065, rollbacks


def test_mostly_zero_regression_caught_and_never_promoted() -> None:
    # Non-zero share 10% -> 20% (mean x2) at a fixed 100 samples/min. Target >= 95% within
    # 30 min and none promoted: at most 2 misses of 50. Measured: 50 of 50, median 3 min.
    runs = runs_of("zeros-x2-fixed", REGRESSION_RUNS)
    s = judge_stats([r.coalmine for r in runs])
    assert s.detect_30 >= 48, s
    assert s.promotes == 0, s


def test_tail_only_slowdowns_are_caught() -> None:
    # Slowest 10% x1.5 at 50 samples/min, and slowest 1% x2 at 500 samples/min, fixed
    # traffic. Target >= 90% within 30 min: at least 41 of 50 (26 of 30) passes a judge at
    # exactly 90% with probability 0.75 (0.65) and one at 70% with probability < 0.001.
    # Measured: 47 of 50 (median 12 min) and 30 of 30 (median 8 min).
    for name, runs_count, needed in (("tail-fixed", 50, 41), ("tail1-fixed", 30, 26)):
        runs = runs_of(name, runs_count)
        s = judge_stats([r.coalmine for r in runs])
        assert s.detect_30 >= needed, (name, s)
        assert s.promotes == 0, (name, s)
        assert all(
            r.coalmine.failed == ("latency_ms",) for r in runs if r.coalmine.decision == "rollback"
        )


def test_one_bad_instance_is_caught_and_named() -> None:
    # +30% on 1 of 5 canary instances. Target >= 90% within 30 min, instance named: at
    # least 41 of 50 (as above). Measured: 44 of 50 within 30 min, 50 of 50 within 60, all
    # named.
    runs = runs_of("one-instance", REGRESSION_RUNS)
    s = judge_stats([r.coalmine for r in runs])
    assert s.detect_30 >= 41, s
    caught = [r for r in runs if r.coalmine.decision == "rollback"]
    assert all(r.coalmine.named for r in caught), [r.coalmine.summary for r in caught][:3]


def test_canaries_beyond_tolerance_are_not_promoted() -> None:
    # Target <= 1% promoted: none of 50 (a judge promoting 1% has none with probability
    # 0.6; 5%: 0.08). Measured: none, for both.
    for name in ("lat+15", "err2.5x"):
        s = judge_stats([r.coalmine for r in runs_of(name, REGRESSION_RUNS)])
        assert s.promotes == 0, (name, s)
