from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from coalmine.actions.delivery import Sender
from coalmine.config.actions import GithubAction
from tests.receivers import verdict

TOKEN = "ghp_not_a_real_token_0123"  # noqa: S105 - a test key


class FakeGitHub:
    """The two endpoints of the GitHub REST API a deployment status needs."""

    def __init__(self, deployments: list[dict[str, Any]]) -> None:
        self.deployments = deployments
        self.queries: list[dict[str, str]] = []
        self.statuses: list[tuple[int, dict[str, Any], str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def list_deployments(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        return web.json_response(self.deployments)

    async def post_status(self, request: web.Request) -> web.Response:
        github_id = int(request.match_info["id"])
        body = json.loads(await request.read())
        self.statuses.append((github_id, body, request.headers["Authorization"]))
        return web.json_response({"id": 1, "state": body["state"]}, status=201)

    async def start(self) -> FakeGitHub:
        app = web.Application()
        app.router.add_get("/repos/acme/checkout/deployments", self.list_deployments)
        app.router.add_post("/repos/acme/checkout/deployments/{id}/statuses", self.post_status)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def action(api_url: str, **extra: Any) -> GithubAction:
    fields = {
        "kind": "github",
        "name": "gh",
        "repository": "acme/checkout",
        "token": TOKEN,
        "api_url": api_url,
        "environment": "production",
    }
    return GithubAction.model_validate(fields | {"retries": 0} | extra)


async def send(github: FakeGitHub, **extra: Any):
    sender = Sender(public_url="https://coalmine.example.com")
    try:
        return await sender.send(action(github.url, **extra), verdict())
    finally:
        await sender.close()
        await github.stop()


async def test_the_status_goes_to_the_deployment_whose_payload_names_it() -> None:
    github = await FakeGitHub(
        [
            {"id": 30, "payload": {"coalmine_deployment_id": "search-v9"}},
            {"id": 20, "payload": json.dumps({"coalmine_deployment_id": "checkout-v42"})},
            {"id": 10, "payload": {"coalmine_deployment_id": "checkout-v42"}},
        ]
    ).start()
    outcome = await send(github)
    assert (outcome.outcome, outcome.status) == ("delivered", 201)
    assert github.queries == [{"environment": "production", "per_page": "100"}]
    ((github_id, body, authorization),) = github.statuses
    assert github_id == 20  # the newest for this deployment
    assert authorization == f"Bearer {TOKEN}"
    assert body["state"] == "failure"
    assert body["environment"] == "production"
    assert body["log_url"] == "https://coalmine.example.com/deployments/checkout-v42/report"


async def test_no_matching_deployment_fails_and_says_what_was_looked_for() -> None:
    github = await FakeGitHub([{"id": 30, "payload": {}}, {"id": 31, "payload": "x"}]).start()
    outcome = await send(github)
    assert outcome.outcome == "failed"
    assert outcome.error is not None
    assert "payload.coalmine_deployment_id = 'checkout-v42'" in outcome.error
    assert TOKEN not in repr(outcome)
    assert github.statuses == []
