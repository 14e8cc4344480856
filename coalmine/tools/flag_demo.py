"""``coalmine demo --strategy feature_flag``: two flag rollouts that step on the verdicts.

Each flag's treatment is rolled out in steps of 5%, 25%, 50% and 100% of its service's
requests: on each ``advance`` verdict the demo, standing in for the flag system, raises the
percentage and publishes the ``step``. One treatment is healthy and is promoted at 100%;
the other fails one request in fifty (its control, one in three thousand), is rolled back
on the message that shows it, and the daemon's ``flagd`` kill switch rewrites the flag
file (in a temporary directory) so that it serves the control variation. On the in-memory
bus, in one process, on compressed event time.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from rich.console import Console

from coalmine.bus.base import Outgoing
from coalmine.config.actions import FlagdAction
from coalmine.config.models import Profile
from coalmine.contract import FlagRollout, encode_deploy_event, format_time
from coalmine.daemon.app import Daemon
from coalmine.tools.demo import (
    DEMO_PROFILE,
    DemoResult,
    _elapsed,
    _final_table,
    _in_memory,
    _Play,
    _show,
)

if TYPE_CHECKING:
    from coalmine.bus.base import Transport

__all__ = ["FLAG_PROFILE", "FLAG_PROFILE_NAME", "STEPS", "Rollout", "run_flag_demo"]

FLAG_PROFILE = Profile(
    interval=30.0,
    min_duration=180.0,
    max_duration=900.0,
    min_step_duration=60.0,
    metrics=DEMO_PROFILE.metrics,
)
"""Judge every 30 s; each step held a minute at least; promote from 3 min; by 15 min."""

FLAG_PROFILE_NAME = "coalmine-demo-flags"
STEPS = (5.0, 25.0, 50.0, 100.0)
_TICK = 5.0
"""Event-time seconds of traffic per metrics message."""


@dataclass
class Rollout:
    """One flag rolled out over one service: where it stands, how its treatment behaves."""

    deployment_id: str
    service: str
    flag: str
    treatment_errors: float
    weight: float = STEPS[0]
    control_errors: float = 0.0003
    requests_per_second: float = 100.0
    steps_taken: list[float] = field(default_factory=list)

    def started(self, at: float) -> bytes:
        """The rollout's ``started``: the flag, its variations, the planned steps."""
        return encode_deploy_event(
            "started",
            self.deployment_id,
            self.service,
            at=at,
            profile=FLAG_PROFILE_NAME,
            traffic_weight=self.weight,
            strategy="feature_flag",
            steps=STEPS,
            flag=FlagRollout(self.flag, "control", "treatment"),
        )

    def traffic(self, rng: np.random.Generator, at: float) -> bytes:
        """Both variations' requests and latencies of one tick, split by the weight."""
        events = []
        for variant, share, errors in (
            ("control", 1.0 - self.weight / 100.0, self.control_errors),
            ("treatment", self.weight / 100.0, self.treatment_errors),
        ):
            total = int(rng.poisson(self.requests_per_second * _TICK * share))
            if total == 0:
                continue
            bad = int(rng.binomial(total, errors))
            base = {"service": self.service, "version": variant, "time": format_time(at)}
            values = np.round(rng.lognormal(np.log(100.0), 0.5, max(1, total // 10)), 1)
            events += [
                base | {"metric": "latency_ms", "values": values.tolist()},
                base | {"metric": "requests", "good": total - bad, "total": total},
            ]
        return orjson.dumps(events)

    def step_up(self, at: float) -> bytes | None:
        """The next planned weight, as the ``step`` a flag system would publish."""
        higher = [w for w in STEPS if w > self.weight]
        if not higher:
            return None
        self.weight = higher[0]
        self.steps_taken.append(self.weight)
        return encode_deploy_event(
            "step", self.deployment_id, self.service, at=at, traffic_weight=self.weight
        )


def flag_file(directory: Path, rollouts: list[Rollout]) -> Path:
    """A flagd flag definition file serving each treatment to its rollout's share."""
    flags = {
        r.flag: {
            "state": "ENABLED",
            "variants": {"control": False, "treatment": True},
            "defaultVariant": "control",
            "targeting": {"fractional": [["treatment", 5], ["control", 95]]},
        }
        for r in rollouts
    }
    path = directory / "flags.json"
    path.write_text(json.dumps({"flags": flags}, indent=2), encoding="utf-8")
    return path


async def run_flag_demo(
    *, speed: float = 10.0, seed: int = 11, console: Console | None = None
) -> tuple[DemoResult, dict[str, Any]]:
    """Play the two rollouts on the in-memory bus; the result and the flag file at the end."""
    console = console or Console()
    rollouts = [
        Rollout(
            "search-flag",
            "search",
            "new-ranking",
            treatment_errors=0.0003,
            requests_per_second=1000.0,
        ),
        Rollout("checkout-flag", "checkout", "one-click-pay", treatment_errors=0.02),
    ]
    with tempfile.TemporaryDirectory(prefix="coalmine-demo-") as tmp:
        path = flag_file(Path(tmp), rollouts)
        play = _Play(FLAG_PROFILE, FLAG_PROFILE_NAME, (), "flag rollouts", "")
        settings, _, bus = _in_memory(play)
        kill = FlagdAction(kind="flagd", name="kill-switch", path=path)
        settings = settings.model_copy(update={"actions": (kill,)})
        result = await _play(console, rollouts, settings, bus, speed, seed)
        flags = json.loads(path.read_text(encoding="utf-8"))["flags"]
    for rollout in rollouts:
        served = flags[rollout.flag].get("defaultVariant")
        targeted = "targeting" in flags[rollout.flag]
        state = "as rolled out" if targeted else f"switched off: serves {served} to everyone"
        console.print(f"flag {rollout.flag}: {state}")
    return result, flags


@dataclass
class _Stage:
    """What the producer and the verdict watcher share while the demo plays."""

    console: Console
    rollouts: dict[str, Rollout]
    topics: Any
    start: float
    result: DemoResult
    now: float = 0.0
    pending: list[Outgoing] = field(default_factory=list)

    def take(self, verdict: dict[str, Any]) -> None:
        """Show one verdict; on ``advance`` raise the flag, on a final note it."""
        rollout = self.rollouts.get(str(verdict.get("deployment_id")))
        if rollout is None:
            return
        self.result.verdicts += 1
        self.result.seen.append(verdict)
        _show(self.console, verdict, self.start)
        if verdict["final"]:
            self.result.finals[rollout.deployment_id] = verdict
            return
        step = rollout.step_up(self.now) if verdict["decision"] == "advance" else None
        if step is None:
            return
        self.pending.append(Outgoing(self.topics.deployments, step, rollout.service.encode()))
        self.console.print(
            f"[dim]{_elapsed(self.now - self.start)}[/] {rollout.deployment_id:<14}"
            f" [bold]step[/]         flag {rollout.flag} raised to {rollout.weight:g}%",
            highlight=False,
        )


async def _produce(stage: _Stage, producer: Transport, speed: float, seed: int) -> None:
    """Each tick, the steps the watcher asked for and every open rollout's traffic."""
    rng = np.random.default_rng(seed)
    began = time.monotonic()
    rollouts = list(stage.rollouts.values())
    for tick in range(1, int(1200 / _TICK)):
        at = stage.start + tick * _TICK
        await asyncio.sleep(max(0.0, (at - stage.start) / speed - (time.monotonic() - began)))
        stage.now = at
        out, stage.pending = stage.pending, []
        out += [
            Outgoing(stage.topics.metrics, r.traffic(rng, at), r.service.encode())
            for r in rollouts
            if r.deployment_id not in stage.result.finals
        ]
        await producer.publish(out)


async def _play(
    console: Console, rollouts: list[Rollout], settings: Any, bus: Any, speed: float, seed: int
) -> DemoResult:
    start = float(round(time.time()))
    stage = _Stage(console, {r.deployment_id: r for r in rollouts}, settings.topics, start,
                   DemoResult(start=start), now=start)  # fmt: skip
    _introduce(console, rollouts, speed)
    stage.pending = [
        Outgoing(settings.topics.deployments, r.started(start), r.service.encode())
        for r in rollouts
    ]
    daemon = Daemon(settings, bus.daemon)
    await bus.producer.start()
    daemon_task = asyncio.create_task(daemon.run())
    producer_task = asyncio.create_task(_produce(stage, bus.producer, speed, seed))
    began = time.monotonic()
    try:
        async for records in bus.reader:
            for record in records:
                stage.take(orjson.loads(record.value))
            if len(stage.result.finals) == len(rollouts):
                break
        await asyncio.sleep(0.5)  # the kill switch acts on the acknowledged verdict
    finally:
        producer_task.cancel()
        daemon.request_stop()
        await asyncio.gather(daemon_task, producer_task, return_exceptions=True)
        await bus.producer.stop()
    stage.result.wall_seconds = time.monotonic() - began
    _final_table(console, stage.result)
    return stage.result


def _introduce(console: Console, rollouts: list[Rollout], speed: float) -> None:
    console.print(
        f"[bold]coalmine demo[/]: {len(rollouts)} flag rollouts on the in-memory bus, event"
        f" time x{speed:g}; steps {', '.join(f'{w:g}%' for w in STEPS)}, each held a minute"
        " at least; on 'advance' the flag system raises the percentage."
    )
    for r in rollouts:
        what = "healthy" if r.treatment_errors <= r.control_errors else "fails 2% of requests"
        console.print(f"  {r.deployment_id}: flag {r.flag}, treatment {what}")
