"""Which decoder reads a message: the deploy and metric events of each input topic.

A deploy message is a deploy event of the wire contract or a CloudEvent carrying one;
a metric message is decoded by the contract (``native`` inputs and the metrics topic) or
by the decoder of its input's foreign format (OTLP, prometheus-adapter). Pure, no I/O.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Protocol

from coalmine._exceptions import ContractError
from coalmine.contract import decode_deploy_event, decode_metric_events
from coalmine.formats.cloudevents import (
    STRUCTURED_JSON,
    CloudEventDeduper,
    decode_cloudevent,
    is_cloudevent,
)
from coalmine.formats.otlp import OtlpDecoder
from coalmine.formats.prometheus_adapter import PrometheusAdapterDecoder

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from coalmine.config.models import TopicsSettings
    from coalmine.contract import DeployEvent, MetricEvent
    from coalmine.formats.mapping import InputSettings

__all__ = ["InputDecoder", "MetricDecoder", "decode_deploy_message", "metric_decoder"]

_SNIFF_BYTES = 4096
"""How far into a message without CloudEvents headers ``"specversion"`` is looked for."""


def decode_deploy_message(
    value: bytes, headers: Sequence[tuple[str, bytes | None]]
) -> tuple[DeployEvent, str | None]:
    """A deploy message's event, and its CloudEvents dedupe key (None: not a CloudEvent).

    A message is a CloudEvent by its headers, or, without them, when it names a
    ``"specversion"``: structured CloudEvents over MQTT arrive without a content-type.

    Raises:
        ContractError: the message is not a valid deploy event (or CloudEvent).
    """
    if not is_cloudevent(headers):
        if b'"specversion"' not in value[:_SNIFF_BYTES]:
            return decode_deploy_event(value), None
        headers = (*headers, ("content-type", STRUCTURED_JSON.encode()))
    return decode_cloudevent(value, headers)


class MetricDecoder(Protocol):
    """What a foreign-format metric decoder offers."""

    skipped: Counter[str]
    resets: int

    def decode(self, value: bytes) -> list[MetricEvent]:
        """The metric events one message yields; raises ``ContractError`` if malformed."""
        ...

    @property
    def tracked_series(self) -> int:
        """Input series whose last point is remembered."""
        ...


def metric_decoder(settings: InputSettings) -> MetricDecoder:
    """The decoder for a foreign-format input (OTLP in either encoding, prometheus-adapter)."""
    if settings.format in ("otlp_json", "otlp_proto"):
        return OtlpDecoder(settings)
    if settings.format == "prometheus_adapter":
        return PrometheusAdapterDecoder(settings)
    raise ValueError(f"{settings.format!r} inputs are decoded by coalmine.contract")


class InputDecoder:
    """The events of the messages of a daemon's input topics.

    Foreign-format decoders keep state (cumulative counters become per-interval deltas):
    one per input topic, fed that topic's messages in order. Redelivered CloudEvents are
    recognised by their key.
    """

    def __init__(
        self,
        topics: TopicsSettings,
        max_message_bytes: int,
        inputs: Sequence[InputSettings] = (),
    ) -> None:
        self._deployments = topics.deployments
        self._native = {topics.metrics}
        self._decoders: dict[str, MetricDecoder] = {}
        for source in inputs:
            if source.format == "native":
                self._native.add(source.topic)
            else:
                self._decoders[source.topic] = metric_decoder(source)
        self._max_bytes = max_message_bytes
        self._cloudevents = CloudEventDeduper()
        self._skips_counted: dict[str, Counter[str]] = {}
        self._resets_counted: dict[str, int] = {}

    def metric_events(self, topic: str, value: bytes) -> list[MetricEvent] | None:
        """The metric events of a message of ``topic``; None if it is no input topic.

        Raises:
            ContractError: the message is too large or does not decode.
        """
        if len(value) > self._max_bytes:
            self._check_size(value)
        if topic in self._native:
            return decode_metric_events(value)
        decoder = self._decoders.get(topic)
        if decoder is not None:
            return decoder.decode(value)
        return None

    def deploy_event(
        self, value: bytes, headers: Sequence[tuple[str, bytes | None]]
    ) -> DeployEvent | None:
        """The deploy event of a message; None for a CloudEvent already seen.

        Raises:
            ContractError: the message is too large or is not a valid deploy event.
        """
        self._check_size(value)
        event, key = decode_deploy_message(value, headers)
        if key is not None and self._cloudevents.seen(key):
            return None
        return event

    def news(self, topics: Iterable[str]) -> Iterator[tuple[str, Counter[str], int]]:
        """What the decoders of ``topics`` skipped and reset since the last call.

        Per foreign-format input among ``topics``: its points skipped, per reason, and
        its counter resets, for telemetry.
        """
        for topic in topics:
            decoder = self._decoders.get(topic)
            if decoder is None:
                continue
            counted = self._skips_counted.setdefault(topic, Counter())
            skipped = decoder.skipped - counted
            counted.update(skipped)
            resets = decoder.resets - self._resets_counted.get(topic, 0)
            if resets > 0:
                self._resets_counted[topic] = decoder.resets
            yield topic, skipped, max(resets, 0)

    def _check_size(self, value: bytes) -> None:
        if len(value) > self._max_bytes:
            raise ContractError("too_large", f"{len(value)} bytes")
