"""Which actions a verdict triggers: each action's ``on`` filter against the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coalmine.actions.verdicts import VerdictLike, verdict_fields

if TYPE_CHECKING:
    from collections.abc import Iterable

    from coalmine.config.actions import ActionSpec, OnFilter


def passes(on: OnFilter, verdict: VerdictLike) -> bool:
    """Whether ``verdict`` passes the filter ``on``: decision, finality, service, profile."""
    fields = verdict_fields(verdict)
    if fields.get("decision") not in on.decisions:
        return False
    if on.final_only and fields.get("final") is not True:
        return False
    if on.services is not None and fields.get("service") not in on.services:
        return False
    return on.profiles is None or fields.get("profile", "default") in on.profiles


def triggered(actions: Iterable[ActionSpec], verdict: VerdictLike) -> list[ActionSpec]:
    """The actions ``verdict`` triggers, in configuration order."""
    fields = verdict_fields(verdict)
    return [action for action in actions if passes(action.on, fields)]
