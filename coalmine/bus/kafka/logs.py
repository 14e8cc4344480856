"""The Kafka client's own log lines, kept to one of each kind a minute."""

from __future__ import annotations

import logging

__all__ = ["ClientRepeats"]


class ClientRepeats(logging.Filter):
    """Lets through one line of each kind the Kafka client repeats, a minute.

    aiokafka logs every failed attempt at WARNING or ERROR while a broker is away: a refused
    connection each retry backoff (100 ms), every fetch from a node that is not ready, every
    failed metadata update and coordinator lookup. A kind is the logger, the message's
    template and, when it is a node id, its first argument. The first line of a kind goes
    through; the same kind within ``window`` seconds is counted instead, and its next line
    after that says how many were left out. Other loggers' lines are untouched.
    """

    def __init__(self, window: float = 60.0, kinds: int = 1_000) -> None:
        super().__init__()
        self._window = window
        self._max_kinds = kinds
        self._kinds: dict[tuple[str, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """True for a line to show: not aiokafka's, or the first of its kind in the window."""
        if not record.name.startswith("aiokafka"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        node = args[0] if args and isinstance(args[0], int) else None
        kind = (record.name, str(record.msg), str(node))
        shown, left_out = self._kinds.get(kind, (float("-inf"), 0))
        if record.created - shown < self._window:
            self._kinds[kind] = (shown, left_out + 1)
            return False
        if len(self._kinds) >= self._max_kinds:
            self._kinds = {
                k: v for k, v in self._kinds.items() if record.created - v[0] < self._window
            }
        self._kinds[kind] = (record.created, 0)
        if left_out:
            record.msg = f"{record.getMessage()} ({left_out} more like it in {self._window:g}s)"
            record.args = None
        return True
