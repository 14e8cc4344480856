"""Judge a recorded stream offline, on event time, exactly as the daemon would.

A recording is JSON Lines (``coalmine record`` writes one; docs/cli.md describes the
format). Each line is one message of the bus:

- a native deploy event (an object with ``"event"``, or a structured CloudEvent with
  ``"specversion"``): a record on ``[topics] deployments``;
- a native metric event (any other object, or an array of them): a record on
  ``[topics] metrics``;
- an envelope ``{"topic": ..., "key": ..., "value": ..., "headers": ...}``: the message as
  it was on the bus, on that topic (``deployments``, ``metrics``, the configured names, or
  an ``[[inputs]]`` topic), so foreign formats and CloudEvent headers replay too.

The records go, in file order, through the daemon's own :class:`~coalmine.daemon.router.Router`
in chunks; a chunk never has a deploy record after a metric record, so the router's
deploy-first ordering within a batch changes nothing and the file order is the order of
judgement. Wall-clock expiry (a silent deployment closed after ``max_duration`` of wall
time) is not replayed: deployments still open at the end are reported as ``open``.

This module judges; :mod:`coalmine.tools.replay_table` shows the result.
"""

from __future__ import annotations

import base64
import binascii
import math
import time as _time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson

from coalmine._exceptions import ContractError
from coalmine.bus.base import Record
from coalmine.config.models import DAY
from coalmine.contract import decode_metric_events, parse_time
from coalmine.daemon.router import Router
from coalmine.daemon.telemetry import Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from coalmine.bus.base import Headers, Outgoing
    from coalmine.config.models import Profile, TopicsSettings
    from coalmine.config.settings import Settings
    from coalmine.contract import MetricEvent, Verdict
    from coalmine.formats import MetricDecoder

__all__ = [
    "DEPLOYMENTS",
    "METRICS",
    "Difference",
    "Entry",
    "LineError",
    "Outcome",
    "PastWindows",
    "Problems",
    "ReplayResult",
    "Replayer",
    "Run",
    "SampleCollector",
    "compare",
    "input_topics",
    "outcome_dict",
    "past_windows",
    "read_jsonl",
    "record_entries",
    "replay",
    "replay_file",
    "report_data",
    "run",
]

DEPLOYMENTS = "deployments"
"""The logical name of the deployments topic in a recording."""
METRICS = "metrics"
"""The logical name of the metrics topic in a recording."""

CHUNK_SIZE = 1000
"""Records handed to ``Router.handle`` at a time (the daemon's batches are up to
``max_poll_records``, 2000 by default)."""

_MAX_EXAMPLES = 10
FINAL_DECISIONS = ("promote", "rollback", "inconclusive")


@dataclass(frozen=True, slots=True)
class Entry:
    """One record of the stream, where it came from, and its time (0 when unknown)."""

    record: Record
    line: int
    time: float
    deploy: bool


class LineError(Exception):
    """A line of a recording that is not a message (counted, never fatal)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class Problems:
    """Invalid input seen so far: counts per reason and the first few examples."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str, message: str) -> None:
        """Count one invalid message."""
        self.counts[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {message}")


# ------------------------------------------------------------------------ reading input


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise LineError("bad_envelope", f"'{what}' must be a string")
    return value


def _b64(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(_text(value, what), validate=True)
    except binascii.Error:
        raise LineError("bad_envelope", f"'{what}' is not base64") from None


def _envelope_value(obj: Mapping[str, Any]) -> bytes:
    if "value_b64" in obj:
        return _b64(obj["value_b64"], "value_b64")
    value = obj.get("value")
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return orjson.dumps(value)


def _envelope_key(obj: Mapping[str, Any]) -> bytes | None:
    if "key_b64" in obj:
        return _b64(obj["key_b64"], "key_b64")
    key = obj.get("key")
    return None if key is None else _text(key, "key").encode()


def _header_value(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and "b64" in value:
        return _b64(value["b64"], "headers[].b64")
    raise LineError("bad_envelope", "a header value is a string, null or {'b64': ...}")


def _envelope_headers(obj: Mapping[str, Any]) -> Headers:
    raw = obj.get("headers")
    if raw is None:
        return ()
    if isinstance(raw, dict):
        pairs: Iterable[Any] = raw.items()
    elif isinstance(raw, list):
        pairs = raw
    else:
        raise LineError("bad_envelope", "'headers' is a list of [name, value] or an object")
    headers = []
    for pair in pairs:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise LineError("bad_envelope", "each header is a [name, value] pair")
        headers.append((_text(pair[0], "header name"), _header_value(pair[1])))
    return tuple(headers)


def _int(obj: Mapping[str, Any], key: str, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError("bad_envelope", f"'{key}' must be an integer")
    return value


def _time_of(obj: object) -> float:
    """The event time of a parsed native message, 0 when there is none (best effort)."""
    if isinstance(obj, list):
        obj = obj[0] if obj else None
    if not isinstance(obj, dict):
        return 0.0
    try:
        return parse_time(obj.get("time"))
    except ContractError:
        return 0.0


class _LineParser:
    """Turns lines of a recording into records on the configured topics."""

    def __init__(self, topics: TopicsSettings, input_topics: Iterable[str]) -> None:
        self.deployments = topics.deployments
        self.metrics = topics.metrics
        self.names = {
            DEPLOYMENTS: topics.deployments,
            METRICS: topics.metrics,
            topics.deployments: topics.deployments,
            topics.metrics: topics.metrics,
        }
        for name in input_topics:
            self.names.setdefault(name, name)

    def parse(self, raw: bytes, line: int) -> Entry | None:
        text = raw.strip()
        if not text or text.startswith(b"#"):
            return None
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise LineError("invalid_json", f"not valid JSON: {exc}") from None
        if isinstance(obj, dict):
            if "topic" in obj and ("value" in obj or "value_b64" in obj):
                return self._envelope(obj, line)
            service = obj.get("service")
            key = service.encode() if isinstance(service, str) else None
            if "event" in obj or "specversion" in obj:
                record = Record(self.deployments, text, key, partition=0, offset=line)
                return Entry(record, line, _time_of(obj), deploy=True)
        elif isinstance(obj, list) and obj and isinstance(obj[0], dict):
            service = obj[0].get("service")
            key = service.encode() if isinstance(service, str) else None
        else:
            key = None
        record = Record(self.metrics, text, key, partition=0, offset=line)
        return Entry(record, line, _time_of(obj), deploy=False)

    def _envelope(self, obj: Mapping[str, Any], line: int) -> Entry:
        name = _text(obj["topic"], "topic")
        topic = self.names.get(name)
        if topic is None:
            raise LineError("unknown_topic", f"topic {name!r} is not one the configuration reads")
        timestamp = obj.get("timestamp")
        if timestamp is not None and (
            isinstance(timestamp, bool) or not isinstance(timestamp, int | float)
        ):
            raise LineError("bad_envelope", "'timestamp' must be milliseconds since the epoch")
        value = _envelope_value(obj)
        record = Record(
            topic,
            value,
            _envelope_key(obj),
            _envelope_headers(obj),
            partition=_int(obj, "partition", 0),
            offset=_int(obj, "offset", line),
            timestamp_ms=None if timestamp is None else int(timestamp),
        )
        raw_value = obj.get("value")
        when = (
            timestamp / 1000.0
            if timestamp is not None
            else (_time_of(raw_value) if isinstance(raw_value, dict | list) else 0.0)
        )
        return Entry(record, line, when, deploy=topic == self.deployments)


def read_jsonl(
    stream: BinaryIO,
    topics: TopicsSettings,
    input_topics: Iterable[str] = (),
    problems: Problems | None = None,
) -> Iterator[Entry]:
    """The records of a JSONL recording, in file order.

    Lines that are not messages (not JSON, a malformed envelope, an unknown topic) are
    counted in ``problems`` and skipped; blank lines and lines starting with ``#`` are
    ignored.
    """
    parser = _LineParser(topics, input_topics)
    for number, raw in enumerate(stream, start=1):
        try:
            entry = parser.parse(raw, number)
        except LineError as exc:
            if problems is not None:
                problems.add(exc.reason, f"line {number}", str(exc))
            continue
        if entry is not None:
            yield entry


def record_entries(records: Iterable[Record], topics: TopicsSettings) -> Iterator[Entry]:
    """Entries for records read from the bus (``line`` 0, time from the record timestamp)."""
    for record in records:
        stamp = record.timestamp_ms
        yield Entry(
            record,
            0,
            0.0 if stamp is None else stamp / 1000.0,
            deploy=record.topic == topics.deployments,
        )


# ------------------------------------------------------------------------ judging


@dataclass(slots=True)
class Outcome:
    """What became of one deployment in a replay."""

    deployment_id: str
    service: str = "?"
    profile: str = ""
    started: float | None = None
    decision: str = "open"
    """``promote``, ``rollback``, ``inconclusive``; ``open`` (no final verdict by the end
    of the stream); ``completed`` / ``aborted`` (ended by the pipeline) or ``ended``."""
    verdict_id: str | None = None
    """The final verdict's id; for a deployment without one, its latest interim verdict."""
    decided_at: float | None = None
    summary: str = ""
    verdicts: int = 0
    baseline_version: str | None = None
    canary_version: str | None = None
    opened: float | None = None
    """Event time of its ``started`` event (``started`` moves to a blue-green switch; this
    does not)."""

    @property
    def final(self) -> bool:
        """True when coalmine published a final verdict."""
        return self.decision in FINAL_DECISIONS

    @property
    def time_to_decision(self) -> float | None:
        """Event time from ``started`` to the final verdict."""
        if self.decided_at is None or self.started is None:
            return None
        return self.decided_at - self.started


@dataclass(slots=True)
class ReplayResult:
    """The outcome of every deployment, and what was read."""

    outcomes: dict[str, Outcome]
    verdicts: int
    records: int
    invalid: Counter[str]
    examples: list[str]
    seconds: float = 0.0

    def decisions(self) -> Counter[str]:
        """How many deployments ended in each decision (``open`` included)."""
        return Counter(outcome.decision for outcome in self.outcomes.values())

    def finals(self) -> dict[str, str]:
        """Final decision per deployment id (deployments with a final verdict only)."""
        return {o.deployment_id: o.decision for o in self.outcomes.values() if o.final}


class Replayer:
    """One configuration's router over a stream, and the outcome of every deployment.

    Args:
        settings: the configuration (profiles, topics, limits, inputs) to judge with.
        on_verdict: called with every verdict, in publication order.
        topics: the topic names the records carry, when not ``settings.topics`` (to judge
            one stream with a second configuration that names its topics differently).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_verdict: Callable[[Verdict], None] | None = None,
        topics: TopicsSettings | None = None,
    ) -> None:
        self.settings = settings
        self.router = Router(
            settings.profiles,
            settings.topics,
            settings.limits,
            Telemetry(),
            inputs=settings.inputs,
        )
        self.on_verdict = on_verdict
        self.outcomes: dict[str, Outcome] = {}
        self._ended: dict[str, str] = {}
        """How each deployment the router forgot ended (its decision or why it ended)."""
        self.router.on_finished = self._ended.__setitem__
        self.problems = Problems()
        self.verdicts = 0
        self.records = 0
        self._rename: dict[str, str] = {}
        if topics is not None:
            own = settings.topics
            self._rename = {
                old: new
                for old, new in (
                    (topics.deployments, own.deployments),
                    (topics.metrics, own.metrics),
                )
                if old != new
            }

    def handle(self, chunk: Sequence[Entry], now: float) -> list[Verdict]:
        """Judge one chunk of entries; return its verdicts."""
        records = [entry.record for entry in chunk]
        if self._rename:
            records = [
                replace(r, topic=self._rename[r.topic]) if r.topic in self._rename else r
                for r in records
            ]
        self.records += len(records)
        # Deploy records lead a chunk: handled first (as the router would), then the
        # deployments they opened are noted before any of them can be decided.
        deploys = 0
        while deploys < len(chunk) and chunk[deploys].deploy:
            deploys += 1
        effects = self.router.handle(records[:deploys], now) if deploys else None
        if deploys:
            self._register_started()
        rest = self.router.handle(records[deploys:], now) if deploys < len(records) else None
        if effects is None:
            effects = rest
        elif rest is not None:
            effects.extend(rest)
        if effects is None:
            return []
        for letter in effects.dead_letters:
            self._dead_letter(letter, chunk)
        for verdict in effects.verdicts:
            self._on_verdict(verdict)
        return effects.verdicts

    def result(self, seconds: float = 0.0, problems: Problems | None = None) -> ReplayResult:
        """The outcomes so far (deployments still under analysis are ``open``)."""
        self._register_started()
        for outcome in self.outcomes.values():
            if outcome.final or outcome.decision != "open":
                continue
            ended = self._ended.get(outcome.deployment_id)
            if ended is not None and ended not in FINAL_DECISIONS:
                outcome.decision = ended
        invalid = Counter(self.problems.counts)
        examples = list(self.problems.examples)
        if problems is not None:
            invalid.update(problems.counts)
            examples = (problems.examples + examples)[:_MAX_EXAMPLES]
        return ReplayResult(
            outcomes=dict(self.outcomes),
            verdicts=self.verdicts,
            records=self.records,
            invalid=invalid,
            examples=examples,
            seconds=seconds,
        )

    def deployment_info(self, deployment_id: str) -> Outcome | None:
        """What is known about a deployment (service, versions, start, decision)."""
        self._register_started()
        return self.outcomes.get(deployment_id)

    def _register_started(self) -> None:
        for deployment in self.router.open_deployments():
            if deployment.deployment_id in self.outcomes:
                continue
            self.outcomes[deployment.deployment_id] = Outcome(
                deployment.deployment_id,
                service=deployment.service,
                profile=deployment.profile_name,
                started=deployment.started,
                baseline_version=deployment.baseline_version,
                canary_version=deployment.canary_version,
                opened=deployment.started,
            )

    def _on_verdict(self, verdict: Verdict) -> None:
        self.verdicts += 1
        outcome = self.outcomes.get(verdict.deployment_id)
        if outcome is None:
            outcome = self.outcomes[verdict.deployment_id] = Outcome(verdict.deployment_id)
        outcome.service = verdict.service
        outcome.profile = verdict.profile
        outcome.started = verdict.window.start
        outcome.verdict_id = verdict.verdict_id
        outcome.summary = verdict.summary
        outcome.verdicts += 1
        if verdict.final:
            outcome.decision = verdict.decision
            outcome.decided_at = verdict.time
        if self.on_verdict is not None:
            self.on_verdict(verdict)

    def _dead_letter(self, letter: Outgoing, chunk: Sequence[Entry]) -> None:
        error = source = ""
        for name, value in letter.headers:
            if name == "coalmine-error":
                error = value.decode(errors="replace")
            elif name == "coalmine-source":
                source = value.decode(errors="replace")
        where = source
        for entry in chunk:
            if entry.line and entry.record.source == source:
                where = f"line {entry.line}"
                break
        self.problems.add(error.split(":", 1)[0] or "invalid", where, error)


def _chunks(entries: Iterable[Entry], size: int) -> Iterator[tuple[list[Entry], float]]:
    """Chunks in stream order; a deploy record after a metric record starts a new one."""
    chunk: list[Entry] = []
    latest = 0.0
    metrics_seen = False
    for entry in entries:
        if len(chunk) >= size or (entry.deploy and metrics_seen):
            yield chunk, latest
            chunk, latest, metrics_seen = [], 0.0, False
        chunk.append(entry)
        latest = max(latest, entry.time)
        metrics_seen = metrics_seen or not entry.deploy
    if chunk:
        yield chunk, latest


def replay(
    entries: Iterable[Entry],
    replayers: Sequence[Replayer],
    *,
    chunk_size: int = CHUNK_SIZE,
    on_chunk: Callable[[Sequence[Entry]], None] | None = None,
) -> None:
    """Feed ``entries`` in order to every replayer, in chunks.

    ``now`` (the router's wall time) is the chunk's latest event time, or 0 when unknown.
    """
    for chunk, latest in _chunks(entries, chunk_size):
        for replayer in replayers:
            replayer.handle(chunk, latest)
        if on_chunk is not None:
            on_chunk(chunk)


def replay_file(
    settings: Settings,
    stream: BinaryIO,
    *,
    on_verdict: Callable[[Verdict], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> ReplayResult:
    """Replay a JSONL recording with one configuration."""
    began = _time.perf_counter()
    problems = Problems()
    replayer = Replayer(settings, on_verdict=on_verdict)
    entries = read_jsonl(stream, settings.topics, input_topics(settings), problems)
    replay(entries, [replayer], chunk_size=chunk_size)
    return replayer.result(_time.perf_counter() - began, problems)


def input_topics(settings: Settings) -> list[str]:
    """The ``[[inputs]]`` topics of a configuration."""
    return [source.topic for source in settings.inputs]


# ------------------------------------------------------------------------ comparing


@dataclass(frozen=True, slots=True)
class Difference:
    """A deployment two configurations judged differently.

    ``kind`` is ``decision`` (different decisions) or ``timing`` (the same final decision
    at a different judgement).
    """

    deployment_id: str
    service: str
    kind: str
    first: Outcome | None
    second: Outcome | None


def compare(first: ReplayResult, second: ReplayResult) -> list[Difference]:
    """Deployments the two replays decided differently, in order of first appearance."""
    ids = list(first.outcomes)
    ids += [dep_id for dep_id in second.outcomes if dep_id not in first.outcomes]
    differences = []
    for dep_id in ids:
        a, b = first.outcomes.get(dep_id), second.outcomes.get(dep_id)
        if a is None or b is None or a.decision != b.decision:
            kind = "decision"
        elif a.final and a.verdict_id != b.verdict_id:
            kind = "timing"
        else:
            continue
        service = a.service if a is not None else (b.service if b is not None else "?")
        differences.append(Difference(dep_id, service, kind, a, b))
    return differences


def outcome_dict(outcome: Outcome | None) -> dict[str, Any] | None:
    """An outcome as JSON (for ``replay --json --compare``)."""
    if outcome is None:
        return None
    return {
        "decision": outcome.decision,
        "verdict_id": outcome.verdict_id,
        "time_to_decision": outcome.time_to_decision,
        "summary": outcome.summary,
    }


# ------------------------------------------------------------------------ samples


@dataclass(frozen=True, slots=True)
class PastWindows:
    """Where a deployment judged against its service's own past took its cohorts.

    The baseline: the service's events in ``before`` (the window just before the change,
    ``start <= time < end``) and in each window of ``same_hours`` (the same hours days
    earlier, ``start <= time <= end`` and less than ``length`` after ``start``); the
    canary: the events from ``change`` on.
    """

    change: float
    before: tuple[float, float] | None = None
    same_hours: tuple[tuple[float, float], ...] = ()
    length: float = math.inf
    """How much of each day's window the daemon reads (the profile's ``max_duration``)."""

    def in_before(self, time: float) -> bool:
        """Is ``time`` in the window just before the change?"""
        return self.before is not None and self.before[0] <= time < self.before[1]

    def in_same_hours(self, time: float) -> bool:
        """Is ``time`` in the same hours of one of the days back?"""
        return any(
            start <= time <= end and time < start + self.length for start, end in self.same_hours
        )


def past_windows(verdict: Mapping[str, Any]) -> PastWindows | None:
    """The windows a published verdict's ``checks.reference`` names, as :class:`PastWindows`.

    None for a verdict that compared two cohorts side by side, or whose change (its
    ``window.start``) does not parse; a window whose times do not parse is left out.
    """
    checks = verdict.get("checks")
    reference = checks.get("reference") if isinstance(checks, dict) else None
    window = verdict.get("window")
    if not isinstance(reference, dict) or reference.get("baseline") != "past":
        return None
    change = _moment(window.get("start")) if isinstance(window, dict) else None
    if change is None:
        return None
    before = _span(reference.get("window_start"), reference.get("window_end"))
    return PastWindows(change, before, _same_hours(reference, change))


def _same_hours(reference: Mapping[str, Any], change: float) -> tuple[tuple[float, float], ...]:
    """Per day back ``d``: from the change to as far as the verdict reached, ``d`` days back.

    The reference names the window of its first day (``same_hours_start`` is ``change``
    that many days back); the other days' windows are that one moved by whole days. When
    ``days`` does not parse, the named window alone.
    """
    named = _span(reference.get("same_hours_start"), reference.get("same_hours_end"))
    if named is None:
        return ()
    start, end = named
    try:
        days = [int(part) for part in str(reference.get("days")).split(",")]
    except ValueError:
        return (named,)
    if any(d < 1 for d in days):
        return (named,)
    reached = end + (change - start)
    return tuple((change - d * DAY, reached - d * DAY) for d in days)


def _moment(value: object) -> float | None:
    try:
        return parse_time(value)
    except ContractError:
        return None


def _span(start: object, end: object) -> tuple[float, float] | None:
    """``(start, end)`` as event times, or None when either does not parse or end < start."""
    first, last = _moment(start), _moment(end)
    if first is None or last is None or last < first:
        return None
    return first, last


class SampleCollector:
    """Distribution samples of one deployment, per metric and cohort, from its metric events.

    An event belongs to the deployment when it names it (``deployment_id``), or names no
    deployment but its service. For a deployment that compared two cohorts side by side,
    an event counts when it has a cohort (``cohort``, or ``version`` matching the baseline
    or canary version) and is timed while the deployment was open (from ``started`` to its
    final verdict), as only those were judged. For a deployment judged against its
    service's own past (its last verdict's ``checks.reference`` says ``"past"``), the
    baseline is the events of the windows that verdict names, the canary the events from
    the change (its ``window.start``) to the final verdict: see :func:`_past_cohort`.

    Args:
        deployment_id: the deployment.
        settings: the configuration (topic names, ``[[inputs]]`` decoders).
        info: what is known of the deployment (may be filled in later, before ``samples``).
    """

    def __init__(self, deployment_id: str, settings: Settings, info: Outcome | None = None) -> None:
        from coalmine.formats import metric_decoder  # noqa: PLC0415 - only reports need it

        self.deployment_id = deployment_id
        self.info = info
        self.verdicts: Sequence[Mapping[str, Any]] = ()
        """The deployment's verdicts as published, in order (may be set later, before
        ``samples``): the last one says where a baseline from the past came from."""
        self.metrics_topic = settings.topics.metrics
        self._native = {s.topic for s in settings.inputs if s.format == "native"}
        self._decoders: dict[str, MetricDecoder] = {
            s.topic: metric_decoder(s) for s in settings.inputs if s.format != "native"
        }
        self._profiles = settings.profiles
        self._events: list[MetricEvent] = []

    def add(self, records: Iterable[Record]) -> None:
        """Take the metric records of the stream, in order (other records are ignored)."""
        for record in records:
            try:
                if record.topic == self.metrics_topic or record.topic in self._native:
                    events = decode_metric_events(record.value)
                elif (decoder := self._decoders.get(record.topic)) is not None:
                    events = decoder.decode(record.value)
                else:
                    continue
            except ContractError:
                continue
            self._events.extend(
                e
                for e in events
                if not e.is_ratio
                and (e.deployment_id == self.deployment_id or e.deployment_id is None)
            )

    def samples(self) -> dict[str, tuple[list[float], list[float]]]:
        """Metric name -> (baseline values, canary values)."""
        info = self.info
        profile = self._profiles.get(info.profile) if info is not None else None
        wanted = (
            None
            if profile is None
            else {m.name for m in profile.metrics if m.kind == "distribution"}
        )
        past = self._past(profile)
        out: dict[str, tuple[list[float], list[float]]] = {}
        for event in self._events:
            if wanted is not None and event.metric not in wanted:
                continue
            cohort = _cohort(event, info) if past is None else _past_cohort(event, info, past)
            if cohort is None:
                continue
            pair = out.setdefault(event.metric, ([], []))
            pair[1 if cohort == "canary" else 0].extend(event.values.tolist())
        return out

    def _past(self, profile: Profile | None) -> PastWindows | None:
        """The windows of a baseline from the past the last verdict names; None without."""
        past = past_windows(self.verdicts[-1]) if self.verdicts else None
        if past is None or profile is None:
            return past
        past = replace(past, length=profile.max_duration)
        if profile.reference is None and past.before is not None:
            # A blue-green switch whose profile names no reference compares with blue's
            # events of its preview: the window starts no earlier than the deployment.
            start, end = past.before
            past = replace(past, before=(max(start, self._opened(past.change)), end))
        return past

    def _opened(self, change: float) -> float:
        """Event time the deployment opened at (at the latest ``change``).

        The earlier of its ``started`` (when the replay saw it) and its first verdict's
        window start.
        """
        times = [change]
        if self.info is not None and self.info.opened is not None:
            times.append(self.info.opened)
        window = self.verdicts[0].get("window") if self.verdicts else None
        first = _moment(window.get("start")) if isinstance(window, dict) else None
        if first is not None:
            times.append(first)
        return min(times)


def _cohort(event: MetricEvent, info: Outcome | None) -> str | None:
    """The cohort of an event of (or possibly of) the deployment ``info`` describes."""
    if event.deployment_id is None and (info is None or event.service != info.service):
        return None
    # Only what was judged: samples while the deployment was open.
    if info is not None and info.started is not None and event.time < info.started:
        return None
    if info is not None and info.decided_at is not None and event.time > info.decided_at:
        return None
    if event.cohort is not None:
        return event.cohort
    if info is not None and event.version == info.canary_version:
        return "canary"
    if info is not None and event.version == info.baseline_version:
        return "baseline"
    return None


def _past_cohort(event: MetricEvent, info: Outcome | None, past: PastWindows) -> str | None:
    """The cohort of an event of (or possibly of) a deployment judged against its past.

    From the change to the final verdict: the event's own ``cohort``, else the canary
    when it carries no version or the canary's. Before the change: the baseline when in
    a reference window, unless it belongs to the change itself (the canary cohort or
    version); in the window just before the change, an event carrying a version counts
    only with the baseline's.
    """
    if event.deployment_id is None and (info is None or event.service != info.service):
        return None
    baseline_version = None if info is None else info.baseline_version
    canary_version = None if info is None else info.canary_version
    if event.time >= past.change:
        if info is not None and info.decided_at is not None and event.time > info.decided_at:
            return None
        if event.cohort is not None:
            return event.cohort
        return "canary" if event.version in (None, canary_version) else None
    if event.cohort == "canary" or (event.version is not None and event.version == canary_version):
        return None
    if past.in_before(event.time) and (
        event.cohort == "baseline" or event.version in (None, baseline_version)
    ):
        return "baseline"
    return "baseline" if past.in_same_hours(event.time) else None


# ------------------------------------------------------------------------ running


@dataclass(slots=True)
class Run:
    """A replay with one configuration, and optionally a second one to compare with."""

    first: ReplayResult
    second: ReplayResult | None = None

    @property
    def differences(self) -> list[Difference]:
        """Deployments the two configurations decided differently (none without a second)."""
        return [] if self.second is None else compare(self.first, self.second)


def run(
    entries: Iterable[Entry],
    settings: Settings,
    *,
    other: Settings | None = None,
    problems: Problems | None = None,
    on_verdict: Callable[[Verdict], None] | None = None,
    on_chunk: Callable[[Sequence[Entry]], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Run:
    """Judge ``entries`` with ``settings`` (and ``other``, when given) in one pass."""
    began = _time.perf_counter()
    first = Replayer(settings, on_verdict=on_verdict)
    replayers = [first]
    if other is not None:
        replayers.append(Replayer(other, topics=settings.topics))
    replay(entries, replayers, chunk_size=chunk_size, on_chunk=on_chunk)
    seconds = _time.perf_counter() - began
    results = [r.result(seconds, problems) for r in replayers]
    return Run(results[0], results[1] if len(results) > 1 else None)


def report_data(
    settings: Settings,
    entries: Iterable[Entry],
    deployment_id: str,
    *,
    known: Outcome | None = None,
    published: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, tuple[list[float], list[float]]], Outcome | None]:
    """One deployment's verdicts, distribution samples and what is known of it.

    The verdicts are dicts as published, in order; the samples map each distribution
    metric to its (baseline values, canary values). ``known`` (e.g. from the verdicts
    the daemon published) takes precedence over the replay for the deployment's start
    and decision time; ``published`` (the verdicts the daemon published), when given,
    over the replay's verdicts for where a baseline from the past came from.
    """
    verdicts: list[dict[str, Any]] = []

    def keep(verdict: Verdict) -> None:
        if verdict.deployment_id == deployment_id:
            verdicts.append(verdict.to_dict())

    replayer = Replayer(settings, on_verdict=keep)
    collector = SampleCollector(deployment_id, settings)
    replay(entries, [replayer], on_chunk=lambda chunk: collector.add(e.record for e in chunk))
    info = replayer.deployment_info(deployment_id)
    if known is not None:
        if info is None:
            info = known
        else:
            info.started = known.started if known.started is not None else info.started
            info.decided_at = known.decided_at if known.decided_at is not None else info.decided_at
    collector.info = info
    collector.verdicts = verdicts if published is None else published
    return verdicts, collector.samples(), info
