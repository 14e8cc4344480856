"""Reading a service's past from the metrics topic by time (read_window), on a real broker.

Producers stamp records up to 30 s before and 50 s after their event time, inside the
default 60 s slack. On Apache Kafka the offsets found by time are checked exactly; tansu
positions at the earliest offset whatever the time, so there only the records are checked
(``keep`` filters by event time either way).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import RecordsToDelete

from coalmine._exceptions import TransportError
from coalmine.bus.kafka import ensure_topics, kafka_client_options, read_window
from coalmine.bus.kafka.topics import connected_admin
from coalmine.config.models import KafkaSettings
from support.brokers import free_port
from support.kafka_broker import ApacheKafka

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.bus.base import Record
    from coalmine.bus.kafka import WindowRead
    from support.brokers import Tansu

SLACK = 60.0
STEP = 15
"""Seconds of event time between a service's records on a partition."""
COUNT = 48
"""Records per service and partition: 12 minutes of event time."""
SKEWS = (-30, 0, 25, 50)
"""Broker timestamp minus event time, in seconds, in turn."""


@dataclass(frozen=True)
class Sent:
    """One record produced: where it landed and what it said."""

    partition: int
    offset: int
    service: str
    time: float
    stamp_ms: int


@dataclass(frozen=True)
class Log:
    """The topic the test produced, what is on it and its event-time origin."""

    settings: KafkaSettings
    topic: str
    t0: float
    sent: list[Sent]
    exact: bool
    """Whether the broker finds offsets by time (Apache Kafka; not tansu)."""

    def on(self, partition: int) -> list[Sent]:
        return [s for s in self.sent if s.partition == partition]


@pytest.fixture
async def log(
    kafka_settings: KafkaSettings,
    kafka_broker: ApacheKafka | Tansu,
    topic_name: Callable[[str], str],
) -> Log:
    """Two services' metrics on both partitions of a new topic, an hour in the past."""
    topic = topic_name("metrics")
    await ensure_topics(kafka_settings, {topic: 2})
    # An hour ago: within retention, and not in the future Apache Kafka refuses.
    t0 = float(int(time.time()) // 60 * 60 - 3600)
    producer = AIOKafkaProducer(**kafka_client_options(kafka_settings))
    await producer.start()
    sent: list[Sent] = []
    try:
        for i in range(COUNT):
            event_time = t0 + STEP * i
            stamp_ms = int((event_time + SKEWS[i % len(SKEWS)]) * 1000)
            for service in ("checkout", "search"):
                value = json.dumps({"service": service, "time": event_time}).encode()
                for partition in (0, 1):
                    meta = await producer.send_and_wait(
                        topic, value, service.encode(), partition, stamp_ms
                    )
                    sent.append(Sent(partition, meta.offset, service, event_time, stamp_ms))
    finally:
        await producer.stop()
    return Log(kafka_settings, topic, t0, sent, isinstance(kafka_broker, ApacheKafka))


def checkout_between(start: float, end: float) -> Callable[[Record], bool]:
    """``keep``: checkout's records with an event time in ``start``..``end`` (end excluded)."""

    def keep(record: Record) -> bool:
        event_time = json.loads(record.value)["time"]
        return record.key == b"checkout" and start <= event_time < end

    return keep


async def checkout_window(
    log: Log, start: float, end: float, *, max_records: int = 100
) -> WindowRead:
    """Checkout's records on partition 0 in ``start``..``end``."""
    keep = checkout_between(start, end)
    return await read_window(
        log.settings, log.topic, 0, start, end, keep=keep, max_records=max_records
    )


def expected(log: Log, start: float, end: float) -> list[Sent]:
    return [s for s in log.on(0) if s.service == "checkout" and start <= s.time < end]


def first_stamped(log: Log, since_ms: float) -> int:
    """The offset Apache Kafka finds for ``since_ms`` on partition 0 (its end if none)."""
    on = log.on(0)
    return next((s.offset for s in on if s.stamp_ms >= since_ms), len(on))


def assert_records(records: tuple[Record, ...], log: Log, want: list[Sent]) -> None:
    got = [(r.partition, r.offset, r.key, r.timestamp_ms) for r in records]
    assert got == [(0, s.offset, b"checkout", s.stamp_ms) for s in want]
    assert [json.loads(r.value)["time"] for r in records] == [s.time for s in want]
    assert all(r.topic == log.topic for r in records)


async def test_a_window_reads_one_services_records_in_it_with_their_offsets(log: Log) -> None:
    start, end = log.t0 + 150, log.t0 + 450
    read = await checkout_window(log, start, end)
    want = expected(log, start, end)
    assert len(want) == 20
    assert_records(read.records, log, want)
    assert not read.truncated
    assert read.first_offset <= want[0].offset < want[-1].offset < read.next_offset
    if log.exact:
        assert read.first_offset == first_stamped(log, (start - SLACK) * 1000)
        # Stopped at the first record stamped after end + slack, well before the log's end.
        stop = next(
            s.offset
            for s in log.on(0)
            if s.offset >= read.first_offset and s.stamp_ms > (end + SLACK) * 1000
        )
        assert read.next_offset == stop < len(log.on(0))


async def test_more_records_than_max_records_stop_the_read_truncated(log: Log) -> None:
    start, end = log.t0 + 150, log.t0 + 450
    want = expected(log, start, end)
    read = await checkout_window(log, start, end, max_records=5)
    assert_records(read.records, log, want[:5])
    assert read.truncated
    assert read.next_offset == want[5].offset  # the first record kept beyond the bound
    exactly = await checkout_window(log, start, end, max_records=len(want))
    assert_records(exactly.records, log, want)
    assert not exactly.truncated


async def test_a_window_after_the_last_record_reads_nothing(log: Log) -> None:
    start = log.t0 + STEP * COUNT + 120  # later than every stamp + slack
    end = start + 600
    read = await checkout_window(log, start, end)
    assert read.records == ()
    assert not read.truncated
    if log.exact:  # nothing stamped that late: nothing read, from the end offset
        assert read.first_offset == read.next_offset == len(log.on(0))


async def test_a_window_starting_before_the_log_reads_from_its_beginning(log: Log) -> None:
    start, end = log.t0 - 3600, log.t0 + 60
    read = await checkout_window(log, start, end)
    want = expected(log, start, end)
    assert [s.time - log.t0 for s in want] == [0, 15, 30, 45]
    assert_records(read.records, log, want)
    assert read.first_offset == 0


async def test_a_window_starting_before_the_log_start_offset_reads_what_is_left(
    log: Log,
) -> None:
    if not log.exact:
        pytest.skip("tansu has no DeleteRecords")
    async with connected_admin(log.settings) as admin:
        await admin.delete_records({TopicPartition(log.topic, 0): RecordsToDelete(10)})
    start, end = log.t0 - 3600, log.t0 + 150
    read = await checkout_window(log, start, end)
    want = [s for s in expected(log, start, end) if s.offset >= 10]
    assert [s.offset for s in want] == [10, 12, 14, 16, 18]
    assert_records(read.records, log, want)
    assert read.first_offset == 10


async def test_a_missing_partition_or_topic_or_broker_is_a_transport_error(log: Log) -> None:
    keep = checkout_between(log.t0, log.t0 + 60)
    with pytest.raises(TransportError, match=r"/2 .*: it has 2 partitions"):
        await read_window(log.settings, log.topic, 2, log.t0, log.t0 + 60, keep=keep, max_records=9)
    with pytest.raises(TransportError, match="no such topic"):
        await read_window(
            log.settings,
            f"{log.topic}.missing",
            0,
            log.t0,
            log.t0 + 60,
            keep=keep,
            max_records=9,
        )
    nobody = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout=2.0)
    with pytest.raises(TransportError, match=r"cannot reach Kafka at 127\.0\.0\.1"):
        await read_window(nobody, log.topic, 0, log.t0, log.t0 + 60, keep=keep, max_records=9)
