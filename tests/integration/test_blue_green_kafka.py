"""Blue-green switches judged by the real daemon on a real broker.

Two services switch from blue to green at the same event time, each shaped by the
blue-green simulator (``support/quality/switches.py``, fixed seeds): blue serves alone,
green gets a mirrored half of the traffic in a three-minute preview, then a ``switched``
step hands green all of it. One green fails five times as many requests from the switch
on; the other is healthy.

The messages go onto the bus in three parts, as a live pipeline sends them: blue's
history (read before anything is announced), the ``started`` events with the preview's
metrics, then the ``switched`` steps with the metrics after the switch, one message at a
time. A reader follows the verdict topic throughout and notes when each verdict arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics
from coalmine.config.models import (
    HttpSettings,
    MetricSpec,
    Profile,
    ReferenceSpec,
    TopicsSettings,
)
from coalmine.config.settings import Settings
from coalmine.contract import format_time, parse_time
from coalmine.daemon.app import Daemon
from support.quality.switches import MIDNIGHT, Load, Message, Regression, SwitchRun, blue_green
from tests.metrics import sample_value
from tests.polling import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from coalmine.config.models import KafkaSettings

Verdict = dict[str, Any]

SWITCH = MIDNIGHT + 10 * 3600.0
"""Event time both services switch to green: 10:00 UTC."""
PREVIEW = 180.0
"""Seconds of event time between the ``started`` (phase ``preview``) and the switch."""
REFERENCE = 300.0
"""The profile's reference window: blue's five minutes before the switch."""
STARTED = SWITCH - PREVIEW
INTERVAL = 30.0
MIN_DURATION = 60.0
PREVIEW_LOOKS = 5
"""Judgements of the preview, at started + 30 s ... + 150 s; the one at the switch is not."""
MAX_LATENCY = 10.0
"""Wall-clock seconds allowed from the deciding metric message to its verdict."""

BLUE_GREEN = Profile(
    interval=INTERVAL,
    min_duration=MIN_DURATION,
    max_duration=300,
    metrics=(
        MetricSpec(name="latency_ms", direction="increase"),
        MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),
    ),
    reference=ReferenceSpec(before=REFERENCE),
)
"""Judge every 30 s; promote from one minute after the switch; green against blue's 5 min."""

# 1000 requests per second at 0.1% errors, 200 latency samples per 10 s message.
LOAD = Load(base_rate=1000.0, error_ratio=0.001, samples_per_minute=1200.0)


def switch(seed: int, service: str, blue: str, green: str, regression: Regression) -> SwitchRun:
    """One service's blue-green switch at ``SWITCH``, blue's history from ``REFERENCE`` before."""
    return blue_green(
        seed,
        switch_at=SWITCH,
        load=LOAD,
        regression=regression,
        blue=blue,
        green=green,
        service=service,
        preview=PREVIEW,
        mirror_share=0.5,
        before=REFERENCE,
        after=300.0,
        reference={"before": "5m"},
    )


ERRORS = switch(1, "checkout", "v41", "v42", Regression(error_factor=5.0))
"""Green fails 0.5% of requests from the switch on, blue 0.1%."""
HEALTHY = switch(2, "search", "v18", "v19", Regression())
RUNS = (ERRORS, HEALTHY)


def settings_for(kafka: KafkaSettings, topic_name: Callable[[str], str]) -> Settings:
    return Settings(
        kafka=kafka,
        topics=TopicsSettings(
            deployments=topic_name("deployments"),
            metrics=topic_name("metrics"),
            verdicts=topic_name("verdicts"),
            dead_letter=topic_name("dlq"),
        ),
        profiles={"default": BLUE_GREEN},
        http=HttpSettings(enabled=False),
    )


def part(kind: str, start: float, end: float) -> list[tuple[float, Message]]:
    """The runs' messages for topic ``kind`` with event times in ``[start, end)``, in order.

    At equal times the error run's message comes first (the sort is stable).
    """
    timed = [(t, m) for run in RUNS for t, m in run.timed() if m.topic == kind and start <= t < end]
    return sorted(timed, key=lambda item: item[0])


def reference_samples(run: SwitchRun) -> int:
    """Blue's latency samples in the reference window ``[SWITCH - REFERENCE, SWITCH)``."""
    started = next(orjson.loads(m.value) for m in run.messages if m.topic == "deployments")
    blue = started["baseline"]["version"]
    count = 0
    for t, message in run.timed():
        if message.topic != "metrics" or not SWITCH - REFERENCE <= t < SWITCH:
            continue
        for event in orjson.loads(message.value):
            if event.get("version") == blue and event["metric"] == run.latency_metric:
                count += len(event["values"])
    return count


@dataclass(frozen=True, slots=True)
class Read:
    """A verdict and the wall time (monotonic) it was read at."""

    at: float
    verdict: Verdict


class VerdictLog:
    """Follows the verdict topic (one partition) from its beginning in the background."""

    def __init__(self, settings: Settings) -> None:
        self._partition = TopicPartition(settings.topics.verdicts, 0)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False
        )
        self._task: asyncio.Task[None] | None = None
        self.reads: list[Read] = []
        self.next_offset = 0

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        self._consumer.assign([self._partition])
        await self._consumer.seek_to_beginning(self._partition)
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    self.reads.append(Read(now, orjson.loads(record.value)))
                    self.next_offset = record.offset + 1

    def of(self, run: SwitchRun) -> list[Verdict]:
        """The run's verdicts read so far, in the order they were published."""
        return [r.verdict for r in self.reads if r.verdict["deployment_id"] == run.deployment_id]

    def final(self, run: SwitchRun) -> Read | None:
        """The run's first final verdict read so far, if any."""
        return next(
            (
                r
                for r in self.reads
                if r.verdict["deployment_id"] == run.deployment_id and r.verdict["final"]
            ),
            None,
        )

    async def drain(self) -> None:
        """Wait until everything on the topic now has been read."""
        end = (await self._consumer.end_offsets([self._partition]))[self._partition]
        await eventually(lambda: self.next_offset >= end, f"the verdicts read to offset {end}")


@contextlib.asynccontextmanager
async def sender(
    settings: Settings,
) -> AsyncIterator[Callable[[Sequence[tuple[float, Message]]], Awaitable[list[float]]]]:
    """Sends messages one at a time, each acknowledged before the next; returns when each was.

    The wall times returned are monotonic, one per message.
    """
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    topics = {"deployments": settings.topics.deployments, "metrics": settings.topics.metrics}
    await producer.start()

    async def send(messages: Sequence[tuple[float, Message]]) -> list[float]:
        acked = []
        for _, message in messages:
            await producer.send_and_wait(topics[message.topic], message.value, key=message.key)
            acked.append(time.monotonic())
        return acked

    try:
        yield send
    finally:
        await producer.stop()


def consumed(daemon: Daemon, topic: str) -> float:
    """Messages of ``topic`` the daemon has taken in (``coalmine_events_consumed_total``)."""
    return sample_value(daemon.telemetry, "coalmine_events_consumed_total", topic=topic)


def look_of(time_: float) -> int:
    """The judgement index of event time ``time_`` after the switch: numbering goes on."""
    return PREVIEW_LOOKS + math.ceil((time_ - SWITCH) / INTERVAL)


def check_reference(verdict: Verdict, run: SwitchRun) -> None:
    """Green was judged against blue's past: the window before the switch, all of it."""
    assert verdict["checks"]["reference"] == {
        "baseline": "past",
        "window_start": format_time(SWITCH - REFERENCE),
        "window_end": format_time(SWITCH),
    }
    assert verdict["window"]["start"] == format_time(SWITCH)  # durations count from the switch
    latency = next(m for m in verdict["metrics"] if m["metric"] == "latency_ms")
    # Blue's history from before the preview is in it too, not only blue's preview.
    assert latency["n_baseline"] == reference_samples(run)


@dataclass(frozen=True, slots=True)
class Played:
    """What the test saw while sending: the previews' verdicts, the switch's messages."""

    in_preview: dict[str, list[Verdict]]
    """Per deployment, its verdicts read before any ``switched`` step was sent."""
    after_switch: list[tuple[float, Message]]
    """The metric messages from the switch on, in the order sent."""
    acked: list[float]
    """When each of ``after_switch`` was acknowledged (monotonic)."""


async def play(settings: Settings, log: VerdictLog) -> Played:
    """Send the three parts, each once the daemon has taken in the one before it.

    Returns once both final verdicts are read, the daemon has taken in every metric message
    and stopped, and everything it published is read.
    """
    t = settings.topics
    history = part("metrics", -math.inf, STARTED)
    previewed = part("metrics", STARTED, SWITCH)
    after_switch = part("metrics", SWITCH, math.inf)
    async with sender(settings) as send:
        await send(history)
        daemon = Daemon(settings, build_transport(settings))
        task = asyncio.create_task(daemon.run())
        try:
            # Blue's history is taken in before either deployment is announced.
            await eventually(
                lambda: consumed(daemon, t.metrics) >= len(history), "the history read"
            )
            await send(part("deployments", STARTED, SWITCH))
            await send(previewed)
            await eventually(
                lambda: all(len(log.of(run)) >= PREVIEW_LOOKS for run in RUNS),
                "the previews judged",
            )
            in_preview = {run.deployment_id: log.of(run) for run in RUNS}
            await send(part("deployments", SWITCH, math.inf))
            acked = await send(after_switch)
            await eventually(
                lambda: all(log.final(run) is not None for run in RUNS), "both final verdicts"
            )
            total = len(history) + len(previewed) + len(after_switch)
            await eventually(
                lambda: consumed(daemon, t.metrics) >= total, "every metric message read"
            )
        finally:
            daemon.request_stop()
            await asyncio.wait_for(task, 30)
    # Everything the daemon published before it stopped is read.
    await log.drain()
    return Played(in_preview, after_switch, acked)


def check_previews(log: VerdictLog, played: Played) -> None:
    """Judged before any switch was on the bus, never promoted; one final per deployment."""
    for run in RUNS:
        preview = played.in_preview[run.deployment_id]
        assert len(preview) == PREVIEW_LOOKS
        assert [v["decision"] for v in preview] == ["continue"] * PREVIEW_LOOKS
        assert not any(v["final"] for v in preview)
        assert all("reference" not in v["checks"] for v in preview)
        assert [parse_time(v["time"]) for v in preview] == [
            STARTED + INTERVAL * k for k in range(1, PREVIEW_LOOKS + 1)
        ]
        # Green's mirrored share was within tolerance: a canary would have been promoted.
        assert any("a preview waits for the switch" in v["summary"] for v in preview)
        # Exactly one final verdict, and nothing published after it.
        verdicts = log.of(run)
        assert verdicts[:PREVIEW_LOOKS] == preview
        assert [v["final"] for v in verdicts].count(True) == 1
        assert verdicts[-1]["final"]
    assert not any(
        r.verdict["decision"] == "promote" and parse_time(r.verdict["time"]) < SWITCH
        for r in log.reads
    )


def check_rollback(log: VerdictLog, played: Played) -> None:
    """Green with 5x the errors: switched back to blue on the message that showed it."""
    rollback = log.final(ERRORS)
    assert rollback is not None
    verdict = rollback.verdict
    assert verdict["decision"] == "rollback"
    assert "requests" in verdict["summary"]
    assert "latency_ms" not in verdict["summary"]
    requests = next(m for m in verdict["metrics"] if m["metric"] == "requests")
    assert requests["outcome"] == "fail"
    check_reference(verdict, ERRORS)
    decided_at = parse_time(verdict["time"])
    # Decided on a metric message of the service, before the first judgement after the
    # switch fell due: a critical metric does not wait for the interval.
    key = ERRORS.service.encode()
    sent = zip(played.after_switch, played.acked, strict=True)
    mine = [(time_, at) for (time_, m), at in sent if m.key == key]
    assert decided_at in [time_ for time_, _ in mine]
    assert SWITCH < decided_at < SWITCH + INTERVAL
    assert verdict["verdict_id"] == f"{ERRORS.deployment_id}/{look_of(decided_at)}"
    deciding = next(at for time_, at in mine if time_ == decided_at)
    assert rollback.at - deciding < MAX_LATENCY
    assert [v["decision"] for v in log.of(ERRORS)[PREVIEW_LOOKS:]] == ["rollback"]


def check_promote(log: VerdictLog) -> None:
    """The healthy green: promoted at a judgement once min_duration from the switch passed."""
    promote = log.final(HEALTHY)
    assert promote is not None
    verdict = promote.verdict
    assert verdict["decision"] == "promote"
    check_reference(verdict, HEALTHY)
    promoted_at = parse_time(verdict["time"])
    assert promoted_at >= SWITCH + MIN_DURATION
    assert (promoted_at - SWITCH) % INTERVAL == 0
    assert verdict["verdict_id"] == f"{HEALTHY.deployment_id}/{look_of(promoted_at)}"
    after = [v["decision"] for v in log.of(HEALTHY)[PREVIEW_LOOKS:]]
    assert after == ["continue"] * (len(after) - 1) + ["promote"]
    assert all(m["outcome"] == "pass" and m["measured"] for m in verdict["metrics"])


async def test_blue_green_switches_are_rolled_back_or_promoted_against_blues_past(
    kafka_settings: KafkaSettings, topic_name: Callable[[str], str]
) -> None:
    assert ERRORS.started_time == HEALTHY.started_time == STARTED
    settings = settings_for(kafka_settings, topic_name)
    t = settings.topics
    await ensure_topics(
        settings.kafka, {t.deployments: 2, t.metrics: 2, t.verdicts: 1, t.dead_letter: 1}
    )
    async with VerdictLog(settings) as log:
        played = await play(settings, log)
    check_previews(log, played)
    check_rollback(log, played)
    check_promote(log)
