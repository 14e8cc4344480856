"""Real HTTP receivers on loopback for the actions' tests: webhooks, chats, a fake GitHub."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from coalmine.actions.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from coalmine.analyzers.result import MetricResult
from coalmine.contract import Verdict, Window

if TYPE_CHECKING:
    from collections.abc import Callable


def free_port() -> int:
    """A loopback port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    """One request as the receiver saw it."""

    path: str
    body: bytes
    headers: dict[str, str]
    verified: bool

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get(IDEMPOTENCY_HEADER)


@dataclass
class Receiver:
    """An aiohttp server that checks ``Coalmine-Signature`` with ``verify`` (401 when it fails).

    ``statuses`` are answered in turn (then 200); ``delay`` holds each answer back that long;
    ``signed`` False accepts requests without a valid signature (chat webhooks).
    """

    secret: str = "receiver-secret-0123456789"  # noqa: S105 - a test key
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    signed: bool = True
    clock: Callable[[], float] = time.time
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify(request.headers.get(SIGNATURE_HEADER), body, self.secret, self.clock())
        self.received.append(Received(request.path_qs, body, dict(request.headers), ok))
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.delay)
        if self.signed and not ok:
            return web.Response(status=401, text="bad signature")
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


def verdict(
    decision: str = "rollback",
    *,
    final: bool = True,
    service: str = "checkout",
    deployment_id: str = "checkout-v42",
    index: int = 7,
    profile: str = "default",
) -> Verdict:
    """A verdict as the judge makes them, with one failing critical metric."""
    metrics = (
        MetricResult(
            "latency_ms", "mann_whitney", "pass", False, True, 4000, 400, "latency_ms +1% (ok)"
        ),
        MetricResult(
            "requests",
            "burn_rate",
            "fail",
            True,
            True,
            41000,
            2100,
            "requests: canary error ratio 2.10% vs baseline 0.10% (burn 21.0x vs 1.0x)",
            {"burn_canary": 21.0},
        ),
    )
    return Verdict(
        verdict_id=f"{deployment_id}/{index}",
        deployment_id=deployment_id,
        service=service,
        decision=decision,  # type: ignore[arg-type]
        final=final,
        score=0.0,
        summary="critical: requests: canary error ratio 2.10% vs baseline 0.10%",
        metrics=metrics,
        window=Window(1_795_000_000.0, 1_795_000_420.0),
        time=1_795_000_420.0,
        config_digest="sha256:00",
        profile=profile,
    )


def as_fields(value: Verdict) -> dict[str, Any]:
    return value.to_dict()
