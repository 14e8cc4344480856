"""The three-deployment scenario the tests share: its profile, start and expected outcome.

`coalmine.tools.simulator.three_deployments()` plays it: a healthy canary, one with +50% latency,
and one whose critical error ratio jumps to 5% from minute 3.
"""

import orjson

from coalmine.config.models import MetricSpec, Profile
from coalmine.tools.simulator import Scenario, simulate

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

PROFILE_TOML = """
[profiles.default]
interval = "60s"
min_duration = "5m"
max_duration = "15m"

[[profiles.default.metrics]]
name = "latency_ms"
kind = "distribution"

[[profiles.default.metrics]]
name = "requests"
kind = "ratio"
objective = 0.999
critical = true
"""
"""``PROFILE`` as the TOML of a configuration file (tests that start `coalmine run`)."""

EXPECTED = {"checkout-v42": "promote", "search-v7": "rollback", "payments-v3": "rollback"}
"""The final decision for each deployment of the scenario."""


STAGGERED_EXPECTED = {
    "checkout-v42": "promote",
    "search-v7": "rollback",
    "cart-v9": "promote",
    "payments-v3": "rollback",
    "ledger-v2": "rollback",
}
"""The final decision for each deployment of :func:`staggered_messages`."""


def _by_service_and_version(value: bytes) -> bytes:
    events = orjson.loads(value)
    for event in events:
        del event["deployment_id"]
        event["version"] = "v2" if event.pop("cohort") == "canary" else "v1"
    return orjson.dumps(events)


def staggered_messages() -> list[tuple[str, bytes, bytes]]:
    """Five deployments starting at different times, as ``(topic, key, value)`` in log order.

    ``topic`` is ``"deployments"`` or ``"metrics"``. The cart and ledger metrics name no
    deployment or cohort (routed by service and version), and cart's ``started`` comes
    after its first two metric messages.
    """
    segments = [
        (T0, Scenario("checkout-v42", "checkout")),
        (T0 + 120, Scenario("search-v7", "search", latency_factor=1.5)),
        (T0 + 200, Scenario("cart-v9", "cart")),
        (
            T0 + 300,
            Scenario("payments-v3", "payments", canary_error_ratio=0.05, regression_from=120),
        ),
        (T0 + 420, Scenario("ledger-v2", "ledger", latency_factor=1.3)),
    ]
    timed = []
    for order, (start, scenario) in enumerate(segments):
        for message in simulate([scenario], start=start, duration=600.0, step=10.0, seed=order):
            value = message.value
            if message.topic == "metrics" and scenario.service in {"cart", "ledger"}:
                value = _by_service_and_version(value)
            late = message.topic == "deployments" and scenario.service == "cart"
            timed.append(
                (message.time + (25.0 if late else 0.0), message.topic, message.key, value)
            )
    timed.sort(key=lambda item: item[0])
    return [(topic, key, value) for _, topic, key, value in timed]
