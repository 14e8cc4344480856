"""Several buses as one transport: it claims only the capabilities its buses have."""

from __future__ import annotations

import pytest

from coalmine.bus import MemoryBroker, MemoryTransport, Outgoing, Transport
from coalmine.bus.base import Partitioned
from coalmine.bus.combined import CombinedTransport, PartitionedCombinedTransport
from coalmine.bus.kafka import KafkaTransport
from coalmine.bus.mqtt import MqttTransport
from coalmine.config.models import KafkaSettings, MqttSettings


def test_an_mqtt_only_combined_transport_is_not_partitioned() -> None:
    mqtt = MqttTransport(MqttSettings())
    combined = CombinedTransport([mqtt], [mqtt])
    assert isinstance(combined, Transport)
    assert not isinstance(combined, Partitioned)
    assert not hasattr(combined, "follow")  # nothing to wait on forever


def test_a_combined_transport_with_kafka_is_partitioned() -> None:
    kafka = KafkaTransport(KafkaSettings(), ["metrics"], produce=["verdicts"])
    mqtt = MqttTransport(MqttSettings(), consume=False)
    for consumers, publishers in (([kafka], [kafka]), ([kafka], [mqtt]), ([mqtt], [kafka])):
        combined = CombinedTransport(consumers, publishers)
        assert isinstance(combined, Partitioned)
        assert isinstance(combined, PartitionedCombinedTransport)
        assert isinstance(combined, CombinedTransport)


def test_a_partitioned_combined_transport_needs_a_partitioned_bus() -> None:
    mqtt = MqttTransport(MqttSettings())
    with pytest.raises(ValueError, match="partitioned bus"):
        PartitionedCombinedTransport([mqtt], [mqtt])


async def test_the_partitioned_bus_reads_the_log_back_and_reports_partition_moves() -> None:
    broker = MemoryBroker()
    broker.create_topic("metrics", 2)
    broker.create_topic("verdicts")
    bus = MemoryTransport(broker, ["metrics"], "coalmine")
    combined = CombinedTransport([bus], [bus])
    assert isinstance(combined, Partitioned)
    moves: list[object] = []

    async def before_revoke(partitions: frozenset[tuple[str, int]]) -> None:
        moves.append(partitions)

    async def after_assign(lost: frozenset[tuple[str, int]], gained: object) -> None:
        moves.append((lost, gained))

    combined.listen(before_revoke=before_revoke, after_assign=after_assign)
    await combined.start()
    try:
        await combined.publish([Outgoing("verdicts", b"{}", b"d1")])
        assert [r.value for r in await combined.read_topic("verdicts")] == [b"{}"]
        assert moves  # the memory bus tells of its assignment at start
        assert combined.lag() == {"metrics": 0}
    finally:
        await combined.stop()
