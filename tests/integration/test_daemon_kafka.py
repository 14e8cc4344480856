"""The daemon end to end on a real broker (Apache Kafka, else tansu: conftest.py): no mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics, partition_counts
from coalmine.config.models import (
    HttpSettings,
    KafkaSettings,
    TopicsSettings,
)
from coalmine.config.settings import Settings
from coalmine.contract import parse_time
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import simulate, three_deployments
from support.brokers import free_port
from support.scenario import EXPECTED, PROFILE, PROFILE_TOML, T0
from tests.metrics import sample_value

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

MALFORMED = [
    (b"checkout", b"{not json", b"invalid_json"),
    (
        b"checkout",
        b'{"service":"checkout","cohort":"canary","metric":"latency_ms","time":1}',
        b"ambiguous_payload",
    ),
    (
        b"search",
        b'{"service":"search","cohort":"canary","metric":"requests","time":1,"good":5,"total":2}',
        b"good_exceeds_total",
    ),
]


def topics_for(topic_name: Callable[[str], str]) -> TopicsSettings:
    return TopicsSettings(
        deployments=topic_name("deployments"),
        metrics=topic_name("metrics"),
        verdicts=topic_name("verdicts"),
        dead_letter=topic_name("dlq"),
    )


async def create_topics(kafka: KafkaSettings, topics: TopicsSettings) -> None:
    await ensure_topics(
        kafka,
        {topics.deployments: 3, topics.metrics: 3, topics.verdicts: 3, topics.dead_letter: 1},
    )


async def produce_scenario(kafka: KafkaSettings, topics: TopicsSettings) -> int:
    """The three-deployment scenario with malformed messages mixed in; returns the count."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    await producer.start()
    sent = 0
    try:
        messages = list(simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3))
        for index, message in enumerate(messages):
            topic = topics.deployments if message.topic == "deployments" else topics.metrics
            await producer.send(topic, message.value, key=message.key)
            sent += 1
            if index in (10, 60, 120):
                key, value, _ = MALFORMED[(index // 60) % len(MALFORMED)]
                await producer.send(topics.metrics, value, key=key)
                sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    done: Callable[[list[ConsumerRecord]], bool],
    within: float = 60.0,
) -> list[ConsumerRecord]:
    """Read ``topic`` from the start, without a group, until ``done`` says so."""
    count = (await partition_counts(kafka, [topic]))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + within
        while not done(records):
            assert time.monotonic() < deadline, f"{topic}: only {len(records)} records"
            batch = await consumer.getmany(timeout_ms=300)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


def verdicts_of(records: list[ConsumerRecord]) -> list[dict]:
    return [orjson.loads(r.value) for r in records]


def three_finals(records: list[ConsumerRecord]) -> bool:
    return sum(v["final"] for v in verdicts_of(records)) >= 3


async def run_daemon(settings: Settings) -> tuple[Daemon, asyncio.Task[None]]:
    daemon = Daemon(settings, build_transport(settings))  # as `coalmine run` builds it
    task = asyncio.create_task(daemon.run())
    return daemon, task


def make_settings(kafka_settings: KafkaSettings, topic_name: Callable[[str], str]) -> Settings:
    kafka = kafka_settings.model_copy(update={"session_timeout": 1.0})
    return Settings(
        kafka=kafka,
        topics=topics_for(topic_name),
        profiles={"default": PROFILE},
        http=HttpSettings(enabled=False),
    )


@pytest.fixture
def settings(kafka_settings: KafkaSettings, topic_name: Callable[[str], str]) -> Settings:
    return make_settings(kafka_settings, topic_name)


async def test_three_deployments_through_kafka(settings: Settings) -> None:
    await create_topics(settings.kafka, settings.topics)
    sent = await produce_scenario(settings.kafka, settings.topics)
    daemon, task = await run_daemon(settings)
    try:
        records = await read_topic(settings.kafka, settings.topics.verdicts, three_finals)
        letters = await read_topic(
            settings.kafka, settings.topics.dead_letter, lambda r: len(r) >= len(MALFORMED)
        )
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)

    verdicts = verdicts_of(records)
    finals = [v for v in verdicts if v["final"]]
    # Exactly one final verdict per deployment, and the expected decisions.
    assert {v["deployment_id"]: v["decision"] for v in finals} == EXPECTED
    assert len(finals) == 3
    by_id = {v["deployment_id"]: v for v in finals}
    # The critical error burst (5% from minute 3) is decided by minute 5 of event time,
    # within one interval of its start, on the message that carried it.
    payments = by_id["payments-v3"]
    assert parse_time(payments["window"]["end"]) - T0 <= 240.0
    assert "critical" in payments["summary"]
    # Healthy: promoted from min_duration on, at the first look where every metric is shown
    # within tolerance (the shift's interval and the mean's confidence sequence inside it):
    # here two looks later (replay of the same stream: 420 s). +50% latency: rolled back on
    # latency.
    promoted_at = parse_time(by_id["checkout-v42"]["time"]) - T0
    assert promoted_at in (360.0, 420.0)
    search = next(m for m in by_id["search-v7"]["metrics"] if m["metric"] == "latency_ms")
    assert search["outcome"] == "fail"
    assert search["detail"]["relative_change"] > 0.3
    # Verdicts are keyed by deployment id and each carries numbers for every metric.
    assert {r.key for r in records} == {k.encode() for k in EXPECTED}
    assert all(len(v["metrics"]) == 2 for v in verdicts)

    # Malformed messages went to the dead-letter topic unchanged, with reason and source.
    assert sorted(r.value for r in letters) == sorted(m[1] for m in MALFORMED)
    for letter in letters:
        headers = dict(letter.headers)
        reason = next(m[2] for m in MALFORMED if m[1] == letter.value)
        assert headers["coalmine-error"].startswith(reason)
        topic, partition, offset = headers["coalmine-source"].decode().rsplit("/", 2)
        assert topic == settings.topics.metrics
        assert int(partition) >= 0
        assert int(offset) >= 0
    assert (
        sample_value(daemon.telemetry, "coalmine_invalid_events_total", reason="invalid_json") == 1
    )

    # Everything consumed was committed, after its verdicts were acknowledged.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.kafka.group_id
    )
    await consumer.start()
    try:
        committed = 0
        for topic in (settings.topics.deployments, settings.topics.metrics):
            for p in range(3):
                committed += await consumer.committed(TopicPartition(topic, p)) or 0
    finally:
        await consumer.stop()
    assert committed == sent


async def test_the_same_stream_judged_twice_gives_identical_verdicts(
    settings: Settings, topic_name: Callable[[str], str]
) -> None:
    await create_topics(settings.kafka, settings.topics)
    await produce_scenario(settings.kafka, settings.topics)
    first_daemon, first = await run_daemon(settings)
    try:
        records = await read_topic(settings.kafka, settings.topics.verdicts, three_finals)
    finally:
        first_daemon.request_stop()
        await asyncio.wait_for(first, 30)
    # A second daemon, in its own group, judges the same recorded topics again.
    again = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"group_id": settings.kafka.group_id + "-2"}),
            "topics": settings.topics.model_copy(update={"verdicts": topic_name("verdicts-2")}),
        }
    )
    await ensure_topics(again.kafka, {again.topics.verdicts: 3})
    second_daemon, second = await run_daemon(again)
    try:
        replayed = await read_topic(again.kafka, again.topics.verdicts, three_finals)
    finally:
        second_daemon.request_stop()
        await asyncio.wait_for(second, 30)

    def judged(rs: list[ConsumerRecord]) -> dict[str, tuple[str, bool, str]]:
        return {v["verdict_id"]: (v["decision"], v["final"], v["summary"]) for v in verdicts_of(rs)}

    assert judged(records) == judged(replayed)
    assert len(judged(records)) > 3


async def test_coalmine_run_process_serves_probes_and_exits_0_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    await create_topics(settings.kafka, settings.topics)
    port = free_port()
    t = settings.topics
    config = tmp_path / "coalmine.toml"
    config.write_text(
        f"""
[kafka]
bootstrap_servers = "{settings.kafka.bootstrap_servers}"
group_id = "{settings.kafka.group_id}"
idempotent_producer = {str(settings.kafka.idempotent_producer).lower()}
session_timeout = "1s"

[topics]
deployments = "{t.deployments}"
metrics = "{t.metrics}"
verdicts = "{t.verdicts}"
dead_letter = "{t.dead_letter}"

[http]
port = {port}
{PROFILE_TOML}"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALMINE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "coalmine", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            status = None
            while status != 200:
                assert process.poll() is None, (
                    process.stdout.read().decode() if process.stdout else ""
                )
                assert time.monotonic() < deadline, "never became ready"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        status = response.status
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
            await produce_scenario(settings.kafka, settings.topics)
            records = await read_topic(settings.kafka, t.verdicts, three_finals)
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                metrics = await response.text()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output.decode()
    finals = {v["deployment_id"]: v["decision"] for v in verdicts_of(records) if v["final"]}
    assert finals == EXPECTED
    assert 'coalmine_verdicts_total{decision="promote"} 1.0' in metrics
    assert b"stopping: finishing in-flight work" in output
