"""Several buses as one transport: consume from some, publish to others (``[bus]``).

A combined transport claims only what its buses can do: it is
:class:`~coalmine.bus.base.Partitioned` (partition moves, the log read back, lag) only when
one of its buses is (Kafka). ``CombinedTransport(consumers, publishers)`` builds a
:class:`PartitionedCombinedTransport` then, as ``pathlib.Path()`` builds the path class of
its platform; over MQTT alone it stays a plain
:class:`~coalmine.bus.base.Transport`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Self

from coalmine.bus.base import Partitioned

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping, Sequence

    from coalmine.bus.base import (
        AfterAssign,
        BeforeRevoke,
        Outgoing,
        Record,
        TopicPartition,
        Transport,
    )

__all__ = ["CombinedTransport", "PartitionedCombinedTransport"]


class CombinedTransport:
    """A :class:`~coalmine.bus.base.Transport` over the buses ``[bus]`` names.

    Records from every consuming bus are handed out together (each bus keeps its own
    order); every published message goes to every publishing bus, and ``publish`` returns
    once all of them acknowledged it. A bus may both consume and publish.
    """

    def __new__(cls, consumers: Sequence[Transport], publishers: Sequence[Transport]) -> Self:
        """A :class:`PartitionedCombinedTransport` when one of the buses is partitioned."""
        if cls is CombinedTransport and _partitioned([*consumers, *publishers]):
            return super().__new__(PartitionedCombinedTransport)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(self, consumers: Sequence[Transport], publishers: Sequence[Transport]) -> None:
        self.consumers = tuple(consumers)
        self.publishers = tuple(publishers)
        self._all = tuple(dict.fromkeys((*self.consumers, *self.publishers)))

    async def start(self) -> None:
        """Start every bus; if one fails, stop the ones already started."""
        started: list[Transport] = []
        try:
            for transport in self._all:
                await transport.start()
                started.append(transport)
        except BaseException:
            for transport in started:
                await transport.stop()
            raise

    async def stop(self) -> None:
        """Stop every bus."""
        for transport in self._all:
            await transport.stop()

    async def fetch(self, timeout: float) -> list[Record]:  # noqa: ASYNC109 - the protocol's poll timeout
        """Records from every consuming bus, waiting up to ``timeout`` for any."""
        if len(self.consumers) == 1:
            return await self.consumers[0].fetch(timeout)
        batches = await asyncio.gather(*(t.fetch(timeout) for t in self.consumers))
        return [record for batch in batches for record in batch]

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish to every publishing bus; raise if any of them failed."""
        await asyncio.gather(*(t.publish(messages) for t in self.publishers))

    async def commit(self, floors: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit every consuming bus, each held back to ``floors``."""
        for transport in self.consumers:
            await transport.commit(floors)

    async def ready(self) -> bool:
        """Every bus is ready."""
        return all([await transport.ready() for transport in self._all])

    @property
    def unready(self) -> str | None:
        """Why a bus is not ready, as it says (None when none says)."""
        reasons = [getattr(t, "unready", None) for t in self._all]
        return "; ".join(r for r in reasons if r) or None


class PartitionedCombinedTransport(CombinedTransport):
    """A :class:`CombinedTransport` with a partitioned bus (Kafka) among its buses.

    Partition moves, lag and misplaced records come from the partitioned buses that
    consume; the log is read back (:meth:`read_topic`, :meth:`follow`) from the first
    partitioned bus.
    """

    def __init__(self, consumers: Sequence[Transport], publishers: Sequence[Transport]) -> None:
        super().__init__(consumers, publishers)
        partitioned = _partitioned(self._all)
        if not partitioned:
            raise ValueError("a partitioned combined transport needs a partitioned bus")
        self._log = partitioned[0]
        self._partitioned_consumers = _partitioned(self.consumers)

    def listen(self, *, before_revoke: BeforeRevoke, after_assign: AfterAssign) -> None:
        """Pass partition moves of the partitioned buses (Kafka) on."""
        for transport in self._partitioned_consumers:
            transport.listen(before_revoke=before_revoke, after_assign=after_assign)

    async def read_topic(self, topic: str) -> list[Record]:
        """Read ``topic`` from the partitioned bus (Kafka)."""
        return await self._log.read_topic(topic)

    def follow(self, topics: Sequence[str]) -> AsyncIterator[list[Record]]:
        """Follow ``topics`` on the partitioned bus (Kafka)."""
        return self._log.follow(topics)

    def misplaced(self) -> dict[str, int]:
        """Misplaced keyed records of the partitioned buses, per topic."""
        counts: dict[str, int] = {}
        for transport in self._partitioned_consumers:
            for topic, count in transport.misplaced().items():
                counts[topic] = counts.get(topic, 0) + count
        return counts

    def handled(self) -> dict[TopicPartition, int]:
        """How far the partitioned buses' groups handled the partitions just gained."""
        positions: dict[TopicPartition, int] = {}
        for transport in self._partitioned_consumers:
            positions.update(transport.handled())
        return positions

    def lag(self) -> dict[str, int]:
        """Consumer lag of the partitioned buses, per topic."""
        lag: dict[str, int] = {}
        for transport in self._partitioned_consumers:
            for topic, behind in transport.lag().items():
                lag[topic] = lag.get(topic, 0) + behind
        return lag


def _partitioned(transports: Sequence[Transport]) -> list[Partitioned]:
    """Those of ``transports`` that are partitioned, in order."""
    return [t for t in transports if isinstance(t, Partitioned)]
