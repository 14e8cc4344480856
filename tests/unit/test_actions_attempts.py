from __future__ import annotations

import aiohttp
import pytest

from coalmine.actions.attempts import AttemptError, check_status, describe


def test_2xx_passes() -> None:
    for status in (200, 201, 202, 204):
        check_status(status)


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (500, True),
        (502, True),
        (503, True),
        (408, True),
        (425, True),
        (429, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (410, False),
        (301, False),
    ],
)
def test_which_statuses_are_retried(status: int, retry: bool) -> None:
    with pytest.raises(AttemptError) as info:
        check_status(status)
    assert info.value.retry is retry


def test_descriptions_never_quote_the_exception() -> None:
    invalid = aiohttp.InvalidURL("https://hooks.example.com/secret-path")
    assert describe(invalid, 5).reason == "request failed (InvalidURL)"
    assert describe(TimeoutError(), 2.5).reason == "no answer within 2.5s"
