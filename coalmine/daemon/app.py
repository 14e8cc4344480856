"""The daemon: wires a transport to the router, publishes what it decides, commits.

The loop is: fetch records -> hand them to the router, which takes the records that make
a verdict first and pauses after them, every few hundred records, and when a slice runs
long (timed here: the router reads no clock), so the event loop keeps serving broker
heartbeats and acknowledgements -> queue their verdicts with the
:class:`~coalmine.daemon.publisher.Publisher` together, any later one the moment it is
made, and the fetch's dead letters at its end; the publisher sends what is queued while
the rest is judged -> about once a second, wait until everything queued is acknowledged
by the broker and commit the consumer position, held back to the router's floors (the
oldest record an open deployment still needs). Nothing is committed past an
unacknowledged verdict; effects whose publish fails are retried in order, so nothing is
lost (at-least-once; verdict ids are deterministic, so a re-published verdict is a
harmless duplicate).

On Kafka, the log is the only state: when partitions are assigned (at start, or moved from
another daemon), the daemon reads the verdict topic to learn what is already published,
then re-reads its partitions from the committed floors, rebuilding their open deployments
(:class:`~coalmine.daemon.partitions.Partitions`, present only on a partitioned transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING

from coalmine._exceptions import CoalmineError, TransactionAbortedError, TransportError
from coalmine.bus.base import Partitioned
from coalmine.daemon.acting import Acting
from coalmine.daemon.directory import Directory
from coalmine.daemon.health import Health
from coalmine.daemon.http import HttpServer, build_app
from coalmine.daemon.partitions import Partitions
from coalmine.daemon.past_loader import PastLoader
from coalmine.daemon.publisher import Publisher
from coalmine.daemon.reload import reload_settings
from coalmine.daemon.router import Router
from coalmine.daemon.telemetry import Stopwatch, Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from coalmine.bus.base import Record, TopicPartition, Transport
    from coalmine.config.models import Profile
    from coalmine.config.settings import Settings
    from coalmine.daemon.effects import Effects

log = logging.getLogger(__name__)

_FETCH_TIMEOUT = 0.5
_EXPIRY_CHECK_EVERY = 1.0
_MAX_BACKOFF = 30.0
_MAX_PENDING = 2_000
"""Messages queued for publishing before the loop waits for the broker to catch up."""
_FULL_COLLECTION_AFTER = 1_000
"""Collections of the middle generation before a full one (Python's default is 10)."""
_PAUSE_AFTER = 0.01
"""Seconds of judging after which the router is paused sooner (large judgements)."""
_PAUSE_TURNS = 8
"""Loop turns at a pause while verdicts are in flight. A publish takes about four turns to
reach the socket (publisher task, producer, sender, request) and as many for its
acknowledgement to come back: this many turns let a verdict handed over reach the broker
before judging resumes."""


class _RareFullCollections:
    """Python's full collections made rare while any daemon of this process runs.

    Under load a full pass blocks the event loop for tens of milliseconds every few seconds
    (it sets the verdict lag's p99) and finds almost no garbage: the daemon frees its
    objects by reference counting.
    """

    def __init__(self) -> None:
        self._running = 0
        self._saved: tuple[int, int, int] | None = None

    def enter(self) -> None:
        if self._running == 0:
            self._saved = gc.get_threshold()
            gc.set_threshold(self._saved[0], self._saved[1], _FULL_COLLECTION_AFTER)
        self._running += 1

    def leave(self) -> None:
        self._running -= 1
        if self._running == 0 and self._saved is not None:
            gc.set_threshold(*self._saved)


_rare_full_collections = _RareFullCollections()


class Daemon:
    """One coalmine daemon: a transport, a router, and the HTTP probes."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        *,
        telemetry: Telemetry | None = None,
        wall_clock: Callable[[], float] = time.time,
        reload: Callable[[], Settings] | None = None,
        commit_every: float = 1.0,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.telemetry = telemetry or Telemetry()
        self._reload = reload
        self.past = PastLoader.on(transport, settings)
        """On Kafka: reads the same hours days earlier from the metrics topic by time."""
        self.acting = Acting.of(settings, self.telemetry)  # [[actions]], if any
        self.router = self._new_router(settings.profiles)
        self.directory = Directory(settings.topics)
        self.http: HttpServer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._wall_clock = wall_clock
        self._commit_every = commit_every
        self._stopping = asyncio.Event()
        self.health = Health(transport, self.telemetry, self._stopping)
        self._aborted = False
        """A commit's transaction was aborted: resume from the last committed one."""
        # Held while a batch is handled, while committing, and while partitions move.
        self._busy = asyncio.Lock()
        self.publisher = Publisher(
            transport,
            settings.topics,
            self.telemetry,
            wall_clock=wall_clock,
            stopping=self._stopping,
            acknowledged=self._acknowledged,
        )
        self.partitions: Partitions | None = None
        """What only a partitioned transport does: partition moves, the API's follower, lag."""
        if isinstance(transport, Partitioned):
            self.partitions = Partitions(transport, settings.topics, self.telemetry, wall_clock)
            self.partitions.listen(
                before_revoke=self._before_revoke, after_assign=self._after_assign
            )

    def _acknowledged(self, effects: Effects) -> None:
        """What the broker acknowledged goes into the directory (the HTTP API)."""
        self.directory.verdicts(effects.verdicts, effects.encode())
        self.directory.dead_letters(effects.dead_letters)
        if self.acting is not None:
            self.acting.acknowledged(effects)

    def _new_router(self, profiles: Mapping[str, Profile]) -> Router:
        settings = self.settings
        return Router(
            profiles,
            settings.topics,
            settings.limits,
            self.telemetry,
            inputs=settings.inputs,
            past_from_history=self.past is None,
            acting=self.acting,
        )

    def reload(self) -> bool:
        """Re-read the configuration (SIGHUP): new profiles for deployments started later.

        See :mod:`coalmine.daemon.reload`; False if there is no configuration file or the
        new one is invalid.
        """
        if self._reload is None:
            log.warning("reload requested, but this daemon has no configuration file")
            return False
        settings = reload_settings(self.settings, self._reload, self.telemetry)
        if settings is None:
            return False
        self.router.use_profiles(settings.profiles)
        return True

    def request_stop(self) -> None:
        """Finish the batch in hand, publish everything and commit it, then stop."""
        if not self._stopping.is_set():
            log.info("stopping: finishing in-flight work")
        self._stopping.set()

    async def ready(self) -> bool:
        """Started, and the broker reachable with its topics present."""
        return await self.health.ready()

    async def run(self) -> None:
        """Run until ``request_stop``; return after a clean shutdown."""
        if self.settings.http.enabled:
            self.http = await _serve_http(self)
        collections_tuned = False
        try:
            if await self._connect():
                # What exists now (modules, config, clients) lives as long as the daemon:
                # keep it out of the collector's full passes (~9% of ingest CPU otherwise).
                gc.collect()
                gc.freeze()
                _rare_full_collections.enter()
                collections_tuned = True
                if self.settings.http.enabled and self.partitions is not None:
                    self._follower = asyncio.create_task(
                        self.partitions.follow(self.directory, self._stopping)
                    )
                if self.acting is not None:
                    self.acting.start()
                await self._loop()
        finally:
            if collections_tuned:
                _rare_full_collections.leave()
            await self.publisher.stop()
            if self.acting is not None:
                await self.acting.stop()
            if self.past is not None:
                await self.past.close()
            if self._follower is not None:
                self._follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._follower
            with contextlib.suppress(CoalmineError):
                await self.transport.stop()
            if self.http is not None:
                await self.http.stop()
            log.info("stopped")

    async def _connect(self) -> bool:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                await self.transport.start()
            except TransportError as exc:
                log.warning("cannot start on the bus (%s); retrying in %.1fs", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            self.health.connected()
            log.info("connected")
            return True
        return False

    async def _loop(self) -> None:
        next_expiry = time.monotonic() + _EXPIRY_CHECK_EVERY
        next_commit = time.monotonic() + self._commit_every
        uncommitted = False
        backoff = 0.5
        self.publisher.start()
        while not self._stopping.is_set():
            self.health.beat()
            try:
                records = await self.transport.fetch(_FETCH_TIMEOUT)
            except TransportError as exc:
                # The broker went away: the client reconnects; keep the state, report it.
                self.health.fetch_failed()
                log.warning("fetch failed (%s); retrying in %.1fs", exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if self.health.fetched():
                log.info("fetching again")
            backoff = 0.5
            if records:
                async with self._busy:
                    await self._handle(records)
                uncommitted = True
            if time.monotonic() >= next_expiry:
                await self._every_second()
                next_expiry = time.monotonic() + _EXPIRY_CHECK_EVERY
            if uncommitted and (not records or time.monotonic() >= next_commit):
                if not await self._settle_and_commit():
                    return  # stopping while the broker refuses: leave the rest uncommitted
                uncommitted = False
                next_commit = time.monotonic() + self._commit_every
            if self._aborted or self.publisher.aborted:
                await self._resume_from_committed()
                uncommitted = False
        # Stopping: publish what is queued, then commit everything handled.
        if uncommitted:
            await self._settle_and_commit()

    async def _handle(self, records: list[Record]) -> None:
        """Judge a fetch on the event loop a slice at a time, queueing verdicts as they come.

        The router takes the records that make a verdict first and pauses once their
        verdicts are handed over, then after every few hundred records or ``_PAUSE_AFTER``
        seconds: at each pause the loop publishes what was decided and serves the Kafka
        client (acknowledgements, heartbeats, prefetching) and the HTTP probes.
        """
        received = self._wall_clock()
        handling = Stopwatch()
        slice_ = Stopwatch(_PAUSE_AFTER)
        steps = self.router.steps(records, received, self.publisher.put, overdue=slice_.overdue)
        while True:
            slice_.restart()
            try:
                next(steps)
            except StopIteration as done:
                effects: Effects = done.value
                break
            # Publishing, or verdicts handed over: give the loop turns enough to send them
            # and to take acknowledgements; otherwise one turn (heartbeats, prefetch, HTTP).
            for _ in range(_PAUSE_TURNS if self.publisher.pending else 1):
                await asyncio.sleep(0)
        self.telemetry.analysis_duration.observe(handling.elapsed())
        self.publisher.put(effects)
        if self.publisher.pending > _MAX_PENDING:
            await self.publisher.settle()
        self.directory.take(r for r in records if r.topic == self.settings.topics.deployments)

    async def _settle_and_commit(self) -> bool:
        """Wait for every queued effect to be acknowledged, then commit; False if not."""
        async with self._busy:
            if not await self.publisher.settle():
                return self.publisher.aborted  # aborted: the loop resumes, not stops
            await self._commit()
            return True

    async def _before_revoke(self, partitions: frozenset[TopicPartition]) -> None:
        """Partitions are about to move: finish the batch in hand and commit the floors."""
        async with self._busy:
            if self._aborted or self.publisher.aborted:
                # Positions fetched since the aborted transaction must be read again.
                log.info("giving up %d partition(s) after an aborted transaction", len(partitions))
                return
            log.info("giving up %d partition(s): committing", len(partitions))
            if await self.publisher.settle():
                await self._commit()

    async def _after_assign(
        self, lost: frozenset[TopicPartition], gained: Mapping[TopicPartition, int]
    ) -> None:
        """Drop what moved away; learn the published verdicts before rebuilding the rest."""
        async with self._busy:
            dropped = self.router.release(lost)
            if dropped:
                log.warning(
                    "%d open deployment(s) dropped with partitions no longer assigned here:"
                    " %s; their new owner rebuilds them from the log (if the topics were lost,"
                    " as on a broker restarted empty, they cannot be recovered)",
                    len(dropped),
                    ", ".join(sorted(dropped)[:20]),
                )
            if gained and self.partitions is not None:
                await self.partitions.take_over(self.router, gained)

    async def _every_second(self) -> None:
        """Close silent deployments and report lag; then say readiness, outside the lock.

        Readiness may ask the broker: partition moves must not wait for that round trip.
        """
        async with self._busy:
            self.publisher.put(self.router.expire_silent(self._wall_clock()))
            if self.past is not None:
                self.past.serve(self.router, self.publisher, self._wall_clock())
            if self.partitions is not None:
                self.partitions.report_lag()
        await self._say_readiness()

    async def _say_readiness(self) -> None:
        """Log once each time readiness changes, with the reason ``/readyz`` answers 503."""
        self.health.announce(None if await self.ready() else self.health.why_not_ready())

    async def _resume_from_committed(self) -> None:
        """A transaction was aborted: start again from the last committed one.

        What the daemon judged since that commit is dropped (queued effects, open
        deployments, the ledger) and the transport reconnects: it rejoins the group at the
        committed offsets, reads the committed verdicts, and the deployments are rebuilt
        from the log, making the aborted verdicts again.
        """
        log.error(
            "a Kafka transaction was aborted: resuming from the last committed one"
            " (open deployments are rebuilt from the log)"
        )
        # Stop while still marked aborted: giving up the partitions must not commit.
        with contextlib.suppress(CoalmineError):
            await self.transport.stop()
        self._aborted = False
        await self.publisher.reset()
        self.router = self._new_router(self.router.profiles)
        if await self._connect():
            self.publisher.start()

    async def _commit(self) -> None:
        try:
            await self.transport.commit(self.router.floors())
        except TransactionAbortedError as exc:
            log.error("commit failed and its transaction was aborted: %s", exc)
            self._aborted = True
        except TransportError as exc:
            # Not fatal: the records are redelivered and their verdicts are idempotent.
            log.warning("commit failed (%s); records will be redelivered", exc)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


async def _serve_http(daemon: Daemon) -> HttpServer:
    """Start the daemon's HTTP server: probes, metrics and the verdict API."""
    settings = daemon.settings.http
    app = build_app(
        daemon.telemetry,
        live=daemon.health.live,
        ready=daemon.ready,
        directory=daemon.directory,
        api_token=settings.api_token,
        why_not_ready=daemon.health.why_not_ready,
        actions=None if daemon.acting is None else daemon.acting.outcomes,
    )
    http = HttpServer(app, settings.host, settings.port)
    await http.start()
    log.info("http: /metrics /livez /readyz on port %d", http.port)
    return http


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM and SIGINT stop the daemon gracefully; SIGHUP reloads its profiles."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
