"""The open deployments: opened and ended by deploy events, closed when their analysis is over.

A deployment opens at its ``started`` event (with the profile of that name), follows its
``step`` events, and ends at ``completed``/``aborted``. It is closed by a final verdict,
once the stream's event time passes its end (with grace), or when silent for
``max_duration`` of wall time; its id is kept among the finished ones, so a second
``started`` is ignored. A verdict already published (:class:`VerdictLedger`) is not
published again. Pure: no clock, no socket.
"""

from __future__ import annotations

import heapq
import logging
from typing import TYPE_CHECKING

from coalmine._exceptions import ContractError
from coalmine.daemon.deployment import Deployment
from coalmine.daemon.finished import FinishedDeployments
from coalmine.daemon.observations import AnalysisLimits
from coalmine.daemon.recovery import VerdictLedger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from coalmine.bus.base import Record
    from coalmine.config.models import LimitSettings, Profile
    from coalmine.contract import Cohort, DeployEvent, MetricEvent, Verdict
    from coalmine.daemon.recovery import RecoveryFloors
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["OpenDeployments"]

log = logging.getLogger(__name__)

_FINISHED_MEMORY = 100_000
"""How many finished deployment ids are remembered to ignore a second ``started``.

Kept compactly (:class:`FinishedDeployments`, ~2 MB at the cap): at least the newest
this many, and up to 4,095 more."""
_MAX_ENDED_SERVICES = 10_000
"""Services with an ended deployment remembered; then they start over."""


class OpenDeployments:
    """The deployments under analysis here, by id and by service."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        limits: LimitSettings,
        telemetry: Telemetry,
        recovery: RecoveryFloors,
    ) -> None:
        self.profiles = dict(profiles)
        self.deployments: dict[str, Deployment] = {}
        self.finished = FinishedDeployments(_FINISHED_MEMORY)
        self.on_finished: Callable[[str, str], None] | None = None
        self.on_remade: Callable[[Verdict], None] | None = None
        """Called with each verdict made again after a restart (not published twice)."""
        """Called with a finished deployment's id and outcome (its decision, or why it
        ended), for a caller that wants the outcome: :attr:`finished` keeps only the id."""
        self.telemetry = telemetry
        self._recovery = recovery
        self._ledger = VerdictLedger()
        self._max_open = limits.max_open_deployments
        self._analysis_limits = AnalysisLimits(
            limits.max_samples_per_cohort,
            limits.max_instances_per_cohort,
            limits.max_history_events_per_service,
        )
        self.max_history_events = limits.max_history_events_per_service
        self._by_service: dict[str, list[str]] = {}
        self._last_seen: dict[str, float] = {}
        self._closing: list[tuple[float, str]] = []
        """Heap of (stream time at which to close, deployment id), see :meth:`close_due`."""
        self._ended_services: set[str] = set()
        """Services a deployment of which ended here (their later metrics are expected)."""

    def recall(self, verdicts: Iterable[bytes]) -> int:
        """Learn the verdicts already published (read from the verdict topic)."""
        return self._ledger.learn(verdicts)

    def ended_here(self, event: MetricEvent) -> bool:
        """Whether ``event`` is of a deployment, or service, whose deployment ended here."""
        return event.service in self._ended_services or event.deployment_id in self.finished

    def deployment_for(self, event: MetricEvent) -> Deployment | None:
        """The deployment an event belongs to.

        By ``deployment_id`` when given; else, of the open deployments of its service (those
        whose versions match, when the event names a version and no cohort), the latest
        one started by the event's time, or the latest one at all.
        """
        if event.deployment_id is not None:
            return self.deployments.get(event.deployment_id)
        candidates = self._by_service.get(event.service)
        if not candidates:
            return None
        latest: Deployment | None = None
        for dep_id in reversed(candidates):
            deployment = self.deployments[dep_id]
            if event.cohort is None and event.version not in (
                deployment.canary_version,
                deployment.baseline_version,
            ):
                continue
            if deployment.started <= event.time:
                return deployment
            latest = latest or deployment
        if latest is None and event.cohort is None:
            return self.deployments[candidates[-1]]
        return latest

    def start(self, event: DeployEvent, now: float, record: Record) -> bool:
        """Open a deployment at its ``started`` event, read from ``record``.

        Returns False for a deployment open or finished already (the event is ignored).

        Raises:
            ContractError: an unknown profile, or too many deployments open.
        """
        dep_id = event.deployment_id
        if dep_id in self.deployments or dep_id in self.finished:
            self.telemetry.ignored("duplicate_started")
            return False
        profile = self.profiles.get(event.profile)
        if profile is None:
            raise ContractError("unknown_profile", f"no profile named {event.profile!r}")
        if event.strategy == "migration" and profile.reference is None:
            raise ContractError(
                "no_reference",
                f"a migration is judged against the service's past: profile {event.profile!r}"
                f" needs a reference ([profiles.{event.profile}.reference] before = ...)",
            )
        if len(self.deployments) >= self._max_open:
            raise ContractError(
                "too_many_deployments",
                f"{len(self.deployments)} deployments open (limits.max_open_deployments)",
            )
        deployment = Deployment(
            event, profile, profile_name=event.profile, limits=self._analysis_limits
        )
        self.deployments[dep_id] = deployment
        self._close_at(deployment, deployment.end_time)
        self._by_service.setdefault(event.service, []).append(dep_id)
        self._last_seen[dep_id] = now
        self.telemetry.active_deployments.set(len(self.deployments))
        if self._recovery.started(dep_id, record):
            self.telemetry.recovered_deployments.inc()
            log.info("deployment %s: rebuilding from the log", dep_id)
        log.info(
            "deployment %s of %s started (profile %s, %s -> %s)",
            dep_id,
            event.service,
            event.profile,
            event.baseline_version,
            event.canary_version,
        )
        return True

    def follow(self, event: DeployEvent, now: float) -> None:
        """Take a ``step``, ``completed`` or ``aborted`` event of an open deployment."""
        deployment = self.deployments.get(event.deployment_id)
        if deployment is None:
            self.telemetry.ignored("deploy_event_for_unknown_deployment")
            return
        self._last_seen[event.deployment_id] = now
        if event.event == "step":
            deployment.step(event)
        else:
            deployment.end(event)
            self._forget_if_ended(deployment)
            if deployment.is_open and deployment.ends_at is not None:
                self._close_at(deployment, deployment.ends_at)

    def observe(
        self, deployment: Deployment, event: MetricEvent, cohort: Cohort, now: float
    ) -> list[Verdict]:
        """Feed an event to its open deployment; the verdicts it made."""
        self._last_seen[deployment.deployment_id] = now
        made = deployment.observe(event, cohort)
        if deployment.limits_hit:
            self._limits_hit(deployment)
        if deployment.status == "ended":
            self._forget_if_ended(deployment)
        final_time = self._ledger.final_time(deployment.deployment_id)
        if final_time is not None and deployment.watermark > final_time:
            # Rebuilt after its final verdict was published: it has said its last word.
            self._forget(deployment, "final")
        return made

    def close_due(self, stream_time: float) -> list[Verdict]:
        """Final verdicts of open deployments whose end the stream has passed, with grace.

        A deployment whose own events stop (the canary torn down at ``max_duration``, its
        exporter gone) is judged up to its end and closed once any event read is
        ``final_grace`` past it: on event time, so a replay closes it alike.
        """
        verdicts: list[Verdict] = []
        closing = self._closing
        while closing and closing[0][0] <= stream_time:
            _, dep_id = heapq.heappop(closing)
            deployment = self.deployments.get(dep_id)
            if deployment is None or not deployment.is_open:
                continue
            verdicts.extend(deployment.advance(stream_time))
            self._forget_if_ended(deployment)
            if deployment.is_open and deployment.end_time > stream_time:
                self._close_at(deployment, deployment.end_time)  # a blue-green switch moved it
        return self.settle(verdicts) if verdicts else verdicts

    def expire_silent(self, now: float) -> list[Verdict]:
        """Close, as ``inconclusive``, deployments with no events for ``max_duration``."""
        verdicts: list[Verdict] = []
        for dep_id, seen in list(self._last_seen.items()):
            deployment = self.deployments[dep_id]
            if now - seen >= deployment.profile.max_duration:
                verdict = deployment.expire()
                if verdict is None:
                    self._forget(deployment, deployment.end_reason or "ended")
                    continue
                verdicts.append(verdict)
        return self.settle(verdicts)

    def settle(self, verdicts: list[Verdict]) -> list[Verdict]:
        """Close deployments that reached a final verdict; return the verdicts to publish.

        A verdict the ledger shows already published (a rebuilt deployment re-making its
        judgements) is not published again.
        """
        published: list[Verdict] = []
        for verdict in verdicts:
            if self._ledger.already_published(verdict):
                self.telemetry.verdicts_suppressed.inc()
                if self.on_remade is not None:
                    self.on_remade(verdict)
            else:
                published.append(verdict)
                self.telemetry.verdicts.labels(verdict.decision).inc()
                if verdict.final:
                    log.info("verdict %s: %s", verdict.verdict_id, verdict.summary)
            if verdict.final:
                deployment = self.deployments.get(verdict.deployment_id)
                if deployment is not None:
                    self._forget(deployment, verdict.decision)
        return published

    def hand_over(self, deployment_ids: Iterable[str]) -> None:
        """Drop open deployments without finishing them: another daemon rebuilds them."""
        for dep_id in deployment_ids:
            self._forget(self.deployments[dep_id], None)

    def _close_at(self, deployment: Deployment, end: float) -> None:
        """Close ``deployment`` once stream time passes ``end`` plus its grace."""
        heapq.heappush(
            self._closing, (end + deployment.profile.final_grace, deployment.deployment_id)
        )

    def _limits_hit(self, deployment: Deployment) -> None:
        for hit in deployment.limits_hit:
            limit, _, what = hit.partition(": ")
            self.telemetry.limit_exceeded.labels(limit).inc()
            log.warning(
                "deployment %s: %s reached for %s (see docs/operations.md)",
                deployment.deployment_id,
                limit,
                what,
            )
        deployment.limits_hit.clear()

    def _forget_if_ended(self, deployment: Deployment) -> None:
        if deployment.status == "ended":
            reason = deployment.end_reason or "ended"
            self.telemetry.ended(reason)
            self._forget(deployment, reason)

    def _forget(self, deployment: Deployment, outcome: str | None) -> None:
        """Drop a deployment; ``outcome`` None means it was handed over, not finished."""
        dep_id = deployment.deployment_id
        self.deployments.pop(dep_id, None)
        self._last_seen.pop(dep_id, None)
        self._recovery.forget(dep_id)
        siblings = self._by_service.get(deployment.service, [])
        if dep_id in siblings:
            siblings.remove(dep_id)
        if not siblings:
            self._by_service.pop(deployment.service, None)
        if outcome is not None:
            self.finished.add(dep_id)
            if len(self._ended_services) >= _MAX_ENDED_SERVICES:
                self._ended_services.clear()
            self._ended_services.add(deployment.service)
            if self.on_finished is not None:
                self.on_finished(dep_id, outcome)
        self.telemetry.active_deployments.set(len(self.deployments))
