"""The same hours days earlier that deployments wait for, and where to read them.

A deployment whose reference has ``days`` judges nothing until the service's metrics of
those windows are handed to it (:meth:`~coalmine.daemon.router.Router.load_past`). The
router cannot read them itself (it touches no socket): it says which windows each such
deployment needs, once, and on which partition its service's records are (the partition of
its ``started``: deploy events and metrics are co-partitioned by service). The daemon
reads them from the metrics topic by time on Kafka; elsewhere, and in replay, they come
from the per-service history. Pure: no clock, no socket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from coalmine.daemon.deployment import Deployment

__all__ = ["PastRead", "PastReads"]


@dataclass(frozen=True, slots=True)
class PastRead:
    """The windows of one service's past that one deployment waits for.

    Attributes:
        deployment_id: the deployment waiting.
        service: whose metrics (the records' key).
        partition: the partition its ``started`` came from, None when not read from one.
        windows: event-time windows ``(start, end)``, oldest first.
    """

    deployment_id: str
    service: str
    partition: int | None
    windows: tuple[tuple[float, float], ...]


class PastReads:
    """Deployments with a ``days`` reference, until their past is handed to them."""

    def __init__(self) -> None:
        self._watched: dict[str, int | None] = {}
        self._asked: set[str] = set()

    def started(self, deployment: Deployment, partition: int | None) -> None:
        """Watch a deployment whose profile reference has ``days``."""
        reference = deployment.profile.reference
        if reference is not None and reference.days:
            self._watched[deployment.deployment_id] = partition

    def pending(
        self, open_deployments: Mapping[str, Deployment], read_up_to: float = math.inf
    ) -> list[PastRead]:
        """The reads newly needed (each asked for once); closed deployments are let go.

        ``read_up_to``: only deployments whose change is at or before this event time (the
        history holds their windows once the stream has reached the change).
        """
        reads: list[PastRead] = []
        if not self._watched:  # asked after every message: nothing to do for most daemons
            return reads
        for dep_id, partition in list(self._watched.items()):
            deployment = open_deployments.get(dep_id)
            if deployment is None or not deployment.is_open:
                del self._watched[dep_id]
                self._asked.discard(dep_id)
                continue
            same_hours, past = deployment.same_hours, deployment.past
            if same_hours is None or same_hours.loaded or dep_id in self._asked:
                continue
            if past is None or past.change > read_up_to:
                continue
            self._asked.add(dep_id)
            windows = tuple((start, end) for _, start, end in same_hours.windows)
            reads.append(PastRead(dep_id, deployment.service, partition, windows))
        return reads

    def loaded(self, deployment_id: str) -> None:
        """The deployment has its past: a later switch may ask again."""
        self._asked.discard(deployment_id)
