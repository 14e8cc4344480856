"""`coalmine start --time` and `coalmine finish --time`: the deploy event's own time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from click.testing import CliRunner

from coalmine import cli
from coalmine.contract import decode_deploy_event

if TYPE_CHECKING:
    import pytest

START = ["start", "--deployment", "d1", "--service", "s", "--baseline", "v1", "--canary", "v2"]


def published(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[int, list[Any], str]:
    sent: list[Any] = []

    def announce(_settings: object, value: bytes, _service: str) -> str:
        sent.append(orjson.loads(value))
        return "the test"

    monkeypatch.setattr(cli, "_announce", announce)
    result = CliRunner().invoke(cli.main, args)
    return result.exit_code, sent, result.output


def test_start_and_finish_take_the_events_time(monkeypatch: pytest.MonkeyPatch) -> None:
    code, sent, _ = published(monkeypatch, [*START, "--time", "2026-11-26T10:00:00+01:00"])
    assert code == 0
    assert sent[0]["time"] == "2026-11-26T09:00:00Z"
    assert decode_deploy_event(orjson.dumps(sent[0])).time == 1_795_683_600.0
    finish = ["finish", "--deployment", "d1", "--service", "s", "--event", "completed"]
    code, sent, _ = published(monkeypatch, [*finish, "--time", "1795690800"])
    assert code == 0
    assert sent[0]["time"] == "2026-11-26T11:00:00Z"


def test_a_bad_time_is_a_usage_error_that_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    code, sent, output = published(monkeypatch, [*START, "--time", "2026-11-26 10:00"])
    assert code == 2
    assert sent == []
    assert "--time" in output
    assert "needs a UTC offset or 'Z'" in output
