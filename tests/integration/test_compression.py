"""Compressed record batches (producers with ``compression.type`` set) on a real broker.

Every codec a Kafka producer may use: gzip, snappy, lz4 and zstd (aiokafka decodes the last
three with ``cramjam``, from its ``snappy``/``lz4``/``zstd`` extras). A batch the client
cannot unpack stops only its own partition, and costs no other partition a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiokafka.codec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

import coalmine.bus.kafka.pauses
from coalmine.bus.kafka import KafkaTransport, ensure_topics
from coalmine.tools.simulator import simulate, three_deployments
from tests.integration.test_daemon_kafka import (
    EXPECTED,
    T0,
    create_topics,
    make_settings,
    read_topic,
    run_daemon,
    three_finals,
    verdicts_of,
)
from tests.metrics import sample_value

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from coalmine.bus import Record
    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings

CODECS = ("gzip", "snappy", "lz4", "zstd")
SESSION_TIMEOUT = 1.0


@pytest.fixture
async def producers(kafka_settings: KafkaSettings) -> AsyncIterator[dict[str | None, Any]]:
    """One started producer per codec (``None``: uncompressed), batching for 20 ms."""
    made: dict[str | None, Any] = {}
    try:
        for codec in (None, *CODECS):
            producer = AIOKafkaProducer(
                bootstrap_servers=kafka_settings.bootstrap_servers,
                compression_type=codec,
                linger_ms=20,
            )
            await producer.start()
            made[codec] = producer
        yield made
    finally:
        for producer in made.values():
            await producer.stop()


async def send(producer: Any, topic: str, messages: list[tuple[Any, ...]]) -> None:
    """Send ``(value, key, partition, headers)`` tuples in one go, so they share batches."""
    futures = [
        await producer.send(topic, value, key=key, partition=partition, headers=headers)
        for value, key, partition, headers in messages
    ]
    await asyncio.gather(*futures)


async def fetch_until(
    transport: KafkaTransport, done: Callable[[list[Record]], bool], within: float = 20.0
) -> list[Record]:
    records: list[Record] = []
    deadline = time.monotonic() + within
    while not done(records):
        assert time.monotonic() < deadline, f"only {len(records)} records"
        records.extend(await transport.fetch(0.5))
    return records


@pytest.mark.parametrize("codec", [None, *CODECS])
async def test_the_transport_reads_batches_of_every_codec(
    codec: str | None,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    producers: dict[str | None, Any],
) -> None:
    topic = topic_name("metrics")
    await ensure_topics(kafka_settings, {topic: 3})
    sent = [
        (f"{codec}-{i}-".encode() * 20, f"svc-{i % 5}".encode(), None, [("n", str(i).encode())])
        for i in range(300)
    ]
    await send(producers[codec], topic, sent)

    transport = KafkaTransport(kafka_settings, [topic], session_timeout=SESSION_TIMEOUT)
    await transport.start()
    try:
        records = await fetch_until(transport, lambda r: len(r) >= len(sent))
        assert await transport.fetch(0.2) == []
    finally:
        await transport.stop()
    by_value = {r.value: r for r in records}
    assert len(by_value) == len(records) == len(sent)
    for value, key, _, headers in sent:
        record = by_value[value]
        assert (record.key, record.headers) == (key, tuple(headers))
    for partition in range(3):
        mine = [r for r in records if r.partition == partition]
        assert [r.offset for r in mine] == list(range(len(mine)))  # in order, no gaps
        assert [r.value for r in mine] == [
            v for v, *_ in sent if by_value[v].partition == partition
        ]


@pytest.mark.parametrize("codec", CODECS)
async def test_an_undecodable_batch_stops_only_its_partition(
    codec: str,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    producers: dict[str | None, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As with a client lacking the codec: the batches reach the consumer compressed."""
    topic = topic_name("metrics")
    await ensure_topics(kafka_settings, {topic: 3})

    def plain(partition: int, numbers: range) -> list[tuple[Any, ...]]:
        return [(f"p{partition}-{i}".encode(), None, partition, []) for i in numbers]

    await send(producers[None], topic, plain(0, range(5)) + plain(2, range(5)))
    await send(producers[codec], topic, [(f"p1-{i}".encode(), None, 1, []) for i in range(5)])
    await send(producers[None], topic, plain(0, range(5, 8)))

    transport = KafkaTransport(kafka_settings, [topic], session_timeout=SESSION_TIMEOUT)
    monkeypatch.setattr(coalmine.bus.kafka.pauses, "_SET_ASIDE_FIRST", 1.0)
    monkeypatch.setattr(aiokafka.codec, f"has_{codec}", lambda: False)
    caplog.set_level(logging.WARNING, logger="coalmine.bus.kafka")
    await transport.start()
    try:
        values: list[bytes] = []

        async def fetch_for(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                values.extend(r.value for r in await transport.fetch(0.2))

        await fetch_for(3.0)
        # The other partitions' records all came, none lost, partition 1 is set aside.
        assert sorted(values) == sorted(v for v, *_ in plain(0, range(8)) + plain(2, range(5)))
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert errors
        assert errors[0].startswith(f"{topic}/1: cannot unpack the record batch at offset 0 (")
        assert f"Libraries for {codec} compression codec not found" in errors[0]
        # Partition 1 is retried from time to time; the others keep flowing meanwhile.
        await send(producers[None], topic, plain(0, range(8, 12)) + plain(2, range(5, 9)))
        await fetch_for(2.5)
        assert len(values) == 21
        assert sum("cannot unpack" in e for e in caplog.messages) >= 2
        # Once the codec is there, partition 1 is read from where it stopped.
        monkeypatch.undo()
        values.extend(r.value for r in await fetch_until(transport, lambda r: len(r) >= 5, 10))
    finally:
        await transport.stop()
    assert [v for v in values if v.startswith(b"p1-")] == [f"p1-{i}".encode() for i in range(5)]
    assert len(values) == len(set(values)) == 26


async def test_the_daemon_judges_compressed_deploy_events_and_metrics(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    producers: dict[str | None, Any],
) -> None:
    """The three-deployment scenario, its batches compressed in turn with every codec."""
    settings: Settings = make_settings(kafka_settings, topic_name)
    topics = settings.topics
    await create_topics(settings.kafka, topics)
    messages = list(simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3))
    chunk = 16
    for start in range(0, len(messages), chunk):
        # Each chunk through the next codec; sent in full before the next, to keep the order.
        producer = producers[CODECS[start // chunk % len(CODECS)]]
        futures = [
            await producer.send(
                topics.deployments if m.topic == "deployments" else topics.metrics,
                m.value,
                key=m.key,
            )
            for m in messages[start : start + chunk]
        ]
        await asyncio.gather(*futures)

    daemon, task = await run_daemon(settings)
    try:
        records = await read_topic(settings.kafka, topics.verdicts, three_finals, 90.0)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    finals = {v["deployment_id"]: v["decision"] for v in verdicts_of(records) if v["final"]}
    assert finals == EXPECTED
    assert (
        sample_value(daemon.telemetry, "coalmine_invalid_events_total", reason="invalid_json") == 0
    )

    # Every record was read and committed.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.kafka.group_id
    )
    await consumer.start()
    try:
        committed = 0
        for topic in (topics.deployments, topics.metrics):
            for p in range(3):
                committed += await consumer.committed(TopicPartition(topic, p)) or 0
    finally:
        await consumer.stop()
    assert committed == len(messages)
