"""Committing the group's positions: what was fetched, held back to the recovery floors.

Beside each offset goes the position records were handled up to (``coalmine handled=N``,
the commit's metadata): a new owner of the partition re-reads from the offset, and knows
that what lies below the handled position only rebuilds open deployments.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError

from coalmine.bus.kafka.clients import bounded, describe, log

if TYPE_CHECKING:
    from collections.abc import Mapping

    from coalmine.bus.base import TopicPartition as TopicPartitionKey
    from coalmine.bus.kafka.clients import Clients
    from coalmine.bus.kafka.positions import Positions
    from coalmine.bus.kafka.producer import Producer
    from coalmine.config.models import KafkaSettings

__all__ = ["Commits", "handled_in", "with_metadata"]

_HANDLED = re.compile(r"coalmine handled=(\d+)")


def with_metadata(offsets: Mapping[Any, tuple[int, int]]) -> dict[Any, tuple[int, str]]:
    """``{tp: (offset, handled)}`` as aiokafka commits it: the handled position as metadata."""
    return {
        tp: (offset, f"coalmine handled={handled}") for tp, (offset, handled) in offsets.items()
    }


def handled_in(metadata: str | None) -> int | None:
    """The handled position a commit's metadata holds, if it holds one."""
    match = _HANDLED.fullmatch(metadata or "")
    return None if match is None else int(match[1])


class Commits:
    """Commits the positions fetched so far: as a group member, or in the transaction."""

    def __init__(
        self,
        settings: KafkaSettings,
        clients: Clients,
        positions: Positions,
        producer: Producer,
        group_id: str,
    ) -> None:
        self.settings = settings
        self._clients = clients
        self._positions = positions
        self._producer = producer
        self._group_id = group_id

    async def commit(self, floors: Mapping[TopicPartitionKey, int] | None = None) -> None:
        """Commit the positions after every record fetched so far, held back to ``floors``.

        Only partitions whose committed offset changes are sent.
        """
        consumer, positions, producer = self._clients.consumer, self._positions, self._producer
        if consumer is None or not positions.fetched:
            if producer.in_transaction:
                await producer.commit_transaction({})
            return
        floors = floors or {}
        assigned = consumer.assignment()
        wanted: dict[TopicPartitionKey, tuple[int, int]] = {}
        for key, position in positions.fetched.items():
            offset = min(position, floors.get(key, position))
            if positions.committed.get(key) != (offset, position):
                wanted[key] = (offset, position)
        offsets = {
            tp: committed
            for (topic, partition), committed in wanted.items()
            if (tp := TopicPartition(topic, partition)) in assigned
        }
        if producer.transactional:
            if offsets or producer.in_transaction:
                await producer.commit_transaction(offsets)
        elif offsets:
            await self._commit_offsets(offsets)

    async def _commit_offsets(self, offsets: dict[Any, tuple[int, int]]) -> None:
        """Commit ``{tp: (offset, handled)}`` as a member of the group."""
        consumer = self._clients.consumer
        if consumer._coordinator.generation < 0:  # noqa: SLF001 - no public accessor
            # Out of the group (its coordinator forgot it, or it is rejoining): aiokafka
            # would send this as a standalone commit, which a broker that lost its data
            # accepts into logs recreated since; the next owner re-reads from the last
            # commit instead.
            log.info("commit skipped: not a member of group %r right now", self._group_id)
            return
        async with bounded(self.settings.request_timeout, "commit offsets to Kafka"):
            try:
                await consumer.commit(with_metadata(offsets))
            except CommitFailedError as err:
                # The group rebalanced under us: the new owner of these partitions (possibly
                # us again) reads them from the last commit: at-least-once.
                log.warning("commit skipped, the group rebalanced: %s", describe(err))
                return
        for tp, committed in offsets.items():
            self._positions.committed[tp.topic, tp.partition] = committed
