"""A baseline from the service's own past, for changes with no baseline running beside them.

A blue-green switch, a migration phase or a config push changes the whole service at once.
Such a deployment compares the service after the change (the canary cohort) with the same
service in a reference window before it (the baseline cohort), told apart by event time:
metric events need no cohort tag. Pure: no clock, no socket.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coalmine.contract import format_time

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.analyzers.result import DetailValue
    from coalmine.contract import Cohort, MetricEvent

__all__ = ["HISTORY_MARGIN", "PastBaseline", "RecentEvents"]

HISTORY_MARGIN = 300.0
"""Event time kept beyond the span: metrics read before the ``started`` they follow (up to
this much later in event time) do not push the start of its window out of the history."""


@dataclass(frozen=True, slots=True)
class PastBaseline:
    """Where each cohort comes from: the window ``[change - before, change)`` and after.

    ``baseline_version`` / ``canary_version``, when announced, are the versions the two
    sides carry: an event naming another version counts for neither.
    """

    change: float
    before: float
    baseline_version: str | None = None
    canary_version: str | None = None

    @property
    def start(self) -> float:
        """Event time the reference window begins."""
        return self.change - self.before

    def cohort_of(self, event: MetricEvent) -> Cohort | None:
        """The cohort an event counts for, or None when it is outside both sides."""
        if event.cohort is not None:
            return event.cohort
        if event.time >= self.change:
            return "canary" if event.version in (None, self.canary_version) else None
        if event.time >= self.start and event.version in (None, self.baseline_version):
            return "baseline"
        return None

    def describe(self) -> dict[str, DetailValue]:
        """What a verdict compared with, for its ``checks``."""
        return {
            "baseline": "past",
            "window_start": format_time(self.start),
            "window_end": format_time(self.change),
        }


class RecentEvents:
    """The newest metric events of one source: ``span`` (plus ``margin``) of event time.

    Holds at most ``max_events`` (the oldest go first). Each event keeps the partition and
    offset it was read at, so a deployment that takes events from here can tell recovery
    how far back a restart must re-read.
    """

    def __init__(self, span: float, max_events: int, margin: float = HISTORY_MARGIN) -> None:
        self.span = span
        self.max_events = max_events
        self.margin = margin
        self._events: deque[tuple[MetricEvent, tuple[str, int] | None, int]] = deque()
        self._newest = float("-inf")

    def __len__(self) -> int:
        return len(self._events)

    def add(self, event: MetricEvent, source: tuple[str, int] | None, offset: int) -> None:
        """Keep ``event`` (read at ``offset`` of ``source``); let the too-old ones go."""
        events = self._events
        events.append((event, source, offset))
        self._newest = max(self._newest, event.time)
        horizon = self._newest - self.span - self.margin
        while events and (events[0][0].time < horizon or len(events) > self.max_events):
            events.popleft()

    def between(
        self, start: float, end: float
    ) -> Iterable[tuple[MetricEvent, tuple[str, int] | None, int]]:
        """The events kept with ``start <= time < end``, in the order they were read."""
        return [item for item in self._events if start <= item[0].time < end]
