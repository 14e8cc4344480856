"""A baseline from the service's own past, for changes with no baseline running beside them.

A blue-green switch, a migration phase or a config push changes the whole service at once.
Such a deployment compares the service after the change (the canary cohort) with the same
service in a reference window before it (the baseline cohort), told apart by event time:
metric events need no cohort tag. Pure: no clock, no socket.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from coalmine.config.models import DAY
from coalmine.contract import format_time

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.analyzers.result import DetailValue
    from coalmine.contract import Cohort, MetricEvent

__all__ = ["HISTORY_MARGIN", "PastBaseline", "RecentEvents", "SameHours"]

HISTORY_MARGIN = 300.0
"""Event time kept beyond the span: metrics read before the ``started`` they follow (up to
this much later in event time) do not push the start of its window out of the history."""


@dataclass(frozen=True, slots=True)
class PastBaseline:
    """Where each cohort comes from: the window ``[change - before, change)`` and after.

    ``baseline_version`` / ``canary_version``, when announced, are the versions the two
    sides carry: an event naming another version counts for neither. ``days``: the same
    hours that many days earlier count for the baseline too (see :class:`SameHours`).
    """

    change: float
    before: float
    baseline_version: str | None = None
    canary_version: str | None = None
    days: tuple[int, ...] = ()

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

    def day_windows(self, length: float) -> list[tuple[int, float, float]]:
        """Per day back ``d``: the event-time window of the ``length`` after the change."""
        return [(d, self.change - d * DAY, self.change - d * DAY + length) for d in self.days]

    def describe(self, time: float) -> dict[str, DetailValue]:
        """What a verdict at event time ``time`` compared with, for its ``checks``."""
        out: dict[str, DetailValue] = {"baseline": "past"}
        if self.before > 0:
            out["window_start"] = format_time(self.start)
            out["window_end"] = format_time(self.change)
        if self.days:
            out["days"] = ",".join(str(d) for d in self.days)
            out["same_hours_start"] = format_time(self.change - self.days[0] * DAY)
            out["same_hours_end"] = format_time(max(time, self.change) - self.days[0] * DAY)
        return out


class SameHours:
    """The same hours some days earlier, let into the baseline as the live window grows.

    Each past event is moved forward by its days (yesterday's 10:05 counts as 10:05 today)
    and joins the baseline once the deployment judges past that time, so at every look the
    baseline covers the same hours of the day as the canary. An event counts unless it
    belongs to the change itself (the canary cohort or version).
    """

    def __init__(self, past: PastBaseline, length: float) -> None:
        self.windows = past.day_windows(length)
        self.loaded = False
        self._canary_version = past.canary_version
        self._waiting: list[tuple[float, int, MetricEvent]] = []
        self._count = 0

    def load(self, events: Iterable[MetricEvent]) -> int:
        """Take the events read from the windows (others are ignored); how many count."""
        taken = 0
        for event in events:
            if event.cohort == "canary" or (
                event.version is not None and event.version == self._canary_version
            ):
                continue
            for days, start, end in self.windows:
                if start <= event.time < end:
                    moved = replace(event, time=event.time + days * DAY)
                    heapq.heappush(self._waiting, (moved.time, self._count, moved))
                    self._count += 1
                    taken += 1
        self.loaded = True
        return taken

    def due(self, until: float) -> list[MetricEvent]:
        """The moved events with times up to ``until``, oldest first, handed out once."""
        waiting, out = self._waiting, []
        while waiting and waiting[0][0] <= until:
            out.append(heapq.heappop(waiting)[2])
        return out


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
