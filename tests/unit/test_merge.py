"""PartitionMerge: records of unkeyed topics handed out in time order across partitions."""

from __future__ import annotations

import random
from typing import NamedTuple

from coalmine.bus.merge import PartitionMerge


class TP(NamedTuple):
    topic: str
    partition: int


class Message(NamedTuple):
    timestamp: int
    offset: int


OTLP = [TP("otlp", p) for p in range(3)]


def all_drained(_: TP) -> bool:
    return True


def messages(times: list[int]) -> list[Message]:
    return [Message(t, offset) for offset, t in enumerate(times)]


def test_records_go_in_time_order_across_partitions_once_all_are_drained() -> None:
    rng = random.Random(3)  # noqa: S311 - test data
    times = sorted(rng.sample(range(10_000), 300))
    spread: dict[TP, list[int]] = {tp: [] for tp in OTLP}
    for t in times:
        spread[rng.choice(OTLP)].append(t)
    merge = PartitionMerge(["otlp"], wait=2.0)
    for tp, own in spread.items():  # one partition's backlog after another, as fetched
        merge.hold(tp, messages(own))
    released = merge.release(OTLP, all_drained, now=0.0)
    assert [m.timestamp for _, m in released] == times
    for tp in OTLP:  # each partition's records still in offset order
        offsets = [m.offset for p, m in released if p == tp]
        assert offsets == sorted(offsets)
    assert len(merge) == 0


def test_a_partition_still_to_be_fetched_holds_the_others_back_for_at_most_wait() -> None:
    merge = PartitionMerge(["otlp"], wait=2.0)
    merge.hold(OTLP[0], messages([10, 20, 30]))
    merge.hold(OTLP[1], messages([15]))
    behind = {OTLP[2]}  # nothing held, more to fetch

    def drained(tp: TP) -> bool:
        return tp not in behind

    assert merge.release(OTLP, drained, now=0.0) == []
    assert merge.release(OTLP, drained, now=1.9) == []
    merge.hold(OTLP[2], messages([12]))  # its record arrives: earlier than two held ones
    behind.clear()
    released = merge.release(OTLP, drained, now=2.5)
    assert [m.timestamp for _, m in released] == [10, 12, 15, 20, 30]
    # Behind again, with records held: after `wait` with no progress, they go anyway.
    merge.hold(OTLP[0], [Message(40, 3)])
    behind.add(OTLP[1])
    assert merge.release(OTLP, drained, now=3.0) == []
    assert merge.release(OTLP, drained, now=4.9) == []
    assert [m.timestamp for _, m in merge.release(OTLP, drained, now=5.1)] == [40]


def test_an_emptied_partition_that_is_not_drained_stops_the_release() -> None:
    merge = PartitionMerge(["otlp"], wait=2.0)
    merge.hold(OTLP[0], messages([10]))
    merge.hold(OTLP[1], messages([20, 30]))
    # Partition 0 has more to fetch once its held record is out: 20 must wait for it.
    released = merge.release(OTLP[:2], lambda tp: tp != OTLP[0], now=0.0)
    assert [m.timestamp for _, m in released] == [10]
    assert len(merge) == 2


def test_other_topics_partitions_moved_away_and_drops() -> None:
    merge = PartitionMerge(["otlp"], wait=2.0)
    merge.hold(OTLP[0], messages([10]))
    merge.hold(OTLP[1], messages([20]))
    merge.hold(OTLP[2], messages([5]))
    # Partition 2 was given to another daemon: its held record is forgotten.
    metrics = TP("metrics", 0)
    released = merge.release([OTLP[0], OTLP[1], metrics], all_drained, now=0.0)
    assert [(tp.partition, m.timestamp) for tp, m in released] == [(0, 10), (1, 20)]
    merge.hold(OTLP[0], messages([30]))
    merge.drop([OTLP[0]])
    assert len(merge) == 0
    merge.hold(OTLP[1], messages([40]))
    merge.drop()
    assert merge.release(OTLP, all_drained, now=0.0) == []
