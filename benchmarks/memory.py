"""Memory: the daemon's RSS with 1000 open deployments holding 30 minutes of samples.

Run from the repository root: ``python benchmarks/memory.py [--deployments 1000]
[--metrics 4] [--minutes 30] [--samples-per-minute 50] [--skip-daemon] [--skip-trace]
[--json PATH]``.

The workload: ``--deployments`` deployments, each with ``--metrics`` distribution metrics
(``m0``, ``m1``, ...), two cohorts, and ``--samples-per-minute`` samples per metric and
cohort for every minute of ``--minutes`` of event time: one message per (deployment,
metric, cohort, minute) with that many ``values``, minute by minute across the fleet.
The canary repeats the baseline's numbers and the profile's ``min_duration =
max_duration = 1h``, so nothing is promoted or rolled back and every sample stays held
(``--interval``, default 10 min, sets how often they are judged). Event time runs as fast
as the daemon takes the messages.

1. **The daemon** (a subprocess, ``python -m coalmine run``, on a private tansu broker):
   its RSS (``/proc/<pid>/status``) idle once ready, with the deployments open and no
   samples, and after the last message was handled (``coalmine_events_consumed_total``
   reached the count, ``coalmine_consumer_lag`` 0), plus its peak (``VmHWM``).
2. **Python-side breakdown** (this process, ``tracemalloc``): the same messages through
   ``coalmine.daemon.router.Router.handle`` directly, no broker; traced memory held at the
   end, by coalmine source line, and the sample arrays themselves (their capacity against
   the samples they hold).

The baseline is the samples themselves: ``deployments x metrics x 2 x minutes x
samples-per-minute`` float64 values (8 bytes each). The target: RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import math
import os
import sys
import tempfile
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.daemon import DaemonProcess, daemon_config
from benchmarks.harness.measure import total, write_json
from benchmarks.harness.procfs import peak_mb, rss_mb
from benchmarks.harness.topics import Topics, create_topics
from benchmarks.harness.workload import T0
from coalmine.bus.base import Record
from coalmine.config.models import MetricSpec, Profile, TopicsSettings
from coalmine.contract import format_time
from coalmine.daemon.router import Router
from support.brokers import Tansu, free_port

TARGET_MB = 300.0
DURATION = 3600


def profile_toml(metrics: int, interval: float) -> str:
    lines = [
        "[profiles.default]",
        f'interval = "{interval:g}s"',
        f'min_duration = "{DURATION}s"',
        f'max_duration = "{DURATION}s"',
    ]
    for index in range(metrics):
        lines += [
            "",
            "[[profiles.default.metrics]]",
            f'name = "m{index}"',
            'kind = "distribution"',
            'direction = "increase"',
        ]
    return "\n".join(lines) + "\n"


def profile_model(metrics: int, interval: float) -> Profile:
    return Profile(
        interval=interval,
        min_duration=DURATION,
        max_duration=DURATION,
        metrics=tuple(MetricSpec(name=f"m{index}") for index in range(metrics)),
    )


def services(count: int) -> list[str]:
    return [f"svc-{index:05d}" for index in range(count)]


def started(service: str) -> bytes:
    return orjson.dumps(
        {
            "event": "started",
            "deployment_id": f"{service}-v2",
            "service": service,
            "time": format_time(T0),
            "baseline": {"version": "v1"},
            "canary": {"version": "v2"},
        }
    )


def messages(args):
    """(key, value) of every metric message, minute by minute across the fleet."""
    rng = np.random.default_rng(args.seed)
    pool = np.round(rng.lognormal(math.log(100.0), 0.5, 1 << 16), 1).tolist()
    at = 0
    names = services(args.deployments)
    for minute in range(args.minutes):
        stamp = format_time(T0 + 60 * minute + 30)
        for service in names:
            key = service.encode()
            for metric in range(args.metrics):
                if at + args.samples_per_minute > len(pool):
                    at = int(rng.integers(0, 64))
                values = pool[at : at + args.samples_per_minute]
                at += args.samples_per_minute
                for cohort in ("baseline", "canary"):
                    yield (
                        key,
                        orjson.dumps(
                            {
                                "service": service,
                                "cohort": cohort,
                                "metric": f"m{metric}",
                                "time": stamp,
                                "values": values,
                            }
                        ),
                    )


# -- 1. the daemon ---------------------------------------------------------------------------


async def daemon_rss(args, expected: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="coalmine-memory-"))
    topics = Topics.fresh("mem")
    async with Tansu() as broker:
        await create_topics(broker.bootstrap, topics.layout(args.partitions))
        port = free_port()
        config = daemon_config(
            broker.bootstrap, topics, port, profile_toml(args.metrics, args.interval)
        )
        daemon = DaemonProcess(workdir, "memory", config, port)
        daemon.spawn()
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024
        )
        try:
            await daemon.wait_ready()
            await asyncio.sleep(1.0)
            idle = rss_mb(daemon.pid)
            print(f"daemon pid {daemon.pid} ready; RSS idle {idle:.1f} MB")
            await producer.start()
            for service in services(args.deployments):
                await producer.send(topics.deployments, started(service), key=service.encode())
            await producer.flush()
            await daemon.wait_for(
                lambda m: total(m, "coalmine_active_deployments") == args.deployments,
                "the deployments to open",
                60,
            )
            opened = rss_mb(daemon.pid)
            print(f"{args.deployments} deployments open, no samples yet: RSS {opened:.1f} MB")
            began = time.monotonic()
            pending = []
            sent = 0
            for key, value in messages(args):
                pending.append(await producer.send(topics.metrics, value, key=key))
                sent += 1
                if len(pending) >= 20_000:
                    await asyncio.gather(*pending)
                    pending = []
            await asyncio.gather(*pending)
            produced = time.monotonic() - began
            consumed_key = f"coalmine_events_consumed_total{{topic={topics.metrics}}}"

            def done(metrics: dict[str, float]) -> bool:
                return (
                    metrics.get(consumed_key, 0) >= expected
                    and total(metrics, "coalmine_consumer_lag") == 0
                )

            finished = await daemon.wait_for(done, "the daemon to take every message", 1800, 0.5)
            await asyncio.sleep(1.0)
            metrics = await daemon.scrape()
            loaded = rss_mb(daemon.pid)
            peak = peak_mb(daemon.pid)
        finally:
            await producer.stop()
            code = await daemon.stop()
    taken = finished - began
    active = total(metrics, "coalmine_active_deployments")
    dropped = total(metrics, "coalmine_dropped_samples_total") or 0
    invalid = total(metrics, "coalmine_invalid_events_total") or 0
    verdicts = total(metrics, "coalmine_verdicts_total") or 0
    print(
        f"{sent:,} messages produced in {produced:.1f} s; the daemon had taken them all "
        f"{taken:.1f} s after the first was sent ({sent / taken:,.0f} messages/s, "
        f"{expected * args.samples_per_minute / taken:,.0f} samples/s); {verdicts:,.0f} verdicts"
    )
    print(
        f"loaded: RSS {loaded:.1f} MB (peak {peak:.1f} MB), {active:.0f} deployments open; "
        f"{dropped:.0f} dropped samples, {invalid:.0f} dead letters; exit {code} on SIGTERM"
    )
    warnings, errors = daemon.log_problems()
    if warnings or errors or active != args.deployments or dropped or invalid:
        print(f"  WARNING: the figures are suspect (log: {daemon.describe_problems()})")
    return {"idle": idle, "opened": opened, "loaded": loaded, "peak": peak, "seconds": taken}


# -- 2. Python-side breakdown ----------------------------------------------------------------


def breakdown(args) -> dict:
    topics = TopicsSettings()
    router = Router({"default": profile_model(args.metrics, args.interval)}, topics)
    partitions = args.partitions
    part = {
        service: zlib.crc32(service.encode()) % partitions for service in services(args.deployments)
    }
    tracemalloc.start(1)
    opened = [
        Record(topics.deployments, started(service), service.encode(), partition=part[service])
        for service in services(args.deployments)
    ]
    router.handle(opened, time.time())
    del opened
    offsets = [0] * partitions
    batch: list[Record] = []
    began = time.monotonic()
    for key, value in messages(args):
        partition = part[key.decode()]
        batch.append(
            Record(topics.metrics, value, key, partition=partition, offset=offsets[partition])
        )
        offsets[partition] += 1
        if len(batch) == 2000:
            router.handle(batch, time.time())
            batch = []
    if batch:
        router.handle(batch, time.time())
    batch = []
    seconds = time.monotonic() - began
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    tracemalloc.stop()
    capacity = held = 0
    for deployment in router.deployments.values():
        observations = deployment._data  # noqa: SLF001 - measuring, not using
        for spec in deployment.profile.metrics:
            for reservoir in observations.samples(spec.name):
                capacity += reservoir.allocated * 8
                held += len(reservoir) * 8
    stats = snapshot.statistics("lineno")
    root = str(Path(__file__).resolve().parents[1])
    print(
        f"\nin-process Router, tracemalloc ({seconds:.1f} s for the messages, traced): "
        f"{current / 2**20:.1f} MB held at the end, peak {peak / 2**20:.1f} MB; "
        f"{len(router.deployments)} open"
    )
    print(
        f"  sample arrays: {capacity / 2**20:.1f} MB allocated for {held / 2**20:.1f} MB of "
        f"samples ({capacity / held:.2f}x: allocated slots per sample held)"
        if held
        else "  no samples held"
    )
    print("  largest allocation sites (held at the end):")
    for stat in stats[:8]:
        frame = stat.traceback[0]
        where = frame.filename.replace(root + "/", "")
        line = linecache.getline(frame.filename, frame.lineno).strip()
        print(
            f"    {stat.size / 2**20:8.1f} MB {stat.count:>9,} blocks  "
            f"{where}:{frame.lineno}  {line[:60]}"
        )
    by_file: dict[str, int] = {}
    for stat in stats:
        name = stat.traceback[0].filename
        name = name.replace(root + "/", "") if name.startswith(root) else "(libraries)"
        by_file[name] = by_file.get(name, 0) + stat.size
    print(
        "  by file: "
        + ", ".join(
            f"{name} {size / 2**20:.1f} MB"
            for name, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:6]
        )
    )
    return {
        "traced_mb": current / 2**20,
        "traced_peak_mb": peak / 2**20,
        "sample_arrays_mb": capacity / 2**20,
        "samples_mb": held / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--metrics", type=int, default=4)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--samples-per-minute", type=int, default=50)
    parser.add_argument("--interval", type=float, default=600.0, help="judgement interval, s")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--skip-daemon", action="store_true", help="only the in-process part")
    parser.add_argument("--skip-trace", action="store_true", help="only the daemon part")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the figures here (for run_all.py)")
    args = parser.parse_args()
    if args.minutes * 60 >= DURATION:
        parser.error(f"--minutes must stay below {DURATION // 60} (the profile's max_duration)")
    expected = args.deployments * args.metrics * 2 * args.minutes
    samples = expected * args.samples_per_minute
    raw = samples * 8 / 2**20
    print(f"coalmine memory, {os.cpu_count()} CPU(s), python {sys.version.split()[0]}")
    print(
        f"{args.deployments} deployments x {args.metrics} metrics x 2 cohorts x {args.minutes} "
        f"min x {args.samples_per_minute} samples/min = {samples:,} samples "
        f"({raw:.1f} MB as float64: the baseline) in {expected:,} messages\n"
    )
    figures: dict = {"samples": samples, "raw_mb": raw, "target_mb": TARGET_MB}
    if not args.skip_daemon:
        figures |= asyncio.run(daemon_rss(args, expected))
    if not args.skip_trace:
        figures |= breakdown(args)
    if "loaded" in figures:
        met = figures["loaded"] <= TARGET_MB
        figures["met"] = met
        print(
            f"\nRSS loaded {figures['loaded']:.1f} MB (idle {figures['idle']:.1f}); samples "
            f"{raw:.1f} MB; ratio RSS / samples {figures['loaded'] / raw:.2f}, RSS growth / "
            f"samples {(figures['loaded'] - figures['idle']) / raw:.2f}"
        )
        print(f"target: RSS <= {TARGET_MB:g} MB: {'met' if met else 'NOT met'}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
