"""An in-process broker and transport: Kafka's semantics without a network.

Used by unit tests, simulations and ``coalmine demo``. Topics have partitions, records get
per-partition offsets and a timestamp, keys pick partitions the way the contract expects
(stable hash), and consumer groups keep committed positions on the broker, so a new
transport in the same group resumes where the last one committed.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from coalmine._exceptions import TransportError
from coalmine.bus.base import Headers, Outgoing, Record

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from coalmine.bus.base import AfterAssign, BeforeRevoke

TopicPartition = tuple[str, int]
"""``(topic, partition)``."""


def partition_for(key: bytes | None, partitions: int) -> int:
    """The partition a key lands on: ``crc32(key) % partitions``; no key goes to 0."""
    if key is None:
        return 0
    return zlib.crc32(key) % partitions


@dataclass(slots=True)
class _Partition:
    records: list[Record] = field(default_factory=list)
    # Broker-wide append sequence of each record, to merge partitions in publish order.
    seqs: list[int] = field(default_factory=list)


class MemoryBroker:
    """Topics of partitioned, append-only logs, plus committed positions per group.

    Publishing to a topic that does not exist creates it with ``default_partitions``
    (like Kafka's ``auto.create.topics.enable``); pass ``None`` to refuse instead.
    """

    def __init__(self, *, default_partitions: int | None = 1) -> None:
        self.default_partitions = default_partitions
        self._topics: dict[str, list[_Partition]] = {}
        self._committed: dict[str, dict[TopicPartition, int]] = {}
        self._handled: dict[str, dict[TopicPartition, int]] = {}
        self._seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._publish_failures = 0

    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create ``name`` with ``partitions`` partitions (no-op if it exists alike)."""
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        existing = self._topics.get(name)
        if existing is not None:
            if len(existing) != partitions:
                msg = f"topic {name!r} exists with {len(existing)} partitions, not {partitions}"
                raise TransportError(msg)
            return
        self._topics[name] = [_Partition() for _ in range(partitions)]
        self.notify()

    def topics(self) -> dict[str, int]:
        """Every topic and its partition count."""
        return {name: len(parts) for name, parts in self._topics.items()}

    def append(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        timestamp_ms: int | None = None,
    ) -> Record:
        """Append one record (as a producer would) and wake waiting consumers."""
        parts = self._topics.get(topic)
        if parts is None:
            if self.default_partitions is None:
                raise TransportError(f"topic {topic!r} does not exist")
            self.create_topic(topic, self.default_partitions)
            parts = self._topics[topic]
        partition = partition_for(key, len(parts))
        log = parts[partition]
        record = Record(
            topic=topic,
            value=value,
            key=key,
            headers=tuple(headers),
            partition=partition,
            offset=len(log.records),
            timestamp_ms=time.time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms,
        )
        log.records.append(record)
        log.seqs.append(self._seq)
        self._seq += 1
        self.notify()
        return record

    def records(self, topic: str) -> list[Record]:
        """Every record of ``topic``, in the order they were appended."""
        parts = self._topics.get(topic, [])
        merged = [
            (seq, record)
            for part in parts
            for seq, record in zip(part.seqs, part.records, strict=True)
        ]
        merged.sort(key=lambda pair: pair[0])
        return [record for _, record in merged]

    def committed(self, group: str) -> dict[TopicPartition, int]:
        """The positions ``group`` has committed (next offset to read, per partition)."""
        return dict(self._committed.get(group, {}))

    def fail_next_publishes(self, count: int = 1) -> None:
        """Make the next ``count`` publishes raise ``TransportError`` (fault injection)."""
        self._publish_failures += count

    # -- the consumer side, used by MemoryTransport ---------------------------------------

    def handled(self, group: str) -> dict[TopicPartition, int]:
        """How far ``group`` handled each partition (committed beside its positions)."""
        return dict(self._handled.get(group, {}))

    def commit_handled(self, group: str, positions: dict[TopicPartition, int]) -> None:
        """Store how far ``group`` handled each partition."""
        self._handled.setdefault(group, {}).update(positions)

    def commit_positions(self, group: str, positions: dict[TopicPartition, int]) -> None:
        """Store ``positions`` (next offset to read) as ``group``'s committed ones."""
        self._committed.setdefault(group, {}).update(positions)

    def take_publish_failure(self) -> bool:
        """Consume one injected publish failure, if any is pending."""
        if self._publish_failures > 0:
            self._publish_failures -= 1
            return True
        return False

    def read(
        self, topics: Sequence[str], positions: dict[TopicPartition, int], limit: int
    ) -> list[Record]:
        """Up to ``limit`` records after ``positions``, in append order; advances them."""
        available: list[tuple[int, Record]] = []
        for topic in topics:
            for number, part in enumerate(self._topics.get(topic, [])):
                start = positions.setdefault((topic, number), 0)
                available.extend(zip(part.seqs[start:], part.records[start:], strict=True))
        available.sort(key=lambda pair: pair[0])
        batch = [record for _, record in available[:limit]]
        for record in batch:
            positions[record.topic, record.partition] = record.offset + 1
        return batch

    def end_positions(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """The next offset to be written, per partition of ``topics``."""
        return {
            (topic, number): len(part.records)
            for topic in topics
            for number, part in enumerate(self._topics.get(topic, []))
        }

    async def wait_for_change(self, seconds: float) -> bool:
        """Wait until the next change (append, new topic, stopped consumer); False on timeout."""
        # A future per waiter, created on the waiter's own loop, so a broker outlives the
        # event loops of the tests that share it.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)
        return True

    def notify(self) -> None:
        """Wake everyone in :meth:`wait_for_change`."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class MemoryTransport:
    """A :class:`~coalmine.bus.base.Transport` over a :class:`MemoryBroker`.

    One member per group: it reads every partition of the consumed topics, starting at
    the group's committed positions (or at the beginning/end for partitions the group has
    never committed, per ``auto_offset_reset``).
    """

    def __init__(
        self,
        broker: MemoryBroker,
        consume: Sequence[str],
        group: str,
        *,
        auto_offset_reset: Literal["earliest", "latest"] = "earliest",
        max_records: int = 2000,
    ) -> None:
        self.broker = broker
        self.consume = tuple(consume)
        self.group = group
        self.auto_offset_reset = auto_offset_reset
        self.max_records = max_records
        self._positions: dict[TopicPartition, int] = {}
        self._fetched: dict[TopicPartition, int] = {}
        self._handled: dict[TopicPartition, int] = {}
        self._started = False
        self.unready: str | None = "not started"
        """Why :meth:`ready` last answered False (None: it answered True)."""
        self._after_assign: AfterAssign | None = None

    def listen(self, *, before_revoke: BeforeRevoke, after_assign: AfterAssign) -> None:
        """Be told of the assignment at start (one member owns every partition)."""
        del before_revoke  # a single member never gives partitions up
        self._after_assign = after_assign

    async def read_topic(self, topic: str) -> list[Record]:
        """Every record of ``topic``, in append order."""
        return self.broker.records(topic)

    async def follow(self, topics: Sequence[str]) -> AsyncIterator[list[Record]]:
        """Every record of ``topics``, from their beginning on, as they arrive."""
        positions: dict[TopicPartition, int] = {}
        while True:
            batch = self.broker.read(topics, positions, self.max_records)
            if batch:
                yield batch
            else:
                await self.broker.wait_for_change(1.0)

    def misplaced(self) -> dict[str, int]:
        """None: the memory broker places every keyed record itself (``partition_for``)."""
        return {}

    def handled(self) -> dict[TopicPartition, int]:
        """How far the group handled each partition before this transport started."""
        return dict(self._handled)

    def lag(self) -> dict[str, int]:
        """Records not yet fetched, per consumed topic."""
        lag: dict[str, int] = {}
        for (topic, partition), end in self.broker.end_positions(self.consume).items():
            behind = end - self._positions.get((topic, partition), 0)
            lag[topic] = lag.get(topic, 0) + behind
        return lag

    async def start(self) -> None:
        """Resume from the group's committed positions."""
        committed = self.broker.committed(self.group)
        if self.auto_offset_reset == "latest":
            ends = self.broker.end_positions(self.consume)
            self._positions = {tp: committed.get(tp, end) for tp, end in ends.items()}
        else:
            self._positions = {}
        self._positions.update(committed)
        handled = self.broker.handled(self.group)
        self._handled = {tp: n for tp, n in handled.items() if n > committed.get(tp, 0)}
        self._fetched = {}
        self._started = True
        if self._after_assign is not None:
            ends = self.broker.end_positions(self.consume)
            await self._after_assign(frozenset(), ends)

    async def stop(self) -> None:
        """Stop fetching and wake a fetch that is waiting; safe to call twice."""
        if self._started:
            self._started = False
            self.broker.notify()

    async def fetch(self, timeout: float) -> list[Record]:  # noqa: ASYNC109 - the protocol's poll timeout
        """The next records in append order, waiting up to ``timeout`` seconds for some."""
        self._require_started()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._started:
            batch = self.broker.read(self.consume, self._positions, self.max_records)
            if batch:
                for record in batch:
                    self._fetched[record.topic, record.partition] = record.offset + 1
                return batch
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            await self.broker.wait_for_change(remaining)
        return []

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Append every message; the broker acknowledges at once."""
        self._require_started()
        if self.broker.take_publish_failure():
            raise TransportError("publish failed (injected by MemoryBroker.fail_next_publishes)")
        for message in messages:
            self.broker.append(
                message.topic, message.value, key=message.key, headers=message.headers
            )

    async def commit(self, floors: Mapping[TopicPartition, int] | None = None) -> None:
        """Store the positions of everything fetched so far, held back to ``floors``."""
        self._require_started()
        if self._fetched:
            floors = floors or {}
            positions = {
                tp: min(position, floors.get(tp, position))
                for tp, position in self._fetched.items()
            }
            self.broker.commit_positions(self.group, positions)
            self.broker.commit_handled(self.group, self._fetched)
            self._fetched = {}

    async def ready(self) -> bool:
        """True once started and every consumed topic exists."""
        missing = [t for t in self.consume if t not in self.broker.topics()]
        self.unready = (
            "not started"
            if not self._started
            else f"missing topics: {', '.join(missing)}"
            if missing
            else None
        )
        return self.unready is None

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this transport reads (all of them: one member per group)."""
        return frozenset(self.broker.end_positions(self.consume))

    def _require_started(self) -> None:
        if not self._started:
            raise TransportError("the memory transport is not started")
