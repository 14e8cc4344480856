"""The daemon's HTTP endpoint: ``/metrics``, ``/livez``, ``/readyz`` and the read-only API.

API (JSON; with ``[http] api_token`` set, ``Authorization: Bearer <token>`` is required):

- ``GET /api/v1/deployments[?service=S]``: ``{"deployments": [view, ...]}``, newest first
- ``GET /api/v1/deployments/{id}``: one view, or 404
- ``GET /api/v1/services/{service}``: the view of the service's latest deployment, or 404
- ``POST /api/v1/gates/promote``, ``/api/v1/gates/rollback`` and ``/api/v1/gates/advance``:
  Flagger webhooks; 200 when the deployment's final decision is promote (its latest
  decision is rollback; the step in force was told to advance, or it was promoted), else
  412.
  Flagger cannot send headers: its payload may carry the token as ``metadata.token``.

A view: ``deployment_id``, ``service``, ``profile``, ``config_digest``, ``state`` (open,
final, ended, or rejected: its ``started`` was dead-lettered), ``baseline_version``,
``canary_version``, ``strategy``, ``started``, ``decision`` (latest, or null), ``final``,
``traffic_weight`` (the latest verdict's), ``step_advanced`` (the step in force was told to
advance, or the rollout promoted), ``verdict`` (the latest verdict, or null), ``rejected``
(why it was, or null); by id, with ``[[actions]]`` configured, also ``actions``: what they
did for its verdicts (action, kind, verdict id, outcome, attempts, status, error).

``GET /deployments/{id}/report``: the HTML report of the deployment's latest verdict and
what its actions did (``coalmine report`` draws its whole history and samples); chat
actions link to it under ``[http] public_url``. The same bearer token rule applies.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from pydantic import SecretStr

    from coalmine.daemon.directory import Directory
    from coalmine.daemon.telemetry import Telemetry

Probe = Callable[[], Awaitable[bool]]

_MAX_GATE_BODY = 64 * 1024


ActionOutcomes = Callable[[str], list[dict[str, Any]]]
"""A deployment's action outcomes, as its view shows them."""


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class _Api:
    """The read-only deployment API and the Flagger gates, over a directory."""

    def __init__(
        self, directory: Directory, token: SecretStr | None, actions: ActionOutcomes | None
    ) -> None:
        self.directory = directory
        self._secret = None if token is None else token.get_secret_value().encode()
        self._actions = actions

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/deployments", self.deployments),
            web.get("/api/v1/deployments/{deployment_id}", self.deployment),
            web.get("/deployments/{deployment_id}/report", self.report),
            web.get("/api/v1/services/{service}", self.service),
            web.post("/api/v1/gates/{gate:promote|rollback|advance}", self.gate),
        ]

    def _authorised(self, request: web.Request, payload: dict[str, Any] | None = None) -> bool:
        if self._secret is None:
            return True
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").encode() if header.startswith("Bearer ") else b""
        if not given and payload is not None:
            metadata = payload.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get("token"), str):
                given = metadata["token"].encode()
        return hmac.compare_digest(given, self._secret)

    async def deployments(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _DENIED()
        return _json({"deployments": self.directory.list(request.query.get("service"))})

    async def deployment(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _DENIED()
        dep_id = request.match_info["deployment_id"]
        view = self.directory.get(dep_id)
        if view is None:
            return _json({"error": f"no deployment {dep_id!r} known"}, 404)
        if self._actions is not None:
            view["actions"] = self._actions(dep_id)
        return _json(view)

    async def report(self, request: web.Request) -> web.Response:
        """The HTML report of a deployment's latest verdict (what chat messages link to)."""
        if not self._authorised(request):
            return _DENIED()
        dep_id = request.match_info["deployment_id"]
        view = self.directory.get(dep_id)
        if view is None or view["verdict"] is None:
            return _json({"error": f"no verdict of deployment {dep_id!r} known"}, 404)
        from coalmine.tools.report import render_report  # noqa: PLC0415 - only when asked

        actions = None if self._actions is None else self._actions(dep_id)
        page = render_report(dep_id, [view["verdict"]], actions=actions)
        return web.Response(text=page, content_type="text/html")

    async def service(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _DENIED()
        name = request.match_info["service"]
        view = self.directory.latest(name)
        if view is None:
            return _json({"error": f"no deployment of service {name!r} known"}, 404)
        return _json(view)

    async def gate(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > _MAX_GATE_BODY:
            return _json({"error": "body too large"}, 413)
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            return _json({"error": "the body must be a JSON object (a Flagger webhook)"}, 400)
        if not self._authorised(request, payload):
            return _DENIED()
        view = _gate_deployment(self.directory, payload)
        if view is None:
            return _json({"error": "no deployment known for this webhook"}, 412)
        decision = view["decision"]
        gate = request.match_info["gate"]
        if gate == "promote":
            ok = decision == "promote" and view["final"]
        elif gate == "advance":
            ok = view["step_advanced"]
        else:
            ok = decision == "rollback"
        if ok:
            return _json({"deployment_id": view["deployment_id"], "decision": decision})
        reason = f"{view['deployment_id']}: decision {decision or 'none yet'}"
        return _json({"error": reason, "deployment_id": view["deployment_id"]}, 412)


def _DENIED() -> web.Response:  # noqa: N802 - reads as a constant response
    return _json({"error": "missing or wrong bearer token"}, 401)


def _gate_deployment(directory: Directory, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The deployment a webhook is about: by id, else the latest of its service."""
    metadata = payload.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    dep_id = metadata.get("deployment_id")
    if isinstance(dep_id, str):
        return directory.get(dep_id)
    for name in (metadata.get("service"), payload.get("name")):
        if isinstance(name, str) and (view := directory.latest(name)) is not None:
            return view
    return None


def build_app(
    telemetry: Telemetry,
    *,
    live: Probe,
    ready: Probe,
    directory: Directory | None = None,
    api_token: SecretStr | None = None,
    why_not_ready: Callable[[], str | None] = lambda: None,
    actions: ActionOutcomes | None = None,
) -> web.Application:
    """An aiohttp application serving the metrics, the health probes and the API.

    ``/readyz`` answers 503 with ``not ready: <why_not_ready()>`` when ``ready`` is False;
    ``actions`` gives a deployment's action outcomes for its view.
    """

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(_: web.Request) -> web.Response:
        ok = await live()
        return web.Response(text="ok\n" if ok else "stalled\n", status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        if await ready():
            return web.Response(text="ready\n")
        why = why_not_ready()
        return web.Response(text=f"not ready: {why}\n" if why else "not ready\n", status=503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    if directory is not None:
        app.router.add_routes(_Api(directory, api_token, actions).routes())
    return app


class HttpServer:
    """Runs the application on a host and port; ``port`` 0 picks a free one."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port = port

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # noqa: SLF001 - aiohttp exposes the bound port nowhere else
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop serving."""
        await self._runner.cleanup()
