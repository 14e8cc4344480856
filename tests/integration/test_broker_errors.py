"""Errors about the broker that name their fix."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaProducer

from coalmine._exceptions import TransportError
from coalmine.bus.kafka import KafkaTransport
from coalmine.config.models import KafkaSettings
from coalmine.tools.simulator import simulate, three_deployments
from support.brokers import Tansu
from tests.integration.test_daemon_kafka import (
    T0,
    create_topics,
    make_settings,
    read_topic,
    run_daemon,
    three_finals,
    verdicts_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable


async def test_a_broker_without_the_idempotent_producer_is_named_with_the_fix() -> None:
    # tansu answers every request but InitProducerId, as a broker without it does.
    async with Tansu() as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap, request_timeout=10.0)
        transport = KafkaTransport(settings, [], produce=["verdicts"])
        with pytest.raises(TransportError) as raised:
            await transport.start()
        message = str(raised.value)
        assert "answers but refused a producer id" in message
        assert "[kafka] idempotent_producer = false" in message
        assert "COALMINE_KAFKA__IDEMPOTENT_PRODUCER=false" in message
        # Without the idempotent producer the same broker is fine.
        plain = KafkaTransport(
            settings.model_copy(update={"idempotent_producer": False}), [], produce=["verdicts"]
        )
        await plain.start()
        await plain.stop()


async def test_missing_topics_are_named_and_read_within_seconds_once_created(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coalmine.daemon.app")
    settings = make_settings(kafka_settings, topic_name)
    daemon, task = await run_daemon(settings)
    try:
        async with asyncio.timeout(30):
            while not any("not ready: missing topics" in r.getMessage() for r in caplog.records):
                await asyncio.sleep(0.1)
        (line,) = [r.getMessage() for r in caplog.records if "not ready" in r.getMessage()]
        assert settings.topics.metrics in line
        assert settings.topics.deployments in line
        await create_topics(settings.kafka, settings.topics)
        created = time.monotonic()
        messages = [
            (
                settings.topics.deployments
                if m.topic == "deployments"
                else settings.topics.metrics,
                m.key,
                m.value,
            )
            for m in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3)
        ]
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
        await producer.start()
        try:
            for topic, key, value in messages:
                await producer.send(topic, value, key=key)
            await producer.flush()
        finally:
            await producer.stop()
        records = await read_topic(settings.kafka, settings.topics.verdicts, three_finals, 60.0)
        took = time.monotonic() - created
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    print(f"created -> three final verdicts: {took:.1f}s")  # noqa: T201
    # The consumer's metadata refresh (metadata_max_age) would take up to 30 s alone.
    assert took < 20.0
    assert len([v for v in verdicts_of(records) if v["final"]]) == 3
    assert any(r.getMessage() == "ready: judging" for r in caplog.records)
