"""Actions across kill -9: every final verdict reaches the webhook, none lost, one key each.

The daemon runs as a subprocess with a webhook on every final verdict; the five staggered
deployments are fed, and once their final verdicts are published (and a commit interval
has passed) it is killed with SIGKILL three times, restarted at once each time. The
receiver is down (nothing listens on its port) until after the kills: every delivery is
still pending at the first kill, so only a restarted daemon that held its commits where
it can make those verdicts again, and acts on them again, can deliver them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import orjson
import pytest

from support.scenario import STAGGERED_EXPECTED, staggered_messages
from tests.integration.test_faults import (
    SEED,
    check_guarantees,
    create,
    finals_or_log,
    kill_at_random_moments,
    make_daemon,  # noqa: F401 - the fixture
    produce,
    topics_named,
)
from tests.receivers import Receiver, free_port

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.config.models import KafkaSettings
    from support.brokers import Tansu
    from support.kafka_broker import ApacheKafka
    from tests.integration.test_faults import DaemonProcess

pytestmark = pytest.mark.timeout(300)  # three restarts, each rejoining the group
SECRET = "receiver-secret-0123456789"  # noqa: S105 - a test key


def webhook(port: int) -> str:
    return f"""
[[actions]]
kind = "webhook"
name = "deployer"
url = "http://127.0.0.1:{port}/hook"
secret = "{SECRET}"
retries = 20
backoff = "0.2s"
timeout = "2s"
"""


async def test_kill_9_three_times_loses_no_final_verdicts_webhook(
    kafka_broker: ApacheKafka | Tansu,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    make_daemon: Callable[..., DaemonProcess],  # noqa: F811 - the fixture
) -> None:
    rng = random.Random(SEED + 7)  # noqa: S311 - kill moments, not secrets
    topics = topics_named(topic_name)
    await create(kafka_settings, topics, partitions=2)
    bootstrap = kafka_broker.bootstrap
    port = free_port()
    daemon = make_daemon(kafka_settings, kafka_settings.group_id, topics, "acting")
    with daemon.config.open("a", encoding="utf-8") as config:
        config.write(webhook(port))
    daemon.start()
    await produce(bootstrap, topics, staggered_messages(), 300.0)
    verdicts = await finals_or_log(daemon, bootstrap, topics.verdicts, "fed", timeout=90.0)
    await asyncio.sleep(3.0)  # commits would have passed the verdicts' records by now
    why = await kill_at_random_moments(daemon, rng)
    verdicts = await finals_or_log(daemon, bootstrap, topics.verdicts, why, timeout=90.0)
    check_guarantees(verdicts, STAGGERED_EXPECTED, why)
    finals = {v["verdict_id"]: v for v in verdicts if v["final"]}

    receiver = await Receiver(secret=SECRET, port=port).start()  # up only now
    try:
        deadline = time.monotonic() + 120.0
        while {r.idempotency_key for r in receiver.received if r.verified} < finals.keys():
            got = {r.idempotency_key for r in receiver.received}
            assert time.monotonic() < deadline, (
                f"{why}: delivered {sorted(got)} of {sorted(finals)}\n{daemon.output()[-4000:]}"
            )
            await asyncio.sleep(0.5)
    finally:
        await receiver.stop()
    by_key: dict[str, list[bytes]] = defaultdict(list)
    for request in receiver.received:
        assert request.verified, why
        assert request.idempotency_key is not None
        by_key[request.idempotency_key].append(request.body)
    assert by_key.keys() == finals.keys(), why  # finals only, each one delivered
    for key, bodies in by_key.items():
        # Every copy, a duplicate after a restart included, is the published verdict.
        assert all(orjson.loads(body) == finals[key] for body in bodies), why
    assert daemon.alive
