"""aiomqtt clients built from ``[mqtt]`` settings: address, credentials and TLS in one place.

:class:`MqttSession` is the short-lived client the command-line tools publish and
subscribe with.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from typing import TYPE_CHECKING

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from coalmine._exceptions import TransportError
from coalmine.bus.mqtt.addresses import properties as new_properties

if TYPE_CHECKING:
    import paho.mqtt.client as paho
    from paho.mqtt.properties import Properties

    from coalmine.config.models import MqttSettings

__all__ = [
    "OFFLINE",
    "ONLINE",
    "MqttSession",
    "describe",
    "hint",
    "new_client",
    "paho_of",
    "session_client",
    "tls_context",
]

ONLINE, OFFLINE = b"online", b"offline"
"""What the transport's status topic says: retained, ``offline`` also as its will."""

_AUTH_REFUSED = (4, 5, 134, 135)
"""CONNACK codes: bad user name or password, not authorised (MQTT 3.1.1 and 5)."""


def describe(error: BaseException) -> str:
    """``error`` as one line: its type, then its text unless the text names the type."""
    name, text = type(error).__name__, str(error)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def hint(error: BaseException) -> str:
    """What to check, for a refused CONNECT."""
    code = getattr(error, "rc", None)
    value = code.value if isinstance(code, ReasonCode) else code
    if value in _AUTH_REFUSED:
        return " (check [mqtt] username and password)"
    return ""


def paho_of(client: aiomqtt.Client) -> paho.Client:
    """The paho client under ``client``: for manual acknowledgements and PUBACK reason codes."""
    return client._client  # noqa: SLF001 - aiomqtt exposes neither


def tls_context(settings: MqttSettings) -> ssl.SSLContext | None:
    """A TLS context from the settings (None without ``tls``).

    Raises:
        TransportError: a CA, certificate or key file cannot be read or used.
    """
    if not settings.tls:
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file is not None else None
        )
        if settings.cert_file is not None:
            context.load_cert_chain(
                settings.cert_file, settings.key_file if settings.key_file is not None else None
            )
    except (OSError, ssl.SSLError) as err:
        raise TransportError(f"MQTT TLS settings: {describe(err)}") from err
    return context


def new_client(
    settings: MqttSettings,
    identifier: str,
    *,
    clean_start: bool = True,
    will: aiomqtt.Will | None = None,
    properties: Properties | None = None,
    tls: ssl.SSLContext | None = None,
) -> aiomqtt.Client:
    """An MQTT v5 client of the broker ``settings`` names, with its credentials; not connected.

    ``tls`` defaults to :func:`tls_context` of the settings.
    """
    return aiomqtt.Client(
        settings.host,
        settings.port,
        username=settings.username,
        password=(settings.password.get_secret_value() if settings.password is not None else None),
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        clean_start=clean_start,
        timeout=settings.timeout,
        keepalive=settings.keepalive,
        properties=properties,
        tls_context=tls if tls is not None else tls_context(settings),
    )


def session_client(
    settings: MqttSettings,
    identifier: str,
    *,
    status_topic: str,
    persistent: bool,
    receive_maximum: int,
    tls: ssl.SSLContext | None,
) -> aiomqtt.Client:
    """The transport's client: acknowledges by hand, leaves ``offline`` as its will.

    A ``persistent`` session (when consuming) outlives the connection by
    ``session_expiry``: unacknowledged and missed messages wait for the next one.
    """
    connect = new_properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = int(settings.session_expiry) if persistent else 0
    connect.ReceiveMaximum = min(receive_maximum, 65535)
    client = new_client(
        settings,
        identifier,
        will=aiomqtt.Will(status_topic, OFFLINE, qos=1, retain=True),
        clean_start=not persistent,
        properties=connect,
        tls=tls,
    )
    inner = paho_of(client)
    inner.manual_ack_set(True)
    inner.connect_timeout = settings.timeout
    return client


class MqttSession:
    """A short-lived MQTT v5 client of its own (clean start, no session left behind).

    ``async with MqttSession(settings, "wait") as client:`` gives a connected
    ``aiomqtt.Client`` with the id ``coalmine-<purpose>-<random>``.
    """

    def __init__(self, settings: MqttSettings, purpose: str) -> None:
        self.settings = settings
        self.purpose = purpose
        self.client: aiomqtt.Client | None = None

    async def __aenter__(self) -> aiomqtt.Client:
        settings = self.settings
        identifier = f"coalmine-{self.purpose}-{uuid.uuid4().hex[:12]}"
        client = new_client(settings, identifier)
        try:
            await client.__aenter__()
        except (aiomqtt.MqttError, OSError) as err:
            address = f"{settings.host}:{settings.port}"
            raise TransportError(f"cannot connect to the MQTT broker at {address}: {err}") from err
        self.client = client
        return client

    async def __aexit__(self, *exc_info: object) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)
