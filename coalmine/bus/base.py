"""The one interface every transport implements (Kafka, MQTT, in-memory)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

Headers = tuple[tuple[str, bytes], ...]

TopicPartition = tuple[str, int]
"""``(topic, partition)``."""

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeAlias

    BeforeRevoke: TypeAlias = Callable[[frozenset[TopicPartition]], Awaitable[None]]
    AfterAssign: TypeAlias = Callable[
        [frozenset[TopicPartition], Mapping[TopicPartition, int]], Awaitable[None]
    ]


@dataclass(frozen=True, slots=True)
class Record:
    """One message as it came off the bus, with where it came from."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = ()
    partition: int = 0
    offset: int = 0
    timestamp_ms: int | None = None

    @property
    def source(self) -> str:
        """``topic/partition/offset``: the ``coalmine-source`` dead-letter header."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    def header(self, name: str) -> bytes | None:
        """The first header called ``name`` (case-insensitive), if any."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


# Transports build a Record per message: ``make_record`` skips the frozen dataclass's
# ``__init__`` (one ``object.__setattr__`` per field) and sets the slots directly. The
# unpacking fails at import if a field is added or removed.
_new = object.__new__
(
    _set_topic,
    _set_value,
    _set_key,
    _set_headers,
    _set_partition,
    _set_offset,
    _set_timestamp_ms,
) = (vars(Record)[f.name].__set__ for f in fields(Record))


def make_record(
    topic: str,
    value: bytes,
    key: bytes | None,
    headers: Headers,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
) -> Record:
    """``Record(topic, value, key, headers, partition, offset, timestamp_ms)``, faster."""
    record: Record = _new(Record)
    _set_topic(record, topic)
    _set_value(record, value)
    _set_key(record, key)
    _set_headers(record, headers)
    _set_partition(record, partition)
    _set_offset(record, offset)
    _set_timestamp_ms(record, timestamp_ms)
    return record


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message coalmine publishes: a verdict or a dead letter."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers = field(default_factory=tuple)


@runtime_checkable
class Transport(Protocol):
    """A bus coalmine consumes from and publishes to.

    Consumption is at-least-once: ``fetch`` hands out records in per-partition order,
    and ``commit`` marks everything fetched so far as done. The caller commits only once
    the effects of those records (their verdicts and dead letters) are acknowledged by
    ``publish``.
    """

    async def start(self) -> None:
        """Connect, subscribe to the input topics, and be ready to fetch."""

    async def stop(self) -> None:
        """Flush pending publishes and disconnect; safe to call twice."""

    async def fetch(self, timeout: float) -> list[Record]:  # noqa: ASYNC109 - a poll timeout, not a deadline
        """Return the next records (possibly none after ``timeout`` seconds)."""

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish ``messages`` and return once the broker has acknowledged all of them."""

    async def commit(self, floors: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the consumer position up to everything fetched so far.

        ``floors`` holds the position back per partition: a restarted consumer must re-read
        from there (the oldest record that open analyses still need). Buses without
        offsets (MQTT) ignore it.
        """

    async def ready(self) -> bool:
        """True when the broker is reachable and the topics exist."""


@runtime_checkable
class Partitioned(Protocol):
    """A transport whose input is partitioned and shared by a consumer group (Kafka).

    The daemon uses it to rebuild what it owns from the log: it is told of partition
    moves, reads the verdict topic, and reports consumer lag. A transport has these
    methods only when it can do what they say (MQTT has none of them): the daemon asks
    ``isinstance(transport, Partitioned)``.
    """

    def listen(self, *, before_revoke: BeforeRevoke, after_assign: AfterAssign) -> None:
        """Be told of partition moves (see :class:`~coalmine.bus.kafka.KafkaTransport`)."""

    async def read_topic(self, topic: str) -> list[Record]:
        """Every record of ``topic`` now in the log, read outside the consumer group."""

    def lag(self) -> dict[str, int]:
        """Records between what was fetched and the log end, per topic."""

    def misplaced(self) -> dict[str, int]:
        """Keyed records of co-partitioned topics on a partition another partitioner chose."""

    def handled(self) -> dict[TopicPartition, int]:
        """How far the group handled each partition gained at the last assignment.

        Records re-read below that position only rebuild open deployments: their verdicts
        and dead letters are already published.
        """

    def follow(self, topics: Sequence[str]) -> AsyncIterator[list[Record]]:
        """Every record of ``topics`` from their beginning on, outside the group."""
