"""A deployment whose `started` was dead-lettered is shown as rejected, with the reason."""

from __future__ import annotations

import asyncio

from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import HttpSettings, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import Scenario, started_event
from support.scenario import PROFILE, T0
from tests.polling import eventually

TOPICS = TopicsSettings()


async def test_a_started_for_an_unknown_profile_is_listed_as_rejected() -> None:
    broker = MemoryBroker()
    for name in (TOPICS.deployments, TOPICS.metrics, TOPICS.verdicts, TOPICS.dead_letter):
        broker.create_topic(name)
    known = Scenario("checkout-v42", "checkout")
    unknown = Scenario("search-v7", "search", profile="nightly")
    for scenario in (known, unknown):
        broker.append(TOPICS.deployments, started_event(scenario, T0), key=b"s")
    settings = Settings(profiles={"default": PROFILE}, http=HttpSettings(enabled=False))
    transport = MemoryTransport(broker, [TOPICS.deployments, TOPICS.metrics], "coalmine")
    daemon = Daemon(settings, transport)
    task = asyncio.create_task(daemon.run())
    try:
        await eventually(lambda: broker.records(TOPICS.dead_letter), "the dead letter")
        await eventually(
            lambda: (daemon.directory.get("search-v7") or {}).get("state") == "rejected",
            "search-v7 shown as rejected",
        )
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
    rejected = daemon.directory.get("search-v7")
    assert rejected is not None
    assert rejected["rejected"].startswith("unknown_profile")
    assert daemon.directory.get("checkout-v42")["state"] == "open"
    # A follower reading the dead-letter topic (another daemon's API) learns the same.
    other = Daemon(settings, MemoryTransport(broker, [], "other")).directory
    other.take(broker.records(TOPICS.deployments) + broker.records(TOPICS.dead_letter))
    assert other.get("search-v7")["state"] == "rejected"
    assert other.get("checkout-v42")["state"] == "open"
