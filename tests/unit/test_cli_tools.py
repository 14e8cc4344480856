"""The pipeline and SRE commands without a broker: start, finish, wait, record, report."""

import asyncio
import io
import socket
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

import coalmine.tools.pipeline
from coalmine._exceptions import ContractError
from coalmine.cli import main
from coalmine.config.settings import Settings
from coalmine.contract import decode_deploy_event, encode_deploy_event
from coalmine.tools.pipeline import (
    EXIT_TIMEOUT,
    WaitResult,
    describe,
    exit_code,
    look_of,
)
from coalmine.tools.recording import parse_moment
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import T0


def invoke(*args: str, env: dict[str, str | None] | None = None):
    return CliRunner().invoke(main, list(args), env={"COALMINE_CONFIG": None, **(env or {})})


def verdict(decision: str, look: int, *, final: bool) -> dict:
    return {
        "verdict_id": f"checkout-v42/{look}",
        "deployment_id": "checkout-v42",
        "service": "checkout",
        "decision": decision,
        "final": final,
        "score": 100.0,
        "summary": f"{decision} [because]",
        "window": {"start": "2026-11-26T10:00:00Z", "end": f"2026-11-26T10:0{look}:30Z"},
    }


@pytest.mark.parametrize(
    ("decision", "code"),
    [("promote", 0), ("rollback", 1), ("inconclusive", 3), (None, 4), ("continue", 4)],
)
def test_wait_exit_code_per_decision(decision, code):
    assert exit_code(decision) == code
    final = None if decision is None else verdict(decision, 5, final=True)
    assert WaitResult(final, final, 1, 0.1).exit_code == code


def test_describe_shows_decision_look_event_time_and_summary():
    line = describe(verdict("continue", 3, final=False), plain=True)
    assert line == "continue checkout-v42/3 (look 3 at +03:30 score 100): continue [because]"
    assert look_of({"verdict_id": "a/b/12"}) == 12
    assert look_of({}) is None
    rich = describe(verdict("rollback", 3, final=True))
    assert "[red]rollback[/]" in rich
    assert "\\[because]" in rich  # summaries are escaped for rich markup


@pytest.mark.parametrize(
    ("decision", "code"), [("promote", 0), ("rollback", 1), ("inconclusive", 3), (None, 4)]
)
def test_cli_wait_exits_with_the_decisions_code(monkeypatch, decision, code):
    calls = []

    async def fake_wait(settings, deployment_id, timeout, on_verdict=None, advance_at=None):
        calls.append((deployment_id, timeout))
        interim = verdict("continue", 1, final=False)
        on_verdict(interim)
        final = None if decision is None else verdict(decision, 5, final=True)
        if final is not None:
            on_verdict(final)
        return WaitResult(final, final or interim, 2, 0.1)

    monkeypatch.setattr(coalmine.tools.pipeline, "wait_for_verdict", fake_wait)
    result = invoke("wait", "--deployment", "checkout-v42", "--timeout", "90s")
    assert result.exit_code == code, result.output
    assert calls == [("checkout-v42", 90.0)]
    assert "continue checkout-v42/1" in result.stderr
    if decision is None:
        assert "no final verdict for checkout-v42 within 90s" in result.stderr
        assert result.stdout == ""
    else:
        assert result.stdout.startswith(f"{decision} checkout-v42/5")


def test_cli_wait_json_prints_the_final_verdict(monkeypatch):
    final = verdict("promote", 6, final=True)

    async def fake_wait(settings, deployment_id, timeout, on_verdict=None, advance_at=None):
        return WaitResult(final, final, 1, 0.1)

    monkeypatch.setattr(coalmine.tools.pipeline, "wait_for_verdict", fake_wait)
    result = invoke("wait", "--deployment", "checkout-v42", "--json")
    assert result.exit_code == 0
    assert orjson.loads(result.stdout) == final


def test_cli_wait_rejects_a_bad_timeout_with_exit_2():
    result = invoke("wait", "--deployment", "x", "--timeout", "soon")
    assert result.exit_code == 2
    assert "--timeout" in result.output


def test_deploy_events_fit_the_contract():
    started = orjson.loads(
        encode_deploy_event(
            "started",
            "checkout-v42",
            "checkout",
            at=T0,
            baseline="v41",
            canary="v42",
            profile="strict",
            traffic_weight=5,
        )
    )
    assert started == {
        "event": "started",
        "deployment_id": "checkout-v42",
        "service": "checkout",
        "time": "2027-01-15T08:00:00Z",
        "profile": "strict",
        "baseline": {"version": "v41"},
        "canary": {"version": "v42"},
        "traffic_weight": 5,
    }
    event = decode_deploy_event(encode_deploy_event("aborted", "checkout-v42", "checkout", at=T0))
    assert event.event == "aborted"
    with pytest.raises(ContractError):
        encode_deploy_event("started", "checkout-v42", "checkout", at=T0, baseline="v41")


START = ("start", "--deployment", "d1", "--service", "s", "--baseline", "v1", "--canary", "v2")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_start_and_finish_exit_1_when_kafka_is_unreachable():
    env = {
        "COALMINE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
        "COALMINE_KAFKA__REQUEST_TIMEOUT": "1s",
    }
    result = invoke(*START, env=env)
    assert result.exit_code == 1, result.output
    assert "error:" in result.stderr
    result = invoke(
        "finish", "--deployment", "d1", "--service", "s", "--event", "completed", env=env
    )
    assert result.exit_code == 1, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["start", "--deployment", "d", "--service", "s", "--baseline", "v1"],  # no --canary
        [*START, "--traffic-weight", "120"],
        [*START, "--strategy", "yolo"],
        ["finish", "--deployment", "d", "--service", "s", "--event", "paused"],
        ["record", "--output", "x.jsonl"],  # no --since
        ["record", "--output", "x.jsonl", "--since", "last tuesday"],
        ["report", "d"],  # no --output
        ["report", "d", "--output", "r.html", "--input", __file__, "--from-kafka"],  # both
        ["wait"],  # no --deployment
        ["step", "--deployment", "d", "--service", "s"],  # neither --traffic-weight nor --phase
        ["step", "--deployment", "d", "--service", "s", "--traffic-weight", "120"],
        ["start", "--deployment", "d", "--service", "s", "--strategy", "blue_green"],  # versions
    ],
)
def test_cli_tools_usage_errors_exit_2(args):
    assert invoke(*args).exit_code == 2


def test_parse_moment_takes_durations_ago_and_rfc3339():
    now = 1_800_000_000.0
    assert parse_moment("2h", now) == now - 7200
    assert parse_moment("90s", now) == now - 90
    assert parse_moment("1h30m", now) == now - 5400
    assert parse_moment("2027-01-15T08:00:00Z", now) == T0
    assert parse_moment("2027-01-15T09:00:00+01:00", now) == T0
    for bad in ("yesterday", "2027-01-15T08:00:00", "-5m"):
        with pytest.raises(ValueError, match=r"2h|offset|duration"):
            parse_moment(bad, now)


def test_cli_report_writes_html_from_a_recording(tmp_path: Path):
    recording = tmp_path / "stream.jsonl"
    with recording.open("wb") as out:
        for message in simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3):
            out.write(message.value + b"\n")
    config = tmp_path / "coalmine.toml"
    config.write_text(
        '[profiles.default]\ninterval = "60s"\nmin_duration = "5m"\nmax_duration = "15m"\n'
        '[[profiles.default.metrics]]\nname = "latency_ms"\n'
        '[[profiles.default.metrics]]\nname = "requests"\nkind = "ratio"\nobjective = 0.999\n'
        "critical = true\n"
    )
    output = tmp_path / "report.html"
    common = ("--config", str(config), "--input", str(recording))
    result = invoke("report", "search-v7", *common, "--output", str(output))
    assert result.exit_code == 0, result.output
    html = output.read_text()
    assert "search-v7" in html
    assert "rollback" in html
    assert "1 verdicts, samples of 1 distribution metric(s)" in result.stderr
    missing = invoke("report", "nope-v1", *common, "--output", str(tmp_path / "none.html"))
    assert missing.exit_code == 1
    assert "no deployment nope-v1" in missing.stderr


def test_help_lists_the_tools_and_stays_lazy():
    result = invoke("--help")
    for command in ("replay", "record", "start", "finish", "wait", "report"):
        assert command in result.output
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # The tools are imported by their commands only, so `coalmine --help` stays fast.
    code = (
        "import sys; from coalmine.cli import main\n"
        "heavy = [m for m in ('coalmine.tools.replay', 'coalmine.tools.replay_table',"
        " 'coalmine.tools.recording',"
        " 'coalmine.tools.pipeline', 'aiokafka', 'aiomqtt', 'rich') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_wait_on_an_unreachable_broker_times_out_with_exit_4_not_1():
    # Exit 1 means rollback to a pipeline: a broker failure must not look like one.
    env = {
        "COALMINE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}",
        "COALMINE_KAFKA__REQUEST_TIMEOUT": "0.3s",
    }
    result = invoke("wait", "--deployment", "d1", "--timeout", "2s", env=env)
    assert result.exit_code == EXIT_TIMEOUT, result.output
    assert "last broker error" in result.stderr


def test_wait_follows_nothing_when_given_no_time(monkeypatch):
    # A zero timeout ends the wait at once, as a timeout (exit 4), without a broker.
    async def never(settings, deployment_id, take):
        # A follow that never sees a verdict: the zero timeout, not this, ends the wait.
        await __import__("asyncio").sleep(60)

    monkeypatch.setattr(coalmine.tools.pipeline, "_follow_kafka", never)
    result = invoke("wait", "--deployment", "d", "--timeout", "0.2s")
    assert result.exit_code == EXIT_TIMEOUT
    assert io.StringIO(result.stderr).read().startswith("no final verdict")


def test_report_without_input_reads_the_configured_kafka(tmp_path):
    """Neither --input nor --from-kafka: the configured bus is read (here, unreachable)."""
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\nrequest_timeout = "2s"\n')
    result = invoke("report", "d", "--output", str(tmp_path / "r.html"), "--config", str(config))
    assert result.exit_code == 1  # a runtime error reaching Kafka, not a usage error
    assert "127.0.0.1:1" in result.output
    mqtt = tmp_path / "m.toml"
    mqtt.write_text('[bus]\nconsume = ["mqtt"]\npublish = ["mqtt"]\n')
    result = invoke("report", "d", "--output", str(tmp_path / "r.html"), "--config", str(mqtt))
    assert result.exit_code == 2
    assert "give --input FILE" in result.output


def test_step_and_migration_events_carry_their_phase():
    step = decode_deploy_event(encode_deploy_event("step", "d", "s", at=T0, phase="switched"))
    assert (step.event, step.phase, step.traffic_weight) == ("step", "switched", None)
    started = decode_deploy_event(
        encode_deploy_event("started", "m", "db", at=T0, strategy="migration", phase="expand")
    )
    assert (started.strategy, started.phase, started.baseline_version) == (
        "migration",
        "expand",
        None,
    )


@pytest.mark.parametrize(
    ("transactional_id", "isolation"),
    [(None, "read_uncommitted"), ("coalmine-1", "read_committed")],
)
async def test_wait_reads_only_committed_verdicts_when_the_daemon_uses_transactions(
    monkeypatch, transactional_id, isolation
):
    import orjson  # noqa: PLC0415

    from coalmine.bus import kafka  # noqa: PLC0415
    from coalmine.bus.base import Record  # noqa: PLC0415
    from coalmine.config.models import KafkaSettings  # noqa: PLC0415
    from coalmine.config.settings import Settings  # noqa: PLC0415
    from coalmine.tools.pipeline import wait_for_verdict  # noqa: PLC0415

    seen = []
    final = {"verdict_id": "d/1", "deployment_id": "d", "decision": "promote", "final": True}

    async def follow(_settings, topics, *, isolation_level):
        seen.append(isolation_level)
        yield [Record(topics[0], orjson.dumps(final), b"d")]

    monkeypatch.setattr(kafka, "follow", follow)
    settings = Settings(kafka=KafkaSettings(transactional_id=transactional_id))
    result = await wait_for_verdict(settings, "d", 5.0)
    assert seen == [isolation]
    assert result.final == final


def _advance(look: int, weight: float) -> dict:
    return verdict("advance", look, final=False) | {"traffic_weight": weight}


@pytest.mark.parametrize(
    ("step", "ends_at"),
    [(25.0, "checkout-v42/4"), (None, "checkout-v42/9"), (75.0, "checkout-v42/9")],
)
def test_wait_for_a_step_returns_at_its_advance_or_at_the_final_verdict(monkeypatch, step, ends_at):
    published = [
        _advance(2, 5.0),
        verdict("continue", 3, final=False),
        _advance(4, 25.0),
        _advance(5, 25.0),  # a second look of the same step, never published twice
        _advance(7, 50.0),
        verdict("promote", 9, final=True),
    ]

    async def fake_follow(settings, deployment_id, take):
        return next(v for v in published if take(v))

    monkeypatch.setattr(coalmine.tools.pipeline, "_follow_kafka", fake_follow)
    settings = Settings(bus={"consume": ["kafka"], "publish": ["kafka"]})
    seen = []
    result = asyncio.run(
        coalmine.tools.pipeline.wait_for_verdict(
            settings, "checkout-v42", 5.0, seen.append, advance_at=step
        )
    )
    assert result.final is not None
    assert result.final["verdict_id"] == ends_at
    assert result.exit_code == 0
    assert seen[-1]["verdict_id"] == ends_at


def test_cli_start_plans_steps_and_refuses_a_bad_plan(monkeypatch):
    sent = []
    monkeypatch.setattr(
        "coalmine.cli._announce", lambda _settings, value, _service: sent.append(value) or "kafka"
    )
    args = ["start", "--deployment", "c-v2", "--service", "c", "--baseline", "v1", "--canary", "v2"]
    ok = invoke(*args, "--traffic-weight", "5", "--steps", "5,25,50,100")
    assert ok.exit_code == 0, ok.output
    assert decode_deploy_event(sent[-1]).steps == (5.0, 25.0, 50.0, 100.0)
    assert invoke(*args, "--steps", "5,five").exit_code == 2
    falling = invoke(*args, "--steps", "50,25")
    assert falling.exit_code == 2
    assert "'steps' must increase" in falling.output


def test_cli_start_announces_a_flag_rollout(monkeypatch):
    sent = []
    monkeypatch.setattr(
        "coalmine.cli._announce", lambda _settings, value, _service: sent.append(value) or "kafka"
    )
    base = ["start", "--deployment", "f-5", "--service", "web", "--strategy", "feature_flag"]
    ok = invoke(*base, "--flag", "new-checkout:off:on", "--traffic-weight", "5")
    assert ok.exit_code == 0, ok.output
    assert "flag new-checkout:off:on" in ok.output
    event = decode_deploy_event(sent[-1])
    assert (event.flag, event.baseline_version, event.canary_version) == (
        "new-checkout",
        "off",
        "on",
    )
    assert invoke(*base, "--flag", "new-checkout:off").exit_code == 2
    assert invoke(*base, "--flag", "k::on").exit_code == 2
    canary = invoke("start", "--deployment", "f", "--service", "web", "--flag", "k:a:b")
    assert canary.exit_code == 2
    assert "needs 'strategy': 'feature_flag'" in canary.output
