"""The soak's load: deployment pipelines and services on an event clock, keyed by service.

About ``deployments_open`` deployments are open at any time. Each gets a ``started`` event,
then every ``step`` of event time four metric messages (``latency_ms`` samples and
``requests`` good/total counts of each cohort); most canaries are healthy, some slower or
failing more. A deployment ends as a pipeline ends it: on its final verdict (whoever reads
the verdicts adds its id to ``Stats.finals``), or at its planned end with a ``completed``
event, after which its service reports its new version for ``tail_ticks`` steps. Each
ending opens a new deployment, so the open count stays level. ``soak.py`` runs it against
a broker in real time, ``soak_inprocess.py`` on a simulated clock without one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from benchmarks.harness.workload import T0
from coalmine.contract import format_time

if TYPE_CHECKING:
    import argparse

    from benchmarks.harness.topics import Topics

INTERVAL, MIN_DURATION, MAX_DURATION = 30.0, 120.0, 300.0
"""The profile's schedule, event seconds: a look every 30 s, promote from 2 min, end at 5."""
LIFETIME = (90.0, 420.0)
"""Planned event-time life of a deployment (uniform), when no final verdict ends it first."""
KINDS = (("healthy", 0.70), ("slow", 0.15), ("errors", 0.15))
MESSAGES_PER_TICK = 4


@dataclass(slots=True)
class Plan:
    """One simulated deployment, as its pipeline and its service see it."""

    serial: int
    service: str
    kind: str
    started: float
    ends: float
    next_tick: float
    tail_left: int
    completed: bool = False

    @property
    def deployment_id(self) -> str:
        return f"{self.service}-d{self.serial}"

    @property
    def baseline(self) -> str:
        return f"b{self.serial}"

    @property
    def canary(self) -> str:
        return f"c{self.serial}"


@dataclass(slots=True)
class Stats:
    """What the load sent and what became of its deployments; the verdicts, counted by
    whoever reads them."""

    produced: int = 0
    produce_errors: int = 0
    deployments_started: int = 0
    ended: Counter[str] = field(default_factory=Counter)
    verdicts: int = 0
    verdict_decisions: Counter[str] = field(default_factory=Counter)
    finals: set[str] = field(default_factory=set)
    open_plans: int = 0
    load_finished: float | None = None
    """``time.monotonic()`` when the last message of the load was acknowledged."""
    load_end_t: float | None = None
    """The same, in seconds since sampling began (the samples' ``t``)."""
    ends: dict[tuple[str, int], int] = field(default_factory=dict)
    """(topic, partition) -> highest acknowledged offset + 1: the true end offsets."""


class Load:
    """Pipelines and services: deploy events and metrics on an event clock, keyed by service."""

    def __init__(self, args: argparse.Namespace, topics: Topics, stats: Stats) -> None:
        self.args = args
        self.topics = topics
        self.stats = stats
        self.rng = np.random.default_rng(args.seed)
        self.speed = args.speed
        open_ = args.deployments_open
        self.step = self.speed * MESSAGES_PER_TICK * open_ / args.rate
        """Event seconds between two ticks of one deployment."""
        self.free = [f"svc-{i:05d}" for i in range(open_ * 3)]
        self.rng.shuffle(self.free)
        self.plans: dict[str, Plan] = {}  # by deployment id
        self.serial = 0
        self.began = 0.0
        self.producer: AIOKafkaProducer | None = None
        """Set by ``run``; anything with its ``send`` will do (``soak_inprocess.py``)."""

    def now(self) -> float:
        """Event time: ``speed`` x the wall time since ``run`` began."""
        return T0 + self.speed * (time.monotonic() - self.began)

    def _acked(self, future: asyncio.Future) -> None:
        if future.cancelled() or future.exception() is not None:
            self.stats.produce_errors += 1
            return
        self.stats.produced += 1
        meta = future.result()
        key = (meta.topic, meta.partition)
        self.stats.ends[key] = max(self.stats.ends.get(key, 0), meta.offset + 1)

    async def _send(self, topic: str, key: str, value: object) -> None:
        assert self.producer is not None
        future = await self.producer.send(topic, orjson.dumps(value), key=key.encode())
        future.add_done_callback(self._acked)

    async def start_deployment(self, at: float) -> None:
        """A new deployment on a free service, ``started`` at event time ``at``."""
        self.serial += 1
        service = self.free.pop() if self.free else f"svc-x{self.serial:06d}"
        kind = str(self.rng.choice([k for k, _ in KINDS], p=[w for _, w in KINDS]))
        life = float(self.rng.uniform(*LIFETIME))
        ticks = max(1, math.ceil(life / self.step))
        plan = Plan(
            self.serial,
            service,
            kind,
            at,
            at + ticks * self.step,
            at + self.step,
            self.args.tail_ticks,
        )
        self.plans[plan.deployment_id] = plan
        self.stats.deployments_started += 1
        await self._send(
            self.topics.deployments,
            service,
            {
                "event": "started",
                "deployment_id": plan.deployment_id,
                "service": service,
                "time": format_time(at),
                "strategy": "canary",
                "baseline": {"version": plan.baseline},
                "canary": {"version": plan.canary},
                "traffic_weight": 50,
            },
        )

    async def _tick(self, plan: Plan, at: float) -> None:
        stamp = format_time(at)
        samples = self.args.samples_per_message
        cohorts = ("canary",) if plan.completed else ("baseline", "canary")
        for cohort in cohorts:
            canary = cohort == "canary"
            factor = 1.3 if canary and plan.kind == "slow" else 1.0
            errors = 0.03 if canary and plan.kind == "errors" else 0.0003
            common: dict[str, object] = {"service": plan.service, "time": stamp}
            if plan.completed:  # the service now runs the new version only, no pipeline ids
                common["version"] = plan.canary
            else:
                common |= {"deployment_id": plan.deployment_id, "cohort": cohort}
            latency = np.round(100.0 * factor * self.rng.lognormal(0.0, 0.5, samples), 1)
            total = int(self.rng.poisson(500))
            bad = int(self.rng.binomial(total, errors)) if total else 0
            await self._send(
                self.topics.metrics,
                plan.service,
                {**common, "metric": "latency_ms", "values": latency.tolist()},
            )
            await self._send(
                self.topics.metrics,
                plan.service,
                {**common, "metric": "requests", "good": total - bad, "total": total},
            )

    async def _complete(self, plan: Plan) -> None:
        plan.completed = True
        self.stats.ended["completed"] += 1
        await self._send(
            self.topics.deployments,
            plan.service,
            {
                "event": "completed",
                "deployment_id": plan.deployment_id,
                "service": plan.service,
                "time": format_time(plan.ends),
            },
        )

    def _retire(self, plan: Plan) -> None:
        del self.plans[plan.deployment_id]
        self.free.insert(0, plan.service)  # reused last: its old deployment is long gone

    async def run(self, bootstrap: str, duration: float) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=256 * 1024
        )
        await self.producer.start()
        try:
            self.began = time.monotonic()
            for _ in range(self.args.deployments_open):  # random phases within one step
                await self.start_deployment(T0 + float(self.rng.uniform(0.0, self.step)))
            deadline = self.began + duration
            while time.monotonic() < deadline:
                await self.advance(self.now())
                await asyncio.sleep(0.05)
            await self.producer.flush()
        finally:
            await self.producer.stop()
            self.stats.load_finished = time.monotonic()

    async def advance(self, now: float) -> None:
        """Every tick due by event time ``now``; deployments ended and replaced as their
        pipelines would."""
        for plan in list(self.plans.values()):
            if not plan.completed and plan.deployment_id in self.stats.finals:
                # The pipeline acts on the final verdict: stop feeding, start the next one.
                self.stats.ended["final verdict"] += 1
                self._retire(plan)
                await self.start_deployment(now)
                continue
            while plan.next_tick <= now:
                if not plan.completed and plan.next_tick > plan.ends:
                    await self._complete(plan)
                    await self.start_deployment(now)
                    continue
                if plan.completed:
                    if plan.tail_left <= 0:
                        self._retire(plan)
                        break
                    plan.tail_left -= 1
                await self._tick(plan, plan.next_tick)
                plan.next_tick += self.step
        self.stats.open_plans = sum(1 for plan in self.plans.values() if not plan.completed)
