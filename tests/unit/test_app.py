import asyncio
import gc
import signal
from collections import Counter

import aiohttp
import orjson
import pytest

from coalmine._exceptions import TransactionAbortedError
from coalmine.bus.memory import MemoryBroker, MemoryTransport
from coalmine.config.models import HttpSettings, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.daemon.app import Daemon, install_signal_handlers
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import PROFILE, T0
from tests.metrics import sample_value
from tests.polling import eventually

TOPICS = TopicsSettings()


def make_broker() -> MemoryBroker:
    broker = MemoryBroker()
    for name in (TOPICS.deployments, TOPICS.metrics, TOPICS.verdicts, TOPICS.dead_letter):
        broker.create_topic(name, partitions=2)
    return broker


def fill(broker: MemoryBroker) -> None:
    topic = {"deployments": TOPICS.deployments, "metrics": TOPICS.metrics}
    for message in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3):
        broker.append(topic[message.topic], message.value, key=message.key)
    broker.append(TOPICS.metrics, b"not json", key=b"checkout")


def daemon_for(broker: MemoryBroker, *, http: bool = False) -> Daemon:
    settings = Settings(
        profiles={"default": PROFILE},
        http=HttpSettings(enabled=http, port=0),
    )
    transport = MemoryTransport(broker, [TOPICS.deployments, TOPICS.metrics], "coalmine")
    return Daemon(settings, transport)


async def wait_for(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def finals(broker: MemoryBroker) -> dict[str, str]:
    verdicts = [orjson.loads(r.value) for r in broker.records(TOPICS.verdicts)]
    return {v["deployment_id"]: v["decision"] for v in verdicts if v["final"]}


async def test_daemon_judges_publishes_dead_letters_and_commits():
    broker = make_broker()
    fill(broker)
    daemon = daemon_for(broker)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: len(finals(broker)) == 3 and broker.records(TOPICS.dead_letter))
    daemon.request_stop()
    await asyncio.wait_for(task, 10)
    assert finals(broker) == {
        "checkout-v42": "promote",
        "search-v7": "rollback",
        "payments-v3": "rollback",
    }
    (letter,) = broker.records(TOPICS.dead_letter)
    assert letter.value == b"not json"
    # Everything consumed was committed once its effects were published.
    ends = broker.end_positions([TOPICS.deployments, TOPICS.metrics])
    assert broker.committed("coalmine") == ends
    # Each deployment's verdicts reach the bus once each, in the order they were made
    # (handed to the publisher one by one as the router makes them), the final one last.
    verdicts = [orjson.loads(r.value) for r in broker.records(TOPICS.verdicts)]
    for dep_id in finals(broker):
        own = [v for v in verdicts if v["deployment_id"] == dep_id]
        looks = [int(v["verdict_id"].rsplit("/", 1)[1]) for v in own]
        assert looks == sorted(looks), looks
        assert len({(v["verdict_id"], v["time"]) for v in own}) == len(own)
        assert own[-1]["final"]
        assert not any(v["final"] for v in own[:-1])
    assert max(Counter(v["deployment_id"] for v in verdicts).values()) > 2
    # Verdicts are keyed by deployment id.
    assert {r.key for r in broker.records(TOPICS.verdicts)} == {
        b"checkout-v42",
        b"search-v7",
        b"payments-v3",
    }


async def test_failed_publishes_are_retried_and_nothing_is_committed_before():
    broker = make_broker()
    fill(broker)
    broker.fail_next_publishes(3)
    daemon = daemon_for(broker)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: len(finals(broker)) == 3)
    daemon.request_stop()
    await asyncio.wait_for(task, 10)
    assert sample_value(daemon.telemetry, "coalmine_publish_failures_total") == 3
    assert broker.committed("coalmine") == broker.end_positions(
        [TOPICS.deployments, TOPICS.metrics]
    )


class NetworkLikeTransport(MemoryTransport):
    """Publishes as a network client does: a few loop turns before the broker has it."""

    async def publish(self, messages):
        for _ in range(4):
            await asyncio.sleep(0)
        await super().publish(messages)


async def test_verdicts_handed_over_are_on_the_broker_before_judging_resumes():
    broker = make_broker()
    fill(broker)
    settings = Settings(profiles={"default": PROFILE}, http=HttpSettings(enabled=False))
    transport = NetworkLikeTransport(broker, [TOPICS.deployments, TOPICS.metrics], "coalmine")
    transport.max_records = 40  # many fetches, so many hand-overs
    daemon = Daemon(settings, transport)
    steps = daemon.router.steps
    handed = 0
    late: list[int] = []  # at each resume: verdicts handed over, not yet on the broker

    def observed(records, now, emit, **kwargs):
        def note(effects):
            nonlocal handed
            handed += len(effects.verdicts)
            emit(effects)

        inner = steps(records, now, note, **kwargs)
        while True:
            try:
                next(inner)
            except StopIteration as done:
                return done.value
            yield
            if handed:
                late.append(handed - len(broker.records(TOPICS.verdicts)))

    daemon.router.steps = observed
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: len(finals(broker)) == 3)
    daemon.request_stop()
    await asyncio.wait_for(task, 10)
    assert len(late) > 5
    assert max(late) <= 0, late


async def test_a_restarted_daemon_resumes_after_the_committed_position():
    broker = make_broker()
    fill(broker)
    first = daemon_for(broker)
    task = asyncio.create_task(first.run())
    await wait_for(lambda: len(finals(broker)) == 3)
    first.request_stop()
    await asyncio.wait_for(task, 10)
    published = len(broker.records(TOPICS.verdicts))
    ends = broker.end_positions([TOPICS.deployments, TOPICS.metrics])
    assert broker.committed("coalmine") == ends
    second = daemon_for(broker)
    task = asyncio.create_task(second.run())
    # Started (before that, the transport's lag is the whole log) and fetched to the end
    # of the log: at once from the committed positions, later from anywhere before them.
    await eventually(
        lambda: not any(second.transport.lag().values()),
        "the restarted daemon fetched to the end of the log",
    )
    second.request_stop()
    await asyncio.wait_for(task, 10)  # handles the batch in hand before it returns
    # No record before a committed position is handled (let alone judged) again.
    for topic in (TOPICS.deployments, TOPICS.metrics):
        assert sample_value(second.telemetry, "coalmine_events_consumed_total", topic=topic) == 0
    assert len(broker.records(TOPICS.verdicts)) == published
    assert broker.committed("coalmine") == ends


async def test_a_rebuild_does_not_dead_letter_again_what_was_handled_before():
    broker = make_broker()
    topic = {"deployments": TOPICS.deployments, "metrics": TOPICS.metrics}
    # Five minutes of three deployments: all still open, so commits are held back.
    for message in simulate(three_deployments(), start=T0, duration=300.0, step=10.0, seed=3):
        broker.append(topic[message.topic], message.value, key=message.key)
    broker.append(TOPICS.metrics, b"not json", key=b"checkout")
    first = daemon_for(broker)
    task = asyncio.create_task(first.run())
    await wait_for(lambda: broker.records(TOPICS.dead_letter))
    first.request_stop()
    await asyncio.wait_for(task, 10)
    ends = broker.end_positions([TOPICS.metrics])
    committed = broker.committed("coalmine")
    assert any(committed[tp] < end for tp, end in ends.items())  # re-read on restart
    second = daemon_for(broker)
    task = asyncio.create_task(second.run())
    await wait_for(lambda: second.router.deployments)  # rebuilt from the log
    # The records past the committed positions, the malformed one among them, are read
    # again: fetched to the end of the log, and handled before run() returns.
    await eventually(
        lambda: not any(second.transport.lag().values()),
        "the rebuilt daemon fetched to the end of the log",
    )
    second.request_stop()
    await asyncio.wait_for(task, 10)
    assert len(broker.records(TOPICS.dead_letter)) == 1


class TransactionalMemoryTransport(MemoryTransport):
    """Kafka transactions in memory: what is published reaches the broker at the commit.

    ``abort`` names the calls (``"publish"`` or ``"commit"``) whose next one aborts the
    transaction: its messages are dropped and its offsets not committed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending = []
        self.abort: list[str] = []
        self.starts = 0

    async def start(self):
        self.pending = []
        self.starts += 1
        await super().start()

    def _aborted(self, where):
        if where not in self.abort:
            return False
        self.abort.remove(where)
        self.pending = []
        self._fetched = {}
        return True

    async def publish(self, messages):
        if self._aborted("publish"):
            raise TransactionAbortedError("publish: injected abort")
        self.pending.extend(messages)

    async def commit(self, floors=None):
        if self.pending and self._aborted("commit"):
            raise TransactionAbortedError("commit: injected abort")
        pending, self.pending = self.pending, []
        await super().publish(pending)
        await super().commit(floors)


@pytest.mark.parametrize("where", ["publish", "commit"])
async def test_an_aborted_transaction_is_made_again_from_the_last_commit(where, caplog):
    broker = make_broker()
    fill(broker)
    settings = Settings(profiles={"default": PROFILE}, http=HttpSettings(enabled=False))
    transport = TransactionalMemoryTransport(
        broker, [TOPICS.deployments, TOPICS.metrics], "coalmine"
    )
    transport.max_records = 200  # several commits, so the abort falls mid-stream
    transport.abort = [where, where]
    daemon = Daemon(settings, transport, commit_every=0.0)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: len(finals(broker)) == 3 and broker.records(TOPICS.dead_letter))
    daemon.request_stop()
    await asyncio.wait_for(task, 10)
    assert transport.abort == []
    assert transport.starts == 3  # two resumptions from the last commit
    assert caplog.text.count("resuming from the last committed one") == 2
    assert finals(broker) == {
        "checkout-v42": "promote",
        "search-v7": "rollback",
        "payments-v3": "rollback",
    }
    # What the aborted transactions held was made again, once: no id twice, none missing
    # against a daemon that never aborted.
    ids = [orjson.loads(r.value)["verdict_id"] for r in broker.records(TOPICS.verdicts)]
    assert len(ids) == len(set(ids))
    clean = make_broker()
    fill(clean)
    reference = daemon_for(clean)
    task = asyncio.create_task(reference.run())
    await wait_for(lambda: len(finals(clean)) == 3 and clean.records(TOPICS.dead_letter))
    reference.request_stop()
    await asyncio.wait_for(task, 10)
    expected = {orjson.loads(r.value)["verdict_id"] for r in clean.records(TOPICS.verdicts)}
    assert set(ids) == expected
    assert len(broker.records(TOPICS.dead_letter)) == 1


async def test_http_probes_and_metrics():
    broker = make_broker()
    fill(broker)
    daemon = daemon_for(broker, http=True)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: len(finals(broker)) == 3)
    assert daemon.http is not None
    base = f"http://127.0.0.1:{daemon.http.port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/livez") as response:
            assert response.status == 200
        async with session.get(f"{base}/readyz") as response:
            assert response.status == 200
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
    daemon.request_stop()
    await asyncio.wait_for(task, 10)
    assert 'coalmine_verdicts_total{decision="promote"} 1.0' in text
    assert 'coalmine_verdicts_total{decision="rollback"} 2.0' in text
    assert 'coalmine_invalid_events_total{reason="invalid_json"} 1.0' in text
    assert 'coalmine_events_consumed_total{topic="coalmine.metrics"}' in text
    assert "coalmine_active_deployments 0.0" in text
    assert "coalmine_verdict_lag_seconds_count" in text
    assert "coalmine_analysis_duration_seconds_count" in text


async def test_sigterm_stops_the_daemon_gracefully():
    broker = make_broker()
    daemon = daemon_for(broker)
    task = asyncio.create_task(daemon.run())
    await eventually(daemon.ready, "the daemon is ready")
    install_signal_handlers(daemon)
    try:
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(task, 10)
    finally:
        loop = asyncio.get_running_loop()
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
    assert task.done()
    assert not await daemon.ready()


async def test_full_collections_are_rare_while_any_daemon_runs_and_restored_after():
    before = gc.get_threshold()
    assert before[2] < 1_000
    brokers = [make_broker(), make_broker()]
    for broker in brokers:
        fill(broker)
    first, second = (daemon_for(broker) for broker in brokers)
    tasks = [asyncio.create_task(first.run())]
    await wait_for(lambda: len(finals(brokers[0])) == 3)
    assert gc.get_threshold() == (*before[:2], 1_000)  # a full pass after 1,000 middle ones
    tasks.append(asyncio.create_task(second.run()))
    await wait_for(lambda: len(finals(brokers[1])) == 3)
    first.request_stop()
    await asyncio.wait_for(tasks[0], 10)
    assert gc.get_threshold() == (*before[:2], 1_000)  # the second daemon still runs
    second.request_stop()
    await asyncio.wait_for(tasks[1], 10)
    assert gc.get_threshold() == before
