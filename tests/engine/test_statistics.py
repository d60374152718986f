"""The statistics snapshot: a frozen value, and all observers work from one built by hand."""

from __future__ import annotations

import copy
import dataclasses
import pathlib
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import riprap
import riprap.checkpoints
import riprap.deadletters
import riprap.observability
import riprap.testing
from riprap.connectors.memory import IterableSource, MemorySink
from riprap.observability import (
    AlertRule,
    CheckpointStatistics,
    HealthConfig,
    LoopStatistics,
    PolicySummary,
    SourceStatistics,
    StepStats,
    serve_health,
)
from riprap.observability._alerts import AlertEvaluator
from riprap.observability._exposition import render
from riprap.observability._health import StallDetector, readiness
from riprap.observability._metrics import create_registry
from riprap.observability._report import build_report
from riprap.policies import (
    BreakerStatistics,
    Bulkhead,
    BulkheadStatistics,
    CircuitBreaker,
    CircuitState,
)
from tests._promql import Scrapes, firing, load_rules

if TYPE_CHECKING:
    from pathlib import Path

    from prometheus_client import CollectorRegistry

RULES_FILE = pathlib.Path(__file__).parents[2] / "examples/monitoring/prometheus-alerts.yml"

Sample = tuple[str, tuple[tuple[str, str], ...]]
"""A sample's name and its sorted labels."""


def hand_built(**changes: Any) -> riprap.RunStatistics:
    """A snapshot of a run that never existed: two steps, a sink, an open breaker, a bulkhead."""
    stats = riprap.RunStatistics(
        records_in=100,
        records_out=80,
        in_flight=5,
        dropped=10,
        dead_lettered=5,
        elapsed=20.0,
        checkpoints=3,
        last_checkpoint_age=400.0,
        positions={"p0": 95},
        open_breakers=("scores",),
        lag=7,
        at=1_000.0,
        steps=(
            StepStats("parse", 100, 90, 5, 5),
            StepStats("score", 90, 85, 0, 5, absorbed=0, batches=9, busy_seconds=2.5),
        ),
        sink=StepStats("out", 85, 80, 0, 0, batches=8, busy_seconds=1.0),
        source=SourceStatistics(
            name="orders", records_in=100, outcomes={"objects_quarantined": 1}, lag={"p0": 7}
        ),
        dead_letters={"validation": 4, "crash_loop": 1},
        queue_depths={"score": 2, "out": 0},
        checkpoint=CheckpointStatistics(
            saved=3,
            skipped=1,
            failed=2,
            last_duration=0.25,
            age=400.0,
            epoch=4,
            last_interval=31.0,
            late=2,
        ),
        policies=PolicySummary(
            retries_by_stage={"score": 6},
            fallbacks_by_stage={"score": 2},
            trips_by_dependency={"scores": 1},
            open_since={"scores": 600.0},
            breakers=(
                BreakerStatistics(
                    name="scores",
                    state=CircuitState.OPEN,
                    calls=0,
                    failures=0,
                    slow_calls=0,
                    probes_admitted=0,
                    rejected=3,
                    remaining_open=30.0,
                ),
            ),
            bulkheads=(
                BulkheadStatistics(
                    name="pool", max_concurrent=4, max_waiters=None, in_use=3, waiting=2, rejected=0
                ),
            ),
        ),
    )
    return dataclasses.replace(stats, **changes)


def scraped(registry: CollectorRegistry) -> dict[Sample, float]:
    """A registry's exposition text, parsed back as {(sample name, sorted labels): value}."""
    found: dict[Sample, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def sample(name: str, **labels: str) -> Sample:
    """The key of a sample of pipeline ``hand``."""
    return (name, tuple(sorted({"pipeline": "hand", **labels}.items())))


class SteppedClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        """The time the test set."""
        return self.now

    def time(self) -> float:
        """Wall time: the test's time after a fixed epoch."""
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        """Jump ahead at once."""
        self.now += seconds


@pytest.mark.anyio
async def test_a_snapshot_stays_as_taken_while_the_run_goes_on(tmp_path: Path) -> None:
    """A snapshot taken mid-run keeps every value, nested ones too, after the run ends."""
    released = False

    def parse(n: int) -> int:
        if n % 5 == 0:
            raise riprap.DataError("not a reading", reason="validation")
        return n

    async def hold(n: int) -> int:
        await riprap.testing.wait_until(lambda: n < 10 or released, timeout=10.0)
        return n

    p = (
        riprap.Pipeline(
            "frozen",
            checkpoint=riprap.checkpoints.MemoryCheckpoints(),
            dead_letter=riprap.deadletters.JsonLinesDeadLetters(tmp_path / "dlq.jsonl"),
            batch_size=10,
        )
        .source(IterableSource("nums", list(range(40))))
        .map("parse", parse)
        .map("hold", hold, breaker=CircuitBreaker("scores"), bulkhead=Bulkhead(2, name="pool"))
        .sink(MemorySink())
    )
    async with p.open() as running:
        await riprap.testing.wait_until(lambda: running.statistics().records_out == 8)
        await running.checkpoint()
        taken = running.statistics()
        before = copy.deepcopy(taken)
        released = True
        await running.wait()
        final = running.statistics()
    assert before == taken
    assert (8, 32) == (taken.records_out, final.records_out)
    assert ({"validation": 8}, "completed") == (final.dead_letters, final.outcome)


def test_a_snapshot_refuses_assignment() -> None:
    """Fields of the snapshot and of its nested records cannot be assigned."""
    stats = hand_built()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.records_in = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.checkpoint.saved = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.policies.open_since = {}  # type: ignore[misc]


def test_metrics_come_from_a_hand_built_snapshot() -> None:
    """The collector turns a snapshot into the documented metric families, with no runtime."""
    found = scraped(create_registry("hand", hand_built))
    expected = {
        sample("riprap_records_total", stage="orders", outcome="in"): 100.0,
        sample("riprap_records_total", stage="parse", outcome="error"): 5.0,
        sample("riprap_records_total", stage="score", outcome="dropped"): 5.0,
        sample("riprap_records_total", stage="out", outcome="out"): 80.0,
        sample("riprap_stage_busy_seconds_total", stage="score"): 2.5,
        sample("riprap_stage_batches_total", stage="out"): 8.0,
        sample("riprap_dead_letters_total", reason="validation"): 4.0,
        sample("riprap_crash_loop_quarantines_total"): 1.0,
        sample("riprap_source_outcomes_total", source="orders", outcome="objects_quarantined"): 1.0,
        sample("riprap_in_flight_records"): 5.0,
        sample("riprap_queue_depth_batches", stage="score"): 2.0,
        sample("riprap_position", partition="p0"): 95.0,
        sample("riprap_source_lag_records", partition="p0"): 7.0,
        sample("riprap_starts"): 4.0,
        sample("riprap_checkpoints_total", outcome="failed"): 2.0,
        sample("riprap_checkpoint_duration_seconds"): 0.25,
        sample("riprap_checkpoint_age_seconds"): 400.0,
        sample("riprap_checkpoint_interval_seconds"): 31.0,
        sample("riprap_checkpoint_late_intervals_total"): 2.0,
        sample("riprap_retries_total", stage="score"): 6.0,
        sample("riprap_fallbacks_total", stage="score"): 2.0,
        sample("riprap_breaker_trips_total", dependency="scores"): 1.0,
        sample("riprap_breaker_state", dependency="scores"): 2.0,
        sample("riprap_bulkhead_in_use", bulkhead="pool"): 3.0,
        sample("riprap_bulkhead_waiting", bulkhead="pool"): 2.0,
    }
    assert expected == {key: found.get(key) for key in expected}


def test_loop_stalls_and_abandoned_threads_are_metrics_of_the_snapshot() -> None:
    """Event-loop lag, stalls by step and abandoned offloaded calls become metric families."""
    stats = hand_built(
        steps=(StepStats("lookup", 10, 10, 0, 0, threads_abandoned=2),),
        loop=LoopStatistics(
            last_lag=0.5, max_lag=2.0, stalls={"lookup": 3, "unknown": 1, "parse+check": 2}
        ),
    )
    found = scraped(create_registry("hand", lambda: stats))
    expected = {
        sample("riprap_event_loop_lag_seconds"): 0.5,
        sample("riprap_event_loop_stalls_total", stage="lookup"): 3.0,
        sample("riprap_event_loop_stalls_total", stage="unknown"): 1.0,
        sample("riprap_event_loop_stalls_total", stage="parse"): 2.0,  # a fused loop's
        sample("riprap_event_loop_stalls_total", stage="check"): 2.0,
        sample("riprap_abandoned_threads_total", stage="lookup"): 2.0,
    }
    assert expected == {key: found.get(key) for key in expected}


@pytest.mark.anyio
async def test_alerts_fire_and_resolve_on_hand_built_snapshots() -> None:
    """Alert rules read only the snapshots handed to them: no runtime exists here."""
    clock = SteppedClock()
    rules = (
        AlertRule(name="errors", signal="error_rate", threshold=0.2, window=10.0),
        AlertRule(name="breaker", signal="breaker_open", threshold=300.0),
        AlertRule(name="restarts", signal="restarts", threshold=2.0),
    )
    quiet = hand_built(
        records_out=0,
        dropped=0,
        dead_lettered=0,
        checkpoint=CheckpointStatistics(epoch=1),
        policies=PolicySummary(),
    )
    # Ten records finish in each step; half of those in the first step are dead-lettered.
    steps = [(980.0, quiet), (990.0, hand_built(records_out=5, dropped=0, dead_lettered=5))]
    steps.append((1_000.0, hand_built(records_out=15, dropped=0, dead_lettered=5)))
    current = [quiet]
    evaluator = AlertEvaluator("hand", lambda: current[0], rules, (), interval=10.0, clock=clock)
    for now, stats in steps:
        clock.now, current[0] = now, stats
        await evaluator.evaluate()
    expected = [
        ("hand", "errors", "firing", 0.5),
        ("hand", "breaker", "firing", 390.0),
        ("hand", "restarts", "firing", 3.0),
        ("hand", "errors", "resolved", 0.0),
    ]
    actual = [(a.pipeline, a.rule, a.status, a.value) for a in evaluator.delivered]
    assert expected == actual


def test_readiness_reads_only_the_snapshot() -> None:
    """/readyz reasons come from a snapshot: run ended, breaker open, old checkpoint, stall."""
    config = HealthConfig(max_breaker_open=300.0, max_checkpoint_age=300.0, stall_after=30.0)
    stall = StallDetector(config.stall_after)
    first = readiness(hand_built(), config, stall)
    later = readiness(hand_built(at=1_031.0, outcome="stopped"), config, stall)
    assert ["breaker 'scores' open for 400s", "last checkpoint 400s ago"] == first
    assert [
        "run ended (stopped)",
        "breaker 'scores' open for 431s",
        "last checkpoint 400s ago",
        "stalled: 5 records in flight, none done for 31s",
    ] == later


def test_the_report_is_built_from_the_final_snapshot() -> None:
    """The run report reads its counts from a snapshot: steps with the sink last, policy totals."""
    report = build_report("hand", "completed", hand_built(), None)
    stats = hand_built()
    assert stats.sink is not None
    expected = riprap.RunReport(
        pipeline="hand",
        outcome="completed",
        records_in=100,
        records_out=80,
        dropped=10,
        duration=20.0,
        checkpoints=3,
        positions={"p0": 95},
        steps=(*stats.steps, stats.sink),
        dead_lettered={"validation": 4, "crash_loop": 1},
        fallbacks=2,
        retries=6,
        breaker_trips=1,
        source_outcomes={"objects_quarantined": 1},
    )
    assert expected == report


class StaticRun:
    """Stands in for a running pipeline: a fixed snapshot and a registry over it."""

    def __init__(self, stats: riprap.RunStatistics) -> None:
        self.stats = stats
        self.registry = create_registry("hand", self.statistics)

    def statistics(self) -> riprap.RunStatistics:
        """The fixed snapshot."""
        return self.stats

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The registry over the fixed snapshot."""
        return self.registry


@pytest.mark.anyio
async def test_health_server_serves_any_object_with_statistics() -> None:
    """serve_health needs only statistics() and metrics_registry, not a real run."""
    run = StaticRun(hand_built(outcome="completed"))
    async with serve_health(run) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/readyz") as response:
                ready = (response.status, orjson.loads(await response.read())["problems"][0])
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
    assert (503, "run ended (completed)") == ready
    assert 'riprap_starts{pipeline="hand"} 4.0' in metrics.splitlines()


def test_crash_loop_and_restart_rules_on_snapshots() -> None:
    """RiprapCrashLoopQuarantine fires on a quarantine; RiprapRestarting on 4 starts in 30m."""
    scrapes = Scrapes()
    for i, (quarantined, epoch) in enumerate([(0, 1), (0, 2), (1, 3), (1, 4), (1, 5)]):
        stats = hand_built(
            dead_letters={"crash_loop": quarantined} if quarantined else {},
            checkpoint=CheckpointStatistics(saved=1, age=1.0, epoch=epoch),
        )
        scrapes.add(
            i * 120.0,
            generate_latest(create_registry("hand", StaticRun(stats).statistics)).decode(),
        )
    rules = load_rules(RULES_FILE.read_text())
    pipeline = (("pipeline", "hand"),)
    assert {pipeline} == firing(rules["RiprapCrashLoopQuarantine"], scrapes)
    assert set() == firing(rules["RiprapCrashLoopQuarantine"], scrapes, at=120.0)
    assert {pipeline} == firing(rules["RiprapRestarting"], scrapes)
    assert set() == firing(rules["RiprapRestarting"], scrapes, at=240.0)  # 3 starts


@pytest.mark.anyio
async def test_restarts_count_only_within_their_window() -> None:
    """A 10th start days after the 9th is one restart, not nine; restarts leave their window."""
    clock = SteppedClock()
    rule = AlertRule(name="restarts", signal="restarts", threshold=2.0, window=600.0)
    current = [hand_built(elapsed=5.0, checkpoint=CheckpointStatistics(epoch=10))]
    evaluator = AlertEvaluator("hand", lambda: current[0], (rule,), (), interval=10.0, clock=clock)
    clock.now = 1_000.0
    await evaluator.evaluate()
    assert [] == evaluator.delivered  # this run's own start: 1 restart in the window
    clock.now = 1_100.0
    current[0] = hand_built(elapsed=105.0, checkpoint=CheckpointStatistics(epoch=12))
    await evaluator.evaluate()
    clock.now = 1_596.0  # the first restart (at 995) leaves the window
    await evaluator.evaluate()
    clock.now = 1_701.0  # so do the other two
    await evaluator.evaluate()
    actual = [(a.status, a.value, a.at - 1_700_000_000.0) for a in evaluator.delivered]
    assert [("firing", 3.0, 1_100.0), ("resolved", 2.0, 1_596.0)] == actual


def test_metrics_render_as_the_library_renders_them() -> None:
    """The health server's fast renderer writes exactly what generate_latest writes."""
    stats = hand_built(
        positions={'odd "name"\\with\nnewline': 3},
        source=SourceStatistics(
            name="orders", records_in=100, lag={"p0": 7}, lag_seconds={"p0": 1e9}
        ),
    )
    registry = create_registry("hand", StaticRun(stats).statistics)
    assert generate_latest(registry) == render(registry)
