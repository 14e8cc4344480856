"""Foreign inputs end to end on Kafka (Apache Kafka, else tansu): CloudEvents + OTLP (JSON,
protobuf), prometheus-adapter.

The three-deployment scenario (healthy; +50% latency; 5% errors from minute 3) is
re-encoded from the simulator's native messages into each format, as an OpenTelemetry
Collector's kafka exporter or prometheus-kafka-adapter would write it.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from coalmine.bus.kafka import ensure_topics
from coalmine.contract import format_time, parse_time
from coalmine.formats.mapping import InputSettings
from coalmine.tools.simulator import simulate, three_deployments
from tests.integration.test_daemon_kafka import (
    EXPECTED,
    T0,
    create_topics,
    make_settings,
    read_topic,
    run_daemon,
    three_finals,
    verdicts_of,
)
from tests.metrics import sample_value

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings

BOUNDS = [float(b) for b in range(5, 2000, 5)]
VERSIONS = {"baseline": "v1", "canary": "v2"}


def native_messages() -> list[tuple[str, bytes, bytes]]:
    return [
        (m.topic, m.key, m.value)
        for m in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3)
    ]


@pytest.fixture
def settings(kafka_settings: KafkaSettings, topic_name: Callable[[str], str]) -> Settings:
    return make_settings(kafka_settings, topic_name)


def cloudevent_headers(index: int) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"deploy-{index}".encode()),
        ("ce_source", b"/pipelines/test"),
        ("ce_type", b"com.example.deploy.started"),
        ("content-type", b"application/json"),
    ]


def otlp_message(service: str, time: float, cohorts: dict[str, dict[str, Any]]) -> bytes:
    nanos = str(int(time * 1e9))
    start = str(int((time - 10.0) * 1e9))
    resources = []
    for cohort, data in cohorts.items():
        counts = np.histogram(data["latency"], bins=[-np.inf, *BOUNDS, np.inf])[0]
        histogram = {
            "startTimeUnixNano": start,
            "timeUnixNano": nanos,
            "count": str(int(counts.sum())),
            "sum": float(np.sum(data["latency"])),
            "bucketCounts": [str(int(c)) for c in counts],
            "explicitBounds": BOUNDS,
            "attributes": [],
        }
        requests = [
            {
                "startTimeUnixNano": start,
                "timeUnixNano": nanos,
                "asInt": str(value),
                "attributes": [{"key": "code", "value": {"stringValue": code}}],
            }
            for code, value in (("200", data["good"]), ("500", data["total"] - data["good"]))
        ]
        resources.append(
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": service}},
                        {"key": "service.version", "value": {"stringValue": VERSIONS[cohort]}},
                    ]
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "test"},
                        "metrics": [
                            {
                                "name": "http.server.duration",
                                "unit": "ms",
                                "histogram": {
                                    "dataPoints": [histogram],
                                    "aggregationTemporality": 1,
                                },
                            },
                            {
                                "name": "http.server.requests",
                                "sum": {
                                    "dataPoints": requests,
                                    "aggregationTemporality": 1,
                                    "isMonotonic": True,
                                },
                            },
                        ],
                    }
                ],
            }
        )
    return orjson.dumps({"resourceMetrics": resources})


def cohorts_of(value: bytes) -> tuple[str, float, dict[str, dict[str, Any]]]:
    """Split a native metrics message into per-cohort latency samples and request counts."""
    cohorts: dict[str, dict[str, Any]] = {}
    for event in orjson.loads(value):
        data = cohorts.setdefault(event["cohort"], {})
        if "values" in event:
            data["latency"] = np.asarray(event["values"])
        else:
            data["good"], data["total"] = event["good"], event["total"]
        service, time = event["service"], parse_time(event["time"])
    return service, time, cohorts


async def send(kafka: KafkaSettings, messages: list[tuple[str, bytes, bytes, list[Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    try:
        for topic, key, value, headers in messages:
            await producer.send(topic, value, key=key, headers=headers)
        await producer.flush()
    finally:
        await producer.stop()


def invalid_events(telemetry: Any, reason: str) -> float:
    """Messages the daemon dead-lettered, for ``reason``."""
    return sample_value(telemetry, "coalmine_invalid_events_total", reason=reason)


def ignored_events(telemetry: Any, reason: str) -> float:
    """Deploy events the daemon ignored, for ``reason``."""
    return sample_value(telemetry, "coalmine_ignored_events_total", reason=reason)


async def judge(
    settings: Settings, settled: Callable[[Any], bool] = lambda _: True
) -> tuple[dict[str, str], Any]:
    """Run a daemon until three final verdicts are out and ``settled(telemetry)`` holds."""
    daemon, task = await run_daemon(settings)
    try:
        records = await read_topic(settings.kafka, settings.topics.verdicts, three_finals, 90.0)
        async with asyncio.timeout(30):
            while not settled(daemon.telemetry):
                await asyncio.sleep(0.1)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    finals = [v for v in verdicts_of(records) if v["final"]]
    assert len(finals) == 3
    return {v["deployment_id"]: v["decision"] for v in finals}, daemon.telemetry


async def test_cloudevents_and_otlp_json(
    settings: Settings, topic_name: Callable[[str], str]
) -> None:
    await cloudevents_and_otlp(settings, topic_name, "otlp_json")


async def test_cloudevents_and_otlp_proto(
    settings: Settings, topic_name: Callable[[str], str]
) -> None:
    """The Collector kafka exporter's default encoding; a message that is not protobuf."""
    telemetry = await cloudevents_and_otlp(settings, topic_name, "otlp_proto", (b"\xff\xff",))
    assert invalid_events(telemetry, "invalid_protobuf") == 1
    letters = await read_topic(settings.kafka, settings.topics.dead_letter, lambda r: len(r) >= 1)
    assert [r.value for r in letters] == [b"\xff\xff"]
    error = dict(letters[0].headers)["coalmine-error"].decode()
    assert error.startswith("invalid_protobuf: not a valid otlp_proto ExportMetricsServiceRequest")


async def cloudevents_and_otlp(
    settings: Settings,
    topic_name: Callable[[str], str],
    encoding: str,
    invalid: tuple[bytes, ...] = (),
) -> Any:
    """CloudEvents deploy events, OTLP metrics in ``encoding``; returns the telemetry."""
    otlp_topic = topic_name("otlp_metrics")
    settings = settings.model_copy(update={"inputs": (otlp_input(otlp_topic, encoding),)})
    await create_topics(settings.kafka, settings.topics)
    await ensure_topics(settings.kafka, {otlp_topic: 3})
    out = []
    for index, (kind, key, value) in enumerate(native_messages()):
        if kind == "deployments":
            headers = cloudevent_headers(index)
            out.append((settings.topics.deployments, key, value, headers))
            out.append((settings.topics.deployments, key, value, headers))  # a producer retry
        else:
            service, time, cohorts = cohorts_of(value)
            message = otlp_message(service, time, cohorts)
            if encoding == "otlp_proto":
                request = json_format.Parse(message, ExportMetricsServiceRequest())
                message = request.SerializeToString()
            out.append((otlp_topic, key, message, []))
    out.extend((otlp_topic, b"x", value, []) for value in invalid)
    await send(settings.kafka, out)

    def settled(t: Any) -> bool:
        return ignored_events(t, "duplicate_cloudevent") >= 3 and (
            not invalid or invalid_events(t, "invalid_protobuf") >= 1
        )

    finals, telemetry = await judge(settings, settled)
    assert finals == EXPECTED
    # Each started CloudEvent was sent twice (a retry): the copy was recognised and ignored.
    assert ignored_events(telemetry, "duplicate_cloudevent") == 3
    assert ignored_events(telemetry, "duplicate_started") == 0
    return telemetry


def otlp_input(topic: str, encoding: str) -> InputSettings:
    """The scenario's two metrics from the Collector's OTLP, ``encoding`` on ``topic``."""
    return InputSettings.model_validate(
        {
            "topic": topic,
            "format": encoding,
            "metrics": [
                {"metric": "latency_ms", "kind": "distribution", "series": "http.server.duration"},
                {
                    "metric": "requests",
                    "kind": "ratio",
                    "total": {"series": "http.server.requests"},
                    "bad": {"series": "http.server.requests", "labels": {"code": "5.."}},
                },
            ],
        }
    )


@pytest.mark.parametrize("encoding", ["otlp_json", "otlp_proto"])
async def test_unkeyed_otlp_over_three_partitions_is_judged_as_in_order(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], encoding: str
) -> None:
    """The Collector's exporter does not key its messages: a series lands on every
    partition. Read from a backlog, the points are put back in time order across the
    partitions: none is skipped, and the verdicts are those of the same messages on one
    partition."""
    judged = {}
    for partitions in (1, 3):
        settings = make_settings(kafka_settings, topic_name)
        otlp_topic = topic_name(f"otlp_{partitions}")
        settings = settings.model_copy(update={"inputs": (otlp_input(otlp_topic, encoding),)})
        await create_topics(settings.kafka, settings.topics)
        await ensure_topics(settings.kafka, {otlp_topic: partitions})
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await producer.start()
        spread = random.Random(7)  # noqa: S311 - partitions, not secrets
        try:
            for kind, key, value in native_messages():
                if kind == "deployments":
                    await producer.send(settings.topics.deployments, value, key=key)
                    continue
                service, time, cohorts = cohorts_of(value)
                message = otlp_message(service, time, cohorts)
                if encoding == "otlp_proto":  # opentelemetry-proto's own serialisation
                    message = json_format.Parse(
                        message, ExportMetricsServiceRequest()
                    ).SerializeToString()
                # No key: a random partition each, as an unkeyed producer spreads them.
                await producer.send(otlp_topic, message, partition=spread.randrange(partitions))
            await producer.flush()
        finally:
            await producer.stop()

        daemon, task = await run_daemon(settings)
        try:
            records = await read_topic(settings.kafka, settings.topics.verdicts, three_finals, 90.0)
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 30)
        skipped = "coalmine_input_points_skipped_total"
        stale = sample_value(daemon.telemetry, skipped, topic=otlp_topic, reason="stale")
        assert stale == 0, partitions
        judged[partitions] = sorted(
            (v["verdict_id"], v["decision"], v["final"], v["summary"]) for v in verdicts_of(records)
        )
    assert judged[3] == judged[1]
    assert {v[0].split("/")[0]: v[1] for v in judged[3] if v[2]} == EXPECTED


def prometheus_messages(value: bytes, totals: dict[tuple[str, str, str], int]) -> list[bytes]:
    """One sample per message: latency gauges (spread over the step) and counters per code."""
    service, time, cohorts = cohorts_of(value)
    out = []
    for cohort, data in cohorts.items():
        labels = {"service": service, "version": VERSIONS[cohort], "job": "api"}
        samples = data["latency"]
        for i, sample in enumerate(samples):
            at = time - 10.0 + 10.0 * (i + 1) / len(samples)
            out.append(
                orjson.dumps(
                    {
                        "timestamp": format_time(round(at, 3)),
                        "value": repr(float(sample)),
                        "name": "latency_ms",
                        "labels": {"__name__": "latency_ms", **labels},
                    }
                )
            )
        for code, count in (("200", data["good"]), ("500", data["total"] - data["good"])):
            key = (service, cohort, code)
            totals[key] = totals.get(key, 0) + count
            out.append(
                orjson.dumps(
                    {
                        "timestamp": format_time(time),
                        "value": str(totals[key]),
                        "name": "http_requests_total",
                        "labels": {"__name__": "http_requests_total", "code": code, **labels},
                    }
                )
            )
    return out


async def test_prometheus_kafka_adapter(
    settings: Settings, topic_name: Callable[[str], str]
) -> None:
    prom_topic = topic_name("prometheus")
    source = InputSettings.model_validate(
        {
            "topic": prom_topic,
            "format": "prometheus_adapter",
            "metrics": [
                {"metric": "latency_ms", "kind": "distribution", "series": "latency_ms"},
                {
                    "metric": "requests",
                    "kind": "ratio",
                    "total": {"series": "http_requests_total"},
                    "bad": {"series": "http_requests_total", "labels": {"code": "5.."}},
                },
            ],
        }
    )
    settings = settings.model_copy(update={"inputs": (source,)})
    await create_topics(settings.kafka, settings.topics)
    await ensure_topics(settings.kafka, {prom_topic: 3})
    totals: dict[tuple[str, str, str], int] = {}
    out = []
    for kind, key, value in native_messages():
        if kind == "deployments":
            out.append((settings.topics.deployments, key, value, []))
            # Counters start at zero at the deployment's start: the first point is a baseline.
            service = orjson.loads(value)["service"]
            for cohort, version in VERSIONS.items():
                for code in ("200", "500"):
                    totals[(service, cohort, code)] = 0
                    labels = {"service": service, "version": version, "job": "api"}
                    zero = {
                        "timestamp": format_time(T0),
                        "value": "0",
                        "name": "http_requests_total",
                        "labels": {"__name__": "http_requests_total", "code": code, **labels},
                    }
                    out.append((prom_topic, key, orjson.dumps(zero), []))
        else:
            out.extend((prom_topic, key, m, []) for m in prometheus_messages(value, totals))
    out.append((prom_topic, b"x", b'{"timestamp": "soon", "value": "1"}', []))
    await send(settings.kafka, out)
    finals, telemetry = await judge(
        settings, lambda t: invalid_events(t, "prometheus_invalid") >= 1
    )
    assert finals == EXPECTED
    assert invalid_events(telemetry, "prometheus_invalid") == 1
