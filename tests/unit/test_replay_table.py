"""How `coalmine replay` shows a replay: tables that fit the terminal, or 100 columns piped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from coalmine.cli import main
from coalmine.tools.replay_table import PIPED_WIDTH, span
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import EXPECTED, T0

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

SUMMARIES = ("all metrics within tolerance", "score 50 < marginal 75", "critical: requests")
"""The start of each deployment's summary (the why of its decision)."""


@pytest.fixture
def paths(tmp_path: Path) -> list[str]:
    """``--config``, ``--input`` and ``--compare`` with a looser profile."""
    config, loose = tmp_path / "coalmine.toml", tmp_path / "loose.toml"
    config.write_text(CONFIG.format(latency=0.10))
    loose.write_text(CONFIG.format(latency=1.0))
    recording = tmp_path / "stream.jsonl"
    stream = simulate(three_deployments(), start=T0, duration=900.0, step=10.0, seed=3)
    recording.write_bytes(b"".join(m.value + b"\n" for m in stream))
    return ["--config", str(config), "--input", str(recording), "--compare", str(loose)]


def assert_fits(output: str, width: int) -> None:
    """Every line within ``width``; each deployment's decision on its row; the summaries."""
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= width, output
    table = output[: output.index("3 deployments")]
    for deployment, decision in EXPECTED.items():
        row = next(line for line in lines if f"│ {deployment} " in line)
        assert f"│ {decision} " in row, output
    flat = " ".join(table.replace("│", " ").split())
    for summary in SUMMARIES:
        assert summary in flat, output
    assert "2 of 3 deployments decided differently" in output


def test_piped_output_fits_100_columns_and_shows_every_decision(paths):
    env = {k: v for k, v in os.environ.items() if k != "COALMINE_CONFIG"}
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "coalmine", "replay", *paths],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert PIPED_WIDTH == 100
    assert_fits(result.stdout, PIPED_WIDTH)
    assert max(len(line) for line in result.stdout.splitlines()) == PIPED_WIDTH


@pytest.mark.parametrize("width", [60, 80, 100, 120, 200])
def test_the_table_fits_the_columns_given_and_leaves_out_the_least_needed(paths, width):
    env = {"COALMINE_CONFIG": None, "COLUMNS": str(width)}
    result = CliRunner().invoke(main, ["replay", *paths], env=env)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout, width)
    header = next(line for line in result.stdout.splitlines() if "deployment" in line)
    shown = {name for name in ("service", "final verdict", "time to decision") if name in header}
    expected = {
        60: set(),
        80: set(),
        100: {"time to decision"},
        120: {"service", "final verdict", "time to decision"},
        200: {"service", "final verdict", "time to decision"},
    }
    assert shown == expected[width]
    if "final verdict" in shown:
        assert "checkout-v42/7" in result.stdout


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0.0, "0s"), (59.6, "1m"), (270.0, "4m30s"), (3720.0, "1h2m"), (3601, "1h1s")],
)
def test_span_writes_durations_the_way_people_do(seconds, text):
    assert span(seconds) == text
