"""Exactly-once verdicts: ``[kafka] transactional_id`` on Apache Kafka, across kill -9.

In transactional mode the verdicts a daemon publishes between two commits and the consumer
offsets that settle them are one Kafka transaction. A daemon killed between publishing and
committing leaves an open transaction, which its restart (same transactional id) aborts,
and it re-makes those verdicts from the log; a ``read_committed`` consumer sees every
verdict id exactly once. (Without transactions, identical copies are allowed: the fault
tests check that they agree.) tansu has no transactions: these tests need Apache Kafka.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING

import orjson
import pytest

from coalmine.config.models import KafkaSettings, TopicsSettings
from support.brokers import free_port
from support.kafka_broker import ApacheKafka
from support.scenario import STAGGERED_EXPECTED, staggered_messages
from tests.integration.test_faults import (
    SEED,
    DaemonProcess,
    check_guarantees,
    create,
    finals_or_log,
    kill_at_random_moments,
    produce,
    read_all,
    topics_named,
    wait_for_finals,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.brokers import Tansu

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def apache_kafka(kafka_broker: ApacheKafka | Tansu) -> ApacheKafka:
    if not isinstance(kafka_broker, ApacheKafka):
        pytest.skip("transactions need Apache Kafka (the session's broker is tansu)")
    return kafka_broker


@pytest.fixture
def transactional_daemon(
    tmp_path: Path, apache_kafka: ApacheKafka
) -> Iterator[Callable[..., DaemonProcess]]:
    daemons: list[DaemonProcess] = []

    def make(group: str, topics: TopicsSettings) -> DaemonProcess:
        port = free_port()
        kafka = KafkaSettings(bootstrap_servers=apache_kafka.bootstrap)
        extra = f'transactional_id = "coalmine-test-{uuid.uuid4().hex[:8]}"\n'
        config = write_config(
            tmp_path / "daemon.toml",
            kafka,
            group,
            topics,
            port,
            kafka_extra=extra,
        )
        daemon = DaemonProcess(config, tmp_path / "daemon.log", port)
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        daemon.stop()


async def test_read_committed_sees_each_verdict_once_across_three_kill_9(
    apache_kafka: ApacheKafka,
    topic_name: Callable[[str], str],
    transactional_daemon: Callable[..., DaemonProcess],
) -> None:
    rng = random.Random(SEED)  # noqa: S311 - kill moments, not secrets
    topics = topics_named(topic_name)
    kafka = KafkaSettings(bootstrap_servers=apache_kafka.bootstrap)
    await create(kafka, topics, partitions=2)
    group = f"coalmine-txn-{uuid.uuid4().hex[:8]}"
    daemon = transactional_daemon(group, topics).start()
    # A malformed metric every 25 messages: its dead letter is not in the verdict ledger,
    # so only the transaction keeps it from being dead-lettered again after a kill.
    messages = staggered_messages()
    for at in range(len(messages) - 1, 0, -25):
        messages.insert(at, ("metrics", b"junk", b"{not json"))
    malformed = sum(1 for _, _, value in messages if value == b"{not json")
    feeding = asyncio.create_task(
        produce(apache_kafka.bootstrap, topics, messages, per_second=30.0)
    )
    why = await kill_at_random_moments(daemon, rng)
    await feeding
    verdicts = await finals_or_log(
        daemon,
        apache_kafka.bootstrap,
        topics.verdicts,
        why,
        timeout=120.0,
        isolation_level="read_committed",
    )
    copies = Counter(v["verdict_id"] for v in verdicts)
    twice = {verdict_id: n for verdict_id, n in copies.items() if n > 1}
    assert not twice, f"{why}: seen more than once by read_committed: {twice}"
    check_guarantees(verdicts, STAGGERED_EXPECTED, why)
    # The finals may be out before the restarted daemon reaches the last malformed records.
    deadline = time.monotonic() + 60.0
    while True:
        dead = await read_all(apache_kafka.bootstrap, topics.dead_letter, "read_committed")
        sources = Counter(dict(record.headers).get("coalmine-source") for record in dead)
        if len(sources) >= malformed or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert len(sources) == malformed, f"{why}: {len(sources)} of {malformed} dead-lettered"
    assert set(sources.values()) == {1}, f"{why}: dead-lettered twice: {sources.most_common(3)}"
    # Everything written, aborted transactions included: what read_committed left out.
    written = await read_all(apache_kafka.bootstrap, topics.verdicts)
    print(  # noqa: T201 - the measure behind the test
        f"{why}: {len(verdicts)} verdicts committed, {len(written)} records written,"
        f" {daemon.output().count('was aborted')} transactions aborted by the daemon"
    )
    assert daemon.alive
    assert "rebuilding" in daemon.output(), why


async def test_a_verdict_is_invisible_to_read_committed_until_its_offsets_commit(
    apache_kafka: ApacheKafka,
    topic_name: Callable[[str], str],
    transactional_daemon: Callable[..., DaemonProcess],
) -> None:
    """What read_committed showed before a kill -9 is kept, and nothing shows twice."""
    topics = topics_named(topic_name)
    kafka = KafkaSettings(bootstrap_servers=apache_kafka.bootstrap)
    await create(kafka, topics, partitions=1)
    await produce(apache_kafka.bootstrap, topics, staggered_messages(), per_second=1000.0)
    group = f"coalmine-txn-{uuid.uuid4().hex[:8]}"
    daemon = transactional_daemon(group, topics).start()
    # Kill the daemon as soon as it has written verdicts, likely inside its first
    # transaction; its restart aborts that transaction and makes the verdicts again.
    deadline = time.monotonic() + 60.0
    while not await read_all(apache_kafka.bootstrap, topics.verdicts):
        assert time.monotonic() < deadline, daemon.output()[-3000:]
        await asyncio.sleep(0.05)
    daemon.kill()
    committed = await read_all(apache_kafka.bootstrap, topics.verdicts, "read_committed")
    daemon.start()
    verdicts = await wait_for_finals(
        apache_kafka.bootstrap,
        topics.verdicts,
        STAGGERED_EXPECTED,
        timeout=120.0,
        why="restart after kill -9",
        isolation_level="read_committed",
    )
    ids = [v["verdict_id"] for v in verdicts]
    assert len(ids) == len(set(ids)), Counter(ids).most_common(3)
    check_guarantees(verdicts, STAGGERED_EXPECTED, "restart after kill -9")
    assert all(orjson.loads(r.value)["verdict_id"] in set(ids) for r in committed)
