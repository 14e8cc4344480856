"""``coalmine demo``: the whole system in one process, on the in-memory bus or on Kafka.

A simulator plays two canaries onto the bus on compressed event time: a healthy one and
one whose error ratio jumps to 2% after a minute. The daemon judges them exactly as it
would on Kafka; the terminal shows every verdict as it is published. With a
configuration (``coalmine demo --config``) the same happens on the Kafka it names: the
simulated events go to its deployments and metrics topics, a daemon in this process
judges them, and the verdicts are read back from its verdict topic.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.table import Table

from coalmine._exceptions import TransportError
from coalmine.bus.base import Outgoing
from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import HttpSettings, MetricSpec, Profile, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.contract import parse_time
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import Scenario, simulate

if TYPE_CHECKING:
    from coalmine.bus.base import Transport

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


DEMO_PROFILE_NAME = "coalmine-demo"
"""The demo's profile, added to a configuration's for ``coalmine demo --config``."""


async def run_demo(
    *,
    speed: float = 10.0,
    seed: int = 11,
    console: Console | None = None,
    settings: Settings | None = None,
) -> DemoResult:
    """Play the demo scenarios and return once every deployment has a final verdict.

    Without ``settings``, on an in-memory bus; with them, on their Kafka (whose four
    topics must exist), with deployment ids of this run's own.
    """
    console = console or Console()
    start = round(time.time())
    if settings is None:
        settings, scenarios, bus = _in_memory()
    else:
        settings, scenarios, bus = await _on_kafka(settings, start)
    topics = settings.topics
    daemon = Daemon(settings, bus.daemon)
    producer, reader = bus.producer, bus.reader
    await producer.start()
    began = time.monotonic()
    result = DemoResult(start=start)

    console.print(
        f"[bold]coalmine demo[/]: {len(scenarios)} canaries on {bus.name}, "
        f"event time x{speed:g}. Profile: judge every 30s, promote from 3m, decide by 10m."
    )
    for scenario in scenarios:
        console.print(f"  {scenario.deployment_id}: {_describe(scenario)}")

    async def produce() -> None:
        for message in simulate(scenarios, start=start, duration=660.0, step=5.0, seed=seed):
            delay = (message.time - start) / speed - (time.monotonic() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            topic = topics.deployments if message.topic == "deployments" else topics.metrics
            await producer.publish([Outgoing(topic, message.value, message.key)])

    daemon_task = asyncio.create_task(daemon.run())
    producer_task = asyncio.create_task(produce())
    try:
        await _watch(reader, {s.deployment_id for s in scenarios}, result, console)
    finally:
        producer_task.cancel()
        daemon.request_stop()
        await asyncio.gather(daemon_task, producer_task, return_exceptions=True)
        await producer.stop()
    result.wall_seconds = time.monotonic() - began
    _final_table(console, result)
    return result


async def _watch(reader: Any, ours: set[str], result: DemoResult, console: Console) -> None:
    """Show this run's verdicts as they are read, until each deployment has its final."""
    async for records in reader:
        for record in records:
            verdict = orjson.loads(record.value)
            if verdict.get("deployment_id") not in ours:
                continue  # another run's, on a real broker
            result.verdicts += 1
            _show(console, verdict, result.start)
            if verdict["final"]:
                result.finals[verdict["deployment_id"]] = verdict
        if len(result.finals) == len(ours):
            return


@dataclass(frozen=True, slots=True)
class _Bus:
    """Where the demo runs: the daemon's transport, the simulator's, the verdict reader."""

    name: str
    daemon: Transport
    producer: Transport
    reader: Any  # an async iterator of record lists


def _in_memory() -> tuple[Settings, tuple[Scenario, ...], _Bus]:
    topics = TopicsSettings()
    broker = MemoryBroker()
    for name in (topics.deployments, topics.metrics, topics.verdicts, topics.dead_letter):
        broker.create_topic(name, partitions=1)
    settings = Settings(profiles={"default": DEMO_PROFILE}, http=HttpSettings(enabled=False))
    daemon = MemoryTransport(broker, [topics.deployments, topics.metrics], "coalmine")
    producer = MemoryTransport(broker, [], "demo-producer")
    reader = MemoryTransport(broker, [topics.verdicts], "demo-reader")

    async def verdicts() -> Any:
        await reader.start()
        try:
            while True:
                yield await reader.fetch(0.5)
        finally:
            await reader.stop()

    return settings, DEMO_SCENARIOS, _Bus("the in-memory bus", daemon, producer, verdicts())


async def _on_kafka(settings: Settings, start: int) -> tuple[Settings, tuple[Scenario, ...], _Bus]:
    """The configuration's Kafka, the demo profile added, deployment ids of this run."""
    from coalmine.bus.connect import build_transport  # noqa: PLC0415
    from coalmine.bus.kafka import KafkaTransport, partition_counts  # noqa: PLC0415

    topics = settings.topics
    wanted = [topics.deployments, topics.metrics, topics.verdicts, topics.dead_letter]
    missing = set(wanted) - (await partition_counts(settings.kafka, wanted)).keys()
    if missing:
        names = ", ".join(sorted(missing))
        msg = f"missing topics: {names} (create them: coalmine topics --config with this file)"
        raise TransportError(msg)
    profiles = {**settings.profiles, DEMO_PROFILE_NAME: DEMO_PROFILE}
    settings = settings.model_copy(
        update={"profiles": profiles, "http": HttpSettings(enabled=False)}
    )
    run = time.strftime("%H%M%S", time.gmtime(start))
    scenarios = tuple(
        replace(s, deployment_id=f"{s.deployment_id}-{run}", profile=DEMO_PROFILE_NAME)
        for s in DEMO_SCENARIOS
    )
    producer = KafkaTransport(settings.kafka, [], produce=[topics.deployments, topics.metrics])
    verdicts = KafkaTransport(settings.kafka, [], produce=[topics.verdicts])

    async def follow() -> Any:
        await verdicts.start()
        try:
            async for records in verdicts.follow([topics.verdicts]):
                yield records
        finally:
            await verdicts.stop()

    bus = _Bus(
        f"Kafka at {settings.kafka.bootstrap_servers}",
        build_transport(settings),
        producer,
        follow(),
    )
    return settings, scenarios, bus


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
