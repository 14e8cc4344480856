"""A flag rollout whose treatment fails is switched off, seen by a real OpenFeature client.

The daemon runs on Apache Kafka with a ``flagd`` action. The flag's treatment variation
fails five times as many requests as its control (0.1% -> 0.5%, 100 requests/s each); the
requests metric is critical, so the message that shows it rolls the rollout back, and the
kill switch rewrites the flag file. An OpenFeature client (the flagd provider evaluating
the file in-process) must get the control variation within 2 s of that message's
acknowledgement by the broker.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics
from coalmine.config.actions import FlagdAction
from coalmine.config.models import MetricSpec, Profile
from coalmine.contract import format_time
from coalmine.daemon.app import Daemon
from tests.integration.test_cli_tools_kafka import read_verdicts
from tests.integration.test_past_kafka import settings_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings

FLAG = "new-checkout"
START = 1_800_000_000.0
PROFILE = Profile(
    interval=60,
    min_duration=600,
    max_duration=1800,
    metrics=(MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),),
)


def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    definition = {
        "state": "ENABLED",
        "variants": {"control": "classic", "treatment": "new"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["treatment", 50], ["control", 50]]},
    }
    path.write_text(json.dumps({"flags": {FLAG: definition}}), encoding="utf-8")
    return path


STARTED = {
    "event": "started",
    "deployment_id": "new-checkout-50",
    "service": "web",
    "time": format_time(START),
    "strategy": "feature_flag",
    "flag": {"key": FLAG, "control": "control", "treatment": "treatment"},
    "traffic_weight": 50,
}


async def produce(settings: Settings, seen_control: list[float], acked: dict[str, float]) -> None:
    """The started event, then ten seconds of traffic a message until control is served;
    each message's acknowledgement time by its event time."""
    t = settings.topics
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(t.deployments, orjson.dumps(STARTED), key=b"web")
        rng = np.random.default_rng(5)
        for step in range(1, 180):
            at = START + 10.0 * step
            await producer.send_and_wait(t.metrics, traffic(at, rng), key=b"web")
            acked[format_time(at)] = time.monotonic()
            if seen_control:
                return
            await asyncio.sleep(0.05)
    finally:
        await producer.stop()


def traffic(t: float, rng: np.random.Generator) -> bytes:
    events = []
    for variant, errors in (("control", 0.001), ("treatment", 0.005)):
        bad = int(rng.binomial(1000, errors))
        events.append(
            {
                "service": "web",
                "version": variant,
                "metric": "requests",
                "time": format_time(t),
                "good": 1000 - bad,
                "total": 1000,
            }
        )
    return orjson.dumps(events)


async def test_a_failing_treatment_is_switched_off_within_two_seconds(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    path = flag_file(tmp_path)
    kill = FlagdAction(kind="flagd", name="kill-new-checkout", path=path)
    settings = settings_for(kafka_settings, topic_name).model_copy(
        update={"profiles": {"default": PROFILE}, "actions": (kill,)}
    )
    t = settings.topics
    await ensure_topics(
        settings.kafka, {t.deployments: 2, t.metrics: 2, t.verdicts: 1, t.dead_letter: 1}
    )
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=str(path), deadline_ms=100
    )
    domain = f"coalmine-kill-{id(path)}"
    api.set_provider_and_wait(provider, domain)
    client = api.get_client(domain)
    users = [EvaluationContext(targeting_key=f"user-{i}") for i in range(40)]
    served = {client.get_string_value(FLAG, "unset", user) for user in users}
    assert served == {"classic", "new"}  # the rollout serves both variations

    seen_control: list[float] = []

    async def watch() -> None:
        while True:
            if {client.get_string_value(FLAG, "unset", u) for u in users} == {"classic"}:
                seen_control.append(time.monotonic())
                return
            await asyncio.sleep(0.02)

    daemon = Daemon(settings, build_transport(settings))
    running = asyncio.create_task(daemon.run())
    watcher = asyncio.create_task(watch())
    acked: dict[str, float] = {}
    try:
        await produce(settings, seen_control, acked)
        verdicts = await read_verdicts(settings, lambda vs: any(v["final"] for v in vs))
        await asyncio.wait_for(watcher, 10)
    finally:
        watcher.cancel()
        daemon.request_stop()
        await asyncio.wait_for(running, 30)
        provider.shutdown()
        api.clear_providers()
    final = next(v for v in verdicts if v["final"])
    assert final["decision"] == "rollback"
    assert final["flag"] == {"key": FLAG, "control": "control", "treatment": "treatment"}
    # The deciding message is the one of the verdict's time; the client saw control
    # within 2 s of its acknowledgement.
    assert seen_control[0] - acked[final["time"]] < 2.0  # 0.2-0.3 s measured
    rewritten = json.loads(path.read_text(encoding="utf-8"))["flags"][FLAG]
    assert rewritten["defaultVariant"] == "control"
    assert "targeting" not in rewritten
    outcomes = daemon.acting.outcomes("new-checkout-50") if daemon.acting else []
    assert [o["outcome"] for o in outcomes] == ["delivered"]
