"""Ingest throughput: coalmine's consume loop against a bare aiokafka consumer, same run.

Run from the repository root: ``python benchmarks/ingest.py [--messages N]
[--samples-per-message K [K ...]] [--deployments D] [--partitions P] [--runs R]``.

A private tansu broker (``tests/brokers.py``) is started and filled, before anything is
timed, with ``started`` events for D deployments and N metric messages keyed by service
(one JSON object each: ``values`` with K latency samples, or ``value`` when K = 1; cohort
alternating baseline / canary, the canary repeating the baseline's samples; RFC 3339 event
time spread evenly over ``--event-minutes`` per deployment, so that every deployment is
judged once per 60 s interval during the run). The coalmine side opens the D deployments
in its router before it starts (as in production, where they start minutes before their
metrics flow), so that no metric overtakes its ``started`` event. Then, interleaved, R
times each:

* **bare**: an ``AIOKafkaConsumer`` in its own group (earliest, no commits) that only counts
  the metric messages (the issue's baseline; the ratio is against it);
* **bare+json**: the same, plus ``orjson.loads`` of every message: what parsing alone
  costs, for reference;
* **coalmine**: the daemon itself (``coalmine.daemon.app.Daemon``, HTTP off) on a
  ``KafkaTransport`` in its own group, reading both topics: fetch, ``Router.handle`` (decode,
  route, buffer, judge) in a worker thread, publish the verdicts and wait for the broker's
  acknowledgement, commit; every batch, as in production. Each run publishes to a verdict
  topic of its own (the daemon reads the verdict topic when it is assigned partitions and
  would suppress the verdicts of an earlier run as already published).

The clock (``time.perf_counter``) and the process CPU clock (``time.process_time``, all
threads of this process; tansu is a separate process, its CPU is shown apart) start once
the first batch is fully handled and stop when the last metric message is; the first
batch's messages are not counted. So the group join and the first fetch are left out on
both sides. The profile judges every 60 s of event time and only ends at 1 h, so no
deployment finishes early and every message is buffered (a promoted deployment would turn
its later messages into cheap drops and flatter the figure).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.brokers, this coalmine

from typing import TYPE_CHECKING

from coalmine.bus.base import Record
from coalmine.bus.kafka import KafkaTransport, ensure_topics
from coalmine.config.models import HttpSettings, KafkaSettings, MetricSpec, Profile, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.contract import format_time
from coalmine.daemon.app import Daemon
from tests.brokers import Tansu

if TYPE_CHECKING:
    from coalmine.daemon.publisher import Publisher

T0 = 1_800_000_000.0
"""Event time of the ``started`` events (2027-01-15)."""
INTERVAL = 60.0
PROFILE = Profile(
    interval=INTERVAL,
    min_duration=3600,
    max_duration=3600,
    metrics=(MetricSpec(name="latency_ms"),),
)
SESSION_TIMEOUT = 1.0
"""tansu delays a group join by half the session timeout: keep it short."""
RUN_TIMEOUT = 300.0
"""Give up on a run that has not seen every message by then."""
TARGET_BATCH_RATIO = 0.60
TARGET_SINGLE_RATE = 50_000.0


@dataclass(frozen=True, slots=True)
class Workload:
    samples: int
    messages: int
    deployments: int
    partitions: int
    event_minutes: float
    topics: TopicsSettings


@dataclass(frozen=True, slots=True)
class Measurement:
    side: str
    run: int
    messages: int
    seconds: float
    cpu: float
    broker_cpu: float | None
    verdicts: int | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class _Clock:
    """Wall, process CPU and broker CPU, started on the first handled batch."""

    def __init__(self) -> None:
        self.counted_from = 0
        self.started: tuple[float, float, float | None] | None = None
        self.stopped: tuple[float, float, float | None] | None = None

    @staticmethod
    def _now() -> tuple[float, float, float | None]:
        return time.perf_counter(), time.process_time(), _children_cpu()

    def start(self, handled: int) -> None:
        self.counted_from = handled
        self.started = self._now()

    def stop(self) -> None:
        self.stopped = self._now()

    def measurement(self, side: str, run: int, total: int, verdicts: int | None) -> Measurement:
        assert self.started is not None
        assert self.stopped is not None
        (wall0, cpu0, broker0), (wall1, cpu1, broker1) = self.started, self.stopped
        broker = None if broker0 is None or broker1 is None else broker1 - broker0
        counted = total - self.counted_from
        if counted <= 0:
            raise SystemExit(f"{side}: the first batch held every message; raise --messages")
        return Measurement(side, run, counted, wall1 - wall0, cpu1 - cpu0, broker, verdicts)


def _children_cpu() -> float | None:
    """User + system CPU seconds of this process's live children (tansu), from /proc."""
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
            "baseline": {"version": "v1"},
            "canary": {"version": "v2"},
            "traffic_weight": 50,
        }
    )


def _metric_messages(work: Workload, seed: int) -> list[tuple[bytes, bytes]]:
    """(key, value) in event-time order, round robin over the services."""
    rng = np.random.default_rng(seed)
    samples = np.round(rng.lognormal(math.log(100.0), 0.5, (work.messages, work.samples)), 1)
    services = _services(work.deployments)
    keys = [service.encode() for service in services]
    per_deployment = math.ceil(work.messages / work.deployments)
    span = work.event_minutes * 60.0
    out = []
    for index in range(work.messages):
        which, nth = index % work.deployments, index // work.deployments
        # A canary message repeats the samples of its deployment's baseline message just
        # before it: an A/A test that cannot fail by chance, so no deployment rolls back.
        row = samples[index - work.deployments if nth % 2 else index]
        event: dict[str, object] = {
            "service": services[which],
            "cohort": "canary" if nth % 2 else "baseline",
            "metric": "latency_ms",
            "time": format_time(T0 + span * (nth + 1) / per_deployment),
        }
        if work.samples == 1:
            event["value"] = float(row[0])
        else:
            event["values"] = row
        out.append((keys[which], orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)))
    return out


async def _fill(bootstrap: str, work: Workload, seed: int) -> int:
    """Create the topics and produce everything (not timed); returns the metric bytes."""
    kafka = KafkaSettings(bootstrap_servers=bootstrap, idempotent_producer=False)
    topics = work.topics
    await ensure_topics(
        kafka,
        {
            topics.deployments: work.partitions,
            topics.metrics: work.partitions,
            topics.verdicts: work.partitions,
            topics.dead_letter: 1,
        },
    )
    metrics = _metric_messages(work, seed)
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
        pending = [await producer.send(topics.metrics, v, key=k) for k, v in metrics]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sum(len(value) for _, value in metrics)


# -- the two sides --------------------------------------------------------------------------


async def _bare(
    bootstrap: str, work: Workload, run: int, max_records: int, *, parse: bool = False
) -> Measurement:
    consumer = AIOKafkaConsumer(
        work.topics.metrics,
        bootstrap_servers=bootstrap,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=round(SESSION_TIMEOUT * 1000),
        heartbeat_interval_ms=round(SESSION_TIMEOUT * 1000 / 3),
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

    def __init__(self, *args, work: Workload, done: asyncio.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.work = work
        self.done = done
        self.clock = _Clock()
        self.handled = 0
        self._metrics_fetched = 0
        self.publisher: Publisher | None = None

    async def fetch(self, timeout: float) -> list:
        # The daemon fetches again once it has handled the batch before (its verdicts are
        # queued for publishing by then; the last batch's are awaited before the clock
        # stops).
        self.handled = self._metrics_fetched
        if self.clock.started is None and self.handled:
            self.clock.start(self.handled)
        if self.handled >= self.work.messages and not self.done.is_set():
            assert self.publisher is not None
            await self.publisher.settle()
            self.clock.stop()
            self.done.set()
        records = await super().fetch(timeout)
        metrics = self.work.topics.metrics
        self._metrics_fetched += sum(1 for record in records if record.topic == metrics)
        return records


def _counter_total(counter, **labels: str) -> int:
    return int(
        sum(
            sample.value
            for metric in counter.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )
    )


async def _coalmine(bootstrap: str, work: Workload, run: int, max_records: int) -> Measurement:
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        idempotent_producer=False,  # tansu has no InitProducerId
        group_id=f"bench-coalmine-{uuid.uuid4().hex[:8]}",
        max_poll_records=max_records,
        fetch_max_wait=0.01,  # tansu holds a fetch for all of it
    )
    # Its own verdict topic per run: the daemon reads the verdict topic when it is assigned
    # its partitions, and would suppress, as already published, every verdict of a run
    # before it (no publishing at all: a flattering figure).
    topics = work.topics.model_copy(update={"verdicts": f"{work.topics.verdicts}.{run}"})
    await ensure_topics(
        KafkaSettings(bootstrap_servers=bootstrap, idempotent_producer=False),
        {topics.verdicts: work.partitions},
    )
    settings = Settings(
        kafka=kafka,
        topics=topics,
        http=HttpSettings(enabled=False),
        profiles={"default": PROFILE},
        log_level="WARNING",
    )
    done = asyncio.Event()
    transport = _TimedTransport(
        kafka,
        (topics.deployments, topics.metrics),
        produce=(topics.verdicts, topics.dead_letter),
        session_timeout=SESSION_TIMEOUT,
        work=work,
        done=done,
    )
    daemon = Daemon(settings, transport)
    transport.publisher = daemon.publisher
    # Open the deployments first, as they are in production minutes before their metrics
    # flow: the consumer interleaves the two topics, and a metric that overtook its
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
    telemetry = daemon.telemetry
    problems = {
        "dropped samples": _counter_total(telemetry.dropped_samples),
        "dead letters": _counter_total(telemetry.invalid_events),
    }
    for what, count in problems.items():
        if count:
            print(f"  WARNING coalmine run {run}: {count} {what}; the figures are suspect")
    verdicts = _counter_total(telemetry.verdicts)
    return transport.clock.measurement("coalmine", run, transport.handled, verdicts)


# -- reporting ------------------------------------------------------------------------------


def _row(m: Measurement, samples: int, label: str) -> str:
    per_million = m.cpu / (m.messages * samples) * 1e6
    broker = "n/a" if m.broker_cpu is None else f"{m.broker_cpu:.1f}"
    verdicts = "-" if m.verdicts is None else f"{m.verdicts:,}"
    return (
        f"{m.side:<9} {label:>6} {m.rate:>12,.0f} {m.rate * samples:>12,.0f} "
        f"{per_million:>14.2f} {m.seconds:>8.2f} {m.cpu:>7.2f} {broker:>9} {verdicts:>9}"
    )


def _report(work: Workload, runs: list[Measurement], payload: int) -> None:
    header = (
        f"{'side':<9} {'run':>6} {'messages/s':>12} {'samples/s':>12} "
        f"{'CPU s/1M smp':>14} {'wall s':>8} {'CPU s':>7} {'tansu CPU':>9} {'verdicts':>9}"
    )
    print(header)
    print("-" * len(header))
    for m in runs:
        print(_row(m, work.samples, str(m.run)))
    best = {
        side: max((m for m in runs if m.side == side), key=lambda m: m.rate)
        for side in ("bare", "bare+json", "coalmine")
    }
    for m in best.values():
        print(_row(m, work.samples, "best"))
    ratio = best["coalmine"].rate / best["bare"].rate
    parsed = best["coalmine"].rate / best["bare+json"].rate
    json_only = best["bare+json"].rate / best["bare"].rate
    print(f"\nratio coalmine / bare, messages/s (best of each): {ratio:.3f}")
    print(f"(for reference: coalmine / bare+json {parsed:.3f}, bare+json / bare {json_only:.3f})")
    if work.samples > 1:
        met = "met" if ratio >= TARGET_BATCH_RATIO else "NOT met"
        print(f"issue-7 target: >= {TARGET_BATCH_RATIO:.0%} of the bare consumer's rate: {met}")
    else:
        rate = best["coalmine"].rate
        met = "met" if rate >= TARGET_SINGLE_RATE else "NOT met"
        print(f"issue-7 target: >= {TARGET_SINGLE_RATE:,.0f} single-sample events/s: {met}")
    print(f"(metric payload {payload / work.messages:,.0f} bytes/message on average)\n")


async def _pass(bootstrap: str, work: Workload, args: argparse.Namespace) -> None:
    per_deployment = math.ceil(work.messages / work.deployments)
    looks = max(0, math.ceil(work.event_minutes * 60 / INTERVAL) - 1)
    print(
        f"== K={work.samples} samples/message, N={work.messages:,} messages, "
        f"D={work.deployments} deployments ({per_deployment} messages each), "
        f"P={work.partitions} partitions, event time {work.event_minutes:g} min "
        f"({looks} judgements per deployment, every {INTERVAL:g} s), "
        f"max_poll_records {args.max_poll_records}"
    )
    begun = time.perf_counter()
    payload = await _fill(bootstrap, work, args.seed)
    print(f"produced in {time.perf_counter() - begun:.1f} s (not measured)")
    runs: list[Measurement] = []
    for run in range(1, args.runs + 1):  # interleaved: bare, coalmine, bare, coalmine, ...
        runs.append(await _bare(bootstrap, work, run, args.max_poll_records))
        runs.append(await _bare(bootstrap, work, run, args.max_poll_records, parse=True))
        runs.append(await _coalmine(bootstrap, work, run, args.max_poll_records))
    _report(work, runs, payload)


async def _main(args: argparse.Namespace) -> None:
    cores = os.cpu_count()
    print(f"coalmine ingest benchmark, {cores} CPU(s), python {sys.version.split()[0]}")
    print(
        f"each side runs {args.runs}x, interleaved; 'best' is the faster run of each side; "
        "tansu (the broker) is a separate process on the same machine\n"
    )
    async with Tansu() as broker:
        for samples in args.samples_per_message:
            messages = args.messages or (50_000 if samples > 1 else 200_000)
            tag = uuid.uuid4().hex[:6]
            topics = TopicsSettings(
                deployments=f"bench.{tag}.deployments",
                metrics=f"bench.{tag}.metrics",
                verdicts=f"bench.{tag}.verdicts",
                dead_letter=f"bench.{tag}.dlq",
            )
            work = Workload(
                samples, messages, args.deployments, args.partitions, args.event_minutes, topics
            )
            await _pass(broker.bootstrap, work, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="metric messages per pass (default 50,000 for K > 1, 200,000 for K = 1)",
    )
    parser.add_argument(
        "--samples-per-message",
        type=int,
        nargs="+",
        default=[100, 1],
        metavar="K",
        help="one pass per K (default: 100 1); K = 1 sends 'value', else 'values'",
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
    args = parser.parse_args()
    if min(args.samples_per_message) < 1 or args.deployments < 1 or args.runs < 1:
        parser.error("K, --deployments and --runs must be at least 1")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
