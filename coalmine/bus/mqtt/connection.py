"""One connected MQTT session of the transport: its publishes, acknowledged one by one."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from coalmine._exceptions import TransportError
from coalmine.bus.mqtt.client import describe, paho_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coalmine.bus.mqtt.addresses import Routed

__all__ = ["Connection"]

_log = logging.getLogger("coalmine.bus.mqtt")


@dataclass(slots=True, eq=False)
class Connection:
    """One connected session: the client, its number, and its unacknowledged publishes."""

    client: aiomqtt.Client
    generation: int
    pending: dict[int, asyncio.Future[ReasonCode]] = field(default_factory=dict)
    connecting: bool = True
    """Until the CONNACK (or the failed attempt): a disconnect now fails the connect."""

    def fail_pending(self, reason: str) -> None:
        """Fail every publish still waiting for its PUBACK."""
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(TransportError(reason))

    def watch(self) -> None:
        """Hook into paho's callbacks, keeping aiomqtt's.

        PUBACKs resolve ``pending`` with their reason codes (aiomqtt drops them), and a
        connection the broker closes before its CONNACK fails the connect at once
        (aiomqtt would wait for ``timeout``).
        """
        client = self.client
        inner = paho_of(client)
        loop = asyncio.get_running_loop()
        aiomqtt_on_publish, aiomqtt_on_disconnect = inner.on_publish, inner.on_disconnect

        def on_publish(*args: Any) -> None:
            if aiomqtt_on_publish is not None:
                aiomqtt_on_publish(*args)
            _client, _userdata, mid, reason_code, _properties = args
            future = self.pending.pop(mid, None)
            if future is not None and not future.done():
                future.set_result(reason_code)

        def closed_before_connack(reason_code: object) -> None:
            connected: asyncio.Future[None] = client._connected  # noqa: SLF001
            if self.connecting and not connected.done():
                message = f"the broker closed the connection before accepting it ({reason_code})"
                connected.set_exception(aiomqtt.MqttError(message))

        def on_disconnect(*args: Any) -> None:
            if aiomqtt_on_disconnect is not None:
                aiomqtt_on_disconnect(*args)
            loop.call_soon_threadsafe(closed_before_connack, args[3])

        inner.on_publish = on_publish
        inner.on_disconnect = on_disconnect

    async def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe to ``topics`` with QoS 1; retained messages only on a new subscription.

        Raises:
            TransportError: the broker refused a subscription.
        """
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        wanted = [(topic, options) for topic in topics]
        granted: list[int | ReasonCode] = list(await self.client.subscribe(wanted))
        for topic, code in zip(topics, granted, strict=True):
            value = code.value if isinstance(code, ReasonCode) else int(code)
            if value >= 0x80:
                raise TransportError(f"subscription to {topic} refused: {code}")
            if value == 0:
                _log.warning("%s granted with QoS 0 only: messages may be lost", topic)

    async def send_all(self, routed: Sequence[Routed], timeout: float) -> None:  # noqa: ASYNC109 - a bound on the PUBACKs
        """Publish with QoS 1 and wait for every PUBACK (bounded by ``timeout``)."""
        client = paho_of(self.client)
        loop = asyncio.get_running_loop()
        futures: list[tuple[str, int, asyncio.Future[ReasonCode]]] = []
        for topic, payload, retain, properties in routed:
            info = client.publish(topic, payload, qos=1, retain=retain, properties=properties)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise TransportError(f"publish to {topic}: {paho.error_string(info.rc)}")
            # Registered before the next await: the PUBACK cannot have been read yet.
            future: asyncio.Future[ReasonCode] = loop.create_future()
            self.pending[info.mid] = future
            futures.append((topic, info.mid, future))
        try:
            async with asyncio.timeout(timeout):
                outcomes = await asyncio.gather(
                    *(future for _, _, future in futures), return_exceptions=True
                )
        except TimeoutError as err:
            unanswered = [(mid, f) for _, mid, f in futures if not f.done()]
            for mid, future in unanswered:
                self.pending.pop(mid, None)
                future.cancel()
            raise TransportError(
                f"publish to MQTT: no PUBACK within {timeout:g}s"
                f" for {len(unanswered)} of {len(futures)} messages"
            ) from err
        failures: list[str] = []
        for (topic, _, _), outcome in zip(futures, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failures.append(f"{topic}: {describe(outcome)}")
            elif outcome.is_failure:
                failures.append(f"{topic}: refused by the broker: {outcome}")
        if failures:
            raise TransportError(
                f"publish to MQTT: {len(failures)} of {len(futures)} messages failed: {failures[0]}"
            )

    def acknowledge(self, mid: int) -> bool:
        """Send the PUBACK of the received message ``mid``; False if it cannot be sent."""
        return bool(paho_of(self.client).ack(mid, 1) == paho.MQTT_ERR_SUCCESS)

    async def close(self, reason: str, timeout: float) -> None:  # noqa: ASYNC109 - a bound on the DISCONNECT
        """Disconnect cleanly (bounded); the will is not published."""
        self.fail_pending(f"publish not acknowledged: {reason}")
        try:
            async with asyncio.timeout(timeout):
                await self.client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError, TimeoutError) as err:
            _log.debug("closing the MQTT connection: %s", describe(err))

    async def abandon(self, *, entered: bool, timeout: float) -> None:  # noqa: ASYNC109 - see close
        """Drop a connection that did not complete."""
        self.fail_pending("the connection was abandoned")
        if entered:
            await self.close("abandoned", timeout)
        else:
            # A refused CONNECT leaves nothing to close but the socket, if still open.
            paho_of(self.client).disconnect()
