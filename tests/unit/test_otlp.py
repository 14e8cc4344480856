import copy
import json
import math
from dataclasses import astuple
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from pydantic import ValidationError

from coalmine._exceptions import ContractError
from coalmine.config import load_settings
from coalmine.contract import MetricEvent, parse_time
from coalmine.formats import InputSettings, OtlpDecoder, metric_decoder
from coalmine.formats.mapping import histogram_samples

FIXTURES = Path(__file__).parent / "fixtures"
T1 = parse_time("2026-11-26T10:01:00Z")
T2 = parse_time("2026-11-26T10:02:00Z")
T1_NS = str(int(T1) * 10**9)
T2_NS = str(int(T2) * 10**9)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def settings(*metrics: dict[str, Any], **extra: Any) -> InputSettings:
    return InputSettings.model_validate(
        {"topic": "otlp_metrics", "format": "otlp_json", "metrics": list(metrics), **extra}
    )


REQUESTS = {
    "metric": "requests",
    "kind": "ratio",
    "total": {"series": "http.server.requests"},
    "bad": {"series": "http.server.requests", "labels": {"http.response.status_code": "5.."}},
}
SLOW = {
    "metric": "slow_requests",
    "kind": "ratio",
    "total": {"series": "http.server.request.duration"},
    "bad": {"series": "http.server.request.duration", "above": 0.5},
}
LATENCY = {"metric": "latency", "kind": "distribution", "series": "http.server.request.duration"}
CPU = {"metric": "cpu", "kind": "distribution", "series": "process.cpu.utilization"}


def by_version(events: list[MetricEvent], metric: str) -> dict[str | None, MetricEvent]:
    found = {e.version: e for e in events if e.metric == metric}
    assert len(found) == len([e for e in events if e.metric == metric])
    return found


def request(*points: dict[str, Any], kind: str = "sum", **data: Any) -> bytes:
    """A one-resource request with one metric ``m`` of ``kind`` holding ``points``."""
    attrs = [
        {"key": "service.name", "value": {"stringValue": "checkout"}},
        {"key": "service.version", "value": {"stringValue": "v42"}},
    ]
    metric = {"name": "m", kind: {"dataPoints": list(points), **data}}
    body = {"resourceMetrics": [{"resource": {"attributes": attrs}, "scopeMetrics": [
        {"metrics": [metric]}
    ]}]}  # fmt: skip
    return orjson.dumps(body)


def point(time_ns: str, value: int, start: str = "1795687200000000000", **extra: Any) -> dict:
    return {"startTimeUnixNano": start, "timeUnixNano": time_ns, "asInt": str(value), **extra}


COUNTER = {"metric": "n", "kind": "ratio", "total": {"series": "m"}, "bad": {"series": "none"}}
CUMULATIVE = {"aggregationTemporality": 2, "isMonotonic": True}


def totals(events: list[MetricEvent]) -> list[int]:
    return [e.total for e in events]


# ---------------------------------------------------------------- cumulative -> deltas


def test_first_cumulative_point_is_a_baseline_only():
    decoder = OtlpDecoder(settings(REQUESTS, SLOW))
    assert decoder.decode(raw("otlp_cumulative_t1.json")) == []
    # two series of requests and one histogram per version: all baselines
    assert decoder.skipped["first_point"] == 6
    assert decoder.tracked_series == 6


def test_cumulative_sums_become_per_interval_ratio_counts():
    decoder = OtlpDecoder(settings(REQUESTS))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = by_version(decoder.decode(raw("otlp_cumulative_t2.json")), "requests")
    assert set(events) == {"v41", "v42"}
    baseline, canary = events["v41"], events["v42"]
    assert (baseline.good, baseline.total) == (1000, 1001)
    assert (canary.good, canary.total) == (80, 100)
    assert canary.is_ratio
    assert canary.time == T2
    assert (canary.service, canary.instance) == ("checkout", "checkout-8e1a-b")
    assert canary.cohort is None
    assert canary.deployment_id is None


def test_histogram_counts_above_a_bucket_bound_as_bad():
    decoder = OtlpDecoder(settings(SLOW))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = by_version(decoder.decode(raw("otlp_cumulative_t2.json")), "slow_requests")
    # v41: buckets grew by [700, 200, 80, 15, 6]; above 0.5 are the last two
    assert (events["v41"].total, events["v41"].total - events["v41"].good) == (1001, 21)
    assert (events["v42"].total, events["v42"].total - events["v42"].good) == (100, 30)


def test_histogram_threshold_must_be_a_bucket_bound():
    mapping = copy.deepcopy(SLOW)
    mapping["bad"]["above"] = 0.3
    decoder = OtlpDecoder(settings(mapping))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = decoder.decode(raw("otlp_cumulative_t2.json"))
    # the totals still count; no bad count can be made up, so none is claimed
    assert all(e.good == e.total for e in events)
    assert decoder.skipped["threshold_not_a_bound"] == 2


def test_histogram_gives_approximate_samples_for_a_distribution():
    decoder = OtlpDecoder(settings(LATENCY))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = by_version(decoder.decode(raw("otlp_cumulative_t2.json")), "latency")
    canary = events["v42"].values
    assert canary.dtype == np.float64
    # delta buckets [40, 20, 10, 17, 13] over bounds [0.1, 0.25, 0.5, 1.0], min 0.012, max 1.9
    expected = np.repeat(
        [(0.012 + 0.1) / 2, 0.175, 0.375, 0.75, (1.0 + 1.9) / 2], [40, 20, 10, 17, 13]
    )
    np.testing.assert_allclose(canary, expected)


def test_histogram_samples_are_capped_keeping_the_shape():
    samples = histogram_samples([1.0, 2.0], [600, 300, 100], cap=100)
    assert len(samples) == 100
    values, counts = np.unique(samples, return_counts=True)
    np.testing.assert_allclose(values, [1.0, 1.5, 2.0])
    assert counts.tolist() == [60, 30, 10]
    rounded = histogram_samples([1.0, 2.0], [1, 1, 1], cap=2)
    assert len(rounded) == 2
    assert len(histogram_samples([], [5], cap=10)) == 0


def test_max_samples_per_point_applies():
    decoder = OtlpDecoder(settings(LATENCY, max_samples_per_point=10))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = by_version(decoder.decode(raw("otlp_cumulative_t2.json")), "latency")
    assert {len(e.values) for e in events.values()} == {10}


def test_gauges_are_samples():
    decoder = OtlpDecoder(settings(CPU))
    first = by_version(decoder.decode(raw("otlp_cumulative_t1.json")), "cpu")
    assert first["v41"].values.tolist() == [0.41]
    assert first["v42"].values.tolist() == [0.47]
    assert first["v42"].time == T1


def test_a_counter_resets_when_its_value_drops():
    decoder = OtlpDecoder(settings(COUNTER))
    decoder.decode(request(point(T1_NS, 500), **CUMULATIVE))
    events = decoder.decode(request(point(T2_NS, 40), **CUMULATIVE))
    assert totals(events) == [40]
    assert decoder.resets == 1


def test_a_counter_resets_when_its_start_time_changes():
    decoder = OtlpDecoder(settings(COUNTER))
    decoder.decode(request(point(T1_NS, 500), **CUMULATIVE))
    restarted = point(T2_NS, 700, start="1795687290000000000")
    assert totals(decoder.decode(request(restarted, **CUMULATIVE))) == [700]
    assert decoder.resets == 1


def test_redelivered_messages_are_not_counted_twice():
    decoder = OtlpDecoder(settings(REQUESTS))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    assert decoder.decode(raw("otlp_cumulative_t2.json"))
    assert decoder.decode(raw("otlp_cumulative_t2.json")) == []
    assert decoder.skipped["stale"] == 4


def test_delta_sums_and_histograms_count_as_they_are():
    decoder = OtlpDecoder(settings(REQUESTS, SLOW))
    events = decoder.decode(raw("otlp_delta.json"))
    requests = by_version(events, "requests")["v42"]
    slow = by_version(events, "slow_requests")["v42"]
    assert (requests.good, requests.total) == (95, 100)
    assert (slow.good, slow.total) == (9, 10)
    assert decoder.skipped["first_point"] == 0


def test_delta_points_are_deduplicated_too():
    decoder = OtlpDecoder(settings(REQUESTS))
    assert decoder.decode(raw("otlp_delta.json"))
    assert decoder.decode(raw("otlp_delta.json")) == []


def test_a_monotonic_sum_feeds_a_distribution_as_rates():
    decoder = OtlpDecoder(
        settings({"metric": "rps", "kind": "distribution", "series": "http.server.requests"})
    )
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = decoder.decode(raw("otlp_cumulative_t2.json"))
    canary = sorted(v for e in events if e.version == "v42" for v in e.values)
    np.testing.assert_allclose(canary, [20 / 60, 80 / 60])
    delta = OtlpDecoder(
        settings({"metric": "rps", "kind": "distribution", "series": "http.server.requests"})
    ).decode(raw("otlp_delta.json"))
    np.testing.assert_allclose(sorted(v for e in delta for v in e.values), [5 / 60, 95 / 60])


def test_samples_of_one_time_and_cohort_form_one_event():
    mapping = {"metric": "m", "kind": "distribution", "series": "m"}
    body = request(
        {"timeUnixNano": T1_NS, "asDouble": 1.5, "attributes": [_attr("k", "a")]},
        {"timeUnixNano": T1_NS, "asDouble": 2.5, "attributes": [_attr("k", "b")]},
        {"timeUnixNano": T1_NS, "asDouble": "NaN", "attributes": [_attr("k", "c")]},
        kind="gauge",
    )
    decoder = OtlpDecoder(settings(mapping))
    events = decoder.decode(body)
    assert len(events) == 1
    assert events[0].values.tolist() == [1.5, 2.5]
    assert decoder.skipped["non_finite"] == 1


def _attr(key: str, value: str) -> dict[str, Any]:
    return {"key": key, "value": {"stringValue": value}}


# ---------------------------------------------------------------- mapping and labels


def test_label_regexes_select_series_by_full_match():
    mapping = copy.deepcopy(REQUESTS)
    mapping["bad"]["labels"] = {"http.response.status_code": "50"}  # full match: not 503
    decoder = OtlpDecoder(settings(mapping))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    events = by_version(decoder.decode(raw("otlp_cumulative_t2.json")), "requests")
    assert events["v42"].good == events["v42"].total == 100


def test_mapping_level_labels_narrow_every_selector():
    mapping = {**SLOW, "labels": {"http.route": "/(pay|refund)", "http.request.method": "GET"}}
    decoder = OtlpDecoder(settings(mapping))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    assert decoder.decode(raw("otlp_cumulative_t2.json")) == []
    assert decoder.tracked_series == 0


def test_point_attributes_override_resource_attributes():
    body = fixture("otlp_delta.json")
    dp = body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]
    dp["attributes"].append({"key": "service.version", "value": {"stringValue": "v43"}})
    events = OtlpDecoder(settings(REQUESTS)).decode(orjson.dumps(body))
    assert {e.version: e.total for e in events} == {"v43": 95, "v42": 5}


def test_custom_service_version_and_instance_attributes():
    body = fixture("otlp_delta.json")
    attrs = body["resourceMetrics"][0]["resource"]["attributes"]
    attrs += [_attr("app", "payments"), _attr("release", "2026.11.2"), _attr("pod", "p-1")]
    config = settings(REQUESTS, service_label="app", version_label="release", instance_label="pod")
    (event,) = OtlpDecoder(config).decode(orjson.dumps(body))
    assert (event.service, event.version, event.instance) == ("payments", "2026.11.2", "p-1")


def test_points_without_service_or_version_are_skipped():
    body = fixture("otlp_delta.json")
    body["resourceMetrics"][0]["resource"]["attributes"] = [_attr("service.name", "checkout")]
    decoder = OtlpDecoder(settings(REQUESTS))
    assert decoder.decode(orjson.dumps(body)) == []
    assert decoder.skipped["no_version"] == 2
    body["resourceMetrics"][0]["resource"]["attributes"] = []
    assert decoder.decode(orjson.dumps(body)) == []
    assert decoder.skipped["no_service"] == 2


def test_unmapped_metrics_are_ignored_even_when_malformed():
    body = fixture("otlp_delta.json")
    metrics = body["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    metrics.append({"name": "other", "gauge": {"dataPoints": [{"timeUnixNano": "soon"}]}})
    assert OtlpDecoder(settings(CPU)).decode(orjson.dumps(body)) == []


def test_exponential_histograms_are_counted_as_unsupported():
    decoder = OtlpDecoder(
        settings({"metric": "q", "kind": "distribution", "series": "queue.latency"})
    )
    assert decoder.decode(raw("otlp_delta.json")) == []
    assert decoder.skipped["unsupported_type"] == 1


def test_a_gauge_cannot_feed_a_ratio():
    mapping = {"metric": "r", "kind": "ratio", "total": {"series": "m"}, "bad": {"series": "m"}}
    decoder = OtlpDecoder(settings(mapping))
    assert decoder.decode(request({"timeUnixNano": T1_NS, "asDouble": 1.0}, kind="gauge")) == []
    assert decoder.skipped["type_mismatch"] == 2


def test_points_flagged_no_recorded_value_are_skipped():
    decoder = OtlpDecoder(settings(COUNTER))
    body = request(point(T1_NS, 5, flags=1), aggregationTemporality=1, isMonotonic=True)
    assert decoder.decode(body) == []
    assert decoder.skipped["no_value"] == 1


def test_numbers_where_strings_are_usual_are_accepted():
    body = request(
        {"startTimeUnixNano": 1795687200000000000, "timeUnixNano": int(T1_NS), "asInt": 7},
        aggregationTemporality=1,
        isMonotonic=True,
    )
    assert totals(OtlpDecoder(settings(COUNTER)).decode(body)) == [7]


def test_state_is_bounded_least_recently_updated_forgotten_first():
    decoder = OtlpDecoder(settings(COUNTER, max_series=2))

    def series(name: str, time_ns: str, value: int) -> bytes:
        return request(point(time_ns, value, attributes=[_attr("k", name)]), **CUMULATIVE)

    for name in "abc":
        decoder.decode(series(name, T1_NS, 10))
    assert decoder.tracked_series == 2
    # "a" was forgotten: its next point is a baseline again; "b" and "c" give deltas
    assert totals(decoder.decode(series("b", T2_NS, 15))) == [5]
    assert totals(decoder.decode(series("c", T2_NS, 17))) == [7]
    assert decoder.decode(series("a", T2_NS, 30)) == []
    assert decoder.skipped["first_point"] == 4
    assert decoder.tracked_series == 2


# ---------------------------------------------------------------- malformed input


def _mutate(path: str, value: Any) -> bytes:
    body = fixture("otlp_cumulative_t2.json")
    target: Any = body
    keys = path.split("/")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is _DELETE:
        del target[int(last) if last.isdigit() else last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return orjson.dumps(body)


_DELETE = object()
SCOPE = "resourceMetrics/0/scopeMetrics/0"
HIST = f"{SCOPE}/metrics/0/histogram"
SUM = f"{SCOPE}/metrics/1/sum"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"resourceMetrics": {}}', id="resourceMetrics-object"),
        pytest.param(b'{"resourceMetrics": [3]}', id="resource-not-object"),
        pytest.param(_mutate("resourceMetrics/0/scopeMetrics", "x"), id="scopeMetrics-string"),
        pytest.param(_mutate(f"{SCOPE}/metrics/0/name", 5), id="name-number"),
        pytest.param(_mutate(f"{SCOPE}/metrics/0/name", ""), id="name-empty"),
        pytest.param(_mutate(f"{SCOPE}/metrics/1/gauge", {"dataPoints": []}), id="two-kinds"),
        pytest.param(_mutate(f"{SUM}/aggregationTemporality", 0), id="temporality-unspecified"),
        pytest.param(_mutate(f"{SUM}/aggregationTemporality", _DELETE), id="temporality-missing"),
        pytest.param(_mutate(f"{SUM}/aggregationTemporality", True), id="temporality-bool"),
        pytest.param(_mutate(f"{SUM}/isMonotonic", "yes"), id="monotonic-string"),
        pytest.param(_mutate(f"{SUM}/dataPoints", {}), id="points-object"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0", "p"), id="point-string"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/timeUnixNano", "soon"), id="time-text"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/timeUnixNano", _DELETE), id="time-missing"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/timeUnixNano", "-5"), id="time-negative"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/startTimeUnixNano", 1.5), id="start-fraction"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/asInt", "12.5"), id="asInt-fraction"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/asDouble", 1.0), id="asInt-and-asDouble"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/asInt", False), id="asInt-bool"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/flags", "x"), id="flags-text"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/attributes", {}), id="attributes-object"),
        pytest.param(_mutate(f"{SUM}/dataPoints/0/attributes/0", {"value": {}}), id="attr-no-key"),
        pytest.param(
            _mutate(f"{SUM}/dataPoints/0/attributes/0/value", {"stringValue": 3}), id="attr-type"
        ),
        pytest.param(
            _mutate(f"{SUM}/dataPoints/0/attributes/0/value", {"intValue": "x"}), id="attr-int"
        ),
        pytest.param(_mutate("resourceMetrics/0/resource/attributes", "x"), id="res-attrs"),
        pytest.param(_mutate(f"{SCOPE}/scope/name", 1), id="scope-name"),
        pytest.param(_mutate(f"{HIST}/dataPoints/0/count", "1"), id="count-not-sum"),
        pytest.param(_mutate(f"{HIST}/dataPoints/0/bucketCounts/0", "-1"), id="bucket-negative"),
        pytest.param(_mutate(f"{HIST}/dataPoints/0/bucketCounts", "1"), id="buckets-string"),
        pytest.param(_mutate(f"{HIST}/dataPoints/0/explicitBounds", [1.0]), id="bounds-length"),
        pytest.param(
            _mutate(f"{HIST}/dataPoints/0/explicitBounds", [0.5, 0.25, 0.5, 1.0]), id="bounds-order"
        ),
        pytest.param(
            _mutate(f"{HIST}/dataPoints/0/explicitBounds", [0.1, 0.25, 0.5, "Infinity"]),
            id="bounds-infinite",
        ),
        pytest.param(_mutate(f"{HIST}/dataPoints/0/min", "low"), id="min-text"),
    ],
)
def test_malformed_requests_are_rejected_whole(body: bytes):
    decoder = OtlpDecoder(settings(REQUESTS, SLOW, LATENCY))
    decoder.decode(raw("otlp_cumulative_t1.json"))
    with pytest.raises(ContractError) as caught:
        decoder.decode(body)
    assert caught.value.reason == "otlp_invalid"
    assert caught.value.message
    # nothing of the rejected message was applied: the valid one still gives its deltas
    events = decoder.decode(raw("otlp_cumulative_t2.json"))
    assert by_version(events, "requests")["v42"].total == 100


def test_not_json_is_invalid_json():
    with pytest.raises(ContractError) as caught:
        OtlpDecoder(settings(REQUESTS)).decode(b'{"resourceMetrics": [')
    assert caught.value.reason == "invalid_json"


def test_special_double_strings_are_numbers():
    body = request({"timeUnixNano": T1_NS, "asDouble": "Infinity"}, kind="gauge")
    decoder = OtlpDecoder(settings({"metric": "g", "kind": "distribution", "series": "m"}))
    assert decoder.decode(body) == []
    assert decoder.skipped["non_finite"] == 1
    assert math.isfinite(T1)


def test_metric_decoder_picks_the_format():
    assert isinstance(metric_decoder(settings(CPU)), OtlpDecoder)
    with pytest.raises(ValueError, match="native"):
        metric_decoder(InputSettings(topic="coalmine.metrics"))


# ---------------------------------------------------------------- otlp_proto


def proto_settings(*metrics: dict[str, Any], **extra: Any) -> InputSettings:
    return InputSettings.model_validate(
        {"topic": "otlp_metrics", "format": "otlp_proto", "metrics": list(metrics), **extra}
    )


def to_proto(otlp_json: bytes) -> bytes:
    """The protobuf encoding of an OTLP/JSON request (the Collector's ``otlp_proto``)."""
    return json_format.Parse(otlp_json, ExportMetricsServiceRequest()).SerializeToString()


def comparable(events: list[MetricEvent]) -> list[tuple[Any, ...]]:
    return [(*astuple(e)[:3], e.values.tolist(), *astuple(e)[4:]) for e in events]


RPS = {"metric": "rps", "kind": "distribution", "series": "http.server.requests"}
EXP = {"metric": "q", "kind": "distribution", "series": "queue.latency"}
EVERY_MAPPING = (REQUESTS, SLOW, LATENCY, CPU, RPS, EXP)


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(["otlp_cumulative_t1.json", "otlp_cumulative_t2.json"], id="cumulative"),
        pytest.param(["otlp_delta.json"], id="delta"),
        pytest.param(["otlp_cumulative_t1.json", "otlp_cumulative_t1.json"], id="redelivered"),
    ],
)
def test_otlp_proto_gives_the_events_of_the_same_data_in_otlp_json(files: list[str]):
    as_json = OtlpDecoder(settings(*EVERY_MAPPING))
    as_proto = OtlpDecoder(proto_settings(*EVERY_MAPPING))
    for name in files:
        expected = comparable(as_json.decode(raw(name)))
        assert comparable(as_proto.decode(to_proto(raw(name)))) == expected
    assert expected or files == ["otlp_cumulative_t1.json"] * 2
    assert as_proto.skipped == as_json.skipped
    assert (as_proto.resets, as_proto.tracked_series) == (as_json.resets, as_json.tracked_series)


def _kv(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def proto_request(time_s: float, requests: tuple[int, int], buckets: list[int]) -> bytes:
    """Built with the opentelemetry-proto classes: a gauge, a cumulative sum, a histogram."""
    nanos, start = int(time_s * 1e9), int((T1 - 60) * 1e9)
    good, bad = requests
    sum_points = [
        NumberDataPoint(
            start_time_unix_nano=start,
            time_unix_nano=nanos,
            as_int=count,
            attributes=[_kv("http.response.status_code", int_value=code)],
        )
        for code, count in ((200, good), (503, bad))
    ]
    histogram_point = HistogramDataPoint(
        start_time_unix_nano=start,
        time_unix_nano=nanos,
        count=sum(buckets),
        sum=1.0,
        bucket_counts=buckets,
        explicit_bounds=[0.1, 0.25, 0.5, 1.0],
        min=0.012,
        max=1.9,
    )
    metrics = [
        Metric(
            name="process.cpu.utilization",
            gauge=Gauge(data_points=[NumberDataPoint(time_unix_nano=nanos, as_double=0.47)]),
        ),
        Metric(
            name="http.server.requests",
            sum=Sum(
                data_points=sum_points,
                aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
                is_monotonic=True,
            ),
        ),
        Metric(
            name="http.server.request.duration",
            unit="s",
            histogram=Histogram(
                data_points=[histogram_point],
                aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
            ),
        ),
        Metric(name="unmapped", sum=Sum(data_points=[NumberDataPoint(as_int=1)])),
    ]
    resource = Resource(
        attributes=[
            _kv("service.name", string_value="checkout"),
            _kv("service.version", string_value="v42"),
            _kv("service.instance.id", string_value="checkout-8e1a-b"),
            _kv("k8s.pod.ready", bool_value=True),
            _kv("host.cpus", array_value=ArrayValue(values=[AnyValue(int_value=4)])),
            KeyValue(key="empty"),
        ]
    )
    scope = ScopeMetrics(scope=InstrumentationScope(name="checkout"), metrics=metrics)
    body = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(resource=resource, scope_metrics=[scope])]
    )
    return body.SerializeToString()


def test_otlp_proto_gauge_sum_and_histogram_built_with_the_protobuf_classes():
    t1 = proto_request(T1, (100, 0), [10, 10, 10, 0, 0])
    t2 = proto_request(T2, (180, 20), [50, 30, 20, 17, 13])
    decoder = OtlpDecoder(proto_settings(REQUESTS, SLOW, LATENCY, CPU))
    first = decoder.decode(t1)
    assert [(e.metric, e.values.tolist(), e.time) for e in first] == [("cpu", [0.47], T1)]
    events = decoder.decode(t2)
    requests = by_version(events, "requests")["v42"]
    assert (requests.good, requests.total, requests.time) == (80, 100, T2)
    assert (requests.service, requests.instance) == ("checkout", "checkout-8e1a-b")
    slow = by_version(events, "slow_requests")["v42"]
    assert (slow.good, slow.total) == (70, 100)  # above 0.5: the last two buckets, 17 + 13
    expected = np.repeat(
        [(0.012 + 0.1) / 2, 0.175, 0.375, 0.75, (1.0 + 1.9) / 2], [40, 20, 10, 17, 13]
    )
    np.testing.assert_allclose(by_version(events, "latency")["v42"].values, expected)
    assert by_version(events, "cpu")["v42"].values.tolist() == [0.47]
    # The same data in OTLP/JSON (the protobuf classes' own JSON mapping): the same events.
    as_json = OtlpDecoder(settings(REQUESTS, SLOW, LATENCY, CPU))
    for message, events_of_proto in ((t1, first), (t2, events)):
        request_json = json_format.MessageToJson(ExportMetricsServiceRequest.FromString(message))
        assert comparable(as_json.decode(request_json.encode())) == comparable(events_of_proto)
    assert as_json.skipped == decoder.skipped


def test_otlp_proto_attribute_values_read_as_in_otlp_json():
    body = ExportMetricsServiceRequest.FromString(proto_request(T1, (1, 0), [1, 0, 0, 0, 0]))
    point = body.resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0]
    point.attributes.extend(
        [
            _kv("a.int", int_value=-7),
            _kv("a.double", double_value=0.25),
            _kv("a.bool", bool_value=False),
            _kv("a.bytes", bytes_value=b"\x00"),
        ]
    )
    labels = {"a.int": "-7", "a.double": "0.25", "a.bool": "false", "k8s.pod.ready": "true"}
    mapping = {**CPU, "labels": labels}
    (event,) = OtlpDecoder(proto_settings(mapping)).decode(body.SerializeToString())
    assert event.values.tolist() == [0.47]
    with_bytes = {**CPU, "labels": {"a.bytes": ".+"}}  # bytes, arrays: left out, as in JSON
    assert OtlpDecoder(proto_settings(with_bytes)).decode(body.SerializeToString()) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x0a\x05ab", id="truncated"),
        pytest.param(b"\xff\xff\xff", id="garbage"),
        pytest.param(raw("otlp_cumulative_t2.json"), id="otlp_json"),
        pytest.param(b"\x0a\x0b\x12\x09\x1a\x07\x0a\x05\xffname", id="string-not-utf8"),
    ],
)
def test_not_protobuf_is_invalid_protobuf(body: bytes):
    decoder = OtlpDecoder(proto_settings(REQUESTS))
    decoder.decode(to_proto(raw("otlp_cumulative_t1.json")))
    with pytest.raises(ContractError) as caught:
        decoder.decode(body)
    assert caught.value.reason == "invalid_protobuf"
    assert caught.value.message.startswith("not a valid otlp_proto ExportMetricsServiceRequest: ")
    assert str(caught.value).startswith("invalid_protobuf: not a valid otlp_proto")
    # nothing changed: the next valid message still gives its deltas
    events = decoder.decode(to_proto(raw("otlp_cumulative_t2.json")))
    assert by_version(events, "requests")["v42"].total == 100


def _proto_mutation(path: str, value: Any) -> bytes:
    return to_proto(_mutate(path, value))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_proto_mutation(f"{SUM}/aggregationTemporality", 0), id="temporality"),
        pytest.param(_proto_mutation(f"{SUM}/dataPoints/0/timeUnixNano", "0"), id="time-zero"),
        pytest.param(_proto_mutation(f"{HIST}/dataPoints/0/count", "1"), id="count-not-sum"),
        pytest.param(
            _proto_mutation(f"{HIST}/dataPoints/0/explicitBounds", [1.0]), id="bounds-length"
        ),
        pytest.param(
            _proto_mutation(f"{HIST}/dataPoints/0/explicitBounds", [0.5, 0.25, 0.5, 1.0]),
            id="bounds-order",
        ),
        pytest.param(_proto_mutation(f"{SCOPE}/metrics/0/name", ""), id="name-empty"),
    ],
)
def test_protobuf_that_breaks_otlp_rules_is_otlp_invalid(body: bytes):
    decoder = OtlpDecoder(proto_settings(REQUESTS, SLOW, LATENCY))
    with pytest.raises(ContractError) as caught:
        decoder.decode(body)
    assert caught.value.reason == "otlp_invalid"


def test_otlp_proto_inputs_get_the_otlp_defaults_and_decoder():
    config = proto_settings(CPU)
    labels = (config.service_label, config.version_label, config.instance_label)
    assert labels == ("service.name", "service.version", "service.instance.id")
    assert isinstance(metric_decoder(config), OtlpDecoder)
    assert OtlpDecoder(config).decode(b"") == []  # an empty request is a valid one


def test_a_configuration_file_accepts_otlp_proto(tmp_path: Path):
    config = (Path(__file__).parents[2] / "config" / "otlp-and-cloudevents.toml").read_text()
    assert 'format = "otlp_json"' in config
    path = tmp_path / "coalmine.toml"
    path.write_text(config.replace('format = "otlp_json"', 'format = "otlp_proto"'))
    (source,) = load_settings(path, {}).inputs
    assert source.format == "otlp_proto"
    assert source.service_label == "service.name"
    assert isinstance(metric_decoder(source), OtlpDecoder)
    with pytest.raises(ValidationError, match="otlp_proto input needs at least one"):
        InputSettings(topic="t", format="otlp_proto")
