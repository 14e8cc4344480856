"""A migration phase judged against the service's own past, on a real broker, across a restart.

The service's untagged metrics of the 30 minutes before the phase are on the metrics topic
before its ``started``; a daemon keeps them as the service's history and hands them to the
phase when it starts. It is stopped after two healthy looks, and a second daemon of the
group rebuilds the phase from the log while the queries slow down: recovery must re-read
the reference window too, so the final verdict compares with every sample of it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics
from coalmine.config.models import (
    HttpSettings,
    MetricSpec,
    Profile,
    ReferenceSpec,
    TopicsSettings,
)
from coalmine.config.settings import Settings
from coalmine.contract import format_time
from coalmine.daemon.app import Daemon
from tests.integration.test_cli_tools_kafka import read_verdicts
from tests.polling import eventually

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings

CHANGE = 1_800_000_000.0
MIGRATION = Profile(
    interval=60,
    min_duration=300,
    max_duration=900,
    metrics=(MetricSpec(name="query_ms", direction="increase"),),
    reference=ReferenceSpec(before=1800),
)


def settings_for(kafka: KafkaSettings, topic_name: Callable[[str], str]) -> Settings:
    return Settings(
        kafka=kafka.model_copy(update={"session_timeout": 1.0}),
        topics=TopicsSettings(
            deployments=topic_name("deployments"),
            metrics=topic_name("metrics"),
            verdicts=topic_name("verdicts"),
            dead_letter=topic_name("dlq"),
        ),
        profiles={"default": MIGRATION},
        http=HttpSettings(enabled=False),
    )


def queries(start: float, end: float, factor: float, seed: int) -> list[bytes]:
    """Untagged ``query_ms`` samples of service orders-db every 10 s; ``factor`` x slower."""
    rng = np.random.default_rng(seed)
    return [
        orjson.dumps(
            {
                "service": "orders-db",
                "metric": "query_ms",
                "time": format_time(float(t)),
                "values": np.round(rng.lognormal(3.0, 0.4, 20) * factor, 2).tolist(),
            }
        )
        for t in np.arange(start, end, 10.0)
    ]


async def send(settings: Settings, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, key=b"orders-db")
        await producer.flush()
    finally:
        await producer.stop()


async def committed(settings: Settings, topic: str, count: int) -> bool:
    """Has the daemons' group committed ``count`` records of ``topic`` (both partitions)?"""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.kafka.group_id
    )
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in (0, 1)]
    finally:
        await consumer.stop()
    return sum(offset or 0 for offset in offsets) >= count


async def test_a_migration_phase_is_judged_against_its_reference_across_a_restart(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    settings = settings_for(kafka_settings, topic_name)
    t = settings.topics
    await ensure_topics(
        settings.kafka, {t.deployments: 2, t.metrics: 2, t.verdicts: 1, t.dead_letter: 1}
    )
    started = {
        "event": "started",
        "deployment_id": "orders-db-expand",
        "service": "orders-db",
        "time": format_time(CHANGE),
        "strategy": "migration",
        "phase": "expand",
    }
    await send(settings, t.metrics, queries(CHANGE - 1800, CHANGE, 1.0, seed=1))
    first = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(first.run())
    try:
        # The history is read and committed before the phase starts, all but its last five
        # minutes (held a while for a late started): only recovery's floor can bring the
        # rest back to the second daemon.
        await eventually(
            lambda: committed(settings, t.metrics, 140), "the history committed", every=0.2
        )
        await send(settings, t.deployments, [orjson.dumps(started)])
        await send(settings, t.metrics, queries(CHANGE, CHANGE + 150, 1.0, seed=2))
        early = await read_verdicts(settings, lambda vs: len(vs) >= 2)
        assert [v["decision"] for v in early] == ["continue", "continue"]
    finally:
        first.request_stop()
        await asyncio.wait_for(task, 30)
    second = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(second.run())
    try:
        await send(settings, t.metrics, queries(CHANGE + 150, CHANGE + 900, 1.3, seed=3))
        verdicts = await read_verdicts(settings, lambda vs: any(v["final"] for v in vs))
    finally:
        second.request_stop()
        await asyncio.wait_for(task, 30)
    final = next(v for v in verdicts if v["final"])
    assert final["decision"] == "rollback"
    assert final["checks"]["reference"]["window_start"] == format_time(CHANGE - 1800)
    query = final["metrics"][0]
    assert query["n_baseline"] == 180 * 20  # every sample of the window, after the restart
    assert "query_ms +" in final["summary"]
