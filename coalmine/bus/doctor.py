"""``coalmine check --broker``: what production needs from the Kafka cluster, checked.

Two halves. :func:`inspect` asks the brokers (admin client only: metadata, topic configs,
the consumer group's coordinator) and returns a :class:`ClusterState`; it never creates
or changes anything (topics named in a metadata request are asked about with
``allow_auto_topic_creation`` off). :func:`evaluate` is pure: it compares that state with
what the configuration needs (a :class:`Plan`, from :func:`plan_for`) and returns one
:class:`Finding` per check that passed, per problem (each with its fix, a command to run
where there is one) and per note (what was not checked, and why).

The checks, in order:

1. ``brokers``: the bootstrap servers answer (a connection, TLS or SASL failure is one
   problem, and nothing else is checked);
2. ``topics``: every topic coalmine reads or writes exists;
3. ``partitions``: the deployments, metrics and ``[[inputs]]`` topics (all keyed by
   service) have the same partition count;
4. ``retention``: the topics read back after a restart (those three, and the verdicts
   topic: the daemon's ledger) keep records at least ``2 x`` the longest profile
   ``max_duration`` ``+ 1h`` (:func:`required_retention`), and are not compacted;
5. ``replication``: with 3 or more brokers, replication factor 3 or more and
   ``min.insync.replicas`` 2 or more for the topics read and the verdicts topic (fewer
   brokers: a note, so a laptop broker passes);
6. ``permissions``: every topic can be described, and the consumer group too.

Kafka shows a client only whether it may *describe* a topic (ACLs for Read and Write
are not visible without reading or writing); a problem names every ACL the daemon needs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import GroupAuthorizationFailedError, KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from coalmine._exceptions import TransportError
from coalmine.bus.kafka.clients import bounded
from coalmine.bus.kafka.topics import connected_admin, existing_topics

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from coalmine.config.models import KafkaSettings
    from coalmine.config.settings import Settings

__all__ = [
    "ClusterState",
    "Finding",
    "Plan",
    "TopicState",
    "TopicUse",
    "diagnose",
    "evaluate",
    "inspect",
    "plan_for",
    "required_retention",
    "summary",
    "unreachable",
]

Status = Literal["ok", "problem", "note"]

RECOVERY_MARGIN = 3600.0
"""Seconds of retention beyond ``2 x max_duration``: time to notice and fix an outage."""
DEFAULT_PARTITIONS = 6
"""Partitions suggested for a missing topic when none of its siblings exists."""
PRODUCTION_BROKERS = 3
"""From this many brokers on, the cluster is taken for production: replication counts."""
MIN_REPLICATION = 3
MIN_INSYNC = 2
_TOPIC_AUTHORIZATION_FAILED = 29
_CONFIG_KEYS = ("retention.ms", "retention.bytes", "cleanup.policy", "min.insync.replicas")
_MURMUR2 = (
    "deploy events and metrics must be keyed by service with the murmur2 partitioner (the"
    " Java client's and aiokafka's default; librdkafka-based clients: partitioner=murmur2_random)"
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the check's output."""

    status: Status
    check: str
    """``brokers``, ``topics``, ``partitions``, ``retention``, ``replication``, ``permissions``."""
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        line = f"{self.status}: {self.check}: {self.message}"
        return f"{line} fix: {self.fix}" if self.fix else line

    def as_dict(self) -> dict[str, str | None]:
        """The finding as JSON-ready fields."""
        return {
            "status": self.status,
            "check": self.check,
            "message": self.message,
            "fix": self.fix,
        }


# -- what the configuration needs --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicUse:
    """One topic coalmine uses on Kafka, and how."""

    name: str
    roles: tuple[str, ...]
    """What it is: ``deployments``, ``metrics``, ``[[inputs]]``, ``verdicts``, ``dead letters``."""
    read: bool = False
    write: bool = False
    keyed: bool = False
    """Keyed by service and co-partitioned with the deployments topic."""
    retained: bool = False
    """Read back after a restart or rebalance: its retention matters."""
    replicated: bool = False
    """Needs replication factor 3 and ``min.insync.replicas`` 2 on a production cluster."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What the configuration needs from Kafka (no secrets in it)."""

    bootstrap: str
    topics: tuple[TopicUse, ...]
    longest_max_duration: float
    """Seconds: the longest ``max_duration`` of the profiles."""
    group_id: str | None = None
    """The consumer group, when coalmine consumes from Kafka."""
    principal: str = "User:ANONYMOUS"
    """Whom ACLs must name, as far as the settings tell."""
    secured: bool = False
    """Not PLAINTEXT: the Kafka tools need ``--command-config`` too."""
    notes: tuple[str, ...] = ()

    @property
    def retention_ms(self) -> int:
        """The least ``retention.ms`` a topic read back must have."""
        return math.ceil(required_retention(self.longest_max_duration) * 1000)


def required_retention(longest_max_duration: float) -> float:
    """Seconds of retention needed: ``2 x max_duration + 1h``.

    After a restart the daemon rebuilds every open deployment from its ``started`` record
    on: a deployment may be ``max_duration`` old, and the daemon may have been down as
    long again plus an hour before it reads the log.
    """
    return 2 * longest_max_duration + RECOVERY_MARGIN


def plan_for(settings: Settings) -> Plan | None:
    """What ``settings`` needs from Kafka; ``None`` when ``[bus]`` does not use Kafka."""
    reads = "kafka" in settings.bus.consume
    writes = "kafka" in settings.bus.publish
    if not reads and not writes:
        return None
    uses: dict[str, TopicUse] = {}

    def add(name: str, role: str, **how: bool) -> None:
        known = uses.get(name)
        if known is None:
            uses[name] = TopicUse(name, (role,), **how)
            return
        uses[name] = TopicUse(
            name,
            (*known.roles, role),
            read=known.read or how.get("read", False),
            write=known.write or how.get("write", False),
            keyed=known.keyed or how.get("keyed", False),
            retained=known.retained or how.get("retained", False),
            replicated=known.replicated or how.get("replicated", False),
        )

    topics = settings.topics
    if reads:
        source = {"read": True, "keyed": True, "retained": True, "replicated": True}
        add(topics.deployments, "deployments", **source)
        add(topics.metrics, "metrics", **source)
        for entry in settings.inputs:
            add(entry.topic, "[[inputs]]", **source)
    if writes:
        # The daemon reads the verdicts back (its ledger, and the HTTP API's directory).
        add(topics.verdicts, "verdicts", write=True, read=reads, retained=reads, replicated=True)
        add(topics.dead_letter, "dead letters", write=True)
    kafka = settings.kafka
    notes: tuple[str, ...] = ()
    if "mqtt" in settings.bus.consume or "mqtt" in settings.bus.publish:
        notes = (_MQTT_NOT_CHECKED,)
    return Plan(
        bootstrap=kafka.bootstrap_servers,
        topics=tuple(uses.values()),
        longest_max_duration=max(p.max_duration for p in settings.profiles.values()),
        group_id=kafka.group_id if reads else None,
        principal=_principal(kafka),
        secured=kafka.security_protocol != "PLAINTEXT",
        notes=notes,
    )


_MQTT_NOT_CHECKED = (
    "the MQTT broker is not checked (connecting with the daemon's client id would take over"
    " its session); this check applies to Kafka"
)


def _principal(kafka: KafkaSettings) -> str:
    if kafka.security_protocol.startswith("SASL") and kafka.sasl_username:
        return f"User:{kafka.sasl_username}"
    if kafka.security_protocol == "SSL" and kafka.ssl_certfile is not None:
        return "'User:<the subject of ssl_certfile>'"
    return "User:ANONYMOUS"


# -- what the brokers say ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopicState:
    """What the brokers said about one topic that exists."""

    partitions: int
    replication: int = 0
    """The fewest replicas of any of its partitions; 0: unknown."""
    configs: Mapping[str, str] | None = None
    """``retention.ms``, ``retention.bytes``, ``cleanup.policy``, ``min.insync.replicas``."""
    configs_error: str | None = None
    """Why its configs could not be read (``configs`` is then ``None``)."""


@dataclass(frozen=True, slots=True)
class ClusterState:
    """What the brokers said about the topics and the group coalmine uses."""

    brokers: int
    topics: Mapping[str, TopicState]
    """The topics coalmine uses that exist and may be described; missing ones are absent."""
    unauthorized: frozenset[str] = field(default_factory=frozenset)
    """Topics the client may not describe (``TOPIC_AUTHORIZATION_FAILED``)."""
    group_unauthorized: bool = False
    """The client may not describe the consumer group (``GROUP_AUTHORIZATION_FAILED``)."""


class _UnreachableError(TransportError):
    """The brokers did not answer the admin client's connection."""


async def inspect(settings: KafkaSettings, plan: Plan) -> ClusterState:
    """Ask the brokers about everything ``plan`` uses; create or change nothing.

    Raises:
        TransportError: the brokers stopped answering after the connection
            (an unreachable cluster raises the private subclass ``diagnose`` handles).
    """
    connected = False
    try:
        async with connected_admin(settings) as admin:
            connected = True
            async with bounded(settings.request_timeout, "describe the topics"):
                return await _gather(admin, plan)
    except TransportError as exc:
        if connected:
            raise
        raise _UnreachableError(str(exc)) from exc


async def _gather(admin: Any, plan: Plan) -> ClusterState:
    names = [use.name for use in plan.topics]
    existing = await existing_topics(admin)
    brokers = len((await admin.describe_cluster())["brokers"])
    # By name, to tell a topic we may not describe (listed to nobody) from a missing one;
    # allow_auto_topic_creation off so that a missing topic is not created by asking.
    request = MetadataRequest(names, allow_auto_topic_creation=False)
    described = (await admin._send_request(request)).to_object()["topics"]  # noqa: SLF001 - describe_topics() would auto-create
    unauthorized = frozenset(
        str(t["topic"]) for t in described if t["error_code"] == _TOPIC_AUTHORIZATION_FAILED
    )
    replication = {
        str(t["topic"]): min((len(p["replicas"]) for p in t["partitions"]), default=0)
        for t in described
        if t["error_code"] == 0
    }
    present = [name for name in dict.fromkeys(names) if name in existing]
    configs, errors = await _configs(admin, present)
    topics = {
        name: TopicState(
            partitions=existing[name],
            replication=replication.get(name, 0),
            configs=configs.get(name),
            configs_error=errors.get(name),
        )
        for name in present
    }
    group_unauthorized = False
    if plan.group_id is not None:
        try:
            await admin.find_coordinator(plan.group_id)
        except GroupAuthorizationFailedError:
            group_unauthorized = True
        except KafkaError:
            pass  # a coordinator not ready yet says nothing about permissions
    return ClusterState(brokers, topics, unauthorized, group_unauthorized)


async def _configs(
    admin: Any, names: Sequence[str]
) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The :data:`_CONFIG_KEYS` of each topic, and why those that could not be read failed."""
    if not names:
        return {}, {}
    wanted = dict.fromkeys(_CONFIG_KEYS)
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, wanted) for name in names]
    configs: dict[str, dict[str, str]] = {}
    errors: dict[str, str] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.to_object()["resources"]:
            name = str(resource["resource_name"])
            if resource["error_code"]:
                code = resource["error_code"]
                errors[name] = resource.get("error_message") or f"error code {code}"
                continue
            configs[name] = {
                str(entry["config_names"]): str(entry["config_value"])
                for entry in resource["config_entries"]
                if entry["config_value"] is not None
            }
    return configs, errors


@contextlib.contextmanager
def _quiet_client() -> Iterator[None]:
    """The findings say what failed: no aiokafka log lines on standard error meanwhile."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def diagnose(settings: Settings) -> list[Finding]:
    """Every finding of the broker check for ``settings``.

    Raises:
        TransportError: the brokers answered, then stopped answering.
    """
    plan = plan_for(settings)
    if plan is None:
        return [Finding("note", "brokers", f"[bus] uses MQTT only: {_MQTT_NOT_CHECKED}")]
    with _quiet_client():
        try:
            state = await inspect(settings.kafka, plan)
        except _UnreachableError as exc:
            return [unreachable(plan, str(exc))]
    return evaluate(state, plan)


# -- what it means -------------------------------------------------------------------------


def unreachable(plan: Plan, error: str) -> Finding:
    """The one problem when the brokers do not answer; ``error`` is the client's."""
    return Finding(
        "problem",
        "brokers",
        error if error.startswith("cannot reach") else f"cannot reach {plan.bootstrap}: {error}",
        "check [kafka] bootstrap_servers (host:port of listeners the brokers advertise to this"
        " host), that those listeners accept this client, and the security settings"
        " (security_protocol, sasl_*, ssl_*) against the listener's protocol",
    )


def evaluate(state: ClusterState, plan: Plan) -> list[Finding]:
    """The findings for what the brokers said (``state``) against what is needed (``plan``)."""
    count = f"{state.brokers} broker{'' if state.brokers == 1 else 's'}"
    findings = [Finding("ok", "brokers", f"Kafka at {plan.bootstrap} answers ({count})")]
    findings += [Finding("note", "brokers", note) for note in plan.notes]
    for check in (_topics, _partitions, _retention, _replication, _permissions):
        findings += check(state, plan)
    return findings


def summary(findings: Sequence[Finding]) -> str:
    """The last line: how many problems, checks passed and notes."""
    problems = sum(f.status == "problem" for f in findings)
    passed = sum(f.status == "ok" for f in findings)
    notes = sum(f.status == "note" for f in findings)
    tail = f"{_plural(passed, 'check')} ok, {_plural(notes, 'note')}"
    if problems:
        return f"summary: {_plural(problems, 'problem')}, {tail}; fix them and check again"
    return f"summary: no problems, {tail}"


def _span(seconds: float) -> str:
    """``2h30m``, ``7d``, ``90s``: a duration as it is written in the configuration."""
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or f"{seconds:g}s"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _tool(plan: Plan, tool: str, arguments: str) -> str:
    """A Kafka command-line tool's invocation against the configured cluster."""
    config = " --command-config client.properties" if plan.secured else ""
    return f"{tool} --bootstrap-server {plan.bootstrap}{config} {arguments}"


def _sibling_partitions(state: ClusterState, plan: Plan) -> int:
    """Partitions for a missing topic: as its keyed siblings have (the most), else any."""
    keyed = [
        state.topics[u.name].partitions for u in plan.topics if u.keyed and u.name in state.topics
    ]
    counts = keyed or [t.partitions for t in state.topics.values()]
    return max(counts, default=DEFAULT_PARTITIONS)


def _topics(state: ClusterState, plan: Plan) -> list[Finding]:
    missing = [
        u for u in plan.topics if u.name not in state.topics and u.name not in state.unauthorized
    ]
    if not missing:
        present = [u.name for u in plan.topics if u.name in state.topics]
        # Topics that may not be described are the permissions check's problems.
        return [Finding("ok", "topics", f"{_names(present)} exist")] if present else []
    partitions = _sibling_partitions(state, plan)
    replication = min(state.brokers, MIN_REPLICATION) or 1
    findings = []
    for use in missing:
        extra = ""
        if use.replicated and state.brokers >= PRODUCTION_BROKERS:
            extra = f" --config min.insync.replicas={MIN_INSYNC}"
        command = _tool(
            plan,
            "kafka-topics.sh",
            f"--create --topic {use.name} --partitions {partitions}"
            f" --replication-factor {replication}{extra}",
        )
        findings.append(
            Finding(
                "problem",
                "topics",
                f"{use.name} ({', '.join(use.roles)}) does not exist; coalmine creates no topics",
                command,
            )
        )
    return findings


def _partitions(state: ClusterState, plan: Plan) -> list[Finding]:
    keyed = [u for u in plan.topics if u.keyed and u.name in state.topics]
    counts = {u.name: state.topics[u.name].partitions for u in keyed}
    if not counts:
        return []
    target = max(counts.values())
    if len(set(counts.values())) == 1:
        what = "the deployments, metrics and [[inputs]] topics" if len(counts) > 1 else "it"
        text = f"{_names(list(counts))}: {target} partitions each ({what}: keyed by service)"
        return [Finding("ok", "partitions", text)]
    listed = ", ".join(f"{name} has {count}" for name, count in counts.items())
    contract = {counts[u.name] for u in keyed if {"deployments", "metrics"} & set(u.roles)}
    if len(contract) > 1:
        consequence = "the daemon refuses to start otherwise"
    else:
        consequence = (
            "otherwise, with several daemons in one group, a service's metrics from the"
            " others reach a daemon that does not have its deployments"
        )
    commands = "; ".join(
        _tool(plan, "kafka-topics.sh", f"--alter --topic {name} --partitions {target}")
        for name, count in counts.items()
        if count < target
    )
    return [
        Finding(
            "problem",
            "partitions",
            f"partition counts differ: {listed}; keyed by service, they need the same count"
            f" so that a service's deploy events and metrics share a partition number"
            f" ({consequence})",
            f"{commands} (adding partitions moves some services to other partitions: do it"
            f" while no deployment is open); {_MURMUR2}",
        )
    ]


def _retention(state: ClusterState, plan: Plan) -> list[Finding]:
    needed_ms = plan.retention_ms
    needed = _span(needed_ms / 1000)
    why = (
        f"2 x the longest max_duration {_span(plan.longest_max_duration)}"
        f" + {_span(RECOVERY_MARGIN)}"
    )
    findings: list[Finding] = []
    checked: list[str] = []
    for use in plan.topics:
        topic = state.topics.get(use.name)
        if not use.retained or topic is None:
            continue
        if topic.configs is None:
            findings.append(_configs_unread(use.name, topic.configs_error, "retention"))
            continue
        findings += _retention_of(use.name, topic.configs, needed_ms, f"{needed} ({why})", plan)
        checked.append(use.name)
    if checked and not any(f.status == "problem" for f in findings):
        text = f"{_names(checked)} keep records {needed} or longer ({why})"
        findings.insert(0, Finding("ok", "retention", text))
    return findings


def _retention_of(
    name: str, configs: Mapping[str, str], needed_ms: int, needed: str, plan: Plan
) -> list[Finding]:
    findings = []
    policy = configs.get("cleanup.policy", "delete")
    if "delete" not in policy.split(","):
        findings.append(
            Finding(
                "problem",
                "retention",
                f"{name} has cleanup.policy={policy}: compaction keeps only the latest record"
                " of each key, and the daemon rebuilds open deployments from every record",
                _tool(
                    plan,
                    "kafka-configs.sh",
                    f"--alter --entity-type topics --entity-name {name}"
                    " --add-config cleanup.policy=delete",
                ),
            )
        )
    text = configs.get("retention.ms")
    retention = int(text) if text is not None and text.lstrip("-").isdigit() else None
    if retention is None:
        findings.append(Finding("note", "retention", f"{name}: the broker reports no retention.ms"))
    elif 0 <= retention < needed_ms:
        findings.append(
            Finding(
                "problem",
                "retention",
                f"{name} keeps records {_span(retention / 1000)}"
                f" (retention.ms={retention}); it needs {needed}, so that a restarted daemon"
                " finds every open deployment in the log",
                _tool(
                    plan,
                    "kafka-configs.sh",
                    f"--alter --entity-type topics --entity-name {name}"
                    f" --add-config retention.ms={needed_ms}",
                ),
            )
        )
    size = configs.get("retention.bytes", "-1")
    if size not in ("-1", ""):
        findings.append(
            Finding(
                "note",
                "retention",
                f"{name} also deletes by size (retention.bytes={size} per partition): at a"
                " high rate, records may go sooner than retention.ms says",
            )
        )
    return findings


def _configs_unread(name: str, error: str | None, what: str) -> Finding:
    return Finding(
        "note",
        what,
        f"{name}: its configs could not be read ({error or 'no answer'}); {what} not checked"
        " (reading them needs the DescribeConfigs ACL on the topic, which the daemon does not)",
    )


def _replication(state: ClusterState, plan: Plan) -> list[Finding]:
    replicated = [u for u in plan.topics if u.replicated]
    if not replicated:
        return []
    if state.brokers < PRODUCTION_BROKERS:
        return [
            Finding(
                "note",
                "replication",
                f"{_plural(state.brokers, 'broker')}: not checked; on a production cluster"
                f" (3 or more brokers) {_names([u.name for u in replicated])} need replication"
                f" factor {MIN_REPLICATION} or more and min.insync.replicas {MIN_INSYNC} or more",
            )
        ]
    findings: list[Finding] = []
    checked = []
    for use in replicated:
        topic = state.topics.get(use.name)
        if topic is None:
            continue
        checked.append(use.name)
        if 0 < topic.replication < MIN_REPLICATION:
            findings.append(
                Finding(
                    "problem",
                    "replication",
                    f"{use.name} has replication factor {topic.replication}: one broker lost"
                    f" can lose its records or stop it; it needs {MIN_REPLICATION} or more",
                    "reassign its partitions to 3 replicas each with kafka-reassign-partitions.sh"
                    " (--generate, then --execute with a plan listing 3 brokers per partition),"
                    " or recreate it with --replication-factor 3",
                )
            )
        if topic.configs is None:
            findings.append(_configs_unread(use.name, topic.configs_error, "replication"))
            continue
        text = topic.configs.get("min.insync.replicas", "")
        if text.isdigit() and int(text) < MIN_INSYNC:
            findings.append(
                Finding(
                    "problem",
                    "replication",
                    f"{use.name} has min.insync.replicas={text}: an acknowledged write may sit on"
                    f" one broker only; it needs {MIN_INSYNC} or more",
                    _tool(
                        plan,
                        "kafka-configs.sh",
                        f"--alter --entity-type topics --entity-name {use.name}"
                        f" --add-config min.insync.replicas={MIN_INSYNC}",
                    ),
                )
            )
    if checked and not any(f.status == "problem" for f in findings):
        text = (
            f"{_names(checked)}: replication factor {MIN_REPLICATION}+ and min.insync.replicas"
            f" {MIN_INSYNC}+ ({_plural(state.brokers, 'broker')})"
        )
        findings.insert(0, Finding("ok", "replication", text))
    return findings


def _operations(use: TopicUse) -> str:
    wanted = ["Describe", *(["Read"] if use.read else []), *(["Write"] if use.write else [])]
    return " ".join(f"--operation {op}" for op in wanted)


def _permissions(state: ClusterState, plan: Plan) -> list[Finding]:
    findings = []
    for use in plan.topics:
        if use.name not in state.unauthorized:
            continue
        does = " and ".join(
            verb for verb, yes in (("reads", use.read), ("writes", use.write)) if yes
        )
        findings.append(
            Finding(
                "problem",
                "permissions",
                f"not authorized to describe {use.name} (TOPIC_AUTHORIZATION_FAILED); the"
                f" daemon {does} it ({', '.join(use.roles)})",
                _tool(
                    plan,
                    "kafka-acls.sh",
                    f"--add --allow-principal {plan.principal} {_operations(use)}"
                    f" --topic {use.name}",
                ),
            )
        )
    if state.group_unauthorized and plan.group_id is not None:
        findings.append(
            Finding(
                "problem",
                "permissions",
                f"not authorized to use consumer group {plan.group_id}"
                " (GROUP_AUTHORIZATION_FAILED); the daemon joins it",
                _tool(
                    plan,
                    "kafka-acls.sh",
                    f"--add --allow-principal {plan.principal} --operation Read"
                    f" --group {plan.group_id}",
                ),
            )
        )
    if findings:
        return findings
    group = f" and consumer group {plan.group_id}" if plan.group_id is not None else ""
    text = (
        f"{plan.principal} may describe every topic{group} (Read and Write ACLs are not"
        " visible to this check: the daemon needs Read on the topics it reads and its group,"
        " Write on the verdicts and dead-letter topics)"
    )
    return [Finding("ok", "permissions", text)]
