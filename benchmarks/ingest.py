"""Ingest throughput: coalmine's consume loop against a bare aiokafka consumer, same run.

Run from the repository root: ``python benchmarks/ingest.py [--messages N]
[--samples-per-message K [K ...]] [--formats F [F ...]] [--deployments D] [--partitions P]
[--runs R]``.

A private broker is started (``--broker``: one Apache Kafka node, ``support/kafka_broker.py``,
by default; or tansu, ``support/brokers.py``); each pass gets topics of its own,
filled, before anything is timed, with ``started`` events for D deployments (baseline
``v1``, canary ``v2``) and N metric messages keyed by service, round robin over the
services in event-time order (cohort alternating baseline / canary, the canary repeating
the baseline's data: an A/A test; event time spread evenly over ``--event-minutes`` per
deployment, so that every deployment is judged once per 60 s interval during the run).
One pass per format (``--formats``, default all three):

* ``native``, once per K of ``--samples-per-message``: one JSON object per message per the
  wire contract, ``values`` with K latency samples, or ``value`` when K = 1;
* ``otlp_json``: one ``ExportMetricsServiceRequest`` per service, cohort and tick, as the
  OpenTelemetry Collector's kafka exporter writes it: a delta ``http.server.duration``
  histogram of 100 latency observations (the SDK's default bucket bounds, with min and
  max), from which the daemon derives 100 approximate samples, and a delta request counter
  by status code feeding a ratio metric;
* ``prometheus_adapter``: one gauge sample (``latency_ms``) per message, as
  prometheus-kafka-adapter writes it (``SERIALIZATION_FORMAT=json``).

The foreign formats carry no deployment id: the daemon, configured with the matching
``[[inputs]]`` entry, routes them by service and version. Every message is decoded once
after the fill (not timed) to check it yields what it should and count the samples.

The coalmine side opens the D deployments in its router before it starts (as in
production, where they start minutes before their metrics flow), so that no metric
overtakes its ``started`` event. Then, interleaved, R times each:

* **bare**: an ``AIOKafkaConsumer`` in its own group (earliest, no commits) that only counts
  the metric messages (the issue's baseline; the ratio is against it);
* **bare+json**: the same, plus ``orjson.loads`` of every message: what parsing alone
  costs, for reference;
* **coalmine**: the daemon itself (``coalmine.daemon.app.Daemon``, HTTP off) on a
  ``KafkaTransport`` in its own group, reading the deployments, metrics and input topics:
  fetch, the router (decode, route, buffer, judge) on the event loop, publish the
  verdicts and wait for the broker's acknowledgement, commit; every batch, as in
  production. Each run publishes to a verdict topic of its own (the daemon reads the
  verdict topic when it is assigned partitions and would suppress the verdicts of an
  earlier run as already published).

The clock (``time.perf_counter``) and the process CPU clock (``time.process_time``, all
threads of this process; the broker is a separate process, its CPU is shown apart) start once
the first batch is fully handled and stop when the last metric message is; the first
batch's messages are not counted. So the group join and the first fetch are left out on
both sides. The profile judges every 60 s of event time and only ends at 1 h, so no
deployment finishes early and every message is buffered (a promoted deployment would turn
its later messages into cheap drops and flatter the figure). A coalmine run warns if any
sample was dropped, a message dead-lettered or skipped by the decoder, a deployment ended,
or a judgement is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # support.brokers, this coalmine

from typing import TYPE_CHECKING

from benchmarks.broker import (
    BrokerKind,
    add_broker_option,
    describe,
    kafka_settings,
    machine_busy,
    start_broker,
)
from coalmine.bus.base import Record
from coalmine.bus.kafka import KafkaTransport, ensure_topics
from coalmine.config.models import HttpSettings, KafkaSettings, MetricSpec, Profile, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.contract import decode_metric_events, format_time
from coalmine.daemon.app import Daemon
from coalmine.formats import InputSettings, metric_decoder

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import NDArray
    from prometheus_client import Counter as PromCounter

    from coalmine.contract import MetricEvent
    from coalmine.daemon.publisher import Publisher

Format = Literal["native", "otlp_json", "prometheus_adapter"]
FORMATS: tuple[Format, ...] = ("native", "otlp_json", "prometheus_adapter")

T0 = 1_800_000_000.0
"""Event time of the ``started`` events (2027-01-15)."""
VERSIONS = {"baseline": "v1", "canary": "v2"}
"""The versions of every deployment's cohorts, as the foreign formats report them."""
INTERVAL = 60.0
LATENCY = MetricSpec(name="latency_ms")
PROFILE = Profile(interval=INTERVAL, min_duration=3600, max_duration=3600, metrics=(LATENCY,))
OTLP_PROFILE = PROFILE.model_copy(
    update={"metrics": (LATENCY, MetricSpec(name="requests", kind="ratio", objective=0.99))}
)
"""The OTLP messages carry a request counter too: a ratio metric to feed."""
OTLP_BOUNDS = (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)
"""The OpenTelemetry SDKs' default explicit bucket bounds (ms; 16 buckets). Doubles, but
written without a fraction, as the Collector's JSON marshaller writes whole doubles."""
OTLP_OBSERVATIONS = 100
"""Observations per OTLP histogram point: the daemon derives one sample from each."""
ERROR_RATE = 0.005
"""Share of the OTLP requests counted with status code 500."""
SESSION_TIMEOUT = {"tansu": 1.0, "kafka": 10.0}
"""Consumer session timeout, s, per broker: tansu delays a group join by half of it, so keep
it short there; Apache Kafka joins at once, and keeps coalmine's default."""
RUN_TIMEOUT = 300.0
"""Give up on a run that has not seen every message by then."""
TARGET_BATCH_RATIO = 0.60
TARGET_SINGLE_RATE = 50_000.0


@dataclass(frozen=True, slots=True)
class Workload:
    format: Format
    samples: int
    """Samples per message: native K, OTLP histogram observations, Prometheus 1."""
    messages: int
    deployments: int
    partitions: int
    event_minutes: float
    topics: TopicsSettings
    source: str
    """The topic of the metric messages: ``topics.metrics``, or a foreign input's."""
    broker: BrokerKind = "kafka"

    @property
    def name(self) -> str:
        return f"native K={self.samples}" if self.format == "native" else self.format

    def inputs(self) -> tuple[InputSettings, ...]:
        """The daemon's ``[[inputs]]`` entry for the pass's format (none for native)."""
        metrics: list[dict[str, Any]]
        if self.format == "native":
            return ()
        if self.format == "otlp_json":
            metrics = [
                {"metric": "latency_ms", "kind": "distribution", "series": "http.server.duration"},
                {
                    "metric": "requests",
                    "kind": "ratio",
                    "total": {"series": "http.server.requests"},
                    "bad": {
                        "series": "http.server.requests",
                        "labels": {"http.response.status_code": "5.."},
                    },
                },
            ]
        else:
            metrics = [{"metric": "latency_ms", "kind": "distribution", "series": "latency_ms"}]
        source = {"topic": self.source, "format": self.format, "metrics": metrics}
        return (InputSettings.model_validate(source),)

    def profile(self) -> Profile:
        return OTLP_PROFILE if self.format == "otlp_json" else PROFILE

    def judgements(self) -> int:
        """Judgements per deployment during the run: one per whole interval of event time."""
        return max(0, math.ceil(self.event_minutes * 60 / INTERVAL) - 1)


@dataclass(frozen=True, slots=True)
class Measurement:
    side: str
    run: int
    messages: int
    seconds: float
    cpu: float
    broker_cpu: float | None
    verdicts: int | None = None
    others_cpu: float | None = None
    """CPU seconds of other work on the machine over the window (not this process, not
    the broker)."""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class _Clock:
    """Wall, process CPU and broker CPU, started on the first handled batch."""

    def __init__(self) -> None:
        self.counted_from = 0
        self.started: tuple[float, float, float | None, float] | None = None
        self.stopped: tuple[float, float, float | None, float] | None = None

    @staticmethod
    def _now() -> tuple[float, float, float | None, float]:
        return time.perf_counter(), time.process_time(), _children_cpu(), machine_busy()

    def start(self, handled: int) -> None:
        self.counted_from = handled
        self.started = self._now()

    def stop(self) -> None:
        self.stopped = self._now()

    def measurement(self, side: str, run: int, total: int, verdicts: int | None) -> Measurement:
        assert self.started is not None
        assert self.stopped is not None
        (wall0, cpu0, broker0, machine0), (wall1, cpu1, broker1, machine1) = (
            self.started,
            self.stopped,
        )
        broker = None if broker0 is None or broker1 is None else broker1 - broker0
        others = max(0.0, machine1 - machine0 - (cpu1 - cpu0) - (broker or 0.0))
        counted = total - self.counted_from
        if counted <= 0:
            raise SystemExit(f"{side}: the first batch held every message; raise --messages")
        return Measurement(side, run, counted, wall1 - wall0, cpu1 - cpu0, broker, verdicts, others)


def _children_cpu() -> float | None:
    """User + system CPU seconds of this process's live children (the broker), from /proc."""
    me = str(os.getpid())
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        entries = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == me:  # ppid
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


# -- the topic contents -------------------------------------------------------------------


def _services(count: int) -> list[str]:
    return [f"svc-{index:04d}" for index in range(count)]


def _started(service: str) -> bytes:
    return orjson.dumps(
        {
            "event": "started",
            "deployment_id": f"{service}-v2",
            "service": service,
            "time": format_time(T0),
            "profile": "default",
            "baseline": {"version": VERSIONS["baseline"]},
            "canary": {"version": VERSIONS["canary"]},
            "traffic_weight": 50,
        }
    )


@dataclass(frozen=True, slots=True)
class _Tick:
    """Where message ``index`` of a pass belongs: service, cohort, event time."""

    which: int
    cohort: str
    time: float
    previous: float
    """Event time of the cohort's message before (the deployment's start for the first)."""
    row: int
    """The row of data it carries: a canary repeats its baseline's message just before."""


def _tick(work: Workload, index: int) -> _Tick:
    which, nth = index % work.deployments, index // work.deployments
    span, per_deployment = work.event_minutes * 60.0, math.ceil(work.messages / work.deployments)
    # A canary message repeats the data of its deployment's baseline message just before
    # it: an A/A test that cannot fail by chance, so no deployment rolls back.
    canary = nth % 2 == 1
    return _Tick(
        which=which,
        cohort="canary" if canary else "baseline",
        time=T0 + span * (nth + 1) / per_deployment,
        previous=T0 + span * max(0, nth - 1) / per_deployment,
        row=index - work.deployments if canary else index,
    )


def _latencies(work: Workload, seed: int) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return np.round(rng.lognormal(math.log(100.0), 0.5, (work.messages, work.samples)), 1)


def _native_messages(work: Workload, seed: int) -> list[tuple[bytes, bytes]]:
    """One contract metric event per message: ``values`` (K samples) or ``value``."""
    samples = _latencies(work, seed)
    services = _services(work.deployments)
    out = []
    for index in range(work.messages):
        tick = _tick(work, index)
        row = samples[tick.row]
        event: dict[str, object] = {
            "service": services[tick.which],
            "cohort": tick.cohort,
            "metric": "latency_ms",
            "time": format_time(tick.time),
        }
        if work.samples == 1:
            event["value"] = float(row[0])
        else:
            event["values"] = row
        value = orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)
        out.append((services[tick.which].encode(), value))
    return out


def _attribute(key: str, value: str) -> dict[str, object]:
    return {"key": key, "value": {"stringValue": value}}


def _nanos(seconds: float) -> str:
    return str(round(seconds * 1e9))


def _otlp_messages(work: Workload, seed: int) -> list[tuple[bytes, bytes]]:
    """One ``ExportMetricsServiceRequest`` (OTLP/JSON) per service, cohort and tick.

    One resource (the cohort's pod: service name, version, instance, SDK attributes), one
    scope, two metrics, delta temporality: ``http.server.duration``, a histogram of
    ``work.samples`` latency observations over the SDK's default bounds (count, sum, min,
    max), and ``http.server.requests``, a monotonic sum with one point per status code
    (200 and 500; as many requests as observations, ~0.5% of them 500).
    """
    latencies = _latencies(work, seed)
    bounds = np.asarray(OTLP_BOUNDS)
    width = len(OTLP_BOUNDS) + 1
    # Bucket i is (bounds[i-1], bounds[i]]: upper bounds inclusive, as in OTLP.
    bucket = np.searchsorted(bounds, latencies, side="left")
    bucket += np.arange(work.messages)[:, None] * width
    counts = np.bincount(bucket.ravel(), minlength=work.messages * width).reshape(-1, width)
    errors = np.random.default_rng(seed + 1).binomial(work.samples, ERROR_RATE, work.messages)
    services = _services(work.deployments)
    resources = {
        (service, cohort): {
            "attributes": [
                _attribute("service.name", service),
                _attribute("service.version", version),
                _attribute("service.instance.id", f"{service}-{version}-7f9c4d-x2k8p"),
                _attribute("telemetry.sdk.language", "python"),
                _attribute("telemetry.sdk.name", "opentelemetry"),
                _attribute("telemetry.sdk.version", "1.27.0"),
            ]
        }
        for service in services
        for cohort, version in VERSIONS.items()
    }
    scope = {"name": "opentelemetry.instrumentation.asgi", "version": "0.48b0"}
    route = [_attribute("http.method", "GET"), _attribute("http.route", "/api/orders")]
    out = []
    for index in range(work.messages):
        tick = _tick(work, index)
        service = services[tick.which]
        start, end = _nanos(tick.previous), _nanos(tick.time)
        row = latencies[tick.row]
        bad = int(errors[tick.row])
        histogram = {
            "attributes": route,
            "startTimeUnixNano": start,
            "timeUnixNano": end,
            "count": str(work.samples),
            "sum": round(float(row.sum()), 1),
            "bucketCounts": [str(c) for c in counts[tick.row].tolist()],
            "explicitBounds": OTLP_BOUNDS,
            "min": float(row.min()),
            "max": float(row.max()),
        }
        requests = [
            {
                "attributes": [
                    {"key": "http.response.status_code", "value": {"intValue": code}},
                    *route,
                ],
                "startTimeUnixNano": start,
                "timeUnixNano": end,
                "asInt": str(count),
            }
            for code, count in (("200", work.samples - bad), ("500", bad))
        ]
        request = {
            "resourceMetrics": [
                {
                    "resource": resources[service, tick.cohort],
                    "scopeMetrics": [
                        {
                            "scope": scope,
                            "metrics": [
                                {
                                    "name": "http.server.duration",
                                    "description": "Duration of HTTP server requests.",
                                    "unit": "ms",
                                    "histogram": {
                                        "dataPoints": [histogram],
                                        "aggregationTemporality": 1,
                                    },
                                },
                                {
                                    "name": "http.server.requests",
                                    "unit": "{request}",
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
            ]
        }
        out.append((service.encode(), orjson.dumps(request)))
    return out


def _prometheus_messages(work: Workload, seed: int) -> list[tuple[bytes, bytes]]:
    """One prometheus-kafka-adapter sample per message: the cohort's ``latency_ms`` gauge."""
    samples = _latencies(work, seed)
    services = _services(work.deployments)
    out = []
    for index in range(work.messages):
        tick = _tick(work, index)
        service, version = services[tick.which], VERSIONS[tick.cohort]
        labels = {
            "__name__": "latency_ms",
            "instance": f"10.{1 + tick.which // 250}.{tick.which % 250}.{version[1:]}:8080",
            "job": "api",
            "namespace": "shop",
            "service": service,
            "version": version,
        }
        sample = {
            "timestamp": format_time(tick.time),
            "value": repr(float(samples[tick.row, 0])),
            "name": "latency_ms",
            "labels": labels,
        }
        out.append((service.encode(), orjson.dumps(sample)))
    return out


def _metric_messages(work: Workload, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) in event-time order, round robin over the services, keyed by service."""
    if work.format == "otlp_json":
        return _otlp_messages(work, seed)
    if work.format == "prometheus_adapter":
        return _prometheus_messages(work, seed)
    return _native_messages(work, seed)


@dataclass(frozen=True, slots=True)
class _Decoded:
    seconds: float
    samples: int
    counted: int
    skipped: Counter[str]


def _decode_all(work: Workload, values: list[bytes]) -> _Decoded:
    """Decode every message as the daemon will (one fresh decoder, not timed)."""
    decode: Callable[[bytes], list[MetricEvent]] = decode_metric_events
    decoder = None
    if work.format != "native":
        decoder = metric_decoder(work.inputs()[0])
        decode = decoder.decode
    samples = counted = 0
    begun = time.perf_counter()
    for value in values:
        for event in decode(value):
            if event.is_ratio:
                counted += event.total
            else:
                samples += len(event.values)
    seconds = time.perf_counter() - begun
    return _Decoded(seconds, samples, counted, decoder.skipped if decoder else Counter())


async def _fill(bootstrap: str, work: Workload, metrics: list[tuple[bytes, bytes]]) -> None:
    """Create the topics and produce everything (not timed)."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap, **kafka_settings(work.broker))
    topics = work.topics
    await ensure_topics(
        kafka,
        {
            topics.deployments: work.partitions,
            topics.metrics: work.partitions,
            work.source: work.partitions,
            topics.verdicts: work.partitions,
            topics.dead_letter: 1,
        },
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    try:
        pending = [
            await producer.send(topics.deployments, _started(service), key=service.encode())
            for service in _services(work.deployments)
        ]
        await asyncio.gather(*pending)  # the deployments are in before any metric
        pending = [await producer.send(work.source, v, key=k) for k, v in metrics]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# -- the two sides --------------------------------------------------------------------------


async def _bare(
    bootstrap: str, work: Workload, run: int, max_records: int, *, parse: bool = False
) -> Measurement:
    consumer = AIOKafkaConsumer(
        work.source,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=round(SESSION_TIMEOUT[work.broker] * 1000),
        heartbeat_interval_ms=round(SESSION_TIMEOUT[work.broker] * 1000 / 3),
    )
    clock = _Clock()
    await consumer.start()
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            seen = 0
            while seen < work.messages:
                batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
                for messages in batches.values():
                    seen += len(messages)
                    if parse:
                        for message in messages:
                            orjson.loads(message.value)
                if seen and clock.started is None:
                    clock.start(seen)
            clock.stop()
    finally:
        await consumer.stop()
    return clock.measurement("bare+json" if parse else "bare", run, seen, None)


class _TimedTransport(KafkaTransport):
    """The real transport, plus the clock: started and stopped after a commit."""

    def __init__(self, *args: Any, work: Workload, done: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work = work
        self.done = done
        self.clock = _Clock()
        self.metrics_handled = 0
        """Metric messages handled (``handled()`` is the transport's own)."""
        self._metrics_fetched = 0
        self.publisher: Publisher | None = None

    async def fetch(self, timeout: float) -> list[Record]:
        # The daemon fetches again once it has handled the batch before (its verdicts are
        # queued for publishing by then; the last batch's are awaited before the clock
        # stops).
        self.metrics_handled = self._metrics_fetched
        if self.clock.started is None and self.metrics_handled:
            self.clock.start(self.metrics_handled)
        if self.metrics_handled >= self.work.messages and not self.done.is_set():
            assert self.publisher is not None
            await self.publisher.settle()
            self.clock.stop()
            self.done.set()
        records = await super().fetch(timeout)
        source = self.work.source
        self._metrics_fetched += sum(1 for record in records if record.topic == source)
        return records


def _counter_total(counter: PromCounter, **labels: str) -> int:
    return int(
        sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )
    )


def _problems(daemon: Daemon, work: Workload, verdicts: int) -> dict[str, int]:
    """What would make the figures suspect: anything not analysed, any deployment gone."""
    telemetry = daemon.telemetry
    return {
        "dropped samples": _counter_total(telemetry.dropped_samples),
        "dead letters": _counter_total(telemetry.invalid_events),
        "points skipped by the decoder": _counter_total(telemetry.input_points_skipped),
        "deployments no longer open": work.deployments - len(daemon.router.deployments),
        "judgements missing": max(0, work.deployments * work.judgements() - verdicts),
    }


async def _coalmine(bootstrap: str, work: Workload, run: int, max_records: int) -> Measurement:
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        group_id=f"bench-coalmine-{uuid.uuid4().hex[:8]}",
        max_poll_records=max_records,
        **kafka_settings(work.broker),  # tansu: no InitProducerId, a fetch held for its wait
    )
    # Its own verdict topic per run: the daemon reads the verdict topic when it is assigned
    # its partitions, and would suppress, as already published, every verdict of a run
    # before it (no publishing at all: a flattering figure).
    topics = work.topics.model_copy(update={"verdicts": f"{work.topics.verdicts}.{run}"})
    await ensure_topics(
        KafkaSettings(bootstrap_servers=bootstrap, **kafka_settings(work.broker)),
        {topics.verdicts: work.partitions},
    )
    settings = Settings(
        kafka=kafka,
        topics=topics,
        inputs=work.inputs(),
        http=HttpSettings(enabled=False),
        profiles={"default": work.profile()},
        log_level="WARNING",
    )
    done = asyncio.Event()
    # What the daemon reads in production: deployments, metrics and every [[inputs]] topic.
    consumed = dict.fromkeys((topics.deployments, topics.metrics, work.source))
    transport = _TimedTransport(
        kafka,
        tuple(consumed),
        produce=(topics.verdicts, topics.dead_letter),
        session_timeout=SESSION_TIMEOUT[work.broker],
        work=work,
        done=done,
    )
    daemon = Daemon(settings, transport)
    transport.publisher = daemon.publisher
    # Open the deployments first, as they are in production minutes before their metrics
    # flow: the consumer interleaves the topics, and a metric that overtook its
    # ``started`` would be dropped. The daemon reads the deploy events again from the topic
    # (D records next to N metrics, ignored as duplicates).
    opened = [
        Record(topics.deployments, _started(service), service.encode())
        for service in _services(work.deployments)
    ]
    daemon.router.handle(opened, time.time())
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            waiting = asyncio.create_task(done.wait())
            await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            if task.done():
                task.result()  # raises what stopped the daemon
                raise SystemExit("coalmine: the daemon stopped before the last message")
    finally:
        daemon.request_stop()
        await task
    verdicts = _counter_total(daemon.telemetry.verdicts)
    for what, count in _problems(daemon, work, verdicts).items():
        if count:
            print(f"  WARNING coalmine run {run}: {count:,} {what}; the figures are suspect")
    return transport.clock.measurement("coalmine", run, transport.metrics_handled, verdicts)


# -- reporting ------------------------------------------------------------------------------


def _row(m: Measurement, samples: float, label: str) -> str:
    per_million = m.cpu / (m.messages * samples) * 1e6
    broker = "n/a" if m.broker_cpu is None else f"{m.broker_cpu:.1f}"
    others = "n/a" if m.others_cpu is None else f"{m.others_cpu:.1f}"
    verdicts = "-" if m.verdicts is None else f"{m.verdicts:,}"
    return (
        f"{m.side:<9} {label:>6} {m.rate:>12,.0f} {m.rate * samples:>12,.0f} "
        f"{per_million:>14.2f} {m.seconds:>8.2f} {m.cpu:>7.2f} {broker:>10} {others:>10} "
        f"{verdicts:>9}"
    )


def _report(work: Workload, runs: list[Measurement], payload: int, samples: float) -> None:
    """``samples``: per message, as the daemon derives them (native: K)."""
    header = (
        f"{'side':<9} {'run':>6} {'messages/s':>12} {'samples/s':>12} "
        f"{'CPU s/1M smp':>14} {'wall s':>8} {'CPU s':>7} {'broker CPU':>10} {'others CPU':>10} "
        f"{'verdicts':>9}"
    )
    print(header)
    print("-" * len(header))
    for m in runs:
        print(_row(m, samples, str(m.run)))
    best = {
        side: max((m for m in runs if m.side == side), key=lambda m: m.rate)
        for side in ("bare", "bare+json", "coalmine")
    }
    for m in best.values():
        print(_row(m, samples, "best"))
    ratio = best["coalmine"].rate / best["bare"].rate
    parsed = best["coalmine"].rate / best["bare+json"].rate
    json_only = best["bare+json"].rate / best["bare"].rate
    print(f"\nratio coalmine / bare, messages/s (best of each): {ratio:.3f}")
    print(f"(for reference: coalmine / bare+json {parsed:.3f}, bare+json / bare {json_only:.3f})")
    # The targets are the native format's; the foreign passes are held to them for reference.
    scope = "" if work.format == "native" else f" (native targets; {work.format} for reference)"
    if samples > 1:
        met = "met" if ratio >= TARGET_BATCH_RATIO else "NOT met"
        print(
            f"issue-7 target: >= {TARGET_BATCH_RATIO:.0%} of the bare consumer's rate: {met}{scope}"
        )
    else:
        rate = best["coalmine"].rate
        met = "met" if rate >= TARGET_SINGLE_RATE else "NOT met"
        print(f"issue-7 target: >= {TARGET_SINGLE_RATE:,.0f} single-sample events/s: {met}{scope}")
    print(f"(metric payload {payload / work.messages:,.0f} bytes/message on average)\n")


async def _pass(bootstrap: str, work: Workload, args: argparse.Namespace) -> None:
    per_deployment = math.ceil(work.messages / work.deployments)
    print(
        f"== {work.name}, N={work.messages:,} messages, "
        f"D={work.deployments} deployments ({per_deployment} messages each), "
        f"P={work.partitions} partitions, event time {work.event_minutes:g} min "
        f"({work.judgements()} judgements per deployment, every {INTERVAL:g} s), "
        f"max_poll_records {args.max_poll_records}"
    )
    begun = time.perf_counter()
    metrics = _metric_messages(work, args.seed)
    await _fill(bootstrap, work, metrics)
    print(f"produced in {time.perf_counter() - begun:.1f} s (not measured)")
    values = [value for _, value in metrics]
    decoded = _decode_all(work, values)
    samples = decoded.samples / work.messages
    counts = f", {decoded.counted / work.messages:g} requests counted" if decoded.counted else ""
    print(
        f"decoded alone (one thread, not measured): {samples:g} samples/message{counts}; "
        f"{work.messages / decoded.seconds:,.0f} messages/s, "
        f"{decoded.seconds / decoded.samples * 1e6:.2f} s per 1M samples"
    )
    if decoded.skipped:
        print(f"  WARNING the decoder skipped points: {dict(decoded.skipped)}")
    runs: list[Measurement] = []
    for run in range(1, args.runs + 1):  # interleaved: bare, coalmine, bare, coalmine, ...
        runs.append(await _bare(bootstrap, work, run, args.max_poll_records))
        runs.append(await _bare(bootstrap, work, run, args.max_poll_records, parse=True))
        runs.append(await _coalmine(bootstrap, work, run, args.max_poll_records))
    _report(work, runs, sum(len(value) for value in values), samples)


def _workloads(args: argparse.Namespace) -> list[Workload]:
    """One pass per native K, then one per foreign format, each on topics of its own."""
    passes: list[tuple[Format, int]] = []
    for fmt in args.formats:
        if fmt == "native":
            passes.extend(("native", samples) for samples in args.samples_per_message)
        else:
            passes.append((fmt, OTLP_OBSERVATIONS if fmt == "otlp_json" else 1))
    out = []
    for fmt, samples in passes:
        tag = uuid.uuid4().hex[:6]
        topics = TopicsSettings(
            deployments=f"bench.{tag}.deployments",
            metrics=f"bench.{tag}.metrics",
            verdicts=f"bench.{tag}.verdicts",
            dead_letter=f"bench.{tag}.dlq",
        )
        source = topics.metrics if fmt == "native" else f"bench.{tag}.{fmt}"
        messages = args.messages or (50_000 if samples > 1 else 200_000)
        out.append(
            Workload(
                fmt,
                samples,
                messages,
                args.deployments,
                args.partitions,
                args.event_minutes,
                topics,
                source,
                args.broker,
            )
        )
    return out


async def _main(args: argparse.Namespace) -> None:
    cores = os.cpu_count()
    print(f"coalmine ingest benchmark, {cores} CPU(s), python {sys.version.split()[0]}")
    print(
        f"each side runs {args.runs}x, interleaved; 'best' is the faster run of each side; "
        "the broker is a separate process on the same machine, its CPU shown apart"
    )
    print(f"broker: {describe(args.broker)}\n")
    async with start_broker(args.broker) as broker:
        for work in _workloads(args):
            await _pass(broker.bootstrap, work, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="metric messages per pass (default 50,000 for K > 1 and otlp_json, "
        "200,000 for K = 1 and prometheus_adapter)",
    )
    parser.add_argument(
        "--samples-per-message",
        type=int,
        nargs="+",
        default=[100, 1],
        metavar="K",
        help="one native pass per K (default: 100 1); K = 1 sends 'value', else 'values'",
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=list(FORMATS),
        metavar="F",
        help=f"one pass per format, in this order ({', '.join(FORMATS)}; default: all)",
    )
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--event-minutes",
        type=float,
        default=10.0,
        help="event time each deployment's messages cover (judgements every 60 s)",
    )
    parser.add_argument("--runs", type=int, default=2, help="runs of each side (best is shown)")
    parser.add_argument("--max-poll-records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    add_broker_option(parser)
    args = parser.parse_args()
    if min(args.samples_per_message) < 1 or args.deployments < 1 or args.runs < 1:
        parser.error("K, --deployments and --runs must be at least 1")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
