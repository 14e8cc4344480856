import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from coalmine._exceptions import ContractError
from coalmine.contract import parse_time
from coalmine.formats import (
    CloudEventDeduper,
    cdevent_to_deploy_event,
    decode_cloudevent,
    dedupe_key,
    is_cloudevent,
)
from coalmine.formats.cloudevents import parse_purl

FIXTURES = Path(__file__).parent / "fixtures"
STRUCTURED = [("content-type", b"application/cloudevents+json; charset=utf-8")]
CDEVENT_TYPE = "dev.cdevents.service.deployed.0.2.0"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def binary_message(**header_changes: str | None) -> tuple[bytes, list[tuple[str, bytes]]]:
    spec = fixture("cloudevent_binary.json")
    headers = dict(spec["headers"])
    headers.update(header_changes)
    encoded = [(name, value.encode()) for name, value in headers.items() if value is not None]
    return orjson.dumps(spec["value"]), encoded


def structured(**changes: Any) -> bytes:
    envelope = fixture("cloudevent_structured.json")
    envelope.update(changes)
    return orjson.dumps({k: v for k, v in envelope.items() if v is not None})


def cdevent(**custom: Any) -> dict[str, Any]:
    body = fixture("cdevent_service_deployed.json")
    body["customData"]["coalmine"].update(custom)
    return body


def cdevent_message(body: dict[str, Any], ce_type: str = CDEVENT_TYPE) -> bytes:
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": body["context"]["id"],
            "source": body["context"]["source"],
            "type": ce_type,
            "datacontenttype": "application/json",
            "data": body,
        }
    )


# ---------------------------------------------------------------- binary mode


def test_binary_mode_carries_the_deploy_event_as_the_value():
    value, headers = binary_message()
    assert is_cloudevent(headers)
    event, key = decode_cloudevent(value, headers)
    assert (event.event, event.deployment_id, event.service) == (
        "started",
        "checkout-v42",
        "checkout",
    )
    assert (event.baseline_version, event.canary_version) == ("v41", "v42")
    assert event.time == parse_time("2026-11-26T10:00:00Z")
    assert key == "https://ci.example.com/pipelines/checkout\0b7a7c3e2-5f1e-4c38-9a43-2f0c1d6b8e11"
    assert key == dedupe_key(
        "https://ci.example.com/pipelines/checkout", "b7a7c3e2-5f1e-4c38-9a43-2f0c1d6b8e11"
    )


def test_binary_mode_data_without_time_takes_the_cloudevent_time():
    spec = fixture("cloudevent_binary.json")
    del spec["value"]["time"]
    headers = [(name, value.encode()) for name, value in spec["headers"]]
    event, _ = decode_cloudevent(orjson.dumps(spec["value"]), headers)
    # ce_time has nanoseconds; microseconds are kept
    assert event.time == pytest.approx(parse_time("2026-11-26T10:00:00.123456Z"))


def test_binary_mode_without_content_type_is_read_as_json():
    value, headers = binary_message(**{"content-type": None})
    event, _ = decode_cloudevent(value, headers)
    assert event.deployment_id == "checkout-v42"


def test_header_names_are_case_insensitive():
    value, headers = binary_message()
    upper = [(name.upper(), raw) for name, raw in headers]
    assert is_cloudevent(upper)
    assert decode_cloudevent(value, upper)[0].deployment_id == "checkout-v42"


# ---------------------------------------------------------------- structured mode


def test_structured_mode_carries_the_deploy_event_in_data():
    assert is_cloudevent(STRUCTURED)
    event, key = decode_cloudevent(structured(), STRUCTURED)
    assert (event.event, event.traffic_weight) == ("step", 25.0)
    assert key == "/argo-rollouts/checkout\x009d2e0f7a-31c4-4b8e-8f55-0b6f3c1a2d77"


def test_structured_mode_data_base64():
    data = fixture("cloudevent_structured.json")["data"]
    encoded = base64.b64encode(orjson.dumps(data)).decode()
    event, _ = decode_cloudevent(structured(data=None, data_base64=encoded), STRUCTURED)
    assert event.traffic_weight == 25.0


def test_structured_mode_wins_over_stray_ce_headers():
    headers = [*STRUCTURED, ("ce_specversion", b"0.3")]
    assert decode_cloudevent(structured(), headers)[0].event == "step"


def test_structured_data_without_time_takes_the_cloudevent_time():
    data = fixture("cloudevent_structured.json")["data"]
    del data["time"]
    event, _ = decode_cloudevent(
        structured(data=data, time="2026-11-26T10:06:00+01:00"), STRUCTURED
    )
    assert event.time == parse_time("2026-11-26T09:06:00Z")


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("content-type", b"application/json")],
        [("key", b"checkout"), ("traceparent", b"00-abc")],
        [("content-type", None)],
    ],
)
def test_native_messages_are_not_cloudevents(headers: list[tuple[str, bytes | None]]):
    assert not is_cloudevent(headers)


# ---------------------------------------------------------------- invalid envelopes


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ce_specversion": "0.3"}, "cloudevent_invalid"),
        ({"ce_specversion": "1.0.2"}, "cloudevent_invalid"),
        ({"ce_id": None}, "cloudevent_invalid"),
        ({"ce_id": ""}, "cloudevent_invalid"),
        ({"ce_source": None}, "cloudevent_invalid"),
        ({"ce_type": None}, "cloudevent_invalid"),
        ({"ce_time": "yesterday"}, "cloudevent_invalid"),
        ({"ce_time": "2026-11-26T10:00:00"}, "cloudevent_invalid"),
        ({"content-type": "text/plain"}, "cloudevent_invalid"),
        ({"content-type": "application/avro"}, "cloudevent_invalid"),
    ],
)
def test_invalid_binary_cloudevents(changes: dict[str, str | None], reason: str):
    value, headers = binary_message(**changes)
    with pytest.raises(ContractError) as caught:
        decode_cloudevent(value, headers)
    assert caught.value.reason == reason


def test_binary_header_that_is_not_utf8():
    value, headers = binary_message()
    headers.append(("ce_subject", b"\xff\xfe"))
    with pytest.raises(ContractError, match="not UTF-8") as caught:
        decode_cloudevent(value, headers)
    assert caught.value.reason == "cloudevent_invalid"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "cloudevent_invalid"),
        (b"[]", "cloudevent_invalid"),
        (structured(specversion="0.3"), "cloudevent_invalid"),
        (structured(specversion=1.0), "cloudevent_invalid"),
        (structured(specversion=None), "cloudevent_invalid"),
        (structured(id=None), "cloudevent_invalid"),
        (structured(id=7), "cloudevent_invalid"),
        (structured(source=""), "cloudevent_invalid"),
        (structured(type=None), "cloudevent_invalid"),
        (structured(time=1795687200), "cloudevent_invalid"),
        (structured(time="26/11/2026"), "cloudevent_invalid"),
        (structured(datacontenttype="application/xml"), "cloudevent_invalid"),
        (structured(datacontenttype=5), "cloudevent_invalid"),
        (structured(data_base64="e30="), "cloudevent_invalid"),
        (structured(data=None, data_base64="!!!"), "cloudevent_invalid"),
        (structured(data=None, data_base64=5), "cloudevent_invalid"),
        (structured(data=None, data_base64=base64.b64encode(b"{").decode()), "invalid_json"),
        (structured(data=None), "not_an_object"),
        (structured(data="event=step"), "not_an_object"),
        (structured(data={"event": "paused"}), "unknown_event"),
        (structured(data={"event": "step", "service": "checkout"}), "missing_field"),
    ],
)
def test_invalid_structured_cloudevents(body: bytes, reason: str):
    with pytest.raises(ContractError) as caught:
        decode_cloudevent(body, STRUCTURED)
    assert caught.value.reason == reason
    assert caught.value.message


def test_binary_data_that_is_not_json():
    _, headers = binary_message()
    with pytest.raises(ContractError) as caught:
        decode_cloudevent(b"event: started", headers)
    assert caught.value.reason == "invalid_json"


@pytest.mark.parametrize(
    "content_type",
    [b"application/cloudevents-batch+json", b"application/cloudevents+avro"],
)
def test_unsupported_cloudevent_formats(content_type: bytes):
    with pytest.raises(ContractError, match="unsupported CloudEvents format") as caught:
        decode_cloudevent(structured(), [("content-type", content_type)])
    assert caught.value.reason == "cloudevent_invalid"


def test_a_message_without_cloudevent_markers_is_rejected():
    with pytest.raises(ContractError) as caught:
        decode_cloudevent(b"{}", [("content-type", b"application/json")])
    assert caught.value.reason == "cloudevent_invalid"


# ---------------------------------------------------------------- CDEvents


def test_cdevent_service_deployed_starts_an_analysis():
    body = fixture("cdevent_service_deployed.json")
    event, key = decode_cloudevent(cdevent_message(body), STRUCTURED)
    assert event.event == "started"
    assert event.service == "checkout"
    assert event.canary_version == "v42"  # the tag qualifier of the OCI purl
    assert event.baseline_version == "v41"
    assert event.deployment_id == "checkout-v42"
    assert event.traffic_weight == 5.0
    assert event.profile == "default"
    assert event.time == pytest.approx(parse_time("2026-11-26T10:00:00.315384Z"))
    assert key == "/tekton/checkout-pipeline\x00271069a8-fc18-44f1-b38f-9d70a1695819"


def test_cdevent_in_binary_mode():
    body = fixture("cdevent_service_deployed.json")
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", body["context"]["id"].encode()),
        ("ce_source", body["context"]["source"].encode()),
        ("ce_type", CDEVENT_TYPE.encode()),
        ("content-type", b"application/json"),
    ]
    event, _ = decode_cloudevent(orjson.dumps(body), headers)
    assert (event.service, event.canary_version) == ("checkout", "v42")


def test_cdevent_service_upgraded_is_accepted_too():
    body = fixture("cdevent_service_deployed.json")
    event = cdevent_to_deploy_event("dev.cdevents.service.upgraded.0.2.0", body)
    assert event.event == "started"


def test_cdevent_overrides_from_custom_data():
    body = cdevent(
        deployment_id="checkout-2026-11-26-1",
        service="payments-checkout",
        canary={"version": "2026.11.26"},
        profile="strict",
        strategy="blue_green",
    )
    event = cdevent_to_deploy_event(CDEVENT_TYPE, body)
    assert event.deployment_id == "checkout-2026-11-26-1"
    assert event.service == "payments-checkout"
    assert event.canary_version == "2026.11.26"
    assert (event.profile, event.strategy) == ("strict", "blue_green")


def test_cdevent_version_from_the_purl_without_tag():
    body = fixture("cdevent_service_deployed.json")
    body["subject"]["content"]["artifactId"] = "pkg:oci/checkout@sha256%3A0b31b1c0"
    event = cdevent_to_deploy_event(CDEVENT_TYPE, body)
    assert event.canary_version == "sha256:0b31b1c0"
    assert event.deployment_id == "checkout-sha256:0b31b1c0"


def test_cdevent_without_context_timestamp_takes_the_cloudevent_time():
    body = fixture("cdevent_service_deployed.json")
    del body["context"]["timestamp"]
    event = cdevent_to_deploy_event(CDEVENT_TYPE, body, "2026-11-26T10:00:00Z")
    assert event.time == parse_time("2026-11-26T10:00:00Z")


def _without_baseline() -> dict[str, Any]:
    body = fixture("cdevent_service_deployed.json")
    del body["customData"]["coalmine"]["baseline"]
    return body


def _without(path: str) -> dict[str, Any]:
    body = fixture("cdevent_service_deployed.json")
    target = body
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    del target[keys[-1]]
    return body


def _with(path: str, value: Any) -> dict[str, Any]:
    body = fixture("cdevent_service_deployed.json")
    target = body
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return body


@pytest.mark.parametrize(
    ("ce_type", "body", "reason"),
    [
        ("dev.cdevents.pipelinerun.finished.0.2.0", {}, "cdevent_unsupported"),
        ("dev.cdevents.service.rolledback.0.2.0", {}, "cdevent_unsupported"),
        (CDEVENT_TYPE, "text", "cdevent_invalid"),
        (CDEVENT_TYPE, _without("customData"), "cdevent_no_baseline"),
        (CDEVENT_TYPE, _without_baseline(), "cdevent_no_baseline"),
        (CDEVENT_TYPE, _with("customData.coalmine.baseline", "v41"), "cdevent_no_baseline"),
        (CDEVENT_TYPE, _with("customData.coalmine", "v41"), "cdevent_invalid"),
        (CDEVENT_TYPE, _with("customDataContentType", "text/plain"), "cdevent_no_baseline"),
        (CDEVENT_TYPE, _without("context"), "cdevent_invalid"),
        (CDEVENT_TYPE, _without("subject"), "cdevent_invalid"),
        (CDEVENT_TYPE, _without("subject.content"), "cdevent_invalid"),
        (CDEVENT_TYPE, _without("subject.content.artifactId"), "cdevent_invalid"),
        (CDEVENT_TYPE, _with("subject.content.artifactId", "checkout:v42"), "cdevent_invalid"),
        (CDEVENT_TYPE, _with("subject.content.artifactId", "pkg:oci/checkout"), "cdevent_invalid"),
        (CDEVENT_TYPE, _with("subject.content.artifactId", "pkg:checkout@1"), "cdevent_invalid"),
        (CDEVENT_TYPE, _with("context.timestamp", "now"), "bad_time"),
        (CDEVENT_TYPE, _without("context.timestamp"), "cdevent_invalid"),
        (CDEVENT_TYPE, _with("customData.coalmine.traffic_weight", 150), "out_of_range"),
        (CDEVENT_TYPE, _with("customData.coalmine.service", 7), "wrong_type"),
    ],
)
def test_invalid_cdevents(ce_type: str, body: object, reason: str):
    envelope = {"specversion": "1.0", "id": "1", "source": "/s", "type": ce_type, "data": body}
    with pytest.raises(ContractError) as caught:
        decode_cloudevent(orjson.dumps(envelope), STRUCTURED)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("purl", "expected"),
    [
        ("pkg:oci/checkout@sha256%3Aabc?tag=v42", ("checkout", "v42")),
        ("pkg:oci/checkout@sha256%3Aabc?repository_url=ghcr.io%2Facme", ("checkout", "sha256:abc")),
        ("pkg:docker/acme/checkout@1.4.2", ("checkout", "1.4.2")),
        ("pkg:npm/%40acme/checkout@2.0.0#dist", ("checkout", "2.0.0")),
        ("pkg:maven/com.acme/checkout@1.0.0-rc.1?type=jar", ("checkout", "1.0.0-rc.1")),
        ("PKG:/generic/checkout", ("checkout", None)),
    ],
)
def test_package_urls(purl: str, expected: tuple[str, str | None]):
    assert parse_purl(purl) == expected


# ---------------------------------------------------------------- deduper


def test_deduper_remembers_seen_keys():
    deduper = CloudEventDeduper()
    _, key = decode_cloudevent(*binary_message())
    assert not deduper.seen(key)
    assert deduper.seen(key)
    assert key in deduper
    assert not deduper.seen(dedupe_key("other-source", "b7a7c3e2-5f1e-4c38-9a43-2f0c1d6b8e11"))
    assert len(deduper) == 2


def test_deduper_is_bounded_least_recently_seen_forgotten_first():
    deduper = CloudEventDeduper(capacity=2)
    deduper.seen("a")
    deduper.seen("b")
    assert deduper.seen("a")  # refreshes "a"
    deduper.seen("c")  # forgets "b"
    assert len(deduper) == 2
    assert "b" not in deduper
    assert deduper.seen("a")
    assert not deduper.seen("b")


def test_deduper_capacity_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        CloudEventDeduper(capacity=0)
