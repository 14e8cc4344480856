import pytest
from pydantic import BaseModel, ValidationError

from coalmine.config import Duration, parse_duration
from coalmine.config.durations import format_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("1.5m", 90.0),
        ("250ms", 0.25),
        ("2d", 172_800.0),
        ("45", 45.0),
        (" 30s ", 30.0),
        ("0s", 0.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parses(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("5x", "is not a duration"),
        ("m5", "is not a duration"),
        ("5m5", "is not a duration"),
        ("", "is not a duration"),
        ("   ", "is not a duration"),
        ("-1", "not negative"),
        (-1, "not negative"),
        ("inf", "finite"),
        (float("nan"), "finite"),
        (True, "number of seconds or a string"),
        (None, "number of seconds or a string"),
        ([5], "number of seconds or a string"),
    ],
)
def test_rejects_with_a_message(bad: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_duration(bad)


def test_message_shows_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"'90s', '5m', '1h30m' or seconds"):
        parse_duration("5x")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300.0, "5m"), (3600.0, "1h"), (90.0, "90s"), (5400.0, "90m"), (0.25, "0.25s")],
)
def test_format_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


class _Model(BaseModel):
    timeout: Duration = 30.0


def test_as_a_field_type() -> None:
    assert _Model(timeout="2m").timeout == 120.0
    assert _Model().model_dump(mode="json") == {"timeout": "30s"}
    assert _Model(timeout="1h").model_dump() == {"timeout": 3600.0}


def test_field_error_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        _Model(timeout="soon")
    (error,) = info.value.errors()
    assert error["loc"] == ("timeout",)
    assert "'soon' is not a duration" in error["msg"]


@pytest.mark.parametrize("value", ["-60s", -60, "-1m30s", -0.5, " -5 "])
def test_a_negative_duration_is_one_problem_however_it_is_written(value: object) -> None:
    with pytest.raises(ValueError, match="is not a duration: it must be finite and not negative"):
        parse_duration(value)
