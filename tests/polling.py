"""Waiting for a condition rather than for a fixed time."""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], object | Awaitable[object]],
    what: str,
    *,
    within: float = 30.0,
    every: float = 0.01,
) -> None:
    """Poll ``condition`` (a function, or a coroutine function) until it returns true.

    Fails the test naming ``what`` (the condition, in words) once ``within`` seconds
    have passed: a deadline generous enough for a loaded machine, so only a condition that
    never comes fails.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if loop.time() >= deadline:
            pytest.fail(f"still not the case after {within:g}s: {what}")
        await asyncio.sleep(every)
