"""Runs: simulate a canary, judge it with coalmine and the reference judges.

coalmine is driven through its real code path: a ``Deployment`` built from a ``started``
deploy event and the profile, fed every ``MetricEvent`` in event-time order through
``observe``, until its first final verdict (or the final look at ``max_duration``). Before
each ``observe`` the harness calls ``advance`` to the event's time itself (``observe``
starts with the same call, which then finds nothing due), so that the wall time of the
scheduled judgements can be measured apart from ingestion.

The profile is the harness's (``build_profile``) with the command line's ``--set``
overrides, then the scenario's own. The same traffic goes to the Kayenta-style and
Flagger-style judges and, in the error scenarios, to the oracle SPRT.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from coalmine.config.models import MetricSpec, Profile
from coalmine.contract import DeployEvent, MetricEvent
from coalmine.daemon.deployment import Deployment
from support.quality.baselines import (
    FlaggerConfig,
    KayentaConfig,
    Outcome,
    flagger_judge,
    kayenta_judge,
    oracle_sprt,
)
from support.quality.simulator import SCENARIOS, START, SimulatedRun, Traffic, simulate

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coalmine.contract import Verdict

LATENCY = "latency_ms"
ERRORS = "errors"

PROFILE: dict[str, Any] = {"interval": 60, "min_duration": 600, "max_duration": 3600}
METRICS: dict[str, dict[str, Any]] = {
    LATENCY: {"kind": "distribution", "direction": "increase", "allowed_change": 0.10},
    ERRORS: {"kind": "ratio", "objective": 0.999, "critical": True},
}


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON if it parses (numbers, true/false, null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_profile(overrides: Sequence[str] = ()) -> Profile:
    """The harness's profile, with ``key=value`` overrides.

    ``interval=2m`` or ``profile.alpha=0.05`` set a profile field; ``latency_ms.test=fixed``
    or ``errors.unit=request`` set a field of one metric. Unknown fields are rejected by
    the configuration models, so a typo (or an option this coalmine lacks) fails loudly.
    """
    profile = dict(PROFILE)
    metrics = {name: dict(spec) for name, spec in METRICS.items()}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        scope, dot, name = key.strip().rpartition(".")
        value = parse_value(raw.strip())
        if not dot or scope == "profile":
            profile[name] = value
        elif scope in metrics:
            metrics[scope][name] = value
        else:
            known = ", ".join(["profile", *metrics])
            raise ValueError(f"--set {item!r}: {scope!r} is not one of {known}")
    specs = tuple(MetricSpec(name=name, **spec) for name, spec in metrics.items())
    return Profile(**profile, metrics=specs)


@functools.lru_cache(maxsize=32)
def _profile(overrides: tuple[str, ...]) -> Profile:
    return build_profile(overrides)


@dataclass(frozen=True, slots=True)
class Options:
    """Everything a run needs besides its scenario and index (sent to the workers)."""

    seed: int = 0
    overrides: tuple[str, ...] = ()
    traffic: Traffic = field(default_factory=Traffic)
    kayenta_lifetime: float | None = None
    kayenta_latency: str = "requests"
    kayenta_tolerance: float = 0.25
    flagger_relative_p99: float | None = None
    flagger_max_p99_ms: float = 500.0

    def profile(self, extra: tuple[str, ...] = ()) -> Profile:
        """The coalmine profile: ``overrides``, then ``extra`` (a scenario's overrides).

        Built once per process and combination of overrides.
        """
        return _profile((*self.overrides, *extra))

    def kayenta(self, extra: tuple[str, ...] = ()) -> KayentaConfig:
        """Kayenta-style settings: the profile's interval; lifetime ``max_duration``."""
        profile = self.profile(extra)
        lifetime = self.kayenta_lifetime or profile.max_duration
        return KayentaConfig(
            lifetime=lifetime,
            interval=profile.interval,
            latency="minutes" if self.kayenta_latency == "minutes" else "requests",
            tolerance=self.kayenta_tolerance,
        )

    def flagger(self, extra: tuple[str, ...] = ()) -> FlaggerConfig:
        """Flagger-style settings: the profile's interval; promotion at ``min_duration``."""
        profile = self.profile(extra)
        return FlaggerConfig(
            promote_after=max(profile.min_duration, profile.interval),
            interval=profile.interval,
            max_p99_ms=self.flagger_max_p99_ms,
            relative_p99=self.flagger_relative_p99,
        )

    def horizon(self, extra: tuple[str, ...] = ()) -> float:
        """Event time to simulate: as long as the longest judge may need, whole minutes."""
        profile = self.profile(extra)
        longest = max(profile.max_duration, self.kayenta(extra).lifetime, profile.min_duration)
        return 60.0 * math.ceil(longest / 60.0)


@dataclass(frozen=True, slots=True)
class CoalmineOutcome:
    """coalmine's first final verdict on a run, and what judging cost.

    ``named``: a failing metric's detail names an instance (key ``"instance"``).
    """

    decision: str
    time: float
    failed: tuple[str, ...]
    summary: str
    looks: int
    look_ms: tuple[float, ...]
    observe_ms: float
    messages: int
    named: bool = False


@dataclass(frozen=True, slots=True)
class RunResult:
    """Every judge's outcome on one simulated run (``oracle``: error scenarios only)."""

    scenario: str
    index: int
    coalmine: CoalmineOutcome
    kayenta: Outcome
    kayenta_any: Outcome
    flagger: Outcome
    oracle: Outcome | None = None


def judge_with_coalmine(run: SimulatedRun, profile: Profile, deployment_id: str) -> CoalmineOutcome:
    """Feed a run's messages to a real ``Deployment`` until its first final verdict."""
    started = DeployEvent(
        event="started",
        deployment_id=deployment_id,
        service="svc",
        time=START,
        baseline_version="v1",
        canary_version="v2",
        traffic_weight=run.scenario.announced_weight,
    )
    deployment = Deployment(started, profile)
    look_ms: list[float] = []
    observe_s = 0.0
    messages = 0
    final: Verdict | None = None
    clock = time.perf_counter
    for message in run.messages(LATENCY, ERRORS):
        t0 = clock()
        verdicts = deployment.advance(message.time)
        t1 = clock()
        if verdicts:
            look_ms.extend([(t1 - t0) * 1e3 / len(verdicts)] * len(verdicts))
            final = next((v for v in verdicts if v.final), None)
            if final is not None:
                break
        if message.values is not None:
            event = MetricEvent(
                service="svc",
                metric=message.metric,
                time=message.time,
                values=message.values,
                cohort=message.cohort,
                instance=message.instance,
            )
        else:
            event = MetricEvent(
                service="svc",
                metric=message.metric,
                time=message.time,
                good=message.good,
                total=message.total,
                is_ratio=True,
                cohort=message.cohort,
                instance=message.instance,
            )
        t0 = clock()
        verdicts = deployment.observe(event, message.cohort)
        observe_s += clock() - t0
        messages += 1
        final = next((v for v in verdicts if v.final), None)
        if final is not None:
            break
    if final is None:  # the last judgement falls due with the first event past the end
        t0 = clock()
        verdicts = deployment.advance(deployment.end_time + run.step)
        t1 = clock()
        if verdicts:
            look_ms.extend([(t1 - t0) * 1e3 / len(verdicts)] * len(verdicts))
        final = next((v for v in verdicts if v.final), None)
    if final is None:
        return CoalmineOutcome("open", math.nan, (), "", len(look_ms), (), observe_s * 1e3, 0)
    failing = [r for r in final.metrics if r.outcome == "fail"]
    failed = tuple(r.metric for r in failing)
    return CoalmineOutcome(
        decision=final.decision,
        time=final.time - START,
        failed=failed,
        summary=final.summary,
        looks=len(look_ms),
        look_ms=tuple(look_ms),
        observe_ms=observe_s * 1e3,
        messages=messages,
        named=any("instance" in r.detail for r in failing),
    )


def run_one(scenario: str, index: int, options: Options) -> RunResult:
    """Simulate run ``index`` of a scenario (seed ``options.seed + index``) and judge it.

    The Kayenta-style judge runs twice: as configured (its classifier tolerance, 0.25 by
    default) and with tolerance 0, where any significant increase fails. The oracle SPRT
    runs when the scenario changes the error ratio.
    """
    spec = SCENARIOS[scenario]
    extra = spec.overrides
    profile = options.profile(extra)
    run = simulate(spec, options.seed + index, options.horizon(extra), options.traffic)
    coalmine = judge_with_coalmine(run, profile, f"{scenario}/{index}")
    minutes = run.minutes()
    kayenta = options.kayenta(extra)
    return RunResult(
        scenario=scenario,
        index=index,
        coalmine=coalmine,
        kayenta=kayenta_judge(minutes, kayenta),
        kayenta_any=kayenta_judge(minutes, replace(kayenta, tolerance=0.0)),
        flagger=flagger_judge(minutes, options.flagger(extra)),
        oracle=judge_with_oracle(run, profile) if spec.error_factor != 1.0 else None,
    )


def judge_with_oracle(run: SimulatedRun, profile: Profile) -> Outcome:
    """The oracle SPRT on a run: the true error-ratio factor against 1, at ``metric_alpha``."""
    return oracle_sprt(
        run.baseline.total.sum(axis=1),
        run.baseline.bad.sum(axis=1),
        run.canary.total.sum(axis=1),
        run.canary.bad.sum(axis=1),
        ratio=run.scenario.error_factor,
        alpha=profile.metric_alpha,
        step=run.step,
    )


def run_task(task: tuple[str, int, Options]) -> RunResult:
    """``run_one`` taking one tuple, for ``Pool.imap_unordered``."""
    return run_one(*task)


def run_all(
    runs: dict[str, int], options: Options, processes: int, progress: bool = True
) -> dict[str, list[RunResult]]:
    """Every run of every scenario; the order of execution does not change any result."""
    tasks = [(name, i, options) for name, n in runs.items() for i in range(n)]
    # Shuffled (deterministically) so that the early runs are a fair sample of the cost.
    random.Random(0).shuffle(tasks)  # noqa: S311 - a fixed order, not a secret
    results: dict[str, list[RunResult]] = defaultdict(list)
    start = time.perf_counter()
    shown = start
    estimated = False

    def report(done: int) -> None:
        nonlocal shown, estimated
        now = time.perf_counter()
        elapsed = now - start
        if not estimated and (done >= max(20, len(tasks) // 50) or done == len(tasks)):
            total = elapsed * len(tasks) / done
            print(f"estimated total runtime: {duration_text(total)}", file=sys.stderr, flush=True)
            estimated = True
        if now - shown >= 15 or done == len(tasks):
            left = elapsed * (len(tasks) - done) / done
            print(
                f"  {done}/{len(tasks)} runs, {duration_text(elapsed)} elapsed,"
                f" ~{duration_text(left)} left",
                file=sys.stderr,
                flush=True,
            )
            shown = now

    if progress:
        print(
            f"{len(tasks)} runs over {len(runs)} scenarios, {processes} process(es)",
            file=sys.stderr,
            flush=True,
        )
    if processes <= 1:
        for done, task in enumerate(tasks, 1):
            result = run_task(task)
            results[result.scenario].append(result)
            if progress:
                report(done)
    else:
        context = multiprocessing.get_context("fork")
        with context.Pool(processes) as pool:
            for done, result in enumerate(pool.imap_unordered(run_task, tasks, chunksize=4), 1):
                results[result.scenario].append(result)
                if progress:
                    report(done)
    for runs_of in results.values():
        runs_of.sort(key=lambda r: r.index)
    return dict(results)


def duration_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
