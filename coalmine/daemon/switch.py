"""A blue-green preview: green beside blue until the switch, then green against blue's past.

While previewing, green is compared with blue as a concurrent cohort (a canary at weight
0) and is never promoted. Blue's events of the reference window are kept as they come, so
that when the ``switched`` step takes effect green is judged afresh against blue's last
``span`` before the switch. Pure: no clock, no socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coalmine.daemon.past import PastBaseline, RecentEvents

if TYPE_CHECKING:
    from coalmine.contract import DeployEvent, MetricEvent

__all__ = ["Preview"]


class Preview:
    """Blue's recent events and the switch, once announced, of one previewing deployment."""

    def __init__(
        self, span: float, max_events: int, started: float, baseline_version: str | None
    ) -> None:
        self.recent = RecentEvents(span, max_events)
        self.switch_at: float | None = None
        """Event time of the earliest ``switched`` step read, until it is reached."""
        self.weight: float | None = None
        """The traffic weight the ``switched`` step announced."""
        self._started = started
        self._baseline_version = baseline_version

    def announce(self, event: DeployEvent) -> None:
        """A ``switched`` step: the earliest one read takes effect at its event time."""
        if self.switch_at is None or event.time < self.switch_at:
            self.switch_at = event.time
            self.weight = event.traffic_weight

    def reached(self, time: float) -> bool:
        """Has event time ``time`` reached an announced switch?"""
        return self.switch_at is not None and time >= self.switch_at

    def keeps(self, event: MetricEvent) -> bool:
        """Keep a blue event from before the preview began, for the switch's reference."""
        if event.time < self._started - self.recent.span:
            return False
        if event.cohort != "canary" and event.version in (None, self._baseline_version):
            self.recent.add(event, None, 0)
            return True
        return False

    def reference(
        self, at: float, versions: tuple[str | None, str | None], days: tuple[int, ...]
    ) -> tuple[PastBaseline, list[MetricEvent]]:
        """Blue's reference for a switch at ``at`` (and ``days`` back), blue's events in it."""
        past = PastBaseline(at, self.recent.span, *versions, days)
        return past, [event for event, _, _ in self.recent.between(past.start, past.change)]
