from pathlib import Path

import orjson
import pytest

from coalmine.bus.base import Record
from coalmine.config.models import LimitSettings, TopicsSettings
from coalmine.daemon.router import Router
from coalmine.formats import InputSettings
from coalmine.tools.simulator import Scenario, simulate, started_event, three_deployments
from support.scenario import EXPECTED, PROFILE, T0
from tests.metrics import sample_value

TOPICS = TopicsSettings()


def router(**limits) -> Router:
    return Router({"default": PROFILE}, TOPICS, LimitSettings(**limits))


def deploy(value: bytes, offset: int = 0) -> Record:
    return Record(TOPICS.deployments, value, b"svc", offset=offset)


def metric(obj: object, offset: int = 0, key: bytes = b"checkout") -> Record:
    return Record(TOPICS.metrics, orjson.dumps(obj), key, offset=offset, partition=2)


CHECKOUT = Scenario("checkout-v42", "checkout")


def start(r: Router, scenario: Scenario = CHECKOUT) -> None:
    effects = r.handle([deploy(started_event(scenario, T0))], now=0.0)
    assert not effects


def sample(**fields):
    base = {"service": "checkout", "metric": "latency_ms", "time": T0 + 1, "values": [1.0, 2.0]}
    return base | fields


def dropped(r: Router, reason: str) -> float:
    """Valid observations the router did not analyse, for ``reason``."""
    return sample_value(r.telemetry, "coalmine_dropped_samples_total", reason=reason)


def seen(r: Router) -> dict[str, tuple[int, int]]:
    return r.deployments["checkout-v42"].metric_sizes()


def test_metrics_route_by_id_by_version_and_by_cohort():
    r = router()
    start(r)
    effects = r.handle(
        [
            metric(sample(deployment_id="checkout-v42", cohort="canary")),
            metric(sample(version="v1")),
            metric(sample(cohort="baseline", values=[3.0])),
            metric(
                {"service": "checkout", "version": "v2", "metric": "requests", "time": T0 + 1}
                | {"good": 9, "total": 10}
            ),
        ],
        now=1.0,
    )
    assert not effects.dead_letters
    assert seen(r) == {"latency_ms": (3, 2), "requests": (0, 10)}


def test_dead_letter_keeps_the_original_and_says_why_and_where():
    r = router()
    start(r)
    bad = Record(
        TOPICS.metrics,
        b'{"service": "checkout"',
        b"checkout",
        headers=(("trace", b"1"),),
        partition=3,
        offset=41,
    )
    effects = r.handle([bad], now=1.0)
    (letter,) = effects.dead_letters
    assert letter.topic == TOPICS.dead_letter
    assert (letter.key, letter.value) == (bad.key, bad.value)
    headers = dict(letter.headers)
    assert headers["trace"] == b"1"
    assert headers["coalmine-error"].startswith(b"invalid_json")
    assert headers["coalmine-source"] == b"coalmine.metrics/3/41"
    assert sample_value(r.telemetry, "coalmine_invalid_events_total", reason="invalid_json") == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"version": "v9"}, b"unknown_cohort"),
        ({"metric": "requests", "cohort": "canary"}, b"kind_mismatch"),
    ],
)
def test_events_that_do_not_fit_the_deployment_are_dead_lettered(fields, reason):
    r = router()
    start(r)
    effects = r.handle([metric(sample(**fields))], now=1.0)
    (letter,) = effects.dead_letters
    assert dict(letter.headers)["coalmine-error"].startswith(reason)


def test_a_bad_item_rejects_the_whole_message_and_applies_none_of_it():
    r = router()
    start(r)
    message = [sample(cohort="canary"), sample(version="v9")]
    effects = r.handle([metric(message)], now=1.0)
    assert dict(effects.dead_letters[0].headers)["coalmine-error"].startswith(
        b"unknown_cohort: item 1"
    )
    assert seen(r) == {}


def test_samples_for_no_deployment_or_unanalysed_metrics_are_dropped_and_counted():
    r = router()
    start(r)
    effects = r.handle(
        [
            metric(sample(service="other", cohort="canary")),
            metric(sample(metric="cpu", cohort="canary")),
        ],
        now=1.0,
    )
    assert not effects
    assert dropped(r, "metric_not_in_profile") == 2
    # No deployment yet: held for the grace period (its `started` may be late), then dropped.
    assert dropped(r, "no_open_deployment") == 0
    assert r.floors()[TOPICS.metrics, 2] == 0
    r.handle([metric(sample(service="other", cohort="canary", time=T0 + 302), offset=1)], now=2.0)
    assert dropped(r, "no_open_deployment") == 2
    assert r.floors()[TOPICS.metrics, 2] == 1  # the newer one is held now


def test_second_started_is_ignored_not_a_reset():
    r = router()
    start(r)
    r.handle([metric(sample(cohort="canary"))], now=1.0)
    r.handle([deploy(started_event(Scenario("checkout-v42", "checkout"), T0 + 5))], now=2.0)
    assert seen(r) == {"latency_ms": (0, 2)}
    assert (
        sample_value(r.telemetry, "coalmine_ignored_events_total", reason="duplicate_started") == 1
    )


def test_unknown_profile_and_too_many_deployments_are_dead_lettered():
    r = router(max_open_deployments=1)
    effects = r.handle(
        [
            deploy(started_event(Scenario("a-1", "a", profile="nope"), T0)),
            deploy(started_event(Scenario("b-1", "b"), T0)),
            deploy(started_event(Scenario("c-1", "c"), T0)),
        ],
        now=0.0,
    )
    reasons = [dict(d.headers)["coalmine-error"].split(b":")[0] for d in effects.dead_letters]
    assert reasons == [b"unknown_profile", b"too_many_deployments"]
    assert list(r.deployments) == ["b-1"]


def test_oversized_messages_are_dead_lettered_truncated():
    r = router(max_message_bytes=100)
    effects = r.handle([metric(sample(values=[1.0] * 200))], now=0.0)
    (letter,) = effects.dead_letters
    assert len(letter.value) == 100
    assert int(dict(letter.headers)["coalmine-truncated-from"]) > 100


def test_completed_stops_verdicts_for_the_deployment():
    r = router()
    start(r)
    done = orjson.dumps(
        {
            "event": "completed",
            "deployment_id": "checkout-v42",
            "service": "checkout",
            "time": T0 + 30,
        }
    )
    r.handle([deploy(done)], now=1.0)
    effects = r.handle([metric(sample(cohort="canary", time=T0 + 600))], now=2.0)
    assert not effects
    assert "checkout-v42" in r.finished
    assert sample_value(r.telemetry, "coalmine_active_deployments") == 0


def test_silent_deployments_close_inconclusive_on_wall_time():
    r = router()
    start(r)
    assert not r.expire_silent(now=899.0)
    effects = r.expire_silent(now=900.0)
    (verdict,) = effects.verdicts
    assert (verdict.decision, verdict.final) == ("inconclusive", True)
    assert r.deployments == {}


def records_of(scenarios, *, duration=900.0):
    topic = {"deployments": TOPICS.deployments, "metrics": TOPICS.metrics}
    return [
        Record(topic[m.topic], m.value, m.key, offset=i)
        for i, m in enumerate(simulate(scenarios, start=T0, duration=duration, step=10.0, seed=3))
    ]


def test_three_deployments_promote_rollback_rollback_with_one_final_each():
    r = router()
    effects = r.handle(records_of(three_deployments()), now=0.0)
    finals = {v.deployment_id: v for v in effects.verdicts if v.final}
    assert {k: v.decision for k, v in finals.items()} == {
        "checkout-v42": "promote",
        "search-v7": "rollback",
        "payments-v3": "rollback",
    }
    assert sum(v.final for v in effects.verdicts) == 3
    # 5% errors from minute 3 on a critical metric: decided by minute 5 of event time.
    assert finals["payments-v3"].time - T0 <= 300.0
    assert not effects.dead_letters


def test_metrics_read_before_their_started_event_in_a_batch_are_still_routed():
    r = router()
    effects = r.handle(
        [
            metric(sample(cohort="canary")),
            deploy(started_event(CHECKOUT, T0)),
        ],
        now=0.0,
    )
    assert not effects
    assert seen(r) == {"latency_ms": (0, 2)}


def test_samples_from_before_started_are_ignored():
    r = router()
    start(r)
    r.handle([metric(sample(cohort="canary", time=T0 - 1))], now=1.0)
    assert seen(r) == {}
    assert dropped(r, "before_started") == 2


def test_deploy_events_read_first_give_the_same_verdicts_as_interleaved():
    # A replay reads the whole deployments topic before the metrics; live, they interleave.
    records = records_of(three_deployments())
    step = orjson.dumps(
        {
            "event": "step",
            "deployment_id": "search-v7",
            "service": "search",
            "time": T0 + 45,
            "traffic_weight": 20,
        }
    )
    abort = orjson.dumps(
        {
            "event": "aborted",
            "deployment_id": "checkout-v42",
            "service": "checkout",
            "time": T0 + 200,
        }
    )
    # Live, each deploy event is read among the metrics of its own time: the step (45 s)
    # before the 50 s metrics (index 15), the abort (200 s) before the 210 s ones.
    interleaved = list(records)
    interleaved.insert(15, deploy(step))
    assert orjson.loads(interleaved[16].value)[0]["time"].endswith("00:50Z")
    interleaved.insert(64, deploy(abort))
    assert orjson.loads(interleaved[65].value)[0]["time"].endswith("03:30Z")
    deploys_first = sorted(interleaved, key=lambda rec: rec.topic != TOPICS.deployments)
    live_router = router()
    live = [v.to_dict() for rec in interleaved for v in live_router.handle([rec], now=0.0).verdicts]
    r = router()
    replay = [v.to_dict() for rec in deploys_first for v in r.handle([rec], now=0.0).verdicts]
    assert live == replay
    assert not any(v["deployment_id"] == "checkout-v42" and v["final"] for v in replay)
    assert "checkout-v42" in r.finished
    assert {v["traffic_weight"] for v in replay if v["deployment_id"] == "search-v7"} == {20.0}


def test_batching_does_not_change_verdicts():
    records = records_of(three_deployments())
    whole = router().handle(records, now=0.0).verdicts
    one_by_one = router()
    single = [v for rec in records for v in one_by_one.handle([rec], now=0.0).verdicts]
    assert [v.to_dict() for v in whole] == [v.to_dict() for v in single]


def test_emit_hands_the_deciding_records_verdicts_over_together_then_each_later_one():
    records = records_of(three_deployments())
    one_by_one = router()
    expected = [v.to_dict() for rec in records for v in one_by_one.handle([rec], 0.0).verdicts]
    made: list[int] = []  # verdicts made by each record taken, in the order taken
    r = router()
    apply = r._apply

    def counting(record, events, now):
        verdicts = apply(record, events, now)
        made.append(len(verdicts))
        return verdicts

    r._apply = counting
    emitted: list[dict] = []
    together = 0  # most deployments whose verdicts went in one first hand-over
    for start in range(0, len(records), 40):  # batches as a live daemon fetches them
        made.clear()
        handed: list[tuple[int, int]] = []  # (records taken so far, verdicts handed over)
        deployments: list[int] = []  # how many deployments each hand-over speaks for

        def emit(effects, handed=handed, deployments=deployments):
            handed.append((len(made), len(effects.verdicts)))
            deployments.append(len({v.deployment_id for v in effects.verdicts}))
            emitted.extend(v.to_dict() for v in effects.verdicts)

        rest = r.handle(records[start : start + 40], now=0.0, emit=emit)
        emitted.extend(v.to_dict() for v in rest.verdicts)
        assert all(n for _, n in handed)
        if not handed:
            assert not rest.verdicts
            continue
        # The first hand-over holds everything the records taken before it made (the
        # deciding ones); every later one comes right after the record that made it.
        taken, n = handed[0]
        assert n == sum(made[:taken])
        together = max(together, deployments[0])
        assert handed[1:] == [(i + 1, k) for i, k in enumerate(made) if k and i >= taken]
        assert not rest.verdicts
    assert together == 3  # the three fall due at the same event times: one round trip
    by_deployment = lambda vs: {d: [v for v in vs if v["deployment_id"] == d] for d in EXPECTED}  # noqa: E731
    assert by_deployment(emitted) == by_deployment(expected)
    assert sorted(map(str, emitted)) == sorted(map(str, expected))


def _three_open(r: Router) -> None:
    """checkout, search and cart open at T0 with a first minute of samples (no judgement)."""
    services = ("checkout", "search", "cart")
    starts = [deploy(started_event(Scenario(f"{s}-v1", s), T0), i) for i, s in enumerate(services)]
    firsts = [
        metric(sample(service=s, cohort=c, time=T0 + 10), key=s.encode())
        for s in services
        for c in ("baseline", "canary")
    ]
    assert not r.handle(starts + firsts, now=0.0)


def test_records_that_make_a_verdict_go_first_and_each_deployment_keeps_its_order():
    due = T0 + PROFILE.interval  # checkout's first judgement falls due after this
    at = lambda s, t, c="canary": sample(service=s, cohort=c, time=t)  # noqa: E731
    batch = [
        metric(at("search", due - 5), 10, b"search"),
        metric([at("cart", due - 4), at("checkout", due - 3)], 11, b"cart"),  # joins the two
        metric(at("search", due - 2), 12, b"search"),
        metric(at("checkout", due + 1), 13, b"checkout"),  # makes checkout's judgement due
        metric(at("cart", due - 1), 14, b"cart"),
    ]
    r = router()
    _three_open(r)
    seen_at_hand_over: list[dict[str, float]] = []
    handed = []

    def emit(effects) -> None:
        handed.extend(effects.verdicts)
        seen_at_hand_over.append({d: r.deployments[d].watermark for d in r.deployments})

    assert not r.handle(batch, now=0.0, emit=emit)
    # checkout's verdict left after its two records and the cart record it shares a message
    # with, before search's records and cart's later one were taken.
    assert seen_at_hand_over == [{"checkout-v1": due + 1, "search-v1": T0 + 10, "cart-v1": due - 4}]
    assert {d: r.deployments[d].watermark for d in r.deployments} == {
        "checkout-v1": due + 1,
        "search-v1": due - 2,
        "cart-v1": due - 1,
    }
    # Every deployment ends where taking the records one at a time, in order, leaves it.
    in_order = router()
    _three_open(in_order)
    one_by_one = [v for record in batch for v in in_order.handle([record], now=0.0).verdicts]
    assert [v.verdict_id for v in handed] == ["checkout-v1/1"]
    assert [v.to_dict() for v in handed] == [v.to_dict() for v in one_by_one]
    for dep_id, deployment in r.deployments.items():
        assert deployment.metric_sizes() == in_order.deployments[dep_id].metric_sizes()


def test_structured_cloudevents_without_a_content_type_are_recognised_and_deduplicated():
    # As over MQTT, which carries no content-type header: the envelope says what it is.
    envelope = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/pipelines/checkout",
        "type": "com.example.deploy.started",
        "data": orjson.loads(started_event(CHECKOUT, T0)),
    }
    r = router()
    effects = r.handle([deploy(orjson.dumps(envelope)), deploy(orjson.dumps(envelope), 1)], now=0.0)
    assert not effects
    assert list(r.deployments) == ["checkout-v42"]
    ignored = sample_value(
        r.telemetry, "coalmine_ignored_events_total", reason="duplicate_cloudevent"
    )
    assert ignored == 1
    broken = orjson.dumps({**envelope, "specversion": "0.3", "id": "evt-2"})
    (letter,) = r.handle([deploy(broken, 2)], now=0.0).dead_letters
    assert dict(letter.headers)["coalmine-error"].startswith(b"cloudevent_invalid")


def test_batch_positions_floors_and_counts_do_not_depend_on_record_order():
    # Partitions interleaved and out of offset order (a transport need not group them).
    canary = orjson.dumps(sample(cohort="canary"))
    records = [
        metric(sample(cohort="canary"), offset=7),
        Record(TOPICS.metrics, canary, b"checkout", partition=1, offset=3),
        metric(sample(cohort="canary"), offset=5),
        Record(TOPICS.deployments, started_event(CHECKOUT, T0), b"checkout", partition=2, offset=4),
        metric(sample(cohort="canary"), offset=9),
        metric(sample(cohort="canary"), offset=6),
    ]
    ordered = router()
    ordered.handle(sorted(records, key=lambda r: (r.topic, r.partition, r.offset)), now=0.0)
    shuffled = router()
    shuffled.handle(records, now=0.0)
    for r in (ordered, shuffled):
        assert r.recovery.positions == {  # what a restart re-reads from
            (TOPICS.metrics, 2): 10,
            (TOPICS.metrics, 1): 4,
            (TOPICS.deployments, 2): 5,
        }
        # The deployment started in this batch may use any of its records: floors at the
        # batch's first offsets (of its own metrics partition: co-partitioned by service).
        assert r.floors() == {(TOPICS.deployments, 2): 4, (TOPICS.metrics, 2): 5}
        consumed = "coalmine_events_consumed_total"
        assert sample_value(r.telemetry, consumed, topic=TOPICS.metrics) == 5
        assert sample_value(r.telemetry, consumed, topic=TOPICS.deployments) == 1
        assert seen(r) == {"latency_ms": (0, 10)}


def test_what_an_input_decoder_skips_is_counted_in_telemetry():
    source = InputSettings.model_validate(
        {
            "topic": "otlp_metrics",
            "format": "otlp_json",
            "metrics": [
                {
                    "metric": "requests",
                    "kind": "ratio",
                    "total": {"series": "http.server.requests"},
                    "bad": {
                        "series": "http.server.requests",
                        "labels": {"http.response.status_code": "5.."},
                    },
                }
            ],
        }
    )
    r = Router({"default": PROFILE}, TOPICS, inputs=[source])
    body = orjson.loads((Path(__file__).parent / "fixtures" / "otlp_delta.json").read_bytes())
    # Without service.version the two request points cannot be routed: skipped, counted.
    body["resourceMetrics"][0]["resource"]["attributes"] = [
        {"key": "service.name", "value": {"stringValue": "checkout"}}
    ]
    value = orjson.dumps(body)

    def skipped() -> float:
        return sample_value(
            r.telemetry,
            "coalmine_input_points_skipped_total",
            topic="otlp_metrics",
            reason="no_version",
        )

    r.handle([Record("otlp_metrics", value, b"checkout", (), 0, 0)], 0.0)
    assert skipped() == 2
    r.handle([Record("otlp_metrics", value, b"checkout", (), 0, 1)], 0.0)
    assert skipped() == 4  # each batch adds only what is new


def test_steps_pause_after_the_deciding_records_and_every_slice():
    due = T0 + PROFILE.interval
    at = lambda s, t, c="canary": sample(service=s, cohort=c, time=t)  # noqa: E731
    calm = [metric(at("search", due - 30 + i / 100), i, b"search") for i in range(450)]
    batch = [*calm, metric(at("checkout", due + 1), 500, b"checkout")]  # deciding, last
    r = router()
    _three_open(r)
    handed: list = []
    steps = r.steps(batch, now=0.0, emit=handed.append)
    next(steps)  # the first pause: the deciding record is taken, its verdict handed over
    assert [v.deployment_id for e in handed for v in e.verdicts] == ["checkout-v1"]
    assert r.deployments["search-v1"].watermark == T0 + 10  # none of search's taken yet
    pauses = 1
    while True:
        try:
            next(steps)
        except StopIteration as done:
            rest = done.value
            break
        pauses += 1
    assert pauses == 1 + len(calm) // 200  # then one every 200 records
    assert not rest  # nothing left: no dead letters, no later verdict
    assert r.deployments["search-v1"].watermark == due - 30 + 449 / 100
    # Or sooner, when judging takes long: the clock is asked every 8 records, and here it
    # always says so (a pause every 8 records, and the hand-over's).
    again = router()
    _three_open(again)
    paused = sum(1 for _ in again.steps(batch, now=0.0, overdue=lambda: True))
    assert len(batch) // 8 <= paused <= len(batch) // 8 + 2
