"""The Kafka transport: a small front over its parts (see the package's docstring)."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Literal

from aiokafka.errors import KafkaError

from coalmine._exceptions import TransportError
from coalmine.bus.kafka import clients
from coalmine.bus.kafka.clients import Clients, bounded, describe, log
from coalmine.bus.kafka.commits import Commits
from coalmine.bus.kafka.fetcher import Fetcher
from coalmine.bus.kafka.group import Membership
from coalmine.bus.kafka.pauses import Pauses
from coalmine.bus.kafka.positions import Positions
from coalmine.bus.kafka.producer import Producer
from coalmine.bus.kafka.readers import follow, read_topic
from coalmine.bus.kafka.readiness import Readiness
from coalmine.bus.kafka.topics import new_admin
from coalmine.bus.kafka.truncation import Truncation
from coalmine.bus.merge import PartitionMerge

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from coalmine.bus.base import AfterAssign, BeforeRevoke, Outgoing, Record, TopicPartition
    from coalmine.config.models import KafkaSettings

__all__ = ["KafkaTransport"]

_MERGE_WAIT = 2.0
"""Longest a partition that stays behind holds back the other partitions of a merged
topic (see :class:`~coalmine.bus.merge.PartitionMerge`)."""


class KafkaTransport:
    """A :class:`~coalmine.bus.base.Transport` over Kafka; :class:`~coalmine.bus.base.Partitioned`.

    Args:
        settings: connection, security and client settings.
        consume: topics to read as a member of the consumer group (none: publish only).
        group_id: the consumer group; ``settings.group_id`` when not given.
        auto_offset_reset: where a group starts on a partition it never committed.
        produce: topics this transport publishes to; ``ready()`` requires them too.
        first: topics read up to their end, on every assignment, before the other topics
            are fetched (the deployments topic: Kafka orders partitions, not topics, and
            a metric read before its deployment's ``started`` could not be routed).
        session_timeout: overrides ``settings.session_timeout`` (tansu delays a group
            join by about half of it, so tests use a short one).
        copartitioned: topics that must have equal partition counts (the deployments and
            metrics topics, both keyed by service); checked at start and on every
            assignment, raising :class:`PartitioningError` when they differ.
        merged: topics whose records are handed out in timestamp order across their
            partitions (:class:`~coalmine.bus.merge.PartitionMerge`): inputs whose
            producers do not key them by service, such as the OpenTelemetry Collector.

    Partition moves are reported through :meth:`listen`: before partitions are given up
    (after the daemon finished its batch in hand and committed), and after the new
    assignment, with the partitions lost and the partitions gained. Partitions kept
    across a rebalance resume at the position fetched so far, not at the committed one
    (which may be held back for recovery), so nothing is handled twice.
    """

    def __init__(  # noqa: PLR0913 - keyword-only options of one client
        self,
        settings: KafkaSettings,
        consume: Sequence[str],
        *,
        group_id: str | None = None,
        auto_offset_reset: Literal["earliest", "latest", "none"] = "earliest",
        produce: Sequence[str] = (),
        first: Sequence[str] = (),
        session_timeout: float | None = None,
        copartitioned: Sequence[str] = (),
        merged: Sequence[str] = (),
    ) -> None:
        self.settings = settings
        self.consume = tuple(consume)
        self.produce = tuple(produce)
        self.first = frozenset(first)
        self.group_id = group_id or settings.group_id
        self.auto_offset_reset = auto_offset_reset
        self.session_timeout = (
            settings.session_timeout if session_timeout is None else session_timeout
        )
        self.copartitioned = tuple(copartitioned)
        self._started = False
        self._clients = Clients()
        self._positions = Positions()
        self._merge = PartitionMerge(merged, _MERGE_WAIT) if merged else None
        self._pauses = Pauses(self._clients, self.first)
        self._truncation = Truncation(self._clients, self._positions, self._merge)
        self._fetcher = Fetcher(
            settings,
            self._clients,
            self._positions,
            self._pauses,
            self._merge,
            copartitioned=self.copartitioned,
            auto_offset_reset=auto_offset_reset,
        )
        self._group = Membership(
            settings,
            self._clients,
            self._positions,
            self._fetcher,
            self._pauses,
            self._truncation,
            group_id=self.group_id,
            copartitioned=self.copartitioned,
        )
        self._producer = Producer(settings, self._clients, self._positions, self.group_id)
        self._commits = Commits(
            settings, self._clients, self._positions, self._producer, self.group_id
        )
        self._readiness = Readiness(settings, self._clients, (*self.consume, *self.produce))

    @property
    def transactional(self) -> bool:
        """Whether publishes and commits go through Kafka transactions."""
        return self._producer.transactional

    @property
    def unready(self) -> str | None:
        """Why :meth:`ready` last answered False (None: it answered True)."""
        return self._readiness.unready

    def listen(self, *, before_revoke: BeforeRevoke, after_assign: AfterAssign) -> None:
        """Be told of partition moves.

        ``before_revoke(partitions)`` runs while the partitions are still ours (commit
        there). ``after_assign(lost, gained)`` runs before anything of the new assignment
        is fetched; ``gained`` maps each new partition to its end offset at that moment
        (what lies before it is being re-read, not new).
        """
        self._group.listen(before_revoke=before_revoke, after_assign=after_assign)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, then start the producer and join the group (bounded waits).

        Raises:
            TransportError: the broker cannot be reached or refused us.
        """
        if self._started:
            return
        settings = self.settings
        try:
            self._clients.admin = new_admin(settings)
            async with bounded(
                settings.request_timeout, f"cannot reach Kafka at {settings.bootstrap_servers}"
            ):
                await self._clients.admin.start()
            await self._producer.start()
            if self.consume:
                await self._join()
        except BaseException:
            await self._close_clients()
            raise
        self._started = True
        log.info(
            "kafka transport started: servers=%s group=%s consume=%s produce=%s",
            settings.bootstrap_servers,
            self.group_id,
            ",".join(self.consume) or "-",
            ",".join(self.produce) or "-",
        )

    async def _join(self) -> None:
        """Subscribe to the consumed topics and join the group."""
        consumer = self._clients.consumer = clients.group_consumer(
            self.settings, self.group_id, self.auto_offset_reset, self.session_timeout
        )
        await self._group.check_copartitioned()
        # An exact-name pattern: a named subscription asks the broker for the topics by
        # name, which auto-creates a missing one on some brokers (see the package).
        pattern = "^(?:" + "|".join(re.escape(t) for t in self.consume) + ")$"
        consumer.subscribe(pattern=pattern, listener=self._group.listener())
        # Joining waits for the group to rebalance: allow for that beyond a request.
        async with bounded(
            2 * self.settings.request_timeout + self.session_timeout,
            f"cannot join consumer group {self.group_id!r}",
        ):
            await consumer.start()

    async def stop(self) -> None:
        """Flush the producer, leave the group and disconnect; safe to call twice."""
        self._started = False
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self._producer.in_transaction:
            await self._producer.abort("stopping")
        # The consumer first (it leaves the group), then flush the producer.
        for name in ("consumer", "producer", "admin"):
            client = getattr(self._clients, name)
            setattr(self._clients, name, None)
            if client is None:
                continue
            try:
                async with asyncio.timeout(self.settings.request_timeout):
                    await (client.close() if name == "admin" else client.stop())
            except (KafkaError, OSError, TimeoutError) as err:
                log.warning("closing the kafka %s: %s", name, describe(err))
        self._positions.clear()
        if self._merge is not None:
            self._merge.drop()
        self._truncation.clear()
        self._readiness.forget()

    # -- the Transport protocol ----------------------------------------------------------

    async def fetch(self, timeout: float) -> list[Record]:  # noqa: ASYNC109 - the protocol's poll timeout
        """Up to ``max_poll_records`` records, in order per partition; ``[]`` on timeout.

        Records of ``merged`` topics come after the others, in timestamp order across
        their partitions (some may be held for a later fetch: :class:`PartitionMerge`).

        A partition whose next record batch cannot be unpacked (compressed with a codec
        the client lacks, corrupt) is logged with its topic, partition and offset and
        paused (retried after 5 s, doubling up to 5 min); the others go on.
        """
        if not self._started:
            raise TransportError("the kafka transport is not started")
        group = self._group
        if group.fatal is not None:
            raise group.fatal
        if self._clients.consumer is None:
            await asyncio.sleep(timeout)
            return []
        # aiokafka fetches for a new assignment while its callback still runs; records
        # handed out then would be handled before the daemon learned what the move means
        # (the published verdicts, how far the partitions were handled). So a fetch waits
        # for a move to finish, and a batch that overlapped one is put back.
        await group.wait_settled()
        moves = group.moves
        batches = await self._fetcher.getmany(timeout)
        if moves != group.moves or not group.settled():
            await group.wait_settled()
            self._fetcher.put_back(batches)
            return []
        if group.fatal is not None:
            raise group.fatal
        records = await self._fetcher.hand_out(batches)
        await self._truncation.check()
        if self._pauses.catch_up:
            await self._pauses.check_caught_up()
        return records

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send every message at once and return when the broker acknowledged them all.

        Raises:
            TransportError: a message was refused or not acknowledged in time
                (:class:`~coalmine._exceptions.TransactionAbortedError` in a transaction).
        """
        if self._clients.producer is None:
            raise TransportError("the kafka transport is not started")
        if messages:
            await self._producer.publish(messages)

    async def commit(self, floors: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the positions after every record fetched so far, held back to ``floors``.

        Only partitions whose committed offset changes are sent.
        """
        await self._commits.commit(floors)

    async def ready(self) -> bool:
        """True when the broker answers and every consumed and produced topic exists."""
        return await self._readiness.ready(self._started)

    # -- Partitioned ---------------------------------------------------------------------

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns."""
        consumer = self._clients.consumer
        if consumer is None:
            return frozenset()
        return frozenset((tp.topic, tp.partition) for tp in consumer.assignment())

    def lag(self) -> dict[str, int]:
        """Records between what was fetched and the log end, per topic (owned partitions)."""
        return self._fetcher.lag()

    def misplaced(self) -> dict[str, int]:
        """Keyed records of the co-partitioned topics off their murmur2 partition, per topic.

        Their producer used another partitioner: they may miss their deployment.
        """
        return self._fetcher.misplaced()

    def handled(self) -> dict[TopicPartition, int]:
        """Per partition gained at the last assignment, the position the group handled it to.

        Records between the committed offset and that position are read again only to
        rebuild open deployments: their verdicts and dead letters are already published.
        """
        return self._group.handled()

    async def read_topic(self, topic: str) -> list[Record]:
        """Every record of ``topic`` now in the log, read outside the consumer group.

        Used to learn the verdicts already published; a missing topic reads as empty.
        """
        if not self._started:
            raise TransportError("the kafka transport is not started")
        return await read_topic(self.settings, topic, isolation_level=self._isolation_level)

    def follow(self, topics: Sequence[str]) -> AsyncIterator[list[Record]]:
        """Every record of ``topics``, from their beginning on, as they arrive.

        Read outside the consumer group (every daemon sees every partition); partitions
        that appear later are picked up within ``metadata_max_age``.

        Raises:
            TransportError: the broker cannot be reached.
        """
        return follow(self.settings, topics, isolation_level=self._isolation_level)

    @property
    def _isolation_level(self) -> Literal["read_committed", "read_uncommitted"]:
        """What readers outside the group see: only committed transactions, in them."""
        return "read_committed" if self.transactional else "read_uncommitted"
