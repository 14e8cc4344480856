"""One deployment's analysis: a deterministic state machine driven by event time.

It is fed deploy and metric events and told nothing else: no clock, no socket. Event time
is driven by the metric events alone; judgements fall due when it passes
``started + k x interval``, and the k-th judgement gets the ``verdict_id``
``<deployment_id>/<k>``. Deploy events take effect at their own event time, whenever they
are read: a ``step`` changes the traffic weight reported from its time on, and ``completed``
/ ``aborted`` stop the analysis at their time (judgements due later are not made). So the
verdicts do not depend on how the deployments and metrics topics interleave, and a recorded
stream replays to the same verdicts.

Each metric has an analyzer for its kind (``coalmine.analyzers.registry``), called through
one interface; the deployment stores both cohorts' data and asks ``coalmine.judge`` for the
decision. Critical metrics are also checked as their data arrives, when their analyzer says
a message may have decided (a ratio metric's canary message with bad events; a
distribution metric's canary samples grown by a tenth), so a critical failure rolls back on
the message that decided it rather than at the next interval.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from coalmine.analyzers.base import Look
from coalmine.analyzers.burn_rate import BurnWindow
from coalmine.analyzers.registry import analyzer_for
from coalmine.analyzers.sample_ratio import sample_ratio_check
from coalmine.contract import Cohort, DeployEvent, FlagRollout, MetricEvent, Verdict, Window
from coalmine.daemon.observations import AnalysisLimits, Observations
from coalmine.daemon.past import PastBaseline, SameHours
from coalmine.daemon.switch import Preview
from coalmine.judge import Judgement, Step, judge

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.analyzers.base import Analyzer
    from coalmine.analyzers.result import DetailValue, MetricResult
    from coalmine.config.models import Profile

Status = Literal["open", "final", "ended"]


DEFAULT_REFERENCE = 1800.0
"""The reference window of a blue-green switch whose profile and event name none."""


class Rollout:
    """The canary's announced traffic weight over event time, and its planned steps."""

    __slots__ = ("_advanced", "_plan", "_steps")

    def __init__(self, start: float, weight: float | None, plan: tuple[float, ...] = ()) -> None:
        self._steps: list[tuple[float, float | None]] = [(start, weight)]
        self._plan = plan
        self._advanced: set[float] = set()

    def add(self, time: float, weight: float | None) -> None:
        """A step to ``weight`` at ``time`` (steps may be read out of order)."""
        self._steps.append((time, weight))
        self._steps.sort(key=lambda step: step[0])

    def at(self, time: float) -> float | None:
        """The weight in force at ``time``."""
        return self._in_force(time)[1]

    def step(self, time: float) -> Step | None:
        """Where a planned rollout stands at ``time``; None without a plan or at its end."""
        since, weight = self._in_force(time)
        if not self._plan or weight is None or weight >= self._plan[-1]:
            return None
        following = next(w for w in self._plan if w > weight)
        return Step(weight, following, time - since, weight in self._advanced)

    def steady(self, time: float) -> float | None:
        """The weight in force at ``time`` if it never changed before, else None.

        Counts since the start then all had it: what the sample-ratio check compares with.
        """
        changed = any(at <= time for at, _ in self._steps[1:])
        return None if changed else self._steps[0][1]

    def advanced(self, time: float) -> None:
        """The step in force at ``time`` was told to advance."""
        weight = self.at(time)
        if weight is not None:
            self._advanced.add(weight)

    def _in_force(self, time: float) -> tuple[float, float | None]:
        current = self._steps[0]
        for step in self._steps:
            if step[0] > time:
                break
            current = step
        return current


def _analyzers(profile: Profile) -> dict[str, Analyzer]:
    """A fresh analyzer per metric of the profile, by its kind."""
    return {spec.name: analyzer_for(spec) for spec in profile.metrics}


class Schedule:
    """When judgements fall due: every ``interval`` of event time from the start.

    Judgement ``k`` (1-based, counted from the start) falls due at ``start + k x interval``
    and the last one at ``start + length``. A restart (a blue-green switch) counts the
    durations from a new start while the judgements go on numbering.
    """

    __slots__ = ("_first", "interval", "length", "look", "start")

    def __init__(self, start: float, interval: float, length: float) -> None:
        self.start = start
        self.interval = interval
        self.length = length
        self.look = 1
        """The number of the next judgement."""
        self._first = 1

    @property
    def end(self) -> float:
        """Event time of the last judgement."""
        return self.start + self.length

    def due(self, look: int) -> float:
        """Event time judgement ``look`` falls due."""
        return min(self.start + (look - self._first + 1) * self.interval, self.end)

    def is_last(self, look: int) -> bool:
        """Is judgement ``look`` the last one?"""
        return self.due(look) >= self.end

    def next_due(self, watermark: float) -> float:
        """Event time the first judgement after ``watermark`` falls due (inf: none left)."""
        look = self.look
        while watermark > self.due(look):
            if self.is_last(look):
                return math.inf
            look += 1
        return self.due(look)

    def restart(self, at: float) -> None:
        """Count durations from ``at`` on; the next judgement keeps its number."""
        self.start = at
        self._first = self.look


class Deployment:
    """The analysis of one deployment, from ``started`` to its final verdict."""

    def __init__(
        self,
        started: DeployEvent,
        profile: Profile,
        *,
        profile_name: str = "default",
        limits: AnalysisLimits | None = None,
    ) -> None:
        self.deployment_id = started.deployment_id
        self.service = started.service
        self.strategy = started.strategy
        self.profile_name = profile_name
        self.profile = profile
        self.digest = profile.digest()
        self.schedule = Schedule(started.time, profile.interval, profile.max_duration)
        self.baseline_version = started.baseline_version
        self.canary_version = started.canary_version
        self.flag = _flag_of(started)
        self.status: Status = "open"
        self.watermark = started.time
        self.ends_at: float | None = None
        self.end_reason: str | None = None
        self._weights = Rollout(started.time, started.traffic_weight, started.steps)
        self.last_verdict: Verdict | None = None
        self._analyzers = _analyzers(profile)
        self._limits = limits or AnalysisLimits()
        self.baseline_weight = started.baseline_weight
        self.phase = started.phase
        self.past = _past_of(started, profile)
        """Set when the baseline is the service's own past (a reference, a switch)."""
        spread = None if self.past is None else profile.interval
        self._data = Observations(started.deployment_id, self._limits, spread)
        self.same_hours = _same_hours_of(self.past, profile)
        """The same hours days earlier, when the profile's reference asks for them."""
        self._held: list[tuple[MetricEvent | None, Cohort, float]] = []  # while reading the past
        self.preview = _preview_of(started, profile, self._limits)  # blue-green, until switched

    @property
    def awaiting_past(self) -> bool:
        """The same hours days earlier are being read: nothing is judged until they are."""
        return self.same_hours is not None and not self.same_hours.loaded

    @property
    def is_open(self) -> bool:
        """True until a final verdict or a ``completed`` / ``aborted`` event."""
        return self.status == "open"

    @property
    def started(self) -> float:
        """Event time durations count from: ``started``, or the blue-green switch."""
        return self.schedule.start

    @property
    def end_time(self) -> float:
        """Event time of the last judgement (``started + max_duration``)."""
        return self.schedule.end

    @property
    def limits_hit(self) -> list[str]:
        """Caps reached since last looked (``"<limit>: <metric> <cohort>"``); owner clears."""
        return self._data.limits_hit

    def cohort_of(self, event: MetricEvent) -> Cohort | None:
        """The event's cohort: its ``cohort``, its ``version``, or (past baseline) its time."""
        if self.past is not None:
            return self.past.cohort_of(event)
        if event.cohort is not None:
            return event.cohort
        if event.version == self.canary_version:
            return "canary"
        if event.version == self.baseline_version:
            return "baseline"
        return None

    def next_due(self, after: float = -math.inf) -> float:
        """Event time past which the next judgement falls due (inf: none left).

        ``after``: the latest time of events not observed yet; the judgements they make due
        are theirs. Cheap and without effect: the router takes events that make a verdict
        first.
        """
        if not self.is_open:
            return math.inf
        return self.schedule.next_due(max(self.watermark, after))

    def is_critical_burn(self, event: MetricEvent) -> bool:
        """Does this canary event call for judging first? Its analyzer says; no effect."""
        analyzer = self._analyzers.get(event.metric)
        return (
            analyzer is not None
            and analyzer.urgent(event.good, event.total)
            and self.cohort_of(event) == "canary"
        )

    def observe(self, event: MetricEvent, cohort: Cohort) -> list[Verdict]:
        """Take one metric event; return the verdicts it made due, in order."""
        if self.awaiting_past:
            self._held.append((event, cohort, event.time))
            return []
        verdicts = self.advance(event.time)
        if self.status != "open" or event.metric not in self._analyzers:
            return verdicts
        if self.awaiting_past:  # a switch reached: its same hours are being read
            self._held.append((event, cohort, event.time))
            return verdicts
        if self.preview is not None and cohort == "baseline":
            self.preview.recent.add(event, None, 0)
        if self._store(event, cohort) and (self.ends_at is None or event.time <= self.ends_at):
            verdict = self._check_critical(event.metric, max(event.time, self.started))
            if verdict is not None:
                verdicts.append(verdict)
        return verdicts

    def take_past(self, events: Iterable[MetricEvent]) -> list[Verdict]:
        """The same hours days earlier, read: judge what waited for them, in order."""
        if self.same_hours is None or self.same_hours.loaded:
            return []
        self.same_hours.load(events)
        held, self._held = self._held, []
        verdicts: list[Verdict] = []
        for event, cohort, time in held:
            verdicts += self.advance(time) if event is None else self.observe(event, cohort)
        return verdicts

    def advance(self, time: float) -> list[Verdict]:
        """Move event time to ``time``; return the judgements that fell due."""
        if self.awaiting_past:
            self._held.append((None, "baseline", time))
            return []
        switch_at = None if self.preview is None else self.preview.switch_at
        if time <= self.watermark and switch_at is None:
            return []  # judged up to the watermark already; an end read since closed it
        verdicts: list[Verdict] = []
        if switch_at is not None and time >= switch_at and self.preview is not None:
            self.preview.switch_at = None
            verdicts = self.advance(switch_at)  # the preview's judgements first
            if self.is_open:
                self._switch(switch_at)
            if self.awaiting_past:  # the switch's same hours are read first
                return verdicts + self.advance(time)
        self.watermark = max(self.watermark, time)
        schedule = self.schedule
        while self.is_open and self.watermark > (due := schedule.due(schedule.look)):
            if self.ends_at is not None and due > self.ends_at:
                break
            verdicts.append(self._judge(schedule.look, due))
            schedule.look += 1
        # At ends_at itself it closes too, whether `completed` was read before or after the
        # metrics of its own time: end() closes there as well.
        if self.is_open and self.ends_at is not None and self.watermark >= self.ends_at:
            self._close("ended")
        return verdicts

    def step(self, event: DeployEvent) -> None:
        """A traffic change (or blue-green switch) taking effect at its event time."""
        if event.phase == "switched" and self.preview is not None:
            self.preview.announce(event)
            return
        if event.traffic_weight is not None:
            self._weights.add(event.time, event.traffic_weight)
        if event.phase is not None:
            self.phase = event.phase

    def _switch(self, at: float) -> None:
        """Green takes all traffic: judge it afresh against blue's reference window.

        Durations count from the switch; judgements go on numbering.
        """
        preview, self.preview, self.phase = self.preview, None, "switched"
        assert preview is not None  # noqa: S101 - step() checks
        versions = (self.baseline_version, self.canary_version)
        self.past, blue = preview.reference(at, versions, _reference_days(self.profile))
        self.same_hours = _same_hours_of(self.past, self.profile)
        self.schedule.restart(at)
        self._weights = Rollout(at, preview.weight)
        self._data = Observations(self.deployment_id, self._limits, self.profile.interval)
        self._analyzers = _analyzers(self.profile)
        for event in blue:
            self._data.add(event, "baseline")

    def end(self, event: DeployEvent) -> None:
        """The pipeline completed or aborted the deployment: nothing is judged after its time."""
        if self.ends_at is None or event.time < self.ends_at:
            self.ends_at = event.time
            self.end_reason = event.event
        if self.is_open and self.watermark >= self.ends_at:
            self._close("ended")

    def expire(self) -> Verdict | None:
        """Close a silent deployment: a final ``inconclusive`` (none if the pipeline ended it)."""
        if self.ends_at is not None:
            self._close("ended")
            return None
        results = self._analyze_all(self.watermark)
        silent = (
            "inconclusive: no events for max_duration "
            f"({self.profile.max_duration:g}s of wall time) since the last one"
        )
        return self._verdict(
            self.schedule.look,
            self.watermark,
            results,
            Judgement("inconclusive", True, None, silent),
        )

    def metric_sizes(self) -> dict[str, tuple[int, int]]:
        """Observations seen per metric, (baseline, canary)."""
        return self._data.sizes()

    def weight_at(self, time: float) -> float | None:
        """The announced traffic weight in force at event time ``time``."""
        return self._weights.at(time)

    def _look_at(self, time: float) -> Look:
        """What the analyzers judge at event time ``time``: alpha and the canary's window."""
        weight = self.weight_at(time)
        window = BurnWindow(
            now=time,
            duration=self.profile.max_duration,
            elapsed=max(0.0, time - self.started),
            canary_share=None if weight is None else weight / 100.0,
            period=self.profile.slo_period,
        )
        past, drift = self.past is not None, self._data.drift()
        return Look(alpha=self.profile.metric_alpha, window=window, past=past, drift=drift)

    def _store(self, event: MetricEvent, cohort: Cohort) -> bool:
        """Keep an event of a profile metric; True when its analyzer says it may decide."""
        stored = self._data.add(event, cohort)
        analyzer = self._analyzers[event.metric]
        return analyzer.observe(event.time, cohort == "canary", event.good, event.total, stored)

    def _reveal(self, time: float) -> None:
        """Let the same hours days earlier into the baseline, up to event time ``time``."""
        if self.same_hours is not None:
            for event in self.same_hours.due(time):
                if event.metric in self._analyzers:
                    self._store(event, "baseline")

    def _analyze_all(self, time: float) -> tuple[MetricResult, ...]:
        self._reveal(time)
        look = self._look_at(time)
        return tuple(
            self._analyzers[spec.name].analyze(*self._data.cohorts(spec.name), look)
            for spec in self.profile.metrics
        )

    def _check_critical(self, name: str, time: float) -> Verdict | None:
        """A rollback verdict if the critical metric ``name`` fails now and the judge agrees."""
        analyzer = self._analyzers[name]
        self._reveal(time)
        if not analyzer.fails(*self._data.cohorts(name), self._look_at(time)):
            return None
        results = self._analyze_all(time)
        elapsed = time - self.started
        judgement = judge(
            self.profile, results, elapsed=elapsed, at_end=self.schedule.is_last(self.schedule.look)
        )
        if judgement.decision != "rollback":  # failing within its critical_change: wait
            return None
        return self._verdict(self.schedule.look, time, results, judgement)

    def _judge(self, look: int, time: float) -> Verdict:
        results = self._analyze_all(time)
        at_end = self.schedule.is_last(look)
        step, elapsed = self._weights.step(time), time - self.started
        judgement = judge(self.profile, results, elapsed=elapsed, at_end=at_end, step=step)
        if judgement.decision == "advance":
            self._weights.advanced(time)
        if self.preview is not None and judgement.decision == "promote":
            why = f"{judgement.summary}; a preview waits for the switch"
            judgement = Judgement("continue", False, judgement.score, why)
        return self._verdict(look, time, results, judgement)

    def _verdict(
        self, look: int, time: float, results: tuple[MetricResult, ...], judgement: Judgement
    ) -> Verdict:
        if self.past is not None:
            checks = {"reference": self.past.describe(time)}
        else:
            split = self._data.split()
            steady = self._weights.steady(time)
            checks = _split_check(steady, self.baseline_weight, split, self.profile)
        verdict = _compose(self, look, time, results, judgement, checks)
        self.last_verdict = verdict
        if verdict.final:
            self._close("final")
        return verdict

    def _close(self, status: Status) -> None:
        """Stop the analysis: drop the data and, with fresh analyzers, the evidence."""
        self.status = status
        self._data.clear()
        self._analyzers = _analyzers(self.profile)


def _compose(
    deployment: Deployment,
    look: int,
    time: float,
    results: tuple[MetricResult, ...],
    judgement: Judgement,
    checks: dict[str, dict[str, DetailValue]],
) -> Verdict:
    """Judgement ``look`` of ``deployment`` at event time ``time``, as published."""
    summary = judgement.summary
    mismatch = checks.get("sample_ratio", {})
    if mismatch.get("mismatch"):
        summary += (
            f"; sample-ratio mismatch: canary has {mismatch['observed_share']:.1%} of the"
            f" traffic, {mismatch['expected_share']:.1%} announced"
        )
    score = judgement.score
    return Verdict(
        verdict_id=f"{deployment.deployment_id}/{look}",
        deployment_id=deployment.deployment_id,
        service=deployment.service,
        decision=judgement.decision,
        final=judgement.final,
        score=None if score is None or math.isnan(score) else score,
        summary=summary,
        metrics=results,
        window=Window(deployment.started, time),
        time=time,
        config_digest=deployment.digest,
        checks=checks,
        profile=deployment.profile_name,
        strategy=deployment.strategy,
        traffic_weight=deployment.weight_at(time),
        flag=deployment.flag,
    )


def _flag_of(started: DeployEvent) -> FlagRollout | None:
    """The flag a ``feature_flag`` deployment rolls out: its variations are the versions."""
    control, treatment = started.baseline_version, started.canary_version
    if started.flag is None or control is None or treatment is None:
        return None
    return FlagRollout(started.flag, control, treatment)


def _past_of(started: DeployEvent, profile: Profile) -> PastBaseline | None:
    """The baseline from the past of a migration phase or an already switched blue-green."""
    switched = started.strategy == "blue_green" and started.phase == "switched"
    if started.strategy != "migration" and not switched:
        return None
    if profile.reference is None and not switched:
        return None
    return PastBaseline(
        started.time,
        _reference_length(profile),
        started.baseline_version,
        started.canary_version,
        _reference_days(profile),
    )


def _preview_of(started: DeployEvent, profile: Profile, limits: AnalysisLimits) -> Preview | None:
    """A blue-green preview keeps blue's recent events for the reference of its switch."""
    if started.strategy != "blue_green" or started.phase == "switched":
        return None
    span = _reference_length(profile)
    return Preview(span, limits.max_history_events, started.time, started.baseline_version)


def _same_hours_of(past: PastBaseline | None, profile: Profile) -> SameHours | None:
    """The same hours days earlier of a past baseline whose profile asks for them."""
    if past is None or not past.days:
        return None
    return SameHours(past, profile.max_duration)


def _reference_length(profile: Profile) -> float:
    """The window just before the change (the blue-green default without a reference)."""
    reference = profile.reference
    return DEFAULT_REFERENCE if reference is None else reference.window_before


def _reference_days(profile: Profile) -> tuple[int, ...]:
    return () if profile.reference is None else profile.reference.days


def _split_check(
    canary_weight: float | None,
    baseline_weight: float | None,
    observed: tuple[int, int] | None,
    profile: Profile,
) -> dict[str, dict[str, DetailValue]]:
    """The sample-ratio check of the announced split against the counts ``observed``."""
    if canary_weight is None or observed is None:
        return {}
    if baseline_weight is None:
        baseline_weight = 100.0 - canary_weight
    if canary_weight + baseline_weight <= 0:
        return {}
    expected = canary_weight / (canary_weight + baseline_weight)
    return {"sample_ratio": sample_ratio_check(*observed, expected, profile.sample_ratio_alpha)}
