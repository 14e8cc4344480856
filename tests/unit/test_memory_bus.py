"""The in-memory bus keeps the Kafka semantics the daemon relies on."""

from __future__ import annotations

import asyncio
import zlib

import pytest

from coalmine._exceptions import TransportError
from coalmine.bus import MemoryBroker, MemoryTransport, Outgoing, Transport, partition_for
from tests.polling import eventually


async def started(broker: MemoryBroker, consume: list[str], group: str) -> MemoryTransport:
    transport = MemoryTransport(broker, consume, group)
    await transport.start()
    return transport


def waits_on(broker: MemoryBroker) -> list[float]:
    """The timeouts of the waits for a change on ``broker``, each noted as it begins.

    A wait noted here is already parked on the broker by the time another task sees it:
    the noting and the parking happen in one step of the waiting task.
    """
    waits: list[float] = []
    wait = broker.wait_for_change

    async def noted(seconds: float) -> bool:
        waits.append(seconds)
        return await wait(seconds)

    broker.wait_for_change = noted  # type: ignore[method-assign]
    return waits


def test_is_a_transport() -> None:
    assert isinstance(MemoryTransport(MemoryBroker(), ["t"], "g"), Transport)


def test_keys_pick_stable_partitions() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", 4)
    for key in (b"checkout", b"search", b"payments", b"\x00"):
        first = broker.append("t", b"1", key=key)
        second = broker.append("t", b"2", key=key)
        assert first.partition == second.partition == zlib.crc32(key) % 4
        assert partition_for(key, 4) == first.partition
        assert second.offset == first.offset + 1
    assert broker.append("t", b"x").partition == 0  # no key


def test_records_carry_offsets_headers_and_timestamps() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    record = broker.append("t", b"v", key=b"k", headers=(("h", b"1"),), timestamp_ms=1234)
    assert (record.value, record.key, record.headers, record.timestamp_ms) == (
        b"v",
        b"k",
        (("h", b"1"),),
        1234,
    )
    assert broker.append("t", b"w").timestamp_ms is not None
    assert [r.value for r in broker.records("t")] == [b"v", b"w"]


def test_create_topic_rejects_a_different_partition_count() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    broker.create_topic("t", 2)
    with pytest.raises(TransportError, match="2 partitions"):
        broker.create_topic("t", 3)
    assert broker.topics() == {"t": 2}


def test_unknown_topics_are_created_or_refused() -> None:
    assert MemoryBroker(default_partitions=3).append("new", b"x").topic == "new"
    with pytest.raises(TransportError, match="does not exist"):
        MemoryBroker(default_partitions=None).append("new", b"x")


async def test_fetch_keeps_per_partition_order_and_publish_order() -> None:
    broker = MemoryBroker()
    broker.create_topic("a", 3)
    broker.create_topic("b", 1)
    sent = [("a" if i % 3 else "b", f"k{i % 5}".encode(), str(i).encode()) for i in range(30)]
    for topic, key, value in sent:
        broker.append(topic, value, key=key)
    transport = await started(broker, ["a", "b"], "g")
    records = await transport.fetch(0)
    assert [r.value for r in records] == [value for _, _, value in sent]
    for topic, partitions in broker.topics().items():
        for partition in range(partitions):
            offsets = [r.offset for r in records if (r.topic, r.partition) == (topic, partition)]
            assert offsets == list(range(len(offsets)))
    assert await transport.fetch(0) == []


async def test_fetch_honours_max_records() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for i in range(5):
        broker.append("t", str(i).encode(), key=str(i).encode())
    transport = MemoryTransport(broker, ["t"], "g", max_records=2)
    await transport.start()
    batches = [await transport.fetch(0) for _ in range(4)]
    assert [len(b) for b in batches] == [2, 2, 1, 0]
    assert [r.value for b in batches for r in b] == [b"0", b"1", b"2", b"3", b"4"]


async def test_fetch_times_out_empty() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    transport = await started(broker, ["t"], "g")
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await transport.fetch(0.05) == []
    assert 0.04 <= loop.time() - began < 1.0


async def test_waiting_fetch_wakes_on_publish() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    consumer = await started(broker, ["t"], "g")
    producer = await started(broker, [], "p")
    waits = waits_on(broker)
    waiting = asyncio.create_task(consumer.fetch(10))
    await eventually(lambda: waits, "the fetch waits for a change")
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await producer.publish([Outgoing("t", b"hello", b"k", (("h", b"v"),))])
    records = await asyncio.wait_for(waiting, 1)
    assert loop.time() - began < 0.5
    assert [(r.value, r.key, r.headers) for r in records] == [(b"hello", b"k", (("h", b"v"),))]


async def test_waiting_fetch_ignores_other_topics() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    broker.create_topic("other")
    consumer = await started(broker, ["t"], "g")
    waits = waits_on(broker)
    waiting = asyncio.create_task(consumer.fetch(0.2))
    await eventually(lambda: waits, "the fetch waits for a change")
    broker.append("other", b"x")
    assert await waiting == []


async def test_stop_wakes_a_waiting_fetch() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    consumer = await started(broker, ["t"], "g")
    waits = waits_on(broker)
    waiting = asyncio.create_task(consumer.fetch(10))
    await eventually(lambda: waits, "the fetch waits for a change")
    await consumer.stop()
    assert await asyncio.wait_for(waiting, 1) == []
    await consumer.stop()  # twice is fine
    with pytest.raises(TransportError, match="not started"):
        await consumer.fetch(0)


async def test_commit_then_a_new_transport_resumes_after_it() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for i in range(4):
        broker.append("t", str(i).encode(), key=str(i).encode())
    first = await started(broker, ["t"], "g")
    done = await first.fetch(0)
    await first.commit()
    broker.append("t", b"4", key=b"4")
    uncommitted = await first.fetch(0)
    assert [r.value for r in uncommitted] == [b"4"]
    await first.stop()  # crashed before committing b"4"

    second = await started(broker, ["t"], "g")
    assert [r.value for r in await second.fetch(0)] == [b"4"]  # redelivered, nothing else
    await second.commit()
    assert broker.committed("g") == {
        (r.topic, r.partition): r.offset + 1 for r in [*done, *uncommitted]
    }
    third = await started(broker, ["t"], "g")
    assert await third.fetch(0) == []
    other_group = await started(broker, ["t"], "h")
    assert len(await other_group.fetch(0)) == 5


async def test_commit_stores_only_what_was_fetched() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    transport = MemoryTransport(broker, ["t"], "g", max_records=1)
    await transport.start()
    broker.append("t", b"0")
    broker.append("t", b"1")
    await transport.fetch(0)
    await transport.commit()
    assert broker.committed("g") == {("t", 0): 1}
    await transport.commit()  # nothing new: no change
    assert broker.committed("g") == {("t", 0): 1}


async def test_latest_starts_at_the_end_for_a_new_group() -> None:
    broker = MemoryBroker()
    broker.create_topic("t")
    broker.append("t", b"old")
    transport = MemoryTransport(broker, ["t"], "g", auto_offset_reset="latest")
    await transport.start()
    broker.append("t", b"new")
    assert [r.value for r in await transport.fetch(0)] == [b"new"]


async def test_a_reader_sees_what_is_published() -> None:
    broker = MemoryBroker()
    for topic in ("verdicts", "dlq"):
        broker.create_topic(topic)
    writer = await started(broker, [], "coalmine")
    reader = await started(broker, ["verdicts"], "reader")
    await writer.publish([Outgoing("verdicts", b"v1", b"d1"), Outgoing("dlq", b"bad")])
    assert [r.value for r in await reader.fetch(0)] == [b"v1"]
    assert [r.value for r in broker.records("dlq")] == [b"bad"]


async def test_injected_publish_failure() -> None:
    broker = MemoryBroker()
    writer = await started(broker, [], "w")
    broker.fail_next_publishes()
    with pytest.raises(TransportError, match="injected"):
        await writer.publish([Outgoing("t", b"x")])
    await writer.publish([Outgoing("t", b"y")])
    assert [r.value for r in broker.records("t")] == [b"y"]


async def test_ready_needs_start_and_topics() -> None:
    broker = MemoryBroker()
    transport = MemoryTransport(broker, ["t"], "g")
    assert not await transport.ready()
    await transport.start()
    assert not await transport.ready()
    broker.create_topic("t", 2)
    assert await transport.ready()
    assert transport.assignment() == {("t", 0), ("t", 1)}
    await transport.stop()
    assert not await transport.ready()
