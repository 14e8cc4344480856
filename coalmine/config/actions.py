"""The ``[[actions]]`` schema: what coalmine does itself when it publishes a verdict.

Each entry is one action, told apart by ``kind``: a signed ``webhook``, a chat message
(``slack``, ``teams``, ``discord``), a ``flagd`` kill switch, or a ``github`` deployment
status. URLs and tokens are secrets: never shown in logs, reprs or problem messages.
"""

from __future__ import annotations

import re
from pathlib import Path  # noqa: TC003 - pydantic reads the annotations at runtime
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from coalmine.config.durations import Duration  # noqa: TC001 - read at runtime
from coalmine.config.models import _Section
from coalmine.contract import Decision  # noqa: TC001 - read at runtime

MIN_SECRET_LENGTH = 16
"""Fewest characters of a webhook's HMAC secret."""

_INTERIM = ("continue", "advance")
"""Decisions whose verdicts are never final."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def _final_decisions() -> tuple[Decision, ...]:
    return ("promote", "rollback", "inconclusive")


def _rollbacks() -> OnFilter:
    return OnFilter(decisions=("rollback",))


def _check_http_url(value: str, key: str) -> None:
    """Raise ``ValueError`` unless ``value`` is an http(s) URL with a host; never echo it."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{key} must be an http:// or https:// URL with a host")


class OnFilter(_Section):
    """Which verdicts trigger the action (``on = { decisions = ["rollback"] }``)."""

    decisions: tuple[Decision, ...] = Field(default_factory=_final_decisions, min_length=1)
    """Decisions that trigger it (the ``decision`` of the verdict)."""
    final_only: bool = True
    """Only final verdicts (``"final": true``); ``false`` to act on interim ones too."""
    services: tuple[str, ...] | None = None
    """Only verdicts of these services; unset: every service."""
    profiles: tuple[str, ...] | None = None
    """Only verdicts judged with these profiles; unset: every profile."""

    @field_validator("decisions")
    @classmethod
    def _unique(cls, value: tuple[Decision, ...]) -> tuple[Decision, ...]:
        if len(set(value)) != len(value):
            raise ValueError("decisions must not repeat")
        return value

    @field_validator("services", "profiles")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and not value:
            raise ValueError("an empty list matches nothing: leave the key unset to match all")
        return value

    @model_validator(mode="after")
    def _continue_is_interim(self) -> Self:
        interim = [d for d in self.decisions if d in _INTERIM]
        if self.final_only and interim:
            named = " and ".join(repr(d) for d in interim)
            raise ValueError(f"{named} verdicts are never final: set final_only = false")
        return self


def _http_url(value: SecretStr) -> SecretStr:
    _check_http_url(value.get_secret_value(), "url")
    return value


HttpUrlSecret = Annotated[SecretStr, AfterValidator(_http_url)]
"""An http(s) URL kept secret: it may carry a token."""


class _Action(_Section):
    kind: str
    """What the action is (each kind's own table lists its keys)."""
    name: str = Field(min_length=1, max_length=64)
    """Unique name of the action, shown in logs and in the outcomes of the HTTP API."""
    on: OnFilter = Field(default_factory=OnFilter)
    """Which verdicts trigger it; unset: every final verdict."""
    dry_run: bool = False
    """Decide and count, but send or write nothing (the outcome is ``dry_run``)."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("name may hold only letters, digits, '_', '.' and '-'")
        return value


class _HttpAction(_Action):
    timeout: Duration = Field(default=5.0, gt=0, le=300)
    """How long one attempt (connect, send, answer) may take."""
    retries: int = Field(default=3, ge=0, le=20)
    """Attempts after the first on a timeout, a connection failure, 408, 429 or 5xx."""
    backoff: Duration = Field(default=1.0, ge=0, le=300)
    """Wait before the first retry; doubled for each next one (at most 60s), with jitter."""


class WebhookAction(_HttpAction):
    """A POST of the verdict JSON, as published, signed with HMAC-SHA256 (``kind = "webhook"``)."""

    kind: Literal["webhook"]
    """``webhook``."""
    url: HttpUrlSecret
    """Where to POST the verdict; a secret (it may carry a token)."""
    secret: SecretStr
    """Key of the ``Coalmine-Signature`` HMAC, at least 16 characters; shared with the receiver."""

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"secret must be at least {MIN_SECRET_LENGTH} characters"
                " (e.g. the output of `openssl rand -hex 32`)"
            )
        return value


class _ChatAction(_HttpAction):
    url: HttpUrlSecret
    """The incoming-webhook URL; a secret (the URL is the credential)."""


class SlackAction(_ChatAction):
    """A message to a Slack incoming webhook (``kind = "slack"``)."""

    kind: Literal["slack"]
    """``slack``."""


class TeamsAction(_ChatAction):
    """An Adaptive Card to a Microsoft Teams incoming webhook or workflow (``kind = "teams"``)."""

    kind: Literal["teams"]
    """``teams``."""


class DiscordAction(_ChatAction):
    """A message to a Discord webhook (``kind = "discord"``)."""

    kind: Literal["discord"]
    """``discord``."""


class FlagdAction(_Action):
    """A kill switch: a flagd flag definition file rewritten to serve the control variant.

    Triggered on rollbacks unless ``on`` says otherwise; only ``rollback`` and
    ``inconclusive`` may trigger it.
    """

    kind: Literal["flagd"]
    """``flagd``."""
    path: Path
    """Absolute path of the flagd flag definition file (JSON) the flag is defined in."""
    on: OnFilter = Field(default_factory=_rollbacks)
    """Which verdicts trigger it; unset: final rollbacks."""

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"path must be absolute (got {str(value)!r})")
        return value

    @model_validator(mode="after")
    def _switches_off_only(self) -> Self:
        wrong = [d for d in self.on.decisions if d not in {"rollback", "inconclusive"}]
        if wrong:
            raise ValueError(
                "a flagd kill switch serves the control variant: on.decisions may hold only"
                f" rollback and inconclusive, not {', '.join(wrong)}"
            )
        return self


class GithubAction(_HttpAction):
    """A GitHub deployment status (``kind = "github"``).

    The status goes to the newest GitHub deployment of ``environment`` whose ``payload``
    has ``coalmine_deployment_id`` equal to the verdict's ``deployment_id``.
    """

    kind: Literal["github"]
    """``github``."""
    repository: str
    """The repository, ``owner/name``."""
    token: SecretStr
    """A token allowed to write deployment statuses (``repo_deployment``); never shown."""
    api_url: str = "https://api.github.com"
    """Base URL of the GitHub REST API (GitHub Enterprise: ``https://HOST/api/v3``)."""
    environment: str = Field(min_length=1)
    """The GitHub deployment environment, e.g. ``production``."""

    @field_validator("repository")
    @classmethod
    def _owner_name(cls, value: str) -> str:
        if not _REPOSITORY.match(value):
            raise ValueError(f"repository must be 'owner/name' (got {value!r})")
        return value

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        _check_http_url(value, "api_url")
        return value.rstrip("/")


ActionSpec = Annotated[
    WebhookAction | SlackAction | TeamsAction | DiscordAction | FlagdAction | GithubAction,
    Field(discriminator="kind"),
]
"""One ``[[actions]]`` entry, its model chosen by ``kind``."""

HttpActionSpec = WebhookAction | SlackAction | TeamsAction | DiscordAction | GithubAction
"""An action that is an HTTP request."""


def _unique_names(actions: tuple[ActionSpec, ...]) -> tuple[ActionSpec, ...]:
    names = [a.name for a in actions]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"action names must be unique: {', '.join(dupes)} repeated")
    return actions


Actions = Annotated[
    tuple[ActionSpec, ...],
    AfterValidator(_unique_names),
    Field(
        description="What coalmine does itself when it publishes a verdict: signed webhooks,"
        " chat messages, a flagd kill switch, GitHub deployment statuses; names unique."
    ),
]
"""The ``[[actions]]`` array: names unique."""

__all__ = [
    "ActionSpec",
    "Actions",
    "DiscordAction",
    "FlagdAction",
    "GithubAction",
    "HttpActionSpec",
    "OnFilter",
    "SlackAction",
    "TeamsAction",
    "WebhookAction",
]
