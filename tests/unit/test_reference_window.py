"""Where reading a window stops and what it keeps (coalmine.bus.kafka.history), no broker."""

from __future__ import annotations

import pytest

from coalmine.bus.base import Record
from coalmine.bus.kafka import read_window
from coalmine.bus.kafka.history import _Window
from coalmine.config.models import KafkaSettings


def records(*stamps: int | None, key: bytes = b"checkout", first: int = 0) -> list[Record]:
    return [
        Record("metrics", b"{}", key, (), 0, first + index, stamp)
        for index, stamp in enumerate(stamps)
    ]


def keep_all(_: Record) -> bool:
    return True


def test_keeps_what_keep_accepts_and_goes_on_while_nothing_stops_it() -> None:
    window = _Window(lambda r: r.offset % 2 == 0, 10, stop_ms=1_000)
    assert window.take(records(100, 200, 300, None, 1_000), end=99) is None
    assert [r.offset for r in window.kept] == [0, 2, 4]
    assert not window.truncated


def test_stops_at_the_first_record_stamped_after_the_stop_whatever_follows() -> None:
    window = _Window(keep_all, 10, stop_ms=1_000)
    assert window.take(records(900, 1_001, 500), end=99) == 1
    assert [r.offset for r in window.kept] == [0]


def test_stops_at_the_end_offset() -> None:
    window = _Window(keep_all, 10, stop_ms=1_000)
    assert window.take(records(1, 2, 3, first=5), end=7) == 7
    assert [r.offset for r in window.kept] == [5, 6]


def test_stops_truncated_at_the_first_record_kept_beyond_the_bound() -> None:
    window = _Window(lambda r: r.key == b"checkout", 2, stop_ms=1_000)
    batch = records(1, 2, key=b"checkout") + records(3, key=b"search", first=2)
    assert window.take(batch, end=99) is None
    assert not window.truncated  # exactly the bound, nothing more accepted yet
    assert window.take(records(4, first=3), end=99) == 3
    assert window.truncated
    assert [r.offset for r in window.kept] == [0, 1]


async def test_negative_bounds_are_refused_before_any_connection() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ValueError, match="max_records"):
        await read_window(settings, "metrics", 0, 0.0, 1.0, keep=keep_all, max_records=-1)
