"""Fetching the group's records and handing them out, a partition's in order.

A record batch the client cannot unpack (a codec it lacks, a corrupt batch) stops only its
own partition: aiokafka raises such an error out of the whole fetch, after it has moved
the position of the partitions it had already drained for that fetch, so every partition
is sought back to what was handed out before the culprit is found and set aside
(:class:`~coalmine.bus.kafka.pauses.Pauses`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

from coalmine._exceptions import TransportError
from coalmine.bus.kafka.clients import bounded, describe, log, ms, to_record
from coalmine.bus.placement import KeyPlacement

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.bus.base import Record, TopicPartition
    from coalmine.bus.kafka.clients import Clients
    from coalmine.bus.kafka.pauses import Pauses
    from coalmine.bus.kafka.positions import Positions
    from coalmine.bus.merge import PartitionMerge
    from coalmine.config.models import KafkaSettings

__all__ = ["Fetcher"]


def _undecodable(error: Exception) -> bool:
    """Whether a fetch failed unpacking a record batch rather than talking to the broker.

    aiokafka raises what decompression or parsing raised as is: only its network and
    protocol errors are ``KafkaError``.
    """
    if isinstance(error, KafkaError):
        return isinstance(error, UnsupportedCodecError | CorruptRecordException)
    return True


class Fetcher:
    """Fetches with the group consumer and hands the records out as :class:`Record`."""

    def __init__(
        self,
        settings: KafkaSettings,
        clients: Clients,
        positions: Positions,
        pauses: Pauses,
        merge: PartitionMerge | None,
        *,
        copartitioned: Iterable[str],
        auto_offset_reset: str,
    ) -> None:
        self.settings = settings
        self._clients = clients
        self._positions = positions
        self._pauses = pauses
        self._merge = merge
        self._copartitioned = frozenset(copartitioned)
        self._auto_offset_reset = auto_offset_reset
        self._placement = KeyPlacement()

    async def getmany(self, timeout: float) -> dict[Any, list[Any]]:  # noqa: ASYNC109 - a poll timeout
        """The next batches per partition; on a batch that cannot be unpacked, the others'."""
        if self._pauses.set_aside:
            self._pauses.retry_due()
        try:
            batches: dict[Any, list[Any]] = await self._clients.consumer.getmany(
                timeout_ms=ms(timeout), max_records=self.settings.max_poll_records
            )
        except Exception as err:
            if not _undecodable(err):
                raise TransportError(f"fetch from Kafka: {describe(err)}") from err
            try:
                return await self._isolate(err, timeout)
            except KafkaError as again:  # e.g. a partition taken away meanwhile
                raise TransportError(f"fetch from Kafka: {describe(again)}") from again
        return batches

    async def _isolate(self, error: Exception, timeout: float) -> dict[Any, list[Any]]:  # noqa: ASYNC109
        """After a fetch failed on a batch it could not unpack: find and pause its partition.

        Every partition is first sought back to what was handed out, then read one record
        at a time, a partition at a time, until one fails (it is set aside) or ``timeout``
        passes. Returns the records read meanwhile, as ``getmany`` would.
        """
        consumer = self._clients.consumer
        log.warning("fetch from Kafka: %s; finding the partition", describe(error))
        await self._rewind()
        batches: dict[Any, list[Any]] = {}
        budget = self.settings.max_poll_records
        deadline = time.monotonic() + timeout
        found = False
        while budget > 0 and not found and time.monotonic() < deadline:
            for tp in sorted(consumer.assignment() - consumer.paused()):
                while budget > 0:
                    try:
                        got = await consumer.getmany(tp, timeout_ms=0, max_records=1)
                    except Exception as err:
                        if not _undecodable(err):
                            raise TransportError(f"fetch from Kafka: {describe(err)}") from err
                        await self._pauses.put_aside(tp, err)
                        found = True
                        break
                    messages = got.get(tp)
                    if not messages:
                        break
                    batches.setdefault(tp, []).extend(messages)
                    budget -= len(messages)
            if not found and budget > 0:
                await asyncio.sleep(0.05)  # sought partitions are fetched again meanwhile
        return batches

    async def _rewind(self) -> None:
        """Seek every partition back to the position after the last record handed out.

        A partition nothing was handed out from yet goes back to its committed offset (or,
        with none, to its beginning when ``auto_offset_reset`` is ``earliest``).
        """
        consumer = self._clients.consumer
        if self._merge is not None:
            self._merge.drop()  # held records lie beyond what was handed out
        for tp in consumer.assignment():
            position = self._positions.fetched.get((tp.topic, tp.partition))
            if position is None:
                async with bounded(self.settings.request_timeout, "read committed offsets"):
                    position = await consumer.committed(tp)
            if position is not None:
                consumer.seek(tp, position)
            elif self._auto_offset_reset == "earliest":
                await consumer.seek_to_beginning(tp)

    async def hand_out(self, batches: dict[Any, list[Any]]) -> list[Record]:
        """A fetch's records as handed out: per partition, then merged topics' in time order."""
        records: list[Record] = []
        merge = self._merge
        fetched = self._positions.fetched
        for tp, messages in batches.items():
            if not messages:
                continue
            self._pauses.unpacked(tp)
            if merge is not None and tp.topic in merge.topics:
                merge.hold(tp, messages)
                continue
            records.extend(map(to_record, messages))
            fetched[tp.topic, tp.partition] = messages[-1].offset + 1
            if tp.topic in self._copartitioned:
                self._check_placement(tp, messages)
        if merge is not None and len(merge):
            records.extend(await self._release_merged(merge))
        return records

    async def _release_merged(self, merge: PartitionMerge) -> list[Record]:
        """The held records of merged topics that can go now, in timestamp order."""
        consumer = self._clients.consumer
        owned = consumer.assignment()
        drained = set()
        for tp in owned:
            end = consumer.highwater(tp)
            if tp.topic in merge.topics and end is not None and await consumer.position(tp) >= end:
                drained.add(tp)
        released = merge.release(owned, drained.__contains__, time.monotonic())
        for tp, message in released:
            self._positions.fetched[tp.topic, tp.partition] = message.offset + 1
        return [to_record(message) for _, message in released]

    def put_back(self, batches: dict[Any, list[Any]]) -> None:
        """Seek each partition of ``batches`` back to its first record."""
        consumer = self._clients.consumer
        if consumer is None:
            return
        owned = consumer.assignment()
        for tp, messages in batches.items():
            if messages and tp in owned:
                consumer.seek(tp, messages[0].offset)

    def reassigned(
        self, assigned: list[Any], lost: Iterable[TopicPartition], gained: Iterable[TopicPartition]
    ) -> None:
        """Partitions moved: forget the lost and gained ones, resume the kept ones in place.

        Kept partitions resume at the position handed out so far, not at the committed
        one (which may be held back for recovery), so nothing is handled twice.
        """
        self._pauses.reassigned(assigned)
        if self._merge is not None:
            self._merge.drop()  # kept partitions are sought back to what was handed out
        positions, consumer = self._positions, self._clients.consumer
        for key in (*lost, *gained):
            positions.drop(key)
        for tp in assigned:
            position = positions.fetched.get((tp.topic, tp.partition))
            if position is not None and consumer is not None:
                consumer.seek(tp, position)

    def _check_placement(self, tp: Any, messages: list[Any]) -> None:
        """Count the keyed records a producer put where murmur2 would not have."""
        partitions = len(self._clients.consumer.partitions_for_topic(tp.topic) or ())
        check = self._placement.check
        for message in messages:
            check(tp.topic, tp.partition, message.key, partitions)

    def misplaced(self) -> dict[str, int]:
        """Keyed records of the co-partitioned topics off their murmur2 partition, per topic."""
        return dict(self._placement.misplaced)

    def lag(self) -> dict[str, int]:
        """Records between what was fetched and the log end, per topic (owned partitions)."""
        consumer = self._clients.consumer
        if consumer is None:
            return {}
        lag: dict[str, int] = {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            fetched = self._positions.fetched.get((tp.topic, tp.partition), 0)
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, end - fetched)
        return lag
