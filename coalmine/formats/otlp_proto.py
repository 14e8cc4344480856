"""OTLP protobuf (the Collector kafka exporter's default ``encoding: otlp_proto``) as OTLP/JSON.

:func:`request_to_json_shape` parses one binary ``ExportMetricsServiceRequest`` with the
``opentelemetry-proto`` classes and returns the object that decoding its OTLP/JSON encoding
gives (lowerCamelCase keys, enums as integers), so :mod:`coalmine.formats.otlp` applies
one set of validation and mapping rules to both encodings. Only what that decoder reads
is converted: data points of metrics outside ``wanted``, exemplars, sums of histograms,
descriptions and units are left out. 64-bit integers stay integers (the JSON decoder
accepts both those and strings), doubles stay floats (NaN and infinities included).

Converting field by field is 3 to 4 times faster than ``google.protobuf.json_format``'s
``MessageToDict`` (which also writes every 64-bit integer as a string to be parsed again):
about 0.7 ms against 2.5 ms for a request of 100 data points with four attributes each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from coalmine._exceptions import ContractError

if TYPE_CHECKING:
    from collections.abc import Container, Iterable

    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import (
        HistogramDataPoint,
        Metric,
        NumberDataPoint,
    )

__all__ = ["INVALID_PROTOBUF", "request_to_json_shape"]

INVALID_PROTOBUF = "invalid_protobuf"
"""The dead-letter reason of a message that is not a protobuf ``ExportMetricsServiceRequest``."""

_KINDS = {
    "gauge": "gauge",
    "sum": "sum",
    "histogram": "histogram",
    "exponential_histogram": "exponentialHistogram",
    "summary": "summary",
}
_ANY_VALUES = {
    "string_value": "stringValue",
    "bool_value": "boolValue",
    "int_value": "intValue",
    "double_value": "doubleValue",
}
"""The ``AnyValue`` kinds an attribute is read from; arrays, maps and bytes are left out."""


def request_to_json_shape(value: bytes, wanted: Container[str]) -> dict[str, Any]:
    """The OTLP/JSON object of one binary ``ExportMetricsServiceRequest``.

    Args:
        value: the message.
        wanted: metric names whose data points are converted; other metrics keep only
            their name (their data is never looked at).

    Raises:
        ContractError: ``invalid_protobuf``, the message does not parse.
    """
    try:
        request = ExportMetricsServiceRequest.FromString(value)
    except DecodeError as exc:
        # upb says "Error parsing message with type '...': Wire format was corrupt".
        detail = str(exc).rpartition("': ")[2] or "cannot parse"
        raise ContractError(
            INVALID_PROTOBUF, f"not a valid otlp_proto ExportMetricsServiceRequest: {detail}"
        ) from None
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": _attributes(rm.resource.attributes)},
                "scopeMetrics": [
                    {
                        "scope": {"name": sm.scope.name},
                        "metrics": [_metric(metric, wanted) for metric in sm.metrics],
                    }
                    for sm in rm.scope_metrics
                ],
            }
            for rm in request.resource_metrics
        ]
    }


def _metric(metric: Metric, wanted: Container[str]) -> dict[str, Any]:
    name = metric.name
    kind = metric.WhichOneof("data")
    if kind is None or name not in wanted:
        return {"name": name}
    if kind == "gauge":
        data: dict[str, Any] = {"dataPoints": _number_points(metric.gauge.data_points)}
    elif kind == "sum":
        data = {
            "dataPoints": _number_points(metric.sum.data_points),
            "aggregationTemporality": metric.sum.aggregation_temporality,
            "isMonotonic": metric.sum.is_monotonic,
        }
    elif kind == "histogram":
        data = {
            "dataPoints": _histogram_points(metric.histogram.data_points),
            "aggregationTemporality": metric.histogram.aggregation_temporality,
        }
    else:
        data = {}  # not supported: only its kind is looked at
    return {"name": name, _KINDS[kind]: data}


def _point(dp: NumberDataPoint | HistogramDataPoint) -> dict[str, Any]:
    """The fields every data point has, as ``otlp_json`` names them."""
    return {
        "attributes": _attributes(dp.attributes),
        "startTimeUnixNano": dp.start_time_unix_nano,
        "timeUnixNano": dp.time_unix_nano,
        "flags": dp.flags,
    }


def _number_points(points: Iterable[NumberDataPoint]) -> list[dict[str, Any]]:
    out = []
    for dp in points:
        point = _point(dp)
        which = dp.WhichOneof("value")
        if which == "as_double":
            point["asDouble"] = dp.as_double
        elif which == "as_int":
            point["asInt"] = dp.as_int
        out.append(point)
    return out


def _histogram_points(points: Iterable[HistogramDataPoint]) -> list[dict[str, Any]]:
    out = []
    for dp in points:
        point = {
            **_point(dp),
            "count": dp.count,
            "bucketCounts": list(dp.bucket_counts),
            "explicitBounds": list(dp.explicit_bounds),
        }
        if dp.HasField("min"):
            point["min"] = dp.min
        if dp.HasField("max"):
            point["max"] = dp.max
        out.append(point)
    return out


def _attributes(attributes: Iterable[KeyValue]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for kv in attributes:
        value = kv.value  # unset: an empty AnyValue, which the JSON decoder leaves out too
        which = value.WhichOneof("value")
        if which == "string_value":  # by far the most common
            out.append({"key": kv.key, "value": {"stringValue": value.string_value}})
        else:
            name = _ANY_VALUES.get(which) if which is not None else None
            json_value = {name: getattr(value, which)} if name is not None and which else {}
            out.append({"key": kv.key, "value": json_value})
    return out
