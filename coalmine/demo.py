"""``coalmine demo``: the whole system in one process, on the in-memory bus.

A simulator plays two canaries onto the bus on compressed event time: a healthy one and
one whose error ratio jumps to 2% after a minute. The daemon judges them exactly as it
would on Kafka; the terminal shows every verdict as it is published.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from coalmine.bus.base import Outgoing
from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import HttpSettings, MetricSpec, Profile, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.contract import parse_time
from coalmine.daemon.app import Daemon
from coalmine.simulator import Scenario, simulate

DEMO_PROFILE = Profile(
    interval=30.0,
    min_duration=180.0,
    max_duration=600.0,
    metrics=(
        MetricSpec(name="latency_ms", kind="distribution", direction="increase"),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    ),
)
"""Judge every 30 s of event time, promote from 3 min, decide by 10 min."""

DEMO_SCENARIOS = (
    Scenario("checkout-v42", "checkout", baseline_version="v41", canary_version="v42"),
    Scenario(
        "payments-v8",
        "payments",
        canary_error_ratio=0.02,
        regression_from=60.0,
        baseline_version="v7",
        canary_version="v8",
    ),
)

_COLOURS = {"continue": "cyan", "promote": "green", "rollback": "red", "inconclusive": "yellow"}


@dataclass
class DemoResult:
    """Final verdicts (as published JSON) per deployment id, and how long it took."""

    finals: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: int = 0
    wall_seconds: float = 0.0
    start: float = 0.0


async def run_demo(
    *, speed: float = 10.0, seed: int = 7, console: Console | None = None
) -> DemoResult:
    """Play the demo scenarios and return once every deployment has a final verdict."""
    console = console or Console()
    topics = TopicsSettings()
    broker = MemoryBroker()
    for name in (topics.deployments, topics.metrics, topics.verdicts, topics.dead_letter):
        broker.create_topic(name, partitions=1)
    settings = Settings(profiles={"default": DEMO_PROFILE}, http=HttpSettings(enabled=False))
    daemon = Daemon(
        settings, MemoryTransport(broker, [topics.deployments, topics.metrics], "coalmine")
    )
    producer = MemoryTransport(broker, [], "demo-producer")
    reader = MemoryTransport(broker, [topics.verdicts], "demo-reader")
    await producer.start()
    await reader.start()
    began = time.monotonic()
    start = round(time.time())
    result = DemoResult(start=start)

    console.print(
        f"[bold]coalmine demo[/]: {len(DEMO_SCENARIOS)} canaries on the in-memory bus, "
        f"event time x{speed:g}. Profile: judge every 30s, promote from 3m, decide by 10m."
    )
    for scenario in DEMO_SCENARIOS:
        console.print(f"  {scenario.deployment_id}: {_describe(scenario)}")

    async def produce() -> None:
        for message in simulate(DEMO_SCENARIOS, start=start, duration=660.0, step=5.0, seed=seed):
            delay = (message.time - start) / speed - (time.monotonic() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            topic = topics.deployments if message.topic == "deployments" else topics.metrics
            await producer.publish([Outgoing(topic, message.value, message.key)])

    async def watch() -> None:
        while len(result.finals) < len(DEMO_SCENARIOS):
            for record in await reader.fetch(0.5):
                verdict = orjson.loads(record.value)
                result.verdicts += 1
                _show(console, verdict, start)
                if verdict["final"]:
                    result.finals[verdict["deployment_id"]] = verdict

    daemon_task = asyncio.create_task(daemon.run())
    producer_task = asyncio.create_task(produce())
    try:
        await watch()
    finally:
        producer_task.cancel()
        daemon.request_stop()
        await asyncio.gather(daemon_task, producer_task, return_exceptions=True)
        await reader.stop()
        await producer.stop()
    result.wall_seconds = time.monotonic() - began
    _final_table(console, result)
    return result


def _describe(scenario: Scenario) -> str:
    if scenario.canary_error_ratio is not None:
        return (
            f"canary error ratio {scenario.error_ratio:.2%} -> {scenario.canary_error_ratio:.0%}"
            f" after {scenario.regression_from:g}s (critical metric 'requests')"
        )
    if scenario.latency_factor != 1.0:
        return f"canary latency x{scenario.latency_factor:g}"
    return "healthy canary, same latency and error ratio as its baseline"


def _show(console: Console, verdict: dict[str, Any], start: float) -> None:
    decision = str(verdict["decision"])
    colour = _COLOURS.get(decision, "white")
    window = verdict["window"]
    elapsed = _elapsed(parse_time(str(window["end"])) - start)
    score = verdict["score"]
    score_text = "  -  " if score is None else f"{score:5.1f}"
    console.print(
        f"[dim]{elapsed}[/] {verdict['deployment_id']:<14} "
        f"[{colour}]{decision:<12}[/] score {score_text}  {verdict['summary']}",
        highlight=False,
    )


def _elapsed(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"+{minutes:02d}:{rest:02d}"


def _final_table(console: Console, result: DemoResult) -> None:
    table = Table(title=f"final verdicts ({result.verdicts} published, {result.wall_seconds:.1f}s)")
    table.add_column("deployment")
    table.add_column("decision")
    table.add_column("decided at")
    table.add_column("why")
    for dep_id, verdict in result.finals.items():
        decision = str(verdict["decision"])
        window = verdict["window"]
        table.add_row(
            dep_id,
            f"[{_COLOURS.get(decision, 'white')}]{decision}[/]",
            _elapsed(parse_time(str(window["end"])) - result.start),
            str(verdict["summary"]),
        )
    console.print(table)
