"""Valid samples not analysed: counted per reason, and explained once in the log.

A producer sending samples no deployment can use (timed before its ``started``, of a
metric not in its profile, of a service with no open deployment) is told why once per
reason and deployment (or service), not once per message.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coalmine.contract import format_time

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.contract import MetricEvent
    from coalmine.daemon.deployment import Deployment
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["DroppedSamples"]

log = logging.getLogger(__name__)

_MAX_EXPLAINED = 10_000
"""(reason, deployment or service) pairs remembered as explained; then they start over."""


class DroppedSamples:
    """Counts samples not analysed; says why once per reason and deployment (or service)."""

    def __init__(
        self,
        telemetry: Telemetry,
        deployments_topic: str,
        ended_here: Callable[[MetricEvent], bool],
    ) -> None:
        self._telemetry = telemetry
        self._deployments_topic = deployments_topic
        self._ended_here = ended_here
        """Whether an event is of a deployment (or service) that ended here: its metrics
        still flowing after the end are expected, not a mistake to explain."""
        self._explained: set[tuple[str, str]] = set()
        """(reason, deployment or service) whose dropped samples were explained in the log."""

    def drop(self, reason: str, event: MetricEvent, deployment: Deployment | None) -> None:
        """Count the samples of ``event``; explain ``reason`` if not done yet."""
        self._telemetry.dropped(reason, event.size)
        subject = deployment.deployment_id if deployment is not None else event.service
        if (reason, subject) in self._explained:
            return
        if reason == "no_open_deployment" and self._ended_here(event):
            return
        if len(self._explained) >= _MAX_EXPLAINED:
            self._explained.clear()
        self._explained.add((reason, subject))
        if deployment is not None:
            self._explain_for_deployment(reason, event, deployment)
        elif reason == "no_open_deployment":
            log.warning(
                "service %s: samples for no open deployment are not analysed (counted as"
                " no_open_deployment): no started event for it was read (sent to %s, with"
                " this service?), or its deployment already ended; with several daemons,"
                " deploy events and metrics must be keyed by service with the same"
                " partitioner (docs/inputs.md, Keys and partitioners)",
                subject,
                self._deployments_topic,
            )

    @staticmethod
    def _explain_for_deployment(reason: str, event: MetricEvent, deployment: Deployment) -> None:
        if reason == "before_started":
            log.warning(
                "deployment %s: samples timed before its started event (%s < %s) are not"
                " analysed (counted as before_started); the producer's event times or the"
                " started event's time are off: give `started` the time the canary began"
                " serving, and metrics the time they were measured",
                deployment.deployment_id,
                format_time(event.time),
                format_time(deployment.started),
            )
        elif reason == "metric_not_in_profile":
            log.warning(
                "deployment %s: metric %r is not in its profile %r and is not analysed"
                " (counted as metric_not_in_profile): add it to the profile's metrics, or"
                " stop sending it",
                deployment.deployment_id,
                event.metric,
                deployment.profile_name,
            )
