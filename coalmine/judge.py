"""Where a verdict is decided: per-metric results in, one decision out.

Analyzers (``coalmine.analyzers``) say, per metric, ``pass`` / ``fail`` / ``nodata`` /
``error`` and whether the evidence is strong enough to promote on (``measured``). This
module alone turns those results into ``continue``, ``promote``, ``rollback`` or
``inconclusive``:

1. A **critical** metric that fails rolls the canary back at once.
2. The **score**, per group, is 100 x the weight of passing metrics over the weight of
   metrics that passed or failed; the groups' scores are averaged with the profile's group
   weights (Kayenta's scorer). ``nodata`` and ``error`` are kept apart: they neither pass
   nor fail, except that a ``must_have_data`` metric still without data once
   ``min_duration`` has passed counts as failing. A score below ``marginal_score`` rolls
   back.
3. Once ``min_duration`` has passed, a canary is **promoted** when every metric passed and
   is measured and the score reaches ``pass_score``.
4. At ``max_duration`` a canary that could not be promoted or rolled back is
   **inconclusive**: the data could not decide. Otherwise the analysis **continues**.

A stepped rollout (``steps`` in its ``started``) below its last step is not promoted: a step
measured healthy (every metric passed and measured, the score at ``pass_score``) once
``min_step_duration`` has passed in it is told to **advance**, once per step, whatever
``min_duration`` says; the pipeline or flag system then raises the weight.

A ``dry_run`` metric is judged and reported but takes no part in any of this; the summary
says what it would have done.
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
class Step:
    """Where a stepped rollout stands at a look.

    Attributes:
        weight: the weight in force.
        following: the next planned weight (None at the last step).
        elapsed: event time since the weight took effect.
        advanced: this step was told to advance already.
    """

    weight: float
    following: float | None
    elapsed: float
    advanced: bool


@dataclass(frozen=True, slots=True)
class Judgement:
    """A decision, whether it ends the analysis, its score, and one sentence saying why."""

    decision: Decision
    final: bool
    score: float | None
    summary: str


def score(
    profile: Profile, results: Sequence[MetricResult], *, missing: Sequence[str] = ()
) -> float | None:
    """Group-weighted share of passing metrics among those that passed or failed, 0-100.

    ``missing`` names metrics that count as failing for want of data (``must_have_data``).
    """
    tally: dict[str, list[float]] = {}
    for result in results:
        spec = profile.metric(result.metric)
        weight, group = (spec.weight, spec.group) if spec else (1.0, "default")
        passed, failed = tally.setdefault(group, [0.0, 0.0])
        if result.outcome == "pass":
            tally[group][0] = passed + weight
        elif result.outcome == "fail" or result.metric in missing:
            tally[group][1] = failed + weight
    scored = {group: pf for group, pf in tally.items() if pf[0] + pf[1] > 0}
    if not scored:
        return None
    total_weight = sum(profile.group_weight(group) for group in scored)
    return (
        sum(
            profile.group_weight(group) * 100.0 * passed / (passed + failed)
            for group, (passed, failed) in scored.items()
        )
        / total_weight
    )


def judge(
    profile: Profile,
    results: Sequence[MetricResult],
    *,
    elapsed: float,
    at_end: bool,
    step: Step | None = None,
) -> Judgement:
    """Decide on a deployment from its metrics' results.

    Args:
        profile: the analysis profile the deployment started with.
        results: one result per profile metric, at this look.
        elapsed: event time since the deployment started, in seconds.
        at_end: this is the last look (``max_duration`` reached).
        step: a stepped rollout below its last step: where it stands.
    """
    deciding = [r for r in results if not _dry(profile, r)]
    judgement = _decide(profile, deciding, elapsed, at_end, step)
    muted = [r for r in results if _dry(profile, r) and r.outcome == "fail"]
    if not muted:
        return judgement
    note = "; dry run, not deciding: " + "; ".join(r.reason for r in muted)
    return Judgement(judgement.decision, judgement.final, judgement.score, judgement.summary + note)


def _dry(profile: Profile, result: MetricResult) -> bool:
    spec = profile.metric(result.metric)
    return spec is not None and spec.dry_run


def _decide(
    profile: Profile,
    results: Sequence[MetricResult],
    elapsed: float,
    at_end: bool,
    step: Step | None,
) -> Judgement:
    """The decision on the deciding metrics' results (``judge`` without dry runs)."""
    required = {spec.name for spec in profile.metrics if spec.must_have_data}
    missing = [
        r.metric
        for r in results
        if r.metric in required and r.outcome == "nodata" and elapsed >= profile.min_duration
    ]
    value = score(profile, results, missing=missing)
    critical = [r for r in results if r.critical and (r.outcome == "fail" or r.metric in missing)]
    if critical:
        return Judgement("rollback", True, 0.0, _sentence("critical", critical))
    failed = [r for r in results if r.outcome == "fail" or r.metric in missing]
    if value is not None and value < profile.marginal_score:
        why = f"score {value:.0f} < marginal {profile.marginal_score:g}"
        return Judgement("rollback", True, value, _sentence(why, failed))

    blocking = [r for r in results if r.outcome != "pass" or not r.measured]
    can_promote = not blocking and value is not None and value >= profile.pass_score
    if can_promote and step is not None and not at_end:
        return _stepped(profile, step, value, results)
    if can_promote and elapsed >= profile.min_duration and step is None:
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


def _stepped(
    profile: Profile, step: Step, value: float | None, results: Sequence[MetricResult]
) -> Judgement:
    """A healthy look of a rollout below its last step: advance once, then wait for it."""
    now, then = f"{step.weight:g}%", f"{step.following:g}%"
    if step.advanced:
        return Judgement("continue", False, value, f"advanced at {now}: waiting for {then}")
    if step.elapsed < profile.min_step_duration:
        wait = format_duration(profile.min_step_duration)
        return Judgement("continue", False, value, f"{now} healthy: min_step_duration {wait}")
    return Judgement(
        "advance", False, value, _sentence(f"{now} healthy, advance to {then}", results)
    )


def _sentence(head: str, results: Sequence[MetricResult]) -> str:
    if not results:
        return head
    return f"{head}: " + "; ".join(r.reason for r in results)
