"""benchmarks/switch_quality.py on a few fixed seeds: its feeds, replay equality, naming.

The full measurement is ``python benchmarks/switch_quality.py`` (200 runs per scenario).
Here: each scenario's stream fed live (one fetch per event time) and as a replay reads it
(deploy events first) gives byte-identical verdicts, and the tail and latency regressions
are rolled back by verdicts that name what got worse. Deterministic: fixed seeds.
"""

from __future__ import annotations

import pytest

from support.quality import switch_runs as bench
from support.quality.switches import SCENARIOS


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_live_and_replayed_feeds_give_byte_identical_verdicts(name: str) -> None:
    assert not bench.replay_mismatch((name, 3))


def test_the_live_feed_keeps_event_time_order_and_the_replay_reads_deploys_first() -> None:
    timed = bench.records(SCENARIOS["healthy-switch"](4))
    live = [r for _, batch in bench.live_fetches(timed) for r in batch]
    assert live == [r for _, r in timed]
    replay = [r for _, batch in bench.replay_fetches(timed) for r in batch]
    assert [r.topic for r in replay[:2]] == [bench.TOPICS.deployments] * 2
    assert sorted(replay, key=id) == sorted(live, key=id)


@pytest.mark.parametrize(
    ("name", "named"), [("green-latency-20", "latency_ms"), ("migration-p99-30", "query_ms p99")]
)
def test_regressions_are_rolled_back_naming_what_got_worse(name: str, named: str) -> None:
    for seed in (5, 6):
        outcome = bench.one_run((name, seed))
        assert outcome.decision == "rollback"
        assert outcome.named
        assert 0 < outcome.after_change <= 900
    assert bench.failing_name(SCENARIOS[name](5)) == named


def test_a_healthy_switch_is_not_rolled_back() -> None:
    for seed in (5, 6):
        assert bench.one_run(("healthy-switch", seed)).decision != "rollback"
