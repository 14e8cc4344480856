"""The exceptions coalmine raises; every one has the root ``CoalmineError``.

```
CoalmineError
├── ContractError     an event does not fit the wire contract (goes to the dead-letter topic)
├── ConfigError       the configuration is invalid (carries every problem found)
└── TransportError    a broker could not be reached or refused an operation
```
"""

from __future__ import annotations

from dataclasses import dataclass


class CoalmineError(Exception):
    """Root of every error coalmine raises on purpose."""


class ContractError(CoalmineError):
    """An event does not fit the wire contract.

    ``reason`` is short and stable: it becomes the ``coalmine-error`` header of the
    dead-letter record and the ``reason`` label of ``coalmine_invalid_events_total``.
    ``message`` says what exactly was wrong with this event.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message or reason


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a configuration: where it is and what is wrong."""

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class ConfigError(CoalmineError):
    """A configuration is invalid; ``problems`` lists every problem, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class TransportError(CoalmineError):
    """A broker could not be reached, or refused an operation."""


class TransactionAbortedError(TransportError):
    """A Kafka transaction was aborted: what it published is gone.

    The offsets it was to commit are not committed either; the daemon resumes from the
    last committed transaction.
    """
