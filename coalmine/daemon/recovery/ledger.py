"""What is already on the verdict topic, so a rebuilt deployment does not say it twice.

After a restart or a rebalance the daemon rebuilds open deployments by re-reading their
events; the analysis is deterministic, so it re-makes the judgements it made before, with
the same ids and content. The ledger, read from the verdict topic before any input is
handled, lets the router publish only what is new:

- a judgement whose look is not beyond the last one published for its deployment is not
  published again;
- a deployment with a final verdict on the topic never gets another verdict, even if its
  rebuilt analysis would end differently (a final made by wall-clock expiry cannot be
  re-made from the log); its rebuilt analysis is closed once its event time passes the
  time of that final verdict.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from coalmine._exceptions import ContractError
from coalmine.contract import look_of, parse_time

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.contract import Verdict

__all__ = ["VerdictLedger"]

_MAX_ENTRIES = 200_000
"""Deployments remembered; the oldest are forgotten first (far beyond any recovery window)."""


@dataclass(slots=True)
class _Entry:
    look: int = 0
    final_time: float | None = None
    final_id: str | None = None


class VerdictLedger:
    """Per deployment: the last look published, and the final verdict if there is one."""

    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, values: Iterable[bytes]) -> int:
        """Take verdicts as read from the verdict topic; return how many were understood.

        Anything that is not a verdict coalmine wrote (or a record of another version
        lacking the fields used here) is skipped: the ledger is an optimisation and a
        safeguard, never a reason to stop.
        """
        understood = 0
        for value in values:
            try:
                obj = orjson.loads(value)
                dep_id = obj["deployment_id"]
                verdict_id = obj["verdict_id"]
                final = obj.get("final") is True
                time = obj.get("time")
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if not isinstance(dep_id, str) or not isinstance(verdict_id, str):
                continue
            look = look_of(verdict_id)
            if look is None:
                continue
            self.record(dep_id, verdict_id, look, final=final, time=_seconds(time))
            understood += 1
        return understood

    def record(
        self, deployment_id: str, verdict_id: str, look: int, *, final: bool, time: float | None
    ) -> None:
        """Note one published verdict."""
        entry = self._entries.get(deployment_id)
        if entry is None:
            entry = self._entries[deployment_id] = _Entry()
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        entry.look = max(entry.look, look)
        if final and entry.final_id is None:
            entry.final_id = verdict_id
            entry.final_time = time if time is not None else float("-inf")

    def already_published(self, verdict: Verdict) -> bool:
        """True if ``verdict`` (or a final for its deployment) is already on the topic."""
        entry = self._entries.get(verdict.deployment_id)
        if entry is None:
            return False
        if entry.final_id is not None:
            return True
        look = look_of(verdict.verdict_id)
        return look is not None and look <= entry.look

    def final_time(self, deployment_id: str) -> float | None:
        """Event time of the deployment's published final verdict, if it has one."""
        entry = self._entries.get(deployment_id)
        return None if entry is None else entry.final_time

    def forget(self, deployment_id: str) -> None:
        """Drop what is known of a deployment (its analysis is over here)."""
        self._entries.pop(deployment_id, None)


def _seconds(value: object) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ContractError:
        return None
