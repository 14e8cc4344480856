"""Records of unkeyed topics, handed out in time order across their partitions.

Kafka orders records within a partition only. A producer that does not key its messages
(the OpenTelemetry Collector's kafka exporter by default) spreads one series over every
partition; read from a backlog, one partition's records then come minutes ahead of
another's, and the points of the late partition look out of order (a delta or gauge point
older than its series' last is dropped as ``stale``) while deployments are judged on half
their data. :class:`PartitionMerge` holds what was fetched from such topics and hands
records out by their timestamp across the topic's partitions, the way Kafka Streams picks
the next record of a task: only while every partition of the topic either has records
waiting or has none left to fetch, so no earlier record can still arrive. A partition that
stays behind (paused, unreachable) holds the others back for at most ``wait`` seconds.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["PartitionMerge"]


class PartitionMerge:
    """Fetched records of ``topics``, held until they can be handed out in time order.

    Partitions are anything with ``topic`` and ``partition`` attributes (aiokafka's
    ``TopicPartition``); records anything with ``timestamp`` (ms) and ``offset``.
    """

    def __init__(self, topics: Iterable[str], wait: float) -> None:
        self.topics = frozenset(topics)
        self.wait = wait
        self._held: dict[Any, deque[Any]] = {}
        self._blocked_since: dict[str, float] = {}

    def __len__(self) -> int:
        """Records held."""
        return sum(len(queue) for queue in self._held.values())

    def hold(self, tp: Any, messages: list[Any]) -> None:
        """Keep ``messages`` (one partition's, in offset order) until they can go."""
        self._held.setdefault(tp, deque()).extend(messages)

    def drop(self, partitions: Iterable[Any] | None = None) -> None:
        """Forget what is held (of ``partitions``; all when None): it will be fetched again."""
        if partitions is None:
            self._held.clear()
            self._blocked_since.clear()
            return
        for tp in partitions:
            self._held.pop(tp, None)

    def release(
        self, owned: Iterable[Any], drained: Callable[[Any], bool], now: float
    ) -> list[tuple[Any, Any]]:
        """The records that can go now, with their partitions, in time order.

        ``owned``: the partitions assigned now. ``drained(tp)``: nothing is left to fetch
        from ``tp`` at the moment. A record goes while every owned partition of its topic
        has records held or is drained; a topic held back for ``wait`` seconds lets all
        it holds go.
        """
        out: list[tuple[Any, Any]] = []
        by_topic: dict[str, list[Any]] = {}
        for tp in owned:
            if tp.topic in self.topics:
                by_topic.setdefault(tp.topic, []).append(tp)
        assigned = {tp for partitions in by_topic.values() for tp in partitions}
        for tp in [tp for tp in self._held if tp not in assigned]:
            del self._held[tp]  # moved away
        for topic, partitions in by_topic.items():
            self._release_topic(topic, partitions, drained, now, out)
        return out

    def _release_topic(
        self,
        topic: str,
        partitions: list[Any],
        drained: Callable[[Any], bool],
        now: float,
        out: list[tuple[Any, Any]],
    ) -> None:
        queues = {tp: self._held[tp] for tp in partitions if self._held.get(tp)}
        if not queues:
            self._blocked_since.pop(topic, None)
            return
        behind = [tp for tp in partitions if tp not in queues and not drained(tp)]
        waited = now - self._blocked_since.get(topic, now) >= self.wait
        moved = False
        while queues:
            if behind and not waited:
                # Held back from now on (or still, if nothing could go): the wait runs
                # from the last record handed out.
                if moved or topic not in self._blocked_since:
                    self._blocked_since[topic] = now
                return
            tp = min(queues, key=lambda p: (queues[p][0].timestamp, p.partition))
            out.append((tp, queues[tp].popleft()))
            moved = True
            if not queues[tp]:
                del queues[tp]
                if not drained(tp):
                    behind.append(tp)
        self._blocked_since.pop(topic, None)
