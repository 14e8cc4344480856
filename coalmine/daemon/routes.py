"""Routing proper: each decoded event to the open deployment it belongs to.

Deploy events open, step and end deployments (:class:`OpenDeployments`); a metric event
goes to the deployment of its ``deployment_id``, or of its service and version. An event
with no open deployment is held a while (:class:`~coalmine.daemon.recovery.UnroutedMetrics`:
its ``started`` may come late); samples no deployment can use are counted and explained
(:class:`~coalmine.daemon.dropped.DroppedSamples`). Pure: no clock, no socket.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from coalmine._exceptions import ContractError
from coalmine.contract import format_time
from coalmine.daemon.dropped import DroppedSamples
from coalmine.daemon.past import RecentEvents
from coalmine.daemon.past_reads import PastReads
from coalmine.daemon.recovery import UnroutedEvent, UnroutedMetrics

if TYPE_CHECKING:
    from coalmine.bus.base import Record
    from coalmine.contract import Cohort, DeployEvent, MetricEvent, Verdict
    from coalmine.daemon.deployment import Deployment
    from coalmine.daemon.open_deployments import OpenDeployments
    from coalmine.daemon.recovery import RecoveryFloors, TopicPartition

__all__ = ["Routes"]

log = logging.getLogger(__name__)

_Routed = tuple["Deployment", "MetricEvent", "Cohort"]


class Routes:
    """Feeds each deploy and metric event to the open deployment it belongs to."""

    def __init__(
        self, deployments: OpenDeployments, recovery: RecoveryFloors, deployments_topic: str
    ) -> None:
        self.open = deployments
        self.stream_time = -math.inf
        """The latest event time of the metric events read: the stream's time."""
        self._recovery = recovery
        self._telemetry = deployments.telemetry
        self._unrouted = UnroutedMetrics()
        self._dropped = DroppedSamples(self._telemetry, deployments_topic, deployments.ended_here)
        self._history: dict[str, RecentEvents] = {}
        """Per service, its recent metric events, while a profile has a ``reference``."""
        self._made: list[Verdict] = []
        """Judgements made while routing (a blue-green switch reached), in order."""
        self._history_for: object = None
        self._span = 0.0
        self.past_reads = PastReads()
        """Deployments waiting for the same hours days earlier."""
        self.past_from_history = True
        """Hand those their windows from the history at once (else the daemon reads them)."""

    def held_floors(self) -> dict[TopicPartition, int]:
        """Per partition, the oldest offset of the events held for a later ``started``."""
        return self._unrouted.floors()

    def release(self, partitions: set[TopicPartition]) -> list[str]:
        """Drop the deployments started, and the events held, from ``partitions``."""
        dropped = self._recovery.started_from(partitions)
        self.open.hand_over(dropped)
        self._unrouted.release(partitions)
        return dropped

    def deploy(self, event: DeployEvent, now: float, record: Record) -> list[Verdict]:
        """Open, step or end a deployment; ``record`` is the deploy record it came in.

        A deployment that opens takes the events held for it.

        Raises:
            ContractError: a ``started`` of an unknown profile, or one too many open.
        """
        if event.event != "started":
            self.open.follow(event, now)
            return []
        if not self.open.start(event, now, record):
            return []
        self._warn_if_past_its_end(self.open.deployments[event.deployment_id])
        self.past_reads.started(self.open.deployments[event.deployment_id], record.partition)
        verdicts = self._apply_past(event, now) + self._apply_held(event, now, record)
        return verdicts + self._past_from_history()

    def _warn_if_past_its_end(self, deployment: Deployment) -> None:
        """Say so when a deployment starts too far behind the stream to be judged on data."""
        close = deployment.end_time + deployment.profile.final_grace
        if self.stream_time > close:
            log.warning(
                "deployment %s starts at %s, but events up to %s were read already: past its"
                " max_duration and final_grace, it is judged to its end at once, on the data"
                " read so far; give `started` the time the canary began serving, close to"
                " the times its metrics carry",
                deployment.deployment_id,
                format_time(deployment.started),
                format_time(self.stream_time),
            )

    def metrics(
        self,
        events: list[MetricEvent],
        now: float,
        record: Record | None,
        *,
        remember: bool = True,
    ) -> list[Verdict]:
        """Feed events to their deployments; ``record`` is the one they came in (if any).

        Raises:
            ContractError: an event fits no cohort or kind of its deployment (the whole
                message is refused: no event of it is taken).
        """
        if len(events) == 1:
            latest = events[0].time
        else:
            latest = max((event.time for event in events), default=-math.inf)
        self.stream_time = max(self.stream_time, latest)
        span = self.history_span()
        routed = self._route_all(events, record)
        if remember and record is not None and span > 0:
            self._remember(events, record)
        verdicts, self._made = self._made, []
        observe = self.open.observe
        for deployment, event, cohort in routed:
            if deployment.status == "open":
                verdicts.extend(observe(deployment, event, cohort, now))
        if self.past_from_history:
            verdicts += self._past_from_history()
        return verdicts

    def _past_from_history(self) -> list[Verdict]:
        """Hand deployments that now wait for days windows those windows from the history.

        Called once each message is taken; a deployment is served once the stream has
        reached its change (read in order, its windows, all before the change, are in the
        history then; a replay reads deploy events first) and while its windows are whole
        (the history keeps ``max_duration`` beyond them).
        """
        verdicts: list[Verdict] = []
        if not self.past_from_history:
            return verdicts
        for read in self.past_reads.pending(self.open.deployments, self.stream_time):
            events = [
                e for start, end in read.windows for e in self.history_of(read.service, start, end)
            ]
            self.past_reads.loaded(read.deployment_id)
            verdicts += self.open.deployments[read.deployment_id].take_past(events)
        return verdicts

    def history_span(self) -> float:
        """How much of each service's recent metrics is kept: the longest profile reference."""
        profiles = self.open.profiles
        if profiles is not self._history_for:
            self._history_for = profiles
            # A days window must still be whole when it is handed over, after the fetch
            # that opened it: up to max_duration of event time later.
            self._span = max(
                (
                    p.reference.span + (p.max_duration if p.reference.days else 0.0)
                    for p in profiles.values()
                    if p.reference is not None
                ),
                default=0.0,
            )
        return self._span

    def history_of(self, service: str, start: float, end: float) -> list[MetricEvent]:
        """The events of ``service`` kept with ``start <= time < end``, as read."""
        recent = self._history.get(service)
        return [] if recent is None else [event for event, _, _ in recent.between(start, end)]

    def _remember(self, events: list[MetricEvent], record: Record) -> None:
        """Keep the events in their service's history, for deployments that start later."""
        source = (record.topic, record.partition)
        for event in events:
            recent = self._history.get(event.service)
            if recent is None:
                limit = self.open.max_history_events
                recent = self._history[event.service] = RecentEvents(self._span, limit)
            recent.span = self._span
            recent.add(event, source, record.offset)

    def _apply_past(self, event: DeployEvent, now: float) -> list[Verdict]:
        """Hand a deployment judged against the past its service's reference window.

        The events come from the history in the order they were read; recovery learns
        where the oldest was read, so a restart re-reads the window.
        """
        deployment = self.open.deployments[event.deployment_id]
        recent = self._history.get(event.service)
        if recent is not None and deployment.strategy == "blue_green" and deployment.past is None:
            for item, source, offset in recent.between(-math.inf, deployment.started):
                if deployment.preview is not None and deployment.preview.keeps(item) and source:
                    self._recovery.held_from(deployment.deployment_id, source, offset)
        past = deployment.past
        if past is None or recent is None:
            return []
        verdicts: list[Verdict] = []
        for item, source, offset in recent.between(past.start, past.change):
            if source is not None:
                self._recovery.held_from(event.deployment_id, source, offset)
            cohort = deployment.cohort_of(item)
            if cohort is not None and deployment.profile.metric(item.metric) is not None:
                verdicts.extend(self.open.observe(deployment, item, cohort, now))
        return verdicts

    def _route_all(self, events: list[MetricEvent], record: Record | None) -> list[_Routed]:
        """Resolve every event before applying any: a message is taken or rejected whole."""
        routed: list[_Routed] = []
        if len(events) == 1:
            target = self._route(events[0], record)
            if target is not None:
                routed.append(target)
            return routed
        for index, event in enumerate(events):
            try:
                target = self._route(event, record)
            except ContractError as exc:
                raise ContractError(exc.reason, f"item {index}: {exc.message}") from None
            if target is not None:
                routed.append(target)
        return routed

    def _route(self, event: MetricEvent, record: Record | None) -> _Routed | None:
        deployment = self.open.deployment_for(event)
        if deployment is None:
            self._hold(event, record)
            return None
        preview = deployment.preview
        if (
            preview is not None
            and preview.switch_at is not None
            and event.time >= preview.switch_at
        ):
            self._made.extend(deployment.advance(event.time))
        if deployment.past is None and event.time < deployment.started:
            if not (self._span > 0 and preview is not None and preview.keeps(event)):
                self._dropped.drop("before_started", event, deployment)
            return None
        cohort = deployment.cohort_of(event)
        if cohort is None and deployment.past is not None:
            self._dropped.drop("outside_reference", event, deployment)
            return None
        if cohort is None and event.version is None:
            raise ContractError(
                "missing_cohort",
                f"either 'cohort' or 'version' is required: {deployment.deployment_id}"
                " compares two cohorts running side by side",
            )
        if cohort is None:
            raise ContractError(
                "unknown_cohort",
                f"version {event.version!r} is neither baseline {deployment.baseline_version!r}"
                f" nor canary {deployment.canary_version!r} of {deployment.deployment_id}",
            )
        spec = deployment.profile.metric(event.metric)
        if spec is None:
            self._dropped.drop("metric_not_in_profile", event, deployment)
            return None
        if (spec.kind == "ratio") != event.is_ratio:
            wanted = "'good' and 'total'" if spec.kind == "ratio" else "'value' or 'values'"
            raise ContractError(
                "kind_mismatch", f"{event.metric} is a {spec.kind} metric: it needs {wanted}"
            )
        return deployment, event, cohort

    def _hold(self, event: MetricEvent, record: Record | None) -> None:
        """Keep an event with no open deployment a while: its ``started`` may be late."""
        if record is None or (
            event.deployment_id is not None and event.deployment_id in self.open.finished
        ):
            self._dropped.drop("no_open_deployment", event, None)
            return
        source = (record.topic, record.partition)
        for item in self._unrouted.add(UnroutedEvent(source, record.offset, event)):
            held = item.event
            untagged = held.cohort is None and held.version is None
            reason = "history_only" if untagged and self._span > 0 else "no_open_deployment"
            self._dropped.drop(reason, held, None)

    def _apply_held(self, event: DeployEvent, now: float, record: Record) -> list[Verdict]:
        """Hand a starting deployment the events that arrived before its ``started``."""
        held = self._unrouted.take(event.deployment_id, event.service, event.time)
        verdicts: list[Verdict] = []
        for item in held:
            self._recovery.held_from(event.deployment_id, item.source, item.offset)
            try:
                verdicts.extend(self.metrics([item.event], now, record, remember=False))
            except ContractError:
                self._telemetry.dropped("held_event_invalid", item.event.size)
        return verdicts
