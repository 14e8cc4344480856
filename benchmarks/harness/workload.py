"""The workload of the latency, recovery and memory runs: a fleet of deployments, each sending
latency samples and request counts of both cohorts every step of event time.

The canary repeats its baseline's numbers (an A/A test that cannot fail by chance) until a
critical burst, when one is planned, makes it fail 20% of its requests.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from coalmine.contract import format_time

if TYPE_CHECKING:
    import argparse

    from benchmarks.harness.topics import Topics

T0 = 1_800_000_000
"""Event time the workloads start at (2027-01-15), whole seconds."""


@dataclass(slots=True)
class Canary:
    """One simulated deployment of the workload: a service, its start and its tick phase."""

    index: int
    service: str
    started: float
    """Event time of its ``started`` event (whole milliseconds)."""
    phase: int
    """Ticks fall at ``started + phase + j x step``, j >= 0."""
    burst_from: float = math.inf
    """Event time from which its canary fails 20% of its requests."""

    @property
    def deployment_id(self) -> str:
        return f"{self.service}-v2"

    def started_event(self) -> bytes:
        return orjson.dumps(
            {
                "event": "started",
                "deployment_id": self.deployment_id,
                "service": self.service,
                "time": format_time(self.started),
                "baseline": {"version": "v1"},
                "canary": {"version": "v2"},
                "traffic_weight": 50,
            }
        )


class Workload:
    """The metric messages of the workload: latency samples and request counts.

    Per tick and deployment: ``latency_ms`` (``values``) and ``requests`` (good/total) for
    the baseline, then the same for the canary, which repeats the baseline's numbers
    (unless it is bursting: then 20% of its requests fail).
    """

    def __init__(
        self, samples: int, seed: int, instances: int = 1, error_ratio: float = 0.0
    ) -> None:
        self.samples = samples
        self.instances = instances
        self.error_ratio = error_ratio
        self.rng = np.random.default_rng(seed)
        self._pool = np.round(self.rng.lognormal(math.log(100.0), 0.5, 1 << 16), 1).tolist()
        self._at = 0

    def _values(self) -> list[float]:
        if self._at + self.samples > len(self._pool):
            self._at = int(self.rng.integers(0, 64))
        out = self._pool[self._at : self._at + self.samples]
        self._at += self.samples
        return out

    @property
    def per_tick(self) -> int:
        """Messages per deployment and tick."""
        return 4 * self.instances

    def tick(self, canary: Canary, at: float) -> list[bytes]:
        """The messages of one tick, in the order they are sent.

        Per instance: the baseline's ``latency_ms`` and ``requests``, then the canary's.
        With one instance the messages carry no ``instance``; with more, each cohort's
        instances are ``b0``, ``b1``, ... and ``c0``, ``c1``, ...
        """
        stamp = format_time(at)
        out = []
        for instance in range(self.instances):
            values = self._values()
            requests = int(self.rng.poisson(500))
            errors = int(self.rng.binomial(requests, self.error_ratio)) if self.error_ratio else 0
            bad = int(self.rng.binomial(requests, 0.2)) if at >= canary.burst_from else errors
            for cohort, failed in (("baseline", errors), ("canary", bad)):
                common: dict[str, object] = {
                    "service": canary.service,
                    "cohort": cohort,
                    "time": stamp,
                }
                if self.instances > 1:
                    common["instance"] = f"{cohort[0]}{instance}"
                out.append(orjson.dumps({**common, "metric": "latency_ms", "values": values}))
                out.append(
                    orjson.dumps(
                        {
                            **common,
                            "metric": "requests",
                            "good": requests - failed,
                            "total": requests,
                        }
                    )
                )
        return out


def fleet(count: int, interval: int, step: int, seed: int, first: int = 0) -> list[Canary]:
    """``count`` deployments started over one interval before ``T0``, ticks off the dues."""
    rng = np.random.default_rng(seed)
    return [
        Canary(
            index,
            f"svc-{index:05d}",
            T0 - int(rng.integers(1, interval * 1000 + 1)) / 1000,
            step // 2 if step % 2 == 0 and interval % step == 0 else 0,
        )
        for index in range(first, first + count)
    ]


def tick_key(index: int, at: float) -> tuple[int, int]:
    """A deployment's tick by its index and event time in whole milliseconds."""
    return index, round(at * 1000)


def first_tick(canary: Canary, after: float, step: int) -> float:
    """Event time of the first tick of ``canary`` strictly after ``after``."""
    base = canary.started + canary.phase
    j = max(0, math.floor((after - base) / step) + 1)
    return base + j * step


async def fill(
    bootstrap: str,
    topics: Topics,
    canaries: list[Canary],
    args: argparse.Namespace,
    minutes: float,
    ends: dict[tuple[str, int], int] | None = None,
    work: Workload | None = None,
) -> int:
    """The deploy events, then ``minutes`` of every deployment's ticks in event order,
    produced before a daemon reads them (``args``: ``step``, ``samples_per_message``, ``seed``).

    ``ends`` gets, per (topic, partition), the highest acknowledged offset + 1; ``work``
    makes the messages (by default one instance per cohort and no errors).
    """
    ends = {} if ends is None else ends

    def note(future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            meta = future.result()
            key = (meta.topic, meta.partition)
            ends[key] = max(ends.get(key, 0), meta.offset + 1)

    if work is None:
        work = Workload(args.samples_per_message, args.seed + 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024
    )
    await producer.start()
    count = 0
    try:
        pending = [
            await producer.send(topics.deployments, c.started_event(), key=c.service.encode())
            for c in canaries
        ]
        for future in pending:
            future.add_done_callback(note)
        await asyncio.gather(*pending)
        heap = [(first_tick(c, T0, args.step), c.index) for c in canaries]
        heapq.heapify(heap)
        by_index = {c.index: c for c in canaries}
        end = T0 + minutes * 60
        pending = []
        while heap and heap[0][0] < end:
            at, index = heapq.heappop(heap)
            canary = by_index[index]
            for value in work.tick(canary, at):
                future = await producer.send(topics.metrics, value, key=canary.service.encode())
                future.add_done_callback(note)
                pending.append(future)
            count += work.per_tick
            heapq.heappush(heap, (at + args.step, index))
            if len(pending) > 20_000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count
