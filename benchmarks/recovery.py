"""Recovery time: a daemon killed with SIGKILL, a new one rebuilding 1000 open deployments.

Run from the repository root: ``python benchmarks/recovery.py [--deployments 1000]
[--minutes 5] [--session-timeout 10] [--json PATH]``.

1. **The log.** On a private broker (``--broker``: Apache Kafka, ``support/kafka_broker.py``,
   by default; or tansu, ``support/brokers.py``): ``started`` events for
   ``--deployments`` deployments, then ``--minutes`` of event time of their metrics (every
   ``--step`` event seconds, per deployment, ``latency_ms`` samples and ``requests`` counts
   of both cohorts: ``harness/workload.py``, as in ``verdict_latency.py``; the canary
   repeats the baseline, ``min_duration = max_duration = 1h``, so every deployment stays
   open).
2. **The first daemon** (a subprocess, ``python -m coalmine run``) takes all of it,
   publishes its interim verdicts and commits its offsets, held back to the recovery floors
   (the ``started`` record of each open deployment and the first metric record it may
   have used). Once it has handled every record and its committed offsets stop moving, it
   is killed with **SIGKILL**.
3. **The second daemon**, same configuration and consumer group, is spawned; ``/metrics``
   is scraped every 50 ms. Times from the spawn: HTTP up (imports done), the first record
   handled (group joined), ``coalmine_active_deployments`` reaching the count, every record
   between the committed offsets and the end handled (``coalmine_events_consumed_total``),
   and ``coalmine_consumer_lag`` reported 0 (the gauge is updated once a second). The
   figure is the time to the last of "every record handled" and "all open".
4. **Baseline**: a bare ``AIOKafkaConsumer`` in a fresh Python subprocess reads the same
   records from the same offsets (the verdict topic from its beginning, as the daemon
   reads it into its ledger; the deployments and metrics topics from the committed
   offsets) up to the fetch high watermark, and exits; spawn to exit, and its own time
   after its imports.

The target: rebuilt in under 30 s. Ends are taken from the producer's acks and the
fetch high watermark, as tansu's ListOffsets(latest) answers the last batch's base offset + 1
(on Apache Kafka both agree).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.broker import add_broker_option, describe, start_broker
from benchmarks.harness.daemon import (
    ROOT,
    DaemonProcess,
    bench_profile,
    daemon_broker_options,
    daemon_config,
)
from benchmarks.harness.measure import total, write_json
from benchmarks.harness.procfs import rss_mb
from benchmarks.harness.topics import Topics, create_topics
from benchmarks.harness.workload import fill, fleet
from support.brokers import free_port

TARGET_SECONDS = 30.0

BARE = """\
import asyncio, json, sys, time
began = time.monotonic()
from aiokafka import AIOKafkaConsumer, TopicPartition

async def main(spec):
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"], group_id=None, enable_auto_commit=False,
        max_partition_fetch_bytes=1048576,
    )
    await consumer.start()
    start = time.monotonic()
    try:
        # hi None: up to the fetch high watermark (tansu's ListOffsets answers short).
        ranges = {
            TopicPartition(t, p): (lo, hi)
            for t, p, lo, hi in spec["ranges"]
            if hi is None or hi > lo
        }
        consumer.assign(list(ranges))
        for tp, (lo, _) in ranges.items():
            consumer.seek(tp, lo)

        def end(tp):
            high = consumer.highwater(tp)
            hi = ranges[tp][1]
            return high if hi is None else max(hi, high or 0)

        remaining, records, size = set(ranges), 0, 0
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=2000)
            for tp, messages in batches.items():
                last = end(tp)
                for message in messages:
                    if message.offset < last:
                        records += 1
                        size += len(message.value)
            for tp in list(remaining):
                last = end(tp)
                if last is not None and await consumer.position(tp) >= last:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    print(json.dumps({"imports": start - began, "read": time.monotonic() - start,
                      "records": records, "bytes": size}))

asyncio.run(main(json.loads(sys.argv[1])))
"""


async def committed_offsets(bootstrap: str, group: str, tps: list[TopicPartition]) -> dict:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        answer = await admin.list_consumer_group_offsets(group, partitions=tps)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in answer.items() if meta}


async def settle(daemon: DaemonProcess, bootstrap: str, group: str, tps, expected: int) -> dict:
    """Wait until the daemon handled ``expected`` input records and its commits stand still."""
    await daemon.wait_for(
        lambda m: (total(m, "coalmine_events_consumed_total") or 0) >= expected,
        "the first daemon to take the log",
        900,
        0.5,
    )
    previous: dict | None = None
    while True:
        await asyncio.sleep(2.0)  # commits follow each batch; the floors hold them back
        offsets = await committed_offsets(bootstrap, group, tps)
        if offsets == previous and len(offsets) == len(tps):
            return offsets
        previous = offsets


async def bare_read(bootstrap: str, ranges: list[tuple[str, int, int, int]]) -> dict:
    spec = orjson.dumps({"bootstrap": bootstrap, "ranges": ranges}).decode()
    began = time.monotonic()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", BARE, spec],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - began
    return orjson.loads(result.stdout) | {"wall": wall}


async def watch(daemon: DaemonProcess, args, reread: int, topics: Topics) -> tuple[dict, dict]:
    """Scrape every 50 ms from the spawn; times (s since spawn) of each milestone."""
    marks: dict[str, float] = {}
    last: dict[str, float] = {}
    deadline = daemon.spawned + args.timeout
    inputs = (topics.deployments, topics.metrics)
    while time.monotonic() < deadline:
        metrics = await daemon.scrape()
        now = time.monotonic() - daemon.spawned
        if not daemon.alive():
            raise SystemExit(f"the second daemon died:\n{daemon.log_tail()}")
        if metrics:
            last = metrics
            marks.setdefault("http up", now)
            consumed = sum(
                metrics.get(f"coalmine_events_consumed_total{{topic={t}}}", 0) for t in inputs
            )
            if consumed > 0:
                marks.setdefault("first record handled", now)
            if total(metrics, "coalmine_active_deployments") == args.deployments:
                marks.setdefault(f"{args.deployments} open", now)
            if consumed >= reread:
                marks.setdefault("every record re-read", now)
            lags = [metrics.get(f"coalmine_consumer_lag{{topic={t}}}") for t in inputs]
            if "every record re-read" in marks and all(lag == 0 for lag in lags):
                marks.setdefault("lag gauge 0", now)
        if {"every record re-read", f"{args.deployments} open", "lag gauge 0"} <= set(marks):
            break
        await asyncio.sleep(0.05)
    return marks, last


async def run(args) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="coalmine-recovery-"))
    topics = Topics.fresh("rec")
    group = f"coalmine-recovery-{uuid.uuid4().hex[:6]}"
    async with start_broker(args.broker) as broker:
        bootstrap = broker.bootstrap
        await create_topics(bootstrap, topics.layout(args.partitions))
        canaries = fleet(args.deployments, args.interval, args.step, args.seed)
        ends: dict[tuple[str, int], int] = {}
        begun = time.monotonic()
        messages = await fill(bootstrap, topics, canaries, args, args.minutes, ends)
        print(
            f"log: {args.deployments} started events and {messages:,} metric messages "
            f"({args.minutes:g} event min per deployment, {args.samples_per_message} samples "
            f"per latency message) produced in {time.monotonic() - begun:.1f} s"
        )
        port = free_port()
        config = daemon_config(
            bootstrap,
            topics,
            port,
            bench_profile(args.interval, 3600),
            group=group,
            session_timeout=args.session_timeout,
            group_instance_id="coalmine-recovery" if args.static_membership else None,
            **daemon_broker_options(args.broker),
        )
        first = DaemonProcess(workdir, "first", config, port)
        first.spawn()
        tps = [
            TopicPartition(topic, p)
            for topic in (topics.deployments, topics.metrics)
            for p in range(args.partitions)
        ]
        try:
            await first.wait_ready()
            began = time.monotonic()
            committed = await settle(first, bootstrap, group, tps, args.deployments + messages)
            verdicts = total(await first.scrape(), "coalmine_verdicts_total") or 0
            print(
                f"first daemon took the log in {time.monotonic() - began:.1f} s (to settled "
                f"commits), published {verdicts:,.0f} verdicts; RSS {rss_mb(first.pid):.0f} MB"
            )
        finally:
            first.kill()
            await first.stop()
        print("first daemon killed with SIGKILL")
        reread_by = {key: ends.get(key, 0) - committed.get(key, 0) for key in ends}
        reread = sum(reread_by.values())
        print(
            "committed offsets (floors) / ends: "
            + ", ".join(
                f"{t.split('.')[-1]}/{p} {committed.get((t, p), 0):,}/{ends.get((t, p), 0):,}"
                for t, p in sorted(ends)
            )
        )
        # The verdict topic's end: read it the way the daemon does (high watermark).
        verdict_ranges = [(topics.verdicts, p, 0, None) for p in range(args.partitions)]

        second = DaemonProcess(workdir, "second", config, port)
        second.spawn()
        try:
            marks, metrics = await watch(second, args, reread, topics)
            rss = rss_mb(second.pid)
        finally:
            code = await second.stop()
        ranges = [(t, p, committed.get((t, p), 0), end) for (t, p), end in ends.items()]
        bare = await bare_read(bootstrap, ranges + verdict_ranges)
    return report(args, marks, metrics, reread, bare, (rss, code, second)) | {"broker": args.broker}


def report(args, marks, metrics, reread, bare, second: tuple) -> dict:
    rss, code, daemon = second
    print(f"\nsecond daemon, from its spawn ({reread:,} input records to re-read):")
    for name, at in sorted(marks.items(), key=lambda kv: kv[1]):
        print(f"  {at:7.2f} s  {name}")
    recovered = total(metrics, "coalmine_recovered_deployments_total") or 0
    suppressed = total(metrics, "coalmine_verdicts_suppressed_total") or 0
    published = total(metrics, "coalmine_verdicts_total") or 0
    print(
        f"  coalmine_recovered_deployments_total {recovered:,.0f}, verdicts suppressed "
        f"{suppressed:,.0f} (already published), published anew {published:,.0f}; RSS "
        f"{rss:.0f} MB; exit {code} on SIGTERM; log: {daemon.describe_problems()}"
    )
    needed = ("every record re-read", f"{args.deployments} open")
    rebuilt = max(marks[m] for m in needed) if all(m in marks for m in needed) else math.inf
    startup = marks.get("first record handled", math.nan)
    print(
        f"\nbaseline, bare AIOKafkaConsumer subprocess: {bare['records']:,} records "
        f"({bare['bytes'] / 2**20:.1f} MB) from the same offsets, spawn to exit "
        f"{bare['wall']:.2f} s (imports {bare['imports']:.2f} s, reading {bare['read']:.2f} s)"
    )
    if recovered != args.deployments:
        why = (
            "; tansu answers that with the last batch's base offset + 1"
            if args.broker == "tansu"
            else ""
        )
        print(
            f"  NOTE: coalmine_recovered_deployments_total says {recovered:,.0f}, not "
            f"{args.deployments}: the daemon counts a deployment as rebuilt when its started "
            f"record lies before the partition's end offset at assignment, which it takes from "
            f"ListOffsets{why}"
        )
    ratio = rebuilt / bare["wall"]
    reading = rebuilt - startup
    ratio_reading = reading / bare["read"]
    print(
        f"rebuilt in {rebuilt:.2f} s from the spawn (first record handled at {startup:.2f} s: "
        f"imports, connect, group join; then {reading:.2f} s of re-reading); ratio to the "
        f"bare read {ratio:.1f} spawn to done, {ratio_reading:.1f} reading alone"
    )
    met = rebuilt < TARGET_SECONDS
    print(f"target: < {TARGET_SECONDS:g} s: {'met' if met else 'NOT met'}")
    return {
        "rebuilt": rebuilt,
        "startup": startup,
        "bare": bare["wall"],
        "bare_read": bare["read"],
        "ratio": ratio,
        "reading": reading,
        "ratio_reading": ratio_reading,
        "recovered": recovered,
        "reread": reread,
        "target": TARGET_SECONDS,
        "met": met,
        "marks": marks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=5.0, help="event minutes of metrics")
    parser.add_argument("--step", type=int, default=10, help="event seconds between ticks")
    parser.add_argument("--interval", type=int, default=60, help="judgement interval, event s")
    parser.add_argument("--samples-per-message", type=int, default=20)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        help="[kafka] session_timeout of both daemons, s (coalmine's default: 10)",
    )
    parser.add_argument(
        "--static-membership",
        action="store_true",
        help="both daemons set the same [kafka] group_instance_id (a restarted pod)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on the rebuild")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the figures here (for run_all.py)")
    add_broker_option(parser)
    args = parser.parse_args()
    print(f"coalmine recovery, {os.cpu_count()} CPU(s), python {sys.version.split()[0]}")
    print(f"broker: {describe(args.broker)}\n")
    write_json(args.json, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
