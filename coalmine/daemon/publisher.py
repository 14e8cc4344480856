"""Publishing verdicts and dead letters in order, while the daemon goes on judging.

The daemon hands verdicts to the :class:`Publisher` the moment they are made; at the
router's next pause the publisher sends everything queued in one ``Transport.publish``
(one round trip to the broker), and while it waits for the acknowledgement the rest of
the fetch is judged. So a verdict waits for at most one publish already in flight, not
for the rest of its fetch or for the commit. Order is kept: a batch is sent only after
the one before it was acknowledged. A failed publish is retried, with backoff, before
anything later is sent.

The daemon commits consumer offsets only after :meth:`Publisher.settle`: every effect
handed over so far is acknowledged, so no offset is committed past an unpublished verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from coalmine._exceptions import TransactionAbortedError, TransportError

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.bus.base import Outgoing, Transport
    from coalmine.config.models import TopicsSettings
    from coalmine.daemon.effects import Effects
    from coalmine.daemon.telemetry import Telemetry

log = logging.getLogger(__name__)

_MAX_BACKOFF = 30.0


class Publisher:
    """Publishes effects in the order they were made, one broker round trip at a time."""

    def __init__(
        self,
        transport: Transport,
        topics: TopicsSettings,
        telemetry: Telemetry,
        *,
        wall_clock: Callable[[], float],
        stopping: asyncio.Event,
        acknowledged: Callable[[Effects], None] = lambda _: None,
    ) -> None:
        self._transport = transport
        self._topics = topics
        self._telemetry = telemetry
        self._wall_clock = wall_clock
        self._stopping = stopping
        self._acknowledged = acknowledged
        self._queue: deque[Effects] = deque()
        self._queued_messages = 0
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._task: asyncio.Task[None] | None = None
        self.gave_up = False
        """A publish failed while stopping: what is queued was not published."""
        self.aborted = False
        """A Kafka transaction was aborted: what was acknowledged since the last commit is
        gone too, and the daemon must resume from the last committed transaction."""

    @property
    def pending(self) -> int:
        """Messages handed over and not acknowledged yet."""
        return self._queued_messages

    def start(self) -> None:
        """Start sending (in a task of the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="coalmine-publisher")

    async def stop(self) -> None:
        """Stop sending; call :meth:`settle` first to publish what is queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def reset(self) -> None:
        """Stop, and forget everything queued (the daemon re-makes it from the log)."""
        await self.stop()
        self._queue.clear()
        self._queued_messages = 0
        self.gave_up = self.aborted = False
        self._settled.set()

    def put(self, effects: Effects) -> None:
        """Queue ``effects`` for publishing after everything queued before them."""
        if not effects:
            return
        self._queue.append(effects)
        self._queued_messages += len(effects.verdicts) + len(effects.dead_letters)
        self._settled.clear()
        self._wake.set()

    async def settle(self) -> bool:
        """Wait until every effect handed over is acknowledged.

        Returns False if publishing gave up (the broker refused while stopping): the
        caller must not commit past what was handed over.
        """
        if self._task is None and self._queue:
            self.start()
        if self._task is not None and not self._task.done():
            await self._settled.wait()
        return not self._queue

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch = list(self._queue)
                    messages = [m for effects in batch for m in effects.messages(self._topics)]
                    if not await self._deliver(messages):
                        self.gave_up = True
                        return
                    for _ in batch:
                        self._queue.popleft()
                    self._queued_messages -= len(messages)
                    acked = self._wall_clock()
                    for effects in batch:
                        for received in effects.received:
                            self._telemetry.verdict_lag.observe(max(0.0, acked - received))
                        self._acknowledged(effects)
                self._settled.set()
        finally:
            # Given up, failed or stopped: nobody waits for what is left in the queue.
            self._settled.set()

    async def _deliver(self, messages: list[Outgoing]) -> bool:
        backoff = 0.2
        while True:
            begun = time.perf_counter()
            try:
                await self._transport.publish(messages)
            except TransactionAbortedError as exc:
                log.error("publish failed and its transaction was aborted: %s", exc)
                self.aborted = True
                return False
            except TransportError as exc:
                self._telemetry.publish_failures.inc()
                if self._stopping.is_set():
                    log.error(
                        "could not publish %d message(s) before stopping: %s", len(messages), exc
                    )
                    return False
                log.warning("publish failed (%s); retrying in %.1fs", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            self._telemetry.publish_duration.observe(time.perf_counter() - begun)
            return True
