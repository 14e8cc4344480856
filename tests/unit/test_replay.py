"""`coalmine replay`: a recorded stream judged offline, exactly as the daemon would."""

import io
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from coalmine.bus.base import Record
from coalmine.cli import main
from coalmine.config.models import TopicsSettings
from coalmine.config.settings import Settings, load_settings
from coalmine.contract import encode_verdict
from coalmine.daemon.router import Router
from coalmine.tools.recording import encode_envelope
from coalmine.tools.replay import (
    Problems,
    _LineParser,
    compare,
    read_jsonl,
    replay_file,
    report_data,
    run,
)
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import EXPECTED, PROFILE, T0

TOPICS = TopicsSettings()
SETTINGS = Settings(profiles={"default": PROFILE})

CONFIG = """
[profiles.default]
interval = "60s"
min_duration = "5m"
max_duration = "15m"

[[profiles.default.metrics]]
name = "latency_ms"
kind = "distribution"
allowed_change = {latency}

[[profiles.default.metrics]]
name = "requests"
kind = "ratio"
objective = 0.999
critical = true
"""


def messages():
    return list(simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3))


def native_lines() -> bytes:
    return b"".join(m.value + b"\n" for m in messages())


def records() -> list[Record]:
    return [
        Record(
            TOPICS.deployments if m.topic == "deployments" else TOPICS.metrics,
            m.value,
            m.key,
            partition=0,
            offset=i,
            timestamp_ms=int(m.time * 1000),
        )
        for i, m in enumerate(messages())
    ]


def judged_by_router(batch: int = 500, settings: Settings = SETTINGS) -> list[bytes]:
    """The verdicts the daemon's router gives the stream, fed in batches."""
    router = Router(settings.profiles, TOPICS)
    stream = records()
    out = []
    for start in range(0, len(stream), batch):
        out += [
            encode_verdict(v) for v in router.handle(stream[start : start + batch], 0.0).verdicts
        ]
    return out


def replayed(data: bytes, settings: Settings = SETTINGS, **kwargs):
    verdicts = []
    result = replay_file(settings, io.BytesIO(data), on_verdict=verdicts.append, **kwargs)
    return result, verdicts


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "coalmine.toml"
    path.write_text(CONFIG.format(latency=0.10))
    return path


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "stream.jsonl"
    path.write_bytes(native_lines())
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), env={"COALMINE_CONFIG": None})


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_replay_gives_the_verdicts_the_router_gives(chunk_size):
    expected = judged_by_router()
    result, verdicts = replayed(native_lines(), chunk_size=chunk_size)
    # Byte for byte the JSON the daemon publishes: same ids, decisions, numbers.
    assert [encode_verdict(v) for v in verdicts] == expected
    assert result.finals() == EXPECTED
    assert result.verdicts == len(expected)
    assert result.records == len(messages())
    assert not result.invalid
    by_id = result.outcomes
    assert by_id["checkout-v42"].service == "checkout"
    assert by_id["checkout-v42"].verdict_id == "checkout-v42/7"
    assert by_id["checkout-v42"].time_to_decision == 420.0
    assert by_id["payments-v3"].started == T0


def test_envelopes_replay_like_native_lines_headers_and_all():
    # Deploy events as binary-mode CloudEvents: only the envelope can carry their headers.
    lines = []
    for index, original in enumerate(records()):
        record = original
        if original.topic == TOPICS.deployments:
            record = Record(
                original.topic,
                original.value,
                original.key,
                (
                    ("ce_specversion", b"1.0"),
                    ("ce_id", f"event-{index}".encode()),
                    ("ce_source", b"/ci/pipeline"),
                    ("ce_type", b"com.example.deploy.started"),
                    ("content-type", b"application/json"),
                ),
                partition=original.partition,
                offset=original.offset,
                timestamp_ms=original.timestamp_ms,
            )
        lines.append(encode_envelope(record, {TOPICS.deployments: "deployments"}) + b"\n")
    data = b"".join(lines)
    assert b'"ce_id"' in data
    assert b'"topic":"deployments"' in data
    assert b'"topic":"coalmine.metrics"' in data  # the configured name is fine too
    _, verdicts = replayed(data)
    assert [encode_verdict(v) for v in verdicts] == judged_by_router()


def test_an_envelope_round_trips_every_byte():
    parser = _LineParser(TOPICS, ["otlp_metrics"])
    originals = [
        Record(TOPICS.metrics, b'{"a":1}', b"checkout", (("h", b"v"),), 2, 17, 1_700_000_000_000),
        Record(TOPICS.metrics, b'{ "spaced" : 1 }', None, (), 0, 3, None),
        Record(TOPICS.deployments, b"\xff\xfe not utf-8", b"\xff", (("bin", b"\xff"),), 1, 4, 5),
        Record("otlp_metrics", b'"a json string"', b"svc", (), 0, 9, 10),
        Record(TOPICS.metrics, b"", b"tombstone", (), 0, 11, 12),
    ]
    names = {TOPICS.deployments: "deployments", TOPICS.metrics: "metrics"}
    for original in originals:
        line = encode_envelope(original, names)
        assert b"\n" not in line
        entry = parser.parse(line, 99)
        assert entry is not None
        assert entry.record == original, line
        assert entry.deploy == (original.topic == TOPICS.deployments)


def test_invalid_lines_are_counted_and_never_fatal():
    bad = [
        b"{not json",
        (
            b'{"service":"search","cohort":"canary","metric":"requests","time":1800000100,'
            b'"good":5,"total":2}'
        ),
        b'{"topic":"nowhere","value":{}}',
        b'{"topic":"metrics","value_b64":"%%%"}',
        b"[]",
    ]
    lines = native_lines().splitlines()
    data = b"\n".join(lines[:50] + bad + lines[50:] + [b"", b"# a comment"]) + b"\n"
    result, _ = replayed(data)
    assert result.finals() == EXPECTED
    assert result.invalid == {
        "invalid_json": 1,
        "good_exceeds_total": 1,
        "unknown_topic": 1,
        "bad_envelope": 1,
        "empty_batch": 1,
    }
    assert any(example.startswith("line 52: good_exceeds_total") for example in result.examples)
    assert any(example.startswith("line 51: invalid_json") for example in result.examples)


def test_deployments_without_a_final_verdict_are_open_or_ended_by_the_pipeline():
    stream = [m for m in messages() if m.time <= T0 + 150]  # before any final verdict
    ended = orjson.dumps(
        {
            "event": "aborted",
            "deployment_id": "checkout-v42",
            "service": "checkout",
            "time": T0 + 100,
        }
    )
    data = b"".join(m.value + b"\n" for m in stream) + ended + b"\n"
    result, _ = replayed(data)
    decisions = {o.deployment_id: o.decision for o in result.outcomes.values()}
    assert decisions == {"checkout-v42": "aborted", "search-v7": "rollback", "payments-v3": "open"}
    assert result.outcomes["payments-v3"].verdict_id == "payments-v3/2"  # latest interim one


def test_compare_finds_the_deployments_two_profiles_decide_differently():
    loose = Settings(
        profiles={
            "default": PROFILE.model_copy(
                update={
                    "metrics": (
                        PROFILE.metrics[0].model_copy(update={"allowed_change": 1.0}),
                        PROFILE.metrics[1],
                    )
                }
            )
        }
    )
    entries = read_jsonl(io.BytesIO(native_lines()), TOPICS)
    both = run(entries, SETTINGS, other=loose)
    assert both.second is not None
    differences = {d.deployment_id: d for d in compare(both.first, both.second)}
    # +50% latency is beyond a 10% tolerance but within 100%.
    search = differences["search-v7"]
    assert search.kind == "decision"
    assert (search.first.decision, search.second.decision) == ("rollback", "promote")
    assert "payments-v3" not in differences  # the critical error burst decides both


def test_cli_replay_prints_a_table_of_decisions(config, recording):
    # Wide enough for every column (test_replay_table.py: narrower ones).
    result = CliRunner().invoke(
        main,
        ["replay", "--config", str(config), "--input", str(recording)],
        env={"COALMINE_CONFIG": None, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for deployment, decision in EXPECTED.items():
        row = next(line for line in result.output.splitlines() if deployment in line)
        assert decision in row
    assert "checkout-v42/7" in result.output
    assert "3 deployments" in result.output
    assert "no invalid input" in result.output


def test_cli_replay_json_prints_each_verdict_as_published(config, recording):
    result = invoke("replay", "--config", str(config), "--input", str(recording), "--json")
    assert result.exit_code == 0, result.output
    lines = [line.encode() for line in result.stdout.splitlines() if line]
    assert lines == judged_by_router(settings=load_settings(config, environ={}))
    assert "replay: 3 deployments" in result.stderr


def test_cli_replay_compare_counts_the_differences(config, recording, tmp_path):
    other = tmp_path / "loose.toml"
    other.write_text(CONFIG.format(latency=1.0))
    result = invoke(
        "replay", "--config", str(config), "--input", str(recording), "--compare", str(other)
    )
    assert result.exit_code == 0, result.output
    assert "decided differently" in result.output
    assert "(1 by decision" in result.output
    as_json = invoke(
        "replay",
        "--config",
        str(config),
        "--input",
        str(recording),
        "--compare",
        str(other),
        "--json",
    )
    assert as_json.exit_code == 0, as_json.output
    rows = [orjson.loads(line) for line in as_json.stdout.splitlines() if line]
    search = next(row for row in rows if row["deployment_id"] == "search-v7")
    assert search["difference"] == "decision"
    assert search["config"]["decision"] == "rollback"
    assert search["compare"]["decision"] == "promote"


def test_cli_replay_reads_standard_input(config):
    result = CliRunner().invoke(
        main,
        ["replay", "--config", str(config), "--input", "-", "--json"],
        input=native_lines(),
        env={"COALMINE_CONFIG": None},
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == len(judged_by_router())
    assert result.stdout.encode().splitlines() == judged_by_router(
        settings=load_settings(config, environ={})
    )


@pytest.mark.parametrize(
    "args",
    [
        [],  # neither --input nor --from-kafka
        ["--input", "{recording}", "--from-kafka", "--since", "1h"],
        ["--from-kafka"],  # no --since
        ["--input", "{recording}", "--since", "1h"],
        ["--input", "{missing}"],
        ["--input", "{recording}", "--compare", "{bad}"],
        ["--input", "{recording}", "--from-kafka", "--since", "yesterday"],
    ],
)
def test_cli_replay_usage_and_config_errors_exit_2(args, config, recording, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[profiles.default]\ninterval = 'soon'\n")
    paths = {"recording": recording, "missing": tmp_path / "nope.jsonl", "bad": bad}
    args = [a.format(**paths) for a in args]
    result = invoke("replay", "--config", str(config), *args)
    assert result.exit_code == 2, result.output


def test_cli_replay_with_a_bad_config_exits_2(recording, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[kafka]\nbootstrap_server = 'typo'\n")
    result = invoke("replay", "--config", str(bad), "--input", str(recording))
    assert result.exit_code == 2
    assert "bootstrap_server" in result.output


def test_report_data_collects_the_deployments_verdicts_and_samples():
    entries = read_jsonl(io.BytesIO(native_lines()), TOPICS)
    verdicts, samples, info = report_data(SETTINGS, entries, "search-v7")
    assert [v["verdict_id"] for v in verdicts] == ["search-v7/1"]
    assert verdicts[-1]["final"]
    assert info is not None
    assert info.service == "search"
    baseline, canary = samples["latency_ms"]
    assert baseline
    assert canary
    # Only samples up to the final verdict (one minute of event time, ~20 a message).
    assert len(canary) < 400
    assert "requests" not in samples  # a ratio metric has no samples


def test_problems_keep_the_first_examples_only():
    problems = Problems()
    for line in range(30):
        problems.add("invalid_json", f"line {line}", "nope")
    assert problems.counts["invalid_json"] == 30
    assert len(problems.examples) == 10
