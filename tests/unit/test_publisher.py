import asyncio

import orjson

from coalmine.bus.base import Outgoing
from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import TopicsSettings
from coalmine.config.settings import Settings
from coalmine.daemon.app import Daemon
from coalmine.daemon.effects import Effects
from coalmine.daemon.publisher import Publisher
from coalmine.daemon.telemetry import Telemetry
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import PROFILE, T0
from tests.metrics import sample_value
from tests.polling import eventually

TOPICS = TopicsSettings()


class GatedTransport(MemoryTransport):
    """A memory transport whose broker acknowledges a publish only when the gate opens."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[list[bytes]] = []

    async def publish(self, messages) -> None:
        self.calls.append([m.value for m in messages])
        await self.gate.wait()
        await super().publish(messages)


def make_broker() -> MemoryBroker:
    broker = MemoryBroker()
    for name in (TOPICS.deployments, TOPICS.metrics, TOPICS.verdicts, TOPICS.dead_letter):
        broker.create_topic(name, partitions=2)
    return broker


def letters(*values: bytes) -> Effects:
    return Effects(dead_letters=[Outgoing(TOPICS.dead_letter, v) for v in values])


def published(broker: MemoryBroker) -> list[bytes]:
    return [r.value for r in broker.records(TOPICS.dead_letter)]


async def gated_publisher() -> tuple[MemoryBroker, GatedTransport, Publisher]:
    """A publisher (not started) over a started gated transport on a fresh broker."""
    broker = make_broker()
    transport = GatedTransport(broker, [TOPICS.metrics], "g")
    await transport.start()
    publisher = Publisher(
        transport, TOPICS, Telemetry(), wall_clock=lambda: 0.0, stopping=asyncio.Event()
    )
    return broker, transport, publisher


async def test_effects_are_published_in_order_coalescing_what_waited():
    broker, transport, publisher = await gated_publisher()
    publisher.start()
    transport.gate.clear()
    publisher.put(letters(b"1"))
    await eventually(
        lambda: transport.calls == [[b"1"]], "the first publish is in flight, waiting for its ack"
    )
    publisher.put(letters(b"2", b"3"))
    publisher.put(letters(b"4"))
    assert publisher.pending == 4
    settling = asyncio.create_task(publisher.settle())
    # Time passing is the test here: with nothing acknowledged, settle() must not return.
    await asyncio.sleep(0.05)
    assert not settling.done()
    transport.gate.set()
    assert await asyncio.wait_for(settling, 5)
    assert published(broker) == [b"1", b"2", b"3", b"4"]
    # The three queued behind the first went out together, in one round trip.
    assert transport.calls == [[b"1"], [b"2", b"3", b"4"]]
    assert publisher.pending == 0
    await publisher.stop()


async def test_a_failed_publish_is_retried_before_anything_later():
    broker = make_broker()
    transport = MemoryTransport(broker, [TOPICS.metrics], "g")
    await transport.start()
    telemetry = Telemetry()
    acknowledged: list[Effects] = []
    publisher = Publisher(
        transport,
        TOPICS,
        telemetry,
        wall_clock=lambda: 0.0,
        stopping=asyncio.Event(),
        acknowledged=acknowledged.append,
    )
    broker.fail_next_publishes(2)
    publisher.start()
    for value in (b"a", b"b", b"c"):
        publisher.put(letters(value))
    assert await asyncio.wait_for(publisher.settle(), 10)
    assert published(broker) == [b"a", b"b", b"c"]
    assert sample_value(telemetry, "coalmine_publish_failures_total") == 2
    assert len(acknowledged) == 3
    await publisher.stop()


async def test_gives_up_only_when_stopping_and_says_so():
    broker = make_broker()
    transport = MemoryTransport(broker, [TOPICS.metrics], "g")
    await transport.start()
    stopping = asyncio.Event()
    stopping.set()
    publisher = Publisher(transport, TOPICS, Telemetry(), wall_clock=lambda: 0.0, stopping=stopping)
    broker.fail_next_publishes(5)
    publisher.start()
    publisher.put(letters(b"x"))
    assert not await asyncio.wait_for(publisher.settle(), 5)
    assert publisher.gave_up
    assert published(broker) == []
    await publisher.stop()


async def test_verdict_lag_is_observed_at_the_acknowledgement():
    broker = make_broker()
    transport = MemoryTransport(broker, [TOPICS.metrics], "g")
    await transport.start()
    telemetry = Telemetry()
    publisher = Publisher(
        transport, TOPICS, telemetry, wall_clock=lambda: 100.25, stopping=asyncio.Event()
    )
    publisher.start()
    effects = letters(b"v")
    effects.received.append(100.0)
    publisher.put(effects)
    assert await publisher.settle()
    assert sample_value(telemetry, "coalmine_verdict_lag_seconds_sum") == 0.25
    await publisher.stop()


async def test_each_successful_publish_is_timed_and_failed_ones_are_not():
    broker = make_broker()
    transport = MemoryTransport(broker, [TOPICS.metrics], "g")
    await transport.start()
    telemetry = Telemetry()
    publisher = Publisher(
        transport, TOPICS, telemetry, wall_clock=lambda: 0.0, stopping=asyncio.Event()
    )
    broker.fail_next_publishes(1)
    publisher.start()
    publisher.put(letters(b"a"))
    assert await asyncio.wait_for(publisher.settle(), 5)
    publisher.put(letters(b"b"))
    assert await asyncio.wait_for(publisher.settle(), 5)
    assert sample_value(telemetry, "coalmine_publish_failures_total") == 1
    assert sample_value(telemetry, "coalmine_publish_duration_seconds_sum") >= 0.0
    assert sample_value(telemetry, "coalmine_publish_duration_seconds_count") == 2
    await publisher.stop()


async def test_the_daemon_judges_on_while_a_publish_waits_and_commits_nothing_past_it():
    broker = make_broker()
    topic = {"deployments": TOPICS.deployments, "metrics": TOPICS.metrics}
    for message in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3):
        broker.append(topic[message.topic], message.value, key=message.key)
    transport = GatedTransport(broker, [TOPICS.deployments, TOPICS.metrics], "coalmine")
    daemon = Daemon(Settings(profiles={"default": PROFILE}), transport, commit_every=0.0)
    transport.gate.clear()
    task = asyncio.create_task(daemon.run())
    ends = broker.end_positions([TOPICS.deployments, TOPICS.metrics])
    total = sum(ends.values())

    def handled() -> float:
        return sum(
            sample_value(daemon.telemetry, "coalmine_events_consumed_total", topic=topic)
            for topic in (TOPICS.metrics, TOPICS.deployments)
        )

    def judged() -> bool:  # a whole fetch was judged (timed once it is)
        return sample_value(daemon.telemetry, "coalmine_analysis_duration_seconds_count") > 0

    async with asyncio.timeout(20):
        while handled() < total or not judged() or not transport.calls:
            await asyncio.sleep(0.02)
    # Every record was judged while the first publish still waits for its ack...
    assert broker.records(TOPICS.verdicts) == []
    # ...and nothing was committed past a verdict that is not acknowledged.
    assert broker.committed("coalmine") == {}
    transport.gate.set()
    async with asyncio.timeout(20):
        while broker.committed("coalmine") != ends:
            await asyncio.sleep(0.02)
    daemon.request_stop()
    await asyncio.wait_for(task, 10)
    finals = {
        v["deployment_id"]: v["decision"]
        for v in (orjson.loads(r.value) for r in broker.records(TOPICS.verdicts))
        if v["final"]
    }
    assert finals == {
        "checkout-v42": "promote",
        "search-v7": "rollback",
        "payments-v3": "rollback",
    }
