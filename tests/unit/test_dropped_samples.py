"""Samples that are valid but not analysed are counted, and explained once in the log."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson

from coalmine.bus.base import Record
from coalmine.config.models import LimitSettings, TopicsSettings
from coalmine.daemon.router import Router
from coalmine.tools.simulator import Scenario, started_event
from support.scenario import PROFILE, T0

if TYPE_CHECKING:
    import pytest

TOPICS = TopicsSettings()


def metric(**fields: object) -> Record:
    event = {"service": "checkout", "metric": "latency_ms", "time": T0 + 1, "values": [1.0]}
    return Record(TOPICS.metrics, orjson.dumps(event | fields), b"checkout")


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_each_reason_is_explained_once_per_deployment_or_service(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="coalmine.daemon.router")
    router = Router({"default": PROFILE}, TOPICS, LimitSettings())
    started = started_event(Scenario("checkout-v42", "checkout"), T0)
    router.handle([Record(TOPICS.deployments, started, b"checkout")], now=0.0)
    twice = [
        metric(cohort="canary", time=T0 - 30),  # before its started event
        metric(cohort="canary", metric="cpu"),  # not in the profile
        metric(service="search", cohort="canary"),  # no deployment of search
    ]
    for _ in range(2):
        router.handle(twice, now=0.0)
    # Samples of no deployment are held a while (their started may come late): once they
    # are 5 minutes older than the newest held one, they are let go and counted.
    router.handle([metric(service="search", cohort="canary", time=T0 + 400)], now=0.0)
    lines = warnings(caplog)
    assert len(lines) == 3, lines
    before, not_in_profile, no_deployment = lines
    assert before.startswith("deployment checkout-v42: samples timed before its started event")
    assert "give `started` the time the canary began serving" in before
    assert "metric 'cpu' is not in its profile 'default'" in not_in_profile
    assert no_deployment.startswith("service search: samples for no open deployment")
    assert TOPICS.deployments in no_deployment
    dropped = router.telemetry.registry.get_sample_value
    assert dropped("coalmine_dropped_samples_total", {"reason": "before_started"}) == 2
    assert dropped("coalmine_dropped_samples_total", {"reason": "metric_not_in_profile"}) == 2
    assert dropped("coalmine_dropped_samples_total", {"reason": "no_open_deployment"}) == 2
