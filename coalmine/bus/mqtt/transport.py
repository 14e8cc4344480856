"""The MQTT transport: connects, reconnects, and hands received messages out as records."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt

from coalmine._exceptions import TransportError
from coalmine.bus.base import Record
from coalmine.bus.mqtt.addresses import INPUTS, Addresses, headers_of, topic_level
from coalmine.bus.mqtt.client import OFFLINE, ONLINE, describe, hint, session_client, tls_context
from coalmine.bus.mqtt.connection import Connection

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping, Sequence

    from coalmine.bus.base import Outgoing, TopicPartition
    from coalmine.config.models import MqttSettings

__all__ = ["MqttTransport"]

_log = logging.getLogger("coalmine.bus.mqtt")


@dataclass(frozen=True, slots=True)
class _Delivery:
    record: Record
    generation: int
    mid: int
    """Packet id to acknowledge on commit; 0 when there is nothing to acknowledge (QoS 0)."""


class MqttTransport:
    """A :class:`~coalmine.bus.base.Transport` over an MQTT v5 broker.

    Args:
        settings: broker address, credentials, TLS, topic prefix and timeouts.
        consume: subscribe to the deployments and metrics topics (otherwise publish only).
        client_id: the MQTT client id; ``settings.client_id``, else ``coalmine-<hostname>``.
            Keep it stable across restarts: the broker keeps the session under it.
        topic_names: the names records and outgoing messages use for the four logical
            topics (keys ``deployments``, ``metrics``, ``verdicts``, ``dead_letter``);
            the defaults of ``[topics]`` when not given.
        max_records: most records returned by one ``fetch``; also the broker's window of
            unacknowledged messages (MQTT Receive Maximum, at most 65535).
        reconnect_backoff: first and longest wait between reconnection attempts (seconds);
            the wait doubles after each failed attempt, with jitter.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        consume: bool = True,
        client_id: str | None = None,
        topic_names: Mapping[str, str] | None = None,
        max_records: int = 2000,
        reconnect_backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self._addresses = Addresses(settings.topic_prefix, topic_names)
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.settings = settings
        self.consume = consume
        self.topic_names = self._addresses.topic_names
        self.client_id = client_id or settings.client_id or f"coalmine-{socket.gethostname()}"
        self.prefix = settings.topic_prefix
        self.status_topic = f"{self.prefix}/status/{topic_level(self.client_id)}"
        self.max_records = max_records
        self.reconnect_backoff = reconnect_backoff
        self._started = False
        self._connection: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        self._fetched: list[tuple[int, int]] = []
        self._generation = 0
        self._sequence = 0
        self._tls: ssl.SSLContext | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the broker."""
        return f"{self.settings.host}:{self.settings.port}"

    def topic(self, kind: str, *levels: str) -> str:
        """The MQTT topic of a logical ``kind``, e.g. ``topic("metrics", "checkout")``."""
        return self._addresses.topic(kind, *levels)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, subscribe and announce ``online``; reconnect in the background after.

        Raises:
            TransportError: the first connection failed or did not complete within
                about twice ``settings.timeout`` (refused, bad credentials, TLS...).
        """
        if self._started:
            return
        self._queue = asyncio.Queue()
        self._fetched = []
        connection = await self._connect()
        self._started = True
        self._task = asyncio.create_task(self._run(connection), name=f"mqtt {self.client_id}")
        _log.info(
            "mqtt transport started: broker=%s client_id=%s consume=%s tls=%s prefix=%s",
            self.address,
            self.client_id,
            self.consume,
            self.settings.tls,
            self.prefix,
        )

    async def stop(self) -> None:
        """Announce ``offline``, disconnect cleanly and stop reconnecting; safe to call twice.

        Records fetched but not committed are not acknowledged: the broker redelivers
        them to the next session under this client id.
        """
        self._started = False
        connection = self._connection
        if connection is not None:
            try:
                await connection.send_all(
                    [(self.status_topic, OFFLINE, True, None)], self.settings.timeout
                )
            except TransportError as err:
                _log.warning("could not announce offline: %s", err)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close("the transport stopped", self.settings.timeout)
        self._fetched = []
        self._queue = asyncio.Queue()

    # -- the Transport protocol ----------------------------------------------------------

    async def fetch(self, timeout: float) -> list[Record]:  # noqa: ASYNC109 - the protocol's poll timeout
        """The next records in arrival order, up to ``max_records``; ``[]`` on timeout."""
        if not self._started:
            raise TransportError("the mqtt transport is not started")
        if not self.consume:
            await asyncio.sleep(timeout)
            return []
        queue = self._queue
        try:
            async with asyncio.timeout(timeout):
                batch = [await queue.get()]
        except TimeoutError:
            return []
        while len(batch) < self.max_records and not queue.empty():
            batch.append(queue.get_nowait())
        self._fetched.extend((d.generation, d.mid) for d in batch if d.mid)
        return [delivery.record for delivery in batch]

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publish every message with QoS 1 and return once the broker acknowledged all.

        Where each goes: :meth:`~coalmine.bus.mqtt.addresses.Addresses.route`.

        Raises:
            TransportError: not connected, a message cannot be routed, the broker refused
                one (negative PUBACK) or did not acknowledge within ``settings.timeout``.
        """
        connection = self._connection
        if not self._started or connection is None:
            raise TransportError(f"not connected to the MQTT broker at {self.address}")
        if not messages:
            return
        routed = [self._addresses.route(message) for message in messages]
        await connection.send_all(routed, self.settings.timeout)

    async def commit(self, floors: Mapping[TopicPartition, int] | None = None) -> None:
        """Acknowledge (PUBACK) every QoS 1 message fetched so far.

        ``floors`` is ignored: MQTT has no offsets to hold back (see docs/operations.md).

        Raises:
            TransportError: the connection the messages came in on is gone; the broker
                redelivers them (at-least-once).
        """
        del floors
        if not self._fetched:
            return
        fetched, self._fetched = self._fetched, []
        connection = self._connection
        generation = connection.generation if connection is not None else -1
        ours = [mid for gen, mid in fetched if gen == generation]
        lost = len(fetched) - len(ours)
        if connection is not None:
            lost += sum(1 for mid in ours if not connection.acknowledge(mid))
        if lost:
            raise TransportError(
                f"{lost} of {len(fetched)} messages not acknowledged: their connection to"
                " the MQTT broker is gone; the broker redelivers them"
            )

    async def ready(self) -> bool:
        """True while connected (and subscribed, when consuming)."""
        return self._started and self._connection is not None

    # -- connecting ----------------------------------------------------------------------

    def _new_client(self) -> aiomqtt.Client:
        if self.settings.tls and self._tls is None:
            self._tls = tls_context(self.settings)
        return session_client(
            self.settings,
            self.client_id,
            status_topic=self.status_topic,
            persistent=self.consume,
            receive_maximum=self.max_records,
            tls=self._tls,
        )

    async def _connect(self) -> Connection:
        """One connection: connect, subscribe, announce ``online``; bounded in time."""
        settings = self.settings
        who = f" as {settings.username!r}" if settings.username else ""
        what = f"cannot connect to the MQTT broker at {self.address}{who}"
        bound = 2 * settings.timeout + 1
        connection = Connection(self._new_client(), self._generation + 1)
        connection.watch()
        entered = False
        try:
            # TCP (and TLS) connect and CONNACK are each bounded by settings.timeout.
            async with asyncio.timeout(bound):
                try:
                    await connection.client.__aenter__()
                finally:
                    connection.connecting = False
                entered = True
                if self.consume:
                    await connection.subscribe([f"{self.topic(kind)}/+" for kind in INPUTS])
                online = [(self.status_topic, ONLINE, True, None)]
                await connection.send_all(online, settings.timeout)
        except BaseException as err:
            await connection.abandon(entered=entered, timeout=settings.timeout)
            if isinstance(err, TimeoutError):
                raise TransportError(f"{what}: no answer within {bound:g}s") from err
            if isinstance(err, aiomqtt.MqttError | OSError):
                raise TransportError(f"{what}: {describe(err)}{hint(err)}") from None
            if isinstance(err, TransportError):
                raise TransportError(f"{what}: {err}") from None
            raise
        self._generation = connection.generation
        self._connection = connection
        return connection

    async def _run(self, connection: Connection) -> None:
        """Receive messages; after a lost connection, reconnect with backoff. Until cancelled."""
        while True:
            try:
                await self._receive(connection)
                reason = "disconnected"
            except aiomqtt.MqttError as err:
                reason = describe(err.__cause__ or err)
            except Exception as err:  # noqa: BLE001 - a bug must not end reconnecting silently
                _log.exception("receiving from the MQTT broker failed")
                reason = describe(err)
            if self._connection is connection:
                self._connection = None
            await connection.close("the connection was lost", self.settings.timeout)
            _log.warning(
                "connection to the MQTT broker at %s lost (%s); reconnecting", self.address, reason
            )
            connection = await self._reconnect()

    async def _reconnect(self) -> Connection:
        """Connect again, waiting longer after each failed attempt (with full jitter)."""
        backoff, longest = self.reconnect_backoff
        while True:
            # Full jitter keeps a fleet of daemons from reconnecting in lockstep.
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - not crypto
            try:
                connection = await self._connect()
            except TransportError as err:
                backoff = min(backoff * 2, longest)
                _log.warning("%s; retrying in about %.1fs", err, backoff)
                continue
            except Exception:  # noqa: BLE001 - a bug must not end reconnecting silently
                backoff = min(backoff * 2, longest)
                _log.exception("reconnecting to the MQTT broker failed")
                continue
            _log.info("reconnected to the MQTT broker at %s", self.address)
            return connection

    async def _receive(self, connection: Connection) -> None:
        generation = connection.generation
        async for message in connection.client.messages:
            self._deliver(message, generation, connection)

    def _deliver(self, message: aiomqtt.Message, generation: int, connection: Connection) -> None:
        mid = message.mid if message.qos > 0 else 0
        inbound = self._addresses.inbound(message.topic.value)
        if inbound is None:
            _log.debug("ignoring a message on %s", message.topic.value)
            if mid:
                connection.acknowledge(mid)
            return
        topic, key = inbound
        record = Record(
            topic=topic,
            value=bytes(message.payload),
            key=key,
            headers=headers_of(message.properties),
            partition=0,
            offset=self._sequence,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        self._sequence += 1
        self._queue.put_nowait(_Delivery(record, generation, mid))
