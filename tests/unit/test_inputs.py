"""Which decoder reads a message: native or CloudEvents deploy events, native or foreign
metric events, and what the foreign decoders skipped."""

import json
from pathlib import Path

import orjson
import pytest

from coalmine._exceptions import ContractError
from coalmine.config.models import TopicsSettings
from coalmine.formats import InputDecoder, InputSettings, decode_deploy_message

TOPICS = TopicsSettings()
FIXTURES = Path(__file__).parent / "fixtures"
NATIVE = {
    "event": "started",
    "deployment_id": "checkout-v42",
    "service": "checkout",
    "time": "2026-11-26T10:00:00Z",
    "baseline": {"version": "v41"},
    "canary": {"version": "v42"},
}


def structured() -> bytes:
    return (FIXTURES / "cloudevent_structured.json").read_bytes()


def test_a_native_deploy_event_has_no_dedupe_key() -> None:
    event, key = decode_deploy_message(orjson.dumps(NATIVE), ())
    assert (event.deployment_id, key) == ("checkout-v42", None)


@pytest.mark.parametrize(
    "headers",
    [
        (("content-type", b"application/cloudevents+json"),),
        (),  # structured CloudEvents over MQTT arrive without a content-type
    ],
)
def test_a_structured_cloudevent_is_told_by_its_headers_or_its_specversion(headers) -> None:
    event, key = decode_deploy_message(structured(), headers)
    assert event.event == "step"
    assert key is not None


def test_a_binary_cloudevent_is_told_by_its_headers() -> None:
    spec = json.loads((FIXTURES / "cloudevent_binary.json").read_text())
    headers = tuple((name, value.encode()) for name, value in spec["headers"])
    event, key = decode_deploy_message(orjson.dumps(spec["value"]), headers)
    assert event.event == "started"
    assert key is not None


def test_a_cloudevent_read_twice_is_taken_once() -> None:
    inputs = InputDecoder(TOPICS, max_message_bytes=1 << 20)
    assert inputs.deploy_event(structured(), ()) is not None
    assert inputs.deploy_event(structured(), ()) is None
    assert inputs.deploy_event(orjson.dumps(NATIVE), ()) is not None
    assert inputs.deploy_event(orjson.dumps(NATIVE), ()) is not None  # native: no identity


def test_each_input_topic_has_its_decoder_and_other_topics_none() -> None:
    native = InputSettings(topic="more.metrics")
    inputs = InputDecoder(TOPICS, max_message_bytes=1 << 20, inputs=[native])
    value = orjson.dumps({"service": "s", "metric": "m", "time": 1.0, "version": "v", "value": 2})
    for topic in (TOPICS.metrics, "more.metrics"):
        (event,) = inputs.metric_events(topic, value) or []
        assert event.values.tolist() == [2.0]
    assert inputs.metric_events("elsewhere", value) is None


def test_a_message_over_the_size_limit_is_refused_whatever_its_topic() -> None:
    inputs = InputDecoder(TOPICS, max_message_bytes=10)
    for decode in (
        lambda: inputs.metric_events("elsewhere", b"x" * 11),
        lambda: inputs.deploy_event(b"x" * 11, ()),
    ):
        with pytest.raises(ContractError) as caught:
            decode()
        assert caught.value.reason == "too_large"


def test_what_a_foreign_decoder_skipped_is_told_once() -> None:
    source = InputSettings.model_validate(
        {
            "topic": "otlp_metrics",
            "format": "otlp_json",
            "metrics": [
                {
                    "metric": "requests",
                    "kind": "ratio",
                    "total": {"series": "http.server.requests"},
                    "bad": {
                        "series": "http.server.requests",
                        "labels": {"http.response.status_code": "5.."},
                    },
                }
            ],
        }
    )
    inputs = InputDecoder(TOPICS, max_message_bytes=1 << 22, inputs=[source])
    body = orjson.loads((FIXTURES / "otlp_delta.json").read_bytes())
    body["resourceMetrics"][0]["resource"]["attributes"] = [
        {"key": "service.name", "value": {"stringValue": "checkout"}}
    ]
    inputs.metric_events("otlp_metrics", orjson.dumps(body))
    ((topic, skipped, resets),) = inputs.news(["otlp_metrics", TOPICS.metrics])
    assert topic == "otlp_metrics"
    assert skipped == {"no_version": 2}  # without service.version: not routable
    assert resets == 0
    ((_, again, _),) = inputs.news(["otlp_metrics"])
    assert not again
