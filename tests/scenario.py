"""The three-deployment scenario the tests share: its profile, start and expected outcome.

`coalmine.simulator.three_deployments()` plays it: a healthy canary, one with +50% latency,
and one whose critical error ratio jumps to 5% from minute 3.
"""

from coalmine.config.models import MetricSpec, Profile

T0 = 1_800_000_000.0
"""Event time the scenario starts at."""

PROFILE = Profile(
    interval=60,
    min_duration=300,
    max_duration=900,
    metrics=(
        MetricSpec(name="latency_ms"),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    ),
)

EXPECTED = {"checkout-v42": "promote", "search-v7": "rollback", "payments-v3": "rollback"}
"""The final decision for each deployment of the scenario."""
