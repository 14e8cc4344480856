"""One deployment's analysis: a deterministic state machine driven by event time.

It is fed deploy and metric events and told nothing else: no clock, no socket. Event time
is driven by the metric events alone; judgements fall due when it passes
``started + k x interval``, and the k-th judgement gets the ``verdict_id``
``<deployment_id>/<k>``. Deploy events take effect at their own event time, whenever they
are read: a ``step`` changes the traffic weight reported from its time on, and ``completed``
/ ``aborted`` stop the analysis at their time (judgements due later are not made). So the
verdicts do not depend on how the deployments and metrics topics interleave, and a recorded
stream replays to the same verdicts.

Critical metrics are also checked as their data arrives (every message of a ratio metric;
a distribution metric each time its canary samples grow by a tenth), so a critical failure
rolls back on the message that decided it rather than at the next interval.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from coalmine.analyzers.burn_rate import (
    BurnWindow,
    RatioEvidence,
    analyze_ratio,
    error_budget,
    ratio_fails,
)
from coalmine.analyzers.instances import InstanceEvidence, InstanceMeans, analyze_instances
from coalmine.analyzers.mann_whitney import analyze_distribution
from coalmine.analyzers.sample_ratio import sample_ratio_check
from coalmine.analyzers.sequential import DistributionEvidence
from coalmine.contract import Cohort, DeployEvent, MetricEvent, Verdict, Window
from coalmine.daemon.samples import EventCounts, InstanceTally, SampleReservoir
from coalmine.judge import Judgement, judge

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.analyzers.result import DetailValue, MetricResult
    from coalmine.config.models import MetricSpec, Profile

Status = Literal["open", "final", "ended"]
_T = TypeVar("_T")

_CRITICAL_GROWTH = 1.1
"""A critical distribution metric is re-checked when its canary samples grow by 10%."""


@dataclass(frozen=True, slots=True)
class AnalysisLimits:
    """Per-deployment caps (from ``[limits]``)."""

    max_samples_per_cohort: int = 200_000
    max_instances_per_cohort: int = 1_000


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
        self.started = started.time
        self.baseline_version = started.baseline_version
        self.canary_version = started.canary_version
        self.status: Status = "open"
        self.watermark = started.time
        self.ends_at: float | None = None
        self.end_reason: str | None = None
        self._steps: list[tuple[float, float | None]] = [(started.time, started.traffic_weight)]
        self.last_verdict: Verdict | None = None
        self._limits = limits or AnalysisLimits()
        self._look = 1
        self._burn_levels = {
            spec.name: min(spec.slow_burn, spec.fast_burn) * error_budget(spec)
            for spec in profile.metrics
            if spec.critical and spec.kind == "ratio"
        }
        self._samples: dict[str, tuple[SampleReservoir, SampleReservoir]] = {}
        self._counts: dict[str, tuple[EventCounts, EventCounts]] = {}
        self._instances: dict[str, tuple[InstanceTally, InstanceTally]] = {}
        self._distribution: dict[str, DistributionEvidence] = {}
        self._staged: dict[str, InstanceEvidence] = {}
        self._ratio: dict[str, RatioEvidence] = {}
        self._checked_at: dict[str, int] = {}
        self.limits_hit: list[str] = []
        """Caps reached since the owner last looked: ``"<limit>: <metric> <cohort>"``."""
        self.baseline_weight = started.baseline_weight

    @property
    def is_open(self) -> bool:
        """True until a final verdict or a ``completed`` / ``aborted`` event."""
        return self.status == "open"

    @property
    def end_time(self) -> float:
        """Event time of the last judgement (``started + max_duration``)."""
        return self.started + self.profile.max_duration

    def cohort_of(self, event: MetricEvent) -> Cohort | None:
        """The event's cohort: its ``cohort`` field, or its ``version`` matched to ours."""
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
        look, watermark = self._look, max(self.watermark, after)
        while watermark > self._due(look):
            if self._last_look(look):
                return math.inf
            look += 1
        return self._due(look)

    def is_critical_burn(self, event: MetricEvent) -> bool:
        """Does a canary event of a critical ratio metric burn its budget fast on its own?

        At the slow-burn rate or faster, on its own counts. Every canary event with bad
        events is checked between judgements; the router takes these first. At 0.1% errors
        out of a 99.9% objective almost every canary message brings a bad event, and a
        priority for all would be a priority for none.
        """
        level = self._burn_levels.get(event.metric)
        return (
            level is not None
            and event.total - event.good > event.total * level
            and self.cohort_of(event) == "canary"
        )

    def observe(self, event: MetricEvent, cohort: Cohort) -> list[Verdict]:
        """Take one metric event; return the verdicts it made due, in order."""
        verdicts = self.advance(event.time)
        spec = self.profile.metric(event.metric)
        if not self.is_open or spec is None:
            return verdicts
        index = 1 if cohort == "canary" else 0
        bad = 0
        if spec.kind == "ratio":
            self._counts_for(spec.name)[index].add(event.good, event.total)
            bad = event.total - event.good
            evidence = self._ratio_evidence(spec)
            if index:
                evidence.observe(event.time, bad, event.total, 0, 0)
            else:
                evidence.observe(event.time, 0, 0, bad, event.total)
        else:
            reservoir = self._samples_for(spec.name)[index]
            was_reduced = reservoir.reduced
            reservoir.extend(event.values)
            if reservoir.reduced and not was_reduced:
                self.limits_hit.append(f"max_samples_per_cohort: {spec.name} {cohort}")
            if event.instance is not None:
                tally = self._instances_for(spec.name)[index]
                refused = tally.refused
                tally.add(event.instance, event.values)
                if tally.refused and not refused:
                    self.limits_hit.append(f"max_instances_per_cohort: {spec.name} {cohort}")
        if spec.critical and index == 1 and self._critical_due(spec, bad):
            if self.ends_at is not None and event.time > self.ends_at:
                return verdicts
            verdict = self._check_critical(spec, max(event.time, self.started))
            if verdict is not None:
                verdicts.append(verdict)
        return verdicts

    def advance(self, time: float) -> list[Verdict]:
        """Move event time to ``time``; return the judgements that fell due."""
        verdicts: list[Verdict] = []
        self.watermark = max(self.watermark, time)
        while self.is_open and self.watermark > self._due(self._look):
            due = self._due(self._look)
            if self.ends_at is not None and due > self.ends_at:
                break
            verdicts.append(self._judge(self._look, due))
            self._look += 1
        # At ends_at itself it closes too, whether `completed` was read before or after the
        # metrics of its own time: end() closes there as well.
        if self.is_open and self.ends_at is not None and self.watermark >= self.ends_at:
            self._close("ended")
        return verdicts

    def step(self, event: DeployEvent) -> None:
        """Record a traffic change at its event time; analysis goes on."""
        self._steps.append((event.time, event.traffic_weight))
        self._steps.sort(key=lambda step: step[0])

    def end(self, event: DeployEvent) -> None:
        """The pipeline completed or aborted the deployment: nothing is judged after its time."""
        if self.ends_at is None or event.time < self.ends_at:
            self.ends_at = event.time
            self.end_reason = event.event
        if self.is_open and self.watermark >= self.ends_at:
            self._close("ended")

    def expire(self) -> Verdict | None:
        """Close a deployment that went silent: a final ``inconclusive`` verdict.

        A deployment the pipeline already ended closes without one.
        """
        if self.ends_at is not None:
            self._close("ended")
            return None
        results = self._analyze_all(self.watermark)
        silent = (
            "inconclusive: no events for max_duration "
            f"({self.profile.max_duration:g}s of wall time) since the last one"
        )
        return self._verdict(
            self._look, self.watermark, results, Judgement("inconclusive", True, None, silent)
        )

    def metric_sizes(self) -> dict[str, tuple[int, int]]:
        """Observations seen per metric, (baseline, canary)."""
        sizes = {name: (pair[0].seen, pair[1].seen) for name, pair in self._samples.items()}
        sizes.update({name: (pair[0].total, pair[1].total) for name, pair in self._counts.items()})
        return sizes

    def weight_at(self, time: float) -> float | None:
        """The announced traffic weight in force at event time ``time``."""
        weight = self._steps[0][1]
        for at, value in self._steps:
            if at > time:
                break
            weight = value
        return weight

    def _due(self, look: int) -> float:
        return min(self.started + look * self.profile.interval, self.end_time)

    def _last_look(self, look: int) -> bool:
        return self._due(look) >= self.end_time

    def _samples_for(self, name: str) -> tuple[SampleReservoir, SampleReservoir]:
        pair = self._samples.get(name)
        if pair is None:
            cap = self._limits.max_samples_per_cohort
            seed = zlib.crc32(f"{self.deployment_id}\0{name}".encode())
            pair = (SampleReservoir(cap, seed), SampleReservoir(cap, seed + 1))
            self._samples[name] = pair
        return pair

    def _counts_for(self, name: str) -> tuple[EventCounts, EventCounts]:
        pair = self._counts.get(name)
        if pair is None:
            pair = (EventCounts(), EventCounts())
            self._counts[name] = pair
        return pair

    def _critical_due(self, spec: MetricSpec, bad: int) -> bool:
        """Is a canary event of a critical metric worth a check between judgements?

        A ratio metric: when the event brings bad events. One with none cannot raise the
        evidence (the rate-ratio e-process and the burn-rate guard rise only with canary
        bad events), so only the e-process's batch is closed, as a check would, to keep
        its batches what they were; the interval judgements see everything. A distribution
        metric: when its canary samples grew by a tenth since the last check.
        """
        if spec.kind == "ratio":
            if bad > 0:
                return True
            if spec.test == "sequential":
                self._ratio_evidence(spec).rate.update()
            return False
        seen = len(self._samples_for(spec.name)[1])
        if seen < spec.min_samples or seen < self._checked_at.get(spec.name, 0) * _CRITICAL_GROWTH:
            return False
        self._checked_at[spec.name] = seen
        return True

    def _instances_for(self, name: str) -> tuple[InstanceTally, InstanceTally]:
        pair = self._instances.get(name)
        if pair is None:
            cap = self._limits.max_instances_per_cohort
            pair = (InstanceTally(cap), InstanceTally(cap))
            self._instances[name] = pair
        return pair

    def _ratio_evidence(self, spec: MetricSpec) -> RatioEvidence:
        evidence = self._ratio.get(spec.name)
        if evidence is None:
            evidence = self._ratio[spec.name] = RatioEvidence.for_spec(spec)
        return evidence

    def _analyze(self, spec: MetricSpec, time: float) -> MetricResult:
        alpha = self.profile.metric_alpha
        if spec.kind == "ratio":
            return self._on_ratio(analyze_ratio, spec, time)
        if self._by_instance(spec):
            base_i, canary_i = (
                InstanceMeans(*t.means(), names=t.names) for t in self._instances_for(spec.name)
            )
            staged = self._staged.get(spec.name)
            if staged is None:
                staged = self._staged[spec.name] = InstanceEvidence()
            return analyze_instances(spec, base_i, canary_i, alpha, evidence=staged)
        base_s, canary_s = self._samples_for(spec.name)
        evidence = self._distribution.get(spec.name)
        if evidence is None:
            evidence = DistributionEvidence.for_spec(spec.prior_width, spec.tail_quantiles)
            self._distribution[spec.name] = evidence
        return analyze_distribution(
            spec, base_s.values(), canary_s.values(), alpha, evidence=evidence
        )

    def _on_ratio(self, analyzer: Callable[..., _T], spec: MetricSpec, time: float) -> _T:
        """``analyzer`` (:func:`analyze_ratio` or :func:`ratio_fails`) on a ratio metric."""
        base, canary = self._counts_for(spec.name)
        weight = self.weight_at(time)
        window = BurnWindow(
            now=time,
            duration=self.profile.max_duration,
            elapsed=max(0.0, time - self.started),
            canary_share=None if weight is None else weight / 100.0,
            period=self.profile.slo_period,
        )
        return analyzer(
            spec,
            base.good,
            base.total,
            canary.good,
            canary.total,
            self.profile.metric_alpha,
            evidence=self._ratio_evidence(spec),
            window=window,
        )

    def _fails(self, spec: MetricSpec, time: float) -> bool:
        """Does ``spec`` fail now? A ratio metric is answered without the verdict's detail."""
        if spec.kind == "ratio":
            return self._on_ratio(ratio_fails, spec, time)
        return self._analyze(spec, time).outcome == "fail"

    def _by_instance(self, spec: MetricSpec) -> bool:
        """Judge per instance: asked for, or (``auto``) when the events name instances."""
        if spec.unit == "request":
            return False
        if spec.unit == "instance":
            return True
        tallies = self._instances.get(spec.name)
        return tallies is not None and len(tallies[0]) >= 2 and len(tallies[1]) >= 1

    def _analyze_all(self, time: float) -> tuple[MetricResult, ...]:
        return tuple(self._analyze(spec, time) for spec in self.profile.metrics)

    def _checks(self, time: float) -> dict[str, dict[str, DetailValue]]:
        """Deployment-level checks reported with every verdict (sample-ratio mismatch)."""
        canary_weight = self.weight_at(time)
        if canary_weight is None or not (self._counts or self._samples):
            return {}
        baseline_weight = self.baseline_weight
        if baseline_weight is None:
            baseline_weight = 100.0 - canary_weight
        if canary_weight + baseline_weight <= 0:
            return {}
        # A split is judged only once both cohorts have reported: a canary's counts not
        # read yet (later in the same message, or the next one) are not a 0% share.
        if self._counts:
            base, canary = next(iter(self._counts.values()))
            if not (base.reports and canary.reports):
                return {}
            observed = (canary.total, base.total)
        else:
            base_s, canary_s = next(iter(self._samples.values()))
            if not (base_s.seen and canary_s.seen):
                return {}
            observed = (canary_s.seen, base_s.seen)
        expected = canary_weight / (canary_weight + baseline_weight)
        check = sample_ratio_check(*observed, expected, self.profile.sample_ratio_alpha)
        return {"sample_ratio": check}

    def _check_critical(self, spec: MetricSpec, time: float) -> Verdict | None:
        if not self._fails(spec, time):
            return None
        results = self._analyze_all(time)
        elapsed = time - self.started
        judgement = judge(
            self.profile, results, elapsed=elapsed, at_end=self._last_look(self._look)
        )
        if judgement.decision != "rollback":  # failing within its critical_change: wait
            return None
        return self._verdict(self._look, time, results, judgement)

    def _judge(self, look: int, time: float) -> Verdict:
        results = self._analyze_all(time)
        at_end = self._last_look(look)
        judgement = judge(self.profile, results, elapsed=time - self.started, at_end=at_end)
        return self._verdict(look, time, results, judgement)

    def _verdict(
        self, look: int, time: float, results: tuple[MetricResult, ...], judgement: Judgement
    ) -> Verdict:
        checks = self._checks(time)
        summary = judgement.summary
        mismatch = checks.get("sample_ratio", {})
        if mismatch.get("mismatch"):
            summary += (
                f"; sample-ratio mismatch: canary has {mismatch['observed_share']:.1%} of the"
                f" traffic, {mismatch['expected_share']:.1%} announced"
            )
        verdict = Verdict(
            verdict_id=f"{self.deployment_id}/{look}",
            deployment_id=self.deployment_id,
            service=self.service,
            decision=judgement.decision,
            final=judgement.final,
            score=None
            if judgement.score is None or math.isnan(judgement.score)
            else judgement.score,
            summary=summary,
            metrics=results,
            window=Window(self.started, time),
            time=time,
            config_digest=self.digest,
            checks=checks,
            profile=self.profile_name,
            strategy=self.strategy,
            traffic_weight=self.weight_at(time),
        )
        self.last_verdict = verdict
        if verdict.final:
            self._close("final")
        return verdict

    def _close(self, status: Status) -> None:
        self.status = status
        self._samples.clear()
        self._counts.clear()
        self._instances.clear()
        self._distribution.clear()
        self._staged.clear()
        self._ratio.clear()
