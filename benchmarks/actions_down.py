"""Actions with the receiver down: verdict latency with and without, and every delivery made.

Run from the repository root::

    python benchmarks/actions_down.py [--down 300] [--baseline 120] [--broker kafka|tansu]
        [--out benchmarks/results/actions_down.txt]

A private broker, a daemon in this process, and a stream of canaries on live event time:
every ``--every`` seconds a deployment starts (baseline and canary at 100 requests/s each,
one message per second per deployment); its canary's error ratio jumps from 0.1% to 5% a
minute in, and the critical requests metric rolls it back on the message that shows it.

Phase 1 (the same run's baseline): ``--baseline`` seconds with no ``[[actions]]``.
Phase 2: ``--down`` seconds with a signed webhook on every final verdict whose receiver is
down (nothing listens on its port; retries 20, backoff 1 s, at most 60 s apart), then the
receiver comes up. Reported: per phase, the latency from the broker's acknowledgement of
each deciding message (the deployment's latest message before its final verdict is read:
a deployment's messages are a second apart) to the verdict read back from the verdict
topic (p50, p99, max);
their ratio; and whether every final verdict of phase 2 reached the receiver once it was
up, how long after, and how many copies (the same idempotency key each).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.broker import add_broker_option, describe, start_broker
from coalmine.actions.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from coalmine.bus.connect import build_transport
from coalmine.bus.kafka import ensure_topics
from coalmine.config.actions import WebhookAction
from coalmine.config.models import HttpSettings, KafkaSettings, MetricSpec, Profile, TopicsSettings
from coalmine.config.settings import Settings
from coalmine.contract import encode_deploy_event, format_time
from coalmine.daemon.app import Daemon

SECRET = "benchmark-secret-0123456789"  # noqa: S105 - a local test key
PROFILE = Profile(
    interval=10,
    min_duration=60,
    max_duration=600,
    metrics=(MetricSpec(name="requests", kind="ratio", objective=0.999, critical=True),),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """A webhook receiver on loopback: counts verified deliveries per idempotency key."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.keys: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.forged = 0
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(request.headers.get(SIGNATURE_HEADER), body, SECRET, time.time()):
            self.forged += 1
            return web.Response(status=401)
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        self.keys[key] = self.keys.get(key, 0) + 1
        self.first.setdefault(key, time.monotonic())
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def phase(
    kafka: KafkaSettings, name: str, seconds: float, every: float, actions: tuple[Any, ...]
) -> tuple[list[float], list[dict[str, Any]], Daemon, asyncio.Task[None]]:
    """A daemon and ``seconds`` of canaries: each deciding message's latency, the finals.

    The daemon is left running (its actions may still be delivering): the caller stops it.
    """
    topics = TopicsSettings(
        deployments=f"{name}.deployments",
        metrics=f"{name}.metrics",
        verdicts=f"{name}.verdicts",
        dead_letter=f"{name}.dlq",
    )
    counts = {topics.deployments: 2, topics.metrics: 2, topics.verdicts: 1, topics.dead_letter: 1}
    await ensure_topics(kafka, counts)
    settings = Settings(
        kafka=kafka.model_copy(update={"group_id": f"coalmine-{name}"}),
        topics=topics,
        profiles={"default": PROFILE},
        http=HttpSettings(enabled=False),
        actions=actions,
    )
    daemon = Daemon(settings, build_transport(settings))
    running = asyncio.create_task(daemon.run())
    stream = _Stream(kafka, topics, name)
    await stream.start()
    try:
        await stream.play(seconds, every)
    finally:
        await stream.stop()
    return stream.latencies, stream.finals, daemon, running


class _Stream:
    """Canaries fed on live event time; the verdicts read back, timed."""

    def __init__(self, kafka: KafkaSettings, topics: TopicsSettings, name: str) -> None:
        self.topics, self.name = topics, name
        self.acked: dict[str, float] = {}
        """Per deployment, when its latest message was acknowledged."""
        self.latencies: list[float] = []
        self.finals: list[dict[str, Any]] = []
        self.producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=0)
        self.consumer = AIOKafkaConsumer(
            topics.verdicts, bootstrap_servers=kafka.bootstrap_servers, auto_offset_reset="earliest"
        )
        self._stop = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        self._stop.set()
        if self._reader is not None:
            await self._reader
        await self.producer.stop()
        await self.consumer.stop()

    async def _read(self) -> None:
        while not self._stop.is_set():
            for part in (await self.consumer.getmany(timeout_ms=200)).values():
                for record in part:
                    verdict = orjson.loads(record.value)
                    if not verdict["final"]:
                        continue
                    self.finals.append(verdict)
                    sent = self.acked.get(verdict["deployment_id"])
                    if sent is not None:
                        self.latencies.append(time.monotonic() - sent)

    async def play(self, seconds: float, every: float) -> None:
        rng = np.random.default_rng(1)
        began = time.time()
        open_ids: dict[str, float] = {}
        tick = 0
        while time.time() - began < seconds + 120:
            tick += 1
            now = float(math.floor(time.time()))
            if time.time() - began < seconds and (tick - 1) % int(every) == 0:
                dep = f"{self.name}-{tick}"
                value = encode_deploy_event(
                    "started", dep, dep, at=now, baseline="v1", canary="v2", traffic_weight=50
                )
                await self.producer.send_and_wait(self.topics.deployments, value, key=dep.encode())
                open_ids[dep] = now
            done = {v["deployment_id"] for v in self.finals}
            for dep, start in list(open_ids.items()):
                if dep in done:
                    del open_ids[dep]
                    continue
                await self._send(dep, now, 0.05 if now - start > 60 else 0.001, rng)
            if not open_ids and time.time() - began >= seconds:
                return
            await asyncio.sleep(max(0.0, now + 1 - time.time()))

    async def _send(self, dep: str, now: float, canary: float, rng: np.random.Generator) -> None:
        events = []
        for cohort, errors in (("baseline", 0.001), ("canary", canary)):
            bad = int(rng.binomial(100, errors))
            events.append({"service": dep, "deployment_id": dep, "cohort": cohort,
                           "metric": "requests", "time": format_time(now),
                           "good": 100 - bad, "total": 100})  # fmt: skip
        await self.producer.send_and_wait(
            self.topics.metrics, orjson.dumps(events), key=dep.encode()
        )
        self.acked[dep] = time.monotonic()


def stats(values: list[float]) -> str:
    if not values:
        return "-"
    ms = np.array(values) * 1000
    return (
        f"p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms,"
        f" max {ms.max():.1f} ms ({len(values)} verdicts)"
    )


async def run(args: argparse.Namespace) -> str:
    async with start_broker(args.broker) as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        base, _, daemon, running = await phase(kafka, "plain", args.baseline, args.every, ())
        daemon.request_stop()
        await asyncio.wait_for(running, 60)
        port = free_port()
        hook = WebhookAction(
            kind="webhook",
            name="deployer",
            url=f"http://127.0.0.1:{port}/hook",
            secret=SECRET,
            retries=20,
            backoff=1.0,
        )
        down, finals, daemon, running = await phase(kafka, "acting", args.down, args.every, (hook,))
        receiver = Receiver(port)
        await receiver.start()
        up = time.monotonic()
        wanted = {v["verdict_id"] for v in finals}
        deadline = up + 900
        while not wanted <= receiver.keys.keys() and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
        daemon.request_stop()
        await asyncio.wait_for(running, 60)
        await receiver.stop()
    delivered = wanted & receiver.keys.keys()
    after = [receiver.first[k] - up for k in delivered]
    ratio = _p99(down) / _p99(base) if base and down else math.nan
    return (
        f"actions with the receiver down: {describe(args.broker)}\n"
        f"canaries: one every {args.every:g} s, 100 requests/s a cohort, canary errors 0.1% ->"
        " 5% at 60 s (critical requests metric)\n\n"
        f"no actions ({args.baseline:g} s): deciding message -> verdict {stats(base)}\n"
        f"webhook, receiver down {args.down:g} s: deciding message -> verdict {stats(down)}\n"
        f"p99 ratio (down / none): {ratio:.2f}\n"
        f"deliveries once the receiver was up: {len(delivered)} of {len(wanted)} finals"
        f" (0 lost: {'yes' if delivered == wanted else 'NO'}),"
        f" the last {max(after, default=0):.0f} s after it came up;"
        f" copies per key: max {max(receiver.keys.values(), default=0)};"
        f" forged: {receiver.forged}\n"
    )


def _p99(values: list[float]) -> float:
    return float(np.percentile(np.array(values), 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", type=float, default=300.0, help="seconds the receiver is down")
    parser.add_argument("--baseline", type=float, default=120.0, help="seconds without actions")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between canaries")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    add_broker_option(parser)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
