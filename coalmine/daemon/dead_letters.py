"""Dead letters: an invalid input record, copied to the dead-letter topic with the reason.

The record keeps its key, value and headers; ``coalmine-error`` says why it was refused
(the :class:`~coalmine.ContractError`'s reason first) and ``coalmine-source`` where it was
read. A record too large to re-publish whole keeps its head, and says its size.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from coalmine.bus.base import Outgoing

if TYPE_CHECKING:
    from coalmine._exceptions import ContractError
    from coalmine.bus.base import Record
    from coalmine.daemon.telemetry import Telemetry

__all__ = ["DeadLetters"]

log = logging.getLogger(__name__)

_LIMIT_OF_REASON = {
    "too_large": "max_message_bytes",
    "too_many_deployments": "max_open_deployments",
}
"""The ``[limits]`` key behind a reason, counted as a limit exceeded too."""
_MAX_ERROR_BYTES = 512


class DeadLetters:
    """Builds the dead letter of an invalid record, counting and logging it."""

    def __init__(self, topic: str, max_message_bytes: int, telemetry: Telemetry) -> None:
        self._topic = topic
        self._max_bytes = max_message_bytes
        self._telemetry = telemetry

    def of(self, record: Record, error: ContractError) -> Outgoing:
        """The message to publish on the dead-letter topic for ``record``."""
        self._telemetry.invalid_events.labels(error.reason).inc()
        limit = _LIMIT_OF_REASON.get(error.reason)
        if limit is not None:
            self._telemetry.limit_exceeded.labels(limit).inc()
        log.warning("invalid event at %s: %s", record.source, error)
        headers = (
            *record.headers,
            ("coalmine-error", str(error).encode()[:_MAX_ERROR_BYTES]),
            ("coalmine-source", record.source.encode()),
        )
        value = record.value
        if error.reason == "too_large":
            # The original cannot be re-published whole: keep its head and say so.
            value = value[: self._max_bytes]
            headers = (*headers, ("coalmine-truncated-from", str(len(record.value)).encode()))
        return Outgoing(self._topic, value, record.key, headers)
