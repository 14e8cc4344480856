import json
import re
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from coalmine._exceptions import ContractError
from coalmine.contract import MetricEvent, parse_time
from coalmine.formats import InputSettings, PrometheusAdapterDecoder, SeriesMapping, metric_decoder
from coalmine.formats.mapping import RatioAccumulator, compile_labels

FIXTURES = Path(__file__).parent / "fixtures"


def messages(name: str) -> list[dict[str, Any]]:
    return json.loads((FIXTURES / name).read_text())


def settings(*metrics: dict[str, Any], **extra: Any) -> InputSettings:
    return InputSettings.model_validate(
        {"topic": "prom", "format": "prometheus_adapter", "metrics": list(metrics), **extra}
    )


def feed(decoder: PrometheusAdapterDecoder, items: list[dict[str, Any]]) -> list[MetricEvent]:
    events: list[MetricEvent] = []
    for item in items:
        events += decoder.decode(orjson.dumps(item))
    return events


def sample(value: str, name: str = "jobs_total", ts: str = "2026-11-26T10:01:00Z", **labels: str):
    base = {"__name__": name, "service": "checkout", "version": "v42", "instance": "10.0.0.2:8080"}
    return {"timestamp": ts, "value": value, "name": name, "labels": {**base, **labels}}


REQUESTS = {
    "metric": "requests",
    "kind": "ratio",
    "total": {"series": "http_requests_total"},
    "bad": {"series": "http_requests_total", "labels": {"code": "5.."}},
}
MEMORY = {"metric": "memory", "kind": "distribution", "series": "process_resident_memory_bytes"}
SLOW = {
    "metric": "slow",
    "kind": "ratio",
    "total": {"series": "http_request_duration_seconds"},
    "bad": {"series": "http_request_duration_seconds", "above": 0.5},
}
JOBS = {
    "metric": "jobs",
    "kind": "ratio",
    "total": {"series": "jobs_total"},
    "bad": {"series": "x"},
}


def ratio_sums(events: list[MetricEvent]) -> dict[str | None, tuple[int, int]]:
    sums: dict[str | None, tuple[int, int]] = {}
    for event in events:
        assert event.is_ratio
        good, total = sums.get(event.version, (0, 0))
        sums[event.version] = (good + event.good, total + event.total)
    return sums


# ---------------------------------------------------------------- counters


def test_counters_become_per_interval_deltas_with_resets():
    decoder = PrometheusAdapterDecoder(settings(REQUESTS))
    events = feed(decoder, messages("prometheus_adapter_counters.json"))
    # v41: +500 ok, +1 error; v42: +60 ok, +10 errors, then a restart: 30 ok, 2 errors
    assert ratio_sums(events) == {"v41": (500, 501), "v42": (90, 102)}
    assert decoder.skipped["first_point"] == 4
    assert decoder.resets == 2
    assert decoder.skipped["non_finite"] == 1  # the staleness marker
    reset = [e for e in events if e.time == parse_time("2026-11-26T10:01:30Z")]
    assert [(e.good, e.total) for e in reset] == [(30, 30), (0, 2)]
    assert {(e.service, e.instance) for e in reset} == {("checkout", "10.0.0.2:8080")}
    assert all(e.cohort is None and e.deployment_id is None for e in events)


def test_gauges_are_samples():
    decoder = PrometheusAdapterDecoder(settings(MEMORY))
    events = feed(decoder, messages("prometheus_adapter_counters.json"))
    assert [e.values.tolist() for e in events] == [[1.34217728e8], [1.40509184e8]]
    assert events[0].version == "v42"
    assert events[0].time == parse_time("2026-11-26T10:01:00Z")


def test_a_counter_feeding_a_distribution_gives_rates():
    mapping = {"metric": "rps", "kind": "distribution", "series": "http_requests_total"}
    decoder = PrometheusAdapterDecoder(settings({**mapping, "labels": {"code": "200"}}))
    events = feed(decoder, messages("prometheus_adapter_counters.json"))
    # v41 +500 and v42 +60 over 15 s; v42's restart: 30 over 15 s
    assert [e.values.tolist() for e in events] == [[500 / 15], [60 / 15], [30 / 15]]


def test_counter_can_be_declared_for_any_name():
    mapping = {"metric": "m", "kind": "distribution", "series": "jobs_done", "counter": True}
    decoder = PrometheusAdapterDecoder(settings(mapping))
    assert decoder.decode(orjson.dumps(sample("10", name="jobs_done"))) == []
    later = sample("40", name="jobs_done", ts="2026-11-26T10:01:30Z")
    assert [e.values.tolist() for e in decoder.decode(orjson.dumps(later))] == [[1.0]]


def test_bad_and_total_from_different_series_are_paired_without_false_alarms():
    mapping = {
        "metric": "jobs",
        "kind": "ratio",
        "total": {"series": "jobs_total"},
        "bad": {"series": "jobs_failed_total"},
    }
    decoder = PrometheusAdapterDecoder(settings(mapping))
    t1, t2, t3 = "2026-11-26T10:01:00Z", "2026-11-26T10:01:15Z", "2026-11-26T10:01:30Z"
    feed(decoder, [sample("100", ts=t1), sample("0", "jobs_failed_total", t1)])
    # the failures of the next scrape arrive before its total: they wait for it
    assert feed(decoder, [sample("5", "jobs_failed_total", t2)]) == []
    (event,) = feed(decoder, [sample("200", ts=t2)])
    assert (event.good, event.total) == (95, 100)
    # a total before its failures is taken as it is; the failures join the next total
    (event,) = feed(decoder, [sample("300", ts=t3)])
    assert (event.good, event.total) == (100, 100)
    assert feed(decoder, [sample("8", "jobs_failed_total", t3)]) == []


def test_duplicate_samples_are_ignored():
    decoder = PrometheusAdapterDecoder(settings(JOBS))
    feed(decoder, [sample("1")])
    later = sample("5", ts="2026-11-26T10:01:15Z")
    assert len(feed(decoder, [later])) == 1
    assert feed(decoder, [later]) == []
    assert decoder.skipped["stale"] == 1


def test_infinite_values_are_skipped():
    decoder = PrometheusAdapterDecoder(settings(MEMORY))
    for value in ("+Inf", "-Inf", "NaN"):
        assert decoder.decode(orjson.dumps(sample(value, "process_resident_memory_bytes"))) == []
    assert decoder.skipped["non_finite"] == 3


# ---------------------------------------------------------------- histograms


def test_histogram_buckets_give_counts_above_the_bound():
    decoder = PrometheusAdapterDecoder(settings(SLOW))
    events = feed(decoder, messages("prometheus_adapter_histogram.json"))
    # +Inf 100 -> 200, le=0.5 95 -> 185: 100 requests, 10 of them above 0.5 s
    assert [(e.good, e.total) for e in events] == [(90, 100)]
    assert events[0].time == parse_time("2026-11-26T10:01:15Z")


def test_histogram_buckets_pair_in_any_order():
    items = messages("prometheus_adapter_histogram.json")
    decoder = PrometheusAdapterDecoder(settings(SLOW))
    events = feed(decoder, items[:7][::-1] + items[7:][::-1])
    assert [(e.good, e.total) for e in events] == [(90, 100)]


def test_histogram_bad_with_the_count_series_as_total():
    mapping = {**SLOW, "total": {"series": "http_request_duration_seconds_count"}}
    decoder = PrometheusAdapterDecoder(settings(mapping))
    events = feed(decoder, messages("prometheus_adapter_histogram.json"))
    assert ratio_sums(events) == {"v42": (90, 100)}


def test_histogram_reset():
    decoder = PrometheusAdapterDecoder(settings(SLOW))
    feed(decoder, messages("prometheus_adapter_histogram.json"))
    t3 = "2026-11-26T10:01:30Z"
    name = "http_request_duration_seconds_bucket"
    same = {"handler": "/pay", "job": "checkout"}
    events = feed(
        decoder, [sample("4", name, t3, le="0.5", **same), sample("6", name, t3, le="+Inf", **same)]
    )
    assert [(e.good, e.total) for e in events] == [(4, 6)]
    assert decoder.resets == 1


def test_histogram_threshold_that_is_no_bucket_never_pairs():
    mapping = {**SLOW, "bad": {"series": "http_request_duration_seconds", "above": 0.3}}
    decoder = PrometheusAdapterDecoder(settings(mapping, max_series=1))
    assert feed(decoder, messages("prometheus_adapter_histogram.json")) == []
    assert decoder.skipped["unpaired_bucket"] == 1


def test_bucket_without_a_numeric_le_is_skipped():
    decoder = PrometheusAdapterDecoder(settings(SLOW))
    item = sample("3", "http_request_duration_seconds_bucket", le="fast")
    assert decoder.decode(orjson.dumps(item)) == []
    assert decoder.skipped["bad_le"] == 1


# ---------------------------------------------------------------- labels


def test_custom_label_names():
    config = settings(JOBS, service_label="job", version_label="app_version", instance_label="pod")
    decoder = PrometheusAdapterDecoder(config)
    labels = {"job": "batch", "app_version": "1.2.3", "pod": "batch-0"}
    feed(decoder, [sample("1", **labels)])
    (event,) = feed(decoder, [sample("3", ts="2026-11-26T10:01:15Z", **labels)])
    assert (event.service, event.version, event.instance) == ("batch", "1.2.3", "batch-0")


def test_samples_without_service_or_version_are_skipped():
    decoder = PrometheusAdapterDecoder(settings(JOBS, version_label="release"))
    assert decoder.decode(orjson.dumps(sample("1"))) == []
    assert decoder.skipped["no_version"] == 1
    decoder = PrometheusAdapterDecoder(settings(JOBS, service_label="app"))
    assert decoder.decode(orjson.dumps(sample("1"))) == []
    assert decoder.skipped["no_service"] == 1


def test_unmapped_series_are_ignored_without_state():
    decoder = PrometheusAdapterDecoder(settings(JOBS))
    assert decoder.decode(orjson.dumps(sample("1", name="go_goroutines"))) == []
    assert decoder.tracked_series == 0


def test_label_patterns_are_full_matches_and_absent_labels_are_empty():
    matcher = compile_labels({"code": "5..", "route": ""})
    assert matcher.matches({"code": "503"}.get)
    assert not matcher.matches({"code": "5030"}.get)
    assert not matcher.matches({"code": "x503"}.get)
    assert not matcher.matches({"code": "503", "route": "/pay"}.get)
    assert not matcher.matches({}.get)
    literal = compile_labels({"route": "/pay"})
    assert literal.matches({"route": "/pay"}.get)
    assert not literal.matches({"route": "/payment"}.get)
    alternatives = compile_labels({"method": "GET|HEAD"})
    assert alternatives.matches({"method": "HEAD"}.get)
    assert not alternatives.matches({"method": "GETS"}.get)


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "invalid_json"),
        (b"[]", "prometheus_invalid"),
        (b'"up"', "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "name": ""}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "name": 5}), "prometheus_invalid"),
        (orjson.dumps({"timestamp": "2026-11-26T10:01:00Z", "value": "1"}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "labels": ["a"]}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "labels": {"code": 500}}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "timestamp": None}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "timestamp": "yesterday"}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "timestamp": "2026-11-26T10:01:00"}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "timestamp": -1}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "value": "one"}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "value": True}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "value": None}), "prometheus_invalid"),
        (orjson.dumps({**sample("1"), "value": [1]}), "prometheus_invalid"),
    ],
)
def test_malformed_samples_are_rejected(body: bytes, reason: str):
    decoder = PrometheusAdapterDecoder(settings(JOBS))
    with pytest.raises(ContractError) as caught:
        decoder.decode(body)
    assert caught.value.reason == reason
    assert decoder.tracked_series == 0


def test_name_falls_back_to_the_name_label():
    item = sample("1")
    del item["name"]
    decoder = PrometheusAdapterDecoder(settings(JOBS))
    decoder.decode(orjson.dumps(item))
    assert decoder.tracked_series == 1


def test_numeric_values_are_accepted():
    decoder = PrometheusAdapterDecoder(settings(MEMORY))
    (event,) = decoder.decode(
        orjson.dumps({**sample("0", "process_resident_memory_bytes"), "value": 7})
    )
    assert event.values.tolist() == [7.0]


# ---------------------------------------------------------------- configuration


CONFIG = """
[[inputs]]
topic = "prometheus"
format = "prometheus_adapter"
service_label = "job"

[[inputs.metrics]]
metric = "latency_ms"
kind = "distribution"
series = "request_latency_ms"
labels = { route = "/pay|/refund" }

[[inputs.metrics]]
metric = "requests"
kind = "ratio"
total = { series = "http_requests_total" }
bad = { series = "http_requests_total", labels = { code = "5.." } }

[[inputs.metrics]]
metric = "slow_requests"
kind = "ratio"
total = { series = "http_request_duration_seconds" }
bad = { series = "http_request_duration_seconds", above = 0.5 }
"""


def test_configuration_from_toml():
    (raw,) = tomllib.loads(CONFIG)["inputs"]
    config = InputSettings.model_validate(raw)
    assert (config.service_label, config.version_label, config.instance_label) == (
        "job",
        "version",
        "instance",
    )
    assert [m.metric for m in config.metrics] == ["latency_ms", "requests", "slow_requests"]
    assert config.metrics[2].histogram_ratio
    assert not config.metrics[1].histogram_ratio
    assert isinstance(metric_decoder(config), PrometheusAdapterDecoder)


def test_otlp_label_defaults():
    config = InputSettings(topic="otlp", format="otlp_json", metrics=(SeriesMapping(**MEMORY),))
    assert config.service_label == "service.name"
    assert config.version_label == "service.version"
    assert config.instance_label == "service.instance.id"


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ({**MEMORY, "labels": {"code": "5(.."}}, re.escape("invalid regular expression '5(..'")),
        ({**REQUESTS, "bad": {"series": "x", "labels": {"c": "[a"}}}, "label 'c'"),
        ({"metric": "m", "kind": "distribution"}, "needs 'series'"),
        ({**MEMORY, "total": {"series": "x"}}, "belong to ratio metrics"),
        ({**REQUESTS, "series": "x"}, "not 'series'"),
        ({"metric": "m", "kind": "ratio", "total": {"series": "x"}}, "both 'total' and 'bad'"),
        ({**REQUESTS, "total": {"series": "x", "above": 1.0}}, "'above' belongs to 'bad'"),
        ({**SLOW, "bad": {"series": "x", "above": "inf"}}, "finite"),
        ({**MEMORY, "kind": "quantile"}, "kind"),
        ({**MEMORY, "series": ""}, "series"),
        ({**MEMORY, "expression": "rate(x[5m])"}, "expression"),
    ],
)
def test_invalid_mappings_are_rejected_at_load(metric: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=message):
        settings(metric)


def test_input_format_rules():
    with pytest.raises(ValidationError, match="at least one"):
        InputSettings(topic="t", format="otlp_json")
    with pytest.raises(ValidationError, match="native input takes no"):
        InputSettings.model_validate({"topic": "t", "metrics": [MEMORY]})
    with pytest.raises(ValidationError, match="format"):
        InputSettings.model_validate({"topic": "t", "format": "influx"})
    assert InputSettings(topic="coalmine.metrics").format == "native"


def test_ratio_accumulator_carries_fractions_and_is_bounded():
    pool = RatioAccumulator(max_groups=1)
    key = ("m", "s", "v", None)
    assert pool.add(key, 0.5, 0.0, 1.0) is None
    event = pool.add(key, 1.0, 0.4, 2.0)
    assert event is not None
    assert (event.good, event.total, event.time) == (1, 1, 2.0)
    pool.add(("m", "s", "v2", None), 0.0, 3.0, 3.0)
    assert pool.evicted == 1
    assert len(pool) == 1
