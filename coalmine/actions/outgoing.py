"""The HTTP request of a webhook or chat action: where it goes, its body, its headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from coalmine.actions.payloads import (
    discord_message,
    slack_message,
    teams_message,
    webhook_body,
)
from coalmine.actions.signing import IDEMPOTENCY_HEADER, VERDICT_ID_HEADER, signed_headers
from coalmine.config.actions import DiscordAction, SlackAction, TeamsAction, WebhookAction

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import SecretStr

USER_AGENT = "coalmine-actions"
"""The ``User-Agent`` of every request an action sends."""

PostAction = WebhookAction | SlackAction | TeamsAction | DiscordAction
"""An action that is one POST of a JSON body."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One POST to make. The URL is a secret: it is not part of the repr."""

    url: SecretStr = field(repr=False)
    body: bytes
    headers: Mapping[str, str] = field(repr=False)


def outgoing(
    spec: PostAction, fields: Mapping[str, Any], *, now: float, public_url: str | None
) -> Outgoing:
    """The POST of ``spec`` for the verdict ``fields``, signed at ``now`` for a webhook."""
    verdict_id = str(fields.get("verdict_id", ""))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: verdict_id,
        VERDICT_ID_HEADER: verdict_id,
    }
    if isinstance(spec, WebhookAction):
        body = webhook_body(fields)
        headers |= signed_headers(body, spec.secret, verdict_id, now)
    elif isinstance(spec, SlackAction):
        body = orjson.dumps(slack_message(fields, public_url))
    elif isinstance(spec, TeamsAction):
        body = orjson.dumps(teams_message(fields, public_url))
    else:
        body = orjson.dumps(discord_message(fields, public_url))
    return Outgoing(spec.url, body, headers)
