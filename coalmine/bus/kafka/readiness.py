"""Whether the transport can do its work: the brokers answer and its topics exist."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from coalmine.bus.kafka.clients import describe
from coalmine.bus.kafka.topics import existing_topics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coalmine.bus.kafka.clients import Clients
    from coalmine.config.models import KafkaSettings

__all__ = ["Readiness"]

_TTL = 2.0
"""Seconds a positive answer is reused (negative answers are not cached)."""
_TIMEOUT = 5.0
"""Upper bound on one check, so a probe never waits ``request_timeout``."""


class Readiness:
    """Answers ``ready()`` from the admin client's view of the topics, and says why not."""

    def __init__(self, settings: KafkaSettings, clients: Clients, topics: Sequence[str]) -> None:
        self.settings = settings
        self._clients = clients
        self._topics = tuple(topics)
        self._until = 0.0
        self._lock = asyncio.Lock()
        self.unready: str | None = "not connected"
        """Why :meth:`ready` last answered False (None: it answered True)."""

    def forget(self) -> None:
        """Ask the brokers at the next check (the transport stopped)."""
        self._until = 0.0

    async def ready(self, started: bool) -> bool:
        """True when the broker answers and every topic exists."""
        admin = self._clients.admin
        if not started or admin is None:
            self.unready = "not connected"
            return False
        if time.monotonic() < self._until:
            return True
        async with self._lock:
            if time.monotonic() < self._until:
                return True
            try:
                async with asyncio.timeout(min(self.settings.request_timeout, _TIMEOUT)):
                    existing = await existing_topics(admin)
            except Exception as err:  # noqa: BLE001 - readiness must never raise
                self.unready = f"the brokers do not answer ({describe(err)})"
                return False
            missing = [t for t in self._topics if t not in existing]
            if missing:
                self.unready = f"missing topics: {', '.join(missing)} (create them)"
                return False
            was_missing = self.unready is not None and self.unready.startswith("missing topics")
            consumer = self._clients.consumer
            if was_missing and consumer is not None:
                # The consumer would see topics created since at its next metadata refresh,
                # up to metadata_max_age later: refresh now, so they are read in seconds.
                consumer._client.force_metadata_update()  # noqa: SLF001
            self.unready = None
            self._until = time.monotonic() + _TTL
            return True
