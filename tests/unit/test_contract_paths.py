"""The metric contract's fast decode equals its validating decode, on generated messages.

``decode_metric_events`` parses a message of the common shape in one typed ``msgspec``
pass and hands anything else to the validating path (``orjson`` and the checks that name
the reason). Whatever the path, a message must decode to the same events, or be rejected
with the same reason: checked here over messages hypothesis generates, valid and not.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from coalmine._exceptions import ContractError
from coalmine.contract import MetricEvent, _decode_validated, decode_metric_events

text = st.one_of(st.text(min_size=0, max_size=8), st.sampled_from(["checkout", "v2", "i-1"]))
number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 2.5, -1.0, 1e300, 2**53 + 1]),
)
json_value = st.one_of(
    number, text, st.booleans(), st.none(), st.lists(number, max_size=3), st.just({})
)
times = st.one_of(
    st.sampled_from(["2026-11-26T10:00:00Z", "2026-11-26T10:00:00.5+01:00", "2026-11-26"]),
    number,
    st.text(max_size=5),
)
fields: dict[str, st.SearchStrategy[Any]] = {
    "service": text,
    "metric": text,
    "time": times,
    "cohort": st.one_of(st.sampled_from(["baseline", "canary", "both"]), json_value),
    "version": text,
    "deployment_id": text,
    "instance": text,
    "labels": st.one_of(st.dictionaries(text, text, max_size=2), json_value),
    "value": json_value,
    "values": st.one_of(st.lists(number, max_size=4), json_value),
    "good": json_value,
    "total": json_value,
    "extra": json_value,
}


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A metric event: mostly of the common shape, with any field possibly off."""
    event: dict[str, Any] = {"service": draw(text), "metric": draw(text), "time": draw(times)}
    event[draw(st.sampled_from(["cohort", "version"]))] = draw(fields["cohort"])
    count = st.one_of(st.integers(min_value=-2, max_value=20), json_value)
    if draw(st.booleans()):
        event["values"] = draw(st.one_of(st.lists(number, min_size=1, max_size=4), json_value))
    else:
        event["good"], event["total"] = draw(count), draw(count)
    for name in draw(st.lists(st.sampled_from(sorted(fields)), max_size=3)):
        event[name] = draw(fields[name])
    return event


messages = st.one_of(events(), st.lists(events(), min_size=0, max_size=3))


def outcome(decode: Any, value: bytes) -> tuple[str, Any]:
    try:
        decoded: list[MetricEvent] = decode(value)
    except ContractError as exc:
        return "rejected", exc.reason
    return "events", [
        (
            e.service,
            e.metric,
            e.time,
            e.values.tobytes(),
            e.values.dtype,
            e.good,
            e.total,
            e.is_ratio,
            e.deployment_id,
            e.cohort,
            e.version,
            e.instance,
        )
        for e in decoded
    ]


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(messages)
def test_the_fast_path_decodes_as_the_validating_path(message: Any) -> None:
    value = json.dumps(message).encode()  # the standard library writes any integer
    assert outcome(decode_metric_events, value) == outcome(_decode_validated, value)


def test_the_common_shape_takes_the_fast_path_and_still_equals_the_validator() -> None:
    """The generator above reaches the typed path: plain valid events decode there."""
    value = orjson.dumps(
        [
            {"service": "s", "metric": "m", "time": 1.5, "cohort": "canary", "values": [1, 2.5]},
            {"service": "s", "metric": "r", "time": "2026-11-26T10:00:00Z", "version": "v2"}
            | {"good": 9, "total": 10},
        ]
    )
    fast, slow = decode_metric_events(value), _decode_validated(value)
    assert [e.values.tolist() for e in fast] == [[1.0, 2.5], []]
    assert outcome(decode_metric_events, value) == outcome(_decode_validated, value)
    assert np.array_equal(fast[0].values, slow[0].values)
