"""Every deployment announced and its latest verdict: what the HTTP API answers from.

The router only knows the deployments of the partitions its daemon owns; the directory
knows them all, so any daemon of a group answers for any deployment. On Kafka it follows
the deployments and verdict topics outside the consumer group; it also takes what its own
daemon handles and publishes, which is all there is on the other buses.
"""

from __future__ import annotations

import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from coalmine._exceptions import ContractError
from coalmine.contract import format_time, look_of, verdict_id_of
from coalmine.formats import decode_deploy_message

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.bus.base import Headers, Outgoing, Record
    from coalmine.config.models import TopicsSettings
    from coalmine.contract import DeployEvent, Verdict

__all__ = ["Directory"]

log = logging.getLogger(__name__)

State = Literal["open", "final", "ended", "rejected"]


@dataclass(slots=True)
class _Entry:
    deployment_id: str
    service: str
    profile: str | None = None
    strategy: str | None = None
    baseline_version: str | None = None
    canary_version: str | None = None
    started: float | None = None
    ended: bool = False
    verdict: bytes | None = None
    """The latest verdict as published, zlib-compressed (a verdict with its detail is
    ~16 KB of JSON, ~2 KB compressed); parsed only for an API answer."""
    look: int = 0
    final: bool = False
    decision: str | None = None
    config_digest: str | None = None
    rejected: str | None = None
    """Why its ``started`` was dead-lettered (an unknown profile, too many open), if it was."""
    weight: float | None = None
    """The traffic weight the latest verdict reports."""
    advanced: float | None = None
    """The weight of the latest ``advance`` verdict (a stepped rollout)."""

    @property
    def step_advanced(self) -> bool:
        """The step in force was told to advance, or the rollout was promoted."""
        promoted = self.final and self.decision == "promote"
        return promoted or (self.advanced is not None and self.advanced == self.weight)

    @property
    def state(self) -> State:
        if self.final:
            return "final"
        if self.rejected is not None:
            return "rejected"
        return "ended" if self.ended else "open"

    def view(self) -> dict[str, Any]:
        verdict = None if self.verdict is None else orjson.loads(zlib.decompress(self.verdict))
        return {
            "deployment_id": self.deployment_id,
            "service": self.service,
            "profile": self.profile or (verdict or {}).get("profile"),
            "config_digest": self.config_digest,
            "state": self.state,
            "baseline_version": self.baseline_version,
            "canary_version": self.canary_version,
            "strategy": self.strategy or (verdict or {}).get("strategy"),
            "started": None if self.started is None else format_time(self.started),
            "decision": self.decision,
            "final": self.final,
            "traffic_weight": self.weight,
            "step_advanced": self.step_advanced,
            "verdict": verdict,
            "rejected": self.rejected,
        }


class Directory:
    """The last ``max_deployments`` deployments announced, with their latest verdicts."""

    def __init__(self, topics: TopicsSettings, max_deployments: int = 10_000) -> None:
        self.topics = topics
        self.max_deployments = max_deployments
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, records: Iterable[Record]) -> None:
        """Take records of the deployments, verdict and dead-letter topics; ignore others."""
        for record in records:
            if record.topic == self.topics.dead_letter:
                self._dead_letter(record.value, record.headers)
            elif record.topic == self.topics.deployments:
                event = _deploy_event(record)
                if event is not None:
                    self.deploy_event(event)
            elif record.topic == self.topics.verdicts:
                if self._holds(record.value):
                    continue
                try:
                    obj = orjson.loads(record.value)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    self.verdict(obj, record.value)

    def dead_letters(self, letters: Iterable[Outgoing]) -> None:
        """Note dead letters this daemon published: a rejected ``started`` is shown so."""
        for letter in letters:
            self._dead_letter(letter.value, letter.headers)

    def _dead_letter(self, value: bytes, headers: Headers) -> None:
        """A dead-lettered ``started`` marks its deployment rejected, with the reason."""
        found = dict(headers)
        source = found.get("coalmine-source", b"").decode(errors="replace")
        if not source.startswith(f"{self.topics.deployments}/"):
            return
        event = _deploy_event_of(value, headers)
        if event is None or event.event != "started":
            return
        entry = self._entry(event.deployment_id, event.service)
        if not entry.final:
            entry.rejected = found.get("coalmine-error", b"rejected").decode(errors="replace")

    def deploy_event(self, event: DeployEvent) -> None:
        """Note a deploy event."""
        entry = self._entry(event.deployment_id, event.service)
        if event.event == "started":
            entry.profile = event.profile
            entry.strategy = event.strategy
            entry.baseline_version = event.baseline_version
            entry.canary_version = event.canary_version
            entry.started = event.time
        elif event.event in {"completed", "aborted"}:
            entry.ended = True

    def verdicts(self, verdicts: Iterable[Verdict], encoded: Iterable[bytes]) -> None:
        """Note verdicts this daemon published, with each as it was published."""
        for verdict, data in zip(verdicts, encoded, strict=True):
            self._keep(
                verdict.deployment_id,
                verdict.service,
                look_of(verdict.verdict_id),
                data,
                final=verdict.final,
                decision=verdict.decision,
                config_digest=verdict.config_digest,
                weight=verdict.traffic_weight,
            )

    def verdict(self, obj: dict[str, Any], encoded: bytes | None = None) -> None:
        """Note one verdict (as on the verdict topic); the latest judgement is kept.

        ``encoded`` is the verdict as published, when at hand (it is what is kept).
        """
        dep_id, service, verdict_id = (
            obj.get(k) for k in ("deployment_id", "service", "verdict_id")
        )
        if not isinstance(dep_id, str) or not isinstance(service, str):
            return
        decision, digest = obj.get("decision"), obj.get("config_digest")
        weight = obj.get("traffic_weight")
        self._keep(
            dep_id,
            service,
            look_of(verdict_id) if isinstance(verdict_id, str) else None,
            encoded if encoded is not None else orjson.dumps(obj),
            final=obj.get("final") is True,
            decision=decision if isinstance(decision, str) else None,
            config_digest=digest if isinstance(digest, str) else None,
            weight=float(weight) if isinstance(weight, int | float) else None,
        )

    def _keep(  # noqa: PLR0913 - the parts of a verdict the directory keeps
        self,
        deployment_id: str,
        service: str,
        look: int | None,
        encoded: bytes,
        *,
        final: bool,
        decision: str | None,
        config_digest: str | None,
        weight: float | None = None,
    ) -> None:
        """Keep a verdict unless the deployment already has a final or a later look."""
        if look is None:
            return
        entry = self._entry(deployment_id, service)
        if entry.final or look < entry.look:
            return
        entry.verdict = zlib.compress(encoded, 1)
        entry.look = look
        entry.final = final
        entry.decision = decision
        entry.config_digest = config_digest
        entry.weight = weight
        if decision == "advance":
            entry.advanced = weight

    def get(self, deployment_id: str) -> dict[str, Any] | None:
        """The view of one deployment, if known."""
        entry = self._entries.get(deployment_id)
        return None if entry is None else entry.view()

    def list(self, service: str | None = None) -> list[dict[str, Any]]:
        """Views of the known deployments (of ``service``), most recently started first."""
        entries = [e for e in self._entries.values() if service is None or e.service == service]
        entries.sort(key=lambda e: e.started or 0.0, reverse=True)
        return [entry.view() for entry in entries]

    def latest(self, service: str) -> dict[str, Any] | None:
        """The view of the service's most recently started deployment."""
        views = self.list(service)
        return views[0] if views else None

    def _holds(self, value: bytes) -> bool:
        """Whether a verdict as published is one already held, or an older one.

        A daemon's follower reads back every verdict its own daemon published and the
        directory already took; its id tells, without parsing the whole verdict.
        """
        verdict_id = verdict_id_of(value)
        look = None if verdict_id is None else look_of(verdict_id)
        if verdict_id is None or look is None:
            return False
        entry = self._entries.get(verdict_id.rpartition("/")[0])
        return (
            entry is not None and entry.verdict is not None and (entry.final or look <= entry.look)
        )

    def _entry(self, deployment_id: str, service: str) -> _Entry:
        entry = self._entries.get(deployment_id)
        if entry is None:
            entry = self._entries[deployment_id] = _Entry(deployment_id, service)
            while len(self._entries) > self.max_deployments:
                self._entries.popitem(last=False)
        return entry


def _deploy_event(record: Record) -> DeployEvent | None:
    return _deploy_event_of(record.value, record.headers)


def _deploy_event_of(value: bytes, headers: Headers) -> DeployEvent | None:
    """The deploy event of a record (native or CloudEvent), or None if it is not one."""
    try:
        event, _ = decode_deploy_message(value, headers)
    except ContractError:
        return None
    return event
