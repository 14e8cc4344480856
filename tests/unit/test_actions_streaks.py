from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coalmine.actions.delivery import ActionOutcome, Outcome
from coalmine.actions.streaks import FailureStreaks

if TYPE_CHECKING:
    import pytest


def outcome(kind: Outcome, index: int, action: str = "hook") -> ActionOutcome:
    error = "cannot connect (Connection refused)" if kind == "failed" else None
    return ActionOutcome(action, "webhook", f"d/{index}", "d", kind, 1, None, error)


def test_one_line_when_a_streak_starts_and_one_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streaks = FailureStreaks()
    with caplog.at_level(logging.INFO, logger="coalmine.actions"):
        streaks.note(outcome("delivered", 0))
        for index in range(1, 6):
            streaks.note(outcome("failed", index))
        assert streaks.failing("hook") == 5
        streaks.note(outcome("dry_run", 6))
        streaks.note(outcome("retried", 7))
        streaks.note(outcome("failed", 8))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[0].startswith("action hook (webhook) failed for verdict d/1 after 1 attempt")
    assert "cannot connect (Connection refused)" in messages[0]
    assert messages[1] == (
        "action hook (webhook) succeeded again with verdict d/7, after 5 failed verdict(s)"
    )
    assert "verdict d/8" in messages[2]
    assert caplog.records[0].levelno == logging.WARNING


def test_streaks_are_per_action(caplog: pytest.LogCaptureFixture) -> None:
    streaks = FailureStreaks()
    with caplog.at_level(logging.INFO, logger="coalmine.actions"):
        streaks.note(outcome("failed", 1, "a"))
        streaks.note(outcome("failed", 1, "b"))
        streaks.note(outcome("failed", 2, "a"))
    assert len(caplog.records) == 2
    assert (streaks.failing("a"), streaks.failing("b"), streaks.failing("c")) == (2, 1, 0)
