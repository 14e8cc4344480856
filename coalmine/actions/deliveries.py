"""The delivery queue: verdicts in without waiting, actions done in the background.

Each action has its own queue and worker task, so one slow or unreachable receiver
delays only its own deliveries, and each receiver gets its verdicts in the order they
were put. ``put`` never waits; a full queue counts the verdict as ``failed`` for that
action. Outcomes are counted in ``coalmine_actions_total{kind,outcome}`` and kept per
deployment for the most recent deployments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from coalmine.actions.delivery import ActionOutcome
from coalmine.actions.matching import triggered
from coalmine.actions.streaks import FailureStreaks
from coalmine.actions.verdicts import VerdictLike, verdict_fields

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from coalmine.actions.delivery import Sender
    from coalmine.config.actions import ActionSpec
    from coalmine.daemon.telemetry import Telemetry

_log = logging.getLogger("coalmine.actions")

MAX_PENDING = 1000
"""Verdicts waiting per action before more are refused (counted as failed)."""

MAX_DEPLOYMENTS = 1000
"""Deployments whose outcomes are kept; the least recently acted on go first."""


class Deliveries:
    """Delivers verdicts to the actions they trigger, in background tasks.

    Call :meth:`start` in the running event loop, :meth:`put` for each published verdict,
    and :meth:`drain` at shutdown.
    """

    def __init__(
        self,
        actions: Sequence[ActionSpec],
        sender: Sender,
        *,
        telemetry: Telemetry | None = None,
        max_pending: int = MAX_PENDING,
        max_deployments: int = MAX_DEPLOYMENTS,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self._actions = tuple(actions)
        self._sender = sender
        self._telemetry = telemetry
        self._queues: dict[str, asyncio.Queue[VerdictLike]] = {
            action.name: asyncio.Queue(max_pending) for action in self._actions
        }
        self._workers: list[asyncio.Task[None]] = []
        self._records: OrderedDict[str, list[ActionOutcome]] = OrderedDict()
        self._max_deployments = max_deployments
        self._streaks = FailureStreaks(_log)
        self._closed = False
        self._pending = 0
        self._on_done = on_done
        """Called with a verdict's id each time one of its deliveries ends, however."""

    def start(self) -> None:
        """Start one worker task per action (in the running event loop)."""
        if self._workers or self._closed:
            return
        for action in self._actions:
            task = asyncio.create_task(self._work(action), name=f"action {action.name}")
            self._workers.append(task)

    def put(self, verdict: VerdictLike) -> int:
        """Queue ``verdict`` for every action it triggers; how many queued. Never waits.

        An action whose queue is full records ``failed`` at once and is not counted.
        """
        if self._closed:
            _log.warning("verdict put after the deliveries were drained: not delivered")
            return 0
        fields = verdict_fields(verdict)
        queued = 0
        for action in triggered(self._actions, fields):
            queue = self._queues[action.name]
            try:
                queue.put_nowait(fields)
            except asyncio.QueueFull:
                self._record(_failed(action, fields, f"{queue.maxsize} verdicts already waiting"))
            else:
                self._pending += 1
                queued += 1
        return queued

    @property
    def pending(self) -> int:
        """Verdicts queued or being delivered, over all actions."""
        return self._pending

    def outcomes(self, deployment_id: str) -> list[ActionOutcome]:
        """What the actions did for ``deployment_id``'s verdicts so far, oldest first."""
        return list(self._records.get(deployment_id, ()))

    async def drain(self, within: float | None = None) -> None:
        """Deliver what is queued (for at most ``within`` seconds), then stop.

        What is still queued at the deadline is not delivered and is logged as such.
        Closes the sender; :meth:`put` refuses verdicts from then on.
        """
        self._closed = True
        joined = asyncio.gather(*(q.join() for q in self._queues.values()))
        try:
            await asyncio.wait_for(joined, within)
        except TimeoutError:
            left = self.pending
            _log.warning("actions stopped with %d verdict delivery(ies) not done", left)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers.clear()
        await self._sender.close()

    async def _work(self, action: ActionSpec) -> None:
        queue = self._queues[action.name]
        while True:
            verdict = await queue.get()
            try:
                self._record(await self._deliver(action, verdict))
            finally:
                self._pending -= 1
                queue.task_done()
                if self._on_done is not None:
                    self._on_done(str(verdict_fields(verdict).get("verdict_id")))

    async def _deliver(self, action: ActionSpec, verdict: VerdictLike) -> ActionOutcome:
        try:
            return await self._sender.send(action, verdict)
        except Exception:  # noqa: BLE001 - a bug must not end the worker: log it, go on
            _log.exception("action %s (%s) raised", action.name, action.kind)
            return _failed(action, verdict, "internal error")

    def _record(self, outcome: ActionOutcome) -> None:
        """Count, log and keep one outcome."""
        if self._telemetry is not None:
            self._telemetry.action(outcome.kind, outcome.outcome)
        self._streaks.note(outcome)
        if outcome.outcome == "dry_run":
            _log.info(
                "dry run: action %s (%s) would act on verdict %s",
                outcome.action,
                outcome.kind,
                outcome.verdict_id,
            )
        kept = self._records.setdefault(outcome.deployment_id, [])
        kept.append(outcome)
        self._records.move_to_end(outcome.deployment_id)
        while len(self._records) > self._max_deployments:
            self._records.popitem(last=False)


def _failed(action: ActionSpec, verdict: VerdictLike, error: str) -> ActionOutcome:
    fields = verdict_fields(verdict)
    return ActionOutcome(
        action=action.name,
        kind=action.kind,
        verdict_id=str(fields.get("verdict_id", "")),
        deployment_id=str(fields.get("deployment_id", "")),
        outcome="failed",
        error=error,
    )
