"""Read coalmine's input topics from Kafka over a time range, in stream order; record them.

No consumer group is joined and nothing is committed
(:func:`coalmine.bus.kafka.read_partitions`): every partition is assigned by hand,
positioned with ``offsets_for_times`` (some brokers, tansu among them, answer with the
earliest offset, so records are also filtered by timestamp), and read up to the end
offsets captured at the start. The partitions are then merged by record timestamp
(deploy records before metric records on equal timestamps; each partition keeps its own
order), which is the order ``coalmine replay`` judges them in.

A recording is JSON Lines, one envelope per message (docs/cli.md)::

    {"topic": "metrics", "key": "checkout", "partition": 0, "offset": 17,
     "timestamp": 1795000000000, "value": {...}, "headers": [["name", "value"]]}

``topic`` is ``deployments`` or ``metrics`` for the two contract topics (so a recording
replays under any topic names) and the topic's own name for ``[[inputs]]`` topics.
``value`` is the message's JSON when it is a JSON object or array that re-encodes to the
very same bytes, else its text (a JSON string), else ``value_b64``.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from coalmine.config.durations import parse_duration
from coalmine.tools.replay import DEPLOYMENTS, METRICS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from coalmine.bus.base import Record, TopicPartition
    from coalmine.config.models import KafkaSettings, TopicsSettings
    from coalmine.config.settings import Settings
    from coalmine.tools.replay import Outcome

__all__ = [
    "Recording",
    "encode_envelope",
    "kafka_report_data",
    "parse_moment",
    "published_verdicts",
    "read_stream",
    "read_topics",
    "stream_topics",
    "write_jsonl",
]


def parse_moment(text: str, now: float | None = None) -> float:
    """Unix seconds of ``text``: a duration ago (``"2h"``, ``"90m"``) or an RFC 3339 time.

    Raises:
        ValueError: ``text`` is neither.
    """
    text = text.strip()
    now = time.time() if now is None else now
    if "T" in text or text.count("-") >= 2:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an RFC 3339 time") from None
        if moment.tzinfo is None:
            raise ValueError(f"{text!r} needs a UTC offset or 'Z'")
        return moment.timestamp()
    try:
        return now - parse_duration(text)
    except ValueError:
        msg = f"{text!r} is neither a duration ago ('2h', '30m') nor an RFC 3339 time"
        raise ValueError(msg) from None


@dataclass(slots=True)
class Recording:
    """Records read from Kafka, in stream order."""

    records: list[Record] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Topics that do not exist (nothing was read from them)."""
    per_topic: Counter[str] = field(default_factory=Counter)
    outside: int = 0
    """Records read but left out: their timestamp is outside the time range."""


def stream_topics(settings: Settings) -> list[str]:
    """The topics the daemon reads: deployments, metrics and every ``[[inputs]]`` topic."""
    topics = settings.topics
    names = [topics.deployments, topics.metrics]
    names += [source.topic for source in settings.inputs if source.topic not in names]
    return names


async def read_topics(
    kafka: KafkaSettings,
    topics: Sequence[str],
    *,
    since: float | None = None,
    until: float | None = None,
    keep: Callable[[Record], bool] | None = None,
) -> Recording:
    """Read ``topics`` up to the end offsets they have now, over a time range.

    ``since`` and ``until`` are Unix seconds (``None``: the beginning, the end); records
    are kept when their timestamp is within them and ``keep`` (if given) accepts them.
    The result is in stream order: partitions merged by record timestamp, ties broken by
    the order of ``topics`` (list the deployments topic first), each partition in its own
    order.

    Raises:
        TransportError: Kafka cannot be reached, or a partition stopped short of its end.
    """
    from coalmine.bus.kafka import partition_counts, read_partitions  # noqa: PLC0415 - CLI stays fast

    recording = Recording()
    counts = await partition_counts(kafka, topics)
    recording.missing = [t for t in topics if t not in counts]
    partitions = [(t, p) for t in topics if t in counts for p in range(counts[t])]
    if not partitions:
        return recording
    window = _Window(
        None if since is None else int(since * 1000),
        None if until is None else int(until * 1000),
        keep,
    )
    read: dict[TopicPartition, list[Record]] = {tp: [] for tp in partitions}
    async with contextlib.aclosing(
        read_partitions(kafka, partitions, since_ms=window.since_ms)
    ) as batches:
        async for tp, records in batches:
            _take(records, window, recording, read[tp])
    rank = {topic: index for index, topic in enumerate(topics)}
    recording.records = list(
        heapq.merge(
            *(read[tp] for tp in partitions),
            key=lambda r: (r.timestamp_ms or 0, rank[r.topic]),
        )
    )
    return recording


@dataclass(frozen=True, slots=True)
class _Window:
    since_ms: int | None
    until_ms: int | None
    keep: Callable[[Record], bool] | None

    def inside(self, stamp: int) -> bool:
        return not (
            (self.since_ms is not None and stamp < self.since_ms)
            or (self.until_ms is not None and stamp > self.until_ms)
        )


def _take(
    records: Iterable[Record], window: _Window, recording: Recording, out: list[Record]
) -> None:
    """Keep the records inside ``window``, counting those left out by time."""
    for record in records:
        if not window.inside(record.timestamp_ms or 0):
            recording.outside += 1
            continue
        if window.keep is None or window.keep(record):
            out.append(record)
            recording.per_topic[record.topic] += 1


# ------------------------------------------------------------------------ writing


def _text_or_b64(data: bytes, name: str, obj: dict[str, Any]) -> None:
    try:
        obj[name] = data.decode()
    except UnicodeDecodeError:
        obj[f"{name}_b64"] = base64.b64encode(data).decode()


def encode_envelope(record: Record, names: Mapping[str, str]) -> bytes:
    """One line of a recording for ``record`` (without the newline).

    ``names`` maps topic names to the names written (``deployments``, ``metrics``).
    """
    obj: dict[str, Any] = {"topic": names.get(record.topic, record.topic)}
    if record.key is not None:
        _text_or_b64(record.key, "key", obj)
    obj["partition"] = record.partition
    obj["offset"] = record.offset
    if record.timestamp_ms is not None:
        obj["timestamp"] = record.timestamp_ms
    value = record.value
    embedded: Any = None
    if value[:1] in (b"{", b"["):
        try:
            embedded = orjson.loads(value)
        except orjson.JSONDecodeError:
            embedded = None
        if embedded is not None and orjson.dumps(embedded) != value:
            embedded = None
    if embedded is not None:
        obj["value"] = orjson.Fragment(value)
    else:
        _text_or_b64(value, "value", obj)
    if record.headers:
        headers: list[list[Any]] = []
        for name, data in record.headers:
            try:
                headers.append([name, data.decode()])
            except UnicodeDecodeError:
                headers.append([name, {"b64": base64.b64encode(data).decode()}])
        obj["headers"] = headers
    return orjson.dumps(obj)


async def read_stream(
    settings: Settings, *, since: float | None, until: float | None = None
) -> Recording:
    """The daemon's input topics over the time range, in stream order."""
    return await read_topics(settings.kafka, stream_topics(settings), since=since, until=until)


def write_jsonl(out: BinaryIO, records: Iterable[Record], topics: TopicsSettings) -> int:
    """Write records as a recording (one envelope a line); return how many."""
    logical = {topics.deployments: DEPLOYMENTS, topics.metrics: METRICS}
    count = 0
    for record in records:
        out.write(encode_envelope(record, logical))
        out.write(b"\n")
        count += 1
    out.flush()
    return count


async def published_verdicts(settings: Settings, deployment_id: str) -> list[dict[str, Any]]:
    """A deployment's verdicts on the verdict topic, in publication order, each id once."""
    key = deployment_id.encode()
    recording = await read_topics(
        settings.kafka,
        [settings.topics.verdicts],
        keep=lambda record: record.key is None or record.key == key,
    )
    verdicts: dict[str, dict[str, Any]] = {}
    for record in sorted(recording.records, key=lambda r: (r.partition, r.offset)):
        try:
            verdict = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(verdict, dict) and verdict.get("deployment_id") == deployment_id:
            verdicts.setdefault(str(verdict.get("verdict_id")), verdict)
    return list(verdicts.values())


async def kafka_report_data(
    settings: Settings, deployment_id: str, since: float | None
) -> tuple[list[dict[str, Any]], dict[str, tuple[list[float], list[float]]], Outcome | None]:
    """A deployment's published verdicts, and its samples from the input topics.

    The input topics are read from ``since`` (all retained when ``None``) and judged
    again, which tells which metric events went to the deployment (its versions); its
    window, and the reference windows of a baseline from the past, are taken from the
    verdicts coalmine published.
    """
    from coalmine.tools.replay import Outcome, record_entries, report_data  # noqa: PLC0415

    verdicts = await published_verdicts(settings, deployment_id)
    known: Outcome | None = None
    if verdicts:
        first, last = verdicts[0], verdicts[-1]
        known = Outcome(deployment_id, service=str(first.get("service", "?")))
        known.profile = str(first.get("profile", ""))
        window = first.get("window")
        if isinstance(window, dict):
            known.started = _seconds_of(window.get("start"))
        if last.get("final"):
            known.decision = str(last.get("decision"))
            known.verdict_id = str(last.get("verdict_id"))
            known.decided_at = _seconds_of(last.get("time"))
    recording = await read_stream(settings, since=since)
    entries = record_entries(recording.records, settings.topics)
    _, samples, info = report_data(
        settings, entries, deployment_id, known=known, published=verdicts or None
    )
    return verdicts, samples, info


def _seconds_of(value: object) -> float | None:
    from coalmine._exceptions import ContractError  # noqa: PLC0415
    from coalmine.contract import parse_time  # noqa: PLC0415

    try:
        return parse_time(value)
    except ContractError:
        return None
