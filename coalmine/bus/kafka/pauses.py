"""Partitions the fetcher holds back, and when each is read again.

Two reasons pause a partition. After an assignment, the ``first`` topics (the deployments
topic) are read to their current end before any other: Kafka orders partitions, not
topics, and a metric read before its deployment's ``started`` could not be routed. And a
partition whose next record batch cannot be unpacked (a codec the client lacks, a corrupt
batch) is set aside for a while, so that the others go on.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from coalmine.bus.kafka.clients import describe, log

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.bus.kafka.clients import Clients

__all__ = ["Pauses"]

_SET_ASIDE_FIRST = 5.0
"""Seconds a partition whose records cannot be unpacked is paused before it is retried."""
_SET_ASIDE_MAX = 300.0
"""Upper bound of that pause (it doubles with each failure in a row)."""


class Pauses:
    """The paused partitions of the group consumer: catching up on ``first``, or set aside."""

    def __init__(self, clients: Clients, first: Iterable[str]) -> None:
        self._clients = clients
        self.first = frozenset(first)
        self.catch_up: dict[Any, int] = {}
        """The ``first`` topics' partitions still to read, with the end to read them to."""
        self.set_aside: dict[Any, float] = {}
        """Partitions paused because a batch could not be unpacked: when to retry each."""
        self._failures: dict[Any, int] = {}
        """Unpacking failures in a row per partition (the pause doubles with each)."""

    def revoked(self) -> None:
        """Partitions are given up: what was being caught up on is no longer ours."""
        self.catch_up = {}

    def reassigned(self, assigned: Iterable[Any]) -> None:
        """A new assignment is not paused: its partitions are tried again."""
        self.set_aside.clear()
        self._failures = {tp: n for tp, n in self._failures.items() if tp in assigned}

    def unpacked(self, tp: Any) -> None:
        """A batch of ``tp`` was unpacked: its failures in a row are over."""
        self._failures.pop(tp, None)

    async def catch_up_first(self, assigned: list[Any]) -> None:
        """Pause all but the ``first`` topics until those are read to their current end."""
        consumer = self._clients.consumer
        first = [tp for tp in assigned if tp.topic in self.first]
        if not first or consumer is None:
            return
        try:
            ends = await consumer.end_offsets(first)
        except KafkaError as err:
            log.warning(
                "cannot read end offsets (%s); not reading %s first", describe(err), self.first
            )
            return
        self.catch_up = {tp: end for tp, end in ends.items() if end > 0}
        others = [tp for tp in assigned if tp.topic not in self.first]
        if self.catch_up and others:
            consumer.pause(*others)
            log.info("reading %s to its end before the other topics", ", ".join(sorted(self.first)))

    async def check_caught_up(self) -> None:
        """Resume the other topics once every ``first`` partition is read to its end."""
        consumer = self._clients.consumer
        for tp, end in list(self.catch_up.items()):
            # The fetch's high watermark: some brokers' ListOffsets answer short (tansu).
            if await consumer.position(tp) >= max(end, consumer.highwater(tp) or 0):
                del self.catch_up[tp]
        if not self.catch_up and consumer.paused():
            consumer.resume(*(consumer.paused() - self.set_aside.keys()))
            log.info("caught up on %s; reading every topic", ", ".join(sorted(self.first)))

    async def put_aside(self, tp: Any, error: Exception) -> None:
        """Pause ``tp``, whose next batch cannot be unpacked, for longer each time in a row."""
        consumer = self._clients.consumer
        failures = self._failures[tp] = self._failures.get(tp, 0) + 1
        pause = min(_SET_ASIDE_FIRST * 2 ** (failures - 1), _SET_ASIDE_MAX)
        offset = await consumer.position(tp)
        consumer.pause(tp)
        self.set_aside[tp] = time.monotonic() + pause
        if tp in self.catch_up:
            del self.catch_up[tp]  # the other topics must not wait for it
        log.error(
            "%s/%d: cannot unpack the record batch at offset %d (%s); this partition is"
            " not read for %gs, the others go on",
            tp.topic,
            tp.partition,
            offset,
            describe(error),
            pause,
        )

    def retry_due(self) -> None:
        """Resume the partitions set aside whose pause is over (unless catching up)."""
        consumer = self._clients.consumer
        now = time.monotonic()
        due = [tp for tp, until in self.set_aside.items() if until <= now]
        for tp in due:
            del self.set_aside[tp]
        due = [tp for tp in due if tp in consumer.assignment()]
        if due and not self.catch_up:
            consumer.resume(*due)
