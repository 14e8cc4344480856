"""The soak's load without a broker: is the daemon's state flat once its caps are full?

Run from the repository root: ``python benchmarks/soak_inprocess.py [--deployments 60000]
[--deployments-open 200] [--every 2000] [--csv PATH]``.

``soak.py`` runs the daemon against a broker in real time: an hour is an hour, and on tansu,
whose in-memory log costs it more CPU with every message, the broker can end it first.
This script drives the soak's ``Load`` (``harness/soak_load.py``: the same deployments,
metrics, completions and final verdicts) on a simulated clock, in this process, through the
daemon's own state: a ``Router`` (what the daemon's event loop runs on each fetched batch)
and a ``Directory`` (what its HTTP API answers from), fed as the daemon feeds them (the
verdicts of the router's effects and the deploy records go to the directory). Event time
jumps ahead instead of waiting, so an hour of the soak's churn takes minutes. Every
``--every`` deployments it prints this process's RSS, the open deployments, the directory's
size and the finished ids remembered.

Not here: the Kafka client, the HTTP server and the publisher (their buffers are bounded by
the fetch and the publish batch, not by how many deployments have come and gone).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gc
import os
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks, support, coalmine

from benchmarks.harness.daemon import bench_profile
from benchmarks.harness.procfs import rss_mb
from benchmarks.harness.soak_load import INTERVAL, MAX_DURATION, MIN_DURATION, Load, Stats
from benchmarks.harness.topics import Topics
from benchmarks.harness.workload import T0
from coalmine.bus.base import Record
from coalmine.config import load_settings
from coalmine.daemon.directory import Directory
from coalmine.daemon.ordering import deploys_first
from coalmine.daemon.router import Router


class Bus:
    """Stands in for the producer: keeps what the load sends as records, in order."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.pending: list[Record] = []
        self.offsets: dict[tuple[str, int], int] = {}

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[object]:
        partition = zlib.crc32(key) % self.partitions
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[topic, partition] = offset + 1
        self.pending.append(Record(topic, value, key, partition=partition, offset=offset))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(topic=topic, partition=partition, offset=offset))
        return done

    def take(self) -> list[Record]:
        records, self.pending = self.pending, []
        return records


async def run(args: argparse.Namespace, config: Path) -> list[dict[str, float]]:
    settings = load_settings(config)
    topics = settings.topics
    router = Router(settings.profiles, topics, settings.limits)
    directory = Directory(topics)
    stats = Stats()
    load = Load(args, Topics(topics.deployments, topics.metrics, topics.verdicts, "dlq"), stats)
    bus = Bus(args.partitions)
    load.producer = bus  # the load only calls send()
    clock = T0
    load.now = lambda: clock  # a simulated clock
    for _ in range(args.deployments_open):
        await load.start_deployment(T0 + float(load.rng.uniform(0.0, load.step)))
    rows: list[dict[str, float]] = []
    began = time.monotonic()
    next_row = 0
    while stats.deployments_started < args.deployments:
        clock += load.step / 4
        await load.advance(clock)
        await asyncio.sleep(0)  # run the sends' done-callbacks (they queue on the loop)
        records, deploys = deploys_first(bus.take(), topics.deployments)
        wall = began + (clock - T0) / args.speed
        effects = router.handle(records, wall)
        directory.take(records[:deploys])
        effects.extend(router.expire_silent(wall))
        directory.verdicts(effects.verdicts, effects.encode())
        for verdict in effects.verdicts:
            stats.verdicts += 1
            if verdict.final:
                stats.finals.add(verdict.deployment_id)
        if stats.deployments_started >= next_row:
            gc.collect()
            row = {
                "deployments": stats.deployments_started,
                "rss_mb": round(rss_mb(os.getpid()), 1),
                "open": len(router.deployments),
                "directory": len(directory),
                "finished_ids": len(router.finished),
                "verdicts": stats.verdicts,
                "seconds": round(time.monotonic() - began, 1),
            }
            rows.append(row)
            print(
                f"{row['deployments']:>7,} deployments  RSS {row['rss_mb']:6.1f} MB  "
                f"open {row['open']:>4}  directory {row['directory']:>6,}  "
                f"finished ids {row['finished_ids']:>7,}  verdicts {row['verdicts']:>9,}  "
                f"{row['seconds']:6.0f} s",
                flush=True,
            )
            next_row += args.every
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployments", type=int, default=60_000)
    parser.add_argument("--deployments-open", type=int, default=200)
    parser.add_argument("--rate", type=float, default=800.0, help="as soak.py: sets the step")
    parser.add_argument("--speed", type=float, default=10.0, help="as soak.py: sets the step")
    parser.add_argument("--samples-per-message", type=int, default=20)
    parser.add_argument("--tail-ticks", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--every", type=int, default=2_000, help="deployments between rows")
    parser.add_argument("--csv", help="write the rows here")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    config = Path(f"/tmp/coalmine-soak-inprocess-{args.seed}.toml")  # noqa: S108
    config.write_text(
        '[topics]\ndeployments = "deploys"\nmetrics = "metrics"\nverdicts = "verdicts"\n'
        'dead_letter = "dlq"\n\n' + bench_profile(INTERVAL, MIN_DURATION, MAX_DURATION)
    )
    print(
        f"in-process soak: {args.deployments:,} deployments, {args.deployments_open} open, "
        f"soak.py's load (x{args.speed:g}, {args.rate:g} msgs/s of its clock); RSS "
        f"{rss_mb(os.getpid()):.1f} MB before"
    )
    rows = asyncio.run(run(args, config))
    if args.csv:
        with Path(args.csv).open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    half = [r for r in rows if r["deployments"] >= rows[-1]["deployments"] / 2]
    if len(half) >= 2:
        slope = (half[-1]["rss_mb"] - half[0]["rss_mb"]) / (
            (half[-1]["deployments"] - half[0]["deployments"]) / 1000
        )
        print(f"second half: RSS {slope:+.3f} MB per 1,000 deployments")


if __name__ == "__main__":
    main()
