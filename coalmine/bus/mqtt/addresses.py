"""Where messages go on MQTT: topics from logical names, and headers as user properties."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from coalmine._exceptions import TransportError
from coalmine.config.models import TopicsSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from coalmine.bus.base import Headers, Outgoing

__all__ = ["INPUTS", "KINDS", "Addresses", "Routed", "headers_of", "properties", "topic_level"]

KINDS = ("deployments", "metrics", "verdicts", "dead_letter")
"""The logical topics, the keys of ``topic_names`` (those of ``[topics]``)."""
INPUTS = ("deployments", "metrics")
_KEY_PROPERTY = "coalmine-key"
_ESCAPES = str.maketrans({"%": "%25", "/": "%2F", "+": "%2B", "#": "%23", "\0": "%00"})

Routed = tuple[str, bytes, bool, Properties | None]
"""``(topic, payload, retain, properties)`` of one message to publish."""


def topic_level(name: str) -> str:
    """``name`` as one topic level: ``%``, ``/``, ``+``, ``#`` and NUL percent-encoded."""
    return name.translate(_ESCAPES)


def properties(packet_type: int) -> Properties:
    """Empty MQTT v5 properties of a ``packet_type`` packet."""
    return Properties(packet_type)  # type: ignore[no-untyped-call] # paho leaves it untyped


def _user_properties(headers: Headers, key: bytes | None = None) -> Properties | None:
    pairs = [(name, value.decode("utf-8", "replace")) for name, value in headers]
    if key is not None:
        pairs.append((_KEY_PROPERTY, key.decode("utf-8", "replace")))
    if not pairs:
        return None
    publish = properties(PacketTypes.PUBLISH)
    publish.UserProperty = pairs
    return publish


def headers_of(received: Properties | None) -> Headers:
    """The user properties of a received message, as record headers."""
    pairs = getattr(received, "UserProperty", None) or []
    return tuple((str(name), str(value).encode()) for name, value in pairs)


class Addresses:
    """The MQTT topics of the four logical topics, under ``prefix``.

    Args:
        prefix: the first level(s) of every topic.
        topic_names: the names records and outgoing messages use for the logical topics
            (keys ``deployments``, ``metrics``, ``verdicts``, ``dead_letter``); the
            defaults of ``[topics]`` when not given.
    """

    def __init__(self, prefix: str, topic_names: Mapping[str, str] | None = None) -> None:
        names = dict(TopicsSettings().model_dump() if topic_names is None else topic_names)
        missing = [kind for kind in KINDS if kind not in names]
        if missing:
            raise ValueError(f"topic_names lacks {', '.join(missing)}")
        self._kinds = {names[kind]: kind for kind in KINDS}
        if len(self._kinds) != len(KINDS):
            raise ValueError("topic_names must name four different topics")
        self.prefix = prefix
        self.topic_names = {kind: names[kind] for kind in KINDS}
        self._depth = prefix.count("/") + 1

    def topic(self, kind: str, *levels: str) -> str:
        """The MQTT topic of a logical ``kind``, e.g. ``topic("metrics", "checkout")``."""
        name = "dlq" if kind == "dead_letter" else kind
        return "/".join([self.prefix, name, *(topic_level(level) for level in levels)])

    def inbound(self, topic: str) -> tuple[str, bytes] | None:
        """``(record topic, key)`` of a message received on ``topic``; None if not an input."""
        levels = topic.split("/")
        depth = self._depth
        kind = levels[depth] if len(levels) == depth + 2 else None
        if kind not in INPUTS:
            return None
        return self.topic_names[kind], unquote(levels[-1]).encode()

    def route(self, message: Outgoing) -> Routed:
        """Where one outgoing message goes.

        Verdicts go to ``<prefix>/verdicts/<service>/<deployment_id>`` (from the verdict
        JSON), retained; dead letters to ``<prefix>/dlq`` with their headers (and the
        original key, as ``coalmine-key``) as user properties; messages for the input
        topics to ``<prefix>/<kind>/<key>``.

        Raises:
            TransportError: the message cannot be routed.
        """
        kind = self._kinds.get(message.topic)
        if kind == "verdicts":
            service, deployment_id = _verdict_address(message.value)
            topic = self.topic(kind, service, deployment_id)
            return topic, message.value, True, _user_properties(message.headers)
        if kind == "dead_letter":
            user_properties = _user_properties(message.headers, message.key)
            return self.topic(kind), message.value, False, user_properties
        if kind in INPUTS:
            if message.key is None:
                raise TransportError(f"a message for {message.topic} needs a key (the service)")
            topic = self.topic(kind, message.key.decode("utf-8", "replace"))
            return topic, message.value, False, _user_properties(message.headers)
        known = ", ".join(self.topic_names.values())
        raise TransportError(f"cannot publish to {message.topic!r}: not one of {known}")


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
