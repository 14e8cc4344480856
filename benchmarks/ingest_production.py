"""Production-shaped ingest: coalmine's consume loop against a bare aiokafka consumer, same run.

Run from the repository root: ``python benchmarks/ingest_production.py [--broker kafka|tansu]
[--deployments 1000] [--instances 5] [--samples-per-message 20] [--step 10]
[--event-minutes 10] [--partitions 4] [--runs 3] [--profile PATH]``.

The shape of a fleet in production, replayed as fast as the daemon takes it: D open
deployments (``started`` at the same moment, baseline ``v1``, canary ``v2``), each cohort
with I instances, each instance reporting one ``latency_ms`` message of K samples every
``--step`` seconds of event time (``service``, ``cohort``, ``instance``, ``metric``, an RFC
3339 ``time``, ``values``), judged every 60 s (the profile of ``ingest.py``: one
distribution metric, ``min_duration = max_duration = 1h``, so no deployment ends and every
message is buffered and analysed). Ticks fall half a step off the due times; a tick's
messages go out round robin over the deployments, baseline and canary instance by instance,
the canary repeating its baseline instance's samples (an A/A test that cannot fail by
chance). Keyed by service, in event-time order. With the defaults: 1000 x 2 x 5 messages
per 10 s, 60,000 per event minute, 600,000 messages (12,000,000 samples) for 10 minutes, 9
judgements per deployment (9,000 verdicts per run).

The fill, the sides, the timing rule and the table are ``harness/ingest.py``'s, as in
``ingest.py``: the topics are filled before anything is timed; then, interleaved, R times each:
``bare`` (an ``AIOKafkaConsumer`` that only counts the messages: the baseline),
``bare+json`` and ``bare+decode`` (plus ``orjson.loads`` or the contract's decode of each,
for reference) and ``coalmine`` (the real ``Daemon`` on a ``KafkaTransport``: fetch, decode,
route, buffer, judge, publish and await the verdicts' acknowledgements, commit). Clocks
start once the first batch is handled and stop at the last message. Each run's ratio is
coalmine / the bare run just before it; the report gives every run's ratio, their median
and range, and the best of each side.

``--profile PATH`` adds one coalmine run under ``cProfile`` after the measured ones (its
figures are not reported: the profiler slows every Python call), writes the stats to PATH
and prints the functions with the most time of their own and the most time below them.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import math
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.broker import add_broker_option, describe, start_broker
from benchmarks.harness.ingest import (
    BARE_SIDES,
    INTERVAL,
    T0,
    IngestWorkload,
    Measurement,
    decode_all,
    fill,
    report_runs,
    run_bare,
    run_coalmine,
    service_names,
)
from coalmine.config.models import TopicsSettings
from coalmine.contract import format_time

TARGET_RATIO = 0.25
"""coalmine's rate at least this share of the bare consumer's (median of the rounds)."""
GOAL_RATIO = 0.50


def _messages(
    work: IngestWorkload, instances: int, step: float, seed: int
) -> list[tuple[bytes, bytes]]:
    """Every tick of every deployment, in event-time order (see the module docstring)."""
    services = service_names(work.deployments)
    keys = [service.encode() for service in services]
    ticks = round(work.event_minutes * 60 / step)
    rng = np.random.default_rng(seed)
    pool = np.round(rng.lognormal(math.log(100.0), 0.5, (1 << 14, work.samples)), 1).tolist()
    names = {
        cohort: [f"{cohort[0]}{instance}" for instance in range(instances)]
        for cohort in ("baseline", "canary")
    }
    out = []
    row = 0
    for tick in range(ticks):
        stamp = format_time(T0 + step / 2 + step * tick)
        for service, key in zip(services, keys, strict=True):
            for instance in range(instances):
                values = pool[row % len(pool)]
                row += 1
                for cohort in ("baseline", "canary"):
                    event = {
                        "service": service,
                        "cohort": cohort,
                        "instance": names[cohort][instance],
                        "metric": "latency_ms",
                        "time": stamp,
                        "values": values,
                    }
                    out.append((key, orjson.dumps(event)))
    return out


def _workload(args: argparse.Namespace) -> IngestWorkload:
    tag = uuid.uuid4().hex[:6]
    topics = TopicsSettings(
        deployments=f"prod.{tag}.deployments",
        metrics=f"prod.{tag}.metrics",
        verdicts=f"prod.{tag}.verdicts",
        dead_letter=f"prod.{tag}.dlq",
    )
    ticks = round(args.event_minutes * 60 / args.step)
    return IngestWorkload(
        "native",
        args.samples_per_message,
        ticks * args.deployments * 2 * args.instances,
        args.deployments,
        args.partitions,
        args.event_minutes,
        topics,
        topics.metrics,
        args.broker,
    )


def _report(runs: list[Measurement], samples: int) -> None:
    """The table, then the target, on the median of the rounds' ratios."""
    median, _ = report_runs(runs, samples)
    met = "met" if median >= TARGET_RATIO else "NOT met"
    goal = "reached" if median >= GOAL_RATIO else "not reached"
    print(
        f"target >= {TARGET_RATIO:.0%} of the bare consumer (median ratio): {met}; "
        f"goal {GOAL_RATIO:.0%}: {goal}"
    )


async def _profiled(bootstrap: str, work: IngestWorkload, args: argparse.Namespace) -> None:
    """One more coalmine run under cProfile; the stats to ``args.profile``, the top printed."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        measured = await run_coalmine(bootstrap, work, args.runs + 1, args.max_poll_records)
    finally:
        profiler.disable()
    profiler.dump_stats(args.profile)
    print(
        f"\n== profile (cProfile, one more coalmine run: {measured.rate:,.0f} messages/s "
        f"under the profiler, not a figure), stats in {args.profile}"
    )
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(30)
        print(f"-- by {order}")
        lines = text.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        print("\n".join(lines[start:]))


async def _main(args: argparse.Namespace) -> None:
    print(
        f"coalmine production-shaped ingest, {os.cpu_count()} CPU(s), "
        f"python {sys.version.split()[0]}"
    )
    print(f"broker: {describe(args.broker)}")
    work = _workload(args)
    per_step = work.deployments * 2 * args.instances
    print(
        f"{work.deployments} deployments x 2 cohorts x {args.instances} instances, one "
        f"message of {work.samples} samples each every {args.step:g} event s "
        f"({per_step:,} messages per step, {per_step * 60 / args.step:,.0f} per event minute), "
        f"{args.event_minutes:g} event min: {work.messages:,} messages, "
        f"{work.messages * work.samples:,} samples; judged every {INTERVAL:g} s "
        f"({work.judgements()} judgements per deployment); P={work.partitions} partitions, "
        f"max_poll_records {args.max_poll_records}; {args.runs} runs of each side, "
        "interleaved\n"
    )
    async with start_broker(args.broker) as broker:
        begun = time.perf_counter()
        metrics = _messages(work, args.instances, args.step, args.seed)
        await fill(broker.bootstrap, work, metrics)
        print(f"produced in {time.perf_counter() - begun:.1f} s (not measured)")
        values = [value for _, value in metrics]
        del metrics
        decoded = decode_all(work, values)
        print(
            f"the contract's decode alone (one thread, not measured): "
            f"{work.messages / decoded.seconds:,.0f} messages/s, "
            f"{decoded.samples / decoded.seconds:,.0f} samples/s\n"
        )
        del values
        runs: list[Measurement] = []
        for run in range(1, args.runs + 1):
            runs.extend(
                [
                    await run_bare(broker.bootstrap, work, run, args.max_poll_records, side=side)
                    for side in BARE_SIDES
                ]
            )
            runs.append(await run_coalmine(broker.bootstrap, work, run, args.max_poll_records))
        _report(runs, work.samples)
        if args.profile:
            await _profiled(broker.bootstrap, work, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=5, help="instances per cohort")
    parser.add_argument("--samples-per-message", type=int, default=20)
    parser.add_argument("--step", type=float, default=10.0, help="event s between reports")
    parser.add_argument("--event-minutes", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs of each side, interleaved")
    parser.add_argument("--max-poll-records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="write cProfile stats of one more run here")
    add_broker_option(parser)
    args = parser.parse_args()
    if min(args.deployments, args.instances, args.samples_per_message, args.runs) < 1:
        parser.error("--deployments, --instances, --samples-per-message and --runs must be >= 1")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
