"""GitHub deployment statuses: find the GitHub deployment of a verdict, post its status.

The GitHub deployment is the newest of the action's ``environment`` whose ``payload`` has
``coalmine_deployment_id`` equal to the verdict's ``deployment_id`` (the pipeline sets it
when it creates the GitHub deployment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from coalmine.actions.attempts import AttemptError, check_status
from coalmine.actions.outgoing import USER_AGENT
from coalmine.actions.payloads import github_status
from coalmine.actions.signing import IDEMPOTENCY_HEADER, VERDICT_ID_HEADER

if TYPE_CHECKING:
    from collections.abc import Mapping

    import aiohttp

    from coalmine.config.actions import GithubAction

PAYLOAD_KEY = "coalmine_deployment_id"
"""The key of a GitHub deployment's ``payload`` naming the coalmine deployment."""

_PAGE = 100


def _headers(spec: GithubAction, verdict_id: str) -> dict[str, str]:
    return {
        "Accept": "application/vnd.github+json",
        "Authorization": f"Bearer {spec.token.get_secret_value()}",
        "X-GitHub-Api-Version": "2022-11-28",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: verdict_id,
        VERDICT_ID_HEADER: verdict_id,
    }


def _payload_id(deployment: Mapping[str, Any]) -> object:
    payload = deployment.get("payload")
    if isinstance(payload, str):  # GitHub returns a payload sent as a string as a string
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
    return payload.get(PAYLOAD_KEY) if isinstance(payload, dict) else None


async def find_deployment(
    session: aiohttp.ClientSession, spec: GithubAction, deployment_id: str, verdict_id: str
) -> int:
    """The id of the newest GitHub deployment of ``spec.environment`` for ``deployment_id``."""
    url = f"{spec.api_url}/repos/{spec.repository}/deployments"
    query = {"environment": spec.environment, "per_page": str(_PAGE)}
    async with session.get(url, params=query, headers=_headers(spec, verdict_id)) as response:
        check_status(response.status, "the deployments list answered")
        try:
            listed = orjson.loads(await response.read())
        except orjson.JSONDecodeError:
            raise AttemptError("the deployments list is not JSON", retry=True) from None
    for deployment in listed if isinstance(listed, list) else ():
        if isinstance(deployment, dict) and _payload_id(deployment) == deployment_id:
            found = deployment.get("id")
            if isinstance(found, int):
                return found
    raise AttemptError(
        f"no GitHub deployment of environment {spec.environment!r} among the newest {_PAGE}"
        f" has payload.{PAYLOAD_KEY} = {deployment_id!r}",
        retry=True,
    )


async def post_status(
    session: aiohttp.ClientSession,
    spec: GithubAction,
    fields: Mapping[str, Any],
    public_url: str | None,
) -> int:
    """Post the deployment status of the verdict ``fields``; the HTTP status of the POST."""
    verdict_id = str(fields.get("verdict_id", ""))
    github_id = await find_deployment(
        session, spec, str(fields.get("deployment_id", "")), verdict_id
    )
    url = f"{spec.api_url}/repos/{spec.repository}/deployments/{github_id}/statuses"
    body = orjson.dumps(github_status(fields, spec.environment, public_url))
    headers = _headers(spec, verdict_id) | {"Content-Type": "application/json"}
    async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
        check_status(response.status)
        return response.status
