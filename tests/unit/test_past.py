"""Baselines from the past: migration phases and blue-green switches, through the router."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from coalmine._exceptions import ContractError
from coalmine.bus.base import Record
from coalmine.config.models import (
    LimitSettings,
    MetricSpec,
    Profile,
    ReferenceSpec,
    TopicsSettings,
)
from coalmine.contract import (
    MetricEvent,
    decode_deploy_event,
    encode_verdict,
    format_time,
    parse_time,
)
from coalmine.daemon.past import PastBaseline, RecentEvents
from coalmine.daemon.router import Router
from support.scenario import T0

TOPICS = TopicsSettings()
METRICS = (
    MetricSpec(name="latency_ms", direction="increase"),
    MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
)
MIGRATION = Profile(
    interval=60,
    min_duration=300,
    max_duration=900,
    metrics=METRICS,
    reference=ReferenceSpec(before=1800),
)
BLUE_GREEN = Profile(interval=60, min_duration=300, max_duration=900, metrics=METRICS)
SWITCH = BLUE_GREEN.model_copy(update={"reference": ReferenceSpec(before=1800)})


def router() -> Router:
    profiles = {"default": BLUE_GREEN, "migration": MIGRATION, "switch": SWITCH}
    return Router(profiles, TOPICS, LimitSettings())


def deploy(obj: dict, offset: int) -> Record:
    return Record(TOPICS.deployments, orjson.dumps(obj), b"orders", offset=offset)


def traffic(
    start: float,
    end: float,
    *,
    seed: int,
    slower_from: float = float("inf"),
    factor: float = 1.0,
    version: str | None = None,
    errors: float = 0.0002,
) -> list[tuple[float, bytes]]:
    """Untagged metric messages of service orders every 10 s: latency samples, counts."""
    rng = np.random.default_rng(seed)
    out = []
    for t in np.arange(start, end, 10.0):
        scale = factor if t >= slower_from else 1.0
        values = np.round(rng.lognormal(4.6, 0.3, 20) * scale, 2).tolist()
        bad = int(rng.binomial(500, errors))
        base = {"service": "orders", "time": format_time(float(t))}
        if version is not None:
            base["version"] = version
        batch = [
            base | {"metric": "latency_ms", "values": values},
            base | {"metric": "requests", "good": 500 - bad, "total": 500},
        ]
        out.append((float(t), orjson.dumps(batch)))
    return out


def migration_started(at: float) -> dict:
    return {
        "event": "started",
        "deployment_id": "orders-expand",
        "service": "orders",
        "time": format_time(at),
        "strategy": "migration",
        "phase": "expand",
        "profile": "migration",
    }


def run(records: list[Record], batch: int = 7) -> list[dict]:
    """Feed ``records`` in batches; the verdicts published, as dicts."""
    r = router()
    verdicts = []
    for i in range(0, len(records), batch):
        effects = r.handle(records[i : i + batch], now=float(i))
        assert not effects.dead_letters, effects.dead_letters
        verdicts += [orjson.loads(encode_verdict(v)) for v in effects.verdicts]
    return verdicts


def live_and_replay(deploys: list[tuple[float, dict]], metrics: list[tuple[float, bytes]]):
    """The records as a live daemon reads them (in time order) and as a replay (deploys first)."""
    metric_records = [
        Record(TOPICS.metrics, value, b"orders", offset=i, partition=1)
        for i, (_, value) in enumerate(metrics)
    ]
    deploy_records = [deploy(obj, i) for i, (_, obj) in enumerate(deploys)]
    timed = [(t, 1, r) for (t, _), r in zip(metrics, metric_records, strict=True)]
    timed += [(t, 0, r) for (t, _), r in zip(deploys, deploy_records, strict=True)]
    live = [r for _, _, r in sorted(timed, key=lambda x: (x[0], x[1]))]
    return live, deploy_records + metric_records


def finals(verdicts: list[dict]) -> list[tuple[str, str]]:
    return [(v["verdict_id"], v["decision"]) for v in verdicts if v["final"]]


# -- the contract ----------------------------------------------------------------------------


def test_a_migration_needs_no_versions_and_a_step_may_name_only_a_phase():
    event = decode_deploy_event(orjson.dumps(migration_started(T0)))
    assert event.strategy == "migration"
    assert event.phase == "expand"
    assert event.baseline_version is None
    step = {"event": "step", "deployment_id": "x", "service": "s", "time": T0, "phase": "switched"}
    assert decode_deploy_event(orjson.dumps(step)).phase == "switched"


def test_a_canary_started_without_versions_is_still_refused():
    obj = migration_started(T0) | {"strategy": "canary"}
    with pytest.raises(ContractError, match="needs baseline and canary"):
        decode_deploy_event(orjson.dumps(obj))


def test_a_migration_whose_profile_has_no_reference_is_dead_lettered_saying_so():
    r = router()
    effects = r.handle([deploy(migration_started(T0) | {"profile": "default"}, 0)], now=0.0)
    assert len(effects.dead_letters) == 1
    headers = dict(effects.dead_letters[0].headers)
    assert headers["coalmine-error"].startswith(b"no_reference")


# -- the pieces ------------------------------------------------------------------------------


def test_past_baseline_tells_the_cohorts_apart_by_time_and_version():
    past = PastBaseline(
        change=1000.0, before=100.0, baseline_version="blue", canary_version="green"
    )

    def at(time: float, version: str | None = None) -> str | None:
        return past.cohort_of(MetricEvent("s", "m", time, version=version))

    assert at(950) == "baseline"
    assert at(950, "blue") == "baseline"
    assert at(950, "green") is None
    assert at(899) is None  # before the window
    assert at(1000) == "canary"
    assert at(1000, "green") == "canary"
    assert at(1000, "blue") is None  # blue after the switch counts for neither


def test_recent_events_keep_the_span_and_the_cap():
    recent = RecentEvents(span=60.0, max_events=5)
    for t in range(0, 100, 10):
        recent.add(MetricEvent("s", "m", float(t)), ("metrics", 0), t)
    times = [e.time for e, _, _ in recent.between(0, 1000)]
    assert times == [50.0, 60.0, 70.0, 80.0, 90.0]  # the cap of 5; the span would keep 30-90
    assert [o for _, _, o in recent.between(60, 80)] == [60, 70]


# -- migrations ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_a_healthy_migration_phase_is_promoted_against_its_own_past(seed):
    change = T0 + 1800
    metrics = traffic(T0, change + 900, seed=seed)
    live, _ = live_and_replay([(change, migration_started(change))], metrics)
    verdicts = run(live)
    assert finals(verdicts) == [("orders-expand/5", "promote")]
    final = verdicts[-1]
    assert final["checks"]["reference"]["baseline"] == "past"
    latency = next(m for m in final["metrics"] if m["metric"] == "latency_ms")
    assert latency["n_baseline"] == 180 * 20  # every sample of the 30 minutes before
    assert latency["n_canary"] == 31 * 20  # the change's own time on, to min_duration


@pytest.mark.parametrize("seed", range(5))
def test_a_migration_phase_that_slows_queries_is_rolled_back(seed):
    change = T0 + 1800
    metrics = traffic(T0, change + 900, seed=seed, slower_from=change, factor=1.3)
    live, _ = live_and_replay([(change, migration_started(change))], metrics)
    verdicts = run(live)
    assert [d for _, d in finals(verdicts)] == ["rollback"]
    assert "latency_ms" in verdicts[-1]["summary"]


@pytest.mark.parametrize("seed", range(3))
def test_a_migration_judged_live_and_replayed_gives_the_same_verdicts(seed):
    change = T0 + 1800
    metrics = traffic(T0, change + 900, seed=seed, slower_from=change + 300, factor=1.2)
    live, replay = live_and_replay([(change, migration_started(change))], metrics)
    assert run(live) == run(replay)


def test_untagged_metrics_for_a_side_by_side_canary_are_dead_lettered_with_the_reason():
    r = router()
    started = {
        "event": "started",
        "deployment_id": "orders-v2",
        "service": "orders",
        "time": format_time(T0),
        "baseline": {"version": "v1"},
        "canary": {"version": "v2"},
    }
    r.handle([deploy(started, 0)], now=0.0)
    (_, value), *_ = traffic(T0 + 10, T0 + 20, seed=1)
    effects = r.handle([Record(TOPICS.metrics, value, b"orders", offset=0)], now=1.0)
    assert len(effects.dead_letters) == 1
    headers = dict(effects.dead_letters[0].headers)
    assert headers["coalmine-error"].startswith(b"missing_cohort")


# -- blue-green --------------------------------------------------------------------------------


def blue_green(preview_at: float, switch_at: float) -> list[tuple[float, dict]]:
    base = {"deployment_id": "orders-green", "service": "orders", "strategy": "blue_green"}
    return [
        (
            preview_at,
            base
            | {
                "event": "started",
                "time": format_time(preview_at),
                "phase": "preview",
                "baseline": {"version": "blue"},
                "canary": {"version": "green"},
                "traffic_weight": 0,
            },
        ),
        (switch_at, base | {"event": "step", "time": format_time(switch_at), "phase": "switched"}),
    ]


def switch_traffic(preview_at: float, switch_at: float, *, seed: int, factor: float = 1.0):
    """Blue serves until the switch, green a mirrored share during the preview, then all."""
    blue = traffic(preview_at, switch_at, seed=seed, version="blue")
    mirrored = traffic(preview_at, switch_at, seed=seed + 100, version="green")
    green = traffic(
        switch_at,
        switch_at + 900,
        seed=seed + 200,
        version="green",
        factor=factor,
        slower_from=switch_at,
    )
    return sorted(blue + mirrored + green, key=lambda x: x[0])


@pytest.mark.parametrize("seed", range(3))
def test_a_healthy_switch_is_promoted_and_the_preview_never_is(seed):
    preview_at, switch_at = T0, T0 + 600  # a preview longer than min_duration
    live, _ = live_and_replay(
        blue_green(preview_at, switch_at), switch_traffic(preview_at, switch_at, seed=seed)
    )
    verdicts = run(live)
    decisions = [(v["decision"], v["final"]) for v in verdicts]
    assert decisions[-1] == ("promote", True)
    assert sum(final for _, final in decisions) == 1
    preview = [v for v in verdicts if orjson_time(v["time"]) <= switch_at]
    assert preview
    assert all(v["decision"] == "continue" for v in preview)
    switched = [v for v in verdicts if orjson_time(v["time"]) > switch_at]
    reference = switched[0]["checks"]["reference"]
    assert orjson_time(reference["window_end"]) == switch_at
    assert orjson_time(reference["window_start"]) == switch_at - 1800
    assert orjson_time(verdicts[-1]["time"]) == switch_at + 300  # min_duration from the switch


@pytest.mark.parametrize("seed", range(3))
def test_green_slower_after_the_switch_is_switched_back(seed):
    preview_at, switch_at = T0, T0 + 600
    metrics = switch_traffic(preview_at, switch_at, seed=seed, factor=1.5)
    live, replay = live_and_replay(blue_green(preview_at, switch_at), metrics)
    verdicts = run(live)
    assert finals(verdicts)[-1][1] == "rollback"
    assert orjson_time(verdicts[-1]["time"]) <= switch_at + 120
    assert run(replay) == verdicts


def orjson_time(text: str) -> float:
    return parse_time(text)


@pytest.mark.parametrize("seed", range(3))
def test_green_with_five_times_the_errors_is_switched_back_on_the_ratio_alone(seed):
    preview_at, switch_at = T0, T0 + 600
    blue = traffic(preview_at, switch_at, seed=seed, version="blue", errors=0.001)
    mirrored = traffic(preview_at, switch_at, seed=seed + 100, version="green", errors=0.001)
    green = traffic(switch_at, switch_at + 900, seed=seed + 200, version="green", errors=0.005)
    metrics = sorted(blue + mirrored + green, key=lambda x: x[0])
    live, replay = live_and_replay(blue_green(preview_at, switch_at), metrics)
    verdicts = run(live)
    final = verdicts[-1]
    assert final["decision"] == "rollback"
    # 50 req/s per version here, half the benchmark's: within 5 minutes (the benchmark's
    # median at 100 req/s is 0.8 min).
    assert orjson_time(final["time"]) <= switch_at + 300
    requests = next(m for m in final["metrics"] if m["metric"] == "requests")
    assert requests["outcome"] == "fail"
    latency = next(m for m in final["metrics"] if m["metric"] == "latency_ms")
    assert latency["outcome"] != "fail"  # the errors alone decide it
    assert run(replay) == verdicts


@pytest.mark.parametrize("seed", range(2))
def test_with_a_profile_reference_a_switch_compares_with_blue_from_before_the_preview(seed):
    preview_at, switch_at = T0, T0 + 600
    deploys = blue_green(preview_at, switch_at)
    for _, obj in deploys:
        obj["profile"] = "switch"
    earlier = traffic(T0 - 1200, preview_at, seed=seed + 300, version="blue")
    metrics = sorted(earlier + switch_traffic(preview_at, switch_at, seed=seed), key=lambda x: x[0])
    live, replay = live_and_replay(deploys, metrics)
    verdicts = run(live)
    assert verdicts == run(replay)
    switched = [v for v in verdicts if orjson_time(v["time"]) > switch_at]
    latency = next(m for m in switched[0]["metrics"] if m["metric"] == "latency_ms")
    assert latency["n_baseline"] == 180 * 20  # blue's last 30 minutes: 20 before the preview
