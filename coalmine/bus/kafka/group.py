"""Membership of the consumer group: partition moves, and what they mean to the owner.

Partition moves are passed on to the transport's owner (the daemon) through the callbacks
given to :meth:`Membership.listen`. A fetch waits while a move is handled, and records
fetched across one are put back (see :meth:`~coalmine.bus.kafka.KafkaTransport.fetch`).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from coalmine._exceptions import TransportError
from coalmine.bus.kafka.clients import bounded, describe, log
from coalmine.bus.kafka.commits import handled_in
from coalmine.bus.kafka.topics import copartitioning_problem, existing_topics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Sequence

    from coalmine._exceptions import CoalmineError
    from coalmine.bus.base import AfterAssign, BeforeRevoke
    from coalmine.bus.base import TopicPartition as TopicPartitionKey
    from coalmine.bus.kafka.clients import Clients
    from coalmine.bus.kafka.fetcher import Fetcher
    from coalmine.bus.kafka.pauses import Pauses
    from coalmine.bus.kafka.positions import Positions
    from coalmine.bus.kafka.truncation import Truncation
    from coalmine.config.models import KafkaSettings

__all__ = ["Membership"]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's partition moves to the membership."""

    def __init__(self, membership: Membership) -> None:
        self._membership = membership

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        async with self._membership.moving():
            await self._membership.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        async with self._membership.moving():
            await self._membership.assigned(list(assigned))


class Membership:
    """What this member owns, how far the group handled it, and the checks of its topics."""

    def __init__(  # noqa: PLR0913 - the parts a partition move touches
        self,
        settings: KafkaSettings,
        clients: Clients,
        positions: Positions,
        fetcher: Fetcher,
        pauses: Pauses,
        truncation: Truncation,
        *,
        group_id: str,
        copartitioned: Sequence[str],
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.copartitioned = tuple(copartitioned)
        self._clients = clients
        self._positions = positions
        self._fetcher = fetcher
        self._pauses = pauses
        self._truncation = truncation
        self.fatal: CoalmineError | None = None
        """Why the transport must not go on (topics not co-partitioned)."""
        self._before_revoke: BeforeRevoke | None = None
        self._after_assign: AfterAssign | None = None
        self._handled: dict[TopicPartitionKey, int] = {}
        self._settled = asyncio.Event()
        """Set while no partition move is being handled."""
        self._settled.set()
        self.moves = 0
        """Partition moves begun so far."""

    def listen(self, *, before_revoke: BeforeRevoke, after_assign: AfterAssign) -> None:
        """Be told of partition moves (see :meth:`~coalmine.bus.kafka.KafkaTransport.listen`)."""
        self._before_revoke = before_revoke
        self._after_assign = after_assign

    def listener(self) -> ConsumerRebalanceListener:
        """The listener to subscribe the consumer with."""
        return _Rebalance(self)

    @asynccontextmanager
    async def moving(self) -> AsyncIterator[None]:
        """Mark a partition move in progress for the duration of its callback."""
        self.moves += 1
        self._settled.clear()
        try:
            yield
        finally:
            self._settled.set()

    def settled(self) -> bool:
        """No partition move is being handled."""
        return self._settled.is_set()

    async def wait_settled(self) -> None:
        """Wait until no partition move is being handled."""
        await self._settled.wait()

    async def revoked(self, revoked: list[Any]) -> None:
        """Let the owner finish with the partitions while they are still ours."""
        partitions = frozenset((tp.topic, tp.partition) for tp in revoked)
        if self._before_revoke is not None and partitions:
            try:
                await self._before_revoke(partitions)
            except Exception:  # noqa: BLE001 - a failed hand-over must not break the rebalance
                log.exception("handing over partitions failed; their new owner re-reads them")
        # Fetched positions are kept: resumed for partitions we get back (see assigned).
        self._pauses.revoked()

    async def assigned(self, assigned: list[Any]) -> None:
        """Take the new assignment: tell the owner what was lost and gained, then catch up."""
        now_owned = frozenset((tp.topic, tp.partition) for tp in assigned)
        log.info("assigned partitions %s", sorted(f"{t}/{p}" for t, p in now_owned))
        lost = self._positions.owned - now_owned
        gained = now_owned - self._positions.owned
        self._positions.owned = now_owned
        for key in lost:
            self._truncation.forget(key)
        self._fetcher.reassigned(assigned, lost, gained)
        self._check_assignment_copartitioned()
        await self._read_handled(gained)
        if self._after_assign is not None:
            await self._after_assign(lost, await self._ends(gained))
        await self._pauses.catch_up_first(assigned)

    async def _ends(self, gained: frozenset[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """The end offset of each gained partition now (-1 where it cannot be read)."""
        ends: dict[TopicPartitionKey, int] = dict.fromkeys(gained, -1)
        consumer = self._clients.consumer
        if gained and consumer is not None:
            try:
                answer = await consumer.end_offsets([TopicPartition(*k) for k in gained])
                ends.update({(tp.topic, tp.partition): end for tp, end in answer.items()})
            except KafkaError as err:
                log.warning("cannot read end offsets: %s", describe(err))
        return ends

    async def _read_handled(self, gained: frozenset[TopicPartitionKey]) -> None:
        """Learn how far the group handled each gained partition, from the commit's metadata.

        Kept partitions whose commit the group no longer has are noted as forgotten.
        """
        self._handled = {}
        positions = self._positions
        kept = [key for key in positions.owned - gained if key in positions.committed]
        if not (gained or kept) or self._clients.admin is None:
            return
        tps = [TopicPartition(*key) for key in (*gained, *kept)]
        try:
            async with bounded(self.settings.request_timeout, "read committed offsets"):
                committed = await self._clients.admin.list_consumer_group_offsets(
                    self.group_id, partitions=tps
                )
        except TransportError as err:
            log.warning(
                "cannot read how far partitions were handled (%s): invalid records re-read"
                " to rebuild deployments may be dead-lettered again",
                err,
            )
            return
        for key in kept:
            answer = committed.get(TopicPartition(*key))
            if answer is None or answer.offset < 0:
                positions.forgotten.add(key)
        if positions.forgotten:
            log.warning(
                "group %r no longer has the offsets it committed on %s: the broker lost its"
                " state (restarted without its data?)",
                self.group_id,
                ", ".join(sorted(f"{t}/{p}" for t, p in positions.forgotten)),
            )
        for tp, offset_and_metadata in committed.items():
            if (tp.topic, tp.partition) not in gained:
                continue
            handled = handled_in(offset_and_metadata.metadata)
            if handled is not None and handled > offset_and_metadata.offset >= 0:
                self._handled[tp.topic, tp.partition] = handled

    def handled(self) -> dict[TopicPartitionKey, int]:
        """Per partition gained at the last assignment, the position the group handled it to."""
        return dict(self._handled)

    async def check_copartitioned(self) -> None:
        """Refuse topics that must be co-partitioned and are not (when they exist)."""
        admin = self._clients.admin
        if len(self.copartitioned) < 2 or admin is None:
            return
        async with bounded(self.settings.request_timeout, "describe topics"):
            existing = await existing_topics(admin)
        self.fatal = copartitioning_problem(
            {t: existing[t] for t in self.copartitioned if t in existing}
        )
        if self.fatal is not None:
            raise self.fatal

    def _check_assignment_copartitioned(self) -> None:
        consumer = self._clients.consumer
        if len(self.copartitioned) < 2 or consumer is None:
            return
        counts: dict[str, int] = {}
        for topic in self.copartitioned:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                counts[topic] = len(partitions)
        self.fatal = self.fatal or copartitioning_problem(counts)
        owned = self._positions.owned
        numbers = [{p for t, p in owned if t == topic} for topic in self.copartitioned]
        if len(counts) == len(self.copartitioned) and any(n != numbers[0] for n in numbers):
            log.error(
                "this member owns different partition numbers of %s (%s): another member of"
                " group %r assigns partitions without the range assignor",
                ", ".join(self.copartitioned),
                "; ".join(str(sorted(n)) for n in numbers),
                self.group_id,
            )
