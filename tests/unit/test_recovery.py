"""Restart recovery in the pure core: a router rebuilt from the log at the committed floors.

The daemon commits no further than ``Router.floors()``; a restarted daemon reads the
verdict topic into its ledger, then the deployments topic from its committed offset to
the end, then the inputs. These tests play that at every kind of crash point and check the
guarantees: every verdict ever published for a judgement has the same content, each
deployment gets exactly one final verdict, and the verdicts are those of a run that never
crashed.
"""

import itertools

import orjson
import pytest

from coalmine.bus.base import Record
from coalmine.config.models import TopicsSettings
from coalmine.contract import encode_verdict, parse_time
from coalmine.daemon.router import Router
from support.scenario import PROFILE, STAGGERED_EXPECTED, staggered_messages

TOPICS = TopicsSettings()


def staggered_log() -> list[Record]:
    """The staggered scenario on partition 0 of both topics, offsets per topic."""
    offsets = dict.fromkeys(("deployments", "metrics"), 0)
    log = []
    for topic, key, value in staggered_messages():
        name = TOPICS.deployments if topic == "deployments" else TOPICS.metrics
        log.append(Record(name, value, key, offset=offsets[topic]))
        offsets[topic] += 1
    return log


def router() -> Router:
    return Router({"default": PROFILE}, TOPICS)


def run(r: Router, records: list[Record], batch: int) -> list[bytes]:
    out = []
    for i in range(0, len(records), batch):
        out.extend(encode_verdict(v) for v in r.handle(records[i : i + batch], now=0.0).verdicts)
    return out


def committed(r: Router, consumed: list[Record]) -> dict[tuple[str, int], int]:
    """What the daemon commits after ``consumed``: each position, held back to the floors."""
    positions: dict[tuple[str, int], int] = {}
    for record in consumed:
        positions[record.topic, record.partition] = record.offset + 1
    floors = r.floors()
    return {tp: min(pos, floors.get(tp, pos)) for tp, pos in positions.items()}


def restart(log: list[Record], crash_at: int, published: list[bytes], batch: int) -> list[bytes]:
    """A new router resuming from what the crashed one committed after ``crash_at`` records."""
    first = router()
    run(first, log[:crash_at], batch)
    commits = committed(first, log[:crash_at])
    second = router()
    second.recall(published)
    unread = [r for r in log if r.offset >= commits.get((r.topic, r.partition), 0)]
    deploys = [r for r in unread if r.topic == TOPICS.deployments]
    metrics = [r for r in unread if r.topic != TOPICS.deployments]
    return run(second, deploys, batch) + run(second, metrics, batch)


@pytest.fixture(scope="module")
def log() -> list[Record]:
    return staggered_log()


@pytest.fixture(scope="module")
def reference(log: list[Record]) -> dict[str, dict]:
    verdicts = [orjson.loads(v) for v in run(router(), log, batch=9)]
    return {v["verdict_id"]: v for v in verdicts}


def test_the_staggered_log_exercises_every_outcome(reference: dict[str, dict]) -> None:
    finals = {v["deployment_id"]: v["decision"] for v in reference.values() if v["final"]}
    assert finals == STAGGERED_EXPECTED


def test_metrics_read_before_their_started_are_held_and_used(log: list[Record]) -> None:
    r = router()
    at = next(i for i, rec in enumerate(log) if b'"cart-v9"' in rec.value)
    early = [rec for rec in log[:at] if b'"service":"cart"' in rec.value]
    assert len(early) == 2
    # Each message in a batch of its own: the two cart metric messages come first.
    run(r, log[: at + 1], batch=1)
    assert "cart-v9" in r.deployments
    assert r.deployments["cart-v9"].metric_sizes()["requests"][1] > 0


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_a_restart_at_any_point_keeps_every_guarantee(
    log: list[Record], reference: dict[str, dict], batch: int
) -> None:
    crash_points = range(1, len(log), max(1, len(log) // 23))
    for crash_at in crash_points:
        first = router()
        live = run(first, log[:crash_at], batch)
        rebuilt = restart(log, crash_at, live, batch)
        published = [orjson.loads(v) for v in itertools.chain(live, rebuilt)]
        by_id: dict[str, dict] = {}
        for verdict in published:
            previous = by_id.setdefault(verdict["verdict_id"], verdict)
            assert previous == verdict, f"crash at {crash_at}: {verdict['verdict_id']} differs"
        assert by_id == reference, f"crash at {crash_at}"
        finals = [v for v in published if v["final"]]
        assert len(finals) == len({v["deployment_id"] for v in finals}) == 5, crash_at


def test_a_rebuilt_router_publishes_nothing_already_published(
    log: list[Record], reference: dict[str, dict]
) -> None:
    crash_at = len(log) * 2 // 3
    live = run(router(), log[:crash_at], batch=5)
    rebuilt = restart(log, crash_at, live, batch=5)
    live_ids = {orjson.loads(v)["verdict_id"] for v in live}
    rebuilt_ids = [orjson.loads(v)["verdict_id"] for v in rebuilt]
    assert not live_ids & set(rebuilt_ids)
    assert live_ids | set(rebuilt_ids) == set(reference)


def test_a_final_made_by_expiry_is_never_followed_by_another(log: list[Record]) -> None:
    crash_at = len(log) // 3
    first = router()
    live = run(first, log[:crash_at], batch=5)
    # Wall-clock expiry closes everything open: the log cannot re-make these finals.
    expired = first.expire_silent(now=1e12).verdicts
    assert expired
    published = live + [encode_verdict(v) for v in expired]
    rebuilt = [orjson.loads(v) for v in restart(log, crash_at, published, batch=5)]
    expired_ids = {v.deployment_id for v in expired}
    assert not [v for v in rebuilt if v["deployment_id"] in expired_ids]


def test_floors_hold_the_oldest_open_deployment_and_advance_when_it_ends(
    log: list[Record],
) -> None:
    r = router()
    run(r, log[:40], batch=10)
    floors = r.floors()
    assert floors[TOPICS.deployments, 0] == 0  # checkout's `started` is still needed
    assert floors[TOPICS.metrics, 0] == 0
    run(r, log[40:], batch=10)
    assert not r.deployments
    # Only metrics of services with no open deployment are held, for the grace period.
    floors = r.floors()
    assert list(floors) == [(TOPICS.metrics, 0)]
    metrics = [rec for rec in log if rec.topic == TOPICS.metrics]
    held_from = parse_time(orjson.loads(metrics[floors[TOPICS.metrics, 0]].value)[0]["time"])
    last = parse_time(orjson.loads(metrics[-1].value)[0]["time"])
    assert last - 300.0 <= held_from <= last  # the grace period, in event time


def test_giving_up_a_partition_drops_its_deployments_for_the_new_owner(
    log: list[Record],
) -> None:
    r = router()
    run(r, log[:60], batch=10)
    open_before = set(r.deployments)
    assert open_before
    dropped = r.release([(TOPICS.deployments, 0), (TOPICS.metrics, 0)])
    assert set(dropped) == open_before
    assert not r.deployments
    assert r.floors() == {}
    assert not any(dep_id in r.finished for dep_id in dropped)
