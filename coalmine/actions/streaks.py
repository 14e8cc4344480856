"""Failure streaks: one log line when an action starts failing, one when it recovers."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coalmine.actions.delivery import ActionOutcome

_log = logging.getLogger("coalmine.actions")


class FailureStreaks:
    """Logs an action's first failure, then nothing until it delivers again, then that.

    A receiver that is down for an hour costs two lines, not one per verdict. The lines
    name the action, its kind, the verdict and the reason, never its URL or a token.
    """

    def __init__(self, logger: logging.Logger = _log) -> None:
        self._log = logger
        self._failures: dict[str, int] = {}

    def note(self, outcome: ActionOutcome) -> None:
        """Take an outcome into account, logging when a streak starts or ends."""
        name = outcome.action
        if outcome.outcome == "failed":
            count = self._failures.get(name, 0)
            self._failures[name] = count + 1
            if count == 0:
                self._log.warning(
                    "action %s (%s) failed for verdict %s after %d attempt(s): %s;"
                    " its next failures are not logged until it succeeds again",
                    name,
                    outcome.kind,
                    outcome.verdict_id,
                    outcome.attempts,
                    outcome.error,
                )
        elif outcome.outcome in {"delivered", "retried"} and name in self._failures:
            count = self._failures.pop(name)
            self._log.info(
                "action %s (%s) succeeded again with verdict %s, after %d failed verdict(s)",
                name,
                outcome.kind,
                outcome.verdict_id,
                count,
            )

    def failing(self, action: str) -> int:
        """How many verdicts in a row ``action`` failed (0: it is not failing)."""
        return self._failures.get(action, 0)
