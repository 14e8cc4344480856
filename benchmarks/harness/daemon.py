"""The daemon under test as a subprocess (``python -m coalmine run``), its configuration and
the benchmarks' analysis profile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from benchmarks.harness.broker import TANSU_FETCH_WAIT_MS, BrokerKind
from benchmarks.harness.broker import idempotent_producer as broker_idempotent
from benchmarks.harness.measure import parse_metrics

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.harness.topics import Topics

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: the daemon runs from here, on this tree's coalmine."""
READY_TIMEOUT = 90.0
"""Seconds a daemon may take from its spawn to ``/readyz`` 200."""
STOP_TIMEOUT = 30.0
"""Seconds a daemon may take to exit on SIGTERM before it gets SIGKILL."""

CONFIG = """\
log_level = "{log_level}"

[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
client_id = "{client_id}"
session_timeout = "{session_timeout:g}s"
max_poll_records = {max_poll_records}
{broker_options}{group_instance}
[topics]
deployments = "{topics.deployments}"
metrics = "{topics.metrics}"
verdicts = "{topics.verdicts}"
dead_letter = "{topics.dead_letter}"

[http]
enabled = true
host = "127.0.0.1"
port = {http_port}

{profile}
"""

PROFILE = """\
[profiles.default]
interval = "{interval:g}s"
min_duration = "{min_duration:g}s"
max_duration = "{max_duration:g}s"

[[profiles.default.metrics]]
name = "latency_ms"
kind = "distribution"
direction = "increase"

[[profiles.default.metrics]]
name = "requests"
kind = "ratio"
objective = 0.999
critical = true
"""
"""The benchmarks' profile: ``latency_ms`` plus the critical ``requests`` ratio."""


def daemon_broker_options(kind: BrokerKind, fetch_max_wait_ms: int | None = None) -> dict:
    """``daemon_config`` keywords for a daemon on ``kind``: tansu's workarounds, or none on
    Apache Kafka. ``fetch_max_wait_ms`` overrides the broker's choice."""
    if fetch_max_wait_ms is None and kind == "tansu":
        fetch_max_wait_ms = TANSU_FETCH_WAIT_MS
    return {
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "idempotent_producer": broker_idempotent(kind),
    }


def bench_profile(interval: float, min_duration: float, max_duration: float | None = None) -> str:
    """``PROFILE`` with its schedule (event seconds); ``max_duration`` defaults to the min."""
    return PROFILE.format(
        interval=interval,
        min_duration=min_duration,
        max_duration=min_duration if max_duration is None else max_duration,
    )


def daemon_config(  # noqa: PLR0913 - keyword options of one file
    bootstrap: str,
    topics: Topics,
    http_port: int,
    profile: str,
    *,
    group: str | None = None,
    session_timeout: float = 3.0,
    log_level: str = "WARNING",
    max_poll_records: int = 2000,
    fetch_max_wait_ms: int | None = TANSU_FETCH_WAIT_MS,
    fetch_min_bytes: int | None = None,
    idempotent_producer: bool = False,
    client_id: str = "coalmine-bench",
    group_instance_id: str | None = None,
) -> str:
    """The daemon's TOML. The defaults suit tansu (no ``InitProducerId``, a fetch held for
    its whole wait); ``fetch_max_wait_ms=None`` and ``idempotent_producer=True`` keep
    coalmine's defaults, as on Apache Kafka (``daemon_broker_options``)."""
    options = ""
    if not idempotent_producer:
        options += "idempotent_producer = false   # tansu has no InitProducerId\n"
    if fetch_max_wait_ms is not None:
        options += f'fetch_max_wait = "{fetch_max_wait_ms}ms"\n'
    if fetch_min_bytes is not None:
        options += f"fetch_min_bytes = {fetch_min_bytes}\n"
    return CONFIG.format(
        group_instance=""
        if group_instance_id is None
        else f'group_instance_id = "{group_instance_id}"\n',
        log_level=log_level,
        bootstrap=bootstrap,
        group=group or f"coalmine-bench-{uuid.uuid4().hex[:6]}",
        session_timeout=session_timeout,
        max_poll_records=max_poll_records,
        broker_options=options,
        client_id=client_id,
        topics=topics,
        http_port=http_port,
        profile=profile,
    )


class DaemonProcess:
    """``python -m coalmine run`` in a subprocess, with its /metrics and /proc at hand."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        config: str,
        http_port: int,
    ) -> None:
        self.config = workdir / f"{name}.toml"
        self.config.write_text(config)
        self.log_path = workdir / f"{name}.log"
        self.url = f"http://127.0.0.1:{http_port}"
        self.command = [sys.executable, "-m", "coalmine", "run", "--config", str(self.config)]
        self.process: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.spawned = time.monotonic()
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env=os.environ | {"PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def get(self, path: str) -> tuple[int, str] | None:
        try:
            async with self.http.get(self.url + path) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def scrape(self) -> dict[str, float]:
        """The daemon's metrics; empty if it does not answer."""
        answer = await self.get("/metrics")
        return parse_metrics(answer[1]) if answer and answer[0] == 200 else {}

    async def wait_ready(self) -> float:
        """Seconds from spawn to ``/readyz`` 200; raises if it dies or takes too long."""
        while True:
            if not self.alive():
                raise SystemExit(f"daemon exited before it was ready:\n{self.log_tail()}")
            answer = await self.get("/readyz")
            if answer is not None and answer[0] == 200:
                return time.monotonic() - self.spawned
            if time.monotonic() - self.spawned > READY_TIMEOUT:
                raise SystemExit(f"daemon not ready after {READY_TIMEOUT:g} s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def wait_for(
        self,
        test: Callable[[dict[str, float]], bool],
        what: str,
        timeout: float,
        every: float = 0.1,
    ) -> float:
        """Poll /metrics until ``test(metrics)``; returns monotonic time it held."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = await self.scrape()
            if metrics and test(metrics):
                return time.monotonic()
            if not self.alive():
                raise SystemExit(f"daemon died waiting for {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out ({timeout:g} s) waiting for {what}")
            await asyncio.sleep(every)

    def kill(self) -> None:
        """SIGKILL, no chance to commit or flush."""
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    async def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after ``STOP_TIMEOUT``); the exit code."""
        with contextlib.suppress(Exception):
            await self.http.close()
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"

    def log_problems(self) -> tuple[list[str], list[str]]:
        """(warning lines, error lines) of its log."""
        text = self.log_path.read_text(errors="replace").splitlines()
        return (
            [line for line in text if "WARNING" in line],
            [line for line in text if "ERROR" in line or "Traceback" in line],
        )

    def describe_problems(self, shown: int = 3) -> str:
        """``N warnings, M errors``, then the first ``shown`` of each, one per line."""
        warnings, errors = self.log_problems()
        lines = [f"{len(warnings)} warnings, {len(errors)} errors"]
        lines += [f"    {line}" for line in warnings[:shown] + errors[:shown]]
        return "\n".join(lines)
