"""The Kafka transport against a real broker (Apache Kafka, else tansu): no mocks."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from coalmine._exceptions import TransportError
from coalmine.bus import Outgoing, Record, Transport
from coalmine.bus.kafka import (
    KafkaTransport,
    ensure_topics,
    kafka_client_options,
    partition_counts,
)
from coalmine.config.models import KafkaSettings
from support.brokers import Tansu, free_port

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from support.kafka_broker import ApacheKafka

# tansu delays a group join by about half the session timeout: keep it short in tests
# (the test Apache Kafka accepts session timeouts down to 0.5 s).
SESSION_TIMEOUT = 1.0


@pytest.fixture
async def transports(kafka_settings: KafkaSettings) -> AsyncIterator[Callable[..., Any]]:
    """Build and start transports; all of them are stopped after the test."""
    made: list[KafkaTransport] = []

    async def make(consume: list[str], **options: Any) -> KafkaTransport:
        settings = options.pop("settings", kafka_settings)
        transport = KafkaTransport(settings, consume, session_timeout=SESSION_TIMEOUT, **options)
        made.append(transport)
        await transport.start()
        return transport

    yield make
    for transport in made:
        await transport.stop()


async def fetch_n(transport: KafkaTransport, n: int, within: float = 10.0) -> list[Record]:
    """Fetch until ``n`` records arrived (fails after ``within`` seconds)."""
    records: list[Record] = []
    deadline = time.monotonic() + within
    while len(records) < n:
        assert time.monotonic() < deadline, f"got {len(records)} of {n} records"
        records.extend(await transport.fetch(0.5))
    return records


async def test_ensure_topics_and_partition_counts(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    three, one, missing = topic_name("three"), topic_name("one"), topic_name("missing")
    assert await partition_counts(kafka_settings, [three, one]) == {}
    await ensure_topics(kafka_settings, {three: 3, one: 1})
    await ensure_topics(kafka_settings, {three: 3, one: 1})  # idempotent
    counts = await partition_counts(kafka_settings, [three, one, missing])
    assert counts == {three: 3, one: 1}
    # Asking about a missing topic did not create it.
    assert await partition_counts(kafka_settings, [missing]) == {}


async def test_publish_then_fetch_with_keys_and_headers(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    topic = topic_name("metrics")
    await ensure_topics(kafka_settings, {topic: 3})
    producer: KafkaTransport = await transports([], produce=[topic])
    consumer: KafkaTransport = await transports([topic])
    assert isinstance(consumer, Transport)

    sent = [
        Outgoing(topic, f"v{i}".encode(), f"svc-{i % 4}".encode(), (("n", str(i).encode()),))
        for i in range(20)
    ]
    sent.append(Outgoing(topic, b"no-key", None, (("a", b""), ("b", b"\x00\xff"))))
    await producer.publish(sent)

    records = await fetch_n(consumer, len(sent))
    assert len(records) == len(sent)
    by_value = {r.value: r for r in records}
    assert set(by_value) == {m.value for m in sent}
    for message in sent:
        record = by_value[message.value]
        assert (record.topic, record.key, record.headers) == (
            topic,
            message.key,
            message.headers,
        )
        assert record.timestamp_ms is not None
        assert abs(record.timestamp_ms / 1000 - time.time()) < 60
    partitions_of_key: dict[bytes | None, set[int]] = {}
    for record in records:
        partitions_of_key.setdefault(record.key, set()).add(record.partition)
    assert all(len(p) == 1 for p in partitions_of_key.values())  # a key sticks to a partition
    for partition in range(3):
        mine = [r for r in records if r.partition == partition]
        assert [r.offset for r in mine] == list(range(len(mine)))  # in order, no gaps
        sent_order = [m.value for m in sent if by_value[m.value].partition == partition]
        assert [r.value for r in mine] == sent_order
    assert await consumer.fetch(0.2) == []


async def test_commit_and_resume_in_the_same_group(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    topic = topic_name("deployments")
    await ensure_topics(kafka_settings, {topic: 1})
    producer: KafkaTransport = await transports([], produce=[topic])
    await producer.publish([Outgoing(topic, f"m{i}".encode(), b"svc") for i in range(5)])

    # Fetch two records at a time: the consumer prefetches more than it hands out.
    settings = kafka_settings.model_copy(update={"max_poll_records": 2})
    first: KafkaTransport = await transports([topic], settings=settings)
    done = await fetch_n(first, 2)
    assert [r.value for r in done] == [b"m0", b"m1"]
    await first.commit()
    assert await committed_offsets(kafka_settings, topic) == {0: 2}  # not the prefetch position
    fetched_not_committed = await fetch_n(first, 2)
    assert [r.value for r in fetched_not_committed] == [b"m2", b"m3"]
    await first.stop()  # as if it crashed before committing m2 and m3

    second: KafkaTransport = await transports([topic], settings=settings)
    redelivered = await fetch_n(second, 3)
    assert [(r.value, r.offset) for r in redelivered] == [(b"m2", 2), (b"m3", 3), (b"m4", 4)]
    await second.commit()
    assert await committed_offsets(kafka_settings, topic) == {0: 5}
    await second.commit()  # nothing new: a no-op


async def test_a_commit_held_back_by_a_floor_says_how_far_records_were_handled(
    kafka_broker: ApacheKafka | Tansu,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    """The next member re-reads from the floor, and learns where the re-reading ends."""
    if isinstance(kafka_broker, Tansu):
        pytest.skip("tansu keeps no offset-commit metadata, where the handled position goes")
    topic = topic_name("metrics")
    await ensure_topics(kafka_settings, {topic: 1})
    producer: KafkaTransport = await transports([], produce=[topic])
    await producer.publish([Outgoing(topic, f"m{i}".encode(), b"svc") for i in range(6)])

    first: KafkaTransport = await transports([topic])
    await fetch_n(first, 6)
    assert first.handled() == {}  # the group never committed
    await first.commit({(topic, 0): 2})  # an open deployment still needs offset 2 on
    assert await committed_offsets(kafka_settings, topic) == {0: 2}
    await first.stop()

    second: KafkaTransport = await transports([topic])
    redelivered = await fetch_n(second, 4)  # the group assigns partitions on the first fetch
    assert [r.offset for r in redelivered] == [2, 3, 4, 5]
    assert second.handled() == {(topic, 0): 6}


async def committed_offsets(
    settings: KafkaSettings, topic: str, partitions: int = 1
) -> dict[int, int]:
    """The group's committed offsets on ``topic``, read back through the admin API."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        # Name the partitions: tansu 0.6 answers OffsetFetch for "all topics" malformed.
        offsets = await admin.list_consumer_group_offsets(
            settings.group_id, partitions=[TopicPartition(topic, p) for p in range(partitions)]
        )
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


async def test_ready_needs_every_topic_and_creates_none(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    consumed, produced = topic_name("in"), topic_name("out")
    transport = KafkaTransport(kafka_settings, [consumed], produce=[produced])
    assert not await transport.ready()  # not started

    started: KafkaTransport = await transports([consumed], produce=[produced])
    assert not await started.ready()
    # Neither subscribing nor the readiness check created the missing topics.
    assert await partition_counts(kafka_settings, [consumed, produced]) == {}
    await ensure_topics(kafka_settings, {consumed: 2})
    assert not await started.ready()
    await ensure_topics(kafka_settings, {produced: 1})
    assert await started.ready()
    assert await started.ready()  # cached


async def test_start_against_a_closed_port_fails_fast(kafka_settings: KafkaSettings) -> None:
    settings = kafka_settings.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{free_port()}", "request_timeout": 2.0}
    )
    transport = KafkaTransport(settings, ["anything"])
    began = time.monotonic()
    with pytest.raises(TransportError, match=r"cannot reach Kafka at 127\.0\.0\.1:"):
        await transport.start()
    assert time.monotonic() - began < 5
    assert not await transport.ready()
    await transport.stop()  # nothing to stop, still fine
    with pytest.raises(TransportError, match="cannot reach Kafka"):
        await ensure_topics(settings, {"x": 1})


async def test_publish_failure_raises_transport_error(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    topic = topic_name("dlq")
    await ensure_topics(kafka_settings, {topic: 1})
    producer: KafkaTransport = await transports([], produce=[topic])
    too_big = Outgoing(topic, b"x" * (2 * 1024 * 1024))
    with pytest.raises(TransportError, match="publish to Kafka"):
        await producer.publish([Outgoing(topic, b"fine"), too_big])
    await producer.publish([])  # nothing to do
    await producer.stop()
    await producer.stop()
    with pytest.raises(TransportError, match="not started"):
        await producer.publish([Outgoing(topic, b"late")])
    with pytest.raises(TransportError, match="not started"):
        await producer.fetch(0)


async def test_fetch_without_records_waits_and_returns_empty(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    topic = topic_name("quiet")
    await ensure_topics(kafka_settings, {topic: 1})
    consumer: KafkaTransport = await transports([topic])
    assert consumer.assignment() == {(topic, 0)}
    began = asyncio.get_running_loop().time()
    assert await consumer.fetch(0.3) == []
    assert asyncio.get_running_loop().time() - began >= 0.25


def test_security_settings_reach_the_clients() -> None:
    plain = kafka_client_options(KafkaSettings(bootstrap_servers="k:9092"))
    assert plain["ssl_context"] is None
    assert "sasl_plain_password" not in plain

    settings = KafkaSettings(
        bootstrap_servers="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="coalmine",
        sasl_password=SecretStr("s3cret-pw"),
        ssl_check_hostname=False,
    )
    assert "s3cret-pw" not in repr(settings)
    options = kafka_client_options(settings)
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].check_hostname is False
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == (
        "SCRAM-SHA-512",
        "coalmine",
    )
    assert options["sasl_plain_password"] == "s3cret-pw"  # noqa: S105
    assert options["security_protocol"] == "SASL_SSL"


async def test_a_failed_start_leaks_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    settings = KafkaSettings(
        bootstrap_servers=f"127.0.0.1:{free_port()}",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="coalmine",
        sasl_password=SecretStr("s3cret-pw"),
        request_timeout=2.0,
    )
    transport = KafkaTransport(settings, ["t"])
    with caplog.at_level(logging.DEBUG), pytest.raises(TransportError) as failure:
        await transport.start()
    assert "s3cret-pw" not in str(failure.value)
    assert "s3cret-pw" not in caplog.text


async def test_two_members_share_the_partitions(
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    transports: Callable[..., Any],
) -> None:
    topic = topic_name("shared")
    await ensure_topics(kafka_settings, {topic: 4})
    first: KafkaTransport = await transports([topic])
    assert len(first.assignment()) == 4
    second: KafkaTransport = await transports([topic])
    # The first member gives partitions up when it next polls.
    deadline = time.monotonic() + 10
    while len(first.assignment()) + len(second.assignment()) != 4 or not second.assignment():
        assert time.monotonic() < deadline, (first.assignment(), second.assignment())
        await asyncio.gather(first.fetch(0.2), second.fetch(0.2))
    assert first.assignment().isdisjoint(second.assignment())


async def test_first_topics_are_read_to_their_end_before_the_others(
    kafka_settings: KafkaSettings, transports: Callable[..., Any], topic_name: Callable[[str], str]
) -> None:
    control, bulk = topic_name("control"), topic_name("bulk")
    await ensure_topics(kafka_settings, {control: 2, bulk: 2})
    writer = await transports([])
    # A large backlog on the bulk topic, written before the few control records.
    await writer.publish([Outgoing(bulk, b"m%d" % i, b"k%d" % (i % 5)) for i in range(3000)])
    await writer.publish([Outgoing(control, b"d%d" % i, b"k%d" % i) for i in range(6)])
    settings = kafka_settings.model_copy(update={"max_poll_records": 50})
    reader = await transports([control, bulk], settings=settings, first=[control])
    records = await fetch_n(reader, 3006, within=30.0)
    topics = [r.topic for r in records]
    assert topics.count(control) == 6
    assert max(i for i, t in enumerate(topics) if t == control) < topics.index(bulk)
