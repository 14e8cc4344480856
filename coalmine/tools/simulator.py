"""A traffic simulator: deploy events and cohort metrics for made-up canaries.

It drives the demo, the integration tests and the benchmarks. Everything is generated on
event time from a seed, so the same call always produces the same messages. A scenario is a
side-by-side canary (the default) or a blue-green switch (``strategy="blue_green"``): blue
serves alone, green gets a mirrored share of the traffic in a preview, then all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from coalmine.contract import encode_deploy_event, format_time

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated deployment: how its canary behaves against its baseline.

    Latency is lognormal (median ``latency_ms``, log-sd 0.5) rounded to 0.1 ms; requests
    arrive as Poisson counts and fail independently with the given bad-event ratio.

    A ``blue_green`` scenario has blue (``baseline_version``) serving alone for ``history``
    seconds before its ``started`` (phase ``preview``, weight 0): those messages come
    first, dated before ``start``. In the preview green (``canary_version``) gets
    ``mirrored_share`` of the traffic as a mirrored copy while blue still serves all of it;
    from the ``switched`` step, ``switch_at`` seconds after ``started``, green serves
    everything and blue nothing. Its metric events carry ``version``, not ``cohort``.
    ``latency_factor`` and ``canary_error_ratio`` apply to green from ``regression_from``
    (seconds after ``started``, as for a canary).
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
    strategy: Literal["canary", "blue_green"] = "canary"
    switch_at: float = 60.0
    history: float = 0.0
    mirrored_share: float = 0.1


@dataclass(frozen=True, slots=True)
class SimulatedMessage:
    """A message for the deployments or metrics topic, with its event time."""

    topic: Literal["deployments", "metrics"]
    key: bytes
    value: bytes
    time: float


def started_event(scenario: Scenario, time: float) -> bytes:
    """The ``started`` deploy event that opens a scenario's analysis.

    A blue-green scenario's is its preview: blue the baseline, green the canary, weight 0.
    """
    if scenario.strategy == "blue_green":
        return encode_deploy_event(
            "started",
            scenario.deployment_id,
            scenario.service,
            at=time,
            baseline=scenario.baseline_version,
            canary=scenario.canary_version,
            profile=scenario.profile,
            traffic_weight=0,
            strategy="blue_green",
            phase="preview",
        )
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


def switched_event(scenario: Scenario, time: float) -> bytes:
    """The ``step`` with phase ``switched`` of a blue-green scenario: green takes all."""
    return encode_deploy_event(
        "step",
        scenario.deployment_id,
        scenario.service,
        at=time,
        profile=scenario.profile,
        strategy="blue_green",
        phase="switched",
    )


def deploy_messages(scenarios: Sequence[Scenario], start: float) -> list[SimulatedMessage]:
    """Every scenario's deploy events, in event-time order (a ``started`` at ``start``)."""
    out = [
        SimulatedMessage("deployments", s.service.encode(), started_event(s, start), start)
        for s in scenarios
    ]
    for s in scenarios:
        if s.strategy == "blue_green":
            at = start + s.switch_at
            switched = switched_event(s, at)
            out.append(SimulatedMessage("deployments", s.service.encode(), switched, at))
    return sorted(out, key=lambda m: m.time)


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
    request counts for the interval ending then. ``duration`` is how long to go on. A
    blue-green scenario's ``history`` comes before (on the same ``step``), and its
    ``switched`` step before the metrics of its time.
    """
    rng = np.random.default_rng(seed)
    deploys = deploy_messages(scenarios, start)
    first = 1 - max((int(s.history // step) for s in scenarios), default=0)
    for tick in range(first, int(duration // step) + 1):
        now = start + tick * step
        while deploys and deploys[0].time <= now and tick > 0:
            yield deploys.pop(0)
        for scenario in scenarios:
            elapsed = now - start
            if scenario.strategy == "blue_green":
                events = _blue_green_events(rng, scenario, elapsed, step, format_time(now))
            elif elapsed > 0:
                events = _canary_events(rng, scenario, elapsed, step, format_time(now))
            else:
                continue
            if events:
                key = scenario.service.encode()
                yield SimulatedMessage("metrics", key, orjson.dumps(events), now)
    yield from deploys  # with no tick after them


def _canary_events(
    rng: np.random.Generator, scenario: Scenario, elapsed: float, step: float, stamp: str
) -> list[dict[str, Any]]:
    """Both cohorts' events, tagged ``cohort``, for the interval ending ``elapsed``."""
    regressed = elapsed > scenario.regression_from
    events = []
    for cohort in ("baseline", "canary"):
        is_canary = cohort == "canary"
        common = {
            "service": scenario.service,
            "deployment_id": scenario.deployment_id,
            "cohort": cohort,
            "time": stamp,
        }
        events += _traffic(rng, scenario, common, step, regressed=is_canary and regressed)
    return events


def _blue_green_events(
    rng: np.random.Generator, scenario: Scenario, elapsed: float, step: float, stamp: str
) -> list[dict[str, Any]]:
    """Blue's and green's events, tagged ``version``, for the interval ending ``elapsed``.

    Blue serves up to the switch (its history, then the preview); green gets a mirrored
    share in the preview, then everything.
    """
    if elapsed <= -scenario.history:
        return []
    events = []
    if elapsed <= scenario.switch_at:
        blue = {"service": scenario.service, "version": scenario.baseline_version, "time": stamp}
        events += _traffic(rng, scenario, blue, step)
    if elapsed > 0:
        green = {"service": scenario.service, "version": scenario.canary_version, "time": stamp}
        share = 1.0 if elapsed > scenario.switch_at else scenario.mirrored_share
        regressed = elapsed > scenario.regression_from
        events += _traffic(rng, scenario, green, step, share=share, regressed=regressed)
    return events


def _traffic(
    rng: np.random.Generator,
    scenario: Scenario,
    common: dict[str, Any],
    step: float,
    *,
    share: float = 1.0,
    regressed: bool = False,
) -> list[dict[str, Any]]:
    """One cohort's latency samples and request counts for one ``step`` (``share`` of it)."""
    factor = scenario.latency_factor if regressed else 1.0
    samples = max(1, rng.poisson(scenario.latency_samples_per_second * share * step))
    latency = scenario.latency_ms * factor * rng.lognormal(0.0, 0.5, samples)
    error_ratio = scenario.error_ratio
    if regressed and scenario.canary_error_ratio is not None:
        error_ratio = scenario.canary_error_ratio
    total = int(rng.poisson(scenario.requests_per_second * share * step))
    bad = int(rng.binomial(total, error_ratio)) if total else 0
    return [
        {**common, "metric": "latency_ms", "values": np.round(latency, 1).tolist()},
        {**common, "metric": "requests", "good": total - bad, "total": total},
    ]


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
