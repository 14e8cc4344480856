"""The decision-quality harness's own mechanics: sample shapes, traffic, the oracle SPRT.

Fast and seeded; nothing here judges coalmine's decisions (test_decision_quality.py
does). Statistical checks allow a few standard errors around the target on one seeded
run, so they pass for this seed by a wide margin and do not flake.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace

import numpy as np
import pytest

from support.quality.baselines import Outcome, oracle_log_lr, oracle_sprt
from support.quality.report import judge_stats, oracle_ratio, scenario_stats
from support.quality.runner import CoalmineOutcome, Options, RunResult, judge_with_oracle
from support.quality.simulator import (
    BUCKETS_MS,
    DEFAULT_SCENARIOS,
    PARETO_ALPHA,
    PARETO_SHARE,
    SCENARIOS,
    Scenario,
    SimulatedRun,
    Traffic,
    bucket_upper_bounds,
    simulate,
)

HOUR = 3600.0


def both(run: SimulatedRun) -> tuple[np.ndarray, np.ndarray]:
    return run.baseline.latency, run.canary.latency


def within_sigmas(observed: float, p: float, n: int, sigmas: float = 4.0) -> bool:
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# --- existing scenarios draw what they always drew -------------------------------------


def _original_lognormal(
    seed: int, duration: float, latency_factor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The single-instance lognormal simulation written out: phase, swing, then per
    cohort Poisson counts, Poisson requests, binomial errors and the latencies."""
    traffic = Traffic()
    rng = np.random.default_rng(seed)
    steps = math.ceil(duration / traffic.step - 1e-9)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    mid = (np.arange(steps) + 0.5) * traffic.step
    swing = 1.0 + traffic.daily_swing * np.sin(2.0 * math.pi * mid / 86400.0 + phase)
    rng.uniform(0.0, 0.0)  # the instance spread's draw
    out = []
    for factor in (1.0, latency_factor):
        rate = swing[:, None]
        counts = rng.poisson(rate * traffic.latency_per_minute * traffic.step / 60.0)
        total = rng.poisson(rate * traffic.requests_per_second * traffic.step)
        rng.binomial(total, traffic.error_ratio)
        z = rng.standard_normal(int(counts.sum()))
        out.append(np.rint(100.0 * np.exp(0.5 * z + math.log(factor))))
    return out[0], out[1], total


@pytest.mark.parametrize(("name", "factor"), [("aa", 1.0), ("lat+20", 1.2)])
def test_lognormal_draws_follow_the_original_formula(name: str, factor: float) -> None:
    baseline, canary, canary_total = _original_lognormal(17, HOUR, factor)
    run = simulate(SCENARIOS[name], 17, HOUR)
    assert np.array_equal(run.baseline.latency, baseline)
    assert np.array_equal(run.canary.latency, canary)
    assert np.array_equal(run.canary.total, canary_total)


def _digest(run: SimulatedRun) -> str:
    h = hashlib.sha256()
    for cohort in (run.baseline, run.canary):
        for a in (cohort.latency_counts, cohort.latency, cohort.total, cohort.bad):
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# sha256 of every array of simulate(scenario, 11, 600.0) for the scenarios that use none of
# the simulator's shapes, fixed traffic or overrides: those options must leave their data,
# and so their results, exactly as they are.
_CHECKSUMS = {
    "aa": "4019933d51db429a",
    "lat+20": "da9232ae15797acf",
    "tail": "557b02dee33dc6d5",
    "err2x": "2dda324c06d010fc",
    "aa-5i": "c2ef50bbf1430470",
    "one-instance": "231e30a0d50fb5ce",
    "aa-warmup": "73584d445aff7175",
    "aa-split": "8e0ffd2a56491a10",
}


@pytest.mark.parametrize("name", sorted(_CHECKSUMS))
def test_existing_scenarios_draw_the_same_traffic(name: str) -> None:
    assert _digest(simulate(SCENARIOS[name], 11, 600.0)) == _CHECKSUMS[name]


# --- shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "canary_share"), [("zeros-aa", 0.10), ("zeros-x2", 0.20)])
def test_zeros_are_mostly_zero_counts(name: str, canary_share: float) -> None:
    run = simulate(SCENARIOS[name], 3, HOUR)
    assert run.traffic.latency_per_minute == 100.0
    # Twice the samples of the default 50 a minute (the same seed: the same daily phase).
    default_rate = len(simulate(SCENARIOS["aa"], 3, HOUR).baseline.latency)
    assert len(run.baseline.latency) / default_rate == pytest.approx(2.0, rel=0.1)
    for values, share in ((run.baseline.latency, 0.10), (run.canary.latency, canary_share)):
        nonzero = values[values > 0]
        assert within_sigmas(len(nonzero) / len(values), share, len(values))
        assert np.array_equal(nonzero, np.rint(nonzero))
        assert nonzero.min() >= 1
        # 1 + Poisson(1): mean 2, and P(1) = e^-1.
        assert nonzero.mean() == pytest.approx(2.0, abs=4 / math.sqrt(len(nonzero)))
        assert within_sigmas(float(np.mean(nonzero == 1)), math.exp(-1), len(nonzero))


def test_buckets_are_the_lognormal_latencies_bucketed() -> None:
    for bucketed, plain in (("buckets-aa", "aa"), ("buckets+20", "lat+20")):
        run = simulate(SCENARIOS[bucketed], 5, HOUR)
        reference = simulate(SCENARIOS[plain], 5, HOUR)  # the same draws
        for values, latencies in zip(both(run), both(reference), strict=True):
            assert set(np.unique(values)) <= set(BUCKETS_MS)
            assert np.array_equal(values, bucket_upper_bounds(latencies))
    assert bucket_upper_bounds(np.array([0.0, 5.0, 5.5, 100.0, 101.0, 1e4, 2e4])).tolist() == [
        5.0,
        5.0,
        10.0,
        100.0,
        250.0,
        1e4,
        1e4,
    ]


def test_pareto_tail_starts_at_the_p95() -> None:
    run = simulate(SCENARIOS["pareto-aa"], 4, 6 * HOUR)
    values = np.concatenate(both(run))
    n = len(values)
    p95 = 100.0 * math.exp(0.5 * 1.6448536269514722)
    # Above the body's p95: the body's 5% of 95% plus the whole tail.
    above = PARETO_SHARE + (1 - PARETO_SHARE) * 0.05
    assert within_sigmas(float(np.mean(values > p95)), above, n)
    # Far out only the tail remains: P(tail > 4 p95) = 4^-alpha.
    far = PARETO_SHARE * 4.0**-PARETO_ALPHA
    assert within_sigmas(float(np.mean(values > 4 * p95)), far, n)
    assert values.max() > 20 * p95  # heavy: a lognormal body never gets there


def test_bimodal_mode_shares() -> None:
    for name, canary_miss in (("bimodal-aa", 0.2), ("bimodal-miss", 0.3)):
        run = simulate(SCENARIOS[name], 6, HOUR)
        for values, miss in ((run.baseline.latency, 0.2), (run.canary.latency, canary_miss)):
            misses = values > 30  # the modes (5 and 100 ms, log-sd 0.3) do not overlap there
            assert within_sigmas(float(misses.mean()), miss, len(values))
            assert np.median(values[~misses]) == pytest.approx(5.0, abs=1)
            assert np.median(values[misses]) == pytest.approx(100.0, rel=0.05)


def test_tail1_doubles_the_slowest_one_percent() -> None:
    scenario = SCENARIOS["tail1"]
    run = simulate(scenario, 8, HOUR)
    plain = simulate(replace(scenario, tail_factor=1.0), 8, HOUR)  # the same draws
    assert run.traffic.latency_per_minute == 500.0
    default_rate = len(simulate(SCENARIOS["tail"], 8, HOUR).canary.latency)
    assert len(run.canary.latency) / default_rate == pytest.approx(10.0, rel=0.1)
    assert np.array_equal(run.baseline.latency, plain.baseline.latency)
    before, after = plain.canary.latency, run.canary.latency
    changed = after != before
    assert within_sigmas(float(changed.mean()), 0.01, len(before))
    # Exactly the slowest requests, each doubled (up to the rounding to whole ms).
    assert before[changed].min() >= before[~changed].max()
    assert np.all(np.abs(after[changed] - 2 * before[changed]) <= 1)


def test_fixed_traffic_has_no_swing() -> None:
    for name in ("err2x-fixed", "lat+10-fixed"):
        scenario = SCENARIOS[name]
        assert scenario.daily_swing == 0.0
        run = simulate(scenario, 9, 2 * HOUR)
        assert run.traffic.daily_swing == 0.0
        # Constant expected counts: 200 requests and ~8.3 samples per 10 s step, and the
        # per-step counts are Poisson (variance = mean) rather than swinging with the phase.
        for cohort in (run.baseline, run.canary):
            totals = cohort.total.sum(axis=1)
            assert totals.mean() == pytest.approx(200.0, abs=4 * math.sqrt(200 / len(totals)))
            assert totals.var() == pytest.approx(200.0, rel=0.25)
    swinging = simulate(SCENARIOS["err2x"], 9, 2 * HOUR)
    assert swinging.traffic.daily_swing == 0.5


def test_unsupported_combinations_are_refused() -> None:
    with pytest.raises(ValueError, match="does not support latency_factor"):
        Scenario("x", "x", shape="zeros", latency_factor=1.1)
    with pytest.raises(ValueError, match="does not support tail_factor"):
        Scenario("x", "x", shape="bimodal", tail_factor=1.5)
    with pytest.raises(ValueError, match="does not support nonzero_factor"):
        Scenario("x", "x", nonzero_factor=2.0)
    with pytest.raises(ValueError, match="unknown shape"):
        Scenario("x", "x", shape="uniform")  # type: ignore[arg-type]


def test_default_scenarios() -> None:
    assert "aa-warmup" not in DEFAULT_SCENARIOS
    assert "aa-split" not in DEFAULT_SCENARIOS
    new = {"zeros-aa", "zeros-x2", "buckets-aa", "buckets+20", "pareto-aa", "bimodal-aa"}
    new |= {"bimodal-miss", "tail1", "err2x-fixed", "lat+10-fixed", "lat+15", "err2.5x"}
    new |= {"aa-3i-tol5", "aa-5i-tol5", "aa-10i-tol5"}
    assert new <= set(DEFAULT_SCENARIOS)
    assert SCENARIOS["lat+10-fixed"].overrides == ("latency_ms.allowed_change=0.05",)


def test_scenario_overrides_follow_the_command_line() -> None:
    options = Options(overrides=("latency_ms.allowed_change=0.2", "min_duration=5m"))
    profile = options.profile(SCENARIOS["aa-5i-tol5"].overrides)
    spec = profile.metric("latency_ms")
    assert spec is not None
    assert spec.allowed_change == 0.05  # the scenario's, applied last
    assert profile.min_duration == 300
    plain = options.profile().metric("latency_ms")
    assert plain is not None
    assert plain.allowed_change == 0.2


# --- the oracle SPRT ----------------------------------------------------------------------


def _reference_llr(
    bt: list[int], bb: list[int], ct: list[int], cb: list[int], r1: float
) -> list[float]:
    """The oracle's log likelihood ratio, term by term, in plain floats."""

    def theta(rho: float, r: float) -> float:
        return rho * r / (rho * r + 1 - rho)

    out, llr = [], 0.0
    for b_total, b_bad, c_total, c_bad in zip(bt, bb, ct, cb, strict=True):
        rho = c_total / (b_total + c_total)
        llr += c_bad * math.log(theta(rho, r1) / theta(rho, 1.0))
        llr += b_bad * math.log((1 - theta(rho, r1)) / (1 - theta(rho, 1.0)))
        out.append(llr)
    return out


def test_oracle_sprt_equals_the_reference_computation() -> None:
    bt = [200, 180, 220, 190, 210, 200]
    bb = [0, 1, 0, 0, 1, 0]
    ct = [190, 230, 170, 200, 205, 210]
    cb = [1, 2, 1, 0, 3, 2]
    arrays = (
        np.array(bt, dtype=np.int64),
        np.array(bb, dtype=np.int64),
        np.array(ct, dtype=np.int64),
        np.array(cb, dtype=np.int64),
    )
    for r1 in (1.5, 2.0, 5.0):
        expected = _reference_llr(bt, bb, ct, cb, r1)
        assert oracle_log_lr(*arrays, ratio=r1).tolist() == pytest.approx(expected, rel=1e-12)
        for alpha in (0.5, 0.1, 0.025, 1e-6):
            first = next((k for k, v in enumerate(expected) if v >= math.log(1 / alpha)), None)
            outcome = oracle_sprt(*arrays, ratio=r1, alpha=alpha, step=10.0)
            if first is None:
                assert (outcome.decision, outcome.time) == ("inconclusive", 60.0)
            else:
                assert (outcome.decision, outcome.time) == ("rollback", (first + 1) * 10.0)
    # A step without requests, or served by one cohort alone, adds nothing.
    none = np.zeros(2, dtype=np.int64)
    requests = np.array([0, 100], dtype=np.int64)
    assert oracle_log_lr(requests, requests // 50, none, none, ratio=2.0).tolist() == [0.0, 0.0]


def test_oracle_runs_on_the_error_scenarios_at_the_metric_alpha() -> None:
    options = Options()
    profile = options.profile()
    run = simulate(SCENARIOS["err5x"], 2, HOUR)
    outcome = judge_with_oracle(run, profile)
    llr = oracle_log_lr(
        run.baseline.total.sum(axis=1),
        run.baseline.bad.sum(axis=1),
        run.canary.total.sum(axis=1),
        run.canary.bad.sum(axis=1),
        5.0,
    )
    threshold = math.log(1 / (profile.alpha / len(profile.metrics)))
    k = int(np.argmax(llr >= threshold))
    assert llr[k] >= threshold > llr[:k].max(initial=-math.inf)
    assert outcome.decision == "rollback"
    assert outcome.time == (k + 1) * run.step


def test_report_columns_for_the_oracle_and_false_promotions() -> None:
    def result(index: int, coalmine: str, minute: float, oracle: float | None) -> RunResult:
        mine = CoalmineOutcome(coalmine, minute * 60, (), "", 1, (0.1,), 0.0, 1, named=True)
        other = Outcome("promote", 3600.0)
        found = None if oracle is None else Outcome("rollback", oracle * 60, ("errors",))
        return RunResult("err2x-fixed", index, mine, other, other, other, found)

    results = [result(0, "rollback", 20, 10), result(1, "promote", 60, 20)]
    results += [result(2, "rollback", 24, 12)]
    stats = scenario_stats("err2x-fixed", results)
    assert stats.judges["coalmine"].promotes == 1
    assert stats.judges["coalmine"].named == 2
    assert stats.judges["oracle"].detect_p50_min == 12
    assert oracle_ratio(stats) == pytest.approx(24 / 12)
    assert judge_stats([r.kayenta for r in results]).promotes == 3
    aa = scenario_stats("aa", [replace(r, scenario="aa", oracle=None) for r in results])
    assert "oracle" not in aa.judges
    assert math.isnan(oracle_ratio(aa))
