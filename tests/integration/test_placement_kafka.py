"""A producer with another partitioner is noticed from the records it wrote."""

from __future__ import annotations

import logging
import time
import zlib
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer

from coalmine.bus.kafka import KafkaTransport, ensure_topics, kafka_client_options
from coalmine.bus.placement import murmur2_partition

if TYPE_CHECKING:
    from collections.abc import Callable

    import pytest

    from coalmine.config.models import KafkaSettings


async def test_metrics_keyed_by_another_partitioner_are_counted_and_named(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    deployments, metrics = topic_name("deployments"), topic_name("metrics")
    await ensure_topics(kafka_settings, {deployments: 4, metrics: 4})
    services = [f"svc-{i}".encode() for i in range(12)]
    crc = {key: zlib.crc32(key) % 4 for key in services}  # librdkafka's consistent_random
    moved = {key for key in services if crc[key] != murmur2_partition(key, 4)}
    assert moved
    producer = AIOKafkaProducer(**kafka_client_options(kafka_settings))
    await producer.start()
    try:
        for key in services:
            await producer.send_and_wait(deployments, b"{}", key=key)  # murmur2: aiokafka's
            await producer.send_and_wait(metrics, b"{}", key=key, partition=crc[key])
    finally:
        await producer.stop()

    transport = KafkaTransport(
        kafka_settings,
        [deployments, metrics],
        copartitioned=[deployments, metrics],
        session_timeout=1.0,
    )
    await transport.start()
    try:
        with caplog.at_level(logging.WARNING, logger="coalmine.bus.placement"):
            got = 0
            deadline = time.monotonic() + 30
            while got < 2 * len(services):
                assert time.monotonic() < deadline, f"got {got} records"
                got += len(await transport.fetch(0.5))
    finally:
        await transport.stop()
    assert transport.misplaced() == {metrics: len(moved)}
    # Only the placement check's lines: aiokafka's own warnings can name the topic too.
    named = [
        r.getMessage()
        for r in caplog.records
        if r.name == "coalmine.bus.placement" and metrics in r.getMessage()
    ]
    assert len(named) == len(moved)
    assert all("partitioner=murmur2_random" in line for line in named)
