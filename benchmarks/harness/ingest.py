"""The ingest comparison: the daemon's consume loop against a bare aiokafka consumer on the
same topics, and the table of their runs (``ingest.py``, ``ingest_production.py``).

The topics are filled before anything is timed (``fill``). Then each side reads them all:

* ``bare``: an ``AIOKafkaConsumer`` in its own group (earliest, no commits) that only counts
  the metric messages: the baseline; for reference, ``bare+json`` adds ``orjson.loads`` of
  each, and ``bare+decode`` the contract's decode of each (the daemon's first step, as
  ``decode_all`` runs it): what is left between that side and ``coalmine`` is routing,
  buffering, judging, publishing and committing;
* ``coalmine``: the daemon itself (``Daemon``, HTTP off) on a ``KafkaTransport`` in its own
  group: fetch, decode, route, buffer, judge, publish the verdicts and wait for the
  broker's acknowledgement, commit; every batch, as in production.

Both clocks (wall and process CPU; the broker is a separate process, its CPU shown apart)
start once the first batch is fully handled and stop when the last metric message is; the
first batch's messages are not counted, so the group join and the first fetch are left out
on both sides. The profile judges every 60 s of event time and only ends at 1 h, so no
deployment finishes early and every message is buffered (a promoted deployment would turn
its later messages into cheap drops and flatter the figure).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from benchmarks.harness.broker import BrokerKind, kafka_settings
from benchmarks.harness.procfs import children_cpu, machine_busy
from benchmarks.harness.workload import T0
from coalmine.bus.base import Record
from coalmine.bus.kafka import KafkaTransport, ensure_topics
from coalmine.config.models import HttpSettings, KafkaSettings, MetricSpec, Profile, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.contract import decode_metric_events, format_time
from coalmine.daemon.app import Daemon
from coalmine.formats import InputSettings, MetricDecoder, metric_decoder

if TYPE_CHECKING:
    from collections.abc import Callable

    from prometheus_client import Counter as PromCounter

    from coalmine.contract import MetricEvent
    from coalmine.daemon.publisher import Publisher

Format = Literal["native", "otlp_json", "prometheus_adapter"]
FORMATS: tuple[Format, ...] = ("native", "otlp_json", "prometheus_adapter")

VERSIONS = {"baseline": "v1", "canary": "v2"}
"""The versions of every deployment's cohorts, as the foreign formats report them."""
INTERVAL = 60.0
LATENCY = MetricSpec(name="latency_ms")
PROFILE = Profile(interval=INTERVAL, min_duration=3600, max_duration=3600, metrics=(LATENCY,))
OTLP_PROFILE = PROFILE.model_copy(
    update={"metrics": (LATENCY, MetricSpec(name="requests", kind="ratio", objective=0.99))}
)
"""The OTLP messages carry a request counter too: a ratio metric to feed."""
SESSION_TIMEOUT = {"tansu": 1.0, "kafka": 10.0}
"""Consumer session timeout, s, per broker: tansu delays a group join by half of it, so keep
it short there; Apache Kafka joins at once, and keeps coalmine's default."""
RUN_TIMEOUT = 300.0
"""Give up on a run that has not seen every message by then."""


@dataclass(frozen=True, slots=True)
class IngestWorkload:
    """One pass: its messages' format and size, the fleet, and the topics they go to."""

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
    """One run of one side: messages counted, wall and CPU seconds over the timed window."""

    side: str
    run: int
    messages: int
    seconds: float
    cpu: float
    broker_cpu: float
    verdicts: int | None = None
    others_cpu: float | None = None
    """CPU seconds of other work on the machine over the window (not this process, not
    the broker)."""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class Clock:
    """Wall, process CPU and broker CPU, started on the first handled batch."""

    def __init__(self) -> None:
        self.counted_from = 0
        self.started: tuple[float, float, float, float] | None = None
        self.stopped: tuple[float, float, float, float] | None = None

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        return time.perf_counter(), time.process_time(), children_cpu(), machine_busy()

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
        broker = broker1 - broker0
        others = max(0.0, machine1 - machine0 - (cpu1 - cpu0) - broker)
        counted = total - self.counted_from
        if counted <= 0:
            raise SystemExit(f"{side}: the first batch held every message; raise --messages")
        return Measurement(side, run, counted, wall1 - wall0, cpu1 - cpu0, broker, verdicts, others)


# -- the topic contents -------------------------------------------------------------------


def service_names(count: int) -> list[str]:
    return [f"svc-{index:04d}" for index in range(count)]


def started(service: str) -> bytes:
    """The ``started`` event of the service's deployment, at ``T0``."""
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
class Decoded:
    """What decoding every message once gave: its time, samples, requests counted, skips."""

    seconds: float
    samples: int
    counted: int
    skipped: Counter[str]


def contract_decoder(
    work: IngestWorkload,
) -> tuple[Callable[[bytes], list[MetricEvent]], MetricDecoder | None]:
    """The daemon's decode of the workload's messages, and its foreign decoder if any."""
    if work.format == "native":
        return decode_metric_events, None
    decoder = metric_decoder(work.inputs()[0])
    return decoder.decode, decoder


def decode_all(work: IngestWorkload, values: list[bytes]) -> Decoded:
    """Decode every message as the daemon will (one fresh decoder, not timed)."""
    decode, decoder = contract_decoder(work)
    samples = counted = 0
    begun = time.perf_counter()
    for value in values:
        for event in decode(value):
            if event.is_ratio:
                counted += event.total
            else:
                samples += len(event.values)
    seconds = time.perf_counter() - begun
    return Decoded(seconds, samples, counted, decoder.skipped if decoder else Counter())


async def fill(bootstrap: str, work: IngestWorkload, metrics: list[tuple[bytes, bytes]]) -> None:
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
            await producer.send(topics.deployments, started(service), key=service.encode())
            for service in service_names(work.deployments)
        ]
        await asyncio.gather(*pending)  # the deployments are in before any metric
        pending = [await producer.send(work.source, v, key=k) for k, v in metrics]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


# -- the two sides --------------------------------------------------------------------------


async def run_bare(
    bootstrap: str, work: IngestWorkload, run: int, max_records: int, *, side: str = "bare"
) -> Measurement:
    """The baseline: a consumer that counts the metric messages.

    ``side``: ``bare`` only counts; ``bare+json`` also loads each with ``orjson``;
    ``bare+decode`` also decodes each as the daemon does (``decode_all``'s decoder).
    """
    parse: Callable[[bytes], object] | None = None
    if side == "bare+json":
        parse = orjson.loads
    elif side == "bare+decode":
        parse = contract_decoder(work)[0]
    elif side != "bare":
        raise ValueError(f"unknown side {side!r}")
    consumer = AIOKafkaConsumer(
        work.source,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=round(SESSION_TIMEOUT[work.broker] * 1000),
        heartbeat_interval_ms=round(SESSION_TIMEOUT[work.broker] * 1000 / 3),
    )
    clock = Clock()
    await consumer.start()
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            seen = 0
            while seen < work.messages:
                batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
                for messages in batches.values():
                    seen += len(messages)
                    if parse is not None:
                        for message in messages:
                            parse(message.value)
                if seen and clock.started is None:
                    clock.start(seen)
            clock.stop()
    finally:
        await consumer.stop()
    return clock.measurement(side, run, seen, None)


class TimedTransport(KafkaTransport):
    """The real transport, plus the clock: started and stopped after a commit."""

    def __init__(
        self, *args: Any, work: IngestWorkload, done: asyncio.Event, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.work = work
        self.done = done
        self.clock = Clock()
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


def counter_total(counter: PromCounter, **labels: str) -> int:
    """Sum of a counter's ``_total`` samples with these labels."""
    return int(
        sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )
    )


def problems(daemon: Daemon, work: IngestWorkload, verdicts: int) -> dict[str, int]:
    """What would make the figures suspect: anything not analysed, any deployment gone."""
    telemetry = daemon.telemetry
    return {
        "dropped samples": counter_total(telemetry.dropped_samples),
        "dead letters": counter_total(telemetry.invalid_events),
        "points skipped by the decoder": counter_total(telemetry.input_points_skipped),
        "deployments no longer open": work.deployments - len(daemon.router.deployments),
        "judgements missing": max(0, work.deployments * work.judgements() - verdicts),
    }


async def run_coalmine(
    bootstrap: str, work: IngestWorkload, run: int, max_records: int
) -> Measurement:
    """The daemon on the same topics; warns if anything would make its figures suspect."""
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
    transport = TimedTransport(
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
        Record(topics.deployments, started(service), service.encode())
        for service in service_names(work.deployments)
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
    verdicts = counter_total(daemon.telemetry.verdicts)
    for what, count in problems(daemon, work, verdicts).items():
        if count:
            print(f"  WARNING coalmine run {run}: {count:,} {what}; the figures are suspect")
    return transport.clock.measurement("coalmine", run, transport.metrics_handled, verdicts)


# -- the table ------------------------------------------------------------------------------

REFERENCES = ("bare+json", "bare+decode")
"""The bare consumer's sides that also parse or decode each message, for reference."""
BARE_SIDES = ("bare", *REFERENCES)
"""The sides ``run_bare`` runs, in the order a round runs them."""
SIDES = (*BARE_SIDES, "coalmine")
"""Every side a report shows, in this order."""


def _row(m: Measurement, samples: float, label: str) -> str:
    per_million = m.cpu / (m.messages * samples) * 1e6
    verdicts = "-" if m.verdicts is None else f"{m.verdicts:,}"
    others = "n/a" if m.others_cpu is None else f"{m.others_cpu:.1f}"
    return (
        f"{m.side:<11} {label:>6} {m.rate:>12,.0f} {m.rate * samples:>12,.0f} "
        f"{per_million:>14.2f} {m.seconds:>8.2f} {m.cpu:>7.2f} {m.broker_cpu:>10.1f} "
        f"{others:>10} {verdicts:>9}"
    )


def report_runs(runs: list[Measurement], samples: float) -> tuple[float, float]:
    """Print every run, the best of each side, and the coalmine / bare ratios of messages/s.

    ``samples``: per message, as the daemon derives them. Each round's ratio is coalmine
    over the bare run just before it; returns (the median of those, the best of each side's).
    """
    header = (
        f"{'side':<11} {'run':>6} {'messages/s':>12} {'samples/s':>12} "
        f"{'CPU s/1M smp':>14} {'wall s':>8} {'CPU s':>7} {'broker CPU':>10} {'others CPU':>10} "
        f"{'verdicts':>9}"
    )
    print(header)
    print("-" * len(header))
    for m in runs:
        print(_row(m, samples, str(m.run)))
    best = {side: max((m for m in runs if m.side == side), key=lambda m: m.rate) for side in SIDES}
    for m in best.values():
        print(_row(m, samples, "best"))
    by_run = {(m.side, m.run): m for m in runs}
    ratios = [
        by_run["coalmine", run].rate / by_run["bare", run].rate
        for run in sorted({m.run for m in runs})
    ]
    median = statistics.median(ratios)
    best_ratio = best["coalmine"].rate / best["bare"].rate
    print(
        "\nratio coalmine / bare, messages/s, per round (each against the bare run just before "
        "it): " + ", ".join(f"{r:.3f}" for r in ratios)
    )
    print(
        f"  median {median:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}; "
        f"best of each side {best_ratio:.3f}"
    )
    for side in REFERENCES:
        print(
            f"  (for reference, best of each: coalmine / {side} "
            f"{best['coalmine'].rate / best[side].rate:.3f}, {side} / bare "
            f"{best[side].rate / best['bare'].rate:.3f})"
        )
    return median, best_ratio
