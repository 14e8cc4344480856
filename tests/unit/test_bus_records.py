"""Records as transports build them on the hot path."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka.structs import ConsumerRecord

from coalmine.bus.base import Record, make_record
from coalmine.bus.kafka import to_record


def test_make_record_is_the_frozen_record_the_constructor_makes() -> None:
    fields = ("t", b"v", b"k", (("h", b"x"),), 3, 17, 1234)
    made = make_record(*fields)
    assert made == Record(*fields)
    assert repr(made) == repr(Record(*fields))
    assert hash(made) == hash(Record(*fields))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.offset = 18  # type: ignore[misc]
    assert dataclasses.replace(made, topic="u").topic == "u"


@pytest.mark.parametrize(
    ("value", "headers", "expected_value", "expected_headers"),
    [
        (b"{}", [], b"{}", ()),
        (None, (), b"", ()),
        (b"x", [("a", b"1"), ("b", None)], b"x", (("a", b"1"), ("b", b""))),
    ],
)
def test_kafka_records_carry_what_the_consumer_read(
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    expected_value: bytes,
    expected_headers: tuple[tuple[str, bytes], ...],
) -> None:
    message = ConsumerRecord(
        "topic", 2, 41, 1_700_000_000_000, 0, b"key", value, None, 3, 2, headers
    )
    assert to_record(message) == Record(
        "topic", expected_value, b"key", expected_headers, 2, 41, 1_700_000_000_000
    )
