"""Where a verdict is decided: per-metric results in, one decision out.

Analyzers (``coalmine.analyzers``) say, per metric, ``pass`` / ``fail`` / ``nodata`` /
``error`` and whether the evidence is strong enough to promote on (``measured``). This
module alone turns those results into ``continue``, ``promote``, ``rollback`` or
``inconclusive``:

1. A **critical** metric that fails rolls the canary back at once.
2. The **score** is 100 x the weight of passing metrics over the weight of metrics that
   passed or failed (``nodata`` and ``error`` are kept apart: they neither pass nor fail).
   A score below ``marginal_score`` rolls back.
3. Once ``min_duration`` has passed, a canary is **promoted** when every metric passed and
   is measured and the score reaches ``pass_score``.
4. At ``max_duration`` a canary that could not be promoted or rolled back is
   **inconclusive**: the data could not decide. Otherwise the analysis **continues**.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from coalmine.config.durations import format_duration

if TYPE_CHECKING:
    from collections.abc import Sequence

    from coalmine.analyzers.result import MetricResult
    from coalmine.config.models import Profile
    from coalmine.contract import Decision


@dataclass(frozen=True, slots=True)
class Judgement:
    """A decision, whether it ends the analysis, its score, and one sentence saying why."""

    decision: Decision
    final: bool
    score: float | None
    summary: str


def score(profile: Profile, results: Sequence[MetricResult]) -> float | None:
    """Weighted share of passing metrics among those that passed or failed, 0-100."""
    weights = {spec.name: spec.weight for spec in profile.metrics}
    passed = sum(weights.get(r.metric, 1.0) for r in results if r.outcome == "pass")
    failed = sum(weights.get(r.metric, 1.0) for r in results if r.outcome == "fail")
    if passed + failed == 0:
        return None
    return 100.0 * passed / (passed + failed)


def judge(
    profile: Profile, results: Sequence[MetricResult], *, elapsed: float, at_end: bool
) -> Judgement:
    """Decide on a deployment from its metrics' results.

    Args:
        profile: the analysis profile the deployment started with.
        results: one result per profile metric, at this look.
        elapsed: event time since the deployment started, in seconds.
        at_end: this is the last look (``max_duration`` reached).
    """
    value = score(profile, results)
    critical = [r for r in results if r.critical and r.outcome == "fail"]
    if critical:
        return Judgement("rollback", True, 0.0, _sentence("critical", critical))
    failed = [r for r in results if r.outcome == "fail"]
    if value is not None and value < profile.marginal_score:
        why = f"score {value:.0f} < marginal {profile.marginal_score:g}"
        return Judgement("rollback", True, value, _sentence(why, failed))

    blocking = [r for r in results if r.outcome != "pass" or not r.measured]
    can_promote = not blocking and value is not None and value >= profile.pass_score
    if can_promote and elapsed >= profile.min_duration:
        return Judgement("promote", True, value, _sentence("all metrics within tolerance", results))
    if at_end:
        if failed:
            why = f"score {value:.0f} is marginal (< {profile.pass_score:g})"
            return Judgement("inconclusive", True, value, _sentence(why, failed))
        return Judgement("inconclusive", True, value, _sentence("not measurable", blocking))

    progress = f"{format_duration(elapsed)} of {format_duration(profile.max_duration)}"
    if can_promote:
        wait = f"waiting for min_duration {format_duration(profile.min_duration)}"
        return Judgement("continue", False, value, f"continue at {progress}: {wait}")
    waiting = failed or blocking
    return Judgement("continue", False, value, _sentence(f"continue at {progress}", waiting))


def _sentence(head: str, results: Sequence[MetricResult]) -> str:
    if not results:
        return head
    return f"{head}: " + "; ".join(r.reason for r in results)
