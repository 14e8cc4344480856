import math

import numpy as np
import orjson
import pytest

from coalmine._exceptions import ContractError
from coalmine.analyzers.result import MetricResult
from coalmine.contract import (
    Verdict,
    Window,
    decode_deploy_event,
    decode_metric_events,
    encode_deploy_event,
    encode_verdict,
    format_time,
    metric_event_from_mapping,
    parse_time,
    verdict_id_of,
)

STARTED = {
    "event": "started",
    "deployment_id": "checkout-v42",
    "service": "checkout",
    "time": "2026-11-26T10:00:00Z",
    "strategy": "canary",
    "profile": "default",
    "baseline": {"version": "v41"},
    "canary": {"version": "v42"},
    "traffic_weight": 5,
}


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_contract_example_deploy_event_decodes():
    event = decode_deploy_event(dumps(STARTED))
    assert event.event == "started"
    assert event.deployment_id == "checkout-v42"
    assert event.baseline_version == "v41"
    assert event.canary_version == "v42"
    assert event.traffic_weight == 5.0
    assert event.time == parse_time("2026-11-26T10:00:00+00:00")


def test_deploy_event_defaults_strategy_and_profile():
    minimal = {k: v for k, v in STARTED.items() if k not in {"strategy", "profile"}}
    event = decode_deploy_event(dumps(minimal))
    assert (event.strategy, event.profile) == ("canary", "default")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"event": "launched"}, "unknown_event"),
        ({"event": None}, "missing_field"),
        ({"deployment_id": ""}, "wrong_type"),
        ({"service": 3}, "wrong_type"),
        ({"time": "yesterday"}, "bad_time"),
        ({"time": "2026-11-26T10:00:00"}, "bad_time"),
        ({"strategy": "yolo"}, "wrong_type"),
        ({"canary": None}, "missing_field"),
        ({"baseline": {"version": ""}}, "missing_field"),
        ({"traffic_weight": 101}, "out_of_range"),
        ({"traffic_weight": "5"}, "wrong_type"),
    ],
)
def test_invalid_deploy_events_name_their_reason(change, reason):
    event = {**STARTED, **change}
    event = {k: v for k, v in event.items() if v is not None}
    with pytest.raises(ContractError) as info:
        decode_deploy_event(dumps(event))
    assert info.value.reason == reason


def test_step_needs_traffic_weight():
    step = {"event": "step", "deployment_id": "d", "service": "s", "time": 1}
    with pytest.raises(ContractError, match="traffic_weight"):
        decode_deploy_event(dumps(step))


def test_the_three_metric_shapes_of_the_contract():
    single, many, counts = decode_metric_events(
        dumps(
            [
                {
                    "service": "checkout",
                    "deployment_id": "checkout-v42",
                    "cohort": "canary",
                    "metric": "latency_ms",
                    "time": "2026-11-26T10:01:00Z",
                    "value": 118.0,
                },
                {
                    "service": "checkout",
                    "cohort": "baseline",
                    "metric": "latency_ms",
                    "time": "2026-11-26T10:01:00Z",
                    "values": [101.0, 97.5, 130.2],
                },
                {
                    "service": "checkout",
                    "version": "v42",
                    "metric": "requests",
                    "time": "2026-11-26T10:01:00Z",
                    "good": 995,
                    "total": 1000,
                    "instance": "pod-1",
                    "labels": {"zone": "a"},
                },
            ]
        )
    )
    assert single.values.tolist() == [118.0]
    assert single.deployment_id == "checkout-v42"
    assert single.cohort == "canary"
    assert many.values.dtype == np.float64
    assert many.values.tolist() == [101.0, 97.5, 130.2]
    assert many.size == 3
    assert (counts.good, counts.total, counts.is_ratio) == (995, 1000, True)
    assert counts.version == "v42"
    assert counts.cohort is None
    assert counts.instance == "pod-1"
    assert counts.size == 1000


METRIC = {"service": "s", "cohort": "canary", "metric": "m", "time": 5, "value": 1.0}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'"a string"', "not_an_object"),
        (b"[]", "empty_batch"),
        (b"[1]", "not_an_object"),
        (dumps({**METRIC, "service": None}), "missing_field"),
        (dumps({**METRIC, "service": 7}), "wrong_type"),
        (dumps({k: v for k, v in METRIC.items() if k != "metric"}), "missing_field"),
        (dumps({k: v for k, v in METRIC.items() if k != "time"}), "missing_field"),
        (dumps({**METRIC, "cohort": "control"}), "unknown_cohort"),
        (dumps({**METRIC, "values": [1.0]}), "ambiguous_payload"),
        (dumps({k: v for k, v in METRIC.items() if k != "value"}), "ambiguous_payload"),
        (dumps({**METRIC, "value": "1.0"}), "wrong_type"),
        (dumps({**METRIC, "value": True}), "wrong_type"),
        (b'{"service":"s","cohort":"canary","metric":"m","time":5,"value":NaN}', "invalid_json"),
        # orjson refuses NaN, Infinity and overflowing literals: non-finite never gets past JSON.
        (
            b'{"service":"s","cohort":"canary","metric":"m","time":5,"values":[1e400]}',
            "invalid_json",
        ),
        (dumps({k: v for k, v in METRIC.items() if k != "value"} | {"values": []}), "wrong_type"),
        (
            dumps({k: v for k, v in METRIC.items() if k != "value"} | {"values": [1, "x"]}),
            "wrong_type",
        ),
        (
            dumps({k: v for k, v in METRIC.items() if k != "value"} | {"values": [1, True]}),
            "wrong_type",
        ),
        (
            dumps({k: v for k, v in METRIC.items() if k != "value"} | {"values": [[1]]}),
            "wrong_type",
        ),
        (
            dumps({k: v for k, v in METRIC.items() if k != "value"} | {"good": -1, "total": 5}),
            "negative_count",
        ),
        (
            dumps({k: v for k, v in METRIC.items() if k != "value"} | {"good": 6, "total": 5}),
            "good_exceeds_total",
        ),
        (
            dumps({k: v for k, v in METRIC.items() if k != "value"} | {"good": 1.5, "total": 5}),
            "wrong_type",
        ),
        (dumps({k: v for k, v in METRIC.items() if k != "value"} | {"good": 1}), "wrong_type"),
        (dumps({**METRIC, "labels": {"a": 1}}), "wrong_type"),
        (dumps({**METRIC, "time": -5}), "bad_time"),
    ],
)
def test_invalid_metric_messages_name_their_reason(payload, reason):
    with pytest.raises(ContractError) as info:
        decode_metric_events(payload)
    assert info.value.reason == reason


VALUES = {k: v for k, v in METRIC.items() if k != "value"}


@pytest.mark.parametrize(
    ("decode", "payload", "reason"),
    [
        (decode_metric_events, dumps({**METRIC, "cohort": []}), "unknown_cohort"),
        (decode_metric_events, dumps({**METRIC, "cohort": {"a": 1}}), "unknown_cohort"),
        (decode_deploy_event, dumps({**STARTED, "event": ["started"]}), "unknown_event"),
        (decode_deploy_event, dumps({**STARTED, "strategy": {}}), "wrong_type"),
    ],
)
def test_unhashable_names_are_contract_errors_not_a_crash(decode, payload, reason):
    with pytest.raises(ContractError) as info:
        decode(payload)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        # numpy would make NaN of a null and a number of a numeric string: neither is one.
        (dumps(VALUES | {"values": [1.5, None]}), "wrong_type"),
        (dumps(VALUES | {"values": [1.5, "nan"]}), "wrong_type"),
        (dumps(VALUES | {"values": ["inf"]}), "wrong_type"),
        (dumps(VALUES | {"values": [True, False]}), "wrong_type"),
        (dumps(VALUES | {"values": [2.5, False]}), "wrong_type"),
        (dumps({**METRIC, "value": None}), "wrong_type"),
    ],
)
def test_values_numpy_would_convert_are_refused(payload, reason):
    with pytest.raises(ContractError) as info:
        decode_metric_events(payload)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "obj",
    [
        METRIC,
        {**METRIC, "value": 7},
        {**METRIC, "value": 2**53 + 1},  # beyond exact float: the validating path
        {**METRIC, "time": "2026-11-26T10:00:00.250+01:00"},
        {**METRIC, "deployment_id": "d", "instance": "i-1", "labels": {"zone": "a"}},
        VALUES | {"values": [1, 2.5, 3]},
        VALUES | {"values": [1, 2, 2**63]},
        VALUES | {"values": [0.0, 1.0], "service": "true"},  # 'true' in the text
        {k: v for k, v in VALUES.items() if k != "cohort"} | {"version": "v2", "values": [1.0]},
        {k: v for k, v in METRIC.items() if k != "value"} | {"good": 9, "total": 10},
        {k: v for k, v in METRIC.items() if k != "value"} | {"good": 9.0, "total": 10},
    ],
)
def test_decoding_builds_the_event_the_validating_path_builds(obj):
    (event,) = decode_metric_events(dumps(obj))
    expected = metric_event_from_mapping(orjson.loads(dumps(obj)))
    for name in (
        "service",
        "metric",
        "time",
        "good",
        "total",
        "is_ratio",
        "deployment_id",
        "cohort",
        "version",
        "instance",
    ):
        assert getattr(event, name) == getattr(expected, name), name
        assert type(getattr(event, name)) is type(getattr(expected, name)), name
    assert event.values.dtype == np.float64
    assert event.values.tolist() == expected.values.tolist()
    assert repr(event) == repr(expected)


def test_one_bad_item_rejects_the_whole_array_and_says_which():
    with pytest.raises(ContractError, match="item 1") as info:
        decode_metric_events(dumps([METRIC, {**METRIC, "cohort": "x"}]))
    assert info.value.reason == "unknown_cohort"


def test_whole_number_floats_are_counts():
    (event,) = decode_metric_events(
        dumps({k: v for k, v in METRIC.items() if k != "value"} | {"good": 9.0, "total": 10.0})
    )
    assert (event.good, event.total) == (9, 10)


def test_times_roundtrip_and_accept_numbers():
    assert parse_time(1795687200) == 1795687200.0
    assert parse_time("2026-11-26T10:00:00+01:00") == parse_time("2026-11-26T09:00:00Z")
    assert format_time(parse_time("2026-11-26T10:00:00Z")) == "2026-11-26T10:00:00Z"
    assert format_time(1795687200.25).endswith(".250Z")


def test_verdict_encodes_the_contract_fields():
    result = MetricResult(
        metric="requests",
        analyzer="burn_rate",
        outcome="fail",
        critical=True,
        measured=True,
        n_baseline=41000,
        n_canary=2100,
        reason="requests: 2.1% vs 0.1%",
        detail={"burn_canary": 21.0},
    )
    verdict = Verdict(
        verdict_id="checkout-v42/7",
        deployment_id="checkout-v42",
        service="checkout",
        decision="rollback",
        final=True,
        score=0.0,
        summary="requests: 2.1% vs 0.1%",
        metrics=(result,),
        window=Window(parse_time("2026-11-26T10:00:00Z"), parse_time("2026-11-26T10:07:00Z")),
        time=parse_time("2026-11-26T10:07:00Z"),
        config_digest="sha256:abc",
    )
    decoded = orjson.loads(encode_verdict(verdict))
    for key in (
        "verdict_id",
        "deployment_id",
        "service",
        "decision",
        "final",
        "score",
        "summary",
        "metrics",
        "window",
        "time",
        "config_digest",
    ):
        assert key in decoded
    assert decoded["window"] == {"start": "2026-11-26T10:00:00Z", "end": "2026-11-26T10:07:00Z"}
    metric = decoded["metrics"][0]
    assert metric["outcome"] == "fail"
    assert metric["detail"] == {"burn_canary": 21.0}
    assert (metric["n_baseline"], metric["n_canary"]) == (41000, 2100)
    assert not math.isnan(decoded["score"])


@pytest.mark.parametrize(
    ("values", "item"),
    [
        (["2"], "item 0 is a string"),
        ([1, "2"], "item 1 is a string"),
        ([" 2.5 "], "item 0 is a string"),
        ([1, None], "item 1 is null"),
        ([1.5, True], "item 1 is a boolean"),
        ([1, [2]], "item 1 is an array"),
    ],
)
def test_values_hold_json_numbers_only_and_the_error_names_the_item(
    values: list[object], item: str
) -> None:
    event = {"service": "s", "metric": "m", "time": 1, "cohort": "canary", "values": values}
    with pytest.raises(ContractError) as raised:
        decode_metric_events(orjson.dumps(event))
    assert raised.value.reason == "wrong_type"
    assert item in raised.value.message


def a_verdict(verdict_id: str = "checkout-v42/7") -> Verdict:
    return Verdict(
        verdict_id=verdict_id,
        deployment_id="checkout-v42",
        service="checkout",
        decision="continue",
        final=False,
        score=None,
        summary="",
        metrics=(),
        window=Window(0.0, 60.0),
        time=60.0,
        config_digest="sha256:abc",
    )


@pytest.mark.parametrize(
    "value",
    [
        encode_verdict(a_verdict()),  # as the contract writes it: the id first
        orjson.dumps({"decision": "continue", "verdict_id": "checkout-v42/7"}),  # any order
        b'{"verdict_id": "checkout-v42/7", "final": false}',  # spaces
    ],
)
def test_the_verdict_id_is_read_from_any_encoding(value: bytes) -> None:
    assert verdict_id_of(value) == "checkout-v42/7"


def test_an_escaped_verdict_id_is_unescaped() -> None:
    value = encode_verdict(a_verdict('checkout "v42"/7'))
    assert verdict_id_of(value) == 'checkout "v42"/7'


@pytest.mark.parametrize(
    "value", [b"not json", b'{"verdict_id": 7}', b'{"deployment_id": "checkout-v42"}', b"[]"]
)
def test_no_verdict_id_is_none(value: bytes) -> None:
    assert verdict_id_of(value) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"event": "started", "baseline": "v41", "canary": "v42"},
        {
            "event": "started",
            "baseline": "v41",
            "canary": "v42",
            "profile": "checkout",
            "strategy": "blue_green",
            "traffic_weight": 10,
        },
        {"event": "step", "traffic_weight": 25.5},
        {"event": "completed"},
        {"event": "aborted", "strategy": "feature_flag"},
    ],
)
def test_an_encoded_deploy_event_decodes_to_what_was_given(fields: dict) -> None:
    kind = fields.pop("event")
    value = encode_deploy_event(kind, "checkout-v42", "checkout", at=1_796_000_000.12345, **fields)
    event = decode_deploy_event(value)
    assert (event.event, event.deployment_id, event.service) == (kind, "checkout-v42", "checkout")
    assert event.time == 1_796_000_000.123  # to the millisecond
    assert event.baseline_version == fields.get("baseline")
    assert event.canary_version == fields.get("canary")
    assert event.profile == fields.get("profile", "default")
    assert event.strategy == fields.get("strategy", "canary")
    assert event.traffic_weight == fields.get("traffic_weight")
    assert set(orjson.loads(value)) == {"event", "deployment_id", "service", "time"} | {
        {"baseline": "baseline", "canary": "canary"}.get(name, name) for name in fields
    }  # fields not given are left out


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event": "started", "baseline": "v41"}, "missing_field"),
        ({"event": "step"}, "missing_field"),
        ({"event": "step", "traffic_weight": 120}, "out_of_range"),
        ({"event": "paused"}, "unknown_event"),
        ({"event": "completed", "strategy": "big_bang"}, "wrong_type"),
    ],
)
def test_a_deploy_event_that_does_not_fit_is_not_encoded(fields: dict, reason: str) -> None:
    kind = fields.pop("event")
    with pytest.raises(ContractError) as caught:
        encode_deploy_event(kind, "checkout-v42", "checkout", at=0.0, **fields)
    assert caught.value.reason == reason


def test_a_metric_event_without_cohort_or_version_is_valid_its_deployment_decides():
    event = decode_metric_events(dumps({k: v for k, v in METRIC.items() if k != "cohort"}))[0]
    assert event.cohort is None
    assert event.version is None
