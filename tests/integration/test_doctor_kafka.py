"""``coalmine check --broker`` against Apache Kafka (support/kafka_broker.py): problems, then fixed.

Skipped when Java 17+ is missing, or Maven is while the jars are not cached.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import TYPE_CHECKING, ClassVar

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.admin import CreateAclsRequest
from click.testing import CliRunner

from coalmine.cli import main
from support.kafka_broker import ApacheKafka, unavailable_reason

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support.kafka_broker import _Node

_UNAVAILABLE = unavailable_reason()

pytestmark = [
    pytest.mark.skipif(
        _UNAVAILABLE is not None, reason=f"Apache Kafka cannot run here: {_UNAVAILABLE}"
    ),
    pytest.mark.timeout(180),
]

CONFIG = """\
[kafka]
bootstrap_servers = "{bootstrap}"
request_timeout = "20s"

[topics]
deployments = "{deployments}"
metrics = "{metrics}"
verdicts = "{verdicts}"
dead_letter = "{dlq}"

[[inputs]]
topic = "{otel}"
format = "otlp_json"
[[inputs.metrics]]
series = "http.server.duration"
metric = "latency_ms"
kind = "distribution"

[profiles.default]
min_duration = "5m"
max_duration = "30m"
[[profiles.default.metrics]]
name = "latency_ms"
"""


@pytest.fixture(scope="module")
def apache_kafka(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApacheKafka]:
    """The session's broker when it is Apache Kafka (conftest.py), else one of this module's."""
    session_broker = request.getfixturevalue("kafka_broker")
    if isinstance(session_broker, ApacheKafka):
        yield session_broker
        return
    started = time.monotonic()
    with ApacheKafka(log_dir=tmp_path_factory.mktemp("apache-kafka")) as broker:
        print(f"Apache Kafka, 1 node: ready in {time.monotonic() - started:.1f}s")  # noqa: T201
        yield broker


class SaslKafka(ApacheKafka):
    """One node with a second listener, SASL/PLAIN, where ACLs apply (none unless granted).

    PLAINTEXT stays open to the tests (its ANONYMOUS principal is a super user).
    """

    users: ClassVar[dict[str, str]] = {"canary": "canary-Secret-9"}

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.sasl_port = 0

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def _server_properties(self, node: _Node) -> str:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.sasl_port = int(sock.getsockname()[1])
        users = " ".join(f'user_{name}="{secret}"' for name, secret in self.users.items())
        plain = f"PLAINTEXT://127.0.0.1:{node.broker_port}"
        sasl = f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}"
        extra = {
            "listeners": f"{plain},CONTROLLER://127.0.0.1:{node.controller_port},{sasl}",
            "advertised.listeners": f"{plain},{sasl}",
            "listener.security.protocol.map": (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
            ),
            "sasl.enabled.mechanisms": "PLAIN",
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};"
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:ANONYMOUS",
            "allow.everyone.if.no.acl.found": "false",
        }
        # Later keys win in a Java properties file.
        return super()._server_properties(node) + "".join(f"{k}={v}\n" for k, v in extra.items())


_TOPIC, _LITERAL, _ANY_HOST, _ALLOW = 2, 3, "*", 3
_READ, _WRITE = 3, 4


async def grant(bootstrap: str, principal: str, grants: list[tuple[str, int]]) -> None:
    """Allow ``principal`` each (topic, operation) of ``grants`` (as a super user)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic, operation in grants:
            request = CreateAclsRequest(
                _TOPIC, topic, _LITERAL, principal, _ANY_HOST, operation, _ALLOW
            )
            response = await admin._send_request(request)
            assert all(result[0] == 0 for result in response.creation_responses), response
    finally:
        await admin.close()


def check(config: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(
        main, ["check", "--broker", "--config", str(config)], env={"COALMINE_CONFIG": None}
    )
    print(result.output)  # noqa: T201 - shown with -s, and on failure
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output.splitlines()


async def topics_of(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def apply_fixes(bootstrap: str, metrics: str, otel: str, retention_ms: str) -> None:
    """What the printed fixes do, through the admin client (the Kafka tools are not here)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_partitions({metrics: NewPartitions(total_count=4)})
        resource = ConfigResource(ConfigResourceType.TOPIC, otel, {"retention.ms": retention_ms})
        await admin.alter_configs([resource])
        async with asyncio.timeout(30):
            while True:  # partitions and configs show up asynchronously
                described = {t["topic"]: t for t in await admin.describe_topics([metrics])}
                if len(described[metrics]["partitions"]) == 4:
                    break
                await asyncio.sleep(0.1)
    finally:
        await admin.close()


def test_check_broker_names_each_problem_then_passes_once_fixed(
    apache_kafka: ApacheKafka, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    bootstrap = apache_kafka.bootstrap
    names = {
        kind: topic_name(kind) for kind in ("deployments", "metrics", "otel", "verdicts", "dlq")
    }
    deployments, metrics, otel, verdicts, dlq = names.values()
    config = tmp_path / "coalmine.toml"
    config.write_text(CONFIG.format(bootstrap=bootstrap, **names))
    apache_kafka.create_topics([deployments], partitions=4, replication=1)
    apache_kafka.create_topics([metrics], partitions=2, replication=1)
    apache_kafka.create_topics(
        [otel], partitions=4, replication=1, configs={"retention.ms": "600000"}
    )
    apache_kafka.create_topics([verdicts], partitions=1, replication=1)
    # The dead-letter topic is missing.

    started = time.monotonic()
    code, lines = check(config)
    print(f"failing check: {time.monotonic() - started:.2f}s")  # noqa: T201
    assert code == 2
    problems = [line for line in lines if line.startswith("problem:")]
    assert problems == [
        (
            f"problem: topics: {dlq} (dead letters) does not exist; coalmine creates no topics"
            f" fix: kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {dlq}"
            " --partitions 4 --replication-factor 1"
        ),
        (
            f"problem: partitions: partition counts differ: {deployments} has 4, {metrics} has 2,"
            f" {otel} has 4; keyed by service, they need the same count so that a service's deploy"
            " events and metrics share a partition number (the daemon refuses to start otherwise)"
            f" fix: kafka-topics.sh --bootstrap-server {bootstrap} --alter --topic {metrics}"
            " --partitions 4 (adding partitions moves some services to other partitions: do it"
            " while no deployment is open); deploy events and metrics must be keyed by service"
            " with the murmur2 partitioner (the Java client's and aiokafka's default;"
            " librdkafka-based clients: partitioner=murmur2_random)"
        ),
        (
            f"problem: retention: {otel} keeps records 10m (retention.ms=600000); it needs 2h"
            " (2 x the longest max_duration 30m + 1h), so that a restarted daemon finds every open"
            " deployment in the log"
            f" fix: kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics"
            f" --entity-name {otel} --add-config retention.ms=7200000"
        ),
    ]
    assert lines[0] == f"ok: config: {config} is valid; profiles: default (1 metrics)"
    assert lines[1] == f"ok: brokers: Kafka at {bootstrap} answers (1 broker)"
    assert any(line.startswith("note: replication: 1 broker: not checked") for line in lines)
    assert any(line.startswith("ok: permissions: User:ANONYMOUS may describe") for line in lines)
    assert lines[-1] == "summary: 3 problems, 3 checks ok, 1 note; fix them and check again"
    # Asking about the missing topic did not create it (the broker auto-creates on request).
    assert dlq not in asyncio.run(topics_of(bootstrap))

    apache_kafka.create_topics([dlq], partitions=4, replication=1)
    asyncio.run(apply_fixes(bootstrap, metrics, otel, "7200000"))

    started = time.monotonic()
    code, lines = check(config)
    print(f"passing check: {time.monotonic() - started:.2f}s")  # noqa: T201
    assert code == 0
    assert [line.split(":")[0] for line in lines] == [
        "ok",
        "ok",
        "ok",
        "ok",
        "ok",
        "note",
        "ok",
        "summary",
    ]
    assert lines[3] == (
        f"ok: partitions: {deployments}, {metrics}, {otel}: 4 partitions each (the deployments,"
        " metrics and [[inputs]] topics: keyed by service)"
    )
    assert lines[4] == (
        f"ok: retention: {deployments}, {metrics}, {otel}, {verdicts} keep records 2h or longer"
        " (2 x the longest max_duration 30m + 1h)"
    )
    assert lines[-1] == "summary: no problems, 6 checks ok, 1 note"


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    started = time.monotonic()
    with SaslKafka(log_dir=tmp_path_factory.mktemp("sasl-kafka")) as broker:
        print(f"Apache Kafka with ACLs: ready in {time.monotonic() - started:.1f}s")  # noqa: T201
        yield broker


SASL_CONFIG = """\
[kafka]
bootstrap_servers = "{bootstrap}"
request_timeout = "20s"
security_protocol = "SASL_PLAINTEXT"
sasl_mechanism = "PLAIN"
sasl_username = "canary"
sasl_password = "{password}"
group_id = "{group}"

[topics]
deployments = "{deployments}"
metrics = "{metrics}"
verdicts = "{verdicts}"
dead_letter = "{dlq}"
"""


def test_check_broker_names_the_acls_a_principal_lacks(
    sasl_kafka: SaslKafka, topic_name: Callable[[str], str], tmp_path: Path
) -> None:
    names = {kind: topic_name(kind) for kind in ("deployments", "metrics", "verdicts", "dlq")}
    deployments, metrics, verdicts, dlq = names.values()
    group = topic_name("group")
    password = SaslKafka.users["canary"]
    config = tmp_path / "coalmine.toml"
    bootstrap = sasl_kafka.sasl_bootstrap
    text = SASL_CONFIG.format(bootstrap=bootstrap, password=password, group=group, **names)
    config.write_text(text)
    sasl_kafka.create_topics(list(names.values()), partitions=2, replication=1)
    # Read and Write imply Describe; nothing on the dead-letter topic, nothing on the group.
    grants = [(deployments, _READ), (metrics, _READ), (verdicts, _READ), (verdicts, _WRITE)]
    asyncio.run(grant(sasl_kafka.bootstrap, "User:canary", grants))

    code, lines = check(config)
    assert code == 2
    assert password not in "\n".join(lines)
    acls = (
        f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config client.properties"
        " --add --allow-principal User:canary"
    )
    assert [line for line in lines if line.startswith("problem:")] == [
        (
            f"problem: permissions: not authorized to describe {dlq} (TOPIC_AUTHORIZATION_FAILED);"
            f" the daemon writes it (dead letters) fix: {acls} --operation Describe"
            f" --operation Write --topic {dlq}"
        ),
        (
            f"problem: permissions: not authorized to use consumer group {group}"
            f" (GROUP_AUTHORIZATION_FAILED); the daemon joins it fix: {acls} --operation Read"
            f" --group {group}"
        ),
    ]
    # Visible topics are checked as usual; their configs need DescribeConfigs (a note).
    assert f"ok: topics: {deployments}, {metrics}, {verdicts} exist" in lines
    assert f"ok: brokers: Kafka at {bootstrap} answers (1 broker)" in lines
    unread = [line for line in lines if line.startswith("note: retention:")]
    assert len(unread) == 3
    assert all("DescribeConfigs" in line for line in unread)
    assert lines[-1].startswith("summary: 2 problems")
