"""The daemon says when it is not ready, and why, once per change: as /readyz answers."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp

from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import HttpSettings, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.daemon.app import Daemon
from support.scenario import PROFILE

if TYPE_CHECKING:
    import pytest

TOPICS = TopicsSettings()


async def readyz(daemon: Daemon) -> tuple[int, str]:
    assert daemon.http is not None
    url = f"http://127.0.0.1:{daemon.http.port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


def lines(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(start)]


async def test_missing_topics_are_named_once_and_their_arrival_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="coalmine.daemon.app")
    broker = MemoryBroker(default_partitions=None)
    broker.create_topic(TOPICS.deployments)
    settings = Settings(profiles={"default": PROFILE}, http=HttpSettings(enabled=True, port=0))
    transport = MemoryTransport(broker, [TOPICS.deployments, TOPICS.metrics], "coalmine")
    daemon = Daemon(settings, transport)
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(20):
            while not lines(caplog, "not ready"):
                await asyncio.sleep(0.05)
        assert await readyz(daemon) == (503, f"not ready: missing topics: {TOPICS.metrics}\n")
        # Time passing is the test here: the readiness checks of the next 2.5 s (one a
        # second) find the same reason, and must not log it again.
        await asyncio.sleep(2.5)
        assert lines(caplog, "not ready") == [f"not ready: missing topics: {TOPICS.metrics}"]
        broker.create_topic(TOPICS.metrics)
        async with asyncio.timeout(20):
            while not lines(caplog, "ready: judging"):
                await asyncio.sleep(0.05)
        assert await readyz(daemon) == (200, "ready\n")
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 10)
    assert lines(caplog, "ready: judging") == ["ready: judging"]
    assert len(lines(caplog, "not ready")) == 1
