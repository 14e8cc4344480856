"""Partitions whose log now ends before what was already read from them.

That happens when the broker lost records (a broker restarted without its data, an unclean
leader election). Some brokers then answer fetches beyond the end with nothing rather than
an out-of-range error, so the consumer would wait there forever: such a partition is read
again from its beginning.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from coalmine.bus.kafka.clients import log

if TYPE_CHECKING:
    from coalmine.bus.base import TopicPartition
    from coalmine.bus.kafka.clients import Clients
    from coalmine.bus.kafka.positions import Positions
    from coalmine.bus.merge import PartitionMerge

__all__ = ["Truncation"]

_GRACE = 30.0
"""Seconds a partition's high watermark must stay below what was already read before the
records are taken for lost. A newly elected leader (a leader killed or stopped, a cluster
restarted from its checkpoints) answers with its own high watermark, which lags the old
leader's until its followers have fetched from it: up to ``replica.lag.time.max.ms``
(30 s by default) while a follower of the ISR is down."""


class Truncation:
    """Notices partitions whose high watermark stays below the position handed out."""

    def __init__(
        self, clients: Clients, positions: Positions, merge: PartitionMerge | None
    ) -> None:
        self._clients = clients
        self._positions = positions
        self._merge = merge
        self._short_since: dict[TopicPartition, float] = {}
        """Partitions whose high watermark is below what was read: since when."""

    def forget(self, key: TopicPartition) -> None:
        """``key`` is no longer owned."""
        self._short_since.pop(key, None)

    def clear(self) -> None:
        """Forget every partition (the transport stopped)."""
        self._short_since.clear()

    async def check(self) -> None:
        """Read again from its beginning a partition whose log stays shorter than was read.

        A partition whose committed offset the group forgot (see
        :attr:`~coalmine.bus.kafka.positions.Positions.forgotten`) is read again at once.
        """
        consumer = self._clients.consumer
        positions = self._positions
        now = time.monotonic()
        for tp in consumer.assignment():
            key = (tp.topic, tp.partition)
            fetched = positions.fetched.get(key)
            end = consumer.highwater(tp)
            if fetched is None or end is None or end >= fetched:
                self._short_since.pop(key, None)
                continue
            since = self._short_since.setdefault(key, now)
            if key not in positions.forgotten and now - since < _GRACE:
                continue  # a new leader's high watermark catches up within that
            del self._short_since[key]
            positions.forgotten.discard(key)
            log.error(
                "%s/%d ends at offset %d, before the %d already read: the broker lost records"
                " (restarted without its data?); reading it again from its beginning; open"
                " deployments are kept from memory, what was lost cannot be recovered",
                tp.topic,
                tp.partition,
                end,
                fetched,
            )
            await consumer.seek_to_beginning(tp)
            positions.fetched[key] = 0
            positions.committed.pop(key, None)
            if self._merge is not None:
                self._merge.drop([tp])
