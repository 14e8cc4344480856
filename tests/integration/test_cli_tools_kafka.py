"""The SRE and pipeline commands against a real broker (Apache Kafka, else tansu), as
separate processes.

- ``record`` + ``replay``: the live daemon judges a multi-deployment stream; the stream is
  recorded from Kafka and replayed offline, which must give the same verdicts (same ids,
  same decisions, same numbers). ``replay --from-kafka`` too.
- ``start`` + ``wait``: a pipeline announces two deployments, waits for their verdicts
  while their metrics flow, and gets the decision as the exit code; ``wait`` on a
  deployment that never ends times out with exit code 4.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics, partition_counts
from coalmine.config.models import HttpSettings, KafkaSettings, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import Scenario, simulate, three_deployments
from support.scenario import PROFILE, PROFILE_TOML, T0
from tests.polling import eventually

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from support.brokers import Mosquitto

MALFORMED = [b"{not json", b'{"service":"cart","cohort":"canary","metric":"requests","time":1}']


def make_settings(kafka: KafkaSettings, topic_name: Callable[[str], str]) -> Settings:
    return Settings(
        kafka=kafka.model_copy(update={"session_timeout": 1.0}),
        topics=TopicsSettings(
            deployments=topic_name("deployments"),
            metrics=topic_name("metrics"),
            verdicts=topic_name("verdicts"),
            dead_letter=topic_name("dlq"),
        ),
        # Read from the TOML the commands get, so the digests in the verdicts agree.
        profiles={"default": PROFILE.model_validate(_profile_from_toml())},
        http=HttpSettings(enabled=False),
    )


def _profile_from_toml() -> dict:
    import tomllib  # noqa: PLC0415

    return tomllib.loads(PROFILE_TOML)["profiles"]["default"]


def write_config(settings: Settings, path: Path) -> Path:
    t = settings.topics
    path.write_text(
        f"""
[kafka]
bootstrap_servers = "{settings.kafka.bootstrap_servers}"
idempotent_producer = {str(settings.kafka.idempotent_producer).lower()}
request_timeout = "10s"

[topics]
deployments = "{t.deployments}"
metrics = "{t.metrics}"
verdicts = "{t.verdicts}"
dead_letter = "{t.dead_letter}"
{PROFILE_TOML}"""
    )
    return path


async def coalmine(
    *args: str, within: float = 60.0, columns: int | None = None
) -> tuple[int, bytes, bytes]:
    """Run ``python -m coalmine ARGS`` without blocking the event loop.

    ``columns`` sets ``COLUMNS``: the width of a table printed to the pipe.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COALMINE_")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "coalmine",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out, err


async def create_topics(settings: Settings) -> None:
    t = settings.topics
    await ensure_topics(
        settings.kafka, {t.deployments: 3, t.metrics: 3, t.verdicts: 3, t.dead_letter: 1}
    )


def by_version(value: bytes) -> bytes:
    """Metric events that name no deployment or cohort: routed by service and version."""
    events = orjson.loads(value)
    for event in events:
        del event["deployment_id"]
        event["version"] = "v2" if event.pop("cohort") == "canary" else "v1"
    return orjson.dumps(events)


def stream() -> list[tuple[str, bytes, bytes]]:
    """Five deployments, staggered: ``(topic, key, value)`` in the order produced.

    Two of them are routed by service and version, and one's ``started`` is produced after
    its first metric messages.
    """
    segments = [
        (T0, three_deployments()),
        (T0 + 150, [Scenario("cart-v9", "cart")]),
        (T0 + 240, [Scenario("ledger-v2", "ledger", latency_factor=1.4)]),
    ]
    timed = []
    for seed, (start, scenarios) in enumerate(segments):
        for message in simulate(scenarios, start=start, duration=600.0, step=10.0, seed=seed):
            value = message.value
            if message.topic == "metrics" and message.key in (b"cart", b"ledger"):
                value = by_version(value)
            late = 15.0 if message.topic == "deployments" and message.key == b"cart" else 0.0
            timed.append((message.time + late, message.topic, message.key, value))
    timed.sort(key=lambda item: item[0])
    return [(topic, key, value) for _, topic, key, value in timed]


async def produce(settings: Settings, messages: list[tuple[str, bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    await producer.start()
    try:
        for index, (topic, key, value) in enumerate(messages):
            name = (
                settings.topics.deployments if topic == "deployments" else settings.topics.metrics
            )
            await producer.send(name, value, key=key)
            if index in (40, 200):
                await producer.send(settings.topics.metrics, MALFORMED[index // 200], key=b"cart")
        await producer.flush()
    finally:
        await producer.stop()


async def read_verdicts(
    settings: Settings, done: Callable[[list[dict]], bool], within: float = 90.0
) -> list[dict]:
    kafka, topic = settings.kafka, settings.topics.verdicts
    count = (await partition_counts(kafka, [topic]))[topic]
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        verdicts: list[dict] = []
        deadline = time.monotonic() + within
        while not done(verdicts):
            assert time.monotonic() < deadline, f"only {len(verdicts)} verdicts"
            for part in (await consumer.getmany(timeout_ms=300)).values():
                verdicts += [orjson.loads(r.value) for r in part]
        return verdicts
    finally:
        await consumer.stop()


def finals(verdicts: list[dict]) -> dict[str, str]:
    return {v["deployment_id"]: v["decision"] for v in verdicts if v["final"]}


def judged(verdicts: list[dict]) -> dict[str, dict]:
    """Verdicts by id (a redelivered verdict is the same verdict)."""
    return {v["verdict_id"]: v for v in verdicts}


async def test_record_and_replay_give_the_live_daemons_verdicts(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = write_config(settings, tmp_path / "coalmine.toml")
    await create_topics(settings)
    await produce(settings, stream())
    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    try:
        live = await read_verdicts(settings, lambda vs: len(finals(vs)) >= 5)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert set(finals(live).values()) == {"promote", "rollback"}

    recording = tmp_path / "recorded.jsonl"
    code, _, err = await coalmine(
        "record", "--config", str(config), "--output", str(recording), "--since", "1h"
    )
    assert code == 0, err.decode()
    lines = recording.read_bytes().splitlines()
    assert len(lines) == len(stream()) + len(MALFORMED)
    assert b"recorded" in err

    code, out, err = await coalmine(
        "replay", "--config", str(config), "--input", str(recording), "--json"
    )
    assert code == 0, err.decode()
    replayed = [orjson.loads(line) for line in out.splitlines()]
    # The same final decisions, the same verdict ids, the same verdicts.
    assert finals(replayed) == finals(live)
    assert judged(replayed) == judged(live)
    assert b"2 invalid" in err

    code, out, err = await coalmine(
        "replay", "--config", str(config), "--from-kafka", "--since", "1h", "--json"
    )
    assert code == 0, err.decode()
    assert judged([orjson.loads(line) for line in out.splitlines()]) == judged(live)

    # Wide enough for every column: a narrower piped table leaves the verdict id out.
    code, out, _ = await coalmine(
        "replay", "--config", str(config), "--input", str(recording), columns=200
    )
    assert code == 0
    table = out.decode()
    for deployment_id, decision in finals(live).items():
        row = next(line for line in table.splitlines() if deployment_id in line)
        assert decision in row
        final_id = next(
            v["verdict_id"] for v in live if v["final"] and v["deployment_id"] == deployment_id
        )
        assert final_id in row

    # The HTML report of one deployment, from the topics themselves.
    page = tmp_path / "search.html"
    code, _, err = await coalmine(
        "report", "search-v7", "--config", str(config), "--from-kafka", "--output", str(page)
    )
    assert code == 0, err.decode()
    assert "search-v7" in page.read_text()
    published = [v for v in live if v["deployment_id"] == "search-v7"]
    assert f"{len(judged(published))} verdicts".encode() in err
    assert b"samples of 1 distribution metric" in err


async def test_start_and_wait_exit_with_the_decision(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = str(write_config(settings, tmp_path / "coalmine.toml"))
    await create_topics(settings)
    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(30):
            while not await daemon.ready():
                await asyncio.sleep(0.1)
        before = time.time()
        healthy = Scenario("checkout-v50", "checkout")
        broken = Scenario("payments-v9", "payments", canary_error_ratio=0.05)
        for scenario in (healthy, broken):
            code, out, err = await coalmine(
                "start",
                "--config",
                config,
                "--deployment",
                scenario.deployment_id,
                "--service",
                scenario.service,
                "--baseline",
                "v1",
                "--canary",
                "v2",
                "--traffic-weight",
                "50",
            )
            assert code == 0, err.decode()
            assert b"started " + scenario.deployment_id.encode() in out
        # The pipeline waits while the metrics flow (event time from just after `start`).
        waits = [
            asyncio.create_task(
                coalmine(
                    "wait",
                    "--config",
                    config,
                    "--deployment",
                    s.deployment_id,
                    "--timeout",
                    "90s",
                    within=120,
                )
            )
            for s in (healthy, broken)
        ]
        metrics = [
            ("metrics", m.key, m.value)
            for m in simulate([healthy, broken], start=before + 20, duration=600.0, seed=5)
            if m.topic == "metrics"
        ]
        await produce(settings, metrics)
        (ok_code, ok_out, ok_err), (bad_code, bad_out, bad_err) = await asyncio.gather(*waits)
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 30)
    assert ok_code == 0, ok_err.decode()
    assert ok_out.startswith(b"promote checkout-v50/")
    assert bad_code == 1, bad_err.decode()
    assert bad_out.startswith(b"rollback payments-v9/")
    assert b"critical" in bad_out
    assert b"continue checkout-v50/1" in ok_err  # progress: every verdict on stderr

    # The pipeline can also end a deployment itself.
    code, out, err = await coalmine(
        "finish",
        "--config",
        config,
        "--deployment",
        "checkout-v50",
        "--service",
        "checkout",
        "--event",
        "completed",
    )
    assert code == 0, err.decode()
    assert b"completed checkout-v50" in out


async def test_wait_times_out_with_exit_4(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    settings = make_settings(kafka_settings, topic_name)
    config = str(write_config(settings, tmp_path / "coalmine.toml"))
    await create_topics(settings)
    began = time.monotonic()
    code, out, err = await coalmine(
        "wait", "--config", config, "--deployment", "never-started", "--timeout", "2s"
    )
    took = time.monotonic() - began
    assert code == 4, err.decode()
    assert out == b""
    assert b"no final verdict for never-started within 2s" in err
    assert took < 15, took  # interpreter start + 2 s, not a Kafka timeout


async def retained_final(port: int, topic: str) -> bool:
    """Whether the MQTT broker holds a final verdict retained on ``topic``."""
    import aiomqtt  # noqa: PLC0415

    reader = aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5)
    async with reader:
        await reader.subscribe(topic, qos=1)
        # A retained message comes at once on subscribing; none within 0.5 s: none yet.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                async for received in reader.messages:
                    return received.retain and orjson.loads(received.payload)["final"]
    return False


async def test_start_and_wait_over_mqtt(mqtt_broker: Mosquitto, tmp_path: Path) -> None:
    """With `[bus]` naming MQTT only, `start` and `wait` use MQTT (verdicts retained)."""
    import aiomqtt  # noqa: PLC0415

    prefix = f"cm{uuid.uuid4().hex[:8]}"
    config = tmp_path / "mqtt.toml"
    config.write_text(
        f"""
[kafka]
bootstrap_servers = "127.0.0.1:9"
request_timeout = "1s"

[bus]
consume = ["mqtt"]
publish = ["mqtt"]

[mqtt]
port = {mqtt_broker.port}
topic_prefix = "{prefix}"
client_id = "{prefix}-daemon"
{PROFILE_TOML}"""
    )
    from coalmine.config.settings import load_settings  # noqa: PLC0415

    settings = load_settings(config, environ={}).model_copy(
        update={"http": HttpSettings(enabled=False)}
    )
    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(20):
            while not await daemon.ready():
                await asyncio.sleep(0.05)
        before = time.time()
        broken = Scenario("payments-v9", "payments", canary_error_ratio=0.05)
        code, out, err = await coalmine(
            "start",
            "--config",
            str(config),
            "--deployment",
            broken.deployment_id,
            "--service",
            "payments",
            "--baseline",
            "v1",
            "--canary",
            "v2",
        )
        assert code == 0, err.decode()
        assert f"MQTT topic {prefix}/deployments/payments".encode() in out
        client = aiomqtt.Client("127.0.0.1", mqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V5)
        async with client:
            for message in simulate([broken], start=before + 20, duration=300.0, seed=5):
                if message.topic == "metrics":
                    await client.publish(f"{prefix}/metrics/payments", message.value, qos=1)
        # `wait` subscribes once the final verdict was published: it gets the retained one.
        verdicts = f"{prefix}/verdicts/payments/{broken.deployment_id}"
        await eventually(
            lambda: retained_final(mqtt_broker.port, verdicts),
            f"a final verdict retained on {verdicts}",
            within=60.0,
            every=0.2,
        )
        code, out, err = await coalmine(
            "wait",
            "--config",
            str(config),
            "--deployment",
            broken.deployment_id,
            "--timeout",
            "30s",
        )
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
    assert code == 1, err.decode()
    assert out.startswith(b"rollback payments-v9/")
