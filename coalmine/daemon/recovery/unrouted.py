"""Metric events that arrived before their deployment's ``started``, held for a while.

Kafka orders each partition, not the deployments and metrics topics together, so a metric
of a new canary can be read a little before the ``started`` event that opens its
deployment. Such events are held here (bounded by count and by event time) and handed to
the deployment when it starts, so the analysis sees the same events whether the two topics
were read in step (live) or one after the other (a restarted daemon rebuilding from the
log, which reads the deployments topic first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coalmine.contract import MetricEvent

__all__ = ["UnroutedEvent", "UnroutedMetrics"]

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class UnroutedEvent:
    """One held event and where it came from."""

    source: TopicPartition
    offset: int
    event: MetricEvent


class UnroutedMetrics:
    """Events with no open deployment, at most ``max_events`` of them and ``grace`` old.

    ``grace`` is in event time: events older than the newest held event minus ``grace``
    are let go (returned by :meth:`add`, so the caller can count them). Events are kept per
    source partition, in offset order, so the oldest offset still held per partition (what
    a restart must re-read) is the head of its queue.
    """

    def __init__(self, max_events: int = 20_000, grace: float = 300.0) -> None:
        self.max_events = max_events
        self.grace = grace
        self._held: dict[TopicPartition, deque[UnroutedEvent]] = {}
        self._count = 0
        self._newest = float("-inf")

    def __len__(self) -> int:
        return self._count

    def add(self, item: UnroutedEvent) -> list[UnroutedEvent]:
        """Hold ``item``; return the events let go to make room or grown too old."""
        queue = self._held.get(item.source)
        if queue is None:
            queue = self._held[item.source] = deque()
        queue.append(item)
        self._count += 1
        self._newest = max(self._newest, item.event.time)
        horizon = self._newest - self.grace
        released: list[UnroutedEvent] = []
        for queue in self._held.values():
            while queue and queue[0].event.time < horizon:
                released.append(queue.popleft())
        while self._count - len(released) > self.max_events:
            oldest = min((q for q in self._held.values() if q), key=lambda q: q[0].event.time)
            released.append(oldest.popleft())
        self._count -= len(released)
        return released

    def take(self, deployment_id: str, service: str, since: float) -> list[UnroutedEvent]:
        """Remove and return the held events of a deployment that starts now.

        An event belongs to it when it names the deployment, or names none and is of its
        service; events before ``since`` (its start) stay held. Returned in offset order
        per partition.
        """
        taken: list[UnroutedEvent] = []
        for source, queue in self._held.items():
            kept: deque[UnroutedEvent] = deque()
            before = len(taken)
            for item in queue:
                event = item.event
                mine = (
                    event.deployment_id == deployment_id
                    if event.deployment_id is not None
                    else event.service == service
                )
                (taken if mine and event.time >= since else kept).append(item)
            if len(taken) > before:
                self._held[source] = kept
        self._count -= len(taken)
        return taken

    def release(self, sources: set[TopicPartition]) -> None:
        """Let go of the events read from ``sources`` (partitions this daemon gave up)."""
        for source in sources:
            queue = self._held.pop(source, None)
            if queue is not None:
                self._count -= len(queue)

    def floors(self) -> dict[TopicPartition, int]:
        """The oldest held offset per partition: a restart must re-read from there."""
        return {source: queue[0].offset for source, queue in self._held.items() if queue}
