"""In what order the router takes a fetch's records.

Deploy events go first: Kafka orders each partition, not the two topics, and a metric read
before its deployment's ``started`` could not be routed. Then the metric records that make
a verdict (a judgement falls due, or a critical metric burns its budget fast) go before the
rest, so their verdicts need not wait for the whole fetch; each deployment still sees its
events in the order they came.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Callable

    from coalmine.bus.base import Record
    from coalmine.contract import MetricEvent
    from coalmine.daemon.deployment import Deployment
    from coalmine.daemon.recovery import TopicPartition

__all__ = ["Work", "batch_spans", "deciding_first", "deploys_first"]

Work: TypeAlias = "tuple[Record, list[MetricEvent] | None]"
"""A record to take: a deploy record (None), or a metric record with its decoded events."""


def deploys_first(records: list[Record], deployments: str) -> tuple[list[Record], int]:
    """``records`` with the deploy events first, each kind in its order; and their count.

    Kafka orders each partition, not the two topics, and a metric read before its
    deployment's ``started`` could not be routed.
    """
    deploys = [r for r in records if r.topic == deployments]
    if not deploys or len(deploys) == len(records):
        return records, len(deploys)
    return deploys + [r for r in records if r.topic != deployments], len(deploys)


def deciding_first(
    decoded: list[Work], deployment_for: Callable[[MetricEvent], Deployment | None]
) -> tuple[list[Work], list[Work]]:
    """Decoded metric records split: those to take first, then the rest.

    A record is deciding when one of its events makes a judgement due
    (:meth:`Deployment.next_due`) or burns a critical metric's budget fast
    (:meth:`Deployment.is_critical_burn`). Records are grouped by the deployments
    they feed (unrouted ones by service), joined through records that feed several.
    A group with a deciding record moves its records up to its last deciding one to
    the front, in their order; everything else follows in its order. So no deployment
    sees its events in another order than they came, and a verdict waits for the
    records before it of its own group, not for the whole batch.
    """
    keys, several, deciding = _classify(decoded, deployment_for)
    if not deciding:
        return [], decoded
    if several:  # records that feed several deployments join their groups
        group = _Groups()
        for joined in several.values():
            group.join(joined)
        keys = [None if key is None else group.of(key) for key in keys]
    until = {keys[index]: index for index in deciding}  # the last one of each wins
    first: list[Work] = []
    rest: list[Work] = []
    for index, item in enumerate(decoded):
        (first if until.get(keys[index], -1) >= index else rest).append(item)
    return first, rest


def _classify(
    decoded: list[Work], deployment_for: Callable[[MetricEvent], Deployment | None]
) -> tuple[list[str | None], dict[int, list[str]], list[int]]:
    """Keys of the records, those of records with several, the deciding records.

    A record's key is a deployment it feeds, or its service when unrouted (None: it has
    no events); a record that feeds several has all its keys listed by its index.
    """
    keys: list[str | None] = []
    several: dict[int, list[str]] = {}
    deciding: list[int] = []
    due_at: dict[str, float] = {}  # per deployment, the time past which one is due
    for index, (_, events) in enumerate(decoded):
        first_key: str | None = None
        hot = False
        for event in events or ():
            deployment = deployment_for(event)
            key = f"service\0{event.service}" if deployment is None else deployment.deployment_id
            if first_key is None:
                first_key = key
            elif key != first_key:
                several.setdefault(index, [first_key]).append(key)
            if deployment is None:
                continue
            due = due_at.get(key)
            if due is None:
                due = due_at[key] = deployment.next_due()
            if event.time > due:
                hot = True
                due_at[key] = deployment.next_due(event.time)
            elif event.is_ratio and event.total > event.good:
                hot = hot or deployment.is_critical_burn(event)
        keys.append(first_key)
        if hot:
            deciding.append(index)
    return keys, several, deciding


class _Groups:
    """Keys joined into groups (union-find): records that share a key share a group."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def of(self, key: str) -> str:
        """The representative of ``key``'s group."""
        parent = self._parent
        while (up := parent.get(key, key)) != key:
            parent[key] = parent.get(up, up)  # halve the path
            key = up
        return key

    def join(self, keys: list[str]) -> None:
        """Put ``keys`` in one group."""
        if len(keys) < 2:  # one key joins nothing
            return
        root = self.of(keys[0])
        for key in keys[1:]:
            other = self.of(key)
            if other != root:
                self._parent[other] = root


def batch_spans(
    batch: list[Record],
) -> tuple[dict[TopicPartition, tuple[int, int]], dict[str, int]]:
    """Per partition, the lowest and highest offset in ``batch``; per topic, its records.

    One pass; a transport hands out a partition's records together and in order, so the
    work per record is mostly comparing it with the run it continues.
    """
    spans: dict[TopicPartition, tuple[int, int]] = {}
    counts: dict[str, int] = {}
    topic: str | None = None
    partition = low = high = run = 0
    for record in batch:
        offset = record.offset
        if record.partition == partition and record.topic == topic:
            run += 1
            if offset > high:
                high = offset
            elif offset < low:
                low = offset
            continue
        if topic is not None:
            _merge_run(spans, counts, (topic, partition), (low, high), run)
        topic, partition, low, high, run = record.topic, record.partition, offset, offset, 1
    if topic is not None:
        _merge_run(spans, counts, (topic, partition), (low, high), run)
    return spans, counts


def _merge_run(
    spans: dict[TopicPartition, tuple[int, int]],
    counts: dict[str, int],
    key: TopicPartition,
    span: tuple[int, int],
    run: int,
) -> None:
    low, high = span
    known = spans.get(key)
    spans[key] = span if known is None else (min(known[0], low), max(known[1], high))
    counts[key[0]] = counts.get(key[0], 0) + run
