"""One attempt of an HTTP action: how its failures are told apart and described.

Descriptions name the status code or the kind of failure, never the URL, the body or an
exception's text (which can quote the URL, and the URL can be the credential).
"""

from __future__ import annotations

import os

import aiohttp

RETRYABLE_STATUSES = frozenset({408, 425, 429})
"""Client-error statuses that say "try again later"; every 5xx is retried too."""


class AttemptError(Exception):
    """One attempt failed: why, in words safe to log, and whether another may succeed."""

    def __init__(self, reason: str, *, retry: bool, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.status = status


def check_status(status: int, what: str = "answered") -> None:
    """Raise ``AttemptError`` unless ``status`` is 2xx; 408, 425, 429 and 5xx are retried."""
    if 200 <= status < 300:
        return
    retry = status >= 500 or status in RETRYABLE_STATUSES
    if 300 <= status < 400:
        raise AttemptError(f"{what} {status} (a redirect: configure the final URL)", retry=False)
    raise AttemptError(f"{what} {status}", retry=retry, status=status)


def describe(exc: BaseException, timeout: float) -> AttemptError:
    """The ``AttemptError`` of an exception raised while sending; all are retried."""
    if isinstance(exc, TimeoutError):
        return AttemptError(f"no answer within {timeout:g}s", retry=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        cause = os.strerror(code) if code else type(exc.os_error).__name__
        return AttemptError(f"cannot connect ({cause})", retry=True)
    return AttemptError(f"request failed ({type(exc).__name__})", retry=True)
