"""KafkaTransport's check for a partition whose log ends before what it already read.

A newly elected leader answers fetches with its own high watermark, which lags the old
leader's until its followers have fetched from it; a cluster restarted from its
checkpoints does the same. tests/integration/test_cluster_faults.py's full restart shows
it on Apache Kafka (about three runs in five): the daemon took it for lost records,
re-read the metrics partitions from their beginning and counted their samples twice.
Here the same answers come from a stand-in consumer, every time.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from coalmine.bus import kafka as kafka_module
from coalmine.bus.kafka import KafkaTransport
from coalmine.config.models import KafkaSettings

if TYPE_CHECKING:
    import pytest

TP = TopicPartition("metrics", 0)
READ = 79
"""The position after the last record handed out."""


class StandInConsumer:
    """The three calls the check makes; ``highwater`` is what the last fetch answered."""

    def __init__(self, highwater: int) -> None:
        self.high = highwater
        self.rewound: list[Any] = []

    def assignment(self) -> set[Any]:
        return {TP}

    def highwater(self, _tp: Any) -> int:
        return self.high

    async def seek_to_beginning(self, *tps: Any) -> None:
        self.rewound.extend(tps)


def transport_at(consumer: StandInConsumer) -> KafkaTransport:
    transport = KafkaTransport(KafkaSettings(), ["metrics"])
    transport._consumer = consumer
    transport._fetched[TP.topic, TP.partition] = READ
    return transport


async def test_a_new_leaders_lagging_high_watermark_is_not_taken_for_lost_records() -> None:
    consumer = StandInConsumer(highwater=READ - 1)  # one follower fetch behind
    transport = transport_at(consumer)
    await transport._check_truncated()
    consumer.high = READ + 5  # its followers fetched: the real end, and more
    await transport._check_truncated()
    assert consumer.rewound == []
    assert transport._fetched[TP.topic, TP.partition] == READ


async def test_a_log_that_stays_shorter_is_read_again_from_its_beginning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(kafka_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    consumer = StandInConsumer(highwater=3)  # a broker restarted without its data
    transport = transport_at(consumer)
    for _ in range(4):
        await transport._check_truncated()
        now[0] += 20.0  # a minute in all: longer than any leader takes to catch up
    assert consumer.rewound == [TP]
    assert transport._fetched[TP.topic, TP.partition] == 0
