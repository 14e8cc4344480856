"""Final verdicts on stream time: a deployment whose events stop still gets its final."""

from __future__ import annotations

import orjson

from coalmine.bus.base import Record
from coalmine.config.models import LimitSettings, TopicsSettings
from coalmine.contract import parse_time
from coalmine.daemon.router import Router
from coalmine.tools.simulator import Scenario, simulate
from support.scenario import PROFILE, T0

TOPICS = TopicsSettings()
LONG = PROFILE.model_copy(update={"min_duration": PROFILE.max_duration})  # no early promote
GRACE = LONG.final_grace
END = T0 + LONG.max_duration
QUIET = Scenario("checkout-v42", "checkout")  # its exporter stops before max_duration
BUSY = Scenario("search-v7", "search", latency_factor=1.0)


def records(stop_quiet_at: float, duration: float) -> list[Record]:
    """Both deployments' messages in event-time order; the quiet one's stop early."""
    out = []
    for offset, message in enumerate(
        simulate([QUIET, BUSY], start=T0, duration=duration, step=10.0, seed=5)
    ):
        topic = TOPICS.deployments if message.topic == "deployments" else TOPICS.metrics
        if topic == TOPICS.metrics:
            (first, *_) = orjson.loads(message.value)
            if first["service"] == "checkout" and parse_time(first["time"]) > stop_quiet_at:
                continue
        out.append(Record(topic, message.value, message.key, offset=offset))
    return out


def finals(router: Router, batch: list[Record]) -> dict[str, tuple[float, float]]:
    """Per deployment: its final verdict's event time, and the stream time it came at."""
    found = {}
    for record in batch:
        for verdict in router.handle([record], now=0.0).verdicts:
            if verdict.final:
                found[verdict.deployment_id] = (verdict.time, router.stream_time)
    return found


def test_a_deployment_whose_events_stop_is_judged_final_at_its_end_on_stream_time() -> None:
    batch = records(stop_quiet_at=T0 + 600, duration=LONG.max_duration + 300)
    router = Router({"default": LONG}, TOPICS, LimitSettings())
    found = finals(router, batch)
    final_time, stream = found[QUIET.deployment_id]
    assert final_time == END  # its last judgement, at max_duration, is its final one
    assert END + GRACE <= stream < END + GRACE + 10.0  # on the first event past the grace
    assert QUIET.deployment_id not in router.deployments
    # The other deployment, whose events go on, ends on its own events as before.
    assert found[BUSY.deployment_id][0] == END
    assert found[BUSY.deployment_id][1] < END + GRACE


def test_without_later_events_it_stays_open_for_the_wall_clock_rule() -> None:
    batch = records(stop_quiet_at=T0 + 600, duration=LONG.max_duration + GRACE - 20)
    router = Router({"default": LONG}, TOPICS, LimitSettings())
    found = finals(router, batch)
    assert QUIET.deployment_id not in found
    assert router.deployments[QUIET.deployment_id].is_open


def test_closing_on_stream_time_is_the_same_in_one_batch_or_many() -> None:
    batch = records(stop_quiet_at=T0 + 600, duration=LONG.max_duration + 300)
    one = Router({"default": LONG}, TOPICS, LimitSettings())
    many = Router({"default": LONG}, TOPICS, LimitSettings())
    at_once = [orjson.dumps(v.to_dict()) for v in one.handle(batch, now=0.0).verdicts]
    record_by_record = [
        orjson.dumps(v.to_dict()) for r in batch for v in many.handle([r], now=0.0).verdicts
    ]
    assert sorted(at_once) == sorted(record_by_record)
    assert any(b'"checkout-v42"' in v and b'"final":true' in v for v in at_once)


def test_a_started_older_than_the_stream_by_more_than_its_span_says_why_it_ends_at_once(caplog):
    from coalmine.tools.simulator import started_event  # noqa: PLC0415

    router = Router({"default": LONG}, TOPICS, LimitSettings())
    today = T0 + 10 * 86_400
    ahead = {"service": "other", "cohort": "canary", "metric": "latency_ms", "value": 1.0}
    router.handle([Record(TOPICS.metrics, orjson.dumps(ahead | {"time": today}), b"other")], 0.0)
    effects = router.handle([Record(TOPICS.deployments, started_event(QUIET, T0), b"c")], 1.0)
    assert [v.decision for v in effects.verdicts if v.final] == ["inconclusive"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("checkout-v42 starts at" in w and "judged to its end at once" in w for w in warnings)


def test_a_started_within_the_streams_span_gets_no_such_warning(caplog):
    from coalmine.tools.simulator import started_event  # noqa: PLC0415

    router = Router({"default": LONG}, TOPICS, LimitSettings())
    ahead = {"service": "other", "cohort": "canary", "metric": "latency_ms", "value": 1.0}
    at = T0 + LONG.max_duration  # inside max_duration + final_grace of the start
    router.handle([Record(TOPICS.metrics, orjson.dumps(ahead | {"time": at}), b"other")], 0.0)
    router.handle([Record(TOPICS.deployments, started_event(QUIET, T0), b"c")], 1.0)
    assert not [r for r in caplog.records if "judged to its end at once" in r.getMessage()]
