"""The daemon's reader of the same hours days earlier, from the metrics topic by time.

A deployment whose reference has ``days`` waits for the service's metrics of those
windows (:class:`~coalmine.daemon.past_reads.PastRead`). On Kafka they are read from the
metrics topic by time (:func:`~coalmine.bus.kafka.read_window`: the partition its
``started`` came from, outside the consumer group, at most
``limits.max_history_events_per_service`` records per window), in the background, so
judging goes on for every other deployment meanwhile. A read that keeps failing hands the
deployment what it has: it is judged against less of its past rather than never.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from coalmine._exceptions import TransportError
from coalmine.bus.base import Partitioned
from coalmine.bus.kafka import read_window

if TYPE_CHECKING:
    from coalmine.bus.base import Record, Transport
    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings
    from coalmine.daemon.past_reads import PastRead
    from coalmine.daemon.publisher import Publisher
    from coalmine.daemon.router import Router

__all__ = ["PastLoader"]

log = logging.getLogger(__name__)

_ATTEMPTS = 4
"""Reads of one window before the deployment is handed what was read."""


class PastLoader:
    """Reads waiting deployments' past windows and hands them to the router."""

    def __init__(self, settings: KafkaSettings, topic: str, max_records: int) -> None:
        self._settings = settings
        self._topic = topic
        self._max_records = max_records
        self._reading: dict[str, asyncio.Task[list[Record]]] = {}

    @classmethod
    def on(cls, transport: Transport, settings: Settings) -> PastLoader | None:
        """A loader when ``transport`` reads Kafka; None otherwise (the router's history)."""
        if not isinstance(transport, Partitioned):
            return None
        limit = settings.limits.max_history_events_per_service
        return cls(settings.kafka, settings.topics.metrics, limit)

    def serve(self, router: Router, publisher: Publisher, now: float) -> None:
        """Start the reads the router now asks for; hand over those done, publishing."""
        for read in router.past_reads():
            if read.deployment_id not in self._reading:
                task = asyncio.create_task(self._read(read), name=f"past {read.deployment_id}")
                self._reading[read.deployment_id] = task
        for dep_id, task in list(self._reading.items()):
            if task.done():
                del self._reading[dep_id]
                publisher.put(router.load_past(dep_id, task.result(), now))

    @property
    def pending(self) -> int:
        """Reads still running."""
        return len(self._reading)

    async def close(self) -> None:
        """Stop the reads still running."""
        for task in self._reading.values():
            task.cancel()
        await asyncio.gather(*self._reading.values(), return_exceptions=True)
        self._reading.clear()

    async def _read(self, read: PastRead) -> list[Record]:
        key = read.service.encode()
        records: list[Record] = []
        for start, end in read.windows:
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    found = await read_window(
                        self._settings,
                        self._topic,
                        read.partition or 0,
                        start,
                        end,
                        keep=lambda record: record.key in (None, key),
                        max_records=self._max_records,
                    )
                except TransportError as exc:
                    if attempt == _ATTEMPTS:
                        log.error(
                            "deployment %s: its same hours could not be read (%s); judged"
                            " against what was read",
                            read.deployment_id,
                            exc,
                        )
                        break
                    await asyncio.sleep(0.5 * 2**attempt)
                    continue
                if found.truncated:
                    log.warning(
                        "deployment %s: the same hours of %s hold more than %d records;"
                        " judged against the first (limits.max_history_events_per_service)",
                        read.deployment_id,
                        read.service,
                        self._max_records,
                    )
                records += found.records
                break
        return records
