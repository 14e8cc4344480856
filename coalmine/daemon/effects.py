"""What handling records produced: verdicts and dead letters, in publishing order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coalmine.bus.base import Outgoing
from coalmine.contract import encode_verdict

if TYPE_CHECKING:
    from coalmine.config.models import TopicsSettings
    from coalmine.contract import Verdict

__all__ = ["Effects"]


@dataclass(slots=True)
class Effects:
    """What handling some records produced, in the order it must be published."""

    verdicts: list[Verdict] = field(default_factory=list)
    dead_letters: list[Outgoing] = field(default_factory=list)
    received: list[float] = field(default_factory=list)
    """Wall time the record that made each verdict due was received (verdict lag)."""
    floors: dict[tuple[str, int], int] = field(default_factory=dict)
    """Per partition, where a restart must read from to make these verdicts again (set
    when the daemon acts on verdicts: it commits no further while their actions run)."""
    _encoded: list[bytes] = field(default_factory=list, repr=False)

    def __bool__(self) -> bool:
        return bool(self.verdicts or self.dead_letters)

    def add(self, verdicts: list[Verdict], received: float) -> None:
        """Append verdicts made by a record received at ``received`` (wall time)."""
        self.verdicts.extend(verdicts)
        self.received.extend(received for _ in verdicts)

    def extend(self, other: Effects) -> None:
        """Append another batch of effects."""
        self.verdicts.extend(other.verdicts)
        self.dead_letters.extend(other.dead_letters)
        self.received.extend(other.received)
        self._encoded.clear()

    def encode(self) -> list[bytes]:
        """The verdicts as published on the bus, encoded once (for the bus and the API)."""
        if len(self._encoded) != len(self.verdicts):
            self._encoded = [encode_verdict(v) for v in self.verdicts]
        return self._encoded

    def messages(self, topics: TopicsSettings) -> list[Outgoing]:
        """The verdicts and dead letters as messages for the bus."""
        out = [
            Outgoing(topics.verdicts, data, v.deployment_id.encode())
            for v, data in zip(self.verdicts, self.encode(), strict=True)
        ]
        out.extend(self.dead_letters)
        return out
