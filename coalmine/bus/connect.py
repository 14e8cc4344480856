"""The buses a configuration names, built as one transport."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coalmine.bus.base import Transport
    from coalmine.config.settings import Settings

__all__ = ["build_transport"]


def build_transport(settings: Settings) -> Transport:
    """The buses ``[bus]`` names, as one transport; Kafka is not touched unless named."""
    from coalmine.bus.combined import CombinedTransport  # noqa: PLC0415

    topics = settings.topics
    consume, publish = settings.bus.consume, settings.bus.publish
    buses: dict[str, Transport] = {}
    if "kafka" in consume or "kafka" in publish:
        from coalmine.bus.kafka import KafkaTransport  # noqa: PLC0415 - aiokafka only if used

        reads = "kafka" in consume
        writes = "kafka" in publish
        buses["kafka"] = KafkaTransport(
            settings.kafka,
            [topics.deployments, topics.metrics, *(i.topic for i in settings.inputs)]
            if reads
            else [],
            produce=[topics.verdicts, topics.dead_letter] if writes else [],
            first=[topics.deployments] if reads else [],
            copartitioned=[topics.deployments, topics.metrics] if reads else [],
            merged=[i.topic for i in settings.inputs] if reads else [],
        )
    if "mqtt" in consume or "mqtt" in publish:
        from coalmine.bus.mqtt import MqttTransport  # noqa: PLC0415 - aiomqtt only if used

        buses["mqtt"] = MqttTransport(
            settings.mqtt, consume="mqtt" in consume, topic_names=topics.model_dump()
        )
    return CombinedTransport([buses[b] for b in consume], [buses[b] for b in publish])
