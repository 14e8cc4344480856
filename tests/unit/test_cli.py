import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from coalmine.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("example", sorted((ROOT / "config").glob("*.toml")), ids=lambda p: p.name)
def test_check_accepts_every_shipped_example(example):
    result = CliRunner().invoke(
        main, ["check", "--config", str(example)], env={"COALMINE_CONFIG": None}
    )
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "default" in result.output


def test_check_lists_every_problem_and_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        """
[kafka]
bootstrap_server = "typo:9092"

[profiles.default]
interval = "5 minutes"

[[profiles.default.metrics]]
name = "requests"
kind = "ratio"
"""
    )
    result = CliRunner().invoke(
        main, ["check", "--config", str(config)], env={"COALMINE_CONFIG": None}
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith(str(config))]
    assert len(lines) == 3, result.output
    text = "\n".join(lines)
    assert "kafka.bootstrap_server" in text
    assert "profiles.default.interval" in text
    assert "objective" in text


def test_check_reports_a_missing_file_with_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["check", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2


def test_help_lists_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "coalmine", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run", "demo", "check"):
        assert command in result.stdout


def test_the_kafka_clients_repeated_lines_are_let_through_once_a_minute() -> None:
    """aiokafka logs each failed reconnection; the log gets one line a kind a minute."""
    from coalmine.bus.kafka.logs import ClientRepeats  # noqa: PLC0415

    repeats = ClientRepeats(window=60.0)

    def line(name: str, msg: str, args: tuple[object, ...], at: float) -> logging.LogRecord:
        record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)
        record.created = at
        return record

    refused = "Unable connect to node with id %s: %s"
    passed = [
        repeats.filter(line("aiokafka.conn", refused, (1, "refused"), 1000.0 + i / 10))
        for i in range(300)
    ]
    assert passed == [True] + [False] * 299  # 30 s of 100 ms retries: one line
    other_node = line("aiokafka.conn", refused, (2, "refused"), 1010.0)
    assert repeats.filter(other_node)  # another node is another kind
    later = line("aiokafka.conn", refused, (1, "refused"), 1061.0)
    assert repeats.filter(later)
    assert later.getMessage() == (
        "Unable connect to node with id 1: refused (299 more like it in 60s)"
    )
    ours = [line("coalmine.daemon.app", "fetch failed", (), 1000.0) for _ in range(3)]
    assert all(repeats.filter(record) for record in ours)  # coalmine's own lines untouched
