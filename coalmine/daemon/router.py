"""The router: a fetch of records in, verdicts and dead letters out.

The router is the pure core the daemon, the demo and replay share: records go in (with the
wall time they were received), verdicts and dead letters come out. It never touches a
socket or reads a clock; the shell publishes what it returns, commits only after that is
acknowledged, and times the work.

A record is decoded by the :class:`~coalmine.formats.InputDecoder`, taken in the order
:mod:`~coalmine.daemon.ordering` gives, and its events fed by
:class:`~coalmine.daemon.routes.Routes` to the open
:class:`~coalmine.daemon.deployment.Deployment` each belongs to (opened and closed by
:class:`~coalmine.daemon.open_deployments.OpenDeployments`), whose judgements are the
verdicts. A record that does not fit the contract becomes a dead letter
(:class:`~coalmine.daemon.dead_letters.DeadLetters`). What a restart must re-read is kept
by :class:`~coalmine.daemon.recovery.RecoveryFloors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from coalmine._exceptions import ContractError
from coalmine.config.models import LimitSettings, TopicsSettings
from coalmine.daemon.dead_letters import DeadLetters
from coalmine.daemon.effects import Effects
from coalmine.daemon.open_deployments import OpenDeployments
from coalmine.daemon.ordering import batch_spans, deciding_first, deploys_first
from coalmine.daemon.recovery import RecoveryFloors
from coalmine.daemon.routes import Routes
from coalmine.daemon.telemetry import Telemetry
from coalmine.formats.inputs import InputDecoder

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence

    from coalmine.bus.base import Record
    from coalmine.config.models import Profile
    from coalmine.contract import MetricEvent, Verdict
    from coalmine.daemon.deployment import Deployment
    from coalmine.daemon.finished import FinishedDeployments
    from coalmine.daemon.ordering import Work
    from coalmine.daemon.past_reads import PastRead
    from coalmine.daemon.recovery import TopicPartition
    from coalmine.formats.mapping import InputSettings

__all__ = ["Router"]


class ActingHooks(Protocol):
    """What the router asks of the daemon's actions (:class:`~coalmine.daemon.acting.Acting`)."""

    def remade(self, verdict: Verdict, floors: Mapping[TopicPartition, int], /) -> None:
        """A verdict published before a restart was made again.

        ``floors``: where a restart reads from to make it once more.
        """
        ...

    def held(self) -> Mapping[TopicPartition, int]:
        """Per partition, the floor the actions still running need re-readable."""
        ...


_SLICE = 200
"""Records taken between two pauses of :meth:`Router.steps` (a few milliseconds)."""
_CLOCK_EVERY = 8
"""Records taken between two questions to the caller's clock (a fraction of a millisecond)."""


class Router:
    """Takes fetches of records; returns the verdicts and dead letters they make."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        topics: TopicsSettings | None = None,
        limits: LimitSettings | None = None,
        telemetry: Telemetry | None = None,
        inputs: Sequence[InputSettings] = (),
        *,
        past_from_history: bool = True,
        acting: ActingHooks | None = None,
    ) -> None:
        self.topics = topics or TopicsSettings()
        self.limits = limits or LimitSettings()
        self.telemetry = telemetry or Telemetry()
        self.recovery = RecoveryFloors(self.topics)
        self.open = OpenDeployments(profiles, self.limits, self.telemetry, self.recovery)
        self._acting = acting
        self._holding: dict[TopicPartition, int] = {}
        """Where a restart reads from to make the verdicts being made now again."""
        if acting is not None:
            self.open.on_remade = lambda verdict: acting.remade(verdict, self._holding)
        self.routes = Routes(self.open, self.recovery, self.topics.deployments)
        self.routes.past_from_history = past_from_history
        max_bytes = self.limits.max_message_bytes
        self._inputs = InputDecoder(self.topics, max_bytes, inputs)
        self._dead_letters = DeadLetters(self.topics.dead_letter, max_bytes, self.telemetry)

    @property
    def profiles(self) -> dict[str, Profile]:
        """The profiles deployments started from now on get, by name."""
        return self.open.profiles

    @property
    def deployments(self) -> dict[str, Deployment]:
        """The open deployments, by id."""
        return self.open.deployments

    @property
    def finished(self) -> FinishedDeployments:
        """The ids of the deployments finished here."""
        return self.open.finished

    @property
    def stream_time(self) -> float:
        """The latest event time of the metric events read: the stream's time."""
        return self.routes.stream_time

    @property
    def on_finished(self) -> Callable[[str, str], None] | None:
        """What is called with a finished deployment's id and outcome.

        The outcome is its decision, or why it ended: :attr:`finished` keeps only the id.
        """
        return self.open.on_finished

    @on_finished.setter
    def on_finished(self, call: Callable[[str, str], None] | None) -> None:
        self.open.on_finished = call

    def use_profiles(self, profiles: Mapping[str, Profile]) -> None:
        """Profiles for the deployments started from now on (open ones keep theirs)."""
        self.open.profiles = dict(profiles)

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
        overdue: Callable[[], bool] | None = None,
    ) -> Generator[None, None, Effects]:
        """Handle records a slice at a time; ``now`` is the wall time they were received.

        A generator: it pauses (yields) once the deciding records are taken and their
        verdicts handed over, after every ``_SLICE`` records, and when ``overdue()``
        answers True, asked every ``_CLOCK_EVERY`` records (the caller's clock: the router
        reads none), so a caller on an event loop can publish and answer between slices;
        its return value is what :meth:`handle` returns.

        Deploy events go first, then the metric records that make a verdict, then the rest
        (see :mod:`~coalmine.daemon.ordering`).

        With ``emit``, the effects made so far are handed to it once the deploy records and
        the deciding metric records are taken (one hand-over for the verdicts those make
        together: a caller publishes them in one round trip while the rest is handled),
        then as soon as any later record makes a verdict. What is returned is only what
        came after the last hand-over.
        """
        batch = records if isinstance(records, list) else list(records)
        spans, counts = batch_spans(batch)
        hold = self._holding = self._hold(spans)
        effects = Effects(floors=hold)
        deploys = self.topics.deployments
        if deploys in counts and len(counts) > 1:
            batch, _ = deploys_first(batch, deploys)
        for topic, count in counts.items():
            self.telemetry.consumed(topic, count)
        self.recovery.batch_begins(spans)
        first_metric = counts.get(deploys, 0)
        decoded = self._decode_all(batch[first_metric:], effects)
        handing: Callable[[Effects], None] | None = None  # from the hand-over on: emit
        taken = 0
        for item in self._in_turn(batch[:first_metric], decoded):
            if item is None:
                handing = emit
                if emit is not None and effects.verdicts:
                    emit(effects)
                    effects = Effects(floors=hold)
            elif self._take(*item, now, effects) and handing is not None:
                handing(effects)
                effects = Effects(floors=hold)
            taken += 1
            if (
                item is None
                or taken >= _SLICE
                or (overdue is not None and not taken % _CLOCK_EVERY and overdue())
            ):
                yield
                taken = 0
        self.recovery.batch_ends(spans)
        for topic, skipped, resets in self._inputs.news(counts):
            self.telemetry.input_news(topic, skipped, resets)
        effects.add(self.open.close_due(self.routes.stream_time), now)
        return effects

    def expire_silent(self, now: float) -> Effects:
        """Close, as ``inconclusive``, deployments with no events for ``max_duration``."""
        effects = Effects(floors=self._hold({}))
        self._holding = effects.floors
        effects.add(self.open.expire_silent(now), now)
        return effects

    def past_reads(self) -> list[PastRead]:
        """The same hours days earlier deployments now wait for, each asked for once.

        Only with ``past_from_history`` off (the daemon on Kafka): hand each its records,
        read from the metrics topic by time, with :meth:`load_past`.
        """
        return self.routes.past_reads.pending(self.deployments)

    def load_past(self, deployment_id: str, records: Iterable[Record], now: float) -> Effects:
        """Hand a waiting deployment the records of its past windows; what it then judged.

        Records that do not decode are skipped (they were dead-lettered when first read),
        and so are other services' events.
        """
        deployment = self.deployments.get(deployment_id)
        events: list[MetricEvent] = []
        for record in records:
            try:
                found = self._inputs.metric_events(record.topic, record.value)
            except ContractError:
                continue
            events += found or ()
        if deployment is None:
            return Effects()
        return self._take_past(
            deployment, [e for e in events if e.service == deployment.service], now
        )

    def _take_past(self, deployment: Deployment, events: list[MetricEvent], now: float) -> Effects:
        effects = Effects()
        self.routes.past_reads.loaded(deployment.deployment_id)
        effects.add(self.open.settle(deployment.take_past(events)), now)
        return effects

    def open_deployments(self) -> list[Deployment]:
        """Deployments still under analysis."""
        return list(self.deployments.values())

    def floors(self) -> dict[TopicPartition, int]:
        """Per partition, the oldest offset a restart must re-read to rebuild what is open.

        The daemon commits no further than this: the ``started`` record of every open
        deployment, the input records since it started, and held unrouted events.
        """
        floors = self.recovery.floors(self.routes.held_floors())
        if self._acting is not None:
            for partition, offset in self._acting.held().items():
                floors[partition] = min(offset, floors.get(partition, offset))
        return floors

    def _hold(self, spans: Mapping[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, int]:
        """With actions, where a restart reads from to make a batch's verdicts again.

        The floors before the batch, and its own first offsets.
        """
        if self._acting is None:
            return {}
        hold = self.floors()
        for partition, (first, _) in spans.items():
            hold[partition] = min(first, hold.get(partition, first))
        return hold

    def release(self, partitions: Iterable[TopicPartition]) -> list[str]:
        """Forget what was read from ``partitions`` (given up to another daemon).

        Returns the ids of the open deployments dropped: their new owner rebuilds them.
        """
        gone = set(partitions)
        if not gone:
            return []
        dropped = self.routes.release(gone)
        self.recovery.release(gone)
        return dropped

    def take_over(
        self,
        handled: Mapping[TopicPartition, int],
        ends: Mapping[TopicPartition, int],
        assigned_ms: int,
    ) -> None:
        """Partitions were assigned here: see :meth:`RecoveryFloors.take_over`."""
        self.recovery.take_over(handled, ends, assigned_ms)

    def recall(self, verdicts: Iterable[bytes]) -> int:
        """Learn the verdicts already published (read from the verdict topic)."""
        return self.open.recall(verdicts)

    def _in_turn(self, deploys: list[Record], decoded: list[Work]) -> Iterator[Work | None]:
        """Deploy records, deciding metric records, None (time to hand over), the rest."""
        yield from ((record, None) for record in deploys)
        # Classified once the deploy records are taken: their deployments are open.
        first, rest = deciding_first(decoded, self.open.deployment_for)
        yield from first
        yield None
        yield from rest

    def _decode_all(self, records: list[Record], effects: Effects) -> list[Work]:
        """Decode metric records in order; one that does not decode is a dead letter."""
        decoded: list[Work] = []
        metric_events = self._inputs.metric_events
        for record in records:
            try:
                decoded.append((record, metric_events(record.topic, record.value)))
            except ContractError as exc:
                self._reject(record, exc, effects)
        return decoded

    def _take(
        self, record: Record, events: list[MetricEvent] | None, now: float, effects: Effects
    ) -> bool:
        """Take one record into ``effects``; True if it made a verdict to publish."""
        try:
            verdicts = self._apply(record, events, now)
        except ContractError as exc:
            self._reject(record, exc, effects)
            return False
        if not verdicts:
            return False
        published = self.open.settle(verdicts)
        effects.add(published, now)
        return bool(published)

    def _reject(self, record: Record, error: ContractError, effects: Effects) -> None:
        """Dead-letter an invalid record, unless a previous owner of its partition did."""
        if not self.recovery.handled_before(record):
            effects.dead_letters.append(self._dead_letters.of(record, error))

    def _apply(self, record: Record, events: list[MetricEvent] | None, now: float) -> list[Verdict]:
        """Take a deploy record (``events`` None) or a metric record's decoded events."""
        if events is not None:
            return self.routes.metrics(events, now, record)
        if record.topic != self.topics.deployments:
            return []
        event = self._inputs.deploy_event(record.value, record.headers)
        if event is None:
            self.telemetry.ignored("duplicate_cloudevent")
            return []
        return self.routes.deploy(event, now, record)
