"""The MQTT transport (aiomqtt, MQTT v5).

Topics, under ``[mqtt] topic_prefix`` (``coalmine`` by default):

| topic | direction | payload |
|---|---|---|
| ``<prefix>/deployments/<service>`` | in, QoS 1 | a deploy event, as on Kafka |
| ``<prefix>/metrics/<service>`` | in, QoS 1 | metric event(s), as on Kafka |
| ``<prefix>/verdicts/<service>/<deployment_id>`` | out, QoS 1, retained | a verdict |
| ``<prefix>/dlq`` | out, QoS 1 | the original bytes; headers as MQTT v5 user properties |
| ``<prefix>/status/<client_id>`` | out, QoS 1, retained | ``online``; ``offline`` by will |

A topic level holds a name with ``%``, ``/``, ``+``, ``#`` and NUL percent-encoded
(``team/checkout`` is ``team%2Fcheckout``); a record's key is its topic's last level,
percent-decoded.

At-least-once: the transport connects with a stable client id, ``clean_start`` off and a
session expiry, so the broker keeps its subscriptions and the messages it could not
deliver while the daemon is away (Mosquitto: up to ``max_queued_messages``, 1000 unless
configured). Received QoS 1 messages are acknowledged (PUBACK) by :meth:`MqttTransport.commit`,
not on arrival: the broker redelivers every message fetched but not committed after a
reconnect, like an uncommitted Kafka offset. Publishes wait for the broker's PUBACK and fail
on a negative reason code (e.g. an ACL refusal).

MQTT orders messages per topic, not across topics: unlike on Kafka, the deployments topic
cannot be read to its end first. Several daemons on one broker each receive everything:
run one consuming daemon per broker (MQTT has no consumer groups; shared subscriptions
would split one service's events between daemons).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import aiomqtt
import orjson
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from coalmine._exceptions import TransportError
from coalmine.bus.base import Headers, Outgoing, Record
from coalmine.config.models import TopicsSettings

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from coalmine.bus.base import TopicPartition
    from coalmine.config.models import MqttSettings

__all__ = ["MqttTransport", "topic_level"]

_log = logging.getLogger(__name__)

KINDS = ("deployments", "metrics", "verdicts", "dead_letter")
"""The logical topics, the keys of ``topic_names`` (those of ``[topics]``)."""
_INPUTS = ("deployments", "metrics")
_ONLINE, _OFFLINE = b"online", b"offline"
_KEY_PROPERTY = "coalmine-key"
_AUTH_REFUSED = (4, 5, 134, 135)
"""CONNACK codes: bad user name or password, not authorised (MQTT 3.1.1 and 5)."""
_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"})


def topic_level(name: str) -> str:
    """``name`` as one topic level: ``%``, ``/``, ``+``, ``#`` and NUL percent-encoded."""
    return name.translate(_ESCAPES)


def _describe(error: BaseException) -> str:
    name, text = type(error).__name__, str(error)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def _hint(error: BaseException) -> str:
    """What to check, for a refused CONNECT."""
    code = getattr(error, "rc", None)
    value = code.value if isinstance(code, ReasonCode) else code
    if value in _AUTH_REFUSED:
        return " (check [mqtt] username and password)"
    return ""


def _paho(client: aiomqtt.Client) -> paho.Client:
    """The paho client under ``client``: for manual acknowledgements and PUBACK reason codes."""
    return client._client  # noqa: SLF001 - aiomqtt exposes neither


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call] # paho leaves it untyped


def _user_properties(headers: Headers, key: bytes | None = None) -> Properties | None:
    pairs = [(name, value.decode("utf-8", "replace")) for name, value in headers]
    if key is not None:
        pairs.append((_KEY_PROPERTY, key.decode("utf-8", "replace")))
    if not pairs:
        return None
    properties = _properties(PacketTypes.PUBLISH)
    properties.UserProperty = pairs
    return properties


def _headers(properties: Properties | None) -> Headers:
    pairs = getattr(properties, "UserProperty", None) or []
    return tuple((str(name), str(value).encode()) for name, value in pairs)


@dataclass(slots=True, eq=False)
class _Connection:
    """One connected session: the client, its number, and its unacknowledged publishes."""

    client: aiomqtt.Client
    generation: int
    pending: dict[int, asyncio.Future[ReasonCode]] = field(default_factory=dict)
    connecting: bool = True
    """Until the CONNACK (or the failed attempt): a disconnect now fails the connect."""

    def fail_pending(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(TransportError(reason))


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
        names = dict(TopicsSettings().model_dump() if topic_names is None else topic_names)
        missing = [kind for kind in KINDS if kind not in names]
        if missing:
            raise ValueError(f"topic_names lacks {', '.join(missing)}")
        self._kinds = {names[kind]: kind for kind in KINDS}
        if len(self._kinds) != len(KINDS):
            raise ValueError("topic_names must name four different topics")
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self.settings = settings
        self.consume = consume
        self.topic_names = {kind: names[kind] for kind in KINDS}
        self.client_id = client_id or settings.client_id or f"coalmine-{socket.gethostname()}"
        self.prefix = settings.topic_prefix
        self.status_topic = f"{self.prefix}/status/{topic_level(self.client_id)}"
        self.max_records = max_records
        self.reconnect_backoff = reconnect_backoff
        self._started = False
        self._connection: _Connection | None = None
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
        name = "dlq" if kind == "dead_letter" else kind
        return "/".join([self.prefix, name, *(topic_level(level) for level in levels)])

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
                await self._send_all(connection, [(self.status_topic, _OFFLINE, True, None)])
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
            await self._close(connection, "the transport stopped")
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

        Verdicts go to ``<prefix>/verdicts/<service>/<deployment_id>`` (from the verdict
        JSON), retained; dead letters to ``<prefix>/dlq`` with their headers (and the
        original key, as ``coalmine-key``) as user properties; messages for the input
        topics to ``<prefix>/<kind>/<key>``.

        Raises:
            TransportError: not connected, a message cannot be routed, the broker refused
                one (negative PUBACK) or did not acknowledge within ``settings.timeout``.
        """
        connection = self._connection
        if not self._started or connection is None:
            raise TransportError(f"not connected to the MQTT broker at {self.address}")
        if not messages:
            return
        routed = [self._route(message) for message in messages]
        await self._send_all(connection, routed)

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
            client = _paho(connection.client)
            for mid in ours:
                if client.ack(mid, 1) != paho.MQTT_ERR_SUCCESS:
                    lost += 1
        if lost:
            raise TransportError(
                f"{lost} of {len(fetched)} messages not acknowledged: their connection to"
                " the MQTT broker is gone; the broker redelivers them"
            )

    async def ready(self) -> bool:
        """True while connected (and subscribed, when consuming)."""
        return self._started and self._connection is not None

    # -- connecting ----------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if not settings.tls:
            return None
        if self._tls is None:
            try:
                context = ssl.create_default_context(
                    cafile=str(settings.ca_file) if settings.ca_file is not None else None
                )
                if settings.cert_file is not None:
                    context.load_cert_chain(
                        settings.cert_file,
                        settings.key_file if settings.key_file is not None else None,
                    )
            except (OSError, ssl.SSLError) as err:
                raise TransportError(f"MQTT TLS settings: {_describe(err)}") from err
            self._tls = context
        return self._tls

    def _new_client(self) -> aiomqtt.Client:
        settings = self.settings
        properties = _properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = int(settings.session_expiry) if self.consume else 0
        properties.ReceiveMaximum = min(self.max_records, 65535)
        client = aiomqtt.Client(
            settings.host,
            settings.port,
            username=settings.username,
            password=(
                settings.password.get_secret_value() if settings.password is not None else None
            ),
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.status_topic, _OFFLINE, qos=1, retain=True),
            # A persistent session when consuming: unacknowledged and missed messages wait.
            clean_start=not self.consume,
            timeout=settings.timeout,
            keepalive=settings.keepalive,
            properties=properties,
            tls_context=self._tls_context(),
        )
        inner = _paho(client)
        inner.manual_ack_set(True)
        inner.connect_timeout = settings.timeout
        return client

    def _watch(self, connection: _Connection) -> None:
        """Hook into paho's callbacks, keeping aiomqtt's.

        PUBACKs resolve ``connection.pending`` with their reason codes (aiomqtt drops
        them), and a connection the broker closes before its CONNACK fails the connect at
        once (aiomqtt would wait for ``timeout``).
        """
        client = connection.client
        inner = _paho(client)
        loop = asyncio.get_running_loop()
        aiomqtt_on_publish, aiomqtt_on_disconnect = inner.on_publish, inner.on_disconnect

        def on_publish(*args: Any) -> None:
            if aiomqtt_on_publish is not None:
                aiomqtt_on_publish(*args)
            _client, _userdata, mid, reason_code, _properties = args
            future = connection.pending.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(reason_code)

        def closed_before_connack(reason_code: object) -> None:
            connected: asyncio.Future[None] = client._connected  # noqa: SLF001
            if connection.connecting and not connected.done():
                message = f"the broker closed the connection before accepting it ({reason_code})"
                connected.set_exception(aiomqtt.MqttError(message))

        def on_disconnect(*args: Any) -> None:
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(*args)
            loop.call_soon_threadsafe(closed_before_connack, args[3])

        inner.on_publish = on_publish
        inner.on_disconnect = on_disconnect

    async def _connect(self) -> _Connection:
        """One connection: connect, subscribe, announce ``online``; bounded in time."""
        settings = self.settings
        who = f" as {settings.username!r}" if settings.username else ""
        what = f"cannot connect to the MQTT broker at {self.address}{who}"
        client = self._new_client()
        connection = _Connection(client, self._generation + 1)
        self._watch(connection)
        entered = False
        try:
            # TCP (and TLS) connect and CONNACK are each bounded by settings.timeout.
            async with asyncio.timeout(2 * settings.timeout + 1):
                try:
                    await client.__aenter__()
                finally:
                    connection.connecting = False
                entered = True
                if self.consume:
                    await self._subscribe(client)
                await self._send_all(connection, [(self.status_topic, _ONLINE, True, None)])
        except TimeoutError as err:
            await self._abandon(connection, entered=entered)
            raise TransportError(f"{what}: no answer within {2 * settings.timeout + 1:g}s") from err
        except (aiomqtt.MqttError, OSError) as err:
            await self._abandon(connection, entered=entered)
            raise TransportError(f"{what}: {_describe(err)}{_hint(err)}") from None
        except TransportError as err:
            await self._abandon(connection, entered=entered)
            raise TransportError(f"{what}: {err}") from None
        except BaseException:
            await self._abandon(connection, entered=entered)
            raise
        self._generation = connection.generation
        self._connection = connection
        return connection

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        topics = [(f"{self.topic(kind)}/+", options) for kind in _INPUTS]
        granted: list[int | ReasonCode] = list(await client.subscribe(topics))
        for (topic, _), code in zip(topics, granted, strict=True):
            value = code.value if isinstance(code, ReasonCode) else int(code)
            if value >= 0x80:
                raise TransportError(f"subscription to {topic} refused: {code}")
            if value == 0:
                _log.warning("%s granted with QoS 0 only: messages may be lost", topic)

    async def _abandon(self, connection: _Connection, *, entered: bool) -> None:
        """Drop a connection that did not complete."""
        connection.fail_pending("the connection was abandoned")
        if entered:
            await self._close(connection, "abandoned")
        else:
            # A refused CONNECT leaves nothing to close but the socket, if still open.
            _paho(connection.client).disconnect()

    async def _close(self, connection: _Connection, reason: str) -> None:
        """Disconnect cleanly (bounded); the will is not published."""
        connection.fail_pending(f"publish not acknowledged: {reason}")
        try:
            async with asyncio.timeout(self.settings.timeout):
                await connection.client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError, TimeoutError) as err:
            _log.debug("closing the MQTT connection: %s", _describe(err))

    async def _run(self, connection: _Connection) -> None:
        """Receive messages; after a lost connection, reconnect with backoff. Until cancelled."""
        first, longest = self.reconnect_backoff
        while True:
            try:
                await self._receive(connection)
                reason = "disconnected"
            except aiomqtt.MqttError as err:
                reason = _describe(err.__cause__ or err)
            except Exception as err:  # noqa: BLE001 - a bug must not end reconnecting silently
                _log.exception("receiving from the MQTT broker failed")
                reason = _describe(err)
            if self._connection is connection:
                self._connection = None
            await self._close(connection, "the connection was lost")
            _log.warning(
                "connection to the MQTT broker at %s lost (%s); reconnecting", self.address, reason
            )
            backoff = first
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
                break

    async def _receive(self, connection: _Connection) -> None:
        generation = connection.generation
        async for message in connection.client.messages:
            self._deliver(message, generation, connection)

    def _deliver(self, message: aiomqtt.Message, generation: int, connection: _Connection) -> None:
        mid = message.mid if message.qos > 0 else 0
        levels = message.topic.value.split("/")
        prefix = self.prefix.count("/") + 1
        kind = levels[prefix] if len(levels) == prefix + 2 else None
        if kind not in _INPUTS:
            _log.debug("ignoring a message on %s", message.topic.value)
            if mid:
                _paho(connection.client).ack(mid, 1)
            return
        record = Record(
            topic=self.topic_names[kind],
            value=bytes(message.payload),
            key=unquote(levels[-1]).encode(),
            headers=_headers(message.properties),
            partition=0,
            offset=self._sequence,
            timestamp_ms=time.time_ns() // 1_000_000,
        )
        self._sequence += 1
        self._queue.put_nowait(_Delivery(record, generation, mid))

    # -- publishing ----------------------------------------------------------------------

    def _route(self, message: Outgoing) -> tuple[str, bytes, bool, Properties | None]:
        """``(topic, payload, retain, properties)`` for one outgoing message."""
        kind = self._kinds.get(message.topic)
        if kind == "verdicts":
            service, deployment_id = _verdict_address(message.value)
            topic = self.topic(kind, service, deployment_id)
            return topic, message.value, True, _user_properties(message.headers)
        if kind == "dead_letter":
            properties = _user_properties(message.headers, message.key)
            return self.topic(kind), message.value, False, properties
        if kind in _INPUTS:
            if message.key is None:
                raise TransportError(f"a message for {message.topic} needs a key (the service)")
            topic = self.topic(kind, message.key.decode("utf-8", "replace"))
            return topic, message.value, False, _user_properties(message.headers)
        known = ", ".join(self.topic_names.values())
        raise TransportError(f"cannot publish to {message.topic!r}: not one of {known}")

    async def _send_all(
        self,
        connection: _Connection,
        routed: Sequence[tuple[str, bytes, bool, Properties | None]],
    ) -> None:
        """Publish with QoS 1 and wait for every PUBACK (bounded by ``settings.timeout``)."""
        client = _paho(connection.client)
        loop = asyncio.get_running_loop()
        futures: list[tuple[str, int, asyncio.Future[ReasonCode]]] = []
        for topic, payload, retain, properties in routed:
            info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise TransportError(f"publish to {topic}: {paho.error_string(info.rc)}")
            # Registered before the next await: the PUBACK cannot have been read yet.
            future: asyncio.Future[ReasonCode] = loop.create_future()
            connection.pending[info.mid] = future
            futures.append((topic, info.mid, future))
        try:
            async with asyncio.timeout(self.settings.timeout):
                outcomes = await asyncio.gather(
                    *(future for _, _, future in futures), return_exceptions=True
                )
        except TimeoutError as err:
            unanswered = [(mid, f) for _, mid, f in futures if not f.done()]
            for mid, future in unanswered:
                connection.pending.pop(mid, None)
                future.cancel()
            raise TransportError(
                f"publish to MQTT: no PUBACK within {self.settings.timeout:g}s"
                f" for {len(unanswered)} of {len(futures)} messages"
            ) from err
        failures: list[str] = []
        for (topic, _, _), outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(f"{topic}: {_describe(outcome)}")
            elif outcome.is_failure:
                failures.append(f"{topic}: refused by the broker: {outcome}")
        if failures:
            raise TransportError(
                f"publish to MQTT: {len(failures)} of {len(futures)} messages failed: {failures[0]}"
            )


def _verdict_address(value: bytes) -> tuple[str, str]:
    """``(service, deployment_id)`` of an encoded verdict."""
    try:
        verdict = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        raise TransportError(f"a verdict that is not JSON cannot be routed: {err}") from err
    service = verdict.get("service") if isinstance(verdict, dict) else None
    deployment_id = verdict.get("deployment_id") if isinstance(verdict, dict) else None
    if not (
        isinstance(service, str) and service and isinstance(deployment_id, str) and deployment_id
    ):
        raise TransportError("a verdict needs non-empty 'service' and 'deployment_id' to be routed")
    return service, deployment_id
