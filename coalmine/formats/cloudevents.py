"""Deploy events wrapped in CloudEvents 1.0, and CDEvents ``service.deployed``.

Kafka protocol binding 1.0:

- **binary mode**: the attributes are headers ``ce_<attribute>`` (``ce_specversion``,
  ``ce_id``, ``ce_source``, ``ce_type``, ``ce_time``, ...), ``content-type`` is the data's
  media type, and the message value is the data: a deploy event of the wire contract.
- **structured mode**: ``content-type: application/cloudevents+json``; the value is the
  JSON envelope with the attributes and the deploy event in ``data`` (or base64 JSON in
  ``data_base64``). MQTT carries CloudEvents this way (the lead maps the MQTT content type
  property or a fixed content type to the ``content-type`` header).

``specversion`` must be ``"1.0"``; ``id``, ``source`` and ``type`` are required, non-empty
strings; ``time``, when present, RFC 3339. A deploy event in ``data`` without ``time``
takes the CloudEvent's ``time``. Envelope problems raise ``ContractError`` with reason
``cloudevent_invalid``; problems of the deploy event itself keep the reasons of the wire
contract (``missing_field``, ``unknown_event``, ...).

A ``type`` beginning ``dev.cdevents.`` is a CDEvent: ``service.deployed`` and
``service.upgraded`` (any version) open an analysis (a ``started`` event), mapped as
``cdevent_to_deploy_event`` describes; any other CDEvent type raises ``cdevent_unsupported``.

Producers retry, so the same CloudEvent can arrive twice: ``decode_cloudevent`` returns
its dedupe key (``source``, a NUL character, ``id``: unique per the spec) and
``CloudEventDeduper`` remembers the keys seen.
"""

from __future__ import annotations

import base64
import binascii
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson

from coalmine._exceptions import ContractError
from coalmine.contract import deploy_event_from_mapping, parse_time

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coalmine.contract import DeployEvent

REASON = "cloudevent_invalid"
STRUCTURED_JSON = "application/cloudevents+json"
SPEC_VERSION = "1.0"
CDEVENTS_PREFIX = "dev.cdevents."
CDEVENTS_STARTED = ("dev.cdevents.service.deployed.", "dev.cdevents.service.upgraded.")


def _invalid(message: str) -> ContractError:
    return ContractError(REASON, message)


def _header_map(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, bytes | None]:
    """Headers by lower-case name; the last of repeated headers wins."""
    return {name.lower(): value for name, value in headers}


def _media_type(value: bytes | None) -> str:
    if not value:
        return ""
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise _invalid("the content-type header is not UTF-8") from None
    return text.split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type in {"application/json", "text/json"} or media_type.endswith("+json")


def is_cloudevent(headers: Sequence[tuple[str, bytes | None]]) -> bool:
    """Whether a message is a CloudEvent.

    It is when it has a ``ce_specversion`` header (binary mode) or a ``content-type`` of
    ``application/cloudevents...`` (structured mode).
    """
    for name, value in headers:
        lowered = name.lower()
        if lowered == "ce_specversion":
            return True
        if (
            lowered == "content-type"
            and value
            and value.lower().startswith(b"application/cloudevents")
        ):
            return True
    return False


def dedupe_key(source: str, event_id: str) -> str:
    """The identity of a CloudEvent: ``source`` and ``id`` (unique together, per the spec)."""
    return f"{source}\0{event_id}"


def decode_cloudevent(
    value: bytes, headers: Sequence[tuple[str, bytes | None]]
) -> tuple[DeployEvent, str]:
    """Decode a CloudEvent carrying a deploy event (or a CDEvent); return it and its key.

    Raises ``ContractError`` when the envelope is not valid CloudEvents 1.0 or its data is
    not a valid deploy event. The key is ``dedupe_key(source, id)``.
    """
    by_name = _header_map(headers)
    media_type = _media_type(by_name.get("content-type"))
    if media_type.startswith("application/cloudevents"):
        if media_type != STRUCTURED_JSON:
            raise _invalid(f"unsupported CloudEvents format {media_type!r}; use {STRUCTURED_JSON}")
        attributes, data = _structured(value)
    elif "ce_specversion" in by_name:
        attributes, data = _binary(value, by_name, media_type)
    else:
        raise _invalid("neither a ce_specversion header nor a cloudevents content-type")
    source, event_id, ce_type, ce_time = _required(attributes)
    if ce_type.startswith(CDEVENTS_PREFIX):
        event = cdevent_to_deploy_event(ce_type, data, ce_time)
    else:
        if not isinstance(data, dict):
            raise ContractError(
                "not_an_object", "the CloudEvent data must be a deploy event object"
            )
        if data.get("time") is None and ce_time is not None:
            data = {**data, "time": ce_time}
        event = deploy_event_from_mapping(data)
    return event, dedupe_key(source, event_id)


def _binary(
    value: bytes, by_name: dict[str, bytes | None], media_type: str
) -> tuple[dict[str, object], object]:
    attributes: dict[str, object] = {}
    for name, raw in by_name.items():
        if name.startswith("ce_") and raw is not None:
            try:
                attributes[name[3:]] = raw.decode()
            except UnicodeDecodeError:
                raise _invalid(f"header {name} is not UTF-8") from None
    if media_type and not _is_json(media_type):
        raise _invalid(f"data content type {media_type!r} is not JSON")
    return attributes, _loads(value)


def _structured(value: bytes) -> tuple[dict[str, object], object]:
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"the structured CloudEvent is not valid JSON: {exc}") from None
    if not isinstance(envelope, dict):
        raise _invalid("a structured CloudEvent must be a JSON object")
    media_type = envelope.get("datacontenttype")
    if media_type is not None:
        if not isinstance(media_type, str):
            raise _invalid("'datacontenttype' must be a string")
        if not _is_json(media_type.split(";", 1)[0].strip().lower()):
            raise _invalid(f"data content type {media_type!r} is not JSON")
    if "data" in envelope and "data_base64" in envelope:
        raise _invalid("'data' and 'data_base64' are mutually exclusive")
    if "data_base64" in envelope:
        encoded = envelope["data_base64"]
        if not isinstance(encoded, str):
            raise _invalid("'data_base64' must be a string")
        try:
            data = _loads(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise _invalid("'data_base64' is not valid base64") from None
    else:
        data = envelope.get("data")
    return envelope, data


def _loads(value: bytes) -> object:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ContractError(
            "invalid_json", f"the CloudEvent data is not valid JSON: {exc}"
        ) from None


def _required(attributes: Mapping[str, object]) -> tuple[str, str, str, str | None]:
    version = attributes.get("specversion")
    if version != SPEC_VERSION:
        raise _invalid(f"specversion must be {SPEC_VERSION!r}, got {str(version)[:20]!r}")
    found = []
    for name in ("source", "id", "type"):
        value = attributes.get(name)
        if not isinstance(value, str) or not value:
            raise _invalid(f"'{name}' is required and must be a non-empty string")
        found.append(value)
    ce_time = attributes.get("time")
    if ce_time is not None:
        if not isinstance(ce_time, str):
            raise _invalid("'time' must be an RFC 3339 string")
        try:
            parse_time(ce_time)
        except ContractError as exc:
            raise _invalid(exc.message) from None
    source, event_id, ce_type = found
    return source, event_id, ce_type, ce_time


# --------------------------------------------------------------------------- CDEvents


def cdevent_to_deploy_event(ce_type: str, data: object, ce_time: str | None = None) -> DeployEvent:
    """Map a CDEvents ``service.deployed`` / ``service.upgraded`` event to ``started``.

    - ``service``: ``customData.coalmine.service``, else the name in the
      ``subject.content.artifactId`` package URL (``pkg:oci/checkout@...`` -> ``checkout``);
    - canary version: ``customData.coalmine.canary.version``, else the purl's ``tag``
      qualifier, else the purl's version (percent-decoded, e.g. ``sha256:0b31...``);
    - baseline version: ``customData.coalmine.baseline.version`` (required: a CDEvent
      does not say what runs beside the new version; ``cdevent_no_baseline`` otherwise);
    - ``deployment_id``: ``customData.coalmine.deployment_id``, else ``<service>-<canary>``;
    - ``time``: ``context.timestamp``, else the CloudEvent's ``time``;
    - ``profile``, ``strategy``, ``traffic_weight``: from ``customData.coalmine`` if given.

    Raises ``cdevent_unsupported`` for other CDEvent types and ``cdevent_invalid`` for a
    CDEvent without the fields above.
    """
    if not ce_type.startswith(CDEVENTS_STARTED):
        raise ContractError(
            "cdevent_unsupported",
            f"{ce_type[:80]!r}: only service.deployed and service.upgraded start an analysis",
        )
    if not isinstance(data, dict):
        raise ContractError("cdevent_invalid", "a CDEvent must be a JSON object")
    context = _cd_object(data, "context")
    subject = _cd_object(data, "subject")
    content = _cd_object(subject, "content", "subject.")
    custom = _coalmine_data(data)
    artifact = content.get("artifactId")
    if not isinstance(artifact, str) or not artifact:
        raise ContractError("cdevent_invalid", "'subject.content.artifactId' is required")
    purl_name, purl_version = parse_purl(artifact)
    baseline = custom.get("baseline")
    if not isinstance(baseline, Mapping) or not baseline.get("version"):
        raise ContractError(
            "cdevent_no_baseline",
            "the baseline version is required in customData.coalmine.baseline.version",
        )
    canary = custom.get("canary")
    canary_version = canary.get("version") if isinstance(canary, Mapping) else None
    canary_version = canary_version or purl_version
    if not canary_version:
        raise ContractError("cdevent_invalid", f"artifactId {artifact[:80]!r} has no version")
    service = custom.get("service") or purl_name
    time = context.get("timestamp") or ce_time
    if time is None:
        raise ContractError("cdevent_invalid", "'context.timestamp' is required")
    event: dict[str, Any] = {
        "event": "started",
        "deployment_id": custom.get("deployment_id") or f"{service}-{canary_version}",
        "service": service,
        "time": time,
        "baseline": dict(baseline),
        "canary": {"version": canary_version},
    }
    for key in ("profile", "strategy", "traffic_weight"):
        if key in custom:
            event[key] = custom[key]
    return deploy_event_from_mapping(event)


def _cd_object(obj: Mapping[str, Any], key: str, prefix: str = "") -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, Mapping):
        raise ContractError("cdevent_invalid", f"'{prefix}{key}' must be an object")
    return value


def _coalmine_data(data: Mapping[str, Any]) -> Mapping[str, Any]:
    custom = data.get("customData")
    if custom is None:
        return {}
    content_type = data.get("customDataContentType", "application/json")
    if not isinstance(custom, Mapping) or not (
        isinstance(content_type, str) and _is_json(content_type.split(";", 1)[0].strip().lower())
    ):
        return {}
    ours = custom.get("coalmine")
    if ours is None:
        return {}
    if not isinstance(ours, Mapping):
        raise ContractError("cdevent_invalid", "'customData.coalmine' must be an object")
    return ours


def parse_purl(purl: str) -> tuple[str, str | None]:
    """The name and version of a package URL (``pkg:type/namespace/name@version?q#sub``).

    The version is the ``tag`` qualifier when there is one (an OCI image named by digest
    and tag: the tag is what services report as their version), else the purl version.
    Both are percent-decoded. Raises ``cdevent_invalid`` for something else than a purl.
    """
    scheme, _, rest = purl.partition(":")
    if scheme.lower() != "pkg" or not rest:
        raise ContractError("cdevent_invalid", f"artifactId {purl[:80]!r} is not a package URL")
    rest = rest.split("#", 1)[0].lstrip("/")
    rest, _, query = rest.partition("?")
    path, _, version = rest.rpartition("@") if "@" in rest else (rest, "", "")
    segments = [s for s in path.split("/") if s]
    if len(segments) < 2:
        raise ContractError("cdevent_invalid", f"artifactId {purl[:80]!r} has no type/name")
    qualifiers = {
        key.lower(): unquote(val)
        for key, _, val in (q.partition("=") for q in query.split("&") if q)
    }
    tag = qualifiers.get("tag")
    return unquote(segments[-1]), tag or unquote(version) or None


# --------------------------------------------------------------------------- dedupe


class CloudEventDeduper:
    """The keys of the last ``capacity`` CloudEvents, to drop redelivered or re-sent ones.

    The least recently seen key is forgotten first.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def seen(self, key: str) -> bool:
        """Record ``key``; return whether it had been recorded before."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return False
