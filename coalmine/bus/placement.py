"""Are keyed records where the murmur2 partitioner puts them?

coalmine reads a service's deploy events and its metrics from the same partition number
of two topics, both keyed by service: that is how several daemons share the work. It holds
only while every producer hashes keys the same way. Java clients, aiokafka and
``coalmine start`` use murmur2; librdkafka (confluent-kafka for Python, Go and .NET, kcat)
defaults to ``consistent_random``, a CRC32 hash, and puts the same key on another
partition. With one daemon nothing is lost; with two, a deployment's metrics reach the
daemon that does not hold it and are dropped as ``no_open_deployment``. This module notices
it from the data: a keyed record on a partition other than murmur2's is counted per
topic, and each key is reported once with the fix.
"""

from __future__ import annotations

import logging

from aiokafka.partitioner import murmur2

__all__ = ["KeyPlacement", "murmur2_partition"]

_log = logging.getLogger(__name__)

_MAX_KEYS = 100_000
"""Keys whose partition is remembered; past that the memory starts afresh."""


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The partition Java's and aiokafka's default partitioner give ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class KeyPlacement:
    """Counts keyed records that sit on a partition their key does not hash to."""

    def __init__(self) -> None:
        self._expected: dict[tuple[str, bytes, int], int] = {}
        self._reported: set[tuple[str, bytes]] = set()
        self.misplaced: dict[str, int] = {}
        """Misplaced records seen, per topic, since the start."""

    def check(self, topic: str, partition: int, key: bytes | None, partitions: int) -> bool:
        """Is a record of ``topic`` with ``key`` on ``partition`` where murmur2 puts it?

        Unkeyed records and unknown partition counts are taken as placed.
        """
        if key is None or partitions <= 0:
            return True
        slot = (topic, key, partitions)
        expected = self._expected.get(slot)
        if expected is None:
            if len(self._expected) >= _MAX_KEYS:
                self._expected.clear()
            expected = self._expected[slot] = murmur2_partition(key, partitions)
        if expected == partition:
            return True
        self.misplaced[topic] = self.misplaced.get(topic, 0) + 1
        if (topic, key) not in self._reported and len(self._reported) < _MAX_KEYS:
            self._reported.add((topic, key))
            _log.warning(
                "records keyed %r arrive on %s partition %d, but the murmur2 partitioner"
                " (Java clients, aiokafka, coalmine start) puts that key on partition %d:"
                " their producer hashes keys another way (librdkafka's default"
                " consistent_random uses CRC32), so with several daemons this service's"
                " deploy events and metrics reach different daemons and its metrics are"
                " dropped. Fix: set partitioner=murmur2_random in librdkafka clients"
                " (confluent-kafka, kcat -X partitioner=murmur2_random, confluent-kafka-go);"
                " see docs/inputs.md, 'Keys and partitioners'",
                key.decode("utf-8", "replace"),
                topic,
                partition,
                expected,
            )
        return False
