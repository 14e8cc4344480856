"""The daemon's HTTP endpoint: ``/metrics``, ``/livez`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from coalmine.daemon.telemetry import Telemetry

Probe = Callable[[], Awaitable[bool]]


def build_app(telemetry: Telemetry, *, live: Probe, ready: Probe) -> web.Application:
    """An aiohttp application serving the metrics and the two health probes."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(_: web.Request) -> web.Response:
        ok = await live()
        return web.Response(text="ok\n" if ok else "stalled\n", status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok = await ready()
        return web.Response(text="ready\n" if ok else "not ready\n", status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer:
    """Runs the application on a host and port; ``port`` 0 picks a free one."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port nowhere else
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
