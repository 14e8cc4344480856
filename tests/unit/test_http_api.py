"""The HTTP API over the directory: views, lookups, Flagger gates and the bearer token."""

from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from coalmine.bus.base import Record
from coalmine.config.models import TopicsSettings
from coalmine.contract import encode_verdict
from coalmine.daemon.directory import Directory
from coalmine.daemon.http import build_app
from coalmine.daemon.router import Router
from coalmine.daemon.telemetry import Telemetry
from coalmine.tools.simulator import simulate, three_deployments
from support.scenario import EXPECTED, PROFILE, T0

TOPICS = TopicsSettings()


def scenario_records(until: float = 900.0) -> list[Record]:
    topic = {"deployments": TOPICS.deployments, "metrics": TOPICS.metrics}
    messages = simulate(three_deployments(), start=T0, duration=until, step=10.0, seed=3)
    return [Record(topic[m.topic], m.value, m.key, offset=i) for i, m in enumerate(messages)]


def directory_after(until: float = 900.0) -> Directory:
    """A directory fed as a follower is: deploy records, then the verdict topic."""
    records = scenario_records(until)
    verdicts = Router({"default": PROFILE}, TOPICS).handle(records, now=0.0).verdicts
    directory = Directory(TOPICS)
    directory.take(records)
    directory.take(Record(TOPICS.verdicts, encode_verdict(v)) for v in verdicts)
    return directory


async def ok() -> bool:
    return True


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = build_app(Telemetry(), live=ok, ready=ok, directory=directory_after())
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def get_json(client: TestClient, path: str, status: int = 200) -> dict:
    response = await client.get(path)
    assert response.status == status, await response.text()
    return orjson.loads(await response.read())


async def test_every_deployment_is_listed_with_its_final_decision(client: TestClient) -> None:
    body = await get_json(client, "/api/v1/deployments")
    views = {view["deployment_id"]: view for view in body["deployments"]}
    assert {k: v["decision"] for k, v in views.items()} == EXPECTED
    checkout = views["checkout-v42"]
    assert checkout["state"] == "final"
    assert checkout["final"] is True
    assert checkout["service"] == "checkout"
    assert checkout["baseline_version"] == "v1"
    assert checkout["canary_version"] == "v2"
    assert checkout["config_digest"].startswith("sha256:")
    assert checkout["verdict"]["verdict_id"].startswith("checkout-v42/")
    assert checkout["started"] == "2027-01-15T08:00:00Z"


async def test_lookups_by_id_and_by_service_and_404s(client: TestClient) -> None:
    view = await get_json(client, "/api/v1/deployments/search-v7")
    assert view["decision"] == "rollback"
    assert (await get_json(client, "/api/v1/services/payments"))["deployment_id"] == "payments-v3"
    filtered = await get_json(client, "/api/v1/deployments?service=search")
    assert [v["deployment_id"] for v in filtered["deployments"]] == ["search-v7"]
    missing = await get_json(client, "/api/v1/deployments/nope", status=404)
    assert "nope" in missing["error"]
    await get_json(client, "/api/v1/services/nope", status=404)


async def test_an_open_deployment_shows_its_latest_interim_verdict() -> None:
    directory = directory_after(until=130.0)  # two looks in, nothing final yet but search
    view = directory.get("checkout-v42")
    assert view is not None
    assert view["state"] == "open"
    assert view["decision"] == "continue"
    assert view["verdict"]["verdict_id"] == "checkout-v42/2"


async def test_a_completed_deployment_without_a_final_verdict_is_ended() -> None:
    directory = directory_after(until=130.0)
    completed = orjson.dumps(
        {"event": "completed", "deployment_id": "checkout-v42", "service": "checkout"}
        | {"time": T0 + 140}
    )
    directory.take([Record(TOPICS.deployments, completed)])
    assert directory.get("checkout-v42")["state"] == "ended"


async def test_flagger_gates_answer_200_only_for_the_matching_decision(
    client: TestClient,
) -> None:
    async def gate(which: str, payload: dict) -> int:
        response = await client.post(f"/api/v1/gates/{which}", data=orjson.dumps(payload))
        return response.status

    by_id = {"name": "x", "namespace": "prod", "metadata": {"deployment_id": "checkout-v42"}}
    assert await gate("promote", by_id) == 200
    assert await gate("rollback", by_id) == 412
    by_service = {"name": "search", "namespace": "prod", "phase": "Progressing"}
    assert await gate("promote", by_service) == 412
    assert await gate("rollback", by_service) == 200
    unknown = {"name": "nothing", "metadata": {"service": "nothing"}}
    assert await gate("promote", unknown) == 412
    response = await client.post("/api/v1/gates/promote", data=b"not json")
    assert response.status == 400


async def test_the_bearer_token_guards_the_api_but_not_the_probes() -> None:
    token = SecretStr("s3cret-token")
    app = build_app(Telemetry(), live=ok, ready=ok, directory=directory_after(), api_token=token)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/api/v1/deployments")).status == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/api/v1/deployments", headers=wrong)).status == 401
        right = {"Authorization": "Bearer s3cret-token"}
        assert (await client.get("/api/v1/deployments", headers=right)).status == 200
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/metrics")).status == 200
        payload = {"name": "checkout", "metadata": {"token": "s3cret-token"}}
        response = await client.post("/api/v1/gates/promote", data=orjson.dumps(payload))
        assert response.status == 200
        payload["metadata"]["token"] = "guess"  # noqa: S105 - a wrong token on purpose
        response = await client.post("/api/v1/gates/promote", data=orjson.dumps(payload))
        assert response.status == 401


def test_a_verdict_of_an_earlier_look_never_replaces_a_later_one() -> None:
    directory = directory_after(until=130.0)
    late = directory.get("checkout-v42")["verdict"]
    early = dict(late, verdict_id="checkout-v42/1", decision="rollback")
    directory.verdict(early)
    assert directory.get("checkout-v42")["verdict"]["verdict_id"] == "checkout-v42/2"


def test_own_verdicts_are_kept_as_published_and_equal_what_a_follower_sees() -> None:
    records = scenario_records()
    effects = Router({"default": PROFILE}, TOPICS).handle(records, now=0.0)
    encoded = effects.encode()
    assert effects.encode() is encoded  # encoded once, whoever asks
    assert encoded == [encode_verdict(v) for v in effects.verdicts]
    own = Directory(TOPICS)
    own.take(records)
    own.verdicts(effects.verdicts, encoded)
    assert own.list() == directory_after().list()
    assert {v["deployment_id"]: v["decision"] for v in own.list()} == EXPECTED


def test_effects_encode_again_after_more_verdicts_join() -> None:
    records = scenario_records()
    router = Router({"default": PROFILE}, TOPICS)
    first = router.handle(records[: len(records) // 4], now=0.0)
    rest = router.handle(records[len(records) // 4 :], now=0.0)
    assert first.verdicts
    assert rest.verdicts
    first.encode()
    first.extend(rest)
    assert first.encode() == [encode_verdict(v) for v in first.verdicts]


def test_a_follower_skips_verdicts_it_holds_and_takes_later_ones() -> None:
    records = scenario_records()
    effects = Router({"default": PROFILE}, TOPICS).handle(records, now=0.0)
    own = Directory(TOPICS)
    own.take(records)
    first = next(v for v in effects.verdicts if v.deployment_id == "checkout-v42")
    own.verdicts([first], [encode_verdict(first)])
    held = own.get("checkout-v42")["verdict"]
    look = int(first.verdict_id.rpartition("/")[2])

    def record(verdict_id: str, **changes: object) -> Record:
        obj = dict(held, verdict_id=verdict_id, **changes)
        return Record(TOPICS.verdicts, orjson.dumps(obj))

    # Read back from the topic (same id, here with other content): not taken again.
    own.take([record(first.verdict_id, summary="read back")])
    assert own.get("checkout-v42")["verdict"] == held
    # A later look of the same deployment is taken.
    own.take([record(f"checkout-v42/{look + 1}", summary="later")])
    assert own.get("checkout-v42")["verdict"]["summary"] == "later"
    # An id the head check cannot read (an escaped quote) is parsed and kept.
    own.take([record('odd"id/3', deployment_id='odd"id', summary="escaped")])
    assert own.get('odd"id')["verdict"]["summary"] == "escaped"
    # A deployment not held yet is taken from its first verdict.
    own.take([record("new-one/1", deployment_id="new-one")])
    assert own.get("new-one")["verdict"]["verdict_id"] == "new-one/1"


async def test_the_advance_gate_opens_once_the_step_in_force_has_advanced() -> None:
    """A stepped rollout: advance at 5%, a look at 25% before it is measured, advance at
    25%, then promoted. Flagger's confirm-traffic-increase asks at each point."""
    directory = Directory(TOPICS)

    def publish(look: int, decision: str, weight: float, *, final: bool = False) -> None:
        directory.verdict(
            {
                "verdict_id": f"web-v2/{look}",
                "deployment_id": "web-v2",
                "service": "web",
                "decision": decision,
                "final": final,
                "traffic_weight": weight,
            }
        )

    app = build_app(Telemetry(), live=ok, ready=ok, directory=directory)
    payload = orjson.dumps({"name": "web", "metadata": {"deployment_id": "web-v2"}})
    async with TestClient(TestServer(app)) as client:

        async def advance_gate() -> int:
            return (await client.post("/api/v1/gates/advance", data=payload)).status

        publish(1, "continue", 5)
        assert await advance_gate() == 412
        publish(2, "advance", 5)
        assert await advance_gate() == 200
        publish(3, "continue", 5)  # "advanced at 5%: waiting for 25%"
        assert await advance_gate() == 200
        view = await get_json(client, "/api/v1/deployments/web-v2")
        assert (view["traffic_weight"], view["step_advanced"]) == (5, True)
        publish(4, "continue", 25)  # raised: this step is not measured yet
        assert await advance_gate() == 412
        publish(5, "advance", 25)
        assert await advance_gate() == 200
        publish(6, "promote", 100, final=True)
        assert await advance_gate() == 200
        assert (await client.post("/api/v1/gates/promote", data=payload)).status == 200


async def test_a_deployment_view_shows_its_actions_and_its_report_page() -> None:
    outcomes = {"checkout-v42": [{"action": "deployer", "outcome": "delivered"}]}
    app = build_app(
        Telemetry(),
        live=ok,
        ready=ok,
        directory=directory_after(),
        actions=lambda dep_id: outcomes.get(dep_id, []),
    )
    async with TestClient(TestServer(app)) as client:
        view = await get_json(client, "/api/v1/deployments/checkout-v42")
        assert view["actions"] == outcomes["checkout-v42"]
        assert (await get_json(client, "/api/v1/deployments/search-v7"))["actions"] == []
        page = await client.get("/deployments/checkout-v42/report")
        assert page.status == 200
        assert page.content_type == "text/html"
        html = await page.text()
        assert "coalmine report: checkout-v42" in html
        assert view["verdict"]["verdict_id"] in html
        assert '<section id="actions">' in html
        assert "<td>deployer</td>" in html
        assert "<td>delivered</td>" in html
        assert (await client.get("/deployments/nothing/report")).status == 404
