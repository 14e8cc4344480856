"""Where each open deployment's events are in the log: what a restart must re-read.

The daemon commits no further than :meth:`RecoveryFloors.floors`: per partition, the
``started`` record of every open deployment and the input records since it started.
After partitions move here, it also says which deployments are being rebuilt and which
invalid records a previous owner already dead-lettered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from coalmine.bus.base import Record
    from coalmine.config.models import TopicsSettings

__all__ = ["RecoveryFloors", "TopicPartition"]

TopicPartition = tuple[str, int]
"""``(topic, partition)``."""


@dataclass(slots=True)
class _Origin:
    """Where an open deployment's events are in the log: what a restart must re-read."""

    deploy: TopicPartition
    offset: int
    floors: dict[TopicPartition, int]
    """Per input partition, the first offset the deployment may have used."""


class RecoveryFloors:
    """Per open deployment, its ``started`` record and the first input record it may use."""

    def __init__(self, topics: TopicsSettings) -> None:
        self._deployments = topics.deployments
        self._metrics = topics.metrics
        self._origins: dict[str, _Origin] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._batch: dict[TopicPartition, int] = {}
        """Per input partition of the batch in hand, its first offset there."""
        self._handled_before: dict[TopicPartition, int] = {}
        """Per partition, the position a previous owner handled it to: an invalid record
        below it was dead-lettered then, and is re-read only to rebuild deployments."""
        self._rebuilding: dict[TopicPartition, tuple[int, int]] = {}
        """Per deploy partition being re-read: its end offset and the wall time (ms) when
        it was assigned; a deployment started before either is being rebuilt."""

    @property
    def positions(self) -> dict[TopicPartition, int]:
        """Per partition, the offset past the last record handled."""
        return dict(self._positions)

    def floors(self, held: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Per partition, the oldest offset a restart must re-read to rebuild what is open.

        ``held`` is the oldest offset of the metrics held for a later ``started``.
        """
        floors = dict(held)
        for origin in self._origins.values():
            _lower(floors, origin.deploy, origin.offset)
            for source, offset in origin.floors.items():
                _lower(floors, source, offset)
        return floors

    def take_over(
        self,
        handled: Mapping[TopicPartition, int],
        deploy_ends: Mapping[TopicPartition, int],
        assigned_ms: int,
    ) -> None:
        """Partitions were assigned here at ``assigned_ms`` (wall time).

        ``handled`` is, per partition, the position a previous owner handled it to;
        ``deploy_ends`` the end offsets of the assigned partitions at assignment.
        """
        self._handled_before.update(handled)
        self._rebuilding = {
            tp: (end, assigned_ms) for tp, end in deploy_ends.items() if tp[0] == self._deployments
        }

    def handled_before(self, record: Record) -> bool:
        """Whether a previous owner of the record's partition handled it already."""
        return record.offset < self._handled_before.get((record.topic, record.partition), 0)

    def batch_begins(self, spans: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """Note the first offset of each input partition in a batch (``spans``: first, last).

        A deployment started in this batch may use any input record of the batch (deploy
        records are handled first), so its floor on a partition is the batch's first
        offset there, or the position before the batch. A partition seen for the first
        time gives every open deployment a floor at its first offset.
        """
        deploys = self._deployments
        floors = {key: first for key, (first, _) in spans.items() if key[0] != deploys}
        self._batch = floors
        new = [source for source in floors if source not in self._positions]
        if new:
            for origin in self._origins.values():
                for source in new:
                    if self._feeds(source, origin):
                        origin.floors.setdefault(source, floors[source])

    def batch_ends(self, spans: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """Move the positions past a batch's records (``spans``: first, last offset)."""
        positions = self._positions
        for key, (_, last) in spans.items():
            if last >= positions.get(key, 0):
                positions[key] = last + 1

    def started(self, deployment_id: str, record: Record) -> bool:
        """Note where a starting deployment's events begin; True if it is being rebuilt.

        It is rebuilt when its ``started`` record is before the end offset of its
        partition at assignment, or was appended before the assignment: some brokers
        (tansu) answer the end offset short, so the record's timestamp is asked too.
        """
        origin = _Origin((record.topic, record.partition), record.offset, {})
        for source in {*self._positions, *self._batch}:
            if self._feeds(source, origin):
                floor = self._batch.get(source, self._positions.get(source))
                if floor is not None:
                    origin.floors[source] = floor
        self._origins[deployment_id] = origin
        end, assigned_ms = self._rebuilding.get(origin.deploy, (-1, -1))
        stamp = record.timestamp_ms
        return record.offset < end or (stamp is not None and 0 <= stamp <= assigned_ms)

    def held_from(self, deployment_id: str, source: TopicPartition, offset: int) -> None:
        """A starting deployment takes a held event read at ``offset`` of ``source``."""
        origin = self._origins.get(deployment_id)
        if origin is not None:
            _lower(origin.floors, source, offset)

    def forget(self, deployment_id: str) -> None:
        """The deployment is no longer open here."""
        self._origins.pop(deployment_id, None)

    def started_from(self, partitions: Iterable[TopicPartition]) -> list[str]:
        """The open deployments whose ``started`` record is on one of ``partitions``."""
        gone = set(partitions)
        return [dep_id for dep_id, origin in self._origins.items() if origin.deploy in gone]

    def release(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget the positions and floors on ``partitions`` (given up to another daemon)."""
        gone = set(partitions)
        for source in gone:
            self._positions.pop(source, None)
            self._handled_before.pop(source, None)
        for origin in self._origins.values():
            for source in gone:
                origin.floors.pop(source, None)

    def _feeds(self, source: TopicPartition, origin: _Origin) -> bool:
        """Can input records of ``source`` be routed to the deployment?

        The metrics topic is co-partitioned with the deployments topic; other input
        topics (OTLP, prometheus-adapter) are keyed by their producers, so any partition.
        """
        topic, partition = source
        if topic == self._deployments:
            return False
        return topic != self._metrics or partition == origin.deploy[1]


def _lower(floors: dict[TopicPartition, int], source: TopicPartition, offset: int) -> None:
    current = floors.get(source)
    if current is None or offset < current:
        floors[source] = offset
