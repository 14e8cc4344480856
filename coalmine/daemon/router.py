"""Routes decoded events to deployments and collects what must be published.

The router is the pure core the daemon, the demo and replay share: records go in (with the
wall time they were received), verdicts and dead letters come out. It never touches a
socket; the shell publishes what it returns and commits only after that is acknowledged.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coalmine._exceptions import ContractError
from coalmine.bus.base import Outgoing, Record
from coalmine.config.models import LimitSettings, Profile, TopicsSettings
from coalmine.contract import (
    Cohort,
    DeployEvent,
    MetricEvent,
    Verdict,
    decode_deploy_event,
    decode_metric_events,
    encode_verdict,
    format_time,
)
from coalmine.daemon.deployment import AnalysisLimits, Deployment
from coalmine.daemon.finished import FinishedDeployments
from coalmine.daemon.ledger import VerdictLedger
from coalmine.daemon.telemetry import Telemetry
from coalmine.daemon.unrouted import UnroutedEvent, UnroutedMetrics
from coalmine.formats import (
    CloudEventDeduper,
    MetricDecoder,
    decode_cloudevent,
    is_cloudevent,
    metric_decoder,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence

    from coalmine.formats.mapping import InputSettings

log = logging.getLogger(__name__)

_FINISHED_MEMORY = 100_000
"""How many finished deployment ids are remembered to ignore a second ``started``.

Kept compactly (:class:`FinishedDeployments`, ~2 MB at the cap): at least the newest
this many, and up to 4,095 more."""

TopicPartition = tuple[str, int]
"""``(topic, partition)``."""

_LIMIT_OF_REASON = {
    "too_large": "max_message_bytes",
    "too_many_deployments": "max_open_deployments",
}


_SLICE = 200
"""Records taken between two pauses of :meth:`Router.steps` (a few milliseconds)."""
_PAUSE_AFTER = 0.01
"""Seconds of judging after which :meth:`Router.steps` pauses sooner (large judgements)."""
_MAX_EXPLAINED = 10_000
"""(reason, deployment or service) pairs remembered as explained; then they start over."""

_Work = tuple[Record, "list[MetricEvent] | None"]
"""A record to take: a deploy record (None), or a metric record with its decoded events."""


@dataclass(slots=True)
class _Origin:
    """Where an open deployment's events are in the log: what a restart must re-read."""

    deploy: TopicPartition
    offset: int
    floors: dict[TopicPartition, int]
    """Per input partition, the first offset the deployment may have used."""


@dataclass(slots=True)
class Effects:
    """What handling some records produced, in the order it must be published."""

    verdicts: list[Verdict] = field(default_factory=list)
    dead_letters: list[Outgoing] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    """Wall time the record that made each verdict due was received (verdict lag)."""
    _encoded: list[bytes] = field(default_factory=list, repr=False)

    def __bool__(self) -> bool:
        return bool(self.verdicts or self.dead_letters)

    def extend(self, other: Effects) -> None:
        """Append another batch of effects."""
        self.verdicts.extend(other.verdicts)
        self.dead_letters.extend(other.dead_letters)
        self.received.extend(other.received)
        self._encoded.clear()

    def encode(self) -> list[bytes]:
        """The verdicts as published on the bus, encoded once (for the bus and the API)."""
        if len(self._encoded) != len(self.verdicts):
            self._encoded = [encode_verdict(v) for v in self.verdicts]
        return self._encoded

    def messages(self, topics: TopicsSettings) -> list[Outgoing]:
        """The verdicts and dead letters as messages for the bus."""
        out = [
            Outgoing(topics.verdicts, data, v.deployment_id.encode())
            for v, data in zip(self.verdicts, self.encode(), strict=True)
        ]
        out.extend(self.dead_letters)
        return out


class Router:
    """Keeps the open deployments and feeds each event to the one it belongs to."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        topics: TopicsSettings | None = None,
        limits: LimitSettings | None = None,
        telemetry: Telemetry | None = None,
        inputs: Sequence[InputSettings] = (),
    ) -> None:
        self.profiles = dict(profiles)
        self.topics = topics or TopicsSettings()
        self.limits = limits or LimitSettings()
        self.telemetry = telemetry or Telemetry()
        self.deployments: dict[str, Deployment] = {}
        self.finished = FinishedDeployments(_FINISHED_MEMORY)
        self.on_finished: Callable[[str, str], None] | None = None
        """Called with a finished deployment's id and outcome (its decision, or why it
        ended), for a caller that wants the outcome: :attr:`finished` keeps only the id."""
        self._by_service: dict[str, list[str]] = {}
        self._last_seen: dict[str, float] = {}
        self._analysis_limits = AnalysisLimits(
            self.limits.max_samples_per_cohort, self.limits.max_instances_per_cohort
        )
        self._decoders: dict[str, MetricDecoder] = {}
        # Per input topic, the decoder's skips and resets already counted in telemetry.
        self._skips_counted: dict[str, Counter[str]] = {}
        self._resets_counted: dict[str, int] = {}
        self._native_inputs: set[str] = set()
        for source in inputs:
            if source.format == "native":
                self._native_inputs.add(source.topic)
            else:
                self._decoders[source.topic] = metric_decoder(source)
        self._cloudevents = CloudEventDeduper()
        self.ledger = VerdictLedger()
        self._unrouted = UnroutedMetrics()
        self._origins: dict[str, _Origin] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._batch_floors: dict[TopicPartition, int] = {}
        self._record: Record | None = None
        self._explained: set[tuple[str, str]] = set()
        self._ended_services: set[str] = set()
        """Services a deployment of which ended here (their later metrics are expected)."""
        """(reason, deployment or service) whose dropped samples were explained in the log."""
        self.stream_time = -math.inf
        """The latest event time of the metric events read: the stream's time."""
        self._closing: list[tuple[float, str]] = []
        """Heap of (stream time at which to close, deployment id), see :meth:`_close_due`."""
        self.handled_before: dict[TopicPartition, int] = {}
        """Per partition, the position a previous owner handled it to: an invalid record
        below it was dead-lettered then, and is re-read only to rebuild deployments."""
        self.rebuilding: dict[TopicPartition, tuple[int, int]] = {}
        """Per deploy partition being re-read: its end offset and the wall time (ms) when
        it was assigned; a deployment started before either is being rebuilt."""

    def handle(
        self,
        records: Iterable[Record],
        now: float,
        emit: Callable[[Effects], None] | None = None,
    ) -> Effects:
        """Handle records; ``now`` is the wall time they were received.

        :meth:`steps` taken to its end: see there.
        """
        steps = self.steps(records, now, emit)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def steps(
        self,
        records: Iterable[Record],
        now: float,
        emit: Callable[[Effects], None] | None = None,
        pause_after: float = _PAUSE_AFTER,
    ) -> Generator[None, None, Effects]:
        """Handle records a slice at a time; ``now`` is the wall time they were received.

        A generator: it pauses (yields) once the deciding records are taken and their
        verdicts handed over, and after every ``_SLICE`` records or ``pause_after``
        seconds, whichever comes first, so a caller on an event loop can publish and
        answer between slices; its return value is what :meth:`handle` returns.

        Deploy events go first. Then the metric records that make a verdict (a judgement
        falls due, or a critical metric burns its budget fast) go before the rest, so their
        verdicts need not wait for the whole batch; each deployment's events are still
        taken in the order they came (see :meth:`_deciding_first`).

        With ``emit``, the effects made so far are handed to it once the deploy records and
        the deciding metric records are taken (one hand-over for the verdicts those make
        together: a caller publishes them in one round trip while the rest is handled),
        then as soon as any later record makes a verdict. What is returned is only what
        came after the last hand-over.
        """
        effects = Effects()
        batch = records if isinstance(records, list) else list(records)
        spans, counts = _spans(batch)
        deploys = self.topics.deployments
        if deploys in counts and len(counts) > 1:
            batch, _ = deploys_first(batch, deploys)
        for topic, count in counts.items():
            self.telemetry.consumed(topic, count)
        self._note_batch(spans)
        first_metric = counts.get(deploys, 0)
        decoded = self._decode_all(batch[first_metric:], effects)
        handing: Callable[[Effects], None] | None = None  # from the hand-over on: emit
        taken, since = 0, time.perf_counter()
        for item in self._in_turn(batch[:first_metric], decoded):
            if item is None:
                handing = emit
                if emit is not None and effects.verdicts:
                    emit(effects)
                    effects = Effects()
            elif self._take(*item, now, effects) and handing is not None:
                handing(effects)
                effects = Effects()
            taken += 1
            if item is None or taken >= _SLICE or time.perf_counter() - since > pause_after:
                yield
                taken, since = 0, time.perf_counter()
        self._close_batch(spans, counts)
        closed = self._close_due()
        if closed:
            effects.verdicts.extend(closed)
            effects.received.extend(now for _ in closed)
        return effects

    def _close_batch(
        self, spans: dict[TopicPartition, tuple[int, int]], counts: dict[str, int]
    ) -> None:
        """Positions past the batch's records; what the input decoders skipped, counted."""
        positions = self._positions
        for key, (_, last) in spans.items():
            if last >= positions.get(key, 0):
                positions[key] = last + 1
        for topic in counts.keys() & self._decoders.keys():
            self._count_decoder(topic)

    def _in_turn(self, deploys: list[Record], decoded: list[_Work]) -> Iterator[_Work | None]:
        """Deploy records, deciding metric records, None (time to hand over), the rest."""
        yield from ((record, None) for record in deploys)
        # Classified once the deploy records are taken: their deployments are open.
        first, rest = self._deciding_first(decoded)
        yield from first
        yield None
        yield from rest

    def _take(
        self, record: Record, events: list[MetricEvent] | None, now: float, effects: Effects
    ) -> bool:
        """Take one record into ``effects``; True if it made a verdict to publish."""
        self._record = record
        try:
            verdicts = self._apply(record, events, now)
        except ContractError as exc:
            self._reject(record, exc, effects)
            return False
        finally:
            self._record = None
        if not verdicts:
            return False
        published = self._settle(verdicts)
        effects.verdicts.extend(published)
        effects.received.extend(now for _ in published)
        return bool(published)

    def _decode_all(self, records: list[Record], effects: Effects) -> list[_Work]:
        """Decode metric records in order; one that does not decode is a dead letter."""
        decoded: list[_Work] = []
        for record in records:
            try:
                decoded.append((record, self._decode(record)))
            except ContractError as exc:
                self._reject(record, exc, effects)
        return decoded

    def _deciding_first(self, decoded: list[_Work]) -> tuple[list[_Work], list[_Work]]:
        """Decoded metric records split: those to take first, then the rest.

        A record is deciding when one of its events makes a judgement due
        (:meth:`Deployment.next_due`) or burns a critical metric's budget fast
        (:meth:`Deployment.is_critical_burn`). Records are grouped by the deployments
        they feed (unrouted ones by service), joined through records that feed several.
        A group with a deciding record moves its records up to its last deciding one to
        the front, in their order; everything else follows in its order. So no deployment
        sees its events in another order than they came, and a verdict waits for the
        records before it of its own group, not for the whole batch.
        """
        keys, several, deciding = self._classify(decoded)
        if not deciding:
            return [], decoded
        if several:  # records that feed several deployments join their groups
            group = _Groups()
            for joined in several.values():
                group.join(joined)
            keys = [None if key is None else group.of(key) for key in keys]
        until = {keys[index]: index for index in deciding}  # the last one of each wins
        first: list[_Work] = []
        rest: list[_Work] = []
        for index, item in enumerate(decoded):
            (first if until.get(keys[index], -1) >= index else rest).append(item)
        return first, rest

    def _classify(
        self, decoded: list[_Work]
    ) -> tuple[list[str | None], dict[int, list[str]], list[int]]:
        """Keys of the records, those of records with several, the deciding records.

        A record's key is a deployment it feeds, or its service when unrouted (None: it has
        no events); a record that feeds several has all its keys listed by its index.
        """
        keys: list[str | None] = []
        several: dict[int, list[str]] = {}
        deciding: list[int] = []
        due_at: dict[str, float] = {}  # per deployment, the time past which one is due
        deployment_for = self._deployment_for
        for index, (_, events) in enumerate(decoded):
            first_key: str | None = None
            hot = False
            for event in events or ():
                deployment = deployment_for(event)
                key = (
                    f"service\0{event.service}" if deployment is None else deployment.deployment_id
                )
                if first_key is None:
                    first_key = key
                elif key != first_key:
                    several.setdefault(index, [first_key]).append(key)
                if deployment is None:
                    continue
                due = due_at.get(key)
                if due is None:
                    due = due_at[key] = deployment.next_due()
                if event.time > due:
                    hot = True
                    due_at[key] = deployment.next_due(event.time)
                elif event.is_ratio and event.total > event.good:
                    hot = hot or deployment.is_critical_burn(event)
            keys.append(first_key)
            if hot:
                deciding.append(index)
        return keys, several, deciding

    def _count_decoder(self, topic: str) -> None:
        """Add what an input's decoder skipped and reset since last time to telemetry."""
        decoder = self._decoders[topic]
        counted = self._skips_counted.setdefault(topic, Counter())
        for reason, count in (decoder.skipped - counted).items():
            self.telemetry.input_points_skipped.labels(topic, reason).inc(count)
            counted[reason] += count
        resets = decoder.resets - self._resets_counted.get(topic, 0)
        if resets > 0:
            self.telemetry.input_counter_resets.labels(topic).inc(resets)
            self._resets_counted[topic] = decoder.resets

    def floors(self) -> dict[TopicPartition, int]:
        """Per partition, the oldest offset a restart must re-read to rebuild what is open.

        The daemon commits no further than this: the ``started`` record of every open
        deployment, the input records since it started, and held unrouted events.
        """
        floors = self._unrouted.floors()
        for origin in self._origins.values():
            _lower(floors, origin.deploy, origin.offset)
            for source, offset in origin.floors.items():
                _lower(floors, source, offset)
        return floors

    def release(self, partitions: Iterable[TopicPartition]) -> list[str]:
        """Forget what was read from ``partitions`` (given up to another daemon).

        Returns the ids of the open deployments dropped: their new owner rebuilds them.
        """
        gone = set(partitions)
        if not gone:
            return []
        dropped = [dep_id for dep_id, origin in self._origins.items() if origin.deploy in gone]
        for dep_id in dropped:
            deployment = self.deployments[dep_id]
            self._forget(deployment, None)
        self._unrouted.release(gone)
        for source in gone:
            self._positions.pop(source, None)
            self.handled_before.pop(source, None)
        for origin in self._origins.values():
            for source in gone:
                origin.floors.pop(source, None)
        return dropped

    def recall(self, verdicts: Iterable[bytes]) -> int:
        """Learn the verdicts already published (read from the verdict topic)."""
        return self.ledger.learn(verdicts)

    def _note_batch(self, spans: Mapping[TopicPartition, tuple[int, int]]) -> None:
        """Note the first offset of each input partition in this batch.

        A deployment started in this batch may use any input record of the batch (deploy
        records are handled first), so its floor on a partition is the batch's first
        offset there, or the position before the batch. A partition seen for the first
        time gives every open deployment a floor at its first offset.
        """
        deploys = self.topics.deployments
        floors = {key: first for key, (first, _) in spans.items() if key[0] != deploys}
        self._batch_floors = floors
        new = [source for source in floors if source not in self._positions]
        if new:
            for origin in self._origins.values():
                for source in new:
                    if self._feeds(source, origin):
                        origin.floors.setdefault(source, floors[source])

    def _feeds(self, source: TopicPartition, origin: _Origin) -> bool:
        """Can input records of ``source`` be routed to the deployment?

        The metrics topic is co-partitioned with the deployments topic; other input
        topics (OTLP, prometheus-adapter) are keyed by their producers, so any partition.
        """
        topic, partition = source
        if topic == self.topics.deployments:
            return False
        return topic != self.topics.metrics or partition == origin.deploy[1]

    def _decode(self, record: Record) -> list[MetricEvent] | None:
        """The metric events of a record of an input topic; None for any other topic."""
        if len(record.value) > self.limits.max_message_bytes:
            raise ContractError("too_large", f"{len(record.value)} bytes")
        topic = record.topic
        if topic == self.topics.metrics or topic in self._native_inputs:
            return decode_metric_events(record.value)
        decoder = self._decoders.get(topic)
        if decoder is not None:
            return decoder.decode(record.value)
        return None

    def _apply(self, record: Record, events: list[MetricEvent] | None, now: float) -> list[Verdict]:
        """Take a deploy record (``events`` None) or a metric record's decoded events."""
        if events is not None:
            return self._on_metrics(events, now)
        if record.topic != self.topics.deployments:
            return []
        if len(record.value) > self.limits.max_message_bytes:
            raise ContractError("too_large", f"{len(record.value)} bytes")
        return self._on_deploy_record(record, now)

    def _on_deploy_record(self, record: Record, now: float) -> list[Verdict]:
        headers: Sequence[tuple[str, bytes | None]] = record.headers
        if not is_cloudevent(headers) and b'"specversion"' in record.value[:4096]:
            # Structured CloudEvents over MQTT arrive without a content-type header.
            headers = (*headers, ("content-type", b"application/cloudevents+json"))
        if not is_cloudevent(headers):
            return self._on_deploy(decode_deploy_event(record.value), now)
        event, key = decode_cloudevent(record.value, headers)
        if self._cloudevents.seen(key):
            self.telemetry.ignored("duplicate_cloudevent")
            return []
        return self._on_deploy(event, now)

    def expire_silent(self, now: float) -> Effects:
        """Close, as ``inconclusive``, deployments with no events for ``max_duration``."""
        effects = Effects()
        for dep_id, seen in list(self._last_seen.items()):
            deployment = self.deployments[dep_id]
            if now - seen >= deployment.profile.max_duration:
                verdict = deployment.expire()
                if verdict is None:
                    self._forget(deployment, deployment.end_reason or "ended")
                    continue
                effects.verdicts.append(verdict)
                effects.received.append(now)
        effects.verdicts = self._settle(effects.verdicts)
        del effects.received[len(effects.verdicts) :]
        return effects

    def open_deployments(self) -> list[Deployment]:
        """Deployments still under analysis."""
        return list(self.deployments.values())

    def _on_deploy(self, event: DeployEvent, now: float) -> list[Verdict]:
        if event.event == "started":
            return self._start(event, now)
        deployment = self.deployments.get(event.deployment_id)
        if deployment is None:
            self.telemetry.ignored("deploy_event_for_unknown_deployment")
            return []
        self._last_seen[event.deployment_id] = now
        if event.event == "step":
            deployment.step(event)
        else:
            deployment.end(event)
            self._forget_if_ended(deployment)
            if deployment.is_open and deployment.ends_at is not None:
                self._close_at(deployment, deployment.ends_at)
        return []

    def _start(self, event: DeployEvent, now: float) -> list[Verdict]:
        if event.deployment_id in self.deployments or event.deployment_id in self.finished:
            self.telemetry.ignored("duplicate_started")
            return []
        profile = self.profiles.get(event.profile)
        if profile is None:
            raise ContractError("unknown_profile", f"no profile named {event.profile!r}")
        if len(self.deployments) >= self.limits.max_open_deployments:
            raise ContractError(
                "too_many_deployments",
                f"{len(self.deployments)} deployments open (limits.max_open_deployments)",
            )
        deployment = Deployment(
            event, profile, profile_name=event.profile, limits=self._analysis_limits
        )
        self.deployments[event.deployment_id] = deployment
        self._close_at(deployment, deployment.end_time)
        self._by_service.setdefault(event.service, []).append(event.deployment_id)
        self._last_seen[event.deployment_id] = now
        self.telemetry.active_deployments.set(len(self.deployments))
        self._note_origin(event.deployment_id)
        log.info(
            "deployment %s of %s started (profile %s, %s -> %s)",
            event.deployment_id,
            event.service,
            event.profile,
            event.baseline_version,
            event.canary_version,
        )
        return self._apply_held(event, now)

    def _note_origin(self, dep_id: str) -> None:
        """Remember where a starting deployment's events begin in the log."""
        record = self._record
        if record is None:
            return
        origin = _Origin((record.topic, record.partition), record.offset, {})
        end, assigned_ms = self.rebuilding.get(origin.deploy, (-1, -1))
        stamp = record.timestamp_ms
        # Before the end offset at assignment, or appended before it: some brokers (tansu)
        # answer the end offset short, so the record's timestamp is asked too.
        if record.offset < end or (stamp is not None and 0 <= stamp <= assigned_ms):
            self.telemetry.recovered_deployments.inc()
            log.info("deployment %s: rebuilding from the log", dep_id)
        for source in {*self._positions, *self._batch_floors}:
            if self._feeds(source, origin):
                floor = self._batch_floors.get(source, self._positions.get(source))
                if floor is not None:
                    origin.floors[source] = floor
        self._origins[dep_id] = origin

    def _apply_held(self, event: DeployEvent, now: float) -> list[Verdict]:
        """Hand a starting deployment the events that arrived before its ``started``."""
        held = self._unrouted.take(event.deployment_id, event.service, event.time)
        origin = self._origins.get(event.deployment_id)
        verdicts: list[Verdict] = []
        for item in held:
            if origin is not None:
                _lower(origin.floors, item.source, item.offset)
            try:
                verdicts.extend(self._on_metrics([item.event], now))
            except ContractError:
                self.telemetry.dropped("held_event_invalid", item.event.size)
        return verdicts

    def _close_at(self, deployment: Deployment, end: float) -> None:
        """Close ``deployment`` once stream time passes ``end`` plus its grace."""
        heapq.heappush(
            self._closing, (end + deployment.profile.final_grace, deployment.deployment_id)
        )

    def _close_due(self) -> list[Verdict]:
        """Final verdicts of open deployments whose end the stream has passed, with grace.

        A deployment whose own events stop (the canary torn down at ``max_duration``, its
        exporter gone) is judged up to its end and closed once any event read is
        ``final_grace`` past it: on event time, so a replay closes it alike.
        """
        verdicts: list[Verdict] = []
        closing = self._closing
        while closing and closing[0][0] <= self.stream_time:
            _, dep_id = heapq.heappop(closing)
            deployment = self.deployments.get(dep_id)
            if deployment is None or not deployment.is_open:
                continue
            verdicts.extend(deployment.advance(self.stream_time))
            self._forget_if_ended(deployment)
        return self._settle(verdicts) if verdicts else verdicts

    def _on_metrics(self, events: list[MetricEvent], now: float) -> list[Verdict]:
        latest = max(event.time for event in events) if events else -math.inf
        self.stream_time = max(self.stream_time, latest)
        verdicts: list[Verdict] = []
        for deployment, event, cohort in self._route_all(events):
            if not deployment.is_open:
                continue
            self._last_seen[deployment.deployment_id] = now
            made = deployment.observe(event, cohort)
            if made:
                verdicts.extend(made)
            if deployment.limits_hit:
                self._limits_hit(deployment)
            if deployment.status == "ended":
                self._forget_if_ended(deployment)
            final_time = self.ledger.final_time(deployment.deployment_id)
            if final_time is not None and deployment.watermark > final_time:
                # Rebuilt after its final verdict was published: it has said its last word.
                self._forget(deployment, "final")
        return verdicts

    def _route_all(self, events: list[MetricEvent]) -> list[tuple[Deployment, MetricEvent, Cohort]]:
        """Resolve every event before applying any: a message is taken or rejected whole."""
        routed: list[tuple[Deployment, MetricEvent, Cohort]] = []
        if len(events) == 1:
            target = self._route(events[0])
            if target is not None:
                routed.append(target)
            return routed
        for index, event in enumerate(events):
            try:
                target = self._route(event)
            except ContractError as exc:
                raise ContractError(exc.reason, f"item {index}: {exc.message}") from None
            if target is not None:
                routed.append(target)
        return routed

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

    def _route(self, event: MetricEvent) -> tuple[Deployment, MetricEvent, Cohort] | None:
        deployment = self._deployment_for(event)
        if deployment is None:
            self._hold(event)
            return None
        if event.time < deployment.started:
            self._drop("before_started", event, deployment)
            return None
        cohort = deployment.cohort_of(event)
        if cohort is None:
            raise ContractError(
                "unknown_cohort",
                f"version {event.version!r} is neither baseline {deployment.baseline_version!r}"
                f" nor canary {deployment.canary_version!r} of {deployment.deployment_id}",
            )
        spec = deployment.profile.metric(event.metric)
        if spec is None:
            self._drop("metric_not_in_profile", event, deployment)
            return None
        if (spec.kind == "ratio") != event.is_ratio:
            wanted = "'good' and 'total'" if spec.kind == "ratio" else "'value' or 'values'"
            raise ContractError(
                "kind_mismatch", f"{event.metric} is a {spec.kind} metric: it needs {wanted}"
            )
        return deployment, event, cohort

    def _drop(self, reason: str, event: MetricEvent, deployment: Deployment | None) -> None:
        """Count samples not analysed; say why once per reason and deployment (or service)."""
        self.telemetry.dropped(reason, event.size)
        subject = deployment.deployment_id if deployment is not None else event.service
        if (reason, subject) in self._explained:
            return
        if reason == "no_open_deployment" and (
            event.service in self._ended_services or event.deployment_id in self.finished
        ):
            return  # metrics still flowing after a deployment's end: expected, not a mistake
        if len(self._explained) >= _MAX_EXPLAINED:
            self._explained.clear()
        self._explained.add((reason, subject))
        if reason == "before_started" and deployment is not None:
            log.warning(
                "deployment %s: samples timed before its started event (%s < %s) are not"
                " analysed (counted as before_started); the producer's event times or the"
                " started event's time are off: give `started` the time the canary began"
                " serving, and metrics the time they were measured",
                subject,
                format_time(event.time),
                format_time(deployment.started),
            )
        elif reason == "metric_not_in_profile" and deployment is not None:
            log.warning(
                "deployment %s: metric %r is not in its profile %r and is not analysed"
                " (counted as metric_not_in_profile): add it to the profile's metrics, or"
                " stop sending it",
                subject,
                event.metric,
                deployment.profile_name,
            )
        elif reason == "no_open_deployment":
            log.warning(
                "service %s: samples for no open deployment are not analysed (counted as"
                " no_open_deployment): no started event for it was read (sent to %s, with"
                " this service?), or its deployment already ended; with several daemons,"
                " deploy events and metrics must be keyed by service with the same"
                " partitioner (docs/inputs.md, Keys and partitioners)",
                subject,
                self.topics.deployments,
            )

    def _hold(self, event: MetricEvent) -> None:
        """Keep an event with no open deployment a while: its ``started`` may be late."""
        record = self._record
        if record is None or (
            event.deployment_id is not None and event.deployment_id in self.finished
        ):
            self._drop("no_open_deployment", event, None)
            return
        source = (record.topic, record.partition)
        for item in self._unrouted.add(UnroutedEvent(source, record.offset, event)):
            self._drop("no_open_deployment", item.event, None)

    def _deployment_for(self, event: MetricEvent) -> Deployment | None:
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

    def _settle(self, verdicts: list[Verdict]) -> list[Verdict]:
        """Close deployments that reached a final verdict; return the verdicts to publish.

        A verdict the ledger shows already published (a rebuilt deployment re-making its
        judgements) is not published again.
        """
        published: list[Verdict] = []
        for verdict in verdicts:
            if self.ledger.already_published(verdict):
                self.telemetry.verdicts_suppressed.inc()
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

    def _forget(self, deployment: Deployment, outcome: str | None) -> None:
        """Drop a deployment; ``outcome`` None means it was handed over, not finished."""
        dep_id = deployment.deployment_id
        self.deployments.pop(dep_id, None)
        self._last_seen.pop(dep_id, None)
        self._origins.pop(dep_id, None)
        siblings = self._by_service.get(deployment.service, [])
        if dep_id in siblings:
            siblings.remove(dep_id)
        if not siblings:
            self._by_service.pop(deployment.service, None)
        if outcome is not None:
            self.finished.add(dep_id)
            if len(self._ended_services) >= _MAX_EXPLAINED:
                self._ended_services.clear()
            self._ended_services.add(deployment.service)
            if self.on_finished is not None:
                self.on_finished(dep_id, outcome)
        self.telemetry.active_deployments.set(len(self.deployments))

    def _reject(self, record: Record, error: ContractError, effects: Effects) -> None:
        """Dead-letter an invalid record, unless a previous owner of its partition did."""
        if record.offset < self.handled_before.get((record.topic, record.partition), 0):
            return
        effects.dead_letters.append(self._dead_letter(record, error))

    def _dead_letter(self, record: Record, error: ContractError) -> Outgoing:
        self.telemetry.invalid_events.labels(error.reason).inc()
        limit = _LIMIT_OF_REASON.get(error.reason)
        if limit is not None:
            self.telemetry.limit_exceeded.labels(limit).inc()
        log.warning("invalid event at %s: %s", record.source, error)
        headers = (
            *record.headers,
            ("coalmine-error", str(error).encode()[:512]),
            ("coalmine-source", record.source.encode()),
        )
        value = record.value
        if error.reason == "too_large":
            # The original cannot be re-published whole: keep its head and say so.
            value = value[: self.limits.max_message_bytes]
            headers = (*headers, ("coalmine-truncated-from", str(len(record.value)).encode()))
        return Outgoing(self.topics.dead_letter, value, record.key, headers)


class _Groups:
    """Keys joined into groups (union-find): records that share a key share a group."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def of(self, key: str) -> str:
        """The representative of ``key``'s group."""
        parent = self._parent
        while (up := parent.get(key, key)) != key:
            parent[key] = parent.get(up, up)  # halve the path
            key = up
        return key

    def join(self, keys: list[str]) -> None:
        """Put ``keys`` in one group."""
        if len(keys) < 2:  # one key joins nothing
            return
        root = self.of(keys[0])
        for key in keys[1:]:
            other = self.of(key)
            if other != root:
                self._parent[other] = root


def deploys_first(records: list[Record], deployments: str) -> tuple[list[Record], int]:
    """``records`` with the deploy events first, each kind in its order; and their count.

    Kafka orders each partition, not the two topics, and a metric read before its
    deployment's ``started`` could not be routed.
    """
    deploys = [r for r in records if r.topic == deployments]
    if not deploys or len(deploys) == len(records):
        return records, len(deploys)
    return deploys + [r for r in records if r.topic != deployments], len(deploys)


def _spans(batch: list[Record]) -> tuple[dict[TopicPartition, tuple[int, int]], dict[str, int]]:
    """Per partition, the lowest and highest offset in ``batch``; per topic, its records.

    One pass; a transport hands out a partition's records together and in order, so the
    work per record is mostly comparing it with the run it continues.
    """
    spans: dict[TopicPartition, tuple[int, int]] = {}
    counts: dict[str, int] = {}
    topic: str | None = None
    partition = low = high = run = 0
    for record in batch:
        offset = record.offset
        if record.partition == partition and record.topic == topic:
            run += 1
            if offset > high:
                high = offset
            elif offset < low:
                low = offset
            continue
        if topic is not None:
            _merge_run(spans, counts, topic, partition, low, high, run)
        topic, partition, low, high, run = record.topic, record.partition, offset, offset, 1
    if topic is not None:
        _merge_run(spans, counts, topic, partition, low, high, run)
    return spans, counts


def _merge_run(
    spans: dict[TopicPartition, tuple[int, int]],
    counts: dict[str, int],
    topic: str,
    partition: int,
    low: int,
    high: int,
    run: int,
) -> None:
    key = (topic, partition)
    span = spans.get(key)
    spans[key] = (low, high) if span is None else (min(span[0], low), max(span[1], high))
    counts[topic] = counts.get(topic, 0) + run


def _lower(floors: dict[TopicPartition, int], source: TopicPartition, offset: int) -> None:
    current = floors.get(source)
    if current is None or offset < current:
        floors[source] = offset
