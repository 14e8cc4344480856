"""The ids of finished deployments, remembered compactly and for a bounded while.

The router asks of every ``started`` and of every metric with no open deployment whether
its deployment already finished. Remembering 100,000 ids as strings costs ~15 MB; here the
newest few thousand are kept as strings and the rest as 64-bit hashes, 16 bytes each.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import numpy.typing as npt

__all__ = ["FinishedDeployments", "stable_hash"]

_EMPTY: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
_INT64 = struct.Struct("<q")


def stable_hash(deployment_id: str) -> int:
    """A signed 64-bit hash of ``deployment_id``, the same in every process and run."""
    digest = hashlib.blake2b(deployment_id.encode(), digest_size=8).digest()
    value: int = _INT64.unpack(digest)[0]  # int.from_bytes(digest, "little", signed=True)
    return value


class FinishedDeployments:
    """A set of deployment ids that remembers at least the newest ``capacity`` of them.

    The newest ids (fewer than ``recent``) are kept as strings. When ``recent`` have
    gathered, that generation is frozen: its ids are hashed (:func:`stable_hash`) into a
    FIFO ring of int64 and a sorted copy of the ring, searched by bisection. The ring keeps
    the newest ``capacity`` hashes, so after ``n`` ids are added the newest
    ``min(n, capacity + n % recent)`` are remembered, never more than
    ``capacity + recent - 1``, and the older ones are forgotten, oldest first. An id
    already remembered is not added again. The arrays are allocated on the first freeze and
    grow up to ``capacity``: ~16 bytes per frozen id.

    A frozen id is known only by its hash, so an id never added is reported present when it
    shares a hash with one remembered: a chance of ~``capacity`` / 2**64 per lookup
    (~5e-15 for 100,000).
    """

    def __init__(self, capacity: int = 100_000, recent: int = 4096) -> None:
        if capacity < 1 or recent < 1:
            raise ValueError("capacity and recent must be at least 1")
        self.capacity = capacity
        self.recent = min(recent, capacity)
        self._recent: dict[str, None] = {}
        """The ids not frozen yet, in the order they came (a dict keeps it)."""
        self._ring = _EMPTY
        """Frozen hashes in insertion order; ``_ring[:_count]`` are live."""
        self._sorted = _EMPTY
        """Same length as ``_ring``; ``_sorted[:_count]`` is its live part, sorted."""
        self._live = _EMPTY
        """``_sorted[:_count]``, the array that lookups search."""
        self._count = 0
        self._write = 0
        """Where the next frozen hash goes: past the last while the ring is not full, then
        on the oldest."""

    def __len__(self) -> int:
        return len(self._recent) + self._count

    def __contains__(self, deployment_id: object) -> bool:
        if not isinstance(deployment_id, str):
            return False
        if deployment_id in self._recent:
            return True
        if not self._count:
            return False
        key = stable_hash(deployment_id)
        live = self._live
        index = int(live.searchsorted(key))
        return index < self._count and live.item(index) == key

    def add(self, deployment_id: str) -> None:
        """Remember ``deployment_id`` (forgetting the oldest ids beyond the capacity)."""
        if deployment_id in self:
            return
        self._recent[deployment_id] = None
        if len(self._recent) >= self.recent:
            self._freeze()

    def _freeze(self) -> None:
        """Move the recent ids into the ring, over its oldest ones, and re-sort."""
        hashes = np.fromiter(
            (stable_hash(i) for i in self._recent), dtype=np.int64, count=len(self._recent)
        )
        self._recent = {}
        size = hashes.size
        ring = self._reserve(min(self.capacity, self._count + size))
        # Not full: ``_write`` is ``_count`` and the ring has room past it. Full or filling
        # up: the ring is ``capacity`` long and the writes wrap onto the oldest hashes.
        first = min(size, ring.size - self._write)
        ring[self._write : self._write + first] = hashes[:first]
        ring[: size - first] = hashes[first:]
        self._write = (self._write + size) % self.capacity
        self._count = min(self.capacity, self._count + size)
        live = self._sorted[: self._count]
        live[:] = ring[: self._count]
        live.sort()
        self._live = live

    def _reserve(self, needed: int) -> npt.NDArray[np.int64]:
        """The ring, grown (with the sorted copy) to at least ``needed`` hashes."""
        if self._ring.size >= needed:
            return self._ring
        size = min(self.capacity, max(needed, 2 * self._ring.size))
        ring = np.empty(size, dtype=np.int64)
        ring[: self._count] = self._ring[: self._count]
        self._ring = ring
        self._sorted = np.empty(size, dtype=np.int64)
        return ring
