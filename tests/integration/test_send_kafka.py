"""`coalmine send`: JSON Lines checked against the contract, then keyed onto Kafka."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import partition_counts
from coalmine.bus.placement import murmur2_partition
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import EXPECTED, T0
from tests.integration.test_cli_tools_kafka import (
    coalmine,
    create_topics,
    finals,
    make_settings,
    read_verdicts,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings


def jsonl(path: Path) -> int:
    """The three-deployment scenario as JSON Lines, one message a line; returns the count."""
    lines = [
        message.value.decode()
        for message in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3)
    ]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


async def read_all(settings: Settings, topic: str) -> list[ConsumerRecord]:
    count = (await partition_counts(settings.kafka, [topic]))[topic]
    tps = [TopicPartition(topic, p) for p in range(count)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        while len(records) < sum(ends.values()):
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
        return records
    finally:
        await consumer.stop()


async def test_send_puts_each_event_on_its_services_partition_and_it_is_judged(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = str(write_config(settings, tmp_path / "coalmine.toml"))
    await create_topics(settings)
    events = tmp_path / "events.jsonl"
    count = jsonl(events)
    code, out, err = await coalmine("send", "--config", config, str(events))
    assert code == 0, err.decode()
    assert out.decode().startswith("sent 3 deploy event(s) and")
    deploys = await read_all(settings, settings.topics.deployments)
    metrics = await read_all(settings, settings.topics.metrics)
    assert len(deploys) == 3
    assert len(deploys) + len(metrics) == count
    for record in deploys + metrics:  # keyed by service, where murmur2 puts it
        obj = orjson.loads(record.value)
        assert record.key == (obj[0] if isinstance(obj, list) else obj)["service"].encode()
        assert record.partition == murmur2_partition(record.key, 3)
    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    try:
        verdicts = await read_verdicts(settings, lambda vs: len(finals(vs)) >= 3)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert finals(verdicts) == EXPECTED


async def test_send_checks_every_line_first_and_sends_nothing_when_one_is_wrong(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = str(write_config(settings, tmp_path / "coalmine.toml"))
    await create_topics(settings)
    events = tmp_path / "events.jsonl"
    jsonl(events)
    lines = events.read_text().splitlines()
    lines[5] = '{"service": "checkout", "metric": "latency_ms", "time": "yesterday"}'
    lines.insert(9, "not json")
    events.write_text("\n".join(lines) + "\n")
    code, _, err = await coalmine("send", "--config", config, str(events))
    assert code == 2
    problems = err.decode()
    assert "nothing sent" in problems
    assert "line 6: bad_time" in problems
    assert "line 10: not JSON" in problems
    assert await read_all(settings, settings.topics.deployments) == []
    assert await read_all(settings, settings.topics.metrics) == []
