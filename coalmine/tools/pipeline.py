"""Helpers for deployment pipelines: announce a deployment, wait for its final verdict.

``coalmine start`` / ``coalmine finish`` publish a deploy event (keyed by service, time =
now) where the daemon reads them: Kafka when ``[bus] consume`` names it, else MQTT.
``coalmine wait`` follows the verdicts where the daemon publishes them (Kafka when
``[bus] publish`` names it, else MQTT) until the deployment's final verdict, and turns
it into an exit code a pipeline can branch on:

| decision | exit code |
|---|---|
| ``promote`` | 0 |
| ``rollback`` | 1 |
| ``inconclusive`` | 3 |
| no final verdict in time | 4 |

(2 stays bad usage or configuration, as for every command.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from coalmine._exceptions import TransportError
from coalmine.contract import decode_deploy_event
from coalmine.contract import look_of as _look_of_id

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from coalmine.bus.base import Outgoing
    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings

__all__ = [
    "DECISION_COLOURS",
    "EXIT_CODES",
    "EXIT_TIMEOUT",
    "Prepared",
    "WaitResult",
    "announce",
    "describe",
    "exit_code",
    "look_of",
    "prepare_events",
    "send_events",
    "wait_for_verdict",
]

EXIT_CODES = {"promote": 0, "advance": 0, "rollback": 1, "inconclusive": 3}
"""Exit code of ``coalmine wait`` per decision it returns at (``advance`` with ``--step``)."""
EXIT_TIMEOUT = 4
"""Exit code of ``coalmine wait`` when no final verdict arrived in time."""

_RETRY = 1.0
"""Seconds between attempts to follow the verdicts while the broker fails."""


def exit_code(decision: str | None) -> int:
    """The exit code for a final decision; ``EXIT_TIMEOUT`` for none."""
    if decision is None:
        return EXIT_TIMEOUT
    return EXIT_CODES.get(decision, EXIT_TIMEOUT)


def look_of(verdict: dict[str, Any]) -> int | None:
    """The judgement index ``k`` of a verdict id ``<deployment_id>/<k>``."""
    verdict_id = verdict.get("verdict_id")
    return _look_of_id(verdict_id) if isinstance(verdict_id, str) else None


# ------------------------------------------------------------------------ publishing


async def announce(settings: Settings, value: bytes, service: str) -> str:
    """Publish a deploy event where the daemon reads deploy events; return where it went.

    Raises:
        TransportError: the broker cannot be reached, refused it, or (Kafka) the
            deployments topic does not exist.
    """
    topic = settings.topics.deployments
    if "kafka" in settings.bus.consume:
        await _publish_kafka(settings.kafka, topic, value, service.encode())
        return f"Kafka topic {topic}"
    from coalmine.bus.mqtt import MqttSession, topic_level  # noqa: PLC0415 - aiomqtt only if used

    mqtt_topic = f"{settings.mqtt.topic_prefix}/deployments/{topic_level(service)}"
    async with MqttSession(settings.mqtt, "start") as client:
        await client.publish(mqtt_topic, value, qos=1, timeout=settings.mqtt.timeout)
    return f"MQTT topic {mqtt_topic}"


@dataclass(frozen=True, slots=True)
class Prepared:
    """One event (or metric message) checked against the contract, ready to send."""

    kind: Literal["deployments", "metrics"]
    service: str
    value: bytes


def prepare_events(lines: Iterable[str]) -> list[Prepared]:
    """JSON Lines of deploy events and metric messages, each checked against the contract.

    A line with an ``event`` key is a deploy event; any other is a metric message (one
    event or an array of them, all of one service: it is keyed by service). Blank lines
    are skipped.

    Raises:
        ContractError: with every problem, by line number; nothing is sent.
    """
    from coalmine._exceptions import ContractError  # noqa: PLC0415
    from coalmine.contract import decode_metric_events  # noqa: PLC0415

    prepared: list[Prepared] = []
    problems: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        value = text.encode()
        try:
            obj = orjson.loads(value)
            if isinstance(obj, dict) and "event" in obj:
                service = decode_deploy_event(value).service
                prepared.append(Prepared("deployments", service, value))
                continue
            services = {event.service for event in decode_metric_events(value)}
        except orjson.JSONDecodeError as exc:
            problems.append(f"line {number}: not JSON: {exc}")
            continue
        except ContractError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if len(services) != 1:
            names = ", ".join(sorted(services))
            problems.append(f"line {number}: events of {names}: one service per message")
            continue
        prepared.append(Prepared("metrics", services.pop(), value))
    if problems:
        raise ContractError("invalid_input", "; ".join(problems))
    return prepared


async def send_events(settings: Settings, events: Sequence[Prepared]) -> str:
    """Publish ``events`` in order, keyed by service, where the daemon reads them.

    Kafka (when ``[bus] consume`` names it): the deployments and metrics topics, with the
    murmur2 partitioner the daemon expects; else MQTT, ``<prefix>/<kind>/<service>``.
    Returns where they went.

    Raises:
        TransportError: the broker cannot be reached or refused them, or (Kafka) a topic
            does not exist.
    """
    topics = {"deployments": settings.topics.deployments, "metrics": settings.topics.metrics}
    if "kafka" in settings.bus.consume:
        from coalmine.bus.base import Outgoing  # noqa: PLC0415

        await _publish_kafka_all(
            settings.kafka,
            [Outgoing(topics[e.kind], e.value, e.service.encode()) for e in events],
        )
        return f"Kafka topics {topics['deployments']}, {topics['metrics']}"
    from coalmine.bus.mqtt import MqttSession, topic_level  # noqa: PLC0415 - aiomqtt only if used

    prefix = settings.mqtt.topic_prefix
    async with MqttSession(settings.mqtt, "send") as client:
        for event in events:
            topic = f"{prefix}/{event.kind}/{topic_level(event.service)}"
            await client.publish(topic, event.value, qos=1, timeout=settings.mqtt.timeout)
    return f"MQTT topics {prefix}/deployments/..., {prefix}/metrics/..."


async def _publish_kafka(kafka: KafkaSettings, topic: str, value: bytes, key: bytes) -> None:
    from coalmine.bus.base import Outgoing  # noqa: PLC0415

    await _publish_kafka_all(kafka, [Outgoing(topic, value, key)])


async def _publish_kafka_all(kafka: KafkaSettings, messages: Sequence[Outgoing]) -> None:
    from coalmine.bus.kafka import KafkaTransport, partition_counts  # noqa: PLC0415

    # Never let the producer's metadata request create a topic with a broker default
    # partition count: deployments and metrics must be co-partitioned.
    wanted = sorted({message.topic for message in messages})
    existing = await partition_counts(kafka, wanted)
    for topic in wanted:
        if topic not in existing:
            raise TransportError(f"topic {topic} does not exist: create it first (see README)")
    transport = KafkaTransport(kafka, [], produce=wanted)
    await transport.start()
    try:
        await transport.publish(messages)
    finally:
        await transport.stop()


# ------------------------------------------------------------------------ waiting


@dataclass(slots=True)
class WaitResult:
    """How ``wait`` ended: the final verdict (``None`` on timeout) and the latest one seen."""

    final: dict[str, Any] | None
    latest: dict[str, Any] | None
    seen: int
    waited: float
    error: str | None = None
    """The last broker error, when the broker could not be read (retried until the end)."""

    @property
    def exit_code(self) -> int:
        """0 promote, 1 rollback, 3 inconclusive, 4 timeout."""
        return exit_code(None if self.final is None else str(self.final.get("decision")))


async def wait_for_verdict(
    settings: Settings,
    deployment_id: str,
    timeout: float,  # noqa: ASYNC109 - a deadline for the whole wait, reported as a result
    on_verdict: Callable[[dict[str, Any]], None] | None = None,
    *,
    advance_at: float | None = None,
) -> WaitResult:
    """Follow the verdicts until ``deployment_id``'s final one, for at most ``timeout`` s.

    With ``advance_at``, an ``advance`` verdict at that traffic weight ends the wait too
    (``WaitResult.final`` is then that verdict): a pipeline steps on it.

    Every verdict of the deployment (each id once) is passed to ``on_verdict``. Verdicts
    published before the call count: Kafka's verdict topic is read from its beginning,
    and MQTT verdicts are retained. Broker errors are retried until the deadline (a
    pipeline must not read an unreachable broker as a rollback); the last one is
    reported in ``WaitResult.error``.
    """
    began = time.monotonic()
    seen: dict[str, dict[str, Any]] = {}
    state: dict[str, dict[str, Any] | None] = {"latest": None}

    def take(verdict: dict[str, Any]) -> bool:
        if verdict.get("deployment_id") != deployment_id:
            return False
        verdict_id = str(verdict.get("verdict_id"))
        ends = bool(verdict.get("final")) or (
            advance_at is not None
            and verdict.get("decision") == "advance"
            and verdict.get("traffic_weight") == advance_at
        )
        if verdict_id in seen:
            return ends
        seen[verdict_id] = verdict
        state["latest"] = verdict
        if on_verdict is not None:
            on_verdict(verdict)
        return ends

    follow = _follow_kafka if "kafka" in settings.bus.publish else _follow_mqtt
    final: dict[str, Any] | None = None
    error: str | None = None
    try:
        async with asyncio.timeout(timeout):
            while final is None:
                try:
                    final = await follow(settings, deployment_id, take)
                except TransportError as exc:
                    error = str(exc)
                    await asyncio.sleep(_RETRY)
    except TimeoutError:
        final = None
    return WaitResult(final, state["latest"], len(seen), time.monotonic() - began, error)


def _parse(value: bytes | bytearray | None) -> dict[str, Any] | None:
    if not value:
        return None
    try:
        verdict = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return verdict if isinstance(verdict, dict) else None


async def _follow_kafka(
    settings: Settings, deployment_id: str, take: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    from coalmine.bus.kafka import follow  # noqa: PLC0415 - aiokafka only if used

    topic, key = settings.topics.verdicts, deployment_id.encode()
    # The topic may not exist yet (the daemon creates nothing): follow looks again until
    # it does, never asking for it by name (a broker may auto-create it wrongly).
    # With transactions, only verdicts whose transaction committed: an aborted one is
    # published again, and a pipeline must not act on the copy that was thrown away.
    committed = settings.kafka.transactional_id is not None
    reading = follow(
        settings.kafka,
        [topic],
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    async with contextlib.aclosing(reading) as batches:
        async for records in batches:
            for record in records:
                if record.key is not None and record.key != key:
                    continue
                verdict = _parse(record.value)
                if verdict is not None and take(verdict):
                    return verdict
    raise TransportError(f"following {topic}: the reader stopped")


async def _follow_mqtt(
    settings: Settings, deployment_id: str, take: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    import aiomqtt  # noqa: PLC0415

    from coalmine.bus.mqtt import MqttSession, topic_level  # noqa: PLC0415

    topic = f"{settings.mqtt.topic_prefix}/verdicts/+/{topic_level(deployment_id)}"
    async with MqttSession(settings.mqtt, "wait") as client:
        try:
            await client.subscribe(topic, qos=1)
            async for message in client.messages:
                payload = message.payload
                verdict = _parse(payload if isinstance(payload, bytes | bytearray) else None)
                if verdict is not None and take(verdict):
                    return verdict
        except aiomqtt.MqttError as err:
            raise TransportError(f"following {topic}: {err}") from err
    raise TransportError(f"following {topic}: the connection closed")


DECISION_COLOURS = {
    "continue": "cyan",
    "advance": "blue",
    "promote": "green",
    "rollback": "red",
    "inconclusive": "yellow",
}
"""The colour each decision is shown in on a terminal."""


def _event_offset(verdict: dict[str, Any]) -> float | None:
    from coalmine._exceptions import ContractError  # noqa: PLC0415
    from coalmine.contract import parse_time  # noqa: PLC0415

    window = verdict.get("window")
    if not isinstance(window, dict):
        return None
    try:
        return parse_time(window.get("end")) - parse_time(window.get("start"))
    except ContractError:
        return None


def describe(verdict: dict[str, Any], *, plain: bool = False) -> str:
    """One line for a verdict: decision, look, event time since ``started``, summary.

    Rich markup colours the decision unless ``plain``.
    """
    decision = str(verdict.get("decision"))
    shown = decision if plain else f"[{DECISION_COLOURS.get(decision, 'white')}]{decision}[/]"
    look = look_of(verdict)
    offset = _event_offset(verdict)
    at = ""
    if offset is not None:
        minutes, seconds = divmod(round(offset), 60)
        at = f" at +{minutes:02d}:{seconds:02d}"
    score = verdict.get("score")
    scored = f" score {score:g}" if isinstance(score, int | float) else ""
    summary = verdict.get("summary", "")
    if not plain:
        from rich.markup import escape  # noqa: PLC0415

        summary = escape(str(summary))
    return f"{shown} {verdict.get('verdict_id')} (look {look}{at}{scored}): {summary}"
