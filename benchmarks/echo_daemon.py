"""The least a canary daemon can do, as a latency baseline for ``verdict_latency.py``.

Run from the repository root: ``python benchmarks/echo_daemon.py --bootstrap HOST:PORT
--deployments T --metrics T --verdicts T [--interval 60] [--fetch-max-wait-ms 10]
[--fetch-min-bytes 1]``.

It reads the deployments and metrics topics as coalmine does (one consumer group, earliest,
the same fetch wait), notes each ``started`` event, and for every metric message whose
event time passes a deployment's next due time (``started + k x interval``) publishes a
verdict-shaped message (``deployment_id``, ``verdict_id``, ``time``, ``decision:
continue``) with ``acks=all`` at once, without waiting for the acknowledgement before the
next fetch. No analysis, no state beyond the due times, no commits: what is left of a
verdict's latency is the broker, the client library and the machine. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from coalmine.contract import format_time, parse_time


class Echo:
    """Due times per service, and the verdicts they make."""

    def __init__(self, deployments: str, interval: float) -> None:
        self.deployments = deployments
        self.interval = interval
        self.open: dict[str, list] = {}
        """Service -> [deployment id, started, next look]."""

    def take(self, topic: str, value: bytes) -> list[tuple[bytes, bytes]]:
        """Verdicts (key, value) that the message makes due."""
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        if topic == self.deployments:
            if event.get("event") == "started":
                self.open[event["service"]] = [
                    event["deployment_id"],
                    parse_time(event["time"]),
                    1,
                ]
            return []
        state = self.open.get(event.get("service"))
        if state is None:
            return []
        dep_id, started, look = state
        at = parse_time(event["time"])
        out = []
        while at > started + look * self.interval:
            verdict = {
                "deployment_id": dep_id,
                "verdict_id": f"{dep_id}/{look}",
                "time": format_time(started + look * self.interval),
                "decision": "continue",
                "final": False,
            }
            out.append((dep_id.encode(), orjson.dumps(verdict)))
            look += 1
        state[2] = look
        return out


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    consumer = AIOKafkaConsumer(
        args.deployments,
        args.metrics,
        bootstrap_servers=args.bootstrap,
        group_id="echo",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=args.fetch_max_wait_ms,
        fetch_min_bytes=args.fetch_min_bytes,
        max_poll_records=args.max_poll_records,
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    echo = Echo(args.deployments, args.interval)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            records = [r for batch in batches.values() for r in batch]
            # As coalmine does: deploy events of a fetch first.
            records.sort(key=lambda r: r.topic != args.deployments)
            for record in records:
                for key, value in echo.take(record.topic, record.value):
                    await producer.send(args.verdicts, value, key=key)
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()  # flushes what is still unacknowledged
        with contextlib.suppress(Exception):
            await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--deployments", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--verdicts", required=True)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=10)
    parser.add_argument("--fetch-min-bytes", type=int, default=1)
    parser.add_argument("--max-poll-records", type=int, default=2000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
