"""The sample-ratio check judges a split only once both cohorts have reported."""

from __future__ import annotations

import numpy as np
import orjson

from coalmine.contract import MetricEvent, decode_deploy_event
from coalmine.daemon.deployment import Deployment
from support.scenario import PROFILE, T0

STARTED = decode_deploy_event(
    orjson.dumps(
        {
            "event": "started",
            "deployment_id": "checkout-v42",
            "service": "checkout",
            "time": T0,
            "baseline": {"version": "v1"},
            "canary": {"version": "v2"},
            "traffic_weight": 50,
        }
    )
)


def counts(time: float, good: int, total: int) -> MetricEvent:
    return MetricEvent(
        "checkout", "requests", time, good=good, total=total, is_ratio=True, cohort="canary"
    )


def test_a_cohort_that_has_not_reported_is_not_a_zero_share() -> None:
    deployment = Deployment(STARTED, PROFILE)
    latency = np.full(20, 100.0)
    for second in range(10, 70, 10):
        for cohort in ("baseline", "canary"):
            event = MetricEvent("checkout", "latency_ms", T0 + second, latency, cohort=cohort)
            deployment.observe(event, cohort)
        baseline = MetricEvent(
            "checkout", "requests", T0 + second, good=1000, total=1000, is_ratio=True
        )
        deployment.observe(baseline, "baseline")  # the canary's counts are not read yet
    (first,) = deployment.advance(T0 + 70)
    assert "sample_ratio" not in first.checks
    # Reported, and empty: that is a canary with no traffic, and a mismatch.
    for second in range(70, 130, 10):
        deployment.observe(counts(T0 + second, 0, 0), "canary")
        baseline = MetricEvent(
            "checkout", "requests", T0 + second, good=1000, total=1000, is_ratio=True
        )
        deployment.observe(baseline, "baseline")
    (second_look,) = deployment.advance(T0 + 130)
    check = second_look.checks["sample_ratio"]
    assert check["observed_share"] == 0.0
    assert check["mismatch"] is True
