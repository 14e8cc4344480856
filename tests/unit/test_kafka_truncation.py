"""The Kafka transport's check for a partition whose log ends before what it already read.

A newly elected leader answers fetches with its own high watermark, which lags the old
leader's until its followers have fetched from it; a cluster restarted from its
checkpoints does the same (tests/integration/test_cluster_faults.py's full restart, on
Apache Kafka, in some runs). Taken for lost records, it would have the metrics partitions
re-read from their beginning and their samples counted twice. Here the same answers come
from a stand-in consumer, every time.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from coalmine.bus.kafka import truncation as truncation_module
from coalmine.bus.kafka.clients import Clients
from coalmine.bus.kafka.positions import Positions
from coalmine.bus.kafka.truncation import Truncation

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


def check_at(consumer: StandInConsumer) -> tuple[Truncation, Positions]:
    positions = Positions()
    positions.fetched[TP.topic, TP.partition] = READ
    return Truncation(Clients(consumer=consumer), positions, merge=None), positions


async def test_a_new_leaders_lagging_high_watermark_is_not_taken_for_lost_records() -> None:
    consumer = StandInConsumer(highwater=READ - 1)  # one follower fetch behind
    truncation, positions = check_at(consumer)
    await truncation.check()
    consumer.high = READ + 5  # its followers fetched: the real end, and more
    await truncation.check()
    assert consumer.rewound == []
    assert positions.fetched[TP.topic, TP.partition] == READ


async def test_a_log_that_stays_shorter_is_read_again_from_its_beginning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(truncation_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    consumer = StandInConsumer(highwater=3)  # a broker restarted without its data
    truncation, positions = check_at(consumer)
    for _ in range(4):
        await truncation.check()
        now[0] += 20.0  # a minute in all: longer than any leader takes to catch up
    assert consumer.rewound == [TP]
    assert positions.fetched[TP.topic, TP.partition] == 0
