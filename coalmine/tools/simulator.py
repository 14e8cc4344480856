"""A traffic simulator: deploy events and cohort metrics for made-up canaries.

It drives the demo, the integration tests and the benchmarks. Everything is generated on
event time from a seed, so the same call always produces the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import orjson

from coalmine.contract import format_time

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated deployment: how its canary behaves against its baseline.

    Latency is lognormal (median ``latency_ms``, log-sd 0.5) rounded to 0.1 ms; requests
    arrive as Poisson counts and fail independently with the given bad-event ratio.
    """

    deployment_id: str
    service: str
    latency_factor: float = 1.0
    error_ratio: float = 0.0003
    canary_error_ratio: float | None = None
    regression_from: float = 0.0
    requests_per_second: float = 100.0
    latency_samples_per_second: float = 2.0
    latency_ms: float = 100.0
    profile: str = "default"
    baseline_version: str = "v1"
    canary_version: str = "v2"


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    """A message for the deployments or metrics topic, with its event time."""

    topic: Literal["deployments", "metrics"]
    key: bytes
    value: bytes
    time: float


def started_event(scenario: Scenario, time: float) -> bytes:
    """The ``started`` deploy event that opens a scenario's analysis."""
    return orjson.dumps(
        {
            "event": "started",
            "deployment_id": scenario.deployment_id,
            "service": scenario.service,
            "time": format_time(time),
            "strategy": "canary",
            "profile": scenario.profile,
            "baseline": {"version": scenario.baseline_version},
            "canary": {"version": scenario.canary_version},
            "traffic_weight": 50,
        }
    )


def simulate(
    scenarios: Sequence[Scenario],
    *,
    start: float,
    duration: float,
    step: float = 10.0,
    seed: int = 0,
) -> Iterator[SimulatedMessage]:
    """Yield every scenario's messages in event-time order.

    At ``start`` each scenario's ``started`` event; then every ``step`` seconds, per
    scenario, one metrics message (a JSON array) with both cohorts' latency samples and
    request counts for the interval ending then. ``duration`` is how long to go on.
    """
    rng = np.random.default_rng(seed)
    for scenario in scenarios:
        yield SimulatedMessage(
            "deployments", scenario.service.encode(), started_event(scenario, start), start
        )
    ticks = int(duration // step)
    for tick in range(1, ticks + 1):
        now = start + tick * step
        stamp = format_time(now)
        for scenario in scenarios:
            elapsed = now - start
            regressed = elapsed > scenario.regression_from
            events = []
            for cohort in ("baseline", "canary"):
                is_canary = cohort == "canary"
                factor = scenario.latency_factor if is_canary and regressed else 1.0
                samples = max(1, rng.poisson(scenario.latency_samples_per_second * step))
                latency = scenario.latency_ms * factor * rng.lognormal(0.0, 0.5, samples)
                error_ratio = scenario.error_ratio
                if is_canary and regressed and scenario.canary_error_ratio is not None:
                    error_ratio = scenario.canary_error_ratio
                total = int(rng.poisson(scenario.requests_per_second * step))
                bad = int(rng.binomial(total, error_ratio)) if total else 0
                common = {
                    "service": scenario.service,
                    "deployment_id": scenario.deployment_id,
                    "cohort": cohort,
                    "time": stamp,
                }
                events.append(
                    {**common, "metric": "latency_ms", "values": np.round(latency, 1).tolist()}
                )
                events.append({**common, "metric": "requests", "good": total - bad, "total": total})
            yield SimulatedMessage("metrics", scenario.service.encode(), orjson.dumps(events), now)


def three_deployments(profile: str = "default") -> list[Scenario]:
    """Healthy; +50% latency; 5% errors on the critical ratio metric from minute 3."""
    return [
        Scenario("checkout-v42", "checkout", profile=profile),
        Scenario("search-v7", "search", latency_factor=1.5, profile=profile),
        Scenario(
            "payments-v3",
            "payments",
            canary_error_ratio=0.05,
            regression_from=180.0,
            profile=profile,
        ),
    ]
