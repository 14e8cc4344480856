"""Broker faults under a running daemon, on a three-node Apache Kafka cluster.

One cluster for the module (``support/kafka_broker.py``: KRaft, replication factor 3,
``min.insync.replicas`` 2). Each fault gets topics (replication factor 3), a consumer
group and a daemon subprocess of its own (``test_faults.py``'s), is fed the staggered
five-deployment scenario and, a third of the way in, has one thing done to the cluster
while the stream goes on:

1. ``metrics-leader``: ``kill -9`` of the node leading the metrics partitions (most of
   them), started again after ``DOWN_FOR``;
2. ``verdict-leader``: the same for the leader of the verdict partition;
3. ``coordinator``: the same for the group coordinator of the daemon's group;
4. ``rolling-restart``: each node stopped and started in turn, every partition in sync
   again before the next;
5. ``full-restart``: every node stopped, then all started again.

The last ``HELD_BACK`` input messages wait until the cluster is whole again, so verdicts
are still being made after the fault. The test's producer is acks=all and idempotent and
sends each message again until it is accepted, so a lost input is never the daemon's.

Each fault is played once (by the first test that needs it) and checked by two tests:

- ``test_fault_gives_one_final_each[fault]``: every input is on its topic; each
  deployment has exactly one final verdict with the expected decision and every copy of
  a verdict is identical (``check_guarantees``); the daemon is alive and ready; and its
  verdicts are those of the same input judged offline (``coalmine replay --from-kafka``):
  no record was counted twice or skipped;
- ``test_fault_logs_a_line_per_change[fault]``: the daemon logs at most
  ``LOG_LINES_PER_NODE_DOWN`` WARNING or ERROR lines per node the fault takes down, over
  the whole run: a line per change of state, not one per reconnection attempt. The counts
  are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from coalmine.config.models import KafkaSettings, TopicsSettings
from support.kafka_broker import ApacheKafkaCluster, unavailable_reason
from support.scenario import STAGGERED_EXPECTED, staggered_messages
from tests.integration import test_faults
from tests.integration.test_cli_tools_kafka import coalmine
from tests.integration.test_faults import (
    DaemonProcess,
    check_guarantees,
    read_all,
    topics_named,
    wait_for_finals,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

_UNAVAILABLE = unavailable_reason()

pytestmark = [
    pytest.mark.skipif(
        _UNAVAILABLE is not None, reason=f"Apache Kafka cannot run here: {_UNAVAILABLE}"
    ),
    pytest.mark.timeout(240),
]

# test_faults.py's fixture, shared: a daemon subprocess per call, stopped after the test.
make_daemon = test_faults.make_daemon

LOG_LINES_PER_NODE_DOWN = 20
"""WARNING and ERROR lines the daemon may log per node a fault takes down."""
PARTITIONS = 2
"""Partitions of the deployments and metrics topics (the verdict topic has one)."""
PER_SECOND = 15.0
"""Input messages a second: the scenario's 305 take about 20 s."""
FAULT_AT = 1 / 3
"""The fault begins once this share of the input is accepted."""
HELD_BACK = 30
"""Input messages sent only once the fault is over."""
DOWN_FOR = 6.0
"""Seconds a killed node stays down: a session timeout of the daemon's group."""
SEND_BOUND = 120.0
"""Seconds one input message may take to be accepted, retries included."""
FINALS_TIMEOUT = 120.0
OFFSETS_TOPIC = "__consumer_offsets"
LOST_RECORDS = "the broker lost records"
"""What the daemon logs when a partition's log ends before what it already read."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafkaCluster]:
    started = time.monotonic()
    with ApacheKafkaCluster(log_dir=tmp_path_factory.mktemp("cluster-faults")) as kafka:
        print(f"Apache Kafka, 3 nodes: ready in {time.monotonic() - started:.1f}s")  # noqa: T201
        yield kafka


@dataclass
class Run:
    """One fault's topics, group and notes while it is played."""

    cluster: ApacheKafkaCluster
    topics: TopicsSettings
    group: str
    daemon_pid: int
    events: list[str] = field(default_factory=list)

    def partitions(self) -> list[tuple[str, int]]:
        """Every partition the run's topics and the group's offsets live on."""
        return [
            *((self.topics.deployments, p) for p in range(PARTITIONS)),
            *((self.topics.metrics, p) for p in range(PARTITIONS)),
            (self.topics.verdicts, 0),
            (self.topics.dead_letter, 0),
            (OFFSETS_TOPIC, 0),
        ]


@dataclass
class Outcome:
    """What one played fault left behind, for its two tests."""

    name: str
    why: str
    finals_problem: str | None
    verdicts: list[dict[str, Any]]
    replayed: list[dict[str, Any]]
    missing_inputs: int
    duplicated_inputs: int
    alive: bool
    ready: bool
    log: str
    fault_seconds: float
    finals_seconds: float


@dataclass
class Fault:
    name: str
    act: Callable[[Run], Awaitable[None]]
    nodes_down: int


# -- the faults ---------------------------------------------------------------------------


async def wait_in_sync(run: Run) -> None:
    for topic, partition in run.partitions():
        await run.cluster.wait_in_sync_async(topic, partition, timeout=90.0)


async def kill_and_bring_back(run: Run, victim: int, led: list[tuple[str, int]]) -> None:
    """``kill -9`` a node, wait for new leaders of ``led``, then restart it and resync."""
    cluster = run.cluster
    await asyncio.to_thread(cluster.kill_node, victim)
    killed = time.monotonic()
    moved = [
        await cluster.wait_for_leader_async(topic, p, not_on=victim, timeout=60.0)
        for topic, p in led
    ]
    run.events.append(
        f"node {victim} killed, new leader(s) {moved} in {time.monotonic() - killed:.1f}s"
    )
    await asyncio.sleep(max(0.0, killed + DOWN_FOR - time.monotonic()))
    await asyncio.to_thread(cluster.restart_node, victim)
    await wait_in_sync(run)
    run.events.append(f"back in sync {time.monotonic() - killed:.1f}s after the kill")


async def kill_metrics_leader(run: Run) -> None:
    cluster, metrics = run.cluster, run.topics.metrics
    leaders = {p: await cluster.leader_async(metrics, p) for p in range(PARTITIONS)}
    victim = Counter(leaders.values()).most_common(1)[0][0]
    assert victim is not None
    run.events.append(f"metrics leaders {leaders}")
    led = [(metrics, p) for p, leader in leaders.items() if leader == victim]
    await kill_and_bring_back(run, victim, led)


async def kill_verdict_leader(run: Run) -> None:
    victim = await run.cluster.leader_async(run.topics.verdicts, 0)
    assert victim is not None
    await kill_and_bring_back(run, victim, [(run.topics.verdicts, 0)])


async def kill_coordinator(run: Run) -> None:
    victim = await run.cluster.coordinator_async(run.group)
    # Every group's coordinator leads the one partition of the offsets topic.
    await kill_and_bring_back(run, victim, [(OFFSETS_TOPIC, 0)])


async def rolling_restart(run: Run) -> None:
    cluster = run.cluster
    for node in cluster.node_ids:
        began = time.monotonic()
        await asyncio.to_thread(cluster.stop_node, node)
        await asyncio.sleep(2.0)  # down for a moment, as a node being upgraded is
        await asyncio.to_thread(cluster.restart_node, node)
        await wait_in_sync(run)
        run.events.append(f"node {node} restarted, in sync in {time.monotonic() - began:.1f}s")


async def full_restart(run: Run) -> None:
    cluster = run.cluster
    began = time.monotonic()
    await asyncio.gather(
        *(asyncio.to_thread(cluster.stop_node, node, 20.0) for node in cluster.node_ids)
    )
    run.events.append(f"all nodes stopped in {time.monotonic() - began:.1f}s")
    await asyncio.sleep(DOWN_FOR)
    await asyncio.to_thread(cluster.start)
    await wait_in_sync(run)
    run.events.append(f"back in sync {time.monotonic() - began:.1f}s after the stop")


FAULTS = {
    fault.name: fault
    for fault in (
        Fault("metrics-leader", kill_metrics_leader, nodes_down=1),
        Fault("verdict-leader", kill_verdict_leader, nodes_down=1),
        Fault("coordinator", kill_coordinator, nodes_down=1),
        Fault("rolling-restart", rolling_restart, nodes_down=3),
        Fault("full-restart", full_restart, nodes_down=3),
    )
}


# -- playing a fault ----------------------------------------------------------------------


async def create_replicated(cluster: ApacheKafkaCluster, topics: TopicsSettings) -> None:
    """The topics of the scenario, replicated on every node."""
    await cluster.create_topics_async(
        [topics.deployments, topics.metrics], partitions=PARTITIONS, replication=3
    )
    await cluster.create_topics_async(
        [topics.verdicts, topics.dead_letter], partitions=1, replication=3
    )


class TolerantProducer:
    """acks=all and idempotent; a message the client gave up on goes again on a new one."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.retries = 0
        self._producer: AIOKafkaProducer | None = None

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        deadline = time.monotonic() + SEND_BOUND
        while True:
            try:
                if self._producer is None:
                    self._producer = AIOKafkaProducer(
                        bootstrap_servers=self.bootstrap,
                        acks="all",
                        enable_idempotence=True,
                        request_timeout_ms=15_000,
                        retry_backoff_ms=200,
                    )
                    await self._producer.start()
                # The client retries a batch itself until it expires; a new producer (a
                # new producer id) then starts clean.
                await self._producer.send_and_wait(topic, value, key=key)
            except KafkaError:
                assert time.monotonic() < deadline, f"input not accepted in {SEND_BOUND:g}s"
                self.retries += 1
                await self.close()
                await asyncio.sleep(0.5)
            else:
                return

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await producer.stop()


async def feed(run: Run, fault: Fault) -> float:
    """Send the scenario with the fault running from FAULT_AT on; the fault's seconds."""
    messages = staggered_messages()
    begin = int(len(messages) * FAULT_AT)
    resume = len(messages) - HELD_BACK
    producer = TolerantProducer(run.cluster.bootstrap)
    took = 0.0

    async def timed() -> None:
        nonlocal took
        started, cpu = time.monotonic(), cpu_seconds(run.daemon_pid)
        await fault.act(run)
        took = time.monotonic() - started
        run.events.append(f"daemon CPU {cpu_seconds(run.daemon_pid) - cpu:.1f}s meanwhile")

    faulting: asyncio.Task[None] | None = None
    try:
        for index, (topic, key, value) in enumerate(messages):
            if index == begin:
                faulting = asyncio.create_task(timed())
            if index == resume and faulting is not None:
                await faulting
            name = run.topics.deployments if topic == "deployments" else run.topics.metrics
            await producer.send(name, key, value)
            await asyncio.sleep(1.0 / PER_SECOND)
    finally:
        await producer.close()
        if faulting is not None and not faulting.done():
            faulting.cancel()
    run.events.append(f"{producer.retries} input send(s) retried")
    return took


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def input_counts(run: Run) -> tuple[int, int]:
    """Input messages missing from their topics, and extra copies (from retried sends)."""
    bootstrap = run.cluster.bootstrap
    found: Counter[tuple[str, bytes | None, bytes | None]] = Counter()
    for name, topic in (("deployments", run.topics.deployments), ("metrics", run.topics.metrics)):
        found.update((name, r.key, r.value) for r in await read_all(bootstrap, topic))
    sent: Counter[tuple[str, bytes | None, bytes | None]] = Counter(staggered_messages())
    return (sent - found).total(), (found - sent).total()


async def replay_offline(config: str) -> list[dict[str, Any]]:
    """The verdicts ``coalmine replay`` makes of the topics' input, judged offline."""
    code, out, err = await coalmine(
        "replay", "--config", config, "--from-kafka", "--since", "1h", "--json"
    )
    assert code == 0, err.decode()
    return [orjson.loads(line) for line in out.splitlines()]


async def play(
    fault: Fault,
    cluster: ApacheKafkaCluster,
    make_daemon: Callable[..., DaemonProcess],
    topic_name: Callable[[str], str],
) -> Outcome:
    await asyncio.to_thread(cluster.start)  # a node an earlier failure left dead comes back
    topics = topics_named(topic_name)
    group = f"cluster-{fault.name}-{uuid.uuid4().hex[:8]}"
    await create_replicated(cluster, topics)
    kafka = KafkaSettings(bootstrap_servers=cluster.bootstrap, group_id=group)
    assert kafka.idempotent_producer  # coalmine's default, kept
    daemon = make_daemon(kafka, group, topics, fault.name).start()
    await daemon.wait_ready()
    assert daemon.process is not None
    run = Run(cluster, topics, group, daemon.process.pid)
    begun = time.monotonic()
    fault_seconds = await feed(run, fault)
    why = f"{fault.name}: {'; '.join(run.events)}"
    problem = None
    try:
        verdicts = await wait_for_finals(
            cluster.bootstrap, topics.verdicts, STAGGERED_EXPECTED, FINALS_TIMEOUT, why
        )
    except AssertionError as exc:
        problem = str(exc)
        verdicts = [
            orjson.loads(r.value) for r in await read_all(cluster.bootstrap, topics.verdicts)
        ]
    finals_seconds = time.monotonic() - begun
    missing, duplicated = await input_counts(run)
    with contextlib.suppress(AssertionError):  # not ready in time: the test says so
        await daemon.wait_ready(timeout=60.0)
    ready = await daemon.ready()
    return Outcome(
        name=fault.name,
        why=why,
        finals_problem=problem,
        verdicts=verdicts,
        replayed=await replay_offline(str(daemon.config)),
        missing_inputs=missing,
        duplicated_inputs=duplicated,
        alive=daemon.alive,
        ready=ready,
        log=daemon.output(),
        fault_seconds=fault_seconds,
        finals_seconds=finals_seconds,
    )


@pytest.fixture(scope="module")
def played() -> dict[str, Outcome | BaseException]:
    """Each fault's outcome (or what went wrong playing it), once per module."""
    return {}


@pytest.fixture
def outcome_of(
    played: dict[str, Outcome | BaseException],
    cluster: ApacheKafkaCluster,
    make_daemon: Callable[..., DaemonProcess],
    topic_name: Callable[[str], str],
) -> Callable[[str], Awaitable[Outcome]]:
    async def outcome(name: str) -> Outcome:
        if name not in played:
            try:
                played[name] = await play(FAULTS[name], cluster, make_daemon, topic_name)
            except Exception as exc:
                played[name] = exc
                raise
        found = played[name]
        if isinstance(found, BaseException):
            pytest.fail(f"playing {name} failed in an earlier test: {found!r}")
        return found

    return outcome


def by_id(verdicts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Verdicts by id (a verdict published twice is the same verdict)."""
    return {v["verdict_id"]: v for v in verdicts}


_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+): (.*)$")


def warning_lines(log: str) -> list[str]:
    """The daemon's WARNING and worse lines, as ``LEVEL logger: message``."""
    matches = (_LOG_LINE.match(line) for line in log.splitlines())
    return [f"{m.group(1)} {m.group(2)}: {m.group(3)}" for m in matches if m is not None]


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAULTS))
async def test_fault_gives_one_final_each(
    name: str, outcome_of: Callable[[str], Awaitable[Outcome]]
) -> None:
    outcome = await outcome_of(name)
    why = outcome.why
    print(  # noqa: T201
        f"\n[{name}] {why}\n  fault {outcome.fault_seconds:.1f}s, every final"
        f" {outcome.finals_seconds:.1f}s after the first input; {outcome.duplicated_inputs}"
        f" input(s) on the topics twice, {len(outcome.verdicts)} verdict record(s)"
    )
    assert outcome.missing_inputs == 0, f"{why}: inputs never reached the cluster"
    assert outcome.finals_problem is None, f"{outcome.finals_problem}\n{outcome.log[-6000:]}"
    check_guarantees(outcome.verdicts, STAGGERED_EXPECTED, why)
    assert outcome.alive, f"{why}: the daemon exited\n{outcome.log[-5000:]}"
    assert outcome.ready, f"{why}: the daemon is not ready\n{outcome.log[-5000:]}"
    assert "Traceback" not in outcome.log, f"{why}\n{outcome.log[-5000:]}"
    # Every input is on its topic (checked above): nothing was lost, nothing to re-read.
    assert LOST_RECORDS not in outcome.log, f"{why}: a lagging high watermark taken for loss"
    live, offline = by_id(outcome.verdicts), by_id(outcome.replayed)
    assert live.keys() == offline.keys(), f"{why}: {sorted(live.keys() ^ offline.keys())}"
    assert live == offline, why


@pytest.mark.parametrize("name", FAULTS)
async def test_fault_logs_a_line_per_change(
    name: str, outcome_of: Callable[[str], Awaitable[Outcome]]
) -> None:
    outcome = await outcome_of(name)
    lines = warning_lines(outcome.log)
    bound = LOG_LINES_PER_NODE_DOWN * FAULTS[name].nodes_down
    kinds = Counter(re.sub(r"\d+", "N", line)[:120] for line in lines)
    print(  # noqa: T201
        f"\n[{name}] daemon log: {len(outcome.log.splitlines())} lines,"
        f" {len(lines)} WARNING/ERROR (at most {bound})"
        + "".join(f"\n  {count:5d} x {kind}" for kind, count in kinds.most_common())
    )
    assert len(lines) <= bound, (
        f"{outcome.why}: {len(lines)} WARNING/ERROR lines, at most {bound}:\n"
        + "\n".join(f"{count} x {kind}" for kind, count in kinds.most_common(15))
    )
