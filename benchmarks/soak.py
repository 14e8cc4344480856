"""Soak: the daemon under steady load for minutes; its memory, lag and throughput over time.

Run from the repository root: ``python benchmarks/soak.py [--broker kafka|tansu]
[--duration 600] [--deployments-open 200] [--rate N] [--png PATH]``.

A private broker (``--broker``: one Apache Kafka node, ``support/kafka_broker.py``, by
default; or tansu, ``support/brokers.py``; ``harness/broker.py``) gets the four topics
(deployments and metrics with the same partition count), and the daemon runs as a
**subprocess** (``python -m coalmine run --config ...``; on tansu with
``idempotent_producer = false``), so its resident memory is its own. On both brokers the
daemon fetches with coalmine's default ``fetch_max_wait`` of 100 ms (``--fetch-max-wait-ms``).
The broker's RSS and CPU are sampled beside the daemon's (the JVM on Kafka). This process
is the load: an ``AIOKafkaProducer`` keyed by service plays deployment pipelines and
services for ``--duration`` seconds of wall time, on an event clock running ``--speed``
times faster than the wall clock:

* about ``--deployments-open`` deployments are open at any time. Each one gets a
  ``started`` event, then every ``step`` seconds of event time four metric messages (the
  ``latency_ms`` samples of each cohort, ``values`` with ``--samples-per-message`` numbers,
  and the ``requests`` good/total counts of each cohort). Most canaries are healthy; some
  are slower (+30% latency) or fail more (3% errors on the critical ratio metric).
* a deployment ends like a pipeline ends it: on its **final verdict** (the load reads the
  verdict topic and stops feeding a deployment whose final verdict it sees), or at its
  planned end (1.5-7 minutes of event time) with a ``completed`` event, after which the
  service keeps reporting its new version for ``--tail-ticks`` steps (the baseline is gone).
  Each ending starts a new deployment on a free service, so the open count stays level.
* ``step`` follows from ``--rate``: ``4 x open / rate`` seconds of wall time.

Every ``--sample-every`` seconds it records the daemon's RSS (``/proc/<pid>/status``), its
CPU, its threads and file descriptors; the consumer lag the daemon reports
(``coalmine_consumer_lag``: log end minus its fetch position) and the messages it consumed
(``coalmine_events_consumed_total``); the recovery window (log end minus the group's
committed offsets, which the daemon holds back to what its open deployments need); messages produced
(acknowledged); verdicts seen on the verdict topic; the daemon's open deployments
(``coalmine_active_deployments`` from its ``/metrics``); and how busy the machine was.
After the load stops it waits up to ``--drain`` seconds for the lag to reach zero, reads
the daemon's counters once more, sends it SIGTERM and stops the broker.

It prints a table (a row every ~30 s) and a summary (RSS start / peak / end and its slope
over the second half, lag, rates, the consumed / produced ratio) and writes a PNG of RSS
and lag over time (``--png``; ``benchmarks/results/soak_kafka.png`` on Kafka,
``benchmarks/results/soak.png`` on tansu) and every sample as CSV next to it (same name,
``.csv``).
``--daemon-src`` runs the daemon from another source tree (a ``git archive`` of a commit).
Exit status 1 if the daemon died (exited before it was told to, or not with 0 on SIGTERM),
else 0, whatever the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.broker import (
    DAEMON_FETCH_WAIT_MS,
    BrokerKind,
    add_broker_option,
    describe,
    idempotent_producer,
    start_broker,
)
from benchmarks.harness.daemon import (
    READY_TIMEOUT,
    ROOT,
    STOP_TIMEOUT,
    bench_profile,
    daemon_config,
)
from benchmarks.harness.measure import parse_metrics
from benchmarks.harness.procfs import (
    child_pid,
    machine_cpu,
    proc_cpu,
    proc_fds,
    proc_status,
    rss_mb,
)
from benchmarks.harness.soak_load import INTERVAL, MAX_DURATION, MIN_DURATION, Load, Stats
from benchmarks.harness.topics import Topics, create_topics
from support.brokers import free_port

TABLE_EVERY = 30.0
"""Seconds between two rows of the table printed while it runs."""


# -- the verdicts, as the load's pipelines read them -------------------------------------------


async def count_verdicts(bootstrap: str, topic: str, stats: Stats) -> None:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    verdict = orjson.loads(message.value)
                    stats.verdicts += 1
                    stats.verdict_decisions[verdict["decision"]] += 1
                    if verdict.get("final"):
                        stats.finals.add(verdict["deployment_id"])
    finally:
        await consumer.stop()


# -- sampling -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    rss: float
    lag: int | None
    produced: int
    consumed: int | None
    held: int | None
    verdicts: int
    open_daemon: int | None
    open_load: int
    daemon_cpu: float
    broker_cpu: float
    bench_cpu: float
    machine: tuple[float, float]
    broker_rss: float
    threads: int
    fds: int
    loading: bool


class Sampler:
    def __init__(
        self, bootstrap: str, group: str, topics: Topics, partitions: int, http_port: int
    ) -> None:
        self.bootstrap = bootstrap
        self.group = group
        self.partitions = [
            TopicPartition(topic, p)
            for topic in (topics.deployments, topics.metrics)
            for p in range(partitions)
        ]
        self.url = f"http://127.0.0.1:{http_port}"
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.ends = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    async def start(self) -> None:
        await self.admin.start()
        await self.ends.start()

    async def close(self) -> None:
        await self.http.close()
        await self.ends.stop()
        await self.admin.close()

    async def offsets(self, acked: dict[tuple[str, int], int]) -> tuple[int, int] | None:
        """(end offsets, committed offsets) summed over the daemon's input partitions.

        The end of a partition is the larger of the broker's answer and the highest offset
        the broker acknowledged to the load + 1: tansu 0.6 answers ListOffsets(latest) with
        the base offset of the last batch + 1, not the high watermark, which would hide up
        to a batch of lag per partition (and show a negative lag once the daemon caught up).
        """
        try:
            ends = await self.ends.end_offsets(self.partitions)
            committed = await self.admin.list_consumer_group_offsets(
                self.group, partitions=self.partitions
            )
        except Exception as exc:  # noqa: BLE001 - a missed sample, not a failed run
            print(f"  (offsets not read: {exc!r})")
            return None
        total_end = total_committed = 0
        for tp in self.partitions:
            end = max(ends.get(tp, 0), acked.get((tp.topic, tp.partition), 0))
            meta = committed.get(tp)
            total_end += end
            total_committed += min(end, max(0, meta.offset)) if meta is not None else 0
        return total_end, total_committed

    async def scrape(self) -> dict[str, float]:
        """The daemon's metrics, ``name{label=value,...}`` -> value; empty if unreachable."""
        try:
            async with self.http.get(self.url + "/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        return parse_metrics(text)

    async def ready(self) -> bool:
        try:
            async with self.http.get(self.url + "/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


# -- the run --------------------------------------------------------------------------------


def write_config(
    path: Path,
    bootstrap: str,
    group: str,
    topics: Topics,
    http_port: int,
    fetch_max_wait_ms: int,
    broker: BrokerKind,
) -> None:
    path.write_text(
        daemon_config(
            bootstrap,
            topics,
            http_port,
            bench_profile(INTERVAL, MIN_DURATION, MAX_DURATION),
            group=group,
            session_timeout=10.0,
            client_id="coalmine-soak",
            fetch_max_wait_ms=fetch_max_wait_ms,
            idempotent_producer=idempotent_producer(broker),
        )
    )


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(text[-lines:]) or "(empty)"


async def soak(args: argparse.Namespace) -> int:
    tag = uuid.uuid4().hex[:6]
    topics = Topics(
        f"soak.{tag}.deployments", f"soak.{tag}.metrics", f"soak.{tag}.verdicts", f"soak.{tag}.dlq"
    )
    group = f"coalmine-soak-{tag}"
    http_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="coalmine-soak-"))
    source = args.daemon_src.resolve()
    where = subprocess.run(
        [sys.executable, "-c", "import coalmine; print(coalmine.__file__)"],
        cwd=source,
        env=os.environ | {"PYTHONPATH": str(source)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"daemon code: {Path(where).parent} (python {sys.version.split()[0]})")
    config = workdir / "coalmine.toml"
    daemon_log = workdir / "daemon.log"
    stats = Stats()
    samples: list[Sample] = []
    died: str | None = None
    final_metrics: dict[str, float] = {}
    drained_after: float | None = None

    print(f"broker: {describe(args.broker)}")
    async with start_broker(args.broker) as broker:
        bootstrap = broker.bootstrap
        await create_topics(
            bootstrap,
            {
                topics.deployments: args.partitions,
                topics.metrics: args.partitions,
                topics.verdicts: args.partitions,
                topics.dead_letter: 1,
            },
        )
        write_config(
            config, bootstrap, group, topics, http_port, args.fetch_max_wait_ms, args.broker
        )
        with daemon_log.open("wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "coalmine", "run", "--config", str(config)],
                cwd=source,
                env=os.environ | {"PYTHONPATH": str(source)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # The JVM is ApacheKafka's own process; tansu runs as a child of this one.
        broker_pid = broker.pid if args.broker == "kafka" else child_pid("tansu")
        sampler = Sampler(bootstrap, group, topics, args.partitions, http_port)
        await sampler.start()
        verdict_task = asyncio.create_task(count_verdicts(bootstrap, topics.verdicts, stats))
        load_task: asyncio.Task[None] | None = None
        try:
            waited = time.monotonic()
            died = await wait_ready(daemon, sampler)
            idle_rss = rss_mb(daemon.pid)
            if died is None:
                print(
                    f"daemon pid {daemon.pid} ready after {time.monotonic() - waited:.1f} s, "
                    f"RSS {idle_rss:.1f} MB idle; load for {args.duration:g} s"
                )
                load = Load(args, topics, stats)
                print(
                    f"{args.deployments_open} deployments open, {args.rate:g} metric msgs/s, "
                    f"event time x{args.speed:g}, a tick every {load.step:g} event s "
                    f"({load.step / args.speed:g} wall s) per deployment, "
                    f"{args.samples_per_message} samples per latency message, daemon "
                    f"fetch_max_wait {args.fetch_max_wait_ms} ms\n"
                )
                load_task = asyncio.create_task(load.run(bootstrap, args.duration))
                died, drained_after = await observe(
                    args, daemon, broker_pid, sampler, stats, samples, load_task
                )
                if died is None:
                    final_metrics = await sampler.scrape()
        finally:
            for task in (load_task, verdict_task):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await sampler.close()
            stopped = await stop(daemon)
            died = died or stopped
    report(args, samples, stats, final_metrics, idle_rss, drained_after, daemon_log)
    if samples:
        plot(args, samples, stats.load_end_t)
    if died is not None:
        print(f"\nDAEMON DIED: {died}; its log ({daemon_log}) ends:\n{tail(daemon_log)}")
        return 1
    return 0


async def wait_ready(daemon: subprocess.Popen[bytes], sampler: Sampler) -> str | None:
    """None once ``/readyz`` says ready, else why not."""
    waited = time.monotonic()
    while not await sampler.ready():
        if daemon.poll() is not None:
            return f"exited with {daemon.returncode} before it was ready"
        if time.monotonic() - waited > READY_TIMEOUT:
            return f"not ready after {READY_TIMEOUT:g} s"
        await asyncio.sleep(0.2)
    return None


async def stop(daemon: subprocess.Popen[bytes]) -> str | None:
    """SIGTERM the daemon if it still runs; None if it then exits 0 in time."""
    if daemon.poll() is not None:
        return None  # already reported by whoever saw it go
    daemon.send_signal(signal.SIGTERM)
    stopping = time.monotonic()
    try:
        code = await asyncio.to_thread(daemon.wait, STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()
        return f"did not stop within {STOP_TIMEOUT:g} s of SIGTERM (killed)"
    print(f"daemon stopped on SIGTERM in {time.monotonic() - stopping:.1f} s, exit code {code}")
    return None if code == 0 else f"exited with {code} on SIGTERM"


async def observe(
    args: argparse.Namespace,
    daemon: subprocess.Popen[bytes],
    broker_pid: int | None,
    sampler: Sampler,
    stats: Stats,
    samples: list[Sample],
    load_task: asyncio.Task[None],
) -> tuple[str | None, float | None]:
    """Sample until the load is over and the lag drained (or ``--drain`` passed)."""
    began = time.monotonic()
    load_over: float | None = None
    next_row = 0.0
    print(
        f"{'t s':>5} {'RSS MB':>7} {'lag':>7} {'prod/s':>7} {'cons/s':>7} {'verd/s':>6} "
        f"{'open d':>6} {'open l':>6} {'d CPU':>6} {'box CPU':>7} {'thr':>4} {'fds':>4}"
    )
    while True:
        await asyncio.sleep(args.sample_every - (time.monotonic() - began) % args.sample_every)
        if daemon.poll() is not None:
            return f"exited with {daemon.returncode} during the run", None
        if load_task.done() and load_over is None:
            load_task.result()  # raise what stopped the load, if anything
            assert stats.load_finished is not None
            load_over = stats.load_end_t = stats.load_finished - began
        offsets = await sampler.offsets(dict(stats.ends))
        metrics = await sampler.scrape()
        status = proc_status(daemon.pid)
        active = metrics.get("coalmine_active_deployments")
        # Lag and consumption as the daemon reports them (fetch position vs the log end):
        # its committed offsets are held back on purpose to the oldest record its open
        # deployments still need (restart recovery), so end - committed is that window.
        lags = [v for k, v in metrics.items() if k.startswith("coalmine_consumer_lag{")]
        consumed = [
            v for k, v in metrics.items() if k.startswith("coalmine_events_consumed_total{")
        ]
        sample = Sample(
            t=time.monotonic() - began,
            rss=rss_mb(daemon.pid),
            lag=int(sum(lags)) if lags else None,
            produced=stats.produced,
            consumed=int(sum(consumed)) if consumed else None,
            held=None if offsets is None else offsets[0] - offsets[1],
            verdicts=stats.verdicts,
            open_daemon=None if active is None else int(active),
            open_load=stats.open_plans,
            daemon_cpu=proc_cpu(daemon.pid),
            broker_cpu=proc_cpu(broker_pid) if broker_pid else 0.0,
            bench_cpu=time.process_time(),
            machine=machine_cpu(),
            broker_rss=rss_mb(broker_pid) if broker_pid else 0.0,
            threads=int(status.get("Threads", "0")),
            fds=proc_fds(daemon.pid),
            loading=load_over is None,
        )
        samples.append(sample)
        if sample.t >= next_row or load_over is not None:
            print(row(samples, sample.t - TABLE_EVERY))
            next_row = sample.t + TABLE_EVERY - args.sample_every / 2
        if load_over is not None:
            since = sample.t - load_over
            if sample.lag == 0:
                return None, since
            if since >= args.drain:
                return None, None


def _at_or_before(samples: list[Sample], t: float) -> Sample:
    earlier = [s for s in samples if s.t <= t + 1e-9]
    return earlier[-1] if earlier else samples[0]


def row(samples: list[Sample], since: float) -> str:
    last = samples[-1]
    first = _at_or_before(samples, since) if len(samples) > 1 else last
    span = max(last.t - first.t, 1e-9)
    produced = (last.produced - first.produced) / span if first is not last else 0.0
    consumed = (
        (last.consumed - first.consumed) / span
        if first is not last and last.consumed is not None and first.consumed is not None
        else float("nan")
    )
    verdicts = (last.verdicts - first.verdicts) / span if first is not last else 0.0
    cpu = (last.daemon_cpu - first.daemon_cpu) / span if first is not last else 0.0
    busy = (last.machine[0] - first.machine[0]) / max(1, last.machine[1] - first.machine[1])
    lag = "?" if last.lag is None else f"{last.lag:,}"
    open_d = "?" if last.open_daemon is None else str(last.open_daemon)
    return (
        f"{last.t:>5.0f} {last.rss:>7.1f} {lag:>7} {produced:>7.0f} {consumed:>7.0f} "
        f"{verdicts:>6.1f} {open_d:>6} {last.open_load:>6} {cpu:>6.0%} {busy:>7.0%} "
        f"{last.threads:>4} {last.fds:>4}" + ("" if last.loading else "  (load over)")
    )


# -- reporting ------------------------------------------------------------------------------


def _metric(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith(prefix) and v}


def rss_slope(samples: list[Sample]) -> float:
    """MB/s of the daemon's RSS, least squares over the second half of the load."""
    loaded = [s for s in samples if s.loading] or samples
    half = [s for s in loaded if s.t >= loaded[-1].t / 2]
    if len(half) < 3:
        return float("nan")
    return float(np.polyfit([s.t for s in half], [s.rss for s in half], 1)[0])


def write_csv(path: Path, samples: list[Sample]) -> None:
    names = [f for f in Sample.__dataclass_fields__ if f != "machine"]
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*names, "machine_busy_jiffies", "machine_total_jiffies"])
        for sample in samples:
            writer.writerow([*(getattr(sample, n) for n in names), *sample.machine])
    print(f"samples: {path}")


def report(
    args: argparse.Namespace,
    samples: list[Sample],
    stats: Stats,
    metrics: dict[str, float],
    idle_rss: float,
    drained_after: float | None,
    daemon_log: Path,
) -> None:
    if not samples:
        print("no samples taken")
        return
    loaded = [s for s in samples if s.loading] or samples
    first, last_loaded, last = loaded[0], loaded[-1], samples[-1]
    span = last_loaded.t - first.t
    second_half = [s for s in loaded if s.t >= last_loaded.t / 2]
    slope = rss_slope(samples)
    whole = 0.0
    if len(loaded) >= 3:
        whole = float(np.polyfit([s.t for s in loaded], [s.rss for s in loaded], 1)[0])
    lags = [s.lag for s in loaded if s.lag is not None]
    helds = [s.held for s in loaded if s.held is not None]
    if helds:
        print(
            f"recovery window (log end - committed, re-read after a restart): max {max(helds):,},"
            f" mean {np.mean(helds):,.0f} messages"
        )
    peak = max(samples, key=lambda s: s.rss)
    print("\n== summary")
    print(
        f"daemon RSS MB: idle {idle_rss:.1f}, start {first.rss:.1f} (t={first.t:.0f} s), "
        f"peak {peak.rss:.1f} (t={peak.t:.0f} s), end of load {last_loaded.rss:.1f}, "
        f"last {last.rss:.1f}"
    )
    print(
        f"RSS slope: {slope * 600:+.1f} MB per 10 min over the second half of the load "
        f"(t >= {last_loaded.t / 2:.0f} s); {whole * 600:+.1f} MB per 10 min over all of it"
    )
    print(
        f"daemon threads {first.threads} -> {last.threads}, open fds {first.fds} -> {last.fds}; "
        f"{broker_rss_note(args.broker, first.broker_rss, last.broker_rss)}"
    )
    if lags:
        at_end = "?" if last_loaded.lag is None else f"{last_loaded.lag:,}"
        print(
            f"consumer lag (messages): max {max(lags):,}, mean {np.mean(lags):,.0f}, "
            f"at the end of the load {at_end}, last {last.lag if last.lag is not None else '?'}"
        )
    if drained_after is not None:
        print(
            f"lag was 0 {drained_after:.1f} s after the end of the load (at the first sample"
            f" showing it; samples every {args.sample_every:g} s)"
        )
    elif last.lag:
        print(f"lag did NOT reach 0 within --drain {args.drain:g} s of the end of the load")
    if span > 0:
        produced = (last_loaded.produced - first.produced) / span
        verdicts = (last_loaded.verdicts - first.verdicts) / span
        print(f"produced: {produced:,.0f} msgs/s ({last.produced:,} in all)")
        print(
            f"verdicts: {verdicts:,.1f}/s during the load ({stats.verdicts:,} in all: "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.verdict_decisions.items()))
            + ")"
        )
        if first.consumed is not None and last_loaded.consumed is not None:
            consumed = (last_loaded.consumed - first.consumed) / span
            print(
                f"consumed {consumed:,.0f} msgs/s: ratio consumed / produced "
                f"{consumed / produced:.3f} over the load"
            )
        halves = [s for s in second_half if s.consumed is not None]
        if len(halves) >= 2 and halves[-1].produced > halves[0].produced:
            assert halves[-1].consumed is not None
            assert halves[0].consumed is not None
            ratio = (halves[-1].consumed - halves[0].consumed) / (
                halves[-1].produced - halves[0].produced
            )
            print(f"  second half of the load: {ratio:.3f}")
        cpu = (last_loaded.daemon_cpu - first.daemon_cpu) / span
        broker = (last_loaded.broker_cpu - first.broker_cpu) / span
        bench = (last_loaded.bench_cpu - first.bench_cpu) / span
        busy = (last_loaded.machine[0] - first.machine[0]) / max(
            1, last_loaded.machine[1] - first.machine[1]
        )
        print(
            f"CPU (share of one core): daemon {cpu:.0%}, {broker_name(args.broker)} {broker:.0%}, "
            f"this load "
            f"{bench:.0%}; the machine ({os.cpu_count()} cores) was {busy:.0%} busy"
        )
    print(
        f"load: {stats.deployments_started:,} deployments started; ended by "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.ended.items()))
        + f"; {stats.produce_errors} produce errors"
    )
    opens = [s.open_daemon for s in loaded if s.open_daemon is not None]
    if opens:
        print(
            f"open deployments (daemon gauge): min {min(opens)}, max {max(opens)}, "
            f"last {opens[-1]}; the load had {last_loaded.open_load} in progress at the end"
        )
    report_daemon(metrics, daemon_log)


def broker_name(kind: BrokerKind) -> str:
    return "Kafka (JVM)" if kind == "kafka" else "tansu"


def broker_rss_note(kind: BrokerKind, first: float, last: float) -> str:
    """The broker's RSS from the first sample of the load to the last sample."""
    if kind == "kafka":
        return f"Kafka JVM RSS {first:.0f} -> {last:.0f} MB (256 MB heap, log on disk)"
    return f"tansu RSS {first:.0f} -> {last:.0f} MB (holds every message)"


def report_daemon(metrics: dict[str, float], daemon_log: Path) -> None:
    """The daemon's own counters of trouble (last scrape) and its log."""
    for prefix in (
        "coalmine_dropped_samples_total",
        "coalmine_ignored_events_total",
        "coalmine_invalid_events_total",
        "coalmine_ended_deployments_total",
        "coalmine_publish_failures_total",
    ):
        found = _metric(metrics, prefix)
        if found:
            print(
                f"{prefix}: " + ", ".join(f"{k[len(prefix) :]} {v:,.0f}" for k, v in found.items())
            )
    log_text = daemon_log.read_text(errors="replace") if daemon_log.exists() else ""
    warnings = sum(1 for line in log_text.splitlines() if " WARNING " in line)
    errors = sum(1 for line in log_text.splitlines() if " ERROR " in line)
    print(f"daemon log: {warnings} warning and {errors} error lines ({daemon_log})")
    if warnings or errors:
        print(tail(daemon_log, 10))


def plot(args: argparse.Namespace, samples: list[Sample], load_end: float | None) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - only needed here

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    t = [s.t for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 7))
    top.plot(t, [s.rss for s in samples], color="tab:blue", label="coalmine daemon RSS")
    top.set_ylabel("RSS (MB)")
    low, high = min(s.rss for s in samples), max(s.rss for s in samples)
    top.set_ylim(max(0.0, low - 20), high + 20)  # +-20 MB around it: the trend, to scale
    loaded = [s for s in samples if s.loading] or samples
    top.text(
        0.99,
        0.95,
        f"start {loaded[0].rss:.1f} MB, peak {high:.1f}, end {loaded[-1].rss:.1f}; "
        f"slope {rss_slope(samples) * 600:+.1f} MB / 10 min (second half)",
        transform=top.transAxes,
        ha="right",
        va="top",
    )
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    opens = [(s.t, s.open_daemon) for s in samples if s.open_daemon is not None]
    if opens:
        right = top.twinx()
        right.plot(*zip(*opens, strict=True), color="tab:gray", lw=0.8, label="open (daemon)")
        right.set_ylabel("open deployments")
        right.set_ylim(0, 2.2 * max(n for _, n in opens) + 1)  # below the RSS line
        right.legend(loc="lower right")
    lag = [(s.t, s.lag) for s in samples if s.lag is not None]
    if lag:
        bottom.plot(*zip(*lag, strict=True), color="tab:red", label="consumer lag")
    held = [(s.t, s.held) for s in samples if s.held is not None]
    if held:
        bottom.plot(
            *zip(*held, strict=True),
            color="tab:gray",
            linestyle=":",
            label="recovery window (end - committed)",
        )
    bottom.set_ylabel("lag (messages)")
    bottom.set_xlabel("wall time since the load started (s)")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper left")
    end = load_end
    for axis in (top, bottom):
        if end is not None:
            axis.axvline(end, color="k", ls="--", lw=0.8)
    fig.suptitle(
        f"coalmine soak on {broker_name(args.broker)}: {args.deployments_open} open "
        f"deployments, {args.rate:g} msgs/s, event time x{args.speed:g}, {args.duration:g} s "
        f"({os.cpu_count()} shared cores)"
    )
    fig.tight_layout()
    path = Path(args.png)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")
    write_csv(path.with_suffix(".csv"), samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--deployments-open", type=int, default=200)
    parser.add_argument(
        "--rate", type=float, default=800.0, help="metric messages per second (all deployments)"
    )
    parser.add_argument("--speed", type=float, default=10.0, help="event time / wall time")
    parser.add_argument("--samples-per-message", type=int, default=20)
    parser.add_argument(
        "--tail-ticks",
        type=int,
        default=2,
        help="steps a service keeps reporting its new version after 'completed'",
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=DAEMON_FETCH_WAIT_MS,
        help="[kafka] fetch_max_wait of the daemon on either broker (coalmine's default; "
        "tansu's in-memory log costs it CPU per fetch in proportion to the log, so shorter "
        "waits starve it)",
    )
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument(
        "--drain", type=float, default=60.0, help="seconds to wait for lag 0 after the load"
    )
    add_broker_option(parser)
    parser.add_argument(
        "--png",
        help="the plot; the CSV goes next to it (default: benchmarks/results/soak_kafka.png on "
        "Kafka, benchmarks/results/soak.png on tansu)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--daemon-src",
        type=Path,
        default=ROOT,
        help="run the daemon from this source tree (default: this repository), e.g. a "
        "`git archive` of a commit, to soak a fixed version while the tree is being edited",
    )
    args = parser.parse_args()
    if args.png is None:
        name = "soak_kafka.png" if args.broker == "kafka" else "soak.png"
        args.png = str(ROOT / "benchmarks" / "results" / name)
    if args.deployments_open < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--deployments-open, --rate and --duration must be positive")
    sys.exit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
