"""Keyed records off their murmur2 partition are counted and each key reported once."""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING

from aiokafka.partitioner import DefaultPartitioner

from coalmine.bus.placement import KeyPlacement, murmur2_partition

if TYPE_CHECKING:
    import pytest


def test_murmur2_partition_matches_the_java_client() -> None:
    # Values of org.apache.kafka.common.utils.Utils.toPositive(Utils.murmur2(key)) % 12 as
    # the Java client computes them, the same function aiokafka's DefaultPartitioner uses.
    partitions = list(range(12))
    for key in (b"checkout", b"payments", b"search", b"a", b"\x00\xff"):
        assert murmur2_partition(key, 12) == DefaultPartitioner()(key, partitions, partitions)


def test_records_on_another_partitioners_partition_are_counted_and_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    placement = KeyPlacement()
    services = [f"svc-{i}".encode() for i in range(40)]
    # librdkafka's default consistent_random hashes with CRC32.
    crc = {key: zlib.crc32(key) % 6 for key in services}
    moved = [key for key in services if crc[key] != murmur2_partition(key, 6)]
    assert moved  # with 6 partitions most keys land elsewhere
    with caplog.at_level(logging.WARNING, logger="coalmine.bus.placement"):
        for _ in range(3):
            for key in services:
                placement.check("coalmine.metrics", crc[key], key, 6)
                assert placement.check("coalmine.deployments", murmur2_partition(key, 6), key, 6)
    assert placement.misplaced == {"coalmine.metrics": 3 * len(moved)}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == len(moved)
    assert all("partitioner=murmur2_random" in w for w in warnings)
    assert any("'svc-" in w and "coalmine.metrics" in w for w in warnings)


def test_unkeyed_records_and_unknown_counts_are_not_judged() -> None:
    placement = KeyPlacement()
    assert placement.check("t", 3, None, 6)
    assert placement.check("t", 3, b"k", 0)
    assert placement.misplaced == {}
