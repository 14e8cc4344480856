"""Canary traffic at production cadence, generated on event time from a seed.

Every ``step`` (10 s) of event time, per cohort and per instance, one sample message for
the distribution metric and one request-count message (good / total). The distribution
metric keeps the key ``latency_ms`` whatever it models; the scenario's ``shape`` says
what its samples are:

- ``lognormal`` (default): request latencies, lognormal (median 100 ms, log-sd 0.5),
  rounded to whole milliseconds so there are ties.
- ``zeros``: a mostly-zero count (retries per request, errors per interval): each sample
  is 0, or with probability ``nonzero_share`` a count 1 + Poisson(1).
- ``buckets``: histogram-bucketed latency as OTLP and Prometheus deliver it: each
  lognormal latency replaced by the upper bound of its bucket (``BUCKETS_MS``; above the
  last bound, the last bound).
- ``pareto``: a heavy tail: each request is, with probability 0.05, drawn from a Pareto
  tail (alpha 1.5) that starts at the lognormal body's p95, else from the body; requests
  time out at ``TIMEOUT_MS``.
- ``bimodal``: cache hits and misses: with probability ``miss_share`` a miss
  (lognormal, median 100 ms, log-sd 0.3), else a hit (median 5 ms, log-sd 0.3).

Sample counts are Poisson (``latency_per_minute`` per cohort, 50 by default), as are the
requests (20 per second per cohort); bad requests are binomial (0.1%). Both rates swing
over the day (a +-50% sinusoid over 24 h with a random phase per run) unless the scenario
sets its own ``daily_swing`` (0: fixed traffic, constant expected counts).

A scenario says how the canary differs from the baseline: a latency factor on every
request, a factor on the slowest requests only, an error-ratio factor, a larger share of
non-zero samples or cache misses, a regression on some canary instances, a warm-up
period, a traffic split that differs from the announced weight, and the instances per
cohort with their latency spread (each instance's latencies are multiplied by
``exp(N(0, spread))``, ``spread`` drawn per run from the scenario's range). It can also
carry profile overrides (``overrides``) that the runner applies on top of the command
line's. The latency options (factors, instances, warm-up) apply to every latency shape,
``tail_factor`` to ``lognormal`` and ``buckets`` only, and none to ``zeros``; an
unsupported combination is a ``ValueError`` when the scenario is made.

A run's draws depend only on its seed and scenario, and fields left at their defaults
draw nothing: with the same seed, ``buckets`` buckets exactly the latencies the same
``lognormal`` scenario draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator

    from numpy.typing import NDArray

START = 1_750_000_000.0
"""Event time (Unix seconds) at which every simulated deployment starts."""

Shape = Literal["lognormal", "zeros", "buckets", "pareto", "bimodal"]
"""What the distribution metric's samples are (see the module's docstring)."""

Cohort = Literal["baseline", "canary"]

BUCKETS_MS = np.array([5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000], dtype=np.float64)
"""Upper bounds of the ``buckets`` shape's histogram buckets (Prometheus's default style)."""

PARETO_SHARE = 0.05
"""Share of the ``pareto`` shape's requests drawn from its tail."""
PARETO_ALPHA = 1.5
"""Shape parameter of the ``pareto`` tail."""
TIMEOUT_MS = 30_000.0
"""Latency at which a ``pareto`` request times out (keeps its values, and the reference
judges' histograms, bounded; about 1 tail request in 1,500 reaches it)."""

HIT_MEDIAN_MS = 5.0
MISS_MEDIAN_MS = 100.0
BIMODAL_LOG_SD = 0.3
"""The ``bimodal`` shape's two modes: lognormal cache hits and misses."""

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
        shape: what the distribution metric's samples are (see the module docstring).
        latency_factor: multiplies every canary latency (before bucketing).
        tail_factor: multiplies the slowest ``tail_fraction`` of canary requests.
        tail_fraction: which requests ``tail_factor`` applies to (0.1, 0.05 or 0.01).
        error_factor: multiplies the canary's bad-event ratio.
        nonzero_share: ``zeros``: the baseline's share of non-zero samples.
        nonzero_factor: ``zeros``: multiplies the canary's share of non-zero samples.
        miss_share: ``bimodal``: the baseline's share of cache misses.
        miss_factor: ``bimodal``: multiplies the canary's share of cache misses.
        instances: instances per cohort.
        instance_spread: range of the per-run log-sd of the instance latency factors.
        bad_instances: how many canary instances carry ``bad_instance_factor``.
        bad_instance_factor: multiplies the latencies of the bad canary instances.
        warmup_factor: multiplies canary latencies during its first ``warmup_seconds``.
        warmup_seconds: length of the warm-up.
        announced_weight: the ``traffic_weight`` of the ``started`` event (percent).
        canary_share: the share of the traffic the canary actually gets.
        latency_per_minute: samples per minute per cohort, instead of the traffic's.
        daily_swing: amplitude of the daily swing, instead of the traffic's (0: fixed).
        overrides: profile overrides (``key=value``, as ``--set``) applied after the
            command line's.
    """

    name: str
    description: str
    regression: bool = False
    shape: Shape = "lognormal"
    latency_factor: float = 1.0
    tail_factor: float = 1.0
    tail_fraction: float = 0.1
    error_factor: float = 1.0
    nonzero_share: float = 0.10
    nonzero_factor: float = 1.0
    miss_share: float = 0.2
    miss_factor: float = 1.0
    instances: int = 1
    instance_spread: tuple[float, float] = (0.0, 0.0)
    bad_instances: int = 0
    bad_instance_factor: float = 1.0
    warmup_factor: float = 1.0
    warmup_seconds: float = 120.0
    announced_weight: float = 50.0
    canary_share: float = 0.5
    latency_per_minute: float | None = None
    daily_swing: float | None = None
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.shape not in get_args(Shape):
            raise ValueError(f"scenario {self.name}: unknown shape {self.shape!r}")
        if self.tail_fraction not in _TAIL_Z:
            raise ValueError(f"scenario {self.name}: tail_fraction must be one of {list(_TAIL_Z)}")
        if self.latency_per_minute is not None and not self.latency_per_minute > 0:
            raise ValueError(f"scenario {self.name}: latency_per_minute must be > 0")
        if self.daily_swing is not None and not 0.0 <= self.daily_swing < 1.0:
            raise ValueError(f"scenario {self.name}: daily_swing must be in [0, 1)")
        unsupported = []
        if self.shape == "zeros":
            latency_options = {
                "latency_factor": self.latency_factor != 1.0,
                "tail_factor": self.tail_factor != 1.0,
                "instance_spread": self.instance_spread != (0.0, 0.0),
                "bad_instances": self.bad_instances != 0,
                "warmup_factor": self.warmup_factor != 1.0,
            }
            unsupported += [name for name, used in latency_options.items() if used]
        elif self.shape in {"pareto", "bimodal"} and self.tail_factor != 1.0:
            unsupported.append("tail_factor")
        if self.shape != "zeros" and self.nonzero_factor != 1.0:
            unsupported.append("nonzero_factor")
        if self.shape != "bimodal" and self.miss_factor != 1.0:
            unsupported.append("miss_factor")
        if unsupported:
            raise ValueError(
                f"scenario {self.name}: shape {self.shape!r} does not support "
                + ", ".join(unsupported)
            )
        shares = {
            "nonzero": self.nonzero_share * max(1.0, self.nonzero_factor),
            "miss": self.miss_share * max(1.0, self.miss_factor),
        }
        bad = [name for name, share in shares.items() if not 0.0 <= share <= 1.0]
        if bad:
            raise ValueError(f"scenario {self.name}: {', '.join(bad)} share outside [0, 1]")


_SPREAD = (0.02, 0.05)
_TOL5 = ("latency_ms.allowed_change=0.05",)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("aa", "A/A: no difference"),
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
        Scenario(
            "aa-3i-tol5",
            "A/A, 3 instances, 2-5% spread, 5% latency tolerance",
            instances=3,
            instance_spread=_SPREAD,
            overrides=_TOL5,
        ),
        Scenario(
            "aa-5i-tol5",
            "A/A, 5 instances, 2-5% spread, 5% latency tolerance",
            instances=5,
            instance_spread=_SPREAD,
            overrides=_TOL5,
        ),
        Scenario(
            "aa-10i-tol5",
            "A/A, 10 instances, 2-5% spread, 5% latency tolerance",
            instances=10,
            instance_spread=_SPREAD,
            overrides=_TOL5,
        ),
        Scenario(
            "zeros-aa",
            "A/A, mostly-zero counts (retries/request): 90% zeros, 100 samples/min",
            shape="zeros",
            latency_per_minute=100.0,
        ),
        Scenario(
            "buckets-aa",
            "A/A, latency as histogram bucket upper bounds (5 ms .. 10 s)",
            shape="buckets",
        ),
        Scenario(
            "pareto-aa",
            "A/A, heavy tail: 5% of requests Pareto(1.5) from the p95 on",
            shape="pareto",
        ),
        Scenario(
            "bimodal-aa",
            "A/A, cache hits (5 ms) and 20% misses (100 ms)",
            shape="bimodal",
        ),
        Scenario("lat+5", "+5% latency, all requests", True, latency_factor=1.05),
        Scenario("lat+10", "+10% latency, all requests", True, latency_factor=1.10),
        Scenario(
            "lat+10-fixed",
            "+10% latency, fixed 50 samples/min (no swing), 5% latency tolerance",
            True,
            latency_factor=1.10,
            daily_swing=0.0,
            overrides=_TOL5,
        ),
        Scenario("lat+15", "+15% latency, beyond the 10% tolerance", True, latency_factor=1.15),
        Scenario("lat+20", "+20% latency, all requests", True, latency_factor=1.20),
        Scenario("tail", "slowest 10% of requests 1.5x", True, tail_factor=1.5),
        Scenario(
            "tail1",
            "slowest 1% of requests 2x, 500 samples/min",
            True,
            tail_factor=2.0,
            tail_fraction=0.01,
            latency_per_minute=500.0,
        ),
        Scenario("err1.5x", "1.5x error ratio", True, error_factor=1.5),
        Scenario("err2x", "2x error ratio", True, error_factor=2.0),
        Scenario(
            "err2x-fixed",
            "2x error ratio, fixed 20 req/s (no swing)",
            True,
            error_factor=2.0,
            daily_swing=0.0,
        ),
        Scenario("err2.5x", "2.5x error ratio, beyond the 1.5x tolerance", True, error_factor=2.5),
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
            "zeros-x2",
            "mostly-zero counts, non-zero share 10% -> 20%, 100 samples/min",
            True,
            shape="zeros",
            nonzero_factor=2.0,
            latency_per_minute=100.0,
        ),
        Scenario(
            "buckets+20",
            "+20% latency before bucketing (bucket upper bounds)",
            True,
            shape="buckets",
            latency_factor=1.20,
        ),
        Scenario(
            "bimodal-miss",
            "cache miss rate 20% -> 30%",
            True,
            shape="bimodal",
            miss_factor=1.5,
        ),
        # The targets' traffic floors, fixed (no daily swing); the swinging runs above
        # are reported beside them.
        Scenario(
            "tail-fixed",
            "slowest 10% of requests 1.5x, fixed 50 samples/min",
            True,
            tail_factor=1.5,
            daily_swing=0.0,
        ),
        Scenario(
            "tail1-fixed",
            "slowest 1% of requests 2x, fixed 500 samples/min",
            True,
            tail_factor=2.0,
            tail_fraction=0.01,
            latency_per_minute=500.0,
            daily_swing=0.0,
        ),
        Scenario(
            "one-instance-fixed",
            "+30% latency on 1 of 5 canary instances, fixed 50 samples/min",
            True,
            instances=5,
            instance_spread=_SPREAD,
            bad_instances=1,
            bad_instance_factor=1.3,
            daily_swing=0.0,
        ),
        Scenario(
            "zeros-x2-fixed",
            "mostly-zero counts, non-zero share 10% -> 20%, fixed 100 samples/min",
            True,
            shape="zeros",
            nonzero_factor=2.0,
            latency_per_minute=100.0,
            daily_swing=0.0,
        ),
        # Not in the default set: the simulator's other options.
        Scenario("aa-warmup", "A/A, canary 5% slower for its first 2 min", warmup_factor=1.05),
        Scenario("aa-split", "A/A, 50% announced, canary gets 40%", canary_share=0.4),
    )
}

EXTRA_SCENARIOS = frozenset({"aa-warmup", "aa-split"})
DEFAULT_SCENARIOS = tuple(s for s in SCENARIOS if s not in EXTRA_SCENARIOS)


@dataclass(frozen=True, slots=True)
class CohortTraffic:
    """One cohort's traffic for a whole run, per step and instance.

    ``latency`` holds every sample of the distribution metric in step-major,
    instance-minor order; ``latency_counts[k, i]`` of them belong to step ``k``,
    instance ``i``.
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
    cohort: Cohort
    instance: str
    metric: str
    values: NDArray[np.float64] | None = None
    good: int = 0
    total: int = 0


@dataclass(frozen=True, slots=True)
class SimulatedRun:
    """The traffic of one run: both cohorts over ``steps`` steps of ``step`` seconds.

    ``traffic`` is the traffic as simulated, the scenario's own latency rate and daily
    swing included.
    """

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
        cohorts: tuple[tuple[Cohort, CohortTraffic], ...] = (
            ("baseline", self.baseline),
            ("canary", self.canary),
        )
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


def scenario_traffic(scenario: Scenario, traffic: Traffic | None = None) -> Traffic:
    """The traffic a scenario runs on: ``traffic`` with the scenario's own rate and swing."""
    traffic = traffic or Traffic()
    if scenario.latency_per_minute is not None:
        traffic = replace(traffic, latency_per_minute=scenario.latency_per_minute)
    if scenario.daily_swing is not None:
        traffic = replace(traffic, daily_swing=scenario.daily_swing)
    return traffic


def simulate(
    scenario: Scenario, seed: int, duration: float, traffic: Traffic | None = None
) -> SimulatedRun:
    """Generate ``duration`` seconds of both cohorts' traffic for one run."""
    traffic = scenario_traffic(scenario, traffic)
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


def bucket_upper_bounds(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Each value replaced by the upper bound of its bucket (``le``: the bound included)."""
    index = np.searchsorted(BUCKETS_MS, values, side="left")
    return BUCKETS_MS[np.minimum(index, len(BUCKETS_MS) - 1)]


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
    flat = latency_counts.ravel()
    size = int(flat.sum())
    if scenario.shape == "zeros":
        share = scenario.nonzero_share * (scenario.nonzero_factor if canary else 1.0)
        nonzero = rng.random(size) < share
        counts = 1.0 + rng.poisson(1.0, size)
        return CohortTraffic(latency_counts, np.where(nonzero, counts, 0.0), total, bad)

    if canary and scenario.bad_instances:
        instance_factor[: scenario.bad_instances] *= scenario.bad_instance_factor
    z = rng.standard_normal(size)
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
    if scenario.shape == "bimodal":
        share = scenario.miss_share * (scenario.miss_factor if canary else 1.0)
        miss = rng.random(size) < share
        median = np.where(miss, MISS_MEDIAN_MS, HIT_MEDIAN_MS)
        return CohortTraffic(
            latency_counts, np.rint(median * np.exp(BIMODAL_LOG_SD * z + log_factor)), total, bad
        )
    body = traffic.latency_median_ms * np.exp(traffic.latency_log_sd * z + log_factor)
    if scenario.shape == "pareto":
        tail = rng.random(size) < PARETO_SHARE
        p95 = traffic.latency_median_ms * math.exp(traffic.latency_log_sd * _TAIL_Z[0.05])
        drawn = p95 * (1.0 + rng.pareto(PARETO_ALPHA, int(tail.sum())))
        body[tail] = drawn * np.exp(log_factor[tail])
        return CohortTraffic(latency_counts, np.rint(np.minimum(body, TIMEOUT_MS)), total, bad)
    latency = np.rint(body)
    if scenario.shape == "buckets":
        latency = bucket_upper_bounds(latency)
    return CohortTraffic(latency_counts, latency, total, bad)
