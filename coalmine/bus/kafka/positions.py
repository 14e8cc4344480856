"""Where the transport stands on each partition it owns, shared by its parts.

aiokafka's ``SubscriptionState`` plays this part for its consumer: the fetcher moves the
positions on, the group membership resets them when partitions move, and the commits
record what the group has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coalmine.bus.base import TopicPartition

__all__ = ["Positions"]


@dataclass(slots=True)
class Positions:
    """Per partition, what was handed out and what was committed."""

    fetched: dict[TopicPartition, int] = field(default_factory=dict)
    """The position after the last record handed out."""
    committed: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    """The committed offset, and the position handled up to (its metadata; beyond the
    offset while open deployments hold the offset back)."""
    owned: frozenset[TopicPartition] = frozenset()
    """The partitions of the last assignment."""
    forgotten: set[TopicPartition] = field(default_factory=set)
    """Partitions kept across a rebalance whose committed offset the group no longer has:
    the broker lost its state, so a log shorter than what was read is lost."""

    def drop(self, key: TopicPartition) -> None:
        """Forget where ``key`` stands: it is read from the group's commit, if any."""
        self.fetched.pop(key, None)
        self.committed.pop(key, None)

    def back_to_committed(self) -> None:
        """Hand out again everything fetched since the last commit."""
        self.fetched = {key: handled for key, (_, handled) in self.committed.items()}

    def clear(self) -> None:
        """Forget every partition (the transport stopped)."""
        self.fetched.clear()
        self.committed.clear()
        self.owned = frozenset()
        self.forgotten.clear()
