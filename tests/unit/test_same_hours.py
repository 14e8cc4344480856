"""References to the same hours days earlier: configuration, the window, and the router."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from coalmine.bus.base import Record
from coalmine.config.models import DAY, LimitSettings, Profile, ReferenceSpec
from coalmine.contract import MetricEvent, encode_verdict, format_time, parse_time
from coalmine.daemon.past import PastBaseline, SameHours
from coalmine.daemon.router import Router
from support.scenario import T0
from tests.unit.test_past import (
    METRICS,
    TOPICS,
    deploy,
    live_and_replay,
    migration_started,
    traffic,
)

YESTERDAY = Profile(
    interval=60,
    min_duration=300,
    max_duration=900,
    metrics=METRICS,
    reference=ReferenceSpec(days=(1,)),
)
CHANGE = T0 + DAY + 1800


def router(*, past_from_history: bool = True) -> Router:
    profiles = {"default": YESTERDAY, "migration": YESTERDAY}
    return Router(profiles, TOPICS, LimitSettings(), past_from_history=past_from_history)


def event(time: float, **extra: object) -> MetricEvent:
    return MetricEvent(service="orders", metric="latency_ms", time=time, values=(1.0,), **extra)


def verdicts_of(r: Router, records: list[Record], batch: int = 7) -> list[dict]:
    out = []
    for i in range(0, len(records), batch):
        effects = r.handle(records[i : i + batch], now=float(i))
        assert not effects.dead_letters, effects.dead_letters
        out += [orjson.loads(encode_verdict(v)) for v in effects.verdicts]
    return out


def day_and_change(*, factor: float = 1.0, seed: int = 1) -> list[tuple[float, bytes]]:
    """Yesterday's hour from the change's time of day, then today's 30 min before and 15 after."""
    yesterday = traffic(CHANGE - DAY, CHANGE - DAY + 3600, seed=seed + 100, factor=1.0)
    today = traffic(CHANGE - 1800, CHANGE + 900, seed=seed, slower_from=CHANGE, factor=factor)
    return yesterday + today


# -- configuration ---------------------------------------------------------------------------


def test_a_reference_is_the_30_minutes_before_unless_it_names_days() -> None:
    assert ReferenceSpec().window_before == 1800
    assert ReferenceSpec(days=(1,)).window_before == 0
    assert ReferenceSpec(before=600, days=(7, 1)).window_before == 600
    assert ReferenceSpec(before=600, days=(7, 1)).days == (1, 7)
    assert ReferenceSpec(days=(1, 7)).span == 7 * DAY


@pytest.mark.parametrize("days", [(0,), (29,), (1, 1), (-1,)])
def test_days_must_be_distinct_whole_days_within_four_weeks(days: tuple[int, ...]) -> None:
    with pytest.raises(ValidationError, match="days"):
        ReferenceSpec(days=days)


# -- the window ------------------------------------------------------------------------------


def test_same_hours_take_only_their_windows_and_not_the_change_itself() -> None:
    past = PastBaseline(CHANGE, 0.0, "v1", "v2", (1, 7))
    hours = SameHours(past, 900.0)
    assert hours.windows == [
        (1, CHANGE - DAY, CHANGE - DAY + 900),
        (7, CHANGE - 7 * DAY, CHANGE - 7 * DAY + 900),
    ]
    taken = hours.load(
        [
            event(CHANGE - DAY - 1),  # before the window
            event(CHANGE - DAY),  # its first instant
            event(CHANGE - DAY + 899, version="v1"),
            event(CHANGE - DAY + 900),  # past its end
            event(CHANGE - 7 * DAY + 60),
            event(CHANGE - DAY + 30, version="v2"),  # the change's version
            event(CHANGE - DAY + 30, cohort="canary"),
        ]
    )
    assert taken == 3
    assert hours.loaded
    # Each moved forward by its days and let in once the live window reaches it.
    assert [e.time for e in hours.due(CHANGE)] == [CHANGE]
    assert [e.time for e in hours.due(CHANGE + 60)] == [CHANGE + 60]
    assert hours.due(CHANGE + 60) == []
    assert [e.time for e in hours.due(CHANGE + 900)] == [CHANGE + 899]


def test_a_verdict_names_the_same_hours_it_compared_with() -> None:
    past = PastBaseline(CHANGE, 0.0, days=(1,))
    assert past.describe(CHANGE + 300) == {
        "baseline": "past",
        "days": "1",
        "same_hours_start": format_time(CHANGE - DAY),
        "same_hours_end": format_time(CHANGE - DAY + 300),
    }
    both = PastBaseline(CHANGE, 1800.0, days=(1, 7)).describe(CHANGE)
    assert both["window_start"] == format_time(CHANGE - 1800)
    assert both["days"] == "1,7"


# -- through the router ----------------------------------------------------------------------


def test_a_migration_compares_each_look_with_the_same_hours_yesterday() -> None:
    live, _ = live_and_replay([(CHANGE, migration_started(CHANGE))], day_and_change())
    verdicts = verdicts_of(router(), live)
    assert [(v["verdict_id"], v["decision"]) for v in verdicts if v["final"]] == [
        ("orders-expand/5", "promote")
    ]
    for v in verdicts:
        latency = next(m for m in v["metrics"] if m["metric"] == "latency_ms")
        minutes = (parse_time(v["window"]["end"]) - parse_time(v["window"]["start"])) / 60
        # Yesterday up to the same time of day as today's look: six messages a minute, and
        # the one at the change itself.
        assert latency["n_baseline"] == (6 * minutes + 1) * 20
        assert v["checks"]["reference"]["same_hours_end"] == format_time(
            CHANGE - DAY + minutes * 60
        )


def test_a_migration_slower_than_the_same_hours_yesterday_is_rolled_back() -> None:
    live, _ = live_and_replay([(CHANGE, migration_started(CHANGE))], day_and_change(factor=1.3))
    verdicts = verdicts_of(router(), live)
    assert [v["decision"] for v in verdicts if v["final"]] == ["rollback"]
    assert "latency_ms" in verdicts[-1]["summary"]


@pytest.mark.parametrize("seed", range(3))
def test_same_hours_give_the_same_verdicts_live_and_replayed(seed: int) -> None:
    metrics = day_and_change(factor=1.15, seed=seed)
    live, replay = live_and_replay([(CHANGE, migration_started(CHANGE))], metrics)
    assert verdicts_of(router(), live) == verdicts_of(router(), replay, batch=500)


def test_read_by_the_daemon_the_looks_wait_for_the_past_and_then_come_in_order() -> None:
    """Without the history, the router asks for the windows once and judges nothing until
    they come: the verdicts are then those of a router that had them at once."""
    metrics = day_and_change(factor=1.15)
    live, _ = live_and_replay([(CHANGE, migration_started(CHANGE))], metrics)
    expected = verdicts_of(router(), live)
    yesterday = [r for r in live if r.topic == TOPICS.metrics and _time_of(r) < CHANGE - 1800]
    today = [r for r in live if r not in yesterday]

    r = router(past_from_history=False)
    waited = verdicts_of(r, today[:200])
    assert waited == []
    reads = r.past_reads()
    assert len(reads) == 1
    assert reads[0].deployment_id == "orders-expand"
    assert reads[0].service == "orders"
    assert reads[0].partition == 0  # where its started was read
    assert reads[0].windows == ((CHANGE - DAY, CHANGE - DAY + 900),)
    assert r.past_reads() == []  # asked once
    other = Record(TOPICS.metrics, orjson.dumps(_other_service(CHANGE - DAY + 60)), b"x")
    broken = Record(TOPICS.metrics, b"not json", b"orders")
    effects = r.load_past("orders-expand", [other, broken, *yesterday], now=0.0)
    got = [orjson.loads(encode_verdict(v)) for v in effects.verdicts]
    got += verdicts_of(r, today[200:])
    assert got == expected


def test_a_blue_green_switch_judged_against_yesterday_waits_at_the_switch() -> None:
    switch = CHANGE
    started = {
        "event": "started",
        "deployment_id": "orders-v2",
        "service": "orders",
        "time": format_time(switch - 600),
        "strategy": "blue_green",
        "phase": "preview",
        "baseline": {"version": "v1"},
        "canary": {"version": "v2"},
    }
    step = {
        "event": "step",
        "deployment_id": "orders-v2",
        "service": "orders",
        "time": format_time(switch),
        "phase": "switched",
        "traffic_weight": 100,
    }
    blue = traffic(switch - 1800, switch, seed=3, version="v1")
    green = traffic(switch - 600, switch + 900, seed=4, version="v2")
    metrics = sorted(blue + green, key=lambda m: m[0])
    r = router(past_from_history=False)
    records = [deploy(started, 0), deploy(step, 1)] + [
        Record(TOPICS.metrics, value, b"orders", offset=i) for i, (_, value) in enumerate(metrics)
    ]
    verdicts = verdicts_of(r, records)
    # The preview is judged against blue beside it; from the switch on nothing is, until
    # yesterday's same hours are read.
    assert verdicts
    assert all(parse_time(v["window"]["end"]) <= switch for v in verdicts)
    assert all("reference" not in v["checks"] for v in verdicts)
    (read,) = r.past_reads()
    assert read.windows == ((switch - DAY, switch - DAY + 900),)
    yesterday = traffic(switch - DAY, switch - DAY + 900, seed=5, version="v1")
    loaded = r.load_past(
        "orders-v2", [Record(TOPICS.metrics, value, b"orders") for _, value in yesterday], now=0
    )
    after = [orjson.loads(encode_verdict(v)) for v in loaded.verdicts]
    assert after[-1]["final"]
    assert after[-1]["decision"] == "promote"
    assert after[-1]["traffic_weight"] == 100
    assert after[-1]["checks"]["reference"]["same_hours_start"] == format_time(switch - DAY)


def _time_of(record: Record) -> float:
    return parse_time(orjson.loads(record.value)[0]["time"])


def _other_service(time: float) -> list[dict[str, object]]:
    values = np.full(20, 1000.0).tolist()
    return [
        {"service": "billing", "metric": "latency_ms", "time": format_time(time), "values": values}
    ]
