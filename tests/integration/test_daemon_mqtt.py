"""The daemon entirely over MQTT (a private Mosquitto): no Kafka is contacted."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import aiomqtt
import orjson

from coalmine.bus.connect import build_transport
from coalmine.config.models import BusSettings, HttpSettings, MqttSettings
from coalmine.config.settings import Settings
from coalmine.daemon.app import Daemon
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import EXPECTED, PROFILE, T0
from tests.metrics import sample_value

if TYPE_CHECKING:
    from support.brokers import Mosquitto


async def test_three_deployments_over_mqtt_with_retained_verdicts(mqtt_broker: Mosquitto) -> None:
    prefix = f"cm{uuid.uuid4().hex[:8]}"
    settings = Settings(
        # Kafka is named nowhere: an unreachable address proves it is never contacted.
        kafka={"bootstrap_servers": "127.0.0.1:9", "request_timeout": 1.0},
        bus=BusSettings(consume=["mqtt"], publish=["mqtt"]),
        mqtt=MqttSettings(port=mqtt_broker.port, topic_prefix=prefix, client_id=prefix),
        profiles={"default": PROFILE},
        http=HttpSettings(enabled=False),
    )
    daemon = Daemon(settings, build_transport(settings))
    task = asyncio.create_task(daemon.run())
    client = aiomqtt.Client("127.0.0.1", mqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V5)
    try:
        async with asyncio.timeout(20):
            while not await daemon.ready():
                await asyncio.sleep(0.05)
        async with client:
            for message in simulate(
                three_deployments(), start=T0, duration=900.0, step=10.0, seed=3
            ):
                kind = "deployments" if message.topic == "deployments" else "metrics"
                topic = f"{prefix}/{kind}/{message.key.decode()}"
                await client.publish(topic, message.value, qos=1)
            await client.publish(f"{prefix}/metrics/checkout", b"{not json", qos=1)
        # A fresh subscriber reads the final verdicts back as retained messages.
        finals: dict[str, str] = {}
        async with asyncio.timeout(30):
            while len(finals) < 3:
                reader = aiomqtt.Client(
                    "127.0.0.1", mqtt_broker.port, protocol=aiomqtt.ProtocolVersion.V5
                )
                async with reader:
                    await reader.subscribe(f"{prefix}/verdicts/#", qos=1)
                    try:
                        async with asyncio.timeout(1.0):
                            async for received in reader.messages:
                                assert received.retain
                                verdict = orjson.loads(received.payload)
                                service = str(received.topic).split("/")[2]
                                assert service == verdict["service"]
                                if verdict["final"]:
                                    finals[verdict["deployment_id"]] = verdict["decision"]
                    except TimeoutError:
                        pass
        assert finals == EXPECTED
        invalid = sample_value(
            daemon.telemetry, "coalmine_invalid_events_total", reason="invalid_json"
        )
        assert invalid == 1
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 20)
