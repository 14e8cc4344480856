"""``coalmine demo``: the whole system in one process, on the in-memory bus or on Kafka.

A simulator plays two canaries onto the bus on compressed event time: a healthy one and
one whose error ratio jumps to 2% after a minute. The daemon judges them exactly as it
would on Kafka; the terminal shows every verdict as it is published. With a
configuration (``coalmine demo --config``) the same happens on the Kafka it names: the
simulated events go to its deployments and metrics topics, a daemon in this process
judges them, and the verdicts are read back from its verdict topic.

``coalmine demo --strategy blue_green`` plays two blue-green switches instead: blue has
served alone for 9 minutes (played at once), green gets a mirrored share in a one-minute
preview, then all traffic; after the switch green is judged against blue's last 10 minutes.
One green is healthy and promoted; the other's error ratio jumps at the switch and it is
switched back to blue.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import orjson
from rich.console import Console
from rich.table import Table

from coalmine._exceptions import TransportError
from coalmine.bus.base import Outgoing
from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import (
    HttpSettings,
    MetricSpec,
    Profile,
    ReferenceSpec,
    TopicsSettings,
)
from coalmine.config.settings import Settings
from coalmine.contract import parse_time
from coalmine.daemon.app import Daemon
from coalmine.tools.pipeline import DECISION_COLOURS
from coalmine.tools.simulator import Scenario, SimulatedMessage, simulate

if TYPE_CHECKING:
    from coalmine.bus.base import Transport

Strategy = Literal["canary", "blue_green"]
"""What the demo plays: side-by-side canaries, or blue-green switches."""

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

DEMO_BLUE_GREEN_PROFILE = Profile(
    interval=30.0,
    min_duration=180.0,
    max_duration=600.0,
    metrics=DEMO_PROFILE.metrics,
    reference=ReferenceSpec(before=600.0),
)
"""The demo's timing; after the switch, green against blue's last 10 minutes before it."""

DEMO_BLUE_GREEN_PROFILE_NAME = "coalmine-demo-blue-green"

DEMO_BLUE_GREEN_SCENARIOS = (
    Scenario(
        "search-v19",
        "search",
        baseline_version="v18",
        canary_version="v19",
        profile=DEMO_BLUE_GREEN_PROFILE_NAME,
        strategy="blue_green",
        switch_at=60.0,
        history=540.0,
        latency_samples_per_second=5.0,
    ),
    Scenario(
        "orders-v5",
        "orders",
        canary_error_ratio=0.02,
        regression_from=60.0,
        baseline_version="v4",
        canary_version="v5",
        profile=DEMO_BLUE_GREEN_PROFILE_NAME,
        strategy="blue_green",
        switch_at=60.0,
        history=540.0,
        latency_samples_per_second=5.0,
    ),
)
"""Blue alone for 9 minutes, a one-minute preview from +00:00, switched at +01:00."""


@dataclass
class DemoResult:
    """Final verdicts (as published JSON) per deployment id, and how long it took."""

    finals: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: int = 0
    wall_seconds: float = 0.0
    start: float = 0.0
    seen: list[dict[str, Any]] = field(default_factory=list)
    """Every verdict of this run, final or not, in the order read."""


DEMO_PROFILE_NAME = "coalmine-demo"
"""The demo's profile, added to a configuration's for ``coalmine demo --config``."""

_BLUE_GREEN_EXPLANATION = (
    "Blue-green: blue, the version in service, serves all traffic. In the preview, from"
    " +00:00, green gets a 10% mirrored copy of it and is compared with blue side by side,"
    " as a canary at weight 0; a preview never promotes. At the switch, +01:00, green takes"
    " all traffic and blue none: green is then compared with blue's own metrics of the 10"
    " minutes before the switch (blue's 9 minutes alone, before the preview, are played at"
    " once) and with the objective, min_duration counting from the switch. A rollback then"
    " means switch back to blue; a promote, that blue can be scaled down."
)
"""Told before a blue-green demo (its numbers are those of the scenarios and profile)."""


@dataclass(frozen=True, slots=True)
class _Play:
    """What a ``--strategy`` plays: its profile (and its name), scenarios and how it is told."""

    profile: Profile
    profile_name: str
    scenarios: tuple[Scenario, ...]
    what: str
    timing: str
    explanation: str | None = None


_PLAYS: dict[str, _Play] = {
    "canary": _Play(
        DEMO_PROFILE,
        DEMO_PROFILE_NAME,
        DEMO_SCENARIOS,
        "canaries",
        "judge every 30s, promote from 3m, decide by 10m",
    ),
    "blue_green": _Play(
        DEMO_BLUE_GREEN_PROFILE,
        DEMO_BLUE_GREEN_PROFILE_NAME,
        DEMO_BLUE_GREEN_SCENARIOS,
        "blue-green switches",
        "judge every 30s; from the switch, green against blue's last 10m,"
        " promote from 3m, decide by 10m",
        _BLUE_GREEN_EXPLANATION,
    ),
}


async def run_demo(
    *,
    speed: float = 10.0,
    seed: int = 11,
    console: Console | None = None,
    settings: Settings | None = None,
    strategy: Strategy = "canary",
) -> DemoResult:
    """Play the demo scenarios and return once every deployment has a final verdict.

    Without ``settings``, on an in-memory bus; with them, on their Kafka (whose four
    topics must exist), with deployment ids of this run's own. ``strategy`` chooses
    side-by-side canaries or blue-green switches.
    """
    console = console or Console()
    play = _PLAYS[strategy]
    start = round(time.time())
    if settings is None:
        settings, scenarios, bus = _in_memory(play)
    else:
        settings, scenarios, bus = await _on_kafka(settings, start, play)
    topics = settings.topics
    daemon = Daemon(settings, bus.daemon)
    producer, reader = bus.producer, bus.reader
    await producer.start()
    began = time.monotonic()
    result = DemoResult(start=start)
    _introduce(console, play, scenarios, bus.name, speed)
    by_id = {s.deployment_id: s for s in scenarios}
    # to max_duration and its grace: from the started, or from a blue-green's switch
    duration = 660.0 + max(
        (s.switch_at for s in scenarios if s.strategy == "blue_green"), default=0.0
    )

    async def produce() -> None:
        for message in simulate(scenarios, start=start, duration=duration, step=5.0, seed=seed):
            delay = (message.time - start) / speed - (time.monotonic() - began)
            if delay > 0:
                await asyncio.sleep(delay)
            topic = topics.deployments if message.topic == "deployments" else topics.metrics
            await producer.publish([Outgoing(topic, message.value, message.key)])
            if play.explanation is not None and message.topic == "deployments":
                _show_phase(console, message, by_id, start)

    daemon_task = asyncio.create_task(daemon.run())
    producer_task = asyncio.create_task(produce())
    try:
        await _watch(reader, set(by_id), result, console)
    finally:
        producer_task.cancel()
        daemon.request_stop()
        await asyncio.gather(daemon_task, producer_task, return_exceptions=True)
        await producer.stop()
    result.wall_seconds = time.monotonic() - began
    _final_table(console, result)
    return result


def _introduce(
    console: Console, play: _Play, scenarios: tuple[Scenario, ...], where: str, speed: float
) -> None:
    console.print(
        f"[bold]coalmine demo[/]: {len(scenarios)} {play.what} on {where}, "
        f"event time x{speed:g}. Profile: {play.timing}."
    )
    if play.explanation is not None:
        console.print(play.explanation)
    for scenario in scenarios:
        console.print(f"  {scenario.deployment_id}: {_describe(scenario)}")


async def _watch(reader: Any, ours: set[str], result: DemoResult, console: Console) -> None:
    """Show this run's verdicts as they are read, until each deployment has its final."""
    async for records in reader:
        for record in records:
            verdict = orjson.loads(record.value)
            if verdict.get("deployment_id") not in ours:
                continue  # another run's, on a real broker
            result.verdicts += 1
            result.seen.append(verdict)
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


def _in_memory(play: _Play) -> tuple[Settings, tuple[Scenario, ...], _Bus]:
    topics = TopicsSettings()
    broker = MemoryBroker()
    for name in (topics.deployments, topics.metrics, topics.verdicts, topics.dead_letter):
        broker.create_topic(name, partitions=1)
    profiles = {"default": DEMO_PROFILE}
    if play.profile is not DEMO_PROFILE:
        profiles[play.profile_name] = play.profile
    settings = Settings(profiles=profiles, http=HttpSettings(enabled=False))
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

    return settings, play.scenarios, _Bus("the in-memory bus", daemon, producer, verdicts())


async def _on_kafka(
    settings: Settings, start: int, play: _Play
) -> tuple[Settings, tuple[Scenario, ...], _Bus]:
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
    profiles = {**settings.profiles, play.profile_name: play.profile}
    settings = settings.model_copy(
        update={"profiles": profiles, "http": HttpSettings(enabled=False)}
    )
    run = time.strftime("%H%M%S", time.gmtime(start))
    scenarios = tuple(
        replace(s, deployment_id=f"{s.deployment_id}-{run}", profile=play.profile_name)
        for s in play.scenarios
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
    if scenario.strategy == "blue_green":
        return _describe_switch(scenario)
    if scenario.canary_error_ratio is not None:
        return (
            f"canary error ratio {scenario.error_ratio:.2%} -> {scenario.canary_error_ratio:.0%}"
            f" after {scenario.regression_from:g}s (critical metric 'requests')"
        )
    if scenario.latency_factor != 1.0:
        return f"canary latency x{scenario.latency_factor:g}"
    return "healthy canary, same latency and error ratio as its baseline"


def _describe_switch(scenario: Scenario) -> str:
    versions = f"blue {scenario.baseline_version} -> green {scenario.canary_version}"
    late = scenario.regression_from - scenario.switch_at
    when = "from the switch" if late <= 0 else f"{late:g}s after the switch"
    if scenario.canary_error_ratio is not None:
        return (
            f"{versions}; green's error ratio {scenario.error_ratio:.2%} ->"
            f" {scenario.canary_error_ratio:.0%} {when} (critical metric 'requests')"
        )
    if scenario.latency_factor != 1.0:
        return f"{versions}; green's latency x{scenario.latency_factor:g} {when}"
    return f"{versions}; healthy green, same latency and error ratio as blue"


def _show_phase(
    console: Console, message: SimulatedMessage, scenarios: dict[str, Scenario], start: float
) -> None:
    """A blue-green deploy event as it is published: the preview, the switch."""
    event = orjson.loads(message.value)
    scenario = scenarios[event["deployment_id"]]
    blue, green = scenario.baseline_version, scenario.canary_version
    if event.get("phase") == "preview":
        share = f"{scenario.mirrored_share:.0%}"
        what = f"green {green} deployed, gets a {share} mirrored copy; blue {blue} serves all"
    else:
        what = f"green {green} serves all traffic, blue {blue} none"
    console.print(
        f"[dim]{_elapsed(message.time - start)}[/] {scenario.deployment_id:<14} "
        f"[bold]{event.get('phase', event['event']):<12}[/] {what}",
        highlight=False,
    )


def _show(console: Console, verdict: dict[str, Any], start: float) -> None:
    decision = str(verdict["decision"])
    colour = DECISION_COLOURS.get(decision, "white")
    window = verdict["window"]
    elapsed = _elapsed(parse_time(str(window["end"])) - start)
    score = verdict["score"]
    score_text = "  -  " if score is None else f"{score:5.1f}"
    console.print(
        f"[dim]{elapsed}[/] {verdict['deployment_id']:<14} "
        f"[{colour}]{decision:<12}[/] score {score_text}  {_why(verdict)}",
        highlight=False,
    )


def _why(verdict: dict[str, Any]) -> str:
    """The verdict's summary; for a blue-green's final, what to do with blue first."""
    summary = str(verdict["summary"])
    if verdict.get("strategy") != "blue_green" or not verdict["final"]:
        return summary
    switched = "reference" in verdict.get("checks", {})
    if verdict["decision"] == "rollback":
        return f"{'switch back to blue' if switched else 'do not switch, keep blue'}: {summary}"
    if verdict["decision"] == "promote":
        return f"blue can be scaled down: {summary}"
    return summary


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
            f"[{DECISION_COLOURS.get(decision, 'white')}]{decision}[/]",
            _elapsed(parse_time(str(window["end"])) - result.start),
            _why(verdict),
        )
    console.print(table)
