"""Reading topics outside any consumer group: every partition assigned by hand.

Some brokers (tansu) answer ListOffsets with the last record batch's base offset + 1,
short of its last records: the end of a partition is taken as the larger of the end
offset listed and the high watermark of the fetch responses.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from coalmine._exceptions import TransportError
from coalmine.bus.kafka import clients
from coalmine.bus.kafka.clients import METADATA_MAX_AGE_MS, bounded, describe, to_record
from coalmine.bus.kafka.topics import partition_counts

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Mapping, Sequence

    from coalmine.bus.base import Record
    from coalmine.bus.base import TopicPartition as TopicPartitionKey
    from coalmine.bus.kafka.clients import IsolationLevel
    from coalmine.config.models import KafkaSettings

__all__ = ["follow", "read_partitions", "read_topic"]

_POLL_MS = 500
"""Longest a fetch of :func:`read_partitions` waits for records."""
_LOOK_AGAIN = 1.0
"""Seconds :func:`follow` waits before it looks again for topics it found none of."""


async def read_topic(
    settings: KafkaSettings, topic: str, *, isolation_level: IsolationLevel = "read_uncommitted"
) -> list[Record]:
    """Every record of ``topic`` now in the log; a missing topic reads as empty.

    Raises:
        TransportError: the brokers do not answer within ``request_timeout``.
    """
    reader = clients.reader(settings, isolation_level)
    records: list[Record] = []
    what = f"read {topic}"
    try:
        async with bounded(settings.request_timeout, what):
            await reader.start()
            # A consumer outside a group has no metadata for a topic it was not told
            # of (Apache Kafka answers its first metadata request with none): ask.
            count = (await partition_counts(settings, [topic])).get(topic, 0)
            tps = [TopicPartition(topic, p) for p in range(count)]
            if not tps:
                return records
            reader.assign(tps)
            ends = await reader.end_offsets(tps)
            await reader.seek_to_beginning(*tps)
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            async with bounded(settings.request_timeout, what):
                batches = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                ends[tp] = max(ends[tp], reader.highwater(tp) or 0)
                records.extend(to_record(m) for m in messages if m.offset < ends[tp])
            for tp in list(remaining):
                if await reader.position(tp) >= max(ends[tp], reader.highwater(tp) or 0):
                    remaining.discard(tp)
    finally:
        await reader.stop()
    return records


async def follow(
    settings: KafkaSettings,
    topics: Sequence[str],
    *,
    isolation_level: IsolationLevel = "read_uncommitted",
) -> AsyncGenerator[list[Record], None]:
    """Every record of ``topics``, from their beginning on, as they arrive.

    Partitions that appear later are picked up within ``metadata_max_age`` (within a
    second while none of ``topics`` exists yet); the partitions are then read again from
    their beginning. Never ends: close it (``contextlib.aclosing``) when done.

    Raises:
        TransportError: the broker cannot be reached.
    """
    reader = clients.reader(settings, isolation_level, metadata_max_age_ms=METADATA_MAX_AGE_MS)
    try:
        async with bounded(settings.request_timeout, f"follow {', '.join(topics)}"):
            await reader.start()
        assigned: set[Any] = set()
        refresh_at = 0.0
        while True:
            if time.monotonic() >= refresh_at:
                assigned = await _reassign(settings, reader, topics, assigned)
                wait = METADATA_MAX_AGE_MS / 1000 if assigned else _LOOK_AGAIN
                refresh_at = time.monotonic() + wait
            if not assigned:
                await asyncio.sleep(_LOOK_AGAIN)
                continue
            try:
                batches = await reader.getmany(timeout_ms=1000)
            except (KafkaError, OSError) as err:
                raise TransportError(f"follow: {describe(err)}") from err
            records = [to_record(m) for messages in batches.values() for m in messages]
            if records:
                yield records
    finally:
        await reader.stop()


async def _reassign(
    settings: KafkaSettings, reader: Any, topics: Sequence[str], assigned: set[Any]
) -> set[Any]:
    """Assign every partition of ``topics`` now, from the beginning if they changed."""
    counts = await partition_counts(settings, topics)
    found = {
        TopicPartition(topic, partition)
        for topic, count in counts.items()
        for partition in range(count)
    }
    if found != assigned:
        reader.assign(list(found))
        await reader.seek_to_beginning(*found)
    return found


async def read_partitions(
    settings: KafkaSettings,
    partitions: Sequence[TopicPartitionKey],
    *,
    since_ms: int | None = None,
) -> AsyncGenerator[tuple[TopicPartitionKey, list[Record]], None]:
    """The records of ``partitions`` from ``since_ms`` on, up to their ends as they are now.

    Each partition is positioned with ``offsets_for_times`` (at its beginning when
    ``since_ms`` is None) and read up to its end offset when reading begins; its records
    come in order, in batches, each with its partition. Some brokers (tansu) position at
    the earliest offset whatever the time: filter by timestamp too.

    Raises:
        TransportError: Kafka cannot be reached, or a partition made no progress for
            ``request_timeout``.
    """
    consumer = clients.reader(
        settings, "read_uncommitted", max_poll_records=settings.max_poll_records
    )
    try:
        async with asyncio.timeout(settings.request_timeout):
            await consumer.start()
            tps = [TopicPartition(*key) for key in partitions]
            consumer.assign(tps)
            ranges = await _ranges(consumer, tps, since_ms)
        async for batch in _drain(consumer, ranges, settings.request_timeout):
            yield batch
    except TimeoutError as err:
        raise TransportError(
            f"cannot read from Kafka at {settings.bootstrap_servers}: no answer within"
            f" {settings.request_timeout:g}s"
        ) from err
    except (KafkaError, OSError) as err:
        raise TransportError(f"cannot read from Kafka: {err!r}") from err
    finally:
        await consumer.stop()


async def _ranges(
    consumer: Any, partitions: Sequence[Any], since_ms: int | None
) -> dict[Any, tuple[int, int]]:
    """``(first offset to read, end offset listed now)`` of every partition."""
    ends = await consumer.end_offsets(partitions)
    if since_ms is None:
        starts = await consumer.beginning_offsets(partitions)
    else:
        found = await consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
        starts = {tp: ends[tp] if at is None else at.offset for tp, at in found.items()}
    return {tp: (starts[tp], ends[tp]) for tp in partitions}


async def _drain(
    consumer: Any, ranges: Mapping[Any, tuple[int, int]], stall_after: float
) -> AsyncGenerator[tuple[TopicPartitionKey, list[Record]], None]:
    """Read every partition of ``ranges`` up to its end offset at the start.

    The end of a partition is the larger of the end offset listed at the start and the
    high watermark of the first fetch response for it.
    """
    for tp, (first, _) in ranges.items():
        consumer.seek(tp, first)
    listed = {tp: end for tp, (_, end) in ranges.items()}
    ends: dict[Any, int] = {}
    active = set(ranges)
    last_progress = time.monotonic()
    while active:
        batch = await consumer.getmany(*active, timeout_ms=_POLL_MS)
        progress = bool(batch)
        for tp in list(active):
            end = ends.get(tp)
            if end is None:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue  # no fetch response for it yet
                end = ends[tp] = max(listed[tp], highwater)
            records = [to_record(m) for m in _before(batch.get(tp, ()), end)]
            if records:
                yield (tp.topic, tp.partition), records
            if await consumer.position(tp) >= end:
                active.discard(tp)
                consumer.pause(tp)
                progress = True
        if progress:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > stall_after:
            stuck = ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(active))
            raise TransportError(f"reading {stuck}: no progress for {stall_after:g}s")


def _before(messages: Sequence[Any], end: int) -> list[Any]:
    """The leading ``messages`` with an offset below ``end``."""
    for index, message in enumerate(messages):
        if message.offset >= end:
            return list(messages[:index])
    return list(messages)
