"""What production does to a daemon, against a real broker and real processes.

The broker is the session's (Apache Kafka, or tansu where Kafka cannot run: conftest.py).

The daemon runs as a subprocess (``python -m coalmine run``) so it can be killed with
SIGKILL at any moment. Kill moments are random; the seed is in every failure message and
can be fixed with ``COALMINE_FAULT_SEED``. The guarantees checked after every fault:

- every copy of a verdict on the verdict topic has the same content (same ``verdict_id``,
  same judgement);
- each deployment has exactly one final verdict id, with the expected decision.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coalmine._exceptions import ContractError
from coalmine.bus.kafka import ensure_topics, partition_counts
from coalmine.config.models import KafkaSettings, TopicsSettings
from coalmine.contract import decode_deploy_event, decode_metric_events
from coalmine.tools.simulator import Scenario, simulate
from support.brokers import Tansu, free_port
from support.kafka_broker import ApacheKafka, unavailable_reason
from support.scenario import PROFILE_TOML, STAGGERED_EXPECTED, T0, staggered_messages

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


SEED = int(os.environ.get("COALMINE_FAULT_SEED", time.time_ns() % 1_000_000))
pytestmark = pytest.mark.timeout(300)
SESSION_TIMEOUT = 6.0


class DaemonProcess:
    """``coalmine run`` in a subprocess, its output in a log file."""

    def __init__(self, config: Path, log: Path, http_port: int) -> None:
        self.config = config
        self.log = log
        self.http_port = http_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "coalmine", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def rss_mb(self) -> float:
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(li for li in status.splitlines() if li.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def wait_unready(self, timeout: float = 60.0) -> None:
        """Wait until the daemon, still running, answers ``/readyz`` with 503."""
        deadline = time.monotonic() + timeout
        while await self.ready():
            assert time.monotonic() < deadline, f"still ready:\n{self.output()[-3000:]}"
            await asyncio.sleep(0.2)
        assert self.alive, f"daemon exited:\n{self.output()[-3000:]}"

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            assert self.alive, f"daemon exited:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready:\n{self.output()[-3000:]}"
            await asyncio.sleep(0.2)


def write_config(
    path: Path,
    kafka: KafkaSettings,
    group: str,
    topics: TopicsSettings,
    port: int,
    *,
    kafka_extra: str = "",
) -> Path:
    """A daemon's configuration file; ``kafka_extra`` adds lines to its ``[kafka]`` table."""
    path.write_text(
        f"""
log_level = "INFO"

[kafka]
bootstrap_servers = "{kafka.bootstrap_servers}"
group_id = "{group}"
idempotent_producer = {str(kafka.idempotent_producer).lower()}
session_timeout = "{SESSION_TIMEOUT}s"
request_timeout = "10s"
{kafka_extra}
[topics]
deployments = "{topics.deployments}"
metrics = "{topics.metrics}"
verdicts = "{topics.verdicts}"
dead_letter = "{topics.dead_letter}"

[http]
port = {port}
"""
        + PROFILE_TOML
    )
    return path


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterable[Callable[..., DaemonProcess]]:
    daemons: list[DaemonProcess] = []

    def make(kafka: KafkaSettings, group: str, topics: TopicsSettings, name: str) -> DaemonProcess:
        port = free_port()
        config = write_config(tmp_path / f"{name}.toml", kafka, group, topics, port)
        daemon = DaemonProcess(config, tmp_path / f"{name}.log", port)
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        daemon.stop()


def topics_named(topic_name: Callable[[str], str]) -> TopicsSettings:
    return TopicsSettings(
        deployments=topic_name("deployments"),
        metrics=topic_name("metrics"),
        verdicts=topic_name("verdicts"),
        dead_letter=topic_name("dlq"),
    )


async def create(kafka: KafkaSettings, topics: TopicsSettings, partitions: int) -> None:
    await ensure_topics(
        kafka,
        {
            topics.deployments: partitions,
            topics.metrics: partitions,
            topics.verdicts: 2,
            topics.dead_letter: 1,
        },
    )


async def produce(
    bootstrap: str,
    topics: TopicsSettings,
    messages: list[tuple[str, bytes, bytes]],
    per_second: float,
) -> None:
    """Send the messages in order, keyed by service, at a steady pace."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for topic, key, value in messages:
            name = topics.deployments if topic == "deployments" else topics.metrics
            await producer.send_and_wait(name, value, key=key)
            await asyncio.sleep(1.0 / per_second)
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str, topic: str, isolation_level: str = "read_uncommitted"
) -> list[Any]:
    """Every record now on ``topic`` (outside any group)."""
    # The admin client's count: a consumer outside a group may have no metadata yet.
    count = (await partition_counts(KafkaSettings(bootstrap_servers=bootstrap), [topic])).get(
        topic, 0
    )
    if not count:
        return []
    tps = [TopicPartition(topic, p) for p in range(count)]
    # "earliest" as the default reset too: aiokafka lets the reset of a new assignment
    # (in flight during end_offsets) overwrite the seek to the beginning with its answer.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        remaining = {tp for tp, end in ends.items() if end > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                # tansu's ListOffsets answers the last batch's base offset + 1: the fetch's
                # high watermark is the real end (Apache Kafka's answer is already that).
                ends[tp] = max(ends[tp], consumer.highwater(tp) or 0)
                records.extend(m for m in messages if m.offset < ends[tp])
            for tp in list(remaining):
                if await consumer.position(tp) >= max(ends[tp], consumer.highwater(tp) or 0):
                    remaining.discard(tp)
        return records
    finally:
        await consumer.stop()


async def wait_for_finals(
    bootstrap: str,
    topic: str,
    expected: Iterable[str],
    timeout: float,
    why: str,
    isolation_level: str = "read_uncommitted",
) -> list[dict[str, Any]]:
    wanted = set(expected)
    deadline = time.monotonic() + timeout
    while True:
        records = await read_all(bootstrap, topic, isolation_level)
        verdicts = [orjson.loads(r.value) for r in records]
        finals = {v["deployment_id"] for v in verdicts if v["final"]}
        if wanted <= finals:
            return verdicts
        assert time.monotonic() < deadline, f"{why}: no final verdict for {wanted - finals}"
        await asyncio.sleep(1.0)


async def kill_at_random_moments(daemon: DaemonProcess, rng: random.Random) -> str:
    """``kill -9`` the daemon three times in its first 12 s, restarting it at once each
    time; returns the moments, with the seed, for failure messages."""
    kills = sorted(rng.uniform(0.5, 12.0) for _ in range(3))
    begun = time.monotonic()
    for moment in kills:
        await asyncio.sleep(max(0.0, begun + moment - time.monotonic()))
        daemon.kill()
        daemon.start()
    return f"seed {SEED}, kills at {[round(k, 1) for k in kills]}s"


async def finals_or_log(
    daemon: DaemonProcess, bootstrap: str, topic: str, why: str, **options: Any
) -> list[dict[str, Any]]:
    """:func:`wait_for_finals` of the staggered scenario; its failure shows the daemon log."""
    try:
        return await wait_for_finals(bootstrap, topic, STAGGERED_EXPECTED, why=why, **options)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon.output()[-6000:]}") from None


def check_guarantees(verdicts: list[dict[str, Any]], expected: dict[str, str], why: str) -> None:
    copies: dict[str, dict[str, Any]] = {}
    for verdict in verdicts:
        first = copies.setdefault(verdict["verdict_id"], verdict)
        assert first == verdict, f"{why}: two different verdicts {verdict['verdict_id']}"
    finals: dict[str, set[str]] = defaultdict(set)
    decisions: dict[str, str] = {}
    for verdict in copies.values():
        if verdict["final"]:
            finals[verdict["deployment_id"]].add(verdict["verdict_id"])
            decisions[verdict["deployment_id"]] = verdict["decision"]
    assert {d: len(ids) for d, ids in finals.items()} == dict.fromkeys(expected, 1), why
    assert decisions == expected, why


async def test_kill_9_at_random_moments_then_restart_gives_one_final_each(
    kafka_broker: ApacheKafka | Tansu,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    rng = random.Random(SEED)  # noqa: S311 - kill moments, not secrets
    topics = topics_named(topic_name)
    await create(kafka_settings, topics, partitions=2)
    bootstrap = kafka_broker.bootstrap
    daemon = make_daemon(kafka_settings, kafka_settings.group_id, topics, "daemon").start()
    messages = staggered_messages()
    feeding = asyncio.create_task(produce(bootstrap, topics, messages, per_second=30.0))
    why = await kill_at_random_moments(daemon, rng)
    await feeding
    verdicts = await finals_or_log(daemon, bootstrap, topics.verdicts, why, timeout=90.0)
    check_guarantees(verdicts, STAGGERED_EXPECTED, why)
    assert daemon.alive
    assert "rebuilding" in daemon.output(), why


async def test_two_daemons_one_killed_the_other_finishes_every_deployment(
    kafka_broker: ApacheKafka | Tansu,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    rng = random.Random(SEED + 1)  # noqa: S311
    topics = topics_named(topic_name)
    await create(kafka_settings, topics, partitions=4)
    bootstrap = kafka_broker.bootstrap
    first = make_daemon(kafka_settings, kafka_settings.group_id, topics, "first").start()
    second = make_daemon(kafka_settings, kafka_settings.group_id, topics, "second").start()
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    feeding = asyncio.create_task(produce(bootstrap, topics, staggered_messages(), per_second=30.0))
    moment = rng.uniform(1.0, 8.0)
    await asyncio.sleep(moment)
    first.kill()
    await feeding
    why = f"seed {SEED + 1}, first daemon killed at {moment:.1f}s"
    verdicts = await wait_for_finals(
        bootstrap, topics.verdicts, STAGGERED_EXPECTED, timeout=120.0, why=why
    )
    check_guarantees(verdicts, STAGGERED_EXPECTED, why)
    assert second.alive
    # The survivor took the dead daemon's partitions over and rebuilt them from the log.
    assert "rebuilding" in second.output().split("assigned partitions")[-1] or (
        second.output().count("assigned partitions") >= 2
    ), why


class EmptyRestart:
    """A broker of its own that can be killed and brought back empty on the same port.

    tansu keeps its data in memory, so a restarted tansu is empty by itself; Apache Kafka
    comes back as a new node with fresh storage (topic auto-creation off, as in production).
    """

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        self.lives = 0
        self.broker: Tansu | ApacheKafka = self._new()

    def _new(self) -> Tansu | ApacheKafka:
        self.lives += 1
        if self.kind == "tansu":
            return Tansu(log_dir=self.workdir / "tansu", port=self.port)
        return ApacheKafka(
            log_dir=self.workdir / f"kafka-{self.lives}",
            port=self.port,
            properties={"auto.create.topics.enable": "false"},
        )

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def kill(self) -> None:
        self.broker.kill()

    def start_empty(self) -> None:
        if self.kind == "tansu":
            self.broker.start()
        else:
            self.broker.stop()
            self.broker = self._new()
            self.broker.start()

    def __enter__(self) -> Self:
        self.broker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.broker.stop()


@pytest.mark.parametrize(
    "kind",
    [
        "tansu",
        pytest.param(
            "kafka",
            marks=pytest.mark.skipif(
                unavailable_reason() is not None, reason="Apache Kafka cannot run here"
            ),
        ),
    ],
)
async def test_broker_killed_and_restarted_empty_the_daemon_reconnects_and_carries_on(
    tmp_path: Path, make_daemon: Callable[..., DaemonProcess], kind: str
) -> None:
    # The group is lost with the data: the daemon must not commit positions of the lost
    # log into the recreated one (aiokafka would send that commit as generation -1, which
    # Apache Kafka accepts for an empty group), and must read the recreated log from its
    # beginning at once rather than wait out a new leader's lagging high watermark.
    topics = TopicsSettings(
        deployments="faults.deployments",
        metrics="faults.metrics",
        verdicts="faults.verdicts",
        dead_letter="faults.dlq",
    )
    with EmptyRestart(kind, tmp_path) as broker:
        kafka = KafkaSettings(
            bootstrap_servers=broker.bootstrap, idempotent_producer=kind == "kafka"
        )
        await create(kafka, topics, partitions=2)
        daemon = make_daemon(kafka, "faults", topics, "daemon").start()
        await daemon.wait_ready()
        messages = staggered_messages()
        half = len(messages) // 2
        await produce(broker.bootstrap, topics, messages[:half], per_second=60.0)
        await wait_for_finals(broker.bootstrap, topics.verdicts, ["search-v7"], 60.0, "before")

        broker.kill()
        await daemon.wait_unready()  # it sees the broker gone, and keeps running
        broker.start_empty()
        await create(kafka, topics, partitions=2)
        # A deployment announced after the restart, and the rest of the first stream.
        later = [
            (m.topic, m.key, m.value)
            for m in simulate(
                [Scenario("checkout-v43", "checkout")],
                start=T0 + 1200,
                duration=420.0,
                step=10.0,
                seed=9,
            )
        ]
        await produce(broker.bootstrap, topics, messages[half:] + later, per_second=60.0)
        try:
            verdicts = await wait_for_finals(
                broker.bootstrap, topics.verdicts, ["checkout-v43"], 120.0, "after the restart"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{daemon.output()[-6000:]}") from None
        assert daemon.alive
        await daemon.wait_ready()
        finals = [v for v in verdicts if v["final"] and v["deployment_id"] == "checkout-v43"]
        assert {v["verdict_id"] for v in finals} == {finals[0]["verdict_id"]}
        assert finals[0]["decision"] == "promote"
        output = daemon.output()
        # It says what it could not recover: the deployments open when the log was lost.
        assert "cannot be recovered" in output or "the broker lost records" in output, output
        assert "Traceback" not in output, output[-3000:]


# -- fuzzed malformed input ----------------------------------------------------------------

_VALID_METRIC = {
    "service": "checkout",
    "cohort": "canary",
    "metric": "latency_ms",
    "time": T0,
    "values": [1.0, 2.0],
}


def _corrupt(event: dict[str, Any], how: str, junk: Any) -> dict[str, Any]:
    broken = dict(event)
    if how == "drop":
        del broken[(junk % 3 and ("service", "metric", "time")[junk % 3]) or "service"]
    elif how == "time":
        broken["time"] = "not a time"
    elif how == "counts":
        broken.pop("values")
        broken.update(good=5, total=2)
    elif how == "negative":
        broken.pop("values")
        broken.update(good=-1, total=3)
    elif how == "values":
        broken["values"] = ["fast", None]
    else:
        broken["cohort"] = "neither"
    return broken


_int64 = st.integers(-(2**63), 2**63 - 1)
_malformed = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\xff{" + b),
    st.one_of(_int64, st.text(max_size=20), st.booleans(), st.none()).map(orjson.dumps),
    st.lists(_int64, min_size=1, max_size=4).map(orjson.dumps),
    st.builds(
        _corrupt,
        st.just(_VALID_METRIC),
        st.sampled_from(["drop", "time", "counts", "negative", "values", "cohort"]),
        st.integers(0, 10),
    ).map(orjson.dumps),
)


def malformed_messages(count: int) -> list[tuple[str, bytes]]:
    """``count`` messages (topic, value) that the contract rejects, made by hypothesis."""
    found: list[tuple[str, bytes]] = []

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(value=_malformed, to_deployments=st.booleans())
    def collect(value: bytes, to_deployments: bool) -> None:
        topic = "deployments" if to_deployments else "metrics"
        decode = decode_deploy_event if to_deployments else decode_metric_events
        try:
            decode(value)
        except ContractError:
            found.append((topic, value))

    collect()
    return found


async def test_thousands_of_fuzzed_malformed_messages_all_go_to_the_dead_letter_topic(
    kafka_broker: ApacheKafka | Tansu,
    kafka_settings: KafkaSettings,
    topic_name: Callable[[str], str],
    make_daemon: Callable[..., DaemonProcess],
) -> None:
    topics = topics_named(topic_name)
    await create(kafka_settings, topics, partitions=2)
    bootstrap = kafka_broker.bootstrap
    daemon = make_daemon(kafka_settings, kafka_settings.group_id, topics, "daemon").start()
    await daemon.wait_ready()
    messages = malformed_messages(4000)
    assert len(messages) >= 3000  # hypothesis made enough that the contract rejects
    warm_up, rest = messages[:1000], messages[1000:]

    async def send(batch: list[tuple[str, bytes]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for topic, value in batch:
                name = topics.deployments if topic == "deployments" else topics.metrics
                await producer.send(name, value, key=b"fuzz")
            await producer.flush()
        finally:
            await producer.stop()

    async def dead_letters(expected: int) -> list[Any]:
        deadline = time.monotonic() + 90.0
        while len(letters := await read_all(bootstrap, topics.dead_letter)) < expected:
            assert daemon.alive, daemon.output()[-3000:]
            assert time.monotonic() < deadline, f"{len(letters)} of {expected} dead letters"
            await asyncio.sleep(0.5)
        return letters

    await send(warm_up)
    await dead_letters(len(warm_up))
    rss_before = daemon.rss_mb()
    await send(rest)
    letters = await dead_letters(len(messages))
    rss_after = daemon.rss_mb()
    assert len(letters) == len(messages)
    assert all(dict(letter.headers).get("coalmine-error") for letter in letters)
    assert daemon.alive
    # Flat: 3000 more invalid messages may not grow the daemon by more than a few MB
    # (allocator noise and the Prometheus label set; no per-message state is kept).
    assert rss_after - rss_before < 15.0, (rss_before, rss_after)
    assert daemon.stop() == 0
