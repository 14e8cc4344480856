"""Foreign input formats, decoded into the wire contract's events (pure, no I/O).

- ``cloudevents``: deploy events in CloudEvents 1.0 (Kafka binary and structured mode,
  MQTT structured), CDEvents ``service.deployed``; a deduper for redelivered events.
- ``otlp``: OpenTelemetry metrics from the Collector's kafka exporter (``otlp_json``,
  ``otlp_proto``; ``otlp_proto`` turns protobuf into the OTLP/JSON object).
- ``prometheus_adapter``: samples from prometheus-kafka-adapter (JSON).
- ``inputs``: which decoder reads a message of an input topic; the one place that tells a
  CloudEvent from a native deploy event.
- ``mapping``: the declarative ``[[inputs]]`` configuration saying which series feed which
  profile metric.

The metric decoders are stateful (cumulative counters become per-interval deltas): keep
one per input topic, and feed it the messages in order.
"""

from __future__ import annotations

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
from coalmine.formats.inputs import (
    InputDecoder,
    MetricDecoder,
    decode_deploy_message,
    metric_decoder,
)
from coalmine.formats.mapping import InputFormat, InputSettings, Selector, SeriesMapping
from coalmine.formats.otlp import OtlpDecoder
from coalmine.formats.prometheus_adapter import PrometheusAdapterDecoder

__all__ = [
    "CloudEventDeduper",
    "InputDecoder",
    "InputFormat",
    "InputSettings",
    "MetricDecoder",
    "OtlpDecoder",
    "PrometheusAdapterDecoder",
    "Selector",
    "SeriesMapping",
    "cdevent_to_deploy_event",
    "decode_cloudevent",
    "decode_deploy_message",
    "dedupe_key",
    "is_cloudevent",
    "metric_decoder",
]
