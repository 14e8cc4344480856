"""A daemon's work that exists only on a partitioned transport (Kafka).

Partitions move between the daemons of a consumer group. When partitions are assigned
here, the daemon learns the verdicts already published (it reads the verdict topic) and
how far a previous owner handled each partition, then re-reads them from the committed
floors, rebuilding their open deployments. It also follows the deployments, verdict and
dead-letter topics for the HTTP API (every daemon's deployments, not only its own), and
reports the consumer lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from coalmine._exceptions import TransportError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from coalmine.bus.base import AfterAssign, BeforeRevoke, Partitioned, TopicPartition
    from coalmine.config.models import TopicsSettings
    from coalmine.daemon.directory import Directory
    from coalmine.daemon.router import Router
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["Partitions"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30.0


class Partitions:
    """The partitioned side of a daemon's transport: moves, the log read back, lag."""

    def __init__(
        self,
        transport: Partitioned,
        topics: TopicsSettings,
        telemetry: Telemetry,
        wall_clock: Callable[[], float],
    ) -> None:
        self._transport = transport
        self._topics = topics
        self._telemetry = telemetry
        self._wall_clock = wall_clock
        self._misplaced: dict[str, int] = {}
        """Misplaced records already counted in telemetry, per topic."""

    def listen(self, *, before_revoke: BeforeRevoke, after_assign: AfterAssign) -> None:
        """Be told of partition moves."""
        self._transport.listen(before_revoke=before_revoke, after_assign=after_assign)

    async def take_over(self, router: Router, gained: Mapping[TopicPartition, int]) -> None:
        """Prepare ``router`` to rebuild the partitions ``gained`` (with their end offsets).

        The verdicts already published are learned first, so that judgements re-made
        while rebuilding are not published again.
        """
        assigned_ms = int(self._wall_clock() * 1000)
        router.take_over(self._transport.handled(), gained, assigned_ms)
        verdicts = self._topics.verdicts
        try:
            records = await self._transport.read_topic(verdicts)
        except TransportError as exc:
            # Without the ledger, re-made judgements are re-published: identical
            # duplicates, except finals made by expiry (logged at that point).
            log.error("cannot read %s to learn what is published: %s", verdicts, exc)
            return
        learned = router.recall(record.value for record in records)
        log.info(
            "rebuilding %d partition(s) from the log; %d published verdict(s) known",
            len(gained),
            learned,
        )

    def report_lag(self) -> None:
        """Consumer lag and misplaced records, per topic, into telemetry."""
        for topic, behind in self._transport.lag().items():
            self._telemetry.consumer_lag.labels(topic).set(behind)
        for topic, count in self._transport.misplaced().items():
            counted = self._misplaced.get(topic, 0)
            if count > counted:
                self._telemetry.misplaced_records.labels(topic).inc(count - counted)
                self._misplaced[topic] = count

    async def follow(self, directory: Directory, stopping: asyncio.Event) -> None:
        """Keep ``directory`` (the HTTP API) up to date with every daemon's deployments."""
        topics = [self._topics.deployments, self._topics.verdicts, self._topics.dead_letter]
        backoff = 1.0
        while not stopping.is_set():
            try:
                async for records in self._transport.follow(topics):
                    directory.take(records)
                    backoff = 1.0
            except TransportError as exc:
                log.warning("following %s for the API: %s", ", ".join(topics), exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)
