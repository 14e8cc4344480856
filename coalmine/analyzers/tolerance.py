"""A relative change against a metric's tolerance, in the metric's harmful direction."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coalmine.config.models import Direction

__all__ = ["beyond", "shown_within"]


def beyond(direction: Direction, change: float, limit: float) -> bool:
    """Does ``change`` lie past ``limit`` on the harmful side (either side for ``either``)?"""
    if direction == "increase":
        return change > limit
    if direction == "decrease":
        return change < -limit
    return abs(change) > limit


def shown_within(direction: Direction, low: float, high: float, limit: float) -> bool:
    """Does the interval ``[low, high]`` of a change stay within ``limit`` on the harmful side?"""
    if direction == "increase":
        return high <= limit
    if direction == "decrease":
        return low >= -limit
    return -limit <= low and high <= limit
