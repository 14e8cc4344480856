"""The switch simulator's own mechanics (support/quality/switches.py): seeded, no judging.

Each statistical check allows about four standard errors (computed or stated where it is
used) around the value the model promises, on fixed seeds: it passes by a wide margin and
cannot flake. Latencies are compared after dividing each by the model's load-dependent
median at its interval (``Load.median``), so the daily cycle does not blur them.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np
import orjson
import pytest

from coalmine.contract import decode_deploy_event, decode_metric_events
from support.quality.switches import (
    DAY,
    MIDNIGHT,
    SCENARIOS,
    Load,
    Regression,
    SwitchRun,
    blue_green,
    duration_seconds,
    green_errors_5x,
    healthy_switch_at_peak,
    migration,
)

SEEDS = range(20)
PEAK = MIDNIGHT + Load().peak_time
TROUGH = PEAK - DAY / 2
TEN_AM = MIDNIGHT + 10 * 3600.0
TEN_MIN = {"before": "10m"}
# Many samples per interval for the quantile checks: 500 per 10 s step at 100 req/s.
DENSE = Load(samples_per_minute=3000.0)


def metric_events(run: SwitchRun) -> list[dict[str, Any]]:
    """Every metric event of a run, with its message's event time as ``t``."""
    out = []
    for time, message in run.timed():
        if message.topic == "metrics":
            for event in orjson.loads(message.value):
                event["t"] = time
                out.append(event)
    return out


def normalized(run: SwitchRun, *, changed: bool, version: str | None = None) -> np.ndarray:
    """Latency samples divided by the healthy median of their interval.

    ``changed``: from after the change (else up to it); ``version``: only that version's.
    """
    load = run.load
    parts = []
    for event in metric_events(run):
        t = event["t"]
        after = t > run.change_time
        if "values" not in event or after != changed:
            continue
        if version is not None and event.get("version") != version:
            continue
        parts.append(np.asarray(event["values"]) / load.median(t - load.step / 2))
    return np.concatenate(parts)


def median_tolerance(n: int, log_sd: float = 0.5, sigmas: float = 4.0) -> float:
    """Relative tolerance of a sample median of n lognormal values: ``sigmas`` SEs."""
    return sigmas * math.sqrt(math.pi / 2) * log_sd / math.sqrt(n)


def quantile_log_se(q: float, n: int, log_sd: float = 0.5) -> float:
    """Standard error of the log of a sample q-quantile of n lognormal values."""
    density = NormalDist().pdf(NormalDist().inv_cdf(q))
    return log_sd * math.sqrt(q * (1 - q) / n) / density


def totals(run: SwitchRun, lo: float, hi: float, version: str | None = None) -> tuple[int, int]:
    """Requests and bad requests of the ratio events with ``lo < t <= hi``."""
    total = bad = 0
    for event in metric_events(run):
        if "total" in event and lo < event["t"] <= hi:
            if version is not None and event.get("version") != version:
                continue
            total += event["total"]
            bad += event["total"] - event["good"]
    return total, bad


# --- the daily cycle ---------------------------------------------------------------------


def test_rate_and_median_follow_the_formula() -> None:
    load = Load()
    assert load.rate(PEAK) == pytest.approx(150.0)
    assert load.rate(TROUGH) == pytest.approx(50.0)
    assert load.rate(PEAK + DAY / 4) == pytest.approx(100.0)
    assert load.median(PEAK) == pytest.approx(115.0)  # 100 * (1 + 0.3 * 0.5)
    assert load.median(TROUGH) == pytest.approx(85.0)
    flat = Load(load_factor=0.0)
    assert flat.median(PEAK) == flat.median(TROUGH) == 100.0


@pytest.mark.parametrize(("at", "level"), [(PEAK, 1.5), (TROUGH, 0.5)])
def test_request_counts_swing_over_the_day(at: float, level: float) -> None:
    # 20 min around the peak (trough) per seed, 20 seeds: 3.6e6 (1.2e6) requests pooled,
    # so the pooled rate / base_rate has a Poisson sd below 0.001; the window's averaging
    # of the cosine moves it by 0.0002. Each seed's count: within 4 Poisson sds.
    load = Load()
    pooled = 0
    for seed in SEEDS:
        run = migration(seed, start_at=at, before=600.0, after=600.0, reference=TEN_MIN)
        total, _ = totals(run, -math.inf, math.inf)
        expected = sum(
            float(load.rate(t - 5.0)) * 10.0 for t in np.arange(at - 590, at + 601, 10.0)
        )
        assert abs(total - expected) <= 4 * math.sqrt(expected)
        pooled += total
    rate = pooled / (len(SEEDS) * 1200.0) / load.base_rate
    assert rate == pytest.approx(level, abs=0.01)


@pytest.mark.parametrize(("at", "expected_ms"), [(PEAK, 115.0), (TROUGH, 85.0)])
def test_latency_median_tracks_load(at: float, expected_ms: float) -> None:
    # 20 seeds x 20 min x 200 samples/min = 80,000 samples: the median within 4 SEs
    # (about 0.9%) of 100 ms * (1 + 0.3 * (rate / base - 1)).
    values = np.concatenate(
        [
            np.concatenate(
                [
                    np.asarray(e["values"])
                    for e in metric_events(
                        migration(seed, start_at=at, before=600, after=600, reference=TEN_MIN)
                    )
                    if "values" in e
                ]
            )
            for seed in SEEDS
        ]
    )
    assert len(values) == pytest.approx(20 * 20 * 200, rel=0.01)
    tolerance = median_tolerance(len(values))
    assert np.median(values) == pytest.approx(expected_ms, rel=tolerance)


def test_latency_without_load_factor_is_flat() -> None:
    load = Load(load_factor=0.0)
    peak = migration(1, start_at=PEAK, load=load, before=1800, after=1800)
    trough = migration(2, start_at=TROUGH, load=load, before=1800, after=1800)
    medians = [np.median(normalized(r, changed=False)) for r in (peak, trough)]
    for median in medians:  # 60 min x 200/min = 12,000 samples: 4 SEs about 2.3%
        assert median == pytest.approx(1.0, rel=median_tolerance(12_000))


# --- regressions -------------------------------------------------------------------------


def test_latency_factor_shifts_every_quantile() -> None:
    run = blue_green(3, switch_at=TEN_AM, load=DENSE, regression=Regression(latency_factor=1.2))
    blue = normalized(run, changed=False, version="v1")
    green = normalized(run, changed=True, version="v2")
    assert len(blue) > 100_000
    assert len(green) > 150_000
    for q in (0.1, 0.5, 0.9):
        tolerance = 4 * math.hypot(quantile_log_se(q, len(blue)), quantile_log_se(q, len(green)))
        ratio = np.quantile(green, q) / np.quantile(blue, q)
        assert ratio == pytest.approx(1.2, rel=tolerance), q  # about 1%
    assert np.median(blue) == pytest.approx(1.0, rel=median_tolerance(len(blue)))


@pytest.mark.parametrize("fraction", [0.01, 0.02, 0.1])
def test_tail_factor_moves_only_the_tail(fraction: float) -> None:
    # The slowest `fraction` of queries x1.3: quantiles above 1 - fraction move by exactly
    # 1.3, those below (and the median) not at all. 180,000 samples a side.
    regression = Regression(tail_factor=1.3, tail_fraction=fraction)
    run = migration(
        4, start_at=TEN_AM, load=DENSE, regression=regression, after=3600.0, before=3600.0
    )
    before = normalized(run, changed=False)
    after = normalized(run, changed=True)
    above, below = 1 - fraction / 2, 1 - 2 * fraction
    for q, factor in ((0.5, 1.0), (below, 1.0), (above, 1.3)):
        tolerance = 4 * math.hypot(quantile_log_se(q, len(before)), quantile_log_se(q, len(after)))
        ratio = np.quantile(after, q) / np.quantile(before, q)
        assert ratio == pytest.approx(factor, rel=tolerance), q  # 0.5% (median) to 1.9%


def test_p99_scenario_moves_p99_by_30_percent_and_leaves_the_median() -> None:
    pooled_before, pooled_after = [], []
    for seed in range(10):
        run = SCENARIOS["migration-p99-30"](seed)
        assert run.expected == "rollback"
        pooled_before.append(normalized(run, changed=False))
        pooled_after.append(normalized(run, changed=True))
    before, after = np.concatenate(pooled_before), np.concatenate(pooled_after)
    for q, factor in ((0.5, 1.0), (0.95, 1.0), (0.99, 1.3)):
        tolerance = 4 * math.hypot(quantile_log_se(q, len(before)), quantile_log_se(q, len(after)))
        ratio = np.quantile(after, q) / np.quantile(before, q)
        assert ratio == pytest.approx(factor, rel=tolerance), q  # p99: about 4%


def test_error_counts_follow_the_multiplier() -> None:
    # Bad requests are binomial: pooled over 5 seeds (about 1.8e6 requests after the
    # switch, 1.2e6 before), each count within 4 binomial sds of total x ratio.
    cases = {"after": (0, 0), "before": (0, 0), "mirror": (0, 0)}
    for seed in range(5):
        run = green_errors_5x(seed)
        s = run.change_time
        windows = {
            "after": totals(run, s, math.inf, "v2"),
            "before": totals(run, -math.inf, s, "v1"),
            "mirror": totals(run, -math.inf, s, "v2"),
        }
        for name, (total, bad) in windows.items():
            cases[name] = (cases[name][0] + total, cases[name][1] + bad)
    for name, ratio in (("after", 0.005), ("before", 0.001), ("mirror", 0.001)):
        total, bad = cases[name]
        assert abs(bad - total * ratio) <= 4 * math.sqrt(total * ratio * (1 - ratio)), name


def test_wobble_varies_the_median_per_minute() -> None:
    load = Load(samples_per_minute=3000.0, wobble=0.2)
    run = migration(5, start_at=TEN_AM, load=load, before=3600, after=3600)
    by_minute: dict[float, list[float]] = {}
    for event in metric_events(run):
        if "values" in event:
            minute = math.floor((event["t"] - 5.0) / 60.0)
            median = load.median(event["t"] - 5.0)
            by_minute.setdefault(minute, []).extend(np.asarray(event["values"]) / median)
    logs = np.log([np.median(v) for v in by_minute.values()])
    # 120 minutes: the sd of 120 normal draws is within 4 SEs (0.2 x 4 / sqrt(238)) of 0.2;
    # each minute's median adds about 1% of noise.
    assert len(logs) == 120
    assert np.std(logs, ddof=1) == pytest.approx(0.2, abs=0.2 * 4 / math.sqrt(238))


# --- the timeline and the messages -------------------------------------------------------


def test_blue_green_timeline() -> None:
    run = blue_green(6, switch_at=TEN_AM, before=2400.0, after=3600.0, preview=600.0)
    s = run.change_time
    assert run.times == tuple(sorted(run.times))
    assert {m.key for m in run.messages} == {b"checkout"}
    deploys = [(t, orjson.loads(m.value)) for t, m in run.timed() if m.topic == "deployments"]
    assert [(t, d["event"], d.get("phase")) for t, d in deploys] == [
        (s - 600.0, "started", "preview"),
        (s, "step", "switched"),
    ]
    started, switched = deploys[0][1], deploys[1][1]
    assert started["strategy"] == "blue_green"
    assert started["baseline"] == {"version": "v1"}
    assert started["canary"] == {"version": "v2"}
    assert started["reference"] == {"before": "30m"}
    assert (started["traffic_weight"], switched["traffic_weight"]) == (0, 100)
    # At equal times the deploy event comes first.
    at_switch = [m.topic for t, m in run.timed() if t == s]
    assert at_switch == ["deployments", "metrics"]

    events = metric_events(run)
    times = sorted({e["t"] for e in events})
    assert times == list(np.arange(s - 2390.0, s + 3601.0, 10.0))
    for e in events:
        assert "cohort" not in e
        assert e["time"].endswith("Z")
        if e["version"] == "v1":
            assert e["t"] <= s  # blue serves nothing after the switch
        elif e["t"] <= s:
            assert e["t"] > s - 600.0  # green's mirrored share, from the preview on
        if "values" in e:
            assert 1 <= len(e["values"]) <= 34  # 200 per minute: 33 or 34 per 10 s
    blue, _ = totals(run, s - 600.0, s, "v1")
    mirror, _ = totals(run, s - 600.0, s, "v2")
    # 5% mirrored: about 3,000 of 60,000 requests; the ratio's sd is about 0.001.
    assert mirror / blue == pytest.approx(0.05, abs=0.005)


def test_yesterday_is_emitted_only_for_the_span_judged() -> None:
    run = healthy_switch_at_peak(7)
    s = run.change_time
    assert run.reference == {"days": [1]}
    assert s < PEAK < s + 3600.0  # the hour judged has the peak inside it
    times = sorted({e["t"] for e in metric_events(run)})
    yesterday = [t for t in times if t < s - DAY / 2]
    today = [t for t in times if t > s - DAY / 2]
    assert yesterday == list(np.arange(s - DAY + 10.0, s - DAY + 3601.0, 10.0))
    assert today[0] == s - 2390.0
    assert today[-1] == s + 3600.0
    assert {e["version"] for e in metric_events(run) if e["t"] < s - DAY / 2} == {"v1"}


def test_migration_events_carry_no_version_or_cohort() -> None:
    # Untagged metric events and `started` with strategy migration and a reference, no
    # versions: docs/events.md, "A baseline from the past" and "Phases".
    run = migration(8, start_at=TEN_AM, phase="expand")
    for message in run.messages:
        if message.topic == "deployments":
            assert decode_deploy_event(message.value).strategy == "migration"
        else:
            decoded = decode_metric_events(message.value)
            assert all(e.version is None and e.cohort is None for e in decoded)
    deploys = [orjson.loads(m.value) for m in run.messages if m.topic == "deployments"]
    assert deploys == [
        {
            "event": "started",
            "deployment_id": "orders-db-expand",
            "service": "orders-db",
            "time": "2025-06-16T10:00:00Z",
            "strategy": "migration",
            "phase": "expand",
            "reference": {"before": "30m"},
        }
    ]
    events = metric_events(run)
    assert {e["metric"] for e in events} == {"query_ms", "requests"}
    assert all("version" not in e and "cohort" not in e for e in events)


@pytest.mark.parametrize(
    "name", ["healthy-switch", "healthy-switch-peak", "green-errors-5x", "green-latency-20"]
)
def test_versioned_events_fit_the_contract(name: str) -> None:
    run = SCENARIOS[name](9)
    for time, message in run.timed():
        if message.topic == "deployments":
            event = decode_deploy_event(message.value)
            assert event.strategy == "blue_green"
            assert (event.baseline_version, event.canary_version) in {("v1", "v2"), (None, None)}
        else:
            decoded = decode_metric_events(message.value)
            assert {e.version for e in decoded} <= {"v1", "v2"}
            assert all(e.cohort is None and e.time == time for e in decoded)


def test_scenarios_and_their_expected_decisions() -> None:
    expected = {
        "healthy-switch": "promote",
        "healthy-switch-peak": "promote",
        "healthy-switch-peak-before": "promote",
        "green-errors-5x": "rollback",
        "green-latency-20": "rollback",
        "migration-p99-30": "rollback",
        "migration-p99-30-sparse": "rollback",
        "healthy-migration": "promote",
        "healthy-switch-wobble": "promote",
        "green-latency-20-wobble": "rollback",
    }
    runs = {name: make(11) for name, make in SCENARIOS.items()}
    assert {name: run.expected for name, run in runs.items()} == expected
    assert runs["green-errors-5x"].load.base_rate == 100.0
    assert runs["green-errors-5x"].load.error_ratio == 0.001
    assert runs["green-errors-5x"].regression.error_factor == 5.0
    assert runs["green-latency-20"].load.samples_per_minute == 200.0
    assert runs["green-latency-20"].regression.latency_factor == 1.2
    assert runs["migration-p99-30"].strategy == "migration"
    assert runs["migration-p99-30"].load.samples_per_minute == 600.0
    assert runs["migration-p99-30-sparse"].load.samples_per_minute == 200.0
    assert runs["healthy-migration"].regression.worse is False
    assert runs["healthy-switch"].reference == {"before": "30m"}
    # Changes fall on the metric grid, at seed-dependent times of day.
    for run in runs.values():
        assert (run.change_time - MIDNIGHT) % 10.0 == 0
        assert MIDNIGHT <= run.change_time < MIDNIGHT + DAY


def test_runs_are_determined_by_their_seed() -> None:
    for make in SCENARIOS.values():
        assert make(12).messages == make(12).messages
        assert make(12).messages != make(13).messages


def test_a_regression_changes_nothing_before_the_switch() -> None:
    # Blue and green's mirrored share are drawn before green's switched traffic: the same
    # seed gives the same messages up to the switch whatever green does after it.
    healthy = blue_green(14, switch_at=TEN_AM)
    worse = blue_green(14, switch_at=TEN_AM, regression=Regression(1.2, 1.3, 0.1, 5.0))
    s = healthy.change_time

    def up_to_switch(run: SwitchRun) -> list[tuple[float, Any]]:
        return [(t, m) for t, m in run.timed() if t <= s]

    assert up_to_switch(healthy) == up_to_switch(worse)
    assert healthy.messages != worse.messages


def test_durations_and_invalid_arguments() -> None:
    assert duration_seconds("30m") == 1800.0
    assert duration_seconds("1h") == 3600.0
    assert duration_seconds("90s") == 90.0
    assert duration_seconds("1d") == DAY
    with pytest.raises(ValueError, match="duration"):
        duration_seconds("30 minutes")
    with pytest.raises(ValueError, match="swing"):
        Load(swing=1.0)
    with pytest.raises(ValueError, match="tail_fraction"):
        Regression(tail_fraction=0.0)
    with pytest.raises(ValueError, match="preview"):
        blue_green(0, switch_at=TEN_AM, preview=3000.0, before=2400.0)
    with pytest.raises(ValueError, match="reference"):
        migration(0, start_at=TEN_AM, before=1200.0, reference={"before": "30m"})
    with pytest.raises(ValueError, match="days"):
        migration(0, start_at=TEN_AM, reference={"days": [0]})
