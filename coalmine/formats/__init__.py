"""Foreign input formats, decoded into the wire contract's events (pure, no I/O).

- ``cloudevents``: deploy events in CloudEvents 1.0 (Kafka binary and structured mode,
  MQTT structured), CDEvents ``service.deployed``; a deduper for redelivered events.
- ``otlp``: OpenTelemetry metrics from the Collector's kafka exporter (``otlp_json``,
  ``otlp_proto``; ``otlp_proto`` turns protobuf into the OTLP/JSON object).
- ``prometheus_adapter``: samples from prometheus-kafka-adapter (JSON).
- ``mapping``: the declarative ``[[inputs]]`` configuration saying which series feed which
  profile metric.

The metric decoders are stateful (cumulative counters become per-interval deltas): keep
one per input topic, and feed it the messages in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

# coalmine.config (its settings) imports formats.mapping, which imports coalmine.config's
# models: load coalmine.config first, so importing coalmine.formats first works too.
import coalmine.config  # noqa: F401
from coalmine.formats.cloudevents import (
    CloudEventDeduper,
    cdevent_to_deploy_event,
    decode_cloudevent,
    dedupe_key,
    is_cloudevent,
)
from coalmine.formats.mapping import InputFormat, InputSettings, Selector, SeriesMapping
from coalmine.formats.otlp import OtlpDecoder
from coalmine.formats.prometheus_adapter import PrometheusAdapterDecoder

if TYPE_CHECKING:
    from collections import Counter

    from coalmine.contract import MetricEvent


class MetricDecoder(Protocol):
    """What the router needs of a foreign-format metric decoder."""

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


__all__ = [
    "CloudEventDeduper",
    "InputFormat",
    "InputSettings",
    "MetricDecoder",
    "OtlpDecoder",
    "PrometheusAdapterDecoder",
    "Selector",
    "SeriesMapping",
    "cdevent_to_deploy_event",
    "decode_cloudevent",
    "dedupe_key",
    "is_cloudevent",
    "metric_decoder",
]
