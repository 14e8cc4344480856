"""Durations in configuration: ``"90s"``, ``"5m"``, ``"1h"``, ``"1h30m"`` or plain seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated, NoReturn

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` saying what is accepted."""
    # ValueError, not TypeError: pydantic turns only ValueError into a validation error.
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '90s', '5m'")  # noqa: TRY004 - pydantic reports ValueError only
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text.startswith("-"):  # a negative duration: the same problem as -60
            _negative(value)
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                msg = f"{value!r} is not a duration: use e.g. '90s', '5m', '1h30m' or seconds"
                raise ValueError(msg) from None
    else:
        raise ValueError("a duration is a number of seconds or a string such as '90s', '5m'")  # noqa: TRY004
    if not math.isfinite(seconds) or seconds < 0:
        _negative(value)
    return seconds


def _negative(value: object) -> NoReturn:
    raise ValueError(f"{value!r} is not a duration: it must be finite and not negative")


def format_duration(seconds: float) -> str:
    """Render seconds the way a person writes them in config (``"5m"``, ``"90s"``)."""
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A non-negative duration in seconds, written in config as ``"5m"`` or a number."""
