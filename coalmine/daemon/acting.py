"""The daemon's ``[[actions]]``: verdicts acknowledged on the bus, handed to what they trigger.

A verdict is acted on only once the broker has acknowledged it (the pipeline may act on it
from then on too), in background tasks: judging never waits for a receiver. A deployment
rebuilt from the log after a crash makes its verdicts again; those already published are
not published twice, but they are acted on again, with the same idempotency key (the
verdict id): the crash may have come between the publication and the delivery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coalmine.actions import Deliveries, FlagTarget, Sender

if TYPE_CHECKING:
    from collections.abc import Mapping

    from coalmine.config.settings import Settings
    from coalmine.contract import Verdict
    from coalmine.daemon.effects import Effects
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["Acting", "flag_target"]

DRAIN_WITHIN = 10.0
"""Seconds a stopping daemon gives the actions still queued."""


class Acting:
    """The actions of one daemon: started with it, fed acknowledged verdicts, drained."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        sender = Sender(public_url=settings.http.public_url, flag_target=flag_target)
        self.deliveries = Deliveries(
            settings.actions, sender, telemetry=telemetry, on_done=self._delivered
        )
        self._holds: dict[str, tuple[int, Mapping[tuple[str, int], int]]] = {}
        """Per verdict with deliveries running: how many, and where a restart would have
        to read from to make it again."""

    @classmethod
    def of(cls, settings: Settings, telemetry: Telemetry) -> Acting | None:
        """The daemon's actions; None when the configuration has none."""
        return cls(settings, telemetry) if settings.actions else None

    def start(self) -> None:
        """Start the delivery tasks (in the running event loop)."""
        self.deliveries.start()

    def acknowledged(self, effects: Effects) -> None:
        """Verdicts the broker acknowledged: queue the actions they trigger.

        Until those are done, the commit is held where a restart would make them again.
        """
        for verdict in effects.verdicts:
            self._hold(verdict, self.deliveries.put(verdict), effects.floors)

    def _hold(self, verdict: Verdict, queued: int, floors: Mapping[tuple[str, int], int]) -> None:
        if queued:
            running, _ = self._holds.get(verdict.verdict_id, (0, {}))
            self._holds[verdict.verdict_id] = (running + queued, dict(floors))

    def held(self) -> dict[tuple[str, int], int]:
        """Per partition, the lowest floor of the verdicts whose actions are running."""
        floors: dict[tuple[str, int], int] = {}
        for _, hold in self._holds.values():
            for partition, offset in hold.items():
                floors[partition] = min(offset, floors.get(partition, offset))
        return floors

    def _delivered(self, verdict_id: str) -> None:
        held = self._holds.get(verdict_id)
        if held is None:
            return
        if held[0] <= 1:
            del self._holds[verdict_id]
        else:
            self._holds[verdict_id] = (held[0] - 1, held[1])

    def remade(self, verdict: Verdict, floors: Mapping[tuple[str, int], int]) -> None:
        """A verdict published before a restart, made again: act on it again.

        Meanwhile the commit is held at ``floors``, where a restart makes it once more.
        """
        self._hold(verdict, self.deliveries.put(verdict), floors)

    def outcomes(self, deployment_id: str) -> list[dict[str, Any]]:
        """What the actions did for a deployment's verdicts, for the HTTP API."""
        return [outcome.to_dict() for outcome in self.deliveries.outcomes(deployment_id)]

    async def stop(self) -> None:
        """Deliver what is queued, for at most ``DRAIN_WITHIN`` seconds."""
        await self.deliveries.drain(DRAIN_WITHIN)


def flag_target(verdict: Mapping[str, Any]) -> FlagTarget | None:
    """The flag a verdict concerns and the variation that turns it off: its ``flag``."""
    flag = verdict.get("flag")
    if not isinstance(flag, dict):
        return None
    key, control = flag.get("key"), flag.get("control")
    if isinstance(key, str) and isinstance(control, str):
        return FlagTarget(key, control)
    return None
