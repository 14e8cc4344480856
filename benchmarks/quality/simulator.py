"""Canary traffic at production cadence, generated on event time from a seed.

Every ``step`` (10 s) of event time, per cohort and per instance, one latency message
(the request latencies of that step, lognormal, rounded to whole milliseconds so there
are ties) and one request-count message (good / total). Traffic is Poisson with a daily
swing (a +-50% sinusoid over 24 h with a random phase per run); bad events are binomial.

A scenario says how the canary differs from the baseline: a latency factor on every
request, a factor on the slowest requests only, an error-ratio factor, a regression on
some canary instances, a warm-up period, a traffic split that differs from the announced
weight, and the instances per cohort with their latency spread (each instance's latencies
are multiplied by ``exp(N(0, spread))``, ``spread`` drawn per run from the scenario's range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import NDArray

START = 1_750_000_000.0
"""Event time (Unix seconds) at which every simulated deployment starts."""

_TAIL_Z = {0.1: 1.2815515655446004, 0.05: 1.6448536269514722, 0.01: 2.3263478740408408}


@dataclass(frozen=True, slots=True)
class Traffic:
    """The healthy service both cohorts start from (per cohort, at an even split)."""

    latency_per_minute: float = 50.0
    requests_per_second: float = 20.0
    error_ratio: float = 0.001
    latency_median_ms: float = 100.0
    latency_log_sd: float = 0.5
    daily_swing: float = 0.5
    step: float = 10.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """How one simulated canary differs from its baseline.

    Attributes:
        name: short key used on the command line.
        description: one line for the report.
        regression: True when the canary is worse and should be rolled back.
        latency_factor: multiplies every canary latency.
        tail_factor: multiplies the slowest ``tail_fraction`` of canary requests.
        tail_fraction: which requests ``tail_factor`` applies to (0.1, 0.05 or 0.01).
        error_factor: multiplies the canary's bad-event ratio.
        instances: instances per cohort.
        instance_spread: range of the per-run log-sd of the instance latency factors.
        bad_instances: how many canary instances carry ``bad_instance_factor``.
        bad_instance_factor: multiplies the latencies of the bad canary instances.
        warmup_factor: multiplies canary latencies during its first ``warmup_seconds``.
        warmup_seconds: length of the warm-up.
        announced_weight: the ``traffic_weight`` of the ``started`` event (percent).
        canary_share: the share of the traffic the canary actually gets.
    """

    name: str
    description: str
    regression: bool = False
    latency_factor: float = 1.0
    tail_factor: float = 1.0
    tail_fraction: float = 0.1
    error_factor: float = 1.0
    instances: int = 1
    instance_spread: tuple[float, float] = (0.0, 0.0)
    bad_instances: int = 0
    bad_instance_factor: float = 1.0
    warmup_factor: float = 1.0
    warmup_seconds: float = 120.0
    announced_weight: float = 50.0
    canary_share: float = 0.5


_SPREAD = (0.02, 0.05)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("aa", "A/A: no difference"),
        Scenario("lat+5", "+5% latency, all requests", True, latency_factor=1.05),
        Scenario("lat+10", "+10% latency, all requests", True, latency_factor=1.10),
        Scenario("lat+20", "+20% latency, all requests", True, latency_factor=1.20),
        Scenario("tail", "slowest 10% of requests 1.5x", True, tail_factor=1.5),
        Scenario("err1.5x", "1.5x error ratio", True, error_factor=1.5),
        Scenario("err2x", "2x error ratio", True, error_factor=2.0),
        Scenario("err5x", "5x error ratio", True, error_factor=5.0),
        Scenario(
            "one-instance",
            "+30% latency on 1 of 5 canary instances",
            True,
            instances=5,
            bad_instances=1,
            bad_instance_factor=1.3,
        ),
        Scenario(
            "aa-3i",
            "A/A, 3 instances per cohort, 2-5% spread",
            instances=3,
            instance_spread=_SPREAD,
        ),
        Scenario(
            "aa-5i",
            "A/A, 5 instances per cohort, 2-5% spread",
            instances=5,
            instance_spread=_SPREAD,
        ),
        Scenario(
            "aa-10i",
            "A/A, 10 instances per cohort, 2-5% spread",
            instances=10,
            instance_spread=_SPREAD,
        ),
        # Not in the default set: the simulator's other options.
        Scenario("aa-warmup", "A/A, canary 5% slower for its first 2 min", warmup_factor=1.05),
        Scenario("aa-split", "A/A, 50% announced, canary gets 40%", canary_share=0.4),
    )
}

DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s not in {"aa-warmup", "aa-split"})


@dataclass(frozen=True, slots=True)
class CohortTraffic:
    """One cohort's traffic for a whole run, per step and instance.

    ``latency`` holds every latency sample in step-major, instance-minor order;
    ``latency_counts[k, i]`` of them belong to step ``k``, instance ``i``.
    """

    latency_counts: NDArray[np.int64]
    latency: NDArray[np.float64]
    total: NDArray[np.int64]
    bad: NDArray[np.int64]

    @property
    def offsets(self) -> NDArray[np.int64]:
        """Start of each (step, instance) slice of ``latency``, flattened, plus the end."""
        return np.concatenate(([0], np.cumsum(self.latency_counts.ravel())))


@dataclass(frozen=True, slots=True)
class Message:
    """One simulated metric message, already split into the fields of a ``MetricEvent``."""

    time: float
    cohort: str
    instance: str
    metric: str
    values: NDArray[np.float64] | None = None
    good: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class SimulatedRun:
    """The traffic of one run: both cohorts over ``steps`` steps of ``step`` seconds."""

    scenario: Scenario
    traffic: Traffic
    steps: int
    baseline: CohortTraffic
    canary: CohortTraffic

    @property
    def step(self) -> float:
        """Seconds of event time per message."""
        return self.traffic.step

    def messages(self, latency_metric: str, ratio_metric: str) -> Iterator[Message]:
        """Every message in event-time order; per step the baseline's come first.

        A latency message is left out when its instance served no request in the step
        (a message must carry at least one sample).
        """
        instances = self.scenario.instances
        cohorts = (("baseline", self.baseline), ("canary", self.canary))
        offsets = {name: cohort.offsets for name, cohort in cohorts}
        names = [f"i{i}" for i in range(instances)]
        for k in range(self.steps):
            time = START + (k + 1) * self.step
            for name, cohort in cohorts:
                starts = offsets[name]
                for i in range(instances):
                    j = k * instances + i
                    lo, hi = int(starts[j]), int(starts[j + 1])
                    if hi > lo:
                        values = cohort.latency[lo:hi]
                        yield Message(time, name, names[i], latency_metric, values=values)
                    total = int(cohort.total[k, i])
                    good = total - int(cohort.bad[k, i])
                    yield Message(time, name, names[i], ratio_metric, good=good, total=total)

    def minutes(self, seconds: float = 60.0) -> list[MinuteData]:
        """Per-``seconds`` aggregates of both cohorts, for the reference judges."""
        per = round(seconds / self.step)
        out = []
        b_off, c_off = self.baseline.offsets, self.canary.offsets
        instances = self.scenario.instances
        for m in range(self.steps // per):
            k0, k1 = m * per, (m + 1) * per
            lo, hi = k0 * instances, k1 * instances
            out.append(
                MinuteData(
                    baseline_latency=self.baseline.latency[b_off[lo] : b_off[hi]],
                    canary_latency=self.canary.latency[c_off[lo] : c_off[hi]],
                    baseline_total=int(self.baseline.total[k0:k1].sum()),
                    baseline_bad=int(self.baseline.bad[k0:k1].sum()),
                    canary_total=int(self.canary.total[k0:k1].sum()),
                    canary_bad=int(self.canary.bad[k0:k1].sum()),
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class MinuteData:
    """Both cohorts' traffic in one minute: latency samples and request counts."""

    baseline_latency: NDArray[np.float64]
    canary_latency: NDArray[np.float64]
    baseline_total: int
    baseline_bad: int
    canary_total: int
    canary_bad: int


def simulate(
    scenario: Scenario, seed: int, duration: float, traffic: Traffic | None = None
) -> SimulatedRun:
    """Generate ``duration`` seconds of both cohorts' traffic for one run."""
    traffic = traffic or Traffic()
    rng = np.random.default_rng(seed)
    steps = math.ceil(duration / traffic.step - 1e-9)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    mid = (np.arange(steps) + 0.5) * traffic.step
    swing = 1.0 + traffic.daily_swing * np.sin(2.0 * math.pi * mid / 86400.0 + phase)
    spread = rng.uniform(*scenario.instance_spread)
    share = {"baseline": 1.0 - scenario.canary_share, "canary": scenario.canary_share}
    cohorts = {}
    for name in ("baseline", "canary"):
        cohorts[name] = _cohort(scenario, traffic, rng, swing, 2.0 * share[name], spread, name)
    return SimulatedRun(scenario, traffic, steps, cohorts["baseline"], cohorts["canary"])


def _cohort(
    scenario: Scenario,
    traffic: Traffic,
    rng: np.random.Generator,
    swing: NDArray[np.float64],
    weight: float,
    spread: float,
    cohort: str,
) -> CohortTraffic:
    n = scenario.instances
    steps = len(swing)
    canary = cohort == "canary"
    rate = swing[:, None] * (weight / n) * np.ones((1, n))
    latency_counts = rng.poisson(rate * traffic.latency_per_minute * traffic.step / 60.0)
    total = rng.poisson(rate * traffic.requests_per_second * traffic.step)
    p_bad = traffic.error_ratio * (scenario.error_factor if canary else 1.0)
    bad = rng.binomial(total, min(p_bad, 1.0))

    instance_factor = np.exp(rng.standard_normal(n) * spread) if spread > 0 else np.ones(n)
    if canary and scenario.bad_instances:
        instance_factor[: scenario.bad_instances] *= scenario.bad_instance_factor
    flat = latency_counts.ravel()
    z = rng.standard_normal(int(flat.sum()))
    log_factor = np.repeat(np.tile(np.log(instance_factor), steps), flat)
    if canary:
        log_factor += math.log(scenario.latency_factor)
        if scenario.tail_factor != 1.0:
            log_factor += np.where(
                z > _TAIL_Z[scenario.tail_fraction], math.log(scenario.tail_factor), 0.0
            )
        if scenario.warmup_factor != 1.0:
            step_end = np.repeat(np.repeat((np.arange(steps) + 1) * traffic.step, n), flat)
            # A message covers (end - step, end]: the part inside the warm-up is slowed.
            warm = step_end - traffic.step < scenario.warmup_seconds
            log_factor += np.where(warm, math.log(scenario.warmup_factor), 0.0)
    latency = np.rint(traffic.latency_median_ms * np.exp(traffic.latency_log_sd * z + log_factor))
    return CohortTraffic(latency_counts, latency, total, bad)
