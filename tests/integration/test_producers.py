"""The daemon fed by the producers users run: librdkafka, as confluent-kafka and as kcat.

librdkafka builds and compresses record batches with its own code, not the Java client's
or aiokafka's, and by default partitions keys with ``consistent_random`` (CRC32) where the
Java client, aiokafka and ``coalmine start`` use murmur2. Every record batch here is checked
to be compressed with the codec its producer was given, so a batch that librdkafka left
uncompressed cannot pass unnoticed.

The tests that need kcat (Debian package ``kcat``) or confluent-kafka (the ``test`` extra)
are skipped without them; ``scripts/test`` installs both.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
import shutil
import subprocess
import time
import zlib
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiokafka.consumer.fetcher
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch

from coalmine.bus.combined import CombinedTransport
from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import KafkaTransport, ensure_topics
from coalmine.bus.placement import murmur2_partition
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import Scenario, SimulatedMessage, simulate, three_deployments
from support.brokers import Tansu
from support.scenario import EXPECTED, T0
from tests.integration.test_daemon_kafka import (
    create_topics,
    make_settings,
    read_topic,
    run_daemon,
    verdicts_of,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

    from coalmine.config.models import KafkaSettings, TopicsSettings
    from coalmine.config.settings import Settings
    from support.kafka_broker import ApacheKafka

CODECS = {
    "snappy": DefaultRecordBatch.CODEC_SNAPPY,
    "lz4": DefaultRecordBatch.CODEC_LZ4,
    "zstd": DefaultRecordBatch.CODEC_ZSTD,
    "gzip": DefaultRecordBatch.CODEC_GZIP,
}
"""librdkafka's ``compression.type`` names and the codec bits they set in a batch."""

SEED = 3
"""The simulator's seed: the one the three-deployment scenario's ``EXPECTED`` is for."""

PARTITIONS = 4
"""Partitions of the deployments and metrics topics that two daemons share."""

HAVE_KCAT = shutil.which("kcat") is not None
HAVE_CONFLUENT = importlib.util.find_spec("confluent_kafka") is not None
needs_kcat = pytest.mark.skipif(
    not HAVE_KCAT,
    reason="kcat is not installed (Debian: apt-get install kcat; scripts/test installs it as root)",
)
needs_confluent = pytest.mark.skipif(
    not HAVE_CONFLUENT,
    reason="confluent-kafka is not installed (pip install -e '.[test]'; scripts/test does)",
)


# -- producers ---------------------------------------------------------------------------------


def produce_with_kcat(
    kafka: KafkaSettings, topics: TopicsSettings, codec: str, messages: Sequence[SimulatedMessage]
) -> None:
    """``kcat -P -z codec``, one run per topic, keys split from values at a tab."""
    for name, topic in (("deployments", topics.deployments), ("metrics", topics.metrics)):
        mine = [m for m in messages if m.topic == name]
        assert all(b"\t" not in m.key and b"\n" not in m.key + m.value for m in mine)
        result = subprocess.run(
            ["kcat", "-P", "-b", kafka.bootstrap_servers, "-t", topic, "-z", codec, "-K", r"\t"],
            input=b"".join(m.key + b"\t" + m.value + b"\n" for m in mine),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert b"ERROR" not in result.stderr, result.stderr.decode(errors="replace")


def confluent_producer(kafka: KafkaSettings, **config: str | int) -> Any:
    """A confluent-kafka ``Producer``; ``config`` in librdkafka's names, ``_`` for ``.``."""
    from confluent_kafka import Producer  # noqa: PLC0415 - optional: its tests skip without it

    options = {key.replace("_", "."): value for key, value in config.items()}
    return Producer({"bootstrap.servers": kafka.bootstrap_servers, **options})


def send_with_confluent(
    producer: Any, topic_of: Callable[[SimulatedMessage], str], messages: Sequence[SimulatedMessage]
) -> list[str]:
    """Queue ``messages`` on ``producer``; returns the list that delivery errors go to."""
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for message in messages:
        producer.produce(topic_of(message), message.value, message.key, on_delivery=delivered)
        producer.poll(0)
    return failures


def produce_with_confluent(
    kafka: KafkaSettings, topics: TopicsSettings, codec: str, messages: Sequence[SimulatedMessage]
) -> None:
    """One confluent-kafka producer with ``compression.type=codec`` for both topics."""
    producer = confluent_producer(kafka, compression_type=codec, linger_ms=20)
    failures = send_with_confluent(producer, lambda m: getattr(topics, m.topic), messages)
    assert producer.flush(60) == 0
    assert failures == []


# -- what reached the broker -----------------------------------------------------------------


@contextlib.contextmanager
def batches_fetched(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, list[bytes]]]]:
    """Every record batch aiokafka fetches meanwhile, as ``(codec bits, record keys)``.

    The fetcher builds a ``MemoryRecords`` from each partition's fetched bytes: a second
    one, read here, shows the batches' headers that the consumer's records do not carry.
    """
    seen: list[tuple[int, list[bytes]]] = []
    memory_records = aiokafka.consumer.fetcher.MemoryRecords

    def spy(data: bytes) -> Any:
        copy = memory_records(data)
        while copy.has_next():
            batch = copy.next_batch()
            if batch is not None:
                seen.append((batch.compression_type, [record.key for record in batch]))
        return memory_records(data)

    with monkeypatch.context() as patch:
        patch.setattr(aiokafka.consumer.fetcher, "MemoryRecords", spy)
        yield seen


def codec_of(key: bytes) -> str:
    """The codec a service of :func:`scenarios_for` was produced with (its name's suffix)."""
    return key.decode().rsplit("-", 1)[1]


def scenarios_for(codec: str) -> list[Scenario]:
    """The three deployments, their ids and services suffixed with ``codec``."""
    return [
        replace(s, deployment_id=f"{s.deployment_id}-{codec}", service=f"{s.service}-{codec}")
        for s in three_deployments()
    ]


def at_least(count: int) -> Callable[[list[Any]], bool]:
    """``read_topic``'s ``done``: once ``count`` records are read."""
    return lambda records: len(records) >= count


def finals_of(records: list[Any]) -> dict[str, str]:
    return {v["deployment_id"]: v["decision"] for v in verdicts_of(records) if v["final"]}


def sample(daemon: Daemon, name: str, **labels: str) -> float:
    """One sample of the daemon's telemetry (0 when its labels never occurred)."""
    return daemon.telemetry.registry.get_sample_value(name, labels) or 0.0


def total(daemon: Daemon, name: str) -> float:
    """A sample name of the daemon's telemetry summed over all its labels."""
    metrics = daemon.telemetry.registry.collect()
    return sum(s.value for metric in metrics for s in metric.samples if s.name == name)


# -- every codec, from both librdkafka producers, judged by the daemon -------------------------


@pytest.mark.parametrize(
    "produce",
    [
        pytest.param(produce_with_kcat, marks=needs_kcat, id="kcat"),
        pytest.param(produce_with_confluent, marks=needs_confluent, id="confluent-kafka"),
    ],
)
async def test_the_daemon_judges_librdkafka_batches_of_every_codec(
    produce: Callable[[KafkaSettings, TopicsSettings, str, Sequence[SimulatedMessage]], None],
    kafka_broker: ApacheKafka | Tansu,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three deployments per codec, each codec's deploy events and metrics in its batches."""
    if produce is produce_with_kcat and isinstance(kafka_broker, Tansu):
        pytest.skip("kcat's librdkafka (2.0, Debian 12) cannot read tansu's ApiVersions answer")
    settings: Settings = make_settings(kafka_settings, topic_name)
    topics = settings.topics
    await create_topics(settings.kafka, topics)
    sent: list[SimulatedMessage] = []
    for codec in CODECS:
        messages = list(simulate(scenarios_for(codec), start=T0, duration=900.0, seed=SEED))
        produce(settings.kafka, topics, codec, messages)
        sent.extend(messages)
    expected = {f"{d}-{codec}": decision for codec in CODECS for d, decision in EXPECTED.items()}

    # Every batch on both topics is compressed with the codec of the services it carries.
    for name in ("deployments", "metrics"):
        count = sum(m.topic == name for m in sent)
        with batches_fetched(monkeypatch) as batches:
            records = await read_topic(settings.kafka, getattr(topics, name), at_least(count), 30.0)
        assert len(records) == count
        assert sorted(b for _, keys in batches for b in keys) == sorted(r.key for r in records)
        codecs = {(bits, codec_of(key)) for bits, keys in batches for key in keys}
        assert codecs == {(bits, codec) for codec, bits in CODECS.items()}, name

    daemon, task = await run_daemon(settings)
    try:
        verdicts = await read_topic(
            settings.kafka,
            topics.verdicts,
            lambda r: sum(v["final"] for v in verdicts_of(r)) >= len(expected),
            120.0,
        )
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert finals_of(verdicts) == expected
    # Every record the daemon read was valid: no dead letter.
    assert total(daemon, "coalmine_invalid_events_total") == 0


# -- librdkafka's partitioner beside murmur2, two daemons in one group ------------------------


def two_daemon_settings(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> Settings:
    settings = make_settings(kafka_settings, topic_name)
    # Two daemons share one event loop here: a longer session than make_settings' keeps
    # a busy moment of one from costing the other its membership (and a rebalance).
    kafka = settings.kafka.model_copy(update={"session_timeout": 6.0})
    return settings.model_copy(update={"kafka": kafka})


@contextlib.asynccontextmanager
async def two_daemons(settings: Settings) -> AsyncIterator[list[tuple[Daemon, KafkaTransport]]]:
    """Two daemons in one group, built as ``coalmine run`` builds them, each owning partitions.

    Yields once the range assignor has given each half of the deployments and metrics
    topics' partitions (the same numbers of both).
    """
    topics = settings.topics
    await ensure_topics(
        settings.kafka,
        {
            topics.deployments: PARTITIONS,
            topics.metrics: PARTITIONS,
            topics.verdicts: 3,
            topics.dead_letter: 1,
        },
    )
    pairs: list[tuple[Daemon, KafkaTransport]] = []
    for _ in range(2):
        transport = build_transport(settings)
        assert isinstance(transport, CombinedTransport)
        kafka = transport.consumers[0]
        assert isinstance(kafka, KafkaTransport)
        pairs.append((Daemon(settings, transport), kafka))
    tasks = [asyncio.create_task(daemon.run()) for daemon, _ in pairs]
    try:
        deadline = time.monotonic() + 60
        while not all(len(kafka.assignment()) == PARTITIONS for _, kafka in pairs):
            for task in tasks:
                if task.done():
                    task.result()  # a daemon that stopped: its error, else the reason below
            assert time.monotonic() < deadline, "the two daemons never split the partitions"
            await asyncio.sleep(0.2)
        yield pairs
    finally:
        for daemon, _ in pairs:
            daemon.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)


def owner(pairs: list[tuple[Daemon, KafkaTransport]], topic: str, partition: int) -> Daemon:
    """The daemon that holds ``topic``'s ``partition``."""
    return next(d for d, kafka in pairs if (topic, partition) in kafka.assignment())


async def produce_mixed(
    settings: Settings, **metrics_producer: str | int
) -> list[SimulatedMessage]:
    """Deploy events through aiokafka (murmur2), then metrics through confluent-kafka."""
    topics = settings.topics
    messages = list(simulate(three_deployments(), start=T0, duration=900.0, seed=SEED))
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for message in messages:
            if message.topic == "deployments":
                await producer.send_and_wait(topics.deployments, message.value, key=message.key)
    finally:
        await producer.stop()
    metrics = [m for m in messages if m.topic == "metrics"]
    confluent = confluent_producer(settings.kafka, linger_ms=20, **metrics_producer)
    failures = send_with_confluent(confluent, lambda _: topics.metrics, metrics)
    # flush blocks: in a thread, so that the daemons on this loop go on meanwhile.
    assert await asyncio.to_thread(confluent.flush, 60) == 0
    assert failures == []
    return metrics


MISPLACED_LOG = re.compile(
    r"records keyed '(?P<key>[^']+)' arrive on (?P<topic>\S+) partition (?P<partition>\d+),"
    r" but the murmur2 partitioner .* puts that key on partition (?P<expected>\d+)"
)


@needs_confluent
async def test_librdkafkas_default_partitioner_is_detected_and_named_within_a_minute(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = two_daemon_settings(kafka_settings, topic_name)
    topics = settings.topics
    services = {s.service: s.deployment_id for s in three_deployments()}
    crc32 = {s: zlib.crc32(s.encode()) % PARTITIONS for s in services}  # consistent_random
    murmur2 = {s: murmur2_partition(s.encode(), PARTITIONS) for s in services}
    moved = {s for s in services if crc32[s] != murmur2[s]}
    assert moved
    assert moved != set(services)
    caplog.set_level(logging.WARNING, logger="coalmine.bus.placement")
    async with two_daemons(settings) as pairs:
        # Metrics on another partition than their deploy events: with two daemons, some of
        # them reach the daemon that does not hold their deployment.
        apart = {
            s
            for s in moved
            if owner(pairs, topics.deployments, murmur2[s])
            is not owner(pairs, topics.metrics, crc32[s])
        }
        assert apart
        begun = time.monotonic()
        metrics = await produce_mixed(settings)  # librdkafka's default partitioner
        misplaced = sum(m.key.decode() in moved for m in metrics)
        while (
            sum(
                sample(d, "coalmine_misplaced_records_total", topic=topics.metrics)
                for d, _ in pairs
            )
            < misplaced
        ):
            assert time.monotonic() - begun < 60, "misplaced records not counted within 60 s"
            await asyncio.sleep(0.25)
        judged = {services[s]: EXPECTED[services[s]] for s in services if s not in apart}
        verdicts = await read_topic(
            settings.kafka, topics.verdicts, lambda r: finals_of(r).keys() >= judged.keys(), 60.0
        )
        # The deployments whose metrics went to the other daemon are not judged: their
        # metrics were dropped there.
        assert finals_of(verdicts) == judged
        for daemon, _ in pairs:
            assert sample(daemon, "coalmine_misplaced_records_total", topic=topics.deployments) == 0
    # Each moved key named, with where it landed, where murmur2 puts it, and the fix.
    named = [MISPLACED_LOG.search(r.getMessage()) for r in caplog.records]
    found = {(m["key"], m["topic"], int(m["partition"]), int(m["expected"])) for m in named if m}
    assert found == {(s, topics.metrics, crc32[s], murmur2[s]) for s in moved}
    lines = [r.getMessage() for r in caplog.records if r.name == "coalmine.bus.placement"]
    assert lines
    assert all("partitioner=murmur2_random" in line for line in lines)


@needs_confluent
async def test_with_murmur2_random_nothing_is_misplaced_and_both_daemons_judge(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = two_daemon_settings(kafka_settings, topic_name)
    topics = settings.topics
    services = {s.service: s.deployment_id for s in three_deployments()}
    murmur2 = {s: murmur2_partition(s.encode(), PARTITIONS) for s in services}
    caplog.set_level(logging.WARNING, logger="coalmine.bus.placement")
    async with two_daemons(settings) as pairs:
        # What each daemon judges: the deployments on the partitions it holds.
        mine = [
            Counter(
                EXPECTED[services[s]]
                for s in services
                if owner(pairs, topics.deployments, murmur2[s]) is daemon
            )
            for daemon, _ in pairs
        ]
        assert all(mine), f"one daemon holds every deployment: {mine}"
        metrics = await produce_mixed(settings, partitioner="murmur2_random")
        verdicts = await read_topic(
            settings.kafka,
            topics.verdicts,
            lambda r: len(finals_of(r)) >= len(EXPECTED),
            90.0,
        )
        assert finals_of(verdicts) == EXPECTED
        for (daemon, _), decisions in zip(pairs, mine, strict=True):
            for decision in ("promote", "rollback"):
                published = sample(daemon, "coalmine_verdicts_total", decision=decision)
                assert published == decisions[decision], decision
        # Every metric record read, none of them counted as misplaced.
        deadline = time.monotonic() + 60
        while sum(
            sample(d, "coalmine_events_consumed_total", topic=topics.metrics) for d, _ in pairs
        ) < len(metrics):
            assert time.monotonic() < deadline, "the metrics were not all read within 60 s"
            await asyncio.sleep(0.25)
        for daemon, kafka in pairs:
            assert kafka.misplaced() == {}
            assert total(daemon, "coalmine_misplaced_records_total") == 0
    assert [r for r in caplog.records if r.name == "coalmine.bus.placement"] == []
