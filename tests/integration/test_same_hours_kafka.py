"""A migration phase judged against the same hours yesterday, read by time from Kafka.

On Kafka the daemon does not keep a day of each service's metrics: when the phase starts it
reads yesterday's window from the metrics topic by time (the partition the phase's
``started`` came from, outside the consumer group) and judges nothing until it has them.
Records are stamped with their event times, as a producer sending live metrics stamps
them. The daemon's group starts after yesterday's records (committed at their end), so only
the read by time can bring them; the phase is an hour old, so the rest is a backlog.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics
from coalmine.config.models import DAY, ReferenceSpec
from coalmine.contract import format_time, parse_time
from coalmine.daemon.app import Daemon
from tests.integration.test_cli_tools_kafka import read_verdicts
from tests.integration.test_past_kafka import MIGRATION, queries, settings_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings

YESTERDAY = MIGRATION.model_copy(update={"reference": ReferenceSpec(days=(1,))})


async def send_stamped(settings: Settings, topic: str, values: list[bytes], key: bytes) -> None:
    """Send each value stamped with its event time (the ``time`` of its first event)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for value in values:
            event = orjson.loads(value)
            at = parse_time((event[0] if isinstance(event, list) else event)["time"])
            await producer.send(topic, value, key=key, timestamp_ms=int(at * 1000))
        await producer.flush()
    finally:
        await producer.stop()


async def commit_to_end(settings: Settings, topic: str) -> None:
    """Commit the daemons' group at the end of ``topic``: it reads only what comes later."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.kafka.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (0, 1)]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()


def other_service(values: list[bytes]) -> list[bytes]:
    """The same samples as another service's, ten times slower: never part of the window."""
    out = []
    for value in values:
        event = orjson.loads(value)
        event["service"] = "billing-db"
        event["values"] = [v * 10 for v in event["values"]]
        out.append(orjson.dumps(event))
    return out


async def test_a_migration_phase_is_judged_against_yesterday_read_by_time(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    settings = settings_for(kafka_settings, topic_name)
    settings = settings.model_copy(update={"profiles": {"default": YESTERDAY}})
    t = settings.topics
    await ensure_topics(
        settings.kafka, {t.deployments: 2, t.metrics: 2, t.verdicts: 1, t.dead_letter: 1}
    )
    change = math.floor(time.time() / 10) * 10 - 3600.0
    yesterday = queries(change - DAY, change - DAY + 900, 1.0, seed=1)
    await send_stamped(settings, t.metrics, yesterday, b"orders-db")
    await send_stamped(settings, t.metrics, other_service(yesterday), b"orders-db")
    # The hours around it, a day ago, are not part of the window.
    await send_stamped(
        settings, t.metrics, queries(change - DAY + 900, change - DAY + 1800, 3.0, 2), b"orders-db"
    )
    await commit_to_end(settings, t.metrics)
    started = {
        "event": "started",
        "deployment_id": "orders-db-backfill",
        "service": "orders-db",
        "time": format_time(change),
        "strategy": "migration",
        "phase": "backfill",
    }
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(t.deployments, orjson.dumps(started), key=b"orders-db")
    finally:
        await producer.stop()
    await send_stamped(
        settings, t.metrics, queries(change, change + 900, 1.3, seed=3), b"orders-db"
    )

    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    try:
        verdicts = await read_verdicts(settings, lambda vs: any(v["final"] for v in vs))
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    final = next(v for v in verdicts if v["final"])
    assert final["decision"] == "rollback", final["summary"]
    assert "query_ms +" in final["summary"]
    reference = final["checks"]["reference"]
    assert reference["days"] == "1"
    assert reference["same_hours_start"] == format_time(change - DAY)
    looked = parse_time(final["time"]) - change
    assert reference["same_hours_end"] == format_time(change - DAY + looked)
    # Yesterday's samples up to the same time of day (six messages a minute and the one
    # at the change), none of the other service's or of the hours after the window.
    query = final["metrics"][0]
    assert query["n_baseline"] == (looked / 10 + 1) * 20
    assert query["detail"]["median_baseline"] < 25
    # Every verdict compared with as much of yesterday as of today.
    for verdict in verdicts:
        elapsed = parse_time(verdict["time"]) - change
        assert verdict["metrics"][0]["n_baseline"] == (elapsed / 10 + 1) * 20
