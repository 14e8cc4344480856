"""The HTTP API of two daemons sharing a consumer group, on a real broker (Apache Kafka,
else tansu).

Each daemon judges only its own partitions, but either one answers for every deployment:
the API follows the deployments and verdict topics outside the group.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from coalmine.config.models import HttpSettings
from support.scenario import EXPECTED
from tests.integration.test_daemon_kafka import (
    create_topics,
    make_settings,
    produce_scenario,
    run_daemon,
)
from tests.metrics import sample_value

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings
    from coalmine.daemon.app import Daemon


async def views(daemon: Daemon) -> dict[str, dict]:
    assert daemon.http is not None
    url = f"http://127.0.0.1:{daemon.http.port}/api/v1/deployments"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        body = await response.json()
    return {view["deployment_id"]: view for view in body["deployments"]}


def made(daemon: Daemon, decision: str) -> float:
    """The verdicts of ``decision`` that ``daemon`` itself made."""
    return sample_value(daemon.telemetry, "coalmine_verdicts_total", decision=decision)


@pytest.mark.timeout(180)
async def test_either_daemon_of_a_group_answers_for_every_deployment(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    base = make_settings(kafka_settings, topic_name)
    settings = base.model_copy(update={"http": HttpSettings(port=0)})
    await create_topics(settings.kafka, settings.topics)
    first, first_task = await run_daemon(settings)
    second, second_task = await run_daemon(settings)
    try:
        await produce_scenario(settings.kafka, settings.topics)
        deadline = time.monotonic() + 90.0
        while True:
            seen = [await views(first), await views(second)]
            decisions = [{k: v["decision"] for k, v in s.items() if v["final"]} for s in seen]
            if decisions == [EXPECTED, EXPECTED]:
                break
            assert time.monotonic() < deadline, decisions
            await asyncio.sleep(0.5)
        # Both daemons judged (the group split the partitions), yet both know all three.
        judged = [made(d, "promote") for d in (first, second)]
        rolled = [made(d, "rollback") for d in (first, second)]
        assert sum(judged) + sum(rolled) >= 3
        assert seen[0] == seen[1]
    finally:
        for daemon in (first, second):
            daemon.request_stop()
        await asyncio.wait_for(asyncio.gather(first_task, second_task), 30)
