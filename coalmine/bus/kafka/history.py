"""One partition of a topic over an event-time window, read outside the consumer group.

A historical baseline is a service's own past: its metric records whose event time lies in
a reference window. Producers' timestamps are not event times, so the partition is read from
the first record stamped at ``start - slack`` up to the first stamped after ``end + slack``
(or its end offset when the read begins), and the caller's ``keep`` picks records by key and
decoded event time. Some brokers (tansu) position at the earliest offset whatever the time:
``keep`` filters by event time all the same, so the result does not depend on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from coalmine._exceptions import TransportError
from coalmine.bus.kafka import clients
from coalmine.bus.kafka.clients import bounded, to_record
from coalmine.bus.kafka.topics import partition_counts

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from coalmine.bus.base import Record
    from coalmine.config.models import KafkaSettings

__all__ = ["WindowRead", "read_window"]

_POLL_MS = 500
"""Longest a fetch of :func:`read_window` waits for records."""


@dataclass(frozen=True, slots=True)
class WindowRead:
    """What :func:`read_window` found: the records kept and the offsets read.

    Attributes:
        records: the records ``keep`` accepted, in offset order, each with its offset.
        truncated: ``keep`` accepted more than ``max_records``: reading stopped at
            ``next_offset``, the first record accepted beyond them.
        first_offset: where reading began. Every record before it is stamped before
            ``start - slack`` (on brokers that find offsets by time): a recovery floor.
        next_offset: where reading stopped: every record from ``first_offset`` up to
            before it was read (none when it equals ``first_offset``).
    """

    records: tuple[Record, ...]
    truncated: bool
    first_offset: int
    next_offset: int


@dataclass(slots=True)
class _Window:
    """The records kept so far, and when reading stops."""

    keep: Callable[[Record], bool]
    max_records: int
    stop_ms: int
    kept: list[Record] = field(default_factory=list)
    truncated: bool = False

    def take(self, records: Iterable[Record], end: int) -> int | None:
        """Keep what ``keep`` accepts of ``records``; the offset reading stops at, if it does.

        Reading stops at ``end``, at the first record stamped after ``stop_ms``, and at the
        first record accepted beyond ``max_records`` (truncated).
        """
        for record in records:
            if record.offset >= end:
                return end
            stamp = record.timestamp_ms
            if stamp is not None and stamp > self.stop_ms:
                return record.offset
            if self.keep(record):
                if len(self.kept) >= self.max_records:
                    self.truncated = True
                    return record.offset
                self.kept.append(record)
        return None


async def read_window(  # noqa: PLR0913 - the window, its filter and its bound
    settings: KafkaSettings,
    topic: str,
    partition: int,
    start: float,
    end: float,
    *,
    keep: Callable[[Record], bool],
    max_records: int,
    slack: float = 60.0,
) -> WindowRead:
    """The records of ``topic``/``partition`` in the event-time window ``start``..``end``.

    ``start`` and ``end`` are Unix seconds. Reading begins at the first record stamped at or
    after ``start - slack`` (nothing is read when there is none) and ends before the first
    stamped after ``end + slack``, or at the partition's end offset when the read begins.
    Of the records read, those ``keep`` accepts are kept, at most ``max_records`` of them.
    No consumer group is joined and nothing is committed.

    Raises:
        TransportError: Kafka cannot be reached or answers with an error, the partition
            does not exist, or reading made no progress for ``request_timeout``.
        ValueError: ``max_records`` or ``slack`` is negative.
    """
    if max_records < 0 or slack < 0:
        raise ValueError(f"max_records and slack must be >= 0, not {max_records}, {slack}")
    what = f"read {topic}/{partition} from {_utc(start)} to {_utc(end)}"
    count = (await partition_counts(settings, [topic])).get(topic)
    if count is None or not 0 <= partition < count:
        found = "no such topic" if count is None else f"it has {count} partitions"
        raise TransportError(f"{what}: {found}")
    window = _Window(keep, max_records, round((end + slack) * 1000))
    tp = TopicPartition(topic, partition)
    consumer = clients.reader(
        settings, "read_uncommitted", max_poll_records=settings.max_poll_records
    )
    try:
        async with bounded(settings.request_timeout, what):
            await consumer.start()
            consumer.assign([tp])
            listed = (await consumer.end_offsets([tp]))[tp]
            since_ms = max(0, round((start - slack) * 1000))
            found_at = (await consumer.offsets_for_times({tp: since_ms}))[tp]
        first = listed if found_at is None else found_at.offset
        reached = first
        if first < listed:
            reached = await _read(consumer, tp, (first, listed), window, settings, what)
    finally:
        await consumer.stop()
    return WindowRead(tuple(window.kept), window.truncated, first, reached)


async def _read(
    consumer: Any,
    tp: Any,
    offsets: tuple[int, int],
    window: _Window,
    settings: KafkaSettings,
    what: str,
) -> int:
    """Read ``tp`` from ``offsets[0]`` into ``window`` until it stops; the offset it stops at.

    ``offsets[1]`` is the end offset listed; the end is the larger of it and the high
    watermark of the first fetch response (tansu lists the last batch's base offset + 1).
    """
    first, listed = offsets
    consumer.seek(tp, first)
    end: int | None = None
    position, last_progress = first, time.monotonic()
    while True:
        async with bounded(settings.request_timeout, what):
            batch = await consumer.getmany(tp, timeout_ms=_POLL_MS)
        if end is None and (highwater := consumer.highwater(tp)) is not None:
            end = max(listed, highwater)
        stop = window.take(map(to_record, batch.get(tp, ())), listed if end is None else end)
        if stop is not None:
            return stop
        async with bounded(settings.request_timeout, what):
            now_at = await consumer.position(tp)
        if end is not None and now_at >= end:
            return end
        if now_at > position:
            position, last_progress = now_at, time.monotonic()
        elif time.monotonic() - last_progress > settings.request_timeout:
            raise TransportError(f"{what}: no progress for {settings.request_timeout:g}s")


def _utc(seconds: float) -> str:
    """``seconds`` (Unix) as an ISO 8601 UTC time, for messages."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")
