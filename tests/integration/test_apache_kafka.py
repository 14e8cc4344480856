"""Apache Kafka itself (KRaft, jars from Maven Central: support/kafka_broker.py), not tansu.

What tansu cannot show: idempotent and transactional producers (``InitProducerId``,
``send_offsets_to_transaction``), and a replicated cluster that loses a partition leader
to ``kill -9``. Skipped when Java 17+ is missing, or Maven is while the jars are not cached.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from support.kafka_broker import ApacheKafka, ApacheKafkaCluster, unavailable_reason

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from aiokafka.structs import ConsumerRecord

_UNAVAILABLE = unavailable_reason()

pytestmark = [
    pytest.mark.skipif(
        _UNAVAILABLE is not None, reason=f"Apache Kafka cannot run here: {_UNAVAILABLE}"
    ),
    pytest.mark.timeout(240),
]

FAILOVER_BOUND = 60.0  # seconds for acks=all writes to work again after a leader's kill -9


@pytest.fixture(scope="module")
def apache_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApacheKafka]:
    """The session's broker when it is Apache Kafka (conftest.py), else one of this module's
    (``COALMINE_TEST_BROKER=tansu``)."""
    session_broker = request.getfixturevalue("kafka_broker")
    if isinstance(session_broker, ApacheKafka):
        yield session_broker
        return
    started = time.monotonic()
    with ApacheKafka(log_dir=tmp_path_factory.mktemp("apache-kafka")) as broker:
        print(f"Apache Kafka, 1 node: ready in {time.monotonic() - started:.1f}s")  # noqa: T201
        yield broker


@pytest.fixture(scope="module")
def apache_kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaCluster]:
    started = time.monotonic()
    with ApacheKafkaCluster(log_dir=tmp_path_factory.mktemp("apache-kafka-cluster")) as cluster:
        print(f"Apache Kafka, 3 nodes: ready in {time.monotonic() - started:.1f}s")  # noqa: T201
        yield cluster


async def consume(
    bootstrap: str, topic: str, count: int, *, timeout: float = 30.0, **options: object
) -> list[ConsumerRecord]:
    """``count`` records of ``topic`` from the start (fewer if ``timeout`` runs out)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", **options
    )
    await consumer.start()
    records: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            records += [record for batch in batches.values() for record in batch]
    finally:
        await consumer.stop()
    return records


async def test_plain_and_idempotent_producers_round_trip(
    apache_kafka: ApacheKafka, topic_name: Callable[[str], str]
) -> None:
    topic = topic_name("events")
    await apache_kafka.create_topics_async([topic], partitions=2, replication=1)
    plain = AIOKafkaProducer(bootstrap_servers=apache_kafka.bootstrap, acks=1)
    idempotent = AIOKafkaProducer(bootstrap_servers=apache_kafka.bootstrap, enable_idempotence=True)
    await plain.start()
    await idempotent.start()
    try:
        for i in range(5):
            await plain.send_and_wait(topic, f"plain-{i}".encode(), partition=0)
        sent = [
            await idempotent.send_and_wait(topic, f"idem-{i}".encode(), key=b"k", partition=1)
            for i in range(5)
        ]
    finally:
        await plain.stop()
        await idempotent.stop()
    assert [meta.offset for meta in sent] == [0, 1, 2, 3, 4]

    group = f"apache-{uuid.uuid4().hex[:8]}"
    records = await consume(apache_kafka.bootstrap, topic, 10, group_id=group)
    by_partition = {
        p: [r.value for r in records if r.partition == p and r.value is not None] for p in (0, 1)
    }
    assert by_partition[0] == [f"plain-{i}".encode() for i in range(5)]
    assert by_partition[1] == [f"idem-{i}".encode() for i in range(5)]


async def test_transactional_producer_commits_output_and_offsets_together(
    apache_kafka: ApacheKafka, topic_name: Callable[[str], str]
) -> None:
    source, sink = topic_name("in"), topic_name("out")
    group = f"apache-tx-{uuid.uuid4().hex[:8]}"
    await apache_kafka.create_topics_async([source, sink], partitions=1, replication=1)
    producer = AIOKafkaProducer(bootstrap_servers=apache_kafka.bootstrap)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(source, f"in-{i}".encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=apache_kafka.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    transactional = AIOKafkaProducer(
        bootstrap_servers=apache_kafka.bootstrap, transactional_id=f"tx-{group}"
    )
    await consumer.start()
    await transactional.start()
    try:
        inputs: list[ConsumerRecord] = []
        async with asyncio.timeout(30):
            while len(inputs) < 3:
                batches = await consumer.getmany(timeout_ms=500)
                inputs += [record for batch in batches.values() for record in batch]
        position = {TopicPartition(source, 0): inputs[-1].offset + 1}
        # An aborted transaction: its output stays invisible to read_committed readers.
        await transactional.begin_transaction()
        await transactional.send(sink, b"aborted")
        await transactional.send_offsets_to_transaction(position, group)
        await transactional.abort_transaction()
        # The committed one: outputs and the input offsets, atomically.
        async with transactional.transaction():
            for record in inputs:
                assert record.value is not None
                await transactional.send(sink, record.value.replace(b"in-", b"out-"))
            await transactional.send_offsets_to_transaction(position, group)
    finally:
        await transactional.stop()
        await consumer.stop()

    committed = await consume(apache_kafka.bootstrap, sink, 3, isolation_level="read_committed")
    assert [r.value for r in committed] == [b"out-0", b"out-1", b"out-2"]
    uncommitted = await consume(apache_kafka.bootstrap, sink, 4)
    assert [r.value for r in uncommitted] == [b"aborted", b"out-0", b"out-1", b"out-2"]

    # The group's offset becomes visible once the commit markers are written.
    admin = AIOKafkaAdminClient(bootstrap_servers=apache_kafka.bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(30):
            while True:
                offsets = await admin.list_consumer_group_offsets(group)
                found = offsets.get(TopicPartition(source, 0))
                if found is not None and found.offset == 3:
                    break
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def send_until_accepted(producer: AIOKafkaProducer, topic: str, value: bytes) -> float:
    """Send with retries until the cluster accepts it (bounded); the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(FAILOVER_BOUND):
        while True:
            try:
                await producer.send_and_wait(topic, value)
            except KafkaError:
                await asyncio.sleep(0.2)
            else:
                return time.monotonic() - started


async def test_cluster_survives_kill_9_of_the_partition_leader(
    apache_kafka_cluster: ApacheKafkaCluster, topic_name: Callable[[str], str]
) -> None:
    cluster = apache_kafka_cluster
    topic = topic_name("replicated")
    await cluster.create_topics_async([topic], partitions=1, replication=3)
    leader = await cluster.leader_async(topic)
    assert leader in cluster.node_ids
    assert await cluster.in_sync_replicas_async(topic) == [1, 2, 3]
    assert await cluster.coordinator_async(f"group-{uuid.uuid4().hex[:8]}") in cluster.node_ids

    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before")
        cluster.kill_node(leader)
        took = await send_until_accepted(producer, topic, b"after")
        print(f"acks=all write accepted {took:.1f}s after kill -9 of leader {leader}")  # noqa: T201
    finally:
        await producer.stop()

    new_leader = await cluster.wait_for_leader_async(topic, not_on=leader, timeout=10)
    isr = await cluster.in_sync_replicas_async(topic)
    assert leader not in isr
    assert len(isr) == 2  # still min.insync.replicas
    records = await consume(cluster.bootstrap, topic, 2, timeout=30)
    assert [r.value for r in records] == [b"before", b"after"]

    # The killed node comes back with its data and catches up.
    await asyncio.to_thread(cluster.restart_node, leader)
    await cluster.wait_in_sync_async(topic, timeout=60)
    assert new_leader in cluster.alive_nodes()
    assert sorted(cluster.alive_nodes()) == [1, 2, 3]


async def commit_until_accepted(consumer: AIOKafkaConsumer) -> None:
    async with asyncio.timeout(FAILOVER_BOUND):
        while True:
            try:
                await consumer.commit()
            except KafkaError:
                await asyncio.sleep(0.2)
            else:
                return


async def test_consumer_group_carries_on_after_kill_9_of_its_coordinator(
    apache_kafka_cluster: ApacheKafkaCluster, topic_name: Callable[[str], str]
) -> None:
    cluster = apache_kafka_cluster
    await asyncio.to_thread(cluster.start)  # brings back a node an earlier failure left dead
    topic = topic_name("grouped")
    group = f"apache-group-{uuid.uuid4().hex[:8]}"
    await cluster.create_topics_async([topic], partitions=1, replication=3)
    coordinator = await cluster.coordinator_async(group)

    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, acks="all", enable_idempotence=True
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=cluster.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"m0")
        async with asyncio.timeout(30):
            first = await consumer.getone()
        assert first.value == b"m0"
        await consumer.commit()

        cluster.kill_node(coordinator)
        await send_until_accepted(producer, topic, b"m1")
        async with asyncio.timeout(FAILOVER_BOUND):
            second = await consumer.getone()
        assert second.value == b"m1"
        await commit_until_accepted(consumer)
        assert await consumer.committed(TopicPartition(topic, 0)) == 2
    finally:
        await consumer.stop()
        await producer.stop()

    assert await cluster.coordinator_async(group) != coordinator
    await asyncio.to_thread(cluster.restart_node, coordinator)
    assert sorted(cluster.alive_nodes()) == [1, 2, 3]
