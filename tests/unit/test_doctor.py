"""``coalmine check --broker`` without a broker: the evaluation, the plan and the command."""

import socket

import orjson
import pytest
from click.testing import CliRunner

from coalmine._exceptions import TransportError
from coalmine.bus import doctor
from coalmine.bus.doctor import ClusterState, Finding, TopicState, evaluate, plan_for
from coalmine.cli import main
from coalmine.config.settings import Settings, load_settings

BOOT = "kafka-1:9092"
GOOD = {"retention.ms": "604800000", "retention.bytes": "-1", "cleanup.policy": "delete"}
"""A topic's configs that pass: 7 days, no size limit, deleted by time."""


def settings(**environ: str) -> Settings:
    return load_settings(environ={"COALMINE_KAFKA__BOOTSTRAP_SERVERS": BOOT, **environ})


def with_input(**environ: str) -> Settings:
    return settings(COALMINE_INPUTS='[{"topic": "otel"}]', **environ)


def topic(partitions: int = 6, replication: int = 3, **configs: str) -> TopicState:
    merged = {**GOOD, "min.insync.replicas": "2"} | {
        k.replace("_", "."): v for k, v in configs.items()
    }
    return TopicState(partitions, replication, merged)


def healthy(brokers: int = 3, partitions: int = 6) -> dict[str, TopicState]:
    names = (
        "coalmine.deployments",
        "coalmine.metrics",
        "otel",
        "coalmine.verdicts",
        "coalmine.dlq",
    )
    return {name: topic(partitions) for name in names}


def run(state: ClusterState, config: Settings | None = None) -> list[Finding]:
    plan = plan_for(config or with_input())
    assert plan is not None
    return evaluate(state, plan)


def lines(findings: list[Finding], status: str = "problem") -> list[str]:
    return [str(f) for f in findings if f.status == status]


def by_check(findings: list[Finding]) -> dict[str, set[str]]:
    checks: dict[str, set[str]] = {}
    for f in findings:
        checks.setdefault(f.check, set()).add(f.status)
    return checks


# -- the plan -----------------------------------------------------------------------------


def test_plan_names_every_topic_with_its_use():
    plan = plan_for(with_input())
    assert plan is not None
    uses = {u.name: u for u in plan.topics}
    assert list(uses) == [
        "coalmine.deployments",
        "coalmine.metrics",
        "otel",
        "coalmine.verdicts",
        "coalmine.dlq",
    ]
    for name in ("coalmine.deployments", "coalmine.metrics", "otel"):
        assert uses[name].read
        assert uses[name].keyed
        assert uses[name].retained
        assert uses[name].replicated
        assert not uses[name].write
    verdicts, dlq = uses["coalmine.verdicts"], uses["coalmine.dlq"]
    assert verdicts.write
    assert verdicts.read
    assert verdicts.retained
    assert verdicts.replicated
    assert dlq.write
    assert not dlq.read
    assert not dlq.keyed
    assert not dlq.retained
    assert not dlq.replicated
    assert plan.group_id == "coalmine"
    assert plan.bootstrap == BOOT
    assert plan.principal == "User:ANONYMOUS"
    assert not plan.secured
    # Defaults: one profile of 30m -> 2 x 30m + 1h.
    assert plan.longest_max_duration == 1800
    assert plan.retention_ms == 7_200_000


def test_plan_uses_the_longest_max_duration_of_all_profiles():
    config = settings(
        COALMINE_PROFILES__DEFAULT__MAX_DURATION="10m",
        COALMINE_PROFILES__SLOW='{"max_duration": "2h", "metrics": [{"name": "x"}]}',
    )
    plan = plan_for(config)
    assert plan is not None
    assert plan.longest_max_duration == 7200
    assert plan.retention_ms == (2 * 7200 + 3600) * 1000


def test_plan_follows_the_buses_and_skips_mqtt_only():
    mqtt_only = settings(COALMINE_BUS__CONSUME='["mqtt"]', COALMINE_BUS__PUBLISH='["mqtt"]')
    assert plan_for(mqtt_only) is None
    reads = plan_for(settings(COALMINE_BUS__PUBLISH='["mqtt"]'))
    assert reads is not None
    assert [u.name for u in reads.topics] == ["coalmine.deployments", "coalmine.metrics"]
    assert reads.notes  # the MQTT side is not checked, and it says so
    writes = plan_for(settings(COALMINE_BUS__CONSUME='["mqtt"]'))
    assert writes is not None
    assert [u.name for u in writes.topics] == ["coalmine.verdicts", "coalmine.dlq"]
    assert writes.group_id is None
    verdicts = writes.topics[0]
    assert verdicts.write
    assert not verdicts.read
    assert not verdicts.retained


def test_plan_merges_a_topic_named_twice():
    plan = plan_for(settings(COALMINE_INPUTS='[{"topic": "coalmine.metrics"}]'))
    assert plan is not None
    assert [u.roles for u in plan.topics if u.name == "coalmine.metrics"] == [
        ("metrics", "[[inputs]]")
    ]


def test_plan_names_the_sasl_principal_and_never_holds_the_password():
    config = settings(
        COALMINE_KAFKA__SECURITY_PROTOCOL="SASL_SSL",
        COALMINE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        COALMINE_KAFKA__SASL_USERNAME="canary",
        COALMINE_KAFKA__SASL_PASSWORD="hunter2-secret",  # noqa: S106 - must never show
    )
    plan = plan_for(config)
    assert plan is not None
    assert plan.principal == "User:canary"
    assert plan.secured
    assert "hunter2" not in repr(plan)
    state = ClusterState(3, healthy(), unauthorized=frozenset({"coalmine.metrics"}))
    text = "\n".join(str(f) for f in evaluate(state, plan))
    assert "hunter2" not in text
    assert "--command-config client.properties" in text
    assert "--allow-principal User:canary" in text


# -- the evaluation: every check passes ------------------------------------------------------


def test_a_healthy_cluster_passes_every_check():
    findings = run(ClusterState(3, healthy()))
    assert lines(findings) == []
    assert [f.check for f in findings if f.status == "ok"] == [
        "brokers",
        "topics",
        "partitions",
        "retention",
        "replication",
        "permissions",
    ]
    assert lines(findings, "ok")[0] == f"ok: brokers: Kafka at {BOOT} answers (3 brokers)"
    assert "2h or longer (2 x the longest max_duration 30m + 1h)" in lines(findings, "ok")[3]


def test_infinite_retention_is_fine():
    topics = healthy()
    topics["coalmine.metrics"] = topic(retention_ms="-1")
    assert lines(run(ClusterState(3, topics))) == []


def test_one_broker_makes_replication_a_note_not_a_problem():
    topics = {name: topic(replication=1, min_insync_replicas="1") for name in healthy()}
    findings = run(ClusterState(1, topics))
    assert lines(findings) == []
    (note,) = [f for f in findings if f.check == "replication"]
    assert note.status == "note"
    assert note.message.startswith("1 broker: not checked")
    assert "replication factor 3" in note.message


# -- the evaluation: each problem ------------------------------------------------------------


def test_unreachable_brokers_are_one_problem_with_the_clients_error():
    plan = plan_for(with_input())
    assert plan is not None
    finding = doctor.unreachable(plan, "KafkaConnectionError: Unable to bootstrap")
    assert finding.status == "problem"
    assert finding.check == "brokers"
    assert finding.message == f"cannot reach {BOOT}: KafkaConnectionError: Unable to bootstrap"
    assert finding.fix is not None
    assert "bootstrap_servers" in finding.fix
    assert "listeners" in finding.fix
    assert "security_protocol" in finding.fix


def test_a_missing_topic_is_created_with_its_siblings_partition_count():
    topics = healthy(partitions=12)
    del topics["coalmine.metrics"], topics["coalmine.dlq"]
    problems = lines(run(ClusterState(3, topics)))
    create = f"kafka-topics.sh --bootstrap-server {BOOT} --create --topic"
    assert problems == [
        (
            "problem: topics: coalmine.metrics (metrics) does not exist; coalmine creates no topics"
            f" fix: {create} coalmine.metrics --partitions 12 --replication-factor 3"
            " --config min.insync.replicas=2"
        ),
        (
            "problem: topics: coalmine.dlq (dead letters) does not exist; coalmine creates no"
            " topics"
            f" fix: {create} coalmine.dlq --partitions 12 --replication-factor 3"
        ),
    ]


def test_missing_topics_on_an_empty_laptop_broker():
    findings = run(ClusterState(1, {}))
    problems = lines(findings)
    assert len(problems) == 5
    assert all("--partitions 6 --replication-factor 1" in p for p in problems)
    assert all("min.insync.replicas" not in p for p in problems)
    assert by_check(findings) == {
        "brokers": {"ok"},
        "topics": {"problem"},
        "replication": {"note"},
        "permissions": {"ok"},
    }


def test_partition_counts_that_differ_are_raised_to_the_largest():
    topics = healthy(partitions=6)
    topics["coalmine.deployments"] = topic(12)
    topics["coalmine.verdicts"] = topic(1)  # not keyed by service: any count will do
    (problem,) = run(ClusterState(3, topics))[2:3]
    assert problem.check == "partitions"
    assert problem.status == "problem"
    assert "coalmine.deployments has 12, coalmine.metrics has 6, otel has 6" in problem.message
    assert "coalmine.verdicts" not in problem.message
    assert "(the daemon refuses to start otherwise)" in problem.message
    assert problem.fix is not None
    alter = f"kafka-topics.sh --bootstrap-server {BOOT} --alter --topic"
    assert f"{alter} coalmine.metrics --partitions 12; {alter} otel --partitions 12" in problem.fix
    assert "--topic coalmine.deployments" not in problem.fix
    assert "keyed by service with the murmur2 partitioner" in problem.fix
    assert "partitioner=murmur2_random" in problem.fix
    assert lines(run(ClusterState(3, topics))) == [str(problem)]


def test_an_inputs_topic_alone_with_another_count_does_not_stop_the_daemon():
    topics = healthy(partitions=6)
    topics["otel"] = topic(3)
    (problem,) = [f for f in run(ClusterState(3, topics)) if f.status == "problem"]
    assert "coalmine.deployments has 6, coalmine.metrics has 6, otel has 3" in problem.message
    assert "refuses to start" not in problem.message
    assert "with several daemons in one group" in problem.message
    assert problem.fix is not None
    assert "--alter --topic otel --partitions 6" in problem.fix


def test_a_missing_keyed_topic_takes_the_largest_of_differing_counts():
    topics = healthy(partitions=6)
    topics["coalmine.deployments"] = topic(12)
    del topics["otel"]
    problems = lines(run(ClusterState(3, topics)))
    assert any("--create --topic otel --partitions 12" in p for p in problems)


def test_short_retention_names_the_topic_and_the_setting():
    topics = healthy()
    topics["coalmine.metrics"] = topic(retention_ms="3600000")
    topics["coalmine.verdicts"] = topic(retention_ms="600000")
    topics["coalmine.dlq"] = topic(retention_ms="60000")  # dead letters are not read back
    problems = lines(run(ClusterState(3, topics)))
    configs = f"kafka-configs.sh --bootstrap-server {BOOT} --alter --entity-type topics"
    assert problems == [
        (
            "problem: retention: coalmine.metrics keeps records 1h (retention.ms=3600000); it needs"
            " 2h (2 x the longest max_duration 30m + 1h), so that a restarted daemon finds every"
            " open deployment in the log"
            f" fix: {configs} --entity-name coalmine.metrics --add-config retention.ms=7200000"
        ),
        (
            "problem: retention: coalmine.verdicts keeps records 10m (retention.ms=600000); it"
            " needs 2h (2 x the longest max_duration 30m + 1h), so that a restarted daemon finds"
            " every open deployment in the log"
            f" fix: {configs} --entity-name coalmine.verdicts --add-config retention.ms=7200000"
        ),
    ]


def test_a_compacted_input_topic_is_a_problem():
    topics = healthy()
    topics["coalmine.deployments"] = topic(cleanup_policy="compact")
    (problem,) = lines(run(ClusterState(3, topics)))
    assert "coalmine.deployments has cleanup.policy=compact" in problem
    assert "--add-config cleanup.policy=delete" in problem
    topics["coalmine.deployments"] = topic(cleanup_policy="compact,delete")
    assert lines(run(ClusterState(3, topics))) == []


def test_size_based_retention_and_unreadable_configs_are_notes():
    topics = healthy()
    topics["coalmine.metrics"] = topic(retention_bytes="1073741824")
    topics["otel"] = TopicState(6, 3, None, "TOPIC_AUTHORIZATION_FAILED")
    findings = run(ClusterState(3, topics))
    assert lines(findings) == []
    notes = lines(findings, "note")
    assert any(
        "coalmine.metrics also deletes by size (retention.bytes=1073741824" in n for n in notes
    )
    unread = [n for n in notes if n.startswith("note: retention: otel:")]
    assert unread
    assert "DescribeConfigs" in unread[0]
    assert "TOPIC_AUTHORIZATION_FAILED" in unread[0]


def test_replication_below_three_on_a_production_cluster():
    topics = healthy()
    topics["coalmine.verdicts"] = topic(replication=1)
    topics["coalmine.metrics"] = topic(min_insync_replicas="1")
    topics["coalmine.dlq"] = topic(replication=1, min_insync_replicas="1")  # not required
    problems = lines(run(ClusterState(3, topics)))
    assert len(problems) == 2
    assert problems[0].startswith(
        "problem: replication: coalmine.metrics has min.insync.replicas=1"
    )
    assert problems[0].endswith(
        f"fix: kafka-configs.sh --bootstrap-server {BOOT} --alter --entity-type topics"
        " --entity-name coalmine.metrics --add-config min.insync.replicas=2"
    )
    assert problems[1].startswith(
        "problem: replication: coalmine.verdicts has replication factor 1"
    )
    assert "kafka-reassign-partitions.sh" in problems[1]


def test_a_topic_that_may_not_be_described_names_the_acls_needed():
    topics = healthy()
    for name in ("coalmine.metrics", "coalmine.verdicts", "coalmine.dlq"):
        del topics[name]
    state = ClusterState(
        3,
        topics,
        unauthorized=frozenset({"coalmine.metrics", "coalmine.verdicts", "coalmine.dlq"}),
        group_unauthorized=True,
    )
    findings = run(state)
    assert [f.check for f in findings if f.status == "problem"] == ["permissions"] * 4
    acls = f"kafka-acls.sh --bootstrap-server {BOOT} --add --allow-principal User:ANONYMOUS"
    assert lines(findings) == [
        (
            "problem: permissions: not authorized to describe coalmine.metrics"
            " (TOPIC_AUTHORIZATION_FAILED); the daemon reads it (metrics)"
            f" fix: {acls} --operation Describe --operation Read --topic coalmine.metrics"
        ),
        (
            "problem: permissions: not authorized to describe coalmine.verdicts"
            " (TOPIC_AUTHORIZATION_FAILED); the daemon reads and writes it (verdicts)"
            f" fix: {acls} --operation Describe --operation Read --operation Write"
            " --topic coalmine.verdicts"
        ),
        (
            "problem: permissions: not authorized to describe coalmine.dlq"
            " (TOPIC_AUTHORIZATION_FAILED); the daemon writes it (dead letters)"
            f" fix: {acls} --operation Describe --operation Write --topic coalmine.dlq"
        ),
        (
            "problem: permissions: not authorized to use consumer group coalmine"
            " (GROUP_AUTHORIZATION_FAILED); the daemon joins it"
            f" fix: {acls} --operation Read --group coalmine"
        ),
    ]
    # Not described is not missing: no "does not exist" for them.
    assert [f.status for f in findings if f.check == "topics"] == ["ok"]


def test_summary_counts_problems_checks_and_notes():
    ok = Finding("ok", "topics", "x")
    assert doctor.summary([ok, ok]) == "summary: no problems, 2 checks ok, 0 notes"
    bad = Finding("problem", "topics", "y", "z")
    note = Finding("note", "replication", "n")
    assert doctor.summary([ok, bad, note]) == (
        "summary: 1 problem, 1 check ok, 1 note; fix them and check again"
    )
    assert str(bad) == "problem: topics: y fix: z"
    assert bad.as_dict() == {"status": "problem", "check": "topics", "message": "y", "fix": "z"}


# -- the command ---------------------------------------------------------------------------


def invoke(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(main, ["check", *args], env={"COALMINE_CONFIG": None, **(env or {})})


def test_check_without_broker_is_unchanged():
    result = invoke()
    assert result.exit_code == 0
    assert result.output == "defaults: ok; profiles: default (2 metrics)\n"


def test_json_goes_with_broker():
    result = invoke("--json")
    assert result.exit_code == 2
    assert "--json goes with --broker" in result.output


def test_check_broker_on_mqtt_only_says_so_and_passes():
    env = {"COALMINE_BUS__CONSUME": '["mqtt"]', "COALMINE_BUS__PUBLISH": '["mqtt"]'}
    result = invoke("--broker", env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "ok: config: defaults is valid; profiles: default (2 metrics)",
        (
            "note: brokers: [bus] uses MQTT only: the MQTT broker is not checked (connecting with"
            " the daemon's client id would take over its session); this check applies to Kafka"
        ),
        "summary: no problems, 1 check ok, 1 note",
    ]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_check_broker_that_cannot_be_reached_exits_2_without_secrets():
    bootstrap = f"127.0.0.1:{closed_port()}"
    env = {
        "COALMINE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "COALMINE_KAFKA__REQUEST_TIMEOUT": "5s",
        "COALMINE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "COALMINE_KAFKA__SASL_MECHANISM": "PLAIN",
        "COALMINE_KAFKA__SASL_USERNAME": "canary",
        "COALMINE_KAFKA__SASL_PASSWORD": "hunter2-secret",
    }
    result = invoke("--broker", env=env)
    assert result.exit_code == 2, result.output
    out = result.output.splitlines()
    assert out[0].startswith("ok: config: defaults is valid")
    assert out[1].startswith(f"problem: brokers: cannot reach Kafka at {bootstrap}: ")
    assert "fix: check [kafka] bootstrap_servers" in out[1]
    assert out[2] == "summary: 1 problem, 1 check ok, 0 notes; fix them and check again"
    assert len(out) == 3
    assert "hunter2" not in result.output


@pytest.fixture
def fake_cluster(monkeypatch):
    """``inspect`` answers with the state a test puts in the returned dict."""
    answer: dict[str, object] = {}

    async def fake_inspect(settings, plan):
        state = answer["state"]
        if isinstance(state, BaseException):
            raise state
        return state

    monkeypatch.setattr(doctor, "inspect", fake_inspect)
    return answer


def test_check_broker_prints_one_line_per_check_and_exits_0(fake_cluster):
    fake_cluster["state"] = ClusterState(3, healthy())
    result = invoke("--broker", env={"COALMINE_INPUTS": '[{"topic": "otel"}]'})
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert [line.split(":")[:2] for line in out[:-1]] == [
        ["ok", " config"],
        ["ok", " brokers"],
        ["ok", " topics"],
        ["ok", " partitions"],
        ["ok", " retention"],
        ["ok", " replication"],
        ["ok", " permissions"],
    ]
    assert out[-1] == "summary: no problems, 7 checks ok, 0 notes"


def test_check_broker_with_problems_exits_2_and_json_has_them(fake_cluster):
    topics = healthy()
    del topics["coalmine.dlq"]
    fake_cluster["state"] = ClusterState(1, topics)
    env = {"COALMINE_INPUTS": '[{"topic": "otel"}]'}
    result = invoke("--broker", env=env)
    assert result.exit_code == 2
    assert "problem: topics: coalmine.dlq (dead letters) does not exist" in result.output
    result = invoke("--broker", "--json", env=env)
    assert result.exit_code == 2
    report = orjson.loads(result.output)
    assert report["config"] == "defaults"
    assert report["problems"] == 1
    statuses = [(f["check"], f["status"]) for f in report["findings"]]
    assert ("topics", "problem") in statuses
    assert ("replication", "note") in statuses


def test_check_broker_that_fails_after_connecting_is_a_runtime_failure(fake_cluster):
    fake_cluster["state"] = TransportError("describe the topics: no answer within 30s")
    result = invoke("--broker")
    assert result.exit_code == 1
    assert "error: describe the topics: no answer within 30s" in result.output
