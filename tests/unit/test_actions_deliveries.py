from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr

from coalmine.actions.deliveries import Deliveries
from coalmine.actions.delivery import ActionOutcome, Outcome
from coalmine.actions.verdicts import VerdictLike, verdict_fields
from coalmine.config.actions import ActionSpec, OnFilter, SlackAction
from coalmine.daemon.telemetry import Telemetry
from tests.metrics import sample_value
from tests.receivers import verdict


def slack(name: str, **on: Any) -> SlackAction:
    return SlackAction(
        kind="slack", name=name, url=SecretStr("https://h/x"), on=OnFilter.model_validate(on)
    )


class FakeSender:
    """Answers each send with the next outcome given (``delivered`` when none); may block."""

    def __init__(self, outcomes: list[Outcome] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.sent: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.closed = False

    async def send(self, spec: ActionSpec, value: VerdictLike) -> ActionOutcome:
        await self.gate.wait()
        fields = verdict_fields(value)
        self.sent.append((spec.name, fields["verdict_id"]))
        outcome = self.outcomes.pop(0) if self.outcomes else "delivered"
        if outcome == "boom":
            raise RuntimeError("bug")
        return ActionOutcome(
            spec.name, spec.kind, fields["verdict_id"], fields["deployment_id"], outcome, 1
        )

    async def close(self) -> None:
        self.closed = True


async def test_put_never_waits_and_delivery_happens_in_the_background() -> None:
    sender = FakeSender()
    sender.gate.clear()  # the receiver is slow: nothing completes yet
    deliveries = Deliveries([slack("a"), slack("b")], sender)  # type: ignore[arg-type]
    deliveries.start()
    assert deliveries.put(verdict()) == 2
    assert deliveries.put(verdict("promote", index=8)) == 2
    assert deliveries.pending == 4
    assert sender.sent == []
    sender.gate.set()
    await deliveries.drain(within=5)
    assert sorted(sender.sent) == [
        ("a", "checkout-v42/7"),
        ("a", "checkout-v42/8"),
        ("b", "checkout-v42/7"),
        ("b", "checkout-v42/8"),
    ]
    assert deliveries.pending == 0
    assert sender.closed


async def test_each_action_gets_its_verdicts_in_order_and_only_those_it_wants() -> None:
    sender = FakeSender()
    deliveries = Deliveries([slack("rollbacks", decisions=["rollback"]), slack("all")], sender)  # type: ignore[arg-type]
    deliveries.start()
    for index, decision in enumerate(["rollback", "promote", "rollback"]):
        deliveries.put(verdict(decision, index=index, deployment_id=f"d{index}"))
    deliveries.put(verdict("continue", final=False))
    await deliveries.drain(within=5)
    assert [v for a, v in sender.sent if a == "rollbacks"] == ["d0/0", "d2/2"]
    assert [v for a, v in sender.sent if a == "all"] == ["d0/0", "d1/1", "d2/2"]


async def test_outcomes_are_kept_per_deployment_and_counted() -> None:
    telemetry = Telemetry()
    sender = FakeSender(["failed", "delivered", "dry_run", "retried"])
    deliveries = Deliveries([slack("a")], sender, telemetry=telemetry)  # type: ignore[arg-type]
    deliveries.start()
    deliveries.put(verdict(deployment_id="one", index=1))
    deliveries.put(verdict(deployment_id="two", index=1))
    deliveries.put(verdict(deployment_id="one", index=2))
    deliveries.put(verdict(deployment_id="one", index=3))
    await deliveries.drain(within=5)
    assert [(o.verdict_id, o.outcome) for o in deliveries.outcomes("one")] == [
        ("one/1", "failed"),
        ("one/2", "dry_run"),
        ("one/3", "retried"),
    ]
    assert [o.outcome for o in deliveries.outcomes("two")] == ["delivered"]
    assert deliveries.outcomes("unknown") == []
    for outcome in ("failed", "delivered", "dry_run", "retried"):
        assert sample_value(telemetry, "coalmine_actions_total", kind="slack", outcome=outcome) == 1


async def test_only_the_most_recent_deployments_are_kept() -> None:
    deliveries = Deliveries([slack("a")], FakeSender(), max_deployments=2)  # type: ignore[arg-type]
    deliveries.start()
    for name in ("d1", "d2", "d3"):
        deliveries.put(verdict(deployment_id=name))
    await deliveries.drain(within=5)
    assert deliveries.outcomes("d1") == []
    assert [len(deliveries.outcomes(n)) for n in ("d2", "d3")] == [1, 1]


async def test_a_full_queue_fails_the_verdict_without_waiting() -> None:
    telemetry = Telemetry()
    sender = FakeSender()
    sender.gate.clear()
    deliveries = Deliveries([slack("a")], sender, telemetry=telemetry, max_pending=1)  # type: ignore[arg-type]
    deliveries.start()
    deliveries.put(verdict(index=1))
    await asyncio.sleep(0)  # the worker takes the first one
    deliveries.put(verdict(index=2))
    deliveries.put(verdict(index=3))  # no room
    (refused,) = deliveries.outcomes("checkout-v42")
    assert (refused.verdict_id, refused.outcome) == ("checkout-v42/3", "failed")
    assert refused.error == "1 verdicts already waiting"
    sender.gate.set()
    await deliveries.drain(within=5)
    assert [v for _, v in sender.sent] == ["checkout-v42/1", "checkout-v42/2"]
    assert sample_value(telemetry, "coalmine_actions_total", kind="slack", outcome="failed") == 1


async def test_drain_gives_up_at_its_deadline() -> None:
    sender = FakeSender()
    sender.gate.clear()  # never answers
    deliveries = Deliveries([slack("a")], sender)  # type: ignore[arg-type]
    deliveries.start()
    deliveries.put(verdict())
    loop = asyncio.get_running_loop()
    started = loop.time()
    await deliveries.drain(within=0.1)
    assert loop.time() - started < 1
    assert sender.sent == []
    assert sender.closed
    assert deliveries.put(verdict()) == 0  # closed


async def test_a_bug_in_a_send_is_a_failure_and_the_worker_goes_on() -> None:
    sender = FakeSender(["boom", "delivered"])  # type: ignore[list-item]
    deliveries = Deliveries([slack("a")], sender)  # type: ignore[arg-type]
    deliveries.start()
    deliveries.put(verdict(index=1))
    deliveries.put(verdict(index=2))
    await deliveries.drain(within=5)
    assert [(o.outcome, o.error) for o in deliveries.outcomes("checkout-v42")] == [
        ("failed", "internal error"),
        ("delivered", None),
    ]
