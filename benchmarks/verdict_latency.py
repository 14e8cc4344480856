"""Verdict latency: deciding message to verdict, under steady load, against a bare round trip.

Run from the repository root: ``python benchmarks/verdict_latency.py [--rate N]
[--deployments 1000] [--duration 60] [--critical 5] [--broker kafka|tansu] [--json PATH]``.

A private broker (``--broker``: one Apache Kafka node, ``support/kafka_broker.py``, by
default; or tansu, ``support/brokers.py``; see ``harness/broker.py`` for the settings that
differ) and the daemon as a **subprocess**
(``python -m coalmine run``), on fresh topics. Every deployment sends, every ``--step``
seconds of event time and for each of ``--instances`` instances of each cohort, two metric
messages keyed by its service: the ``latency_ms`` samples (``--samples-per-message``
lognormal values) and the ``requests`` good/total counts (the critical ratio metric;
``--error-ratio`` of them failed). The canary repeats the baseline's numbers (an A/A test
that cannot fail by chance), so no healthy deployment ends during the run;
``min_duration = max_duration = 1h``. Start times are spread over one interval (to the
millisecond) and ticks fall half a step off the judgement times, so judgements are spread
evenly and a verdict's time says what made it (a due time: an interval judgement; a tick
time: a critical check).

1. **Maximum rate** (unless ``--rate``): the same workload (``--max-minutes`` of event time
   for every deployment) is produced before a daemon starts; the daemon then drains it, and
   its ``coalmine_events_consumed_total`` (scraped from ``/metrics``) gives its rate. The
   live run uses half of it. The drain covers 6 event minutes by default, about what the
   live run reaches: a look costs more as a deployment's evidence grows, and a drain of
   the first 2 minutes gave 44,700 messages/s where 6 minutes give 33,300-37,100.
2. **Baseline**: a bare ``AIOKafkaProducer`` (acks=all, as the daemon publishes) sends a
   small message every 20 ms to a topic of its own and a bare ``AIOKafkaConsumer`` reads it:
   send to receipt. It runs alone first (idle), then all through the live run (loaded),
   where its send -> broker ack is kept too (the analogue of the daemon's publish).
3. **Live run**: ``--deployments`` are opened, then the load runs in real time at the rate
   (event time ``step x rate / (4 x instances x deployments)`` times wall time) for
   ``--duration`` seconds. ``--critical`` deployments get a critical error burst (20% of
   the canary's requests fail) at a random moment after the warm-up; they must be rolled
   back on the message that shows it, not at their next interval. A rolled-back deployment
   is replaced by a new one, so the open count stays level.

Two measures of each verdict, after ``--warmup`` seconds:

* **inside the daemon**: ``coalmine_verdict_lag_seconds`` (the return of the fetch
  holding the deciding message to the broker's ack of the verdict), its bucket counts at
  the end of the warm-up subtracted from those at the end; p50 and p99 interpolated in the
  buckets as Prometheus' ``histogram_quantile`` does.
* **outside**: for each verdict read from the verdict topic, the producer's ack of the
  deciding message (the first message of that deployment with event time past the
  judgement's due time; for a critical rollback, the canary ``requests`` message at the
  verdict's time) to the receipt of the verdict by a consumer in this process. On tansu
  the measuring consumer (and the baseline's) uses ``fetch_max_wait_ms = 10``: tansu holds
  a fetch for its whole wait even when data arrives, so the aiokafka default (500 ms) would
  measure the consumer; the daemons use 10 ms as well (``--fetch-max-wait-ms``). Apache
  Kafka answers a fetch when data arrives: there the consumers keep aiokafka's default and
  the daemons coalmine's (100 ms).

The target, p99 <= 50 ms, is checked on both: inside, and end to end (outside: the
deciding message acknowledged to the verdict read back), which adds the broker delivering
both ways and is printed against the floor. The daemon's, the broker's and this process's
CPU over the live run are printed beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import math
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.broker import (
    add_broker_option,
    consumer_fetch_wait_ms,
    daemon_fetch_wait_ms,
    describe,
    start_broker,
)
from benchmarks.harness.daemon import (
    READY_TIMEOUT,
    ROOT,
    DaemonProcess,
    bench_profile,
    daemon_broker_options,
    daemon_config,
)
from benchmarks.harness.measure import bucket_quantile, buckets, percentile, total, write_json
from benchmarks.harness.procfs import machine_busy, proc_cpu, rss_mb
from benchmarks.harness.topics import Topics, create_topics
from benchmarks.harness.workload import T0, Canary, Workload, fill, first_tick, fleet, tick_key
from coalmine.contract import parse_time
from support.brokers import free_port

if TYPE_CHECKING:
    from support.brokers import BrokerProcess

PROBE_EVERY = 0.02
"""Seconds between two messages of the bare round trip."""
TARGET_P99 = 0.050
"""Inside the daemon: receipt of the deciding message -> the broker's ack of its verdict."""


class EchoProcess(DaemonProcess):
    """``benchmarks/echo_daemon.py`` in a subprocess: the latency floor of a daemon that
    does nothing but notice due judgements (no HTTP, so no metrics to scrape)."""

    def __init__(self, workdir: Path, bootstrap: str, topics: Topics, args) -> None:
        super().__init__(workdir, "echo", "", free_port())
        self.command = [
            sys.executable,
            str(ROOT / "benchmarks" / "echo_daemon.py"),
            *("--bootstrap", bootstrap, "--interval", str(args.interval)),
            *("--deployments", topics.deployments, "--metrics", topics.metrics),
            *("--verdicts", topics.verdicts),
            *(
                "--fetch-max-wait-ms",
                str(args.fetch_max_wait_ms or daemon_fetch_wait_ms(args.broker)),
            ),
            *("--max-poll-records", str(args.max_poll_records)),
            *("--fetch-min-bytes", str(args.fetch_min_bytes or 1)),
        ]

    async def scrape(self) -> dict[str, float]:
        return {}

    async def wait_for(self, *_: object, **__: object) -> float:
        """Nothing to wait for: it reads the deploy events whenever it gets to them."""
        return time.monotonic()

    async def wait_ready(self) -> float:
        """Seconds from spawn to its ``ready`` line."""
        while "ready" not in self.log_path.read_text(errors="replace"):
            if not self.alive():
                raise SystemExit(f"echo daemon exited before it was ready:\n{self.log_tail()}")
            if time.monotonic() - self.spawned > READY_TIMEOUT:
                raise SystemExit(f"echo daemon not ready after {READY_TIMEOUT:g} s")
            await asyncio.sleep(0.05)
        return time.monotonic() - self.spawned


# -- the live load and the verdicts read back ------------------------------------------------


@dataclass(slots=True)
class Tick:
    sent: float
    acked: float = math.nan
    critical_acked: float = math.nan
    """Ack of the canary ``requests`` message (what a critical check decides on). A tick
    goes as one batch, so both acks are the batch's."""


@dataclass(slots=True)
class Observed:
    kind: str  # "interval" or "critical"
    deployment_id: str
    decision: str
    latency: float
    """Ack of the deciding message to receipt of the verdict, seconds."""
    since_send: float
    acked_at: float
    """time.monotonic() of the deciding message's ack."""


@dataclass(slots=True)
class LiveState:
    ticks: dict[tuple[int, int], Tick] = field(default_factory=dict)
    canaries: dict[str, Canary] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)
    observed: list[Observed] = field(default_factory=list)
    unmatched: int = 0
    verdicts: int = 0
    produced: int = 0
    produce_errors: int = 0
    burst_first: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Critical deployment -> its first bursting tick (index, event time)."""
    rollbacks: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Critical deployment -> (verdict receipt, verdict event time, next due time)."""


def _tick_acked(state: LiveState, tick: Tick, count: int):
    def done(future: asyncio.Future) -> None:
        now = time.monotonic()
        if future.cancelled() or future.exception() is not None:
            state.produce_errors += count
            return
        state.produced += count
        tick.acked = tick.critical_acked = now

    return done


def _acked(state: LiveState, tick: Tick, attr: str | None):
    def done(future: asyncio.Future) -> None:
        now = time.monotonic()
        if future.cancelled() or future.exception() is not None:
            state.produce_errors += 1
            return
        state.produced += 1
        if attr is not None:
            setattr(tick, attr, now)

    return done


class LiveLoad:
    """Ticks of every open deployment on an event clock running ``speed`` x wall time."""

    def __init__(self, args, topics: Topics, state: LiveState, canaries: list[Canary]) -> None:
        self.args = args
        self.topics = topics
        self.state = state
        self.work = Workload(args.samples_per_message, args.seed, args.instances, args.error_ratio)
        self.speed = args.step * args.rate / (self.work.per_tick * args.deployments)
        self.heap: list[tuple[float, int]] = []
        self.by_index = {c.index: c for c in canaries}
        self.began = 0.0
        self.next_index = len(canaries)
        self.producer: AIOKafkaProducer | None = None
        self._partitioner = DefaultPartitioner()
        self.partitions = {
            topic: list(range(args.partitions)) for topic in (topics.metrics, topics.deployments)
        }

    def now(self) -> float:
        return T0 + self.speed * (time.monotonic() - self.began)

    async def send(self, topic: str, key: str, value: bytes, done=None) -> None:
        assert self.producer is not None
        future = await self.producer.send(topic, value, key=key.encode())
        if done is not None:
            future.add_done_callback(done)

    async def open(self, canary: Canary) -> None:
        self.by_index[canary.index] = canary
        self.state.canaries[canary.deployment_id] = canary
        # Ticks from now on (the first deployments started up to an interval before T0).
        after = max(canary.started, self.now() if self.began else T0)
        heapq.heappush(self.heap, (first_tick(canary, after, self.args.step), canary.index))
        await self.send(
            self.topics.deployments,
            canary.service,
            canary.started_event(),
            _acked(self.state, Tick(0.0), None),
        )

    async def run(self, duration: float) -> None:
        assert self.producer is not None
        self.began = time.monotonic()
        deadline = self.began + duration
        while time.monotonic() < deadline:
            now = self.now()
            while self.heap and self.heap[0][0] <= now:
                at, index = heapq.heappop(self.heap)
                canary = self.by_index[index]
                if canary.deployment_id in self.state.retired:
                    # Its pipeline acted on the final verdict: a new deployment takes its place.
                    replacement = Canary(
                        self.next_index,
                        f"svc-{self.next_index:05d}",
                        math.floor(now * 1000) / 1000,
                        canary.phase,
                    )
                    self.next_index += 1
                    await self.open(replacement)
                    continue
                await self.emit(canary, at)
                heapq.heappush(self.heap, (at + self.args.step, index))
            await asyncio.sleep(0.002)
        await self.producer.flush()

    async def emit(self, canary: Canary, at: float) -> None:
        tick = Tick(time.monotonic())
        self.state.ticks[tick_key(canary.index, at)] = tick
        if at >= canary.burst_from:
            self.state.burst_first.setdefault(canary.deployment_id, (canary.index, at))
        # One batch per tick (a tick's messages share a key, so a partition): what a
        # batching producer sends anyway, for a fraction of the per-message cost here.
        assert self.producer is not None
        key = canary.service.encode()
        messages = self.work.tick(canary, at)
        batch = self.producer.create_batch()
        for value in messages:
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise SystemExit("a tick's messages do not fit one batch: fewer --instances")
        topic = self.topics.metrics
        future = await self.producer.send_batch(batch, topic, partition=self.partition(topic, key))
        future.add_done_callback(_tick_acked(self.state, tick, len(messages)))

    def partition(self, topic: str, key: bytes) -> int:
        """The partition the producer's default partitioner gives ``key`` (as the daemon's
        deploy events, keyed alike, are co-partitioned)."""
        return self._partitioner(key, self.partitions[topic], self.partitions[topic])


async def read_verdicts(
    bootstrap: str,
    topic: str,
    partitions: int,
    state: LiveState,
    step: int,
    interval: int,
    fetch_wait_ms: int,
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            received = time.monotonic()
            for messages in batches.values():
                for message in messages:
                    _match(state, orjson.loads(message.value), received, step, interval)
    finally:
        await consumer.stop()


def _match(state: LiveState, verdict: dict, received: float, step: int, interval: int) -> None:
    state.verdicts += 1
    canary = state.canaries.get(verdict["deployment_id"])
    if canary is None:
        state.unmatched += 1
        return
    when = parse_time(verdict["time"])
    if verdict["final"]:
        state.retired.add(canary.deployment_id)
    since_start = when - canary.started
    if abs(since_start / interval - round(since_start / interval)) < 1e-6:
        kind = "interval"
        tick = state.ticks.get(tick_key(canary.index, first_tick(canary, when, step)))
        acked = None if tick is None else tick.acked
    else:
        kind = "critical"
        tick = state.ticks.get(tick_key(canary.index, when))
        acked = None if tick is None else tick.critical_acked
    if tick is None or acked is None or math.isnan(acked):
        state.unmatched += 1
        return
    state.observed.append(
        Observed(
            kind,
            canary.deployment_id,
            verdict["decision"],
            received - acked,
            received - tick.sent,
            acked,
        )
    )
    if verdict["decision"] == "rollback" and math.isfinite(canary.burst_from):
        next_due = canary.started + interval * math.ceil(since_start / interval + 1e-9)
        state.rollbacks[canary.deployment_id] = (received, when, next_due)


# -- the baseline: a bare produce -> consume round trip -----------------------------------------


async def probe(
    bootstrap: str,
    topic: str,
    stop: asyncio.Event,
    out: list[float],
    acks: list[float] | None = None,
    *,
    fetch_wait_ms: int,
) -> None:
    """Send a small message every PROBE_EVERY s; append send -> receipt seconds to ``out``
    (and send -> broker ack seconds to ``acks``: the daemon's "one publish round trip")."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
    )
    await producer.start()
    await consumer.start()
    sent: dict[bytes, float] = {}
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)

        async def reader() -> None:
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                now = time.monotonic()
                for messages in batches.values():
                    for message in messages:
                        began = sent.pop(message.value, None)
                        if began is not None:
                            out.append(now - began)

        task = asyncio.create_task(reader())
        serial = 0
        while not stop.is_set():
            serial += 1
            key = str(serial).encode()
            sent[key] = began = time.monotonic()
            future = await producer.send(topic, key)
            if acks is not None:
                future.add_done_callback(lambda _, t=began: acks.append(time.monotonic() - t))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_EVERY)
        await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await consumer.stop()
        await producer.stop()


async def probe_for(bootstrap: str, topic: str, seconds: float, fetch_wait_ms: int) -> list[float]:
    stop = asyncio.Event()
    out: list[float] = []
    task = asyncio.create_task(probe(bootstrap, topic, stop, out, fetch_wait_ms=fetch_wait_ms))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    return out


# -- the maximum rate --------------------------------------------------------------------------


async def max_rate(broker: BrokerProcess, args, workdir: Path) -> float:
    topics = Topics.fresh("max")
    await create_topics(broker.bootstrap, topics.layout(args.partitions))
    canaries = fleet(args.deployments, args.interval, args.step, args.seed)
    begun = time.monotonic()
    messages = await fill(
        broker.bootstrap,
        topics,
        canaries,
        args,
        args.max_minutes,
        work=Workload(args.samples_per_message, args.seed + 1, args.instances, args.error_ratio),
    )
    print(
        f"max rate: {messages:,} metric messages ({args.max_minutes:g} event min per "
        f"deployment) produced in {time.monotonic() - begun:.1f} s (not timed); draining"
    )
    port = free_port()
    profile = bench_profile(args.interval, 3600)
    daemon = DaemonProcess(
        workdir,
        "max",
        daemon_config(
            broker.bootstrap, topics, port, profile, **daemon_broker_options(args.broker)
        ),
        port,
    )
    daemon.spawn()
    try:
        await daemon.wait_ready()
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            consumed = (await daemon.scrape()).get(
                f"coalmine_events_consumed_total{{topic={topics.metrics}}}"
            )
            if consumed:
                samples.append((time.monotonic(), consumed))
                if consumed >= messages:
                    break
            if not daemon.alive():
                raise SystemExit(f"daemon died draining:\n{daemon.log_tail()}")
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("max rate: the daemon did not drain the topic in 600 s")
        cpu = proc_cpu(daemon.pid)
    finally:
        await daemon.stop()
    (t0, c0), (t1, c1) = samples[0], samples[-1]
    rate = (c1 - c0) / (t1 - t0)
    print(
        f"max rate: {rate:,.0f} metric messages/s ({c1 - c0:,.0f} in {t1 - t0:.1f} s, first "
        f"scrape's batch excluded; daemon CPU {cpu:.1f} s in all)"
    )
    return rate


# -- the run -------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "n/a" if not math.isfinite(seconds) else f"{seconds * 1e3:.1f}"


def _quantiles(counts: list[tuple[float, float]]) -> dict[str, tuple[float, float, float] | None]:
    return {"p50": bucket_quantile(counts, 0.5), "p99": bucket_quantile(counts, 0.99)}


def _delta(end: list[tuple[float, float]], start: list[tuple[float, float]]):
    before = dict(start)
    return [(le, count - before.get(le, 0.0)) for le, count in end]


async def live(
    broker: BrokerProcess, args, workdir: Path, rate: float, *, echo: bool = False
) -> dict:
    """The live run against coalmine, or (``echo``) against ``echo_daemon.py``."""
    args.rate = rate
    topics = Topics.fresh("lat")
    await create_topics(broker.bootstrap, topics.layout(args.partitions))
    probe_topic = f"probe.{uuid.uuid4().hex[:6]}"
    await create_topics(broker.bootstrap, {probe_topic: 1})
    fetch_wait_ms = consumer_fetch_wait_ms(args.broker)
    idle = await probe_for(broker.bootstrap, probe_topic, args.probe_seconds, fetch_wait_ms)
    print(
        f"baseline idle: bare produce -> consume, {len(idle)} messages: p50 "
        f"{_ms(percentile(idle, 0.5))} ms, p99 {_ms(percentile(idle, 0.99))} ms"
    )

    port = free_port()
    profile = bench_profile(args.interval, 3600)
    config = daemon_config(
        broker.bootstrap,
        topics,
        port,
        profile,
        max_poll_records=args.max_poll_records,
        fetch_min_bytes=args.fetch_min_bytes,
        **daemon_broker_options(args.broker, args.fetch_max_wait_ms),
    )
    daemon = (
        EchoProcess(workdir, broker.bootstrap, topics, args)
        if echo
        else DaemonProcess(workdir, "live", config, port)
    )
    daemon.spawn()
    state = LiveState()
    canaries = fleet(args.deployments, args.interval, args.step, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    load = LiveLoad(args, topics, state, canaries)
    # Critical bursts start at random moments after the warm-up (event time), early enough
    # for two more ticks of the deployment before the load stops.
    latest = args.duration - max(10.0, 2 * args.step / load.speed)
    bursts = 0 if echo else min(args.critical, len(canaries))
    for canary in rng.choice(canaries, size=bursts, replace=False):
        wall = float(rng.uniform(args.warmup, max(args.warmup, latest)))
        canary.burst_from = T0 + load.speed * wall
    loaded: list[float] = []
    loaded_acks: list[float] = []
    stop_probe = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        ready = await daemon.wait_ready()
        load.producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks=1, linger_ms=1)
        await load.producer.start()
        for canary in canaries:
            await load.open(canary)
        await load.producer.flush()
        await daemon.wait_for(
            lambda m: total(m, "coalmine_active_deployments") == args.deployments,
            f"{args.deployments} open deployments",
            60,
        )
        print(
            f"{'echo ' if echo else ''}daemon pid {daemon.pid} ready {ready:.1f} s after spawn, "
            f"{args.deployments} deployments open; RSS {rss_mb(daemon.pid):.0f} MB"
        )
        print(
            f"live: {rate:,.0f} metric messages/s for {args.duration:g} s (event time "
            f"x{load.speed:.2f}: a tick every {args.step} event s, a judgement every "
            f"{args.interval} event s per deployment = "
            f"{args.deployments * load.speed / args.interval:.0f}/s), "
            f"warm-up {args.warmup:g} s, {bursts} critical bursts"
        )
        tasks.append(
            asyncio.create_task(
                read_verdicts(
                    broker.bootstrap,
                    topics.verdicts,
                    args.partitions,
                    state,
                    args.step,
                    args.interval,
                    fetch_wait_ms,
                )
            )
        )
        tasks.append(
            asyncio.create_task(
                probe(
                    broker.bootstrap,
                    probe_topic,
                    stop_probe,
                    loaded,
                    loaded_acks,
                    fetch_wait_ms=fetch_wait_ms,
                )
            )
        )
        cpu0 = proc_cpu(daemon.pid)
        broker_cpu0, load_cpu0 = proc_cpu(broker.pid), time.process_time()
        machine0 = machine_busy()
        cpu_from = time.monotonic()
        run = asyncio.create_task(load.run(args.duration))
        await asyncio.sleep(args.warmup)
        warm = await daemon.scrape()
        warm_at = time.monotonic()
        warm_produced = state.produced
        await run
        ended = time.monotonic()
        produced = state.produced - warm_produced
        stop_probe.set()
        await asyncio.sleep(3.0)  # verdicts of the last deciding messages
        end = await daemon.scrape()
        cpu = proc_cpu(daemon.pid) - cpu0
        broker_cpu = proc_cpu(broker.pid) - broker_cpu0
        load_cpu = time.process_time() - load_cpu0
        machine = machine_busy() - machine0
        span = time.monotonic() - cpu_from
        rss = rss_mb(daemon.pid)
    finally:
        stop_probe.set()
        for task in tasks:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if load.producer is not None:
            await load.producer.stop()
        code = await daemon.stop()

    name = "coalmine_verdict_lag_seconds"
    inside = _delta(buckets(end, name), buckets(warm, name))
    inside_q = _quantiles(inside)
    count = inside[-1][1] if inside else 0
    window = [o for o in state.observed if warm_at <= o.acked_at <= ended]
    interval_lat = [o.latency for o in window if o.kind == "interval"]
    critical = [o for o in state.observed if o.kind == "critical"]
    outside = [o.latency for o in window]
    produced_rate = produced / (ended - warm_at)
    print(
        f"\nproduced {produced_rate:,.0f} metric messages/s after the warm-up (asked {rate:,.0f})"
    )
    print(
        f"daemon: {cpu / span:.0%} of a core, RSS {rss:.0f} MB; exit {code} on SIGTERM; "
        f"log: {daemon.describe_problems()}"
    )
    print(
        f"broker ({args.broker}): {broker_cpu / span:.0%} of a core; load and measuring (this "
        f"process): {load_cpu / span:.0%}"
    )
    others = max(0.0, machine - cpu - broker_cpu - load_cpu)
    print(
        f"machine: {machine / span:.0%} of a core busy in all ({os.cpu_count()} cores); other "
        f"work, outside this benchmark: {others / span:.0%}"
    )
    print(
        f"verdicts read: {state.verdicts:,}, matched to their deciding message: "
        f"{len(state.observed):,} ({len(window):,} after the warm-up), unmatched {state.unmatched}"
    )
    invalid = total(end, "coalmine_invalid_events_total")
    prefix = "coalmine_dropped_samples_total{reason="
    dropped = {k[len(prefix) : -1]: v for k, v in end.items() if k.startswith(prefix) and v}
    if dropped or invalid:
        print(
            f"  dropped samples {dropped or 0} (no_open_deployment: sent to a rolled-back "
            f"deployment before the load saw its verdict: expected), "
            f"{invalid or 0:.0f} dead letters"
        )

    def show(label: str, values: list[float]) -> None:
        print(
            f"  {label:<44} n={len(values):>6,}  p50 {_ms(percentile(values, 0.5)):>7} ms  "
            f"p99 {_ms(percentile(values, 0.99)):>7} ms  "
            f"max {_ms(max(values, default=math.nan)):>7} ms"
        )

    print("\nverdict latency after the warm-up")
    for label, q in inside_q.items():
        text = (
            "n/a" if q is None else f"{q[0] * 1e3:.1f} ms (bucket {q[1] * 1e3:g}-{q[2] * 1e3:g} ms)"
        )
        print(f"  inside (coalmine_verdict_lag_seconds, n={count:,.0f}) {label}: {text}")
    for part, metric in (
        ("judging a fetch", "coalmine_analysis_duration_seconds"),
        ("one publish round trip", "coalmine_publish_duration_seconds"),
    ):
        counts = _delta(buckets(end, metric), buckets(warm, metric))
        parts = _quantiles(counts)
        print(
            f"    of which {part} ({metric}, n={counts[-1][1] if counts else 0:,.0f}): "
            + ", ".join(
                f"{label} {'n/a' if q is None else f'{q[0] * 1e3:.1f} ms'}"
                for label, q in parts.items()
            )
        )
    show("outside: deciding message acked -> verdict", outside)
    show("  of which interval judgements", interval_lat)
    show("outside: deciding message sent -> verdict", [o.since_send for o in window])
    show("baseline: bare produce -> consume, idle", idle)
    show("baseline: bare produce -> consume, loaded", loaded)
    show("baseline: bare produce -> broker ack, loaded", loaded_acks)
    show("critical rollbacks: deciding message -> verdict", [o.latency for o in critical])
    if window:
        width = max(1.0, (ended - warm_at) / 10)
        slices = [
            [o.latency for o in window if lo <= o.acked_at - warm_at < lo + width]
            for lo in np.arange(0.0, ended - warm_at, width)
        ]
        print(
            f"  outside p50/p99 ms per {width:.1f} s since the warm-up: "
            + "  ".join(
                f"{_ms(percentile(v, 0.5))}/{_ms(percentile(v, 0.99))}" for v in slices if v
            )
        )
    for dep, (received, when, next_due) in sorted(state.rollbacks.items()):
        index, at = state.burst_first[dep]
        first = state.ticks[tick_key(index, at)].critical_acked
        burst = state.canaries[dep].burst_from
        print(
            f"    {dep}: rollback {_ms(received - first)} ms of wall time after the first "
            f"bursting message was acked; event time {when - burst:+.0f} s from the burst; "
            f"{next_due - when:.0f} event s before its next interval judgement"
        )
    missing = bursts - len(state.rollbacks)
    if missing:
        print(f"  WARNING: {missing} critical deployment(s) not rolled back")
    p99_out = percentile(outside, 0.99)
    p99_in = inside_q["p99"][0] if inside_q["p99"] else math.nan
    p99_base = percentile(loaded, 0.99)
    ratio = p99_out / p99_base if p99_base > 0 else math.nan
    met = p99_in <= TARGET_P99
    print(
        f"\np99: inside {_ms(p99_in)} ms, outside {_ms(p99_out)} ms; bare round trip "
        f"{_ms(p99_base)} ms (loaded); ratio outside / bare {ratio:.1f}"
    )
    return {
        "rate": rate,
        "produced_rate": produced_rate,
        "inside_p50": inside_q["p50"][0] if inside_q["p50"] else None,
        "inside_p99": p99_in,
        "outside_p50": percentile(outside, 0.5),
        "outside_p99": p99_out,
        "baseline_p50": percentile(loaded, 0.5),
        "baseline_p99": p99_base,
        "baseline_ack_p99": percentile(loaded_acks, 0.99),
        "baseline_idle_p99": percentile(idle, 0.99),
        "critical_p99": percentile([o.latency for o in critical], 0.99),
        "critical_rolled_back": len(state.rollbacks),
        "critical": bursts,
        "verdicts": len(window),
        "daemon_cpu": cpu / span,
        "broker_cpu": broker_cpu / span,
        "other_cpu": others / span,
        "target_p99": TARGET_P99,
        "met": met,
        "met_end_to_end": p99_out <= TARGET_P99,
    }


async def main_async(args) -> None:
    print(f"coalmine verdict latency, {os.cpu_count()} CPU(s), python {sys.version.split()[0]}")
    workdir = Path(tempfile.mkdtemp(prefix="coalmine-latency-"))
    print(f"broker: {describe(args.broker)}; daemon logs in {workdir}\n")
    async with start_broker(args.broker) as broker:
        maximum = None
        if args.rate is None:
            maximum = await max_rate(broker, args, workdir)
            rate = maximum / 2
        else:
            rate = args.rate
        figures = await live(broker, args, workdir, rate)
        met = "met" if figures["met"] else "NOT met"
        end_to_end = "met" if figures["met_end_to_end"] else "NOT met"
        print(
            f"target, p99 <= {TARGET_P99 * 1e3:g} ms from the receipt of the deciding "
            f"message to the broker's ack of its verdict (inside): {met}; end to end (the "
            f"broker delivering both ways, outside): {end_to_end}"
        )
        if args.echo:
            print(
                "\n== the same load against echo_daemon.py (reads, notices due judgements, "
                "publishes; no analysis): the floor on this machine and broker"
            )
            floor = await live(broker, args, workdir, rate, echo=True)
            figures["echo"] = {
                key: floor[key]
                for key in ("outside_p50", "outside_p99", "baseline_p50", "baseline_p99")
            }
            print(
                f"\nend to end p99: coalmine {_ms(figures['outside_p99'])} ms, echo daemon "
                f"{_ms(floor['outside_p99'])} ms under the same load "
                f"(ratio {figures['outside_p99'] / floor['outside_p99']:.1f})"
            )
    figures["max_rate"] = maximum
    figures["broker"] = args.broker
    write_json(args.json, figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="metric messages/s (default: half the measured max)",
    )
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of live load")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--critical", type=int, default=100, help="deployments with an error burst")
    parser.add_argument("--step", type=int, default=10, help="event seconds between ticks")
    parser.add_argument("--interval", type=int, default=60, help="judgement interval, event s")
    parser.add_argument("--samples-per-message", type=int, default=20)
    parser.add_argument(
        "--instances",
        type=int,
        default=10,
        help="instances per cohort, each sending its own messages every step",
    )
    parser.add_argument(
        "--error-ratio",
        type=float,
        default=0.001,
        help="share of failed requests in both cohorts (the canary repeats the baseline's)",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=6.0,
        help="event minutes drained to find the max (about what the live run covers)",
    )
    parser.add_argument("--probe-seconds", type=float, default=5.0, help="idle baseline length")
    parser.add_argument(
        "--no-echo",
        dest="echo",
        action="store_false",
        help="skip the second live run against echo_daemon.py",
    )
    parser.add_argument(
        "--max-poll-records",
        type=int,
        default=2000,
        help="[kafka] max_poll_records of the live daemon (default: coalmine's default)",
    )
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=None,
        help="[kafka] fetch_max_wait of the daemons (default: coalmine's 100 ms on Apache "
        "Kafka, 10 ms on tansu, which holds a fetch for all of it)",
    )
    parser.add_argument(
        "--fetch-min-bytes",
        type=int,
        default=None,
        help="[kafka] fetch_min_bytes of the live daemons (default: coalmine's, 1)",
    )
    add_broker_option(parser)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the figures here (for run_all.py)")
    args = parser.parse_args()
    if args.interval % args.step:
        parser.error("--interval must be a multiple of --step")
    if args.duration <= args.warmup:
        parser.error("--duration must exceed --warmup")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
