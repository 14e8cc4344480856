"""What each action sends: fixed formats filled with the verdict's values.

Nothing from the configuration or the verdict is evaluated as code or as a template: the
values are inserted as text, escaped for the markup of each chat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from coalmine.actions.verdicts import VerdictLike, verdict_fields, verdict_json

if TYPE_CHECKING:
    from collections.abc import Mapping

GITHUB_DESCRIPTION_LIMIT = 140
"""Longest ``description`` GitHub accepts on a deployment status."""

_SLACK_LIMIT = 3000
_DISCORD_LIMIT = 2000
_SIGNS = {"promote": "✅", "rollback": "❌", "inconclusive": "⚠️", "continue": "⏳", "advance": "⏩"}
_DISCORD_SPECIAL = "\\*_~`|>#-[]()"

GithubState = Literal["success", "failure", "in_progress"]
"""The deployment status states a verdict sets."""

_GITHUB_STATES: dict[str, GithubState] = {
    "promote": "success",
    "rollback": "failure",
    "inconclusive": "failure",
}


@dataclass(frozen=True, slots=True)
class Glance:
    """What a person reads of a verdict at a glance.

    Attributes:
        service: The service deployed.
        deployment_id: The deployment judged.
        decision: ``promote``, ``rollback``, ``inconclusive``, ``continue``.
        final: Whether it is the deployment's final verdict.
        failing: The first failing metric (critical ones first) and by how much: its
            ``reason``; None when no metric fails.
        more_failing: How many other metrics fail.
        summary: The verdict's one sentence.
        report: The link to the verdict report, when a public base URL is known.
    """

    service: str
    deployment_id: str
    decision: str
    final: bool
    failing: str | None
    more_failing: int
    summary: str
    report: str | None

    @property
    def title(self) -> str:
        """``❌ checkout: rollback (final)``."""
        sign = _SIGNS.get(self.decision, "•")
        stage = "final" if self.final else "interim"
        return f"{sign} {self.service}: {self.decision} ({stage})"

    @property
    def why(self) -> str:
        """The failing metric and by how much, else the summary."""
        if self.failing is None:
            return self.summary
        more = f" (+{self.more_failing} more failing)" if self.more_failing else ""
        return f"{self.failing}{more}"


def report_url(public_url: str | None, deployment_id: str) -> str | None:
    """``{public_url}/deployments/{deployment_id}/report``, the id percent-encoded."""
    if not public_url:
        return None
    return f"{public_url.rstrip('/')}/deployments/{quote(deployment_id, safe='')}/report"


def glance(verdict: VerdictLike, public_url: str | None = None) -> Glance:
    """The verdict reduced to what a chat message shows."""
    fields = verdict_fields(verdict)
    failing = [m for m in fields.get("metrics") or () if m.get("outcome") == "fail"]
    failing.sort(key=lambda m: not m.get("critical", False))  # stable: critical first
    deployment_id = str(fields.get("deployment_id", ""))
    return Glance(
        service=str(fields.get("service", "")),
        deployment_id=deployment_id,
        decision=str(fields.get("decision", "")),
        final=fields.get("final") is True,
        failing=_failing_text(failing[0]) if failing else None,
        more_failing=max(0, len(failing) - 1),
        summary=str(fields.get("summary", "")),
        report=report_url(public_url, deployment_id),
    )


def _failing_text(metric: Mapping[str, Any]) -> str:
    name = str(metric.get("metric", ""))
    reason = str(metric.get("reason", "")) or "failed"
    return reason if reason.startswith(name) else f"{name}: {reason}"


def webhook_body(verdict: VerdictLike) -> bytes:
    """The generic webhook's body: the verdict JSON as published."""
    return verdict_json(verdict)


def slack_message(verdict: VerdictLike, public_url: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook message: one section, plain ``text`` as the fallback."""
    seen = glance(verdict, public_url)
    lines = [f"*{_slack(seen.title)}*", _slack(seen.why)]
    if seen.report is not None:
        lines.append(f"<{_slack(seen.report)}|Report> · deployment `{_slack(seen.deployment_id)}`")
    else:
        lines.append(f"deployment `{_slack(seen.deployment_id)}`")
    text = _cut("\n".join(lines), _SLACK_LIMIT)
    return {
        "text": _cut(f"{seen.title}: {seen.why}", _SLACK_LIMIT),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


def teams_message(verdict: VerdictLike, public_url: str | None = None) -> dict[str, Any]:
    """A Teams message holding one Adaptive Card (incoming webhooks and workflows)."""
    seen = glance(verdict, public_url)
    color = {"promote": "Good", "rollback": "Attention", "inconclusive": "Warning"}
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": seen.title,
                "weight": "Bolder",
                "size": "Medium",
                "color": color.get(seen.decision, "Default"),
                "wrap": True,
            },
            {"type": "TextBlock", "text": seen.why, "wrap": True},
            {"type": "TextBlock", "text": f"deployment {seen.deployment_id}", "isSubtle": True},
        ],
    }
    if seen.report is not None:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Report", "url": seen.report}]
    attachment = {"contentType": "application/vnd.microsoft.card.adaptive", "content": card}
    return {"type": "message", "attachments": [attachment]}


def discord_message(verdict: VerdictLike, public_url: str | None = None) -> dict[str, Any]:
    """A Discord webhook message; mentions in the values are never resolved."""
    seen = glance(verdict, public_url)
    lines = [f"**{_discord(seen.title)}**", _discord(seen.why)]
    shown_id = seen.deployment_id.replace("`", "'")
    tail = f"deployment `{shown_id}`"
    if seen.report is not None:
        tail += f" · report: <{seen.report}>"
    lines.append(tail)
    return {"content": _cut("\n".join(lines), _DISCORD_LIMIT), "allowed_mentions": {"parse": []}}


def github_state(decision: str) -> GithubState:
    """The deployment status state of a decision: final ones settle it, others go on."""
    return _GITHUB_STATES.get(decision, "in_progress")


def github_status(
    verdict: VerdictLike, environment: str, public_url: str | None = None
) -> dict[str, Any]:
    """The body of a GitHub deployment status for the verdict."""
    seen = glance(verdict, public_url)
    body: dict[str, Any] = {
        "state": github_state(seen.decision),
        "description": _cut(
            f"coalmine {seen.decision} of {seen.service}: {seen.why}", GITHUB_DESCRIPTION_LIMIT
        ),
        "environment": environment,
        "auto_inactive": False,
    }
    if seen.report is not None:
        body["log_url"] = seen.report
    return body


def _cut(text: str, limit: int) -> str:
    """``text``, shortened to ``limit`` characters with an ellipsis when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _slack(text: str) -> str:
    """Escape the three characters Slack's mrkdwn gives meaning to."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _discord(text: str) -> str:
    """Escape Discord's markdown, so values show as written."""
    return "".join(f"\\{c}" if c in _DISCORD_SPECIAL else c for c in text)
