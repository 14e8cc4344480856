"""Delivering one verdict to one action: attempts, retries with backoff, the outcome.

An HTTP action is attempted once, then retried ``retries`` times on a timeout, a
connection failure, 408, 425, 429 or 5xx, waiting ``backoff`` doubled at each retry (at
most :data:`MAX_BACKOFF`) times a jitter drawn from the sender's random generator. Every
attempt carries the verdict id as ``Idempotency-Key``; a webhook's signature is made
afresh for each attempt. The outcome is ``delivered`` (first attempt), ``retried``
(delivered after failed attempts), ``failed`` or ``dry_run`` (nothing sent).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from coalmine.actions import github
from coalmine.actions.attempts import AttemptError, check_status, describe
from coalmine.actions.flagd import FlagdError, switch_off
from coalmine.actions.outgoing import outgoing
from coalmine.actions.verdicts import VerdictLike, verdict_fields
from coalmine.config.actions import FlagdAction, GithubAction

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from coalmine.config.actions import ActionSpec, HttpActionSpec

Outcome = Literal["delivered", "retried", "failed", "dry_run"]
"""How one action ended for one verdict."""

MAX_BACKOFF = 60.0
"""Longest wait between two attempts, before jitter."""


@dataclass(frozen=True, slots=True)
class FlagTarget:
    """The flag a verdict concerns and the variant that switches it off."""

    flag_key: str
    control_variant: str


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    """What one action did for one verdict.

    Attributes:
        action: The action's ``name``.
        kind: The action's ``kind``.
        verdict_id: The verdict acted on.
        deployment_id: Its deployment.
        outcome: ``delivered``, ``retried``, ``failed`` or ``dry_run``.
        attempts: Attempts made (0 for a dry run).
        status: The HTTP status of the last answer, if there was one.
        error: Why the last attempt failed, in words safe to show; None when delivered.
    """

    action: str
    kind: str
    verdict_id: str
    deployment_id: str
    outcome: Outcome
    attempts: int = 0
    status: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The outcome as a JSON object."""
        return asdict(self)


def backoff_delay(base: float, retry: int, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry`` (1 for the first): exponential, jittered.

    ``base * 2**(retry - 1)``, at most :data:`MAX_BACKOFF`, times a factor drawn uniformly
    from [0.5, 1): retries of many verdicts spread out instead of arriving together.
    """
    exponential = min(MAX_BACKOFF, base * 2.0 ** (retry - 1))
    return exponential * (0.5 + rng.random() / 2)


class Sender:
    """Sends verdicts to actions; never raises for a failed delivery.

    ``session`` is the aiohttp session to send with (made on first use, and closed by
    :meth:`close`, when not given); ``public_url`` the base of report links; ``rng`` the
    generator of the backoff jitter; ``clock`` the wall clock signatures are dated by;
    ``sleep`` how backoff waits; ``flag_target`` which flag a verdict concerns, for
    ``flagd`` actions (without it they fail: the verdict names no flag).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        public_url: str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        flag_target: Callable[[Mapping[str, Any]], FlagTarget | None] | None = None,
    ) -> None:
        self._session = session
        self._owns_session = session is None
        self._public_url = public_url
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self._clock = clock
        self._sleep = sleep
        self._flag_target = flag_target

    async def send(self, spec: ActionSpec, verdict: VerdictLike) -> ActionOutcome:
        """Act on ``verdict`` with ``spec``: every attempt its retries allow, then the outcome."""
        fields = verdict_fields(verdict)
        if spec.dry_run:
            return _outcome(spec, fields, "dry_run")
        if isinstance(spec, FlagdAction):
            return await self._switch(spec, fields)
        attempts = 0
        while True:
            if attempts:
                await self._sleep(backoff_delay(spec.backoff, attempts, self._rng))
            attempts += 1
            try:
                status = await self._attempt(spec, fields)
            except AttemptError as exc:
                if exc.retry and attempts <= spec.retries:
                    continue
                return _outcome(spec, fields, "failed", attempts, exc.status, exc.reason)
            outcome: Outcome = "delivered" if attempts == 1 else "retried"
            return _outcome(spec, fields, outcome, attempts, status)

    async def _attempt(self, spec: HttpActionSpec, fields: Mapping[str, Any]) -> int:
        """One attempt within the action's timeout; its 2xx status, else ``AttemptError``."""
        session = self._open()
        try:
            async with asyncio.timeout(spec.timeout):
                if isinstance(spec, GithubAction):
                    return await github.post_status(session, spec, fields, self._public_url)
                request = outgoing(spec, fields, now=self._clock(), public_url=self._public_url)
                url = request.url.get_secret_value()
                async with session.post(
                    url, data=request.body, headers=request.headers, allow_redirects=False
                ) as response:
                    check_status(response.status)
                    return response.status
        except AttemptError:
            raise
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise describe(exc, spec.timeout) from None

    async def _switch(self, spec: FlagdAction, fields: Mapping[str, Any]) -> ActionOutcome:
        """The flagd kill switch, in a worker thread (it writes a file)."""
        target = self._flag_target(fields) if self._flag_target is not None else None
        if target is None:
            return _outcome(spec, fields, "failed", 0, None, "the verdict names no flag")
        try:
            await asyncio.to_thread(switch_off, spec.path, target.flag_key, target.control_variant)
        except FlagdError as exc:
            return _outcome(spec, fields, "failed", 1, None, str(exc))
        return _outcome(spec, fields, "delivered", 1)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        """Close the session this sender made (one given to it is left open)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None


def _outcome(
    spec: ActionSpec,
    fields: Mapping[str, Any],
    outcome: Outcome,
    attempts: int = 0,
    status: int | None = None,
    error: str | None = None,
) -> ActionOutcome:
    return ActionOutcome(
        action=spec.name,
        kind=spec.kind,
        verdict_id=str(fields.get("verdict_id", "")),
        deployment_id=str(fields.get("deployment_id", "")),
        outcome=outcome,
        attempts=attempts,
        status=status,
        error=error,
    )
