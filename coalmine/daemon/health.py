"""Whether the daemon is alive and ready to judge, and why not.

What ``/livez`` and ``/readyz`` answer, and what the daemon logs when readiness changes.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from coalmine.bus.base import Transport
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["Health"]

log = logging.getLogger("coalmine.daemon.app")

_STALL_AFTER = 60.0
"""Seconds without a turn of the loop after which the daemon is not live."""


class Health:
    """The daemon's liveness and readiness, from what its loop reports."""

    def __init__(self, transport: Transport, telemetry: Telemetry, stopping: asyncio.Event) -> None:
        self._transport = transport
        self._telemetry = telemetry
        self._stopping = stopping
        self._started = False
        self._fetch_failing = False
        self._last_beat = time.monotonic()
        self._unready: str | None = "starting"
        """Why the daemon was last found not ready (None: ready), as last reported."""

    def beat(self) -> None:
        """The loop turned."""
        self._last_beat = time.monotonic()

    def connected(self) -> None:
        """The transport started."""
        self._started = True

    def fetch_failed(self) -> None:
        """A fetch failed (the broker went away)."""
        self._fetch_failing = True

    def fetched(self) -> bool:
        """A fetch succeeded; True if fetches were failing until now."""
        failing, self._fetch_failing = self._fetch_failing, False
        return failing

    async def live(self) -> bool:
        """The loop is turning (it beats at least every fetch timeout)."""
        return time.monotonic() - self._last_beat < _STALL_AFTER

    async def ready(self) -> bool:
        """Started, and the broker reachable with its topics present."""
        ok = (
            self._started
            and not self._stopping.is_set()
            and not self._fetch_failing
            and await self._transport.ready()
        )
        self._telemetry.ready.set(1 if ok else 0)
        return ok

    def why_not_ready(self) -> str:
        """Why :meth:`ready` answered False (call it after :meth:`ready`)."""
        if not self._started:
            return "connecting"
        if self._stopping.is_set():
            return "stopping"
        if self._fetch_failing:
            return "fetching fails"
        return getattr(self._transport, "unready", None) or "the bus is not ready"

    def changed(self, reason: str | None) -> bool:
        """Note why the daemon is not ready now (None: ready); True if that changed."""
        if reason == self._unready:
            return False
        self._unready = reason
        return True

    def announce(self, reason: str | None) -> None:
        """Log once each time readiness changes, with the reason ``/readyz`` answers 503."""
        if not self.changed(reason):
            return
        if reason is None:
            log.info("ready: judging")
        else:
            log.warning("not ready: %s", reason)
