"""The migration example (docs/migrations.md, deploy/migration/) agrees with the code.

The profile loads with the real configuration loader; every JSON example of the page decodes
under the wire contract; every ``coalmine`` command line of the page and of ``migrate.sh``
parses with the real command; the script is valid bash and, run against a stand-in
``coalmine`` that parses its arguments with the real command too, does what the page's table
says for each outcome; and the profile decides as the page says on simulated traffic.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from coalmine.cli import main
from coalmine.config.durations import parse_duration
from coalmine.config.settings import load_settings
from coalmine.contract import (
    decode_deploy_event,
    decode_metric_events,
    encode_deploy_event,
    format_time,
    parse_time,
)
from tests.unit.test_deploy_kit import load_yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "migrations.md"
KIT = ROOT / "deploy" / "migration"
SCRIPT = KIT / "migrate.sh"
CONFIG = KIT / "coalmine.toml"
SERVICE = "orders-db"
PROFILE = "migration"
METRICS = {"query_ms", "queries", "replication_lag_s", "lock_waits"}

_FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```", re.MULTILINE | re.DOTALL
)
_DEFAULT = re.compile(r"^(\w+)=\$\{\1:-(.*)\}$", re.MULTILINE)
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


def _blocks(lang: str) -> list[str]:
    """The page's fenced blocks of one language, dedented (some sit in list items)."""
    text = DOC.read_text(encoding="utf-8")
    return [textwrap.dedent(m["body"]) for m in _FENCE.finditer(text) if m["lang"] == lang]


def _settings():
    return load_settings(CONFIG, environ={})


def _profile():
    return _settings().profiles[PROFILE]


def _script_defaults() -> dict[str, str]:
    """``NAME=${NAME:-default}`` of migrate.sh: what its variables are unless set."""
    return dict(_DEFAULT.findall(SCRIPT.read_text(encoding="utf-8")))


def _phases() -> list[str]:
    return _script_defaults()["PHASES"].split()


# --------------------------------------------------------------------------- the profile


def test_the_shipped_configuration_loads_with_the_migration_profile() -> None:
    settings = _settings()
    profile = settings.profiles[PROFILE]
    assert "default" in settings.profiles
    assert profile.reference is not None
    assert profile.reference.before == 1800.0
    assert {m.name for m in profile.metrics} == METRICS
    kinds = {m.name: m.kind for m in profile.metrics}
    assert kinds.pop("queries") == "ratio"
    assert set(kinds.values()) == {"distribution"}
    query = profile.metric("query_ms")
    assert query is not None
    assert query.tail_quantiles == (0.95, 0.99)
    assert all(m.direction == "increase" for m in profile.metrics if m.kind == "distribution")
    result = CliRunner().invoke(
        main, ["check", "--config", str(CONFIG)], env={"COALMINE_CONFIG": None}
    )
    assert result.exit_code == 0, result.output


def test_the_profile_on_the_page_is_the_shipped_one_and_loads_in_another_configuration(
    tmp_path: Path,
) -> None:
    (block,) = _blocks("toml")
    shipped = tomllib.loads(CONFIG.read_text(encoding="utf-8"))["profiles"][PROFILE]
    assert tomllib.loads(block) == {"profiles": {PROFILE: shipped}}
    # Pasted into the shipped example configuration, as a DBA would into the daemon's.
    example = (ROOT / "config" / "coalmine.toml").read_text(encoding="utf-8")
    path = tmp_path / "daemon.toml"
    path.write_text(example + "\n" + block, encoding="utf-8")
    assert load_settings(path, environ={}).profiles[PROFILE] == _profile()


# --------------------------------------------------------------------------- JSON examples


def _check_metric_events(block: str) -> set[str]:
    profile = _profile()
    names = set()
    for event in decode_metric_events(block.encode()):
        assert event.service == SERVICE
        # Untagged: a baseline from the past tells the cohorts apart by time.
        assert (event.cohort, event.version, event.deployment_id) == (None, None, None)
        spec = profile.metric(event.metric)
        assert spec is not None, f"{event.metric} is not in the profile"
        assert event.is_ratio == (spec.kind == "ratio"), event.metric
        names.add(event.metric)
    return names


def _check_started(block: str) -> None:
    event = decode_deploy_event(block.encode())
    assert (event.event, event.strategy, event.service) == ("started", "migration", SERVICE)
    assert (event.baseline_version, event.canary_version) == (None, None)
    assert event.phase in _phases()
    assert event.profile == PROFILE
    assert event.deployment_id == f"{SERVICE}-42-1-{event.phase}"


def _check_verdict(verdict: dict[str, Any]) -> None:
    profile = _profile()
    assert profile.reference is not None
    assert verdict["final"] is True
    assert verdict["decision"] in {"promote", "rollback", "inconclusive"}
    assert (verdict["profile"], verdict["strategy"]) == (PROFILE, "migration")
    assert verdict["traffic_weight"] is None
    assert verdict["config_digest"].startswith("sha256:")
    assert [m["metric"] for m in verdict["metrics"]] == [m.name for m in profile.metrics]
    reference = verdict["checks"]["reference"]
    assert reference["baseline"] == "past"
    start, end = parse_time(reference["window_start"]), parse_time(reference["window_end"])
    assert end - start == profile.reference.before
    assert reference["window_end"] == verdict["window"]["start"]
    look = int(verdict["verdict_id"].rpartition("/")[2])
    assert verdict["verdict_id"] == f"{verdict['deployment_id']}/{look}"
    assert parse_time(verdict["time"]) == end + look * profile.interval
    assert verdict["score"] < profile.marginal_score
    assert verdict["summary"].startswith(f"score {verdict['score']:.0f} < marginal")
    failed = [m for m in verdict["metrics"] if m["outcome"] == "fail"]
    assert [m["metric"] for m in failed] == ["replication_lag_s"]
    assert failed[0]["reason"] in verdict["summary"]


def test_every_json_example_fits_the_contract() -> None:
    blocks = _blocks("json")
    metrics, kinds = set(), []
    for block in blocks:
        value = json.loads(block)
        if isinstance(value, dict) and "event" in value:
            _check_started(block)
            kinds.append("started")
        elif isinstance(value, dict) and "verdict_id" in value:
            _check_verdict(value)
            kinds.append("verdict")
        else:
            metrics |= _check_metric_events(block)
            kinds.append("metric")
    assert metrics == METRICS  # an example for every metric of the profile
    assert kinds.count("metric") == len(METRICS)
    assert kinds.count("started") == kinds.count("verdict") == 1


# --------------------------------------------------------------------------- command lines


def _command_lines(text: str) -> list[str]:
    """The ``coalmine ...`` commands of shell text, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        line.strip().removeprefix("if ! ")
        for line in joined.splitlines()
        if re.match(r"\s*(if ! )?coalmine ", line)
    ]


def _arguments(line: str, values: dict[str, str]) -> list[str]:
    """A command line's words up to the first shell operator, variables expanded."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for token in lexer:
        if set(token) <= set("();<>|&"):
            break
        word = token
        for _ in range(3):  # defaults that name other variables ($here/coalmine.toml)
            word = _VARIABLE.sub(lambda m: values.get(m[1], m[0]), word)
        words.append(word)
    assert words[0] == "coalmine", line
    return words[1:]


def _check_command(args: list[str]) -> str:
    """Parse with the real command; check what a migration needs. The command's name."""
    command = main.commands[args[0]]
    params = command.make_context(args[0], args[1:]).params
    profile = _profile()
    if args[0] == "start":
        encode_deploy_event(
            "started",
            params["deployment_id"],
            params["service"],
            at=0.0,
            baseline=params["baseline"],
            canary=params["canary"],
            profile=params["profile"],
            traffic_weight=params["traffic_weight"],
            strategy=params["strategy"],
            phase=params["phase"],
        )
        assert (params["strategy"], params["profile"]) == ("migration", PROFILE)
        assert params["service"] == SERVICE
        assert params["phase"] in _phases()
    elif args[0] == "wait":
        assert parse_duration(params["timeout"]) > profile.max_duration
    elif args[0] == "finish":
        assert params["kind"] == "aborted"
    return args[0]


def test_every_coalmine_command_in_the_script_parses() -> None:
    values = {**_script_defaults(), "here": str(KIT)}
    values |= {"phase": "expand", "deployment": f"{SERVICE}-42-1-expand"}
    lines = _command_lines(SCRIPT.read_text(encoding="utf-8"))
    commands = [_check_command(_arguments(line, values)) for line in lines]
    assert sorted(commands) == ["finish", "start", "wait"]
    assert values["PROFILE"] == PROFILE
    assert values["SERVICE"] == SERVICE


def test_every_coalmine_command_on_the_page_parses() -> None:
    lines = [line for block in _blocks("sh") for line in _command_lines(block)]
    commands = [_check_command(_arguments(line, {})) for line in lines]
    assert {"start", "wait", "check", "replay"} <= set(commands)


def test_the_phases_agree_everywhere() -> None:
    phases = _phases()
    assert phases == ["expand", "backfill", "contract"]
    sql = KIT / "sql"
    assert sorted(p.name.split(".")[0] for p in sql.glob("*.up.sql")) == sorted(phases)
    assert {p.name.split(".")[0] for p in sql.glob("*.down.sql")} <= set(phases)
    page = "\n".join(_blocks("sh"))
    runs = re.findall(r"migrate\.sh --(?:from|to) (\S+)", page)
    assert runs
    assert set(runs) <= set(phases)
    (workflow,) = load_yaml(KIT / "github-actions.yml")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    for name in ("from", "to"):
        assert inputs[name]["options"] == phases
        assert inputs[name]["default"] in phases
    steps = workflow["jobs"]["migrate"]["steps"]
    (run,) = [s["run"] for s in steps if "migrate.sh" in s.get("run", "")]
    assert run.startswith("deploy/migration/migrate.sh ")
    assert "${{ inputs.from }}" in run
    assert "${{ inputs.to }}" in run


def test_the_script_is_valid_bash_and_executable() -> None:
    result = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert os.access(SCRIPT, os.X_OK)


# --------------------------------------------------------------------------- the script run

_STUB = """\
#!{python}
# A stand-in for coalmine: parses its arguments with the real command, logs them, and
# answers `wait` with the decision STUB_DECISIONS names for the phase.
import json, os, sys, time
sys.path.insert(0, {root!r})
from coalmine.cli import main
args = sys.argv[1:]
params = main.commands[args[0]].make_context(args[0], args[1:]).params
with open(os.environ["STUB_LOG"], "a", encoding="utf-8") as log:
    log.write(json.dumps(args) + "\\n")
if args[0] == "wait":
    deployment = params["deployment_id"]
    decision = json.loads(os.environ["STUB_DECISIONS"]).get(deployment.rsplit("-", 1)[1])
    time.sleep(float(os.environ["STUB_DELAY"]))
    codes = {{None: 0, "promote": 0, "rollback": 1, "inconclusive": 3, "timeout": 4}}
    if decision != "timeout":
        print(json.dumps({{"deployment_id": deployment, "decision": decision or "promote",
                          "summary": "stand-in", "checks": {{}}}}))
    sys.exit(codes[decision])
"""

_UP = (
    'echo "up $PHASE $DEPLOYMENT_ID" >> "$HOOK_LOG";'
    ' if [ "$PHASE" = "$SLOW_PHASE" ]; then sleep 30; fi;'
    ' if [ "$PHASE" = "$FAIL_PHASE" ]; then exit 7; fi'
)


def _run_script(
    tmp_path: Path, *args: str, decisions: dict[str, str], delay: float = 0.0, **env: str
) -> tuple[int, list[list[str]], list[str], float]:
    """Run migrate.sh with the stand-in; its exit, coalmine calls, step calls, seconds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "coalmine"
    stub.write_text(_STUB.format(python=sys.executable, root=str(ROOT)), encoding="utf-8")
    stub.chmod(0o755)
    stub_log, hook_log = tmp_path / "coalmine.log", tmp_path / "steps.log"
    environ = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "STUB_LOG": str(stub_log),
        "STUB_DECISIONS": json.dumps(decisions),
        "STUB_DELAY": str(delay),
        "HOOK_LOG": str(hook_log),
        "MIGRATE_UP": _UP,
        "MIGRATE_DOWN": 'echo "down $PHASE" >> "$HOOK_LOG"',
        "MIGRATE_STOP": 'echo "stop $PHASE" >> "$HOOK_LOG"',
        "SLOW_PHASE": "",
        "FAIL_PHASE": "",
        "RUN_ID": "42-1",
        "VERDICT_DIR": str(tmp_path / "verdicts"),
        "POLL_SECONDS": "0.05",
        "STOP_GRACE": "1",
        **env,
    }
    began = time.monotonic()
    result = subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    took = time.monotonic() - began
    calls = [json.loads(line) for line in stub_log.read_text().splitlines()]
    steps = hook_log.read_text().splitlines() if hook_log.exists() else []
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, calls, steps, took


def _said(calls: list[list[str]]) -> list[tuple[str, str]]:
    """Each coalmine call as (command, phase)."""
    return [(args[0], args[args.index("--deployment") + 1].rsplit("-", 1)[1]) for args in calls]


def test_the_script_promotes_phase_after_phase(tmp_path: Path) -> None:
    code, calls, steps, _ = _run_script(tmp_path, decisions={})
    assert code == 0
    assert _said(calls) == [(c, p) for p in _phases() for c in ("start", "wait")]
    assert steps == [f"up {p} {SERVICE}-42-1-{p}" for p in _phases()]
    assert sorted(p.name for p in (tmp_path / "verdicts").iterdir()) == sorted(
        f"{SERVICE}-42-1-{p}.json" for p in _phases()
    )


def test_a_rollback_stops_the_running_up_migration_and_runs_the_down_migration(
    tmp_path: Path,
) -> None:
    code, calls, steps, took = _run_script(
        tmp_path, decisions={"backfill": "rollback"}, delay=0.5, SLOW_PHASE="backfill"
    )
    assert code == 1
    assert _said(calls) == [
        ("start", "expand"),
        ("wait", "expand"),
        ("start", "backfill"),
        ("wait", "backfill"),
    ]
    assert [s.split()[:2] for s in steps] == [
        ["up", "expand"],
        ["up", "backfill"],
        ["stop", "backfill"],
        ["down", "backfill"],
    ]
    assert took < 25  # the 30-second backfill was stopped, not waited for


def test_a_failed_up_migration_ends_the_analysis_without_waiting(tmp_path: Path) -> None:
    code, calls, steps, took = _run_script(tmp_path, decisions={}, delay=30, FAIL_PHASE="expand")
    assert code == 5
    said = _said(calls)  # the wait may be ended before the stand-in logs it
    assert (said[0], said[-1]) == (("start", "expand"), ("finish", "expand"))
    assert set(said) <= {("start", "expand"), ("wait", "expand"), ("finish", "expand")}
    assert calls[-1][-2:] == ["--event", "aborted"]
    assert steps == [f"up expand {SERVICE}-42-1-expand"]
    assert took < 25  # the 30-second wait was ended, not waited out


@pytest.mark.parametrize(
    ("decision", "exit_code", "aborted"), [("inconclusive", 3, False), ("timeout", 4, True)]
)
def test_no_promote_stops_and_leaves_the_schema(
    tmp_path: Path, decision: str, exit_code: int, aborted: bool
) -> None:
    code, calls, steps, _ = _run_script(
        tmp_path, "--from", "backfill", "--to", "backfill", decisions={"backfill": decision}
    )
    assert code == exit_code
    expected = [("start", "backfill"), ("wait", "backfill")]
    assert _said(calls) == expected + ([("finish", "backfill")] if aborted else [])
    assert steps == [f"up backfill {SERVICE}-42-1-backfill"]  # no down-migration


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    for args in (["--from", "nope"], ["--from", "contract", "--to", "expand"], ["x"]):
        result = subprocess.run(
            ["bash", str(SCRIPT), *args],
            env={"PATH": os.environ["PATH"], "DATABASE_URL": "postgresql:///x"},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            check=False,
        )
        assert result.returncode == 2, (args, result.stderr)


# --------------------------------------------------------------------------- the decisions

T0 = parse_time("2026-11-26T10:00:00Z")


def _recording(path: Path, *, lag_factor: float, seed: int = 1) -> None:
    """40 minutes of the exporter's events before a backfill and 20 after, every 10 s."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(-240, 120):
        at = T0 + 10 * k
        if k == 0:
            started = {
                "event": "started",
                "deployment_id": f"{SERVICE}-42-1-backfill",
                "service": SERVICE,
                "time": format_time(T0),
                "strategy": "migration",
                "phase": "backfill",
                "profile": PROFILE,
            }
            lines.append(started)
        factor = lag_factor if at >= T0 else 1.0
        total = int(rng.poisson(5000))
        bad = int(rng.binomial(total, 0.0002))
        head = {"service": SERVICE, "time": format_time(at)}
        lines.append(
            [
                {
                    **head,
                    "metric": "query_ms",
                    "values": rng.lognormal(np.log(4), 0.5, 50).tolist(),
                },
                {**head, "metric": "queries", "good": total - bad, "total": total},
                *(
                    {
                        **head,
                        "metric": "replication_lag_s",
                        "instance": replica,
                        "value": float(rng.lognormal(np.log(0.3), 0.4)) * factor,
                    }
                    for replica in ("orders-db-2", "orders-db-3")
                ),
                {**head, "metric": "lock_waits", "values": rng.poisson(0.3, 10).tolist()},
            ]
        )
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")


def _final_verdict(recording: Path) -> dict[str, Any]:
    result = CliRunner().invoke(
        main,
        ["replay", "--config", str(CONFIG), "--input", str(recording), "--json"],
        env={"COALMINE_CONFIG": None},
    )
    assert result.exit_code == 0, result.output
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    (final,) = [v for v in verdicts if v["final"]]
    assert final["checks"]["reference"] == {
        "baseline": "past",
        "window_start": "2026-11-26T09:30:00Z",
        "window_end": "2026-11-26T10:00:00Z",
    }
    return final


def test_the_profile_promotes_a_healthy_phase_after_min_duration(tmp_path: Path) -> None:
    path = tmp_path / "healthy.jsonl"
    _recording(path, lag_factor=1.0)
    final = _final_verdict(path)
    profile = _profile()
    assert final["decision"] == "promote", final["summary"]
    after = parse_time(final["time"]) - T0
    assert profile.min_duration <= after <= profile.min_duration + 300
    assert all(m["outcome"] == "pass" and m["measured"] for m in final["metrics"])


def test_the_profile_rolls_back_a_phase_that_triples_replication_lag(tmp_path: Path) -> None:
    path = tmp_path / "lag.jsonl"
    _recording(path, lag_factor=3.0)
    final = _final_verdict(path)
    assert final["decision"] == "rollback", final["summary"]
    assert "replication_lag_s" in final["summary"]
    assert parse_time(final["time"]) - T0 <= 180
