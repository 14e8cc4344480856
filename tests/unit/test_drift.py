"""Variation between intervals of a past baseline, and the tolerances it widens and narrows."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from coalmine.analyzers.drift import IntervalTally, narrowed, widened
from coalmine.analyzers.mann_whitney import analyze_distribution
from coalmine.config.models import MetricSpec
from coalmine.contract import encode_verdict, format_time
from support.scenario import T0
from tests.unit.test_past import live_and_replay, migration_started, router


def tally(seed: int, wobble: float, intervals: int = 30, per: int = 200) -> IntervalTally:
    """Reference intervals of lognormal samples (log-sd 0.5), each interval's median off by
    a factor of log-sd ``wobble``; and five canary intervals."""
    rng = np.random.default_rng(seed)
    t = IntervalTally(60.0)
    for i in range(intervals):
        shift = wobble * rng.standard_normal()
        t.add(False, i * 60.0 + 5, np.exp(3 + shift + 0.5 * rng.standard_normal(per)))
    for i in range(5):
        t.add(True, (intervals + i) * 60.0 + 5, np.exp(3 + 0.5 * rng.standard_normal(per)))
    return t


def test_the_spread_between_intervals_is_estimated_beyond_their_sampling_noise() -> None:
    # 200 seeds of a 10% wobble: the estimate's mean within 0.01 of 0.1 and each within
    # 0.05 (30 intervals give the standard deviation to about 13%).
    estimates = np.array([tally(seed, 0.1).between() for seed in range(200)])
    assert abs(estimates.mean() - 0.1) < 0.01
    assert np.all(np.abs(estimates - 0.1) < 0.05)


def test_a_reference_without_variation_between_intervals_keeps_its_tolerance() -> None:
    # The analysis of variance at 1% lets through about 1 seed in 100: at most 5 of 200.
    found = sum(tally(seed, 0.0).between() > 0 for seed in range(200))
    assert found <= 5


def test_the_uncertainty_counts_the_intervals_of_both_sides() -> None:
    t = tally(3, 0.1)
    assert t.uncertainty() == pytest.approx(t.between() * math.sqrt(1 / 5 + 1 / 30))
    assert IntervalTally(60.0).uncertainty() == 0.0
    few = IntervalTally(60.0)
    for i in range(3):  # fewer than four reference intervals: not estimated
        few.add(False, i * 60.0, [1.0, 2.0, 40.0])
    few.add(True, 500.0, [1.0, 2.0])
    assert few.between() == 0.0


def test_zeros_and_negative_samples_are_left_out_of_the_log_tally() -> None:
    t = IntervalTally(60.0)
    t.add(False, 0.0, [0.0, -1.0])
    t.add(True, 0.0, [])
    assert t.uncertainty() == 0.0


def test_widened_to_fail_and_narrowed_to_promote() -> None:
    z = 1.959963984540054  # one-sided alpha 0.025
    assert widened(0.10, 0.05, 0.025) == pytest.approx(1.1 * math.exp(z * 0.05) - 1)
    assert narrowed(0.10, 0.05, 0.025) == pytest.approx(1.1 * math.exp(-z * 0.05) - 1)
    assert widened(0.10, 0.0, 0.025) == narrowed(0.10, 0.0, 0.025) == 0.10
    assert narrowed(0.10, 0.2, 0.025) < 0  # too noisy to show anything within +10%


def _cohorts(shift: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return np.exp(3 + 0.5 * rng.standard_normal(6000)), np.exp(
        3 + math.log1p(shift) + 0.5 * rng.standard_normal(3000)
    )


def test_drift_keeps_a_change_inside_its_uncertainty_from_failing_or_promoting() -> None:
    spec = MetricSpec(name="latency_ms", quantiles=())
    b, c = _cohorts(0.13)
    plain = analyze_distribution(spec, b, c, 0.025)
    assert plain.outcome == "fail"
    assert "drift" not in plain.detail
    drifting = analyze_distribution(spec, b, c, 0.025, drift=0.05)
    assert drifting.outcome == "pass"
    assert not drifting.measured
    assert drifting.detail["drift"] == 0.05
    assert drifting.detail["allowed_change_to_fail"] == pytest.approx(widened(0.1, 0.05, 0.025))
    assert drifting.detail["allowed_change_to_promote"] == pytest.approx(narrowed(0.1, 0.05, 0.025))
    assert drifting.reason.endswith(
        "(tolerance narrowed from 10%: the reference varies 5% between intervals)"
    )
    # A healthy canary shown within +10% is not shown within the narrowed tolerance.
    b, c = _cohorts(0.06)
    assert analyze_distribution(spec, b, c, 0.025).measured
    assert not analyze_distribution(spec, b, c, 0.025, drift=0.03).measured
    # A change beyond even the widened tolerance fails, and says so.
    b, c = _cohorts(0.3)
    failing = analyze_distribution(spec, b, c, 0.025, drift=0.05)
    assert failing.outcome == "fail"
    assert failing.reason.endswith(
        "beyond +21.3% (tolerance widened from 10%: the reference varies 5% between intervals)"
    )


def test_a_migration_on_a_service_that_wobbles_is_judged_with_its_drift() -> None:
    """Through the router: each minute's latency 10% off at random on both sides of the
    phase, and nothing changed: the verdicts carry the drift and do not roll back (judged
    without the drift, this stream is rolled back)."""
    rng = np.random.default_rng(1)
    change = T0 + 1800
    factors = np.exp(0.1 * rng.standard_normal(60))
    metrics = []
    for t in np.arange(T0, change + 900, 10.0):
        minute = int((t - T0) // 60)
        values = np.round(np.exp(4.6 + 0.3 * rng.standard_normal(40)) * factors[minute], 2)
        event = {"service": "orders", "metric": "latency_ms", "time": format_time(float(t))}
        metrics.append((float(t), orjson.dumps([event | {"values": values.tolist()}])))
    live, _ = live_and_replay([(change, migration_started(change))], metrics)
    r = router()
    verdicts = []
    for i in range(0, len(live), 7):
        verdicts += [
            orjson.loads(encode_verdict(v)) for v in r.handle(live[i : i + 7], 0.0).verdicts
        ]
    assert verdicts
    assert all(v["decision"] != "rollback" for v in verdicts)
    latency = [m for v in verdicts for m in v["metrics"] if m["metric"] == "latency_ms"]
    assert all(m["detail"]["drift"] > 0.02 for m in latency if m["outcome"] == "pass")
